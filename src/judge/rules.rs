//! An offline, deterministic judge for the paper's criterion — a story fit for a
//! high-school newspaper: not childish, coherent, good language — from text
//! statistics. Each story is scored on its own (so the judge has no position
//! bias); the score (0–10, one decimal) is
//!
//! `10 · (0.30·maturity + 0.25·variety + 0.20·(1 − repetition) + 0.15·length + 0.10·complete) − 3·childish`
//!
//! - maturity: Flesch–Kincaid grade level, grade 4 → 0, grade 10 and up → 1;
//! - variety: moving-average type-token ratio over 50-word windows, 0.65 → 0, 0.9 → 1;
//! - repetition: share of repeated word trigrams, 0 → 0, 30% and up → 1;
//! - length: words / 120, capped at 1;
//!
//! The ranges are set so that SmolLM2's stories spread over most of 0–10.
//! - complete: 1 when the story ends with terminal punctuation;
//! - childish: nursery markers ("the end", "very very", "yay", "happily ever
//!   after", "best friends forever") / 3 + the share of sentences ending in "!", capped at 1.

use super::{Judge, Verdict};
use anyhow::{bail, Result};

/// The statistics behind a score.
#[derive(Debug, Clone, PartialEq)]
pub struct TextStats {
    /// Words.
    pub words: usize,
    /// Flesch–Kincaid grade level.
    pub grade: f64,
    /// Moving-average type-token ratio.
    pub variety: f64,
    /// Share of repeated word trigrams.
    pub repetition: f64,
    /// Childishness in [0, 1].
    pub childish: f64,
    /// Ends with terminal punctuation.
    pub complete: bool,
}

fn syllables(word: &str) -> usize {
    let w: Vec<char> = word.chars().collect();
    let vowel = |c: char| "aeiouy".contains(c);
    let mut groups = 0;
    let mut prev = false;
    for &c in &w {
        let v = vowel(c);
        if v && !prev {
            groups += 1;
        }
        prev = v;
    }
    if w.len() > 2 && w.ends_with(&['e']) && !w.ends_with(&['l', 'e']) && groups > 1 {
        groups -= 1;
    }
    groups.max(1)
}

/// Computes the statistics of a text.
pub fn stats(text: &str) -> TextStats {
    let lower = text.to_lowercase();
    let words: Vec<String> = lower
        .split_whitespace()
        .map(|w| w.chars().filter(|c| c.is_alphanumeric() || *c == '\'').collect::<String>())
        .filter(|w| !w.is_empty())
        .collect();
    let n = words.len().max(1) as f64;
    let sentences: Vec<&str> = text.split(['.', '!', '?']).filter(|s| s.split_whitespace().next().is_some()).collect();
    let n_sent = sentences.len().max(1) as f64;
    let syl: usize = words.iter().map(|w| syllables(w)).sum();
    let grade = 0.39 * (n / n_sent) + 11.8 * (syl as f64 / n) - 15.59;
    let window = 50.min(words.len().max(1));
    let variety = if words.is_empty() {
        0.0
    } else {
        let ratios: Vec<f64> = (0..=words.len() - window)
            .map(|i| {
                let set: std::collections::HashSet<&String> = words[i..i + window].iter().collect();
                set.len() as f64 / window as f64
            })
            .collect();
        ratios.iter().sum::<f64>() / ratios.len() as f64
    };
    let trigrams: Vec<String> = words.windows(3).map(|t| t.join(" ")).collect();
    let unique: std::collections::HashSet<&String> = trigrams.iter().collect();
    let repetition = if trigrams.is_empty() { 0.0 } else { 1.0 - unique.len() as f64 / trigrams.len() as f64 };
    let markers = ["the end", "very very", "yay", "happily ever after", "best friends forever"];
    let marker_count: usize = markers.iter().map(|m| lower.matches(m).count()).sum();
    let exclaimed = text.matches('!').count() as f64 / n_sent;
    let childish = (marker_count as f64 / 3.0 + exclaimed).min(1.0);
    let complete = text.trim_end().ends_with(['.', '!', '?', '"', '\u{201d}']);
    TextStats { words: words.len(), grade, variety, repetition, childish, complete }
}

/// Score 0–10 of a text (see the module docs for the formula).
pub fn score(s: &TextStats) -> f64 {
    let clamp = |x: f64| x.clamp(0.0, 1.0);
    let maturity = clamp((s.grade - 4.0) / 6.0);
    let variety = clamp((s.variety - 0.65) / 0.25);
    let repetition = clamp(s.repetition / 0.3);
    let length = clamp(s.words as f64 / 120.0);
    let complete = if s.complete { 1.0 } else { 0.0 };
    let raw = 10.0 * (0.30 * maturity + 0.25 * variety + 0.20 * (1.0 - repetition) + 0.15 * length + 0.10 * complete)
        - 3.0 * s.childish;
    (raw.clamp(0.0, 10.0) * 10.0).round() / 10.0
}

/// The rules judge.
#[derive(Debug, Clone, Copy, Default)]
pub struct RulesJudge;

impl Judge for RulesJudge {
    fn name(&self) -> String {
        "rules-v2".into()
    }

    fn judge(&self, _prompt: &str, story_1: &str, story_2: &str) -> Result<Verdict> {
        for (i, s) in [story_1, story_2].iter().enumerate() {
            if s.trim().is_empty() {
                bail!("story {} is empty", i + 1);
            }
        }
        let (a, b) = (stats(story_1), stats(story_2));
        let describe = |k: usize, s: &TextStats| {
            format!(
                "Story {k}: {} words, grade {:.1}, variety {:.2}, repetition {:.2}, childish {:.2}, {}.",
                s.words,
                s.grade,
                s.variety,
                s.repetition,
                s.childish,
                if s.complete { "complete" } else { "unfinished" }
            )
        };
        Ok(Verdict {
            score_1: score(&a),
            score_2: score(&b),
            assessment: Some(format!("{} {}", describe(1, &a), describe(2, &b))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MATURE: &str = "The lighthouse keeper found a letter addressed to a woman who had died forty years earlier. He read it twice, then walked to the village archive, uncertain whether he wanted the truth or merely an ending. The archivist, a patient woman with ink-stained fingers, listened without interrupting.";
    const CHILDISH: &str =
        "The dog was happy. The dog was very very happy! The dog ate cake. The dog was happy. Yay! The end.";

    #[test]
    fn statistics_on_known_text() {
        assert_eq!(syllables("cake"), 1);
        assert_eq!(syllables("archivist"), 3);
        let s = stats("The cat sat. The cat sat.");
        assert_eq!(s.words, 6);
        assert!((s.repetition - 0.25).abs() < 1e-12, "{}", s.repetition); // trigrams: 4, unique 3
        assert!(s.complete);
    }

    #[test]
    fn prefers_the_mature_story_in_either_order() {
        let j = RulesJudge;
        let v = j.judge("", MATURE, CHILDISH).unwrap();
        let w = j.judge("", CHILDISH, MATURE).unwrap();
        assert!(v.score_1 >= v.score_2 + 3.0, "{v:?}");
        assert_eq!((v.score_1, v.score_2), (w.score_2, w.score_1), "no position bias");
        assert!(j.judge("", "", MATURE).unwrap_err().to_string().contains("story 1 is empty"));
    }
}
