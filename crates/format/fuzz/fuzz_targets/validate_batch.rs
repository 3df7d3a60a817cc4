//! Fuzzes the broker's check of a produced batch — exactly what `weir_broker`'s `produce_batch`
//! runs before it stores a client's batch: `ValidBatch::new` (one whole batch, correct CRC), a
//! record batch with records, then `records_within(limit)` / `check_records(limit)` with the
//! topic's message limit (chosen by the first input byte). Any bytes must give a verdict, never a
//! panic or an allocation past the limit; a batch that passes must be what every reader will
//! read: its record count is the header's, and its records re-encoded (as a topic's compression
//! setting re-encodes them) validate and decode to the same records.
//!
//! When the first byte's top bit is set the input's CRC is made right before the check (as a
//! hostile client would), so the fuzzer reaches the payload checks behind the CRC.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use weir_format::batch::{BatchBuilder, Compression, ProducerInfo, ValidBatch};

/// Message limits a topic may have (`max.message.bytes`), small ones included so the declared
/// uncompressed size check is reached.
const LIMITS: [usize; 4] = [64, 4096, 1 << 20, 8 << 20];
/// The CRC covers the batch from this byte on; it sits in the 4 bytes before.
const CRC_FROM: usize = 9;

fuzz_target!(|data: &[u8]| {
    let Some((&choice, batch)) = data.split_first() else {
        return;
    };
    let limit = LIMITS[usize::from(choice & 0x7f) % LIMITS.len()];
    let mut batch = batch.to_vec();
    if choice & 0x80 != 0 && batch.len() >= CRC_FROM {
        let crc = crc32fast::hash(&batch[CRC_FROM..]);
        batch[CRC_FROM - 4..CRC_FROM].copy_from_slice(&crc.to_le_bytes());
    }
    let Ok(batch) = ValidBatch::new(Bytes::from(batch)) else {
        return;
    };
    let header = *batch.header();
    if header.control || header.record_count == 0 {
        return;
    }
    let checked = batch.check_records(limit);
    let Ok(records) = batch.records_within(limit) else {
        assert!(
            checked.is_err(),
            "check_records and records_within disagree"
        );
        return;
    };
    assert_eq!(checked.ok(), Some(header.record_count));
    assert_eq!(records.len(), header.record_count as usize);
    // Readers decode it the same way.
    let read = batch.records().expect("a validated batch decodes");
    assert_eq!(read, records);
    for codec in [Compression::None, Compression::Lz4] {
        let mut builder = BatchBuilder::new(codec).producer(ProducerInfo {
            producer_id: header.producer_id,
            producer_epoch: header.producer_epoch,
            base_sequence: header.base_sequence,
        });
        for record in &records {
            let headers: Vec<(&str, Option<&[u8]>)> = record
                .headers
                .iter()
                .map(|h| (h.key.as_str(), h.value.as_deref()))
                .collect();
            builder.push(
                record.timestamp,
                record.key.as_deref(),
                record.value.as_deref(),
                &headers,
            );
        }
        let rebuilt = builder.build().expect("records were pushed");
        let again = ValidBatch::new(rebuilt).expect("a re-encoded batch is valid");
        assert_eq!(again.header().record_count, header.record_count);
        let decoded = again
            .records_within(usize::MAX)
            .expect("a re-encoded batch decodes");
        assert_eq!(decoded.len(), records.len());
        for (a, b) in decoded.iter().zip(&records) {
            assert_eq!(
                (a.timestamp, &a.key, &a.value, &a.headers),
                (b.timestamp, &b.key, &b.value, &b.headers)
            );
        }
    }
});
