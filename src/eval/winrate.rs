//! Win rate against the reference from verdicts taken in both orders, with ties
//! counted half, and its 95% Wilson score interval.

use crate::judge::Verdict;
use serde::{Deserialize, Serialize};

/// z for a two-sided 95% interval.
const Z95: f64 = 1.959_963_984_540_054;

/// The tally of one model's matches against the reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WinRate {
    /// Matches with both verdicts (the interval's n).
    pub matches: usize,
    /// Verdicts (two per match) where the model's story scored higher.
    pub wins: usize,
    /// Verdicts with equal scores.
    pub ties: usize,
    /// Verdicts where the reference's story scored higher.
    pub losses: usize,
    /// Matches left out because a verdict failed.
    pub failed: usize,
    /// (wins + ties / 2) / verdicts: each match counts once, as the mean of its two orders.
    pub win_rate: f64,
    /// 95% Wilson score interval of the win rate over `matches`.
    pub ci: [f64; 2],
    /// Mean score the judge gave the model's stories.
    pub model_score: f64,
    /// Mean score the judge gave the reference's stories.
    pub reference_score: f64,
}

/// Tallies matches judged as `(model first, reference first)`; `None` is a failed verdict.
pub fn tally(verdicts: &[(Option<Verdict>, Option<Verdict>)]) -> WinRate {
    let (mut wins, mut ties, mut losses, mut failed) = (0, 0, 0, 0);
    let (mut model_score, mut reference_score) = (0.0, 0.0);
    for pair in verdicts {
        let (Some(mf), Some(rf)) = pair else {
            failed += 1;
            continue;
        };
        // (model's score, reference's score) in each order
        for (m, r) in [(mf.score_1, mf.score_2), (rf.score_2, rf.score_1)] {
            match m.partial_cmp(&r) {
                Some(std::cmp::Ordering::Greater) => wins += 1,
                Some(std::cmp::Ordering::Less) => losses += 1,
                _ => ties += 1,
            }
            model_score += m;
            reference_score += r;
        }
    }
    let matches = verdicts.len() - failed;
    let judged = (2 * matches).max(1) as f64;
    let win_rate = if matches == 0 { f64::NAN } else { (wins as f64 + 0.5 * ties as f64) / judged };
    WinRate {
        matches,
        wins,
        ties,
        losses,
        failed,
        win_rate,
        ci: wilson(win_rate, matches),
        model_score: model_score / judged,
        reference_score: reference_score / judged,
    }
}

/// 95% Wilson score interval for a proportion `p` observed over `n` trials
/// (`[0, 1]` when n = 0).
pub fn wilson(p: f64, n: usize) -> [f64; 2] {
    if n == 0 || !p.is_finite() {
        return [0.0, 1.0];
    }
    let n = n as f64;
    let z2 = Z95 * Z95;
    let denom = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denom;
    let half = Z95 / denom * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    [(centre - half).max(0.0), (centre + half).min(1.0)]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Published values: Newcombe (1998), "Two-sided confidence intervals for the
    /// single proportion", Statistics in Medicine 17, Table I, method 3 (Wilson score
    /// without continuity correction); also statsmodels' proportion_confint(method="wilson").
    #[test]
    fn wilson_matches_published_intervals() {
        for (x, n, lo, hi) in
            [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)]
        {
            let [a, b] = wilson(x as f64 / n as f64, n);
            assert!((a - lo).abs() < 6e-5 && (b - hi).abs() < 6e-5, "{x}/{n}: [{a:.4}, {b:.4}] vs [{lo}, {hi}]");
        }
        assert_eq!(wilson(0.5, 0), [0.0, 1.0]);
    }

    /// The fixture's verdicts and its hand count sit side by side in one file.
    #[test]
    fn win_rate_equals_the_hand_count_of_the_fixture() {
        let text = include_str!("../../tests/fixtures/eval_verdicts.json");
        let fixture: serde_json::Value = serde_json::from_str(text).unwrap();
        let verdicts: Vec<(Option<Verdict>, Option<Verdict>)> =
            serde_json::from_value(fixture["matches"].clone()).unwrap();
        let got = tally(&verdicts);
        let hand = &fixture["hand_count"];
        let count = |k: &str| hand[k].as_u64().unwrap() as usize;
        assert_eq!(
            (got.matches, got.wins, got.ties, got.losses, got.failed),
            (count("matches"), count("wins"), count("ties"), count("losses"), count("failed"))
        );
        let f = |k: &str| hand[k].as_f64().unwrap();
        assert!((got.win_rate - f("win_rate")).abs() < 1e-12, "{} vs {}", got.win_rate, f("win_rate"));
        assert!((got.model_score - f("model_score")).abs() < 1e-12);
        assert!((got.reference_score - f("reference_score")).abs() < 1e-12);
        let ci = [f("ci_lo"), f("ci_hi")];
        assert!((got.ci[0] - ci[0]).abs() < 1e-4 && (got.ci[1] - ci[1]).abs() < 1e-4, "{:?} vs {ci:?}", got.ci);
    }
}
