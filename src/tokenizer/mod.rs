//! Tokenizers of every supported checkpoint format behind one type, plus the chat
//! template. Built on the `tokenizers` crate; the vocabularies embedded in GGUF
//! files and llama2.c's `tokenizer.bin` are turned into `tokenizers` models.

pub mod build;
pub mod chat;

use anyhow::{anyhow, Context, Result};
use std::path::Path;

pub use chat::Message;

/// A tokenizer with its special tokens and chat template.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Beginning-of-sequence id, if the vocabulary has one.
    pub bos: Option<u32>,
    /// End-of-sequence id (generation stops there).
    pub eos: Option<u32>,
    /// Whether encoding a fresh sequence starts with BOS (the tokenizer's own rule).
    pub add_bos: bool,
    /// Jinja chat template, when the checkpoint ships one.
    pub chat_template: Option<String>,
}

/// Tokenises a prompt and a response separately (no BPE merge across the boundary):
/// the prompt starts with BOS when the tokenizer adds one, the response ends with
/// EOS when `with_eos` and the tokenizer has one. The trainer and `spo score` share it.
pub fn encode_pair(tok: &Tokenizer, prompt: &str, response: &str, with_eos: bool) -> Result<(Vec<u32>, Vec<u32>)> {
    let prompt_ids = tok.encode(prompt, tok.add_bos)?;
    let mut response_ids = tok.encode(response, false)?;
    if with_eos {
        response_ids.extend(tok.eos);
    }
    Ok((prompt_ids, response_ids))
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .finish()
    }
}

impl Tokenizer {
    /// Wraps a `tokenizers` tokenizer.
    pub fn new(inner: tokenizers::Tokenizer, bos: Option<u32>, eos: Option<u32>, add_bos: bool) -> Self {
        Self { inner, bos, eos, add_bos, chat_template: None }
    }

    /// Number of ids, special tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token string.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Encodes text; special tokens written in the text (e.g. `<|im_end|>`) become
    /// their ids. BOS is prepended when `with_bos` and the tokenizer has one.
    pub fn encode(&self, text: &str, with_bos: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| anyhow!("tokenizing {text:?}: {e}"))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if with_bos {
            ids.extend(self.bos);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Ids of a generation prompt: the text with BOS as the tokenizer prescribes; an
    /// empty text (unconditional generation) starts from BOS even when the tokenizer
    /// adds none. Empty when there is neither text nor BOS.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.encode(text, self.add_bos)?;
        if ids.is_empty() {
            ids.extend(self.bos);
        }
        Ok(ids)
    }

    /// Ids of a prompt written by a user: with `chat`, as the user's message
    /// rendered by the chat template with the assistant's turn opened; otherwise
    /// the raw text ([`Self::encode_prompt`]).
    pub fn encode_user_prompt(&self, text: &str, chat: bool) -> Result<Vec<u32>> {
        if chat {
            self.encode_chat(&[Message::new("user", text)])
        } else {
            self.encode_prompt(text)
        }
    }

    /// Ids of a chat prompt: the messages rendered with the chat template and the
    /// assistant's turn opened (the template writes its own special tokens).
    pub fn encode_chat(&self, messages: &[Message]) -> Result<Vec<u32>> {
        self.encode(&self.apply_chat_template(messages, true)?, false)
    }

    /// Decodes ids to text, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(|e| anyhow!("decoding {} tokens: {e}", ids.len()))
    }

    /// Renders chat messages with the checkpoint's template (see [`chat`]).
    pub fn apply_chat_template(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let template =
            self.chat_template.as_deref().context("this model ships no chat template; pass a raw prompt instead")?;
        let token = |id: Option<u32>| id.map(|i| self.decode(&[i])).transpose();
        chat::render(
            template,
            messages,
            add_generation_prompt,
            &token(self.bos)?.unwrap_or_default(),
            &token(self.eos)?.unwrap_or_default(),
        )
    }

    /// Writes `tokenizer.json` and `tokenizer_config.json` (special tokens, chat
    /// template) into `dir`, as Hugging Face expects them.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let json = dir.join("tokenizer.json");
        self.inner.save(&json, false).map_err(|e| anyhow!("writing {}: {e}", json.display()))?;
        let name = |id: Option<u32>| id.and_then(|i| self.inner.id_to_token(i));
        let config = serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": name(self.bos),
            "eos_token": name(self.eos),
            "add_bos_token": self.add_bos,
            "chat_template": self.chat_template,
            "model_max_length": 1_000_000_000u64,
        });
        let path = dir.join("tokenizer_config.json");
        std::fs::write(&path, serde_json::to_string_pretty(&config)?)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Loads `tokenizer.json` (+ `tokenizer_config.json` / `chat_template.jinja`) from
    /// a Hugging Face directory; `config` is the model's `config.json` value, whose
    /// `bos_token_id` / `eos_token_id` are used when the tokenizer config has none.
    pub fn from_hf_dir(dir: &Path, config: &serde_json::Value) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&json).map_err(|e| anyhow!("{}: {e}", json.display()))?;
        let tc_path = dir.join("tokenizer_config.json");
        let tc: serde_json::Value = match std::fs::read_to_string(&tc_path) {
            Ok(s) => serde_json::from_str(&s).with_context(|| format!("{}: not valid JSON", tc_path.display()))?,
            Err(_) => serde_json::Value::Null,
        };
        let special = |key: &str, id_key: &str| -> Option<u32> {
            let named = match &tc[key] {
                serde_json::Value::String(s) => inner.token_to_id(s),
                serde_json::Value::Object(o) => {
                    o.get("content").and_then(|c| c.as_str()).and_then(|s| inner.token_to_id(s))
                }
                _ => None,
            };
            let id = || config[id_key].as_u64().or_else(|| config[id_key].as_array()?.first()?.as_u64());
            named.or_else(|| id().map(|i| i as u32))
        };
        let (bos, eos) = (special("bos_token", "bos_token_id"), special("eos_token", "eos_token_id"));
        let mut tok = Self::new(inner, bos, eos, false);
        // without the flag, the tokenizer's post-processor decides (Llama 3 adds BOS there)
        tok.add_bos = match tc["add_bos_token"].as_bool() {
            Some(add) => add,
            None => {
                let ids = tok.inner.encode("a", true).map(|e| e.get_ids().first().copied());
                bos.is_some() && ids.is_ok_and(|first| first == bos)
            }
        };
        tok.chat_template = match std::fs::read_to_string(dir.join("chat_template.jinja")) {
            Ok(t) => Some(t),
            Err(_) => tc["chat_template"].as_str().map(String::from),
        };
        Ok(tok)
    }
}
