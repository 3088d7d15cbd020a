//! `x Wᵀ` for a frozen `W` whose backward computes `dx = dy W` only.
//!
//! candle's matmul backward always computes both operands' gradients, so a frozen
//! weight still costs a `dW = dyᵀ x` matmul and a `[out, in]` gradient per call
//! (LoRA's base weights, the tied output head). This op carries the plain
//! forward's result and hands back only the input's gradient.

use super::precomputed::Precomputed;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

/// The gradient path of `y = x Wᵀ` to `x` alone; `out` is the forward's result.
struct FrozenLinear {
    weight: Tensor,
    out: Precomputed,
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        self.out.cpu()
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, _: &candle_core::CudaStorage, _: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        self.out.cuda()
    }

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

#[cfg(test)]
mod tests {
    use super::*;
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
            let diff = |a: &Tensor, b: &Tensor| -> f64 {
                let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
                d.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
            };
            let tol = if dtype == DType::F64 { 1e-12 } else { 1e-5 };
            assert!(diff(&fused, &composed) < tol);
            assert!(diff(ga.get(x.as_tensor()).unwrap(), gb.get(x.as_tensor()).unwrap()) < tol);
            assert!(ga.get(&w).is_none(), "no gradient for the frozen weight");
        }
    }
}
