//! Helpers shared by the integration tests.

pub mod logits;
pub mod routing;
pub mod tiny_arch;
