//! Counters an operator graphs for a partition log. Plain atomics here; the broker exports them
//! (Prometheus) without this crate knowing how.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters of one partition log (monotonic since it was opened).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) appended_batches: AtomicU64,
    pub(crate) appended_bytes: AtomicU64,
    pub(crate) read_batches: AtomicU64,
    pub(crate) read_bytes: AtomicU64,
    pub(crate) syncs: AtomicU64,
    pub(crate) sync_micros: AtomicU64,
    pub(crate) segments_rolled: AtomicU64,
    pub(crate) segments_deleted: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, amount: u64) {
        counter.fetch_add(amount, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> LogMetrics {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        LogMetrics {
            appended_batches: get(&self.appended_batches),
            appended_bytes: get(&self.appended_bytes),
            read_batches: get(&self.read_batches),
            read_bytes: get(&self.read_bytes),
            syncs: get(&self.syncs),
            sync_micros: get(&self.sync_micros),
            segments_rolled: get(&self.segments_rolled),
            segments_deleted: get(&self.segments_deleted),
        }
    }
}

/// A snapshot of a log's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogMetrics {
    pub appended_batches: u64,
    pub appended_bytes: u64,
    pub read_batches: u64,
    pub read_bytes: u64,
    /// Completed syncs (group commits) and the time spent in them.
    pub syncs: u64,
    pub sync_micros: u64,
    pub segments_rolled: u64,
    pub segments_deleted: u64,
}
