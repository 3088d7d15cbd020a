//! `spo merge`: a LoRA adapter folded into its base, written as a Hugging Face model.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

/// Flags of `spo merge`.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The base model the adapter was trained on.
    #[arg(long)]
    pub model: PathBuf,
    /// The LoRA adapter directory (PEFT format).
    #[arg(long)]
    pub adapter: PathBuf,
    /// Output directory: a Hugging Face model with `W + (α/r)·B A` in every adapted projection.
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs `spo merge`.
pub fn run(args: MergeArgs) -> Result<()> {
    let inputs = [("--model", args.model.as_path()), ("--adapter", args.adapter.as_path())];
    crate::fsx::check_output_dir("--out", &args.out, &inputs)?;
    let loaded = crate::model::Placement::default().load_with(&args.model, Some(&args.adapter))?;
    let merged = loaded.model.merged()?;
    crate::model::load::hf::save(&merged, &loaded.tokenizer, &args.out)?;
    println!("merged model {}", args.out.display());
    Ok(())
}
