//! Chunked token-wise KL between two output heads with a hand-written backward:
//! `KL(p ‖ q)` of every row's next-token distributions, `p = softmax(h Wᵀ)` (the
//! policy) and `q = softmax(h_ref W_refᵀ)` (the frozen reference), without holding
//! `[N, V]` beyond one chunk of rows (Liger Kernel's fused JSD/KL pattern).
//!
//! Forward per chunk: `kl_n = Σ_v p_v (log p_v − log q_v)`, and the policy's entropy
//! `−Σ_v p_v log p_v` as a metric. Backward, recomputing the chunk:
//! `∂kl_n/∂z_v = p_v (log p_v − log q_v − kl_n)`, so with `G = g ⊙ that`,
//! `∂h = G W` and `∂W = Gᵀ h` (the latter only when `W` is trained).

use super::fused_logprob::{chunk_rows, logits};
use super::precomputed::{precomputed_forward, Precomputed};
use candle_core::{CustomOp2, DType, Result, Tensor, D};
use candle_nn::ops::log_softmax;

/// The reference's side of the KL: its final hidden rows and output head.
#[derive(Clone)]
pub struct Reference<'a> {
    /// Hidden rows `[N, D_ref]`, aligned with the policy's rows.
    pub rows: &'a Tensor,
    /// Output head `[V, D_ref]`.
    pub head: &'a Tensor,
}

/// One chunk's log-distributions: the policy's and the reference's, in `acc`.
fn chunk_logdists(
    h: &Tensor,
    w: &Tensor,
    r: &Reference,
    start: usize,
    len: usize,
    acc: DType,
) -> Result<(Tensor, Tensor)> {
    let logp = log_softmax(&logits(&h.narrow(0, start, len)?, w, acc)?, D::Minus1)?;
    let logq = log_softmax(&logits(&r.rows.narrow(0, start, len)?, r.head, acc)?, D::Minus1)?;
    Ok((logp, logq))
}

/// Per-row KL and the policy's per-row entropy, without gradients.
fn forward(h: &Tensor, w: &Tensor, r: &Reference, acc: DType) -> Result<(Tensor, Tensor)> {
    let (n, _) = h.dims2()?;
    let step = chunk_rows(w.dim(0)?);
    let (mut kls, mut ents) = (Vec::new(), Vec::new());
    for start in (0..n).step_by(step) {
        let (logp, logq) = chunk_logdists(h, w, r, start, step.min(n - start), acc)?;
        let p = logp.exp()?;
        kls.push((&p * (&logp - &logq)?)?.sum(D::Minus1)?);
        ents.push((&p * &logp)?.sum(D::Minus1)?.neg()?);
    }
    Ok((Tensor::cat(&kls, 0)?, Tensor::cat(&ents, 0)?))
}

/// The gradient path of the per-row KL to the policy's rows and head.
struct FusedKl {
    ref_rows: Tensor,
    ref_head: Tensor,
    acc: DType,
    out: Precomputed,
}

impl CustomOp2 for FusedKl {
    fn name(&self) -> &'static str {
        "fused-linear-kl"
    }

    precomputed_forward!(s1 l1, s2 l2);

    fn bwd(&self, rows: &Tensor, head: &Tensor, _: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (h, w) = (rows.detach(), head.detach());
        let r = Reference { rows: &self.ref_rows, head: &self.ref_head };
        let (n, _) = h.dims2()?;
        let step = chunk_rows(w.dim(0)?);
        let mut d_rows = Vec::with_capacity(n.div_ceil(step));
        let mut d_w = head.track_op().then(|| w.to_dtype(self.acc)?.zeros_like()).transpose()?;
        for start in (0..n).step_by(step) {
            let len = step.min(n - start);
            let (logp, logq) = chunk_logdists(&h, &w, &r, start, len, self.acc)?;
            let p = logp.exp()?;
            let diff = (&logp - &logq)?;
            let kl = (&p * &diff)?.sum_keepdim(D::Minus1)?;
            let g = grad.narrow(0, start, len)?.to_dtype(self.acc)?.unsqueeze(1)?;
            let big_g = (p * diff.broadcast_sub(&kl)?)?.broadcast_mul(&g)?;
            d_rows.push(big_g.to_dtype(w.dtype())?.matmul(&w)?.to_dtype(rows.dtype())?);
            if let Some(dw) = d_w.as_mut() {
                let hc = h.narrow(0, start, len)?.to_dtype(self.acc)?;
                *dw = (&*dw + big_g.t()?.matmul(&hc)?)?;
            }
        }
        let d_w = d_w.map(|d| d.to_dtype(head.dtype())).transpose()?;
        Ok((rows.track_op().then(|| Tensor::cat(&d_rows, 0)).transpose()?, d_w))
    }
}

/// Per-row `KL(softmax(rows Wᵀ) ‖ softmax(ref.rows ref.headᵀ))` `[N]` in `acc`,
/// differentiable w.r.t. the policy's rows and head (each only when it tracks; the
/// reference is frozen), and the policy's per-row entropy `[N]` (no gradient).
pub fn linear_kl(rows: &Tensor, head: &Tensor, reference: &Reference, acc: DType) -> Result<(Tensor, Tensor)> {
    let r = Reference { rows: &reference.rows.detach(), head: &reference.head.detach() };
    let (kl, entropy) = forward(&rows.detach(), &head.detach(), &r, acc)?;
    if !rows.track_op() && !head.track_op() {
        return Ok((kl, entropy));
    }
    let op = FusedKl { ref_rows: r.rows.clone(), ref_head: r.head.clone(), acc, out: Precomputed::new(kl)? };
    Ok((rows.apply_op2(head, op)?, entropy))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loss::kl::position_kl;
    use crate::model::precomputed::max_abs_diff;
    use candle_core::{Device, Var};

    /// Values, entropy and both gradients equal the composed log-softmaxes and
    /// `position_kl`, in f64 and f32, with several chunks (V = 65,537).
    #[test]
    fn matches_the_composed_kl_in_value_and_gradient() {
        let dev = Device::Cpu;
        for (dtype, tol) in [(DType::F64, 1e-10), (DType::F32, 2e-4)] {
            for (n, vocab) in [(5, 11), (300, (1 << 16) + 1)] {
                let randn =
                    |shape: (usize, usize)| Tensor::randn(0f64, 1.0, shape, &dev).unwrap().to_dtype(dtype).unwrap();
                let rows = Var::from_tensor(&randn((n, 4))).unwrap();
                let head = Var::from_tensor(&randn((vocab, 4))).unwrap();
                let (ref_rows, ref_head) = (randn((n, 3)), randn((vocab, 3)));
                let r = Reference { rows: &ref_rows, head: &ref_head };
                let probe = randn((n, 1)).squeeze(1).unwrap();
                let (fused, entropy) = linear_kl(rows.as_tensor(), head.as_tensor(), &r, dtype).unwrap();
                let logp =
                    log_softmax(&rows.as_tensor().matmul(&head.as_tensor().t().unwrap()).unwrap(), D::Minus1).unwrap();
                let logq = log_softmax(&ref_rows.matmul(&ref_head.t().unwrap()).unwrap(), D::Minus1).unwrap();
                let composed = position_kl(&logp, &logq).unwrap();
                let ent = (logp.exp().unwrap() * &logp).unwrap().sum(D::Minus1).unwrap().neg().unwrap();
                assert!(max_abs_diff(&fused, &composed) < tol, "{dtype:?} V={vocab}: KL values");
                assert!(max_abs_diff(&entropy, &ent) < tol, "{dtype:?} V={vocab}: entropy");
                let ga = (&fused * &probe).unwrap().sum_all().unwrap().backward().unwrap();
                let gb = (&composed * &probe).unwrap().sum_all().unwrap().backward().unwrap();
                for (what, v) in [("rows", &rows), ("head", &head)] {
                    let (a, b) = (ga.get(v.as_tensor()).unwrap(), gb.get(v.as_tensor()).unwrap());
                    let scale = 1.0 + max_abs_diff(b, &b.zeros_like().unwrap()); // relative in f32's sums
                    let d = max_abs_diff(a, b);
                    assert!(d < tol * scale, "{dtype:?} V={vocab}: ∂{what} differs by {d} (scale {scale})");
                }
            }
        }
    }
}
