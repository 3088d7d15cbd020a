//! Chunked output head + log-softmax + gather with a hand-written backward: the
//! log-probability of each target token without ever holding `[N, V]` logits
//! beyond one chunk of rows (Liger Kernel's fused linear cross-entropy pattern).
//!
//! Forward: per chunk, `z = h Wᵀ`, `log p(t) = z_t − logsumexp(z)`. Backward, with
//! `g` the upstream gradient and `p = softmax(z)` recomputed per chunk:
//! `∂h = g·(W_t − p W)` and `∂W = Σ_n g_n·(e_{t_n} − p_n) ⊗ h_n`, the latter only
//! when `W` is trained (a frozen head costs no `[V, D]` gradient).

use super::precomputed::{precomputed_forward, Precomputed};
use candle_core::{CustomOp2, DType, Result, Tensor, D};

/// Elements of one chunk's `[rows, V]` logits (32 MB in f32).
const CHUNK_ELEMENTS: usize = 8 << 20;

/// Rows per chunk for a vocabulary of `vocab`.
pub(crate) fn chunk_rows(vocab: usize) -> usize {
    (CHUNK_ELEMENTS / vocab.max(1)).max(1)
}

/// The chunk's logits `h Wᵀ` in `acc` (f32 for 16-bit compute).
pub(crate) fn logits(h: &Tensor, w: &Tensor, acc: DType) -> Result<Tensor> {
    h.matmul(&w.t()?)?.to_dtype(acc)
}

/// `log p(targets)` of every row, chunk by chunk, without gradients.
fn forward(rows: &Tensor, weight: &Tensor, targets: &Tensor, acc: DType) -> Result<Tensor> {
    let (n, _) = rows.dims2()?;
    let step = chunk_rows(weight.dim(0)?);
    let mut parts = Vec::with_capacity(n.div_ceil(step));
    for start in (0..n).step_by(step) {
        let len = step.min(n - start);
        let z = logits(&rows.narrow(0, start, len)?, weight, acc)?;
        let max = z.max_keepdim(D::Minus1)?;
        let lse = (z.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?.log()? + &max)?;
        let zt = z.gather(&targets.narrow(0, start, len)?.unsqueeze(1)?, 1)?;
        parts.push((zt - lse)?.squeeze(1)?);
    }
    Tensor::cat(&parts, 0)
}

/// The gradient path of [`forward`] to the rows and (when trained) the weight.
struct FusedLogprob {
    targets: Tensor,
    acc: DType,
    out: Precomputed,
}

impl CustomOp2 for FusedLogprob {
    fn name(&self) -> &'static str {
        "fused-linear-logprob"
    }

    precomputed_forward!(s1 l1, s2 l2);

    fn bwd(
        &self,
        rows: &Tensor,
        weight: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (rows_d, w) = (rows.detach(), weight.detach());
        let (n, _) = rows.dims2()?;
        let step = chunk_rows(w.dim(0)?);
        let mut d_rows = Vec::with_capacity(n.div_ceil(step));
        let mut d_w = weight.track_op().then(|| w.to_dtype(self.acc)?.zeros_like()).transpose()?;
        for start in (0..n).step_by(step) {
            let len = step.min(n - start);
            let h = rows_d.narrow(0, start, len)?;
            let t = self.targets.narrow(0, start, len)?;
            let g = grad.narrow(0, start, len)?.to_dtype(self.acc)?.unsqueeze(1)?;
            let z = logits(&h, &w, self.acc)?;
            let max = z.max_keepdim(D::Minus1)?;
            let e = z.broadcast_sub(&max)?.exp()?;
            let gp = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?.broadcast_mul(&g)?; // g·p
            let w_t = w.index_select(&t, 0)?.to_dtype(self.acc)?;
            let gp_w = gp.to_dtype(w.dtype())?.matmul(&w)?.to_dtype(self.acc)?;
            d_rows.push((w_t.broadcast_mul(&g)? - gp_w)?.to_dtype(rows.dtype())?);
            if let Some(dw) = d_w.as_mut() {
                let ha = h.to_dtype(self.acc)?;
                let hit = dw.index_add(&t, &ha.broadcast_mul(&g)?, 0)?;
                *dw = (hit - gp.t()?.matmul(&ha)?)?;
            }
        }
        let d_w = d_w.map(|d| d.to_dtype(weight.dtype())).transpose()?;
        Ok((rows.track_op().then(|| Tensor::cat(&d_rows, 0)).transpose()?, d_w))
    }
}

/// `log softmax(rows Wᵀ)[targets]` for `rows: [N, D]`, `weight: [V, D]`,
/// `targets: [N]` (u32), in `acc`; differentiable w.r.t. the rows and the weight
/// (each only when it tracks), with `[N, V]` never materialised beyond a chunk.
pub fn linear_logprob(rows: &Tensor, weight: &Tensor, targets: &Tensor, acc: DType) -> Result<Tensor> {
    let out = forward(&rows.detach(), &weight.detach(), targets, acc)?;
    if !rows.track_op() && !weight.track_op() {
        return Ok(out);
    }
    let op = FusedLogprob { targets: targets.clone(), acc, out: Precomputed::new(out)? };
    rows.apply_op2(weight, op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::precomputed::max_abs_diff;
    use candle_core::{Device, Var};
    use candle_nn::ops::log_softmax;

    /// Values and both gradients equal the composed head + log-softmax + gather, in
    /// f64 and f32, with several chunks per batch (V = 65,537: 128 rows a chunk);
    /// a frozen weight gets no gradient.
    #[test]
    fn matches_the_composed_ops_in_value_and_gradient() {
        let dev = Device::Cpu;
        for (dtype, tol) in [(DType::F64, 1e-10), (DType::F32, 2e-4)] {
            for (n, vocab) in [(5, 11), (300, (1 << 16) + 1)] {
                let randn =
                    |shape: (usize, usize)| Tensor::randn(0f64, 1.0, shape, &dev).unwrap().to_dtype(dtype).unwrap();
                let rows = Var::from_tensor(&randn((n, 4))).unwrap();
                let weight = Var::from_tensor(&randn((vocab, 4))).unwrap();
                let targets: Vec<u32> = (0..n).map(|i| ((i * 7919) % vocab) as u32).collect();
                let targets = Tensor::new(targets.as_slice(), &dev).unwrap();
                let probe = randn((n, 1)).squeeze(1).unwrap();
                let fused = linear_logprob(rows.as_tensor(), weight.as_tensor(), &targets, dtype).unwrap();
                let logits = rows.as_tensor().matmul(&weight.as_tensor().t().unwrap()).unwrap();
                let gather =
                    log_softmax(&logits, D::Minus1).unwrap().gather(&targets.unsqueeze(1).unwrap(), 1).unwrap();
                let composed = gather.squeeze(1).unwrap();
                assert!(max_abs_diff(&fused, &composed) < tol, "{dtype:?} V={vocab}: values");
                let ga = (&fused * &probe).unwrap().sum_all().unwrap().backward().unwrap();
                let gb = (&composed * &probe).unwrap().sum_all().unwrap().backward().unwrap();
                for (what, v) in [("rows", &rows), ("weight", &weight)] {
                    let d = max_abs_diff(ga.get(v.as_tensor()).unwrap(), gb.get(v.as_tensor()).unwrap());
                    assert!(d < tol, "{dtype:?} V={vocab}: ∂{what} differs by {d}");
                }
                let frozen = linear_logprob(rows.as_tensor(), &weight.as_tensor().detach(), &targets, dtype).unwrap();
                let g = frozen.sum_all().unwrap().backward().unwrap();
                assert!(g.get(rows.as_tensor()).is_some() && g.get(weight.as_tensor()).is_none());
            }
        }
    }
}
