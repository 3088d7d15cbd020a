//! Causal grouped-query attention with a hand-written backward that keeps only its
//! output: the scores, the masked scores, the softmax's intermediates and the
//! probabilities (`[B, H, T, T]` each, five or six of them composed) are
//! recomputed in backward instead of held from forward to backward.
//!
//! With `S = scale·Q Kᵀ + mask`, `P = softmax(S)`, `O = P V` and upstream `dO`:
//! `dV = Pᵀ dO`, `dP = dO Vᵀ`, `dS = P ⊙ (dP − rowsum(dP ⊙ P))`, `dQ = scale·dS K`,
//! `dK = scale·dSᵀ Q`.

use super::precomputed::{precomputed_forward, Precomputed};
use candle_core::{CustomOp3, DType, Result, Tensor, D};
use candle_nn::ops::softmax;

/// Attention probabilities for `q: [B, KV, R·T, hd]` (R query heads per key/value
/// head), `k: [B, KV, Tk, hd]`, `mask: [B, 1, T, Tk]` in `acc`: `[B, KV, R·T, Tk]`.
fn probs(q: &Tensor, k: &Tensor, mask: &Tensor, scale: f64, acc: DType) -> Result<Tensor> {
    let (b, kv, rt, _) = q.dims4()?;
    let (t, tk) = (mask.dim(2)?, k.dim(2)?);
    let scores = (q.matmul(&k.t()?)? * scale)?.reshape((b, kv * rt / t, t, tk))?;
    let p = softmax(&scores.to_dtype(acc)?.broadcast_add(mask)?, D::Minus1)?;
    p.reshape((b, kv, rt, tk))
}

struct Attention {
    mask: Tensor,
    scale: f64,
    acc: DType,
    out: Precomputed,
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "causal-attention"
    }

    precomputed_forward!(s1 l1, s2 l2, s3 l3);

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (q, k, v) = (q.detach(), k.detach(), v.detach());
        let dtype = q.dtype();
        let p = probs(&q, &k, &self.mask, self.scale, self.acc)?;
        let d_o = grad.to_dtype(self.acc)?;
        let d_v = p.t()?.matmul(&d_o)?;
        let d_p = d_o.matmul(&v.to_dtype(self.acc)?.t()?)?;
        let d_s = (&p * d_p.broadcast_sub(&(&d_p * &p)?.sum_keepdim(D::Minus1)?)?)?;
        let d_q = (d_s.matmul(&k.to_dtype(self.acc)?)? * self.scale)?;
        let d_k = (d_s.t()?.matmul(&q.to_dtype(self.acc)?)? * self.scale)?;
        Ok((Some(d_q.to_dtype(dtype)?), Some(d_k.to_dtype(dtype)?), Some(d_v.to_dtype(dtype)?)))
    }
}

/// `softmax(scale·Q Kᵀ + mask) V` for `q: [B, KV, R·T, hd]` (R query heads
/// grouped per key/value head, as the decoder lays them out), `k, v: [B, KV, Tk,
/// hd]`, additive `mask: [B, 1, T, Tk]` in `acc` (f32 for 16-bit compute, where
/// the softmax runs in f32). Output `[B, KV, R·T, hd]` in `q`'s dtype; when any
/// input tracks, the backward recomputes the probabilities ([`Attention`]).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64, acc: DType) -> Result<Tensor> {
    let p = probs(&q.detach(), &k.detach(), mask, scale, acc)?;
    let out = p.to_dtype(q.dtype())?.matmul(&v.detach())?;
    if !(q.track_op() || k.track_op() || v.track_op()) {
        return Ok(out);
    }
    let op = Attention { mask: mask.detach(), scale, acc, out: Precomputed::new(out)? };
    q.apply_op3(k, v, op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::precomputed::max_abs_diff;
    use candle_core::{Device, Var};

    /// Output and the q, k, v gradients equal the composed attention's, in f64 and
    /// f32, with grouped heads (R = 2) and a causal mask.
    #[test]
    fn matches_the_composed_attention_in_value_and_gradient() {
        let dev = Device::Cpu;
        let (b, kv, r, t, hd) = (2, 2, 2, 5, 4);
        let m: Vec<f64> =
            (0..t).flat_map(|i| (0..t).map(move |j| if j <= i { 0.0 } else { f64::NEG_INFINITY })).collect();
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
            let mask = Tensor::from_vec(m.clone(), (1, 1, t, t), &dev).unwrap().to_dtype(dtype).unwrap();
            let mask = mask.broadcast_as((b, 1, t, t)).unwrap().contiguous().unwrap();
            let randn = |s: (usize, usize, usize, usize)| {
                Var::from_tensor(&Tensor::randn(0f64, 1.0, s, &dev).unwrap().to_dtype(dtype).unwrap()).unwrap()
            };
            let (q, k, v) = (randn((b, kv, r * t, hd)), randn((b, kv, t, hd)), randn((b, kv, t, hd)));
            let fused = attention(q.as_tensor(), k.as_tensor(), v.as_tensor(), &mask, 0.5, dtype).unwrap();
            let scores = (q.as_tensor().matmul(&k.as_tensor().t().unwrap()).unwrap() * 0.5).unwrap();
            let scores = scores.reshape((b, kv * r, t, t)).unwrap().broadcast_add(&mask).unwrap();
            let p = softmax(&scores, D::Minus1).unwrap().reshape((b, kv, r * t, t)).unwrap();
            let composed = p.matmul(v.as_tensor()).unwrap();
            let probe = Tensor::randn(0f64, 1.0, (b, kv, r * t, hd), &dev).unwrap().to_dtype(dtype).unwrap();
            let ga = (&fused * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let gb = (&composed * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            assert!(max_abs_diff(&fused, &composed) < tol, "{dtype:?}: values");
            for (what, x) in [("q", &q), ("k", &k), ("v", &v)] {
                let d = max_abs_diff(ga.get(x.as_tensor()).unwrap(), gb.get(x.as_tensor()).unwrap());
                assert!(d < tol, "{dtype:?}: ∂{what} differs by {d}");
            }
        }
    }
}
