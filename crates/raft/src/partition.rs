//! [`PartitionState`]: the state machine data of a partition group — the producer state used for
//! idempotence, rebuilt from the log (and carried in snapshots, never records).
//!
//! For every idempotent producer id it keeps the epoch, the last sequence and the offsets of its
//! newest batch. Applying a batch merges by offset, so applying entries a snapshot already
//! covers again changes nothing.

use std::collections::BTreeMap;

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use weir_storage::codec::BatchHeader;

use crate::error::GroupError;
use crate::group::Group;
use crate::state_machine::GroupState;
use crate::types::Applied;

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

/// The producer state of one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    producers: BTreeMap<i64, ProducerEntry>,
}

impl PartitionState {
    pub fn producer(&self, producer_id: i64) -> Option<ProducerEntry> {
        self.producers.get(&producer_id).copied()
    }

    pub fn producer_count(&self) -> usize {
        self.producers.len()
    }
}

impl GroupState for PartitionState {
    fn apply(&mut self, header: &BatchHeader, _batch: &Bytes) -> Bytes {
        if header.producer_id >= 0 && header.record_count > 0 {
            let entry = ProducerEntry {
                epoch: header.producer_epoch,
                base_sequence: header.base_sequence,
                last_sequence: header
                    .base_sequence
                    .wrapping_add(i32::try_from(header.record_count).unwrap_or(i32::MAX) - 1),
                base_offset: header.base_offset,
                next_offset: header.next_offset(),
            };
            let slot = self.producers.entry(header.producer_id).or_insert(entry);
            if entry.base_offset >= slot.base_offset {
                *slot = entry;
            }
        }
        Bytes::new()
    }

    fn encode(&self) -> Bytes {
        postcard::to_stdvec(self)
            .map(Bytes::from)
            .unwrap_or_default()
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        if data.is_empty() {
            *self = Self::default();
            return Ok(());
        }
        *self = postcard::from_bytes(data).map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// When a write's caller hears back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitFor {
    /// Once the batch is committed and applied (the answer carries its offsets).
    Committed,
    /// Once the leader has checked the batch and queued it in its Raft log; the write goes on
    /// after the answer (which carries no offsets), and a later failure is only logged.
    Accepted,
}

impl Group<PartitionState> {
    /// Writes a batch on the leader, dropping a retried duplicate of an idempotent producer's
    /// newest batch (answering with the offsets it got the first time). Batches without a
    /// producer id are written as they are.
    ///
    /// Writes of idempotent batches are serialized per partition, and each first confirms this
    /// node's leadership with a quorum and waits until its whole log is applied while it leads
    /// ([`Group::catch_up_as_leader`]), so the producer state it checks includes every
    /// acknowledged batch — also one written under an earlier leader or before a restart. The check and the write run in a task of their own that holds the partition's
    /// write lock until the write is committed or failed: a caller that gives up (a client
    /// timeout, a dropped connection) cannot leave its batch in flight while a retry of it is
    /// checked against a state that does not have it yet.
    ///
    /// Writes are queued in the order their callers reach this method: an idempotent batch takes
    /// the partition's write lock before its task is spawned.
    pub async fn write_deduplicated(
        self: &Arc<Self>,
        batch: Bytes,
        within: std::time::Duration,
    ) -> Result<Applied, GroupError> {
        self.write_deduplicated_with(batch, within, WaitFor::Committed)
            .await?
            .ok_or_else(|| GroupError::Raft("a committed write returned no offsets".into()))
    }

    /// [`Group::write_deduplicated`], answering when `wait` says: with [`WaitFor::Accepted`] the
    /// answer (`None`) comes once the batch is queued in the Raft log.
    pub async fn write_deduplicated_with(
        self: &Arc<Self>,
        batch: Bytes,
        within: std::time::Duration,
        wait: WaitFor,
    ) -> Result<Option<Applied>, GroupError> {
        let header = BatchHeader::parse(&batch)
            .map_err(|e| GroupError::Storage(weir_storage::StorageError::InvalidBatch(e)))?;
        if header.producer_id < 0 {
            return match wait {
                WaitFor::Committed => self.write(batch).await.map(Some),
                WaitFor::Accepted => {
                    if !self.is_leader() {
                        return Err(GroupError::NotLeader {
                            leader: self.leader(),
                            leader_addr: self.leader().and_then(|l| self.node_addr(l)),
                        });
                    }
                    let pending = self.submit(batch).await?;
                    tokio::spawn(log_failure(self.id().to_string(), pending));
                    Ok(None)
                }
            };
        }
        let ordered = Arc::clone(&self.ordered_writes).lock_owned().await;
        let (accepted_tx, accepted_rx) = tokio::sync::oneshot::channel();
        let group = Arc::clone(self);
        let task = tokio::spawn(async move {
            let _ordered = ordered;
            let result = group
                .check_and_write(&header, batch, within, accepted_tx)
                .await;
            if let Err(err) = &result
                && wait == WaitFor::Accepted
            {
                tracing::warn!(group = group.id(), error = %err, "write acknowledged to the leader failed");
            }
            result
        });
        if wait == WaitFor::Accepted && accepted_rx.await.is_ok() {
            return Ok(None);
        }
        let applied = task
            .await
            .map_err(|e| GroupError::Raft(format!("write task failed: {e}")))??;
        Ok(match wait {
            WaitFor::Committed => Some(applied),
            WaitFor::Accepted => None,
        })
    }

    async fn check_and_write(
        &self,
        header: &BatchHeader,
        batch: Bytes,
        within: std::time::Duration,
        accepted: tokio::sync::oneshot::Sender<()>,
    ) -> Result<Applied, GroupError> {
        // Leadership confirmed by a quorum (a node that only believes it leads has a stale log)
        // and the whole local log applied (a leader restarted into its term has committed
        // entries it no longer knows are committed): then the producer state holds every
        // acknowledged batch.
        self.catch_up_as_leader(within).await?;
        let known = self
            .state_machine()
            .with_state(|s| s.producer(header.producer_id));
        if let Some(known) = known {
            if header.producer_epoch < known.epoch {
                return Err(GroupError::Sequence(format!(
                    "producer {} epoch {} is fenced by epoch {}",
                    header.producer_id, header.producer_epoch, known.epoch
                )));
            }
            if header.producer_epoch == known.epoch {
                if header.base_sequence == known.base_sequence {
                    tracing::info!(
                        producer_id = header.producer_id,
                        sequence = header.base_sequence,
                        base_offset = known.base_offset,
                        "duplicate batch dropped"
                    );
                    let _ = accepted.send(());
                    return Ok(Applied {
                        base_offset: known.base_offset,
                        next_offset: known.next_offset,
                        reply: Bytes::new(),
                    });
                }
                if header.base_sequence < known.base_sequence {
                    return Err(GroupError::Duplicate {
                        producer_id: header.producer_id,
                        sequence: header.base_sequence,
                    });
                }
                if header.base_sequence != known.last_sequence.wrapping_add(1) {
                    return Err(GroupError::Sequence(format!(
                        "producer {} sent sequence {} but {} was expected",
                        header.producer_id,
                        header.base_sequence,
                        known.last_sequence.wrapping_add(1)
                    )));
                }
            }
        }
        let pending = self.submit(batch).await?;
        let _ = accepted.send(());
        pending.await
    }
}

/// Logs the failure of a write whose caller did not wait for it.
async fn log_failure(
    group: String,
    pending: impl std::future::Future<Output = Result<Applied, GroupError>>,
) {
    if let Err(err) = pending.await {
        tracing::warn!(group, error = %err, "write acknowledged to the leader failed");
    }
}
