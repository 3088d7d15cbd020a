//! RMSNorm with a hand-written backward that keeps only its output: composed, the
//! square, the mean, the root, the reciprocal and the two products are each held
//! from forward to backward.
//!
//! `y = x̂ ⊙ w` with `x̂ = x · r`, `r = 1/√(mean(x²) + ε)` (in f32 for 16-bit `x`).
//! Backward with upstream `g`: `∂w = Σ_rows g ⊙ x̂` and
//! `∂x = r · (g ⊙ w − x̂ · mean(g ⊙ w ⊙ x̂))`.

use super::llama::accumulation_dtype;
use super::precomputed::{precomputed_forward, Precomputed};
use candle_core::{CustomOp2, Result, Tensor, D};

/// `(x̂, r)` in the accumulation dtype.
fn normalised(x: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    let xa = x.to_dtype(accumulation_dtype(x.dtype()))?;
    let r = (xa.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    Ok((xa.broadcast_mul(&r)?, r))
}

struct RmsNorm {
    eps: f64,
    out: Precomputed,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    precomputed_forward!(s1 l1, s2 l2);

    fn bwd(&self, x: &Tensor, w: &Tensor, _: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (xhat, r) = normalised(&x.detach(), self.eps)?;
        let acc = xhat.dtype();
        let g = grad.to_dtype(acc)?;
        let gw = g.broadcast_mul(&w.detach().to_dtype(acc)?)?;
        let dot = (&gw * &xhat)?.mean_keepdim(D::Minus1)?;
        let d_x = (gw - xhat.broadcast_mul(&dot)?)?.broadcast_mul(&r)?.to_dtype(x.dtype())?;
        let d_w = w.track_op().then(|| {
            let rows = xhat.elem_count() / w.elem_count();
            (g * &xhat)?.reshape((rows, w.elem_count()))?.sum(0)?.to_dtype(w.dtype())
        });
        Ok((x.track_op().then_some(d_x), d_w.transpose()?))
    }
}

/// RMSNorm of `x: [..., D]` by `weight: [D]`: normalised in f32 for 16-bit `x`
/// (as Hugging Face does), scaled in `x`'s dtype; gradients for both when they
/// track ([`RmsNorm`]).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let (xhat, _) = normalised(&x.detach(), eps)?;
    let out = xhat.to_dtype(x.dtype())?.broadcast_mul(&weight.detach())?;
    if !(x.track_op() || weight.track_op()) {
        return Ok(out);
    }
    x.apply_op2(weight, RmsNorm { eps, out: Precomputed::new(out)? })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::precomputed::max_abs_diff;
    use candle_core::{DType, Device, Var};

    /// Output and both gradients equal the composed RMSNorm's, in f64 and f32.
    #[test]
    fn matches_the_composed_norm_in_value_and_gradient() {
        let dev = Device::Cpu;
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
            let randn = |s: &[usize]| {
                Var::from_tensor(&Tensor::randn(0f64, 1.0, s, &dev).unwrap().to_dtype(dtype).unwrap()).unwrap()
            };
            let (x, w) = (randn(&[2, 3, 6]), randn(&[6]));
            let fused = rms_norm(x.as_tensor(), w.as_tensor(), 1e-5).unwrap();
            let xa = x.as_tensor();
            let inv =
                (xa.sqr().unwrap().mean_keepdim(D::Minus1).unwrap() + 1e-5).unwrap().sqrt().unwrap().recip().unwrap();
            let composed = xa.broadcast_mul(&inv).unwrap().broadcast_mul(w.as_tensor()).unwrap();
            let probe = Tensor::randn(0f64, 1.0, (2, 3, 6), &dev).unwrap().to_dtype(dtype).unwrap();
            let ga = (&fused * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let gb = (&composed * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            assert!(max_abs_diff(&fused, &composed) < tol, "{dtype:?}: values");
            for (what, v) in [("x", &x), ("w", &w)] {
                let d = max_abs_diff(ga.get(v.as_tensor()).unwrap(), gb.get(v.as_tensor()).unwrap());
                assert!(d < tol, "{dtype:?}: ∂{what} differs by {d}");
            }
        }
    }
}
