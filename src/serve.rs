//! An OpenAI-compatible HTTP front of a loaded model: `POST /v1/chat/completions`,
//! `POST /v1/completions`, `GET /v1/models`. Requests are served one at a time (the
//! model uses every core); a bad body gets a 400 with a JSON error.

use crate::model::Loaded;
use crate::sample::{generate, Sample, SamplingConfig};
use crate::tokenizer::Message;
use anyhow::Result;
use serde_json::{json, Value};

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Name reported by `/v1/models` and in responses.
    pub model_name: String,
    /// Required bearer token, if any.
    pub api_key: Option<String>,
    /// Default `max_tokens`.
    pub default_max_tokens: usize,
}

/// Most completions one request may ask for (`n`): above it the request is refused.
pub const MAX_N: usize = 16;

/// Most new tokens one request may ask for, unless the server's default is higher.
pub const MAX_TOKENS: usize = 4096;

/// An HTTP-level outcome: status code and JSON body.
pub type Reply = (u16, Value);

fn error(status: u16, msg: impl Into<String>) -> Reply {
    (status, json!({"error": {"message": msg.into(), "type": "invalid_request_error"}}))
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Handles one request; `auth` is the Authorization header, if any.
pub fn handle(model: &Loaded, cfg: &ServeConfig, method: &str, path: &str, auth: Option<&str>, body: &str) -> Reply {
    if let Some(key) = &cfg.api_key {
        if auth != Some(&format!("Bearer {key}")) {
            return error(401, "missing or wrong API key");
        }
    }
    let path = path.split('?').next().unwrap_or(path);
    match (method, path) {
        ("GET", "/v1/models") => (
            200,
            json!({"object": "list", "data": [{"id": cfg.model_name, "object": "model", "created": 0, "owned_by": "spo"}]}),
        ),
        ("POST", "/v1/chat/completions") | ("POST", "/v1/completions") => {
            let req: Value = match serde_json::from_str(body) {
                Ok(v @ Value::Object(_)) => v,
                _ => return error(400, "the request body must be a JSON object"),
            };
            match complete(model, cfg, path.ends_with("chat/completions"), &req) {
                Ok(r) => r,
                Err(e) => error(400, format!("{e:#}")),
            }
        }
        _ => error(404, format!("no route for {method} {path}")),
    }
}

fn complete(model: &Loaded, cfg: &ServeConfig, chat: bool, req: &Value) -> Result<Reply> {
    if req["stream"].as_bool() == Some(true) {
        return Ok(error(400, "streaming is not supported; send \"stream\": false"));
    }
    let tok = &model.tokenizer;
    let ids = if chat {
        let messages: Vec<Message> = serde_json::from_value(req["messages"].clone())
            .map_err(|_| anyhow::anyhow!("\"messages\" must be a list of {{\"role\", \"content\"}} objects"))?;
        anyhow::ensure!(!messages.is_empty(), "\"messages\" is empty");
        tok.encode_chat(&messages)?
    } else {
        let prompt = req["prompt"].as_str().ok_or_else(|| anyhow::anyhow!("\"prompt\" must be a string"))?;
        tok.encode_prompt(prompt)?
    };
    let num = |k: &str| req[k].as_f64();
    let n = req["n"].as_u64().unwrap_or(1) as usize;
    anyhow::ensure!((1..=MAX_N).contains(&n), "\"n\" must be between 1 and {MAX_N}, got {n}");
    let stop = match &req["stop"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a.iter().filter_map(|s| s.as_str().map(String::from)).collect(),
        _ => Vec::new(),
    };
    let max_new_tokens = req["max_tokens"].as_u64().map_or(cfg.default_max_tokens, |m| m as usize);
    anyhow::ensure!(
        max_new_tokens <= cfg.default_max_tokens.max(MAX_TOKENS),
        "\"max_tokens\" must be at most {}, got {max_new_tokens}",
        cfg.default_max_tokens.max(MAX_TOKENS)
    );
    let sampling = SamplingConfig {
        max_new_tokens,
        temperature: num("temperature").unwrap_or(1.0),
        top_p: num("top_p").filter(|p| *p != 1.0),
        top_k: req["top_k"].as_u64().map(|k| k as usize),
        seed: req["seed"].as_u64().unwrap_or(0),
        stop,
        ignore_eos: false,
    };
    sampling.validate().map_err(|e| anyhow::anyhow!("{}", e.replace('-', "_")))?;
    let samples: Vec<Sample> = generate(&model.model, tok, &vec![ids.clone(); n], &sampling)?;
    let completion_tokens: usize = samples.iter().map(|s| s.tokens.len()).sum();
    let reason = |s: &Sample| if s.finish_reason == crate::sample::Finish::Length { "length" } else { "stop" };
    let choices: Vec<Value> = samples
        .iter()
        .map(|s| {
            if chat {
                json!({"index": s.index, "message": {"role": "assistant", "content": s.text}, "finish_reason": reason(s)})
            } else {
                json!({"index": s.index, "text": s.text, "finish_reason": reason(s)})
            }
        })
        .collect();
    Ok((
        200,
        json!({
            "id": format!("spo-{}", now()),
            "object": if chat { "chat.completion" } else { "text_completion" },
            "created": now(),
            "model": cfg.model_name,
            "choices": choices,
            "usage": {"prompt_tokens": ids.len(), "completion_tokens": completion_tokens, "total_tokens": ids.len() * n + completion_tokens},
        }),
    ))
}
