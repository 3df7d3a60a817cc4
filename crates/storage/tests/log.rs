//! Behaviour of the partition log through its public API: offsets, reads, indexes, rolling,
//! truncation at both ends, retention, durability and the directory lock.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use weir_format::batch::{BatchBuilder, Compression, ValidBatch, encode_control_batch};
use weir_storage::{Durability, LogConfig, PartitionLog, StorageError};

fn batch(first_value: u64, count: u64, timestamp: i64) -> ValidBatch {
    let mut builder = BatchBuilder::new(Compression::None);
    for i in 0..count {
        let value = format!("value-{}", first_value + i);
        builder.push(timestamp, None, Some(value.as_bytes()), &[]);
    }
    ValidBatch::new(builder.build().expect("records")).expect("valid")
}

fn control() -> ValidBatch {
    ValidBatch::new(encode_control_batch(0, b"blank")).expect("valid")
}

fn small_segments() -> LogConfig {
    LogConfig {
        segment_bytes: 1024,
        index_interval_bytes: 256,
        ..LogConfig::default()
    }
}

fn values(log: &PartitionLog, from: u64) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut next = from;
    loop {
        let read = log.read(next, 1000).expect("read");
        if read.is_empty() {
            return out;
        }
        for batch in &read.batches {
            for record in batch.records().expect("records") {
                if record.offset >= from {
                    let value = record.value.expect("value");
                    out.push((
                        record.offset,
                        String::from_utf8(value.to_vec()).expect("utf8"),
                    ));
                }
            }
        }
        next = read.next_offset().expect("batches");
    }
}

#[test]
fn assigns_dense_offsets_and_reads_them_back_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), small_segments()).unwrap();
    let mut expected = Vec::new();
    let mut offset = 0;
    for i in 0..200u64 {
        let count = 1 + i % 5;
        let appended = log.append(&batch(offset, count, i as i64), 1).unwrap();
        assert_eq!(appended.base_offset, offset);
        assert_eq!(appended.next_offset, offset + count);
        assert_eq!(appended.index, i);
        for o in offset..offset + count {
            expected.push((o, format!("value-{o}")));
        }
        offset += count;
    }
    let bounds = log.bounds().unwrap();
    assert!(
        bounds.segments > 5,
        "expected several segments, got {}",
        bounds.segments
    );
    assert_eq!(bounds.next_offset, offset);
    assert_eq!(values(&log, 0), expected);
    // From the middle of a batch: the whole batch comes back, starting before the offset.
    let read = log.read(7, 1).unwrap();
    let first = read.batches[0].header();
    assert!(first.base_offset <= 7 && first.next_offset() > 7);
    assert_eq!(values(&log, 333), expected[333..].to_vec());
    // Reopen: everything is still there, from sealed (mapped) and active segments.
    drop(log);
    let log = PartitionLog::open(dir.path(), small_segments()).unwrap();
    assert_eq!(log.recovery().tail_repair, None);
    assert!(log.recovery().index_rebuilds.is_empty());
    assert_eq!(values(&log, 0), expected);
    let appended = log.append(&batch(offset, 1, 0), 1).unwrap();
    assert_eq!(appended.base_offset, offset);
    assert_eq!(appended.index, 200);
}

#[test]
fn control_batches_take_an_index_but_no_offset() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    log.append(&batch(0, 3, 0), 1).unwrap();
    let blank = log.append(&control(), 2).unwrap();
    assert_eq!(
        (blank.base_offset, blank.next_offset, blank.index),
        (3, 3, 1)
    );
    let next = log.append(&batch(3, 2, 0), 2).unwrap();
    assert_eq!((next.base_offset, next.index), (3, 2));
    let entries = log.read_entries(0, u64::MAX, 1 << 20).unwrap();
    assert_eq!(entries.batches.len(), 3);
    assert!(entries.batches[1].header().control);
    assert_eq!(entries.batches[1].header().term, 2);
    let from_three = log.read(3, 1 << 20).unwrap();
    assert_eq!(from_three.batches[0].header().index, 2);
    assert_eq!(values(&log, 0).len(), 5);
}

#[test]
fn reads_stop_at_the_bound_and_by_index() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), small_segments()).unwrap();
    for i in 0..50 {
        log.append(&batch(i * 2, 2, 0), 1).unwrap();
    }
    let bounded = log.read_until(0, usize::MAX, 10).unwrap();
    assert_eq!(bounded.next_offset(), Some(10));
    assert!(log.read_until(10, usize::MAX, 10).unwrap().is_empty());
    let entries = log.read_entries(20, 25, usize::MAX).unwrap();
    let indexes: Vec<u64> = entries.batches.iter().map(|b| b.header().index).collect();
    assert_eq!(indexes, [20, 21, 22, 23, 24]);
    assert_eq!(entries.batches[0].header().base_offset, 40);
    assert!(matches!(
        log.read(101, 10),
        Err(StorageError::OffsetOutOfRange { requested: 101, .. })
    ));
    assert!(matches!(
        log.read_entries(51, 60, 10),
        Err(StorageError::IndexOutOfRange { requested: 51, .. })
    ));
}

#[test]
fn finds_offsets_by_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), small_segments()).unwrap();
    // Batch i holds offsets 3i..3i+3 with timestamps 1000 + 10i (+0, +1, +2).
    for i in 0..100i64 {
        let mut builder = BatchBuilder::new(Compression::Lz4);
        for j in 0..3 {
            builder.push(1000 + 10 * i + j, None, Some(b"v"), &[]);
        }
        log.append(&ValidBatch::new(builder.build().unwrap()).unwrap(), 1)
            .unwrap();
    }
    assert_eq!(log.offset_for_timestamp(0).unwrap(), Some(0));
    assert_eq!(log.offset_for_timestamp(1000).unwrap(), Some(0));
    assert_eq!(log.offset_for_timestamp(1001).unwrap(), Some(1));
    assert_eq!(log.offset_for_timestamp(1003).unwrap(), Some(3));
    assert_eq!(log.offset_for_timestamp(1502).unwrap(), Some(152));
    assert_eq!(log.offset_for_timestamp(1992).unwrap(), Some(299));
    assert_eq!(log.offset_for_timestamp(1993).unwrap(), None);
    drop(log);
    let log = PartitionLog::open(dir.path(), small_segments()).unwrap();
    assert_eq!(log.offset_for_timestamp(1502).unwrap(), Some(152));
}

#[test]
fn truncate_suffix_by_offset_and_by_index() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), small_segments()).unwrap();
    for i in 0..100 {
        log.append(&batch(i * 2, 2, 0), 1).unwrap();
    }
    assert!(log.bounds().unwrap().segments > 3);
    assert!(matches!(
        log.truncate_suffix(61),
        Err(StorageError::NotBatchBoundary { offset: 61 })
    ));
    // Back into a sealed segment.
    log.truncate_suffix(60).unwrap();
    let bounds = log.bounds().unwrap();
    assert_eq!((bounds.next_offset, bounds.next_index), (60, 30));
    assert_eq!(values(&log, 0).len(), 60);
    let appended = log.append(&batch(60, 1, 0), 2).unwrap();
    assert_eq!((appended.base_offset, appended.index), (60, 30));
    log.truncate_from_index(10).unwrap();
    assert_eq!(log.bounds().unwrap().next_offset, 20);
    drop(log);
    let log = PartitionLog::open(dir.path(), small_segments()).unwrap();
    let bounds = log.bounds().unwrap();
    assert_eq!((bounds.next_offset, bounds.next_index), (20, 10));
    assert_eq!(values(&log, 0).last(), Some(&(19, "value-19".to_owned())));
    // Truncating everything keeps the index the next entry must take.
    log.truncate_from_index(0).unwrap();
    let bounds = log.bounds().unwrap();
    assert_eq!((bounds.next_offset, bounds.next_index), (0, 0));
    assert_eq!(log.append(&batch(0, 1, 0), 3).unwrap().index, 0);
}

#[test]
fn old_readers_keep_their_bytes_after_truncation_and_retention() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), small_segments()).unwrap();
    for i in 0..100 {
        log.append(&batch(i * 2, 2, 0), 1).unwrap();
    }
    let early = log.read(0, 1 << 20).unwrap();
    let before: Vec<u8> = early.data.to_vec();
    log.truncate_suffix(2).unwrap();
    log.append(&batch(2, 5, 0), 1).unwrap();
    assert_eq!(early.data.as_ref(), before.as_slice());
    for batch in &early.batches {
        batch.records().unwrap();
    }
}

#[test]
fn prefix_truncation_and_retention_move_the_log_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        retention_bytes: Some(8192),
        retention_ms: Some(60_000),
        ..small_segments()
    };
    let log = PartitionLog::open(dir.path(), config.clone()).unwrap();
    for i in 0..100 {
        log.append(&batch(i * 2, 2, 1_000 + i as i64), 1).unwrap();
    }
    let before = log.bounds().unwrap();
    let report = log.apply_retention(1_100 + 30_000).unwrap();
    let after = log.bounds().unwrap();
    assert!(report.deleted_segments > 0);
    assert!(
        after.size_bytes >= 8192,
        "retention keeps at least retention_bytes"
    );
    assert!(after.size_bytes < before.size_bytes);
    assert_eq!(after.log_start_offset, report.log_start_offset);
    assert!(matches!(
        log.read(0, 10),
        Err(StorageError::OffsetOutOfRange { .. })
    ));
    // Age: everything sealed is older than a minute at t = 10^6.
    let report = log.apply_retention(1_000_000).unwrap();
    let bounds = log.bounds().unwrap();
    assert_eq!(
        bounds.segments, 1,
        "only the active segment is left ({report:?})"
    );
    log.truncate_prefix(bounds.next_offset - 1).unwrap();
    assert_eq!(log.bounds().unwrap().log_start_offset, 199);
    assert_eq!(values(&log, 199), [(199, "value-199".to_owned())]);
    drop(log);
    let log = PartitionLog::open(dir.path(), config).unwrap();
    assert_eq!(log.bounds().unwrap().log_start_offset, 199);
}

#[test]
fn reset_moves_an_empty_log_forward() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), small_segments()).unwrap();
    for i in 0..10 {
        log.append(&batch(i, 1, 0), 1).unwrap();
    }
    assert!(log.reset(5, 100).is_err(), "a reset never moves backwards");
    log.reset(1_000, 500).unwrap();
    let appended = log.append(&batch(1_000, 1, 0), 4).unwrap();
    assert_eq!((appended.base_offset, appended.index), (1_000, 500));
    drop(log);
    let log = PartitionLog::open(dir.path(), small_segments()).unwrap();
    let bounds = log.bounds().unwrap();
    assert_eq!(bounds.log_start_offset, 1_000);
    assert_eq!((bounds.next_offset, bounds.next_index), (1_001, 501));
}

#[test]
fn durability_waits_and_callbacks() {
    for durability in [
        Durability::Always,
        Durability::Interval { ms: 5 },
        Durability::Never,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            durability,
            ..LogConfig::default()
        };
        let log = Arc::new(PartitionLog::open(dir.path(), config).unwrap());
        let fired = Arc::new(AtomicUsize::new(0));
        let mut threads = Vec::new();
        for t in 0..4 {
            let log = Arc::clone(&log);
            let fired = Arc::clone(&fired);
            threads.push(std::thread::spawn(move || {
                for i in 0..50 {
                    let appended = log.append_durable(&batch(t * 1000 + i, 1, 0), 1).unwrap();
                    assert!(log.durable().next_index > appended.index);
                    let fired = Arc::clone(&fired);
                    log.on_durable(
                        appended.index,
                        Box::new(move |result| {
                            result.unwrap();
                            fired.fetch_add(1, Ordering::SeqCst);
                        }),
                    );
                }
            }));
        }
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(fired.load(Ordering::SeqCst), 200, "{durability:?}");
        assert_eq!(log.durable().next_index, 200);
        let metrics = log.metrics();
        assert_eq!(metrics.appended_batches, 200);
        assert!(
            metrics.syncs >= 1 && metrics.syncs <= 200 + 1,
            "{metrics:?}"
        );
    }
}

#[test]
fn callbacks_of_truncated_entries_fail() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        durability: Durability::Never,
        ..LogConfig::default()
    };
    let log = PartitionLog::open(dir.path(), config).unwrap();
    log.append(&batch(0, 1, 0), 1).unwrap();
    log.flush().unwrap();
    let appended = log.append(&batch(1, 1, 0), 1).unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    log.on_durable(
        appended.index,
        Box::new(move |result| sender.send(result).unwrap()),
    );
    log.truncate_from_index(1).unwrap();
    assert!(matches!(
        receiver.recv().unwrap(),
        Err(StorageError::Truncated { index: 1 })
    ));
}

#[test]
fn refuses_bad_input_without_touching_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        max_batch_bytes: 1024,
        ..LogConfig::default()
    };
    let log = PartitionLog::open(dir.path(), config).unwrap();
    log.append(&batch(0, 1, 0), 5).unwrap();
    let big = {
        let mut builder = BatchBuilder::new(Compression::None);
        builder.push(0, None, Some(&[7u8; 2000]), &[]);
        ValidBatch::new(builder.build().unwrap()).unwrap()
    };
    assert!(matches!(
        log.append(&big, 5),
        Err(StorageError::BatchTooLarge { limit: 1024, .. })
    ));
    assert!(matches!(
        log.append(&batch(1, 1, 0), 4),
        Err(StorageError::TermRegression {
            term: 4,
            last_term: 5
        })
    ));
    let mut torn = batch(1, 1, 0).bytes().to_vec();
    torn.pop();
    assert!(matches!(
        log.append_bytes(Bytes::from(torn), 5),
        Err(StorageError::InvalidBatch(_))
    ));
    let mut flipped = batch(1, 1, 0).bytes().to_vec();
    *flipped.last_mut().unwrap() ^= 1;
    assert!(matches!(
        log.append_bytes(Bytes::from(flipped), 5),
        Err(StorageError::InvalidBatch(_))
    ));
    assert_eq!(values(&log, 0), [(0, "value-0".to_owned())]);
}

#[test]
fn a_second_opener_is_locked_out() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    assert!(matches!(
        PartitionLog::open(dir.path(), LogConfig::default()),
        Err(StorageError::Locked { .. })
    ));
    drop(log);
    PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
}

#[test]
fn rolls_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_ms: Some(1),
        ..LogConfig::default()
    };
    let log = PartitionLog::open(dir.path(), config).unwrap();
    log.append(&batch(0, 1, 0), 1).unwrap();
    // Segment age is measured with the monotonic clock from the segment's creation.
    let created = std::time::Instant::now();
    while created.elapsed() < std::time::Duration::from_millis(2) {
        std::hint::spin_loop();
    }
    log.append(&batch(1, 1, 0), 1).unwrap();
    assert_eq!(log.bounds().unwrap().segments, 2);
}

#[test]
fn verify_reads_every_batch_and_stops_the_log_on_damage() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 4096,
        index_interval_bytes: 1024,
        ..LogConfig::default()
    };
    let log = PartitionLog::open(dir.path(), config.clone()).unwrap();
    for i in 0..200 {
        log.append(&batch(i, 1, 0), 1).unwrap();
    }
    log.append(&control(), 1).unwrap();
    let bounds = log.bounds().unwrap();
    let report = log.verify().unwrap();
    assert_eq!(report.segments, bounds.segments);
    assert_eq!(report.batches, 201);
    assert_eq!(report.bytes, bounds.size_bytes);
    drop(log);
    // Damage the payload of the second batch of the first (sealed) segment: before its last
    // index entry, so opening does not look at it.
    let first = dir.path().join(format!("{:020}.log", 0));
    let mut bytes = std::fs::read(&first).unwrap();
    let second = u32::from_le_bytes(bytes[0..4].try_into().unwrap()) as usize;
    bytes[second + weir_format::batch::HEADER_LEN + 3] ^= 0x10;
    std::fs::write(&first, &bytes).unwrap();
    let log = PartitionLog::open(dir.path(), config).unwrap();
    match log.verify() {
        Err(StorageError::Corrupt { path, position, .. }) => {
            assert_eq!(path, first);
            assert_eq!(position, second as u64);
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    assert!(matches!(log.bounds(), Err(StorageError::Stopped { .. })));
}

#[test]
fn reads_of_the_active_segment_keep_their_bytes_while_buffers_are_reused() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    let big = |seed: u8| {
        let mut builder = BatchBuilder::new(Compression::None);
        for i in 0..40u8 {
            builder.push(0, None, Some(&[seed ^ i; 1024]), &[]);
        }
        ValidBatch::new(builder.build().unwrap()).unwrap()
    };
    for seed in 0..20 {
        log.append(&big(seed), 1).unwrap();
    }
    assert_eq!(
        log.bounds().unwrap().segments,
        1,
        "all in the active segment"
    );
    // Reads of 64 KiB and more from the active segment use pooled buffers.
    let first = log.read(0, 200 * 1024).unwrap();
    let copy = first.data.to_vec();
    for round in 0..50 {
        let other = log.read(40 * (round % 10), 200 * 1024).unwrap();
        assert!(other.data.len() >= 64 * 1024);
        assert_eq!(first.data.as_ref(), copy.as_slice(), "held bytes changed");
        for batch in &other.batches {
            assert_eq!(batch.records().unwrap().len(), 40);
        }
    }
    let value = first.batches[1].records().unwrap()[3]
        .value
        .clone()
        .unwrap();
    assert_eq!(value.as_ref(), &[1 ^ 3; 1024]);
}

#[test]
fn interval_syncs_on_its_own_and_never_waits_for_a_flush() {
    let wait = |log: &PartitionLog, index: u64| {
        let (sender, receiver) = std::sync::mpsc::channel();
        log.on_durable(index, Box::new(move |result| sender.send(result).unwrap()));
        receiver
    };
    // Interval: nobody asks for a sync; the flusher's timer makes the append durable.
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        durability: Durability::Interval { ms: 10 },
        ..LogConfig::default()
    };
    let log = PartitionLog::open(dir.path(), config).unwrap();
    // Let the flusher park with nothing to sync first: the append must wake it (it once did
    // not, and an interval log then never synced on its own).
    std::thread::sleep(std::time::Duration::from_millis(100));
    let appended = log.append(&batch(0, 1, 0), 1).unwrap();
    let fired = wait(&log, appended.index);
    // A liveness bound, not a timing assertion: the sync is due after 10 ms.
    let result = fired.recv_timeout(std::time::Duration::from_secs(60));
    assert!(matches!(result, Ok(Ok(()))), "{result:?}");
    assert_eq!(log.durable().next_index, 1);
    drop(log);

    // Never: an append is not durable until someone flushes.
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        durability: Durability::Never,
        ..LogConfig::default()
    };
    let log = PartitionLog::open(dir.path(), config).unwrap();
    let appended = log.append(&batch(0, 1, 0), 1).unwrap();
    let fired = wait(&log, appended.index);
    assert_eq!(log.durable().next_index, 0);
    assert!(fired.try_recv().is_err(), "durable before any sync");
    log.flush().unwrap();
    assert!(matches!(fired.recv(), Ok(Ok(()))));
    assert_eq!(log.durable().next_index, 1);
    log.close().unwrap();
}

#[test]
fn reconfigure_changes_rolling_retention_and_the_batch_limit_of_an_open_log() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 1 << 20,
        retention_ms: None,
        ..LogConfig::default()
    };
    let log = PartitionLog::open(dir.path(), config.clone()).unwrap();
    for i in 0..20 {
        log.append(&batch(i * 2, 2, 1_000), 1).unwrap();
    }
    assert_eq!(log.bounds().unwrap().segments, 1);
    assert_eq!(log.apply_retention(10_000_000).unwrap().deleted_segments, 0);

    let smaller = LogConfig {
        segment_bytes: 1024,
        retention_ms: Some(60_000),
        max_batch_bytes: 200,
        // Not changeable: these two stay as opened.
        durability: Durability::Never,
        index_interval_bytes: 128,
        ..config.clone()
    };
    log.reconfigure(&smaller).unwrap();
    assert_eq!(log.config().durability, config.durability);
    assert_eq!(
        log.config().index_interval_bytes,
        config.index_interval_bytes
    );
    assert_eq!(log.config().segment_bytes, 1024);
    assert!(matches!(
        log.append(&batch(1000, 20, 1_000), 1),
        Err(StorageError::BatchTooLarge { limit: 200, .. })
    ));
    for i in 20..40 {
        log.append(&batch(i * 2, 2, 1_000), 1).unwrap();
    }
    assert!(log.bounds().unwrap().segments > 1, "rolls at the new size");
    let report = log.apply_retention(1_000 + 120_000).unwrap();
    assert!(report.deleted_segments > 0, "retention by the new age");

    let invalid = LogConfig {
        segment_bytes: 1,
        ..smaller
    };
    assert!(log.reconfigure(&invalid).is_err());
    assert_eq!(
        log.config().segment_bytes,
        1024,
        "a refused change changes nothing"
    );
}
