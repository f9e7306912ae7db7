//! The tests' generator of fresh inputs.

/// xorshift64*: a small generator of test inputs, so that tests need no extra dependency.
/// [`Rng::new`] seeds it from the clock (or `WORKER_TEST_SEED`, to replay a failure) and
/// prints the seed.
pub struct Rng(pub u64);

impl Rng {
    /// Seeded from `WORKER_TEST_SEED` when set, else from the clock; the seed is printed.
    #[allow(clippy::new_without_default)] // a fresh seed each call: not a default value
    pub fn new() -> Self {
        let seed = std::env::var("WORKER_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            })
            | 1;
        eprintln!("test seed {seed} (WORKER_TEST_SEED={seed} replays it)");
        Rng(seed)
    }

    /// The next 64 random bits.
    #[allow(clippy::should_implement_trait)] // not an iterator: it never ends
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [-1, 1).
    pub fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| (self.next() >> 56) as u8).collect()
    }

    /// `n` roughly normal values of standard deviation 0.58 (a sum of four uniforms).
    pub fn normals(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| (0..4).map(|_| self.f32()).sum::<f32>() * 0.5)
            .collect()
    }
}
