//! Exact expected losses of a tabular policy `π = softmax(θ)` and their
//! derivatives in θ: the SPO preference loss (eq. 8, 9, 11), optionally plus β·KL
//! to a reference, and DPO (eq. 4). Per-pair formulas come from [`crate::scalar`],
//! the same ones the tensor losses use.

use super::world::PairDistribution;
use crate::loss::Weighting;
use crate::scalar::{log_add_exp, log_sigmoid, sigmoid};

/// What is minimised.
#[derive(Debug, Clone, PartialEq)]
pub enum Objective {
    /// `L_pref^{α,μ}` (+ `β·KL(π ‖ π_ref)` when `kl` is given as `(β, π_ref)`).
    Spo {
        /// α ≥ 0.
        alpha: f64,
        /// μ.
        weighting: Weighting,
        /// Optional `(β, π_ref)`.
        kl: Option<(f64, Vec<f64>)>,
    },
    /// DPO with temperature β and reference `π_ref`.
    Dpo {
        /// β > 0.
        beta: f64,
        /// `π_ref`, a full-support distribution.
        reference: Vec<f64>,
    },
}

/// Loss, gradient and Hessian at θ with μ frozen at its current value.
#[derive(Debug, Clone)]
pub struct Local {
    /// Expected loss.
    pub loss: f64,
    /// `∇_θ` (with μ under stop-gradient).
    pub grad: Vec<f64>,
    /// `∇²_θ` (with μ frozen).
    pub hess: Vec<Vec<f64>>,
}

/// Per-pair loss `ℓ(Δ)` with its first two derivatives.
fn pair_terms(obj: &Objective, delta: f64) -> (f64, f64, f64) {
    match obj {
        Objective::Spo { alpha, .. } if *alpha == 0.0 => (-0.5 * delta, -0.5, 0.0),
        Objective::Spo { alpha: a, .. } => {
            let l = -log_sigmoid(a * delta) / a;
            (l, -sigmoid(-a * delta), a * sigmoid(a * delta) * sigmoid(-a * delta))
        }
        Objective::Dpo { beta: b, .. } => {
            let l = -log_sigmoid(b * delta);
            (l, -b * sigmoid(-b * delta), b * b * sigmoid(b * delta) * sigmoid(-b * delta))
        }
    }
}

impl Objective {
    /// The pair weights μ at θ (symmetric; uniform = 1). For SoftImportance the
    /// normaliser is the expectation of `γ·log(π_i + π_j)` under `D` — the exact
    /// counterpart of the batch mean.
    pub fn weights(&self, theta: &[f64], d: &PairDistribution) -> Vec<Vec<f64>> {
        let n = theta.len();
        let gamma = match self {
            Objective::Spo { weighting: Weighting::SoftImportance { gamma }, .. } => *gamma,
            _ => return vec![vec![1.0; n]; n],
        };
        let logp = log_softmax(theta);
        let s = |i: usize, j: usize| gamma * log_add_exp(logp[i], logp[j]);
        let normaliser: f64 = d.support().map(|(i, j, p)| p * s(i, j)).sum();
        (0..n).map(|i| (0..n).map(|j| if i == j { 0.0 } else { sigmoid(s(i, j) - normaliser) }).collect()).collect()
    }

    /// Loss, gradient and Hessian at θ with the given (frozen) weights.
    pub fn local(&self, theta: &[f64], d: &PairDistribution, mu: &[Vec<f64>]) -> Local {
        let n = theta.len();
        // DPO's implicit reward shifts θ by −log π_ref; the preference loss sees θ itself.
        let u: Vec<f64> = match self {
            Objective::Dpo { reference, .. } => theta.iter().zip(reference).map(|(t, r)| t - r.ln()).collect(),
            Objective::Spo { .. } => theta.to_vec(),
        };
        let mut loss = 0.0;
        let mut grad = vec![0.0; n];
        let mut hess = vec![vec![0.0; n]; n];
        for (i, j, p) in d.support() {
            let w = p * mu[i][j];
            let (l, dl, d2l) = pair_terms(self, u[i] - u[j]);
            loss += w * l;
            grad[i] += w * dl;
            grad[j] -= w * dl;
            hess[i][i] += w * d2l;
            hess[j][j] += w * d2l;
            hess[i][j] -= w * d2l;
            hess[j][i] -= w * d2l;
        }
        if let Objective::Spo { kl: Some((beta, reference)), .. } = self {
            add_kl(theta, *beta, reference, &mut loss, &mut grad, &mut hess);
        }
        Local { loss, grad, hess }
    }
}

/// Adds `β·KL(softmax(θ) ‖ ref)` and its exact derivatives:
/// with `a_k = log π_k − log ref_k`, `∂KL/∂θ_k = π_k (a_k − KL)` and
/// `∂²KL/∂θ_k∂θ_l = π_k(δ_kl − π_l)(a_k − KL + 1) − π_k·∂KL/∂θ_l`.
fn add_kl(theta: &[f64], beta: f64, reference: &[f64], loss: &mut f64, grad: &mut [f64], hess: &mut [Vec<f64>]) {
    let n = theta.len();
    let logp = log_softmax(theta);
    let pi: Vec<f64> = logp.iter().map(|l| l.exp()).collect();
    let a: Vec<f64> = (0..n).map(|k| logp[k] - reference[k].ln()).collect();
    let kl: f64 = (0..n).map(|k| pi[k] * a[k]).sum();
    let g: Vec<f64> = (0..n).map(|k| pi[k] * (a[k] - kl)).collect();
    *loss += beta * kl;
    for k in 0..n {
        grad[k] += beta * g[k];
        for l in 0..n {
            let delta = if k == l { 1.0 } else { 0.0 };
            hess[k][l] += beta * (pi[k] * (delta - pi[l]) * (a[k] - kl + 1.0) - pi[k] * g[l]);
        }
    }
}

/// `log softmax(θ)`.
pub fn log_softmax(theta: &[f64]) -> Vec<f64> {
    let m = theta.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = m + theta.iter().map(|t| (t - m).exp()).sum::<f64>().ln();
    theta.iter().map(|t| t - lse).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::theory::world::{random_pair_mass, uniform_pair_mass};
    use rand::SeedableRng;

    fn objectives() -> Vec<Objective> {
        let reference = vec![0.4, 0.1, 0.2, 0.3];
        vec![
            Objective::Spo { alpha: 0.7, weighting: Weighting::Uniform, kl: None },
            Objective::Spo { alpha: 0.0, weighting: Weighting::Uniform, kl: None },
            Objective::Spo { alpha: 2.0, weighting: Weighting::Uniform, kl: Some((0.3, reference.clone())) },
            Objective::Dpo { beta: 0.5, reference },
        ]
    }

    /// Gradient and Hessian against central differences of the loss (and of the gradient).
    #[test]
    fn derivatives_match_finite_differences() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let r = [0.5, -1.0, 2.0, 0.0];
        let d = PairDistribution::bradley_terry(&r, &random_pair_mass(4, &mut rng));
        let theta = [0.3, -0.2, 1.1, 0.05];
        let h = 1e-5;
        for obj in objectives() {
            let mu = obj.weights(&theta, &d);
            let at = obj.local(&theta, &d, &mu);
            for k in 0..4 {
                let (mut up, mut dn) = (theta.to_vec(), theta.to_vec());
                up[k] += h;
                dn[k] -= h;
                let (lu, ld) = (obj.local(&up, &d, &mu), obj.local(&dn, &d, &mu));
                let fd = (lu.loss - ld.loss) / (2.0 * h);
                assert!((fd - at.grad[k]).abs() < 1e-8, "{obj:?} grad[{k}]: {fd} vs {}", at.grad[k]);
                for l in 0..4 {
                    let fd2 = (lu.grad[l] - ld.grad[l]) / (2.0 * h);
                    assert!((fd2 - at.hess[l][k]).abs() < 1e-7, "{obj:?} hess[{l}][{k}]");
                }
            }
        }
    }

    #[test]
    fn matches_the_tensor_loss_library_on_enumerated_pairs() {
        use candle_core::{Device, Tensor};
        let r = [1.0, 0.0, -0.5];
        let d = PairDistribution::bradley_terry(&r, &uniform_pair_mass(3));
        let theta = [0.2, -0.4, 0.9];
        let logp = log_softmax(&theta);
        let weighting = Weighting::SoftImportance { gamma: 0.8 };
        let obj = Objective::Spo { alpha: 0.6, weighting, kl: None };
        let mu = obj.weights(&theta, &d);
        let expected = obj.local(&theta, &d, &mu).loss;
        let pairs: Vec<(usize, usize, f64)> = d.support().collect();
        let w = Tensor::new(pairs.iter().map(|p| logp[p.0]).collect::<Vec<_>>(), &Device::Cpu).unwrap();
        let l = Tensor::new(pairs.iter().map(|p| logp[p.1]).collect::<Vec<_>>(), &Device::Cpu).unwrap();
        // per-pair values from the library (batch of one each), weighted by D·μ
        let mut total = 0.0;
        for (k, (i, j, p)) in pairs.iter().enumerate() {
            let one = crate::loss::spo_preference_loss(
                &w.narrow(0, k, 1).unwrap(),
                &l.narrow(0, k, 1).unwrap(),
                0.6,
                Weighting::Uniform,
            )
            .unwrap();
            total += p * mu[*i][*j] * one.loss.to_scalar::<f64>().unwrap();
        }
        assert!((total - expected).abs() < 1e-12);
    }
}
