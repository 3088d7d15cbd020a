//! The `spo` command line: one module per subcommand. Only this layer prints or exits.

pub mod args;
pub mod theory;

use clap::{Parser, Subcommand};

/// Soft Preference Optimization: align language models to expert preference distributions.
#[derive(Debug, Parser)]
#[command(name = "spo", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Reproduce the paper's theorems exactly in the tabular setting.
    Theory(theory::TheoryArgs),
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Theory(args) => theory::run(args),
    }
}
