//! `spo train`: SPO (or DPO/IPO) fine-tuning with a progress bar and metrics.

use super::args::usage;
use crate::model::{Placement, Precision};
use crate::train::config::{LossKind, Schedule, TrainConfig, WeightingKind};
use crate::train::{Progress, Trainer};
use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Flags of `spo train`. Every flag overrides the same key of `--config`; unset
/// flags keep the file's value or the default shown.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// TOML file with any of the options below (keys as the long flags, with _ for -).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Starting model and reference: Hugging Face directory, GGUF, or llama2.c .bin.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Preference pairs: JSONL or Parquet in a TRL layout (standard, conversational, implicit prompt).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Output directory: metrics.jsonl, checkpoint-NNNNNN/, final/.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Objective [default: spo].
    #[arg(long, value_enum)]
    pub loss: Option<LossKind>,
    /// SPO α: the aligned model targets softmax(reward/α) [default: 0.03].
    #[arg(long)]
    pub alpha: Option<f64>,
    /// SPO: weight of KL(π_θ‖π_ref) on fresh samples; DPO/IPO: temperature β [default: 0.01].
    #[arg(long)]
    pub beta: Option<f64>,
    /// SPO pair weights μ [default: uniform].
    #[arg(long, value_enum)]
    pub weighting: Option<WeightingKind>,
    /// SoftImportance γ [default: 0.1].
    #[arg(long)]
    pub gamma: Option<f64>,
    /// Refresh the KL samples every K steps [default: 8, the paper's].
    #[arg(long)]
    pub kl_refresh: Option<usize>,
    /// KL samples drawn from the current policy per refresh [default: 32, the paper's].
    #[arg(long)]
    pub kl_samples: Option<usize>,
    /// Maximum new tokens of a KL sample [default: 128].
    #[arg(long)]
    pub kl_max_tokens: Option<usize>,
    /// KL samples per forward/backward chunk [default: 4].
    #[arg(long)]
    pub kl_micro_batch: Option<usize>,
    /// Optimiser steps [default: 100].
    #[arg(long)]
    pub steps: Option<usize>,
    /// Pairs per optimiser step [default: 128, the paper's].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Pairs per forward/backward; gradients accumulate up to --batch-size [default: 8].
    #[arg(long)]
    pub micro_batch_size: Option<usize>,
    /// Peak AdamW learning rate [default: 1e-5].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Linear warm-up steps [default: steps/8, the paper's 5k of 40k].
    #[arg(long)]
    pub warmup_steps: Option<usize>,
    /// Learning-rate shape after warm-up [default: constant].
    #[arg(long, value_enum)]
    pub schedule: Option<Schedule>,
    /// AdamW weight decay [default: 0].
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Clip the global gradient norm (0: off) [default: 1].
    #[arg(long)]
    pub max_grad_norm: Option<f64>,
    /// Prompt + response tokens; longer pairs are truncated [default: 512].
    #[arg(long)]
    pub max_length: Option<usize>,
    /// Prompt tokens kept (its end) when truncating [default: 256].
    #[arg(long)]
    pub max_prompt_length: Option<usize>,
    /// Seed of data order, split and sampling [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Fraction of pairs held out for evaluation; 0 trains on every pair [default: 0.05].
    #[arg(long)]
    pub eval_fraction: Option<f64>,
    /// Evaluate on the held-out pairs every M steps (0: at the end only) [default: 50].
    #[arg(long)]
    pub eval_every: Option<usize>,
    /// Checkpoint every N steps (0: at the end only) [default: 100].
    #[arg(long)]
    pub save_every: Option<usize>,
    /// Drop malformed records (counted) instead of refusing the data file.
    #[arg(long)]
    pub skip_invalid: bool,
    /// Checkpoints without the optimiser state (a third of the disk; not resumable).
    #[arg(long)]
    pub save_only_model: bool,
    /// Write into an output directory that holds another run.
    #[arg(long)]
    pub overwrite: bool,
    /// Continue from a checkpoint directory (DIR/checkpoint-NNNNNN).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Stop with a checkpoint after this step, as an interruption would (time-boxed runs).
    #[arg(long)]
    pub stop_after: Option<usize>,
    /// Device: auto (the first GPU in a CUDA build when one answers, else the CPU), cpu, cuda, cuda:N.
    #[arg(long)]
    pub device: Option<String>,
    /// Compute precision (default: bf16 on a GPU, f32 on the CPU). Under bf16 the
    /// policy keeps f32 master weights; log-probs, losses, the KL and AdamW are f32.
    #[arg(long, value_enum)]
    pub dtype: Option<Precision>,
    /// LoRA: train rank-r adapters on the projections instead of every weight (0: full fine-tune).
    #[arg(long)]
    pub lora_r: Option<usize>,
    /// LoRA's α: the update is scaled by α/r [default: 2·r].
    #[arg(long)]
    pub lora_alpha: Option<f64>,
    /// Dropout on the adapters' inputs while training.
    #[arg(long)]
    pub lora_dropout: Option<f64>,
    /// Adapted projections, comma-separated (PEFT names) [default: all seven].
    #[arg(long, value_delimiter = ',')]
    pub lora_targets: Option<Vec<String>>,
    /// Continue training this LoRA adapter directory (a new run starting from it).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
}

macro_rules! overlay {
    ($cfg:ident, $args:ident, $($field:ident),*) => {
        $( if let Some(v) = $args.$field.clone() { $cfg.$field = v; } )*
    };
}

/// The defaults, overridden by the TOML file `path` when given (`--config`).
pub fn config_file(path: Option<&Path>) -> Result<TrainConfig> {
    let Some(path) = path else { return Ok(TrainConfig::default()) };
    let text = crate::fsx::read_text(path).context("--config")?;
    toml::from_str(&text).or_else(|e| usage(format!("--config {}: {e}", path.display())))
}

/// The configuration: defaults ← TOML file ← flags.
pub fn config(args: &TrainArgs) -> Result<TrainConfig> {
    let mut cfg = config_file(args.config.as_deref())?;
    overlay!(
        cfg,
        args,
        model,
        data,
        out,
        loss,
        alpha,
        beta,
        weighting,
        gamma,
        kl_refresh,
        kl_samples,
        kl_max_tokens,
        kl_micro_batch,
        steps,
        batch_size,
        micro_batch_size,
        lr,
        schedule,
        weight_decay,
        max_grad_norm,
        max_length,
        max_prompt_length,
        seed,
        eval_fraction,
        eval_every,
        save_every,
        device,
        lora_r,
        lora_dropout,
        lora_targets
    );
    if args.lora_alpha.is_some() {
        cfg.lora_alpha = args.lora_alpha;
    }
    if args.adapter.is_some() {
        cfg.adapter = args.adapter.clone();
    }
    if args.warmup_steps.is_some() {
        cfg.warmup_steps = args.warmup_steps;
    }
    if args.dtype.is_some() {
        cfg.dtype = args.dtype;
    }
    cfg.skip_invalid |= args.skip_invalid;
    cfg.overwrite |= args.overwrite;
    cfg.save_only_model |= args.save_only_model;
    if cfg.model.as_os_str().is_empty() || cfg.data.as_os_str().is_empty() {
        return usage("--model and --data are required (as flags or in --config)");
    }
    cfg.validate().or_else(|e| usage(format!("--{}", e.replace('_', "-"))))?;
    Ok(cfg)
}

struct Bar(ProgressBar);

impl Progress for Bar {
    fn step(&mut self, step: usize, total: usize, m: &Map<String, Value>) {
        let f = |k: &str| m.get(k).and_then(Value::as_f64);
        self.0.set_length(total as u64);
        self.0.set_position(step as u64);
        let mut msg = format!("loss {:.4}", f("loss").unwrap_or(f64::NAN));
        if let Some(kl) = f("kl") {
            msg += &format!(" kl {kl:.4}");
        }
        msg += &format!(" acc {:.2}", f("rewards/accuracies").unwrap_or(f64::NAN));
        if let Some(a) = f("eval/accuracy") {
            msg += &format!(" eval-acc {a:.2}");
        }
        self.0.set_message(msg);
    }

    fn note(&mut self, msg: &str) {
        // a hidden bar (stderr is not a terminal) swallows println
        if self.0.is_hidden() {
            eprintln!("{msg}");
        } else {
            self.0.println(msg);
        }
    }
}

/// Where an output directory stands for a configuration (sweeps and the demo
/// continue runs instead of refusing them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    /// Nothing of this run yet.
    Fresh,
    /// Its `final/` model is written.
    Finished,
    /// Interrupted: continue from this checkpoint.
    Resumable(PathBuf),
}

/// The configuration of the run `out` holds (its `run_config.json`), if any.
fn recorded_run(out: &Path) -> Result<Option<TrainConfig>> {
    let path = out.join("run_config.json");
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(None) };
    serde_json::from_str(&text).map(Some).with_context(|| format!("{}: not a spo run configuration", path.display()))
}

/// `cfg` as a continuation of `earlier`, or a usage error listing every option
/// that would change what the run is.
fn continuing(cfg: &TrainConfig, earlier: &TrainConfig, what: &str) -> Result<(TrainConfig, Vec<String>)> {
    cfg.clone().continuing(earlier).or_else(|diff| {
        usage(format!(
            "{what} was made with other settings; these would change the run:\n  {}\n\
             (only {} may change on resume; start a new run with another --out, or --overwrite)",
            diff.join("\n  "),
            crate::train::config::RESUMABLE_CHANGES.map(|k| format!("--{}", k.replace('_', "-"))).join(", ")
        ))
    })
}

/// Where `cfg.out` stands; an error when it holds a different run.
pub fn run_state(cfg: &TrainConfig) -> Result<RunState> {
    let Some(earlier) = recorded_run(&cfg.out)? else { return Ok(RunState::Fresh) };
    continuing(cfg, &earlier, &cfg.out.display().to_string())?;
    if crate::model::load::is_model_dir(&cfg.out.join("final")) {
        return Ok(RunState::Finished);
    }
    let latest = std::fs::read_dir(&cfg.out)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("optimizer.safetensors").is_file())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("checkpoint-")))
        .max();
    Ok(latest.map_or(RunState::Fresh, RunState::Resumable))
}

/// The configuration to train from `resume`: checked against the checkpoint's own
/// run (refused with a diff when it would change it), with the allowed changes
/// appended to `OUT/resumes.jsonl` as a record of how the run was continued.
fn resumed_config(cfg: &TrainConfig, resume: &Path) -> Result<TrainConfig> {
    let state = crate::train::checkpoint::read_state(resume)?;
    let (cfg, changes) = continuing(cfg, &state.config, &format!("checkpoint {}", resume.display()))?;
    std::fs::create_dir_all(&cfg.out).with_context(|| format!("creating {}", cfg.out.display()))?;
    let row = serde_json::json!({"resumed_from": resume, "step": state.step, "changed": changes});
    crate::jsonl::append(&cfg.out.join("resumes.jsonl"), &[row])?;
    Ok(cfg)
}

/// Trains `cfg` (from `resume` when given) with a progress bar until it finishes,
/// `stop` is raised or `stop_after` steps are done.
pub fn train(
    cfg: &TrainConfig,
    resume: Option<&Path>,
    stop: &Arc<AtomicBool>,
    stop_after: Option<usize>,
) -> Result<()> {
    let mut cfg = match resume {
        Some(dir) => resumed_config(cfg, dir)?,
        None => cfg.clone(),
    };
    // The run records what it ran on and in: a resume finds its precision there.
    let placement = Placement::resolve(&cfg.device, cfg.dtype).or_else(|e| usage(e.to_string()))?;
    (cfg.device, cfg.dtype) = (placement.device_name(), Some(placement.precision));
    let cfg = &cfg;
    let bar = ProgressBar::new(cfg.steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps [{elapsed_precise} < {eta_precise}, {per_sec}] {msg}")
            .expect("valid template"),
    );
    let mut progress = Bar(bar);
    let mut trainer = Trainer::new(cfg.clone(), placement.precision.dtype(), &placement.device, resume, &mut progress)?;
    let (n_train, n_eval) = trainer.sizes();
    progress.note(&format!("{n_train} training pairs, {n_eval} held out; {:?} loss", cfg.loss));
    std::fs::create_dir_all(&cfg.out)?;
    let recorded = TrainConfig { overwrite: false, ..cfg.clone() };
    crate::fsx::write_atomic(&cfg.out.join("run_config.json"), serde_json::to_string_pretty(&recorded)?.as_bytes())?;
    trainer.run(stop, stop_after, &mut progress)?;
    progress.0.finish();
    Ok(())
}

/// Trains `cfg` to its last step: skipped when finished, continued from the last
/// checkpoint when interrupted, started otherwise. Returns whether it finished.
pub fn train_to_end(cfg: &TrainConfig, stop: &Arc<AtomicBool>) -> Result<bool> {
    match run_state(cfg)? {
        RunState::Finished => return Ok(true),
        RunState::Resumable(dir) => train(cfg, Some(&dir), stop, None)?,
        RunState::Fresh => train(cfg, None, stop, None)?,
    }
    Ok(matches!(run_state(cfg)?, RunState::Finished))
}

/// Makes `cfg.out` ready for a fresh run: refused when it holds a run (unless
/// `--overwrite`, which removes that run whole first, so none of its checkpoints
/// can mix into the new one) or files that are not a run.
fn prepare_fresh_out(cfg: &TrainConfig) -> Result<()> {
    let out = &cfg.out;
    let inputs = [("--model", cfg.model.as_path()), ("--data", cfg.data.as_path())];
    crate::fsx::check_output_dir("--out", out, &inputs)?;
    let Ok(mut entries) = std::fs::read_dir(out) else { return Ok(()) };
    if entries.next().is_none() {
        return Ok(());
    }
    let earlier = recorded_run(out).ok().flatten();
    match (earlier, cfg.overwrite) {
        (Some(_), true) => crate::fsx::remove_dir_atomically(out),
        (Some(earlier), false) => {
            let what = if cfg.clone().continuing(&earlier).is_ok() { "this run" } else { "a different run" };
            usage(format!(
                "--out {} already holds {what}; pass --resume {}/checkpoint-NNNNNN to continue it or --overwrite to start over",
                out.display(),
                out.display()
            ))
        }
        (None, _) => usage(format!(
            "--out {} holds files that are not a spo run; choose an empty or new directory",
            out.display()
        )),
    }
}

/// A flag raised by Ctrl-C: training finishes the current step, writes a
/// checkpoint and returns (`Trainer::run`). Set once per process.
pub fn stop_on_ctrl_c() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
    stop
}

/// Runs `spo train`.
pub fn run(args: TrainArgs) -> Result<()> {
    let cfg = config(&args)?;
    match &args.resume {
        Some(_) if cfg.overwrite => return usage("--resume continues a run and --overwrite removes it: give one"),
        Some(_) => crate::fsx::check_output_dir("--out", &cfg.out, &[("--data", cfg.data.as_path())])?,
        None => prepare_fresh_out(&cfg)?,
    }
    let stop = stop_on_ctrl_c();
    train(&cfg, args.resume.as_deref(), &stop, args.stop_after)
}
