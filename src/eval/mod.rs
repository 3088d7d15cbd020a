//! The paper's evaluation (Figure 1): sample one response per prompt from a model
//! and from the reference with the same seeds, judge each pair in both orders, and
//! report the win rate with its interval, plus what the paper argues about — the
//! diversity of the samples, the judge's mean score, and the KL to the reference
//! estimated on the samples. Sample sets are cached on disk, keyed by the model
//! files and the sampling settings, so a second look costs nothing.

pub mod diversity;
pub mod runs;
pub mod winrate;

use crate::batch::response_logps;
use crate::judge::{judge_both_orders, Judge, Match};
use crate::model::{Loaded, Placement};
use crate::sample::{generate, SamplingConfig};
use anyhow::{ensure, Context, Result};
use candle_core::DType;
use serde::{Deserialize, Serialize};
use std::cell::OnceCell;
use std::path::{Path, PathBuf};
use winrate::WinRate;

/// What every model is sampled on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSpec {
    /// Prompts; sample i answers prompt i mod n.
    pub prompts: Vec<String>,
    /// The prompts are story openings: a story is prompt + response.
    pub prefix: bool,
    /// The prompts are user messages rendered with the model's chat template.
    #[serde(default)]
    pub chat: bool,
    /// Samples per model.
    pub num_samples: usize,
    /// Maximum new tokens per sample.
    pub max_tokens: usize,
    /// Sampling temperature (the KL estimate needs 1).
    pub temperature: f64,
    /// Seed: sample i of every model uses the same random stream.
    pub seed: u64,
    /// Samples drawn per batch (part of the seeding, so part of the cache key).
    pub batch_size: usize,
}

impl EvalSpec {
    /// The text the judge reads for sample `i`.
    pub fn story(&self, i: usize, response: &str) -> String {
        if self.prefix {
            format!("{}{response}", self.prompt(i))
        } else {
            response.to_string()
        }
    }

    /// The prompt of sample `i`.
    pub fn prompt(&self, i: usize) -> &str {
        &self.prompts[i % self.prompts.len()]
    }
}

/// One model's samples, with the per-sample sums the statistics need.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleSet {
    /// Generated text (EOS excluded).
    pub texts: Vec<String>,
    /// Generated tokens (EOS included when emitted).
    pub tokens: Vec<usize>,
    /// Σ log π(y_t) under the model that sampled.
    pub logprob: Vec<f64>,
    /// Σ entropy of the model's next-token distribution over the sample.
    pub entropy: Vec<f64>,
    /// Σ log π_ref(y_t) under the reference.
    pub ref_logprob: Vec<f64>,
}

/// The statistics of one model against the reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointReport {
    /// Training step (0: the reference itself).
    pub step: usize,
    /// The model evaluated.
    pub model: String,
    /// Win rate, its interval and the tally.
    #[serde(flatten)]
    pub win: WinRate,
    /// Distinct word unigrams / all unigrams of the samples.
    pub distinct_1: f64,
    /// Distinct word bigrams / all bigrams.
    pub distinct_2: f64,
    /// Mean entropy (nats) of the model's next-token distribution per generated token.
    pub entropy: f64,
    /// KL(π‖π_ref) per sample, E[log π(y) − log π_ref(y)] over the samples (null
    /// unless sampled at temperature 1).
    pub kl: Option<f64>,
    /// The same per generated token.
    pub kl_per_token: Option<f64>,
    /// Mean generated tokens per sample.
    pub mean_tokens: f64,
}

/// FNV-1a, 64 bits: a cache key stable across builds and platforms.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// What identifies a model's files: names, sizes and modification times (a
/// checkpoint is written once, by rename, so these change whenever it does).
fn fingerprint(path: &Path) -> Result<String> {
    let stamp = |p: &Path| -> Result<String> {
        let m = std::fs::metadata(p).with_context(|| format!("reading {}", p.display()))?;
        let mtime = m.modified()?.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        Ok(format!("{}:{}:{mtime}", p.file_name().unwrap_or_default().to_string_lossy(), m.len()))
    };
    if !path.is_dir() {
        return stamp(path);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("reading {}", path.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    files.retain(|p| p.is_file());
    files.sort();
    Ok(files.iter().map(|p| stamp(p)).collect::<Result<Vec<_>>>()?.join("|"))
}

/// Evaluates models against one reference on one [`EvalSpec`] with one judge.
pub struct Evaluator<'a> {
    spec: EvalSpec,
    reference_path: PathBuf,
    reference: OnceCell<Loaded>,
    cache: PathBuf,
    judge: &'a (dyn Judge + Sync),
    workers: usize,
    reference_samples: OnceCell<SampleSet>,
    placement: Placement,
}

impl<'a> Evaluator<'a> {
    /// An evaluator caching its sample sets in `cache` (created when needed).
    pub fn new(
        reference: &Path,
        spec: EvalSpec,
        cache: &Path,
        judge: &'a (dyn Judge + Sync),
        workers: usize,
    ) -> Result<Self> {
        ensure!(!spec.prompts.is_empty(), "no prompts to evaluate on");
        ensure!(spec.num_samples > 0 && spec.batch_size > 0, "num_samples and batch_size must be at least 1");
        Ok(Self {
            spec,
            reference_path: reference.to_path_buf(),
            reference: OnceCell::new(),
            cache: cache.to_path_buf(),
            judge,
            workers,
            reference_samples: OnceCell::new(),
            placement: Placement::default(),
        })
    }

    /// Samples and scores on `placement`'s device and precision (default: CPU, f32).
    pub fn on(mut self, placement: Placement) -> Self {
        self.placement = placement;
        self
    }

    /// The sampling settings.
    pub fn spec(&self) -> &EvalSpec {
        &self.spec
    }

    fn reference(&self) -> Result<&Loaded> {
        if self.reference.get().is_none() {
            let loaded = self.placement.load(&self.reference_path)?;
            let _ = self.reference.set(loaded);
        }
        Ok(self.reference.get().expect("just set"))
    }

    /// The samples of `path` (from the cache when there); `note` hears progress.
    pub fn samples(&self, path: &Path, note: &mut dyn FnMut(&str)) -> Result<SampleSet> {
        let key = format!(
            "{}\n{}\n{}\n{:?}",
            fingerprint(path)?,
            fingerprint(&self.reference_path)?,
            serde_json::to_string(&self.spec)?,
            self.placement.precision
        );
        let file = self.cache.join(format!("samples-{:016x}.json", fnv1a(key.as_bytes())));
        if let Ok(text) = std::fs::read_to_string(&file) {
            if let Ok(set) = serde_json::from_str::<SampleSet>(&text) {
                note(&format!("{}: {} samples from the cache", path.display(), set.texts.len()));
                return Ok(set);
            }
        }
        let set = self.draw(path, note)?;
        std::fs::create_dir_all(&self.cache).with_context(|| format!("creating {}", self.cache.display()))?;
        let tmp = file.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_string(&set)?).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &file).with_context(|| format!("writing {}", file.display()))?;
        Ok(set)
    }

    /// Samples `path` batch by batch and scores every sample under the reference.
    fn draw(&self, path: &Path, note: &mut dyn FnMut(&str)) -> Result<SampleSet> {
        let own;
        let loaded = if path == self.reference_path {
            self.reference()?
        } else {
            own = self.placement.load(path)?;
            &own
        };
        let reference = &self.reference()?.model;
        ensure!(
            loaded.model.config().vocab_size == reference.config().vocab_size,
            "{} and the reference {} have different vocabularies",
            path.display(),
            self.reference_path.display()
        );
        let s = &self.spec;
        let tok = &loaded.tokenizer;
        let mut set =
            SampleSet { texts: vec![], tokens: vec![], logprob: vec![], entropy: vec![], ref_logprob: vec![] };
        let started = std::time::Instant::now();
        for start in (0..s.num_samples).step_by(s.batch_size) {
            let end = (start + s.batch_size).min(s.num_samples);
            let prompts: Vec<Vec<u32>> =
                (start..end).map(|i| tok.encode_user_prompt(s.prompt(i), s.chat)).collect::<Result<_>>()?;
            let cfg = SamplingConfig {
                max_new_tokens: s.max_tokens,
                temperature: s.temperature,
                seed: SamplingConfig::batch_seed(s.seed, start),
                ..Default::default()
            };
            let samples = generate(&loaded.model, tok, &prompts, &cfg)?;
            let rows: Vec<(&[u32], &[u32])> =
                samples.iter().map(|x| (prompts[x.index].as_slice(), x.tokens.as_slice())).collect();
            let pad = tok.eos.unwrap_or(0);
            let ref_lp = response_logps(reference, &rows, pad, false)?.0.to_dtype(DType::F64)?.to_vec1::<f64>()?;
            for (x, r) in samples.iter().zip(ref_lp) {
                set.texts.push(x.text.clone());
                set.tokens.push(x.tokens.len());
                set.logprob.push(x.logprobs.iter().map(|&v| f64::from(v)).sum());
                set.entropy.push(x.entropies.iter().map(|&v| f64::from(v)).sum());
                set.ref_logprob.push(r);
            }
            let secs = started.elapsed().as_secs_f64();
            let tokens: usize = set.tokens.iter().sum();
            note(&format!(
                "{}: {end}/{} samples ({:.0} tokens/s)",
                path.display(),
                s.num_samples,
                tokens as f64 / secs.max(1e-9)
            ));
        }
        Ok(set)
    }

    /// Win rate and statistics of the model at `path` (trained for `step` steps).
    pub fn evaluate(&self, path: &Path, step: usize, note: &mut dyn FnMut(&str)) -> Result<PointReport> {
        if self.reference_samples.get().is_none() {
            let set = self.samples(&self.reference_path, note)?;
            let _ = self.reference_samples.set(set);
        }
        let theirs = self.reference_samples.get().expect("just set");
        let ours = if path == self.reference_path { theirs.clone() } else { self.samples(path, note)? };
        let matches: Vec<Match> = (0..self.spec.num_samples)
            .map(|i| Match {
                prompt: self.spec.prompt(i).to_string(),
                a: self.spec.story(i, &ours.texts[i]),
                b: self.spec.story(i, &theirs.texts[i]),
            })
            .collect();
        let mut verdicts = vec![(None, None); matches.len()];
        let mut errors = Vec::new();
        judge_both_orders(self.judge, &matches, self.workers, |i, ab, ba| {
            if let Some(e) = [&ab, &ba].iter().find_map(|r| r.as_ref().err()) {
                errors.push(format!("sample {i}: {e:#}"));
            }
            verdicts[i] = (ab.ok(), ba.ok());
            Ok(())
        })?;
        if let Some(first) = errors.first() {
            note(&format!("{} of {} matches failed to judge; first: {first}", errors.len(), matches.len()));
        }
        Ok(self.report(path, step, &ours, winrate::tally(&verdicts)))
    }

    fn report(&self, path: &Path, step: usize, set: &SampleSet, win: WinRate) -> PointReport {
        let n = set.texts.len().max(1) as f64;
        let tokens: f64 = set.tokens.iter().sum::<usize>() as f64;
        let kl_sum: f64 = set.logprob.iter().zip(&set.ref_logprob).map(|(a, b)| a - b).sum();
        let kl = (self.spec.temperature == 1.0).then_some(kl_sum / n);
        PointReport {
            step,
            model: path.display().to_string(),
            win,
            distinct_1: diversity::distinct_n(&set.texts, 1),
            distinct_2: diversity::distinct_n(&set.texts, 2),
            entropy: set.entropy.iter().sum::<f64>() / tokens.max(1.0),
            kl,
            kl_per_token: kl.map(|k| k * n / tokens.max(1.0)),
            mean_tokens: tokens / n,
        }
    }
}
