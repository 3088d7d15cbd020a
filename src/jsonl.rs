//! Append-only JSONL files that survive being killed mid-write: a rerun keeps every
//! complete line and drops a torn last one, so work continues without loss or
//! duplicates.

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;
use std::io::Write;
use std::path::Path;

/// Complete lines of `path` (none if it does not exist). A last line without its
/// newline (a write cut short) is removed from the file.
pub fn recover(path: &Path) -> Result<Vec<Value>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = crate::fsx::read_text(path)?;
    let complete = text.rfind('\n').map_or(0, |i| i + 1);
    if complete < text.len() {
        // atomically: a crash while repairing must not lose the complete lines
        crate::fsx::write_atomic(path, &text.as_bytes()[..complete])
            .with_context(|| format!("repairing {}", path.display()))?;
    }
    text[..complete]
        .lines()
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("{}:{}: not valid JSON", path.display(), i + 1)))
        .collect()
}

/// Appends rows, one JSON object per line, and flushes them to disk.
pub fn append<T: Serialize>(path: &Path, rows: &[T]) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut buf = String::new();
    for r in rows {
        buf.push_str(&serde_json::to_string(r)?);
        buf.push('\n');
    }
    f.write_all(buf.as_bytes())?;
    f.sync_data()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_last_line_is_dropped_and_appending_continues() {
        let dir = std::env::temp_dir().join(format!("spo-jsonl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.jsonl");
        std::fs::write(&p, "{\"a\":1}\n{\"a\":2}\n{\"a\":").unwrap();
        assert_eq!(recover(&p).unwrap().len(), 2);
        append(&p, &[serde_json::json!({"a": 3})]).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n");
        assert!(recover(&dir.join("missing.jsonl")).unwrap().is_empty());
    }
}
