//! Writes a randomly initialised model as a Hugging Face directory.
//!
//!     cargo run --release --example save_random_model -- tiny DIR        # the test model (seed 7)
//!     cargo run --release --example save_random_model -- stories15m DIR  # benchmark shape
//!
//! `tiny` is what scripts/make_tiny_reference.py feeds to transformers; `stories15m`
//! has llama2.c's stories15M shape (dim 288, 6 layers, 6 heads, vocab 32000, untied).

use candle_core::{DType, Device};
use spo::model::{load::hf, Llama, LlamaConfig};
use spo::tokenizer::build::{sentencepiece_bpe, toy_vocabulary};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (preset, dir) = match args.as_slice() {
        [_, p, d] => (p.as_str(), d.as_str()),
        _ => anyhow::bail!("usage: save_random_model tiny|stories15m DIR"),
    };
    let config = match preset {
        "tiny" => LlamaConfig::tiny(),
        "stories15m" => LlamaConfig::stories15m(),
        other => anyhow::bail!("unknown preset {other}"),
    };
    let model = Llama::random(config.clone(), 7, DType::F32, &Device::Cpu)?;
    let tok = sentencepiece_bpe(&toy_vocabulary(config.vocab_size), Some(1), Some(2), true)?;
    hf::save(&model, &tok, std::path::Path::new(dir))?;
    Ok(())
}
