//! [`PartitionLog`]: one partition's append-only log, a directory of segments.
//!
//! It owns the partition directory (under an exclusive lock file), the order of its segments,
//! the log start offset (persisted in `log.meta`), offset and entry-index assignment, rolling,
//! retention and truncation. Durability is delegated to [`crate::durability`].
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

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;

use bytes::Bytes;

use crate::config::LogConfig;
use crate::durability::{DurableCallback, Syncer, Watermark, sync_dir};
use crate::error::{Result, StorageError};
use crate::metrics::{Counters, LogMetrics};
use crate::segment::{
    Continuation, IndexRebuild, Located, NO_INDEX, ReadBounds, Segment, SegmentPaths, TailRepair,
    remove_if_present,
};
use weir_format::batch::{HEADER_LEN, ValidBatch};

/// The lock file that keeps a second process out of a partition directory.
pub const LOCK_FILE: &str = ".lock";
/// Persisted log start offset and empty-log entry index.
pub const META_FILE: &str = "log.meta";
const META_HEADER: &str = "weir partition log v1";

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Offset of the batch's first record (for a control batch: of the next record).
    pub base_offset: u64,
    /// The offset after the batch's last record.
    pub next_offset: u64,
    /// The batch's entry index.
    pub index: u64,
    pub term: u64,
}

/// Whole batches read from the log, contiguous in `data`.
#[derive(Debug, Clone, Default)]
pub struct ReadBatches {
    /// The batches' bytes, back to back, exactly as stored (zero-copy for sealed segments).
    pub data: Bytes,
    /// The same batches, checked (CRC) and split.
    pub batches: Vec<ValidBatch>,
}

impl ReadBatches {
    /// The offset to read from next.
    pub fn next_offset(&self) -> Option<u64> {
        self.batches.last().map(|b| b.header().next_offset())
    }

    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }
}

/// What opening the log found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub segments: usize,
    /// A torn or corrupt tail cut from the active segment.
    pub tail_repair: Option<TailRepair>,
    /// Index files that were missing or unusable and were rebuilt from the log.
    pub index_rebuilds: Vec<IndexRebuild>,
    /// Segments removed because they lay wholly below the persisted log start.
    pub removed_below_start: usize,
}

/// What a full verification read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VerifyReport {
    pub segments: usize,
    pub batches: u64,
    pub bytes: u64,
}

/// What a retention pass removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionReport {
    pub deleted_segments: usize,
    pub deleted_bytes: u64,
    pub log_start_offset: u64,
}

/// Where retention would cut the log (see [`PartitionLog::retention_plan`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPlan {
    /// The log start offset after the cut: the base offset of the first segment kept.
    pub log_start_offset: u64,
    /// The entry index of the first batch kept.
    pub first_index: u64,
    pub deleted_segments: usize,
}

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
    config: LogConfig,
    state: RwLock<LogState>,
    syncer: Syncer,
    failure: OnceLock<String>,
    _lock: File,
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
    /// Opens (or creates) the log in `dir`, recovering it: a torn or corrupt tail of the active
    /// segment is cut to the last whole batch (and logged); missing or bad index files are
    /// rebuilt; corruption anywhere else is an error.
    pub fn open(dir: impl Into<PathBuf>, config: LogConfig) -> Result<Self> {
        config.validate()?;
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(StorageError::io("create directory", &dir))?;
        let lock_file = take_lock(&dir)?;
        let span = tracing::info_span!("open_log", dir = %dir.display());
        let _enter = span.enter();
        let (state, recovery) = recover(&dir, &config)?;
        // What a killed process left in the page cache is readable but not yet durable: sync it
        // before counting it durable (cheap when the files are clean).
        for segment in &state.segments {
            segment
                .file()
                .sync_data()
                .map_err(StorageError::io("sync", &segment.paths.log))?;
        }
        sync_dir(&dir)?;
        let at = Watermark {
            next_offset: state.next.next_offset,
            next_index: state.next.next_index,
        };
        let active = active_file(&state);
        let counters = Arc::new(Counters::default());
        let shared = Arc::new(Shared {
            syncer: Syncer::new(
                dir.clone(),
                config.durability,
                at,
                active,
                Arc::clone(&counters),
            ),
            counters,
            dir,
            config,
            state: RwLock::new(state),
            failure: OnceLock::new(),
            _lock: lock_file,
        });
        let flusher = {
            let for_thread = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("weir-log-flush".into())
                .spawn(move || {
                    for_thread.syncer.run(|reason| {
                        let _ = for_thread.failure.set(format!("sync failed: {reason}"));
                    })
                })
                .map_err(StorageError::io("spawn flusher for", &shared.dir))?
        };
        tracing::info!(
            segments = recovery.segments,
            next_offset = at.next_offset,
            next_index = at.next_index,
            tail_repaired = recovery.tail_repair.is_some(),
            index_rebuilds = recovery.index_rebuilds.len(),
            "partition log opened"
        );
        Ok(Self {
            shared,
            flusher: Some(flusher),
            recovery,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    pub fn config(&self) -> &LogConfig {
        &self.shared.config
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

    /// Appends a checked batch with `term`, assigning its offsets and entry index. Returns once
    /// the batch is written and readable; it is durable once [`Self::wait_durable`] says so.
    pub fn append(&self, batch: &ValidBatch, term: u64) -> Result<Appended> {
        let limit = self.shared.config.max_batch_bytes;
        if batch.bytes().len() > limit as usize {
            return Err(StorageError::BatchTooLarge {
                size: batch.bytes().len(),
                limit,
            });
        }
        let mut guard = self.write_state()?;
        let state = &mut *guard;
        if term < state.next.last_term {
            return Err(StorageError::TermRegression {
                term,
                last_term: state.next.last_term,
            });
        }
        self.guard(self.maybe_roll(state, batch.bytes().len() as u64))?;
        let stamp = weir_format::batch::Stamp {
            base_offset: state.next.next_offset,
            term,
            index: state.next.next_index,
        };
        let header = batch.restamped_header(stamp);
        let active = state.segments.back_mut().ok_or(StorageError::Closed)?;
        let written = active.append(&header, &batch.bytes()[HEADER_LEN..], &mut state.scratch);
        let header = self.guard(written)?;
        state.next = Continuation {
            next_offset: header.next_offset(),
            next_index: header.index + 1,
            last_term: term,
        };
        self.shared.syncer.written(Watermark {
            next_offset: state.next.next_offset,
            next_index: state.next.next_index,
        });
        Counters::add(&self.shared.counters.appended_batches, 1);
        Counters::add(
            &self.shared.counters.appended_bytes,
            u64::from(header.length),
        );
        tracing::trace!(
            base_offset = header.base_offset,
            index = header.index,
            bytes = header.length,
            "appended"
        );
        Ok(Appended {
            base_offset: header.base_offset,
            next_offset: header.next_offset(),
            index: header.index,
            term,
        })
    }

    /// Checks `bytes` as one batch and appends it.
    pub fn append_bytes(&self, bytes: Bytes, term: u64) -> Result<Appended> {
        let batch = ValidBatch::new(bytes)?;
        self.append(&batch, term)
    }

    /// Appends and blocks until the batch is durable: what an `acks` with durability needs.
    /// Concurrent callers share syncs.
    pub fn append_durable(&self, batch: &ValidBatch, term: u64) -> Result<Appended> {
        let appended = self.append(batch, term)?;
        self.wait_durable(appended.index)?;
        Ok(appended)
    }

    fn maybe_roll(&self, state: &mut LogState, incoming: u64) -> Result<()> {
        let Some(active) = state.segments.back() else {
            return Ok(());
        };
        let full = active.size + incoming > self.shared.config.segment_bytes;
        let old = self
            .shared
            .config
            .segment_age_limit()
            .is_some_and(|limit| active.opened_at.elapsed() >= limit);
        if active.has_records() && (full || old) {
            self.roll_locked(state)?;
        }
        Ok(())
    }

    fn roll_locked(&self, state: &mut LogState) -> Result<()> {
        let next_offset = state.next.next_offset;
        let Some(active) = state.segments.back_mut() else {
            return Ok(());
        };
        if !active.has_records() {
            return Ok(());
        }
        active.seal()?;
        let sealed = (Arc::clone(active.file()), active.paths.log.clone());
        let fresh = Segment::create(
            &self.shared.dir,
            next_offset,
            self.shared.config.index_interval_bytes,
        )?;
        tracing::info!(
            sealed = %sealed.1.display(),
            base_offset = next_offset,
            "rolled segment"
        );
        let active = (Arc::clone(fresh.file()), fresh.paths.log.clone());
        state.segments.push_back(fresh);
        self.shared.syncer.rolled(sealed, active);
        Counters::add(&self.shared.counters.segments_rolled, 1);
        Ok(())
    }

    /// Seals the active segment and starts a new one, if the active one holds any record.
    pub fn roll(&self) -> Result<()> {
        let mut state = self.write_state()?;
        let result = self.roll_locked(&mut state);
        self.guard(result)
    }

    /// Reads whole batches starting with the one that holds `from_offset` (or the first record
    /// after it), up to about `max_bytes` (at least one batch). Empty at the log's end. A read
    /// never spans two segments (the bytes stay one zero-copy slice), and a read of the active
    /// segment (a copy) returns at most 8 MiB or its first batch: call again from
    /// [`ReadBatches::next_offset`].
    pub fn read(&self, from_offset: u64, max_bytes: usize) -> Result<ReadBatches> {
        self.read_until(from_offset, max_bytes, u64::MAX)
    }

    /// Like [`Self::read`], but returns no batch holding a record at or beyond `until_offset`
    /// (a high watermark).
    pub fn read_until(
        &self,
        from_offset: u64,
        max_bytes: usize,
        until_offset: u64,
    ) -> Result<ReadBatches> {
        let state = self.read_state()?;
        if from_offset < state.log_start_offset || from_offset > state.next.next_offset {
            return Err(StorageError::OffsetOutOfRange {
                requested: from_offset,
                log_start: state.log_start_offset,
                next_offset: state.next.next_offset,
            });
        }
        let bounds = ReadBounds {
            max_bytes,
            until_offset,
            until_index: u64::MAX,
        };
        let first = state
            .segments
            .partition_point(|s| s.base_offset <= from_offset)
            .saturating_sub(1);
        let result = (|| {
            for segment in state.segments.iter().skip(first) {
                if let Some(found) = segment.first_record_batch_from(from_offset)? {
                    let (data, batches) = segment.read_batches(found, bounds)?;
                    return Ok(self.count_read(ReadBatches { data, batches }));
                }
            }
            Ok(ReadBatches::default())
        })();
        drop(state);
        self.guard(result)
    }

    /// Reads whole batches by entry index: from `from_index`, stopping before `until_index`,
    /// up to about `max_bytes` (at least one batch). Like [`Self::read`], it stops at the end of
    /// a segment.
    pub fn read_entries(
        &self,
        from_index: u64,
        until_index: u64,
        max_bytes: usize,
    ) -> Result<ReadBatches> {
        let state = self.read_state()?;
        let first = first_index(&state);
        let next = state.next.next_index;
        if first.is_none_or(|first| from_index < first) || from_index >= next {
            if from_index == next || until_index <= from_index {
                return Ok(ReadBatches::default());
            }
            return Err(StorageError::IndexOutOfRange {
                requested: from_index,
                first: first.unwrap_or(next),
                next,
            });
        }
        let bounds = ReadBounds {
            max_bytes,
            until_offset: u64::MAX,
            until_index,
        };
        let result = (|| {
            let Some((segment, found)) = locate_index(&state, from_index)? else {
                return Ok(ReadBatches::default());
            };
            let (data, batches) = segment.read_batches(found, bounds)?;
            Ok(self.count_read(ReadBatches { data, batches }))
        })();
        drop(state);
        self.guard(result)
    }

    /// The first offset whose record has a timestamp at or after `timestamp` (ms), or `None` if
    /// every record is older.
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<u64>> {
        let state = self.read_state()?;
        let result = (|| {
            for segment in &state.segments {
                if segment.next_offset <= state.log_start_offset {
                    continue;
                }
                if let Some(offset) =
                    segment.offset_for_timestamp(timestamp, state.log_start_offset)?
                {
                    return Ok(Some(offset));
                }
            }
            Ok(None)
        })();
        drop(state);
        self.guard(result)
    }

    /// Reads and CRC-checks every stored batch, and their continuity (offsets, entry indexes,
    /// terms): the full check that opening skips for sealed segments. Corruption stops the log,
    /// as a read of it would.
    pub fn verify(&self) -> Result<VerifyReport> {
        let state = self.read_state()?;
        let span = tracing::info_span!("verify_log", dir = %self.shared.dir.display());
        let _enter = span.enter();
        let result = (|| {
            let mut report = VerifyReport::default();
            let mut next = Continuation {
                next_offset: state.segments.front().map_or(0, |s| s.base_offset),
                next_index: NO_INDEX,
                last_term: 0,
            };
            for segment in &state.segments {
                let (after, batches) = segment.verify(next)?;
                next = after;
                report.segments += 1;
                report.batches += batches;
                report.bytes += segment.size;
            }
            Ok(report)
        })();
        drop(state);
        let result = self.guard(result);
        if let Ok(report) = &result {
            tracing::info!(
                segments = report.segments,
                batches = report.batches,
                "log verified"
            );
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
        let interval = self.shared.config.index_interval_bytes;
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

    /// Applies retention by age and size at time `now_ms` (ms since the Unix epoch): deletes the
    /// oldest sealed segments whose newest record is older than `retention_ms`, and while the log
    /// without the oldest segment is still at least `retention_bytes`. Never deletes the active
    /// segment.
    pub fn apply_retention(&self, now_ms: i64) -> Result<RetentionReport> {
        let mut state = self.write_state()?;
        let start = state.log_start_offset;
        let mut expired = self.retention_rule(&state, now_ms);
        let result = self.delete_front(&mut state, start, |segment, _| expired(segment));
        self.guard(result)
    }

    /// What [`Self::apply_retention`] at `now_ms` would keep, without deleting anything: the
    /// base offset and first entry index of the first segment it would keep, or `None` when it
    /// would delete nothing. A replicated log uses this to agree on the cut (a Raft purge point)
    /// before removing data with [`Self::truncate_prefix`].
    pub fn retention_plan(&self, now_ms: i64) -> Result<Option<RetentionPlan>> {
        let state = self.read_state()?;
        let mut expired = self.retention_rule(&state, now_ms);
        let mut doomed = 0;
        while doomed + 1 < state.segments.len() && expired(&state.segments[doomed]) {
            doomed += 1;
        }
        if doomed == 0 {
            return Ok(None);
        }
        let kept = &state.segments[doomed];
        Ok(Some(RetentionPlan {
            log_start_offset: kept.base_offset,
            first_index: kept.first_index.unwrap_or(state.next.next_index),
            deleted_segments: doomed,
        }))
    }

    /// The retention rule at `now_ms`, applied to segments oldest first: true for each segment
    /// that retention removes (by age, or while the rest is still at least the size limit).
    fn retention_rule(
        &self,
        state: &LogState,
        now_ms: i64,
    ) -> impl FnMut(&Segment) -> bool + use<> {
        let config = &self.shared.config;
        let mut total: u64 = state.segments.iter().map(|s| s.size).sum();
        let expired_before = config
            .retention_ms
            .map(|ms| now_ms.saturating_sub(i64::try_from(ms).unwrap_or(i64::MAX)));
        let retention_bytes = config.retention_bytes;
        move |segment: &Segment| {
            let expired = expired_before
                .is_some_and(|limit| segment.max_timestamp.is_none_or(|max| max < limit));
            let oversized = retention_bytes.is_some_and(|limit| total - segment.size >= limit);
            if expired || oversized {
                total -= segment.size;
                true
            } else {
                false
            }
        }
    }

    /// Deletes sealed segments from the front while `delete(segment, its end offset)` agrees,
    /// then sets the log start to at least `start` and the first remaining segment's base.
    fn delete_front(
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
                Segment::create(&dir, next_offset, self.shared.config.index_interval_bytes)?;
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

    fn count_read(&self, read: ReadBatches) -> ReadBatches {
        Counters::add(
            &self.shared.counters.read_batches,
            read.batches.len() as u64,
        );
        Counters::add(&self.shared.counters.read_bytes, read.data.len() as u64);
        read
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

fn take_lock(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(StorageError::io("open lock file", &path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StorageError::Locked {
            dir: dir.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(err)) => Err(StorageError::io("lock", &path)(err)),
    }
}

/// The persisted part of the log's state that the segments cannot tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Meta {
    log_start_offset: u64,
    /// The entry index the next batch takes when the log holds no batch.
    next_index: u64,
}

fn write_meta(dir: &Path, log_start_offset: u64, next_index: u64) -> Result<()> {
    let path = dir.join(META_FILE);
    let tmp = dir.join(format!("{META_FILE}.tmp"));
    let text =
        format!("{META_HEADER}\nlog_start_offset={log_start_offset}\nnext_index={next_index}\n");
    let mut file = File::create(&tmp).map_err(StorageError::io("create", &tmp))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(StorageError::io("write", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(StorageError::io("rename", &tmp))?;
    sync_dir(dir)
}

fn read_meta(dir: &Path) -> Result<Option<Meta>> {
    let path = dir.join(META_FILE);
    let raw = match std::fs::read(&path) {
        Ok(raw) => raw,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(StorageError::io("read", &path)(err)),
    };
    let bad = |reason: String| StorageError::Corrupt {
        path: path.clone(),
        position: 0,
        reason,
    };
    let text = String::from_utf8(raw).map_err(|_| bad("not UTF-8 text".into()))?;
    let mut lines = text.lines();
    if lines.next() != Some(META_HEADER) {
        return Err(bad(format!("first line is not {META_HEADER:?}")));
    }
    let mut meta = Meta::default();
    let (mut has_start, mut has_index) = (false, false);
    for line in lines {
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| bad(format!("line {line:?} is not key=value")))?;
        let value: u64 = value
            .parse()
            .map_err(|_| bad(format!("{key} value {value:?} is not a number")))?;
        match key {
            "log_start_offset" => (meta.log_start_offset, has_start) = (value, true),
            "next_index" => (meta.next_index, has_index) = (value, true),
            other => return Err(bad(format!("unknown key {other:?}"))),
        }
    }
    if !(has_start && has_index) {
        return Err(bad("missing log_start_offset or next_index".into()));
    }
    Ok(Some(meta))
}

/// Segment base offsets found in `dir`, sorted; removes leftover temporary files.
fn list_segments(dir: &Path) -> Result<Vec<u64>> {
    let mut bases = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(StorageError::io("list", dir))?;
    for entry in entries {
        let entry = entry.map_err(StorageError::io("list", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".tmp") || name.ends_with(".rewrite") {
            remove_if_present(&entry.path())?;
            continue;
        }
        if let Some(stem) = name.strip_suffix(".log")
            && stem.len() == 20
            && let Ok(base) = stem.parse::<u64>()
        {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

fn recover(dir: &Path, config: &LogConfig) -> Result<(LogState, RecoveryReport)> {
    let meta = read_meta(dir)?.unwrap_or_default();
    let bases = list_segments(dir)?;
    let mut report = RecoveryReport::default();
    let interval = config.index_interval_bytes;
    let mut segments = VecDeque::new();
    let mut next = Continuation {
        next_offset: bases.first().copied().unwrap_or(meta.log_start_offset),
        next_index: NO_INDEX,
        last_term: 0,
    };
    for (i, &base) in bases.iter().enumerate() {
        if base != next.next_offset {
            return Err(StorageError::Corrupt {
                path: SegmentPaths::new(dir, base).log,
                position: 0,
                reason: format!(
                    "segment starts at offset {base} but the previous one ends at {}",
                    next.next_offset
                ),
            });
        }
        let segment = if i + 1 < bases.len() {
            let (segment, rebuilt) = Segment::open_sealed(dir, base, next, interval)?;
            for rebuild in &rebuilt {
                tracing::warn!(path = %rebuild.path.display(), problem = %rebuild.problem, "rebuilt index");
            }
            report.index_rebuilds.extend(rebuilt);
            segment
        } else {
            let (segment, repair) = Segment::open_active(dir, base, next, interval)?;
            if let Some(repair) = &repair {
                tracing::warn!(
                    path = %repair.path.display(),
                    position = repair.position,
                    dropped_bytes = repair.dropped_bytes,
                    reason = %repair.reason,
                    "cut a torn or corrupt tail from the active segment"
                );
            }
            report.tail_repair = repair;
            segment
        };
        next = segment.continuation(next);
        segments.push_back(segment);
    }
    // Sealed segments wholly below the log start are leftovers of an interrupted deletion (or
    // were active when the start passed them). They were opened above so that the log's end
    // (entry index, term) is known even if nothing is left after them.
    if segments.len() > 1 && segments[1].base_offset <= meta.log_start_offset {
        // Record the log's end first: what is left may hold no batch to tell it.
        let next_index = if next.next_index == NO_INDEX {
            meta.next_index
        } else {
            next.next_index
        };
        write_meta(dir, meta.log_start_offset, next_index)?;
        while segments.len() > 1 && segments[1].base_offset <= meta.log_start_offset {
            if let Some(segment) = segments.pop_front() {
                delete_segment_files(&segment.paths)?;
                report.removed_below_start += 1;
            }
        }
        sync_dir(dir)?;
    }
    let mut log_start_offset = meta.log_start_offset;
    if next.next_offset < meta.log_start_offset || segments.is_empty() {
        // Everything left lies below the persisted start (an interrupted reset), or there is
        // nothing at all: start empty at the recorded position.
        for segment in segments.drain(..) {
            delete_segment_files(&segment.paths)?;
            report.removed_below_start += 1;
        }
        segments.push_back(Segment::create(dir, meta.log_start_offset, interval)?);
        sync_dir(dir)?;
        next = Continuation {
            next_offset: meta.log_start_offset,
            next_index: meta.next_index,
            last_term: 0,
        };
    }
    if let Some(first) = segments.front() {
        log_start_offset = log_start_offset.max(first.base_offset);
    }
    if next.next_index == NO_INDEX {
        next.next_index = meta.next_index;
    }
    report.segments = segments.len();
    Ok((
        LogState {
            segments,
            next,
            log_start_offset,
            scratch: Vec::new(),
        },
        report,
    ))
}

fn delete_segment_files(paths: &SegmentPaths) -> Result<()> {
    // The log file last: a crash midway leaves a log file whose indexes are rebuilt.
    remove_if_present(&paths.index)?;
    remove_if_present(&paths.time_index)?;
    remove_if_present(&paths.log)
}

/// Replaces `path` by a copy of its first `len` bytes through a new file and a rename, so maps
/// of the old file stay valid.
fn rewrite_prefix(path: &Path, len: u64) -> Result<()> {
    let tmp = path.with_extension("log.rewrite");
    let source = File::open(path).map_err(StorageError::io("open", path))?;
    let mut target = File::create(&tmp).map_err(StorageError::io("create", &tmp))?;
    std::io::copy(&mut source.take(len), &mut target).map_err(StorageError::io("copy to", &tmp))?;
    target.sync_all().map_err(StorageError::io("sync", &tmp))?;
    std::fs::rename(&tmp, path).map_err(StorageError::io("rename", &tmp))?;
    Ok(())
}
