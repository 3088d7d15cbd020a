//! SPO's preference loss and its pair weights μ.

use super::ops::{log_add_exp, log_sigmoid, mean_f64, sigmoid};
use super::{LossOutput, LossStats};
use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

/// How each preference pair is weighted (paper eq. 11–12, Appendix B).
///
/// Whatever the weighting, μ is symmetric in the two responses and carries no
/// gradient; Theorem 2 says it changes the optimisation path, not the fixed point.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Weighting {
    /// `μ = 1`.
    Uniform,
    /// SoftImportance (eq. 24): `μ = σ(γ·log(π(y_1) + π(y_2)) − normaliser)` with the
    /// normaliser the batch mean of `γ·log(π(y_1) + π(y_2))`.
    SoftImportance {
        /// `γ ≥ 0`; 0 gives `μ = ½` for every pair.
        gamma: f64,
    },
}

/// The weights μ of a batch, shape `[B]`, detached from the graph (stop-gradient).
///
/// `logp_a`, `logp_b` are the sequence log-probs of the two responses of each pair;
/// the result does not depend on their order.
pub fn preference_weights(logp_a: &Tensor, logp_b: &Tensor, weighting: Weighting) -> Result<Tensor> {
    weights_in_batch(logp_a, logp_b, weighting, None)
}

/// SoftImportance's `γ·log(π(y_1) + π(y_2))` of each pair, detached.
fn soft_importance_scores(logp_a: &Tensor, logp_b: &Tensor, gamma: f64) -> Result<Tensor> {
    log_add_exp(&logp_a.detach(), &logp_b.detach())? * gamma
}

/// The normaliser of SoftImportance over a whole batch whose sequence log-probs are
/// given in parts (micro-batches): the mean of `γ·log(π(y_1) + π(y_2))` over every pair.
pub fn soft_importance_normaliser(parts: &[(Tensor, Tensor)], gamma: f64) -> Result<f64> {
    let (mut sum, mut n) = (0.0, 0usize);
    for (a, b) in parts {
        let s = soft_importance_scores(a, b, gamma)?;
        sum += s.to_dtype(candle_core::DType::F64)?.sum_all()?.to_scalar::<f64>()?;
        n += s.elem_count();
    }
    Ok(sum / n.max(1) as f64)
}

/// μ of part of a batch: with `normaliser` (from [`soft_importance_normaliser`] over
/// the whole batch), SoftImportance weighs a micro-batch exactly as it would inside
/// the whole batch; without it, the part is the batch.
fn weights_in_batch(logp_a: &Tensor, logp_b: &Tensor, weighting: Weighting, normaliser: Option<f64>) -> Result<Tensor> {
    match weighting {
        Weighting::Uniform => logp_a.detach().ones_like(),
        Weighting::SoftImportance { gamma } => {
            let s = soft_importance_scores(logp_a, logp_b, gamma)?;
            match normaliser {
                Some(n) => sigmoid(&(s - n)?),
                None => sigmoid(&s.broadcast_sub(&s.mean_all()?)?),
            }
        }
    }
}

/// SPO preference loss `L_pref^{α,μ}` (eq. 8, 9, 11) of a batch of pairs.
///
/// - `α > 0`: `mean_b( μ_b · −(1/α) · log σ(α·Δ_b) )` — the log-sigmoid form of eq. 8,
///   never exponentiating sequence probabilities.
/// - `α = 0`: `mean_b( μ_b · −Δ_b / 2 )` (eq. 9).
///
/// `Δ = logp_θ(y_w) − logp_θ(y_l)`. Its gradient is eq. 10:
/// `−∇L = mean_b( μ_b·σ(−αΔ_b)·(∇logp(y_w) − ∇logp(y_l)) )` (weight ½ when α = 0).
/// No reference model enters.
pub fn spo_preference_loss(
    logp_chosen: &Tensor,
    logp_rejected: &Tensor,
    alpha: f64,
    weighting: Weighting,
) -> Result<LossOutput> {
    spo_preference_loss_in_batch(logp_chosen, logp_rejected, alpha, weighting, None)
}

/// [`spo_preference_loss`] of a micro-batch of a larger batch: μ's normaliser is the
/// whole batch's when given (see [`soft_importance_normaliser`]), so splitting a
/// batch into micro-batches (a memory setting) does not change the optimisation.
pub fn spo_preference_loss_in_batch(
    logp_chosen: &Tensor,
    logp_rejected: &Tensor,
    alpha: f64,
    weighting: Weighting,
    normaliser: Option<f64>,
) -> Result<LossOutput> {
    if !(alpha >= 0.0 && alpha.is_finite()) {
        candle_core::bail!("SPO needs a finite α ≥ 0, got {alpha}");
    }
    let delta = (logp_chosen - logp_rejected)?;
    let per_pair = if alpha > 0.0 { (log_sigmoid(&(&delta * alpha)?)? * (-1.0 / alpha))? } else { (&delta * -0.5)? };
    let mu = weights_in_batch(logp_chosen, logp_rejected, weighting, normaliser)?;
    let loss = (per_pair * &mu)?.mean_all()?;
    let stats = LossStats {
        mean_delta: mean_f64(&delta)?,
        accuracy: mean_f64(&delta.gt(0.0)?.to_dtype(delta.dtype())?)?,
        mean_mu: mean_f64(&mu)?,
        reward_chosen: None,
        reward_rejected: None,
    };
    Ok(LossOutput { loss, stats })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scalar;
    use candle_core::{DType, Device, Var};

    fn t(v: &[f64]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    fn scalar_of(x: &Tensor) -> f64 {
        x.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
    }

    #[test]
    fn closed_forms_by_hand() {
        // α = 1, Δ = ln 3: −log(3/4) = log(4/3).
        let out = spo_preference_loss(&t(&[3f64.ln()]), &t(&[0.0]), 1.0, Weighting::Uniform).unwrap();
        assert!((scalar_of(&out.loss) - (4.0f64 / 3.0).ln()).abs() < 1e-12);
        // α = ½, logp_w = −1, logp_l = −3 → Δ = 2, αΔ = 1: loss = 2·log(1 + e^{−1}).
        let out = spo_preference_loss(&t(&[-1.0]), &t(&[-3.0]), 0.5, Weighting::Uniform).unwrap();
        assert!((scalar_of(&out.loss) - 2.0 * (1.0 + (-1.0f64).exp()).ln()).abs() < 1e-12);
        // α = 0: −Δ/2 averaged: pairs Δ = 2 and Δ = −4 → −(2 − 4)/4 = 0.5.
        let out = spo_preference_loss(&t(&[0.0, -5.0]), &t(&[-2.0, -1.0]), 0.0, Weighting::Uniform).unwrap();
        assert!((scalar_of(&out.loss) - 0.5).abs() < 1e-12);
        assert_eq!(out.stats.accuracy, 0.5);
        assert_eq!(out.stats.mean_delta, -1.0);
        assert_eq!(out.stats.mean_mu, 1.0);
    }

    #[test]
    fn alpha_one_is_cross_entropy_of_own_preference_probability() {
        // eq. 6–7 with probabilities, computed without the log-sigmoid form.
        let (pw, pl) = (0.02f64, 0.005f64);
        let out = spo_preference_loss(&t(&[pw.ln()]), &t(&[pl.ln()]), 1.0, Weighting::Uniform).unwrap();
        assert!((scalar_of(&out.loss) + (pw / (pw + pl)).ln()).abs() < 1e-12);
        // general α: −(1/α)·log(p_w^α / (p_w^α + p_l^α)), eq. 8 as written.
        let a = 0.3;
        let out = spo_preference_loss(&t(&[pw.ln()]), &t(&[pl.ln()]), a, Weighting::Uniform).unwrap();
        let direct = -(1.0 / a) * (pw.powf(a) / (pw.powf(a) + pl.powf(a))).ln();
        assert!((scalar_of(&out.loss) - direct).abs() < 1e-12);
    }

    fn grads(w: &[f64], l: &[f64], alpha: f64, weighting: Weighting) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let vw = Var::new(w, &Device::Cpu).unwrap();
        let vl = Var::new(l, &Device::Cpu).unwrap();
        let out = spo_preference_loss(vw.as_tensor(), vl.as_tensor(), alpha, weighting).unwrap();
        let g = out.loss.backward().unwrap();
        let mu = preference_weights(vw.as_tensor(), vl.as_tensor(), weighting).unwrap();
        (
            g.get(vw.as_tensor()).unwrap().to_vec1().unwrap(),
            g.get(vl.as_tensor()).unwrap().to_vec1().unwrap(),
            mu.to_vec1().unwrap(),
        )
    }

    const W: [f64; 5] = [-3.0, -10.0, -0.5, -7.0, -2.0];
    const L: [f64; 5] = [-4.0, -2.0, -0.5, -20.0, -2.5];

    #[test]
    fn gradient_is_eq_10_for_both_weightings() {
        for weighting in [Weighting::Uniform, Weighting::SoftImportance { gamma: 0.7 }] {
            for alpha in [0.0, 0.05, 1.0, 3.0] {
                let (gw, gl, mu) = grads(&W, &L, alpha, weighting);
                for i in 0..W.len() {
                    let d = W[i] - L[i];
                    let weight = if alpha > 0.0 { scalar::sigmoid(-alpha * d) } else { 0.5 };
                    let expect = mu[i] * weight / W.len() as f64;
                    assert!((gw[i] + expect).abs() < 1e-12, "∂/∂logp_w, α={alpha}, {weighting:?}");
                    assert!((gl[i] - expect).abs() < 1e-12, "∂/∂logp_l, α={alpha}, {weighting:?}");
                }
            }
        }
    }

    #[test]
    fn gradient_matches_finite_differences_in_f64() {
        let alpha = 0.4;
        let loss_at = |w: &[f64], l: &[f64]| {
            let out = spo_preference_loss(&t(w), &t(l), alpha, Weighting::Uniform).unwrap();
            scalar_of(&out.loss)
        };
        let (gw, gl, _) = grads(&W, &L, alpha, Weighting::Uniform);
        let h = 1e-6;
        for i in 0..W.len() {
            let (mut wp, mut wm) = (W.to_vec(), W.to_vec());
            wp[i] += h;
            wm[i] -= h;
            let fd = (loss_at(&wp, &L) - loss_at(&wm, &L)) / (2.0 * h);
            assert!((fd - gw[i]).abs() < 1e-8, "w[{i}]: fd {fd} vs {}", gw[i]);
            let (mut lp, mut lm) = (L.to_vec(), L.to_vec());
            lp[i] += h;
            lm[i] -= h;
            let fd = (loss_at(&W, &lp) - loss_at(&W, &lm)) / (2.0 * h);
            assert!((fd - gl[i]).abs() < 1e-8, "l[{i}]");
        }
    }

    #[test]
    fn gradient_tends_to_the_alpha_zero_gradient() {
        let (g0w, g0l, _) = grads(&W, &L, 0.0, Weighting::Uniform);
        let mut prev = f64::INFINITY;
        for alpha in [1e-1, 1e-3, 1e-6] {
            let (gw, gl, _) = grads(&W, &L, alpha, Weighting::Uniform);
            let err = scalar::max_abs_diff(&gw, &g0w).max(scalar::max_abs_diff(&gl, &g0l));
            assert!(err < prev, "error must shrink as α → 0");
            prev = err;
        }
        assert!(prev < 1e-5);
        // the loss itself tends to log2/α − Δ/2 (SPO.md)
        let a = 1e-4;
        let out = spo_preference_loss(&t(&W), &t(&L), a, Weighting::Uniform).unwrap();
        let mean_d: f64 = W.iter().zip(&L).map(|(w, l)| w - l).sum::<f64>() / 5.0;
        assert!((scalar_of(&out.loss) - (2f64.ln() / a - mean_d / 2.0)).abs() < 1e-3);
    }

    #[test]
    fn soft_importance_is_symmetric_positive_and_gradient_free() {
        let w = Weighting::SoftImportance { gamma: 0.5 };
        let ab = preference_weights(&t(&W), &t(&L), w).unwrap().to_vec1::<f64>().unwrap();
        let ba = preference_weights(&t(&L), &t(&W), w).unwrap().to_vec1::<f64>().unwrap();
        assert_eq!(ab, ba);
        assert!(ab.iter().all(|&m| m > 0.0 && m < 1.0));
        // hand value: σ(γ·log(π_1 + π_2) − mean over the batch)
        let s: Vec<f64> = W.iter().zip(&L).map(|(a, b)| 0.5 * scalar::log_add_exp(*a, *b)).collect();
        let m = s.iter().sum::<f64>() / s.len() as f64;
        for (i, si) in s.iter().enumerate() {
            assert!((ab[i] - scalar::sigmoid(si - m)).abs() < 1e-12);
        }
        // no gradient path from μ back to the log-probs
        let v = Var::new(&W[..], &Device::Cpu).unwrap();
        let mu = preference_weights(v.as_tensor(), &t(&L), w).unwrap();
        let g = mu.sum_all().unwrap().backward().unwrap();
        assert!(g.get(v.as_tensor()).is_none());
        // γ = 0 gives ½ everywhere
        let half = preference_weights(&t(&W), &t(&L), Weighting::SoftImportance { gamma: 0.0 }).unwrap();
        assert!(half.to_vec1::<f64>().unwrap().iter().all(|&m| m == 0.5));
    }

    #[test]
    fn works_in_f32_too() {
        let w = Tensor::new(&[-3.0f32, -1.0], &Device::Cpu).unwrap();
        let l = Tensor::new(&[-4.0f32, -1.0], &Device::Cpu).unwrap();
        let out = spo_preference_loss(&w, &l, 1.0, Weighting::Uniform).unwrap();
        assert_eq!(out.loss.dtype(), DType::F32);
        let expect = (-scalar::log_sigmoid(1.0) + 2f64.ln()) / 2.0;
        assert!((scalar_of(&out.loss) - expect).abs() < 1e-6);
    }

    #[test]
    fn rejects_negative_alpha() {
        assert!(spo_preference_loss(&t(&[0.0]), &t(&[0.0]), -1.0, Weighting::Uniform).is_err());
    }
}
