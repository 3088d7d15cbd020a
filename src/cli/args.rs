//! Flag value parsers and the usage error (exit code 2) they share.

use std::fmt;

/// A problem with the command line: reported on one line, exit code 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// The prompts of `--prompts FILE` (its non-empty lines) or `--prefix TEXT`, and
/// whether they are story prefixes (a story is then prompt + response).
pub fn prompts_or_prefix(
    prompts: Option<&std::path::Path>,
    prefix: Option<&str>,
) -> anyhow::Result<(Vec<String>, bool)> {
    use anyhow::Context;
    match (prompts, prefix) {
        (Some(p), None) => {
            let text = crate::fsx::read_text(p).context("--prompts")?;
            let lines: Vec<String> = text.lines().filter(|l| !l.trim().is_empty()).map(String::from).collect();
            if lines.is_empty() {
                return usage(format!("--prompts {}: no prompts in the file", p.display()));
            }
            Ok((lines, false))
        }
        (None, Some(prefix)) => Ok((vec![prefix.to_string()], true)),
        _ => usage("give --prompts FILE or --prefix TEXT"),
    }
}

/// Fails with a [`UsageError`].
pub fn usage<T>(msg: impl Into<String>) -> anyhow::Result<T> {
    Err(UsageError(msg.into()).into())
}

/// A list flag's value. An alias, not `Vec` spelled out, so that clap takes the
/// whole comma-separated string as one value and hands it to our parser.
pub type Floats = Vec<f64>;

/// A list of counts; see [`Floats`].
pub type Counts = Vec<usize>;

/// A comma-separated list of finite numbers.
pub fn finite_list(s: &str) -> Result<Vec<f64>, String> {
    s.split(',')
        .map(|item| {
            let item = item.trim();
            let v: f64 = item.parse().map_err(|_| format!("'{item}' is not a number"))?;
            if v.is_finite() {
                Ok(v)
            } else {
                Err(format!("'{item}' is not finite"))
            }
        })
        .collect()
}

/// A comma-separated list of finite numbers ≥ 0.
pub fn non_negative_list(s: &str) -> Result<Vec<f64>, String> {
    let v = finite_list(s)?;
    match v.iter().find(|x| **x < 0.0) {
        Some(x) => Err(format!("{x} is negative")),
        None => Ok(v),
    }
}

/// A comma-separated list of finite numbers > 0.
pub fn positive_list(s: &str) -> Result<Vec<f64>, String> {
    let v = finite_list(s)?;
    match v.iter().find(|x| **x <= 0.0) {
        Some(x) => Err(format!("{x} must be positive")),
        None => Ok(v),
    }
}

/// A finite number ≥ 0.
pub fn non_negative(s: &str) -> Result<f64, String> {
    match non_negative_list(s)?.as_slice() {
        [x] => Ok(*x),
        _ => Err("expected one number".into()),
    }
}

/// A finite number > 0.
pub fn positive(s: &str) -> Result<f64, String> {
    match positive_list(s)?.as_slice() {
        [x] => Ok(*x),
        _ => Err("expected one number".into()),
    }
}

/// `--device` and `--dtype`, shared by every command that runs a model.
#[derive(Debug, Clone, clap::Args)]
pub struct PlacementArgs {
    /// Device: auto (the first GPU in a CUDA build when one answers, else the CPU), cpu, cuda, cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Compute precision (default: bf16 on a GPU, f32 on the CPU). Under bf16,
    /// norms, softmaxes, log-probs, losses and the optimiser stay in f32.
    #[arg(long, value_enum)]
    pub dtype: Option<crate::model::Precision>,
}

impl PlacementArgs {
    /// The flags as a command line spells them (for commands.sh).
    pub fn argv(&self) -> Vec<String> {
        let mut out = vec!["--device".to_string(), self.device.clone()];
        out.extend(self.dtype.iter().flat_map(|d| ["--dtype".to_string(), d.to_string()]));
        out
    }

    /// The device and precision, or a usage error naming the flag.
    pub fn resolve(&self) -> anyhow::Result<crate::model::Placement> {
        crate::model::Placement::resolve(&self.device, self.dtype).or_else(|e| usage(e.to_string()))
    }
}

/// A comma-separated list of non-negative integers.
pub fn count_list(s: &str) -> Result<Vec<usize>, String> {
    s.split(',')
        .map(|item| item.trim().parse().map_err(|_| format!("'{}' is not a whole number", item.trim())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_and_reject_with_the_value_named() {
        assert_eq!(finite_list("1, -0.5,2").unwrap(), vec![1.0, -0.5, 2.0]);
        assert!(finite_list("1,abc").unwrap_err().contains("'abc'"));
        assert!(finite_list("inf").unwrap_err().contains("not finite"));
        assert!(finite_list("NaN").is_err());
        assert!(non_negative_list("0,-1").unwrap_err().contains("-1"));
        assert!(positive_list("0.1,0").is_err());
        assert_eq!(count_list("10,100").unwrap(), vec![10, 100]);
        assert!(count_list("1e3").is_err());
    }
}
