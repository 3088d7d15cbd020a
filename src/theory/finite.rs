//! Finite-sample mode: N labelled pairs from the BT expert, minibatch SGD on the
//! empirical SPO loss, and the distance to `softmax(r/α)` as N grows.

use super::objective::Objective;
use super::solve::{solve, SolveOptions};
use super::world::{sample_bt_pairs, PairDistribution};
use crate::loss::Weighting;
use crate::scalar::{max_abs_diff, sigmoid, softmax};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// SGD settings.
#[derive(Debug, Clone, Copy)]
pub struct SgdOptions {
    /// Minibatch size.
    pub batch: usize,
    /// Number of minibatch steps; iterates of the second half are averaged.
    pub steps: usize,
    /// Independent datasets drawn per sample size; errors are averaged over them.
    pub repeats: usize,
}

impl Default for SgdOptions {
    fn default() -> Self {
        Self { batch: 64, steps: 20_000, repeats: 5 }
    }
}

/// Result for one sample size, averaged over the repeats.
#[derive(Debug, Clone, Serialize)]
pub struct FiniteRow {
    /// Number of labelled pairs.
    pub n: usize,
    /// Policy SGD reached on the first draw (tail-averaged logits).
    pub pi: Vec<f64>,
    /// Mean over draws of `max_i |π_SGD − softmax(r/α)|`.
    pub max_abs_err: f64,
    /// `max_abs_err · √N`: roughly constant when the error is statistical (∝ 1/√N).
    pub err_sqrt_n: f64,
    /// Mean error of the exact minimiser of the empirical loss over the draws where
    /// one exists (the statistical part of the error; the rest is SGD's).
    pub empirical_optimum_err: Option<f64>,
    /// Number of independent draws averaged.
    pub repeats: usize,
}

/// Runs the finite-sample experiment for each N in `sizes` (independent draws from
/// one seeded stream).
pub fn finite_sample(rewards: &[f64], alpha: f64, sizes: &[usize], seed: u64, opts: SgdOptions) -> Vec<FiniteRow> {
    let target = softmax(&rewards.iter().map(|r| r / alpha).collect::<Vec<_>>());
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let obj = Objective::Spo { alpha, weighting: Weighting::Uniform, kl: None };
    let exact_opts = SolveOptions { max_iter: 200, ..Default::default() };
    sizes
        .iter()
        .map(|&n| {
            let repeats = opts.repeats.max(1);
            let mut first_pi = None;
            let (mut sgd_err, mut opt_errs) = (0.0, Vec::new());
            for _ in 0..repeats {
                let pairs = sample_bt_pairs(rewards, n, &mut rng);
                let pi = sgd(rewards.len(), &pairs, alpha, opts, &mut rng);
                sgd_err += max_abs_diff(&pi, &target) / repeats as f64;
                let empirical = PairDistribution::empirical(rewards.len(), &pairs);
                let exact = solve(&obj, &empirical, &vec![0.0; rewards.len()], exact_opts);
                if exact.converged {
                    opt_errs.push(max_abs_diff(&exact.pi, &target));
                }
                first_pi.get_or_insert(pi);
            }
            FiniteRow {
                n,
                pi: first_pi.unwrap_or_default(),
                max_abs_err: sgd_err,
                err_sqrt_n: sgd_err * (n as f64).sqrt(),
                empirical_optimum_err: (!opt_errs.is_empty())
                    .then(|| opt_errs.iter().sum::<f64>() / opt_errs.len() as f64),
                repeats,
            }
        })
        .collect()
}

/// Minibatch SGD on `mean −(1/α)·log σ(α·Δ)` over the sampled pairs, with
/// tail (Polyak) averaging. The step size 1/α makes the step in `αΔ` O(1).
fn sgd(n: usize, pairs: &[(usize, usize)], alpha: f64, opts: SgdOptions, rng: &mut impl Rng) -> Vec<f64> {
    let lr = 1.0 / alpha;
    let mut theta = vec![0.0; n];
    let mut avg = vec![0.0; n];
    let tail_start = opts.steps / 2;
    for step in 0..opts.steps {
        let mut g = vec![0.0; n];
        for _ in 0..opts.batch {
            let (w, l) = pairs[rng.gen_range(0..pairs.len())];
            // eq. 10: −∇ = σ(−αΔ)(∇logπ_w − ∇logπ_l); the softmax normaliser cancels in Δ.
            let weight = sigmoid(-alpha * (theta[w] - theta[l])) / opts.batch as f64;
            g[w] -= weight;
            g[l] += weight;
        }
        theta.iter_mut().zip(&g).for_each(|(t, g)| *t -= lr * g);
        if step >= tail_start {
            avg.iter_mut().zip(&theta).for_each(|(a, t)| *a += t / (opts.steps - tail_start) as f64);
        }
    }
    softmax(&avg)
}
