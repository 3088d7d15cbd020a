//! Differentiable elementwise helpers built from candle primitives.
//!
//! candle has no differentiable `log_sigmoid`; composing one from `abs`/`minimum`
//! gives the wrong gradient at exactly 0 (both kinks claim a sub-gradient), which is
//! where every preference loss starts. Writing `|z|` through the same `relu` as the
//! `max(z, 0)` term makes the two kinks cancel for either choice of `relu'(0)`.

use candle_core::{Result, Tensor};

/// `softplus(z) = log(1 + e^z) = relu(z) + log(1 + e^{z − 2·relu(z)})`, stable and
/// with the exact gradient `σ(z)` everywhere, including `z = 0`.
pub fn softplus(z: &Tensor) -> Result<Tensor> {
    let r = z.relu()?;
    let neg_abs = (z - (&r * 2.0)?)?;
    let tail = (neg_abs.exp()? + 1.0)?.log()?;
    r + tail
}

/// `log σ(x) = −softplus(−x)`.
pub fn log_sigmoid(x: &Tensor) -> Result<Tensor> {
    softplus(&x.neg()?)?.neg()
}

/// `σ(x)`, computed as `exp(log σ(x))` so it never overflows.
pub fn sigmoid(x: &Tensor) -> Result<Tensor> {
    log_sigmoid(x)?.exp()
}

/// `log(e^a + e^b)` elementwise, stable: `max + softplus(min − max)`.
pub fn log_add_exp(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let hi = a.maximum(b)?;
    let lo = a.minimum(b)?;
    hi.clone() + softplus(&(lo - hi)?)?
}

/// Mean of a 1-D tensor as an `f64`.
pub fn mean_f64(x: &Tensor) -> Result<f64> {
    x.mean_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scalar;
    use candle_core::{Device, Var};

    #[test]
    fn log_sigmoid_value_and_gradient_match_closed_forms_including_zero() {
        let xs = [-800.0, -5.0, -0.3, 0.0, 0.7, 4.0, 800.0];
        let v = Var::new(&xs[..], &Device::Cpu).unwrap();
        let y = log_sigmoid(v.as_tensor()).unwrap();
        let vals = y.to_vec1::<f64>().unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        let grad = g.get(v.as_tensor()).unwrap().to_vec1::<f64>().unwrap();
        for (i, &x) in xs.iter().enumerate() {
            assert!((vals[i] - scalar::log_sigmoid(x)).abs() < 1e-12, "value at {x}");
            // d/dx log σ(x) = σ(−x)
            assert!((grad[i] - scalar::sigmoid(-x)).abs() < 1e-12, "gradient at {x}");
        }
    }

    #[test]
    fn log_add_exp_matches_scalar() {
        let a = Tensor::new(&[-1000.0f64, 0.0, 3.0], &Device::Cpu).unwrap();
        let b = Tensor::new(&[-1000.0f64, 0.0, -2.0], &Device::Cpu).unwrap();
        let got = log_add_exp(&a, &b).unwrap().to_vec1::<f64>().unwrap();
        for (i, (x, y)) in [(-1000.0, -1000.0), (0.0, 0.0), (3.0, -2.0)].iter().enumerate() {
            assert!((got[i] - scalar::log_add_exp(*x, *y)).abs() < 1e-9);
        }
    }
}
