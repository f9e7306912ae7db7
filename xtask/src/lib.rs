//! What `cargo xtask` and `xtask-bench` share: the fixture cache and its downloads.

pub mod fetch;
