//! Rotary position embeddings in the half-split (Hugging Face) layout.
//!
//! Checkpoints in the interleaved layout (GGUF, llama2.c) are converted to this
//! one at load time by permuting the rows of `W_q` and `W_k` (see
//! [`super::load::permute`]), so one differentiable kernel serves every format.
//! candle's fused `rope*` ops have no backward; this is composed from primitives.

use candle_core::{DType, Device, Result, Tensor, D};

/// Precomputed `cos` / `sin` tables, `[max_positions, head_dim / 2]`.
#[derive(Debug, Clone)]
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    /// Tables for positions `0..max_positions` with base `theta`.
    pub fn new(head_dim: usize, max_positions: usize, theta: f64, dtype: DType, device: &Device) -> Result<Self> {
        let half = head_dim / 2;
        let inv: Vec<f64> = (0..half).map(|i| 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64)).collect();
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        for p in 0..max_positions {
            for f in &inv {
                let a = p as f64 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        let table = |v: Vec<f64>| Tensor::from_vec(v, (max_positions, half), device)?.to_dtype(dtype);
        Ok(Self { cos: table(cos)?, sin: table(sin)? })
    }

    /// Number of positions covered.
    pub fn max_positions(&self) -> usize {
        self.cos.dim(0).unwrap_or(0)
    }

    /// Rotates `x: [B, H, T, head_dim]` at `positions: [B, T]` (u32).
    pub fn apply(&self, x: &Tensor, positions: &Tensor) -> Result<Tensor> {
        let (b, _h, t, hd) = x.dims4()?;
        let flat = positions.flatten_all()?;
        let gather = |table: &Tensor| -> Result<Tensor> {
            let half = table.index_select(&flat, 0)?.reshape((b, 1, t, hd / 2))?;
            Tensor::cat(&[&half, &half], D::Minus1)
        };
        let (cos, sin) = (gather(&self.cos)?, gather(&self.sin)?);
        let x1 = x.narrow(D::Minus1, 0, hd / 2)?;
        let x2 = x.narrow(D::Minus1, hd / 2, hd / 2)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the definition: pair (i, i + hd/2) rotated by angle p·θ^{−2i/hd}.
    #[test]
    fn rotates_each_half_split_pair_by_its_angle() {
        let dev = Device::Cpu;
        let (hd, theta) = (8, 100.0);
        let rope = Rope::new(hd, 16, theta, DType::F64, &dev).unwrap();
        let x: Vec<f64> = (0..hd).map(|i| (i as f64 * 0.37).sin() + 0.1).collect();
        let xt = Tensor::from_vec(x.clone(), (1, 1, 1, hd), &dev).unwrap();
        let pos = Tensor::new(&[[5u32]], &dev).unwrap();
        let out = rope.apply(&xt, &pos).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        for i in 0..hd / 2 {
            let a = 5.0 * theta.powf(-2.0 * i as f64 / hd as f64);
            let (u, v) = (x[i], x[i + hd / 2]);
            assert!((out[i] - (u * a.cos() - v * a.sin())).abs() < 1e-12);
            assert!((out[i + hd / 2] - (u * a.sin() + v * a.cos())).abs() < 1e-12);
        }
    }
}
