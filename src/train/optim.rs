//! AdamW over the model's variables, with global-norm clipping. Its state is plain
//! tensors so checkpoints can save and restore it exactly.

use anyhow::Result;
use candle_core::{Tensor, Var};
use std::collections::HashMap;

/// AdamW hyper-parameters.
#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

/// AdamW (Loshchilov & Hutter): `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`,
/// `θ ← θ − lr·(m̂/(√v̂ + ε) + wd·θ)` with bias-corrected `m̂`, `v̂`.
pub struct AdamW {
    cfg: AdamWConfig,
    vars: Vec<(String, Var)>,
    /// First moments, by variable name.
    pub m: HashMap<String, Tensor>,
    /// Second moments, by variable name.
    pub v: HashMap<String, Tensor>,
    /// Steps taken (for bias correction).
    pub t: usize,
}

impl AdamW {
    /// Zero state for these variables.
    pub fn new(vars: Vec<(String, Var)>, cfg: AdamWConfig) -> Result<Self> {
        let zeros = |v: &Var| v.as_tensor().zeros_like();
        let m = vars.iter().map(|(n, v)| Ok((n.clone(), zeros(v)?))).collect::<Result<_>>()?;
        let v = vars.iter().map(|(n, v)| Ok((n.clone(), zeros(v)?))).collect::<Result<_>>()?;
        Ok(Self { cfg, vars, m, v, t: 0 })
    }

    /// One update with gradients by variable name (missing ones count as zero).
    pub fn step(&mut self, grads: &HashMap<String, Tensor>, lr: f64) -> Result<()> {
        self.t += 1;
        let c = self.cfg;
        let bc1 = 1.0 - c.beta1.powi(self.t as i32);
        let bc2 = 1.0 - c.beta2.powi(self.t as i32);
        for (name, var) in &self.vars {
            let Some(g) = grads.get(name) else { continue };
            let m = ((&self.m[name] * c.beta1)? + (g * (1.0 - c.beta1))?)?;
            let v = ((&self.v[name] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let update = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + c.eps)?)?;
            let theta = var.as_tensor();
            let next = (theta - ((update + (theta * c.weight_decay)?)? * lr)?)?;
            var.set(&next)?;
            self.m.insert(name.clone(), m);
            self.v.insert(name.clone(), v);
        }
        Ok(())
    }
}

/// Global L2 norm of the gradients.
pub fn grad_norm(grads: &HashMap<String, Tensor>) -> Result<f64> {
    let mut total = 0.0;
    for g in grads.values() {
        total += g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
    }
    Ok(total.sqrt())
}

/// Scales the gradients so their global norm is at most `max_norm` (0: no clipping).
/// Returns the norm before clipping.
pub fn clip(grads: &mut HashMap<String, Tensor>, max_norm: f64) -> Result<f64> {
    let norm = grad_norm(grads)?;
    if max_norm > 0.0 && norm > max_norm {
        let s = max_norm / (norm + 1e-12);
        for g in grads.values_mut() {
            *g = (&*g * s)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Two steps worked out by hand for one scalar parameter.
    #[test]
    fn adamw_matches_hand_computation() {
        let var = Var::new(&[1.0f64], &Device::Cpu).unwrap();
        let cfg = AdamWConfig { beta1: 0.9, beta2: 0.99, eps: 0.0, weight_decay: 0.1 };
        let mut opt = AdamW::new(vec![("w".into(), var.clone())], cfg).unwrap();
        let g = |x: f64| HashMap::from([("w".to_string(), Tensor::new(&[x], &Device::Cpu).unwrap())]);
        opt.step(&g(2.0), 0.5).unwrap();
        // m̂ = g, v̂ = g² → update = sign(g) = 1; θ = 1 − 0.5·(1 + 0.1·1) = 0.45
        let w1 = var.as_tensor().to_vec1::<f64>().unwrap()[0];
        assert!((w1 - 0.45).abs() < 1e-12);
        opt.step(&g(-1.0), 0.5).unwrap();
        let m = 0.9 * 0.2 - 0.1;
        let v = 0.99 * 0.04 + 0.01 * 1.0;
        let upd = (m / (1.0 - 0.81)) / (v / (1.0 - 0.9801f64)).sqrt();
        let w2 = w1 - 0.5 * (upd + 0.1 * w1);
        assert!((var.as_tensor().to_vec1::<f64>().unwrap()[0] - w2).abs() < 1e-12);
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let mut g = HashMap::from([("a".to_string(), Tensor::new(&[3.0f64, 4.0], &Device::Cpu).unwrap())]);
        assert_eq!(clip(&mut g, 1.0).unwrap(), 5.0);
        assert!((grad_norm(&g).unwrap() - 1.0).abs() < 1e-9);
    }
}
