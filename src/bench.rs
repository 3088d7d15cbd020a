//! Measured throughput and device parity: `spo bench train | generate | parity`.
//!
//! A benchmark model is a file (any format `spo` loads) or a named shape with
//! random weights (`stories15m`, `smollm2`), so a machine with no model files (a
//! GPU machine without network) can run every benchmark. The training data is
//! synthetic text cut to exact token counts by the trainer's own truncation.

use crate::model::{load::hf, Llama, LlamaConfig, Placement};
use crate::sample::{generate, SamplingConfig};
use crate::tokenizer::build::{sentencepiece_bpe, toy_vocabulary};
use crate::train::config::{LossKind, TrainConfig};
use crate::train::{Progress, Trainer};
use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// A scratch directory removed when dropped.
pub struct Scratch(PathBuf);

impl Scratch {
    /// A fresh directory under the system's temporary folder.
    pub fn new(what: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("spo-bench-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The model a benchmark names: a shape preset written with random weights (seed
/// 7) into `scratch`, or a path as given.
pub fn model_path(spec: &str, scratch: &Scratch) -> Result<PathBuf> {
    let config = match spec {
        "stories15m" => LlamaConfig::stories15m(),
        "smollm2" => LlamaConfig::smollm2_135m(),
        path => return Ok(PathBuf::from(path)),
    };
    let dir = scratch.path().join(spec);
    let model = Llama::random(config.clone(), 7, DType::F32, &Device::Cpu)?;
    let tok = sentencepiece_bpe(&toy_vocabulary(config.vocab_size), Some(1), Some(2), true)?;
    hf::save(&model, &tok, &dir)?;
    Ok(dir)
}

/// 64 preference pairs of random words, long enough that any model's tokenizer
/// fills the benchmark's prompt and response lengths (truncation cuts them exactly).
fn synthetic_pairs(path: &Path, seq_len: usize) -> Result<()> {
    let words = "the old lighthouse keeper walked slowly along the shore while gulls circled above the grey water"
        .split(' ')
        .collect::<Vec<_>>();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut text = |n: usize| (0..n).map(|_| words[rng.gen_range(0..words.len())]).collect::<Vec<_>>().join(" ");
    let rows: Vec<Value> = (0..64)
        .map(|_| serde_json::json!({"prompt": text(seq_len), "chosen": format!(" {}", text(seq_len)), "rejected": format!(" {}", text(seq_len))}))
        .collect();
    crate::jsonl::append(path, &rows)
}

/// The shape of one benchmarked training step.
#[derive(Debug, Clone, Serialize)]
pub struct TrainShape {
    /// Objective.
    pub loss: LossKind,
    /// Pairs per step.
    pub batch_size: usize,
    /// Tokens per sequence (a quarter prompt, the rest response).
    pub seq_len: usize,
    /// SPO's KL samples per refresh (each `seq_len` long: a quarter prompt).
    pub kl_samples: usize,
    /// Timed steps (the first is a warm-up and not counted).
    pub steps: usize,
    /// Pairs per forward/backward (gradient accumulation up to `batch_size`).
    pub micro_batch_size: usize,
    /// LoRA rank on every projection (0: a full fine-tune).
    pub lora_r: usize,
}

/// What `spo bench train` reports (these key names are kept stable).
#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    /// The model (path or shape preset).
    pub model: String,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// Compute precision.
    pub dtype: String,
    /// The step's shape.
    pub shape: TrainShape,
    /// Median seconds of one step (forward, backward, AdamW) over steps 2..N,
    /// without the KL refresh's sampling.
    pub median_step_s: f64,
    /// Pair tokens per second at the median (2 · batch · seq_len per step).
    pub tokens_per_s: f64,
    /// Seconds of one KL refresh's sampling (SPO; every 8 steps in the paper).
    pub kl_refresh_s: Option<f64>,
    /// Peak resident memory of the process, GB.
    pub peak_rss_gb: f64,
    /// Every step's loss (the curve to compare across precisions and devices).
    pub losses: Vec<f64>,
    /// Every step's gradient norm.
    pub grad_norms: Vec<f64>,
}

struct Quiet;
impl Progress for Quiet {
    fn step(&mut self, _: usize, _: usize, _: &Map<String, Value>) {}
    fn note(&mut self, _: &str) {}
}

/// The trainer's configuration for a benchmark step of `shape`.
fn bench_config(model: &Path, data: &Path, out: &Path, shape: &TrainShape) -> TrainConfig {
    let prompt = shape.seq_len / 4;
    TrainConfig {
        model: model.into(),
        data: data.into(),
        out: out.into(),
        loss: shape.loss,
        beta: 0.01,
        steps: shape.steps.max(1),
        batch_size: shape.batch_size,
        micro_batch_size: shape.micro_batch_size.clamp(1, shape.batch_size),
        warmup_steps: Some(0),
        max_length: shape.seq_len,
        max_prompt_length: prompt,
        kl_samples: shape.kl_samples,
        kl_max_tokens: shape.seq_len - prompt,
        kl_micro_batch: shape.kl_samples.clamp(1, 8),
        kl_refresh: 8,
        eval_fraction: 0.0,
        eval_every: 0,
        save_every: 0,
        lora_r: shape.lora_r,
        ..TrainConfig::default()
    }
}

/// Times `shape.steps` training steps of `model` on `placement`.
pub fn train(model: &str, shape: &TrainShape, placement: &Placement) -> Result<TrainReport> {
    anyhow::ensure!(shape.steps >= 2 && shape.seq_len >= 8, "--steps must be at least 2 and --seq-len at least 8");
    let scratch = Scratch::new("train")?;
    let path = model_path(model, &scratch)?;
    let data = scratch.path().join("pairs.jsonl");
    synthetic_pairs(&data, shape.seq_len)?;
    let cfg = bench_config(&path, &data, &scratch.path().join("run"), shape);
    let mut trainer = Trainer::new(cfg, placement.precision.dtype(), &placement.device, None, &mut Quiet)?;
    let (mut steps, mut refresh, mut losses, mut grad_norms) = (Vec::new(), None, Vec::new(), Vec::new());
    let num = |m: &Map<String, Value>, key: &str| m.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN);
    for _ in 0..shape.steps {
        let m = trainer.train_step()?;
        let sampling = m.get("kl_sample_seconds").and_then(Value::as_f64);
        refresh = refresh.or(sampling);
        steps.push(num(&m, "step_seconds") - sampling.unwrap_or(0.0));
        losses.push(num(&m, "loss"));
        grad_norms.push(num(&m, "grad_norm"));
    }
    let median_step_s = median(&steps[1..]);
    Ok(TrainReport {
        model: model.into(),
        device: placement.device_name(),
        dtype: placement.precision.to_string(),
        shape: shape.clone(),
        median_step_s,
        tokens_per_s: (2 * shape.batch_size * shape.seq_len) as f64 / median_step_s,
        kl_refresh_s: refresh,
        peak_rss_gb: peak_rss_gb(),
        losses,
        grad_norms,
    })
}

/// What `spo bench generate` reports.
#[derive(Debug, Clone, Serialize)]
pub struct GenerateReport {
    /// The model (path or shape preset).
    pub model: String,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// Compute precision.
    pub dtype: String,
    /// Rows decoded together.
    pub batch_size: usize,
    /// New tokens per row (EOS ignored).
    pub max_tokens: usize,
    /// Median new tokens per second over the timed runs.
    pub tokens_per_s: f64,
    /// Peak resident memory of the process, GB.
    pub peak_rss_gb: f64,
}

/// Samples `batch_size` rows of `max_tokens` tokens `runs` times (after a warm-up).
pub fn generation(
    model: &str,
    batch_size: usize,
    max_tokens: usize,
    runs: usize,
    on: &Placement,
) -> Result<GenerateReport> {
    let scratch = Scratch::new("generate")?;
    let loaded = on.load(&model_path(model, &scratch)?)?;
    let prompt = loaded.tokenizer.encode_prompt("Once upon a time")?;
    let prompts = vec![prompt; batch_size];
    let cfg = SamplingConfig { max_new_tokens: max_tokens, ignore_eos: true, ..Default::default() };
    let mut rates = Vec::new();
    for run in 0..=runs.max(1) {
        let start = std::time::Instant::now();
        let samples = generate(&loaded.model, &loaded.tokenizer, &prompts, &cfg)?;
        let tokens: usize = samples.iter().map(|s| s.tokens.len()).sum();
        if run > 0 {
            rates.push(tokens as f64 / start.elapsed().as_secs_f64());
        }
    }
    Ok(GenerateReport {
        model: model.into(),
        device: on.device_name(),
        dtype: on.precision.to_string(),
        batch_size,
        max_tokens,
        tokens_per_s: median(&rates),
        peak_rss_gb: peak_rss_gb(),
    })
}

/// The median of `xs` (NaN when empty).
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Peak resident set size of this process (Linux `VmHWM`), GB; 0 where unknown.
pub fn peak_rss_gb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok());
    kb.map_or(0.0, |kb| kb * 1024.0 / 1e9)
}

/// One quantity on two devices.
#[derive(Debug, Clone, Serialize)]
pub struct Compared {
    /// What was compared.
    pub what: String,
    /// On the CPU, f32.
    pub cpu: f64,
    /// On the device under test, f32.
    pub device: f64,
    /// The largest absolute difference (over every element for tensors).
    pub max_abs_diff: f64,
}

/// The same model's logits, and one training step's loss and gradient norm for
/// each of `losses`, on the CPU and on `device`, all in f32.
pub fn parity(model: &str, device: &Device, losses: &[LossKind], shape: &TrainShape) -> Result<Vec<Compared>> {
    let scratch = Scratch::new("parity")?;
    let path = model_path(model, &scratch)?;
    let data = scratch.path().join("pairs.jsonl");
    synthetic_pairs(&data, shape.seq_len)?;
    let logits = |dev: &Device| -> Result<Tensor> {
        let loaded = crate::model::load(&path, DType::F32, dev)?;
        let ids = loaded.tokenizer.encode_prompt("Once upon a time, in a small town by the sea, there lived")?;
        let n = ids.len();
        Ok(loaded.model.logits(&Tensor::from_vec(ids, (1, n), dev)?)?.to_device(&Device::Cpu)?)
    };
    let (a, b) = (logits(&Device::Cpu)?, logits(device)?);
    let diff = (&a - &b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    let mean = |t: &Tensor| -> Result<f64> { Ok(f64::from(t.mean_all()?.to_scalar::<f32>()?)) };
    let mut out =
        vec![Compared { what: "logits".into(), cpu: mean(&a)?, device: mean(&b)?, max_abs_diff: f64::from(diff) }];
    for &loss in losses {
        let shape = TrainShape { loss, steps: 1, ..shape.clone() };
        let step = |dev: &Device, name: &str| -> Result<Map<String, Value>> {
            let cfg = bench_config(&path, &data, &scratch.path().join(name), &shape);
            Trainer::new(cfg, DType::F32, dev, None, &mut Quiet)?.train_step()
        };
        let (x, y) = (step(&Device::Cpu, "cpu")?, step(device, "device")?);
        for key in ["loss", "grad_norm"] {
            let (p, q) = (x[key].as_f64().unwrap_or(f64::NAN), y[key].as_f64().unwrap_or(f64::NAN));
            out.push(Compared {
                what: format!("{loss:?} step 1 {key}"),
                cpu: p,
                device: q,
                max_abs_diff: (p - q).abs(),
            });
        }
    }
    Ok(out)
}
