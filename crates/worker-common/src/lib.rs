//! What every worker crate shares: the sampling configuration ([`SamplingConfig`], validated
//! into a typed [`SamplingError`]) and the [`Sampler`] that turns logits into a token id, with
//! log-probabilities when asked ([`Sampled`]); the stable error codes clients see
//! ([`ErrorCode`], each with its HTTP status); and the ready-callback payload
//! ([`ReadyCallback`]); and the bounds every route puts on request fields ([`limits`]). The order the sampler's steps run in is documented in the [`sampler`]
//! module.
//!
//! It must not depend on a backend or on HTTP, and knows no wire format: `worker-http` turns
//! these types into JSON.

#![deny(missing_docs)]

mod error_code;
pub mod limits;
mod ready;
mod rng;
pub mod sampler;
mod sampling_config;

pub use error_code::ErrorCode;
pub use ready::{DeviceInfo, MemoryArchitecture, ReadyCallback};
pub use sampler::{argmax, Sampled, Sampler};
pub use sampling_config::{SamplingConfig, SamplingError, GREEDY_TEMPERATURE};
