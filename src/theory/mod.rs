//! The tabular world in which the paper's theorems hold exactly (sections 3–5,
//! Appendix A), made runnable: exact expected losses, their fixed points, and a
//! finite-sample check.

pub mod experiment;
pub mod finite;
pub mod objective;
pub mod solve;
pub mod world;

pub use experiment::{run, TheoryConfig, TheoryReport};
