//! `spo judge`: every candidate pair judged twice (order flipped), filtered by the
//! paper's rule, written as TRL-layout preference pairs, with a report. Resumable:
//! verdicts go to `OUT.verdicts.jsonl` as they come; a rerun judges only the rest.

use super::args::usage;
use super::pairs::CandidatePair;
use crate::judge::filter::{decide, Decision, FilterRule, Report};
use crate::judge::openai::{OpenAiConfig, OpenAiJudge, PAPER_PROMPT};
use crate::judge::rules::RulesJudge;
use crate::judge::{judge_both_orders, Judge, Match, Verdict};
use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Available judges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum JudgeKind {
    /// Offline text-statistics judge for the paper's criterion (spo::judge::rules).
    Rules,
    /// Any OpenAI-compatible chat-completions endpoint (--judge-url, --judge-model).
    Openai,
}

/// Which judge and how to reach it: shared by `spo judge` and `spo eval`.
#[derive(Debug, Clone, Args)]
pub struct JudgeOptions {
    /// Which judge.
    #[arg(long, value_enum, default_value = "rules")]
    pub judge: JudgeKind,
    /// OpenAI-compatible base URL, e.g. http://127.0.0.1:8080/v1 (`spo serve`).
    #[arg(long)]
    pub judge_url: Option<String>,
    /// Model name to request.
    #[arg(long, default_value = "gpt-3.5-turbo")]
    pub judge_model: String,
    /// Environment variable holding the API key (never logged).
    #[arg(long, default_value = "OPENAI_API_KEY")]
    pub judge_api_key_env: String,
    /// Prompt template replacing the paper's ({story_1}, {story_2}, {prompt}).
    #[arg(long)]
    pub judge_prompt: Option<PathBuf>,
    /// Verdict cache (JSONL) of the openai judge [default: beside the output].
    #[arg(long)]
    pub judge_cache: Option<PathBuf>,
    /// Requests in flight at once (16: what `spo serve` decodes together by default).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Attempts per verdict (errors, 429/5xx, unparseable answers).
    #[arg(long, default_value_t = 3)]
    pub attempts: usize,
    /// Seconds before a request times out.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// Maximum tokens of each judge answer.
    #[arg(long, default_value_t = 512)]
    pub judge_max_tokens: usize,
}

impl JudgeOptions {
    /// The judge; the openai one caches its verdicts in `--judge-cache` or `default_cache`.
    pub fn build(&self, default_cache: PathBuf) -> Result<Box<dyn Judge + Sync>> {
        Ok(match self.judge {
            JudgeKind::Rules => Box::new(RulesJudge),
            JudgeKind::Openai => {
                let Some(url) = self.judge_url.clone() else { return usage("--judge openai needs --judge-url") };
                let template = match &self.judge_prompt {
                    Some(p) => {
                        std::fs::read_to_string(p).with_context(|| format!("reading --judge-prompt {}", p.display()))?
                    }
                    None => PAPER_PROMPT.to_string(),
                };
                Box::new(OpenAiJudge::new(OpenAiConfig {
                    url,
                    model: self.judge_model.clone(),
                    api_key: std::env::var(&self.judge_api_key_env).ok(),
                    template,
                    attempts: self.attempts,
                    timeout: std::time::Duration::from_secs(self.timeout),
                    max_tokens: self.judge_max_tokens,
                    cache: Some(self.judge_cache.clone().unwrap_or(default_cache)),
                })?)
            }
        })
    }
}

/// Flags of `spo judge`.
#[derive(Debug, Args)]
pub struct JudgeArgs {
    /// Candidate pairs from `spo pairs`.
    #[arg(long)]
    pub pairs: PathBuf,
    /// Output: kept pairs as TRL-layout JSONL.
    #[arg(long)]
    pub out: PathBuf,
    /// Minimum score gap when the winner is shown first.
    #[arg(long, default_value_t = 2.0)]
    pub min_gap: f64,
    /// Minimum score gap when the winner is shown second (the judge favours story 2).
    #[arg(long, default_value_t = 3.0)]
    pub min_gap_second: f64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Fraction of pairs whose verdicts may fail (endpoint errors, unparseable
    /// answers) while the run still succeeds; above it spo exits non-zero. A rerun
    /// retries the failed pairs.
    #[arg(long, default_value_t = 0.0, value_parser = super::args::non_negative)]
    pub max_failed_fraction: f64,
    /// The judge.
    #[command(flatten)]
    pub judge: JudgeOptions,
}

/// One pair's judging record.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    index: usize,
    ab: Option<Verdict>,
    ba: Option<Verdict>,
    error: Option<String>,
}

/// Judges each pending pair in both orders, appending every record to the log as
/// it arrives (so a kill loses at most the pairs in flight).
fn judge_all(
    judge: &(dyn Judge + Sync),
    pending: &[&CandidatePair],
    workers: usize,
    log: &Path,
) -> Result<Vec<Record>> {
    let story = |p: &CandidatePair, r: &str| if p.prefix { format!("{}{r}", p.prompt) } else { r.to_string() };
    let matches: Vec<Match> = pending
        .iter()
        .map(|p| Match { prompt: p.prompt.clone(), a: story(p, &p.response_a), b: story(p, &p.response_b) })
        .collect();
    let mut out = Vec::with_capacity(pending.len());
    judge_both_orders(judge, &matches, workers, |i, ab, ba| {
        let error = [&ab, &ba].iter().find_map(|r| r.as_ref().err().map(|e| format!("{e:#}")));
        let rec = Record { index: pending[i].index, ab: ab.ok(), ba: ba.ok(), error };
        if let Some(e) = &rec.error {
            eprintln!("pair {}: {e}", rec.index);
        }
        crate::jsonl::append(log, std::slice::from_ref(&rec))?;
        out.push(rec);
        if out.len() % 10 == 0 {
            eprintln!("{}/{} pairs judged", out.len(), pending.len());
        }
        Ok(())
    })?;
    Ok(out)
}

/// Runs `spo judge`.
pub fn run(args: JudgeArgs) -> Result<()> {
    if !(args.min_gap >= 0.0 && args.min_gap_second >= 0.0) {
        return usage("--min-gap and --min-gap-second must be ≥ 0");
    }
    let rule = FilterRule { min_gap: args.min_gap, min_gap_second: args.min_gap_second };
    let log = crate::fsx::suffixed(&args.out, ".verdicts.jsonl");
    crate::fsx::check_output_file("--out", &args.out, &[("--pairs", &args.pairs)])?;
    crate::fsx::check_output_file("--out's verdict log", &log, &[("--pairs", &args.pairs)])?;
    let pairs: Vec<CandidatePair> = crate::jsonl::recover(&args.pairs)?
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            serde_json::from_value(v)
                .with_context(|| format!("{}:{}: not a candidate pair", args.pairs.display(), i + 1))
        })
        .collect::<Result<_>>()?;
    let judge = args.judge.build(crate::fsx::suffixed(&args.out, ".judge-cache.jsonl"))?;
    let mut records: Vec<Record> = crate::jsonl::recover(&log)?
        .into_iter()
        .map(serde_json::from_value)
        .collect::<Result<_, _>>()
        .with_context(|| format!("{}: corrupt verdict log", log.display()))?;
    // failed verdicts are not results: a rerun asks again (the latest record wins)
    records.retain(|r| r.ab.is_some() && r.ba.is_some());
    let done: HashSet<usize> = records.iter().map(|r| r.index).collect();
    let pending: Vec<&CandidatePair> = pairs.iter().filter(|p| !done.contains(&p.index)).collect();
    records.extend(judge_all(judge.as_ref(), &pending, args.judge.concurrency.max(1), &log)?);
    let decisions: Vec<Decision> = records
        .iter()
        .map(|r| match (&r.ab, &r.ba) {
            (Some(ab), Some(ba)) => decide(ab, ba, rule),
            _ => Decision::Failed,
        })
        .collect();
    let by_index: std::collections::HashMap<usize, &CandidatePair> = pairs.iter().map(|p| (p.index, p)).collect();
    let mut kept = Vec::new();
    for (r, d) in records.iter().zip(&decisions) {
        let (Some(p), Some(ab), Some(ba)) = (by_index.get(&r.index), &r.ab, &r.ba) else { continue };
        // a chat prompt becomes TRL's conversational layout, rendered again at training
        let chat = p.chat;
        let prompt = if chat { json!([{"role": "user", "content": p.prompt}]) } else { json!(p.prompt) };
        let turn = |t: &str| if chat { json!([{"role": "assistant", "content": t}]) } else { json!(t) };
        let row = match d {
            Decision::KeepA => json!({"prompt": prompt, "chosen": turn(&p.response_a), "rejected": turn(&p.response_b),
                "score_chosen": [ab.score_1, ba.score_2], "score_rejected": [ab.score_2, ba.score_1], "chosen_position": [1, 2]}),
            Decision::KeepB => json!({"prompt": prompt, "chosen": turn(&p.response_b), "rejected": turn(&p.response_a),
                "score_chosen": [ab.score_2, ba.score_1], "score_rejected": [ab.score_1, ba.score_2], "chosen_position": [2, 1]}),
            _ => continue,
        };
        kept.push((r.index, row));
    }
    kept.sort_by_key(|(i, _)| *i);
    crate::fsx::write_atomic(&args.out, kept.iter().map(|(_, r)| format!("{r}\n")).collect::<String>().as_bytes())?;
    let report =
        Report::from_decisions(records.iter().zip(&decisions).map(|(r, d)| (r.ab.as_ref(), r.ba.as_ref(), *d)));
    if args.json {
        println!("{}", serde_json::to_string(&json!({"judge": judge.name(), "rule": rule, "report": report}))?);
    } else {
        println!("judge {} — {} pairs judged twice (order flipped)", judge.name(), report.judged);
        println!("  kept                 {:>6}", report.kept);
        println!("  dropped: tie         {:>6}", report.dropped_tie);
        println!("  dropped: disagree    {:>6}", report.dropped_disagree);
        println!(
            "  dropped: small gap   {:>6}  (< {} first / < {} second)",
            report.dropped_small_gap, rule.min_gap, rule.min_gap_second
        );
        println!("  dropped: failed      {:>6}", report.dropped_failed);
        if report.untied_verdicts == 0 {
            println!("  position bias: no untied verdicts to measure it on");
        } else {
            println!(
                "  position bias: mean(score 2 − score 1) = {:+.3}; story 2 wins {:.1}% of {} untied verdicts",
                report.position_bias,
                100.0 * report.second_wins,
                report.untied_verdicts
            );
        }
        println!("wrote {} ({} pairs)", args.out.display(), report.kept);
    }
    check_failures(report.dropped_failed, report.judged, args.max_failed_fraction)
}

/// An error when more verdicts failed than `--max-failed-fraction` allows.
fn check_failures(failed: usize, judged: usize, allowed: f64) -> Result<()> {
    if failed == 0 || (failed as f64) <= allowed * judged as f64 {
        return Ok(());
    }
    anyhow::bail!(
        "{failed} of {judged} pairs have no verdict (the judge failed; see the errors above); \
         rerun to retry them, or allow some with --max-failed-fraction"
    )
}
