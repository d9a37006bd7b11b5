//! Where blocking, fsync-bound work runs: the LogStore's WAL writer and the shard's commits.
//! In a process they run on threads of their own (the default), so that an fsync never
//! stalls the async runtime. Under a deterministic simulation (`tests/sim.rs`) they run
//! inline on the calling task instead: another thread would run outside the simulation's
//! clock and schedule, and a seed would no longer replay the same run.

use std::sync::atomic::{AtomicBool, Ordering};

static INLINE: AtomicBool = AtomicBool::new(false);

/// From now on, blocking work in this process runs inline on the calling task (for a
/// simulation, whose hosts each run on one thread; never in a server).
pub fn run_inline() {
    INLINE.store(true, Ordering::SeqCst);
}

/// Whether blocking work runs inline.
pub fn inline() -> bool {
    INLINE.load(Ordering::SeqCst)
}

/// Runs `f` on the blocking pool, or inline (see [`run_inline`]); `Err` if the blocking
/// task panicked or was cancelled.
pub async fn run<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    if inline() {
        Ok(f())
    } else {
        tokio::task::spawn_blocking(f).await
    }
}
