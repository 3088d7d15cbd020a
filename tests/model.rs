//! The llama decoder and its loaders on a tiny random model.

mod common;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use spo::model::load::gguf::{gguf_name, Heads};
use spo::model::load::{hf, llama2c, permute};
use spo::model::{load, KvCache, Llama, LlamaConfig};
use spo::tokenizer::build::{sentencepiece_bpe, toy_vocabulary};
use spo::tokenizer::Tokenizer;
use std::path::Path;

const IDS: [u32; 12] = [1, 5, 9, 14, 22, 3, 40, 60, 7, 33, 12, 2];

fn tiny(dtype: DType) -> Llama {
    Llama::random(LlamaConfig::tiny(), 7, dtype, &Device::Cpu).unwrap()
}

fn toy_tokenizer() -> Tokenizer {
    sentencepiece_bpe(&toy_vocabulary(LlamaConfig::tiny().vocab_size), Some(1), Some(2), true).unwrap()
}

fn logits(m: &Llama, ids: &[u32]) -> Vec<Vec<f32>> {
    let t = Tensor::new(ids, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    m.logits(&t).unwrap().squeeze(0).unwrap().to_vec2().unwrap()
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter().flatten().zip(b.iter().flatten()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn logits_match_transformers_on_the_saved_tiny_model() {
    let fx: serde_json::Value = serde_json::from_str(include_str!("fixtures/tiny_hf_logits.json")).unwrap();
    let want: Vec<Vec<f32>> = serde_json::from_value(fx["logits"].clone()).unwrap();
    let got = logits(&tiny(DType::F32), &IDS);
    assert!(max_diff(&got, &want) < 1e-4, "max diff {}", max_diff(&got, &want));
    // the toy tokenizer saved with it tokenises as transformers does
    let ids: Vec<u32> = serde_json::from_value(fx["tokenized"].clone()).unwrap();
    assert_eq!(toy_tokenizer().encode("hello world", false).unwrap(), ids);
}

#[test]
fn every_trainable_variable_receives_a_gradient() {
    let m = tiny(DType::F32);
    let ids = Tensor::new(&[IDS, IDS.map(|i| (i * 7) % 61)], &Device::Cpu).unwrap();
    let select = Tensor::new(&[3u32, 4, 5, 15, 16], &Device::Cpu).unwrap();
    let targets = Tensor::new(&[4u32, 8, 9, 1, 0], &Device::Cpu).unwrap();
    let lp = m.token_logprobs(&ids, &select, &targets, true).unwrap();
    // the full-distribution path (what the KL uses) too; the sum of log-probs is not constant
    let dist = m.next_token_logdist(&ids, &select, true).unwrap().sum_all().unwrap();
    let grads = (lp.sum_all().unwrap() + dist).unwrap().backward().unwrap();
    for (name, var) in m.named_vars() {
        let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{name} got no gradient"));
        let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(norm > 0.0, "{name} has a zero gradient");
    }
}

#[test]
fn gradients_match_finite_differences_in_f64() {
    let m = tiny(DType::F64);
    let ids = Tensor::new(&[IDS], &Device::Cpu).unwrap();
    let select = Tensor::new(&[2u32, 6, 10], &Device::Cpu).unwrap();
    let targets = Tensor::new(&[14u32, 60, 2], &Device::Cpu).unwrap();
    let f = |m: &Llama| {
        m.token_logprobs(&ids, &select, &targets, true).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()
    };
    let grads = m.token_logprobs(&ids, &select, &targets, true).unwrap().sum_all().unwrap().backward().unwrap();
    let vars = m.named_vars();
    for (name, idx) in [
        ("model.layers.0.self_attn.q_proj.weight", 37),
        ("model.layers.1.self_attn.k_proj.weight", 5),
        ("model.layers.1.mlp.down_proj.weight", 100),
        ("model.layers.0.input_layernorm.weight", 3),
        ("lm_head.weight", 500),
        ("model.embed_tokens.weight", 14 * 32 + 2),
    ] {
        let var = &vars.iter().find(|(n, _)| n == name).unwrap().1;
        let g = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()[idx];
        let orig = var.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let shape = var.as_tensor().shape().clone();
        let h = 1e-6;
        let at = |delta: f64| {
            let mut v = orig.clone();
            v[idx] += delta;
            var.set(&Tensor::from_vec(v, shape.clone(), &Device::Cpu).unwrap()).unwrap();
            f(&m)
        };
        let fd = (at(h) - at(-h)) / (2.0 * h);
        at(0.0);
        assert!((fd - g).abs() < 1e-6 * (1.0 + g.abs()), "{name}[{idx}]: fd {fd} vs autograd {g}");
    }
}

#[test]
fn kv_cache_and_left_padding_reproduce_the_full_forward() {
    let m = tiny(DType::F32);
    let full = logits(&m, &IDS);
    // prefill 5 tokens, then one at a time
    let mut cache = KvCache::default();
    let pre = Tensor::new(&IDS[..5], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let mut rows =
        vec![m.forward_cached(&pre, &[0], &mut cache).unwrap().squeeze(0).unwrap().to_vec1::<f32>().unwrap()];
    for &t in &IDS[5..] {
        let x = Tensor::new(&[[t]], &Device::Cpu).unwrap();
        rows.push(m.forward_cached(&x, &[0], &mut cache).unwrap().squeeze(0).unwrap().to_vec1().unwrap());
    }
    assert!(max_diff(&rows, &full[4..]) < 1e-5);
    // the same sequence left-padded by 3 in a batch with an unpadded one
    let short = &IDS[..9];
    let padded: Vec<u32> = [0, 0, 0].iter().chain(short).copied().collect();
    let batch = Tensor::from_vec([padded.as_slice(), &IDS[..]].concat(), (2, 12), &Device::Cpu).unwrap();
    let mut cache = KvCache::default();
    let last = m.forward_cached(&batch, &[3, 0], &mut cache).unwrap().to_vec2::<f32>().unwrap();
    assert!(max_diff(&[last[0].clone()], &[logits(&m, short)[8].clone()]) < 1e-5);
    assert!(max_diff(&[last[1].clone()], &[full[11].clone()]) < 1e-5);
}

#[test]
fn hf_save_then_load_gives_identical_logits() {
    let dir = common::temp_dir("hf-roundtrip");
    let m = tiny(DType::F32);
    hf::save(&m, &toy_tokenizer(), &dir.join("ckpt")).unwrap();
    let loaded = load(&dir.join("ckpt"), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(logits(&loaded.model, &IDS), logits(&m, &IDS));
    assert_eq!(
        loaded.tokenizer.encode("hello world", true).unwrap(),
        toy_tokenizer().encode("hello world", true).unwrap()
    );
    // saving again over it replaces it atomically
    hf::save(&m, &toy_tokenizer(), &dir.join("ckpt")).unwrap();
    assert!(std::fs::read_dir(&dir).unwrap().count() == 1, "no temporary directories left behind");
}

#[test]
fn sharded_safetensors_with_an_index_load() {
    let dir = common::temp_dir("sharded");
    let m = tiny(DType::F32);
    let ckpt = dir.join("ckpt");
    hf::save(&m, &toy_tokenizer(), &ckpt).unwrap();
    // split model.safetensors into two shards + index, as transformers writes large models
    let all = candle_core::safetensors::load(ckpt.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut names: Vec<&String> = all.keys().collect();
    names.sort();
    let (a, b) = names.split_at(names.len() / 2);
    let mut map = serde_json::Map::new();
    for (file, part) in [("model-00001-of-00002.safetensors", a), ("model-00002-of-00002.safetensors", b)] {
        let shard: std::collections::HashMap<String, Tensor> =
            part.iter().map(|n| ((*n).clone(), all[*n].clone())).collect();
        candle_core::safetensors::save(&shard, ckpt.join(file)).unwrap();
        for n in part {
            map.insert((*n).clone(), serde_json::Value::String(file.into()));
        }
    }
    std::fs::remove_file(ckpt.join("model.safetensors")).unwrap();
    std::fs::write(ckpt.join("model.safetensors.index.json"), serde_json::json!({"weight_map": map}).to_string())
        .unwrap();
    let loaded = load(&ckpt, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(logits(&loaded.model, &IDS), logits(&m, &IDS));
    // a missing shard is named
    std::fs::remove_file(ckpt.join("model-00002-of-00002.safetensors")).unwrap();
    let err = format!("{:#}", load(&ckpt, DType::F32, &Device::Cpu).unwrap_err());
    assert!(err.contains("model-00002-of-00002.safetensors") && err.contains("missing"), "{err}");
}

/// Writes the model as llama.cpp would: GGUF names, q/k permuted to interleaved RoPE.
fn write_gguf(m: &Llama, path: &Path) {
    write_gguf_with(m, path, Vec::new(), Vec::new());
}

/// [`write_gguf`] with more metadata and tensors.
fn write_gguf_with(m: &Llama, path: &Path, extra_meta: Vec<(&str, Value)>, extra: Vec<(String, QTensor)>) {
    let c = m.config();
    let vocab = toy_vocabulary(c.vocab_size);
    let mut meta: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("llama.block_count", Value::U32(c.num_hidden_layers as u32)),
        ("llama.context_length", Value::U32(c.max_position_embeddings as u32)),
        ("llama.embedding_length", Value::U32(c.hidden_size as u32)),
        ("llama.feed_forward_length", Value::U32(c.intermediate_size as u32)),
        ("llama.attention.head_count", Value::U32(c.num_attention_heads as u32)),
        ("llama.attention.head_count_kv", Value::U32(c.num_key_value_heads as u32)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(c.rms_norm_eps as f32)),
        ("llama.rope.freq_base", Value::F32(c.rope_theta as f32)),
        ("tokenizer.ggml.model", Value::String("llama".into())),
        ("tokenizer.ggml.tokens", Value::Array(vocab.tokens.iter().map(|t| Value::String(t.clone())).collect())),
        ("tokenizer.ggml.scores", Value::Array(vocab.scores.iter().map(|&s| Value::F32(s)).collect())),
        ("tokenizer.ggml.token_type", Value::Array(vocab.types.iter().map(|&t| Value::I32(t)).collect())),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
    ];
    meta.extend(extra_meta);
    let mut tensors = extra;
    for (name, var) in m.named_vars() {
        let t = var.as_tensor().detach();
        let (gguf, heads) = gguf_name(&name, c.tie_word_embeddings);
        let t = match heads {
            Some(Heads::Q) => permute(&t, c.num_attention_heads).unwrap(),
            Some(Heads::K) => permute(&t, c.num_key_value_heads).unwrap(),
            None => t,
        };
        tensors.push((gguf, QTensor::quantize(&t, GgmlDType::F32).unwrap()));
    }
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &meta_refs, &tensor_refs).unwrap();
}

#[test]
fn gguf_interleaved_layout_gives_the_same_logits_as_hf_layout() {
    let dir = common::temp_dir("gguf");
    let m = tiny(DType::F32);
    write_gguf(&m, &dir.join("tiny.gguf"));
    let loaded = load(&dir.join("tiny.gguf"), DType::F32, &Device::Cpu).unwrap();
    assert!(max_diff(&logits(&loaded.model, &IDS), &logits(&m, &IDS)) < 1e-5);
    assert_eq!(
        loaded.tokenizer.encode("hello world", true).unwrap(),
        toy_tokenizer().encode("hello world", true).unwrap()
    );
}

#[test]
fn llama2c_checkpoints_of_both_versions_load_with_their_tokenizer() {
    let dir = common::temp_dir("llama2c");
    let vocab = toy_vocabulary(LlamaConfig::tiny().vocab_size);
    llama2c::write_tokenizer_bin(&vocab, &dir.join("tokenizer.bin")).unwrap();
    let parsed = llama2c::parse_tokenizer_bin(&std::fs::read(dir.join("tokenizer.bin")).unwrap()).unwrap();
    assert_eq!(parsed.tokens, vocab.tokens);
    assert_eq!(parsed.scores, vocab.scores);
    for (version, tied) in [(llama2c::Version::V0, false), (llama2c::Version::V1, false), (llama2c::Version::V0, true)]
    {
        let config = LlamaConfig { tie_word_embeddings: tied, ..LlamaConfig::tiny() };
        let m = Llama::random(config, 3, DType::F32, &Device::Cpu).unwrap();
        let path = dir.join("model.bin");
        llama2c::write(&m, &path, version).unwrap();
        let loaded = load(&path, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(loaded.model.config().tie_word_embeddings, tied);
        assert!(max_diff(&logits(&loaded.model, &IDS), &logits(&m, &IDS)) < 1e-6, "{version:?}");
        assert_eq!(loaded.tokenizer.encode("hello", true).unwrap()[0], 1);
    }
}

#[test]
fn bad_model_paths_say_which_file_and_why() {
    let dir = common::temp_dir("bad");
    let check = |path: &Path, needle: &str| {
        let err = format!("{:#}", load(path, DType::F32, &Device::Cpu).unwrap_err());
        assert!(err.contains(&path.display().to_string()) || err.contains(needle), "{err}");
        assert!(err.contains(needle), "expected {needle:?} in: {err}");
    };
    check(&dir.join("missing.gguf"), "no such file");
    check(&dir, "without config.json");
    std::fs::write(dir.join("short.bin"), b"ab").unwrap();
    check(&dir.join("short.bin"), "too short");
    std::fs::write(dir.join("bad.gguf"), b"GGUF\x03\x00\x00\x00garbage").unwrap();
    check(&dir.join("bad.gguf"), "corrupt GGUF");
    // a truncated llama2.c checkpoint
    let m = tiny(DType::F32);
    llama2c::write(&m, &dir.join("model.bin"), llama2c::Version::V1).unwrap();
    let bytes = std::fs::read(dir.join("model.bin")).unwrap();
    std::fs::write(dir.join("model.bin"), &bytes[..bytes.len() / 2]).unwrap();
    check(&dir.join("model.bin"), "truncated");
    // a tokenizer.bin whose vocabulary does not match the model's
    std::fs::write(dir.join("model.bin"), &bytes).unwrap();
    llama2c::write_tokenizer_bin(&toy_vocabulary(40), &dir.join("tokenizer.bin")).unwrap();
    check(&dir.join("model.bin"), "vocabulary");
    // the CLI turns these into one line, exit 1, no panic
    let out = common::spo(&["generate", "--model", dir.join("nope").to_str().unwrap(), "--max-tokens", "2"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error: "));
}

/// Saves the tiny model as a Hugging Face directory and edits its config.json.
fn hf_with_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> std::path::PathBuf {
    let ckpt = dir.join("ckpt");
    hf::save(&tiny(DType::F32), &toy_tokenizer(), &ckpt).unwrap();
    let path = ckpt.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, v.to_string()).unwrap();
    ckpt
}

fn load_error(path: &Path) -> String {
    format!("{:#}", load(path, DType::F32, &Device::Cpu).unwrap_err())
}

/// What the model does not implement is refused by name, never silently ignored.
#[test]
fn hf_configs_the_model_would_misread_are_refused() {
    let dir = common::temp_dir("hf-refuse");
    for (key, value, needle) in [
        ("attention_bias", serde_json::json!(true), "attention_bias"),
        ("mlp_bias", serde_json::json!(true), "mlp_bias"),
        ("hidden_act", serde_json::json!("gelu"), "hidden_act \"gelu\""),
        ("head_dim", serde_json::json!(4), "head_dim 4"),
        ("rope_scaling", serde_json::json!({"rope_type": "yarn", "factor": 4.0}), "not supported"),
    ] {
        let ckpt = hf_with_config(&dir, |v| v[key] = value);
        let err = load_error(&ckpt);
        assert!(err.contains(needle), "{key}: {err}");
        std::fs::remove_dir_all(&ckpt).unwrap();
    }
    // a tensor the model has no place for (a bias) is named
    let ckpt = hf_with_config(&dir, |_| {});
    let st = ckpt.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&st, &Device::Cpu).unwrap();
    tensors.insert("model.layers.0.self_attn.q_proj.bias".into(), Tensor::zeros(32, DType::F32, &Device::Cpu).unwrap());
    candle_core::safetensors::save(&tensors, &st).unwrap();
    assert!(load_error(&ckpt).contains("model.layers.0.self_attn.q_proj.bias"));
}

/// Llama 3.1's RoPE scaling is applied (logits change only through the long
/// wavelengths) and survives a save.
#[test]
fn llama3_rope_scaling_is_applied_and_saved() {
    let dir = common::temp_dir("hf-llama3");
    let scaling = serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 16});
    let ckpt = hf_with_config(&dir, |v| v["rope_scaling"] = scaling.clone());
    let scaled = load(&ckpt, DType::F32, &Device::Cpu).unwrap();
    assert!(max_diff(&logits(&scaled.model, &IDS), &logits(&tiny(DType::F32), &IDS)) > 1e-4, "scaling used");
    hf::save(&scaled.model, &scaled.tokenizer, &dir.join("again")).unwrap();
    let again = load(&dir.join("again"), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(logits(&again.model, &IDS), logits(&scaled.model, &IDS));
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("again/config.json")).unwrap()).unwrap();
    assert_eq!(saved["rope_scaling"], scaling);
}

/// A context length of two billion costs nothing until used: no tables are built
/// for positions that never occur.
#[test]
fn a_huge_claimed_context_loads_and_runs_in_small_memory() {
    let dir = common::temp_dir("hf-huge-context");
    let ckpt = hf_with_config(&dir, |v| v["max_position_embeddings"] = serde_json::json!(2_000_000_000u64));
    let loaded = load(&ckpt, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(logits(&loaded.model, &IDS), logits(&tiny(DType::F32), &IDS));
}

/// GGUF metadata the model does not implement is refused: RoPE frequency factors,
/// other scaling kinds, a different key width; unknown tensors are named.
#[test]
fn gguf_features_the_model_would_ignore_are_refused() {
    let dir = common::temp_dir("gguf-refuse");
    let m = tiny(DType::F32);
    let freqs = QTensor::quantize(&Tensor::ones(4, DType::F32, &Device::Cpu).unwrap(), GgmlDType::F32).unwrap();
    type Case<'a> = (Vec<(&'a str, Value)>, Vec<(String, QTensor)>, &'a str);
    let cases: Vec<Case> = vec![
        (vec![], vec![("rope_freqs.weight".into(), freqs)], "rope_freqs.weight"),
        (vec![("llama.rope.scaling.type", Value::String("yarn".into()))], vec![], "\"yarn\" is not supported"),
        (vec![("llama.attention.key_length", Value::U32(16))], vec![], "key_length = 16"),
    ];
    for (meta, tensors, needle) in cases {
        let path = dir.join("x.gguf");
        write_gguf_with(&m, &path, meta, tensors);
        let err = load_error(&path);
        assert!(err.contains(needle), "{needle}: {err}");
    }
    let path = dir.join("linear.gguf");
    let linear = vec![
        ("llama.rope.scaling.type", Value::String("linear".into())),
        ("llama.rope.scaling.factor", Value::F32(2.0)),
    ];
    write_gguf_with(&m, &path, linear, vec![]);
    let loaded = load(&path, DType::F32, &Device::Cpu).unwrap();
    assert!(loaded.model.config().rope_scaling.is_some());
}

/// A llama2.c header whose sizes overflow when multiplied is an error, not a panic
/// or an allocation.
#[test]
fn a_crafted_llama2c_header_is_an_error() {
    let dir = common::temp_dir("llama2c-crafted");
    let (big, huge) = (i32::MAX, 1 << 30);
    for (header, needle) in [
        ([huge, huge, huge, 2, 2, 61, 16], "overflow"),
        ([64, 64, 1, 1, 1, 61, big], "truncated"),
        ([2, 2, 1, 1, 1, big, 4], "truncated"),
    ] {
        let mut bytes: Vec<u8> = header.iter().flat_map(|x| x.to_le_bytes()).collect();
        bytes.extend([0u8; 64]);
        let path = dir.join("model.bin");
        std::fs::write(&path, &bytes).unwrap();
        let err = match llama2c::parse(&bytes, DType::F32, &Device::Cpu) {
            Ok(_) => panic!("{header:?} accepted"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains(needle), "{header:?}: {err}");
    }
}

/// A tokenizer whose post-processor adds BOS (Llama 3), without `add_bos_token`
/// in its config, still starts sequences with BOS.
#[test]
fn a_post_processor_that_adds_bos_is_honoured() {
    let dir = common::temp_dir("hf-postproc");
    let ckpt = hf_with_config(&dir, |_| {});
    let bos = toy_tokenizer().decode(&[1]).unwrap();
    let tc = ckpt.join("tokenizer_config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&tc).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("add_bos_token");
    std::fs::write(&tc, v.to_string()).unwrap();
    let loaded = load(&ckpt, DType::F32, &Device::Cpu).unwrap();
    assert!(!loaded.tokenizer.add_bos, "no flag and no post-processor: no BOS");
    let tj = ckpt.join("tokenizer.json");
    let mut t: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&tj).unwrap()).unwrap();
    t["post_processor"] = serde_json::json!({
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {bos.clone(): {"id": bos, "ids": [1], "tokens": [bos]}}
    });
    std::fs::write(&tj, t.to_string()).unwrap();
    let loaded = load(&ckpt, DType::F32, &Device::Cpu).unwrap();
    assert!(loaded.tokenizer.add_bos);
    assert_eq!(loaded.tokenizer.encode_prompt("hello").unwrap()[0], 1);
}
