//! Idempotent writes with many batches in flight: the leader's [`WriteQueue`].
//!
//! The replicated producer state ([`crate::PartitionState`]) knows each producer's newest
//! *applied* batch. A leader that lets a producer pipeline (send batch N+1 before N is
//! committed) must also know what it has *queued* in its Raft log and not yet seen applied, and
//! must answer a retry of a queued batch with that batch's outcome rather than write it twice.
//! The queue keeps, per producer, the last [`MAX_TRACKED`] batches this leader queued in its
//! current term, each with a watch of its outcome.
//!
//! Invariants:
//! - the queue is only trusted in the term it was built in (`caught_up_term`), and only after this
//!   node caught up as the confirmed leader in that term (every acknowledged batch applied); any
//!   failed write clears it, so the next decision catches up again;
//! - decisions and the hand-over to Raft happen under one lock, so batches enter the Raft log in
//!   the order they were decided, and a producer's sequences enter it in order without gaps;
//! - a batch queued in a term that then fails takes every later batch of that term with it (Raft
//!   truncates suffixes), so no later sequence can commit after a gap.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use weir_format::batch::BatchHeader;

use crate::error::{Failure, GroupError};

/// What is known of one idempotent producer: its newest committed batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerEntry {
    pub epoch: i16,
    /// Sequence of the first record of the newest batch.
    pub base_sequence: i32,
    /// Sequence of its last record.
    pub last_sequence: i32,
    /// Offsets of the newest batch.
    pub base_offset: u64,
    pub next_offset: u64,
}

/// How many recent batches per producer the leader remembers (as Kafka does).
pub(crate) const MAX_TRACKED: usize = 5;

/// The outcome of a queued batch: `None` while in flight, then its offsets or why it failed.
pub(crate) type Outcome = Option<Result<(u64, u64), Failure>>;

/// One batch this leader queued.
#[derive(Debug, Clone)]
pub(crate) struct Tracked {
    pub(crate) epoch: i16,
    pub(crate) base_sequence: i32,
    pub(crate) last_sequence: i32,
    pub(crate) outcome: watch::Receiver<Outcome>,
}

/// The leader's queued idempotent batches of one partition.
#[derive(Debug, Default)]
pub(crate) struct WriteQueue {
    /// The term this node caught up in as the confirmed leader; 0: catch up before deciding.
    pub(crate) caught_up_term: u64,
    producers: HashMap<i64, VecDeque<Tracked>>,
    /// Woken whenever a batch is queued, for batches waiting on their predecessors.
    pub(crate) moved: std::sync::Arc<tokio::sync::Notify>,
}

/// What to do with an idempotent batch.
#[derive(Debug)]
pub(crate) enum Decision {
    /// Queue it.
    Write,
    /// A retry of a batch this leader queued: answer with that batch's outcome.
    Queued(watch::Receiver<Outcome>),
    /// A retry of the newest applied batch: answer with its offsets.
    Applied {
        base_offset: u64,
        next_offset: u64,
    },
    /// Its sequence is ahead of the next one expected: its predecessors may still be on their
    /// way (requests of one producer can overtake each other). Wait for the queue to move, then
    /// decide again; reject with the error when they do not come.
    Ahead(GroupError),
    Reject(GroupError),
}

impl WriteQueue {
    /// Forgets everything (a new term, or a failed write).
    pub(crate) fn reset(&mut self) {
        self.caught_up_term = 0;
        self.producers.clear();
    }

    /// Remembers a batch just queued in the Raft log.
    pub(crate) fn track(&mut self, header: &BatchHeader, outcome: watch::Receiver<Outcome>) {
        self.moved.notify_waiters();
        let tracked = self.producers.entry(header.producer_id).or_default();
        tracked.push_back(Tracked {
            epoch: header.producer_epoch,
            base_sequence: header.base_sequence,
            last_sequence: last_sequence(header),
            outcome,
        });
        while tracked.len() > MAX_TRACKED {
            tracked.pop_front();
        }
    }

    /// Checks `header` against what this leader queued and, behind that, the newest applied
    /// batch of its producer (`applied`).
    pub(crate) fn decide(&self, header: &BatchHeader, applied: Option<ProducerEntry>) -> Decision {
        let tracked = self.producers.get(&header.producer_id);
        let newest = tracked
            .and_then(VecDeque::back)
            .map(|t| (t.epoch, t.base_sequence, t.last_sequence))
            .or_else(|| applied.map(|a| (a.epoch, a.base_sequence, a.last_sequence)));
        // A producer (or epoch) this partition has not seen starts at sequence 0: a later
        // sequence means its earlier batches have not arrived yet (pipelined requests racing)
        // or were lost.
        let first_batch = || {
            if header.base_sequence == 0 {
                Decision::Write
            } else {
                Decision::Ahead(GroupError::OutOfOrderSequence {
                    producer_id: header.producer_id,
                    sequence: header.base_sequence,
                    expected: 0,
                })
            }
        };
        let Some((epoch, newest_base, newest_last)) = newest else {
            return first_batch();
        };
        if header.producer_epoch < epoch {
            return Decision::Reject(GroupError::FencedEpoch {
                producer_id: header.producer_id,
                epoch: header.producer_epoch,
                current: epoch,
            });
        }
        if header.producer_epoch > epoch {
            return first_batch();
        }
        if let Some(same) = tracked.and_then(|t| {
            t.iter().find(|t| {
                t.epoch == header.producer_epoch && t.base_sequence == header.base_sequence
            })
        }) {
            return Decision::Queued(same.outcome.clone());
        }
        if let Some(a) = applied
            && a.epoch == header.producer_epoch
            && a.base_sequence == header.base_sequence
        {
            return Decision::Applied {
                base_offset: a.base_offset,
                next_offset: a.next_offset,
            };
        }
        if header.base_sequence < newest_base {
            return Decision::Reject(GroupError::Duplicate {
                producer_id: header.producer_id,
                sequence: header.base_sequence,
            });
        }
        let expected = newest_last.wrapping_add(1);
        if header.base_sequence != expected {
            let error = GroupError::OutOfOrderSequence {
                producer_id: header.producer_id,
                sequence: header.base_sequence,
                expected,
            };
            return if header.base_sequence > expected {
                Decision::Ahead(error)
            } else {
                Decision::Reject(error)
            };
        }
        Decision::Write
    }
}

/// The sequence of the last record of a batch.
pub(crate) fn last_sequence(header: &BatchHeader) -> i32 {
    header
        .base_sequence
        .wrapping_add(i32::try_from(header.record_count).unwrap_or(i32::MAX) - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(epoch: i16, base_sequence: i32, records: u32) -> BatchHeader {
        BatchHeader {
            length: 0,
            crc: 0,
            base_offset: 0,
            term: 0,
            index: 0,
            compression: weir_format::batch::Compression::None,
            control: false,
            record_count: records,
            first_timestamp: 0,
            max_timestamp: 0,
            producer_id: 7,
            producer_epoch: epoch,
            base_sequence,
        }
    }

    fn queued(queue: &mut WriteQueue, h: &BatchHeader) -> watch::Sender<Outcome> {
        let (tx, rx) = watch::channel(None);
        queue.track(h, rx);
        tx
    }

    #[test]
    fn pipelined_sequences_follow_the_queue_not_the_applied_state() {
        let mut queue = WriteQueue::default();
        // A new producer starts at 0: a later first batch waits for its predecessors.
        assert!(matches!(
            queue.decide(&header(0, 10, 5), None),
            Decision::Ahead(GroupError::OutOfOrderSequence { .. })
        ));
        assert!(matches!(
            queue.decide(&header(0, 0, 10), None),
            Decision::Write
        ));
        let _a = queued(&mut queue, &header(0, 0, 10));
        // Nothing applied yet: 10 follows the queued batch, 0 is its retry, 20 is ahead.
        assert!(matches!(
            queue.decide(&header(0, 10, 5), None),
            Decision::Write
        ));
        let b = queued(&mut queue, &header(0, 10, 5));
        assert!(matches!(
            queue.decide(&header(0, 0, 10), None),
            Decision::Queued(_)
        ));
        assert!(matches!(
            queue.decide(&header(0, 20, 1), None),
            Decision::Ahead(GroupError::OutOfOrderSequence { .. })
        ));
        // Overlapping what was queued, but not a retry of it: refused.
        assert!(matches!(
            queue.decide(&header(0, 12, 1), None),
            Decision::Reject(GroupError::OutOfOrderSequence { .. })
        ));
        assert!(matches!(
            queue.decide(&header(0, 15, 1), None),
            Decision::Write
        ));
        // The retry sees the outcome of the batch it repeats.
        let Decision::Queued(mut outcome) = queue.decide(&header(0, 10, 5), None) else {
            panic!("a retry of a queued batch");
        };
        b.send_replace(Some(Ok((10, 15))));
        assert_eq!(*outcome.borrow_and_update(), Some(Ok((10, 15))));
    }

    #[test]
    fn the_applied_state_answers_when_nothing_is_queued() {
        let queue = WriteQueue::default();
        let applied = ProducerEntry {
            epoch: 1,
            base_sequence: 40,
            last_sequence: 49,
            base_offset: 400,
            next_offset: 410,
        };
        assert!(matches!(
            queue.decide(&header(1, 40, 10), Some(applied)),
            Decision::Applied {
                base_offset: 400,
                next_offset: 410
            }
        ));
        assert!(matches!(
            queue.decide(&header(1, 30, 10), Some(applied)),
            Decision::Reject(GroupError::Duplicate { .. })
        ));
        assert!(matches!(
            queue.decide(&header(0, 50, 1), Some(applied)),
            Decision::Reject(GroupError::FencedEpoch {
                epoch: 0,
                current: 1,
                ..
            })
        ));
        assert!(matches!(
            queue.decide(&header(1, 50, 1), Some(applied)),
            Decision::Write
        ));
        assert!(matches!(
            queue.decide(&header(1, 60, 1), Some(applied)),
            Decision::Ahead(_)
        ));
        assert!(matches!(
            queue.decide(&header(2, 0, 1), Some(applied)),
            Decision::Write
        ));
        assert!(matches!(
            queue.decide(&header(2, 5, 1), Some(applied)),
            Decision::Ahead(GroupError::OutOfOrderSequence { .. })
        ));
    }

    #[test]
    fn only_the_last_few_batches_are_remembered_and_reset_forgets_all() {
        let mut queue = WriteQueue::default();
        let mut senders = Vec::new();
        for i in 0..8 {
            senders.push(queued(&mut queue, &header(0, i, 1)));
        }
        assert!(matches!(
            queue.decide(&header(0, 7, 1), None),
            Decision::Queued(_)
        ));
        assert!(matches!(
            queue.decide(&header(0, 3, 1), None),
            Decision::Queued(_)
        ));
        assert!(matches!(
            queue.decide(&header(0, 2, 1), None),
            Decision::Reject(GroupError::Duplicate { .. })
        ));
        queue.caught_up_term = 3;
        queue.reset();
        assert_eq!(queue.caught_up_term, 0);
        assert!(matches!(
            queue.decide(&header(0, 0, 1), None),
            Decision::Write
        ));
    }
}
