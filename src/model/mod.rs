//! The llama-family decoder, its loaders and its saver.

pub mod config;
pub mod decode_linear;
pub mod frozen_linear;
pub mod fused_attention;
pub mod fused_elementwise;
pub mod fused_kl;
pub mod fused_logprob;
pub mod fused_norm;
pub mod llama;
pub mod lora;
pub mod placement;
pub mod precomputed;
pub mod rope;

pub use config::LlamaConfig;
pub use llama::{KvCache, Llama};
pub use placement::{Placement, Precision};
pub mod load;

pub use load::{load, Loaded};
