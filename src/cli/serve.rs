//! `spo serve`: an OpenAI-compatible server for any model spo loads.

use super::args::usage;
use crate::model::load;
use crate::serve::{handle, ServeConfig};
use anyhow::{anyhow, Result};
use candle_core::{DType, Device};
use clap::Args;
use std::path::PathBuf;

/// Flags of `spo serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Model: a Hugging Face directory, a GGUF file, or a llama2.c .bin.
    #[arg(long)]
    pub model: PathBuf,
    /// Port.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Interface to bind (loopback by default; 0.0.0.0 to widen).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Require `Authorization: Bearer KEY` on every request.
    #[arg(long)]
    pub api_key: Option<String>,
    /// `max_tokens` when a request gives none.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
}

/// Runs `spo serve` until killed.
pub fn run(args: ServeArgs) -> Result<()> {
    let loaded = load(&args.model, DType::F32, &Device::Cpu)?;
    let name = args.model.file_stem().map_or("spo".into(), |s| s.to_string_lossy().into_owned());
    let cfg = ServeConfig { model_name: name, api_key: args.api_key.clone(), default_max_tokens: args.max_tokens };
    let addr = format!("{}:{}", args.host, args.port);
    let server = match tiny_http::Server::http(&addr) {
        Ok(s) => s,
        Err(e) => return usage(format!("--port {}: cannot listen on {addr}: {e}", args.port)),
    };
    eprintln!("serving {} on http://{addr}/v1", cfg.model_name);
    for mut request in server.incoming_requests() {
        let mut body = String::new();
        let read = std::io::Read::read_to_string(request.as_reader(), &mut body);
        let auth =
            request.headers().iter().find(|h| h.field.equiv("Authorization")).map(|h| h.value.as_str().to_string());
        let (status, value) = match read {
            Ok(_) => handle(&loaded, &cfg, request.method().as_str(), request.url(), auth.as_deref(), &body),
            Err(_) => (
                400,
                serde_json::json!({"error": {"message": "the body is not UTF-8", "type": "invalid_request_error"}}),
            ),
        };
        let header =
            tiny_http::Header::from_bytes("Content-Type", "application/json").map_err(|_| anyhow!("header"))?;
        let response = tiny_http::Response::from_string(value.to_string()).with_status_code(status).with_header(header);
        if let Err(e) = request.respond(response) {
            eprintln!("could not answer a request: {e}");
        }
    }
    Ok(())
}
