//! One segment: a `{base_offset:020}.log` file of whole batches and its two sparse indexes.
//!
//! Invariants:
//! - the file holds exactly `size` bytes of whole, CRC-valid batches, in offset and entry-index
//!   order: each batch's base offset is the previous batch's next offset (the segment's base
//!   offset for the first), each entry index is the previous one plus one, terms never decrease;
//! - the active segment (the last one) is appended to with positioned writes and read with
//!   `pread` copies, so truncating it in place is safe for readers;
//! - a sealed segment is immutable and served zero-copy from a read-only map. It is never
//!   truncated in place: re-activating one (a suffix truncation that reaches back into it) writes
//!   a new file and renames it over the old name, leaving maps of the old inode valid.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use memmap2::Mmap;

use crate::error::{Result, StorageError};
use crate::index::{IndexProblem, OffsetIndex, TimeIndex};
use weir_format::batch::{self as codec, BatchHeader, CodecError, HEADER_LEN, ValidBatch};

/// File names of a segment.
#[derive(Debug, Clone)]
pub(crate) struct SegmentPaths {
    pub(crate) log: PathBuf,
    pub(crate) index: PathBuf,
    pub(crate) time_index: PathBuf,
}

impl SegmentPaths {
    pub(crate) fn new(dir: &Path, base_offset: u64) -> Self {
        let stem = format!("{base_offset:020}");
        Self {
            log: dir.join(format!("{stem}.log")),
            index: dir.join(format!("{stem}.index")),
            time_index: dir.join(format!("{stem}.timeindex")),
        }
    }
}

/// Where the log position of the next batch stands: what a new batch must continue from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Continuation {
    pub(crate) next_offset: u64,
    pub(crate) next_index: u64,
    pub(crate) last_term: u64,
}

/// The contents of a segment for reading.
#[derive(Debug, Clone)]
enum Data {
    /// Sealed: the whole file, mapped.
    Mapped(Bytes),
    /// Active: read with `pread`.
    File,
}

#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) base_offset: u64,
    pub(crate) paths: SegmentPaths,
    file: Arc<File>,
    data: Data,
    /// Bytes of whole batches.
    pub(crate) size: u64,
    /// The offset the next record appended here would take.
    pub(crate) next_offset: u64,
    /// Entry index of the first batch, if any.
    pub(crate) first_index: Option<u64>,
    /// (index, term) of the last batch, if any.
    pub(crate) last_entry: Option<(u64, u64)>,
    /// Largest timestamp of a record batch, if any.
    pub(crate) max_timestamp: Option<i64>,
    /// Relative base offset of the last record batch (for the final time-index entry).
    last_record_relative: Option<u32>,
    offset_index: OffsetIndex,
    time_index: TimeIndex,
    bytes_since_index: u64,
    index_interval: u64,
    /// When the segment was created or opened; drives rolling by age.
    pub(crate) opened_at: Instant,
    /// Timestamp of the first record batch (ms).
    pub(crate) first_timestamp: Option<i64>,
    /// Active segment only: the time-related counters as they stood just before the batch of
    /// each offset-index entry, so a suffix truncation can restore them without a full scan.
    restore_points: Vec<RestorePoint>,
}

#[derive(Debug, Clone, Copy)]
struct RestorePoint {
    max_timestamp: Option<i64>,
    last_record_relative: Option<u32>,
    first_timestamp: Option<i64>,
}

/// A batch found by a scan: where it starts, and its header.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Located {
    pub(crate) position: u64,
    pub(crate) header: BatchHeader,
}

/// Which batches a read returns, once the first one is found.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadBounds {
    pub(crate) max_bytes: usize,
    /// Stop before a record batch that ends past this offset, or a control batch at it.
    pub(crate) until_offset: u64,
    /// Stop before the batch with this entry index.
    pub(crate) until_index: u64,
}

impl ReadBounds {
    fn admits(&self, header: &BatchHeader) -> bool {
        let within_offsets = if header.control {
            header.base_offset < self.until_offset
        } else {
            header.next_offset() <= self.until_offset
        };
        within_offsets && header.index < self.until_index
    }
}

impl Segment {
    /// Creates a new, empty active segment file.
    pub(crate) fn create(dir: &Path, base_offset: u64, index_interval: u32) -> Result<Self> {
        let paths = SegmentPaths::new(dir, base_offset);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&paths.log)
            .map_err(StorageError::io("create segment", &paths.log))?;
        for stale in [&paths.index, &paths.time_index] {
            remove_if_present(stale)?;
        }
        Ok(Self::empty(
            paths,
            base_offset,
            Arc::new(file),
            index_interval,
        ))
    }

    fn empty(paths: SegmentPaths, base_offset: u64, file: Arc<File>, index_interval: u32) -> Self {
        Self {
            base_offset,
            paths,
            file,
            data: Data::File,
            size: 0,
            next_offset: base_offset,
            first_index: None,
            last_entry: None,
            max_timestamp: None,
            last_record_relative: None,
            offset_index: OffsetIndex::new(),
            time_index: TimeIndex::new(),
            bytes_since_index: 0,
            index_interval: u64::from(index_interval),
            opened_at: Instant::now(),
            first_timestamp: None,
            restore_points: Vec::new(),
        }
    }

    pub(crate) fn is_sealed(&self) -> bool {
        matches!(self.data, Data::Mapped(_))
    }

    pub(crate) fn file(&self) -> &Arc<File> {
        &self.file
    }

    pub(crate) fn has_records(&self) -> bool {
        self.next_offset > self.base_offset
    }

    pub(crate) fn continuation(&self, before: Continuation) -> Continuation {
        match self.last_entry {
            Some((index, term)) => Continuation {
                next_offset: self.next_offset,
                next_index: index + 1,
                last_term: term,
            },
            None => Continuation {
                next_offset: self.next_offset,
                ..before
            },
        }
    }

    /// Updates counters and indexes for a batch that now sits at `position`.
    fn account(&mut self, position: u64, header: &BatchHeader) {
        let relative = (header.base_offset - self.base_offset) as u32;
        let indexed = position > 0 && self.bytes_since_index >= self.index_interval;
        if indexed && !self.is_sealed() {
            self.restore_points.push(RestorePoint {
                max_timestamp: self.max_timestamp,
                last_record_relative: self.last_record_relative,
                first_timestamp: self.first_timestamp,
            });
        }
        if !header.control {
            self.max_timestamp = Some(
                self.max_timestamp
                    .map_or(header.max_timestamp, |max| max.max(header.max_timestamp)),
            );
            self.first_timestamp.get_or_insert(header.first_timestamp);
            self.last_record_relative = Some(relative);
        }
        if indexed {
            self.offset_index.push(relative, position as u32);
            if let (false, Some(max)) = (header.control, self.max_timestamp) {
                self.time_index.maybe_push(max, relative);
            }
            self.bytes_since_index = 0;
        }
        self.bytes_since_index += u64::from(header.length);
        self.first_index.get_or_insert(header.index);
        self.last_entry = Some((header.index, header.term));
        self.next_offset = header.next_offset();
        self.size = position + u64::from(header.length);
    }

    /// Appends a stamped batch: `header` (already re-stamped, CRC included) then `payload`.
    /// Positioned writes: a failed write leaves `size` where it was, and the next append
    /// overwrites whatever partial bytes it left.
    pub(crate) fn append(
        &mut self,
        header_bytes: &[u8; HEADER_LEN],
        payload: &[u8],
        scratch: &mut Vec<u8>,
    ) -> Result<BatchHeader> {
        debug_assert!(!self.is_sealed());
        let header = BatchHeader::parse(header_bytes)?;
        let position = self.size;
        let io = StorageError::io("append to", &self.paths.log);
        if payload.len() <= 64 * 1024 {
            scratch.clear();
            scratch.extend_from_slice(header_bytes);
            scratch.extend_from_slice(payload);
            self.file.write_all_at(scratch, position).map_err(io)?;
        } else {
            self.file
                .write_all_at(header_bytes, position)
                .map_err(StorageError::io("append to", &self.paths.log))?;
            self.file
                .write_all_at(payload, position + HEADER_LEN as u64)
                .map_err(io)?;
        }
        self.account(position, &header);
        Ok(header)
    }

    /// Reads `len` bytes at `position` (zero-copy when sealed).
    fn read_at(&self, position: u64, len: usize) -> Result<Bytes> {
        match &self.data {
            Data::Mapped(bytes) => {
                let start = position as usize;
                let end = start.checked_add(len).filter(|&end| end <= bytes.len());
                match end {
                    Some(end) => Ok(bytes.slice(start..end)),
                    None => Err(self.corrupt(position, "read past the end of the segment")),
                }
            }
            Data::File => {
                let io = StorageError::io("read", &self.paths.log);
                if (POOLED_MIN..=POOLED_LEN).contains(&len) {
                    let mut buffer = PooledBuffer::take();
                    self.file
                        .read_exact_at(&mut buffer.0[..len], position)
                        .map_err(io)?;
                    return Ok(Bytes::from_owner(buffer).slice(..len));
                }
                let mut buf = vec![0u8; len];
                self.file.read_exact_at(&mut buf, position).map_err(io)?;
                Ok(Bytes::from(buf))
            }
        }
    }

    fn header_at(&self, position: u64) -> Result<BatchHeader> {
        let raw = self.read_at(position, HEADER_LEN)?;
        let header = BatchHeader::parse(&raw).map_err(|err| self.corrupt(position, err))?;
        if position + u64::from(header.length) > self.size {
            return Err(self.corrupt(position, "batch runs past the end of the segment"));
        }
        Ok(header)
    }

    pub(crate) fn corrupt(&self, position: u64, reason: impl ToString) -> StorageError {
        StorageError::Corrupt {
            path: self.paths.log.clone(),
            position,
            reason: reason.to_string(),
        }
    }

    /// Walks batch headers from `position` until `found` accepts one.
    fn seek_from(
        &self,
        mut position: u64,
        found: impl Fn(&BatchHeader) -> bool,
    ) -> Result<Option<Located>> {
        while position < self.size {
            let header = self.header_at(position)?;
            if found(&header) {
                return Ok(Some(Located { position, header }));
            }
            position += u64::from(header.length);
        }
        Ok(None)
    }

    /// The first batch whose base offset is `offset` or more.
    pub(crate) fn first_batch_from_offset(&self, offset: u64) -> Result<Option<Located>> {
        let relative = offset
            .saturating_sub(self.base_offset)
            .min(u64::from(u32::MAX)) as u32;
        let start = self.offset_index.lookup(relative);
        self.seek_from(u64::from(start), |h| h.base_offset >= offset)
    }

    /// The first record batch that holds `offset` or a later one.
    pub(crate) fn first_record_batch_from(&self, offset: u64) -> Result<Option<Located>> {
        let relative = offset
            .saturating_sub(self.base_offset)
            .min(u64::from(u32::MAX)) as u32;
        let start = self.offset_index.lookup(relative);
        self.seek_from(u64::from(start), |h| !h.control && h.next_offset() > offset)
    }

    /// The batch with entry index `index`, if this segment has it.
    pub(crate) fn batch_with_index(&self, index: u64) -> Result<Option<Located>> {
        let (Some(first), Some((last, _))) = (self.first_index, self.last_entry) else {
            return Ok(None);
        };
        if index < first || index > last {
            return Ok(None);
        }
        // Entry indexes grow with position: binary search the offset-index entries by the index
        // of the batch each one points at.
        let (mut low, mut high) = (0usize, self.offset_index.len());
        while low < high {
            let mid = low + (high - low) / 2;
            let header = self.header_at(u64::from(self.offset_index.position(mid)))?;
            if header.index <= index {
                low = mid + 1;
            } else {
                high = mid;
            }
        }
        let start = if low == 0 {
            0
        } else {
            self.offset_index.position(low - 1)
        };
        let located = self.seek_from(u64::from(start), |h| h.index >= index)?;
        match located {
            Some(found) if found.header.index == index => Ok(Some(found)),
            Some(found) => Err(self.corrupt(
                found.position,
                format!("expected entry index {index}, found {}", found.header.index),
            )),
            None => Ok(None),
        }
    }

    /// Reads whole batches starting with the one at `from`, CRC-checking each, within `bounds`.
    /// Returns at least the first batch when it is within the offset/index bounds, even when it
    /// is larger than `max_bytes`.
    pub(crate) fn read_batches(
        &self,
        from: Located,
        bounds: ReadBounds,
    ) -> Result<(Bytes, Vec<ValidBatch>)> {
        if !bounds.admits(&from.header) {
            return Ok((Bytes::new(), Vec::new()));
        }
        // One read of the whole window (a zero-copy slice when sealed, one `pread` when active),
        // then the headers are walked in memory.
        let available = self.size - from.position;
        let first_len = u64::from(from.header.length);
        let mut wanted = (bounds.max_bytes as u64).max(first_len);
        if !self.is_sealed() {
            wanted = wanted.min(ACTIVE_READ_LIMIT.max(first_len));
        }
        let window = self.read_at(from.position, wanted.min(available) as usize)?;
        let reaches_end = wanted >= available;
        let mut end = 0usize;
        let mut batches = Vec::new();
        while end < window.len() {
            let position = from.position + end as u64;
            let rest = &window[end..];
            let header = match BatchHeader::parse(rest) {
                Ok(header) if rest.len() >= header.len() => header,
                Ok(_) | Err(CodecError::Truncated { .. }) if !reaches_end => break,
                Ok(_) => {
                    return Err(self.corrupt(position, "batch runs past the end of the segment"));
                }
                Err(err) => return Err(self.corrupt(position, err)),
            };
            if !bounds.admits(&header) || (end > 0 && end + header.len() > bounds.max_bytes) {
                break;
            }
            let bytes = window.slice(end..end + header.len());
            let batch = ValidBatch::new_stored(bytes).map_err(|err| self.corrupt(position, err))?;
            end += header.len();
            batches.push(batch);
        }
        Ok((window.slice(..end), batches))
    }

    /// CRC-checks every batch of the segment and its continuity with `expected`; returns the
    /// continuation after it and the number of batches.
    pub(crate) fn verify(&self, expected: Continuation) -> Result<(Continuation, u64)> {
        let mut next = expected;
        let mut position = 0;
        let mut batches = 0;
        while position < self.size {
            let header = self.header_at(position)?;
            let bytes = self.read_at(position, header.len())?;
            ValidBatch::new_stored(bytes).map_err(|err| self.corrupt(position, err))?;
            if header.base_offset != next.next_offset
                || (next.next_index != NO_INDEX && header.index != next.next_index)
                || header.term < next.last_term
            {
                return Err(self.corrupt(position, discontinuity(&header, next)));
            }
            next = Continuation {
                next_offset: header.next_offset(),
                next_index: header.index + 1,
                last_term: header.term,
            };
            position += u64::from(header.length);
            batches += 1;
        }
        Ok((next, batches))
    }

    /// The first record at or after `timestamp` in this segment, at offset `min_offset` or later.
    pub(crate) fn offset_for_timestamp(
        &self,
        timestamp: i64,
        min_offset: u64,
    ) -> Result<Option<u64>> {
        if self.max_timestamp.is_none_or(|max| max < timestamp) {
            return Ok(None);
        }
        let relative = self.time_index.scan_start(timestamp);
        let start_offset = (self.base_offset + u64::from(relative)).max(min_offset);
        let mut located = self.first_record_batch_from(start_offset)?;
        while let Some(Located { position, header }) = located {
            if !header.control && header.max_timestamp >= timestamp {
                let raw = self.read_at(position, header.len())?;
                let batch =
                    ValidBatch::new_stored(raw).map_err(|err| self.corrupt(position, err))?;
                let records = batch.records().map_err(|err| self.corrupt(position, err))?;
                if let Some(record) = records
                    .iter()
                    .find(|r| r.timestamp >= timestamp && r.offset >= min_offset)
                {
                    return Ok(Some(record.offset));
                }
            }
            let next = position + u64::from(header.length);
            located = if next < self.size {
                Some(Located {
                    position: next,
                    header: self.header_at(next)?,
                })
            } else {
                None
            };
        }
        Ok(None)
    }

    /// Cuts the active segment at `position` (a batch boundary), restoring counters and
    /// indexes from the nearest index entry before it.
    pub(crate) fn truncate_active(&mut self, position: u64) -> Result<()> {
        debug_assert!(!self.is_sealed());
        self.file
            .set_len(position)
            .map_err(StorageError::io("truncate", &self.paths.log))?;
        // Entries at or after the cut go; the last one before it is re-added by re-accounting
        // its batch from the counters saved when it was first added.
        self.offset_index.truncate_to_position(position as u32);
        self.restore_points.truncate(self.offset_index.len());
        let restart = match (self.offset_index.last_position(), self.restore_points.pop()) {
            (Some(restart), Some(point)) => {
                let restart = u64::from(restart);
                let header = self.header_at(restart)?;
                self.offset_index.truncate_to_position(restart as u32);
                self.time_index
                    .truncate_to_offset((header.base_offset - self.base_offset) as u32);
                self.max_timestamp = point.max_timestamp;
                self.last_record_relative = point.last_record_relative;
                self.first_timestamp = point.first_timestamp;
                self.bytes_since_index = self.index_interval;
                restart
            }
            _ => {
                self.offset_index.truncate_to_position(0);
                self.time_index.truncate_to_offset(0);
                self.restore_points.clear();
                self.next_offset = self.base_offset;
                self.first_index = None;
                self.last_entry = None;
                self.max_timestamp = None;
                self.last_record_relative = None;
                self.first_timestamp = None;
                self.bytes_since_index = 0;
                0
            }
        };
        // Read the headers first: `header_at` checks against `size`, which accounting moves.
        self.size = position;
        let mut headers = Vec::new();
        let mut at = restart;
        while at < position {
            let header = self.header_at(at)?;
            headers.push((at, header));
            at += u64::from(header.length);
        }
        for (at, header) in headers {
            self.account(at, &header);
        }
        self.size = position;
        Ok(())
    }

    /// Seals the active segment: writes its indexes, maps its file read-only.
    pub(crate) fn seal(&mut self) -> Result<()> {
        if self.is_sealed() {
            return Ok(());
        }
        if let (Some(max), Some(relative)) = (self.max_timestamp, self.last_record_relative) {
            self.time_index.maybe_push(max, relative);
        }
        self.offset_index.write_to(&self.paths.index)?;
        self.time_index.write_to(&self.paths.time_index)?;
        self.restore_points = Vec::new();
        let records = self.next_offset - self.base_offset;
        self.offset_index = OffsetIndex::open_sealed(&self.paths.index, self.size)?
            .map_err(|problem| self.index_written_badly(problem))?;
        self.time_index = TimeIndex::open_sealed(&self.paths.time_index, records)?
            .map_err(|problem| self.index_written_badly(problem))?;
        self.data = Data::Mapped(map_file(&self.file, &self.paths.log, self.size)?);
        Ok(())
    }

    fn index_written_badly(&self, problem: IndexProblem) -> StorageError {
        StorageError::Corrupt {
            path: self.paths.index.clone(),
            position: 0,
            reason: format!("index unreadable right after writing it: {}", problem.0),
        }
    }

    /// Opens the last segment as the active one: scans every batch with CRC, rebuilds indexes
    /// in memory, and cuts a torn or corrupt tail. Corruption followed by valid data is an error.
    pub(crate) fn open_active(
        dir: &Path,
        base_offset: u64,
        expected: Continuation,
        index_interval: u32,
    ) -> Result<(Self, Option<TailRepair>)> {
        let paths = SegmentPaths::new(dir, base_offset);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&paths.log)
            .map_err(StorageError::io("open segment", &paths.log))?;
        let file_len = file
            .metadata()
            .map_err(StorageError::io("stat segment", &paths.log))?
            .len();
        let mut segment = Self::empty(paths, base_offset, Arc::new(file), index_interval);
        let map = map_file(&segment.file, &segment.paths.log, file_len)?;
        let scan = segment.scan(&map, 0, expected)?;
        let mut repair = None;
        if let Some((position, error)) = scan.stopped {
            if let Some(valid_at) = find_valid_batch_after(&map, position) {
                return Err(segment.corrupt(
                    position,
                    format!(
                        "{error}; a valid batch follows at byte {valid_at}, so this is not a torn \
                         tail: refusing to drop data in the middle of the log"
                    ),
                ));
            }
            repair = Some(TailRepair {
                path: segment.paths.log.clone(),
                position,
                dropped_bytes: file_len - position,
                reason: error.to_string(),
            });
        }
        drop(map);
        if segment.size != file_len {
            segment
                .file
                .set_len(segment.size)
                .map_err(StorageError::io(
                    "truncate torn tail of",
                    &segment.paths.log,
                ))?;
            segment
                .file
                .sync_all()
                .map_err(StorageError::io("sync", &segment.paths.log))?;
        }
        for stale in [&segment.paths.index, &segment.paths.time_index] {
            remove_if_present(stale)?;
        }
        segment.opened_at = Instant::now();
        Ok((segment, repair))
    }

    /// Opens a sealed segment: maps it, opens its index files (rebuilding one that is missing or
    /// fails its checks), CRC-checks the batches from the last offset-index entry to the end (all
    /// of them when an index is rebuilt), and checks that the segment continues `expected`.
    pub(crate) fn open_sealed(
        dir: &Path,
        base_offset: u64,
        expected: Continuation,
        index_interval: u32,
    ) -> Result<(Self, Vec<IndexRebuild>)> {
        let paths = SegmentPaths::new(dir, base_offset);
        let file = File::open(&paths.log).map_err(StorageError::io("open segment", &paths.log))?;
        let size = file
            .metadata()
            .map_err(StorageError::io("stat segment", &paths.log))?
            .len();
        let mut segment = Self::empty(paths, base_offset, Arc::new(file), index_interval);
        if size == 0 {
            return Err(segment.corrupt(0, "sealed segment is empty"));
        }
        let data = map_file(&segment.file, &segment.paths.log, size)?;
        let first = check_at(&data, 0).map_err(|err| segment.corrupt(0, err))?;
        if first.base_offset != expected.next_offset
            || (expected.next_index != NO_INDEX && first.index != expected.next_index)
            || first.term < expected.last_term
        {
            return Err(segment.corrupt(0, discontinuity(&first, expected)));
        }
        let mut disk_offsets = OffsetIndex::open_sealed(&segment.paths.index, size)?;
        let disk_times = TimeIndex::open_sealed(&segment.paths.time_index, u64::MAX)?;
        // Where the CRC scan starts: the last offset-index entry, if it is trustworthy.
        let mut start = 0u64;
        if let Ok(index) = &disk_offsets
            && let Some(position) = index.last_position()
        {
            match check_at(&data, position as usize) {
                Ok(header) if header.index > first.index => start = u64::from(position),
                _ => {
                    disk_offsets = Err(IndexProblem(format!(
                        "last entry points at byte {position}, which is not a valid batch"
                    )));
                }
            }
        }
        if disk_times.is_err() {
            start = 0;
        }
        let resume = if start == 0 {
            expected
        } else {
            let header =
                check_at(&data, start as usize).map_err(|err| segment.corrupt(start, err))?;
            Continuation {
                next_offset: header.base_offset,
                next_index: header.index,
                last_term: header.term,
            }
        };
        segment.first_index = Some(first.index);
        segment.scan_sealed(&data, start, resume)?;
        let records = segment.next_offset - base_offset;
        let disk_times = disk_times.and_then(|index| match index.last() {
            None if records > 0 => Err(IndexProblem("empty for a segment with records".into())),
            Some((_, relative)) if u64::from(relative) >= records => Err(IndexProblem(format!(
                "names relative offset {relative}, past the segment's {records} records"
            ))),
            _ => Ok(index),
        });
        if disk_times.is_err() && start != 0 {
            // The time index is rebuilt from a full scan.
            segment.reset_counters();
            segment.first_index = Some(first.index);
            segment.scan_sealed(&data, 0, expected)?;
            start = 0;
        }
        let disk_offsets = disk_offsets.and_then(|index| {
            if start == 0 && index.len() == 0 && segment.offset_index.len() > 0 {
                Err(IndexProblem("empty for a segment this large".into()))
            } else {
                Ok(index)
            }
        });
        let mut rebuilt = Vec::new();
        match disk_offsets {
            Ok(index) => segment.offset_index = index,
            Err(problem) => {
                segment.offset_index.write_to(&segment.paths.index)?;
                rebuilt.push(IndexRebuild {
                    path: segment.paths.index.clone(),
                    problem: problem.0,
                });
                segment.offset_index = OffsetIndex::open_sealed(&segment.paths.index, size)?
                    .map_err(|p| segment.index_written_badly(p))?;
            }
        }
        match disk_times {
            Ok(index) => {
                if let Some((ts, relative)) = index.last() {
                    segment.max_timestamp = Some(segment.max_timestamp.map_or(ts, |m| m.max(ts)));
                    segment.last_record_relative = Some(
                        segment
                            .last_record_relative
                            .map_or(relative, |r| r.max(relative)),
                    );
                }
                segment.time_index = index;
            }
            Err(problem) => {
                if let (Some(max), Some(relative)) =
                    (segment.max_timestamp, segment.last_record_relative)
                {
                    segment.time_index.maybe_push(max, relative);
                }
                segment.time_index.write_to(&segment.paths.time_index)?;
                rebuilt.push(IndexRebuild {
                    path: segment.paths.time_index.clone(),
                    problem: problem.0,
                });
                segment.time_index = TimeIndex::open_sealed(&segment.paths.time_index, records)?
                    .map_err(|p| segment.index_written_badly(p))?;
            }
        }
        segment.first_timestamp = (!first.control).then_some(first.first_timestamp);
        segment.restore_points = Vec::new();
        segment.data = Data::Mapped(data);
        Ok((segment, rebuilt))
    }

    fn reset_counters(&mut self) {
        let fresh = Self::empty(
            self.paths.clone(),
            self.base_offset,
            Arc::clone(&self.file),
            self.index_interval as u32,
        );
        *self = fresh;
    }

    /// Scans a sealed segment to its end; any problem is corruption (sealed data is never torn).
    fn scan_sealed(&mut self, data: &[u8], start: u64, resume: Continuation) -> Result<()> {
        match self.scan(data, start, resume)?.stopped {
            Some((position, error)) => {
                Err(self.corrupt(position, format!("sealed segment: {error}")))
            }
            None => Ok(()),
        }
    }

    /// Accounts every whole, valid, continuous batch of `data` from `start`; stops at the first
    /// problem and reports where.
    fn scan(&mut self, data: &[u8], start: u64, expected: Continuation) -> Result<ScanOutcome> {
        let mut position = start as usize;
        let mut next = expected;
        self.size = start;
        while position < data.len() {
            let header = match check_at(data, position) {
                Ok(header) => header,
                Err(error) => {
                    return Ok(ScanOutcome {
                        stopped: Some((position as u64, error.to_string())),
                    });
                }
            };
            if header.base_offset != next.next_offset
                || (next.next_index != NO_INDEX && header.index != next.next_index)
                || header.term < next.last_term
            {
                return Err(self.corrupt(position as u64, discontinuity(&header, next)));
            }
            self.account(position as u64, &header);
            next = Continuation {
                next_offset: header.next_offset(),
                next_index: header.index + 1,
                last_term: header.term,
            };
            position += header.len();
        }
        Ok(ScanOutcome { stopped: None })
    }
}

/// The most one read of the active segment copies (unless its first batch is larger): reads of
/// the active segment are copies, so an unbounded `max_bytes` must not copy the whole segment.
const ACTIVE_READ_LIMIT: u64 = 8 << 20;

/// Read buffers for the active segment are reused, process-wide, so that each is zero-filled
/// once instead of on every read: at most `POOLED_COUNT` buffers of `POOLED_LEN` bytes are kept.
/// A buffer returns to the pool when the last `Bytes` slicing it is dropped.
const POOLED_LEN: usize = 1 << 20;
const POOLED_MIN: usize = 64 * 1024;
const POOLED_COUNT: usize = 16;
static READ_BUFFERS: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

struct PooledBuffer(Vec<u8>);

impl PooledBuffer {
    fn take() -> Self {
        let reused = crate::durability::lock(&READ_BUFFERS).pop();
        Self(reused.unwrap_or_else(|| vec![0u8; POOLED_LEN]))
    }
}

impl AsRef<[u8]> for PooledBuffer {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        let buffer = std::mem::take(&mut self.0);
        let mut free = crate::durability::lock(&READ_BUFFERS);
        if free.len() < POOLED_COUNT {
            free.push(buffer);
        }
    }
}

/// `next_index` value meaning "any index may come next" (a log that never held a batch).
pub(crate) const NO_INDEX: u64 = u64::MAX;

fn discontinuity(header: &BatchHeader, expected: Continuation) -> String {
    let index = if expected.next_index == NO_INDEX {
        "any".to_owned()
    } else {
        expected.next_index.to_string()
    };
    format!(
        "batch (offset {}, index {}, term {}) does not continue the log (expected offset {}, \
         index {index}, term >= {})",
        header.base_offset, header.index, header.term, expected.next_offset, expected.last_term
    )
}

#[derive(Debug)]
struct ScanOutcome {
    /// Where the scan stopped before the end, and why.
    stopped: Option<(u64, String)>,
}

/// A torn or corrupt tail cut off when the active segment was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailRepair {
    pub path: PathBuf,
    pub position: u64,
    pub dropped_bytes: u64,
    pub reason: String,
}

/// An index file that was missing or unusable and has been rebuilt from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexRebuild {
    pub path: PathBuf,
    pub problem: String,
}

fn check_at(data: &[u8], position: usize) -> std::result::Result<BatchHeader, CodecError> {
    codec::check_batch(data.get(position..).unwrap_or_default())
}

/// Is there any CRC-valid batch starting after `position`? Byte-by-byte search: only run when a
/// scan already failed, to tell a torn tail (nothing valid after) from corruption in the middle.
fn find_valid_batch_after(data: &[u8], position: u64) -> Option<u64> {
    let start = position as usize + 1;
    (start..data.len().saturating_sub(HEADER_LEN - 1))
        .filter(|&at| data[at + 4] == codec::MAGIC)
        .find(|&at| codec::check_batch(&data[at..]).is_ok())
        .map(|at| at as u64)
}

/// Keeps a read-only map alive for as long as any `Bytes` slices it.
struct MappedFile(Mmap);

impl AsRef<[u8]> for MappedFile {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// A read-only map of the first `len` bytes of `file`, as `Bytes` (empty for an empty file).
fn map_file(file: &File, path: &Path, len: u64) -> Result<Bytes> {
    if len == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: segment files are only written by this process, which holds the partition
    // directory's exclusive lock. A sealed segment is never modified in place (see the module
    // docs); an active segment is mapped only inside `open_active`, before any writer exists,
    // and that map is dropped before the segment is appended to or truncated.
    #[allow(unsafe_code)]
    let map = unsafe { memmap2::MmapOptions::new().len(len as usize).map(file) }
        .map_err(StorageError::io("map segment", path))?;
    Ok(Bytes::from_owner(MappedFile(map)))
}

pub(crate) fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(StorageError::io("remove", path)(err)),
    }
}
