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

/// Two stories for one prompt, to be judged in both orders.
#[derive(Debug, Clone)]
pub struct Match {
    /// The prompt both stories answer.
    pub prompt: String,
    /// One story.
    pub a: String,
    /// The other story.
    pub b: String,
}

/// Judges every match twice — as (a, b) and as (b, a) — on `workers` threads.
/// `each(i, verdict_ab, verdict_ba)` runs on the calling thread as results arrive
/// (in any order); its error stops the rest.
pub fn judge_both_orders(
    judge: &(dyn Judge + Sync),
    matches: &[Match],
    workers: usize,
    mut each: impl FnMut(usize, anyhow::Result<Verdict>, anyhow::Result<Verdict>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    type Done = (usize, anyhow::Result<Verdict>, anyhow::Result<Verdict>);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let (tx, rx) = std::sync::mpsc::channel::<Done>();
    std::thread::scope(|scope| {
        for _ in 0..workers.max(1).min(matches.len().max(1)) {
            let tx = tx.clone();
            let next = &next;
            scope.spawn(move || loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Some(m) = matches.get(i) else { break };
                let ab = judge.judge(&m.prompt, &m.a, &m.b);
                let ba = judge.judge(&m.prompt, &m.b, &m.a);
                if tx.send((i, ab, ba)).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        for (i, ab, ba) in rx.iter() {
            if let Err(e) = each(i, ab, ba) {
                // the workers finish their current match and find no next one
                next.store(usize::MAX / 2, std::sync::atomic::Ordering::SeqCst);
                return Err(e);
            }
        }
        Ok(())
    })
}
