//! Helpers shared by the integration tests.

pub mod logits;
pub mod tiny_arch;
