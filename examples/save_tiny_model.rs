//! Writes the tiny random test model (seed 7) as a Hugging Face directory, for
//! scripts/make_tiny_reference.py to compute reference logits with transformers.
//!
//!     cargo run --release --example save_tiny_model -- DIR

use candle_core::{DType, Device};
use spo::model::{load::hf, Llama, LlamaConfig};
use spo::tokenizer::build::{sentencepiece_bpe, toy_vocabulary};

fn main() -> anyhow::Result<()> {
    let dir = std::env::args().nth(1).ok_or_else(|| anyhow::anyhow!("usage: save_tiny_model DIR"))?;
    let config = LlamaConfig::tiny();
    let model = Llama::random(config.clone(), 7, DType::F32, &Device::Cpu)?;
    let tok = sentencepiece_bpe(&toy_vocabulary(config.vocab_size), Some(1), Some(2), true)?;
    hf::save(&model, &tok, std::path::Path::new(&dir))?;
    Ok(())
}
