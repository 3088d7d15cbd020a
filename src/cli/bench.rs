//! `spo bench`: training-step and sampling throughput, and CPU–GPU parity.

use super::args::PlacementArgs;
use crate::bench::{self, TrainShape};
use crate::train::config::LossKind;
use anyhow::Result;
use clap::{Args, Subcommand};

/// Flags of `spo bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// What to measure.
    #[command(subcommand)]
    pub what: BenchCommand,
}

/// The benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Median training-step time, tokens/s and peak memory.
    Train(TrainBench),
    /// Sampling tokens/s at a batch size.
    Generate(GenerateBench),
    /// The CPU's and a device's logits, and one SPO and DPO step's loss and gradient norm (f32).
    Parity(ParityBench),
}

/// The model and step shape shared by `bench train` and `bench parity`.
#[derive(Debug, Args)]
pub struct ShapeArgs {
    /// A model file or folder, or a shape with random weights: stories15m, smollm2.
    #[arg(long, default_value = "stories15m")]
    pub model: String,
    /// Pairs per step.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Tokens per sequence (a quarter prompt).
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// SPO's KL samples per refresh.
    #[arg(long, default_value_t = 32)]
    pub kl_samples: usize,
    /// Pairs per forward/backward [default: the whole batch].
    #[arg(long)]
    pub micro_batch_size: Option<usize>,
    /// LoRA rank on every projection (0: a full fine-tune).
    #[arg(long, default_value_t = 0)]
    pub lora_r: usize,
}

impl ShapeArgs {
    /// The step shape for `loss` over `steps` steps.
    fn shape(&self, loss: LossKind, steps: usize) -> TrainShape {
        TrainShape {
            loss,
            batch_size: self.batch_size,
            seq_len: self.seq_len,
            kl_samples: self.kl_samples,
            steps,
            micro_batch_size: self.micro_batch_size.unwrap_or(self.batch_size),
            lora_r: self.lora_r,
        }
    }
}

/// Flags of `spo bench train`.
#[derive(Debug, Args)]
pub struct TrainBench {
    /// Model and shape.
    #[command(flatten)]
    pub shape: ShapeArgs,
    /// Objective.
    #[arg(long, value_enum, default_value = "spo")]
    pub loss: LossKind,
    /// Steps to run (the first is a warm-up).
    #[arg(long, default_value_t = 4)]
    pub steps: usize,
    /// Device and precision.
    #[command(flatten)]
    pub placement: PlacementArgs,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `spo bench generate`.
#[derive(Debug, Args)]
pub struct GenerateBench {
    /// A model file or folder, or a shape with random weights: stories15m, smollm2.
    #[arg(long, default_value = "stories15m")]
    pub model: String,
    /// Rows decoded together.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// New tokens per row (EOS ignored).
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// Timed runs after a warm-up (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Device and precision.
    #[command(flatten)]
    pub placement: PlacementArgs,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `spo bench parity`.
#[derive(Debug, Args)]
pub struct ParityBench {
    /// Model and shape of the training steps.
    #[command(flatten)]
    pub shape: ShapeArgs,
    /// The device compared with the CPU.
    #[arg(long, default_value = "cuda")]
    pub device: String,
    /// Print one JSON array.
    #[arg(long)]
    pub json: bool,
}

/// Runs `spo bench`.
pub fn run(args: BenchArgs) -> Result<()> {
    match args.what {
        BenchCommand::Train(a) => {
            let shape = a.shape.shape(a.loss, a.steps);
            let r = bench::train(&a.shape.model, &shape, &a.placement.resolve()?)?;
            if a.json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                let refresh = r.kl_refresh_s.map(|t| format!(", KL refresh sampling {t:.2} s")).unwrap_or_default();
                println!(
                    "{} {:?} on {} ({}): step {:.3} s, {:.0} tokens/s, peak RSS {:.2} GB{refresh}",
                    r.model, a.loss, r.device, r.dtype, r.median_step_s, r.tokens_per_s, r.peak_rss_gb
                );
            }
        }
        BenchCommand::Generate(a) => {
            let r = bench::generation(&a.model, a.batch_size, a.max_tokens, a.runs, &a.placement.resolve()?)?;
            if a.json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "{} on {} ({}): batch {}, {:.1} tokens/s, peak RSS {:.2} GB",
                    r.model, r.device, r.dtype, r.batch_size, r.tokens_per_s, r.peak_rss_gb
                );
            }
        }
        BenchCommand::Parity(a) => {
            let device =
                crate::model::placement::parse_device(&a.device).or_else(|e| super::args::usage(e.to_string()))?;
            let shape = a.shape.shape(LossKind::Spo, 1);
            let rows = bench::parity(&a.shape.model, &device, &[LossKind::Spo, LossKind::Dpo], &shape)?;
            if a.json {
                println!("{}", serde_json::to_string(&rows)?);
            } else {
                for r in rows {
                    println!(
                        "{:<24} cpu {:>12.6} {} {:>12.6}  max |diff| {:.2e}",
                        r.what, r.cpu, a.device, r.device, r.max_abs_diff
                    );
                }
            }
        }
    }
    Ok(())
}
