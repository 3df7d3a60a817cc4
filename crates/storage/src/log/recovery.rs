//! Opening a [`PartitionLog`]: taking the directory lock, scanning the segments, repairing what
//! a crash can leave behind, and (on demand) verifying every stored batch.
//!
//! What opening repairs, and logs:
//! - a torn or corrupt tail of the active (last) segment is cut to its last whole batch;
//! - a missing or unusable index file is rebuilt from its segment;
//! - leftover temporary files (`*.tmp`, `*.rewrite`) of an interrupted write are removed;
//! - segments wholly below the persisted log start (an interrupted prefix removal or reset) are
//!   deleted, after recording the log's end in `log.meta` so it is not lost with them.
//!
//! Invariants once open: the directory is locked for this process; the segments are contiguous
//! (a gap between two segments is corruption, not repaired); everything the files hold has been
//! synced, so it counts as durable.
//!
//! Not handled here: corruption inside a sealed segment (found on open, which CRC-checks the
//! batches after its last index entry, or by [`PartitionLog::verify`], which checks them all) is
//! reported as [`StorageError::Corrupt`] and never repaired: a sealed segment was whole once,
//! and an operator decides what to do with it.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};

use super::meta::{read_meta, write_meta};
use super::{LogState, PartitionLog, Shared, active_file, delete_segment_files};
use crate::config::LogConfig;
use crate::durability::{Syncer, Watermark};
use crate::error::{Result, StorageError};
use crate::fs::{TEMP_SUFFIX, sync_dir};
use crate::metrics::Counters;
use crate::segment::{
    Continuation, IndexRebuild, NO_INDEX, Segment, SegmentPaths, TailRepair, remove_if_present,
};

/// The lock file that keeps a second process out of a partition directory.
pub const LOCK_FILE: &str = ".lock";

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
            config: RwLock::new(config),
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
            lock_file: path.clone(),
        }),
        Err(std::fs::TryLockError::Error(err)) => Err(StorageError::io("lock", &path)(err)),
    }
}

/// Segment base offsets found in `dir`, sorted; removes leftover temporary files.
fn list_segments(dir: &Path) -> Result<Vec<u64>> {
    let mut bases = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(StorageError::io("list", dir))?;
    for entry in entries {
        let entry = entry.map_err(StorageError::io("list", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        // `.rewrite`: what earlier versions named a segment being cut in its middle.
        if name.ends_with(TEMP_SUFFIX) || name.ends_with(".rewrite") {
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
