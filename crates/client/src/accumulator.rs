//! The producer's batching logic, pure (no I/O, no clock of its own — the caller passes `now`):
//! which partition a record goes to, which batch it joins, when a batch is ready to send, and
//! which sequence number it carries.
//!
//! Invariants:
//! - Per partition, batches are sent in the order they were opened, at most `max_in_flight` at a
//!   time ([`Accumulator::ready`] skips a partition with that many batches in flight until
//!   [`Accumulator::complete`]); the server checks each partition's sequences in order and
//!   remembers the last 5 batches of a producer, so `max_in_flight` is at most 5.
//! - Only a partition's last batch takes records; earlier ones are closed. A batch closes once it
//!   holds `batch_size` bytes (estimated, before compression); a record never goes into a batch it
//!   would take past `batch_size`, except as the batch's only record.
//! - A batch is ready when it is closed, when `linger` has passed since it was opened, or when a
//!   flush covers it. While batches of a partition are in flight the next keeps filling
//!   (pipelining).
//! - Records with a key go to `partition_for_key`; records with neither key nor partition stick
//!   to one partition per topic until that partition's batch closes or is sent, then the next
//!   partition takes over (round-robin).
//! - Batch ids grow with every batch opened; [`Accumulator::lowest_incomplete`] is what a flush
//!   waits on.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;
use weir_format::batch::{BatchBuilder, Compression, ProducerInfo};
use weir_format::partitioner::partition_for_key;

/// A partition of a topic.
pub(crate) type TopicPartition = (String, u32);

/// Bytes a record adds to a batch beyond its key, value and headers (length, attributes,
/// deltas, field lengths), estimated.
const RECORD_OVERHEAD: usize = 16;

/// What a record weighs in a batch (estimated, uncompressed).
pub(crate) fn record_size(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: &[(String, Option<bytes::Bytes>)],
) -> usize {
    RECORD_OVERHEAD
        + key.map_or(0, <[u8]>::len)
        + value.map_or(0, <[u8]>::len)
        + headers
            .iter()
            .map(|(k, v)| 4 + k.len() + v.as_ref().map_or(0, |v| v.len()))
            .sum::<usize>()
}

/// A batch being filled or waiting to be sent. `T` is what each record's sender waits on.
#[derive(Debug)]
pub(crate) struct OpenBatch<T> {
    pub(crate) id: u64,
    pub(crate) builder: BatchBuilder,
    pub(crate) replies: Vec<T>,
    pub(crate) bytes: usize,
    pub(crate) opened: Instant,
    closed: bool,
}

/// A batch taken for sending.
#[derive(Debug)]
pub(crate) struct ReadyBatch<T> {
    pub(crate) id: u64,
    pub(crate) topic: String,
    pub(crate) partition: u32,
    pub(crate) builder: BatchBuilder,
    pub(crate) replies: Vec<T>,
    pub(crate) opened: Instant,
}

#[derive(Debug)]
struct Queue<T> {
    batches: VecDeque<OpenBatch<T>>,
    in_flight: usize,
}

impl<T> Default for Queue<T> {
    fn default() -> Self {
        Self {
            batches: VecDeque::new(),
            in_flight: 0,
        }
    }
}

/// Most batches of one partition in flight (the server remembers 5 per producer).
pub(crate) const MAX_IN_FLIGHT: usize = 5;

/// The sticky partition of a topic's keyless records.
#[derive(Debug, Clone, Copy)]
struct Sticky {
    partition: u32,
    count: u32,
}

/// Open and waiting batches of every partition.
#[derive(Debug)]
pub(crate) struct Accumulator<T> {
    batch_size: usize,
    max_in_flight: usize,
    linger: Duration,
    compression: Compression,
    queues: HashMap<TopicPartition, Queue<T>>,
    sticky: HashMap<String, Sticky>,
    next_id: u64,
    /// Ids of batches opened and not yet completed.
    incomplete: BTreeSet<u64>,
    /// Batches with an id below this are ready regardless of linger (a flush covers them).
    flush_below: u64,
}

impl<T> Accumulator<T> {
    pub(crate) fn new(
        batch_size: usize,
        max_in_flight: usize,
        linger: Duration,
        compression: Compression,
    ) -> Self {
        Self {
            batch_size: batch_size.max(1),
            max_in_flight: max_in_flight.clamp(1, MAX_IN_FLIGHT),
            linger,
            compression,
            queues: HashMap::new(),
            sticky: HashMap::new(),
            next_id: 0,
            incomplete: BTreeSet::new(),
            flush_below: 0,
        }
    }

    /// The partition of a record: the one given, else its key's, else the topic's sticky
    /// partition (starting at `first_sticky % count`).
    pub(crate) fn partition_for(
        &mut self,
        topic: &str,
        count: u32,
        partition: Option<u32>,
        key: Option<&[u8]>,
        first_sticky: u32,
    ) -> u32 {
        if let Some(p) = partition {
            return p;
        }
        if let Some(key) = key {
            return partition_for_key(key, count);
        }
        let count = count.max(1);
        let sticky = self.sticky.entry(topic.to_string()).or_insert(Sticky {
            partition: first_sticky % count,
            count,
        });
        if sticky.count != count {
            *sticky = Sticky {
                partition: first_sticky % count,
                count,
            };
        }
        sticky.partition
    }

    /// Moves the topic's sticky partition on when its batch on `partition` closed.
    fn batch_closed(&mut self, topic: &str, partition: u32) {
        if let Some(sticky) = self.sticky.get_mut(topic)
            && sticky.partition == partition
        {
            sticky.partition = (partition + 1) % sticky.count.max(1);
        }
    }

    /// Adds a record to `partition`'s open batch (opening one when needed).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn append(
        &mut self,
        topic: &str,
        partition: u32,
        timestamp_ms: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(String, Option<bytes::Bytes>)],
        reply: T,
        now: Instant,
    ) {
        let size = record_size(key, value, headers);
        let batch_size = self.batch_size;
        let queue = self
            .queues
            .entry((topic.to_string(), partition))
            .or_default();
        let fits = queue
            .batches
            .back()
            .is_some_and(|b| !b.closed && (b.replies.is_empty() || b.bytes + size <= batch_size));
        let mut closed_one = false;
        if !fits {
            if let Some(last) = queue.batches.back_mut()
                && !last.closed
            {
                last.closed = true;
                closed_one = true;
            }
            let id = self.next_id;
            self.next_id += 1;
            self.incomplete.insert(id);
            queue.batches.push_back(OpenBatch {
                id,
                builder: BatchBuilder::new(self.compression),
                replies: Vec::new(),
                bytes: 0,
                opened: now,
                closed: false,
            });
        }
        let mut filled = false;
        if let Some(batch) = queue.batches.back_mut() {
            let headers: Vec<(&str, Option<&[u8]>)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_deref()))
                .collect();
            batch.builder.push(timestamp_ms, key, value, &headers);
            batch.replies.push(reply);
            batch.bytes += size;
            if batch.bytes >= batch_size {
                batch.closed = true;
                filled = true;
            }
        }
        if closed_one || filled {
            self.batch_closed(topic, partition);
        }
    }

    /// Takes every batch that may be sent now, oldest first per partition, while the partition
    /// has fewer than `max_in_flight` in flight: those closed, lingered long enough or covered
    /// by a flush. Counts them in flight.
    pub(crate) fn ready(&mut self, now: Instant) -> Vec<ReadyBatch<T>> {
        let mut ready = Vec::new();
        let mut sticky_closed = Vec::new();
        for ((topic, partition), queue) in &mut self.queues {
            while queue.in_flight < self.max_in_flight {
                let Some(front) = queue.batches.front() else {
                    break;
                };
                let due = front.closed
                    || queue.batches.len() > 1
                    || front.id < self.flush_below
                    || now >= front.opened + self.linger;
                if !due {
                    break;
                }
                let Some(batch) = queue.batches.pop_front() else {
                    break;
                };
                if !batch.closed {
                    sticky_closed.push((topic.clone(), *partition));
                }
                queue.in_flight += 1;
                ready.push(ReadyBatch {
                    id: batch.id,
                    topic: topic.clone(),
                    partition: *partition,
                    builder: batch.builder,
                    replies: batch.replies,
                    opened: batch.opened,
                });
            }
        }
        for (topic, partition) in sticky_closed {
            self.batch_closed(&topic, partition);
        }
        ready.sort_by_key(|b| b.id);
        ready
    }

    /// When the next batch becomes ready by lingering (`None`: none waits on the clock).
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.queues
            .values()
            .filter(|q| q.in_flight < self.max_in_flight)
            .filter_map(|q| q.batches.front())
            .map(|b| b.opened + self.linger)
            .min()
    }

    /// The batch `id` of `partition` is done (sent, or failed for good).
    pub(crate) fn complete(&mut self, topic: &str, partition: u32, id: u64) {
        self.incomplete.remove(&id);
        let key = (topic.to_string(), partition);
        if let Some(queue) = self.queues.get_mut(&key) {
            queue.in_flight = queue.in_flight.saturating_sub(1);
            if queue.batches.is_empty() && queue.in_flight == 0 {
                self.queues.remove(&key);
            }
        }
    }

    /// Makes every batch opened so far ready; returns the id below which all batches must
    /// complete for the flush to be done.
    pub(crate) fn flush(&mut self) -> u64 {
        self.flush_below = self.next_id;
        self.next_id
    }

    /// The lowest id of a batch not yet completed (the next id to be used when none).
    pub(crate) fn lowest_incomplete(&self) -> u64 {
        self.incomplete.first().copied().unwrap_or(self.next_id)
    }

    /// No batch waits or is in flight.
    pub(crate) fn is_empty(&self) -> bool {
        self.incomplete.is_empty()
    }
}

/// Sequence numbers per partition, each under the producer identity its batches were started
/// with. After a batch fails for good it is unknown whether the leader wrote it, so the
/// partition's next batch starts over under a new identity (sequence 0) instead of guessing.
#[derive(Debug, Default)]
pub(crate) struct Sequences {
    /// Partition → (producer id, epoch, next sequence).
    partitions: HashMap<TopicPartition, (i64, i16, i32)>,
}

impl Sequences {
    /// Takes the identity and sequence for `partition`'s next batch of `count` records: its own,
    /// or `fresh` at 0. The partition's next sequence moves past the batch at once, so batches
    /// in flight together carry consecutive sequences.
    pub(crate) fn reserve(
        &mut self,
        partition: &TopicPartition,
        fresh: (i64, i16),
        count: u32,
    ) -> ProducerInfo {
        let (producer_id, producer_epoch, base_sequence) = self
            .partitions
            .get(partition)
            .copied()
            .unwrap_or((fresh.0, fresh.1, 0));
        let next = base_sequence.wrapping_add(i32::try_from(count).unwrap_or(i32::MAX));
        self.partitions
            .insert(partition.clone(), (producer_id, producer_epoch, next));
        ProducerInfo {
            producer_id,
            producer_epoch,
            base_sequence,
        }
    }

    /// A batch sent under `info` failed for good: unless the partition already started over,
    /// its next batch starts over under a fresh identity (whether the failed batch was written
    /// is unknown, so its successors' sequences cannot be trusted).
    pub(crate) fn failed(&mut self, partition: &TopicPartition, info: ProducerInfo) {
        if self
            .partitions
            .get(partition)
            .is_some_and(|(id, epoch, _)| *id == info.producer_id && *epoch == info.producer_epoch)
        {
            self.partitions.remove(partition);
        }
    }

    /// Whether `partition` continues an identity (false: it takes a fresh one).
    pub(crate) fn has(&self, partition: &TopicPartition) -> bool {
        self.partitions.contains_key(partition)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acc(batch_size: usize) -> Accumulator<u32> {
        Accumulator::new(batch_size, 1, Duration::from_millis(5), Compression::None)
    }

    fn push(acc: &mut Accumulator<u32>, partition: u32, value: &[u8], tag: u32, now: Instant) {
        acc.append("t", partition, 1, None, Some(value), &[], tag, now);
    }

    #[test]
    fn batches_close_at_batch_size_and_go_one_at_a_time_per_partition() {
        let now = Instant::now();
        let size = record_size(None, Some(&[0u8; 10]), &[]);
        let mut acc = acc(3 * size);
        for i in 0..7 {
            push(&mut acc, 0, &[0u8; 10], i, now);
        }
        // 3 + 3 + 1: the first two are closed; only the first goes out.
        let ready = acc.ready(now);
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].replies, vec![0, 1, 2]);
        assert!(
            acc.ready(now).is_empty(),
            "one batch in flight per partition"
        );
        // Meanwhile the open batch keeps filling (pipelining).
        push(&mut acc, 0, &[0u8; 10], 7, now);
        acc.complete("t", 0, ready[0].id);
        let ready = acc.ready(now);
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].replies, vec![3, 4, 5]);
        acc.complete("t", 0, ready[0].id);
        // The last batch (6, 7) is not full: it waits for linger.
        assert!(acc.ready(now).is_empty());
        assert_eq!(acc.next_deadline(), Some(now + Duration::from_millis(5)));
        let later = now + Duration::from_millis(5);
        let ready = acc.ready(later);
        assert_eq!(ready[0].replies, vec![6, 7]);
        assert_eq!(ready[0].builder.record_count(), 2);
        acc.complete("t", 0, ready[0].id);
        assert!(acc.is_empty());
    }

    #[test]
    fn partitions_are_sent_in_parallel() {
        let now = Instant::now();
        let mut acc = acc(1);
        for p in 0..4 {
            push(&mut acc, p, b"x", p, now);
        }
        let ready = acc.ready(now);
        let mut partitions: Vec<u32> = ready.iter().map(|b| b.partition).collect();
        partitions.sort_unstable();
        assert_eq!(partitions, vec![0, 1, 2, 3]);
    }

    #[test]
    fn an_oversized_record_gets_a_batch_of_its_own() {
        let now = Instant::now();
        let mut acc = acc(100);
        push(&mut acc, 0, b"small", 0, now);
        push(&mut acc, 0, &[0u8; 500], 1, now);
        push(&mut acc, 0, b"small", 2, now);
        let first = acc.ready(now);
        assert_eq!(first[0].replies, vec![0]);
        acc.complete("t", 0, first[0].id);
        let second = acc.ready(now);
        assert_eq!(second[0].replies, vec![1]);
    }

    #[test]
    fn flush_makes_lingering_batches_ready_and_tracks_completion() {
        let now = Instant::now();
        let mut acc = acc(1 << 20);
        push(&mut acc, 0, b"a", 0, now);
        push(&mut acc, 1, b"b", 1, now);
        assert!(acc.ready(now).is_empty());
        let below = acc.flush();
        push(&mut acc, 2, b"c", 2, now);
        let ready = acc.ready(now);
        assert_eq!(
            ready.len(),
            2,
            "the batch opened after the flush still lingers"
        );
        assert!(acc.lowest_incomplete() < below);
        for b in &ready {
            acc.complete(&b.topic, b.partition, b.id);
        }
        assert!(acc.lowest_incomplete() >= below);
        assert!(!acc.is_empty());
    }

    #[test]
    fn keys_pick_their_partition_and_keyless_records_stick_then_rotate() {
        let now = Instant::now();
        let size = record_size(None, Some(b"v"), &[]);
        let mut acc = acc(2 * size);
        assert_eq!(
            acc.partition_for("t", 6, None, Some(b"user-42"), 0),
            partition_for_key(b"user-42", 6)
        );
        assert_eq!(acc.partition_for("t", 6, Some(4), Some(b"user-42"), 0), 4);
        let mut chosen = Vec::new();
        for i in 0..8 {
            let p = acc.partition_for("t", 4, None, None, 3);
            acc.append("t", p, 1, None, Some(b"v"), &[], i, now);
            chosen.push(p);
        }
        // Two records fill a batch; then the next partition takes over, round-robin.
        assert_eq!(chosen, vec![3, 3, 0, 0, 1, 1, 2, 2]);
        // A batch sent by linger before it filled also moves the sticky partition on.
        let mut acc = acc_with_linger();
        let p = acc.partition_for("u", 3, None, None, 0);
        acc.append("u", p, 1, None, Some(b"v"), &[], 0, now);
        assert_eq!(acc.ready(now + Duration::from_secs(1)).len(), 1);
        assert_eq!(acc.partition_for("u", 3, None, None, 0), 1);
    }

    fn acc_with_linger() -> Accumulator<u32> {
        Accumulator::new(1 << 20, 1, Duration::from_millis(5), Compression::None)
    }

    #[test]
    fn sequences_advance_at_once_and_restart_under_a_fresh_identity_after_a_failure() {
        let mut seqs = Sequences::default();
        let tp = ("t".to_string(), 0);
        let first = seqs.reserve(&tp, (10, 0), 5);
        assert_eq!((first.producer_id, first.base_sequence), (10, 0));
        // Reserved while the first is in flight: consecutive.
        let second = seqs.reserve(&tp, (11, 0), 3);
        assert_eq!((second.producer_id, second.base_sequence), (10, 5));
        seqs.failed(&tp, first);
        assert!(!seqs.has(&tp));
        let third = seqs.reserve(&tp, (11, 0), 1);
        assert_eq!((third.producer_id, third.base_sequence), (11, 0));
        // A late failure under the old identity does not reset the new one.
        seqs.failed(&tp, second);
        assert!(seqs.has(&tp));
        assert_eq!(seqs.reserve(&tp, (12, 0), 1).base_sequence, 1);
    }

    #[test]
    fn up_to_max_in_flight_batches_of_a_partition_go_out_together() {
        let now = Instant::now();
        let size = record_size(None, Some(&[0u8; 10]), &[]);
        let mut acc = Accumulator::new(size, 3, Duration::from_millis(5), Compression::None);
        for i in 0..5 {
            push(&mut acc, 0, &[0u8; 10], i, now);
        }
        let ready = acc.ready(now);
        let tags: Vec<Vec<u32>> = ready.iter().map(|b| b.replies.clone()).collect();
        assert_eq!(
            tags,
            vec![vec![0], vec![1], vec![2]],
            "oldest first, three at most"
        );
        assert!(acc.ready(now).is_empty());
        acc.complete("t", 0, ready[0].id);
        let next = acc.ready(now);
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].replies, vec![3]);
    }
}
