//! The decoder's elementwise steps as single ops with hand-written backwards that
//! keep only their outputs: rotary position embedding and SwiGLU. Composed, RoPE
//! holds five `[B, H, T, hd]` intermediates (negation, concatenation, two products,
//! sum) per call and SwiGLU holds `silu(gate)` beside the product.
//!
//! RoPE: `y = x ⊙ cos + rot(x) ⊙ sin` with `rot(x) = [−x₂, x₁]` (half-split
//! layout); as `rot` is linear with transpose `rotᵀ(u) = [u₂, −u₁]`,
//! `∂x = g ⊙ cos + rotᵀ(g ⊙ sin)`.
//! SwiGLU: `y = silu(a) ⊙ b`; `∂a = g ⊙ b ⊙ σ(a)(1 + a(1 − σ(a)))`, `∂b = g ⊙ silu(a)`.

use super::precomputed::{precomputed_forward, Precomputed};
use candle_core::{CustomOp1, CustomOp2, Result, Tensor, D};

/// `[−x₂, x₁]` along the last axis.
fn rotate(x: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    Tensor::cat(&[&x.narrow(D::Minus1, half, half)?.neg()?, &x.narrow(D::Minus1, 0, half)?], D::Minus1)
}

/// `[u₂, −u₁]`: the transpose of [`rotate`].
fn rotate_back(u: &Tensor) -> Result<Tensor> {
    let half = u.dim(D::Minus1)? / 2;
    Tensor::cat(&[&u.narrow(D::Minus1, half, half)?, &u.narrow(D::Minus1, 0, half)?.neg()?], D::Minus1)
}

struct Rope {
    cos: Tensor,
    sin: Tensor,
    out: Precomputed,
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }

    precomputed_forward!(s1 l1);

    fn bwd(&self, _: &Tensor, _: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some((grad.broadcast_mul(&self.cos)? + rotate_back(&grad.broadcast_mul(&self.sin)?)?)?))
    }
}

/// Rotates `x: [B, H, T, hd]` by `cos`, `sin: [B, 1, T, hd]` (half-split layout).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let xd = x.detach();
    let out = (xd.broadcast_mul(cos)? + rotate(&xd)?.broadcast_mul(sin)?)?;
    if !x.track_op() {
        return Ok(out);
    }
    x.apply_op1(Rope { cos: cos.detach(), sin: sin.detach(), out: Precomputed::new(out)? })
}

struct SwiGlu {
    out: Precomputed,
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    precomputed_forward!(s1 l1, s2 l2);

    fn bwd(&self, a: &Tensor, b: &Tensor, _: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (a, b) = (a.detach(), b.detach());
        let sig = crate::loss::ops::sigmoid(&a)?;
        let silu = (&a * &sig)?;
        let dsilu = (&sig * ((&a * (1.0 - &sig)?)? + 1.0)?)?;
        Ok((Some(((grad * b)? * dsilu)?), Some((grad * silu)?)))
    }
}

/// `silu(a) ⊙ b` (the gated MLP's activation), keeping only the output.
pub fn swiglu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let out = (a.detach().silu()? * b.detach())?;
    if !(a.track_op() || b.track_op()) {
        return Ok(out);
    }
    a.apply_op2(b, SwiGlu { out: Precomputed::new(out)? })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::precomputed::max_abs_diff;
    use candle_core::{DType, Device, Var};

    /// Both ops' values and gradients equal the composed ones', in f64 and f32.
    #[test]
    fn rope_and_swiglu_match_the_composed_ops() {
        let dev = Device::Cpu;
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
            let randn = |s: &[usize]| Tensor::randn(0f64, 1.0, s, &dev).unwrap().to_dtype(dtype).unwrap();
            let var = |s: &[usize]| Var::from_tensor(&randn(s)).unwrap();
            let (x, a, b) = (var(&[2, 3, 4, 6]), var(&[2, 5, 7]), var(&[2, 5, 7]));
            let (cos, sin) = (randn(&[2, 1, 4, 6]), randn(&[2, 1, 4, 6]));
            let cases: [(Tensor, Tensor, Vec<&Var>); 2] = [
                (
                    rope(x.as_tensor(), &cos, &sin).unwrap(),
                    (x.as_tensor().broadcast_mul(&cos).unwrap()
                        + rotate(x.as_tensor()).unwrap().broadcast_mul(&sin).unwrap())
                    .unwrap(),
                    vec![&x],
                ),
                (
                    swiglu(a.as_tensor(), b.as_tensor()).unwrap(),
                    (a.as_tensor().silu().unwrap() * b.as_tensor()).unwrap(),
                    vec![&a, &b],
                ),
            ];
            for (fused, composed, vars) in cases {
                assert!(max_abs_diff(&fused, &composed) < tol, "{dtype:?}: values");
                let probe = randn(fused.dims());
                let ga = (&fused * &probe).unwrap().sum_all().unwrap().backward().unwrap();
                let gb = (&composed * &probe).unwrap().sum_all().unwrap().backward().unwrap();
                for v in vars {
                    let d = max_abs_diff(ga.get(v.as_tensor()).unwrap(), gb.get(v.as_tensor()).unwrap());
                    assert!(d < tol, "{dtype:?}: gradient differs by {d}");
                }
            }
        }
    }
}
