//! Sparse indexes of one segment: the offset index (`.index`: relative offset → file position) and
//! the time index (`.timeindex`: timestamp → relative offset).
//!
//! Invariants, checked when a sealed segment's index files are opened (a file that breaks them is
//! rebuilt from the log):
//! - offset index: entries of 8 bytes (`u32` relative offset, `u32` position, little-endian);
//!   positions strictly increase, are > 0 (position 0 is implied) and below the segment size;
//!   relative offsets never decrease. Every entry points at the start of a batch whose base offset
//!   is the segment's base plus the entry's relative offset.
//! - time index: entries of 12 bytes (`i64` timestamp, `u32` relative offset); both strictly
//!   increase. An entry `(t, r)` says: the largest record timestamp in the segment's batches up to
//!   and including the record batch starting at relative offset `r` is `t`.
//!
//! Sealed index files end with a trailer (magic, entry count, CRC-32 of the entries) that is
//! checked when they are opened.
//!
//! The active segment keeps its entries in memory (it is rebuilt by scanning the segment on every
//! open, so its index files are never trusted); sealing writes them out and maps them read-only.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;

use crate::error::{Result, StorageError};
use crate::fs::{self, DirSync};

pub(crate) const OFFSET_ENTRY_LEN: usize = 8;
pub(crate) const TIME_ENTRY_LEN: usize = 12;

/// Raw entry bytes: growable while the segment is active, mapped once it is sealed.
#[derive(Debug)]
enum Entries {
    Memory(Vec<u8>),
    /// The map covers entries and trailer; `len` is the entries' part.
    Mapped {
        map: Arc<Mmap>,
        len: usize,
    },
}

/// Which index a file holds; its magic opens the file's trailer.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Offset,
    Time,
}

impl Kind {
    fn magic(self) -> &'static [u8; 4] {
        match self {
            Kind::Offset => b"WIX1",
            Kind::Time => b"WTX1",
        }
    }

    fn entry_len(self) -> usize {
        match self {
            Kind::Offset => OFFSET_ENTRY_LEN,
            Kind::Time => TIME_ENTRY_LEN,
        }
    }
}

/// Every index file ends with a trailer: magic, entry count, CRC-32 of the entries, and 4 zero
/// bytes. A file whose trailer does not match its entries is rebuilt from the log, so damage
/// anywhere in an index (not only where the structural checks look) is caught at open.
pub(crate) const TRAILER_LEN: usize = 16;

impl Entries {
    fn bytes(&self) -> &[u8] {
        match self {
            Entries::Memory(bytes) => bytes,
            Entries::Mapped { map, len } => &map[..*len],
        }
    }

    fn push(&mut self, entry: &[u8]) {
        match self {
            Entries::Memory(bytes) => bytes.extend_from_slice(entry),
            Entries::Mapped { .. } => {
                debug_assert!(false, "sealed indexes are immutable");
            }
        }
    }

    fn truncate(&mut self, len: usize) {
        if let Entries::Memory(bytes) = self {
            bytes.truncate(len);
        }
    }

    /// Maps `path` read-only and checks its trailer. `Ok(None)`: no such file.
    fn map(path: &Path, kind: Kind) -> Result<Option<std::result::Result<Self, IndexProblem>>> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(StorageError::io("open index", path)(err)),
        };
        let len = file
            .metadata()
            .map_err(StorageError::io("stat index", path))?
            .len();
        if len < TRAILER_LEN as u64 {
            return Ok(Some(Err(IndexProblem(format!(
                "{len} bytes: too short for the {TRAILER_LEN}-byte trailer"
            )))));
        }
        // SAFETY: index files of sealed segments are written once, before they are mapped, and
        // never modified in place afterwards (a rebuild writes a new file and renames it over the
        // old one, which leaves existing maps on the old inode intact). The partition directory
        // is held under an exclusive lock, so no other Weir process writes them.
        #[allow(unsafe_code)]
        let map = unsafe { Mmap::map(&file) }.map_err(StorageError::io("map index", path))?;
        let entries_len = map.len() - TRAILER_LEN;
        let trailer = &map[entries_len..];
        let count = le_u32(&trailer[4..8]) as usize;
        let problem = if &trailer[0..4] != kind.magic() {
            Some("trailer magic is wrong".to_owned())
        } else if count.checked_mul(kind.entry_len()) != Some(entries_len) {
            Some(format!(
                "trailer says {count} entries, the file holds {entries_len} bytes of entries"
            ))
        } else if trailer[12..16] != [0u8; 4] {
            Some("trailer's reserved bytes are not zero".to_owned())
        } else if le_u32(&trailer[8..12]) != crc32fast::hash(&map[..entries_len]) {
            Some("entries do not match the trailer's CRC".to_owned())
        } else {
            None
        };
        Ok(Some(match problem {
            Some(problem) => Err(IndexProblem(problem)),
            None => Ok(Entries::Mapped {
                map: Arc::new(map),
                len: entries_len,
            }),
        }))
    }

    fn write_to(&self, path: &Path, kind: Kind) -> Result<()> {
        let entries = self.bytes();
        let mut bytes = Vec::with_capacity(entries.len() + TRAILER_LEN);
        bytes.extend_from_slice(entries);
        bytes.extend_from_slice(kind.magic());
        let count = (entries.len() / kind.entry_len()) as u32;
        bytes.extend_from_slice(&count.to_le_bytes());
        bytes.extend_from_slice(&crc32fast::hash(entries).to_le_bytes());
        bytes.extend_from_slice(&[0u8; 4]);
        write_file(path, &bytes)
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a reader sees the old file
/// or the whole new one. The directory is not synced here: an index file lost in a crash is
/// rebuilt from its segment, and a roll (which writes the sealed segment's indexes) has the
/// flusher sync the directory anyway.
fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    fs::write_atomic_with(path, DirSync::Later, |file| file.write_all(bytes))?;
    Ok(())
}

/// Why an index file is not usable (it is then rebuilt from the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IndexProblem(pub(crate) String);

/// Offset index of one segment.
#[derive(Debug)]
pub(crate) struct OffsetIndex {
    entries: Entries,
}

impl OffsetIndex {
    pub(crate) fn new() -> Self {
        Self {
            entries: Entries::Memory(Vec::new()),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.bytes().len() / OFFSET_ENTRY_LEN
    }

    /// Entry `i` as (relative offset, position).
    pub(crate) fn entry(&self, i: usize) -> (u32, u32) {
        let raw = &self.entries.bytes()[i * OFFSET_ENTRY_LEN..(i + 1) * OFFSET_ENTRY_LEN];
        (le_u32(&raw[0..4]), le_u32(&raw[4..8]))
    }

    pub(crate) fn push(&mut self, relative_offset: u32, position: u32) {
        let mut raw = [0u8; OFFSET_ENTRY_LEN];
        raw[0..4].copy_from_slice(&relative_offset.to_le_bytes());
        raw[4..8].copy_from_slice(&position.to_le_bytes());
        self.entries.push(&raw);
    }

    /// A position at or before the first batch whose base offset is `relative_offset` or more
    /// (and so before the batch that holds that offset): the position of the last entry whose
    /// relative offset is strictly below it, or 0. Strictly, because control batches share their
    /// base offset with the record batch after them, and an entry may point past such a batch.
    pub(crate) fn lookup(&self, relative_offset: u32) -> u32 {
        let below = partition_point(self.len(), |i| self.entry(i).0 < relative_offset);
        if below == 0 {
            0
        } else {
            self.entry(below - 1).1
        }
    }

    /// Positions of all entries, for searches by other keys (entry index).
    pub(crate) fn position(&self, i: usize) -> u32 {
        self.entry(i).1
    }

    /// Drops entries that point at or after `position`.
    pub(crate) fn truncate_to_position(&mut self, position: u32) {
        let keep = partition_point(self.len(), |i| self.entry(i).1 < position);
        self.entries.truncate(keep * OFFSET_ENTRY_LEN);
    }

    pub(crate) fn last_position(&self) -> Option<u32> {
        self.len().checked_sub(1).map(|i| self.entry(i).1)
    }

    pub(crate) fn write_to(&self, path: &Path) -> Result<()> {
        self.entries.write_to(path, Kind::Offset)
    }

    /// Opens a sealed segment's index file. `Ok(Err(_))` means the file is missing or unusable.
    pub(crate) fn open_sealed(
        path: &Path,
        segment_size: u64,
    ) -> Result<std::result::Result<Self, IndexProblem>> {
        let entries = match Entries::map(path, Kind::Offset)? {
            None => return Ok(Err(IndexProblem("missing".into()))),
            Some(Err(problem)) => return Ok(Err(problem)),
            Some(Ok(entries)) => entries,
        };
        let index = Self { entries };
        Ok(index.check(segment_size).map(|()| index))
    }

    fn check(&self, segment_size: u64) -> std::result::Result<(), IndexProblem> {
        let bytes = self.entries.bytes();
        if !bytes.len().is_multiple_of(OFFSET_ENTRY_LEN) {
            return Err(IndexProblem(format!(
                "size {} is not a multiple of {OFFSET_ENTRY_LEN}",
                bytes.len()
            )));
        }
        let mut previous = (0u32, 0u32);
        for i in 0..self.len() {
            let (relative, position) = self.entry(i);
            if position <= previous.1 || relative < previous.0 {
                return Err(IndexProblem(format!(
                    "entry {i} ({relative}, {position}) does not follow ({}, {})",
                    previous.0, previous.1
                )));
            }
            if u64::from(position) >= segment_size {
                return Err(IndexProblem(format!(
                    "entry {i} points at byte {position}, past the segment's {segment_size} bytes"
                )));
            }
            previous = (relative, position);
        }
        Ok(())
    }
}

/// Time index of one segment.
#[derive(Debug)]
pub(crate) struct TimeIndex {
    entries: Entries,
}

impl TimeIndex {
    pub(crate) fn new() -> Self {
        Self {
            entries: Entries::Memory(Vec::new()),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.bytes().len() / TIME_ENTRY_LEN
    }

    /// Entry `i` as (timestamp, relative offset).
    pub(crate) fn entry(&self, i: usize) -> (i64, u32) {
        let raw = &self.entries.bytes()[i * TIME_ENTRY_LEN..(i + 1) * TIME_ENTRY_LEN];
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&raw[0..8]);
        (i64::from_le_bytes(ts), le_u32(&raw[8..12]))
    }

    pub(crate) fn last(&self) -> Option<(i64, u32)> {
        self.len().checked_sub(1).map(|i| self.entry(i))
    }

    /// Adds an entry if it moves both keys forward; otherwise it says nothing new.
    pub(crate) fn maybe_push(&mut self, timestamp: i64, relative_offset: u32) {
        if let Some((last_ts, last_rel)) = self.last()
            && (timestamp <= last_ts || relative_offset <= last_rel)
        {
            return;
        }
        let mut raw = [0u8; TIME_ENTRY_LEN];
        raw[0..8].copy_from_slice(&timestamp.to_le_bytes());
        raw[8..12].copy_from_slice(&relative_offset.to_le_bytes());
        self.entries.push(&raw);
    }

    /// The relative offset from which to scan for the first record with a timestamp of at least
    /// `timestamp`: the batch of the last entry whose timestamp is below it (all batches up to
    /// it are older), or the segment's start.
    pub(crate) fn scan_start(&self, timestamp: i64) -> u32 {
        let below = partition_point(self.len(), |i| self.entry(i).0 < timestamp);
        if below == 0 {
            0
        } else {
            self.entry(below - 1).1
        }
    }

    /// Drops entries for relative offsets at or after `relative_offset`.
    pub(crate) fn truncate_to_offset(&mut self, relative_offset: u32) {
        let keep = partition_point(self.len(), |i| self.entry(i).1 < relative_offset);
        self.entries.truncate(keep * TIME_ENTRY_LEN);
    }

    pub(crate) fn write_to(&self, path: &Path) -> Result<()> {
        self.entries.write_to(path, Kind::Time)
    }

    pub(crate) fn open_sealed(
        path: &Path,
        segment_records: u64,
    ) -> Result<std::result::Result<Self, IndexProblem>> {
        let entries = match Entries::map(path, Kind::Time)? {
            None => return Ok(Err(IndexProblem("missing".into()))),
            Some(Err(problem)) => return Ok(Err(problem)),
            Some(Ok(entries)) => entries,
        };
        let index = Self { entries };
        Ok(index.check(segment_records).map(|()| index))
    }

    fn check(&self, segment_records: u64) -> std::result::Result<(), IndexProblem> {
        let bytes = self.entries.bytes();
        if !bytes.len().is_multiple_of(TIME_ENTRY_LEN) {
            return Err(IndexProblem(format!(
                "size {} is not a multiple of {TIME_ENTRY_LEN}",
                bytes.len()
            )));
        }
        let mut previous: Option<(i64, u32)> = None;
        for i in 0..self.len() {
            let (timestamp, relative) = self.entry(i);
            if u64::from(relative) >= segment_records {
                return Err(IndexProblem(format!(
                    "entry {i} names relative offset {relative}, past the segment's {segment_records} records"
                )));
            }
            if let Some((last_ts, last_rel)) = previous
                && (timestamp <= last_ts || relative <= last_rel)
            {
                return Err(IndexProblem(format!(
                    "entry {i} ({timestamp}, {relative}) does not follow ({last_ts}, {last_rel})"
                )));
            }
            previous = Some((timestamp, relative));
        }
        Ok(())
    }
}

fn le_u32(raw: &[u8]) -> u32 {
    let mut out = [0u8; 4];
    out.copy_from_slice(&raw[..4]);
    u32::from_le_bytes(out)
}

/// The number of leading indices in `0..len` for which `pred` holds (`pred` must be monotone).
fn partition_point(len: usize, pred: impl Fn(usize) -> bool) -> usize {
    let (mut low, mut high) = (0, len);
    while low < high {
        let mid = low + (high - low) / 2;
        if pred(mid) {
            low = mid + 1;
        } else {
            high = mid;
        }
    }
    low
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_lookup_finds_the_last_entry_strictly_below() {
        let mut index = OffsetIndex::new();
        index.push(10, 4096);
        index.push(20, 8192);
        index.push(20, 8300);
        index.push(35, 12288);
        assert_eq!(index.lookup(0), 0);
        assert_eq!(index.lookup(9), 0);
        assert_eq!(index.lookup(10), 0);
        assert_eq!(index.lookup(11), 4096);
        assert_eq!(index.lookup(20), 4096);
        assert_eq!(index.lookup(21), 8300);
        assert_eq!(index.lookup(34), 8300);
        assert_eq!(index.lookup(1000), 12288);
        index.truncate_to_position(8300);
        assert_eq!(index.len(), 2);
        assert_eq!(index.lookup(1000), 8192);
    }

    #[test]
    fn time_scan_start_is_before_the_first_newer_batch() {
        let mut index = TimeIndex::new();
        index.maybe_push(100, 0);
        index.maybe_push(90, 5); // not newer: ignored
        index.maybe_push(200, 10);
        index.maybe_push(300, 20);
        assert_eq!(index.len(), 3);
        assert_eq!(index.scan_start(50), 0);
        assert_eq!(index.scan_start(150), 0);
        assert_eq!(index.scan_start(200), 0);
        assert_eq!(index.scan_start(201), 10);
        assert_eq!(index.scan_start(10_000), 20);
    }

    #[test]
    fn garbage_files_fail_the_checks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.index");
        std::fs::write(&path, [0u8; 16]).unwrap();
        assert!(OffsetIndex::open_sealed(&path, 1 << 20).unwrap().is_err());
        std::fs::write(&path, [1u8; 13]).unwrap();
        assert!(OffsetIndex::open_sealed(&path, 1 << 20).unwrap().is_err());
        // Entries in order but not the ones the trailer's CRC was computed over.
        let mut good = OffsetIndex::new();
        good.push(3, 100);
        good.push(7, 200);
        good.write_to(&path).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[4] = 101;
        std::fs::write(&path, &bytes).unwrap();
        let problem = OffsetIndex::open_sealed(&path, 1 << 20)
            .unwrap()
            .unwrap_err();
        assert!(problem.0.contains("CRC"), "{problem:?}");
        assert!(
            OffsetIndex::open_sealed(&dir.path().join("missing.index"), 1)
                .unwrap()
                .is_err()
        );
        let mut good = OffsetIndex::new();
        good.push(3, 100);
        good.push(7, 200);
        good.write_to(&path).unwrap();
        let opened = OffsetIndex::open_sealed(&path, 300).unwrap().unwrap();
        assert_eq!(opened.lookup(8), 200);
        assert!(OffsetIndex::open_sealed(&path, 150).unwrap().is_err());
    }
}
