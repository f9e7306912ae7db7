//! The worker's HTTP face: llama-orch routes, OpenAI-compatible routes, Server-Sent Events,
//! validation, auth and metrics. The only crate that knows JSON wire types.
//!
//! Empty until the HTTP worker issue lands.
