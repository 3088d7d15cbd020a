//! The trainer: batch → log-probs → loss → backward (accumulated over micro-batches)
//! → clip → AdamW, with SPO's KL on fresh samples, cached reference log-probs for
//! DPO/IPO, checkpoints, exact resume, evaluation and metrics.

pub mod checkpoint;
pub mod config;
pub mod optim;

use crate::batch::{response_logps, tokenize, SequenceBatch, TokenPair};
use crate::loss::{
    baselines::PairLogps, dpo_loss, ipo_loss, soft_importance_normaliser, spo_preference_loss_in_batch, LossOutput,
    Weighting,
};
use crate::model::llama::accumulation_dtype;
use crate::model::lora::Lora;
use crate::model::{load, Llama};
use crate::sample::{generate, SamplingConfig};
use crate::tokenizer::Tokenizer;
use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use checkpoint::{KlSample, TrainerState};
use config::{LossKind, TrainConfig};
use optim::{AdamW, AdamWConfig};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Per-step progress, for the CLI's progress bar.
pub trait Progress {
    /// Called after every optimiser step with its metrics.
    fn step(&mut self, step: usize, total: usize, metrics: &Map<String, Value>);
    /// A message worth showing (cache built, checkpoint written, …).
    fn note(&mut self, msg: &str);
}

/// Reference log-probs of every pair, computed once (DPO/IPO).
#[derive(Debug, Clone, Default)]
struct RefCache {
    chosen: Vec<f64>,
    rejected: Vec<f64>,
}

/// A training run.
pub struct Trainer {
    cfg: TrainConfig,
    policy: Llama,
    reference: Option<Llama>,
    tok: Tokenizer,
    train: Vec<TokenPair>,
    eval: Vec<TokenPair>,
    ref_train: RefCache,
    ref_eval: RefCache,
    opt: AdamW,
    step: usize,
    kl_samples: Vec<KlSample>,
    /// The KL samples as padded batches of `kl_micro_batch` (those with response
    /// tokens), each with the reference's hidden rows on it: built once per refresh,
    /// since neither the samples nor the reference change in between; each step
    /// applies only the reference's head.
    kl_chunks: Vec<(SequenceBatch, Tensor)>,
}

/// Forward of a set of pairs: sequence log-probs `[B]` of chosen and rejected.
fn pair_logps(model: &Llama, pairs: &[&TokenPair], pad: u32, track: bool) -> Result<(Tensor, Tensor, Vec<usize>)> {
    let rows: Vec<(&[u32], &[u32])> = pairs
        .iter()
        .map(|p| (p.prompt.as_slice(), p.chosen.as_slice()))
        .chain(pairs.iter().map(|p| (p.prompt.as_slice(), p.rejected.as_slice())))
        .collect();
    let (seq, lengths) = response_logps(model, &rows, pad, track)?;
    let b = pairs.len();
    Ok((seq.narrow(0, 0, b)?, seq.narrow(0, b, b)?, lengths))
}

fn to_f64(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.to_vec1::<f64>()?)
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

/// Adds `scale ×` this backward pass's gradients into `acc`.
fn accumulate(model: &Llama, loss: &Tensor, acc: &mut HashMap<String, Tensor>) -> Result<()> {
    let grads = loss.backward()?;
    for (name, var) in model.trainable_vars() {
        if let Some(g) = grads.get(var.as_tensor()) {
            let sum = match acc.remove(&name) {
                Some(prev) => (prev + g)?,
                None => g.clone(),
            };
            acc.insert(name, sum);
        }
    }
    Ok(())
}

/// The policy to train and the frozen reference (when the loss needs one) from
/// the loaded `base`: under LoRA the policy is `base` with adapters (fresh, from
/// `cfg.adapter`, or the checkpoint's) and the reference is `base` itself, shared;
/// otherwise the policy is a copy (or the checkpoint) with f32 master weights and
/// the reference is `base` in the compute dtype.
fn policy_and_reference(
    cfg: &TrainConfig,
    base: Llama,
    resume: Option<&Path>,
    dtype: DType,
) -> Result<(Llama, Option<Llama>)> {
    let master = accumulation_dtype(dtype);
    let device = base.device().clone();
    let needs_reference = cfg.loss != LossKind::Spo || cfg.uses_kl();
    if let Some(lora) = cfg.lora() {
        let adapter = resume.or(cfg.adapter.as_deref());
        let adapters = match adapter {
            Some(dir) => Lora::read(dir, base.config(), master, &device)?.seeded(cfg.seed),
            None => Lora::init(lora.clone(), base.config(), cfg.seed, master, &device)?,
        };
        if adapters.config() != &lora {
            bail!(
                "{}: its adapter is {:?}, the run asks for {lora:?}",
                adapter.unwrap_or(&cfg.model).display(),
                adapters.config()
            );
        }
        let reference = needs_reference.then(|| base.without_adapters());
        return Ok((base.with_lora(adapters), reference));
    }
    let policy = match resume {
        Some(dir) => load(dir, master, &device)?.model,
        // the reference keeps the original variables; the policy trains a copy
        None => base.deep_copy()?,
    };
    let reference = match needs_reference {
        false => None,
        true if master == dtype => Some(base),
        true => Some(base.converted(dtype)?),
    };
    Ok((policy.compute_in(dtype), reference))
}

impl Trainer {
    /// Loads the model(s) and data, validates everything, and (for DPO/IPO) caches
    /// the reference log-probs. `resume` continues from a checkpoint directory.
    /// `dtype` is the compute dtype (f32 or bf16; f64 for exact tests). Under bf16
    /// the policy keeps f32 master weights (gradients and AdamW in f32) and the
    /// frozen reference is stored in bf16.
    pub fn new(
        cfg: TrainConfig,
        dtype: DType,
        device: &Device,
        resume: Option<&Path>,
        progress: &mut dyn Progress,
    ) -> Result<Self> {
        cfg.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
        // a full fine-tune keeps master weights in f32; LoRA's base is frozen
        let base_dtype = if cfg.lora_r > 0 { dtype } else { accumulation_dtype(dtype) };
        let base = load(&cfg.model, base_dtype, device)?;
        let tok = base.tokenizer.clone();
        let ds = crate::data::read(&cfg.data, Some(&tok))?;
        crate::data::check(&ds, &cfg.data, cfg.skip_invalid)?;
        if !ds.bad.is_empty() {
            progress.note(&format!("skipped {} malformed record(s) (--skip-invalid)", ds.bad.len()));
        }
        if ds.skipped_degenerate > 0 {
            progress.note(&format!(
                "warning: skipped {} pair(s) with an empty or identical response",
                ds.skipped_degenerate
            ));
        }
        let context = base.model.config().max_position_embeddings;
        let name = |i: usize| format!("{}:{}", cfg.data.display(), ds.lines[i]);
        let (mut pairs, dropped) = tokenize(&tok, &ds.pairs, cfg.truncation(), context, name)?;
        if dropped > 0 {
            progress.note(&format!("warning: skipped {dropped} pair(s) whose response was truncated to nothing"));
        }
        ensure!(!pairs.is_empty(), "{}: no pair survives tokenisation and truncation", cfg.data.display());
        pairs.shuffle(&mut ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5EED_5EED));
        let n_eval = ((pairs.len() as f64) * cfg.eval_fraction).round() as usize;
        let eval = pairs.split_off(pairs.len() - n_eval.min(pairs.len() - 1));
        let train = pairs;
        let (policy, reference) = policy_and_reference(&cfg, base.model, resume, dtype)?;
        let adam = AdamWConfig {
            beta1: cfg.adam_beta1,
            beta2: cfg.adam_beta2,
            eps: cfg.adam_eps,
            weight_decay: cfg.weight_decay,
        };
        let mut opt = AdamW::new(policy.trainable_vars(), adam)?;
        let (step, kl_samples) = match resume {
            Some(dir) => {
                let st = checkpoint::restore(dir, &mut opt, device)?;
                (st.step, st.kl_samples)
            }
            None => (0, Vec::new()),
        };
        let mut t = Self {
            cfg,
            policy,
            reference,
            tok,
            train,
            eval,
            ref_train: RefCache::default(),
            ref_eval: RefCache::default(),
            opt,
            step,
            kl_samples,
            kl_chunks: Vec::new(),
        };
        if t.cfg.loss != LossKind::Spo {
            t.ref_train = t.reference_cache(&t.train)?;
            t.ref_eval = t.reference_cache(&t.eval)?;
            progress.note(&format!(
                "cached reference log-probs of {} pairs (computed once; the reference is frozen)",
                t.train.len() + t.eval.len()
            ));
            if !t.cfg.uses_kl() {
                t.reference = None;
            }
        }
        Ok(t)
    }

    /// Training and held-out pair counts.
    pub fn sizes(&self) -> (usize, usize) {
        (self.train.len(), self.eval.len())
    }

    fn pad(&self) -> u32 {
        self.tok.eos.unwrap_or(0)
    }

    fn reference_cache(&self, pairs: &[TokenPair]) -> Result<RefCache> {
        let reference = self.reference.as_ref().expect("DPO/IPO keep the reference until cached");
        let mut cache = RefCache::default();
        for chunk in pairs.chunks(self.cfg.micro_batch_size) {
            let refs: Vec<&TokenPair> = chunk.iter().collect();
            let (c, r, _) = pair_logps(reference, &refs, self.pad(), false)?;
            cache.chosen.extend(to_f64(&c)?);
            cache.rejected.extend(to_f64(&r)?);
        }
        Ok(cache)
    }

    /// Indices of the pairs of optimiser step `step`: consecutive windows over a
    /// sequence of per-epoch permutations, a pure function of (seed, step) so a
    /// resumed run sees the same data.
    fn batch_indices(&self, step: usize) -> Vec<usize> {
        let n = self.train.len();
        let b = self.cfg.batch_size;
        let mut perm_epoch = usize::MAX;
        let mut perm: Vec<usize> = Vec::new();
        (step * b..(step + 1) * b)
            .map(|pos| {
                let epoch = pos / n;
                if epoch != perm_epoch {
                    perm = (0..n).collect();
                    perm.shuffle(&mut ChaCha8Rng::seed_from_u64(self.cfg.seed.wrapping_add(1 + epoch as u64)));
                    perm_epoch = epoch;
                }
                perm[pos % n]
            })
            .collect()
    }

    fn loss(
        &self,
        idx: &[usize],
        chosen: &Tensor,
        rejected: &Tensor,
        lengths: &[usize],
        cache: &RefCache,
        normaliser: Option<f64>,
    ) -> Result<LossOutput> {
        let c = &self.cfg;
        if c.loss == LossKind::Spo {
            return Ok(spo_preference_loss_in_batch(chosen, rejected, c.alpha, c.weighting(), normaliser)?);
        }
        let dev = chosen.device();
        let dt = chosen.dtype();
        let pick = |v: &[f64]| Tensor::new(idx.iter().map(|&i| v[i]).collect::<Vec<_>>(), dev)?.to_dtype(dt);
        let (rc, rr) = (pick(&cache.chosen)?, pick(&cache.rejected)?);
        let logps = PairLogps { policy_chosen: chosen, policy_rejected: rejected, ref_chosen: &rc, ref_rejected: &rr };
        Ok(match c.loss {
            LossKind::Dpo => dpo_loss(logps, c.beta)?,
            _ => {
                let b = idx.len();
                let lens = |off: usize| {
                    Tensor::new(lengths[off..off + b].iter().map(|&l| l as f64).collect::<Vec<_>>(), dev)?.to_dtype(dt)
                };
                ipo_loss(logps, &lens(0)?, &lens(b)?, c.beta)?
            }
        })
    }

    /// SoftImportance's μ normaliser over the whole batch `idx` when it is split into
    /// micro-batches (a no-grad pass first); `None` when one pass sees the batch.
    fn batch_normaliser(&self, idx: &[usize]) -> Result<Option<f64>> {
        let Weighting::SoftImportance { gamma } = self.cfg.weighting() else { return Ok(None) };
        if self.cfg.loss != LossKind::Spo || idx.len() <= self.cfg.micro_batch_size {
            return Ok(None);
        }
        let parts = idx
            .chunks(self.cfg.micro_batch_size)
            .map(|chunk| {
                let pairs: Vec<&TokenPair> = chunk.iter().map(|&i| &self.train[i]).collect();
                let (c, r, _) = pair_logps(&self.policy, &pairs, self.pad(), false)?;
                Ok((c, r))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(soft_importance_normaliser(&parts, gamma)?))
    }

    /// Stops a run whose weights are no longer finite (a collapsed model).
    fn check_weights_finite(&self) -> Result<()> {
        for (name, var) in self.policy.trainable_vars() {
            let sum = scalar(&var.as_tensor().sum_all()?)?;
            if !sum.is_finite() {
                bail!("weight {name} is no longer finite after step {}: the model has collapsed", self.step + 1);
            }
        }
        Ok(())
    }

    /// Draws fresh KL samples from the current policy (the paper's refresh).
    fn refresh_kl_samples(&mut self) -> Result<()> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.cfg.seed ^ (0x4B4C_0000 + self.step as u64));
        let prompts: Vec<Vec<u32>> = (0..self.cfg.kl_samples)
            .map(|_| {
                let p = &self.train[rng.gen_range(0..self.train.len())].prompt;
                if p.is_empty() {
                    self.tok.bos.into_iter().collect()
                } else {
                    p.clone()
                }
            })
            .collect();
        ensure!(prompts.iter().all(|p| !p.is_empty()), "SPO's KL samples need prompts or a BOS token to start from");
        let cfg = SamplingConfig {
            max_new_tokens: self.cfg.kl_max_tokens,
            temperature: 1.0,
            seed: rng.gen(),
            ..Default::default()
        };
        let samples = generate(&self.policy, &self.tok, &prompts, &cfg)?;
        self.kl_samples =
            samples.into_iter().map(|s| KlSample { prompt: prompts[s.index].clone(), response: s.tokens }).collect();
        Ok(())
    }

    /// Builds `kl_chunks` from the current KL samples (after a refresh, or
    /// on the first step of a resumed run): the reference runs over them once.
    fn prepare_kl_chunks(&mut self) -> Result<()> {
        let reference = self.reference.as_ref().expect("SPO with β > 0 keeps its reference");
        let mut chunks = Vec::new();
        for chunk in self.kl_samples.chunks(self.cfg.kl_micro_batch) {
            let rows: Vec<(&[u32], &[u32])> =
                chunk.iter().map(|s| (s.prompt.as_slice(), s.response.as_slice())).collect();
            let batch = SequenceBatch::new(&rows, self.pad(), self.policy.accumulation_dtype(), self.policy.device())?;
            if batch.lengths.iter().sum::<usize>() > 0 {
                let hidden = reference.frozen_hidden_rows(&batch.ids, &batch.select)?;
                chunks.push((batch, hidden));
            }
        }
        self.kl_chunks = chunks;
        Ok(())
    }

    /// β·KL over the cached samples, back-propagated chunk by chunk into `acc`.
    /// Returns `(KL, mean per-token entropy of the policy on the samples)`.
    fn kl_term(&self, acc: &mut HashMap<String, Tensor>) -> Result<(f64, f64)> {
        let reference = self.reference.as_ref().expect("SPO with β > 0 keeps its reference");
        let m = self.kl_samples.len();
        let (mut kl, mut ent, mut tokens) = (0.0, 0.0, 0usize);
        for (batch, hidden) in &self.kl_chunks {
            let (kl_rows, entropy) = self.policy.kl_rows(&batch.ids, &batch.select, reference, hidden, true)?;
            let term = (kl_rows.sum_all()? / m as f64)?;
            kl += scalar(&term)?;
            ent += scalar(&entropy.sum_all()?)?;
            tokens += batch.lengths.iter().sum::<usize>();
            accumulate(&self.policy, &(term * self.cfg.beta)?, acc)?;
        }
        Ok((kl, ent / tokens.max(1) as f64))
    }

    /// The model being trained.
    pub fn policy(&self) -> &Llama {
        &self.policy
    }

    /// The frozen reference, when the objective needs one during training.
    pub fn reference(&self) -> Option<&Llama> {
        self.reference.as_ref()
    }

    /// One optimiser step; returns its metrics.
    pub fn train_step(&mut self) -> Result<Map<String, Value>> {
        let start = std::time::Instant::now();
        let c = self.cfg.clone();
        if let Some(lora) = self.policy.lora() {
            lora.reseed(self.step); // dropout masks from the step: a resumed run draws the same
        }
        let idx = self.batch_indices(self.step);
        let b_total = idx.len() as f64;
        let mut acc: HashMap<String, Tensor> = HashMap::new();
        let (mut pref, mut lw, mut ll, mut acc_pref, mut mu, mut delta, mut tokens) =
            (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0usize);
        let (mut rw, mut rl) = (0.0, 0.0);
        let normaliser = self.batch_normaliser(&idx)?;
        for chunk in idx.chunks(c.micro_batch_size) {
            let pairs: Vec<&TokenPair> = chunk.iter().map(|&i| &self.train[i]).collect();
            let (chosen, rejected, lengths) = pair_logps(&self.policy, &pairs, self.pad(), true)?;
            tokens += pairs.iter().map(|p| p.prompt.len() * 2 + p.chosen.len() + p.rejected.len()).sum::<usize>();
            let out = self.loss(chunk, &chosen, &rejected, &lengths, &self.ref_train, normaliser)?;
            let w = chunk.len() as f64 / b_total;
            let value = scalar(&out.loss)?;
            if !value.is_finite() {
                bail!("the {:?} preference loss is {value} at step {}", c.loss, self.step + 1);
            }
            accumulate(&self.policy, &(out.loss * w)?, &mut acc)?;
            pref += w * value;
            lw += w * to_f64(&chosen)?.iter().sum::<f64>() / chunk.len() as f64;
            ll += w * to_f64(&rejected)?.iter().sum::<f64>() / chunk.len() as f64;
            acc_pref += w * out.stats.accuracy;
            mu += w * out.stats.mean_mu;
            delta += w * out.stats.mean_delta;
            rw += w * out.stats.reward_chosen.unwrap_or(0.0);
            rl += w * out.stats.reward_rejected.unwrap_or(0.0);
        }
        let (mut kl, mut entropy, mut sample_secs) = (None, None, None);
        if c.uses_kl() {
            if self.step.is_multiple_of(c.kl_refresh) || self.kl_samples.is_empty() {
                let t0 = std::time::Instant::now();
                self.refresh_kl_samples()?;
                self.prepare_kl_chunks()?;
                sample_secs = Some(t0.elapsed().as_secs_f64());
            } else if self.kl_chunks.is_empty() {
                self.prepare_kl_chunks()?; // resumed between refreshes
            }
            let (k, e) = self.kl_term(&mut acc)?;
            if !k.is_finite() {
                bail!("the KL term is {k} at step {}", self.step + 1);
            }
            kl = Some(k);
            entropy = Some(e);
        }
        let norm = optim::clip(&mut acc, c.max_grad_norm)?;
        if !norm.is_finite() {
            bail!("the gradient norm is {norm} at step {} (preference loss {pref}, KL {kl:?})", self.step + 1);
        }
        if norm == 0.0 {
            // nothing left to learn from: saturated or uniform outputs
            bail!(
                "the gradient norm is exactly 0 at step {}: the model has collapsed (a learning rate too large?)",
                self.step + 1
            );
        }
        let lr = c.lr_at(self.step);
        self.opt.step(&acc, lr)?;
        self.check_weights_finite()?;
        self.step += 1;
        let secs = start.elapsed().as_secs_f64();
        let is_spo = c.loss == LossKind::Spo;
        let mut m = Map::new();
        m.insert("step".into(), json!(self.step));
        m.insert("epoch".into(), json!((self.step * c.batch_size) as f64 / self.train.len() as f64));
        m.insert("loss".into(), json!(pref + c.beta * kl.unwrap_or(0.0) * f64::from(u8::from(is_spo))));
        m.insert("pref_loss".into(), json!(pref));
        if let Some(k) = kl {
            m.insert("kl".into(), json!(k));
        }
        if let Some(e) = entropy {
            m.insert("entropy".into(), json!(e));
        }
        m.insert("logps/chosen".into(), json!(lw));
        m.insert("logps/rejected".into(), json!(ll));
        m.insert("rewards/accuracies".into(), json!(acc_pref));
        m.insert("rewards/margins".into(), json!(if is_spo { delta } else { rw - rl }));
        if !is_spo {
            m.insert("rewards/chosen".into(), json!(rw));
            m.insert("rewards/rejected".into(), json!(rl));
        }
        m.insert("mu/mean".into(), json!(mu));
        m.insert("grad_norm".into(), json!(norm));
        m.insert("learning_rate".into(), json!(lr));
        m.insert("tokens_per_second".into(), json!(tokens as f64 / secs));
        m.insert("step_seconds".into(), json!(secs));
        if let Some(t) = sample_secs {
            // the refresh (sampling, then the reference over the samples), included in step_seconds
            m.insert("kl_sample_seconds".into(), json!(t));
        }
        Ok(m)
    }

    /// Preference accuracy and mean Δ on the held-out pairs (and DPO-style reward
    /// accuracy for DPO/IPO).
    pub fn evaluate(&self) -> Result<Map<String, Value>> {
        let mut m = Map::new();
        if self.eval.is_empty() {
            return Ok(m);
        }
        let (mut correct, mut delta, mut reward_ok) = (0usize, 0.0, 0usize);
        for (k, chunk) in self.eval.chunks(self.cfg.micro_batch_size).enumerate() {
            let refs: Vec<&TokenPair> = chunk.iter().collect();
            let (c, r, _) = pair_logps(&self.policy, &refs, self.pad(), false)?;
            for (i, (a, b)) in to_f64(&c)?.iter().zip(to_f64(&r)?).enumerate() {
                correct += usize::from(a > &b);
                delta += a - b;
                if self.cfg.loss != LossKind::Spo {
                    let j = k * self.cfg.micro_batch_size + i;
                    reward_ok += usize::from(a - self.ref_eval.chosen[j] > b - self.ref_eval.rejected[j]);
                }
            }
        }
        let n = self.eval.len() as f64;
        m.insert("eval/accuracy".into(), json!(correct as f64 / n));
        m.insert("eval/mean_delta".into(), json!(delta / n));
        if self.cfg.loss != LossKind::Spo {
            m.insert("eval/rewards/accuracies".into(), json!(reward_ok as f64 / n));
        }
        Ok(m)
    }

    fn save(&self) -> Result<std::path::PathBuf> {
        let state = TrainerState { step: self.step, kl_samples: self.kl_samples.clone(), config: self.cfg.clone() };
        checkpoint::save(&self.cfg.out, &self.policy, &self.tok, &self.opt, &state)
    }

    /// Trains to `cfg.steps` (or until `stop` is raised, or `stop_after` steps),
    /// appending one JSON line per step to `DIR/metrics.jsonl`, checkpointing every
    /// `save_every` steps and at the end, and writing `DIR/final` when done.
    pub fn run(
        &mut self,
        stop: &Arc<AtomicBool>,
        stop_after: Option<usize>,
        progress: &mut dyn Progress,
    ) -> Result<()> {
        let out = self.cfg.out.clone();
        std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
        for stale in crate::fsx::clean_stale(&out)? {
            progress.note(&format!("removed {} (left by an interrupted checkpoint)", stale.display()));
        }
        let metrics_path = out.join("metrics.jsonl");
        truncate_metrics(&metrics_path, self.step)?;
        let mut metrics = std::fs::OpenOptions::new().create(true).append(true).open(&metrics_path)?;
        let mut last_saved = None;
        while self.step < self.cfg.steps {
            let mut m = match self.train_step() {
                Ok(m) => m,
                Err(e) => {
                    let kept = last_saved
                        .map_or("no checkpoint was written yet".to_string(), |p: std::path::PathBuf| {
                            format!("the last good checkpoint is {}", p.display())
                        });
                    return Err(e.context(format!("training stopped; {kept}")));
                }
            };
            let done = self.step == self.cfg.steps;
            if done || (self.cfg.eval_every > 0 && self.step.is_multiple_of(self.cfg.eval_every)) {
                m.extend(self.evaluate()?);
            }
            writeln!(metrics, "{}", Value::Object(m.clone()))?;
            metrics.flush()?;
            progress.step(self.step, self.cfg.steps, &m);
            let interrupted = stop.load(Ordering::SeqCst) || stop_after == Some(self.step);
            if done || interrupted || (self.cfg.save_every > 0 && self.step.is_multiple_of(self.cfg.save_every)) {
                let dir = self.save()?;
                progress.note(&format!("checkpoint {}", dir.display()));
                last_saved = Some(dir);
            }
            if interrupted && !done {
                progress.note(&format!(
                    "stopped after step {}; continue with --resume {}",
                    self.step,
                    last_saved.as_ref().expect("just saved").display()
                ));
                return Ok(());
            }
        }
        let final_dir = out.join("final");
        let hf =
            |tmp: &Path| crate::model::load::hf::write_model_or_adapter(&self.policy, &self.tok, &self.cfg.model, tmp);
        crate::model::load::hf::write_dir(&final_dir, hf)?;
        progress.note(&format!("final model {}", final_dir.display()));
        Ok(())
    }
}

/// Keeps only the metric lines of steps ≤ `step` (a resumed run rewrites the rest).
fn truncate_metrics(path: &Path, step: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<Value>(l).ok().and_then(|v| v["step"].as_u64()).is_some_and(|s| s as usize <= step)
        })
        .collect();
    let body = if kept.is_empty() { String::new() } else { kept.join("\n") + "\n" };
    crate::fsx::write_atomic(path, body.as_bytes()).with_context(|| format!("rewriting {}", path.display()))
}
