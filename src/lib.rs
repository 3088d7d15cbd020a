//! spo: Soft Preference Optimization for language models.
//!
//! The library never prints or exits; the `spo` binary (see `src/cli`) does.
//! Modules follow the data path: losses are pure functions of log-prob tensors
//! ([`loss`]); the tabular world in which the paper's theorems hold exactly is
//! [`theory`], which shares the per-pair formulas of [`scalar`].

// Index loops are the notation of the tabular maths (D(i≻j), Hessians); keep them.
#![allow(clippy::needless_range_loop)]

pub mod batch;
pub mod bench;
pub mod cli;
pub mod data;
pub mod eval;
pub mod fetch;
pub mod fsx;
pub mod jsonl;
pub mod judge;
pub mod loss;
pub mod model;
pub mod plot;
pub mod runtime;
pub mod sample;
pub mod scalar;
pub mod serve;
pub mod theory;
pub mod tokenizer;
pub mod train;
