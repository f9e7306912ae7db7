//! A persistent pool of compute threads: one job at a time, run by the calling thread and by
//! every worker that joins it in time. Jobs split their work dynamically (an atomic counter
//! over chunks), so however many threads join, all of the work gets done.
//!
//! A worker joins a job only while it is open; the caller closes it when its own share is
//! done and then waits only for the workers that joined. So a worker the OS has descheduled
//! (a busy machine) makes the caller do more of the job instead of stalling it until the
//! worker runs again.
//!
//! Workers spin briefly on the job counter after each job (ops follow each other within
//! microseconds during a forward pass), then sleep on a condvar, so an idle worker costs no
//! CPU. The caller likewise spins, then sleeps, until the workers that joined have finished.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// The job: a borrowed closure with its lifetime erased (see `ThreadPool::run`).
type Job = *const (dyn Fn() + Sync);

/// `Shared::state`: the job number in the high 32 bits, [`CLOSED`], and the number of
/// workers that joined in the low bits.
const CLOSED: u64 = 1 << 31;
const JOINED: u64 = CLOSED - 1;

struct Shared {
    state: AtomicU64,
    /// Workers that joined the current job and finished it.
    finished: AtomicUsize,
    panicked: AtomicBool,
    shutdown: AtomicBool,
    job: Mutex<Option<SendJob>>,
    wake: Condvar,
    sleep_lock: Mutex<()>,
    done: Condvar,
    done_lock: Mutex<()>,
    /// Workers blocked (or about to block) on `wake`: the caller makes the futex call only
    /// when this is non-zero, so a job handed to spinning workers costs no system call.
    sleepers: AtomicUsize,
    /// Whether the caller is blocked (or about to block) on `done`.
    caller_sleeping: AtomicBool,
}

#[derive(Clone, Copy)]
struct SendJob(Job);
// SAFETY: the pointee is `Sync`, and `ThreadPool::run` keeps it alive until every worker that
// joined the job has finished with it; a worker that did not join never reads the pointer.
unsafe impl Send for SendJob {}

/// Spins (`pause` instructions) before a thread blocks: about 50-100 microseconds, longer
/// than the gap between two ops of a forward pass, short enough not to starve other
/// processes on a busy machine.
const SPIN_LIMIT: usize = 2_000;

/// The pool. Dropping it stops and joins the workers.
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    n_threads: usize,
    /// Number of the last job, in the high bits of `Shared::state`.
    jobs: AtomicU64,
}

impl ThreadPool {
    /// A pool running jobs on up to `n_threads` threads in all: the caller plus
    /// `n_threads - 1` workers (at least one thread). When the OS refuses to start a worker
    /// the pool keeps the ones it has, with a warning: jobs share their work out dynamically,
    /// so fewer threads give the same results, only slower.
    pub fn new(n_threads: usize) -> Self {
        Self::start(n_threads, |idx, shared| {
            std::thread::Builder::new()
                .name(format!("compute-{idx}"))
                .spawn(move || worker(shared))
        })
    }

    /// [`ThreadPool::new`] with the spawning of worker `idx` (from 1) passed in, so that a
    /// test can make it fail.
    fn start(
        n_threads: usize,
        mut spawn: impl FnMut(usize, Arc<Shared>) -> std::io::Result<JoinHandle<()>>,
    ) -> Self {
        let asked = n_threads.max(1);
        let shared = Arc::new(Shared {
            state: AtomicU64::new(CLOSED),
            finished: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            job: Mutex::new(None),
            wake: Condvar::new(),
            sleep_lock: Mutex::new(()),
            done: Condvar::new(),
            done_lock: Mutex::new(()),
            sleepers: AtomicUsize::new(0),
            caller_sleeping: AtomicBool::new(false),
        });
        let mut workers = Vec::with_capacity(asked - 1);
        for idx in 1..asked {
            match spawn(idx, Arc::clone(&shared)) {
                Ok(handle) => workers.push(handle),
                Err(error) => {
                    tracing::warn!(
                        threads = asked,
                        started = idx,
                        %error,
                        "cannot start compute thread {idx}: running on {idx} threads instead"
                    );
                    break;
                }
            }
        }
        ThreadPool {
            n_threads: workers.len() + 1,
            shared,
            workers,
            jobs: AtomicU64::new(0),
        }
    }

    /// Threads that may run each job, the caller included: fewer than asked for when some
    /// could not be started.
    pub fn n_threads(&self) -> usize {
        self.n_threads
    }

    /// Runs `f` on the calling thread and on every worker that joins before the caller's own
    /// call returns; returns when all of those have finished. `f` must share its work out
    /// dynamically: it may run once or up to `n_threads` times. Returns `false` when `f`
    /// panicked on some thread.
    pub fn run(&self, f: &(dyn Fn() + Sync)) -> bool {
        if self.n_threads == 1 {
            return catch_unwind(AssertUnwindSafe(f)).is_ok();
        }
        let sh = &*self.shared;
        // SAFETY: only the lifetime is erased. The pointer is published to the workers below,
        // only workers that join the job read it, and this function does not return before
        // every worker that joined has finished calling it; the slot is cleared before
        // returning.
        let job: Job =
            unsafe { std::mem::transmute::<&(dyn Fn() + Sync), &'static (dyn Fn() + Sync)>(f) };
        *lock(&sh.job) = Some(SendJob(job));
        sh.finished.store(0, Ordering::SeqCst);
        let number = (self.jobs.fetch_add(1, Ordering::Relaxed) + 1) & u32::MAX as u64;
        // Open: the new number, zero joined.
        sh.state.store(number << 32, Ordering::SeqCst);
        // SeqCst pairs with the worker's SeqCst increment of `sleepers` before its own check of
        // `state`: either it sees the new job or we see it going to sleep.
        if sh.sleepers.load(Ordering::SeqCst) != 0 {
            let _g = lock(&sh.sleep_lock);
            sh.wake.notify_all();
        }
        let mut ok = catch_unwind(AssertUnwindSafe(f)).is_ok();
        let joined = (sh.state.fetch_or(CLOSED, Ordering::SeqCst) & JOINED) as usize;
        let mut spins = 0usize;
        while sh.finished.load(Ordering::Acquire) != joined {
            spins += 1;
            if spins < SPIN_LIMIT {
                std::hint::spin_loop();
                continue;
            }
            let g = lock(&sh.done_lock);
            sh.caller_sleeping.store(true, Ordering::SeqCst);
            if sh.finished.load(Ordering::SeqCst) != joined {
                drop(sh.done.wait(g).unwrap_or_else(|e| e.into_inner()));
            }
            sh.caller_sleeping.store(false, Ordering::SeqCst);
        }
        *lock(&sh.job) = None;
        if sh.panicked.swap(false, Ordering::SeqCst) {
            ok = false;
        }
        ok
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Joins the job `state` describes if it is still open; `false` when it closed (or a newer
/// job replaced it) first.
fn try_join(sh: &Shared, mut state: u64) -> bool {
    let number = state >> 32;
    while state >> 32 == number && state & CLOSED == 0 {
        match sh
            .state
            .compare_exchange_weak(state, state + 1, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(_) => return true,
            Err(now) => state = now,
        }
    }
    false
}

fn worker(sh: Arc<Shared>) {
    let mut seen = 0u64;
    loop {
        // Wait for a new job number: spin first, then sleep.
        let mut spins = 0usize;
        let state = loop {
            if sh.shutdown.load(Ordering::Acquire) {
                return;
            }
            let state = sh.state.load(Ordering::Acquire);
            if state >> 32 != seen {
                break state;
            }
            spins += 1;
            if spins < SPIN_LIMIT {
                std::hint::spin_loop();
                continue;
            }
            let g = lock(&sh.sleep_lock);
            sh.sleepers.fetch_add(1, Ordering::SeqCst);
            if sh.state.load(Ordering::SeqCst) >> 32 == seen && !sh.shutdown.load(Ordering::SeqCst)
            {
                drop(sh.wake.wait(g).unwrap_or_else(|e| e.into_inner()));
            } else {
                drop(g);
            }
            sh.sleepers.fetch_sub(1, Ordering::SeqCst);
            spins = 0;
        };
        seen = state >> 32;
        if !try_join(&sh, state) {
            continue;
        }
        let job = *lock(&sh.job);
        if let Some(SendJob(job)) = job {
            // SAFETY: `run` keeps the closure alive until `finished` counts every worker that
            // joined, which cannot happen before this worker increments it below.
            let f = unsafe { &*job };
            if catch_unwind(AssertUnwindSafe(f)).is_err() {
                sh.panicked.store(true, Ordering::SeqCst);
            }
        }
        // SeqCst pairs with the caller's store of `caller_sleeping` before its check of
        // `finished`: either it sees our increment or we see it going to sleep.
        sh.finished.fetch_add(1, Ordering::SeqCst);
        if sh.caller_sleeping.load(Ordering::SeqCst) {
            let _g = lock(&sh.done_lock);
            sh.done.notify_all();
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        {
            let _g = lock(&self.shared.sleep_lock);
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Work handed out through a counter is done exactly once, whoever joins.
    #[test]
    fn every_chunk_of_each_job_runs_exactly_once() {
        let pool = ThreadPool::new(3);
        for job in 0..500 {
            let next = AtomicUsize::new(0);
            let done: Vec<AtomicUsize> = (0..64).map(|_| AtomicUsize::new(0)).collect();
            assert!(pool.run(&|| loop {
                let c = next.fetch_add(1, Ordering::Relaxed);
                let Some(d) = done.get(c) else { break };
                d.fetch_add(1, Ordering::Relaxed);
            }));
            for (c, d) in done.iter().enumerate() {
                assert_eq!(d.load(Ordering::Relaxed), 1, "job {job}, chunk {c}");
            }
        }
    }

    /// Workers do join: a job that waits for a second thread gets one.
    #[test]
    fn workers_join_jobs() {
        let pool = ThreadPool::new(2);
        let threads = AtomicUsize::new(0);
        assert!(pool.run(&|| {
            threads.fetch_add(1, Ordering::SeqCst);
            let start = std::time::Instant::now();
            while threads.load(Ordering::SeqCst) < 2 && start.elapsed().as_secs() < 10 {
                std::hint::spin_loop();
            }
        }));
        assert_eq!(threads.load(Ordering::SeqCst), 2);
    }

    /// A worker that cannot be started leaves a smaller pool that still does all the work.
    #[test]
    fn a_thread_that_cannot_start_leaves_a_smaller_pool() {
        let pool = ThreadPool::start(4, |idx, shared| {
            if idx == 2 {
                return Err(std::io::Error::other("no more threads"));
            }
            std::thread::Builder::new()
                .name(format!("compute-{idx}"))
                .spawn(move || worker(shared))
        });
        assert_eq!(pool.n_threads(), 2);
        let next = AtomicUsize::new(0);
        let done: Vec<AtomicUsize> = (0..64).map(|_| AtomicUsize::new(0)).collect();
        assert!(pool.run(&|| loop {
            let c = next.fetch_add(1, Ordering::Relaxed);
            let Some(d) = done.get(c) else { break };
            d.fetch_add(1, Ordering::Relaxed);
        }));
        assert!(done.iter().all(|d| d.load(Ordering::Relaxed) == 1));
    }

    #[test]
    fn a_panicking_job_is_reported_and_the_pool_survives() {
        let pool = ThreadPool::new(2);
        assert!(!pool.run(&|| panic!("boom")));
        let worker_ran = AtomicBool::new(false);
        let on_worker = || {
            if std::thread::current().name() == Some("compute-1") {
                worker_ran.store(true, Ordering::SeqCst);
                panic!("boom on the worker");
            }
            let start = std::time::Instant::now();
            while !worker_ran.load(Ordering::SeqCst) && start.elapsed().as_secs() < 10 {
                std::hint::spin_loop();
            }
        };
        assert!(!pool.run(&on_worker));
        assert!(pool.run(&|| {}));
    }
}
