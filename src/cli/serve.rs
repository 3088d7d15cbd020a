//! `spo serve`: an OpenAI-compatible server for any model spo loads.

use super::args::usage;
use crate::serve::http::{serve, App};
use crate::serve::scheduler::Scheduler;
use crate::serve::ServeConfig;
use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Flags of `spo serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Model: a Hugging Face directory, a GGUF file, or a llama2.c .bin.
    #[arg(long)]
    pub model: PathBuf,
    /// A LoRA adapter directory (PEFT format) to apply to --model.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Device and precision.
    #[command(flatten)]
    pub placement: super::args::PlacementArgs,
    /// Port.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Interface to bind (loopback by default; 0.0.0.0 to widen).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Refused: a key on the command line is visible to every local user. Use
    /// --api-key-env or --api-key-file.
    #[arg(long, hide = true)]
    pub api_key: Option<String>,
    /// Environment variable holding the key every request must carry
    /// (`Authorization: Bearer KEY`); unset: no key.
    #[arg(long, default_value = "SPO_API_KEY")]
    pub api_key_env: String,
    /// File whose first line is the key (instead of the environment variable).
    #[arg(long)]
    pub api_key_file: Option<PathBuf>,
    /// `max_tokens` when a request gives none.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Most `max_tokens` a request may ask for (and never beyond the context).
    #[arg(long, default_value_t = 2048)]
    pub max_tokens_limit: usize,
    /// Most sequences decoded together (continuous batching).
    #[arg(long, default_value_t = 16)]
    pub max_batch: usize,
    /// Requests waiting for room before new ones get 503.
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub body_limit: usize,
    /// Seconds to send the headers, and then the body.
    #[arg(long, default_value_t = 10)]
    pub read_timeout: u64,
    /// Seconds a non-streaming completion may take.
    #[arg(long, default_value_t = 600)]
    pub request_timeout: u64,
}

/// The key: from `--api-key-file`, else the environment variable, else none.
fn api_key(args: &ServeArgs) -> Result<Option<String>> {
    if args.api_key.is_some() {
        return usage(format!(
            "--api-key puts the key where every local user can read it (the process list); \
             set it in ${} or pass --api-key-file",
            args.api_key_env
        ));
    }
    let key = match &args.api_key_file {
        Some(p) => {
            let text = crate::fsx::read_text(p).context("--api-key-file")?;
            Some(text.lines().next().unwrap_or("").trim().to_string())
        }
        None => std::env::var(&args.api_key_env).ok(),
    };
    match key {
        Some(k) if k.is_empty() => usage("the API key is empty"),
        k => Ok(k),
    }
}

/// Runs `spo serve` until killed.
pub fn run(args: ServeArgs) -> Result<()> {
    if args.max_batch == 0 || args.queue == 0 || args.body_limit == 0 || args.max_tokens == 0 {
        return usage("--max-batch, --queue, --body-limit and --max-tokens must be at least 1");
    }
    let key = api_key(&args)?;
    let loaded = args.placement.resolve()?.load_with(&args.model, args.adapter.as_deref())?;
    let name = args.model.file_stem().map_or("spo".into(), |s| s.to_string_lossy().into_owned());
    let cfg = ServeConfig {
        model_name: name,
        api_key: key,
        default_max_tokens: args.max_tokens,
        max_tokens_limit: args.max_tokens_limit.max(args.max_tokens),
        body_limit: args.body_limit,
        read_timeout: Duration::from_secs(args.read_timeout),
        request_timeout: Duration::from_secs(args.request_timeout),
        queue: args.queue,
        max_batch: args.max_batch,
    };
    let (jobs, queue) = std::sync::mpsc::sync_channel(cfg.queue);
    let context = loaded.model.config().max_position_embeddings;
    let scheduler = Scheduler { model: loaded.model, tok: loaded.tokenizer.clone(), max_batch: cfg.max_batch };
    std::thread::spawn(move || scheduler.run(queue));
    let app = Arc::new(App { cfg, tok: loaded.tokenizer, context, jobs });
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let addr = format!("{}:{}", args.host, args.port);
        let listener = match tokio::net::TcpListener::bind(&addr).await {
            Ok(l) => l,
            Err(e) => return usage(format!("--port {}: cannot listen on {addr}: {e}", args.port)),
        };
        let auth = if app.cfg.api_key.is_some() { "key required" } else { "no key" };
        eprintln!(
            "serving {} on http://{addr}/v1 ({auth}; batch ≤ {}, queue {})",
            app.cfg.model_name, app.cfg.max_batch, app.cfg.queue
        );
        serve(listener, app).await
    })
}
