//! The baselines SPO is compared with: DPO (paper eq. 4) and IPO.

use super::ops::{log_sigmoid, mean_f64};
use super::{LossOutput, LossStats};
use candle_core::{Result, Tensor};

/// Policy and frozen-reference sequence log-probs of a batch of pairs, each `[B]`.
#[derive(Debug, Clone, Copy)]
pub struct PairLogps<'a> {
    /// `logp_θ(y_w|x)`.
    pub policy_chosen: &'a Tensor,
    /// `logp_θ(y_l|x)`.
    pub policy_rejected: &'a Tensor,
    /// `logp_ref(y_w|x)`.
    pub ref_chosen: &'a Tensor,
    /// `logp_ref(y_l|x)`.
    pub ref_rejected: &'a Tensor,
}

impl PairLogps<'_> {
    /// `(ρ_w, ρ_l)` with `ρ = logp_θ(y) − logp_ref(y)`; the reference is detached.
    fn log_ratios(&self) -> Result<(Tensor, Tensor)> {
        Ok(((self.policy_chosen - self.ref_chosen.detach())?, (self.policy_rejected - self.ref_rejected.detach())?))
    }

    fn stats(&self, beta: f64, rho_w: &Tensor, rho_l: &Tensor) -> Result<LossStats> {
        let delta = (self.policy_chosen - self.policy_rejected)?;
        let rw = (rho_w.detach() * beta)?;
        let rl = (rho_l.detach() * beta)?;
        Ok(LossStats {
            mean_delta: mean_f64(&delta)?,
            accuracy: mean_f64(&rw.gt(&rl)?.to_dtype(rw.dtype())?)?,
            mean_mu: 1.0,
            reward_chosen: Some(mean_f64(&rw)?),
            reward_rejected: Some(mean_f64(&rl)?),
        })
    }
}

/// DPO (eq. 4): `mean_b −log σ( β·(ρ_w − ρ_l) )`, `ρ = logp_θ(y) − logp_ref(y)`.
/// Rewards in the stats are `β·ρ`, as TRL logs them.
pub fn dpo_loss(logps: PairLogps<'_>, beta: f64) -> Result<LossOutput> {
    if !(beta > 0.0 && beta.is_finite()) {
        candle_core::bail!("DPO needs a finite β > 0, got {beta}");
    }
    let (rho_w, rho_l) = logps.log_ratios()?;
    let loss = log_sigmoid(&((&rho_w - &rho_l)? * beta)?)?.neg()?.mean_all()?;
    let stats = logps.stats(beta, &rho_w, &rho_l)?;
    Ok(LossOutput { loss, stats })
}

/// IPO exactly as Hugging Face TRL defines it: per pair
/// `((ρ_w/len_w − ρ_l/len_l) − 1/(2β))²`, averaged over the batch, where
/// `len` is the response length in tokens (TRL averages IPO's log-probs per token).
/// `len_chosen`/`len_rejected` are `[B]` tensors of the same dtype as the log-probs.
pub fn ipo_loss(logps: PairLogps<'_>, len_chosen: &Tensor, len_rejected: &Tensor, beta: f64) -> Result<LossOutput> {
    if !(beta > 0.0 && beta.is_finite()) {
        candle_core::bail!("IPO needs a finite β > 0, got {beta}");
    }
    let (rho_w, rho_l) = logps.log_ratios()?;
    let h = ((rho_w.div(len_chosen)? - rho_l.div(len_rejected)?)? - 1.0 / (2.0 * beta))?;
    let loss = h.sqr()?.mean_all()?;
    let stats = logps.stats(beta, &rho_w, &rho_l)?;
    Ok(LossOutput { loss, stats })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn t(v: &[f64]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    #[test]
    fn dpo_closed_form_and_rewards() {
        // ρ_w = −1 − (−2) = 1, ρ_l = −3 − (−2) = −1, β = 0.5 → −log σ(1) = log(1 + e^{−1}).
        let (pw, pl, rw, rl) = (t(&[-1.0]), t(&[-3.0]), t(&[-2.0]), t(&[-2.0]));
        let logps = PairLogps { policy_chosen: &pw, policy_rejected: &pl, ref_chosen: &rw, ref_rejected: &rl };
        let out = dpo_loss(logps, 0.5).unwrap();
        let v = out.loss.to_scalar::<f64>().unwrap();
        assert!((v - (1.0 + (-1.0f64).exp()).ln()).abs() < 1e-12);
        assert_eq!(out.stats.reward_chosen, Some(0.5));
        assert_eq!(out.stats.reward_rejected, Some(-0.5));
        assert_eq!(out.stats.reward_margin(), Some(1.0));
        assert_eq!(out.stats.accuracy, 1.0);
        assert!(dpo_loss(logps, 0.0).is_err());
    }

    #[test]
    fn dpo_gradient_is_beta_sigma_and_reference_is_frozen() {
        let beta = 0.3;
        let (w, l) = ([-4.0, -1.0], [-2.0, -6.0]);
        let (r_w, r_l) = ([-3.0, -2.0], [-2.5, -5.0]);
        let vw = Var::new(&w[..], &Device::Cpu).unwrap();
        let vl = Var::new(&l[..], &Device::Cpu).unwrap();
        let vrw = Var::new(&r_w[..], &Device::Cpu).unwrap();
        let rl = t(&r_l);
        let logps = PairLogps {
            policy_chosen: vw.as_tensor(),
            policy_rejected: vl.as_tensor(),
            ref_chosen: vrw.as_tensor(),
            ref_rejected: &rl,
        };
        let g = dpo_loss(logps, beta).unwrap().loss.backward().unwrap();
        assert!(g.get(vrw.as_tensor()).is_none());
        let gw = g.get(vw.as_tensor()).unwrap().to_vec1::<f64>().unwrap();
        for i in 0..2 {
            let z = beta * ((w[i] - r_w[i]) - (l[i] - r_l[i]));
            let expect = -beta * crate::scalar::sigmoid(-z) / 2.0;
            assert!((gw[i] - expect).abs() < 1e-12);
        }
    }

    #[test]
    fn ipo_closed_form_per_token() {
        // ρ_w = 2 over 4 tokens → 0.5; ρ_l = −3 over 2 tokens → −1.5; h = 2 − 1/(2·0.25) = 0.
        // second pair: ρ_w = 0, ρ_l = 0 → h = −2, h² = 4. Mean = 2.
        let (pw, pl) = (t(&[-1.0, -5.0]), t(&[-6.0, -7.0]));
        let (rw, rl) = (t(&[-3.0, -5.0]), t(&[-3.0, -7.0]));
        let logps = PairLogps { policy_chosen: &pw, policy_rejected: &pl, ref_chosen: &rw, ref_rejected: &rl };
        let out = ipo_loss(logps, &t(&[4.0, 3.0]), &t(&[2.0, 5.0]), 0.25).unwrap();
        assert!((out.loss.to_scalar::<f64>().unwrap() - 2.0).abs() < 1e-12);
    }
}
