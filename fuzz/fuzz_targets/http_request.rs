//! Arbitrary bytes, or JSON built from them near each route's schema, through the parser and
//! validator of every route a request body reaches (`/execute`, `/cancel`, `/tokenize`,
//! `/detokenize`, `/v1/chat/completions`, `/v1/completions`). The invariants are in
//! `worker_http::fuzzing`: no panic, accepted requests within the limits, refusals 4xx and
//! never echoing what the request sent.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    worker_http::fuzzing::fuzz_request(data);
});
