//! Checkpoints: a loadable Hugging Face directory (a PEFT adapter under LoRA) plus the optimiser state and the
//! trainer state (step, cached KL samples), written crash-safely: a temporary
//! directory, fsynced, then swapped into place ([`crate::fsx::replace_dir`]).

use super::optim::AdamW;
use crate::model::load::hf;
use crate::model::Llama;
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A cached KL sample: prompt ids and the sampled response ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KlSample {
    /// Context.
    pub prompt: Vec<u32>,
    /// Sampled continuation.
    pub response: Vec<u32>,
}

/// What besides the weights a resumed run needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimiser steps completed.
    pub step: usize,
    /// KL samples in use at that step (drawn at the last refresh).
    pub kl_samples: Vec<KlSample>,
    /// The run's configuration.
    pub config: super::config::TrainConfig,
}

/// `DIR/checkpoint-000123`.
pub fn path(out: &Path, step: usize) -> PathBuf {
    out.join(format!("checkpoint-{step:06}"))
}

/// Saves a checkpoint for `state.step`.
pub fn save(out: &Path, model: &Llama, tok: &Tokenizer, opt: &AdamW, state: &TrainerState) -> Result<PathBuf> {
    let dir = path(out, state.step);
    hf::write_dir(&dir, |tmp| {
        hf::write_model_or_adapter(model, tok, &state.config.model, tmp)?;
        std::fs::write(tmp.join("trainer_state.json"), serde_json::to_string(state)?)?;
        if state.config.save_only_model {
            return Ok(());
        }
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for (name, t) in &opt.m {
            tensors.insert(format!("m.{name}"), t.to_device(&Device::Cpu)?);
        }
        for (name, t) in &opt.v {
            tensors.insert(format!("v.{name}"), t.to_device(&Device::Cpu)?);
        }
        candle_core::safetensors::save(&tensors, tmp.join("optimizer.safetensors"))?;
        Ok(())
    })
    .with_context(|| format!("writing checkpoint {}", dir.display()))?;
    Ok(dir)
}

/// Reads the trainer state of a checkpoint (its step, KL samples and run configuration).
pub fn read_state(dir: &Path) -> Result<TrainerState> {
    let state_path = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&state_path)
        .with_context(|| format!("{}: not a spo checkpoint (no trainer_state.json)", dir.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: corrupt", state_path.display()))
}

/// Reads the trainer state of a checkpoint and restores the optimiser from it.
pub fn restore(dir: &Path, opt: &mut AdamW, device: &Device) -> Result<TrainerState> {
    let state = read_state(dir)?;
    if !dir.join("optimizer.safetensors").is_file() {
        bail!(
            "{}: saved with save_only_model (no optimizer state), so it can be evaluated but not resumed",
            dir.display()
        );
    }
    let tensors = candle_core::safetensors::load(dir.join("optimizer.safetensors"), device)
        .with_context(|| format!("{}: optimizer.safetensors", dir.display()))?;
    for (key, t) in tensors {
        let dtype = opt.m.values().next().map(|x| x.dtype()).unwrap_or(candle_core::DType::F32);
        match key.split_once('.') {
            Some(("m", name)) => opt.m.insert(name.to_string(), t.to_dtype(dtype)?),
            Some(("v", name)) => opt.v.insert(name.to_string(), t.to_dtype(dtype)?),
            _ => None,
        };
    }
    opt.t = state.step;
    Ok(state)
}
