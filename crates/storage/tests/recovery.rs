//! Recovery from damaged partition directories, through the public API: torn tails, flipped
//! bytes in the active and in sealed segments, missing and garbage index files, a garbage
//! `log.meta`, a segment missing from the middle. Each test damages a log written by the log
//! itself, reopens it, and checks the precise outcome: what was cut (and only that), what was
//! rebuilt, what is refused with which error — and that a refused open changes no file.
//!
//! Layout: segments of 4096 bytes and an offset-index entry every 512 bytes give segments of
//! about 24 batches with an index entry every three or four batches (the test
//! `layout_is_what_the_tests_expect` checks what the others rely on). A sealed segment is
//! CRC-checked at open only from its last offset-index entry to its end (and its first batch);
//! the active segment is checked fully.
//!
//! Tests with many cases run them all and then name every failing case (`run_cases`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tempfile::TempDir;
use weir_format::batch::{
    BatchBuilder, BatchHeader, Compression, HEADER_LEN, ValidBatch, check_batch,
};
use weir_storage::{Durability, LogConfig, META_FILE, PartitionLog, StorageError};

const INDEX_INTERVAL: u32 = 512;
/// Batches in most fixtures: about 24 fit in a segment, so this makes three sealed segments
/// and a partly filled active one.
const BATCHES: u64 = 80;

/// Every index file ends with a 16-byte trailer (magic, entry count, CRC of the entries).
const INDEX_TRAILER_LEN: usize = 16;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        index_interval_bytes: INDEX_INTERVAL,
        segment_ms: None,
        retention_bytes: None,
        retention_ms: None,
        durability: Durability::Never,
        ..LogConfig::default()
    }
}

/// Batch `i`: 1 to 3 records, timestamps rising with `i` except for a spike of 600 ms in the
/// last record of every 20th batch (from batch 6), so that a segment's largest timestamp sits
/// early in it, before its last offset-index entry; every fourth batch is lz4.
fn batch(i: u64) -> ValidBatch {
    let compression = if i % 4 == 3 {
        Compression::Lz4
    } else {
        Compression::None
    };
    let mut builder = BatchBuilder::new(compression);
    let count = 1 + i % 3;
    for r in 0..count {
        let mut ts = 10_000 + 10 * i as i64 + r as i64;
        if i % 20 == 6 && r + 1 == count {
            ts += 600;
        }
        let value = format!(
            "batch {i:04} record {r} {}",
            "x".repeat((i * 7 % 50) as usize)
        );
        let key = format!("key-{i}");
        builder.push(ts, Some(key.as_bytes()), Some(value.as_bytes()), &[]);
    }
    ValidBatch::new(builder.build().unwrap()).unwrap()
}

fn term_of(i: u64) -> u64 {
    1 + i / 20
}

/// Everything the log answers about its contents: compared before and after damage.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answers {
    next_offset: u64,
    next_index: u64,
    /// Every batch, read sequentially by entry index.
    entries: Vec<Bytes>,
    /// `read_entries(i, i + 1, 1)` for every index: a lookup through the offset index.
    by_index: Vec<Bytes>,
    /// For every offset, the entry index of the first batch `read(offset, 1)` returns.
    by_offset: Vec<u64>,
    /// `offset_for_timestamp` for every timestamp from below the oldest to above the newest.
    by_timestamp: Vec<(i64, Option<u64>)>,
}

fn answers(log: &PartitionLog) -> Answers {
    let bounds = log.bounds().unwrap();
    let mut entries = Vec::new();
    let mut next = bounds.first_index.unwrap_or(bounds.next_index);
    loop {
        let read = log.read_entries(next, u64::MAX, 1 << 20).unwrap();
        if read.is_empty() {
            break;
        }
        for batch in read.batches {
            assert_eq!(batch.header().index, next);
            next += 1;
            entries.push(batch.bytes().clone());
        }
    }
    assert_eq!(next, bounds.next_index);
    let by_index = (0..bounds.next_index)
        .map(|i| {
            let read = log.read_entries(i, i + 1, 1).unwrap();
            assert_eq!(read.batches.len(), 1);
            read.batches[0].bytes().clone()
        })
        .collect();
    let by_offset = (0..bounds.next_offset)
        .map(|o| log.read(o, 1).unwrap().batches[0].header().index)
        .collect();
    let headers: Vec<BatchHeader> = entries
        .iter()
        .map(|b| *ValidBatch::new(b.clone()).unwrap().header())
        .collect();
    let low = headers.iter().map(|h| h.first_timestamp).min().unwrap_or(0);
    let high = headers.iter().map(|h| h.max_timestamp).max().unwrap_or(0);
    let by_timestamp = (low - 2..=high + 2)
        .map(|ts| (ts, log.offset_for_timestamp(ts).unwrap()))
        .collect();
    Answers {
        next_offset: bounds.next_offset,
        next_index: bounds.next_index,
        entries,
        by_index,
        by_offset,
        by_timestamp,
    }
}

/// Compares answers field by field, naming the first difference (the full values are long).
fn assert_same_answers(after: &Answers, before: &Answers, context: &str) {
    assert_eq!(
        (after.next_offset, after.next_index),
        (before.next_offset, before.next_index),
        "{context}: log end"
    );
    assert_eq!(
        after.entries.len(),
        before.entries.len(),
        "{context}: entry count"
    );
    for (i, (a, b)) in after.entries.iter().zip(&before.entries).enumerate() {
        assert_eq!(a, b, "{context}: entry {i} read sequentially");
    }
    for (i, (a, b)) in after.by_index.iter().zip(&before.by_index).enumerate() {
        assert_eq!(a, b, "{context}: entry {i} looked up by index");
    }
    for (o, (a, b)) in after.by_offset.iter().zip(&before.by_offset).enumerate() {
        assert_eq!(a, b, "{context}: read from offset {o}");
    }
    assert_eq!(after.by_timestamp.len(), before.by_timestamp.len());
    for (a, b) in after.by_timestamp.iter().zip(&before.by_timestamp) {
        assert_eq!(a, b, "{context}: offset_for_timestamp({})", b.0);
    }
}

/// A batch as found in a segment file.
#[derive(Debug, Clone, Copy)]
struct Located {
    position: u64,
    len: u64,
    header: BatchHeader,
}

impl Located {
    fn end(&self) -> u64 {
        self.position + self.len
    }
}

#[derive(Debug, Clone)]
struct SegmentFiles {
    log: PathBuf,
    index: PathBuf,
    time_index: PathBuf,
    batches: Vec<Located>,
}

impl SegmentFiles {
    fn last(&self) -> Located {
        *self.batches.last().expect("a batch")
    }

    /// Positions of the offset-index entries, from the `.index` file (entries, then a trailer).
    fn index_positions(&self) -> Vec<u64> {
        let bytes = fs::read(&self.index).unwrap();
        bytes[..bytes.len() - INDEX_TRAILER_LEN]
            .chunks(8)
            .map(|entry| u64::from(u32::from_le_bytes(entry[4..8].try_into().unwrap())))
            .collect()
    }
}

/// A log of `batches` batches written by the log and closed, and its answers.
struct Fixture {
    dir: TempDir,
    before: Answers,
}

impl Fixture {
    fn new(batches: u64) -> Self {
        Self::build(|i, _| i < batches)
    }

    /// Appends until a segment rolls for the second time: the active segment then holds
    /// exactly one batch.
    fn with_one_batch_in_the_active_segment() -> Self {
        Self::build(|_, segments| segments < 3)
    }

    fn build(mut more: impl FnMut(u64, usize) -> bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = PartitionLog::open(dir.path(), config()).unwrap();
        let mut i = 0;
        while more(i, log.bounds().unwrap().segments) {
            let appended = log.append(&batch(i), term_of(i)).unwrap();
            assert_eq!(appended.index, i);
            i += 1;
        }
        let before = answers(&log);
        log.close().unwrap();
        Self { dir, before }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn open(&self) -> Result<PartitionLog, StorageError> {
        PartitionLog::open(self.path(), config())
    }

    /// The segments, oldest first, parsed from their files.
    fn segments(&self) -> Vec<SegmentFiles> {
        let mut logs: Vec<PathBuf> = fs::read_dir(self.path())
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        logs.sort();
        logs.into_iter()
            .map(|log| {
                let data = fs::read(&log).unwrap();
                let mut batches = Vec::new();
                let mut position = 0usize;
                while position < data.len() {
                    let header = check_batch(&data[position..]).unwrap();
                    batches.push(Located {
                        position: position as u64,
                        len: u64::from(header.length),
                        header,
                    });
                    position += header.len();
                }
                SegmentFiles {
                    index: log.with_extension("index"),
                    time_index: log.with_extension("timeindex"),
                    log,
                    batches,
                }
            })
            .collect()
    }

    /// Every file in the directory with its contents.
    fn files(&self) -> BTreeMap<String, Vec<u8>> {
        fs::read_dir(self.path())
            .unwrap()
            .map(|entry| {
                let entry = entry.unwrap();
                let name = entry.file_name().into_string().unwrap();
                (name, fs::read(entry.path()).unwrap())
            })
            .collect()
    }

    /// Opening must fail with `Corrupt` naming `path` at `position`, and change no file.
    fn assert_open_refused(&self, path: &Path, position: u64, context: &str) -> String {
        let files = self.files();
        let err = self.open().unwrap_err();
        assert!(err.is_fatal(), "{context}: {err}");
        let reason = match &err {
            StorageError::Corrupt {
                path: p,
                position: at,
                reason,
            } => {
                assert_eq!((p.as_path(), *at), (path, position), "{context}: {err}");
                reason.clone()
            }
            other => panic!("{context}: expected Corrupt, got {other:?}"),
        };
        let message = err.to_string();
        assert!(
            message.contains(&path.display().to_string()),
            "{context}: the error does not name the file: {message}"
        );
        assert!(
            self.files() == files,
            "{context}: a refused open changed files in the directory"
        );
        reason
    }
}

fn flip(path: &Path, position: u64) {
    let mut data = fs::read(path).unwrap();
    data[position as usize] ^= 0xff;
    fs::write(path, data).unwrap();
}

fn rewrite(path: &Path, change: impl FnOnce(&mut Vec<u8>)) {
    let mut data = fs::read(path).unwrap();
    change(&mut data);
    fs::write(path, data).unwrap();
}

/// Deterministic junk (SplitMix64).
fn junk(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)) as u8
        })
        .collect()
}

/// Runs `check` on every case, then fails naming every case that failed (each failure's own
/// message is printed as it happens), so that one broken case does not hide the others.
fn run_cases<T>(cases: impl IntoIterator<Item = (String, T)>, check: impl Fn(&str, T)) {
    let failed: Vec<String> = cases
        .into_iter()
        .filter_map(|(name, case)| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&name, case)))
                .err()
                .map(|_| name)
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} case(s) failed: {failed:#?}",
        failed.len()
    );
}

/// After a cut that kept the first `kept` entries: those read back unchanged, nothing else is
/// there, the next append continues at the cut, and a second open finds nothing to repair.
fn assert_cut_to(fixture: &Fixture, log: PartitionLog, kept: usize, context: &str) {
    let before = &fixture.before;
    let now = answers(&log);
    assert_eq!(now.next_index, kept as u64, "{context}: next index");
    assert_eq!(
        &now.entries[..],
        &before.entries[..kept],
        "{context}: kept entries"
    );
    let next_offset = before
        .entries
        .get(kept)
        .map_or(before.next_offset, |b| check_batch(b).unwrap().base_offset);
    assert_eq!(now.next_offset, next_offset, "{context}: next offset");
    let i = kept as u64;
    let appended = log.append(&batch(1000 + i), term_of(i)).unwrap();
    assert_eq!(
        (appended.index, appended.base_offset),
        (i, next_offset),
        "{context}: the next append"
    );
    log.close().unwrap();
    let log = fixture.open().unwrap();
    assert_eq!(log.recovery().tail_repair, None, "{context}: second open");
    assert!(
        log.recovery().index_rebuilds.is_empty(),
        "{context}: second open"
    );
    let read = log.read_entries(i, u64::MAX, 1 << 20).unwrap();
    assert_eq!(read.batches.len(), 1);
    assert_eq!(
        read.batches[0].payload(),
        batch(1000 + i).payload(),
        "{context}: the appended batch after a reopen"
    );
    assert_eq!(answers(&log).entries[..kept], before.entries[..kept]);
}

#[test]
fn layout_is_what_the_tests_expect() {
    let fixture = Fixture::new(BATCHES);
    let segments = fixture.segments();
    assert!(segments.len() >= 4, "{} segments", segments.len());
    for sealed in &segments[..segments.len() - 1] {
        let positions = sealed.index_positions();
        assert!(positions.len() >= 3, "{positions:?}");
        let last_entry = *positions.last().unwrap();
        // Batches wholly between the first batch and the last index entry: not checked at open.
        assert!(
            sealed.batches[1..]
                .iter()
                .any(|b| b.end() <= last_entry && !positions.contains(&b.position)),
            "{positions:?}"
        );
        assert!(fs::metadata(&sealed.time_index).unwrap().len() >= 24);
    }
    // The spike in batch 6 is the earliest record at or after 10_500, and it lies before the
    // last index entry of its segment: the batches from that entry on are all older.
    let spike = fixture
        .before
        .by_timestamp
        .iter()
        .find(|(ts, _)| *ts == 10_500)
        .unwrap();
    let batch_6 = check_batch(&fixture.before.entries[6]).unwrap();
    assert_eq!(spike.1, Some(batch_6.next_offset() - 1));
    let last_entry = *segments[0].index_positions().last().unwrap();
    assert!(
        segments[0]
            .batches
            .iter()
            .filter(|b| b.position >= last_entry)
            .all(|b| b.header.max_timestamp < 10_500)
    );
}

#[test]
fn torn_tail_is_cut_back_to_the_last_whole_batch() {
    enum Tear {
        /// Keep this many bytes of the last batch.
        KeepOfLast(u64),
        /// Append these bytes after the last whole batch.
        Garbage(Vec<u8>),
        /// Both.
        KeepOfLastThenGarbage(u64, Vec<u8>),
    }
    let cases = [
        ("mid header", Tear::KeepOfLast(30)),
        ("one header byte", Tear::KeepOfLast(1)),
        ("header only", Tear::KeepOfLast(HEADER_LEN as u64)),
        ("mid payload", Tear::KeepOfLast(HEADER_LEN as u64 + 20)),
        ("all but one byte", Tear::KeepOfLast(u64::MAX)),
        ("random garbage", Tear::Garbage(junk(1, 37))),
        ("a zero-filled page", Tear::Garbage(vec![0; 4096])),
        ("a few zeros", Tear::Garbage(vec![0; 5])),
        (
            "torn and garbage",
            Tear::KeepOfLastThenGarbage(100, junk(2, 300)),
        ),
    ];
    let cases = cases
        .into_iter()
        .map(|(name, tear)| (name.to_owned(), tear));
    run_cases(cases, |name, tear| {
        let fixture = Fixture::new(BATCHES);
        let active = fixture.segments().pop().unwrap();
        let last = active.last();
        let entries = fixture.before.entries.len();
        let (position, dropped, kept) = match &tear {
            Tear::KeepOfLast(keep) => {
                let keep = (*keep).min(last.len - 1);
                rewrite(&active.log, |d| d.truncate((last.position + keep) as usize));
                (last.position, keep, entries - 1)
            }
            Tear::Garbage(garbage) => {
                rewrite(&active.log, |d| d.extend_from_slice(garbage));
                (last.end(), garbage.len() as u64, entries)
            }
            Tear::KeepOfLastThenGarbage(keep, garbage) => {
                rewrite(&active.log, |d| {
                    d.truncate((last.position + keep) as usize);
                    d.extend_from_slice(garbage);
                });
                (last.position, keep + garbage.len() as u64, entries - 1)
            }
        };
        let log = fixture.open().unwrap();
        let repair = log.recovery().tail_repair.clone().expect(name);
        assert_eq!(
            (&repair.path, repair.position, repair.dropped_bytes),
            (&active.log, position, dropped),
            "{name}: {repair:?}"
        );
        assert!(!repair.reason.is_empty());
        assert!(log.recovery().index_rebuilds.is_empty(), "{name}");
        assert_eq!(fs::metadata(&active.log).unwrap().len(), position, "{name}");
        assert_cut_to(&fixture, log, kept, name);
    });
}

#[test]
fn torn_only_batch_of_the_active_segment_leaves_it_empty() {
    let fixture = Fixture::with_one_batch_in_the_active_segment();
    let segments = fixture.segments();
    let active = segments.last().unwrap();
    assert_eq!(active.batches.len(), 1);
    let only = active.last();
    rewrite(&active.log, |d| d.truncate(50));
    let log = fixture.open().unwrap();
    let repair = log.recovery().tail_repair.clone().unwrap();
    assert_eq!((repair.position, repair.dropped_bytes), (0, 50));
    assert_eq!(log.bounds().unwrap().segments, segments.len());
    assert_cut_to(&fixture, log, only.header.index as usize, "torn only batch");
}

#[test]
fn flipped_byte_in_the_last_batch_cuts_only_that_batch() {
    let fixture = Fixture::new(BATCHES);
    let last = fixture.segments().pop().unwrap().last();
    let at = [
        0,
        1,
        3,
        4,
        5,
        8,
        12,
        20,
        30,
        34,
        40,
        50,
        60,
        68,
        HEADER_LEN as u64,
        last.len / 2,
        last.len - 1,
    ];
    let cases = at.map(|byte| (format!("byte {byte} of the last batch"), byte));
    run_cases(cases, |context, byte| {
        let fixture = Fixture::new(BATCHES);
        let active = fixture.segments().pop().unwrap();
        flip(&active.log, last.position + byte);
        let log = fixture.open().unwrap();
        let repair = log.recovery().tail_repair.clone().expect(context);
        assert_eq!(
            (&repair.path, repair.position, repair.dropped_bytes),
            (&active.log, last.position, last.len),
            "{context}: {repair:?}"
        );
        assert_cut_to(&fixture, log, fixture.before.entries.len() - 1, context);
    });
}

#[test]
fn flipped_byte_before_valid_batches_of_the_active_segment_refuses_to_open() {
    let fixture = Fixture::new(BATCHES);
    let active = fixture.segments().pop().unwrap();
    assert!(active.batches.len() >= 4);
    let count = active.batches.len();
    let cases = [0, 1, count / 2, count - 2].into_iter().flat_map(|victim| {
        [0, 5, 12, 36, HEADER_LEN as u64 + 3].map(|byte| {
            let name = format!("byte {byte} of batch {victim} of {count} in the active segment");
            (name, (victim, byte))
        })
    });
    run_cases(cases, |context, (victim, byte)| {
        let fixture = Fixture::new(BATCHES);
        let active = fixture.segments().pop().unwrap();
        let target = active.batches[victim];
        flip(&active.log, target.position + byte);
        let reason = fixture.assert_open_refused(&active.log, target.position, context);
        assert!(
            reason.contains("valid batch follows"),
            "{context}: {reason}"
        );
        // Still refused, still unchanged: nothing was dropped on the way.
        fixture.assert_open_refused(&active.log, target.position, context);
    });
}

#[test]
fn flipped_byte_near_the_end_of_a_sealed_segment_refuses_to_open() {
    let fixture = Fixture::new(BATCHES);
    let segments = fixture.segments();
    let sealed = &segments[0];
    let last_entry = *sealed.index_positions().last().unwrap();
    let at_entry = sealed
        .batches
        .iter()
        .position(|b| b.position == last_entry)
        .unwrap();
    assert!(
        at_entry + 1 < sealed.batches.len(),
        "want a batch after the last index entry"
    );
    // (batch, byte in it): the batch the last entry points at, those after it, its very last
    // byte, and the first batch (always checked).
    let mut cases = vec![
        (at_entry, 40),
        (at_entry, 5),
        (at_entry + 1, HEADER_LEN as u64),
    ];
    let last = sealed.batches.len() - 1;
    cases.push((last, sealed.batches[last].len - 1));
    cases.push((last, 0));
    cases.push((0, HEADER_LEN as u64 + 1));
    let cases = cases.into_iter().map(|(victim, byte)| {
        let name = format!("byte {byte} of batch {victim} of a sealed segment");
        (name, (victim, byte))
    });
    run_cases(cases, |context, (victim, byte)| {
        let fixture = Fixture::new(BATCHES);
        let sealed = fixture.segments().remove(0);
        let target = sealed.batches[victim];
        flip(&sealed.log, target.position + byte);
        fixture.assert_open_refused(&sealed.log, target.position, context);
    });
}

#[test]
fn flipped_byte_early_in_a_sealed_segment_stops_the_log_when_read() {
    let fixture = Fixture::new(BATCHES);
    let segments = fixture.segments();
    let sealed = &segments[0];
    let positions = sealed.index_positions();
    let last_entry = *positions.last().unwrap();
    // A batch after the first, ending before the last index entry, none of whose batches
    // before it holds a timestamp as large as its own.
    let victim = (1..sealed.batches.len())
        .find(|&k| {
            let b = sealed.batches[k];
            b.end() <= last_entry
                && !positions.contains(&b.position)
                && sealed.batches[..k]
                    .iter()
                    .all(|a| a.header.max_timestamp < b.header.first_timestamp)
        })
        .unwrap();
    let target = sealed.batches[victim];
    type Access = fn(&PartitionLog, &BatchHeader) -> Result<(), StorageError>;
    let accesses: [(&str, Access); 4] = [
        ("read from its offset", |log, h| {
            log.read(h.base_offset, 1 << 20).map(drop)
        }),
        ("read by entry index", |log, h| {
            log.read_entries(h.index, u64::MAX, 1 << 20).map(drop)
        }),
        ("read spanning it", |log, _| log.read(0, 1 << 20).map(drop)),
        ("offset_for_timestamp", |log, h| {
            log.offset_for_timestamp(h.first_timestamp).map(drop)
        }),
    ];
    let cases = accesses.into_iter().flat_map(|(name, access)| {
        [HEADER_LEN as u64 + 2, target.len - 1, 6].map(|byte| {
            (
                format!("{name}, byte {byte} of batch {victim}"),
                (access, byte),
            )
        })
    });
    run_cases(cases, |context, (access, byte)| {
        let fixture = Fixture::new(BATCHES);
        let sealed = fixture.segments().remove(0);
        flip(&sealed.log, target.position + byte);
        let files = fixture.files();
        let log = fixture.open().unwrap();
        assert_eq!(log.recovery().tail_repair, None, "{context}");
        assert!(log.recovery().index_rebuilds.is_empty(), "{context}");
        // What lies before the damage is served.
        let first = log.read(0, 1).unwrap();
        assert_eq!(first.batches.len(), 1);
        assert_eq!(first.batches[0].bytes(), &fixture.before.entries[0]);
        let err = access(&log, &target.header).unwrap_err();
        assert!(err.is_fatal(), "{context}: {err}");
        match &err {
            StorageError::Corrupt { path, position, .. } => {
                assert_eq!(
                    (path, *position),
                    (&sealed.log, target.position),
                    "{context}"
                );
            }
            other => panic!("{context}: expected Corrupt, got {other:?}"),
        }
        // From now on the log refuses everything.
        let refusals: [(&str, Result<(), StorageError>); 7] = [
            ("read", log.read(0, 1).map(drop)),
            ("read_entries", log.read_entries(0, 1, 1).map(drop)),
            ("append", log.append(&batch(99), 9).map(drop)),
            (
                "offset_for_timestamp",
                log.offset_for_timestamp(0).map(drop),
            ),
            ("bounds", log.bounds().map(drop)),
            ("flush", log.flush()),
            ("roll", log.roll()),
        ];
        for (what, result) in refusals {
            match result {
                Err(err @ StorageError::Stopped { .. }) => assert!(err.is_fatal()),
                other => panic!("{context}: {what} after the corruption gave {other:?}"),
            }
        }
        assert!(
            matches!(log.close(), Err(StorageError::Stopped { .. })),
            "{context}: close"
        );
        assert!(fixture.files() == files, "{context}: files changed");
    });
}

/// Picks one index file of a segment.
type IndexFile = fn(&SegmentFiles) -> PathBuf;
/// Changes a file's contents in place.
type Change = fn(&mut Vec<u8>);
/// Index damage: (name, which file, what to do to it). `None` removes the file.
type Damage = (&'static str, IndexFile, Option<Change>);

fn offset_index(s: &SegmentFiles) -> PathBuf {
    s.index.clone()
}

fn time_index(s: &SegmentFiles) -> PathBuf {
    s.time_index.clone()
}

/// Checks one damage to the indexes of the sealed segments `victims`: the open rebuilds
/// exactly the damaged files, answers as before, and the rebuilt files are the originals and
/// open cleanly next time.
fn check_index_damage(name: &str, victims: &[usize], damages: &[(IndexFile, Option<Change>)]) {
    let fixture = Fixture::new(BATCHES);
    let segments = fixture.segments();
    let originals = fixture.files();
    let mut damaged = Vec::new();
    for &victim in victims {
        for (file, change) in damages {
            let path = file(&segments[victim]);
            match change {
                None => fs::remove_file(&path).unwrap(),
                Some(change) => rewrite(&path, change),
            }
            damaged.push(path);
        }
    }
    damaged.sort();
    let log = fixture.open().unwrap();
    let mut rebuilt: Vec<PathBuf> = log
        .recovery()
        .index_rebuilds
        .iter()
        .map(|r| r.path.clone())
        .collect();
    rebuilt.sort();
    assert_eq!(
        rebuilt,
        damaged,
        "{name}: {:?}",
        log.recovery().index_rebuilds
    );
    assert_eq!(log.recovery().tail_repair, None, "{name}");
    assert_same_answers(&answers(&log), &fixture.before, name);
    log.close().unwrap();
    assert!(
        fixture.files() == originals,
        "{name}: the rebuilt index files differ from the ones the log wrote"
    );
    let log = fixture.open().unwrap();
    assert!(
        log.recovery().index_rebuilds.is_empty(),
        "{name}: second open rebuilt again"
    );
    assert_same_answers(&answers(&log), &fixture.before, name);
}

#[test]
fn missing_and_garbage_index_files_are_rebuilt() {
    let damages: Vec<Damage> = vec![
        ("missing .index", offset_index, None),
        ("missing .timeindex", time_index, None),
        (
            "random .index",
            offset_index,
            Some(|d| *d = junk(3, d.len())),
        ),
        (
            "random .timeindex",
            time_index,
            Some(|d| *d = junk(4, d.len())),
        ),
        ("zero-filled .index", offset_index, Some(|d| d.fill(0))),
        ("zero-filled .timeindex", time_index, Some(|d| d.fill(0))),
        ("empty .index", offset_index, Some(Vec::clear)),
        ("empty .timeindex", time_index, Some(Vec::clear)),
        (
            "odd-length .index",
            offset_index,
            Some(|d| d.extend_from_slice(&[1, 2, 3])),
        ),
        (
            "odd-length .timeindex",
            time_index,
            Some(|d| d.extend_from_slice(&[1, 2, 3])),
        ),
        (
            "truncated mid-entry .index",
            offset_index,
            Some(|d| d.truncate(d.len() - 3)),
        ),
        (
            "truncated mid-entry .timeindex",
            time_index,
            Some(|d| d.truncate(d.len() - 5)),
        ),
        (
            "damaged trailer of .index",
            offset_index,
            Some(|d| {
                let n = d.len();
                d[n - 1] ^= 0x40;
            }),
        ),
        (
            ".index entry past the end",
            offset_index,
            Some(|d| {
                let n = d.len() - INDEX_TRAILER_LEN;
                d[n - 4..n].copy_from_slice(&1_000_000u32.to_le_bytes());
            }),
        ),
        (
            ".timeindex entry past the last record",
            time_index,
            Some(|d| {
                let n = d.len() - INDEX_TRAILER_LEN;
                d[n - 4..n].copy_from_slice(&1_000_000u32.to_le_bytes());
            }),
        ),
        (
            ".index last entry off a batch boundary",
            offset_index,
            Some(|d| {
                let n = d.len() - INDEX_TRAILER_LEN;
                let position = u32::from_le_bytes(d[n - 4..n].try_into().unwrap());
                d[n - 4..n].copy_from_slice(&(position + 1).to_le_bytes());
            }),
        ),
    ];
    let mut cases: Vec<_> = damages
        .into_iter()
        .map(|(name, file, change)| (name.to_owned(), (vec![0], vec![(file, change)])))
        .collect();
    cases.push((
        "every index file of two sealed segments missing".to_owned(),
        (vec![0, 1], vec![(offset_index, None), (time_index, None)]),
    ));
    run_cases(cases, |name, (victims, damages)| {
        check_index_damage(name, &victims, &damages);
    });
}

/// A sparse index with entries missing at its end still points at batch boundaries; a time
/// index without its last entries no longer knows the segment's largest timestamp. Either way
/// the answers must not change.
#[test]
fn index_files_truncated_to_whole_entries_give_the_same_answers() {
    let cases = [
        (
            ".index cut to its first entry",
            offset_index as IndexFile,
            8usize,
        ),
        (".timeindex cut to its first entry", time_index, 12),
    ]
    .map(|(name, file, keep)| (name.to_owned(), (file, keep)));
    run_cases(cases, |context, (file, keep)| {
        let fixture = Fixture::new(BATCHES);
        let segments = fixture.segments();
        rewrite(&file(&segments[0]), |d| d.truncate(keep));
        let log = fixture.open().unwrap();
        assert_same_answers(&answers(&log), &fixture.before, context);
        log.close().unwrap();
        let log = fixture.open().unwrap();
        assert_same_answers(&answers(&log), &fixture.before, context);
    });
}

/// Index entries damaged in place (a flipped bit) can keep an index file well-formed: the
/// open must then either notice and rebuild it, or the answers must not depend on it. Either
/// way reads of intact data must not fail and must not skip or misplace records.
#[test]
fn index_entries_damaged_in_place_give_the_same_answers() {
    let cases: [(&str, IndexFile, Change); 3] = [
        (
            "first .index entry one byte past its batch",
            offset_index,
            |d| {
                let position = u32::from_le_bytes(d[4..8].try_into().unwrap());
                d[4..8].copy_from_slice(&(position + 1).to_le_bytes());
            },
        ),
        (
            "second .index entry with the first one's relative offset",
            offset_index,
            |d| {
                let first: [u8; 4] = d[0..4].try_into().unwrap();
                d[8..12].copy_from_slice(&first);
            },
        ),
        (
            "second .timeindex entry with a timestamp just above the first one's",
            time_index,
            |d| {
                let first = i64::from_le_bytes(d[0..8].try_into().unwrap());
                d[12..20].copy_from_slice(&(first + 1).to_le_bytes());
            },
        ),
    ];
    let cases = cases.map(|(name, file, change)| (name.to_owned(), (file, change)));
    run_cases(cases, |name, (file, change)| {
        let fixture = Fixture::new(BATCHES);
        let segments = fixture.segments();
        rewrite(&file(&segments[0]), change);
        let log = fixture.open().unwrap();
        assert_same_answers(&answers(&log), &fixture.before, name);
        log.close().unwrap();
        let log = fixture.open().unwrap();
        assert_same_answers(&answers(&log), &fixture.before, name);
    });
}

#[test]
fn garbage_log_meta_refuses_to_open() {
    let valid = "weir partition log v1\nlog_start_offset=0\nnext_index=0\n";
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("random bytes", junk(5, 64)),
        ("empty", Vec::new()),
        ("zeros", vec![0; 64]),
        ("text", b"hello world\n".to_vec()),
        ("header only", b"weir partition log v1\n".to_vec()),
        (
            "missing next_index",
            b"weir partition log v1\nlog_start_offset=0\n".to_vec(),
        ),
        (
            "not a number",
            b"weir partition log v1\nlog_start_offset=zero\nnext_index=0\n".to_vec(),
        ),
        ("unknown key", format!("{valid}colour=blue\n").into_bytes()),
        ("not key=value", format!("{valid}oops\n").into_bytes()),
        ("other version", valid.replace("v1", "v9").into_bytes()),
    ];
    let cases = cases
        .into_iter()
        .map(|(name, contents)| (name.to_owned(), contents));
    run_cases(cases, |name, contents| {
        let fixture = Fixture::new(BATCHES);
        let meta = fixture.path().join(META_FILE);
        fs::write(&meta, &contents).unwrap();
        fixture.assert_open_refused(&meta, 0, name);
    });
    // The control: a well-formed one opens.
    let fixture = Fixture::new(BATCHES);
    fs::write(fixture.path().join(META_FILE), valid).unwrap();
    let log = fixture.open().unwrap();
    assert_same_answers(&answers(&log), &fixture.before, "valid log.meta");
}

#[test]
fn segment_missing_from_the_middle_refuses_to_open() {
    let fixture = Fixture::new(BATCHES);
    let count = fixture.segments().len();
    assert!(count >= 4, "{count} segments");
    let cases = [(1, false), (1, true), (count - 2, false)].map(|(victim, all_files)| {
        let name = format!("segment {victim} of {count} missing (indexes too: {all_files})");
        (name, (victim, all_files))
    });
    run_cases(cases, |context, (victim, all_files)| {
        let fixture = Fixture::new(BATCHES);
        let segments = fixture.segments();
        let gone = &segments[victim];
        fs::remove_file(&gone.log).unwrap();
        if all_files {
            fs::remove_file(&gone.index).unwrap();
            fs::remove_file(&gone.time_index).unwrap();
        }
        let reason = fixture.assert_open_refused(&segments[victim + 1].log, 0, context);
        let previous_end = segments[victim - 1].last().header.next_offset();
        assert!(
            reason.contains(&previous_end.to_string()),
            "{context}: {reason}"
        );
    });
}
