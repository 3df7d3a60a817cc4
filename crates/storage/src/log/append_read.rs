//! The hot path of [`PartitionLog`]: appending batches, rolling segments, and reading batches
//! back by offset, by entry index and by time.
//!
//! It owns offset and entry-index assignment and segment rolling:
//! - an append stamps the batch with the log's next offset, next entry index and its term, under
//!   the write lock, so offsets and indexes are dense and in append order; a term below the last
//!   one is refused;
//! - a segment rolls before an append that would take it past `segment_bytes`, or once it is
//!   older than the configured age, and only if it holds at least one record (so no two segments
//!   share a base offset);
//! - reads hold the read lock: they run concurrently with each other and never see a half-done
//!   append, truncation or retention. A read returns whole, CRC-checked batches and never spans
//!   two segments.
//!
//! Not handled here: durability (an append is readable at once, durable when the flusher says
//! so — see `wait_durable` and `on_durable` in the parent module); removing data (truncation and
//! retention have their own modules).

use std::sync::Arc;

use bytes::Bytes;
use weir_format::batch::{HEADER_LEN, ValidBatch};

use super::{LogState, PartitionLog, first_index, locate_index};
use crate::durability::Watermark;
use crate::error::{Result, StorageError};
use crate::metrics::Counters;
use crate::segment::{Continuation, ReadBounds, Segment};

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

impl PartitionLog {
    /// Appends a checked batch with `term`, assigning its offsets and entry index. Returns once
    /// the batch is written and readable; it is durable once [`Self::wait_durable`] says so.
    pub fn append(&self, batch: &ValidBatch, term: u64) -> Result<Appended> {
        let limit = self.shared.config().max_batch_bytes;
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
        let (full, old) = {
            let config = self.shared.config();
            let old = config
                .segment_age_limit()
                .is_some_and(|limit| active.opened_at.elapsed() >= limit);
            (active.size + incoming > config.segment_bytes, old)
        };
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
            self.shared.config().index_interval_bytes,
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

    fn count_read(&self, read: ReadBatches) -> ReadBatches {
        Counters::add(
            &self.shared.counters.read_batches,
            read.batches.len() as u64,
        );
        Counters::add(&self.shared.counters.read_bytes, read.data.len() as u64);
        read
    }
}
