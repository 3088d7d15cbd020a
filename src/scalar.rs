//! Numerically stable scalar functions shared by the tensor losses and the
//! tabular theory engine, so both evaluate the paper's formulas the same way.

/// Logistic sigmoid `σ(x) = 1 / (1 + e^{-x})`, stable for large |x|.
pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// `log σ(x) = min(x, 0) − log(1 + e^{−|x|})`, never exponentiating a large number.
pub fn log_sigmoid(x: f64) -> f64 {
    x.min(0.0) - (-x.abs()).exp().ln_1p()
}

/// `log(e^a + e^b)` without overflow.
pub fn log_add_exp(a: f64, b: f64) -> f64 {
    let m = a.max(b);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + ((a - m).exp() + (b - m).exp()).ln()
}

/// `softmax(v)` of a slice.
pub fn softmax(v: &[f64]) -> Vec<f64> {
    let m = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = v.iter().map(|x| (x - m).exp()).collect();
    let z: f64 = e.iter().sum();
    e.into_iter().map(|x| x / z).collect()
}

/// Shannon entropy in nats of a distribution.
pub fn entropy(p: &[f64]) -> f64 {
    -p.iter().filter(|&&x| x > 0.0).map(|&x| x * x.ln()).sum::<f64>()
}

/// `KL(p ‖ q)` in nats; `q` must be positive wherever `p` is.
pub fn kl(p: &[f64], q: &[f64]) -> f64 {
    p.iter().zip(q).filter(|(&a, _)| a > 0.0).map(|(&a, &b)| a * (a / b).ln()).sum()
}

/// Largest absolute elementwise difference of two equally long slices.
pub fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_sigmoid_matches_direct_formula_and_stays_finite() {
        for x in [-30.0f64, -2.0, -0.1, 0.0, 0.5, 3.0, 30.0] {
            let direct = (1.0 / (1.0 + (-x).exp())).ln();
            assert!((log_sigmoid(x) - direct).abs() < 1e-12, "x = {x}");
        }
        assert!((log_sigmoid(-800.0) + 800.0).abs() < 1e-9);
        assert_eq!(log_sigmoid(800.0), 0.0);
        assert!((sigmoid(0.0) - 0.5).abs() < 1e-15);
        assert!(sigmoid(-800.0) >= 0.0 && sigmoid(800.0) == 1.0);
    }

    #[test]
    fn log_add_exp_and_entropy_closed_forms() {
        assert!((log_add_exp(0.0, 0.0) - 2f64.ln()).abs() < 1e-15);
        assert!((log_add_exp(-1000.0, -1000.0) - (-1000.0 + 2f64.ln())).abs() < 1e-9);
        assert!((entropy(&[0.25; 4]) - 4f64.ln()).abs() < 1e-15);
        assert_eq!(kl(&[0.5, 0.5], &[0.5, 0.5]), 0.0);
        assert!((kl(&[1.0, 0.0], &[0.5, 0.5]) - 2f64.ln()).abs() < 1e-15);
    }
}
