//! Cutting a [`PartitionLog`]: removing a suffix (by offset, or by entry index for Raft),
//! removing a prefix (moving the log start), and resetting to an empty log further on.
//!
//! Invariants:
//! - a suffix is cut only at a batch boundary at or above the log start; what is left ends with
//!   a whole batch, and the next append continues from the cut (the next entry index is the cut
//!   batch's, even when nothing is left);
//! - a prefix only ever moves forward and removes whole sealed segments; the active segment is
//!   never deleted, so reads below the new start fail while the bytes may still be on disk;
//! - crash order: the new log start (`log.meta`) is written before any file goes, so a crash
//!   midway leaves segments that recovery recognises as wholly below the start and removes; a
//!   sealed segment cut in its middle is replaced through a new file and a rename, so maps of
//!   the old file held by readers stay valid;
//! - the durability tracker hears of every suffix cut and reset (`Syncer::truncated`): its
//!   watermarks drop to the cut, and waiters on removed entries get [`StorageError::Truncated`].
//!
//! Not handled here: which prefix to remove (retention decides, see the `retention` module) and
//! whether a cut is allowed by the replication protocol (the caller's business).

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use super::meta::write_meta;
use super::{
    LogState, PartitionLog, RetentionReport, active_file, delete_segment_files, first_index,
    locate_index,
};
use crate::durability::Watermark;
use crate::error::{Result, StorageError};
use crate::fs::{self, DirSync, sync_dir};
use crate::metrics::Counters;
use crate::segment::{Continuation, Located, NO_INDEX, Segment};

impl PartitionLog {
    /// Removes every batch whose base offset is `offset` or more. `offset` must be a batch
    /// boundary at or above the log start.
    pub fn truncate_suffix(&self, offset: u64) -> Result<()> {
        let mut state = self.write_state()?;
        if offset < state.log_start_offset || offset > state.next.next_offset {
            return Err(StorageError::OffsetOutOfRange {
                requested: offset,
                log_start: state.log_start_offset,
                next_offset: state.next.next_offset,
            });
        }
        // Control batches at the end of a segment share their base offset with the next
        // segment's: start with the first segment that could hold a batch at `offset`.
        let first = state.segments.partition_point(|s| s.next_offset < offset);
        let mut cut = None;
        for (at, segment) in state.segments.iter().enumerate().skip(first) {
            match self.guard(segment.first_batch_from_offset(offset))? {
                Some(found) if found.header.base_offset == offset => {
                    cut = Some((at, found));
                    break;
                }
                Some(_) => return Err(StorageError::NotBatchBoundary { offset }),
                None if segment.next_offset > offset => {
                    return Err(StorageError::NotBatchBoundary { offset });
                }
                None => {}
            }
        }
        let Some((at, found)) = cut else {
            return Ok(());
        };
        let result = self.truncate_at(&mut state, at, found);
        self.guard(result)
    }

    /// Removes every batch whose entry index is `index` or more (Raft's log truncation). Fails
    /// if that batch starts below the log start.
    pub fn truncate_from_index(&self, index: u64) -> Result<()> {
        let mut state = self.write_state()?;
        if index >= state.next.next_index {
            return Ok(());
        }
        let first = first_index(&state);
        if first.is_none_or(|first| index < first) {
            return Err(StorageError::IndexOutOfRange {
                requested: index,
                first: first.unwrap_or(state.next.next_index),
                next: state.next.next_index,
            });
        }
        let found = self.guard(
            locate_index(&state, index)
                .map(|found| found.map(|(segment, located)| (segment.base_offset, located))),
        )?;
        let Some((base, located)) = found else {
            return Ok(());
        };
        if located.header.base_offset < state.log_start_offset {
            // The log start lies inside the batch: cutting it would end the log before its start.
            return Err(StorageError::OffsetOutOfRange {
                requested: located.header.base_offset,
                log_start: state.log_start_offset,
                next_offset: state.next.next_offset,
            });
        }
        let at = state.segments.partition_point(|s| s.base_offset < base);
        let result = self.truncate_at(&mut state, at, located);
        self.guard(result)
    }

    /// Cuts the log at batch `from` of segment `at`, removing it and everything after.
    fn truncate_at(&self, state: &mut LogState, at: usize, from: Located) -> Result<()> {
        let dir = &self.shared.dir;
        let interval = self.shared.config().index_interval_bytes;
        tracing::info!(
            offset = from.header.base_offset,
            index = from.header.index,
            "truncating log suffix"
        );
        while state.segments.len() > at + 1 {
            if let Some(segment) = state.segments.pop_back() {
                delete_segment_files(&segment.paths)?;
            }
        }
        let before = continuation_before(state, at);
        let segment = &mut state.segments[at];
        if !segment.is_sealed() {
            segment.truncate_active(from.position)?;
        } else {
            let paths = segment.paths.clone();
            let base = segment.base_offset;
            if from.position == 0 {
                delete_segment_files(&paths)?;
                state.segments[at] = Segment::create(dir, base, interval)?;
            } else {
                rewrite_prefix(&paths.log, from.position)?;
                let (reopened, _) = Segment::open_active(dir, base, before, interval)?;
                state.segments[at] = reopened;
            }
        }
        sync_dir(dir)?;
        state.next = state.segments[at].continuation(before);
        if state.segments.iter().all(|s| s.last_entry.is_none()) {
            state.next.next_index = from.header.index;
            state.next.last_term = 0;
        }
        write_meta(dir, state.log_start_offset, state.next.next_index)?;
        self.shared.syncer.truncated(
            Watermark {
                next_offset: state.next.next_offset,
                next_index: state.next.next_index,
            },
            active_file(state),
            false,
        );
        Ok(())
    }

    /// Moves the log start to `offset` (at most the next offset): sealed segments that lie wholly
    /// below it are deleted; reads below it fail from now on.
    pub fn truncate_prefix(&self, offset: u64) -> Result<RetentionReport> {
        let mut state = self.write_state()?;
        if offset > state.next.next_offset {
            return Err(StorageError::OffsetOutOfRange {
                requested: offset,
                log_start: state.log_start_offset,
                next_offset: state.next.next_offset,
            });
        }
        let start = offset.max(state.log_start_offset);
        let result = self.delete_front(&mut state, start, |_, end| end <= start);
        self.guard(result)
    }

    /// Deletes sealed segments from the front while `delete(segment, its end offset)` agrees,
    /// then sets the log start to at least `start` and the first remaining segment's base.
    /// Shared by [`Self::truncate_prefix`] and retention.
    pub(super) fn delete_front(
        &self,
        state: &mut LogState,
        start: u64,
        mut delete: impl FnMut(&Segment, u64) -> bool,
    ) -> Result<RetentionReport> {
        let mut doomed = 0;
        while doomed + 1 < state.segments.len() {
            let end = state.segments[doomed + 1].base_offset;
            if !delete(&state.segments[doomed], end) {
                break;
            }
            doomed += 1;
        }
        let new_start = state.segments[doomed].base_offset.max(start);
        if doomed == 0 && new_start == state.log_start_offset {
            return Ok(RetentionReport {
                log_start_offset: new_start,
                ..RetentionReport::default()
            });
        }
        // The new start is recorded before the files go, so a crash in between leaves segments
        // that the next open recognises as wholly below the start and removes.
        write_meta(&self.shared.dir, new_start, state.next.next_index)?;
        state.log_start_offset = new_start;
        let mut report = RetentionReport {
            log_start_offset: new_start,
            ..RetentionReport::default()
        };
        for _ in 0..doomed {
            if let Some(segment) = state.segments.pop_front() {
                delete_segment_files(&segment.paths)?;
                report.deleted_segments += 1;
                report.deleted_bytes += segment.size;
                Counters::add(&self.shared.counters.segments_deleted, 1);
            }
        }
        if doomed > 0 {
            sync_dir(&self.shared.dir)?;
        }
        tracing::info!(
            deleted_segments = report.deleted_segments,
            deleted_bytes = report.deleted_bytes,
            log_start_offset = new_start,
            "log prefix removed"
        );
        Ok(report)
    }

    /// Empties the log and restarts it at `next_offset` / `next_index` (a Raft follower
    /// installing a snapshot that is ahead of its log). The log may only move forward:
    /// `next_offset` must be at least the current next offset.
    pub fn reset(&self, next_offset: u64, next_index: u64) -> Result<()> {
        let mut state = self.write_state()?;
        if next_offset < state.next.next_offset {
            return Err(StorageError::OffsetOutOfRange {
                requested: next_offset,
                log_start: state.log_start_offset,
                next_offset: state.next.next_offset,
            });
        }
        let dir = self.shared.dir.clone();
        let result = (|| {
            // Start first: a crash after this leaves segments wholly below the start, which the
            // next open removes.
            write_meta(&dir, next_offset, next_index)?;
            while let Some(segment) = state.segments.pop_back() {
                delete_segment_files(&segment.paths)?;
            }
            let fresh =
                Segment::create(&dir, next_offset, self.shared.config().index_interval_bytes)?;
            let file = Arc::clone(fresh.file());
            fresh
                .file()
                .sync_all()
                .map_err(StorageError::io("sync", &fresh.paths.log))?;
            state.segments.push_back(fresh);
            sync_dir(&dir)?;
            drop(file);
            state.log_start_offset = next_offset;
            state.next = Continuation {
                next_offset,
                next_index,
                last_term: 0,
            };
            self.shared.syncer.truncated(
                Watermark {
                    next_offset,
                    next_index,
                },
                active_file(&state),
                true,
            );
            tracing::info!(next_offset, next_index, "log reset");
            Ok(())
        })();
        self.guard(result)
    }
}

/// The continuation at the start of segment `at`.
fn continuation_before(state: &LogState, at: usize) -> Continuation {
    let start = Continuation {
        next_offset: state.segments[at].base_offset,
        next_index: NO_INDEX,
        last_term: 0,
    };
    state
        .segments
        .iter()
        .take(at)
        .fold(start, |before, segment| Continuation {
            next_offset: state.segments[at].base_offset,
            ..segment.continuation(before)
        })
}

/// Replaces `path` by a copy of its first `len` bytes through a new file and a rename, so maps
/// of the old file stay valid. The caller syncs the directory.
fn rewrite_prefix(path: &Path, len: u64) -> Result<()> {
    let source = File::open(path).map_err(StorageError::io("open", path))?;
    fs::write_atomic_with(path, DirSync::Later, |target| {
        std::io::copy(&mut source.take(len), target).map(drop)
    })?;
    Ok(())
}
