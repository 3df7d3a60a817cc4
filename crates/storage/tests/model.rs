//! Property test: random sequences of append, read, roll, truncate_suffix, truncate_from_index,
//! truncate_prefix, timestamp lookups and reopen, checked step by step against an in-memory model
//! of the log.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use weir_format::batch::{BatchBuilder, Compression, ValidBatch, encode_control_batch};
use weir_storage::{Durability, LogConfig, PartitionLog, StorageError};

#[derive(Debug, Clone)]
enum Op {
    /// Records with these timestamps (empty: a control batch).
    Append {
        timestamps: Vec<i64>,
        lz4: bool,
    },
    NewTerm,
    Read {
        at: u16,
        max_bytes: u16,
    },
    ReadEntries {
        at: u16,
        count: u8,
    },
    Roll,
    TruncateSuffix {
        at: u16,
        exact: bool,
    },
    TruncateFromIndex {
        at: u16,
    },
    TruncatePrefix {
        at: u16,
    },
    Timestamp {
        ts: i64,
    },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (proptest::collection::vec(0i64..200, 0..6), any::<bool>())
            .prop_map(|(timestamps, lz4)| Op::Append { timestamps, lz4 }),
        1 => Just(Op::NewTerm),
        3 => (any::<u16>(), 1u16..2000).prop_map(|(at, max_bytes)| Op::Read { at, max_bytes }),
        2 => (any::<u16>(), 1u8..10).prop_map(|(at, count)| Op::ReadEntries { at, count }),
        1 => Just(Op::Roll),
        1 => (any::<u16>(), any::<bool>()).prop_map(|(at, exact)| Op::TruncateSuffix { at, exact }),
        1 => any::<u16>().prop_map(|at| Op::TruncateFromIndex { at }),
        1 => any::<u16>().prop_map(|at| Op::TruncatePrefix { at }),
        2 => (0i64..220).prop_map(|ts| Op::Timestamp { ts }),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Debug, Clone)]
struct ModelBatch {
    index: u64,
    term: u64,
    base_offset: u64,
    /// (offset, timestamp, value) of each record.
    records: Vec<(u64, i64, Vec<u8>)>,
}

impl ModelBatch {
    fn next_offset(&self) -> u64 {
        self.base_offset + self.records.len() as u64
    }
}

#[derive(Debug, Default)]
struct Model {
    batches: Vec<ModelBatch>,
    log_start: u64,
    next_offset: u64,
    next_index: u64,
    term: u64,
}

impl Model {
    fn certainly_stored(&self, batch: &ModelBatch) -> bool {
        if batch.records.is_empty() {
            batch.base_offset > self.log_start
        } else {
            batch.next_offset() > self.log_start
        }
    }

    fn first_readable_batch(&self, from: u64) -> Option<&ModelBatch> {
        self.batches
            .iter()
            .find(|b| !b.records.is_empty() && b.next_offset() > from)
    }
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 1024,
        index_interval_bytes: 128,
        durability: Durability::Never,
        ..LogConfig::default()
    }
}

fn check(log: &PartitionLog, model: &Model) -> Result<(), TestCaseError> {
    let bounds = log
        .bounds()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(bounds.next_offset, model.next_offset);
    prop_assert_eq!(bounds.next_index, model.next_index);
    prop_assert_eq!(bounds.log_start_offset, model.log_start);
    // Batches wholly below the log start may or may not still be stored (that depends on
    // segment boundaries); the last entry is certain only when it is above the start.
    let last = model.batches.last();
    if last.is_none_or(|b| model.certainly_stored(b)) {
        prop_assert_eq!(bounds.last_entry, last.map(|b| (b.index, b.term)));
    }
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
    let fail = |e: StorageError| TestCaseError::fail(e.to_string());
    let mut log = PartitionLog::open(dir.path(), config()).map_err(fail)?;
    let mut model = Model {
        term: 1,
        ..Model::default()
    };
    let mut value_counter = 0u64;
    for op in ops {
        match op {
            Op::Append { timestamps, lz4 } => {
                let (bytes, records) = if timestamps.is_empty() {
                    (encode_control_batch(0, b"control"), Vec::new())
                } else {
                    let compression = if lz4 {
                        Compression::Lz4
                    } else {
                        Compression::None
                    };
                    let mut builder = BatchBuilder::new(compression);
                    let mut records = Vec::new();
                    for (i, ts) in timestamps.iter().enumerate() {
                        value_counter += 1;
                        let value = format!("v{value_counter}").into_bytes();
                        builder.push(*ts, None, Some(&value), &[]);
                        records.push((model.next_offset + i as u64, *ts, value));
                    }
                    (builder.build().expect("records"), records)
                };
                let appended = log
                    .append(&ValidBatch::new(bytes).expect("valid"), model.term)
                    .map_err(fail)?;
                prop_assert_eq!(appended.base_offset, model.next_offset);
                prop_assert_eq!(appended.index, model.next_index);
                let batch = ModelBatch {
                    index: model.next_index,
                    term: model.term,
                    base_offset: model.next_offset,
                    records,
                };
                model.next_offset = batch.next_offset();
                model.next_index += 1;
                model.batches.push(batch);
            }
            Op::NewTerm => model.term += 1,
            Op::Read { at, max_bytes } => {
                let span = model.next_offset - model.log_start + 1;
                let from = model.log_start + u64::from(at) % span;
                let read = log.read(from, usize::from(max_bytes)).map_err(fail)?;
                match model.first_readable_batch(from) {
                    None => prop_assert!(read.is_empty()),
                    Some(expected) => {
                        prop_assert!(!read.is_empty());
                        let first = read.batches[0].header();
                        prop_assert_eq!(first.index, expected.index);
                        let start = model
                            .batches
                            .iter()
                            .position(|b| b.index == expected.index)
                            .expect("in model");
                        let mut total = 0usize;
                        for (batch, want) in read.batches.iter().zip(&model.batches[start..]) {
                            prop_assert_eq!(batch.header().index, want.index);
                            prop_assert_eq!(batch.header().term, want.term);
                            prop_assert_eq!(batch.header().base_offset, want.base_offset);
                            let records = batch
                                .records()
                                .map_err(|e| TestCaseError::fail(e.to_string()))?;
                            let got: Vec<_> = records
                                .iter()
                                .map(|r| {
                                    (
                                        r.offset,
                                        r.timestamp,
                                        r.value.as_deref().unwrap_or_default().to_vec(),
                                    )
                                })
                                .collect();
                            prop_assert_eq!(&got, &want.records);
                            total += batch.bytes().len();
                        }
                        prop_assert!(read.batches.len() <= model.batches.len() - start);
                        prop_assert_eq!(total, read.data.len());
                        prop_assert!(read.batches.len() == 1 || total <= usize::from(max_bytes));
                    }
                }
            }
            Op::ReadEntries { at, count } => {
                let bounds = log.bounds().map_err(fail)?;
                let Some(first) = bounds.first_index else {
                    continue;
                };
                let from = first + u64::from(at) % (model.next_index - first + 1);
                let until = from + u64::from(count);
                // A read stops at a segment's end; keep reading like a caller would.
                let mut got = Vec::new();
                let mut next = from;
                loop {
                    let read = log.read_entries(next, until, usize::MAX).map_err(fail)?;
                    let Some(last) = read.batches.last() else {
                        break;
                    };
                    next = last.header().index + 1;
                    got.extend(read.batches.iter().map(|b| b.header().index));
                }
                let want: Vec<u64> = model
                    .batches
                    .iter()
                    .map(|b| b.index)
                    .filter(|i| *i >= from && *i < until)
                    .collect();
                prop_assert_eq!(got, want);
            }
            Op::Roll => log.roll().map_err(fail)?,
            Op::TruncateSuffix { at, exact } => {
                let span = model.next_offset - model.log_start + 1;
                let mut offset = model.log_start + u64::from(at) % span;
                if exact {
                    // Snap to a batch boundary at or after the log start, if there is one.
                    if let Some(b) = model.batches.iter().find(|b| b.base_offset >= offset) {
                        offset = b.base_offset;
                    }
                }
                let inside = model
                    .batches
                    .iter()
                    .any(|b| b.base_offset < offset && b.next_offset() > offset);
                if model
                    .batches
                    .iter()
                    .find(|b| b.base_offset >= offset)
                    .is_some_and(|b| !model.certainly_stored(b))
                {
                    // A control batch at the log start may be gone with its segment.
                    continue;
                }
                let result = log.truncate_suffix(offset);
                if inside {
                    prop_assert!(
                        matches!(result, Err(StorageError::NotBatchBoundary { .. })),
                        "{result:?}"
                    );
                } else {
                    result.map_err(fail)?;
                    // Offsets are dense, so the first batch at or after the cut starts where
                    // the remaining log ends.
                    if let Some(cut) = model.batches.iter().position(|b| b.base_offset >= offset) {
                        model.next_offset = model.batches[cut].base_offset;
                        model.next_index = model.batches[cut].index;
                        model.batches.truncate(cut);
                    }
                }
            }
            Op::TruncateFromIndex { at } => {
                // Only indexes whose batches are certainly still stored: at or after the batch
                // that holds the log start.
                let lowest = model
                    .batches
                    .iter()
                    .find(|b| model.certainly_stored(b))
                    .map(|b| b.index);
                let Some(lowest) = lowest else { continue };
                let index = lowest + u64::from(at) % (model.next_index - lowest + 1);
                let result = log.truncate_from_index(index);
                let cut = model.batches.iter().position(|b| b.index >= index);
                if cut.is_some_and(|cut| model.batches[cut].base_offset < model.log_start) {
                    prop_assert!(
                        matches!(result, Err(StorageError::OffsetOutOfRange { .. })),
                        "{result:?}"
                    );
                    continue;
                }
                result.map_err(fail)?;
                if let Some(cut) = cut {
                    model.next_offset = model.batches[cut].base_offset;
                    model.next_index = index;
                    model.batches.truncate(cut);
                }
            }
            Op::TruncatePrefix { at } => {
                let span = model.next_offset - model.log_start + 1;
                let offset = model.log_start + u64::from(at) % span;
                let report = log.truncate_prefix(offset).map_err(fail)?;
                model.log_start = offset;
                prop_assert_eq!(report.log_start_offset, offset);
            }
            Op::Timestamp { ts } => {
                let want = model
                    .batches
                    .iter()
                    .flat_map(|b| b.records.iter())
                    .find(|(offset, t, _)| *t >= ts && *offset >= model.log_start)
                    .map(|(offset, _, _)| *offset);
                prop_assert_eq!(log.offset_for_timestamp(ts).map_err(fail)?, want);
            }
            Op::Reopen => {
                drop(log);
                log = PartitionLog::open(dir.path(), config()).map_err(fail)?;
                prop_assert_eq!(log.recovery().tail_repair.clone(), None);
                prop_assert!(log.recovery().index_rebuilds.is_empty());
            }
        }
        check(&log, &model)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn log_matches_model(ops in proptest::collection::vec(op(), 1..120)) {
        run(ops)?;
    }
}
