//! `spo sweep`: `spo train` over a grid of (loss, α, β, μ), one run after another,
//! resumable (finished runs are skipped, interrupted ones continue), then one
//! evaluation of every run: a summary table and one win-rate figure.

use super::args::usage;
use super::eval::{evaluate, figure, peak, table, write_json, EvalOptions, EvalReport};
use super::train::{config_file, stop_on_ctrl_c, train_to_end};
use crate::eval::runs::discover;
use crate::train::config::{LossKind, TrainConfig, WeightingKind};
use anyhow::Result;
use clap::Args;
use serde_json::json;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

/// Flags of `spo sweep`. The grid defaults are the paper's (section 6).
#[derive(Debug, Args)]
pub struct SweepArgs {
    /// Starting model (and reference) of every run.
    #[arg(long)]
    pub model: PathBuf,
    /// Preference pairs.
    #[arg(long)]
    pub data: PathBuf,
    /// Sweep directory: one run directory per grid point, summary.{json,txt}, winrate.png.
    #[arg(long, default_value = "runs/sweep")]
    pub out: PathBuf,
    /// TOML file with the `spo train` options shared by every run.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Objectives to sweep.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "spo,dpo")]
    pub losses: Vec<LossKind>,
    /// SPO α values.
    #[arg(long, value_delimiter = ',', default_value = "0.003,0.01,0.03,0.1")]
    pub alphas: Vec<f64>,
    /// β values (SPO's KL weight; DPO's temperature).
    #[arg(long, value_delimiter = ',', default_value = "0.003,0.01,0.03,0.1")]
    pub betas: Vec<f64>,
    /// SPO pair weights μ.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "uniform,soft-importance")]
    pub weightings: Vec<WeightingKind>,
    /// Optimiser steps of every run (overrides the config file).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Pairs per step (overrides the config file).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Peak learning rate (overrides the config file).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Checkpoint (and evaluate) every N steps (overrides the config file).
    #[arg(long)]
    pub save_every: Option<usize>,
    /// Train LoRA adapters of this rank instead of every weight (overrides the config file).
    #[arg(long)]
    pub lora_r: Option<usize>,
    /// Train only; evaluate later with `spo eval --checkpoints DIR/*`.
    #[arg(long)]
    pub no_eval: bool,
    /// Sampling and judging of the evaluation.
    #[command(flatten)]
    pub eval: EvalOptions,
}

/// The objective's name in run names and tables.
fn loss_name(loss: LossKind) -> String {
    format!("{loss:?}").to_lowercase()
}

/// μ's short name in run names and tables.
fn mu_name(w: WeightingKind) -> &'static str {
    match w {
        WeightingKind::Uniform => "uniform",
        WeightingKind::SoftImportance => "softimp",
    }
}

/// One grid point: its directory name and configuration.
fn grid(args: &SweepArgs, base: &TrainConfig) -> Vec<(String, TrainConfig)> {
    let mut runs = Vec::new();
    let at = |name: String, loss, alpha, beta, weighting| {
        let cfg = TrainConfig { out: args.out.join(&name), loss, alpha, beta, weighting, ..base.clone() };
        (name, cfg)
    };
    for &loss in &args.losses {
        for &beta in &args.betas {
            if loss != LossKind::Spo {
                let name = format!("{}-b{beta}", loss_name(loss));
                runs.push(at(name, loss, base.alpha, beta, WeightingKind::Uniform));
                continue;
            }
            for &alpha in &args.alphas {
                for &w in &args.weightings {
                    runs.push(at(format!("spo-a{alpha}-b{beta}-{}", mu_name(w)), loss, alpha, beta, w));
                }
            }
        }
    }
    runs
}

/// Runs `spo sweep`.
pub fn run(args: SweepArgs) -> Result<()> {
    let mut base = config_file(args.config.as_deref())?;
    base.model = args.model.clone();
    base.data = args.data.clone();
    base.overwrite = false;
    base.steps = args.steps.unwrap_or(base.steps);
    base.batch_size = args.batch_size.unwrap_or(base.batch_size);
    base.lr = args.lr.unwrap_or(base.lr);
    base.save_every = args.save_every.unwrap_or(base.save_every);
    base.lora_r = args.lora_r.unwrap_or(base.lora_r);
    base.device = args.eval.placement.device.clone();
    base.dtype = args.eval.placement.dtype.or(base.dtype);
    crate::fsx::check_output_dir("--out", &args.out, &[("--model", &args.model), ("--data", &args.data)])?;
    let runs = grid(&args, &base);
    if runs.is_empty() {
        return usage("the grid is empty (no --losses, --betas, --alphas or --weightings)");
    }
    for (_, cfg) in &runs {
        cfg.validate().or_else(|e| usage(format!("--{}", e.replace('_', "-"))))?;
    }
    if !args.no_eval {
        args.eval.spec()?; // refuse bad evaluation flags before hours of training
    }
    let stop = stop_on_ctrl_c();
    for (k, (name, cfg)) in runs.iter().enumerate() {
        eprintln!("[{}/{}] {name}", k + 1, runs.len());
        if !train_to_end(cfg, &stop)? || stop.load(Ordering::SeqCst) {
            eprintln!("sweep interrupted during {name}; rerun the same command to finish the remaining runs");
            return Ok(());
        }
    }
    if args.no_eval {
        return Ok(());
    }
    let dirs: Vec<PathBuf> = runs.iter().map(|(_, c)| c.out.clone()).collect();
    let report = evaluate(&args.model, &discover(&dirs)?, &args.eval, &mut |m| eprintln!("{m}"))?;
    let summary = summary(&report, &runs);
    write_json(
        &args.out.join("summary.json"),
        &json!({"runs": report.runs, "configs": runs.iter().map(|(n, c)| (n.clone(), c.clone())).collect::<std::collections::BTreeMap<_, _>>(), "judge": report.judge, "samples": report.samples}),
    )?;
    std::fs::write(args.out.join("summary.txt"), format!("{summary}\n{}", table(&report)))?;
    figure(&report, &args.out.join("winrate.png"))?;
    print!("{summary}");
    eprintln!("wrote {0}/summary.json, {0}/summary.txt, {0}/winrate.png", args.out.display());
    Ok(())
}

/// One line per run: its grid point, final and peak win rate, and the final model's
/// entropy and KL.
fn summary(report: &EvalReport, runs: &[(String, TrainConfig)]) -> String {
    let mut s = format!(
        "{:<28} {:>5} {:>7} {:>7} {:>8} {:>22} {:>16} {:>8} {:>8}\n",
        "run", "loss", "alpha", "beta", "mu", "final win rate [95%]", "peak (step)", "entropy", "KL"
    );
    for (name, cfg) in runs {
        let Some(points) = report.runs.get(name) else { continue };
        let Some(last) = points.last() else { continue };
        let peak = peak(points);
        let is_spo = cfg.loss == LossKind::Spo;
        s += &format!(
            "{:<28} {:>5} {:>7} {:>7} {:>8} {:>22} {:>16} {:>8.3} {:>8}\n",
            name,
            loss_name(cfg.loss),
            if is_spo { cfg.alpha.to_string() } else { "-".into() },
            cfg.beta,
            if is_spo { mu_name(cfg.weighting) } else { "-" },
            format!("{:.1}% [{:.1}, {:.1}]", 100.0 * last.win.win_rate, 100.0 * last.win.ci[0], 100.0 * last.win.ci[1]),
            format!("{:.1}% ({})", 100.0 * peak.win.win_rate, peak.step),
            last.entropy,
            last.kl.map_or("-".into(), |k| format!("{k:.3}")),
        );
    }
    s
}
