//! A judge behind any OpenAI-compatible chat-completions endpoint (`spo serve`
//! included): the paper's prompt as a replaceable template, robust score parsing,
//! retries with backoff on 429/5xx and on unparseable answers, and a local cache of
//! verdicts keyed by (judge, prompt, story 1, story 2).

use super::{Judge, Verdict};
use anyhow::{anyhow, bail, Context, Result};
use regex::Regex;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// The paper's judge prompt (section 6), with `{story_1}` / `{story_2}` placeholders.
pub const PAPER_PROMPT: &str = include_str!("paper_prompt.txt");

/// Connection and behaviour settings.
#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    /// Base URL, e.g. `http://127.0.0.1:8080/v1`.
    pub url: String,
    /// Model name sent in requests.
    pub model: String,
    /// Bearer token (from an environment variable; never logged).
    pub api_key: Option<String>,
    /// Prompt template with `{story_1}`, `{story_2}` (and optionally `{prompt}`).
    pub template: String,
    /// Attempts per verdict (network errors, 429/5xx, unparseable answers).
    pub attempts: usize,
    /// Per-request timeout.
    pub timeout: Duration,
    /// `max_tokens` of each judge answer.
    pub max_tokens: usize,
    /// Verdict cache file (JSONL), if any.
    pub cache: Option<PathBuf>,
}

type Key = (String, String, String, String);

/// The client judge.
pub struct OpenAiJudge {
    cfg: OpenAiConfig,
    client: reqwest::blocking::Client,
    cache: Mutex<HashMap<Key, Verdict>>,
}

/// Extracts "Score of story 1: N" / "Score of story 2: N" (any case, spacing,
/// markdown emphasis, decimals, "/10"). `None` unless both are present and in 0–10.
pub fn parse_scores(answer: &str) -> Option<(f64, f64)> {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| {
        Regex::new(r"(?i)score\s*(?:of|for)?\s*story\s*([12])\s*[*_]*\s*[:=\-]?\s*[*_]*\s*(\d+(?:\.\d+)?)")
            .expect("valid regex")
    });
    let (mut s1, mut s2) = (None, None);
    for c in re.captures_iter(answer) {
        let v: f64 = c[2].parse().ok()?;
        match &c[1] {
            "1" => s1 = Some(v),
            _ => s2 = Some(v),
        }
    }
    let (a, b) = (s1?, s2?);
    ((0.0..=10.0).contains(&a) && (0.0..=10.0).contains(&b)).then_some((a, b))
}

impl OpenAiJudge {
    /// A judge with its cache loaded.
    pub fn new(cfg: OpenAiConfig) -> Result<Self> {
        let client = reqwest::blocking::Client::builder().timeout(cfg.timeout).build()?;
        let mut cache = HashMap::new();
        if let Some(path) = &cfg.cache {
            for v in crate::jsonl::recover(path)? {
                let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
                if let Ok(verdict) = serde_json::from_value::<Verdict>(v["verdict"].clone()) {
                    cache.insert((s("judge"), s("prompt"), s("story_1"), s("story_2")), verdict);
                }
            }
        }
        Ok(Self { cfg, client, cache: Mutex::new(cache) })
    }

    fn ask(&self, content: &str) -> Result<String> {
        let url = format!("{}/chat/completions", self.cfg.url.trim_end_matches('/'));
        let body = json!({
            "model": self.cfg.model,
            "messages": [{"role": "user", "content": content}],
            "temperature": 0,
            "max_tokens": self.cfg.max_tokens,
        });
        let mut req = self.client.post(&url).json(&body);
        if let Some(key) = &self.cfg.api_key {
            req = req.bearer_auth(key);
        }
        let resp = req.send().map_err(|e| anyhow!("{url} is unreachable: {e}"))?;
        let status = resp.status();
        if status == 401 || status == 403 {
            bail!("{url} refused the request ({status}): check the API key");
        }
        if !status.is_success() {
            bail!("{url} answered {status}");
        }
        let v: Value = resp.json().map_err(|e| anyhow!("{url}: malformed response body: {e}"))?;
        v["choices"][0]["message"]["content"]
            .as_str()
            .map(String::from)
            .ok_or_else(|| anyhow!("{url}: response has no choices[0].message.content"))
    }

    fn retryable(e: &anyhow::Error) -> bool {
        let m = e.to_string();
        !(m.contains("check the API key") || m.contains(" 400 ") || m.contains(" 404 "))
    }
}

impl Judge for OpenAiJudge {
    fn name(&self) -> String {
        format!("openai:{}@{}", self.cfg.model, self.cfg.url)
    }

    fn judge(&self, prompt: &str, story_1: &str, story_2: &str) -> Result<Verdict> {
        for (i, s) in [story_1, story_2].iter().enumerate() {
            if s.trim().is_empty() {
                bail!("story {} is empty", i + 1);
            }
        }
        let key = (self.name(), prompt.to_string(), story_1.to_string(), story_2.to_string());
        if let Some(v) = self.cache.lock().expect("cache lock").get(&key) {
            return Ok(v.clone());
        }
        let content =
            self.cfg.template.replace("{story_1}", story_1).replace("{story_2}", story_2).replace("{prompt}", prompt);
        let mut last = anyhow!("no attempt made");
        for attempt in 0..self.cfg.attempts.max(1) {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(250 << attempt.min(6)));
            }
            match self.ask(&content) {
                Ok(answer) => match parse_scores(&answer) {
                    Some((s1, s2)) => {
                        let verdict = Verdict { score_1: s1, score_2: s2, assessment: Some(answer) };
                        if let Some(path) = &self.cfg.cache {
                            let row = json!({"judge": key.0, "prompt": key.1, "story_1": key.2, "story_2": key.3, "verdict": verdict});
                            crate::jsonl::append(path, &[row]).context("writing the judge cache")?;
                        }
                        self.cache.lock().expect("cache lock").insert(key, verdict.clone());
                        return Ok(verdict);
                    }
                    None => {
                        let head: String = answer.chars().take(120).collect();
                        last = anyhow!("the judge's answer has no parseable scores: {head:?}");
                    }
                },
                Err(e) if Self::retryable(&e) => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last.context(format!("after {} attempts", self.cfg.attempts.max(1))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_scores_robustly_and_never_guesses() {
        assert_eq!(
            parse_scores("blah\nScore of story 1: 5\nScore of story 2: 8\nStory 2 is better."),
            Some((5.0, 8.0))
        );
        assert_eq!(parse_scores("**Score of Story 1:** 7.5/10\n**Score of Story 2:** 6"), Some((7.5, 6.0)));
        assert_eq!(parse_scores("score of story 2 : 3\nSCORE OF STORY 1:9"), Some((9.0, 3.0)));
        assert_eq!(parse_scores("Score for story 1 - 4\nScore for story 2 - 4"), Some((4.0, 4.0)));
        assert_eq!(parse_scores("Score of story 1: 5"), None);
        assert_eq!(parse_scores("Score of story 1: 5\nScore of story 2: 15"), None);
        assert_eq!(parse_scores("I like both."), None);
    }
}
