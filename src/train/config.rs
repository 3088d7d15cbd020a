//! Every option of `spo train`, with the paper's defaults where it gives one. The
//! TOML file (`--config`) and the command-line flags fill this same struct; flags win.

use crate::batch::Truncation;
use crate::loss::Weighting;
use crate::model::lora::{LoraConfig, ALL_TARGETS};
use crate::model::Precision;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Which objective to optimise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LossKind {
    /// SPO: preference loss (α, μ) + β · token-wise KL on fresh samples.
    Spo,
    /// DPO (eq. 4) with a cached reference.
    Dpo,
    /// IPO as TRL defines it, with a cached reference.
    Ipo,
}

/// Learning-rate shape after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Constant.
    Constant,
    /// Linear decay to 0 at the last step.
    Linear,
    /// Cosine decay to 0 at the last step.
    Cosine,
}

/// μ for the CLI and the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum WeightingKind {
    /// μ = 1.
    Uniform,
    /// SoftImportance(γ) (eq. 24).
    SoftImportance,
}

/// Options a user may change when resuming a run: its length and its checkpoint
/// and evaluation cadence. With [`HOW_WRITTEN`], every other option is the run.
pub const RESUMABLE_CHANGES: [&str; 5] = ["steps", "save_every", "eval_every", "save_only_model", "device"];

/// Options that say where and how a run is written, not what it is.
pub const HOW_WRITTEN: [&str; 2] = ["overwrite", "out"];

/// The full training configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Starting model (and reference): HF directory, GGUF or llama2.c.
    pub model: PathBuf,
    /// Preference data: JSONL or Parquet, TRL layouts.
    pub data: PathBuf,
    /// Output directory (checkpoints, metrics, `final/`).
    pub out: PathBuf,
    /// Objective.
    pub loss: LossKind,
    /// SPO's α (softness of the target `softmax(r/α)`).
    pub alpha: f64,
    /// KL weight for SPO; temperature β for DPO/IPO.
    pub beta: f64,
    /// SPO pair weights μ.
    pub weighting: WeightingKind,
    /// SoftImportance γ.
    pub gamma: f64,
    /// Refresh the KL samples every K steps (paper: 8).
    pub kl_refresh: usize,
    /// Samples per refresh (paper: 32).
    pub kl_samples: usize,
    /// Maximum new tokens of a KL sample.
    pub kl_max_tokens: usize,
    /// Samples per KL forward/backward chunk (memory bound).
    pub kl_micro_batch: usize,
    /// Optimiser steps.
    pub steps: usize,
    /// Pairs per step (paper: 128).
    pub batch_size: usize,
    /// Pairs per forward/backward (gradient accumulation); bounded memory.
    pub micro_batch_size: usize,
    /// Peak learning rate (AdamW).
    pub lr: f64,
    /// Linear warm-up steps (default: an eighth of the run, the paper's 5k of 40k).
    pub warmup_steps: Option<usize>,
    /// Shape after warm-up.
    pub schedule: Schedule,
    /// AdamW β₁.
    pub adam_beta1: f64,
    /// AdamW β₂.
    pub adam_beta2: f64,
    /// AdamW ε.
    pub adam_eps: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (0: off).
    pub max_grad_norm: f64,
    /// Prompt + response tokens.
    pub max_length: usize,
    /// Prompt tokens kept when truncating.
    pub max_prompt_length: usize,
    /// Seed of data order, splits and sampling.
    pub seed: u64,
    /// Fraction of pairs held out for evaluation.
    pub eval_fraction: f64,
    /// Evaluate every M steps (0: only at the end).
    pub eval_every: usize,
    /// Checkpoint every N steps (0: only at the end).
    pub save_every: usize,
    /// Drop malformed records (counted) instead of refusing the file.
    pub skip_invalid: bool,
    /// Allow writing into an output directory that holds a different run.
    pub overwrite: bool,
    /// Checkpoints hold the weights only, not the optimiser state (TRL's name): a
    /// third of the disk, but such a checkpoint can be evaluated, not resumed.
    pub save_only_model: bool,
    /// Device (`auto`, `cpu`, `cuda:N`); a run may move between devices on resume.
    pub device: String,
    /// Compute precision (unset: the device's default, bf16 on a GPU and f32 on
    /// the CPU); part of what the run is. Recorded runs always name it.
    pub dtype: Option<Precision>,
    /// LoRA rank (0: a full fine-tune). Under LoRA only the adapters train and the
    /// reference is the base model with them off.
    pub lora_r: usize,
    /// LoRA's α (the update is scaled by α/r); unset: 2·r.
    pub lora_alpha: Option<f64>,
    /// Dropout on the adapters' inputs.
    pub lora_dropout: f64,
    /// Adapted projections (PEFT names).
    pub lora_targets: Vec<String>,
    /// Start from this LoRA adapter directory instead of fresh adapters.
    pub adapter: Option<PathBuf>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            model: PathBuf::new(),
            data: PathBuf::new(),
            out: PathBuf::from("runs/spo"),
            loss: LossKind::Spo,
            alpha: 0.03,
            beta: 0.01,
            weighting: WeightingKind::Uniform,
            gamma: 0.1,
            kl_refresh: 8,
            kl_samples: 32,
            kl_max_tokens: 128,
            kl_micro_batch: 4,
            steps: 100,
            batch_size: 128,
            micro_batch_size: 8,
            lr: 1e-5,
            warmup_steps: None,
            schedule: Schedule::Constant,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_eps: 1e-8,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            max_length: 512,
            max_prompt_length: 256,
            seed: 0,
            eval_fraction: 0.05,
            eval_every: 50,
            save_every: 100,
            skip_invalid: false,
            overwrite: false,
            save_only_model: false,
            device: "auto".into(),
            dtype: None,
            lora_r: 0,
            lora_alpha: None,
            lora_dropout: 0.0,
            lora_targets: ALL_TARGETS.map(String::from).to_vec(),
            adapter: None,
        }
    }
}

impl TrainConfig {
    /// μ as the loss library takes it.
    pub fn weighting(&self) -> Weighting {
        match self.weighting {
            WeightingKind::Uniform => Weighting::Uniform,
            WeightingKind::SoftImportance => Weighting::SoftImportance { gamma: self.gamma },
        }
    }

    /// Truncation rules.
    pub fn truncation(&self) -> Truncation {
        Truncation { max_length: self.max_length, max_prompt_length: self.max_prompt_length }
    }

    /// Warm-up steps actually used.
    pub fn warmup(&self) -> usize {
        self.warmup_steps.unwrap_or(self.steps / 8)
    }

    /// Learning rate at optimiser step `step` (0-based): linear warm-up from 0, then the schedule.
    pub fn lr_at(&self, step: usize) -> f64 {
        let w = self.warmup();
        if step < w {
            return self.lr * (step + 1) as f64 / w as f64;
        }
        let span = self.steps.saturating_sub(w).max(1) as f64;
        let progress = (step - w) as f64 / span;
        match self.schedule {
            Schedule::Constant => self.lr,
            Schedule::Linear => self.lr * (1.0 - progress),
            Schedule::Cosine => self.lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        }
    }

    /// The LoRA adapters' configuration, when the run trains adapters.
    pub fn lora(&self) -> Option<LoraConfig> {
        (self.lora_r > 0).then(|| LoraConfig {
            r: self.lora_r,
            alpha: self.lora_alpha.unwrap_or(2.0 * self.lora_r as f64),
            dropout: self.lora_dropout,
            targets: self.lora_targets.clone(),
        })
    }

    /// Whether the SPO KL term is active.
    pub fn uses_kl(&self) -> bool {
        self.loss == LossKind::Spo && self.beta > 0.0
    }

    /// Continues `earlier` (the run a checkpoint or output directory holds) with
    /// this configuration. Options that change what the run is are refused, listed
    /// as `key: earlier → now`; the ones that may change ([`RESUMABLE_CHANGES`]) are
    /// taken and returned as the list of changes to record. An unset warm-up or dtype keeps
    /// the earlier run's, so a longer run does not re-shape a schedule already used.
    pub fn continuing(mut self, earlier: &TrainConfig) -> Result<(TrainConfig, Vec<String>), Vec<String>> {
        // Runs recorded before `dtype` existed ran in f32.
        let earlier = TrainConfig {
            warmup_steps: Some(earlier.warmup()),
            dtype: Some(earlier.dtype.unwrap_or(Precision::F32)),
            ..earlier.clone()
        };
        self.warmup_steps = self.warmup_steps.or(earlier.warmup_steps);
        self.dtype = self.dtype.or(earlier.dtype);
        let (now, was) =
            (serde_json::to_value(&self).expect("serialisable"), serde_json::to_value(&earlier).expect("serialisable"));
        let (mut refused, mut changed) = (Vec::new(), Vec::new());
        for (key, value) in now.as_object().expect("an object") {
            let before = &was[key.as_str()];
            if before == value {
                continue;
            }
            let line = format!("{key}: {before} → {value}");
            if RESUMABLE_CHANGES.contains(&key.as_str()) || HOW_WRITTEN.contains(&key.as_str()) {
                changed.push(line);
            } else {
                refused.push(line);
            }
        }
        if refused.is_empty() {
            Ok((self, changed))
        } else {
            Err(refused)
        }
    }

    /// Checks ranges; each message names the option.
    pub fn validate(&self) -> Result<(), String> {
        let checks: [(bool, &str); 12] = [
            (self.alpha >= 0.0 && self.alpha.is_finite(), "alpha must be a finite number ≥ 0"),
            (self.beta >= 0.0 && self.beta.is_finite(), "beta must be a finite number ≥ 0"),
            (self.loss == LossKind::Spo || self.beta > 0.0, "beta must be > 0 for dpo and ipo"),
            (self.gamma >= 0.0 && self.gamma.is_finite(), "gamma must be ≥ 0"),
            (self.steps > 0, "steps must be at least 1"),
            (self.batch_size > 0 && self.micro_batch_size > 0, "batch-size and micro-batch-size must be at least 1"),
            (self.lr > 0.0 && self.lr.is_finite(), "lr must be > 0"),
            ((0.0..1.0).contains(&self.eval_fraction), "eval-fraction must be in [0, 1)"),
            (
                self.kl_refresh > 0 && self.kl_samples > 0 && self.kl_micro_batch > 0 && self.kl_max_tokens > 0,
                "kl-refresh, kl-samples, kl-micro-batch and kl-max-tokens must be at least 1",
            ),
            (self.max_prompt_length < self.max_length, "max-prompt-length must be below max-length"),
            (
                (0.0..1.0).contains(&self.adam_beta1) && (0.0..1.0).contains(&self.adam_beta2),
                "adam betas must be in [0, 1)",
            ),
            (self.max_grad_norm >= 0.0, "max-grad-norm must be ≥ 0"),
        ];
        if let Some((_, msg)) = checks.iter().find(|(ok, _)| !ok) {
            return Err((*msg).to_string());
        }
        if self.adapter.is_some() && self.lora_r == 0 {
            return Err("adapter continues LoRA training: give lora-r too (the adapter's rank)".into());
        }
        self.lora().map_or(Ok(()), |l| l.validate())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays() {
        let c =
            TrainConfig { steps: 10, warmup_steps: Some(2), lr: 1.0, schedule: Schedule::Linear, ..Default::default() };
        let lrs: Vec<f64> = (0..10).map(|s| c.lr_at(s)).collect();
        assert_eq!(&lrs[..3], &[0.5, 1.0, 1.0]);
        assert!((lrs[6] - 0.5).abs() < 1e-12);
        let cos = TrainConfig { schedule: Schedule::Cosine, ..c.clone() };
        assert!((cos.lr_at(6) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn toml_fills_the_same_struct_and_rejects_unknown_keys() {
        let c: TrainConfig =
            toml::from_str("loss = \"dpo\"\nbeta = 0.1\nsteps = 7\nweighting = \"soft-importance\"").unwrap();
        assert_eq!((c.loss, c.beta, c.steps, c.weighting), (LossKind::Dpo, 0.1, 7, WeightingKind::SoftImportance));
        assert_eq!(c.kl_refresh, 8);
        assert!(toml::from_str::<TrainConfig>("bogus = 1").is_err());
    }

    #[test]
    fn a_resumed_run_may_grow_but_not_change_what_it_is() {
        let earlier = TrainConfig { steps: 80, ..Default::default() };
        let (now, changes) =
            TrainConfig { steps: 160, save_every: 5, ..Default::default() }.continuing(&earlier).unwrap();
        assert_eq!(now.warmup(), 10, "the warm-up of the 80-step run is kept");
        assert_eq!(changes, vec!["save_every: 100 → 5", "steps: 80 → 160"]);
        let refused = TrainConfig { alpha: 0.5, lr: 1.0, ..earlier.clone() }.continuing(&earlier).unwrap_err();
        assert_eq!(refused, vec!["alpha: 0.03 → 0.5", "lr: 0.00001 → 1.0"]);
    }
}
