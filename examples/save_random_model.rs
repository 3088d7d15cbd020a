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
        "stories15m" => LlamaConfig {
            vocab_size: 32_000,
            hidden_size: 288,
            intermediate_size: 768,
            num_hidden_layers: 6,
            num_attention_heads: 6,
            num_key_value_heads: 6,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            max_position_embeddings: 256,
            tie_word_embeddings: false,
            rope_scaling: None,
        },
        other => anyhow::bail!("unknown preset {other}"),
    };
    let model = Llama::random(config.clone(), 7, DType::F32, &Device::Cpu)?;
    let tok = sentencepiece_bpe(&toy_vocabulary(config.vocab_size), Some(1), Some(2), true)?;
    hf::save(&model, &tok, std::path::Path::new(dir))?;
    Ok(())
}
