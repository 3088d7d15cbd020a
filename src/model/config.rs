//! Llama-family architecture hyper-parameters.

use serde::{Deserialize, Serialize};

/// Shape of a llama-architecture decoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// SwiGLU inner width.
    pub intermediate_size: usize,
    /// Decoder blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than query heads).
    pub num_key_value_heads: usize,
    /// RMSNorm ε.
    pub rms_norm_eps: f64,
    /// RoPE base θ.
    pub rope_theta: f64,
    /// Context length.
    pub max_position_embeddings: usize,
    /// Whether the output head shares the token embedding.
    pub tie_word_embeddings: bool,
    /// RoPE frequency rescaling for a longer context (Llama 3.x, linear), if any.
    #[serde(default)]
    pub rope_scaling: Option<super::rope::RopeScaling>,
}

impl LlamaConfig {
    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// llama2.c's stories15M shape (dim 288, 6 layers, 6 heads, vocabulary 32,000,
    /// untied): a benchmark shape.
    pub fn stories15m() -> Self {
        Self {
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
        }
    }

    /// SmolLM2-135M's shape (dim 576, 30 layers, GQA 9/3 heads, vocabulary 49,152,
    /// tied embeddings): a benchmark shape.
    pub fn smollm2_135m() -> Self {
        Self {
            vocab_size: 49_152,
            hidden_size: 576,
            intermediate_size: 1536,
            num_hidden_layers: 30,
            num_attention_heads: 9,
            num_key_value_heads: 3,
            rms_norm_eps: 1e-5,
            rope_theta: 100_000.0,
            max_position_embeddings: 8192,
            tie_word_embeddings: true,
            rope_scaling: None,
        }
    }

    /// A tiny random-test shape: 2 layers, GQA 4/2 heads, vocabulary 61.
    pub fn tiny() -> Self {
        Self {
            vocab_size: 61,
            hidden_size: 32,
            intermediate_size: 48,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            max_position_embeddings: 64,
            tie_word_embeddings: false,
            rope_scaling: None,
        }
    }

    /// Checks the shape is self-consistent.
    pub fn validate(&self) -> anyhow::Result<()> {
        let ok = self.vocab_size > 0
            && self.num_hidden_layers > 0
            && self.num_attention_heads > 0
            && self.num_key_value_heads > 0
            && self.hidden_size.is_multiple_of(self.num_attention_heads)
            && self.num_attention_heads.is_multiple_of(self.num_key_value_heads)
            && self.head_dim().is_multiple_of(2)
            && self.max_position_embeddings > 0;
        anyhow::ensure!(ok, "inconsistent llama configuration: {self:?}");
        if let Some(s) = &self.rope_scaling {
            s.validate().map_err(anyhow::Error::msg)?;
        }
        Ok(())
    }
}
