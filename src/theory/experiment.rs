//! One run of every tabular demonstration: Theorem 1, Theorem 2, the SPO/DPO
//! contrast of section 5, and the finite-sample mode.

use super::finite::{finite_sample, FiniteRow, SgdOptions};
use super::objective::Objective;
use super::solve::{gradient_descent_path, solve, SolveOptions};
use super::world::{random_pair_mass, uniform_pair_mass, PairDistribution};
use crate::loss::Weighting;
use crate::scalar::{entropy, kl, max_abs_diff, softmax};
use rand::SeedableRng;
use serde::Serialize;

/// Everything a run needs. Validation of user input happens in the CLI.
#[derive(Debug, Clone)]
pub struct TheoryConfig {
    /// BT rewards `r`, one per response.
    pub rewards: Vec<f64>,
    /// SPO temperatures α ≥ 0.
    pub alphas: Vec<f64>,
    /// DPO temperatures β > 0 (also the KL weights of SPO + β·KL); may be empty.
    pub betas: Vec<f64>,
    /// `π_ref`; uniform when `None`.
    pub reference: Option<Vec<f64>>,
    /// γ of SoftImportance for the Theorem 2 runs.
    pub gamma: f64,
    /// Unordered-pair masses of the non-uniform `D` for Theorem 2; random (seeded)
    /// when `None`.
    pub pair_mass: Option<Vec<Vec<f64>>>,
    /// Seed of the random `D` and of the finite-sample draws.
    pub seed: u64,
    /// α of the finite-sample mode.
    pub finite_alpha: f64,
    /// Sample sizes N of the finite-sample mode (empty: skip it).
    pub finite_sizes: Vec<usize>,
    /// SGD settings of the finite-sample mode.
    pub sgd: SgdOptions,
}

impl Default for TheoryConfig {
    fn default() -> Self {
        Self {
            rewards: vec![1.0, 0.5, 0.0, -0.5, -1.0, 2.0],
            alphas: vec![0.1, 0.5, 1.0, 2.0],
            betas: vec![0.1, 1.0],
            reference: None,
            gamma: 1.0,
            pair_mass: None,
            seed: 0,
            finite_alpha: 1.0,
            finite_sizes: vec![100, 1_000, 10_000, 100_000],
            sgd: SgdOptions::default(),
        }
    }
}

/// Theorem 1: SPO's preference loss with uniform μ and uniform D.
#[derive(Debug, Clone, Serialize)]
pub struct SpoRow {
    /// α.
    pub alpha: f64,
    /// Fixed point reached.
    pub pi: Vec<f64>,
    /// `softmax(r/α)`, or the argmax (uniform over ties) for α = 0.
    pub target: Vec<f64>,
    /// `max_i |π_i − target_i|`.
    pub max_abs_err: f64,
    /// Optimiser iterations.
    pub iterations: usize,
    /// Final `‖∇_θ L‖₂` (for α = 0 the gradient never vanishes).
    pub grad_norm: f64,
    /// Whether the stopping rule was met.
    pub converged: bool,
    /// Iterations of plain gradient descent to within 1e-6 (see [`WeightedRow::gd_iterations`]).
    pub gd_iterations: Option<usize>,
    /// Entropy of `pi` in nats.
    pub entropy: f64,
}

/// Theorem 2: the same fixed point with another μ and/or another D.
#[derive(Debug, Clone, Serialize)]
pub struct WeightedRow {
    /// α.
    pub alpha: f64,
    /// `"uniform"` or `"soft-importance"`.
    pub weighting: String,
    /// `"uniform"` or `"non-uniform"`.
    pub pair_distribution: String,
    /// Fixed point reached.
    pub pi: Vec<f64>,
    /// `softmax(r/α)` (argmax for α = 0).
    pub target: Vec<f64>,
    /// `max_i |π_i − target_i|`.
    pub max_abs_err: f64,
    /// Optimiser iterations.
    pub iterations: usize,
    /// Iterations plain gradient descent (step 1/L) needs to come within 1e-6 of
    /// the target: the path a small-step trainer follows (`null` past 200 000 or for α = 0).
    pub gd_iterations: Option<usize>,
    /// How far this run's gradient-descent path strays from Theorem 1's: the largest
    /// `max_i |π_i^{(k)} − π_i^{(k), Thm 1}|` over iterations k (`null` when either
    /// path is not available).
    pub path_gap: Option<f64>,
}

/// DPO's fixed point `π_ref·exp(r/β)/Z` (section 5).
#[derive(Debug, Clone, Serialize)]
pub struct DpoRow {
    /// β.
    pub beta: f64,
    /// Fixed point reached.
    pub pi: Vec<f64>,
    /// `π_ref·exp(r/β)/Z`.
    pub target: Vec<f64>,
    /// `max_i |π_i − target_i|`.
    pub max_abs_err: f64,
    /// Optimiser iterations.
    pub iterations: usize,
    /// Entropy of `pi` in nats.
    pub entropy: f64,
}

/// SPO's preference loss plus β·KL(π ‖ π_ref): the fixed point moves toward π_ref.
#[derive(Debug, Clone, Serialize)]
pub struct SpoKlRow {
    /// α.
    pub alpha: f64,
    /// β.
    pub beta: f64,
    /// Fixed point reached.
    pub pi: Vec<f64>,
    /// Entropy of `pi` in nats.
    pub entropy: f64,
    /// `KL(π ‖ π_ref)` at the fixed point.
    pub kl_to_ref: f64,
    /// `KL(softmax(r/α) ‖ π_ref)`: the pure preference fixed point's distance, for comparison.
    pub kl_pref_only: f64,
    /// Optimiser iterations.
    pub iterations: usize,
    /// Final `‖∇_θ L‖₂`.
    pub grad_norm: f64,
}

/// A gradient-descent path for the plot: `max_i |π_i − target_i|` per iteration.
#[derive(Debug, Clone)]
pub struct Curve {
    /// Legend label.
    pub label: String,
    /// Distance to the target after each iteration.
    pub errors: Vec<f64>,
}

/// The whole run, serialised as `spo theory --json`.
#[derive(Debug, Clone, Serialize)]
pub struct TheoryReport {
    /// Rewards used.
    pub rewards: Vec<f64>,
    /// `π_ref` used.
    pub reference: Vec<f64>,
    /// Entropy of `π_ref`.
    pub reference_entropy: f64,
    /// SoftImportance γ of the Theorem 2 runs.
    pub gamma: f64,
    /// Theorem 1.
    pub spo: Vec<SpoRow>,
    /// Theorem 2.
    pub spo_weighted: Vec<WeightedRow>,
    /// DPO baseline.
    pub dpo: Vec<DpoRow>,
    /// SPO + β·KL.
    pub spo_kl: Vec<SpoKlRow>,
    /// α of the finite-sample rows.
    pub finite_alpha: f64,
    /// Finite-sample mode.
    pub finite: Vec<FiniteRow>,
    /// Gradient-descent paths (plot only).
    #[serde(skip)]
    pub curves: Vec<Curve>,
}

/// Iteration cap of the gradient-descent paths.
const GD_CAP: usize = 200_000;

/// Target of SPO at temperature α: `softmax(r/α)`, or the argmax (uniform over ties) at 0.
pub fn spo_target(rewards: &[f64], alpha: f64) -> Vec<f64> {
    if alpha > 0.0 {
        return softmax(&rewards.iter().map(|r| r / alpha).collect::<Vec<_>>());
    }
    let best = rewards.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let ties = rewards.iter().filter(|&&r| r == best).count() as f64;
    rewards.iter().map(|&r| if r == best { 1.0 / ties } else { 0.0 }).collect()
}

/// DPO's fixed point `π_ref·exp(r/β)/Z`.
pub fn dpo_target(rewards: &[f64], reference: &[f64], beta: f64) -> Vec<f64> {
    softmax(&rewards.iter().zip(reference).map(|(r, p)| p.ln() + r / beta).collect::<Vec<_>>())
}

fn path_gap(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    let at = |p: &'_ [Vec<f64>], k: usize| p[k.min(p.len() - 1)].clone();
    (0..a.len().max(b.len())).map(|k| max_abs_diff(&at(a, k), &at(b, k))).fold(0.0, f64::max)
}

/// Runs every demonstration.
pub fn run(cfg: &TheoryConfig) -> TheoryReport {
    let n = cfg.rewards.len();
    let r = &cfg.rewards;
    let reference = cfg.reference.clone().unwrap_or_else(|| vec![1.0 / n as f64; n]);
    let uniform_d = PairDistribution::bradley_terry(r, &uniform_pair_mass(n));
    let mass = cfg
        .pair_mass
        .clone()
        .unwrap_or_else(|| random_pair_mass(n, &mut rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed)));
    let other_d = PairDistribution::bradley_terry(r, &mass);
    let start = vec![0.0; n];
    let opts = SolveOptions::default();
    let spo = |alpha, weighting, kl| Objective::Spo { alpha, weighting, kl };
    let si = Weighting::SoftImportance { gamma: cfg.gamma };

    let mut curves = Vec::new();
    // Theorem 2's paths are drawn for one α: the one closest to 1.
    let curve_alpha = cfg
        .alphas
        .iter()
        .cloned()
        .filter(|a| *a > 0.0)
        .min_by(|a, b| (a.ln().abs()).total_cmp(&b.ln().abs()))
        .unwrap_or(1.0);
    let errors = |path: &[Vec<f64>], target: &[f64]| path.iter().map(|p| max_abs_diff(p, target)).collect::<Vec<_>>();
    let mut rows = Vec::new();
    let mut weighted = Vec::new();
    for &alpha in &cfg.alphas {
        let target = spo_target(r, alpha);
        let base_obj = spo(alpha, Weighting::Uniform, None);
        let base = solve(&base_obj, &uniform_d, &start, opts);
        let base_gd = gradient_descent_path(&base_obj, &uniform_d, &start, &target, 1e-6, GD_CAP);
        if let Some(path) = &base_gd {
            curves.push(Curve { label: format!("α={alpha}, μ uniform, D uniform"), errors: errors(path, &target) });
        }
        for (weighting, wname, d, dname) in [
            (si, "soft-importance", &uniform_d, "uniform"),
            (Weighting::Uniform, "uniform", &other_d, "non-uniform"),
            (si, "soft-importance", &other_d, "non-uniform"),
        ] {
            let obj = spo(alpha, weighting, None);
            let sol = solve(&obj, d, &start, opts);
            let gd = gradient_descent_path(&obj, d, &start, &target, 1e-6, GD_CAP);
            if let (Some(path), true) = (&gd, alpha == curve_alpha) {
                curves
                    .push(Curve { label: format!("α={alpha}, μ {wname}, D {dname}"), errors: errors(path, &target) });
            }
            weighted.push(WeightedRow {
                alpha,
                weighting: wname.into(),
                pair_distribution: dname.into(),
                max_abs_err: max_abs_diff(&sol.pi, &target),
                iterations: sol.iterations,
                gd_iterations: gd.as_ref().map(|p| p.len() - 1),
                path_gap: gd.as_ref().zip(base_gd.as_ref()).map(|(a, b)| path_gap(a, b)),
                pi: sol.pi,
                target: target.clone(),
            });
        }
        rows.push(SpoRow {
            alpha,
            max_abs_err: max_abs_diff(&base.pi, &target),
            iterations: base.iterations,
            grad_norm: base.grad_norm,
            converged: base.converged,
            gd_iterations: base_gd.as_ref().map(|p| p.len() - 1),
            entropy: entropy(&base.pi),
            pi: base.pi,
            target,
        });
    }

    let mut dpo = Vec::new();
    let mut spo_kl = Vec::new();
    for &beta in &cfg.betas {
        let target = dpo_target(r, &reference, beta);
        let sol = solve(&Objective::Dpo { beta, reference: reference.clone() }, &uniform_d, &start, opts);
        dpo.push(DpoRow {
            beta,
            max_abs_err: max_abs_diff(&sol.pi, &target),
            iterations: sol.iterations,
            entropy: entropy(&sol.pi),
            pi: sol.pi,
            target,
        });
        for &alpha in cfg.alphas.iter() {
            let sol = solve(&spo(alpha, Weighting::Uniform, Some((beta, reference.clone()))), &uniform_d, &start, opts);
            spo_kl.push(SpoKlRow {
                alpha,
                beta,
                entropy: entropy(&sol.pi),
                kl_to_ref: kl(&sol.pi, &reference),
                kl_pref_only: kl(&spo_target(r, alpha), &reference),
                iterations: sol.iterations,
                grad_norm: sol.grad_norm,
                pi: sol.pi,
            });
        }
    }

    let finite = if cfg.finite_alpha > 0.0 && !cfg.finite_sizes.is_empty() {
        finite_sample(r, cfg.finite_alpha, &cfg.finite_sizes, cfg.seed, cfg.sgd)
    } else {
        Vec::new()
    };

    TheoryReport {
        rewards: r.clone(),
        reference_entropy: entropy(&reference),
        reference,
        gamma: cfg.gamma,
        spo: rows,
        spo_weighted: weighted,
        dpo,
        spo_kl,
        finite_alpha: cfg.finite_alpha,
        finite,
        curves,
    }
}
