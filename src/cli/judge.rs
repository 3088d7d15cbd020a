//! `spo judge`: every candidate pair judged twice (order flipped), filtered by the
//! paper's rule, written as TRL-layout preference pairs, with a report. Resumable:
//! verdicts go to `OUT.verdicts.jsonl` as they come; a rerun judges only the rest.

use super::args::usage;
use super::pairs::CandidatePair;
use crate::judge::filter::{decide, Decision, FilterRule, Report};
use crate::judge::rules::RulesJudge;
use crate::judge::{Judge, Verdict};
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
}

/// Flags of `spo judge`.
#[derive(Debug, Args)]
pub struct JudgeArgs {
    /// Candidate pairs from `spo pairs`.
    #[arg(long)]
    pub pairs: PathBuf,
    /// Which judge.
    #[arg(long, value_enum, default_value = "rules")]
    pub judge: JudgeKind,
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
}

/// One pair's judging record.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    index: usize,
    ab: Option<Verdict>,
    ba: Option<Verdict>,
    error: Option<String>,
}

fn log_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".verdicts.jsonl");
    out.with_file_name(name)
}

/// Runs `spo judge`.
pub fn run(args: JudgeArgs) -> Result<()> {
    if !(args.min_gap >= 0.0 && args.min_gap_second >= 0.0) {
        return usage("--min-gap and --min-gap-second must be ≥ 0");
    }
    let rule = FilterRule { min_gap: args.min_gap, min_gap_second: args.min_gap_second };
    let pairs: Vec<CandidatePair> = crate::jsonl::recover(&args.pairs)?
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            serde_json::from_value(v)
                .with_context(|| format!("{}:{}: not a candidate pair", args.pairs.display(), i + 1))
        })
        .collect::<Result<_>>()?;
    let judge: Box<dyn Judge> = match args.judge {
        JudgeKind::Rules => Box::new(RulesJudge),
    };
    let log = log_path(&args.out);
    let mut records: Vec<Record> = crate::jsonl::recover(&log)?
        .into_iter()
        .map(serde_json::from_value)
        .collect::<Result<_, _>>()
        .with_context(|| format!("{}: corrupt verdict log", log.display()))?;
    let done: HashSet<usize> = records.iter().map(|r| r.index).collect();
    let story = |p: &CandidatePair, r: &str| if p.prefix { format!("{}{r}", p.prompt) } else { r.to_string() };
    for p in pairs.iter().filter(|p| !done.contains(&p.index)) {
        let (a, b) = (story(p, &p.response_a), story(p, &p.response_b));
        let (ab, ba) = (judge.judge(&p.prompt, &a, &b), judge.judge(&p.prompt, &b, &a));
        let error = [&ab, &ba].iter().find_map(|r| r.as_ref().err().map(|e| format!("{e:#}")));
        let rec = Record { index: p.index, ab: ab.ok(), ba: ba.ok(), error };
        crate::jsonl::append(&log, std::slice::from_ref(&rec))?;
        records.push(rec);
    }
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
        let row = match d {
            Decision::KeepA => json!({"prompt": p.prompt, "chosen": p.response_a, "rejected": p.response_b,
                "score_chosen": [ab.score_1, ba.score_2], "score_rejected": [ab.score_2, ba.score_1], "chosen_position": [1, 2]}),
            Decision::KeepB => json!({"prompt": p.prompt, "chosen": p.response_b, "rejected": p.response_a,
                "score_chosen": [ab.score_2, ba.score_1], "score_rejected": [ab.score_1, ba.score_2], "chosen_position": [2, 1]}),
            _ => continue,
        };
        kept.push((r.index, row));
    }
    kept.sort_by_key(|(i, _)| *i);
    let tmp = args.out.with_extension("jsonl.tmp");
    std::fs::write(&tmp, kept.iter().map(|(_, r)| format!("{r}\n")).collect::<String>())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &args.out).with_context(|| format!("writing {}", args.out.display()))?;
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
        println!(
            "  position bias: mean(score 2 − score 1) = {:+.3}; story 2 wins {:.1}% of untied verdicts",
            report.position_bias,
            100.0 * report.second_wins
        );
        println!("wrote {} ({} pairs)", args.out.display(), report.kept);
    }
    Ok(())
}
