//! The `http_request` fuzz target's entry function on seeded pseudo-random inputs, so a
//! plain `cargo test` (no nightly, no cargo-fuzz) keeps its invariants: every request parser
//! and validator, on any bytes, accepts within the limits or refuses with a 4xx that echoes
//! nothing the request sent.

#[test]
fn request_parsers_keep_their_invariants_on_seeded_inputs() {
    let t0 = std::time::Instant::now();
    let inputs = worker_testdata::seeded_inputs(0x5eed_0001, 5000, 600);
    for input in &inputs {
        worker_http::fuzzing::fuzz_request(input);
    }
    eprintln!("{} inputs in {:?}", inputs.len(), t0.elapsed());
}
