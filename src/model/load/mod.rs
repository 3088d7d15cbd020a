//! Loading a model and its tokenizer from whatever a path holds: a Hugging Face
//! directory, a GGUF file, or a llama2.c checkpoint.

pub mod gguf;
pub mod hf;
pub mod llama2c;

use super::Llama;
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use std::path::Path;

/// A loaded model with its tokenizer.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The decoder.
    pub model: Llama,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
}

/// Loads from `path`, choosing the format by what it holds: a directory with
/// `config.json` (Hugging Face), a PEFT LoRA adapter directory (on the base model
/// its `adapter_config.json` names), a file starting with `GGUF`, or a llama2.c
/// `.bin` (with `tokenizer.bin` beside it).
pub fn load(path: &Path, dtype: DType, device: &Device) -> Result<Loaded> {
    if !path.exists() {
        bail!("{}: no such file or directory", path.display());
    }
    if super::lora::is_adapter_dir(path) {
        let (_, base) = super::lora::read_config(path)?;
        let Some(base) = base else {
            bail!("{}: the adapter names no base model; pass --model BASE --adapter {0}", path.display())
        };
        return load_with_adapter(&base, Some(path), dtype, device);
    }
    if path.is_dir() {
        if path.join("config.json").is_file() {
            return hf::load(path, dtype, device);
        }
        bail!("{}: a directory without config.json is not a Hugging Face checkpoint", path.display());
    }
    let mut magic = [0u8; 4];
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    std::io::Read::read_exact(&mut f, &mut magic)
        .with_context(|| format!("{}: file too short to be a model", path.display()))?;
    match &magic {
        b"GGUF" => gguf::load(path, dtype, device),
        _ => llama2c::load(path, dtype, device),
    }
}

/// Whether the directory `dir` holds a loadable model: a Hugging Face checkpoint or
/// a LoRA adapter.
pub fn is_model_dir(dir: &Path) -> bool {
    dir.join("config.json").is_file() || dir.join("adapter_config.json").is_file()
}

/// Loads the model at `path` and, when given, applies the LoRA adapter directory
/// `adapter` (its variables in f32 under 16-bit compute, so training can continue).
pub fn load_with_adapter(path: &Path, adapter: Option<&Path>, dtype: DType, device: &Device) -> Result<Loaded> {
    let base = load(path, dtype, device)?;
    let Some(dir) = adapter else { return Ok(base) };
    anyhow::ensure!(
        base.model.lora().is_none(),
        "{}: already carries an adapter; merge it first (spo merge)",
        path.display()
    );
    anyhow::ensure!(
        super::lora::is_adapter_dir(dir),
        "{}: not a LoRA adapter directory (no adapter_config.json)",
        dir.display()
    );
    let master = super::llama::accumulation_dtype(dtype);
    let lora = super::lora::Lora::read(dir, base.model.config(), master, device)?;
    Ok(Loaded { model: base.model.with_lora(lora), tokenizer: base.tokenizer })
}

/// The tensors of a checkpoint (`present`) that no weight of `config` maps to, sorted:
/// what the model would silently ignore. `file_name` gives a weight's name in the file.
pub fn unknown_tensors(
    config: &super::LlamaConfig,
    present: impl IntoIterator<Item = String>,
    file_name: impl Fn(&str) -> String,
) -> Vec<String> {
    let known: std::collections::HashSet<String> =
        super::llama::weight_shapes(config).into_iter().map(|(name, _)| file_name(&name)).collect();
    let mut unknown: Vec<String> = present.into_iter().filter(|n| !known.contains(n)).collect();
    unknown.sort();
    unknown
}

/// Converts a `W_q`/`W_k` matrix `[n_heads·head_dim, in]` from the interleaved RoPE
/// layout (GGUF, llama2.c: pairs `(2i, 2i+1)`) to the half-split one (`(i, i + hd/2)`),
/// undoing llama.cpp's converter permutation.
pub fn unpermute(w: &Tensor, n_heads: usize) -> candle_core::Result<Tensor> {
    let (out, inp) = w.dims2()?;
    let hd = out / n_heads;
    w.reshape((n_heads, hd / 2, 2, inp))?.transpose(1, 2)?.contiguous()?.reshape((out, inp))
}

/// The inverse of [`unpermute`]: half-split to interleaved (what llama.cpp's
/// converter writes).
pub fn permute(w: &Tensor, n_heads: usize) -> candle_core::Result<Tensor> {
    let (out, inp) = w.dims2()?;
    let hd = out / n_heads;
    w.reshape((n_heads, 2, hd / 2, inp))?.transpose(1, 2)?.contiguous()?.reshape((out, inp))
}
