//! Publication of forwarding tables to workers, RCU-style.
//!
//! One writer (the control thread) publishes complete immutable [`Fib`] snapshots; any number of
//! readers (workers) load the current one once per batch. Built on `arc-swap`: a load is a few
//! atomic operations on a thread-local debt slot, never a lock and never a wait for the writer;
//! a store never waits for readers either (it pays their debts, turning them into strong
//! references). A snapshot is freed when the last reader drops it.
//!
//! [`Published::wait_for_readers`] is the grace period: after it returns, no reader still holds
//! the snapshot that was replaced, so work that must follow "no packet uses the old table any
//! more" (expiring conntrack entries to removed backends) can run safely.
//!
//! Reclamation belongs to the control thread: it keeps the [`Published`] a publish returns,
//! waits for readers, and drops it, so the last reference to a replaced snapshot (and the cost
//! of freeing it: tens of thousands of `Arc`s for a large cluster) is never a worker's.

use crate::fib::Fib;
use arc_swap::ArcSwap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The current table, shared by the control thread and all workers.
#[derive(Debug)]
pub struct FibCell {
    cur: ArcSwap<Fib>,
}

/// A loaded snapshot; hold it for one batch, not longer.
pub type FibGuard = arc_swap::Guard<Arc<Fib>>;

/// What a publish replaced.
#[derive(Debug)]
pub struct Published {
    /// The snapshot that was current before.
    pub old: Arc<Fib>,
}

impl Published {
    /// Waits (sleeping, on the control thread) until no reader holds the old snapshot, or the
    /// timeout passes, then drops it here. Returns true when the grace period completed (a
    /// reader stuck past the timeout frees the snapshot itself when it lets go).
    pub fn wait_for_readers(self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        // Our `old` is one reference; any other is a reader (or a clone the caller kept).
        while Arc::strong_count(&self.old) > 1 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        true
    }
}

impl FibCell {
    /// A cell holding `fib`.
    pub fn new(fib: Fib) -> Self {
        Self {
            cur: ArcSwap::from_pointee(fib),
        }
    }
    /// The current snapshot (readers: once per batch).
    #[inline]
    pub fn load(&self) -> FibGuard {
        self.cur.load()
    }
    /// A strong reference to the current snapshot (for slow paths that keep it).
    pub fn load_full(&self) -> Arc<Fib> {
        self.cur.load_full()
    }
    /// Makes `fib` current; returns the replaced snapshot.
    pub fn publish(&self, fib: Fib) -> Published {
        Published {
            old: self.cur.swap(Arc::new(fib)),
        }
    }
}
