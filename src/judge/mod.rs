//! Judging story pairs the paper's way: every pair twice with the order flipped,
//! kept only when both verdicts agree on a clear winner (section 6).

pub mod filter;
pub mod openai;
pub mod rules;

use serde::{Deserialize, Serialize};

/// One verdict on (story 1, story 2): a 0–10 score each, and the judge's written
/// assessment when it gives one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// Score of the story shown first.
    pub score_1: f64,
    /// Score of the story shown second.
    pub score_2: f64,
    /// Free-text assessment, if any.
    pub assessment: Option<String>,
}

/// A judge of two stories written for a prompt.
pub trait Judge {
    /// A stable name (cache keys, reports).
    fn name(&self) -> String;
    /// Scores the two stories, in the order shown. An error is recorded as a failed
    /// verdict, never replaced by a guess.
    fn judge(&self, prompt: &str, story_1: &str, story_2: &str) -> anyhow::Result<Verdict>;
}
