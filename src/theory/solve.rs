//! Runs a tabular objective to its fixed point.
//!
//! α > 0 (and DPO, and SPO + β·KL): damped Newton on θ with μ frozen at each
//! iterate. At the fixed point every pair's gradient term vanishes on its own, so
//! μ's own variation drops out of the Jacobian and the iteration converges
//! quadratically even for SoftImportance, whose field is not a gradient.
//! α = 0 has no finite minimiser (the loss is linear in θ); it is followed by plain
//! gradient descent until the mass on the leading response is within 1e-9 of 1.

use super::objective::{Local, Objective};
use super::world::PairDistribution;
use crate::scalar::{max_abs_diff, softmax};

/// Stopping rules.
#[derive(Debug, Clone, Copy)]
pub struct SolveOptions {
    /// Converged when `‖∇_θ‖₂` falls below this (α > 0).
    pub grad_tol: f64,
    /// Iteration cap.
    pub max_iter: usize,
}

impl Default for SolveOptions {
    fn default() -> Self {
        Self { grad_tol: 1e-10, max_iter: 10_000 }
    }
}

/// A finished run.
#[derive(Debug, Clone)]
pub struct Solution {
    /// Final logits.
    pub theta: Vec<f64>,
    /// Final policy `softmax(θ)`.
    pub pi: Vec<f64>,
    /// Iterations taken.
    pub iterations: usize,
    /// Final `‖∇_θ‖₂`.
    pub grad_norm: f64,
    /// Whether the stopping rule was met before the cap.
    pub converged: bool,
    /// `π` and `‖∇‖` after each iteration, starting with the initial point.
    pub trace: Vec<(Vec<f64>, f64)>,
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// Minimises `obj` over θ from `theta0`.
pub fn solve(obj: &Objective, d: &PairDistribution, theta0: &[f64], opts: SolveOptions) -> Solution {
    match obj {
        Objective::Spo { alpha, kl: None, .. } if *alpha == 0.0 => gradient_flow(obj, d, theta0, opts),
        _ => newton(obj, d, theta0, opts),
    }
}

fn newton(obj: &Objective, d: &PairDistribution, theta0: &[f64], opts: SolveOptions) -> Solution {
    let n = theta0.len();
    let mut theta = theta0.to_vec();
    let mut trace = Vec::new();
    for iter in 0..=opts.max_iter {
        let mu = obj.weights(&theta, d);
        let at = obj.local(&theta, d, &mu);
        let g_norm = norm(&at.grad);
        trace.push((softmax(&theta), g_norm));
        if g_norm < opts.grad_tol || iter == opts.max_iter {
            return Solution {
                pi: softmax(&theta),
                theta,
                iterations: iter,
                grad_norm: g_norm,
                converged: g_norm < opts.grad_tol,
                trace,
            };
        }
        let step = newton_step(&at, n);
        theta = line_search(obj, d, &mu, &theta, &at, &step);
    }
    unreachable!("the loop returns at max_iter")
}

/// Solves `(H + 11ᵀ/n + λI) s = −g`, raising λ until `s` descends. The `11ᵀ/n`
/// term fixes the gauge (every loss is invariant to adding a constant to θ, so H
/// is singular along 1 while g ⟂ 1).
fn newton_step(at: &Local, n: usize) -> Vec<f64> {
    let scale = at.hess.iter().enumerate().map(|(i, r)| r[i].abs()).fold(0.0, f64::max).max(1e-300);
    let mut lambda = 0.0;
    loop {
        let mut a: Vec<Vec<f64>> = at.hess.clone();
        for (i, row) in a.iter_mut().enumerate() {
            for (j, x) in row.iter_mut().enumerate() {
                *x += 1.0 / n as f64 + if i == j { lambda } else { 0.0 };
            }
        }
        let rhs: Vec<f64> = at.grad.iter().map(|g| -g).collect();
        if let Some(s) = solve_linear(a, rhs) {
            let slope: f64 = s.iter().zip(&at.grad).map(|(a, b)| a * b).sum();
            if slope < 0.0 && s.iter().all(|x| x.is_finite()) {
                return s;
            }
        }
        lambda = if lambda == 0.0 { 1e-8 * scale } else { lambda * 10.0 };
        if lambda > 1e12 * scale {
            return at.grad.iter().map(|g| -g).collect();
        }
    }
}

/// Backtracking (Armijo) on the frozen-μ loss; once f's changes are below rounding,
/// a step is accepted when it shrinks the gradient norm instead.
fn line_search(
    obj: &Objective,
    d: &PairDistribution,
    mu: &[Vec<f64>],
    theta: &[f64],
    at: &Local,
    step: &[f64],
) -> Vec<f64> {
    let slope: f64 = step.iter().zip(&at.grad).map(|(a, b)| a * b).sum();
    let g_norm = norm(&at.grad);
    let mut t = 1.0;
    for _ in 0..60 {
        let cand: Vec<f64> = theta.iter().zip(step).map(|(a, b)| a + t * b).collect();
        let next = obj.local(&cand, d, mu);
        let armijo = next.loss <= at.loss + 1e-4 * t * slope;
        let in_rounding = (t * slope).abs() < 1e-13 * at.loss.abs().max(1.0);
        if armijo || (in_rounding && norm(&next.grad) < g_norm) {
            return cand;
        }
        t *= 0.5;
    }
    theta.iter().zip(step).map(|(a, b)| a + t * b).collect()
}

fn gradient_flow(obj: &Objective, d: &PairDistribution, theta0: &[f64], opts: SolveOptions) -> Solution {
    let mut theta = theta0.to_vec();
    let mut trace = Vec::new();
    for iter in 0..=opts.max_iter {
        let mu = obj.weights(&theta, d);
        let at = obj.local(&theta, d, &mu);
        let pi = softmax(&theta);
        let g_norm = norm(&at.grad);
        trace.push((pi.clone(), g_norm));
        let top = pi.iter().cloned().fold(0.0, f64::max);
        if 1.0 - top < 1e-9 || iter == opts.max_iter {
            return Solution { theta, pi, iterations: iter, grad_norm: g_norm, converged: 1.0 - top < 1e-9, trace };
        }
        // The gradient's scale is ~1/n²; a step of n² moves θ by O(1) per iteration.
        let lr = (theta.len() * theta.len()) as f64;
        theta.iter_mut().zip(&at.grad).for_each(|(t, g)| *t -= lr * g);
    }
    unreachable!("the loop returns at max_iter")
}

/// Plain gradient descent on the SPO preference loss (α > 0) from `theta0` with the
/// fixed step `1/L`, `L = (α/2)·max_i Σ_j (D(i≻j) + D(j≻i))` bounding the curvature:
/// the path a small-step trainer follows. Returns the policies visited, from the
/// start until `max_i |π_i − target_i| ≤ tol` (so `len − 1` iterations), or `None`
/// when that takes more than `cap` iterations or α = 0.
pub fn gradient_descent_path(
    obj: &Objective,
    d: &PairDistribution,
    theta0: &[f64],
    target: &[f64],
    tol: f64,
    cap: usize,
) -> Option<Vec<Vec<f64>>> {
    let alpha = match obj {
        Objective::Spo { alpha, kl: None, .. } if *alpha > 0.0 => *alpha,
        _ => return None,
    };
    let n = theta0.len();
    let degree = (0..n).map(|i| (0..n).map(|j| d.prob(i, j) + d.prob(j, i)).sum::<f64>()).fold(0.0, f64::max);
    let lr = 2.0 / (alpha * degree);
    let mut theta = theta0.to_vec();
    let mut path = Vec::new();
    for _ in 0..=cap {
        let pi = softmax(&theta);
        let done = max_abs_diff(&pi, target) <= tol;
        path.push(pi);
        if done {
            return Some(path);
        }
        let g = obj.local(&theta, d, &obj.weights(&theta, d)).grad;
        theta.iter_mut().zip(&g).for_each(|(t, g)| *t -= lr * g);
    }
    None
}

/// Gaussian elimination with partial pivoting; `None` if singular.
fn solve_linear(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Option<Vec<f64>> {
    let n = b.len();
    for col in 0..n {
        let piv = (col..n).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[piv][col].abs() < 1e-300 {
            return None;
        }
        a.swap(col, piv);
        b.swap(col, piv);
        for row in col + 1..n {
            let f = a[row][col] / a[col][col];
            for k in col..n {
                a[row][k] -= f * a[col][k];
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for i in (0..n).rev() {
        let s: f64 = (i + 1..n).map(|k| a[i][k] * x[k]).sum();
        x[i] = (b[i] - s) / a[i][i];
    }
    Some(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_solver_on_a_known_system() {
        let a = vec![vec![2.0, 1.0], vec![1.0, 3.0]];
        let x = solve_linear(a, vec![3.0, 5.0]).unwrap();
        assert!((x[0] - 0.8).abs() < 1e-14 && (x[1] - 1.4).abs() < 1e-14);
        assert!(solve_linear(vec![vec![0.0]], vec![1.0]).is_none());
    }
}
