//! The CPU backend's threads: one pool, its size set once (`--threads`), the calling thread working beside
//! the others, and workers that spin between the ops of a forward pass instead of sleeping.
//!
//! A decode step runs a hundred or so small parallel ops (a layer's projections, norms, attention, experts),
//! each a few microseconds of work on this machine's cores. A general work-stealing pool hands each such op
//! from the calling thread to its workers and back through a sleeping lock (rayon's `in_worker_cold`), which
//! cost more than many of the ops themselves. Here an op is published with one atomic increment; workers
//! that finished the previous op are still spinning on it, take tasks from a shared counter, and the caller
//! takes tasks too and then spins until the workers are done. After [`SPIN`] without work a worker sleeps on
//! a condition variable (so an idle process costs nothing) and the next op wakes it.
//!
//! A call made while the pool is busy (from inside a task, or from a second thread while another thread's
//! op runs) runs its tasks on the calling thread, in order: the same results, as every kernel's tasks write
//! disjoint outputs and do not depend on which thread runs them. On wasm32 (no threads) every call does so.

use std::cell::{Cell, UnsafeCell};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a worker spins for the next op before it sleeps.
const SPIN: Duration = Duration::from_millis(2);

/// The configured thread count (0: not set, the logical CPUs this process may use).
static THREADS: AtomicUsize = AtomicUsize::new(0);
static POOL: OnceLock<Pool> = OnceLock::new();

thread_local! {
    /// Set on the pool's workers, and on a caller while it runs an op's tasks.
    static INSIDE: Cell<bool> = const { Cell::new(false) };
}

/// Sets the pool's thread count (the caller included). Takes effect only before the pool's first parallel
/// op; returns false (and changes nothing) after it.
pub fn set_threads(n: usize) -> bool {
    if POOL.get().is_some() {
        return false;
    }
    THREADS.store(n.max(1), Ordering::Relaxed);
    true
}

/// The threads an op is spread over (the caller included).
pub fn threads() -> usize {
    if cfg!(target_arch = "wasm32") {
        return 1;
    }
    match POOL.get() {
        Some(p) => p.workers + 1,
        None => match THREADS.load(Ordering::Relaxed) {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        },
    }
}

/// Runs `f(t)` for every task `t < tasks`, spread over the pool's threads; returns when all have run. Each
/// task runs exactly once, on some thread, in no particular order. A panic in a task is raised here, after
/// every other thread has left the op.
pub fn for_each<F: Fn(usize) + Sync>(tasks: usize, f: F) {
    if tasks == 0 {
        return;
    }
    let serial = |f: &F| (0..tasks).for_each(f);
    if tasks == 1 || threads() == 1 || INSIDE.with(Cell::get) {
        return serial(&f);
    }
    let pool = POOL.get_or_init(|| Pool::start(threads() - 1));
    // A poisoned lock only says an earlier op panicked (and was waited for): the pool is consistent.
    let _owner = match pool.owner.try_lock() {
        Ok(g) => g,
        Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => return serial(&f),
    };
    pool.run(tasks, &f);
}

/// Runs `f(i, chunk)` for the chunks of `chunk` elements `data` splits into (the last may be shorter), spread
/// over the pool's threads as [`for_each`] does.
pub fn chunks_mut<T: Send, F: Fn(usize, &mut [T]) + Sync>(data: &mut [T], chunk: usize, f: F) {
    let chunk = chunk.max(1);
    let len = data.len();
    let d = Shared::new(data);
    // SAFETY: task i alone touches elements i·chunk.. of its chunk.
    for_each(len.div_ceil(chunk), |i| f(i, unsafe { d.slice(i * chunk, chunk.min(len - i * chunk)) }))
}

/// A mutable slice whose disjoint parts parallel tasks write.
pub struct Shared<'a, T> {
    ptr: *mut T,
    len: usize,
    _borrow: std::marker::PhantomData<&'a mut [T]>,
}

// SAFETY: tasks reach the elements only through `slice`/`ptr`, whose callers promise disjoint ranges.
unsafe impl<T: Send> Send for Shared<'_, T> {}
unsafe impl<T: Send> Sync for Shared<'_, T> {}

impl<'a, T> Shared<'a, T> {
    pub fn new(s: &'a mut [T]) -> Self {
        Shared { ptr: s.as_mut_ptr(), len: s.len(), _borrow: std::marker::PhantomData }
    }

    /// Elements `start..start + len` (bounds checked).
    ///
    /// # Safety
    /// No other live reference (from another task or call) may overlap the range.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice(&self, start: usize, len: usize) -> &mut [T] {
        assert!(start <= self.len && len <= self.len - start, "a task's range is outside its slice");
        std::slice::from_raw_parts_mut(self.ptr.add(start), len)
    }

    /// The first element's pointer, for kernels that take a pointer and a row stride.
    pub fn ptr(&self) -> *mut T {
        self.ptr
    }
}

/// The op being run: its tasks and their function, whose lifetime is the caller's (see [`Pool::run`]).
#[derive(Clone, Copy)]
struct Job {
    f: *const (dyn Fn(usize) + Sync + 'static),
    tasks: usize,
}

struct Pool {
    workers: usize,
    /// Held by the thread whose op runs.
    owner: Mutex<()>,
    /// Bumped once per op, after `job`, `next` and `pending` are set.
    epoch: AtomicUsize,
    job: UnsafeCell<Job>,
    /// The next task to hand out.
    next: AtomicUsize,
    /// Workers that have not yet finished the current op.
    pending: AtomicUsize,
    panicked: AtomicBool,
    sleepers: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` (a pointer to the caller's function, Sync) is written only by the owner, while no worker reads it (every worker has finished the previous
// op: `pending` is 0), and read by workers only between an epoch's publication and their `pending` decrement.
unsafe impl Sync for Pool {}
unsafe impl Send for Pool {}

fn noop(_: usize) {}

impl Pool {
    fn start(workers: usize) -> Pool {
        let pool = Pool {
            workers,
            owner: Mutex::new(()),
            epoch: AtomicUsize::new(0),
            job: UnsafeCell::new(Job { f: &noop, tasks: 0 }),
            next: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
        };
        // The workers start before `POOL` holds this pool (it is being made): each waits for it first.
        for i in 0..workers {
            std::thread::Builder::new()
                .name(format!("herd-cpu-{}", i + 1))
                .spawn(|| POOL.wait().work())
                .expect("spawning the CPU backend's worker threads");
        }
        pool
    }

    /// Takes and runs tasks until none are left; false if one panicked.
    fn take(&self, job: Job) -> bool {
        // SAFETY: the job's function outlives the op (the owner waits for every worker in `run`).
        let f = unsafe { &*job.f };
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| loop {
            let t = self.next.fetch_add(1, Ordering::Relaxed);
            if t >= job.tasks {
                break;
            }
            f(t);
        }))
        .is_ok()
    }

    fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        // SAFETY: only the lifetime is erased; `f` is used by the workers only until `pending` is 0, which
        // this function waits for before it returns (or unwinds).
        let f: *const (dyn Fn(usize) + Sync + 'static) = unsafe { std::mem::transmute(f) };
        let job = Job { f, tasks };
        // SAFETY: the owner lock is held and pending is 0: no worker reads `job` now.
        unsafe { *self.job.get() = job };
        self.next.store(0, Ordering::Relaxed);
        self.panicked.store(false, Ordering::Relaxed);
        self.pending.store(self.workers, Ordering::Relaxed);
        self.epoch.fetch_add(1, Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = self.sleep.lock().unwrap_or_else(|e| e.into_inner());
            self.wake.notify_all();
        }
        INSIDE.with(|c| c.set(true));
        let ok = self.take(job);
        INSIDE.with(|c| c.set(false));
        let mut spins = 0u32;
        while self.pending.load(Ordering::Acquire) != 0 {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(4096) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        if !ok || self.panicked.load(Ordering::Relaxed) {
            panic!("a task of a parallel CPU op panicked");
        }
    }

    fn work(&self) {
        INSIDE.with(|c| c.set(true));
        let mut seen = 0usize;
        loop {
            let mut since = None;
            let mut spins = 0u32;
            loop {
                if self.epoch.load(Ordering::Acquire) != seen {
                    break;
                }
                spins = spins.wrapping_add(1);
                if !spins.is_multiple_of(256) {
                    std::hint::spin_loop();
                    continue;
                }
                let start = *since.get_or_insert_with(Instant::now);
                if start.elapsed() < SPIN {
                    continue;
                }
                let mut g = self.sleep.lock().unwrap_or_else(|e| e.into_inner());
                self.sleepers.fetch_add(1, Ordering::SeqCst);
                while self.epoch.load(Ordering::SeqCst) == seen {
                    g = self.wake.wait(g).unwrap_or_else(|e| e.into_inner());
                }
                self.sleepers.fetch_sub(1, Ordering::SeqCst);
                break;
            }
            seen = self.epoch.load(Ordering::Acquire);
            // SAFETY: the owner wrote `job` before publishing this epoch and does not change it until this
            // worker's `pending` decrement below.
            let job = unsafe { *self.job.get() };
            if !self.take(job) {
                self.panicked.store(true, Ordering::Relaxed);
            }
            self.pending.fetch_sub(1, Ordering::Release);
        }
    }
}

/// Runs `f` on this thread's scratch buffers in `key`, kept from call to call so a decode step allocates
/// nothing once warm; a call that finds them in use (a kernel reached again from within itself) gets fresh
/// ones instead of a panic.
pub(crate) fn with_scratch<T: Default + 'static, R>(
    key: &'static std::thread::LocalKey<std::cell::RefCell<T>>,
    f: impl FnOnce(&mut T) -> R,
) -> R {
    key.with(|c| match c.try_borrow_mut() {
        Ok(mut t) => f(&mut t),
        Err(_) => f(&mut T::default()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_and_nested_calls_run_inline() {
        let hits: Vec<AtomicUsize> = (0..1000).map(|_| AtomicUsize::new(0)).collect();
        for_each(hits.len(), |t| {
            hits[t].fetch_add(1, Ordering::Relaxed);
            // A nested op runs on this thread.
            let inner = AtomicUsize::new(0);
            for_each(3, |_| {
                inner.fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(inner.load(Ordering::Relaxed), 3);
        });
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        let mut v = vec![0usize; 1001];
        chunks_mut(&mut v, 10, |i, c| c.iter_mut().enumerate().for_each(|(j, x)| *x = i * 10 + j));
        assert!(v.iter().enumerate().all(|(i, &x)| i == x));
    }

    #[test]
    fn concurrent_callers_and_panics() {
        let threads: Vec<_> = (0..4)
            .map(|s| {
                std::thread::spawn(move || {
                    for n in 0..200 {
                        let sum = AtomicUsize::new(0);
                        for_each(n + s, |t| {
                            sum.fetch_add(t, Ordering::Relaxed);
                        });
                        let k = n + s;
                        assert_eq!(sum.load(Ordering::Relaxed), k * k.saturating_sub(1) / 2);
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        let r = std::panic::catch_unwind(|| for_each(64, |t| assert!(t != 40, "task 40")));
        assert!(r.is_err());
        // The pool still works after a panic.
        let sum = AtomicUsize::new(0);
        for_each(64, |t| {
            sum.fetch_add(t, Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 64 * 63 / 2);
    }
}
