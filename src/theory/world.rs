//! The paper's tabular setting: one context, finitely many responses with
//! Bradley–Terry rewards, and a distribution over ordered preference pairs.

use crate::scalar::sigmoid;
use rand::Rng;

/// A distribution `D(i ≻ j)` over ordered pairs (winner `i`, loser `j`) of `n`
/// responses. Entries sum to 1; the diagonal is 0.
#[derive(Debug, Clone, PartialEq)]
pub struct PairDistribution {
    d: Vec<Vec<f64>>,
}

impl PairDistribution {
    /// The BT-consistent distribution with unordered-pair masses `mass[i][j]`
    /// (symmetric, positive off the diagonal; normalised here): `D(i ≻ j) =
    /// mass_ij · σ(r_i − r_j)`, so `D(i≻j)/D(j≻i) = exp(r_i − r_j)` and the support is full.
    pub fn bradley_terry(rewards: &[f64], mass: &[Vec<f64>]) -> Self {
        let n = rewards.len();
        let mut d = vec![vec![0.0; n]; n];
        for i in 0..n {
            for j in 0..n {
                if i != j {
                    d[i][j] = mass[i][j] * sigmoid(rewards[i] - rewards[j]);
                }
            }
        }
        Self::normalised(d)
    }

    /// Empirical distribution of sampled `(winner, loser)` pairs.
    pub fn empirical(n: usize, pairs: &[(usize, usize)]) -> Self {
        let mut d = vec![vec![0.0; n]; n];
        for &(w, l) in pairs {
            d[w][l] += 1.0;
        }
        Self::normalised(d)
    }

    fn normalised(mut d: Vec<Vec<f64>>) -> Self {
        let z: f64 = d.iter().flatten().sum();
        d.iter_mut().flatten().for_each(|x| *x /= z);
        Self { d }
    }

    /// Number of responses.
    pub fn len(&self) -> usize {
        self.d.len()
    }

    /// Whether there are no responses.
    pub fn is_empty(&self) -> bool {
        self.d.is_empty()
    }

    /// `D(i ≻ j)`.
    pub fn prob(&self, winner: usize, loser: usize) -> f64 {
        self.d[winner][loser]
    }

    /// Every ordered pair with positive probability, as `(winner, loser, D)`.
    pub fn support(&self) -> impl Iterator<Item = (usize, usize, f64)> + '_ {
        let n = self.len();
        (0..n)
            .flat_map(move |i| (0..n).map(move |j| (i, j)))
            .map(|(i, j)| (i, j, self.d[i][j]))
            .filter(|&(_, _, p)| p > 0.0)
    }
}

/// Uniform mass over unordered pairs (the default `D`).
pub fn uniform_pair_mass(n: usize) -> Vec<Vec<f64>> {
    (0..n).map(|i| (0..n).map(|j| if i == j { 0.0 } else { 1.0 }).collect()).collect()
}

/// A symmetric pair-mass matrix from its strict upper triangle, row by row:
/// (0,1), (0,2), …, (1,2), … — `n(n−1)/2` values.
pub fn symmetric_from_upper(n: usize, upper: impl IntoIterator<Item = f64>) -> Vec<Vec<f64>> {
    let mut m = vec![vec![0.0; n]; n];
    let cells = (0..n).flat_map(|i| (i + 1..n).map(move |j| (i, j)));
    for ((i, j), v) in cells.zip(upper) {
        m[i][j] = v;
        m[j][i] = v;
    }
    m
}

/// A random symmetric positive pair mass with entries spread over two orders of
/// magnitude, for showing that Theorem 2's fixed point does not depend on `D`.
pub fn random_pair_mass(n: usize, rng: &mut impl Rng) -> Vec<Vec<f64>> {
    let upper: Vec<f64> = (0..n * (n - 1) / 2).map(|_| 10f64.powf(rng.gen_range(-1.0..1.0))).collect();
    symmetric_from_upper(n, upper)
}

/// Draws `count` labelled pairs from a BT expert: an unordered pair uniformly, then
/// the winner with probability `σ(r_i − r_j)`. Returns `(winner, loser)`.
pub fn sample_bt_pairs(rewards: &[f64], count: usize, rng: &mut impl Rng) -> Vec<(usize, usize)> {
    let n = rewards.len();
    (0..count)
        .map(|_| {
            let i = rng.gen_range(0..n);
            let mut j = rng.gen_range(0..n - 1);
            if j >= i {
                j += 1;
            }
            if rng.gen::<f64>() < sigmoid(rewards[i] - rewards[j]) {
                (i, j)
            } else {
                (j, i)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn bradley_terry_ratio_and_normalisation() {
        let r = [1.0, -0.5, 2.0];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let d = PairDistribution::bradley_terry(&r, &random_pair_mass(3, &mut rng));
        let total: f64 = d.support().map(|(_, _, p)| p).sum();
        assert!((total - 1.0).abs() < 1e-12);
        for i in 0..3 {
            for j in 0..3 {
                if i != j {
                    let ratio = d.prob(i, j) / d.prob(j, i);
                    assert!((ratio - (r[i] - r[j]).exp()).abs() < 1e-12);
                }
            }
        }
    }

    #[test]
    fn sampled_pairs_follow_the_bt_probability() {
        let r = [1.0, 0.0];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let pairs = sample_bt_pairs(&r, 200_000, &mut rng);
        let wins = pairs.iter().filter(|p| p.0 == 0).count() as f64 / pairs.len() as f64;
        assert!((wins - sigmoid(1.0)).abs() < 0.005, "{wins}");
    }
}
