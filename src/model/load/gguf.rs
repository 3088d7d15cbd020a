//! GGUF checkpoints (architecture `llama`), dequantized to the compute dtype, with
//! the tokenizer and chat template from the metadata.

use super::{unpermute, Loaded};
use crate::model::rope::RopeScaling;
use crate::model::{Llama, LlamaConfig};
use crate::tokenizer::build::{byte_level_bpe, sentencepiece_bpe, Vocabulary};
use anyhow::{anyhow, bail, Context, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device};
use std::path::Path;

fn meta<'a>(c: &'a Content, key: &str) -> Option<&'a Value> {
    c.metadata.get(key)
}

fn meta_u(c: &Content, key: &str) -> Result<usize> {
    let v = meta(c, key).ok_or_else(|| anyhow!("missing metadata key {key}"))?;
    Ok(v.to_u64().or_else(|_| v.to_u32().map(u64::from)).or_else(|_| v.to_i32().map(|x| x as u64))? as usize)
}

fn meta_f(c: &Content, key: &str) -> Option<f64> {
    meta(c, key).and_then(|v| v.to_f32().map(f64::from).or_else(|_| v.to_f64()).ok())
}

fn strings(c: &Content, key: &str) -> Result<Vec<String>> {
    match meta(c, key) {
        None => Ok(Vec::new()),
        Some(v) => v.to_vec()?.iter().map(|x| Ok(x.to_string()?.clone())).collect(),
    }
}

/// Reads a GGUF llama checkpoint.
pub fn load(path: &Path, dtype: DType, device: &Device) -> Result<Loaded> {
    let ctx = |e: anyhow::Error| e.context(format!("{}: not a usable GGUF llama checkpoint", path.display()));
    let mut file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let content = Content::read(&mut file).map_err(|e| anyhow!("{}: corrupt GGUF header: {e}", path.display()))?;
    let arch = meta(&content, "general.architecture").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
    if arch != "llama" {
        bail!("{}: architecture {arch:?} is not supported (only llama)", path.display());
    }
    let config = read_config(&content).map_err(ctx)?;
    let tokenizer = read_tokenizer(&content).map_err(ctx)?;
    if tokenizer.vocab_size() != config.vocab_size {
        bail!(
            "{}: tokenizer has {} tokens but the model's vocabulary is {}",
            path.display(),
            tokenizer.vocab_size(),
            config.vocab_size
        );
    }
    let (h, kvh) = (config.num_attention_heads, config.num_key_value_heads);
    let tied = config.tie_word_embeddings;
    let model = Llama::from_tensors(config, dtype, device, |name| {
        let (gguf_name, heads) = gguf_name(name, tied);
        let q = content
            .tensor(&mut file, &gguf_name, &Device::Cpu)
            .map_err(|e| anyhow!("{}: tensor {gguf_name}: {e}", path.display()))?;
        let t = q.dequantize(&Device::Cpu).map_err(|e| anyhow!("{}: dequantizing {gguf_name}: {e}", path.display()))?;
        Ok(match heads {
            Some(Heads::Q) => unpermute(&t, h)?,
            Some(Heads::K) => unpermute(&t, kvh)?,
            None => t,
        })
    })?;
    Ok(Loaded { model, tokenizer })
}

/// Which attention projection a tensor is (its rows carry RoPE pairs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heads {
    /// `W_q`, permuted over the query heads.
    Q,
    /// `W_k`, permuted over the key/value heads.
    K,
}

/// GGUF (llama.cpp) tensor name for a Hugging Face weight name, and whether its
/// rows are RoPE-permuted.
pub fn gguf_name(hf: &str, tied: bool) -> (String, Option<Heads>) {
    if hf == "model.embed_tokens.weight" {
        return ("token_embd.weight".into(), None);
    }
    if hf == "model.norm.weight" {
        return ("output_norm.weight".into(), None);
    }
    if hf == "lm_head.weight" {
        return (if tied { "token_embd.weight" } else { "output.weight" }.into(), None);
    }
    let rest = hf.strip_prefix("model.layers.").expect("weight_shapes names");
    let (i, field) = rest.split_once('.').expect("layer.field");
    let (g, heads) = match field {
        "input_layernorm.weight" => ("attn_norm", None),
        "self_attn.q_proj.weight" => ("attn_q", Some(Heads::Q)),
        "self_attn.k_proj.weight" => ("attn_k", Some(Heads::K)),
        "self_attn.v_proj.weight" => ("attn_v", None),
        "self_attn.o_proj.weight" => ("attn_output", None),
        "post_attention_layernorm.weight" => ("ffn_norm", None),
        "mlp.gate_proj.weight" => ("ffn_gate", None),
        "mlp.up_proj.weight" => ("ffn_up", None),
        "mlp.down_proj.weight" => ("ffn_down", None),
        other => unreachable!("unknown weight field {other}"),
    };
    (format!("blk.{i}.{g}.weight"), heads)
}

/// `llama.rope.scaling.*`: none or linear are supported; per-frequency factors
/// (`rope_freqs.weight`, how llama.cpp stores Llama 3.1's scaling) and other kinds
/// are refused rather than ignored.
fn rope_scaling(c: &Content) -> Result<Option<RopeScaling>> {
    if c.tensor_infos.contains_key("rope_freqs.weight") {
        bail!(
            "RoPE frequency factors (rope_freqs.weight, Llama 3.1-style scaling) are not supported in GGUF files; \
             load the Hugging Face checkpoint instead (its rope_scaling is supported)"
        );
    }
    let kind = meta(c, "llama.rope.scaling.type").and_then(|v| v.to_string().ok()).cloned();
    match kind.as_deref() {
        None | Some("none") => Ok(None),
        Some("linear") => {
            let factor = meta_f(c, "llama.rope.scaling.factor")
                .ok_or_else(|| anyhow!("linear RoPE scaling without a factor"))?;
            Ok(Some(RopeScaling::Linear { factor }))
        }
        Some(other) => bail!("RoPE scaling {other:?} is not supported (none or linear)"),
    }
}

/// Refuses attention shapes the model does not implement: a head width other than
/// `embedding_length / head_count`, or RoPE over part of each head.
fn check_head_shapes(c: &Content, config: &LlamaConfig) -> Result<()> {
    let hd = config.head_dim();
    for key in ["llama.attention.key_length", "llama.attention.value_length", "llama.rope.dimension_count"] {
        if let Ok(n) = meta_u(c, key) {
            if n != hd {
                bail!("{key} = {n} is not supported (only {hd} = embedding_length / head_count)");
            }
        }
    }
    let unknown = super::unknown_tensors(config, c.tensor_infos.keys().cloned(), |name| {
        gguf_name(name, config.tie_word_embeddings).0
    });
    if !unknown.is_empty() {
        bail!("tensors this llama implementation would ignore (biases, other layers): {unknown:?}");
    }
    Ok(())
}

fn read_config(c: &Content) -> Result<LlamaConfig> {
    let heads = meta_u(c, "llama.attention.head_count")?;
    let vocab = match meta_u(c, "llama.vocab_size") {
        Ok(v) => v,
        Err(_) => strings(c, "tokenizer.ggml.tokens")?.len(),
    };
    let config = LlamaConfig {
        vocab_size: vocab,
        hidden_size: meta_u(c, "llama.embedding_length")?,
        intermediate_size: meta_u(c, "llama.feed_forward_length")?,
        num_hidden_layers: meta_u(c, "llama.block_count")?,
        num_attention_heads: heads,
        num_key_value_heads: meta_u(c, "llama.attention.head_count_kv").unwrap_or(heads),
        rms_norm_eps: meta_f(c, "llama.attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
        rope_theta: meta_f(c, "llama.rope.freq_base").unwrap_or(10_000.0),
        max_position_embeddings: meta_u(c, "llama.context_length")?,
        tie_word_embeddings: !c.tensor_infos.contains_key("output.weight"),
        rope_scaling: rope_scaling(c)?,
    };
    config.validate()?;
    check_head_shapes(c, &config)?;
    Ok(config)
}

fn read_tokenizer(c: &Content) -> Result<crate::tokenizer::Tokenizer> {
    let model = meta(c, "tokenizer.ggml.model").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
    let types = match meta(c, "tokenizer.ggml.token_type") {
        Some(v) => v.to_vec()?.iter().map(|x| x.to_i32().map_err(Into::into)).collect::<Result<Vec<_>>>()?,
        None => Vec::new(),
    };
    let scores = match meta(c, "tokenizer.ggml.scores") {
        Some(v) => v.to_vec()?.iter().map(|x| x.to_f32().map_err(Into::into)).collect::<Result<Vec<_>>>()?,
        None => Vec::new(),
    };
    let vocab = Vocabulary { tokens: strings(c, "tokenizer.ggml.tokens")?, types, scores };
    let id = |k: &str| meta_u(c, k).ok().map(|x| x as u32);
    let (bos, eos) = (id("tokenizer.ggml.bos_token_id"), id("tokenizer.ggml.eos_token_id"));
    let add_bos = meta(c, "tokenizer.ggml.add_bos_token").and_then(|v| v.to_bool().ok());
    let mut tok = match model.as_str() {
        "gpt2" => {
            let pre = meta(c, "tokenizer.ggml.pre").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
            byte_level_bpe(&vocab, &strings(c, "tokenizer.ggml.merges")?, &pre, bos, eos, add_bos.unwrap_or(false))?
        }
        "llama" => sentencepiece_bpe(&vocab, bos, eos, add_bos.unwrap_or(true))?,
        other => bail!("tokenizer model {other:?} is not supported (gpt2 or llama)"),
    };
    tok.chat_template = meta(c, "tokenizer.chat_template").and_then(|v| v.to_string().ok()).cloned();
    Ok(tok)
}
