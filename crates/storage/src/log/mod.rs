//! [`PartitionLog`]: one partition's append-only log, a directory of segments.
//!
//! It owns the partition directory (under an exclusive lock file), the order of its segments,
//! the log start offset (persisted in `log.meta`), offset and entry-index assignment, rolling,
//! retention and truncation. Durability is delegated to [`crate::durability`].
//!
//! `PartitionLog` is one type whose `impl` blocks are split by responsibility:
//! - this file: the type and its shared state, the lock discipline (reads share, writes
//!   exclude), stopping on a fatal error, bounds, durability waits and closing;
//! - `append_read`: the hot path — append (assigning offsets and entry indexes), rolling, and
//!   reads by offset, entry index and time;
//! - `truncate`: cutting the log — a suffix (by offset or entry index), a prefix (moving the
//!   log start) and a reset to an empty log further on;
//! - `retention`: deciding what retention removes (a plan) and applying it;
//! - `recovery`: opening the directory — lock, scan, repair, clean-up — and full verification;
//! - `meta`: the `log.meta` file (log start offset and the next entry index of an empty log).
//!
//! Invariants:
//! - segments are contiguous: each one's base offset is the previous one's next offset and its
//!   first entry index follows the previous one's last; only the last segment is active;
//! - offsets and entry indexes are assigned here, densely, from the log's end: the same prefix
//!   of batches gives every replica the same offsets;
//! - a segment never has the same base offset as another: a segment rolls only after it holds
//!   at least one record (control batches take no offsets);
//! - after a fatal error (corruption found while reading, a failed sync) the log refuses all
//!   further work with [`StorageError::Stopped`]: it never serves what it cannot vouch for.
//!
//! Directory contents: `{base:020}.log|.index|.timeindex`, `log.meta` (log start offset and the
//! next entry index of an empty log: written atomically), `.lock`.
//!
//! Known gaps: a flusher thread per log (fine for hundreds of partitions per node, not for
//! hundreds of thousands); segment age for rolling counts from when the segment was created or
//! last opened, not from a persisted creation time.

mod append_read;
mod meta;
mod recovery;
mod retention;
mod truncate;

use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;

use crate::config::LogConfig;
use crate::durability::{DurableCallback, Syncer, Watermark};
use crate::error::{Result, StorageError};
use crate::metrics::{Counters, LogMetrics};
use crate::segment::{Continuation, Located, Segment, SegmentPaths, remove_if_present};

pub use append_read::{Appended, ReadBatches};
pub use meta::META_FILE;
pub use recovery::{LOCK_FILE, RecoveryReport, VerifyReport};
pub use retention::{RetentionPlan, RetentionReport};

/// The log's bounds at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogBounds {
    /// Records below this offset are gone (retention or prefix truncation).
    pub log_start_offset: u64,
    /// The offset the next record will take.
    pub next_offset: u64,
    /// Entry index of the oldest batch still stored, if any.
    pub first_index: Option<u64>,
    /// The entry index the next batch will take.
    pub next_index: u64,
    /// (index, term) of the last batch, if any.
    pub last_entry: Option<(u64, u64)>,
    pub size_bytes: u64,
    pub segments: usize,
}

struct LogState {
    /// Oldest first; the last one is active. Never empty.
    segments: VecDeque<Segment>,
    next: Continuation,
    log_start_offset: u64,
    scratch: Vec<u8>,
}

struct Shared {
    dir: PathBuf,
    counters: Arc<Counters>,
    /// Replaced whole by [`PartitionLog::reconfigure`] (size and time limits only).
    config: RwLock<LogConfig>,
    state: RwLock<LogState>,
    syncer: Syncer,
    failure: OnceLock<String>,
    _lock: File,
}

impl Shared {
    fn config(&self) -> RwLockReadGuard<'_, LogConfig> {
        self.config
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One partition's segment log. `Send + Sync`: share it with `Arc`; appends serialize on an
/// internal lock, reads run concurrently with each other.
pub struct PartitionLog {
    shared: Arc<Shared>,
    flusher: Option<JoinHandle<()>>,
    recovery: RecoveryReport,
}

impl std::fmt::Debug for PartitionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionLog")
            .field("dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

impl PartitionLog {
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The settings in force now.
    pub fn config(&self) -> LogConfig {
        self.shared.config().clone()
    }

    /// Changes the size and time limits (segment size and age, retention, largest batch) of an
    /// open log: later appends, rolls and retention passes use them. Durability and the index
    /// interval stay as the log was opened with. Invalid settings are refused and change nothing.
    pub fn reconfigure(&self, config: &LogConfig) -> Result<()> {
        config.validate()?;
        let mut current = self
            .shared
            .config
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *current = LogConfig {
            durability: current.durability,
            index_interval_bytes: current.index_interval_bytes,
            ..config.clone()
        };
        Ok(())
    }

    /// What opening found and repaired.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    fn read_state(&self) -> Result<RwLockReadGuard<'_, LogState>> {
        self.check_running()?;
        Ok(self
            .shared
            .state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    fn write_state(&self) -> Result<RwLockWriteGuard<'_, LogState>> {
        self.check_running()?;
        Ok(self
            .shared
            .state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    fn check_running(&self) -> Result<()> {
        match self.shared.failure.get() {
            Some(reason) => Err(StorageError::Stopped {
                dir: self.shared.dir.clone(),
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Stops the log if `result` is a fatal error.
    fn guard<T>(&self, result: Result<T>) -> Result<T> {
        if let Err(err) = &result
            && err.is_fatal()
        {
            tracing::error!(dir = %self.shared.dir.display(), error = %err, "partition log stopped");
            let _ = self.shared.failure.set(err.to_string());
        }
        result
    }

    pub fn bounds(&self) -> Result<LogBounds> {
        let state = self.read_state()?;
        Ok(LogBounds {
            log_start_offset: state.log_start_offset,
            next_offset: state.next.next_offset,
            first_index: first_index(&state),
            next_index: state.next.next_index,
            last_entry: state.segments.iter().rev().find_map(|s| s.last_entry),
            size_bytes: state.segments.iter().map(|s| s.size).sum(),
            segments: state.segments.len(),
        })
    }

    /// Counters since the log was opened.
    pub fn metrics(&self) -> LogMetrics {
        self.shared.counters.snapshot()
    }

    /// The durable watermark: every entry below it survives a crash.
    pub fn durable(&self) -> Watermark {
        self.shared.syncer.durable()
    }

    /// Blocks until entry `index` (and all before it) is durable. Asks for a sync whatever the
    /// policy, so it also works under `Never`.
    pub fn wait_durable(&self, index: u64) -> Result<()> {
        let bounds = self.bounds()?;
        if index >= bounds.next_index {
            return Err(StorageError::IndexOutOfRange {
                requested: index,
                first: bounds.first_index.unwrap_or(bounds.next_index),
                next: bounds.next_index,
            });
        }
        self.shared.syncer.wait(index)
    }

    /// Calls `callback` from the flusher once entry `index` is durable (or with the reason it
    /// never will be: truncated, log stopped or closed). Does not itself ask for a sync: under
    /// `Always` the append did; under `Interval` the next tick will; under `Never`, call
    /// [`Self::flush`].
    pub fn on_durable(&self, index: u64, callback: DurableCallback) {
        if let Err(err) = self.check_running() {
            return callback(Err(err));
        }
        self.shared.syncer.on_durable(index, callback);
    }

    /// Syncs everything written so far and waits for it.
    pub fn flush(&self) -> Result<()> {
        let next_index = self.bounds()?.next_index;
        match next_index.checked_sub(1) {
            Some(last) if self.durable().next_index < next_index => self.wait_durable(last),
            _ => {
                self.shared.syncer.request();
                Ok(())
            }
        }
    }

    /// Syncs, stops the flusher and releases the directory lock.
    pub fn close(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        let Some(flusher) = self.flusher.take() else {
            return Ok(());
        };
        self.shared.syncer.shut_down();
        if flusher.join().is_err() {
            tracing::error!(dir = %self.shared.dir.display(), "flusher thread panicked");
        }
        self.check_running()
    }
}

impl Drop for PartitionLog {
    fn drop(&mut self) {
        if let Err(err) = self.shutdown() {
            tracing::warn!(dir = %self.shared.dir.display(), error = %err, "closing partition log");
        }
    }
}

fn active_file(state: &LogState) -> (Arc<File>, PathBuf) {
    match state.segments.back() {
        Some(segment) => (Arc::clone(segment.file()), segment.paths.log.clone()),
        None => unreachable_active(),
    }
}

#[cold]
fn unreachable_active() -> (Arc<File>, PathBuf) {
    // The segment list is never empty once opened; an empty one would be a bug in this module.
    panic!("partition log without an active segment")
}

fn first_index(state: &LogState) -> Option<u64> {
    state.segments.iter().find_map(|s| s.first_index)
}

fn locate_index(state: &LogState, index: u64) -> Result<Option<(&Segment, Located)>> {
    for segment in state.segments.iter().rev() {
        if segment.first_index.is_some_and(|first| first <= index) {
            return Ok(segment
                .batch_with_index(index)?
                .map(|found| (segment, found)));
        }
    }
    Ok(None)
}

fn delete_segment_files(paths: &SegmentPaths) -> Result<()> {
    // The log file last: a crash midway leaves a log file whose indexes are rebuilt.
    remove_if_present(&paths.index)?;
    remove_if_present(&paths.time_index)?;
    remove_if_present(&paths.log)
}
