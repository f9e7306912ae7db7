//! A persistent pool of compute threads: one job at a time, run by every thread (the caller
//! included) with its thread index, so kernels split work statically or through an atomic
//! counter.
//!
//! Workers spin briefly on a generation counter after each job (ops follow each other within
//! microseconds during a forward pass), then sleep on a condvar, so an idle worker costs no
//! CPU. The caller likewise spins, then sleeps, until every worker has finished.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// The job: a borrowed closure with its lifetime erased (see `ThreadPool::run`).
type Job = *const (dyn Fn(usize, usize) + Sync);

struct Shared {
    generation: AtomicUsize,
    pending: AtomicUsize,
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
// can see the pointer has finished with it.
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
}

impl ThreadPool {
    /// A pool running jobs on `n_threads` threads in all: the caller plus `n_threads - 1`
    /// workers (at least one thread).
    pub fn new(n_threads: usize) -> Self {
        let n_threads = n_threads.max(1);
        let shared = Arc::new(Shared {
            generation: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
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
        let workers = (1..n_threads)
            .map(|idx| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("compute-{idx}"))
                    .spawn(move || worker(shared, idx, n_threads))
                    .unwrap_or_else(|e| panic!("cannot start compute thread: {e}"))
            })
            .collect();
        ThreadPool {
            shared,
            workers,
            n_threads,
        }
    }

    /// Threads that run each job.
    pub fn n_threads(&self) -> usize {
        self.n_threads
    }

    /// Runs `f(thread_index, n_threads)` on every thread and returns when all have finished.
    /// Returns `false` when `f` panicked on some thread.
    pub fn run(&self, f: &(dyn Fn(usize, usize) + Sync)) -> bool {
        if self.n_threads == 1 {
            return catch_unwind(AssertUnwindSafe(|| f(0, 1))).is_ok();
        }
        let sh = &*self.shared;
        // SAFETY: only the lifetime is erased. The pointer is published to the workers below
        // and this function does not return before `pending` is back to zero, i.e. before
        // every worker has finished calling it; the slot is cleared before returning.
        let job: Job = unsafe {
            std::mem::transmute::<
                &(dyn Fn(usize, usize) + Sync),
                &'static (dyn Fn(usize, usize) + Sync),
            >(f)
        };
        *lock(&sh.job) = Some(SendJob(job));
        sh.pending.store(self.n_threads - 1, Ordering::SeqCst);
        sh.generation.fetch_add(1, Ordering::SeqCst);
        // SeqCst pairs with the worker's SeqCst increment of `sleepers` before its own check of
        // `generation`: either it sees the new generation or we see it going to sleep.
        if sh.sleepers.load(Ordering::SeqCst) != 0 {
            let _g = lock(&sh.sleep_lock);
            sh.wake.notify_all();
        }
        let mut ok = catch_unwind(AssertUnwindSafe(|| f(0, self.n_threads))).is_ok();
        let mut spins = 0usize;
        while sh.pending.load(Ordering::Acquire) != 0 {
            spins += 1;
            if spins < SPIN_LIMIT {
                std::hint::spin_loop();
                continue;
            }
            let g = lock(&sh.done_lock);
            sh.caller_sleeping.store(true, Ordering::SeqCst);
            if sh.pending.load(Ordering::SeqCst) != 0 {
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

fn worker(sh: Arc<Shared>, idx: usize, n: usize) {
    let mut seen = 0usize;
    loop {
        // Wait for a new generation: spin first, then sleep.
        let mut spins = 0usize;
        loop {
            if sh.shutdown.load(Ordering::Acquire) {
                return;
            }
            if sh.generation.load(Ordering::Acquire) != seen {
                break;
            }
            spins += 1;
            if spins < SPIN_LIMIT {
                std::hint::spin_loop();
                continue;
            }
            let g = lock(&sh.sleep_lock);
            sh.sleepers.fetch_add(1, Ordering::SeqCst);
            if sh.generation.load(Ordering::SeqCst) == seen && !sh.shutdown.load(Ordering::SeqCst) {
                drop(sh.wake.wait(g).unwrap_or_else(|e| e.into_inner()));
            } else {
                drop(g);
            }
            sh.sleepers.fetch_sub(1, Ordering::SeqCst);
            spins = 0;
        }
        seen = sh.generation.load(Ordering::Acquire);
        let job = *lock(&sh.job);
        if let Some(SendJob(job)) = job {
            // SAFETY: `run` keeps the closure alive until `pending` reaches zero, which
            // cannot happen before this worker decrements it below.
            let f = unsafe { &*job };
            if catch_unwind(AssertUnwindSafe(|| f(idx, n))).is_err() {
                sh.panicked.store(true, Ordering::SeqCst);
            }
        }
        // SeqCst pairs with the caller's store of `caller_sleeping` before its check of
        // `pending`: either it sees zero or we see it going to sleep.
        if sh.pending.fetch_sub(1, Ordering::SeqCst) == 1
            && sh.caller_sleeping.load(Ordering::SeqCst)
        {
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

    #[test]
    fn every_thread_runs_each_job() {
        let pool = ThreadPool::new(3);
        for _ in 0..200 {
            let hits = AtomicUsize::new(0);
            assert!(pool.run(&|i, n| {
                assert!(i < n);
                hits.fetch_add(1 << (8 * i), Ordering::SeqCst);
            }));
            assert_eq!(hits.load(Ordering::SeqCst), 1 + (1 << 8) + (1 << 16));
        }
    }

    #[test]
    fn a_panicking_job_is_reported_and_the_pool_survives() {
        let pool = ThreadPool::new(2);
        let ok = pool.run(&|i, _| {
            if i == 1 {
                panic!("boom");
            }
        });
        assert!(!ok);
        assert!(pool.run(&|_, _| {}));
    }
}
