//! The HTTP side of `spo serve` (axum on hyper): the key is checked before the body
//! is read, headers and body have read timeouts, the body a size limit, the queue a
//! length; completions are answered whole or streamed as server-sent events.

use super::scheduler::{Event, Job};
use super::{chunk_body, completion_body, error_body, parse_request, Request, ServeConfig};
use crate::sample::Finish;
use crate::tokenizer::Tokenizer;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// What every handler shares.
pub struct App {
    /// Settings.
    pub cfg: ServeConfig,
    /// The model's tokenizer (prompts are encoded on the HTTP side).
    pub tok: Tokenizer,
    /// The model's context length.
    pub context: usize,
    /// The scheduler's bounded queue.
    pub jobs: SyncSender<Job>,
}

fn reply(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

/// The routes, with the key check in front of every one but `/health`.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(|s: State<Arc<App>>, r: axum::extract::Request| complete(s, r, true)))
        .route("/v1/completions", post(|s: State<Arc<App>>, r: axum::extract::Request| complete(s, r, false)))
        .fallback(|r: axum::extract::Request| async move {
            reply(StatusCode::NOT_FOUND, error_body(format!("no route for {} {}", r.method(), r.uri().path())))
        })
        .layer(middleware::from_fn_with_state(app.clone(), check_key))
        .with_state(app)
}

/// Serves `router` on `listener` until the process ends; each connection has the
/// header read timeout, and a failed accept (too many open connections) is waited out.
pub async fn serve(listener: tokio::net::TcpListener, app: Arc<App>) -> anyhow::Result<()> {
    let timeout = app.cfg.read_timeout;
    let router = router(app);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                eprintln!("serve: accepting a connection failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

/// 401 unless the request carries the key (compared in constant time), before
/// anything reads its body.
async fn check_key(State(app): State<Arc<App>>, req: axum::extract::Request, next: Next) -> Response {
    if let Some(key) = &app.cfg.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if req.uri().path() != "/health" && !bool::from(given.as_bytes().ct_eq(key.as_bytes())) {
            return reply(StatusCode::UNAUTHORIZED, error_body("missing or wrong API key"));
        }
    }
    next.run(req).await
}

async fn models(State(app): State<Arc<App>>) -> Response {
    let model = json!({"id": app.cfg.model_name, "object": "model", "created": 0, "owned_by": "spo"});
    reply(StatusCode::OK, json!({"object": "list", "data": [model]}))
}

/// Reads the body within the size limit and the read timeout.
async fn read_body(app: &App, req: axum::extract::Request) -> Result<Value, Response> {
    let limit = app.cfg.body_limit;
    let too_big = || reply(StatusCode::PAYLOAD_TOO_LARGE, error_body(format!("the body is larger than {limit} bytes")));
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_big());
    }
    let bytes = match tokio::time::timeout(app.cfg.read_timeout, axum::body::to_bytes(req.into_body(), limit)).await {
        Err(_) => return Err(reply(StatusCode::REQUEST_TIMEOUT, error_body("the body was not sent in time"))),
        Ok(Err(_)) => return Err(too_big()),
        Ok(Ok(b)) => b,
    };
    serde_json::from_slice(&bytes)
        .map_err(|_| reply(StatusCode::BAD_REQUEST, error_body("the request body must be a JSON object")))
}

async fn complete(State(app): State<Arc<App>>, req: axum::extract::Request, chat: bool) -> Response {
    let value = match read_body(&app, req).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let request = match parse_request(&value, chat, &app.tok, &app.cfg, app.context) {
        Ok(r) => r,
        Err(e) => return reply(StatusCode::BAD_REQUEST, error_body(format!("{e:#}"))),
    };
    let (events, rx) = unbounded_channel();
    let job = Job { prompt: request.prompt.clone(), n: request.n, sampling: request.sampling.clone(), events };
    match app.jobs.try_send(job) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            let mut r = reply(StatusCode::SERVICE_UNAVAILABLE, error_body("the server is busy; retry shortly"));
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return r;
        }
        Err(TrySendError::Disconnected(_)) => {
            return reply(StatusCode::INTERNAL_SERVER_ERROR, error_body("the model has stopped"))
        }
    }
    if request.stream {
        stream(app, request, rx).into_response()
    } else {
        match tokio::time::timeout(app.cfg.request_timeout, collect(&app, &request, rx)).await {
            Ok(r) => r,
            Err(_) => reply(StatusCode::GATEWAY_TIMEOUT, error_body("the completion took too long; it was cancelled")),
        }
    }
}

/// Gathers every row's text into one response.
async fn collect(app: &App, req: &Request, mut rx: UnboundedReceiver<Event>) -> Response {
    let mut texts = vec![String::new(); req.n];
    let mut finishes: Vec<Option<Finish>> = vec![None; req.n];
    let mut tokens = 0;
    while finishes.iter().any(Option::is_none) {
        match rx.recv().await {
            Some(Event::Delta { index, text }) => texts[index].push_str(&text),
            Some(Event::Done { index, finish, tokens: t }) => {
                finishes[index] = Some(finish);
                tokens += t;
            }
            Some(Event::Error(e)) => return reply(StatusCode::INTERNAL_SERVER_ERROR, error_body(e)),
            None => return reply(StatusCode::INTERNAL_SERVER_ERROR, error_body("the model stopped mid-request")),
        }
    }
    reply(StatusCode::OK, completion_body(&app.cfg, req, &texts, &finishes, tokens))
}

/// Server-sent events: a chunk per piece of text, one with each row's
/// `finish_reason`, then `[DONE]`. Dropped by a client that leaves, which cancels
/// its rows at the next decoding step.
fn stream(
    app: Arc<App>,
    req: Request,
    rx: UnboundedReceiver<Event>,
) -> Sse<impl futures_util::Stream<Item = Result<SseEvent, std::convert::Infallible>>> {
    let id = format!("spo-{}", next_id());
    let events = futures_util::stream::unfold((rx, req.n), move |(mut rx, mut left)| {
        let (app, id, chat) = (app.clone(), id.clone(), req.chat);
        async move {
            if left == 0 {
                return None;
            }
            let data = match rx.recv().await? {
                Event::Delta { index, text } => chunk_body(&app.cfg, chat, &id, index, Some(&text), None),
                Event::Done { index, finish, .. } => {
                    left -= 1;
                    chunk_body(&app.cfg, chat, &id, index, None, Some(finish))
                }
                Event::Error(e) => {
                    left = 0;
                    error_body(e)
                }
            };
            Some((Ok(SseEvent::default().data(data.to_string())), (rx, left)))
        }
    });
    let done = futures_util::stream::once(async { Ok(SseEvent::default().data("[DONE]")) });
    Sse::new(futures_util::StreamExt::chain(events, done))
}

/// A process-wide counter for response ids.
fn next_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}
