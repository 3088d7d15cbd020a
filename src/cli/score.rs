//! `spo score`: the log-probability of a text, optionally given a prompt, exactly
//! as the trainer computes a response's log-probability.

use crate::tokenizer::encode_pair;
use anyhow::Result;
use candle_core::Tensor;
use clap::Args;
use serde::Serialize;
use std::path::PathBuf;

/// Flags of `spo score`.
#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// Model: a Hugging Face directory, a GGUF file, or a llama2.c .bin.
    #[arg(long)]
    pub model: PathBuf,
    /// A LoRA adapter directory (PEFT format) to apply to --model.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Device and precision.
    #[command(flatten)]
    pub placement: super::args::PlacementArgs,
    /// Prompt the text continues (not scored).
    #[arg(long)]
    pub prompt: Option<String>,
    /// Text to score.
    #[arg(long)]
    pub text: String,
    /// Do not append EOS after the text (the trainer appends it to responses).
    #[arg(long)]
    pub no_eos: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Scored {
    tokens: Vec<u32>,
    logprobs: Vec<f32>,
    total: f64,
}

/// Runs `spo score`.
pub fn run(args: ScoreArgs) -> Result<()> {
    let loaded = args.placement.resolve()?.load_with(&args.model, args.adapter.as_deref())?;
    let tok = &loaded.tokenizer;
    // Without a prompt, the text's first token is the context for the rest.
    let (context, scored) = match &args.prompt {
        Some(p) => encode_pair(tok, p, &args.text, !args.no_eos)?,
        None => {
            let (_, mut all) = encode_pair(tok, "", &args.text, !args.no_eos)?;
            let mut ctx: Vec<u32> = tok.bos.filter(|_| tok.add_bos).into_iter().collect();
            if ctx.is_empty() {
                anyhow::ensure!(!all.is_empty(), "--text is empty");
                ctx.push(all.remove(0));
            }
            (ctx, all)
        }
    };
    anyhow::ensure!(!scored.is_empty(), "nothing to score: --text has no tokens after the context");
    let ids: Vec<u32> = context.iter().chain(&scored).copied().collect();
    let n = ids.len();
    let dev = loaded.model.device();
    let input = Tensor::from_vec(ids, (1, n), dev)?;
    let select = Tensor::arange(context.len() as u32 - 1, n as u32 - 1, dev)?;
    let targets = Tensor::new(scored.as_slice(), dev)?;
    let lp = loaded.model.token_logprobs(&input, &select, &targets, false)?.detach().to_vec1::<f32>()?;
    let out = Scored { total: lp.iter().map(|&x| f64::from(x)).sum(), tokens: scored, logprobs: lp };
    if args.json {
        println!("{}", serde_json::to_string(&out)?);
    } else {
        println!(
            "log p = {:.4} over {} tokens ({:.4} per token)",
            out.total,
            out.tokens.len(),
            out.total / out.tokens.len() as f64
        );
    }
    Ok(())
}
