//! `spo generate`: sample continuations of a prompt.

use super::args::usage;
use crate::sample::{generate, SamplingConfig};
use crate::tokenizer::Message;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

/// Flags of `spo generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Model: a Hugging Face directory, a GGUF file, or a llama2.c .bin.
    #[arg(long)]
    pub model: PathBuf,
    /// A LoRA adapter directory (PEFT format) to apply to --model.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Device and precision.
    #[command(flatten)]
    pub placement: super::args::PlacementArgs,
    /// Prompt text (raw, or the user message with --chat).
    #[arg(long, default_value = "")]
    pub prompt: String,
    /// Render the prompt as a user message with the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// Samples to draw (in batches of at most 64, so memory stays bounded).
    #[arg(long, default_value_t = 1)]
    pub num_samples: usize,
    /// Maximum new tokens per sample.
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// Temperature; 0 is greedy.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    /// Nucleus sampling threshold.
    #[arg(long)]
    pub top_p: Option<f64>,
    /// Keep only the k most likely tokens.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Seed (runs with the same seed give the same samples).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop after this string (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Do not stop at EOS (fixed-length runs for benchmarks).
    #[arg(long)]
    pub ignore_eos: bool,
    /// One JSON object per line per sample.
    #[arg(long)]
    pub json: bool,
}

/// Runs `spo generate`.
pub fn run(args: GenerateArgs) -> Result<()> {
    if args.num_samples == 0 {
        return usage("--num-samples must be at least 1");
    }
    let cfg = SamplingConfig {
        max_new_tokens: args.max_tokens,
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
        stop: args.stop.clone(),
        ignore_eos: args.ignore_eos,
    };
    cfg.validate().or_else(|e| usage(format!("--{e}")))?;
    let loaded = args.placement.resolve()?.load_with(&args.model, args.adapter.as_deref())?;
    let tok = &loaded.tokenizer;
    let ids = if args.chat {
        tok.encode_chat(&[Message::new("user", &args.prompt)])?
    } else {
        tok.encode_prompt(&args.prompt)?
    };
    if ids.is_empty() {
        return usage("--prompt is empty and the model has no BOS token to start from");
    }
    let prompts = vec![ids; args.num_samples];
    let start = std::time::Instant::now();
    let samples = generate(&loaded.model, tok, &prompts, &cfg)?;
    let secs = start.elapsed().as_secs_f64();
    let n: usize = samples.iter().map(|s| s.tokens.len()).sum();
    let batch = args.num_samples.min(crate::sample::MAX_BATCH);
    eprintln!("generated {n} tokens in {secs:.2} s ({:.1} tokens/s, batch {batch})", n as f64 / secs);
    for s in samples {
        if args.json {
            println!("{}", serde_json::to_string(&s)?);
        } else {
            if args.num_samples > 1 {
                println!("--- sample {} ({:?}) ---", s.index, s.finish_reason);
            }
            println!("{}{}", if args.chat { "" } else { args.prompt.as_str() }, s.text);
        }
    }
    Ok(())
}
