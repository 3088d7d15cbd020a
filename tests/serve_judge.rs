//! `spo serve` (SmolLM2, real) and `spo judge --judge openai` against it and against
//! a scripted endpoint (retries on 503, parsing, the cache, a 401).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl").args(["-s", "-w", "\n%{http_code}"]).args(args).output().expect("curl runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn start_serve(port: u16, extra: &[&str], key: Option<&str>) -> Server {
    let model = common::smollm2();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_spo"));
    cmd.env_remove("SPO_API_KEY");
    if let Some(k) = key {
        cmd.env("SPO_API_KEY", k);
    }
    let child = cmd
        .args(["serve", "--model", model.to_str().unwrap(), "--port", &port.to_string(), "--max-tokens", "8"])
        .args(extra)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !curl(&[&format!("http://127.0.0.1:{port}/v1/models")]).ends_with("200")
        && !curl(&[&format!("http://127.0.0.1:{port}/v1/models")]).ends_with("401")
    {
        assert!(t0.elapsed() < Duration::from_secs(60), "server did not start");
        std::thread::sleep(Duration::from_millis(200));
    }
    Server(child)
}

fn pairs_file(dir: &std::path::Path, n: usize) -> std::path::PathBuf {
    let rows: Vec<String> = (0..n)
        .map(|k| serde_json::json!({"index": k, "prompt": "Once upon a time", "response_a": format!(", a fox number {k} ran."), "response_b": ", it rained.", "prefix": true}).to_string())
        .collect();
    let p = dir.join("pairs.jsonl");
    std::fs::write(&p, rows.join("\n") + "\n").unwrap();
    p
}

/// `spo judge --judge openai` at `url` with `OPENAI_API_KEY=key`, JSON report.
fn judge_openai(
    pairs: &std::path::Path,
    url: &str,
    out: &std::path::Path,
    key: &str,
    extra: &[&str],
) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_spo"))
        .args(["judge", "--pairs", pairs.to_str().unwrap(), "--judge", "openai", "--judge-url", url])
        .args(["--out", out.to_str().unwrap(), "--json"])
        .args(extra)
        .env("OPENAI_API_KEY", key)
        .output()
        .unwrap()
}

#[test]
fn serve_speaks_openai_and_judge_uses_it() {
    let dir = common::temp_dir("serve");
    let _server = start_serve(18431, &[], None);
    let base = "http://127.0.0.1:18431/v1";
    assert!(curl(&[&format!("{base}/models")]).contains("\"object\":\"list\""));
    let chat = curl(&[
        "-X",
        "POST",
        &format!("{base}/chat/completions"),
        "-d",
        r#"{"messages":[{"role":"user","content":"What is the capital of France?"}],"temperature":0,"max_tokens":12}"#,
    ]);
    assert!(chat.contains("The capital of France is Paris.") && chat.ends_with("200"), "{chat}");
    let bad = curl(&["-X", "POST", &format!("{base}/chat/completions"), "-d", "{not json"]);
    assert!(bad.contains("\"error\"") && bad.ends_with("400"), "{bad}");
    let wrong = curl(&["-X", "POST", &format!("{base}/chat/completions"), "-d", r#"{"messages": "hi"}"#]);
    assert!(wrong.ends_with("400"), "{wrong}");
    // sampling settings out of range are refused, not clamped or cut
    for body in [
        r#"{"prompt": "a", "n": 1000}"#,
        r#"{"prompt": "a", "temperature": -1}"#,
        r#"{"prompt": "a", "max_tokens": 0}"#,
        r#"{"prompt": "a", "top_p": 0}"#,
    ] {
        let r = curl(&["-X", "POST", &format!("{base}/completions"), "-d", body]);
        assert!(r.contains("\"error\"") && r.ends_with("400"), "{body}: {r}");
    }
    // the tiny model rarely answers in the score format: unparseable verdicts are
    // counted as failed, never guessed, and the run completes with a report
    let pairs = pairs_file(&dir, 2);
    let out = judge_openai(
        &pairs,
        base,
        &dir.join("prefs.jsonl"),
        "",
        &["--judge-model", "smol", "--attempts", "1", "--judge-max-tokens", "8", "--max-failed-fraction", "1"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["report"]["judged"], 2);
    let log = std::fs::read_to_string(dir.join("prefs.jsonl.verdicts.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 2);
}

/// The Python interpreter with the `openai` package: `SPO_TEST_PYTHON` (set by
/// `.ci/run`, which installs it into a virtual environment) or `python3`.
fn python_with_openai() -> String {
    let python = std::env::var("SPO_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&python).args(["-c", "import openai"]).status().is_ok_and(|s| s.success());
    assert!(ok, "{python} cannot import openai: run .ci/run (it installs the client into .venv-ci)");
    python
}

/// The official `openai` Python client: models, chat, completions, streaming of
/// both, a 400 and a 401 (tests/openai_client.py).
#[test]
fn the_official_openai_client_works_against_serve() {
    let python = python_with_openai();
    let _server = start_serve(18533, &[], Some("k"));
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai_client.py");
    let out = Command::new(python)
        .args([script.to_str().unwrap(), "http://127.0.0.1:18533/v1", "k"])
        .output()
        .expect("python runs");
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && log.contains("openai client: ok"), "{log}");
}

#[test]
fn serve_requires_the_api_key_when_given() {
    let _server = start_serve(18432, &[], Some("sekrit"));
    let base = "http://127.0.0.1:18432/v1";
    assert!(curl(&[&format!("{base}/models")]).ends_with("401"));
    assert!(curl(&["-H", "Authorization: Bearer sekrit", &format!("{base}/models")]).ends_with("200"));
    assert!(curl(&["-H", "Authorization: Bearer sekriT", &format!("{base}/models")]).ends_with("401"));
    // a key on the command line, readable in the process list, is refused
    let argv = common::spo(&["serve", "--model", "x", "--api-key", "sekrit"]);
    assert_eq!(argv.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&argv.stderr).contains("--api-key-file"));
}

/// A scripted endpoint: 503 on every first attempt, then a well-formed answer whose
/// scores favour the story that mentions a fox. Counts requests.
fn scripted(port: u16, requests: std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let server = tiny_http::Server::http(format!("127.0.0.1:{port}")).unwrap();
    std::thread::spawn(move || {
        for mut req in server.incoming_requests() {
            let n = requests.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut body = String::new();
            req.as_reader().read_to_string(&mut body).unwrap();
            if req.headers().iter().all(|h| h.value.as_str() != "Bearer k") {
                let _ = req.respond(tiny_http::Response::from_string("{}").with_status_code(401));
                continue;
            }
            if n.is_multiple_of(2) {
                let _ = req.respond(tiny_http::Response::from_string("busy").with_status_code(503));
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            let text = v["messages"][0]["content"].as_str().unwrap();
            let (s1, s2) = if text.find("fox").unwrap() < text.find("rained").unwrap() { (8, 3) } else { (3, 8) };
            let answer = format!(
                "Both fine.\n**Score of story 1:** {s1}\nScore of story 2: {s2}/10\nStory {} is better.",
                if s1 > s2 { 1 } else { 2 }
            );
            let reply = serde_json::json!({"choices": [{"message": {"role": "assistant", "content": answer}}]});
            let _ = req.respond(tiny_http::Response::from_string(reply.to_string()));
        }
    });
}

#[test]
fn retries_parsing_cache_and_auth_errors() {
    let dir = common::temp_dir("scripted");
    let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    scripted(18433, requests.clone());
    let pairs = pairs_file(&dir, 3);
    let cache = dir.join("cache.jsonl");
    let run_at = |url: &str, out: &str, key: &str| {
        let extra =
            ["--timeout", "5", "--judge-cache", cache.to_str().unwrap(), "--concurrency", "1", "--attempts", "3"];
        judge_openai(&pairs, url, &dir.join(out), key, &extra)
    };
    let run = |out: &str, key: &str| run_at("http://127.0.0.1:18433/v1", out, key);
    let out = run("a.jsonl", "k");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["report"]["kept"], 3, "{report}");
    assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 12, "6 verdicts, each after one 503");
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("a.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(rows
        .iter()
        .all(|r| r["chosen"].as_str().unwrap().contains("fox") && r["score_chosen"] == serde_json::json!([8.0, 8.0])));
    // a fresh output file, same cache: nothing is asked again
    let out = run("b.jsonl", "k");
    assert!(out.status.success());
    assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 12, "served from the cache");
    // a wrong key: every verdict fails with a clear message, counted, and the run
    // fails with the count (no silent "0 pairs kept")
    std::fs::remove_file(&cache).unwrap();
    let out = run("c.jsonl", "wrong");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("check the API key") && err.contains("3 of 3 pairs have no verdict"), "{err}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["report"]["dropped_failed"], 3);
    // an unreachable endpoint: fails, and caches nothing
    let out = run_at("http://127.0.0.1:9/v1", "d.jsonl", "k");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unreachable"));
    // the rerun against a working endpoint asks again for every failed verdict
    let before = requests.load(std::sync::atomic::Ordering::SeqCst);
    let out = run("d.jsonl", "k");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((report["report"]["kept"].clone(), report["report"]["dropped_failed"].clone()), (3.into(), 0.into()));
    assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), before + 12, "6 verdicts asked again");
}
