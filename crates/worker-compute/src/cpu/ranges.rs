//! Work cut into contiguous ranges, one per thread: each thread takes the items of its own
//! range from the front, one at a time, and then helps with the others' from their backs.
//!
//! A decode step reads every matrix once, so a product's speed is how well each core
//! streams memory. Eight interleaved pieces per matrix handed out through one counter (the
//! earlier split) made each thread start a new stream at every piece; one contiguous run per
//! thread is what the hardware prefetchers follow best (SmolLM2 decode 4-8% faster in 8 of 8
//! repetitions, alternating the two splits step by step). Taking single items, and stealing
//! from the back of a range whose owner is slow or never joined the job, keeps the balance
//! the pieces gave.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// `Ranges::bounds`: the next item from the front in the low 32 bits, the end (exclusive)
/// in the high 32.
const FRONT: u64 = u32::MAX as u64;

/// One range's bounds ([`FRONT`]), alone on its cache lines: two owners taking from the
/// fronts of bounds that shared a line made every take a cache miss.
#[repr(align(128))]
struct Bounds(AtomicU64);

/// The ranges of one job; see the module documentation.
pub(super) struct Ranges {
    bounds: Vec<Bounds>,
    /// Ranges handed to the threads that joined so far.
    owners: AtomicUsize,
}

impl Ranges {
    /// Ranges `cuts[i]..cuts[i + 1]` (`cuts` ascending; empty ranges allowed). Item indices
    /// must fit in 32 bits.
    pub(super) fn new(cuts: &[usize]) -> Self {
        let bounds = cuts
            .windows(2)
            .map(|w| {
                debug_assert!(w[0] <= w[1] && w[1] <= FRONT as usize);
                Bounds(AtomicU64::new(w[0] as u64 | ((w[1] as u64) << 32)))
            })
            .collect();
        Self {
            bounds,
            owners: AtomicUsize::new(0),
        }
    }

    /// Calls `f` on items until none is left: first this thread's own range from its front
    /// (the first thread to call takes range 0, the next range 1, ...), then every other
    /// range from its back. Each item goes to exactly one call of `f`, whichever thread.
    pub(super) fn run(&self, mut f: impl FnMut(usize)) {
        let n = self.bounds.len();
        let own = self.owners.fetch_add(1, Ordering::Relaxed);
        if own < n {
            while let Some(i) = self.take(own, true) {
                f(i);
            }
        }
        for d in 1..=n {
            let r = (own + d) % n;
            while let Some(i) = self.take(r, false) {
                f(i);
            }
        }
    }

    /// The next item of range `r` from its front (or back), if any is left.
    fn take(&self, r: usize, front: bool) -> Option<usize> {
        let b = &self.bounds[r].0;
        let mut cur = b.load(Ordering::Relaxed);
        loop {
            let (lo, hi) = (cur & FRONT, cur >> 32);
            if lo >= hi {
                return None;
            }
            let (next, item) = if front {
                (cur + 1, lo)
            } else {
                (lo | ((hi - 1) << 32), hi - 1)
            };
            match b.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Some(item as usize),
                Err(seen) => cur = seen,
            }
        }
    }
}

/// `parts + 1` cuts of items `0..n` into contiguous ranges of about equal weight, the items
/// being `runs` of `(count, weight of each)` one after the other (`n` their total count).
pub(super) fn balanced_cuts(runs: &[(usize, u64)], parts: usize) -> Vec<usize> {
    let parts = parts.max(1);
    let n: usize = runs.iter().map(|&(count, _)| count).sum();
    let total: u64 = runs.iter().map(|&(count, w)| count as u64 * w).sum();
    let mut cuts = Vec::with_capacity(parts + 1);
    cuts.push(0);
    for p in 1..parts {
        // The first item with at least p/parts of the total weight before it.
        let target = total * p as u64 / parts as u64;
        let (mut first, mut before, mut cut) = (0, 0u64, n);
        for &(count, w) in runs {
            let run = count as u64 * w;
            if before + run >= target {
                cut = first + (target - before).div_ceil(w.max(1)) as usize;
                break;
            }
            first += count;
            before += run;
        }
        cuts.push(cut);
    }
    cuts.push(n);
    cuts
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Every item once, whichever threads join and however many.
    #[test]
    fn every_item_goes_to_exactly_one_call() {
        for (n, parts, threads) in [(0, 2, 2), (1, 2, 2), (7, 2, 1), (100, 2, 2), (33, 3, 5)] {
            let cuts = balanced_cuts(&[(n, 1)], parts);
            let ranges = Ranges::new(&cuts);
            let seen = Mutex::new(vec![0u32; n]);
            std::thread::scope(|s| {
                for _ in 0..threads {
                    s.spawn(|| ranges.run(|i| seen.lock().unwrap()[i] += 1));
                }
            });
            assert!(
                seen.into_inner().unwrap().iter().all(|&c| c == 1),
                "{n} items, {parts} parts, {threads} threads"
            );
        }
    }

    /// A lone thread takes its own range front to back, then the next range from its back.
    #[test]
    fn a_lone_thread_runs_its_range_forward_then_steals_backward() {
        let ranges = Ranges::new(&[0, 3, 6]);
        let mut order = Vec::new();
        ranges.run(|i| order.push(i));
        assert_eq!(order, [0, 1, 2, 5, 4, 3]);
    }

    #[test]
    fn cuts_balance_the_weights() {
        assert_eq!(balanced_cuts(&[(10, 1)], 2), [0, 5, 10]);
        // Items 0..4 weigh 3, the other six 1: half of the 18 is reached after three items.
        assert_eq!(balanced_cuts(&[(4, 3), (6, 1)], 2), [0, 3, 10]);
        assert_eq!(balanced_cuts(&[(4, 3), (6, 1)], 3), [0, 2, 4, 10]);
        assert_eq!(balanced_cuts(&[(2, 1)], 4), [0, 0, 1, 1, 2]);
        assert_eq!(balanced_cuts(&[(0, 1)], 2), [0, 0, 0]);
        assert_eq!(balanced_cuts(&[], 2), [0, 0, 0]);
    }
}
