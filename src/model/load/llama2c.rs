//! karpathy/llama2.c checkpoints (the paper's model format): the legacy v0 header
//! and the v1 `ak42` header, f32 weights, and `tokenizer.bin` beside the model.
//! Their RoPE is interleaved, so `W_q`/`W_k` are converted to half-split at load.

use super::{permute, unpermute, Loaded};
use crate::model::{Llama, LlamaConfig};
use crate::tokenizer::build::{sentencepiece_bpe, Vocabulary};
use crate::tokenizer::Tokenizer;
use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

const MAGIC: u32 = 0x616b_3432;

/// Header layout of a llama2.c checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// Legacy: 7 int32 (negative vocab = separate classifier), weights in run.c order.
    V0,
    /// `ak42` magic, 256-byte header, norms first.
    V1,
}

fn i32s(bytes: &[u8]) -> Vec<i32> {
    bytes.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// Reads a llama2.c checkpoint and `tokenizer.bin` from the same directory.
pub fn load(path: &Path, dtype: DType, device: &Device) -> Result<Loaded> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let (model, _) =
        parse(&bytes, dtype, device).with_context(|| format!("{}: not a llama2.c checkpoint", path.display()))?;
    let tok_path = path.with_file_name("tokenizer.bin");
    let tokenizer = read_tokenizer_bin(&tok_path)?;
    ensure!(
        tokenizer.vocab_size() == model.config().vocab_size,
        "{}: {} tokens, but {} has a vocabulary of {}",
        tok_path.display(),
        tokenizer.vocab_size(),
        path.display(),
        model.config().vocab_size
    );
    Ok(Loaded { model, tokenizer })
}

/// Parses checkpoint bytes; returns the model and the header version found.
pub fn parse(bytes: &[u8], dtype: DType, device: &Device) -> Result<(Llama, Version)> {
    ensure!(bytes.len() >= 28, "file of {} bytes is too short for a header", bytes.len());
    let (version, header, shared, offset) = if u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) == MAGIC {
        ensure!(bytes.len() >= 256, "truncated v1 header");
        let v = i32s(&bytes[4..8])[0];
        ensure!(v == 1, "llama2.c export version {v} is not supported (0 and 1 are)");
        (Version::V1, i32s(&bytes[8..36]), bytes[36] != 0, 256)
    } else {
        let h = i32s(&bytes[..28]);
        (Version::V0, h.clone(), h[5] > 0, 28)
    };
    ensure!(
        header.iter().enumerate().all(|(i, &x)| x > 0 || i == 5) && header[5] != 0,
        "implausible header {header:?}"
    );
    let [dim, hidden, layers, heads, kv_heads, vocab, seq_len] =
        [0, 1, 2, 3, 4, 5, 6].map(|i| header[i].unsigned_abs() as usize);
    let config = LlamaConfig {
        vocab_size: vocab,
        hidden_size: dim,
        intermediate_size: hidden,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        max_position_embeddings: seq_len,
        tie_word_embeddings: shared,
        rope_scaling: None,
    };
    config.validate()?;
    let floats = &bytes[offset..];
    ensure!(floats.len().is_multiple_of(4), "weight section is not a whole number of f32");
    let order = layout(&config, version)?;
    // checked: a crafted header's sizes must not overflow or allocate before this test
    let present = floats.len() / 4;
    let needed = match order.iter().try_fold(0usize, |acc, (_, n)| acc.checked_add(*n)) {
        Some(n) if n <= present => n,
        n => bail!(
            "truncated: {present} weights present, the header implies {}",
            n.map_or("more".into(), |n| n.to_string())
        ),
    };
    let data: Vec<f32> =
        floats[..needed * 4].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let mut at = 0;
    for (name, n) in order {
        let slice = &data[at..at + n];
        at += n;
        if let Some((stem, per_layer)) = name.strip_suffix("*").map(|s| (s, n / layers)) {
            for l in 0..layers {
                let t = Tensor::from_slice(&slice[l * per_layer..(l + 1) * per_layer], per_layer, &Device::Cpu)?;
                tensors.insert(stem.replace("{}", &l.to_string()), t);
            }
        } else if !name.is_empty() {
            tensors.insert(name, Tensor::from_slice(slice, n, &Device::Cpu)?);
        }
    }
    let shapes: HashMap<String, Vec<usize>> = crate::model::llama::weight_shapes(&config).into_iter().collect();
    let model = Llama::from_tensors(config.clone(), dtype, device, |name| {
        let t = tensors.get(name).with_context(|| format!("missing {name}"))?.reshape(shapes[name].as_slice())?;
        Ok(if name.ends_with("q_proj.weight") {
            unpermute(&t, heads)?
        } else if name.ends_with("k_proj.weight") {
            unpermute(&t, kv_heads)?
        } else {
            t
        })
    })?;
    Ok((model, version))
}

/// The weight sections of a file in order: a name (with `{}` for the layer and a
/// trailing `*` when the section holds every layer) and its element count. Empty
/// names are skipped (v0's unused RoPE tables).
fn layout(c: &LlamaConfig, version: Version) -> Result<Vec<(String, usize)>> {
    let (d, f, l, v) = (c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.vocab_size);
    let mul = usize::saturating_mul;
    let kv = mul(c.num_key_value_heads, c.head_dim());
    let q = mul(c.num_attention_heads, c.head_dim());
    // sizes saturate instead of wrapping; any saturated one fails the check below
    let layer = |field: &str, n: usize| (format!("model.layers.{{}}.{field}*"), mul(l, n));
    let attn_norm = layer("input_layernorm.weight", d);
    let ffn_norm = layer("post_attention_layernorm.weight", d);
    let projections = [
        layer("self_attn.q_proj.weight", mul(q, d)),
        layer("self_attn.k_proj.weight", mul(kv, d)),
        layer("self_attn.v_proj.weight", mul(kv, d)),
        layer("self_attn.o_proj.weight", mul(d, q)),
    ];
    let mlp = [
        layer("mlp.gate_proj.weight", mul(f, d)),
        layer("mlp.down_proj.weight", mul(d, f)),
        layer("mlp.up_proj.weight", mul(f, d)),
    ];
    let embed = ("model.embed_tokens.weight".to_string(), mul(v, d));
    let norm = ("model.norm.weight".to_string(), d);
    let mut out = match version {
        Version::V0 => {
            let mut o = vec![embed, attn_norm];
            o.extend(projections);
            o.push(ffn_norm);
            o.extend(mlp);
            o.push(norm);
            o.push((String::new(), mul(c.max_position_embeddings, c.head_dim()))); // freq_cis real + imag
            o
        }
        Version::V1 => {
            let mut o = vec![attn_norm, ffn_norm, norm, embed];
            o.extend(projections);
            o.extend(mlp);
            o
        }
    };
    if !c.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), mul(v, d)));
    }
    if out.iter().any(|(_, n)| *n == usize::MAX) {
        bail!("the header's sizes overflow: {c:?}");
    }
    Ok(out)
}

/// Writes `model` as a llama2.c checkpoint of the given header version (f32, RoPE
/// converted back to interleaved).
pub fn write(model: &Llama, path: &Path, version: Version) -> Result<()> {
    let c = model.config();
    let vars: HashMap<String, Tensor> =
        model.named_vars().into_iter().map(|(n, v)| (n, v.as_tensor().detach())).collect();
    let get = |name: &str| -> Result<Vec<f32>> {
        let t = &vars[name];
        let t = if name.ends_with("q_proj.weight") {
            permute(t, c.num_attention_heads)?
        } else if name.ends_with("k_proj.weight") {
            permute(t, c.num_key_value_heads)?
        } else {
            t.clone()
        };
        Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
    };
    let dims = [
        c.hidden_size,
        c.intermediate_size,
        c.num_hidden_layers,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.vocab_size,
        c.max_position_embeddings,
    ];
    let mut out: Vec<u8> = Vec::new();
    let push_i32 = |out: &mut Vec<u8>, x: i32| out.extend_from_slice(&x.to_le_bytes());
    match version {
        Version::V0 => {
            for (i, &x) in dims.iter().enumerate() {
                let x = x as i32;
                push_i32(&mut out, if i == 5 && !c.tie_word_embeddings { -x } else { x });
            }
        }
        Version::V1 => {
            out.extend_from_slice(&MAGIC.to_le_bytes());
            push_i32(&mut out, 1);
            for &x in &dims {
                push_i32(&mut out, x as i32);
            }
            out.push(u8::from(c.tie_word_embeddings));
            out.resize(256, 0);
        }
    }
    for (name, n) in layout(c, version)? {
        let values: Vec<f32> = if name.is_empty() {
            vec![0.0; n]
        } else if let Some(stem) = name.strip_suffix('*') {
            let mut v = Vec::with_capacity(n);
            for l in 0..c.num_hidden_layers {
                v.extend(get(&stem.replace("{}", &l.to_string()))?);
            }
            v
        } else {
            get(&name)?
        };
        out.extend(values.iter().flat_map(|x| x.to_le_bytes()));
    }
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}

/// Reads llama2.c's `tokenizer.bin` (max token length, then score/length/bytes per
/// token; spaces stand for SentencePiece's `▁`, BOS/EOS are `\n<s>\n`/`\n</s>\n`).
pub fn read_tokenizer_bin(path: &Path) -> Result<Tokenizer> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("reading {} (llama2.c models need tokenizer.bin beside them)", path.display()))?;
    let vocab = parse_tokenizer_bin(&bytes).with_context(|| format!("{}: corrupt tokenizer.bin", path.display()))?;
    sentencepiece_bpe(&vocab, Some(1), Some(2), true)
}

/// Parses `tokenizer.bin` bytes into a vocabulary with llama's token types.
pub fn parse_tokenizer_bin(bytes: &[u8]) -> Result<Vocabulary> {
    let mut at = 4;
    let mut vocab = Vocabulary::default();
    while at < bytes.len() {
        ensure!(at + 8 <= bytes.len(), "truncated entry at byte {at}");
        let score = f32::from_le_bytes(bytes[at..at + 4].try_into()?);
        let len = i32::from_le_bytes(bytes[at + 4..at + 8].try_into()?);
        ensure!(len >= 0 && at + 8 + len as usize <= bytes.len(), "bad token length {len} at byte {at}");
        let raw = String::from_utf8_lossy(&bytes[at + 8..at + 8 + len as usize]).into_owned();
        at += 8 + len as usize;
        let id = vocab.tokens.len();
        let (token, kind) = match (id, raw.as_str()) {
            (0, _) => (raw.clone(), 2),
            (1, _) | (2, _) => (raw.trim().to_string(), 3),
            (_, t) if t.len() == 6 && t.starts_with("<0x") && t.ends_with('>') => (raw.clone(), 6),
            _ => (raw.replace(' ', "▁"), 1),
        };
        vocab.tokens.push(token);
        vocab.types.push(kind);
        vocab.scores.push(score);
    }
    if vocab.tokens.len() < 3 {
        bail!("only {} tokens", vocab.tokens.len());
    }
    Ok(vocab)
}

/// Writes a vocabulary in `tokenizer.bin` format (the inverse of [`parse_tokenizer_bin`]).
pub fn write_tokenizer_bin(vocab: &Vocabulary, path: &Path) -> Result<()> {
    let raw: Vec<String> = vocab
        .tokens
        .iter()
        .enumerate()
        .map(|(i, t)| match i {
            1 | 2 => format!("\n{t}\n"),
            _ if vocab.types.get(i) == Some(&6) => t.clone(),
            _ => t.replace('▁', " "),
        })
        .collect();
    let max = raw.iter().map(|t| t.len()).max().unwrap_or(0) as i32;
    let mut out = max.to_le_bytes().to_vec();
    for (i, t) in raw.iter().enumerate() {
        out.extend(vocab.scores.get(i).copied().unwrap_or(0.0).to_le_bytes());
        out.extend((t.len() as i32).to_le_bytes());
        out.extend(t.as_bytes());
    }
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}
