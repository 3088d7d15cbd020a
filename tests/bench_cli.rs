//! `spo bench` as other tools call it: the stable JSON keys, and parity on the CPU
//! (a device compared with itself must agree exactly).

mod common;

use common::s;
use serde_json::Value;

/// The small step shape every test uses.
const SHAPE: [&str; 6] = ["--batch-size", "2", "--seq-len", "16", "--kl-samples", "2"];

/// `spo bench WHAT --model MODEL EXTRA… --json`, parsed.
fn bench(what: &str, model: &std::path::Path, extra: &[&str]) -> Value {
    let mut args = vec!["bench", what, "--model", s(model), "--json"];
    args.extend_from_slice(extra);
    let o = common::spo(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn bench_train_and_generate_report_the_stable_keys() {
    let (model, _, _) = common::tiny_run_inputs("bench-cli", 3);
    for loss in ["spo", "dpo"] {
        let r = bench("train", &model, &[&["--loss", loss, "--steps", "3"][..], &SHAPE].concat());
        for key in ["median_step_s", "tokens_per_s", "peak_rss_gb"] {
            assert!(r[key].as_f64().unwrap() > 0.0, "{loss}: {key} in {r}");
        }
        assert_eq!(r["losses"].as_array().unwrap().len(), 3, "{r}");
        assert_eq!(r["kl_refresh_s"].is_number(), loss == "spo", "{r}");
    }
    let g = bench("generate", &model, &["--batch-size", "3", "--max-tokens", "5", "--runs", "1"]);
    assert!(g["tokens_per_s"].as_f64().unwrap() > 0.0, "{g}");
}

#[test]
fn parity_of_the_cpu_with_itself_is_exact() {
    let (model, _, _) = common::tiny_run_inputs("bench-parity", 4);
    let rows = bench("parity", &model, &[&["--device", "cpu"][..], &SHAPE].concat());
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 5, "logits + (loss, grad norm) × (SPO, DPO)");
    for r in rows {
        assert_eq!(r["max_abs_diff"], 0.0, "{r}");
        assert!(r["cpu"].as_f64().unwrap().is_finite(), "{r}");
    }
}
