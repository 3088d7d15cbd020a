//! Text pairs → token ids → padded sequence batches for the model.

use crate::data::PreferencePair;
use crate::tokenizer::{encode_pair, Tokenizer};
use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

/// Length limits. When prompt + response exceeds `max_length`, the prompt keeps its
/// last `max_prompt_length` tokens, then the response is cut to what is left
/// (its end is dropped, so its EOS may be).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Truncation {
    /// Prompt + response tokens.
    pub max_length: usize,
    /// Prompt tokens kept when truncating.
    pub max_prompt_length: usize,
}

/// A tokenised pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenPair {
    /// Prompt ids (with BOS when the tokenizer adds it).
    pub prompt: Vec<u32>,
    /// Chosen response ids (with EOS).
    pub chosen: Vec<u32>,
    /// Rejected response ids (with EOS).
    pub rejected: Vec<u32>,
}

/// Applies [`Truncation`] to one pair, in place.
fn truncate(prompt: &mut Vec<u32>, chosen: &mut Vec<u32>, rejected: &mut Vec<u32>, t: Truncation) {
    if prompt.len() + chosen.len().max(rejected.len()) > t.max_length {
        prompt.drain(..prompt.len().saturating_sub(t.max_prompt_length));
    }
    let room = t.max_length.saturating_sub(prompt.len());
    chosen.truncate(room);
    rejected.truncate(room);
}

/// Tokenises pairs (prompt and responses separately, see [`encode_pair`]) and
/// truncates them. Pairs whose response is cut to nothing are dropped; their
/// number is returned. A pair still longer than `context` tokens (the model's)
/// is an error naming it by `name(i)`, the i-th pair's place in its file.
pub fn tokenize(
    tok: &Tokenizer,
    pairs: &[PreferencePair],
    t: Truncation,
    context: usize,
    name: impl Fn(usize) -> String,
) -> Result<(Vec<TokenPair>, usize)> {
    let mut out = Vec::with_capacity(pairs.len());
    let mut dropped = 0;
    for (i, p) in pairs.iter().enumerate() {
        let (mut prompt, mut c) = encode_pair(tok, &p.prompt, &p.chosen, true)?;
        let (_, mut r) = encode_pair(tok, &p.prompt, &p.rejected, true)?;
        truncate(&mut prompt, &mut c, &mut r, t);
        let longest = prompt.len() + c.len().max(r.len());
        if longest > context {
            anyhow::bail!(
                "{}: {longest} tokens after truncation to --max-length {}, beyond the model's context of {context}; \
                 lower --max-length to at most {context}",
                name(i),
                t.max_length
            );
        }
        // with no prompt token the first response token is context only
        let min = if prompt.is_empty() { 2 } else { 1 };
        if c.len() < min || r.len() < min {
            dropped += 1;
            continue;
        }
        out.push(TokenPair { prompt, chosen: c, rejected: r });
    }
    Ok((out, dropped))
}

/// Right-padded rows `prompt ++ response` and the positions whose next token is a
/// response token: what the model needs to score responses.
#[derive(Debug, Clone)]
pub struct SequenceBatch {
    /// `[R, T]` token ids.
    pub ids: Tensor,
    /// `[N]` flat positions `r·T + t` predicting a response token.
    pub select: Tensor,
    /// `[N]` the response tokens predicted there.
    pub targets: Tensor,
    /// `[R, N]` 0/1: which row each scored token belongs to (sums tokens per row).
    pub owner: Tensor,
    /// Response tokens per row.
    pub lengths: Vec<usize>,
}

impl SequenceBatch {
    /// Builds the batch from `(prompt, response)` rows. A prompt may be empty, in
    /// which case the first response token is context only (nothing predicts it).
    pub fn new(rows: &[(&[u32], &[u32])], pad: u32, dtype: DType, device: &Device) -> Result<Self> {
        let t = rows.iter().map(|(p, r)| p.len() + r.len()).max().unwrap_or(1);
        let mut ids = Vec::with_capacity(rows.len() * t);
        let (mut select, mut targets, mut owner_of) = (Vec::new(), Vec::new(), Vec::new());
        let mut lengths = Vec::with_capacity(rows.len());
        for (i, (p, r)) in rows.iter().enumerate() {
            let start = p.len().max(1);
            let seq: Vec<u32> = p.iter().chain(r.iter()).copied().collect();
            for pos in start..seq.len() {
                select.push((i * t + pos - 1) as u32);
                targets.push(seq[pos]);
                owner_of.push(i);
            }
            lengths.push(seq.len() - start);
            ids.extend(seq.iter().copied().chain(std::iter::repeat_n(pad, t - seq.len())));
        }
        let n = select.len();
        let mut owner = vec![0f32; rows.len() * n];
        for (k, &i) in owner_of.iter().enumerate() {
            owner[i * n + k] = 1.0;
        }
        Ok(Self {
            ids: Tensor::from_vec(ids, (rows.len(), t), device)?,
            select: Tensor::from_vec(select, n, device)?,
            targets: Tensor::from_vec(targets, n, device)?,
            owner: Tensor::from_vec(owner, (rows.len(), n), device)?.to_dtype(dtype)?,
            lengths,
        })
    }

    /// Per-row sums `[R]` of per-token values `[N]`.
    pub fn per_row(&self, token_values: &Tensor) -> candle_core::Result<Tensor> {
        self.owner.matmul(&token_values.unsqueeze(1)?)?.squeeze(1)
    }
}

/// Sequence log-probs `[R]` of each row's response under `model` (`track`: keep the
/// graph for a backward pass), and the response lengths.
pub fn response_logps(
    model: &crate::model::Llama,
    rows: &[(&[u32], &[u32])],
    pad: u32,
    track: bool,
) -> Result<(Tensor, Vec<usize>)> {
    let batch = SequenceBatch::new(rows, pad, model.accumulation_dtype(), model.device())?;
    let lp = model.token_logprobs(&batch.ids, &batch.select, &batch.targets, track)?;
    Ok((batch.per_row(&lp)?, batch.lengths))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_prompt_end_and_response_start() {
        let t = Truncation { max_length: 6, max_prompt_length: 3 };
        let (mut p, mut c, mut r) = (vec![1, 2, 3, 4, 5], vec![6, 7, 8, 9], vec![6]);
        truncate(&mut p, &mut c, &mut r, t);
        assert_eq!((p, c, r), (vec![3, 4, 5], vec![6, 7, 8], vec![6]));
        let (mut p, mut c, mut r) = (vec![1], vec![6, 7], vec![8]);
        truncate(&mut p, &mut c, &mut r, t);
        assert_eq!((p, c, r), (vec![1], vec![6, 7], vec![8]));
    }

    #[test]
    fn batch_positions_targets_and_owners() {
        let b =
            SequenceBatch::new(&[(&[1, 2][..], &[3, 4][..]), (&[][..], &[5, 6, 7][..])], 0, DType::F32, &Device::Cpu)
                .unwrap();
        assert_eq!(b.ids.to_vec2::<u32>().unwrap(), vec![vec![1, 2, 3, 4], vec![5, 6, 7, 0]]);
        assert_eq!(b.select.to_vec1::<u32>().unwrap(), vec![1, 2, 4, 5]);
        assert_eq!(b.targets.to_vec1::<u32>().unwrap(), vec![3, 4, 6, 7]);
        assert_eq!(b.lengths, vec![2, 2]);
        let sums = b.per_row(&Tensor::new(&[1f32, 2., 3., 4.], &Device::Cpu).unwrap()).unwrap();
        assert_eq!(sums.to_vec1::<f32>().unwrap(), vec![3.0, 7.0]);
    }
}
