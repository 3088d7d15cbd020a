//! Careless and hostile use: every case gets a clear error or the documented
//! behaviour, and nothing the user had is lost.

mod common;

use common::s;
use serde_json::Value;
use std::path::Path;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A quick `spo train` on the tiny inputs: 2 steps of 2 pairs, tiny KL; `extra`
/// flags replace these defaults.
fn train(model: &Path, data: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let defaults = [
        ("--eval-fraction", "0"),
        ("--steps", "2"),
        ("--batch-size", "2"),
        ("--micro-batch-size", "2"),
        ("--lr", "1e-3"),
        ("--warmup-steps", "0"),
        ("--kl-samples", "2"),
        ("--kl-max-tokens", "4"),
        ("--save-every", "1"),
    ];
    let mut args: Vec<&str> =
        defaults.iter().filter(|(flag, _)| !extra.contains(flag)).flat_map(|(f, v)| [*f, *v]).collect();
    args.extend_from_slice(extra);
    common::spo_train(model, data, out, &args)
}

fn checkpoints(out: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(out)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("checkpoint-"))
        .collect();
    v.sort();
    v
}

#[test]
fn judge_never_writes_over_its_input() {
    let dir = common::temp_dir("h-judge-same");
    let pairs = dir.join("pairs.jsonl");
    let row = r#"{"index":0,"prompt":"p","response_a":"a","response_b":"b","prefix":false}"#;
    std::fs::write(&pairs, format!("{row}\n")).unwrap();
    let spelled = dir.join(".").join("pairs.jsonl");
    let o = common::spo(&["judge", "--pairs", s(&pairs), "--out", s(&spelled)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("same file as --pairs"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&pairs).unwrap(), format!("{row}\n"), "the input is intact");
}

#[test]
fn resume_refuses_settings_that_change_the_run_and_records_the_allowed_ones() {
    let (model, data, dir) = common::tiny_run_inputs("h-resume", 1);
    let out = dir.join("run");
    let first = train(&model, &data, &out, &["--stop-after", "1"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let ckpt = out.join("checkpoint-000001");
    let other_data = dir.join("other.jsonl");
    std::fs::copy(&data, &other_data).unwrap();
    for (flag, value, needle) in [
        ("--alpha", "0.5", "alpha: 0.03 → 0.5"),
        ("--lr", "0.5", "lr: 0.001 → 0.5"),
        ("--seed", "9", "seed: 0 → 9"),
        ("--loss", "dpo", "loss: \"spo\" → \"dpo\""),
        ("--dtype", "bf16", "dtype: \"f32\" → \"bf16\""),
        ("--data", s(&other_data), "data:"),
    ] {
        let (data, extra) = match flag {
            "--data" => (other_data.as_path(), vec!["--resume", s(&ckpt)]),
            _ => (data.as_path(), vec!["--resume", s(&ckpt), flag, value]),
        };
        let o = train(&model, data, &out, &extra);
        assert_eq!(o.status.code(), Some(2), "{flag}");
        assert!(stderr(&o).contains(needle), "{flag}: {}", stderr(&o));
    }
    let config =
        || -> Value { serde_json::from_str(&std::fs::read_to_string(out.join("run_config.json")).unwrap()).unwrap() };
    assert_eq!(config()["alpha"], 0.03, "a refused resume leaves the run's record alone");
    assert_eq!((config()["device"].clone(), config()["dtype"].clone()), ("cpu".into(), "f32".into()), "resolved");
    let o = train(&model, &data, &out, &["--resume", s(&ckpt), "--steps", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(config()["steps"], 3);
    let resumes = std::fs::read_to_string(out.join("resumes.jsonl")).unwrap();
    assert!(resumes.contains("steps: 2 → 3"), "{resumes}");
    assert_eq!(checkpoints(&out).last().unwrap(), "checkpoint-000003");
}

#[test]
fn overwrite_removes_the_old_run_whole_and_foreign_folders_are_refused() {
    let (model, data, dir) = common::tiny_run_inputs("h-overwrite", 1);
    let out = dir.join("run");
    assert!(train(&model, &data, &out, &["--steps", "3"]).status.success());
    assert_eq!(checkpoints(&out).len(), 3);
    let again = train(&model, &data, &out, &["--steps", "1"]);
    assert_eq!(again.status.code(), Some(2), "an existing run needs --overwrite or --resume");
    let o = train(&model, &data, &out, &["--steps", "1", "--overwrite"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(checkpoints(&out), vec!["checkpoint-000001"], "no checkpoint of the old run is left to mix in");
    // a folder of other files is not a run to overwrite
    let mine = dir.join("mine");
    std::fs::create_dir_all(&mine).unwrap();
    std::fs::write(mine.join("notes.txt"), "keep me").unwrap();
    let o = train(&model, &data, &mine, &["--overwrite"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("not a spo run"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(mine.join("notes.txt")).unwrap(), "keep me");
    // an --out that is a file, or holds the data, is refused before anything loads
    let o = train(&model, &data, &mine.join("notes.txt"), &[]);
    assert!(stderr(&o).contains("notes.txt: exists and is not a directory"), "{}", stderr(&o));
    let o = train(&model, &data, &dir, &["--overwrite"]);
    assert!(stderr(&o).contains("holds --model") || stderr(&o).contains("holds --data"), "{}", stderr(&o));
    assert!(data.is_file() && model.is_dir());
}

#[test]
fn a_collapsed_run_stops_naming_the_step() {
    let (model, data, dir) = common::tiny_run_inputs("h-collapse", 1);
    let out = dir.join("run");
    let o = train(&model, &data, &out, &["--lr", "1e6", "--steps", "6", "--beta", "0"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("collapsed") && (err.contains("at step") || err.contains("after step")), "{err}");
    assert!(err.contains("training stopped"), "{err}");
}

#[test]
fn pairs_files_are_never_mixed_or_mistaken() {
    let (model, _, dir) = common::tiny_run_inputs("h-pairs", 1);
    let out = dir.join("pairs.jsonl");
    let pairs = |extra: &[&str]| {
        let mut args = vec!["pairs", "--model", s(&model), "--out", s(&out), "--max-tokens", "3", "--num-pairs"];
        args.extend_from_slice(extra);
        common::spo(&args)
    };
    assert!(pairs(&["2", "--prefix", "Once"]).status.success());
    let before = std::fs::read_to_string(&out).unwrap();
    for extra in [["4", "--prefix", "Twice"], ["4", "--seed", "7"]] {
        let mut args = extra.to_vec();
        if !args.contains(&"--prefix") {
            args.extend(["--prefix", "Once"]);
        }
        let o = pairs(&args);
        assert_eq!(o.status.code(), Some(2));
        assert!(stderr(&o).contains("other settings"), "{}", stderr(&o));
    }
    assert_eq!(std::fs::read_to_string(&out).unwrap(), before, "nothing appended");
    let o = pairs(&["4", "--prefix", "Once"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 4, "the same settings continue the file");
    // a file that is not candidate pairs is not appended to
    let notes = dir.join("notes.jsonl");
    std::fs::write(&notes, "{\"a\": 1}\n").unwrap();
    let o = common::spo(&["pairs", "--model", s(&model), "--out", s(&notes), "--num-pairs", "1", "--prefix", "x"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("notes.jsonl:1: not a candidate pair"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "{\"a\": 1}\n");
}

/// One validation of sampling settings in every command that samples.
#[test]
fn bad_sampling_settings_are_usage_errors_everywhere() {
    let (model, data, dir) = common::tiny_run_inputs("h-sampling", 1);
    let m = s(&model);
    let out = dir.join("x.jsonl");
    let cases: Vec<Vec<&str>> = vec![
        vec!["pairs", "--model", m, "--prefix", "a", "--num-pairs", "1", "--out", s(&out), "--max-tokens", "0"],
        vec!["pairs", "--model", m, "--prefix", "a", "--num-pairs", "1", "--out", s(&out), "--temperature=-1"],
        vec!["eval", "--reference", m, "--checkpoints", m, "--prefix", "a", "--max-tokens", "0"],
        vec!["generate", "--model", m, "--top-k", "0"],
        vec!["generate", "--model", m, "--max-tokens", "0"],
        vec!["generate", "--model", m, "--stop", ""],
    ];
    for args in cases {
        let o = common::spo(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        // spo's own validation answered, not the argument parser
        let err = stderr(&o);
        assert!(err.contains("must") && !err.contains("unexpected argument"), "{args:?}: {err}");
    }
    assert!(!out.exists(), "nothing written");
    let o = train(&model, &data, &dir.join("run"), &["--kl-max-tokens", "0"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("kl-max-tokens"), "{}", stderr(&o));
}

#[test]
fn many_samples_are_drawn_in_bounded_batches() {
    let (model, _, _) = common::tiny_run_inputs("h-many", 1);
    let o = common::spo(&["generate", "--model", s(&model), "--num-samples", "1000", "--max-tokens", "1", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let idx: Vec<u64> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["index"].as_u64().unwrap())
        .collect();
    assert_eq!(idx, (0..1000).collect::<Vec<u64>>());
}

#[test]
fn a_pair_beyond_the_context_is_named_before_training() {
    let (model, _, dir) = common::tiny_run_inputs("h-context", 1);
    let data = dir.join("long.jsonl");
    let long = "good ".repeat(200);
    let rows = [
        serde_json::json!({"prompt": "Q:", "chosen": "good", "rejected": "bad"}),
        serde_json::json!({"prompt": "Q:", "chosen": "bad", "rejected": "good"}),
        serde_json::json!({"prompt": "Q:", "chosen": long, "rejected": "bad"}),
    ];
    std::fs::write(&data, rows.iter().map(|r| format!("{r}\n")).collect::<String>()).unwrap();
    let out = dir.join("run");
    let o = train(&model, &data, &out, &[]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("long.jsonl:3") && err.contains("context of 64") && err.contains("--max-length"), "{err}");
    assert!(!out.join("metrics.jsonl").exists(), "refused before step 1");
    assert!(train(&model, &data, &out, &["--max-length", "64", "--max-prompt-length", "8"]).status.success());
}

#[test]
fn a_line_that_is_not_utf8_is_named() {
    let (model, _, dir) = common::tiny_run_inputs("h-utf8", 1);
    let data = dir.join("bad.jsonl");
    let mut bytes = br#"{"prompt": "Q:", "chosen": "good", "rejected": "bad"}"#.to_vec();
    bytes.extend(b"\n{\"prompt\": \"\xff\xfe\", \"chosen\": \"a\", \"rejected\": \"b\"}\n");
    std::fs::write(&data, bytes).unwrap();
    let o = train(&model, &data, &dir.join("run"), &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("bad.jsonl:2: not valid UTF-8"), "{}", stderr(&o));
}

#[test]
fn temporaries_of_an_interrupted_checkpoint_are_cleaned_on_resume() {
    let (model, data, dir) = common::tiny_run_inputs("h-stale", 1);
    let out = dir.join("run");
    assert!(train(&model, &data, &out, &["--stop-after", "1"]).status.success());
    let stale = out.join(".checkpoint-000002.tmp-4242");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("model.safetensors"), "half").unwrap();
    let o = train(&model, &data, &out, &["--resume", s(&out.join("checkpoint-000001"))]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stale.exists(), "the stale temporary is gone");
    assert_eq!(checkpoints(&out), vec!["checkpoint-000001", "checkpoint-000002"]);
}
