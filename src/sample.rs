//! Batched sampling with a KV cache: temperature, top-k, top-p, stop at EOS or stop
//! strings, seeded per row so a run is reproducible.

use crate::model::{KvCache, Llama};
use crate::tokenizer::Tokenizer;
use anyhow::{ensure, Result};
use candle_core::Tensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// How to sample.
#[derive(Debug, Clone)]
pub struct SamplingConfig {
    /// Upper bound on generated tokens per row.
    pub max_new_tokens: usize,
    /// Softmax temperature; 0 is greedy.
    pub temperature: f64,
    /// Keep only the k most likely tokens.
    pub top_k: Option<usize>,
    /// Keep the smallest set of tokens whose probability reaches p.
    pub top_p: Option<f64>,
    /// Seed; row i uses its own stream derived from (seed, i).
    pub seed: u64,
    /// Generation stops after any of these strings (which are cut from the text).
    pub stop: Vec<String>,
    /// Keep going past EOS until `max_new_tokens` (benchmarks).
    pub ignore_eos: bool,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 128,
            temperature: 1.0,
            top_k: None,
            top_p: None,
            seed: 0,
            stop: Vec::new(),
            ignore_eos: false,
        }
    }
}

/// Rows sampled together at most: a longer list of prompts is sampled in batches of
/// this many (same results: each row's random stream depends on its index only), so
/// the KV cache stays bounded whatever the number of samples asked for.
pub const MAX_BATCH: usize = 64;

impl SamplingConfig {
    /// Checks the settings every sampling command shares (generate, pairs, eval,
    /// serve, the trainer's KL samples); the message starts with the setting's flag
    /// name (without dashes).
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.max_new_tokens == 0 {
            return Err("max-tokens must be at least 1".into());
        }
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(format!("temperature must be a finite number ≥ 0 (0 is greedy), got {}", self.temperature));
        }
        if let Some(p) = self.top_p.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
            return Err(format!("top-p must be in (0, 1], got {p}"));
        }
        if self.top_k == Some(0) {
            return Err("top-k must be at least 1 (leave it out to keep every token)".into());
        }
        if self.stop.iter().any(String::is_empty) {
            return Err("stop strings must not be empty".into());
        }
        Ok(())
    }

    /// The seed of a batch starting at item `start` of a longer job: each item's
    /// samples then depend only on (seed, batch size, its index), so a resumed job
    /// redraws a torn batch identically and every model of a comparison sees the
    /// same random streams.
    pub fn batch_seed(seed: u64, start: usize) -> u64 {
        seed.wrapping_mul(1_000_003).wrapping_add(start as u64)
    }
}

/// Why a row stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Finish {
    /// The model emitted EOS.
    Eos,
    /// A stop string appeared.
    Stop,
    /// `max_new_tokens` reached.
    Length,
}

/// One generated continuation.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Index of the prompt row it continues.
    pub index: usize,
    /// Generated text (EOS and stop strings excluded).
    pub text: String,
    /// Generated token ids (EOS included when emitted).
    pub tokens: Vec<u32>,
    /// Log-probability of each token under the model itself (temperature 1, no
    /// truncation): what KL estimates and likelihoods need.
    pub logprobs: Vec<f32>,
    /// Entropy (nats) of the model's full next-token distribution (temperature 1)
    /// at each generated position: the sample set's diversity, token by token.
    pub entropies: Vec<f32>,
    /// Why it stopped.
    pub finish_reason: Finish,
}

/// A picked token and what the model's own distribution says about it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Picked {
    /// The token.
    pub token: u32,
    /// Its log-probability under the model (temperature 1, no truncation).
    pub logprob: f32,
    /// Entropy of the model's next-token distribution (temperature 1), nats.
    pub entropy: f32,
}

/// Picks the next token from f32 logits.
pub fn pick(logits: &[f32], cfg: &SamplingConfig, rng: &mut impl Rng) -> Picked {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let (z, weighted) = logits.iter().fold((0f32, 0f32), |(z, w), &l| {
        let e = (l - max).exp();
        (z + e, w + e * (l - max))
    });
    let lse = max + z.ln();
    // H = log Z − E[l − max], with both terms taken relative to the max for stability
    let entropy = (z.ln() - weighted / z).max(0.0);
    let token = if cfg.temperature <= 0.0 {
        logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i)
    } else {
        let t = cfg.temperature as f32;
        let mut cand: Vec<(usize, f32)> = logits.iter().enumerate().map(|(i, &l)| (i, (l - max) / t)).collect();
        // Only truncation needs the candidates in order; top-k first narrows the sort.
        if let Some(k) = cfg.top_k.filter(|&k| k < cand.len()) {
            cand.select_nth_unstable_by(k.max(1) - 1, |a, b| b.1.total_cmp(&a.1));
            cand.truncate(k.max(1));
        }
        if cfg.top_p.is_some() {
            cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        }
        let mut probs: Vec<f64> = cand.iter().map(|c| f64::from(c.1).exp()).collect();
        let z: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= z);
        if let Some(p) = cfg.top_p {
            let mut acc = 0.0;
            let keep = probs.iter().position(|q| {
                acc += q;
                acc >= p
            });
            let n = keep.map_or(probs.len(), |i| i + 1);
            cand.truncate(n);
            probs.truncate(n);
        }
        let z: f64 = probs.iter().sum();
        let mut u = rng.gen::<f64>() * z;
        let mut chosen = cand[cand.len() - 1].0;
        for (c, p) in cand.iter().zip(&probs) {
            if u < *p {
                chosen = c.0;
                break;
            }
            u -= p;
        }
        chosen
    };
    Picked { token: token as u32, logprob: logits[token] - lse, entropy }
}

/// One sequence being decoded: what it has generated and its own random stream.
pub(crate) struct Row {
    pub(crate) index: usize,
    pub(crate) tokens: Vec<u32>,
    logprobs: Vec<f32>,
    entropies: Vec<f32>,
    rng: ChaCha8Rng,
}

impl Row {
    /// Row `index` of a job seeded with `seed` (its stream depends on both only).
    pub(crate) fn new(index: usize, seed: u64) -> Self {
        Row {
            index,
            tokens: Vec::new(),
            logprobs: Vec::new(),
            entropies: Vec::new(),
            rng: ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(index as u64)),
        }
    }

    /// Picks the next token from `logits` and records it.
    pub(crate) fn advance(&mut self, logits: &[f32], cfg: &SamplingConfig) -> u32 {
        let p = pick(logits, cfg, &mut self.rng);
        self.tokens.push(p.token);
        self.logprobs.push(p.logprob);
        self.entropies.push(p.entropy);
        p.token
    }
}

/// Continues every prompt (token ids), [`MAX_BATCH`] rows at a time. Returns one
/// sample per prompt, in order.
pub fn generate(model: &Llama, tok: &Tokenizer, prompts: &[Vec<u32>], cfg: &SamplingConfig) -> Result<Vec<Sample>> {
    cfg.validate().map_err(|e| anyhow::anyhow!("sampling: {e}"))?;
    let mut out = Vec::with_capacity(prompts.len());
    for (k, chunk) in prompts.chunks(MAX_BATCH).enumerate() {
        let offset = k * MAX_BATCH;
        out.extend(generate_batch(model, tok, chunk, cfg, offset)?);
    }
    Ok(out)
}

/// Continues prompts in one batch; row `i` draws from the stream of index
/// `offset + i`. Prompts are left-padded; a row leaves the batch (and the cache) as
/// soon as it finishes.
fn generate_batch(
    model: &Llama,
    tok: &Tokenizer,
    prompts: &[Vec<u32>],
    cfg: &SamplingConfig,
    offset: usize,
) -> Result<Vec<Sample>> {
    ensure!(prompts.iter().all(|p| !p.is_empty()), "every prompt needs at least one token (BOS or text)");
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let context = model.config().max_position_embeddings;
    ensure!(longest < context, "a prompt of {longest} tokens leaves no room in the model's context of {context}");
    let max_new = cfg.max_new_tokens.min(context - longest);
    let pad_id = tok.eos.unwrap_or(0);
    let mut pad: Vec<usize> = prompts.iter().map(|p| longest - p.len()).collect();
    let ids: Vec<u32> =
        prompts.iter().zip(&pad).flat_map(|(p, &n)| std::iter::repeat_n(pad_id, n).chain(p.iter().copied())).collect();
    let mut rows: Vec<Row> = (0..prompts.len()).map(|i| Row::new(offset + i, cfg.seed)).collect();
    let mut done: Vec<Sample> = Vec::new();
    let mut cache = KvCache::default();
    let mut input = Tensor::from_vec(ids, (prompts.len(), longest), model.device())?;
    for step in 0..max_new {
        let logits = model.forward_cached(&input, &pad, &mut cache)?.to_vec2::<f32>()?;
        let mut keep = Vec::new();
        let mut next = Vec::new();
        for (r, (row, l)) in rows.iter_mut().zip(&logits).enumerate() {
            let t = row.advance(l, cfg);
            match finished(tok, row, cfg, step + 1 == max_new)? {
                Some(sample) => done.push(sample),
                None => {
                    keep.push(r as u32);
                    next.push(t);
                }
            }
        }
        if keep.len() < rows.len() {
            retain_rows(&mut rows, &keep);
            pad = keep.iter().map(|&r| pad[r as usize]).collect();
            if rows.is_empty() {
                break;
            }
            cache.select_rows(&Tensor::new(keep.as_slice(), model.device())?)?;
        }
        input = Tensor::from_vec(next, (rows.len(), 1), model.device())?;
    }
    done.sort_by_key(|s| s.index);
    Ok(done)
}

/// Keeps the items at the ascending positions `keep` (the rows of a batch that go
/// on), in one pass.
pub(crate) fn retain_rows<T>(rows: &mut Vec<T>, keep: &[u32]) {
    let mut r = 0u32;
    rows.retain(|_| {
        r += 1;
        keep.binary_search(&(r - 1)).is_ok()
    });
}

/// The finished sample if `row` just ended (EOS, stop string, or last step).
pub(crate) fn finished(tok: &Tokenizer, row: &Row, cfg: &SamplingConfig, last: bool) -> Result<Option<Sample>> {
    let eos = !cfg.ignore_eos && tok.eos.is_some() && row.tokens.last().copied() == tok.eos;
    let body = if eos { &row.tokens[..row.tokens.len() - 1] } else { &row.tokens[..] };
    let mut text = if eos || last || !cfg.stop.is_empty() { tok.decode(body)? } else { String::new() };
    let stop_at = cfg.stop.iter().filter_map(|s| text.find(s.as_str())).min();
    let reason = match (eos, stop_at) {
        (_, Some(at)) => {
            text.truncate(at);
            Finish::Stop
        }
        (true, None) => Finish::Eos,
        (false, None) if last => Finish::Length,
        _ => return Ok(None),
    };
    Ok(Some(Sample {
        index: row.index,
        text,
        tokens: row.tokens.clone(),
        logprobs: row.logprobs.clone(),
        entropies: row.entropies.clone(),
        finish_reason: reason,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_top_k_and_top_p_pick_from_the_right_set() {
        let logits = [1.0f32, 3.0, 2.0, -1.0];
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let greedy = SamplingConfig { temperature: 0.0, ..Default::default() };
        let p = pick(&logits, &greedy, &mut rng);
        assert_eq!(p.token, 1);
        let lse = logits.iter().map(|l| l.exp()).sum::<f32>().ln();
        assert!((p.logprob - (3.0 - lse)).abs() < 1e-6);
        let entropy: f32 = logits.iter().map(|l| -(l - lse).exp() * (l - lse)).sum();
        assert!((p.entropy - entropy).abs() < 1e-6, "{} vs {entropy}", p.entropy);
        let top2 = SamplingConfig { top_k: Some(2), ..Default::default() };
        let nucleus = SamplingConfig { top_p: Some(0.6), ..Default::default() };
        for _ in 0..200 {
            assert!([1, 2].contains(&pick(&logits, &top2, &mut rng).token));
            // p(1) = 0.665 ≥ 0.6 alone
            assert_eq!(pick(&logits, &nucleus, &mut rng).token, 1);
        }
    }

    #[test]
    fn temperature_one_matches_the_softmax_frequencies() {
        let logits = [0.0f32, 1.0];
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let cfg = SamplingConfig::default();
        let n = 40_000;
        let ones = (0..n).filter(|_| pick(&logits, &cfg, &mut rng).token == 1).count() as f64 / n as f64;
        let expect = 1.0f64.exp() / (1.0 + 1.0f64.exp());
        assert!((ones - expect).abs() < 0.01, "{ones} vs {expect}");
    }
}
