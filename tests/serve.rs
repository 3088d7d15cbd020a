//! `spo serve` bounds every request and batches clients together (tiny model with a
//! long context, so a generation can be made to last).

mod common;

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server(Child, u16);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A tiny model whose context is 100,000 tokens, so `max_tokens` can be large.
fn long_context_model(name: &str) -> std::path::PathBuf {
    let (model, _, _) = common::tiny_run_inputs(name, 3);
    let path = model.join("config.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    v["max_position_embeddings"] = 100_000.into();
    std::fs::write(&path, v.to_string()).unwrap();
    model
}

fn start(name: &str, port: u16, extra: &[&str], key: Option<&str>) -> Server {
    let model = long_context_model(name);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_spo"));
    cmd.env_remove("SPO_API_KEY");
    if let Some(k) = key {
        cmd.env("SPO_API_KEY", k);
    }
    let child = cmd
        .args(["serve", "--model", common::s(&model), "--port", &port.to_string(), "--max-tokens-limit", "50000"])
        .args(extra)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(30), "server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Server(child, port)
}

/// Opens a connection and sends `head` (request line and headers, without the
/// blank line) and `body`, with `Content-Length: declared`.
fn send(port: u16, head: &str, declared: usize, body: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "{head}\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {declared}\r\n\r\n").unwrap();
    s.write_all(body).unwrap();
    s
}

/// The status code and body of the response on `s`.
fn response(s: TcpStream) -> (u16, String) {
    let mut text = String::new();
    let _ = BufReader::new(s).read_to_string(&mut text);
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text)
}

fn post(port: u16, path: &str, body: &str, key: Option<&str>) -> (u16, String) {
    let auth = key.map(|k| format!("\r\nAuthorization: Bearer {k}")).unwrap_or_default();
    let head = format!("POST {path} HTTP/1.1\r\nConnection: close{auth}");
    response(send(port, &head, body.len(), body.as_bytes()))
}

#[test]
fn the_key_is_checked_before_the_body_and_bodies_are_bounded() {
    let server = start("serve-key", 18601, &["--read-timeout", "1"], Some("k"));
    let port = server.1;
    // 200 MB announced, nothing sent, no key: refused at once
    let t0 = Instant::now();
    let s = send(port, "POST /v1/completions HTTP/1.1\r\nConnection: close", 200 << 20, b"");
    assert_eq!(response(s).0, 401);
    assert!(t0.elapsed() < Duration::from_secs(2), "answered before any body");
    // with the key, too large: 413 without reading it
    let s = send(port, "POST /v1/completions HTTP/1.1\r\nConnection: close\r\nAuthorization: Bearer k", 200 << 20, b"");
    assert_eq!(response(s).0, 413);
    // a body that never finishes: 408 after the read timeout, and others are served meanwhile
    let slow =
        send(port, "POST /v1/completions HTTP/1.1\r\nConnection: close\r\nAuthorization: Bearer k", 100, b"{\"pro");
    let (status, _) = post(port, "/v1/completions", r#"{"prompt": "a", "max_tokens": 3}"#, Some("k"));
    assert_eq!(status, 200, "a slow client does not block another");
    assert_eq!(response(slow).0, 408);
    // headers that never finish: the connection is closed after the timeout
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"POST /v1/completions HTTP/1.1\r\nHost").unwrap();
    let t0 = Instant::now();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(t0.elapsed() < Duration::from_secs(5), "closed after the header timeout");
}

#[test]
fn requests_beyond_the_limits_are_400s() {
    let server = start("serve-400", 18602, &[], None);
    for body in [
        r#"{"prompt": "a", "max_tokens": 60000}"#,
        r#"{"prompt": "a", "n": 17}"#,
        r#"{"prompt": "a", "temperature": -1}"#,
        r#"{"prompt": "a", "top_k": 0}"#,
        r#"{"prompt": 5}"#,
        "not json",
    ] {
        let (status, text) = post(server.1, "/v1/completions", body, None);
        assert_eq!(status, 400, "{body}: {text}");
        assert!(text.contains("\"error\""), "{text}");
    }
    assert_eq!(post(server.1, "/nope", "{}", None).0, 404);
}

/// SSE lines `data: …` of a streamed response.
fn sse_data(text: &str) -> Vec<String> {
    text.lines().filter_map(|l| l.strip_prefix("data: ")).map(String::from).collect()
}

#[test]
fn streams_openai_chunks_that_add_up_to_the_whole_answer() {
    let server = start("serve-stream", 18603, &[], None);
    let body = r#"{"prompt": "a", "max_tokens": 12, "n": 2, "seed": 5, "stream": true}"#;
    let (status, text) = post(server.1, "/v1/completions", body, None);
    assert_eq!(status, 200);
    assert!(text.to_ascii_lowercase().contains("content-type: text/event-stream"), "{text}");
    let data = sse_data(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let mut texts = [String::new(), String::new()];
    let mut finishes = [0, 0];
    for d in &data[..data.len() - 1] {
        let v: Value = serde_json::from_str(d).unwrap();
        assert_eq!(v["object"], "text_completion");
        let c = &v["choices"][0];
        let i = c["index"].as_u64().unwrap() as usize;
        texts[i].push_str(c["text"].as_str().unwrap());
        if !c["finish_reason"].is_null() {
            finishes[i] += 1;
        }
    }
    assert_eq!(finishes, [1, 1], "one finish chunk per row");
    let whole = body.replace(", \"stream\": true", "");
    let (_, text) = post(server.1, "/v1/completions", &whole, None);
    let v: Value = serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    for (i, t) in texts.iter().enumerate() {
        assert_eq!(v["choices"][i]["text"].as_str().unwrap(), t, "row {i}: streamed = whole");
    }
    assert_eq!(v["usage"]["completion_tokens"], 24);
}

/// A long streaming request whose client reads a few chunks and leaves.
fn start_and_abandon(port: u16) {
    let body = r#"{"prompt": "a", "max_tokens": 50000, "stream": true, "ignore_eos": true}"#;
    let s = send(port, "POST /v1/completions HTTP/1.1\r\nConnection: close", body.len(), body.as_bytes());
    let mut lines = BufReader::new(s).lines();
    let mut chunks = 0;
    while chunks < 3 {
        if lines.next().unwrap().unwrap().starts_with("data: ") {
            chunks += 1;
        }
    }
}

#[test]
fn a_client_that_leaves_is_cancelled_and_a_full_queue_is_a_503() {
    let server = start("serve-cancel", 18604, &["--max-batch", "1", "--queue", "1"], None);
    let port = server.1;
    // batch of one: the next request runs only once the abandoned one is cancelled
    start_and_abandon(port);
    let t0 = Instant::now();
    let (status, _) = post(port, "/v1/completions", r#"{"prompt": "a", "max_tokens": 4}"#, None);
    assert_eq!(status, 200);
    assert!(t0.elapsed() < Duration::from_secs(10), "cancelled at the next step, not after 50,000 tokens");
    // one running, one waiting for room, one in the queue: the next is turned away
    let long = r#"{"prompt": "a", "max_tokens": 50000, "stream": true, "ignore_eos": true}"#;
    let running = send(port, "POST /v1/completions HTTP/1.1\r\nConnection: close", long.len(), long.as_bytes());
    std::thread::sleep(Duration::from_millis(300));
    let waiting = send(port, "POST /v1/completions HTTP/1.1\r\nConnection: close", long.len(), long.as_bytes());
    std::thread::sleep(Duration::from_millis(300));
    let queued = send(port, "POST /v1/completions HTTP/1.1\r\nConnection: close", long.len(), long.as_bytes());
    std::thread::sleep(Duration::from_millis(300));
    let (status, text) = post(port, "/v1/completions", r#"{"prompt": "a", "max_tokens": 4}"#, None);
    assert_eq!(status, 503, "{text}");
    assert!(text.to_ascii_lowercase().contains("retry-after: 1"), "{text}");
    drop((running, waiting, queued));
}

#[test]
fn a_rows_text_does_not_depend_on_the_requests_sharing_its_batch() {
    let server = start("serve-batch", 18605, &["--max-batch", "8"], None);
    let port = server.1;
    let body = r#"{"prompt": "a", "max_tokens": 40, "seed": 1}"#;
    let alone = post(port, "/v1/completions", body, None).1;
    let answers: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8).map(|_| scope.spawn(|| post(port, "/v1/completions", body, None))).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .map(|(s, t)| {
                assert_eq!(s, 200);
                t
            })
            .collect()
    });
    let text = |t: &str| -> Value {
        let v: Value = serde_json::from_str(t.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        v["choices"][0]["text"].clone()
    };
    for a in &answers {
        assert_eq!(text(a), text(&alone), "a row's text does not depend on who shares its batch");
    }
}

/// A prompt longer than one prefill chunk is prefilled over several steps while a
/// short request runs; both answer, and streamed text equals the whole answer.
#[test]
fn a_long_prompt_is_prefilled_in_chunks_beside_running_requests() {
    let server = start("serve-long", 18606, &[], None);
    let port = server.1;
    let prompt = "hello world ".repeat(150);
    let long = serde_json::json!({"prompt": prompt, "max_tokens": 8, "seed": 2, "ignore_eos": true}).to_string();
    let short = r#"{"prompt": "a", "max_tokens": 30, "seed": 1, "ignore_eos": true}"#;
    let (a, b) = std::thread::scope(|scope| {
        let a = scope.spawn(|| post(port, "/v1/completions", short, None));
        let b = scope.spawn(|| post(port, "/v1/completions", &long, None));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!((a.0, b.0), (200, 200), "{}", b.1);
    let v: Value = serde_json::from_str(b.1.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 64, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 8);
    let streamed: String = sse_data(&post(port, "/v1/completions", &long.replace('}', ", \"stream\": true}"), None).1)
        .iter()
        .filter(|d| d.as_str() != "[DONE]")
        .map(|d| serde_json::from_str::<Value>(d).unwrap()["choices"][0]["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(streamed, v["choices"][0]["text"].as_str().unwrap());
}
