//! `spo train` run as other tools call it.

mod common;

use common::s;

use candle_core::{DType, Device};
use serde_json::{json, Value};
use spo::model::load::hf;
use spo::model::{Llama, LlamaConfig};
use spo::tokenizer::build::{sentencepiece_bpe, toy_vocabulary};
use std::path::Path;

/// `spo train --model M --data D --out O --eval-fraction 0 EXTRA…`
fn train(model: &Path, data: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["--eval-fraction", "0"];
    args.extend_from_slice(extra);
    common::spo_train(model, data, out, &args)
}

#[test]
fn stable_interface_trains_and_final_model_scores_like_the_trainer() {
    let (model, data, dir) = common::tiny_run_inputs("cli-train", 1);
    let out = dir.join("run");
    for loss in ["spo", "dpo", "ipo"] {
        let o = out.join(loss);
        let r = train(
            &model,
            &data,
            &o,
            &[
                "--loss",
                loss,
                "--alpha",
                "0.5",
                "--beta",
                "0.1",
                "--steps",
                "2",
                "--batch-size",
                "1",
                "--lr",
                "1e-3",
                "--warmup-steps",
                "0",
                "--seed",
                "3",
                "--kl-samples",
                "2",
                "--kl-max-tokens",
                "4",
            ],
        );
        assert!(r.status.success(), "{loss}: {}", String::from_utf8_lossy(&r.stderr));
        assert!(o.join("final/model.safetensors").is_file());
        let metrics: Vec<Value> = std::fs::read_to_string(o.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(metrics.len(), 2);
        for key in [
            "loss",
            "logps/chosen",
            "logps/rejected",
            "rewards/accuracies",
            "rewards/margins",
            "grad_norm",
            "learning_rate",
            "pref_loss",
            "mu/mean",
            "tokens_per_second",
        ] {
            assert!(metrics[0][key].is_number(), "{loss}: metric {key} missing");
        }
        if loss == "spo" {
            assert!(metrics[0]["kl"].is_number() && metrics[0]["entropy"].is_number());
        } else {
            assert!(metrics[0]["rewards/chosen"].is_number());
        }
        // the trained model loads in generate and score
        let g = common::spo(&["score", "--model", s(&o.join("final")), "--prompt", "Q1:", "--text", "good", "--json"]);
        assert!(g.status.success(), "{}", String::from_utf8_lossy(&g.stderr));
    }
    // spo score on the initial model = the trainer's logps/chosen of a one-pair batch
    let one = dir.join("one.jsonl");
    std::fs::write(&one, json!({"prompt": "Q7:", "chosen": "good", "rejected": "bad"}).to_string()).unwrap();
    let o = out.join("one");
    let one_args = ["--steps", "1", "--batch-size", "1", "--beta", "0"];
    let r = train(&model, &one, &o, &one_args);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let m: Value =
        serde_json::from_str(std::fs::read_to_string(o.join("metrics.jsonl")).unwrap().lines().next().unwrap())
            .unwrap();
    let sc = common::spo(&["score", "--model", s(&model), "--prompt", "Q7:", "--text", "good", "--json"]);
    let sc: Value = serde_json::from_slice(&sc.stdout).unwrap();
    assert!((sc["total"].as_f64().unwrap() - m["logps/chosen"].as_f64().unwrap()).abs() < 1e-4, "{sc} vs {m}");
    // the same output directory again: refused without --resume / --overwrite
    let again = train(&model, &one, &o, &one_args);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--overwrite"));
}

#[test]
fn malformed_data_is_reported_with_file_and_line_before_training() {
    let (model, _, dir) = common::tiny_run_inputs("cli-bad", 1);
    let bad = dir.join("bad.jsonl");
    std::fs::write(
        &bad,
        [
            json!({"prompt": "a", "chosen": "x", "rejected": "y"}).to_string(),
            "{not json".to_string(),
            json!({"prompt": "a", "chosen": "x"}).to_string(),
            json!({"prompt": "a", "chosen": "same", "rejected": "same"}).to_string(),
            json!({"prompt": "b", "chosen": "x", "rejected": "z"}).to_string(),
        ]
        .join("\n"),
    )
    .unwrap();
    let out = dir.join("run");
    let r = train(&model, &bad, &out, &["--steps", "1", "--batch-size", "1", "--beta", "0"]);
    assert_eq!(r.status.code(), Some(1));
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("bad.jsonl:2: not valid JSON"), "{err}");
    assert!(err.contains("bad.jsonl:3: missing field \"rejected\""), "{err}");
    assert!(!out.join("metrics.jsonl").exists(), "nothing trained");
    let run2 = dir.join("run2");
    let r = train(&model, &bad, &run2, &["--steps", "1", "--batch-size", "1", "--beta", "0", "--skip-invalid"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.contains("skipped 2 malformed") && err.contains("skipped 1 pair(s) with an empty or identical"),
        "{err}"
    );
    // bad option values are usage errors
    let r = common::spo(&["train", "--model", s(&model), "--data", s(&bad), "--alpha", "-1"]);
    assert_eq!(r.status.code(), Some(2));
}

#[test]
fn parquet_rows_are_read_and_bad_rows_numbered() {
    let (model, _, dir) = common::tiny_run_inputs("cli-parquet", 1);
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/prefs.parquet");
    let ds = spo::data::read(&data, None).unwrap();
    assert_eq!(ds.pairs.len(), 3);
    assert_eq!(ds.pairs[1].chosen, "fine");
    assert_eq!(ds.bad.len(), 1);
    assert_eq!((ds.bad[0].line, ds.bad[0].reason.as_str()), (3, "missing field \"rejected\""));
    let r = train(&model, &data, &dir.join("run"), &["--steps", "1", "--batch-size", "2", "--beta", "0"]);
    assert_eq!(r.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&r.stderr).contains("prefs.parquet:3: missing field"));
}

#[test]
fn non_finite_loss_stops_training_and_names_the_term() {
    let dir = common::temp_dir("cli-nan");
    let config = LlamaConfig::tiny();
    let m = Llama::random(config.clone(), 1, DType::F32, &Device::Cpu).unwrap();
    // poison one weight
    let (_, var) = m.named_vars().into_iter().find(|(n, _)| n == "model.norm.weight").unwrap();
    var.set(&(var.as_tensor() * f64::NAN).unwrap()).unwrap();
    let tok = sentencepiece_bpe(&toy_vocabulary(config.vocab_size), Some(1), Some(2), true).unwrap();
    hf::save(&m, &tok, &dir.join("model")).unwrap();
    std::fs::write(dir.join("d.jsonl"), json!({"prompt": "a", "chosen": "b", "rejected": "c"}).to_string()).unwrap();
    let r = train(
        &dir.join("model"),
        &dir.join("d.jsonl"),
        &dir.join("run"),
        &["--steps", "3", "--batch-size", "1", "--beta", "0"],
    );
    assert_eq!(r.status.code(), Some(1));
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("preference loss is NaN at step 1") && err.contains("no checkpoint was written yet"), "{err}");
    assert!(!dir.join("run/final").exists());
}
