//! Linear layers with a frozen weight and hand-written backwards: `x Wᵀ` whose
//! backward computes `dx = dy W` only, and the same plus a LoRA update.
//!
//! candle's matmul backward always computes both operands' gradients, so a frozen
//! weight still costs a `dW = dyᵀ x` matmul and a `[out, in]` gradient per call
//! (LoRA's base weights, the tied output head). This op carries the plain
//! forward's result and hands back only the input's gradient.

use super::precomputed::{precomputed_forward, Precomputed};
use candle_core::{CustomOp1, CustomOp3, Result, Tensor};

/// The gradient path of `y = x Wᵀ` to `x` alone; `out` is the forward's result.
struct FrozenLinear {
    weight: Tensor,
    out: Precomputed,
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    precomputed_forward!(s1 l1);

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let out = self.weight.dim(0)?;
        let rows = grad.elem_count() / out;
        Ok(Some(grad.reshape((rows, out))?.matmul(&self.weight)?.reshape(arg.shape())?))
    }
}

/// `x Wᵀ` (computed by `forward`) with a gradient for `x` only; `weight` must not
/// need one. Untracked inputs take `forward` as is.
pub fn frozen_linear(x: &Tensor, weight: &Tensor, forward: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    if !x.track_op() {
        return forward(x);
    }
    let out = Precomputed::new(forward(&x.detach())?)?;
    x.apply_op1(FrozenLinear { weight: weight.detach(), out })
}

/// `y = x Wᵀ + s·((x ⊙ m) Aᵀ) Bᵀ` for a frozen `W` and trained LoRA factors `A: [r,
/// in]`, `B: [out, r]` (dropout mask `m` optional): one op whose backward gives
/// `∂x = g W + s·((g B) A) ⊙ m`, `∂A = s·(g B)ᵀ (x ⊙ m)`, `∂B = s·gᵀ ((x ⊙ m) Aᵀ)`.
/// Composed from candle ops the adapter would keep three more `[rows, out]`
/// activations per projection (the base output, the update, the sum), which made
/// LoRA use more memory than a full fine-tune.
struct LoraLinear {
    weight: Tensor,
    scale: f64,
    mask: Option<Tensor>,
    out: Precomputed,
}

impl LoraLinear {
    /// `x` as `[rows, in]`, with the dropout mask applied.
    fn masked(&self, x2: &Tensor) -> Result<Tensor> {
        match &self.mask {
            Some(m) => x2 * m.reshape(x2.shape())?,
            None => Ok(x2.clone()),
        }
    }
}

impl CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "lora-linear"
    }

    precomputed_forward!(s1 l1, s2 l2, s3 l3);

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (out, inner) = self.weight.dims2()?;
        let rows = grad.elem_count() / out;
        let (a, b) = (a.detach(), b.detach());
        let g = grad.reshape((rows, out))?;
        let xm = self.masked(&x.detach().reshape((rows, inner))?)?;
        let gb = g.matmul(&b)?; // [rows, r]
        let d_x = (g.matmul(&self.weight)? + self.masked(&(gb.matmul(&a)? * self.scale)?)?)?;
        let d_a = (gb.t()?.matmul(&xm)? * self.scale)?;
        let d_b = (g.t()?.matmul(&xm.matmul(&a.t()?)?)? * self.scale)?;
        Ok((x.track_op().then(|| d_x.reshape(x.shape())).transpose()?, Some(d_a), Some(d_b)))
    }
}

/// `x Wᵀ + s·((x ⊙ mask) Aᵀ) Bᵀ` (the base part computed by `base`) with gradients
/// for `x`, `A` and `B` and none for the frozen `W` ([`LoraLinear`]).
pub fn lora_linear(
    x: &Tensor,
    weight: &Tensor,
    (a, b, scale): (&Tensor, &Tensor, f64),
    mask: Option<Tensor>,
    base: impl FnOnce(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let xd = x.detach();
    let xm = match &mask {
        Some(m) => (&xd * m)?,
        None => xd.clone(),
    };
    let update = (xm.broadcast_matmul(&a.detach().t()?)?.broadcast_matmul(&b.detach().t()?)? * scale)?;
    let y = (base(&xd)? + update)?;
    if !(x.track_op() || a.track_op() || b.track_op()) {
        return Ok(y);
    }
    let op = LoraLinear { weight: weight.detach(), scale, mask, out: Precomputed::new(y)? };
    x.apply_op3(a, b, op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::precomputed::max_abs_diff;
    use candle_core::{DType, Device, Var};

    /// Values and the input's gradient equal the composed matmul's, in f64 and f32;
    /// the weight gets no gradient.
    #[test]
    fn matches_the_composed_matmul_and_leaves_the_weight_alone() {
        for dtype in [DType::F64, DType::F32] {
            let dev = Device::Cpu;
            let x =
                Var::from_tensor(&Tensor::randn(0f64, 1.0, (2, 3, 5), &dev).unwrap().to_dtype(dtype).unwrap()).unwrap();
            let w = Tensor::randn(0f64, 1.0, (4, 5), &dev).unwrap().to_dtype(dtype).unwrap();
            let plain = |x: &Tensor| x.broadcast_matmul(&w.t()?);
            let fused = frozen_linear(x.as_tensor(), &w, plain).unwrap();
            let composed = plain(x.as_tensor()).unwrap();
            let probe = Tensor::randn(0f64, 1.0, (2, 3, 4), &dev).unwrap().to_dtype(dtype).unwrap();
            let ga = (&fused * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let gb = (&composed * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let tol = if dtype == DType::F64 { 1e-12 } else { 1e-5 };
            assert!(max_abs_diff(&fused, &composed) < tol);
            assert!(max_abs_diff(ga.get(x.as_tensor()).unwrap(), gb.get(x.as_tensor()).unwrap()) < tol);
            assert!(ga.get(&w).is_none(), "no gradient for the frozen weight");
        }
    }

    /// The LoRA linear's value and its x, A and B gradients equal the composed
    /// ops', in f64 and f32, with and without a dropout mask; W gets none.
    #[test]
    fn lora_linear_matches_the_composed_ops() {
        let dev = Device::Cpu;
        for dtype in [DType::F64, DType::F32] {
            let randn = |s: &[usize]| Tensor::randn(0f64, 1.0, s, &dev).unwrap().to_dtype(dtype).unwrap();
            let x = Var::from_tensor(&randn(&[2, 3, 5])).unwrap();
            let (a, b) = (Var::from_tensor(&randn(&[2, 5])).unwrap(), Var::from_tensor(&randn(&[4, 2])).unwrap());
            let w = randn(&[4, 5]);
            let mask = (randn(&[2, 3, 5]).ge(0.0).unwrap().to_dtype(dtype).unwrap() * 2.0).unwrap();
            for m in [None, Some(mask)] {
                let base = |x: &Tensor| x.broadcast_matmul(&w.t()?);
                let (xa, aa, ba) = (x.as_tensor(), a.as_tensor(), b.as_tensor());
                let fused = lora_linear(xa, &w, (aa, ba, 1.5), m.clone(), base).unwrap();
                let xm = match &m {
                    Some(m) => (xa * m).unwrap(),
                    None => xa.clone(),
                };
                let update = xm.broadcast_matmul(&aa.t().unwrap()).unwrap().broadcast_matmul(&ba.t().unwrap()).unwrap();
                let composed = (base(xa).unwrap() + (update * 1.5).unwrap()).unwrap();
                let probe = randn(&[2, 3, 4]);
                let ga = (&fused * &probe).unwrap().sum_all().unwrap().backward().unwrap();
                let gb = (&composed * &probe).unwrap().sum_all().unwrap().backward().unwrap();
                let tol = if dtype == DType::F64 { 1e-12 } else { 1e-4 };
                assert!(max_abs_diff(&fused, &composed) < tol, "{dtype:?} value");
                for (what, v) in [("x", &x), ("A", &a), ("B", &b)] {
                    let d = max_abs_diff(ga.get(v.as_tensor()).unwrap(), gb.get(v.as_tensor()).unwrap());
                    assert!(d < tol, "{dtype:?} mask {}: ∂{what} differs by {d}", m.is_some());
                }
                assert!(ga.get(&w).is_none());
            }
        }
    }
}
