//! `spo eval`: win rate against the reference over training (the paper's Figure 1),
//! with diversity, judge score and KL per checkpoint; table, JSON and figure.

use super::args::{prompts_or_prefix, usage};
use super::judge::JudgeOptions;
use crate::eval::runs::{discover, Run};
use crate::eval::{EvalSpec, Evaluator, PointReport};
use crate::plot::{winrate_figure, WinRateCurve};
use anyhow::{Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// How models are sampled and judged: shared by `spo eval`, `spo sweep` and `spo demo`.
#[derive(Debug, Clone, Args)]
pub struct EvalOptions {
    /// File of prompts, one per line (sample i answers line i mod n).
    #[arg(long, conflicts_with = "prefix")]
    pub prompts: Option<PathBuf>,
    /// Story opening every sample continues (the paper: "Once upon a time").
    #[arg(long)]
    pub prefix: Option<String>,
    /// Each prompt is a user message rendered with the model's chat template.
    #[arg(long, conflicts_with = "prefix")]
    pub chat: bool,
    /// Samples per model [default: one per prompt; 64 with --prefix].
    #[arg(long)]
    pub num_samples: Option<usize>,
    /// Maximum new tokens per sample.
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// Sampling temperature (the KL estimate is reported at 1 only).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    /// Seed: sample i of every model uses the same random stream.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Samples drawn per batch (part of the seeding: keep it to compare runs).
    #[arg(long, default_value_t = 16)]
    pub sample_batch_size: usize,
    /// Where sample sets (and the openai judge's verdicts) are cached.
    #[arg(long, default_value = ".spo-eval-cache")]
    pub cache: PathBuf,
    /// The judge.
    #[command(flatten)]
    pub judge: JudgeOptions,
    /// Device and precision of sampling and scoring.
    #[command(flatten)]
    pub placement: super::args::PlacementArgs,
}

impl EvalOptions {
    /// The sampling settings these flags describe.
    pub fn spec(&self) -> Result<EvalSpec> {
        let (prompts, prefix) = prompts_or_prefix(self.prompts.as_deref(), self.prefix.as_deref())?;
        let num_samples = self.num_samples.unwrap_or(if prefix { 64 } else { prompts.len() });
        if num_samples == 0 || self.sample_batch_size == 0 {
            return usage("--num-samples and --sample-batch-size must be at least 1");
        }
        let sampling = crate::sample::SamplingConfig {
            max_new_tokens: self.max_tokens,
            temperature: self.temperature,
            ..Default::default()
        };
        sampling.validate().or_else(|e| usage(format!("--{e}")))?;
        Ok(EvalSpec {
            prompts,
            prefix,
            chat: self.chat,
            num_samples,
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            seed: self.seed,
            batch_size: self.sample_batch_size,
        })
    }
}

/// Flags of `spo eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The reference model (the starting point of training).
    #[arg(long)]
    pub reference: PathBuf,
    /// A LoRA adapter directory trained on --reference: the reference is then the
    /// base with this adapter (e.g. a run continued from an adapter).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Run directories (all their checkpoints, in step order), checkpoints, or models.
    #[arg(long, num_args = 1.., required = true)]
    pub checkpoints: Vec<PathBuf>,
    /// Sampling and judging.
    #[command(flatten)]
    pub options: EvalOptions,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON report to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Draw win rate vs step, one curve per run with its 95% band (.png or .svg).
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// The whole evaluation: every run's points, each starting with the reference
/// judged against itself at step 0.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalReport {
    /// The reference model.
    pub reference: String,
    /// The judge's name.
    pub judge: String,
    /// Sampling settings (prompts summarised).
    pub samples: serde_json::Value,
    /// Per run, per evaluated step.
    pub runs: BTreeMap<String, Vec<PointReport>>,
}

/// Evaluates `runs` against `reference`; `note` hears progress.
pub fn evaluate(
    reference: &Path,
    runs: &[Run],
    options: &EvalOptions,
    note: &mut dyn FnMut(&str),
) -> Result<EvalReport> {
    let spec = options.spec()?;
    let judge = options.judge.build(options.cache.join("judge-cache.jsonl"))?;
    let evaluator = Evaluator::new(reference, spec.clone(), &options.cache, judge.as_ref(), options.judge.concurrency)?
        .on(options.placement.resolve()?);
    let baseline = evaluator.evaluate(reference, 0, note)?;
    let mut out = BTreeMap::new();
    for run in runs {
        let mut points = vec![baseline.clone()];
        for p in run.points.iter().filter(|p| p.step > 0) {
            let r = evaluator.evaluate(&p.path, p.step, note)?;
            note(&format!(
                "{} step {}: win rate {:.1}% [{:.1}, {:.1}]",
                run.name,
                p.step,
                100.0 * r.win.win_rate,
                100.0 * r.win.ci[0],
                100.0 * r.win.ci[1]
            ));
            points.push(r);
        }
        out.insert(run.name.clone(), points);
    }
    Ok(EvalReport {
        reference: reference.display().to_string(),
        judge: judge.name(),
        samples: serde_json::json!({
            "prompts": spec.prompts.len(),
            "first_prompt": spec.prompts[0],
            "prefix": spec.prefix,
            "chat": spec.chat,
            "num_samples": spec.num_samples,
            "max_tokens": spec.max_tokens,
            "temperature": spec.temperature,
            "seed": spec.seed,
        }),
        runs: out,
    })
}

/// The point of a run with the highest win rate (the latest on ties).
pub fn peak(points: &[PointReport]) -> &PointReport {
    points.iter().max_by(|a, b| a.win.win_rate.total_cmp(&b.win.win_rate)).expect("step 0 at least")
}

/// The report as a table, one row per run and step.
pub fn table(report: &EvalReport) -> String {
    let mut s = format!(
        "judge {} — {} samples per model, both orders\n{:<16} {:>6} {:>9} {:>15} {:>10} {:>6} {:>6} {:>7} {:>8} {:>8}\n",
        report.judge,
        report.samples["num_samples"],
        "run",
        "step",
        "win rate",
        "95% interval",
        "W/T/L",
        "score",
        "ref",
        "dist-2",
        "entropy",
        "KL"
    );
    for (name, points) in &report.runs {
        for p in points {
            let w = &p.win;
            s += &format!(
                "{:<16} {:>6} {:>8.1}% {:>15} {:>10} {:>6.2} {:>6.2} {:>7.3} {:>8.3} {:>8}\n",
                name,
                p.step,
                100.0 * w.win_rate,
                format!("[{:.1}, {:.1}]", 100.0 * w.ci[0], 100.0 * w.ci[1]),
                format!("{}/{}/{}", w.wins, w.ties, w.losses),
                w.model_score,
                w.reference_score,
                p.distinct_2,
                p.entropy,
                p.kl.map_or("-".into(), |k| format!("{k:.3}"))
            );
        }
    }
    s
}

/// Draws the report's runs into one figure.
pub fn figure(report: &EvalReport, path: &Path) -> Result<()> {
    let curves: Vec<WinRateCurve> = report
        .runs
        .iter()
        .map(|(name, points)| WinRateCurve {
            label: name.clone(),
            points: points.iter().map(|p| (p.step as f64, p.win.win_rate, p.win.ci[0], p.win.ci[1])).collect(),
        })
        .collect();
    let title = format!(
        "Win rate vs the reference ({}, {} samples, 95% Wilson bands)",
        report.judge, report.samples["num_samples"]
    );
    winrate_figure(&curves, &title, path)
}

/// Writes `value` as pretty JSON to `path`, atomically.
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    crate::fsx::write_atomic(path, serde_json::to_string_pretty(value)?.as_bytes())
}

/// The reference for `--reference BASE --adapter DIR`: the adapter directory, which
/// loads onto the base it names, once that base is checked to be `BASE`.
fn adapted_reference(base: &Path, adapter: &Path) -> Result<PathBuf> {
    let (_, named) = crate::model::lora::read_config(adapter).context("--adapter")?;
    let same = |p: &Path| std::fs::canonicalize(p).ok();
    match named {
        Some(named) if same(&named).is_some() && same(&named) == same(base) => Ok(adapter.to_path_buf()),
        named => usage(format!(
            "--adapter {} was trained on {}, not on --reference {}",
            adapter.display(),
            named.map_or("no named base".into(), |n| n.display().to_string()),
            base.display()
        )),
    }
}

/// What `spo eval` computes and writes (`--out`, `--plot`); progress goes to stderr.
pub fn evaluate_and_write(args: &EvalArgs) -> Result<EvalReport> {
    let inputs: Vec<(&str, &Path)> = std::iter::once(("--reference", args.reference.as_path()))
        .chain(args.checkpoints.iter().map(|c| ("--checkpoints", c.as_path())))
        .collect();
    if let Some(p) = &args.plot {
        crate::plot::Format::from_path(p).or_else(|e| usage(format!("--plot: {e}")))?;
        crate::fsx::check_output_file("--plot", p, &inputs)?;
    }
    if let Some(out) = &args.out {
        crate::fsx::check_output_file("--out", out, &inputs)?;
    }
    let runs = discover(&args.checkpoints)?;
    let reference = match &args.adapter {
        Some(adapter) => adapted_reference(&args.reference, adapter)?,
        None => args.reference.clone(),
    };
    let report = evaluate(&reference, &runs, &args.options, &mut |m| eprintln!("{m}"))?;
    if let Some(out) = &args.out {
        write_json(out, &report)?;
    }
    if let Some(p) = &args.plot {
        figure(&report, p)?;
        eprintln!("wrote {}", p.display());
    }
    Ok(report)
}

/// Runs `spo eval`.
pub fn run(args: EvalArgs) -> Result<()> {
    let report = evaluate_and_write(&args)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", table(&report));
    }
    Ok(())
}
