//! Finding what to evaluate: a run directory (all its `checkpoint-NNNNNN/` in step
//! order), single checkpoints, or any model file, grouped into named runs.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One model of a run, at a training step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Point {
    /// Optimiser steps behind it (0: the starting model).
    pub step: usize,
    /// Where it is.
    pub path: PathBuf,
}

/// A named sequence of models, in step order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// The run directory's name (or the model file's stem).
    pub name: String,
    /// Its models, by ascending step.
    pub points: Vec<Point>,
}

fn checkpoint_step(path: &Path) -> Option<usize> {
    path.file_name()?.to_str()?.strip_prefix("checkpoint-")?.parse().ok()
}

/// A directory's name, or a file's name without its extension.
fn name_of(path: &Path) -> String {
    let name = if path.is_dir() { path.file_name() } else { path.file_stem() };
    name.map_or_else(|| path.display().to_string(), |s| s.to_string_lossy().into_owned())
}

/// The steps of a run's `final/`: the run's configured steps.
fn final_step(run_dir: &Path) -> Option<usize> {
    let text = std::fs::read_to_string(run_dir.join("run_config.json")).ok()?;
    serde_json::from_str::<serde_json::Value>(&text).ok()?["steps"].as_u64().map(|s| s as usize)
}

/// Groups `paths` into runs. A directory holding `checkpoint-*` directories is a run
/// of all of them; a checkpoint (or `final/`) belongs to the run directory around it;
/// any other model is a run of one point at step 0, named by its file stem.
pub fn discover(paths: &[PathBuf]) -> Result<Vec<Run>> {
    let mut runs: BTreeMap<String, Vec<Point>> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut add = |name: String, point: Point| {
        if !runs.contains_key(&name) {
            order.push(name.clone());
        }
        runs.entry(name).or_default().push(point);
    };
    for path in paths {
        if !path.exists() {
            bail!("{}: no such file or directory", path.display());
        }
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if let Some(step) = checkpoint_step(path) {
            add(name_of(&parent.canonicalize()?), Point { step, path: path.clone() });
        } else if let Some(step) = path.file_name().filter(|n| *n == "final").and_then(|_| final_step(parent)) {
            add(name_of(&parent.canonicalize()?), Point { step, path: path.clone() });
        } else if path.is_dir() && !crate::model::load::is_model_dir(path) {
            let mut found = Vec::new();
            for entry in std::fs::read_dir(path).with_context(|| format!("reading {}", path.display()))? {
                let p = entry?.path();
                if let Some(step) = checkpoint_step(&p).filter(|_| crate::model::load::is_model_dir(&p)) {
                    found.push(Point { step, path: p });
                }
            }
            if found.is_empty() {
                bail!("{}: neither a model nor a run directory with checkpoint-NNNNNN/ inside", path.display());
            }
            let name = name_of(&path.canonicalize()?);
            found.into_iter().for_each(|p| add(name.clone(), p));
        } else {
            add(name_of(path), Point { step: 0, path: path.clone() });
        }
    }
    Ok(order
        .into_iter()
        .map(|name| {
            let mut points = runs.remove(&name).expect("recorded");
            points.sort_by_key(|p| p.step);
            // `final/` duplicates the last checkpoint: keep the first of each step
            points.dedup_by_key(|p| p.step);
            Run { name, points }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_directories_checkpoints_and_files() {
        let root = std::env::temp_dir().join(format!("spo-runs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for step in [20, 5, 10] {
            let d = root.join("spo-a0.1").join(format!("checkpoint-{step:06}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("config.json"), "{}").unwrap();
        }
        std::fs::create_dir_all(root.join("spo-a0.1/final")).unwrap();
        std::fs::write(root.join("spo-a0.1/run_config.json"), r#"{"steps": 20}"#).unwrap();
        std::fs::write(root.join("model.gguf"), "GGUF").unwrap();
        let runs = discover(&[root.join("spo-a0.1"), root.join("spo-a0.1/final"), root.join("model.gguf")]).unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].name, "spo-a0.1", "a directory keeps its dots");
        assert_eq!(runs[0].points.iter().map(|p| p.step).collect::<Vec<_>>(), [5, 10, 20]);
        assert!(runs[0].points[2].path.ends_with("checkpoint-000020"), "final/ duplicates step 20");
        assert_eq!((runs[1].name.as_str(), runs[1].points[0].step), ("model", 0));
        let err = discover(std::slice::from_ref(&root)).unwrap_err().to_string();
        assert!(err.contains("neither a model nor a run directory"), "{err}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
