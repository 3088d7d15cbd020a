//! Rotary position embeddings in the half-split (Hugging Face) layout.
//!
//! Checkpoints in the interleaved layout (GGUF, llama2.c) are converted to this
//! one at load time by permuting the rows of `W_q` and `W_k` (see
//! [`super::load::permute`]), so one differentiable kernel serves every format.
//! candle's fused `rope*` ops have no backward; this is composed from primitives.
//! The angles are computed for the positions of each forward pass, never tabulated
//! over the whole context (a file may claim a context of billions of tokens).

use candle_core::{DType, Device, Result, Tensor, D};
use serde::{Deserialize, Serialize};

/// How a checkpoint rescales RoPE's frequencies for a longer context (Hugging Face
/// `rope_scaling`). Other kinds (dynamic NTK, YaRN, LongRoPE) are refused at load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rope_type", rename_all = "lowercase")]
pub enum RopeScaling {
    /// Positions divided by `factor` (every frequency divided by it).
    Linear {
        /// Scale factor.
        factor: f64,
    },
    /// Llama 3.1's: low frequencies divided by `factor`, high ones kept, a smooth
    /// blend between (transformers' `_compute_llama3_parameters`).
    Llama3 {
        /// Scale of the low frequencies.
        factor: f64,
        /// Wavelengths above `original_max_position_embeddings / low_freq_factor` are scaled.
        low_freq_factor: f64,
        /// Wavelengths below `original_max_position_embeddings / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// Context the model was pre-trained with.
        original_max_position_embeddings: usize,
    },
}

impl RopeScaling {
    /// Checks the parameters are usable (positive, ordered).
    pub fn validate(&self) -> std::result::Result<(), String> {
        let ok = match *self {
            RopeScaling::Linear { factor } => factor > 0.0 && factor.is_finite(),
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                factor > 0.0
                    && factor.is_finite()
                    && low_freq_factor > 0.0
                    && high_freq_factor > low_freq_factor
                    && high_freq_factor.is_finite()
                    && original_max_position_embeddings > 0
            }
        };
        if ok {
            Ok(())
        } else {
            Err(format!("rope_scaling {self:?} has out-of-range parameters"))
        }
    }

    /// The scaled inverse frequency of one unscaled one.
    fn apply(&self, inv: f64) -> f64 {
        match *self {
            RopeScaling::Linear { factor } => inv / factor,
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                let old = original_max_position_embeddings as f64;
                let wavelen = 2.0 * std::f64::consts::PI / inv;
                if wavelen < old / high_freq_factor {
                    inv
                } else if wavelen > old / low_freq_factor {
                    inv / factor
                } else {
                    let smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                    (1.0 - smooth) * inv / factor + smooth * inv
                }
            }
        }
    }
}

/// The rotation frequencies of one model.
#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f64>,
    max_positions: usize,
    dtype: DType,
}

/// `cos` / `sin` of the angles of one forward pass, `[B, 1, T, head_dim]`.
#[derive(Debug, Clone)]
pub struct Rotation {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    /// Frequencies `θ^{−2i/head_dim}` (rescaled by `scaling`) for positions below
    /// `max_positions`, rotations in `dtype`.
    pub fn new(head_dim: usize, max_positions: usize, theta: f64, scaling: Option<&RopeScaling>, dtype: DType) -> Self {
        let inv_freq = (0..head_dim / 2)
            .map(|i| 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64))
            .map(|f| scaling.map_or(f, |s| s.apply(f)))
            .collect();
        Self { inv_freq, max_positions, dtype }
    }

    /// Number of positions covered (the model's context).
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// The rotation at `positions: [B, T]` (u32), angles computed in f64.
    pub fn at(&self, positions: &Tensor, device: &Device) -> Result<Rotation> {
        let (b, t) = positions.dims2()?;
        let half = self.inv_freq.len();
        let inv = Tensor::from_vec(self.inv_freq.clone(), (1, 1, half), device)?;
        let angles = positions.to_dtype(DType::F64)?.unsqueeze(2)?.broadcast_mul(&inv)?;
        let table = |x: Tensor| -> Result<Tensor> {
            let x = x.to_dtype(self.dtype)?.reshape((b, 1, t, half))?;
            Tensor::cat(&[&x, &x], D::Minus1)
        };
        Ok(Rotation { cos: table(angles.cos()?)?, sin: table(angles.sin()?)? })
    }
}

impl Rotation {
    /// Rotates `x: [B, H, T, head_dim]` (one op with its own backward).
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        super::fused_elementwise::rope(x, &self.cos, &self.sin)
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
        let rope = Rope::new(hd, 16, theta, None, DType::F64);
        let x: Vec<f64> = (0..hd).map(|i| (i as f64 * 0.37).sin() + 0.1).collect();
        let xt = Tensor::from_vec(x.clone(), (1, 1, 1, hd), &dev).unwrap();
        let pos = Tensor::new(&[[5u32]], &dev).unwrap();
        let out = rope.at(&pos, &dev).unwrap().apply(&xt).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        for i in 0..hd / 2 {
            let a = 5.0 * theta.powf(-2.0 * i as f64 / hd as f64);
            let (u, v) = (x[i], x[i + hd / 2]);
            assert!((out[i] - (u * a.cos() - v * a.sin())).abs() < 1e-12);
            assert!((out[i + hd / 2] - (u * a.sin() + v * a.cos())).abs() < 1e-12);
        }
    }

    /// Llama 3.1's published setting (factor 8, low 1, high 4, 8192 tokens, θ = 500000,
    /// head_dim 128): wavelengths under 2048 tokens keep their frequency, those over
    /// 8192 are divided by 8, and in between the blend of the Llama 3.1 reference
    /// code (`apply_scaling`): (1 − s)·f/8 + s·f with s = (8192/λ − 1)/3.
    #[test]
    fn llama3_scaling_keeps_high_divides_low_and_blends_between() {
        let s = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        };
        let plain = Rope::new(128, 1 << 17, 500_000.0, None, DType::F64).inv_freq;
        let scaled = Rope::new(128, 1 << 17, 500_000.0, Some(&s), DType::F64).inv_freq;
        let (mut kept, mut divided, mut blended) = (0, 0, 0);
        for (f, g) in plain.iter().zip(&scaled) {
            let wavelen = 2.0 * std::f64::consts::PI / f;
            if wavelen < 2048.0 {
                assert_eq!(f, g);
                kept += 1;
            } else if wavelen > 8192.0 {
                assert!((g - f / 8.0).abs() < 1e-18);
                divided += 1;
            } else {
                let smooth = (8192.0 / wavelen - 1.0) / 3.0;
                assert!((g - ((1.0 - smooth) * f / 8.0 + smooth * f)).abs() < 1e-15);
                assert!(*g < *f && *g > f / 8.0);
                blended += 1;
            }
        }
        assert!(kept > 0 && divided > 0 && blended > 0, "{kept} {divided} {blended}");
        let linear = Rope::new(8, 16, 100.0, Some(&RopeScaling::Linear { factor: 4.0 }), DType::F64).inv_freq;
        assert_eq!(linear[1], 100f64.powf(-0.25) / 4.0);
    }
}
