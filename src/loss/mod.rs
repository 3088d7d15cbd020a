//! Loss library: pure functions of sequence log-prob tensors (any float dtype).
//!
//! Inputs are per-pair *sequence* log-probabilities `logp(y|x)` summed over the
//! response tokens, shape `[B]`. Losses know nothing about models.
//!
//! - [`spo`]: SPO's preference loss (paper eq. 8, 9, 11) and its weights μ (eq. 24);
//! - [`kl`]: the token-wise KL regulariser on fresh samples (Appendix B);
//! - [`baselines`]: DPO (eq. 4) and IPO (TRL's definition).

pub mod baselines;
pub mod kl;
pub mod ops;
pub mod spo;

pub use baselines::{dpo_loss, ipo_loss};
pub use kl::{token_kl, token_kl_rows};
pub use spo::{
    preference_weights, soft_importance_normaliser, spo_preference_loss, spo_preference_loss_in_batch, Weighting,
};

use candle_core::Tensor;
use serde::Serialize;

/// Diagnostics of one loss evaluation, detached from the graph, for logging.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LossStats {
    /// Mean of `Δ = logp_θ(y_w) − logp_θ(y_l)` over the batch.
    pub mean_delta: f64,
    /// Fraction of pairs the policy ranks correctly (`Δ > 0` for SPO; DPO-style
    /// reward of the chosen above the rejected for DPO/IPO).
    pub accuracy: f64,
    /// Mean preference weight μ (1 for uniform weighting and for DPO/IPO).
    pub mean_mu: f64,
    /// Mean DPO-style reward `β·(logp_θ − logp_ref)` of the chosen responses, where a
    /// reference exists (DPO/IPO).
    pub reward_chosen: Option<f64>,
    /// Same for the rejected responses.
    pub reward_rejected: Option<f64>,
}

impl LossStats {
    /// `reward_chosen − reward_rejected`, TRL's `rewards/margins`.
    pub fn reward_margin(&self) -> Option<f64> {
        Some(self.reward_chosen? - self.reward_rejected?)
    }
}

/// A scalar loss to back-propagate, with its diagnostics.
#[derive(Debug, Clone)]
pub struct LossOutput {
    /// Scalar (rank-0) differentiable loss.
    pub loss: Tensor,
    /// Detached diagnostics.
    pub stats: LossStats,
}
