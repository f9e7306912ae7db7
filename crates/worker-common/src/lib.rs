//! What every worker crate shares: stable error codes mapped to HTTP statuses, the sampling
//! configuration and sampler, generation results, and the ready-callback payload.
//!
//! Empty until the CPU inference issue lands. It must not depend on a backend or on HTTP.
