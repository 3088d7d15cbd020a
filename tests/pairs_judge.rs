//! `spo pairs` and `spo judge` on SmolLM2: interrupted runs resume without loss or
//! duplicates, and the output loads in the trainer's data reader.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn lines(p: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(p).unwrap_or_default().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn pairs_killed_mid_run_resume_to_the_same_file() {
    let model = common::smollm2();
    let dir = common::temp_dir("pairs");
    let args = |out: &std::path::Path| -> Vec<String> {
        [
            "pairs",
            "--model",
            model.to_str().unwrap(),
            "--prefix",
            "Once upon a time",
            "--num-pairs",
            "6",
            "--max-tokens",
            "24",
            "--seed",
            "4",
            "--batch-size",
            "2",
            "--out",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let whole = dir.join("whole.jsonl");
    assert!(Command::new(env!("CARGO_BIN_EXE_spo")).args(args(&whole)).output().unwrap().status.success());
    // kill as soon as the first batch is on disk, then rerun
    let cut = dir.join("cut.jsonl");
    let mut child = Command::new(env!("CARGO_BIN_EXE_spo")).args(args(&cut)).stderr(Stdio::null()).spawn().unwrap();
    let t0 = Instant::now();
    while lines(&cut).len() < 2 && t0.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let partial = lines(&cut).len();
    assert!(partial < 6, "killed too late to test anything");
    assert!(Command::new(env!("CARGO_BIN_EXE_spo")).args(args(&cut)).output().unwrap().status.success());
    let (a, b) = (lines(&whole), lines(&cut));
    assert_eq!(a.len(), 6);
    assert_eq!(a, b, "resumed output equals the uninterrupted one");
    let idx: Vec<u64> = b.iter().map(|r| r["index"].as_u64().unwrap()).collect();
    assert_eq!(idx, vec![0, 1, 2, 3, 4, 5]);
}

#[test]
fn judge_resumes_from_a_torn_log_and_writes_trl_rows() {
    let dir = common::temp_dir("judge");
    let mature = "The lighthouse keeper found a letter addressed to a woman who had died forty years earlier. He read it twice, then walked to the village archive, uncertain whether he wanted the truth or merely an ending. The archivist listened without interrupting, then fetched a ledger nobody had opened in decades.";
    let childish = "The dog was happy. The dog was very very happy! The dog ate cake. Yay! The end.";
    let rows: Vec<String> = (0..6)
        .map(|k| {
            let (a, b) = if k % 2 == 0 { (mature, childish) } else { (childish, mature) };
            let b = if k == 5 { "" } else { b };
            serde_json::json!({"index": k, "prompt": "Write a story.", "response_a": a, "response_b": b, "prefix": false}).to_string()
        })
        .collect();
    let pairs = dir.join("pairs.jsonl");
    std::fs::write(&pairs, rows.join("\n") + "\n").unwrap();
    let run_with = |out: &str, allowed: &str| {
        common::spo(&[
            "judge",
            "--pairs",
            pairs.to_str().unwrap(),
            "--judge",
            "rules",
            "--out",
            dir.join(out).to_str().unwrap(),
            "--json",
            "--max-failed-fraction",
            allowed,
        ])
    };
    let strict = run_with("strict.jsonl", "0");
    assert_eq!(strict.status.code(), Some(1), "a failed verdict fails the run by default");
    let err = String::from_utf8_lossy(&strict.stderr);
    assert!(err.contains("1 of 6 pairs have no verdict"), "{err}");
    let run = |out: &str| run_with(out, "0.2");
    let fresh = run("fresh.jsonl");
    assert!(fresh.status.success(), "{}", String::from_utf8_lossy(&fresh.stderr));
    let report: serde_json::Value = serde_json::from_slice(&fresh.stdout).unwrap();
    assert_eq!(report["report"]["judged"], 6);
    assert_eq!(report["report"]["kept"], 5);
    assert_eq!(report["report"]["dropped_failed"], 1, "the empty story is counted, not scored");
    let kept = lines(&dir.join("fresh.jsonl"));
    assert_eq!(kept.len(), 5);
    for r in &kept {
        assert_eq!(r["chosen"], mature);
        let pos = r["chosen_position"].as_array().unwrap();
        assert!(
            pos == &vec![serde_json::json!(1), serde_json::json!(2)]
                || pos == &vec![serde_json::json!(2), serde_json::json!(1)]
        );
        assert!(r["score_chosen"][0].as_f64().unwrap() > r["score_rejected"][0].as_f64().unwrap());
    }
    // a run cut after 3 verdicts, the last one torn
    let log = dir.join("fresh.jsonl.verdicts.jsonl");
    let text = std::fs::read_to_string(&log).unwrap();
    let keep: Vec<&str> = text.lines().take(3).collect();
    std::fs::write(dir.join("cut.jsonl.verdicts.jsonl"), format!("{}\n{{\"index\": 3, \"ab\"", keep.join("\n")))
        .unwrap();
    assert!(run("cut.jsonl").status.success());
    assert_eq!(
        std::fs::read_to_string(dir.join("cut.jsonl")).unwrap(),
        std::fs::read_to_string(dir.join("fresh.jsonl")).unwrap()
    );
    let judged: Vec<u64> = lines(&dir.join("cut.jsonl.verdicts.jsonl"))
        .iter()
        .filter(|r| !r["ab"].is_null() && !r["ba"].is_null())
        .map(|r| r["index"].as_u64().unwrap())
        .collect();
    let distinct: std::collections::HashSet<_> = judged.iter().collect();
    assert_eq!((judged.len(), distinct.len()), (5, 5), "no duplicate verdicts");
    // the output is training data
    let ds = spo::data::read(&dir.join("fresh.jsonl"), None).unwrap();
    assert_eq!(ds.pairs.len(), 5);
}

/// `--chat`: prompts are sampled as user messages in the chat template, and the
/// judged pairs come out in TRL's conversational layout, which the trainer renders
/// back to exactly the tokens the responses were sampled after.
#[test]
fn chat_pairs_become_conversational_training_data_with_the_sampled_prompt() {
    let dir = common::temp_dir("chat-pairs");
    let model = common::smollm2();
    let prompts = dir.join("prompts.txt");
    std::fs::write(&prompts, "Write a story about a fox.\nWrite a story about the sea.\n").unwrap();
    let pairs = dir.join("pairs.jsonl");
    let out = common::spo(&[
        "pairs",
        "--model",
        model.to_str().unwrap(),
        "--prompts",
        prompts.to_str().unwrap(),
        "--chat",
        "--num-pairs",
        "2",
        "--max-tokens",
        "6",
        "--out",
        pairs.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows = lines(&pairs);
    assert!(rows.iter().all(|r| r["chat"] == true && r["prefix"] == false), "{rows:?}");
    // judge a chat pair with a clear winner; the kept row is conversational
    let mature = "The lighthouse keeper found a letter addressed to a woman who had died forty years earlier. He read it twice, then walked to the village archive, uncertain whether he wanted the truth or merely an ending.";
    let childish = "The dog was happy. The dog was very very happy! The dog ate cake. Yay! The end.";
    let cand = dir.join("cand.jsonl");
    let row = serde_json::json!({"index": 0, "prompt": "Write a story.", "response_a": childish, "response_b": mature, "prefix": false, "chat": true});
    std::fs::write(&cand, format!("{row}\n")).unwrap();
    let prefs = dir.join("prefs.jsonl");
    let out = common::spo(&[
        "judge",
        "--pairs",
        cand.to_str().unwrap(),
        "--out",
        prefs.to_str().unwrap(),
        "--min-gap-second",
        "2",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let kept = lines(&prefs);
    assert_eq!(kept[0]["prompt"], serde_json::json!([{"role": "user", "content": "Write a story."}]));
    assert_eq!(kept[0]["chosen"], serde_json::json!([{"role": "assistant", "content": mature}]));
    let loaded = spo::model::load(&model, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    let tok = &loaded.tokenizer;
    let ds = spo::data::read(&prefs, Some(tok)).unwrap();
    let (trained_prompt, _) = spo::tokenizer::encode_pair(tok, &ds.pairs[0].prompt, &ds.pairs[0].chosen, true).unwrap();
    assert_eq!(trained_prompt, tok.encode_user_prompt("Write a story.", true).unwrap(), "trained on what was sampled");
    // eval samples chat prompts the same way
    let m = model.to_str().unwrap();
    let cache = dir.join("cache");
    let out = common::spo(&[
        "eval",
        "--reference",
        m,
        "--checkpoints",
        m,
        "--prompts",
        prompts.to_str().unwrap(),
        "--chat",
        "--num-samples",
        "2",
        "--max-tokens",
        "4",
        "--cache",
        cache.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["samples"]["chat"], true);
}
