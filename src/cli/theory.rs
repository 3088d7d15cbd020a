//! `spo theory`: the paper's theorems reproduced exactly in the tabular setting.

use super::args::{count_list, finite_list, non_negative, non_negative_list, positive_list, usage, Counts, Floats};
use crate::theory::finite::SgdOptions;
use crate::theory::world::symmetric_from_upper;
use crate::theory::{run as run_theory, TheoryConfig, TheoryReport};
use anyhow::Result;
use clap::Args;
use std::fmt::Write as _;
use std::path::PathBuf;

/// Flags of `spo theory`.
#[derive(Debug, Args)]
pub struct TheoryArgs {
    /// Bradley–Terry rewards of the responses, comma-separated (at least two).
    #[arg(long, value_parser = finite_list, default_value = "1,0.5,0,-0.5,-1,2", allow_hyphen_values = true)]
    pub rewards: Floats,
    /// SPO temperatures α ≥ 0; 0 is the argmax limit (eq. 9).
    #[arg(long, value_parser = non_negative_list, default_value = "0.1,0.5,1,2", allow_hyphen_values = true)]
    pub alpha: Floats,
    /// DPO temperatures β > 0, also used as KL weights of SPO + β·KL.
    #[arg(long, value_parser = positive_list, default_value = "0.1,1", allow_hyphen_values = true)]
    pub beta: Floats,
    /// Reference policy π_ref: positive probabilities summing to 1, one per response (default uniform).
    #[arg(long = "ref", value_parser = finite_list, allow_hyphen_values = true)]
    pub reference: Option<Floats>,
    /// SoftImportance γ for the Theorem 2 runs.
    #[arg(long, value_parser = non_negative, default_value = "1", allow_hyphen_values = true)]
    pub gamma: f64,
    /// Masses of the non-uniform pair distribution D for Theorem 2: one positive number
    /// per unordered pair, in the order (0,1), (0,2), …, (1,2), … (default: random from --seed).
    #[arg(long, value_parser = positive_list, allow_hyphen_values = true)]
    pub pair_weights: Option<Floats>,
    /// Seed of the random D and of the finite-sample draws.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// α of the finite-sample mode.
    #[arg(long, value_parser = super::args::positive, default_value = "1", allow_hyphen_values = true)]
    pub finite_alpha: f64,
    /// Sample sizes N of the finite-sample mode ("0" skips it).
    #[arg(long, value_parser = count_list, default_value = "100,1000,10000,100000", allow_hyphen_values = true)]
    pub samples: Counts,
    /// Minibatch SGD steps per sample size.
    #[arg(long, default_value_t = 20_000)]
    pub sgd_steps: usize,
    /// Independent datasets per sample size (errors are averaged).
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Also draw the figure to this file (.png or .svg).
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// Validates the flags and builds the run configuration.
pub fn config(args: &TheoryArgs) -> Result<TheoryConfig> {
    let rewards = args.rewards.clone();
    let n = rewards.len();
    if n < 2 {
        return usage(format!("--rewards: need at least two responses, got {n}"));
    }
    let reference = match &args.reference {
        None => None,
        Some(p) if p.len() != n => {
            return usage(format!("--ref: expected {n} probabilities (one per reward), got {}", p.len()))
        }
        Some(p) if p.iter().any(|x| *x <= 0.0) => {
            return usage(format!(
                "--ref: every probability must be > 0 (DPO's target divides by none of them being 0), got {p:?}"
            ))
        }
        Some(p) if (p.iter().sum::<f64>() - 1.0).abs() > 1e-6 => {
            return usage(format!("--ref: probabilities must sum to 1, they sum to {}", p.iter().sum::<f64>()))
        }
        Some(p) => Some(p.iter().map(|x| x / p.iter().sum::<f64>()).collect()),
    };
    let pair_mass = match &args.pair_weights {
        None => None,
        Some(w) if w.len() != n * (n - 1) / 2 => {
            return usage(format!(
                "--pair-weights: expected {} values (one per unordered pair of {n} responses), got {}",
                n * (n - 1) / 2,
                w.len()
            ))
        }
        Some(w) => Some(symmetric_from_upper(n, w.iter().copied())),
    };
    let finite_sizes = if args.samples == [0] { Vec::new() } else { args.samples.clone() };
    if finite_sizes.contains(&0) {
        return usage("--samples: sizes must be positive (pass 0 alone to skip the finite-sample mode)");
    }
    Ok(TheoryConfig {
        rewards,
        alphas: args.alpha.clone(),
        betas: args.beta.clone(),
        reference,
        gamma: args.gamma,
        pair_mass,
        seed: args.seed,
        finite_alpha: args.finite_alpha,
        finite_sizes,
        sgd: SgdOptions { steps: args.sgd_steps.max(2), repeats: args.repeats.max(1), ..SgdOptions::default() },
    })
}

/// Runs `spo theory`.
pub fn run(args: TheoryArgs) -> Result<()> {
    let cfg = config(&args)?;
    let report = run_theory(&cfg);
    if let Some(path) = &args.plot {
        crate::plot::Format::from_path(path).or_else(|e| usage(format!("--plot: {e}")))?;
        crate::plot::theory_figure(&report, path)?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", table(&report));
    }
    Ok(())
}

fn fmt_vec(v: &[f64]) -> String {
    let items: Vec<String> = v.iter().map(|x| format!("{x:.4}")).collect();
    format!("[{}]", items.join(" "))
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or("-".into(), |x| x.to_string())
}

fn sci(x: f64) -> String {
    format!("{x:.2e}")
}

fn fixed(x: f64) -> String {
    format!("{x:.4}")
}

/// A titled table: columns right-aligned to their widest cell, except a last `π` column.
fn section(out: &mut String, title: &str, headers: &[&str], rows: Vec<Vec<String>>) {
    let widths: Vec<usize> = (0..headers.len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).chain([headers[c].chars().count()]).max().unwrap_or(0))
        .collect();
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:>w$}", w = w + 2)).collect();
        padded.concat().trim_end().to_string()
    };
    let _ = writeln!(out, "\n{title}");
    let _ = writeln!(out, "{}", line(headers.to_vec()));
    for row in &rows {
        let _ = writeln!(out, "{}", line(row.iter().map(String::as_str).collect()));
    }
}

/// The human-readable report.
pub fn table(r: &TheoryReport) -> String {
    let mut s = format!(
        "rewards r = {}   π_ref = {} (entropy {:.4})\n",
        fmt_vec(&r.rewards),
        fmt_vec(&r.reference),
        r.reference_entropy
    );
    section(
        &mut s,
        "Theorem 1 — SPO preference loss, uniform μ, uniform D: fixed point = softmax(r/α) (argmax at α = 0)",
        &["α", "max|π−tgt|", "iters", "GD iters", "‖∇‖", "entropy", "  π"],
        r.spo
            .iter()
            .map(|row| {
                let g = format!("{:.1e}", row.grad_norm);
                let it = row.iterations.to_string();
                vec![
                    row.alpha.to_string(),
                    sci(row.max_abs_err),
                    it,
                    opt(row.gd_iterations),
                    g,
                    fixed(row.entropy),
                    fmt_vec(&row.pi),
                ]
            })
            .collect(),
    );
    section(
        &mut s,
        &format!(
            "Theorem 2 — same fixed point with SoftImportance μ (γ = {}) and/or a non-uniform D, by another path",
            r.gamma
        ),
        &["α", "μ", "D", "max|π−tgt|", "iters", "GD iters", "path gap"],
        r.spo_weighted
            .iter()
            .map(|row| {
                vec![
                    row.alpha.to_string(),
                    row.weighting.clone(),
                    row.pair_distribution.clone(),
                    sci(row.max_abs_err),
                    row.iterations.to_string(),
                    opt(row.gd_iterations),
                    opt(row.path_gap.map(fixed)),
                ]
            })
            .collect(),
    );
    if !r.dpo.is_empty() {
        section(
            &mut s,
            "Section 5 — DPO's fixed point π_ref·exp(r/β)/Z depends on π_ref and collapses as β → 0",
            &["β", "max|π−tgt|", "iters", "entropy", "  π"],
            r.dpo
                .iter()
                .map(|row| {
                    let it = row.iterations.to_string();
                    vec![row.beta.to_string(), sci(row.max_abs_err), it, fixed(row.entropy), fmt_vec(&row.pi)]
                })
                .collect(),
        );
        section(
            &mut s,
            "SPO + β·KL(π‖π_ref): entropy set by α, pulled toward π_ref by β",
            &["α", "β", "entropy", "KL(π‖ref)", "KL(pref-only)", "iters"],
            r.spo_kl
                .iter()
                .map(|row| {
                    let (a, b, it) = (row.alpha.to_string(), row.beta.to_string(), row.iterations.to_string());
                    vec![a, b, fixed(row.entropy), fixed(row.kl_to_ref), fixed(row.kl_pref_only), it]
                })
                .collect(),
        );
    }
    if let Some(first) = r.finite.first() {
        section(
            &mut s,
            &format!(
                "Finite samples — minibatch SGD on N pairs from the BT expert, α = {} (mean of {} draws)",
                r.finite_alpha, first.repeats
            ),
            &["N", "SGD error", "error·√N", "empirical optimum"],
            r.finite
                .iter()
                .map(|row| {
                    let optimum = row.empirical_optimum_err.map_or("none (no finite min)".into(), sci);
                    vec![row.n.to_string(), sci(row.max_abs_err), format!("{:.3}", row.err_sqrt_n), optimum]
                })
                .collect(),
        );
    }
    s
}
