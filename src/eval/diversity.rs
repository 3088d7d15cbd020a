//! Diversity of a sample set: distinct-n (Li et al., 2016), the share of word
//! n-grams that are unique across all samples.

use std::collections::HashSet;

/// Lower-cased words with surrounding punctuation removed.
fn words(text: &str) -> Vec<String> {
    text.split_whitespace()
        .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()).to_lowercase())
        .filter(|w| !w.is_empty())
        .collect()
}

/// Distinct word n-grams over all n-grams of all texts (n-grams never cross texts);
/// 0 when there are none.
pub fn distinct_n(texts: &[String], n: usize) -> f64 {
    let mut seen: HashSet<Vec<String>> = HashSet::new();
    let mut total = 0usize;
    for t in texts {
        let w = words(t);
        for gram in w.windows(n) {
            total += 1;
            seen.insert(gram.to_vec());
        }
    }
    if total == 0 {
        0.0
    } else {
        seen.len() as f64 / total as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_hand() {
        let texts = vec!["The cat sat. The cat ran!".to_string(), "a cat sat".to_string()];
        // words: the cat sat the cat ran | a cat sat → 9 unigrams, 5 distinct (the cat sat ran a)
        assert!((distinct_n(&texts, 1) - 5.0 / 9.0).abs() < 1e-12);
        // bigrams: the-cat cat-sat sat-the the-cat cat-ran | a-cat cat-sat → 7, distinct 5
        assert!((distinct_n(&texts, 2) - 5.0 / 7.0).abs() < 1e-12);
        assert_eq!(distinct_n(&["one".to_string()], 2), 0.0);
    }
}
