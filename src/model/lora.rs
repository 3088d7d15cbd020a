//! LoRA adapters (Hu et al., 2021) with PEFT's names, layout and semantics: a
//! target projection `y = x Wᵀ` becomes `y = x Wᵀ + (α/r) · dropout(x) Aᵀ Bᵀ` with
//! `A: [r, in]` (Kaiming-uniform, PEFT's default) and `B: [out, r]` (zero), so
//! training starts at the base model. Saved as `adapter_config.json` +
//! `adapter_model.safetensors` under PEFT's keys, in Hugging Face's layout (spo's
//! loaders put every format's q/k rows into that layout).

use super::LlamaConfig;
use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Every projection LoRA can adapt (PEFT's `target_modules` names).
pub const ALL_TARGETS: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/// The adapter's hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Rank r.
    pub r: usize,
    /// `lora_alpha`: the update is scaled by α/r.
    pub alpha: f64,
    /// Dropout on the adapter's input while training.
    pub dropout: f64,
    /// Adapted projections (names from [`ALL_TARGETS`]).
    pub targets: Vec<String>,
}

impl LoraConfig {
    /// The update's scale, `lora_alpha / r`.
    pub fn scaling(&self) -> f64 {
        self.alpha / self.r as f64
    }

    /// Checks ranges and names; each message names the option.
    pub fn validate(&self) -> Result<(), String> {
        if self.r == 0 {
            return Err("lora_r must be at least 1".into());
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err("lora_alpha must be a finite number > 0".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err("lora_dropout must be in [0, 1)".into());
        }
        if self.targets.is_empty() {
            return Err("lora_targets must name at least one projection".into());
        }
        match self.targets.iter().find(|t| !ALL_TARGETS.contains(&t.as_str())) {
            Some(t) => Err(format!("lora_targets: unknown projection {t} (known: {})", ALL_TARGETS.join(", "))),
            None => Ok(()),
        }
    }
}

/// The module paths of `c`'s projections named in `targets`, with `(in, out)`.
pub fn modules(c: &LlamaConfig, targets: &[String]) -> Vec<(String, usize, usize)> {
    let (d, f, hd) = (c.hidden_size, c.intermediate_size, c.head_dim());
    let (q, kv) = (c.num_attention_heads * hd, c.num_key_value_heads * hd);
    let mut out = Vec::new();
    for i in 0..c.num_hidden_layers {
        for (name, kind, din, dout) in [
            ("q_proj", "self_attn", d, q),
            ("k_proj", "self_attn", d, kv),
            ("v_proj", "self_attn", d, kv),
            ("o_proj", "self_attn", q, d),
            ("gate_proj", "mlp", d, f),
            ("up_proj", "mlp", d, f),
            ("down_proj", "mlp", f, d),
        ] {
            if targets.iter().any(|t| t == name) {
                out.push((format!("model.layers.{i}.{kind}.{name}"), din, dout));
            }
        }
    }
    out
}

/// PEFT's key of one adapter matrix (`which` is `A` or `B`).
fn peft_key(module: &str, which: char) -> String {
    format!("base_model.model.{module}.lora_{which}.weight")
}

/// One adapted projection.
#[derive(Debug, Clone)]
struct Adapter {
    a: Var,
    b: Var,
}

/// The adapters of one model.
#[derive(Debug, Clone)]
pub struct Lora {
    config: LoraConfig,
    adapters: BTreeMap<String, Adapter>,
    /// Counts dropout masks drawn, from a per-step origin ([`Lora::reseed`]), so a
    /// resumed run draws the same masks.
    masks: Arc<AtomicU64>,
    seed: u64,
}

impl Lora {
    /// Fresh adapters for `model`: `A` Kaiming-uniform (bound `1/√in`, PEFT's
    /// default), `B` zero; variables in `dtype` on `device`.
    pub fn init(config: LoraConfig, model: &LlamaConfig, seed: u64, dtype: DType, device: &Device) -> Result<Self> {
        config.validate().map_err(|e| anyhow::anyhow!(e))?;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x10_2A);
        let r = config.r;
        let shapes: HashMap<String, (usize, usize)> =
            modules(model, &config.targets).into_iter().map(|(m, i, o)| (m, (i, o))).collect();
        Self::from_tensors(config, model, seed, dtype, device, |key| {
            let module = key.trim_start_matches("base_model.model.").split(".lora_").next().unwrap_or_default();
            let (din, dout) = shapes[module];
            if key.ends_with("lora_B.weight") {
                return Ok(Tensor::zeros((dout, r), DType::F32, &Device::Cpu)?);
            }
            let bound = 1.0 / (din as f64).sqrt();
            let v: Vec<f32> = (0..r * din).map(|_| rng.gen_range(-bound..bound) as f32).collect();
            Ok(Tensor::from_vec(v, (r, din), &Device::Cpu)?)
        })
    }

    /// Adapters from named tensors (PEFT keys), shapes checked.
    pub fn from_tensors(
        config: LoraConfig,
        model: &LlamaConfig,
        seed: u64,
        dtype: DType,
        device: &Device,
        mut get: impl FnMut(&str) -> Result<Tensor>,
    ) -> Result<Self> {
        config.validate().map_err(|e| anyhow::anyhow!(e))?;
        let mut adapters = BTreeMap::new();
        for (module, din, dout) in modules(model, &config.targets) {
            let mut var = |which: char, shape: (usize, usize)| -> Result<Var> {
                let key = peft_key(&module, which);
                let t = get(&key)?;
                ensure!(t.dims() == [shape.0, shape.1], "adapter {key} has shape {:?}, expected {shape:?}", t.dims());
                Ok(Var::from_tensor(&t.to_dtype(dtype)?.to_device(device)?)?)
            };
            let a = var('A', (config.r, din))?;
            let b = var('B', (dout, config.r))?;
            adapters.insert(module, Adapter { a, b });
        }
        Ok(Self { config, adapters, masks: Arc::new(AtomicU64::new(0)), seed })
    }

    /// The same adapters drawing dropout masks from `seed` (a run's seed).
    pub fn seeded(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &LoraConfig {
        &self.config
    }

    /// Every adapter matrix under its PEFT key.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let mut out = Vec::with_capacity(2 * self.adapters.len());
        for (module, ad) in &self.adapters {
            out.push((peft_key(module, 'A'), ad.a.clone()));
            out.push((peft_key(module, 'B'), ad.b.clone()));
        }
        out
    }

    /// Restarts the dropout masks' stream at `step`'s origin.
    pub fn reseed(&self, step: usize) {
        self.masks.store((step as u64) << 32, Ordering::SeqCst);
    }

    /// `module`'s factors `(A, B)` in `dtype` (tracked for training when `track`),
    /// or None when it is not adapted.
    pub fn factors(&self, module: &str, dtype: DType, track: bool) -> candle_core::Result<Option<(Tensor, Tensor)>> {
        let Some(ad) = self.adapters.get(module) else { return Ok(None) };
        let cast = |v: &Var| -> candle_core::Result<Tensor> {
            let t = if track { v.as_tensor().clone() } else { v.as_tensor().detach() };
            t.to_dtype(dtype)
        };
        Ok(Some((cast(&ad.a)?, cast(&ad.b)?)))
    }

    /// An inverted-dropout mask shaped like `x` (0 or 1/(1−p)) from the run's seed
    /// and the mask counter; None without dropout.
    pub fn dropout_mask(&self, x: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let p = self.config.dropout;
        if p == 0.0 {
            return Ok(None);
        }
        let n = self.masks.fetch_add(1, Ordering::SeqCst);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let keep = (1.0 / (1.0 - p)) as f32;
        let mask: Vec<f32> = (0..x.elem_count()).map(|_| if rng.gen::<f64>() < p { 0.0 } else { keep }).collect();
        Ok(Some(Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?))
    }

    /// `W + (α/r)·B A` for `module`'s base weight `w` (merging), in `w`'s dtype.
    pub fn merged(&self, module: &str, w: &Tensor) -> Result<Tensor> {
        let Some(ad) = self.adapters.get(module) else { return Ok(w.clone()) };
        let (a, b) = (ad.a.as_tensor().to_dtype(DType::F32)?, ad.b.as_tensor().to_dtype(DType::F32)?);
        let delta = (b.matmul(&a)? * self.config.scaling())?;
        Ok((w.to_dtype(DType::F32)? + delta.to_device(w.device())?)?.to_dtype(w.dtype())?)
    }

    /// Writes `adapter_config.json` and `adapter_model.safetensors` (f32) into
    /// `dir` (PEFT's format); `base` is recorded as `base_model_name_or_path`.
    pub fn write(&self, dir: &Path, base: &Path) -> Result<()> {
        let c = &self.config;
        let base = std::fs::canonicalize(base).unwrap_or_else(|_| base.to_path_buf());
        let config = serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base.display().to_string(),
            "r": c.r,
            "lora_alpha": c.alpha,
            "lora_dropout": c.dropout,
            "target_modules": c.targets,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "use_rslora": false,
            "use_dora": false,
            "modules_to_save": null,
            "layers_to_transform": null,
            "rank_pattern": {},
            "alpha_pattern": {},
        });
        std::fs::write(dir.join("adapter_config.json"), serde_json::to_string_pretty(&config)?)?;
        let tensors: HashMap<String, Tensor> = self
            .named_vars()
            .into_iter()
            .map(|(k, v)| Ok((k, v.as_tensor().detach().to_dtype(DType::F32)?.to_device(&Device::Cpu)?)))
            .collect::<Result<_>>()?;
        candle_core::safetensors::save(&tensors, dir.join("adapter_model.safetensors"))?;
        Ok(())
    }

    /// Reads an adapter directory for a model of shape `model`, variables in `dtype`
    /// on `device` (dropout seed 0: see [`Self::seeded`]).
    pub fn read(dir: &Path, model: &LlamaConfig, dtype: DType, device: &Device) -> Result<Self> {
        let (config, _) = read_config(dir)?;
        let file = dir.join("adapter_model.safetensors");
        let tensors = candle_core::safetensors::load(&file, &Device::Cpu)
            .with_context(|| format!("{}: not a readable safetensors file", file.display()))?;
        let known: std::collections::HashSet<String> =
            modules(model, &config.targets).iter().flat_map(|(m, _, _)| [peft_key(m, 'A'), peft_key(m, 'B')]).collect();
        if let Some(k) = tensors.keys().find(|k| !known.contains(*k)) {
            bail!("{}: tensor {k} does not belong to this model's adapters", file.display());
        }
        Self::from_tensors(config, model, 0, dtype, device, |key| {
            tensors.get(key).cloned().with_context(|| format!("{}: adapter {key} missing", file.display()))
        })
        .with_context(|| format!("{}", dir.display()))
    }
}

/// Whether `dir` holds a PEFT adapter (and no full model).
pub fn is_adapter_dir(dir: &Path) -> bool {
    dir.join("adapter_config.json").is_file() && !dir.join("config.json").is_file()
}

/// An adapter directory's configuration and the base model path it names. Only
/// plain LoRA is accepted.
pub fn read_config(dir: &Path) -> Result<(LoraConfig, Option<PathBuf>)> {
    let path = dir.join("adapter_config.json");
    let text = crate::fsx::read_text(&path)?;
    let j: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))?;
    let bad = |what: &str| anyhow::anyhow!("{}: {what}", path.display());
    ensure!(j["peft_type"] == "LORA", bad("peft_type is not LORA"));
    for (key, plain) in [("use_dora", false), ("use_rslora", false), ("fan_in_fan_out", false)] {
        ensure!(j[key].as_bool().unwrap_or(plain) == plain, bad(&format!("{key} is not supported")));
    }
    ensure!(j["bias"].as_str().unwrap_or("none") == "none", bad("bias other than none is not supported"));
    for key in ["rank_pattern", "alpha_pattern"] {
        ensure!(j[key].as_object().is_none_or(|m| m.is_empty()), bad(&format!("{key} is not supported")));
    }
    ensure!(
        j["layers_to_transform"].is_null() && j["modules_to_save"].is_null(),
        bad("partial adapters are not supported")
    );
    let targets: Vec<String> = match &j["target_modules"] {
        serde_json::Value::Array(a) => a.iter().filter_map(|t| t.as_str().map(String::from)).collect(),
        serde_json::Value::String(s) if s == "all-linear" => ALL_TARGETS.map(String::from).to_vec(),
        _ => bail!(bad("target_modules must be a list of names")),
    };
    let config = LoraConfig {
        r: j["r"].as_u64().ok_or_else(|| bad("r missing"))? as usize,
        alpha: j["lora_alpha"].as_f64().ok_or_else(|| bad("lora_alpha missing"))?,
        dropout: j["lora_dropout"].as_f64().unwrap_or(0.0),
        targets,
    };
    config.validate().map_err(|e| bad(&e))?;
    let base = j["base_model_name_or_path"].as_str().filter(|s| !s.is_empty()).map(PathBuf::from);
    Ok((config, base))
}
