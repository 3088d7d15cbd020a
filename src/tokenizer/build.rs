//! Builds `tokenizers` models from the vocabularies embedded in checkpoints.

use super::Tokenizer;
use anyhow::{anyhow, Result};
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::{AddedToken, NormalizerWrapper, PreTokenizerWrapper};

/// GGUF / llama.cpp token types that are special (control, user-defined).
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;

/// A vocabulary as checkpoints store it: token strings by id, optional types
/// (GGUF `token_type`) and scores.
#[derive(Debug, Clone, Default)]
pub struct Vocabulary {
    /// Token strings, indexed by id.
    pub tokens: Vec<String>,
    /// llama.cpp token types (1 normal, 2 unknown, 3 control, 4 user-defined, 6 byte); may be empty.
    pub types: Vec<i32>,
    /// SentencePiece scores; may be empty.
    pub scores: Vec<f32>,
}

impl Vocabulary {
    fn vocab_map(&self) -> ahash::AHashMap<String, u32> {
        self.tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect()
    }

    /// Control and user-defined tokens, plus `extra` ids (BOS/EOS), as special added tokens.
    fn specials(&self, extra: &[Option<u32>]) -> Vec<AddedToken> {
        let mut ids: Vec<usize> =
            self.types.iter().enumerate().filter(|(_, &t)| t == CONTROL || t == USER_DEFINED).map(|(i, _)| i).collect();
        ids.extend(extra.iter().flatten().map(|&i| i as usize));
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter().filter_map(|i| self.tokens.get(i)).map(|t| AddedToken::from(t.clone(), true)).collect()
    }
}

/// GPT-2 style byte-level BPE (GGUF `tokenizer.ggml.model = gpt2`), with `merges`
/// as "left right" strings. `pre` is GGUF's `tokenizer.ggml.pre`: SmolLM's splits
/// digits individually before the byte-level regex, as its Hugging Face tokenizer does.
pub fn byte_level_bpe(
    vocab: &Vocabulary,
    merges: &[String],
    pre: &str,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
) -> Result<Tokenizer> {
    let merges: Vec<(String, String)> = merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| anyhow!("malformed merge {m:?}"))
        })
        .collect::<Result<_>>()?;
    let bpe =
        BPE::builder().vocab_and_merges(vocab.vocab_map(), merges).build().map_err(|e| anyhow!("building BPE: {e}"))?;
    let mut inner = tokenizers::Tokenizer::new(bpe);
    let byte_level = ByteLevel::new(false, true, true);
    let pre_tok: PreTokenizerWrapper = match pre {
        "smollm" | "starcoder" | "qwen2" | "llama-bpe" | "llama3" => {
            PreSequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
        }
        _ => byte_level.into(),
    };
    inner.with_pre_tokenizer(Some(pre_tok));
    inner.with_decoder(Some(ByteLevel::default()));
    inner.add_special_tokens(vocab.specials(&[bos, eos])).map_err(|e| anyhow!("registering special tokens: {e}"))?;
    Ok(Tokenizer::new(inner, bos, eos, add_bos))
}

/// SentencePiece-style BPE with byte fallback (GGUF `llama`, llama2.c's
/// `tokenizer.bin`): merges are derived from the vocabulary, ranked by the score of
/// the merged piece, as Hugging Face's SentencePiece converter does.
pub fn sentencepiece_bpe(vocab: &Vocabulary, bos: Option<u32>, eos: Option<u32>, add_bos: bool) -> Result<Tokenizer> {
    let map = vocab.vocab_map();
    let score = |i: usize| vocab.scores.get(i).copied().unwrap_or(-(i as f32));
    let mut merges: Vec<(f32, u32, u32, String, String)> = Vec::new();
    for (id, piece) in vocab.tokens.iter().enumerate() {
        if vocab.types.get(id).is_some_and(|&t| t != 1) {
            continue; // only normal pieces are merge results
        }
        for (k, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(k);
            if let (Some(&li), Some(&ri)) = (map.get(l), map.get(r)) {
                merges.push((score(id), li, ri, l.to_string(), r.to_string()));
            }
        }
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let merges = merges.into_iter().map(|m| (m.3, m.4)).collect();
    let unk = vocab.types.iter().position(|&t| t == 2).map_or("<unk>".to_string(), |i| vocab.tokens[i].clone());
    let bpe = BPE::builder()
        .vocab_and_merges(map, merges)
        .byte_fallback(true)
        .fuse_unk(true)
        .unk_token(unk)
        .build()
        .map_err(|e| anyhow!("building SentencePiece BPE: {e}"))?;
    let mut inner = tokenizers::Tokenizer::new(bpe);
    let normalizer: NormalizerWrapper = NormalizerSequence::new(vec![
        Prepend::new("▁".into()).into(),
        Replace::new(" ", "▁").map_err(|e| anyhow!("{e}"))?.into(),
    ])
    .into();
    inner.with_normalizer(Some(normalizer)).map_err(|e| anyhow!("{e}"))?;
    let decoder = DecoderSequence::new(vec![
        DecoderWrapper::Replace(Replace::new("▁", " ").map_err(|e| anyhow!("{e}"))?),
        ByteFallback::new().into(),
        Fuse::new().into(),
        Strip::new(' ', 1, 0).into(),
    ]);
    inner.with_decoder(Some(decoder));
    inner.add_special_tokens(vocab.specials(&[bos, eos])).map_err(|e| anyhow!("registering special tokens: {e}"))?;
    Ok(Tokenizer::new(inner, bos, eos, add_bos))
}

/// A character-level SentencePiece-style toy vocabulary of exactly `size` tokens
/// (`<unk>`, `<s>`, `</s>`, `▁`, then letters, digits and punctuation), for tiny
/// random test models.
pub fn toy_vocabulary(size: usize) -> Vocabulary {
    let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>", "▁"].map(String::from).to_vec();
    let chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'-:;()\"";
    tokens.extend(chars.chars().map(String::from));
    let mut k = 0;
    while tokens.len() < size {
        tokens.push(format!("▁w{k}"));
        k += 1;
    }
    tokens.truncate(size);
    let types = (0..tokens.len()).map(|i| match i {
        0 => 2,
        1 | 2 => 3,
        _ => 1,
    });
    let scores = (0..tokens.len()).map(|i| -(i as f32)).collect();
    Vocabulary { types: types.collect(), scores, tokens }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spm_vocab() -> Vocabulary {
        let mut tokens = vec!["<unk>".to_string(), "<s>".into(), "</s>".into()];
        let mut types = vec![2, 3, 3];
        for b in 0..=255u8 {
            tokens.push(format!("<0x{b:02X}>"));
            types.push(6);
        }
        for t in ["▁", "h", "e", "l", "o", "▁h", "he", "ll", "llo", "▁he", "▁hello", "w", "r", "d"] {
            tokens.push(t.into());
            types.push(1);
        }
        let scores = (0..tokens.len()).map(|i| if tokens[i] == "▁hello" { 10.0 } else { -(i as f32) }).collect();
        Vocabulary { tokens, types, scores }
    }

    #[test]
    fn sentencepiece_merges_and_byte_fallback_round_trip() {
        let v = spm_vocab();
        let tok = sentencepiece_bpe(&v, Some(1), Some(2), true).unwrap();
        let ids = tok.encode("hello world", true).unwrap();
        assert_eq!(ids[0], 1);
        assert_eq!(v.tokens[ids[1] as usize], "▁hello");
        // 'w','o','r','l','d' exist; the space becomes ▁
        assert_eq!(tok.decode(&ids[1..]).unwrap(), "hello world");
        // characters outside the vocabulary fall back to bytes and decode back
        let ids = tok.encode("hé", false).unwrap();
        assert!(ids.iter().any(|&i| v.tokens[i as usize].starts_with("<0x")));
        assert_eq!(tok.decode(&ids).unwrap(), "hé");
    }
}
