//! `spo pairs`: candidate pairs — two independent samples per prompt — resumable.

use super::args::{prompts_or_prefix, usage};
use crate::model::load;
use crate::sample::{generate, SamplingConfig};
use anyhow::Result;
use candle_core::{DType, Device};
use clap::Args;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Flags of `spo pairs`.
#[derive(Debug, Args)]
pub struct PairsArgs {
    /// Model to sample from.
    #[arg(long)]
    pub model: PathBuf,
    /// File of prompts, one per line (pair k uses line k mod n).
    #[arg(long, conflicts_with = "prefix")]
    pub prompts: Option<PathBuf>,
    /// Unconditional generation continuing this text (the paper: "Once upon a time").
    #[arg(long)]
    pub prefix: Option<String>,
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
}

/// Runs `spo pairs`.
pub fn run(args: PairsArgs) -> Result<()> {
    let (prompts, is_prefix) = prompts_or_prefix(args.prompts.as_deref(), args.prefix.as_deref())?;
    if args.batch_size == 0 {
        return usage("--batch-size must be at least 1");
    }
    let done = crate::jsonl::recover(&args.out)?.len();
    if done >= args.num_pairs {
        eprintln!("{} already holds {done} pairs; nothing to do", args.out.display());
        return Ok(());
    }
    let loaded = load(&args.model, DType::F32, &Device::Cpu)?;
    let tok = &loaded.tokenizer;
    // Batches are aligned to multiples of batch_size from index 0 and seeded by their
    // start, so a rerun regenerates a torn batch identically and skips what exists.
    let bs = args.batch_size;
    let mut start = done / bs * bs;
    while start < args.num_pairs {
        let end = (start + bs).min(args.num_pairs);
        let texts: Vec<&String> = (start..end).map(|k| &prompts[k % prompts.len()]).collect();
        let ids: Vec<Vec<u32>> =
            texts.iter().flat_map(|t| [t, t]).map(|t| tok.encode_prompt(t)).collect::<Result<_>>()?;
        let cfg = SamplingConfig {
            max_new_tokens: args.max_tokens,
            temperature: args.temperature,
            seed: SamplingConfig::batch_seed(args.seed, start),
            ..Default::default()
        };
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
                }
            })
            .collect();
        crate::jsonl::append(&args.out, &rows)?;
        eprintln!("{end}/{} pairs", args.num_pairs);
        start = end;
    }
    Ok(())
}
