//! [`IdempotentBatcher`]: builds batches in Weir's batch format for one producer identity, with
//! per-partition sequence numbers — the low-level building block under [`crate::Producer`], for
//! callers that want to control batching themselves (tests, tools).
//!
//! Invariant: the batches of a partition carry consecutive sequences (the next batch's base
//! sequence is the previous one's plus its record count). The leader drops a batch whose
//! sequence it already wrote (a retry) and refuses one that skips ahead (ABORTED), so a failed
//! batch must be retried as the same bytes, never rebuilt.

use std::collections::HashMap;

use bytes::Bytes;
use weir_format::batch::{BatchBuilder, Compression, ProducerInfo};

/// A producer identity with per-partition sequence numbers, so retried batches are recognised.
#[derive(Debug)]
pub struct IdempotentBatcher {
    producer_id: i64,
    epoch: i16,
    sequences: HashMap<u32, i32>,
    compression: Compression,
}

impl IdempotentBatcher {
    /// Batches for the identity `producer_id`/`epoch` (from [`crate::Client::init_producer`]),
    /// lz4-compressed.
    pub fn new(producer_id: i64, epoch: i16) -> Self {
        Self {
            producer_id,
            epoch,
            sequences: HashMap::new(),
            compression: Compression::Lz4,
        }
    }

    /// The same, compressed with `compression`.
    pub fn with_compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    pub fn producer_id(&self) -> i64 {
        self.producer_id
    }

    /// Builds the next batch for `partition` from `(timestamp_ms, key, value)` records; its
    /// sequence follows the previous batch for that partition. Retry a failed batch by sending
    /// the same bytes again. `None` when `records` is empty.
    pub fn batch<'a>(
        &mut self,
        partition: u32,
        records: impl IntoIterator<Item = (i64, Option<&'a [u8]>, &'a [u8])>,
    ) -> Option<Bytes> {
        let sequence = self.sequences.get(&partition).copied().unwrap_or(0);
        let mut builder = BatchBuilder::new(self.compression).producer(ProducerInfo {
            producer_id: self.producer_id,
            producer_epoch: self.epoch,
            base_sequence: sequence,
        });
        for (timestamp, key, value) in records {
            builder.push(timestamp, key, Some(value), &[]);
        }
        let count = builder.record_count();
        let batch = builder.build()?;
        self.sequences.insert(
            partition,
            sequence.wrapping_add(i32::try_from(count).unwrap_or(i32::MAX)),
        );
        Some(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_format::batch::BatchHeader;

    #[test]
    fn sequences_follow_per_partition() {
        let mut batcher = IdempotentBatcher::new(7, 1);
        let values = [&b"a"[..], b"b", b"c"];
        let first = batcher
            .batch(0, values.iter().map(|v| (1, None, *v)))
            .unwrap();
        let second = batcher.batch(0, [(1, None, &b"d"[..])]).unwrap();
        let other = batcher.batch(1, [(1, None, &b"e"[..])]).unwrap();
        let header = |b: &Bytes| BatchHeader::parse(b).unwrap();
        assert_eq!(header(&first).base_sequence, 0);
        assert_eq!(header(&first).producer_id, 7);
        assert_eq!(header(&first).producer_epoch, 1);
        assert_eq!(header(&second).base_sequence, 3);
        assert_eq!(header(&other).base_sequence, 0);
        assert!(batcher.batch(0, std::iter::empty()).is_none());
        assert_eq!(
            header(&batcher.batch(0, [(1, None, &b"f"[..])]).unwrap()).base_sequence,
            4
        );
    }
}
