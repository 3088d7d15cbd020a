//! The paper's consistency filter and the judging report.

use super::Verdict;
use serde::Serialize;

/// Thresholds of the filter (the paper's: 2, and 3 when the story shown second wins,
/// because the judge favours story 2).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FilterRule {
    /// Minimum score gap when the winner was shown first.
    pub min_gap: f64,
    /// Minimum score gap when the winner was shown second.
    pub min_gap_second: f64,
}

impl Default for FilterRule {
    fn default() -> Self {
        Self { min_gap: 2.0, min_gap_second: 3.0 }
    }
}

/// Why a pair was kept or dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Both verdicts prefer A (the pair's first response) with a clear gap.
    KeepA,
    /// Both verdicts prefer B with a clear gap.
    KeepB,
    /// A verdict scored both stories equally.
    Tie,
    /// The two verdicts prefer different stories.
    Disagree,
    /// They agree, but a gap is below its threshold.
    SmallGap,
    /// A verdict could not be obtained.
    Failed,
}

/// Applies the rule to verdict `ab` (A shown first, B second) and `ba` (flipped).
pub fn decide(ab: &Verdict, ba: &Verdict, rule: FilterRule) -> Decision {
    // A's and B's scores in each verdict
    let (a1, b1) = (ab.score_1, ab.score_2);
    let (b2, a2) = (ba.score_1, ba.score_2);
    if a1 == b1 || a2 == b2 {
        return Decision::Tie;
    }
    let (a_wins_1, a_wins_2) = (a1 > b1, a2 > b2);
    if a_wins_1 != a_wins_2 {
        return Decision::Disagree;
    }
    // In `ab` the winner is shown first iff A wins; in `ba` iff B wins.
    let need = |shown_second: bool| if shown_second { rule.min_gap_second } else { rule.min_gap };
    let ok_1 = (a1 - b1).abs() >= need(!a_wins_1);
    let ok_2 = (a2 - b2).abs() >= need(a_wins_2);
    match (ok_1 && ok_2, a_wins_1) {
        (false, _) => Decision::SmallGap,
        (true, true) => Decision::KeepA,
        (true, false) => Decision::KeepB,
    }
}

/// Counts for the report.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    /// Pairs judged (both orders attempted).
    pub judged: usize,
    /// Pairs kept.
    pub kept: usize,
    /// Dropped: a tie in either verdict.
    pub dropped_tie: usize,
    /// Dropped: the verdicts disagree on the winner.
    pub dropped_disagree: usize,
    /// Dropped: a gap below its threshold.
    pub dropped_small_gap: usize,
    /// Dropped: a verdict failed (error, unparseable answer).
    pub dropped_failed: usize,
    /// Mean of (score of story 2 − score of story 1) over all verdicts: 0 for a judge
    /// without position bias, since every pair is shown in both orders.
    pub position_bias: f64,
    /// Fraction of untied verdicts won by the story shown second (0.5 without bias;
    /// also 0.5 when there is no untied verdict, see `untied_verdicts`).
    pub second_wins: f64,
    /// Verdicts with different scores, the base of `second_wins`.
    pub untied_verdicts: usize,
}

impl Report {
    /// Builds the report from every pair's verdicts and decision.
    pub fn from_decisions<'a>(
        items: impl IntoIterator<Item = (Option<&'a Verdict>, Option<&'a Verdict>, Decision)>,
    ) -> Self {
        let mut r = Report::default();
        let (mut diff, mut n, mut second, mut untied) = (0.0, 0usize, 0usize, 0usize);
        for (ab, ba, d) in items {
            r.judged += 1;
            match d {
                Decision::KeepA | Decision::KeepB => r.kept += 1,
                Decision::Tie => r.dropped_tie += 1,
                Decision::Disagree => r.dropped_disagree += 1,
                Decision::SmallGap => r.dropped_small_gap += 1,
                Decision::Failed => r.dropped_failed += 1,
            }
            for v in [ab, ba].into_iter().flatten() {
                diff += v.score_2 - v.score_1;
                n += 1;
                if v.score_1 != v.score_2 {
                    untied += 1;
                    second += usize::from(v.score_2 > v.score_1);
                }
            }
        }
        r.position_bias = if n > 0 { diff / n as f64 } else { 0.0 };
        r.second_wins = if untied > 0 { second as f64 / untied as f64 } else { 0.5 };
        r.untied_verdicts = untied;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s1: f64, s2: f64) -> Verdict {
        Verdict { score_1: s1, score_2: s2, assessment: None }
    }

    #[test]
    fn the_papers_rule_on_hand_made_verdicts() {
        let rule = FilterRule::default();
        // A first: 8 vs 5 (gap 3, winner shown first needs 2); flipped: B 4 vs A 7 (A shown second, gap 3 ≥ 3)
        assert_eq!(decide(&v(8.0, 5.0), &v(4.0, 7.0), rule), Decision::KeepA);
        // flipped gap only 2 while the winner is shown second: dropped
        assert_eq!(decide(&v(8.0, 5.0), &v(5.0, 7.0), rule), Decision::SmallGap);
        // B wins both: shown second in `ab` (gap 3 needed), first in `ba` (gap 2 needed)
        assert_eq!(decide(&v(3.0, 6.0), &v(6.0, 4.0), rule), Decision::KeepB);
        assert_eq!(decide(&v(4.0, 6.0), &v(6.0, 4.0), rule), Decision::SmallGap);
        // disagreement and ties
        assert_eq!(decide(&v(8.0, 5.0), &v(8.0, 5.0), rule), Decision::Disagree);
        assert_eq!(decide(&v(6.0, 6.0), &v(2.0, 9.0), rule), Decision::Tie);
        assert_eq!(decide(&v(9.0, 2.0), &v(5.0, 5.0), rule), Decision::Tie);
        // thresholds are flags
        let loose = FilterRule { min_gap: 1.0, min_gap_second: 1.0 };
        assert_eq!(decide(&v(8.0, 7.0), &v(6.0, 7.0), loose), Decision::KeepA);
    }

    #[test]
    fn report_counts_and_position_bias() {
        let (a, b, c, d) = (v(8.0, 5.0), v(4.0, 7.0), v(5.0, 6.0), v(5.0, 6.0));
        let r = Report::from_decisions([
            (Some(&a), Some(&b), Decision::KeepA),
            (Some(&c), Some(&d), Decision::Disagree),
            (None, None, Decision::Failed),
        ]);
        assert_eq!((r.judged, r.kept, r.dropped_disagree, r.dropped_failed), (3, 1, 1, 1));
        // s2 − s1: −3, +3, +1, +1 → mean 0.5; story 2 wins 3 of 4
        assert!((r.position_bias - 0.5).abs() < 1e-12);
        assert!((r.second_wins - 0.75).abs() < 1e-12);
    }
}
