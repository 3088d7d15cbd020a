//! Hugging Face checkpoint directories: `config.json`, `model.safetensors` (or
//! shards with their index), `tokenizer.json` and the chat template. Also the
//! saver, which writes a directory transformers loads as is.

use super::Loaded;
use crate::model::rope::RopeScaling;
use crate::model::{Llama, LlamaConfig};
use crate::tokenizer::Tokenizer;
use anyhow::{anyhow, bail, Context, Result};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn config_from_json(v: &serde_json::Value, has_lm_head: bool) -> Result<LlamaConfig> {
    let model_type = v["model_type"].as_str().unwrap_or("");
    if model_type != "llama" {
        bail!("model_type {model_type:?} is not supported (only llama)");
    }
    for (key, supported) in [("attention_bias", false), ("mlp_bias", false)] {
        if v[key].as_bool().is_some_and(|b| b != supported) {
            bail!("{key} = {} is not supported (this llama implementation has no biases)", v[key]);
        }
    }
    if let Some(act) = v["hidden_act"].as_str().filter(|a| *a != "silu") {
        bail!("hidden_act {act:?} is not supported (only silu)");
    }
    let u = |k: &str| v[k].as_u64().map(|x| x as usize).ok_or_else(|| anyhow!("config.json: missing integer {k}"));
    let heads = u("num_attention_heads")?;
    let config = LlamaConfig {
        vocab_size: u("vocab_size")?,
        hidden_size: u("hidden_size")?,
        intermediate_size: u("intermediate_size")?,
        num_hidden_layers: u("num_hidden_layers")?,
        num_attention_heads: heads,
        num_key_value_heads: u("num_key_value_heads").unwrap_or(heads),
        rms_norm_eps: v["rms_norm_eps"].as_f64().unwrap_or(1e-6),
        rope_theta: v["rope_theta"].as_f64().unwrap_or(10_000.0),
        max_position_embeddings: u("max_position_embeddings").unwrap_or(2048),
        tie_word_embeddings: v["tie_word_embeddings"].as_bool().unwrap_or(false) || !has_lm_head,
        rope_scaling: rope_scaling(&v["rope_scaling"])?,
    };
    if let Some(hd) = v["head_dim"].as_u64().filter(|&hd| hd as usize != config.head_dim()) {
        bail!("head_dim {hd} is not supported (only hidden_size / num_attention_heads = {})", config.head_dim());
    }
    config.validate()?;
    Ok(config)
}

/// `rope_scaling` of config.json: none, `linear` or `llama3`; other kinds are refused.
fn rope_scaling(v: &serde_json::Value) -> Result<Option<RopeScaling>> {
    if v.is_null() {
        return Ok(None);
    }
    let kind = v["rope_type"].as_str().or_else(|| v["type"].as_str()).unwrap_or("");
    let f = |k: &str| v[k].as_f64().ok_or_else(|| anyhow!("rope_scaling: missing number {k}"));
    Ok(match kind {
        "default" => None,
        "linear" => Some(RopeScaling::Linear { factor: f("factor")? }),
        "llama3" => Some(RopeScaling::Llama3 {
            factor: f("factor")?,
            low_freq_factor: f("low_freq_factor")?,
            high_freq_factor: f("high_freq_factor")?,
            original_max_position_embeddings: f("original_max_position_embeddings")? as usize,
        }),
        _ => bail!("rope_scaling {v} is not supported (linear or llama3)"),
    })
}

/// Refuses checkpoints with tensors the model would silently drop (biases, extra
/// layers); RoPE buffers that some exports include are harmless and skipped.
fn check_tensor_names(st: &MmapedSafetensors, config: &LlamaConfig, dir: &Path) -> Result<()> {
    let present = st.tensors().into_iter().map(|(n, _)| n);
    let mut unknown: Vec<String> = super::unknown_tensors(config, present, str::to_string)
        .into_iter()
        .filter(|n| !n.ends_with("rotary_emb.inv_freq") && n != "lm_head.weight")
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    unknown.truncate(8);
    bail!("{}: tensors this llama implementation would ignore: {unknown:?}", dir.display())
}

fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index)
        .with_context(|| format!("{}: neither model.safetensors nor model.safetensors.index.json", dir.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", index.display()))?;
    let map = v["weight_map"].as_object().ok_or_else(|| anyhow!("{}: no weight_map", index.display()))?;
    let mut files: Vec<PathBuf> = map.values().filter_map(|f| f.as_str()).map(|f| dir.join(f)).collect();
    files.sort();
    files.dedup();
    Ok(files)
}

/// Loads a Hugging Face llama directory.
pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Loaded> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).with_context(|| format!("reading {}", cfg_path.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", cfg_path.display()))?;
    let files = weight_files(dir)?;
    for f in &files {
        anyhow::ensure!(f.is_file(), "{}: weight shard missing", f.display());
    }
    // SAFETY: the files are memory-mapped read-only and not modified while loaded.
    let st = unsafe { MmapedSafetensors::multi(&files) }
        .map_err(|e| anyhow!("{}: corrupt safetensors: {e}", dir.display()))?;
    let has_lm_head = st.get("lm_head.weight").is_ok();
    let config = config_from_json(&json, has_lm_head).with_context(|| format!("{}", cfg_path.display()))?;
    check_tensor_names(&st, &config, dir)?;
    let tokenizer = Tokenizer::from_hf_dir(dir, &json)?;
    if tokenizer.vocab_size() > config.vocab_size {
        bail!(
            "{}: tokenizer has {} tokens but the model's vocabulary is {}",
            dir.display(),
            tokenizer.vocab_size(),
            config.vocab_size
        );
    }
    let model = Llama::from_tensors(config, dtype, device, |name| {
        st.load(name, &Device::Cpu).map_err(|e| anyhow!("{}: tensor {name}: {e}", dir.display()))
    })?;
    Ok(Loaded { model, tokenizer })
}

/// Writes `model` and `tokenizer` as a Hugging Face directory at `dir`: built in a
/// temporary sibling and renamed into place, so `dir` is either the old or the new
/// complete checkpoint, never a partial one.
pub fn save(model: &Llama, tokenizer: &Tokenizer, dir: &Path) -> Result<()> {
    save_with(model, tokenizer, dir, |_| Ok(()))
}

/// [`save`], with `extra` writing more files (optimiser state, trainer state) into
/// the temporary directory before the rename.
pub fn save_with(
    model: &Llama,
    tokenizer: &Tokenizer,
    dir: &Path,
    extra: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    write_dir(dir, |tmp| {
        write_files(model, tokenizer, tmp)?;
        extra(tmp)
    })
}

/// Builds the directory `dir` with `write` in a temporary sibling, fsyncs it and
/// swaps it into place: `dir` is the old or the new whole, never a partial one.
pub fn write_dir(dir: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = crate::fsx::parent_of(dir);
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp = crate::fsx::sibling_temp(dir, "tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    write(&tmp)?;
    // durable before it becomes visible: a crash leaves the old or the new whole
    crate::fsx::sync_tree(&tmp)?;
    crate::fsx::replace_dir(&tmp, dir)
}

/// Writes the model's files into `dir`: a Hugging Face model, or under LoRA the
/// adapter alone in PEFT's format (`base` recorded as its base model) with the
/// tokenizer beside it.
pub fn write_model_or_adapter(model: &Llama, tokenizer: &Tokenizer, base: &Path, dir: &Path) -> Result<()> {
    match model.lora() {
        Some(lora) => {
            lora.write(dir, base)?;
            tokenizer.save(dir)
        }
        None => write_files(model, tokenizer, dir),
    }
}

fn write_files(model: &Llama, tokenizer: &Tokenizer, dir: &Path) -> Result<()> {
    let c = model.config();
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "head_dim": c.head_dim(),
        "hidden_act": "silu",
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "max_position_embeddings": c.max_position_embeddings,
        "rope_scaling": c.rope_scaling,
        "tie_word_embeddings": c.tie_word_embeddings,
        "attention_bias": false,
        "mlp_bias": false,
        "bos_token_id": tokenizer.bos,
        "eos_token_id": tokenizer.eos,
        "torch_dtype": "float32",
    });
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&config)?)?;
    let tensors: HashMap<String, Tensor> = model
        .named_vars()
        .into_iter()
        .map(|(n, v)| Ok((n, v.as_tensor().detach().to_dtype(DType::F32)?.to_device(&Device::Cpu)?)))
        .collect::<Result<_>>()?;
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))?;
    let generation = serde_json::json!({"bos_token_id": tokenizer.bos, "eos_token_id": tokenizer.eos});
    std::fs::write(dir.join("generation_config.json"), serde_json::to_string_pretty(&generation)?)?;
    tokenizer.save(dir)
}
