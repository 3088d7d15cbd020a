//! An OpenAI-compatible inference server: `POST /v1/chat/completions`,
//! `POST /v1/completions` (both with `stream: true` as server-sent events),
//! `GET /v1/models`, `GET /health`. Requests are decoded together by one scheduler
//! thread with continuous batching ([`scheduler`]); the HTTP side ([`http`]) bounds
//! every request: key before body, body size and read time, tokens, queue length.

pub mod http;
pub mod scheduler;

use crate::sample::{Finish, SamplingConfig};
use crate::tokenizer::{Message, Tokenizer};
use anyhow::{ensure, Result};
use serde_json::{json, Value};
use std::time::Duration;

/// Most completions one request may ask for (`n`): above it the request is refused.
pub const MAX_N: usize = 16;

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Name reported by `/v1/models` and in responses.
    pub model_name: String,
    /// Required bearer token, if any.
    pub api_key: Option<String>,
    /// `max_tokens` when a request gives none.
    pub default_max_tokens: usize,
    /// Most `max_tokens` a request may ask for (400 beyond).
    pub max_tokens_limit: usize,
    /// Largest request body, bytes (413 beyond).
    pub body_limit: usize,
    /// Time allowed to send the headers, and then the body (408 beyond).
    pub read_timeout: Duration,
    /// Time a non-streaming request may take in all (504 beyond; its rows are cancelled).
    pub request_timeout: Duration,
    /// Requests waiting for room in the batch (503 with Retry-After beyond).
    pub queue: usize,
    /// Most sequences decoded together.
    pub max_batch: usize,
}

/// A completion request, validated: what the scheduler runs and how to answer.
#[derive(Debug, Clone)]
pub struct Request {
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// Continuations wanted.
    pub n: usize,
    /// Sampling settings.
    pub sampling: SamplingConfig,
    /// Answer with server-sent events.
    pub stream: bool,
    /// Chat (`/v1/chat/completions`) or text completion.
    pub chat: bool,
}

/// Reads and validates a request body; the error is the 400's message.
pub fn parse_request(req: &Value, chat: bool, tok: &Tokenizer, cfg: &ServeConfig, context: usize) -> Result<Request> {
    ensure!(req.is_object(), "the request body must be a JSON object");
    let prompt = if chat {
        let messages: Vec<Message> = serde_json::from_value(req["messages"].clone())
            .map_err(|_| anyhow::anyhow!("\"messages\" must be a list of {{\"role\", \"content\"}} objects"))?;
        ensure!(!messages.is_empty(), "\"messages\" is empty");
        tok.encode_chat(&messages)?
    } else {
        let prompt = req["prompt"].as_str().ok_or_else(|| anyhow::anyhow!("\"prompt\" must be a string"))?;
        tok.encode_prompt(prompt)?
    };
    ensure!(!prompt.is_empty(), "the prompt is empty and the model has no BOS token to start from");
    ensure!(
        prompt.len() < context,
        "the prompt's {} tokens leave no room in the model's context of {context}",
        prompt.len()
    );
    let n = req["n"].as_u64().unwrap_or(1) as usize;
    ensure!((1..=MAX_N).contains(&n), "\"n\" must be between 1 and {MAX_N}, got {n}");
    let max_new_tokens = req["max_tokens"].as_u64().map_or(cfg.default_max_tokens, |m| m as usize);
    let cap = cfg.max_tokens_limit.min(context - prompt.len());
    ensure!(
        max_new_tokens <= cap,
        "\"max_tokens\" must be at most {cap} (the server's limit and the context left after the prompt), got {max_new_tokens}"
    );
    let stop = match &req["stop"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a.iter().filter_map(|s| s.as_str().map(String::from)).collect(),
        _ => Vec::new(),
    };
    let num = |k: &str| req[k].as_f64();
    let sampling = SamplingConfig {
        max_new_tokens,
        temperature: num("temperature").unwrap_or(1.0),
        top_p: num("top_p").filter(|p| *p != 1.0),
        top_k: req["top_k"].as_u64().map(|k| k as usize),
        seed: req["seed"].as_u64().unwrap_or(0),
        stop,
        // llama.cpp's server extension: fixed-length completions (benchmarks)
        ignore_eos: req["ignore_eos"].as_bool() == Some(true),
    };
    sampling.validate().map_err(|e| anyhow::anyhow!("{}", e.replace('-', "_")))?;
    Ok(Request { prompt, n, sampling, stream: req["stream"].as_bool() == Some(true), chat })
}

/// An error body in OpenAI's shape.
pub fn error_body(msg: impl Into<String>) -> Value {
    json!({"error": {"message": msg.into(), "type": "invalid_request_error"}})
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `finish_reason` as OpenAI spells it.
pub fn finish_reason(f: Finish) -> &'static str {
    match f {
        Finish::Length => "length",
        Finish::Eos | Finish::Stop => "stop",
    }
}

/// A complete (non-streaming) response: `texts[i]` and `finishes[i]` of row i.
pub fn completion_body(
    cfg: &ServeConfig,
    req: &Request,
    texts: &[String],
    finishes: &[Option<Finish>],
    completion_tokens: usize,
) -> Value {
    let choices: Vec<Value> = texts
        .iter()
        .zip(finishes)
        .enumerate()
        .map(|(i, (text, f))| {
            let reason = f.map(finish_reason);
            if req.chat {
                json!({"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": reason})
            } else {
                json!({"index": i, "text": text, "finish_reason": reason})
            }
        })
        .collect();
    json!({
        "id": format!("spo-{}", now()),
        "object": if req.chat { "chat.completion" } else { "text_completion" },
        "created": now(),
        "model": cfg.model_name,
        "choices": choices,
        "usage": {"prompt_tokens": req.prompt.len(), "completion_tokens": completion_tokens,
                  "total_tokens": req.prompt.len() + completion_tokens},
    })
}

/// One server-sent chunk in OpenAI's format: new text of row `index`, or its end.
pub fn chunk_body(
    cfg: &ServeConfig,
    chat: bool,
    id: &str,
    index: usize,
    text: Option<&str>,
    finish: Option<Finish>,
) -> Value {
    let reason = finish.map(finish_reason);
    let choice = if chat {
        let delta = match text {
            Some(t) => json!({"role": "assistant", "content": t}),
            None => json!({}),
        };
        json!({"index": index, "delta": delta, "finish_reason": reason})
    } else {
        json!({"index": index, "text": text.unwrap_or(""), "finish_reason": reason})
    };
    json!({
        "id": id,
        "object": if chat { "chat.completion.chunk" } else { "text_completion" },
        "created": now(),
        "model": cfg.model_name,
        "choices": [choice],
    })
}
