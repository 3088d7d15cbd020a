//! The paper's theorems, checked on arbitrary tabular worlds against their closed forms.

use rand::{Rng, SeedableRng};
use spo::loss::Weighting;
use spo::scalar::{kl, max_abs_diff, softmax};
use spo::theory::objective::Objective;
use spo::theory::solve::{solve, SolveOptions};
use spo::theory::world::{uniform_pair_mass, PairDistribution};
use spo::theory::{run, TheoryConfig};

fn random_config(rng: &mut impl Rng) -> TheoryConfig {
    let n = rng.gen_range(2..10);
    let rewards: Vec<f64> = (0..n).map(|_| rng.gen_range(-3.0..3.0)).collect();
    let raw: Vec<f64> = (0..n).map(|_| rng.gen_range(0.05..1.0)).collect();
    let z: f64 = raw.iter().sum();
    TheoryConfig {
        rewards,
        reference: Some(raw.iter().map(|x| x / z).collect()),
        seed: rng.gen(),
        gamma: rng.gen_range(0.0..3.0),
        finite_sizes: vec![],
        ..TheoryConfig::default()
    }
}

#[test]
fn theorem_1_2_and_dpo_fixed_points_on_random_worlds() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2024);
    for _ in 0..40 {
        let cfg = random_config(&mut rng);
        let report = run(&cfg);
        for row in &report.spo {
            assert!(
                row.max_abs_err <= 1e-6,
                "Theorem 1, r = {:?}, α = {}: {}",
                cfg.rewards,
                row.alpha,
                row.max_abs_err
            );
            assert!(row.converged && row.grad_norm < 1e-10);
        }
        for row in &report.spo_weighted {
            assert!(row.max_abs_err <= 1e-6, "Theorem 2, r = {:?}: {row:?}", cfg.rewards);
        }
        for row in &report.dpo {
            assert!(row.max_abs_err <= 1e-6, "DPO, r = {:?}, β = {}: {}", cfg.rewards, row.beta, row.max_abs_err);
        }
    }
}

#[test]
fn alpha_zero_goes_to_the_argmax() {
    let cfg = TheoryConfig { alphas: vec![0.0], betas: vec![], finite_sizes: vec![], ..TheoryConfig::default() };
    let report = run(&cfg);
    let row = &report.spo[0];
    assert!(row.converged);
    assert!(row.max_abs_err < 1e-8, "{row:?}");
    // the argmax of the default rewards is the last response (r = 2)
    assert!(row.pi[5] > 1.0 - 1e-8);
}

#[test]
fn dpo_collapses_as_beta_shrinks_and_spo_keeps_alphas_entropy() {
    let cfg = TheoryConfig { betas: vec![0.03, 0.1, 0.3, 1.0, 3.0], finite_sizes: vec![], ..TheoryConfig::default() };
    let report = run(&cfg);
    let h: Vec<f64> = report.dpo.iter().map(|r| r.entropy).collect();
    assert!(h.windows(2).all(|w| w[0] < w[1]), "DPO entropy must grow with β: {h:?}");
    assert!(h[0] < 1e-6);
    // SPO's preference fixed point is independent of π_ref: same target for any reference
    let other = run(&TheoryConfig { reference: Some(vec![0.5, 0.1, 0.1, 0.1, 0.1, 0.1]), ..cfg.clone() });
    for (a, b) in report.spo.iter().zip(&other.spo) {
        assert!(max_abs_diff(&a.pi, &b.pi) < 1e-9);
    }
    // ...while DPO's moves with it
    assert!(max_abs_diff(&report.dpo[3].pi, &other.dpo[3].pi) > 0.05);
}

#[test]
fn kl_regularised_fixed_point_is_stationary_and_moves_toward_the_reference() {
    let r = [1.0, 0.5, 0.0, -0.5, -1.0, 2.0];
    let reference = vec![0.3, 0.3, 0.1, 0.1, 0.1, 0.1];
    let d = PairDistribution::bradley_terry(&r, &uniform_pair_mass(6));
    let mut last_kl = f64::INFINITY;
    for beta in [0.01, 0.1, 1.0, 10.0] {
        let obj = Objective::Spo { alpha: 0.5, weighting: Weighting::Uniform, kl: Some((beta, reference.clone())) };
        let sol = solve(&obj, &d, &[0.0; 6], SolveOptions::default());
        assert!(sol.converged);
        // independent check of stationarity: central differences of the total loss
        // (preference loss written out directly from eq. 8, plus β·KL)
        let total = |theta: &[f64]| {
            let p = softmax(theta);
            let mut l = 0.0;
            for (i, j, w) in d.support() {
                let pa = p[i].powf(0.5);
                l += w * -(1.0 / 0.5) * (pa / (pa + p[j].powf(0.5))).ln();
            }
            l + beta * kl(&p, &reference)
        };
        for k in 0..6 {
            let (mut up, mut dn) = (sol.theta.clone(), sol.theta.clone());
            up[k] += 1e-5;
            dn[k] -= 1e-5;
            let fd = (total(&up) - total(&dn)) / 2e-5;
            assert!(fd.abs() < 1e-7, "β = {beta}: ∂L/∂θ_{k} = {fd}");
        }
        let k = kl(&sol.pi, &reference);
        assert!(k < last_kl, "KL to π_ref must shrink as β grows");
        last_kl = k;
    }
}

#[test]
fn finite_sample_error_shrinks_with_n() {
    let cfg = TheoryConfig {
        alphas: vec![1.0],
        betas: vec![],
        finite_sizes: vec![100, 10_000, 1_000_000],
        ..TheoryConfig::default()
    };
    let report = run(&cfg);
    let e: Vec<f64> = report.finite.iter().map(|r| r.max_abs_err).collect();
    assert!(e[0] > e[1] && e[1] > e[2], "{e:?}");
    assert!(e[2] < 5e-3);
}
