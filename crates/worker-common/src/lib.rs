//! What every worker crate shares. For now: the sampling configuration ([`SamplingConfig`],
//! validated into a typed [`SamplingError`]) and the [`Sampler`] that turns logits into a
//! token id, with log-probabilities when asked ([`Sampled`]). The order the sampler's steps
//! run in is documented in the [`sampler`] module.
//!
//! It must not depend on a backend or on HTTP.

#![deny(missing_docs)]

mod rng;
pub mod sampler;
mod sampling_config;

pub use sampler::{Sampled, Sampler};
pub use sampling_config::{SamplingConfig, SamplingError, GREEDY_TEMPERATURE};
