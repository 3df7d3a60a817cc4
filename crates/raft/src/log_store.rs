//! [`LogStore`]: openraft's log storage on a Weir [`PartitionLog`]. The Raft log *is* the segment
//! log: every entry is one stored batch, its log id (term, index) in the batch header.
//!
//! Beside the segment log the store keeps `raft.meta` (vote and last purged log id), written
//! atomically on every change.
//!
//! Invariants:
//! - entry indexes in the segment log are dense and equal openraft's; an append whose first
//!   index is not the log's next index is refused, except right after a purge that left the log
//!   behind the purge point (a follower that installed a snapshot), where the log is first reset
//!   to the snapshot's boundary;
//! - `append` makes entries readable before it returns and calls openraft's flush callback from
//!   the storage's group commit once they are durable;
//! - data is removed from the front only by `purge`, which openraft calls after a snapshot at or
//!   beyond the purge point exists; the purge point is recorded before any segment is deleted.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, RaftLogReader};
use serde::{Deserialize, Serialize};
use weir_format::batch::ValidBatch;
use weir_storage::{PartitionLog, StorageError};

use crate::entry::{batch_to_entry, entry_to_batch};
use crate::error::StorageFault;
use crate::files;
use crate::types::{Entry, LogId, RaftStorageError, TypeConfig, Vote, log_id};

/// File name of the vote and purge record.
pub(crate) const META_FILE: &str = "raft.meta";
/// Entries read per call when openraft asks for a limited range (replication, apply).
const READ_CHUNK_BYTES: usize = 4 << 20;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct RaftMeta {
    vote: Option<Vote>,
    last_purged: Option<LogId>,
}

/// Where a snapshot says the log starts: the entry index after the snapshot's last log id, and
/// the offset of the first record after it. Shared with the state machine and the peer service,
/// which learn it from a snapshot before openraft asks the store to purge up to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LogBoundary {
    pub next_index: u64,
    pub next_offset: u64,
}

pub(crate) type SharedBoundary = Arc<Mutex<Option<LogBoundary>>>;

/// openraft's log storage over one segment log. Cheap to clone: clones share everything.
#[derive(Clone)]
pub struct LogStore {
    log: Arc<PartitionLog>,
    meta_path: PathBuf,
    meta: Arc<Mutex<RaftMeta>>,
    boundary: SharedBoundary,
    fault: FaultSlot,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("dir", &self.log.dir())
            .finish_non_exhaustive()
    }
}

/// The first storage failure of a group, kept typed beside openraft (which only carries it as
/// text and stops the group's Raft core).
pub(crate) type FaultSlot = Arc<std::sync::OnceLock<StorageFault>>;

/// The fault behind any error the store hands to openraft.
fn fault_of(err: &(dyn std::error::Error + 'static)) -> StorageFault {
    if let Some(err) = err.downcast_ref::<StorageError>() {
        StorageFault::of(err)
    } else if let Some(err) = err.downcast_ref::<weir_format::batch::CodecError>() {
        StorageFault::Corrupt(err.to_string())
    } else if let Some(err) = err.downcast_ref::<std::io::Error>()
        && crate::error::is_disk_full(err)
    {
        StorageFault::DiskFull(err.to_string())
    } else {
        StorageFault::Io(err.to_string())
    }
}

impl LogStore {
    /// A store over `log`, keeping its Raft metadata in `dir/raft.meta`.
    pub(crate) fn open(
        log: Arc<PartitionLog>,
        dir: &Path,
        boundary: SharedBoundary,
    ) -> Result<Self, files::FileError> {
        let meta_path = dir.join(META_FILE);
        let meta = files::read::<RaftMeta>(&meta_path)?.unwrap_or_default();
        Ok(Self {
            log,
            meta_path,
            meta: Arc::new(Mutex::new(meta)),
            boundary,
            fault: FaultSlot::default(),
        })
    }

    /// Where the store records the first failure it reported to openraft.
    pub(crate) fn fault(&self) -> FaultSlot {
        Arc::clone(&self.fault)
    }

    /// openraft's error for a failed read, with the fault recorded.
    fn read_error(&self, err: impl std::error::Error + 'static) -> RaftStorageError {
        self.failed(ErrorVerb::Read, &err)
    }

    /// openraft's error for a failed write, with the fault recorded.
    fn write_error(&self, err: impl std::error::Error + 'static) -> RaftStorageError {
        self.failed(ErrorVerb::Write, &err)
    }

    fn failed(&self, verb: ErrorVerb, err: &(dyn std::error::Error + 'static)) -> RaftStorageError {
        let fault = fault_of(err);
        if self.fault.set(fault.clone()).is_ok() {
            tracing::error!(dir = %self.log.dir().display(), %fault, "log storage failed; the group stops");
        }
        RaftStorageError::from_io_error(
            ErrorSubject::Logs,
            verb,
            std::io::Error::other(err.to_string()),
        )
    }

    pub fn log(&self) -> &Arc<PartitionLog> {
        &self.log
    }

    fn meta(&self) -> RaftMeta {
        self.meta
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn update_meta(&self, change: impl FnOnce(&mut RaftMeta)) -> Result<(), RaftStorageError> {
        let mut meta = self
            .meta
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut next = meta.clone();
        change(&mut next);
        files::write_atomic(&self.meta_path, &next).map_err(|e| self.write_error(e))?;
        *meta = next;
        Ok(())
    }

    /// The last purged log id: entries up to it are gone (or about to be).
    pub fn last_purged(&self) -> Option<LogId> {
        self.meta().last_purged
    }

    /// The log id of the entry at `index`, if it is stored.
    pub fn log_id_at(&self, index: u64) -> Result<Option<LogId>, StorageError> {
        let read = self.log.read_entries(index, index + 1, 1)?;
        Ok(read
            .batches
            .first()
            .map(|b| log_id(b.header().term, b.header().index)))
    }

    fn read_range(
        &self,
        start: u64,
        end: u64,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, RaftStorageError> {
        // Entries up to the purge point are gone for openraft, even while the segment log still
        // holds them: `truncate_prefix` removes only whole segments (and control batches take no
        // offsets), so without this a read returned purged entries, disagreeing with
        // `get_log_state` (found by openraft's storage conformance suite).
        let first_readable = self.last_purged().map_or(0, |purged| purged.index + 1);
        let mut entries = Vec::new();
        let mut from = start.max(first_readable);
        let mut bytes = 0usize;
        while from < end && bytes < max_bytes {
            let read = self
                .log
                .read_entries(from, end, max_bytes - bytes)
                .map_err(|e| self.read_error(e))?;
            if read.batches.is_empty() {
                break;
            }
            bytes += read.data.len();
            for batch in &read.batches {
                let entry = batch_to_entry(batch).map_err(|e| self.read_error(e))?;
                from = entry.log_id.index + 1;
                entries.push(entry);
            }
        }
        Ok(entries)
    }

    /// Before an append at `index` lands on a log that a purge left behind (a follower that
    /// installed a snapshot ahead of its log), restart the log at the snapshot's boundary.
    fn align_for_append(&self, index: u64) -> Result<(), RaftStorageError> {
        let next = self
            .log
            .bounds()
            .map_err(|e| self.write_error(e))?
            .next_index;
        if next == index {
            return Ok(());
        }
        let boundary = *self
            .boundary
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match boundary {
            Some(b) if b.next_index == index && next < index => {
                tracing::info!(
                    index,
                    next_offset = b.next_offset,
                    "restarting the log at the snapshot boundary"
                );
                self.log
                    .reset(b.next_offset, b.next_index)
                    .map_err(|e| self.write_error(e))
            }
            _ => Err(self.write_error(std::io::Error::other(format!(
                "append at entry index {index}, but the log's next index is {next}"
            )))),
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, RaftStorageError> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => e + 1,
            Bound::Excluded(&e) => e,
            Bound::Unbounded => u64::MAX,
        };
        self.read_range(start, end, usize::MAX)
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, RaftStorageError> {
        self.read_range(start, end, READ_CHUNK_BYTES)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, RaftStorageError> {
        let bounds = self.log.bounds().map_err(|e| self.read_error(e))?;
        let last_purged = self.last_purged();
        let last_stored = bounds
            .last_entry
            .map(|(index, term)| log_id(term, index))
            .filter(|stored| Some(*stored) > last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last_stored.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), RaftStorageError> {
        let vote = *vote;
        self.update_meta(|meta| meta.vote = Some(vote))
            .map_err(|e| {
                RaftStorageError::from_io_error(
                    ErrorSubject::Vote,
                    ErrorVerb::Write,
                    std::io::Error::other(e.to_string()),
                )
            })
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, RaftStorageError> {
        Ok(self.meta().vote)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut last = None;
        for entry in entries {
            let index = entry.log_id.index;
            if last.is_none() {
                self.align_for_append(index)?;
            }
            let bytes = entry_to_batch(&entry).map_err(|e| self.write_error(e))?;
            let batch = ValidBatch::new(bytes).map_err(|e| self.write_error(e))?;
            let appended = self
                .log
                .append(&batch, entry.log_id.leader_id.term)
                .map_err(|e| self.write_error(e))?;
            if appended.index != index {
                return Err(self.write_error(std::io::Error::other(format!(
                    "entry {index} was stored at index {}",
                    appended.index
                ))));
            }
            last = Some(index);
        }
        match last {
            // Relaxed durability (`interval`, `never`): an entry counts once it is written; the
            // sync comes later (or never), which is what those modes promise and risk.
            Some(_) if self.log.config().durability != weir_storage::Durability::Always => {
                callback.log_io_completed(Ok(()));
            }
            Some(index) => self.log.on_durable(
                index,
                Box::new(move |result| {
                    callback
                        .log_io_completed(result.map_err(|e| std::io::Error::other(e.to_string())))
                }),
            ),
            None => callback.log_io_completed(Ok(())),
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        tracing::info!(
            index = log_id.index,
            "truncating the raft log (conflicting suffix)"
        );
        self.log
            .truncate_from_index(log_id.index)
            .map_err(|e| self.write_error(e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        // Record the purge point first: after a crash the rest is redone from it.
        self.update_meta(|meta| meta.last_purged = Some(log_id))?;
        self.remove_purged(log_id)
    }
}

impl LogStore {
    /// Removes what `purge` up to `log_id` left in the segment log.
    pub(crate) fn remove_purged(&self, log_id: LogId) -> Result<(), RaftStorageError> {
        let bounds = self.log.bounds().map_err(|e| self.write_error(e))?;
        let first_kept = log_id.index + 1;
        if bounds.next_index <= first_kept {
            // Everything stored is at or below the purge point: the log restarts after it, at the
            // offset the snapshot names.
            let boundary = *self
                .boundary
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let Some(boundary) = boundary.filter(|b| b.next_index == first_kept) else {
                if bounds.next_index == first_kept {
                    let next = bounds.next_offset;
                    self.log
                        .truncate_prefix(next)
                        .map_err(|e| self.write_error(e))?;
                    return Ok(());
                }
                return Err(self.write_error(std::io::Error::other(format!(
                    "purge up to {first_kept} beyond the log's end {} with no snapshot boundary",
                    bounds.next_index
                ))));
            };
            if bounds.next_index < first_kept || bounds.next_offset != boundary.next_offset {
                return self
                    .log
                    .reset(boundary.next_offset, boundary.next_index)
                    .map_err(|e| self.write_error(e));
            }
            self.log
                .truncate_prefix(boundary.next_offset)
                .map_err(|e| self.write_error(e))?;
            return Ok(());
        }
        if bounds.first_index.is_some_and(|first| first >= first_kept) {
            return Ok(());
        }
        let Some(first) = self
            .log
            .read_entries(first_kept, first_kept + 1, 1)
            .map_err(|e| self.write_error(e))?
            .batches
            .first()
            .map(|b| b.header().base_offset)
        else {
            return Ok(());
        };
        let report = self
            .log
            .truncate_prefix(first)
            .map_err(|e| self.write_error(e))?;
        tracing::info!(
            purged_upto = log_id.index,
            log_start_offset = report.log_start_offset,
            deleted_segments = report.deleted_segments,
            "purged raft log prefix"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrupt_data_is_a_corrupt_fault() {
        let corrupt = StorageError::Corrupt {
            path: "/d/0.log".into(),
            position: 7,
            reason: "crc".into(),
        };
        assert!(matches!(fault_of(&corrupt), StorageFault::Corrupt(_)));
        let bad_batch = weir_format::batch::CodecError::TrailingBytes(3);
        assert!(matches!(fault_of(&bad_batch), StorageFault::Corrupt(_)));
    }

    #[test]
    fn no_space_left_is_a_disk_full_fault() {
        let full = StorageError::Io {
            op: "append",
            path: "/d/0.log".into(),
            source: std::io::Error::from_raw_os_error(28),
        };
        assert!(matches!(fault_of(&full), StorageFault::DiskFull(_)));
        let raw = std::io::Error::from_raw_os_error(28);
        assert!(matches!(fault_of(&raw), StorageFault::DiskFull(_)));
    }

    #[test]
    fn other_failures_are_io_faults() {
        let eio = StorageError::Io {
            op: "fsync",
            path: "/d/0.log".into(),
            source: std::io::Error::from_raw_os_error(5),
        };
        assert!(matches!(fault_of(&eio), StorageFault::Io(_)));
        let other = std::io::Error::other("append at entry index 9, but the log's next index is 4");
        assert!(matches!(fault_of(&other), StorageFault::Io(_)));
    }

    #[test]
    fn a_stopped_raft_core_reports_the_recorded_fault() {
        let slot = FaultSlot::default();
        let stopped = || openraft::error::Fatal::<crate::types::NodeId>::Stopped;
        assert!(matches!(
            crate::group::from_fatal(stopped(), &slot),
            crate::GroupError::ShuttingDown
        ));
        let _ = slot.set(StorageFault::DiskFull("no space".into()));
        assert!(matches!(
            crate::group::from_fatal(stopped(), &slot),
            crate::GroupError::Halted(StorageFault::DiskFull(_))
        ));
    }
}
