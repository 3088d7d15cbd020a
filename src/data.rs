//! Preference data in: JSONL or Parquet in the Hugging Face TRL layouts, validated
//! whole before any training starts.
//!
//! Layouts (TRL's): *standard* `{"prompt", "chosen", "rejected"}` strings;
//! *conversational* (`prompt` a list of `{"role", "content"}` messages, `chosen` /
//! `rejected` assistant messages), rendered with the model's chat template the way
//! TRL does (prompt with the generation prompt; a response is the rendering of
//! prompt + response minus the prompt's); *implicit prompt* (`chosen` / `rejected`
//! only), where the shared prefix is the prompt.

use crate::tokenizer::{Message, Tokenizer};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::Path;

/// One preference example as text, ready to tokenise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreferencePair {
    /// Context x (may be empty: unconditional generation).
    pub prompt: String,
    /// Preferred response y_w.
    pub chosen: String,
    /// Dispreferred response y_l.
    pub rejected: String,
}

/// A problem with one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRecord {
    /// 1-based line (JSONL) or row (Parquet).
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

/// Everything read from a file.
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    /// Valid pairs, in file order.
    pub pairs: Vec<PreferencePair>,
    /// The 1-based line (JSONL) or row (Parquet) of each pair.
    pub lines: Vec<usize>,
    /// Records that could not be used, with reasons.
    pub bad: Vec<BadRecord>,
    /// Pairs dropped as unusable for training (empty or identical responses).
    pub skipped_degenerate: usize,
}

/// Reads every record of a `.jsonl` / `.json` (one object per line) or `.parquet`
/// file. Malformed records are collected in `bad` (never silently dropped); the
/// caller decides whether to refuse or skip them.
pub fn read(path: &Path, tok: Option<&Tokenizer>) -> Result<Dataset> {
    let records = match path.extension().and_then(|e| e.to_str()) {
        Some("parquet") => read_parquet(path)?,
        _ => read_jsonl(path)?,
    };
    let mut ds = Dataset::default();
    for (line, rec) in records {
        match rec.and_then(|v| parse_record(&v, tok)) {
            Ok(p) if p.chosen.trim().is_empty() || p.rejected.trim().is_empty() || p.chosen == p.rejected => {
                ds.skipped_degenerate += 1
            }
            Ok(p) => {
                ds.pairs.push(p);
                ds.lines.push(line);
            }
            Err(reason) => ds.bad.push(BadRecord { line, reason }),
        }
    }
    Ok(ds)
}

/// A record's 1-based line (or row) and its JSON value, or why it is unreadable.
pub type Record = (usize, std::result::Result<Value, String>);

fn read_jsonl(path: &Path) -> Result<Vec<Record>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(parse_jsonl(&bytes))
}

/// JSONL records by line: a line that is not UTF-8 or not JSON is a bad record of
/// its own, never a failure of the whole file.
pub fn parse_jsonl(bytes: &[u8]) -> Vec<Record> {
    bytes
        .split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, l)| !l.trim_ascii().is_empty())
        .map(|(i, l)| {
            let parsed = std::str::from_utf8(l)
                .map_err(|e| format!("not valid UTF-8 (byte {} of the line)", e.valid_up_to() + 1))
                .and_then(|l| serde_json::from_str::<Value>(l).map_err(|e| format!("not valid JSON: {e}")));
            (i + 1, parsed)
        })
        .collect()
}

fn read_parquet(path: &Path) -> Result<Vec<Record>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // The parquet crate (53) panics on some malformed metadata (found by fuzz/,
    // tests/fixtures/parquet_reader_panic.parquet): a hostile file must be an error.
    let read = std::panic::catch_unwind(move || -> Result<Vec<Record>> {
        let reader = SerializedFileReader::new(file)
            .with_context(|| format!("{}: not a readable Parquet file", path.display()))?;
        let rows = reader.get_row_iter(None).with_context(|| format!("{}: reading rows", path.display()))?;
        Ok(rows
            .enumerate()
            .map(|(i, r)| (i + 1, r.map(|row| row.to_json_value()).map_err(|e| format!("unreadable row: {e}"))))
            .collect())
    });
    read.unwrap_or_else(|_| {
        bail!("{}: not a readable Parquet file (the reader failed on its metadata)", path.display())
    })
}

fn messages(v: &Value, field: &str) -> std::result::Result<Vec<Message>, String> {
    serde_json::from_value::<Vec<Message>>(v.clone())
        .map_err(|_| format!("field \"{field}\" must be a string or a list of {{\"role\", \"content\"}} messages"))
}

fn render(tok: Option<&Tokenizer>, msgs: &[Message], gen_prompt: bool) -> std::result::Result<String, String> {
    let tok = tok.ok_or("conversational records need a model's chat template")?;
    tok.apply_chat_template(msgs, gen_prompt).map_err(|e| format!("{e:#}"))
}

/// One record in any TRL layout → a pair of texts, or why it is malformed.
pub fn parse_record(v: &Value, tok: Option<&Tokenizer>) -> std::result::Result<PreferencePair, String> {
    let obj = v.as_object().ok_or("a record must be a JSON object")?;
    let field = |name: &str| obj.get(name).filter(|x| !x.is_null()).ok_or(format!("missing field \"{name}\""));
    let (chosen, rejected) = (field("chosen")?, field("rejected")?);
    match (obj.get("prompt").filter(|p| !p.is_null()), chosen, rejected) {
        (Some(Value::String(p)), Value::String(c), Value::String(r)) => {
            Ok(PreferencePair { prompt: p.clone(), chosen: c.clone(), rejected: r.clone() })
        }
        (None, Value::String(c), Value::String(r)) => {
            let cut = common_prefix(c, r);
            Ok(PreferencePair {
                prompt: c[..cut].to_string(),
                chosen: c[cut..].to_string(),
                rejected: r[cut..].to_string(),
            })
        }
        (Some(Value::Array(_)), _, _) | (None, Value::Array(_), Value::Array(_)) => {
            let (mut prompt, mut c, mut r) = (
                obj.get("prompt").map(|p| messages(p, "prompt")).transpose()?.unwrap_or_default(),
                messages(chosen, "chosen")?,
                messages(rejected, "rejected")?,
            );
            if prompt.is_empty() {
                // implicit conversational prompt: the shared leading messages
                let n = c.iter().zip(&r).take_while(|(a, b)| a == b).count();
                prompt = c[..n].to_vec();
                c.drain(..n);
                r.drain(..n);
            }
            let p = render(tok, &prompt, true)?;
            let full = |resp: &[Message]| -> std::result::Result<String, String> {
                let all: Vec<Message> = prompt.iter().chain(resp).cloned().collect();
                let text = render(tok, &all, false)?;
                text.strip_prefix(&p).map(String::from).ok_or_else(|| {
                    "the chat template does not render the prompt as a prefix of the conversation".into()
                })
            };
            Ok(PreferencePair { chosen: full(&c)?, rejected: full(&r)?, prompt: p })
        }
        (Some(_), _, _) => Err("field \"prompt\" must be a string or a list of messages".into()),
        _ => Err("fields \"chosen\" and \"rejected\" must both be strings or both be message lists".into()),
    }
}

/// TRL's implicit-prompt rule: the longest common prefix, backed off so a space
/// that starts the responses stays with them.
fn common_prefix(a: &str, b: &str) -> usize {
    let mut n = a
        .char_indices()
        .zip(b.chars())
        .take_while(|((_, x), y)| x == y)
        .map(|((i, x), _)| i + x.len_utf8())
        .last()
        .unwrap_or(0);
    if n > 0 && a[..n].ends_with(' ') && (n < a.len() || n < b.len()) {
        n -= 1;
    }
    n
}

/// Refuses a dataset with bad records (listing every one of them) unless
/// `skip_invalid`, in which case they are dropped and counted.
pub fn check(ds: &Dataset, path: &Path, skip_invalid: bool) -> Result<()> {
    if ds.bad.is_empty() || skip_invalid {
        if ds.pairs.is_empty() {
            bail!("{}: no usable preference pairs", path.display());
        }
        return Ok(());
    }
    let lines: Vec<String> =
        ds.bad.iter().take(20).map(|b| format!("  {}:{}: {}", path.display(), b.line, b.reason)).collect();
    let more = if ds.bad.len() > 20 { format!("\n  … and {} more", ds.bad.len() - 20) } else { String::new() };
    bail!(
        "{} malformed record(s) in {} (fix them, or pass --skip-invalid to drop them):\n{}{more}",
        ds.bad.len(),
        path.display(),
        lines.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_and_errors() {
        let std_ = serde_json::json!({"prompt": "Q:", "chosen": " yes", "rejected": " no"});
        assert_eq!(
            parse_record(&std_, None).unwrap(),
            PreferencePair { prompt: "Q:".into(), chosen: " yes".into(), rejected: " no".into() }
        );
        let implicit = serde_json::json!({"chosen": "The sky is blue.", "rejected": "The sky is green."});
        let p = parse_record(&implicit, None).unwrap();
        assert_eq!((p.prompt.as_str(), p.chosen.as_str(), p.rejected.as_str()), ("The sky is", " blue.", " green."));
        let missing = serde_json::json!({"prompt": "x", "chosen": "a"});
        assert_eq!(parse_record(&missing, None).unwrap_err(), "missing field \"rejected\"");
        let conv = serde_json::json!({"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]});
        assert!(parse_record(&conv, None).unwrap_err().contains("chat template"));
    }
}
