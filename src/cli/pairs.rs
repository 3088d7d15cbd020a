//! `spo pairs`: candidate pairs — two independent samples per prompt — resumable.

use super::args::{prompts_or_prefix, usage};
use crate::sample::{generate, SamplingConfig};
use anyhow::{Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Flags of `spo pairs`.
#[derive(Debug, Args)]
pub struct PairsArgs {
    /// Model to sample from.
    #[arg(long)]
    pub model: PathBuf,
    /// A LoRA adapter directory (PEFT format) to apply to --model.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Device and precision.
    #[command(flatten)]
    pub placement: super::args::PlacementArgs,
    /// File of prompts, one per line (pair k uses line k mod n).
    #[arg(long, conflicts_with = "prefix")]
    pub prompts: Option<PathBuf>,
    /// Unconditional generation continuing this text (the paper: "Once upon a time").
    #[arg(long)]
    pub prefix: Option<String>,
    /// Each prompt is a user message rendered with the model's chat template (the
    /// judged pairs then become conversational training data).
    #[arg(long, conflicts_with = "prefix")]
    pub chat: bool,
    /// Pairs wanted in the output file (a rerun continues up to this many).
    #[arg(long)]
    pub num_pairs: usize,
    /// Maximum new tokens per response.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Sampling temperature.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    /// Seed: pair k's samples depend only on (seed, k).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Pairs sampled per batch.
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// Output JSONL (appended to; existing complete lines are kept).
    #[arg(long)]
    pub out: PathBuf,
}

/// One candidate pair.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CandidatePair {
    /// Position in the file.
    pub index: usize,
    /// Prompt (or prefix).
    pub prompt: String,
    /// First sample.
    pub response_a: String,
    /// Second sample.
    pub response_b: String,
    /// Whether the prompt is a story prefix, so a story is prompt + response.
    pub prefix: bool,
    /// Whether the prompt was a user message in the chat template.
    #[serde(default)]
    pub chat: bool,
}

/// What made a candidate-pairs file, recorded beside it (`OUT.settings.json`): a
/// rerun continues the file only with the same settings, so one file never mixes
/// pairs of two models, prompt sets or seeds.
fn settings(args: &PairsArgs, prompts: &[String]) -> serde_json::Value {
    serde_json::json!({
        "model": args.model,
        "prompts": prompts,
        "prefix": args.prefix,
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "chat": args.chat,
    })
}

/// Pairs already in `out`, after checking that they are candidate pairs (in order)
/// made with `wanted` settings; records the settings for a new file.
fn existing_pairs(out: &std::path::Path, wanted: &serde_json::Value) -> Result<usize> {
    let record = crate::fsx::suffixed(out, ".settings.json");
    let rows = crate::jsonl::recover(out)?;
    for (i, row) in rows.iter().enumerate() {
        let ok = serde_json::from_value::<CandidatePair>(row.clone()).is_ok_and(|p| p.index == i);
        if !ok {
            return usage(format!(
                "--out {}:{}: not a candidate pair of spo pairs; choose another --out",
                out.display(),
                i + 1
            ));
        }
    }
    match std::fs::read_to_string(&record) {
        Ok(text) => {
            let earlier: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("{}: not a settings record", record.display()))?;
            let changed: Vec<String> = wanted
                .as_object()
                .expect("an object")
                .iter()
                .filter(|(k, v)| &earlier[k.as_str()] != *v)
                .map(|(k, v)| format!("{k}: {} → {v}", earlier[k.as_str()]))
                .collect();
            if !changed.is_empty() {
                return usage(format!(
                    "--out {} holds pairs made with other settings ({}); choose another --out to keep both",
                    out.display(),
                    changed.join("; ")
                ));
            }
        }
        Err(_) if rows.is_empty() => {
            crate::fsx::write_atomic(&record, serde_json::to_string_pretty(wanted)?.as_bytes())?;
        }
        Err(_) => {
            return usage(format!(
                "--out {} has no settings record ({}), so its pairs cannot be continued safely; choose another --out",
                out.display(),
                record.display()
            ))
        }
    }
    Ok(rows.len())
}

/// Runs `spo pairs`.
pub fn run(args: PairsArgs) -> Result<()> {
    let (prompts, is_prefix) = prompts_or_prefix(args.prompts.as_deref(), args.prefix.as_deref())?;
    if args.batch_size == 0 {
        return usage("--batch-size must be at least 1");
    }
    let sampling =
        SamplingConfig { max_new_tokens: args.max_tokens, temperature: args.temperature, ..Default::default() };
    sampling.validate().or_else(|e| usage(format!("--{e}")))?;
    let mut inputs = vec![("--model", args.model.as_path())];
    inputs.extend(args.prompts.as_deref().map(|p| ("--prompts", p)));
    crate::fsx::check_output_file("--out", &args.out, &inputs)?;
    let done = existing_pairs(&args.out, &settings(&args, &prompts))?;
    if done >= args.num_pairs {
        eprintln!("{} already holds {done} pairs; nothing to do", args.out.display());
        return Ok(());
    }
    let loaded = args.placement.resolve()?.load_with(&args.model, args.adapter.as_deref())?;
    let tok = &loaded.tokenizer;
    // Batches are aligned to multiples of batch_size from index 0 and seeded by their
    // start, so a rerun regenerates a torn batch identically and skips what exists.
    let bs = args.batch_size;
    let mut start = done / bs * bs;
    while start < args.num_pairs {
        let end = (start + bs).min(args.num_pairs);
        let texts: Vec<&String> = (start..end).map(|k| &prompts[k % prompts.len()]).collect();
        let ids: Vec<Vec<u32>> =
            texts.iter().flat_map(|t| [t, t]).map(|t| tok.encode_user_prompt(t, args.chat)).collect::<Result<_>>()?;
        let cfg = SamplingConfig { seed: SamplingConfig::batch_seed(args.seed, start), ..sampling.clone() };
        let samples = generate(&loaded.model, tok, &ids, &cfg)?;
        let rows: Vec<CandidatePair> = (start..end)
            .filter(|&k| k >= done)
            .map(|k| {
                let i = 2 * (k - start);
                CandidatePair {
                    index: k,
                    prompt: texts[k - start].clone(),
                    response_a: samples[i].text.clone(),
                    response_b: samples[i + 1].text.clone(),
                    prefix: is_prefix,
                    chat: args.chat,
                }
            })
            .collect();
        crate::jsonl::append(&args.out, &rows)?;
        eprintln!("{end}/{} pairs", args.num_pairs);
        start = end;
    }
    Ok(())
}
