//! `spo eval`, `spo sweep` and `spo demo` run as other tools call them, on a tiny
//! random model (the real demo is timed by hand; see the README).

mod common;

use common::s;

use serde_json::Value;
use std::path::Path;

fn ok(o: &std::process::Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "exit {:?}: {err}", o.status);
    err
}

fn json_of(o: &std::process::Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
}

fn mtime(p: &Path) -> std::time::SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

/// The short runs of the sweep tests: 2 steps of 2 pairs, a checkpoint every step.
const RUN: [&str; 8] = ["--steps", "2", "--batch-size", "2", "--lr", "0.01", "--save-every", "1"];

#[test]
fn eval_reports_win_rates_per_checkpoint_and_reuses_its_cache() {
    let (model, data, dir) = common::tiny_run_inputs("eval", 3);
    let run = dir.join("run");
    ok(&common::spo_train(
        &model,
        &data,
        &run,
        &[
            "--loss",
            "dpo",
            "--beta",
            "0.1",
            "--steps",
            "2",
            "--batch-size",
            "2",
            "--lr",
            "0.05",
            "--warmup-steps",
            "0",
            "--save-every",
            "1",
            "--eval-fraction",
            "0",
        ],
    ));
    let cache = dir.join("cache");
    let plot = dir.join("winrate.svg");
    let args = [
        "eval",
        "--reference",
        s(&model),
        "--checkpoints",
        s(&run),
        "--prefix",
        "Q",
        "--num-samples",
        "8",
        "--max-tokens",
        "8",
        "--sample-batch-size",
        "3",
        "--judge",
        "rules",
        "--cache",
        s(&cache),
        "--json",
        "--plot",
        s(&plot),
    ];
    let first = common::spo(&args);
    ok(&first);
    let report = json_of(&first);
    let points = report["runs"]["run"].as_array().expect("the run, named by its directory");
    let steps: Vec<u64> = points.iter().map(|p| p["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [0, 1, 2]);
    // Step 0 is the reference against itself: same seeds, same stories, all ties.
    let p0 = &points[0];
    assert_eq!((p0["wins"].as_u64(), p0["ties"].as_u64(), p0["losses"].as_u64()), (Some(0), Some(16), Some(0)));
    assert_eq!(p0["win_rate"], 0.5);
    // Wilson 95% for p = 1/2 over 8 matches (computed independently: 0.215216, 0.784784)
    let ci = p0["ci"].as_array().unwrap();
    assert!((ci[0].as_f64().unwrap() - 0.215216).abs() < 1e-5 && (ci[1].as_f64().unwrap() - 0.784784).abs() < 1e-5);
    assert!(p0["kl"].as_f64().unwrap().abs() < 1e-3, "KL of the reference to itself: {}", p0["kl"]);
    for p in points {
        let (w, t, l) = (p["wins"].as_f64().unwrap(), p["ties"].as_f64().unwrap(), p["losses"].as_f64().unwrap());
        assert_eq!(w + t + l, 16.0, "two verdicts per match");
        assert!((p["win_rate"].as_f64().unwrap() - (w + t / 2.0) / 16.0).abs() < 1e-12);
        let ci: Vec<f64> = p["ci"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert!(ci[0] <= p["win_rate"].as_f64().unwrap() && p["win_rate"].as_f64().unwrap() <= ci[1]);
        for k in ["distinct_1", "distinct_2", "entropy", "model_score", "reference_score", "mean_tokens"] {
            assert!(p[k].as_f64().is_some_and(f64::is_finite), "{k}: {}", p[k]);
        }
    }
    eprintln!("{}", points.iter().map(|p| p["kl"].to_string()).collect::<Vec<_>>().join(" "));
    assert!(std::fs::read_to_string(&plot).unwrap().starts_with("<svg"));
    // A second look samples nothing: every set comes from the cache, with the same report.
    let again = common::spo(&args);
    let notes = ok(&again);
    assert_eq!(notes.matches("from the cache").count(), 3, "{notes}");
    assert_eq!(json_of(&again)["runs"], report["runs"]);
    // Bad input: a clear error naming the path; a bad figure name is a usage error.
    let missing = common::spo(&["eval", "--reference", s(&model), "--checkpoints", "/no/such/run", "--prefix", "Q"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/no/such/run: no such file"));
    let bad_plot = common::spo(&[
        "eval",
        "--reference",
        s(&model),
        "--checkpoints",
        s(&run),
        "--prefix",
        "Q",
        "--plot",
        "figure.txt",
    ]);
    assert_eq!(bad_plot.status.code(), Some(2), "{}", String::from_utf8_lossy(&bad_plot.stderr));
}

#[test]
fn an_interrupted_sweep_finishes_the_remaining_runs_only() {
    let (model, data, dir) = common::tiny_run_inputs("sweep", 3);
    let out = dir.join("sweep");
    let sweep = |alphas: &str| {
        common::spo(
            &[
                "sweep",
                "--model",
                s(&model),
                "--data",
                s(&data),
                "--out",
                s(&out),
                "--losses",
                "spo,dpo",
                "--alphas",
                alphas,
                "--betas",
                "0.1",
                "--weightings",
                "uniform",
                "--cache",
                s(&dir.join("cache")),
            ]
            .into_iter()
            .chain(RUN)
            .chain(common::SMALL_EVAL)
            .collect::<Vec<_>>(),
        )
    };
    ok(&sweep("0.5"));
    let (spo_a, dpo) = (out.join("spo-a0.5-b0.1-uniform"), out.join("dpo-b0.1"));
    let before = (mtime(&spo_a.join("metrics.jsonl")), mtime(&dpo.join("metrics.jsonl")));
    // A run interrupted after step 1, exactly as the sweep configures it.
    let spo_b = out.join("spo-a1-b0.1-uniform");
    ok(&common::spo_train(
        &model,
        &data,
        &spo_b,
        &["--loss", "spo", "--alpha", "1", "--beta", "0.1", "--stop-after", "1"]
            .into_iter()
            .chain(RUN)
            .collect::<Vec<_>>(),
    ));
    assert!(!spo_b.join("final").exists());
    let step1 = mtime(&spo_b.join("checkpoint-000001/model.safetensors"));
    let notes = ok(&sweep("0.5,1"));
    assert_eq!(
        before,
        (mtime(&spo_a.join("metrics.jsonl")), mtime(&dpo.join("metrics.jsonl"))),
        "finished runs are not touched"
    );
    assert_eq!(mtime(&spo_b.join("checkpoint-000001/model.safetensors")), step1, "resumed, not restarted: {notes}");
    let steps: Vec<u64> = std::fs::read_to_string(spo_b.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [1, 2]);
    assert!(spo_b.join("final/config.json").is_file());
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let names: Vec<&String> = summary["runs"].as_object().unwrap().keys().collect();
    assert_eq!(names, ["dpo-b0.1", "spo-a0.5-b0.1-uniform", "spo-a1-b0.1-uniform"]);
    assert!(std::fs::read_to_string(out.join("summary.txt")).unwrap().contains("spo-a1-b0.1-uniform"));
    assert!(out.join("winrate.png").is_file());
}

#[test]
fn demo_writes_the_report_and_the_commands_that_reproduce_it() {
    let (model, _, dir) = common::tiny_run_inputs("demo", 3);
    let out = dir.join("report");
    let o = common::spo(&[
        "demo",
        "--out",
        s(&out),
        "--model",
        s(&model),
        "--pairs",
        "24",
        "--story-tokens",
        "8",
        "--min-gap",
        "0",
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--save-every",
        "1",
        "--eval-samples",
        "4",
        "--kl-samples",
        "2",
        "--lr",
        "0.01",
    ]);
    ok(&o);
    let report: Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    for run in ["spo", "dpo"] {
        let points = report["runs"][run].as_array().unwrap_or_else(|| panic!("runs.{run} in {report}"));
        let steps: Vec<u64> = points.iter().map(|p| p["step"].as_u64().unwrap()).collect();
        assert_eq!(steps, [0, 1, 2]);
        for p in points {
            let w = p["win_rate"].as_f64().unwrap();
            let ci = p["ci"].as_array().unwrap();
            assert!(ci[0].as_f64().unwrap() <= w && w <= ci[1].as_f64().unwrap());
        }
    }
    for f in ["winrate.png", "winrate.svg", "report.md", "samples.md", "commands.sh"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    // commands.sh holds the exact command line of each file: rerunning the evaluation's
    // (from the cache) gives the report's numbers.
    let sh = std::fs::read_to_string(out.join("commands.sh")).unwrap();
    let line = sh.lines().find(|l| l.starts_with("spo eval ")).expect("the eval command");
    let again = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("{}{} --json", env!("CARGO_BIN_EXE_spo"), line.strip_prefix("spo").unwrap()))
        .output()
        .unwrap();
    ok(&again);
    assert_eq!(json_of(&again)["runs"], report["runs"]);
    assert!(sh.contains("spo pairs ") && sh.contains("spo judge ") && sh.matches("spo train ").count() == 2);
}
