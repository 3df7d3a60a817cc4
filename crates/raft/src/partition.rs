//! [`Partition`]: one partition replica on this node, and the narrow API the broker and the
//! controller use to reach it — write a batch (with its wait semantics and idempotence), read
//! committed batches from an offset, progress (high watermark, log bounds), the leader hint, and
//! the membership operations of replica moves. Callers never name the segment log or openraft.
//!
//! [`PartitionState`]: the state machine data of a partition group — the producer state used for
//! idempotence, rebuilt from the log (and carried in snapshots, never records). For every
//! idempotent producer id it keeps the epoch, the last sequence and the offsets of its newest
//! batch. Applying a batch merges by offset, so applying entries a snapshot already covers again
//! changes nothing.
//!
//! Invariants: a partition's idempotent writes are decided and handed to Raft under its one
//! [`WriteQueue`] lock (see `idempotence`); reads never go past the high watermark the caller
//! passes (callers pass the group's, so only committed records are served).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use weir_format::batch::BatchHeader;
use weir_storage::{LogBounds, LogConfig, LogMetrics, ReadBatches, StorageError};

use crate::error::{Failure, GroupError};
use crate::group::{Group, GroupConfig, GroupHandle};
use crate::idempotence::{Decision, ProducerEntry, WriteQueue};
use crate::network::PeerTransport;
use crate::state_machine::{GroupState, Progress};
use crate::types::{Applied, NodeId, PeerNode};

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

/// How long an idempotent batch that arrived before its predecessors waits for them.
const MAX_REORDER_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// One partition replica on this node.
pub struct Partition {
    group: Arc<Group<PartitionState>>,
    /// The leader's queue of idempotent batches; its lock orders their checks and hand-over to
    /// Raft (see `idempotence`).
    ordered_writes: Arc<tokio::sync::Mutex<WriteQueue>>,
}

impl std::fmt::Debug for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partition")
            .field("id", &self.group.id())
            .finish_non_exhaustive()
    }
}

impl Partition {
    /// Opens (or creates) the replica's files and starts its Raft node (see [`Group::open`]).
    pub async fn open(
        node_id: NodeId,
        config: GroupConfig,
        transport: Arc<PeerTransport>,
    ) -> Result<Arc<Self>, GroupError> {
        let group = Group::open(node_id, config, PartitionState::default(), transport).await?;
        Ok(Self::new(group))
    }

    /// A partition over a running group (the group must not be wrapped twice: each wrapper has
    /// its own write queue).
    pub fn new(group: Arc<Group<PartitionState>>) -> Arc<Self> {
        Arc::new(Self {
            group,
            ordered_writes: Arc::default(),
        })
    }

    /// The Raft group underneath, for the replication crate's tests and tools. The broker and
    /// the controller use the methods of [`Partition`] only.
    pub fn group(&self) -> &Arc<Group<PartitionState>> {
        &self.group
    }

    /// Group id on the wire: `topic/partition/topic id`.
    pub fn id(&self) -> &str {
        self.group.id()
    }

    /// What the peer service needs to dispatch to this replica.
    pub fn handle(&self) -> GroupHandle {
        self.group.handle()
    }

    // --- Reads -----------------------------------------------------------------------------

    /// Whole batches from `offset`, at most about `max_bytes` (at least one batch), stopping
    /// before `until` (pass the high watermark: readers see committed records only).
    pub fn read(
        &self,
        offset: u64,
        max_bytes: usize,
        until: u64,
    ) -> Result<ReadBatches, StorageError> {
        self.group.log().read_until(offset, max_bytes, until)
    }

    /// The log's bounds: log start offset, next offset, size.
    pub fn bounds(&self) -> Result<LogBounds, StorageError> {
        self.group.log().bounds()
    }

    /// The first offset whose record's timestamp is at or after `timestamp_ms`.
    pub fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<u64>, StorageError> {
        self.group.log().offset_for_timestamp(timestamp_ms)
    }

    /// The replica's progress (high watermark and applied position), as it changes.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.group.progress()
    }

    /// The high watermark now: records below it are committed.
    pub fn high_watermark(&self) -> u64 {
        self.group.progress().borrow().high_watermark
    }

    /// Changes the size and time limits of the replica's log (see
    /// [`weir_storage::PartitionLog::reconfigure`]).
    pub fn reconfigure_log(&self, config: &LogConfig) -> Result<(), StorageError> {
        self.group.log().reconfigure(config)
    }

    /// Counters of the replica's log (appended bytes, fsyncs).
    pub fn log_metrics(&self) -> LogMetrics {
        self.group.log().metrics()
    }

    // --- Leadership ------------------------------------------------------------------------

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.group.node_id()
    }

    pub fn is_leader(&self) -> bool {
        self.group.is_leader()
    }

    /// The leader this replica knows of.
    pub fn leader(&self) -> Option<NodeId> {
        self.group.leader()
    }

    /// The address of a member of the group, as the group's membership records it.
    pub fn node_addr(&self, node: NodeId) -> Option<String> {
        self.group.node_addr(node)
    }

    /// The current Raft term.
    pub fn term(&self) -> u64 {
        self.group.term()
    }

    /// Confirms with a quorum that this node leads, and applies every entry ever acknowledged
    /// (see [`Group::catch_up_as_leader`]).
    pub async fn confirm_leader(&self, within: Duration) -> Result<(), GroupError> {
        self.group.catch_up_as_leader(within).await
    }

    // --- Membership (the controller's reconciler) -----------------------------------------

    /// Forms the group with `members` as voters (see [`Group::initialize`]).
    pub async fn initialize(&self, members: &BTreeMap<NodeId, PeerNode>) -> Result<(), GroupError> {
        self.group.initialize(members).await
    }

    pub async fn is_initialized(&self) -> bool {
        self.group.is_initialized().await
    }

    /// Voters and learners.
    pub fn members(&self) -> (BTreeSet<NodeId>, BTreeSet<NodeId>) {
        self.group.members()
    }

    /// Whether this replica knows a leader and has applied its whole local log.
    pub fn caught_up(&self) -> bool {
        self.group.caught_up()
    }

    /// Adds `node` as a learner and waits until it caught up, at most `within`.
    pub async fn add_learner(
        &self,
        id: NodeId,
        node: PeerNode,
        within: Duration,
    ) -> Result<(), GroupError> {
        self.group.add_learner(id, node, Some(within)).await
    }

    /// Changes the voters to `voters` in one joint-consensus step.
    pub async fn change_voters(&self, voters: BTreeSet<NodeId>) -> Result<(), GroupError> {
        self.group.change_voters(voters).await
    }

    /// Campaigns for leadership now (the preferred replica taking its leadership back).
    pub async fn campaign(&self) -> Result<(), GroupError> {
        self.group.campaign().await
    }

    /// Stops the replica's Raft node; the files stay.
    pub async fn shutdown(&self) {
        self.group.shutdown().await;
    }

    // --- Writes ----------------------------------------------------------------------------

    /// Writes `batch` on the leader and answers when `wait` says: with [`WaitFor::Committed`]
    /// once a majority has it and it is applied (with its offsets); with [`WaitFor::Accepted`]
    /// once the leader checked it and queued it in Raft (`None`). See
    /// [`Partition::write_deduplicated`] for idempotent batches.
    pub async fn write(
        self: &Arc<Self>,
        batch: Bytes,
        within: Duration,
        wait: WaitFor,
    ) -> Result<Option<Applied>, GroupError> {
        self.write_deduplicated_with(batch, within, wait).await
    }

    /// Writes a batch on the leader, dropping a retried duplicate of an idempotent producer's
    /// recent batch (answering with the offsets it got the first time). Batches without a
    /// producer id are written as they are.
    ///
    /// A producer may have many batches in flight. Each idempotent batch is checked against the
    /// leader's [`WriteQueue`] (what it queued in its Raft log this term) and the applied producer
    /// state, and queued in Raft in the same critical section, so a producer's batches enter the
    /// log in order and without gaps. The first write of a term first confirms this node's
    /// leadership with a quorum and waits until its whole log is applied
    /// ([`Group::catch_up_as_leader`]), so the producer state includes every acknowledged batch —
    /// also one written under an earlier leader or before a restart. Checking and queueing run in
    /// a task of their own: a caller that gives up (a client timeout, a dropped connection)
    /// cannot leave a batch half-queued, and a retry of a queued batch waits for that batch's
    /// outcome instead of writing it again.
    ///
    /// Writes are decided in the order their callers reach this method (the queue's lock is
    /// fair).
    pub async fn write_deduplicated(
        self: &Arc<Self>,
        batch: Bytes,
        within: std::time::Duration,
    ) -> Result<Applied, GroupError> {
        self.write_deduplicated_with(batch, within, WaitFor::Committed)
            .await?
            .ok_or_else(|| GroupError::Replication("a committed write returned no offsets".into()))
    }

    /// [`Group::write_deduplicated`], answering when `wait` says: with [`WaitFor::Accepted`] the
    /// answer (`None`) comes once the batch is queued in the Raft log.
    async fn write_deduplicated_with(
        self: &Arc<Self>,
        batch: Bytes,
        within: std::time::Duration,
        wait: WaitFor,
    ) -> Result<Option<Applied>, GroupError> {
        let header = BatchHeader::parse(&batch)
            .map_err(|e| GroupError::Storage(weir_storage::StorageError::InvalidBatch(e)))?;
        if header.producer_id < 0 {
            return match wait {
                WaitFor::Committed => self.group.write(batch).await.map(Some),
                WaitFor::Accepted => {
                    if !self.is_leader() {
                        return Err(GroupError::NotLeader {
                            leader: self.leader(),
                            leader_addr: self.leader().and_then(|l| self.node_addr(l)),
                        });
                    }
                    let pending = self.group.submit(batch).await?;
                    tokio::spawn(log_failure(self.id().to_string(), pending));
                    Ok(None)
                }
            };
        }
        let queue = Arc::clone(&self.ordered_writes).lock_owned().await;
        let partition = Arc::clone(self);
        let decided = tokio::spawn(async move {
            partition
                .decide_and_queue(queue, &header, batch, within, wait)
                .await
        })
        .await
        .map_err(|e| {
            if e.is_cancelled() {
                GroupError::ShuttingDown
            } else {
                GroupError::Replication(format!("write task failed: {e}"))
            }
        })??;
        let mut outcome = match decided {
            Queued::Done(applied) => return Ok(Some(applied)),
            Queued::InFlight(_) if wait == WaitFor::Accepted => return Ok(None),
            Queued::InFlight(outcome) => outcome,
        };
        loop {
            if let Some(result) = outcome.borrow_and_update().clone() {
                let (base_offset, next_offset) = result.map_err(GroupError::from)?;
                return Ok(Some(Applied {
                    base_offset,
                    next_offset,
                    reply: Bytes::new(),
                }));
            }
            if outcome.changed().await.is_err() {
                return Err(GroupError::ShuttingDown);
            }
        }
    }

    /// Decides what to do with an idempotent batch and, if it is new, queues it in Raft, all
    /// under the queue's lock (`queue`).
    async fn decide_and_queue(
        self: &Arc<Self>,
        mut queue: tokio::sync::OwnedMutexGuard<WriteQueue>,
        header: &BatchHeader,
        batch: Bytes,
        within: std::time::Duration,
        wait: WaitFor,
    ) -> Result<Queued, GroupError> {
        // A batch that overtook its predecessors waits this long for them.
        let reorder_deadline = tokio::time::Instant::now() + within.min(MAX_REORDER_WAIT);
        loop {
            // Leadership confirmed by a quorum (a node that only believes it leads has a stale
            // log) and the whole local log applied (a leader restarted into its term has
            // committed entries it no longer knows are committed): then the producer state holds
            // every acknowledged batch. Once per term.
            if queue.caught_up_term == 0 || queue.caught_up_term != self.term() || !self.is_leader()
            {
                queue.reset();
                let term = self.term();
                self.group.catch_up_as_leader(within).await?;
                queue.caught_up_term = term;
            }
            let applied = self
                .group
                .state_machine()
                .with_state(|s| s.producer(header.producer_id));
            match queue.decide(header, applied) {
                Decision::Ahead(err) if tokio::time::Instant::now() < reorder_deadline => {
                    // Register for the next move before letting go of the queue, so it is
                    // not missed.
                    let moved = Arc::clone(&queue.moved);
                    let notified = moved.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    drop(queue);
                    if tokio::time::timeout_at(reorder_deadline, notified)
                        .await
                        .is_err()
                    {
                        return Err(err);
                    }
                    queue = Arc::clone(&self.ordered_writes).lock_owned().await;
                }
                decision => break self.act(queue, header, batch, decision, wait).await,
            }
        }
    }

    /// Carries out `decision` for an idempotent batch, still under the queue's lock.
    async fn act(
        self: &Arc<Self>,
        mut queue: tokio::sync::OwnedMutexGuard<WriteQueue>,
        header: &BatchHeader,
        batch: Bytes,
        decision: Decision,
        wait: WaitFor,
    ) -> Result<Queued, GroupError> {
        match decision {
            Decision::Reject(err) | Decision::Ahead(err) => Err(err),
            Decision::Applied {
                base_offset,
                next_offset,
            } => {
                tracing::info!(
                    producer_id = header.producer_id,
                    sequence = header.base_sequence,
                    base_offset,
                    "duplicate batch dropped"
                );
                Ok(Queued::Done(Applied {
                    base_offset,
                    next_offset,
                    reply: Bytes::new(),
                }))
            }
            Decision::Queued(outcome) => {
                tracing::info!(
                    producer_id = header.producer_id,
                    sequence = header.base_sequence,
                    "retry of a batch in flight: answering with its outcome"
                );
                Ok(Queued::InFlight(outcome))
            }
            Decision::Write => {
                let pending = self.group.submit(batch).await?;
                let (done, outcome) = tokio::sync::watch::channel(None);
                queue.track(header, outcome.clone());
                drop(queue);
                let partition = Arc::clone(self);
                tokio::spawn(async move {
                    let result = pending.await;
                    if let Err(err) = &result {
                        if wait == WaitFor::Accepted {
                            tracing::warn!(group = partition.id(), error = %err, "write acknowledged to the leader failed");
                        }
                        // Later batches of this term fail with it; decide afresh after catching up.
                        partition.ordered_writes.lock().await.reset();
                    }
                    done.send_replace(Some(
                        result
                            .map(|a| (a.base_offset, a.next_offset))
                            .map_err(Failure::from),
                    ));
                });
                Ok(Queued::InFlight(outcome))
            }
        }
    }
}

/// Where an idempotent batch stands once decided.
enum Queued {
    /// Answered already (a retry of an applied batch).
    Done(Applied),
    /// Queued in Raft (now, or by an earlier attempt): its outcome will come here.
    InFlight(tokio::sync::watch::Receiver<crate::idempotence::Outcome>),
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
