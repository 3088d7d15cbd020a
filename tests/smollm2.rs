//! SmolLM2-135M-Instruct (GGUF, Q4_1) against Hugging Face transformers on the same
//! dequantized weights: tests/fixtures/smollm2_reference.json, made by
//! scripts/make_smollm2_reference.py.

mod common;

use candle_core::{DType, Device, Tensor};
use spo::model::{load, Loaded};
use spo::sample::{generate, SamplingConfig};
use std::sync::OnceLock;

fn model() -> &'static Loaded {
    static M: OnceLock<Loaded> = OnceLock::new();
    M.get_or_init(|| load(&common::smollm2(), DType::F32, &Device::Cpu).expect("SmolLM2 loads"))
}

fn fixture() -> serde_json::Value {
    serde_json::from_str(include_str!("fixtures/smollm2_reference.json")).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

#[test]
fn tokenizer_matches_transformers() {
    let tok = &model().tokenizer;
    let fx = fixture();
    for case in fx["tokenize"].as_array().unwrap().iter().chain(fx["cases"].as_array().unwrap()) {
        let text = case["text"].as_str().unwrap();
        assert_eq!(tok.encode(text, false).unwrap(), ids(&case["ids"]), "{text:?}");
        assert_eq!(tok.decode(&ids(&case["ids"])).unwrap(), text);
    }
    assert!(!tok.add_bos);
    assert_eq!((tok.bos, tok.eos), (Some(1), Some(2)));
}

#[test]
fn next_token_logprobs_match_transformers() {
    let m = &model().model;
    for case in fixture()["cases"].as_array().unwrap() {
        let input = ids(&case["ids"]);
        let n = input.len();
        let logits = m.logits(&Tensor::from_vec(input.clone(), (1, n), &Device::Cpu).unwrap()).unwrap();
        let logp = candle_nn::ops::log_softmax(&logits.squeeze(0).unwrap(), 1).unwrap().to_vec2::<f32>().unwrap();
        let last = &logp[n - 1];
        for (id, want) in ids(&case["top20_ids"]).iter().zip(case["top20_logprobs"].as_array().unwrap()) {
            let want = want.as_f64().unwrap() as f32;
            assert!((last[*id as usize] - want).abs() < 2e-3, "token {id}: {} vs {want}", last[*id as usize]);
        }
        for (i, want) in case["next_token_logprobs"].as_array().unwrap().iter().enumerate() {
            let got = logp[i][input[i + 1] as usize];
            assert!((got - want.as_f64().unwrap() as f32).abs() < 2e-3, "position {i}");
        }
    }
}

#[test]
fn greedy_continuations_match_transformers() {
    let Loaded { model, tokenizer } = model();
    let fx = fixture();
    let cases = fx["cases"].as_array().unwrap();
    let prompts: Vec<Vec<u32>> = cases.iter().map(|c| ids(&c["ids"])).collect();
    let cfg = SamplingConfig { max_new_tokens: 24, temperature: 0.0, ..Default::default() };
    // all three in one left-padded batch: padding must not change anything
    let out = generate(model, tokenizer, &prompts, &cfg).unwrap();
    for (case, sample) in cases.iter().zip(&out) {
        assert_eq!(sample.tokens, ids(&case["greedy_ids"]), "{:?}", case["text"]);
    }
    assert_eq!(out[2].text, "The capital of France is Paris.");
}

#[test]
fn conversational_records_render_like_trl() {
    let tok = &model().tokenizer;
    let dir = common::temp_dir("conv");
    let rec = serde_json::json!({
        "prompt": [{"role": "user", "content": "What is the capital of France?"}],
        "chosen": [{"role": "assistant", "content": "Paris."}],
        "rejected": [{"role": "assistant", "content": "Lyon."}],
    });
    std::fs::write(dir.join("c.jsonl"), rec.to_string()).unwrap();
    let ds = spo::data::read(&dir.join("c.jsonl"), Some(tok)).unwrap();
    let p = &ds.pairs[0];
    assert!(
        p.prompt.starts_with("<|im_start|>system\n")
            && p.prompt
                .ends_with("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"),
        "{:?}",
        p.prompt
    );
    assert_eq!((p.chosen.as_str(), p.rejected.as_str()), ("Paris.<|im_end|>\n", "Lyon.<|im_end|>\n"));
}
