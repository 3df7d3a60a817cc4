//! [`Group`]: one running Raft group on this node — its segment log, log store, state machine and
//! openraft handle — and [`GroupRegistry`], the node's map of running groups that the peer service
//! dispatches to. Groups are created and removed at run time (the controller's reconciler does it
//! for partitions).
//!
//! Directory layout of a group: `DIR/log/` (the segment log), `DIR/raft.meta`, `DIR/raft.snapshot`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, InitializeError, RaftError};
use tokio::sync::watch;
use weir_storage::{LogConfig, PartitionLog};

use crate::error::{Failure, GroupError};
use crate::log_store::{FaultSlot, LogBoundary, LogStore, SharedBoundary};
use crate::network::{GroupNetworkFactory, PeerTransport};
use crate::state_machine::{GroupState, Progress, SnapshotPoint, StateMachine};
use crate::types::{Applied, NodeId, Payload, PeerNode, Raft};

/// How a group is set up.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// Group id on the wire: `__controller` or `topic/partition`.
    pub id: String,
    pub dir: PathBuf,
    pub log: LogConfig,
    pub point: SnapshotPoint,
    pub timing: RaftTiming,
    /// How often a `LogStart` group checks retention.
    pub retention_check: Duration,
}

/// Raft timing, shared by all groups of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftTiming {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
}

impl Default for RaftTiming {
    fn default() -> Self {
        Self {
            heartbeat_ms: 150,
            election_min_ms: 800,
            election_max_ms: 1600,
        }
    }
}

fn raft_config(config: &GroupConfig) -> Result<openraft::Config, GroupError> {
    let (policy, keep) = match config.point {
        SnapshotPoint::Applied => (openraft::SnapshotPolicy::LogsSinceLast(1000), 100),
        // Partition snapshots are taken only at retention points; the log is purged up to them
        // at once (the data there is already due for deletion).
        SnapshotPoint::LogStart => (openraft::SnapshotPolicy::Never, 0),
    };
    let raft = openraft::Config {
        cluster_name: "weir".into(),
        heartbeat_interval: config.timing.heartbeat_ms,
        election_timeout_min: config.timing.election_min_ms,
        election_timeout_max: config.timing.election_max_ms,
        install_snapshot_timeout: 10_000,
        snapshot_policy: policy,
        max_in_snapshot_log_to_keep: keep,
        purge_batch_size: 1,
        max_payload_entries: 256,
        ..openraft::Config::default()
    };
    raft.validate()
        .map_err(|e| GroupError::Config(e.to_string()))
}

/// What the peer service needs of any group.
#[derive(Clone)]
pub struct GroupHandle {
    pub raft: Raft,
    pub(crate) boundary: SharedBoundary,
    pub(crate) fault: FaultSlot,
}

impl std::fmt::Debug for GroupHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupHandle").finish_non_exhaustive()
    }
}

impl GroupHandle {
    /// Records where an incoming snapshot says the log starts, before openraft installs it.
    pub(crate) fn expect_boundary(&self, boundary: LogBoundary) {
        *self
            .boundary
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(boundary);
    }
}

/// One running Raft group.
pub struct Group<S: GroupState> {
    id: String,
    node_id: NodeId,
    raft: Raft,
    log: LogStore,
    state_machine: StateMachine<S>,
    boundary: SharedBoundary,
    transport: Arc<PeerTransport>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl<S: GroupState> std::fmt::Debug for Group<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl<S: GroupState> Group<S> {
    /// Opens (or creates) the group's files in `config.dir` and starts its Raft node. A new group
    /// waits for [`Group::initialize`] or for a leader to contact it.
    pub async fn open(
        node_id: NodeId,
        config: GroupConfig,
        state: S,
        transport: Arc<PeerTransport>,
    ) -> Result<Arc<Self>, GroupError> {
        std::fs::create_dir_all(&config.dir).map_err(|source| GroupError::Io {
            path: config.dir.clone(),
            source,
        })?;
        let log = Arc::new(PartitionLog::open(
            config.dir.join("log"),
            config.log.clone(),
        )?);
        let boundary: SharedBoundary = Arc::new(Mutex::new(None));
        let log_store = LogStore::open(log, &config.dir, Arc::clone(&boundary))?;
        let state_machine = StateMachine::open(
            &config.dir,
            config.point,
            state,
            &log_store,
            Arc::clone(&boundary),
        )?;
        let network = GroupNetworkFactory::new(config.id.clone(), Arc::clone(&transport));
        let raft = Raft::new(
            node_id,
            Arc::new(raft_config(&config)?),
            network,
            log_store.clone(),
            state_machine.clone(),
        )
        .await
        .map_err(|e| GroupError::Config(format!("starting the Raft node: {e}")))?;
        let group = Arc::new(Self {
            id: config.id.clone(),
            node_id,
            raft,
            log: log_store,
            state_machine,
            boundary,
            transport,
            tasks: Mutex::new(Vec::new()),
        });
        if config.point == SnapshotPoint::LogStart {
            let weak = Arc::downgrade(&group);
            let every = config.retention_check;
            let task = tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(group) = weak.upgrade() else { break };
                    if let Err(err) = group.apply_retention().await {
                        tracing::warn!(group = %group.id, error = %err, "retention pass failed");
                    }
                }
            });
            group.push_task(task);
        }
        tracing::info!(group = %config.id, node = node_id, "raft group started");
        Ok(group)
    }

    fn push_task(&self, task: tokio::task::JoinHandle<()>) {
        self.tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(task);
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The openraft handle, for this crate's tests and diagnostics; other crates use the
    /// methods of [`Group`] and [`crate::Partition`].
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    pub fn log(&self) -> &Arc<PartitionLog> {
        self.log.log()
    }

    pub fn state_machine(&self) -> &StateMachine<S> {
        &self.state_machine
    }

    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.state_machine.progress()
    }

    pub fn handle(&self) -> GroupHandle {
        GroupHandle {
            raft: self.raft.clone(),
            boundary: Arc::clone(&self.boundary),
            fault: self.log.fault(),
        }
    }

    /// An openraft failure of this group as a typed [`GroupError`] (see [`classify`]).
    pub fn raft_error<E: std::fmt::Display>(&self, err: RaftError<NodeId, E>) -> GroupError {
        classify(err, &self.log.fault())
    }

    /// The Raft core of this group stopped: why, as a typed [`GroupError`].
    fn fatal_error(&self, fatal: openraft::error::Fatal<NodeId>) -> GroupError {
        from_fatal(fatal, &self.log.fault())
    }

    /// Forms the group with `members` as voters. Every member may call this with the same
    /// members: all write the same first entry, so only the first call on each node counts and
    /// later ones are ignored.
    pub async fn initialize(&self, members: &BTreeMap<NodeId, PeerNode>) -> Result<(), GroupError> {
        match self.raft.initialize(members.clone()).await {
            Ok(()) => {
                tracing::info!(group = %self.id, members = ?members.keys().collect::<Vec<_>>(), "group initialized");
                Ok(())
            }
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(err) => Err(self.raft_error(err)),
        }
    }

    /// Proposes one record batch on this node and waits until it is committed and applied: with
    /// the default durability, a majority of replicas have it on disk. Fails with
    /// [`GroupError::NotLeader`] when this node does not lead the group.
    pub async fn write(&self, batch: bytes::Bytes) -> Result<Applied, GroupError> {
        write_local(&self.raft, &self.log.fault(), batch)
            .await
            .map_err(GroupError::from)
    }

    /// Hands `batch` to this node's Raft core and returns once it is queued there (in call order),
    /// without waiting for it to commit: the returned future resolves when it has been applied.
    /// A replica that does not lead rejects it through that future.
    pub async fn submit(
        &self,
        batch: bytes::Bytes,
    ) -> Result<impl std::future::Future<Output = Result<Applied, GroupError>> + use<S>, GroupError>
    {
        let pending = self
            .raft
            .client_write_ff(Payload(batch))
            .await
            .map_err(|e| self.fatal_error(e))?;
        Ok(async move {
            match pending.await {
                Ok(Ok(response)) => Ok(response.data),
                Ok(Err(ClientWriteError::ForwardToLeader(forward))) => Err(GroupError::NotLeader {
                    leader: forward.leader_id,
                    leader_addr: forward.leader_node.map(|n| n.addr),
                }),
                Ok(Err(err)) => Err(GroupError::Replication(err.to_string())),
                Err(_) => Err(GroupError::ShuttingDown),
            }
        })
    }

    /// Like [`Group::write`], but from any replica: a write on a follower is forwarded to the
    /// leader over the peer transport, and a write during an election waits for the new leader.
    /// Gives up after `within`.
    pub async fn write_anywhere(
        &self,
        batch: bytes::Bytes,
        within: Duration,
    ) -> Result<Applied, GroupError> {
        let deadline = tokio::time::Instant::now() + within;
        let mut backoff = weir_format::retry::RetryPolicy::REQUEST.backoff();
        let mut last_error = GroupError::NotLeader {
            leader: None,
            leader_addr: None,
        };
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if remaining.is_zero() {
                return Err(last_error);
            }
            let attempt = match write_local(&self.raft, &self.log.fault(), batch.clone()).await {
                Err(Failure::NotLeader {
                    leader: Some(leader),
                    leader_addr: Some(addr),
                }) if leader != self.node_id => {
                    match self
                        .transport
                        .forward_write(&self.id, leader, &addr, batch.clone(), remaining)
                        .await
                    {
                        Ok(result) => result.map_err(GroupError::from),
                        Err(err) => Err(GroupError::Forward {
                            leader,
                            addr,
                            reason: err.to_string(),
                        }),
                    }
                }
                other => other.map_err(GroupError::from),
            };
            match attempt {
                Ok(applied) => return Ok(applied),
                Err(
                    err @ (GroupError::NotLeader { .. }
                    | GroupError::Forward { .. }
                    | GroupError::Replication(_)),
                ) => {
                    tracing::debug!(group = %self.id, error = %err, "write not accepted yet; retrying");
                    last_error = err;
                    tokio::time::sleep(backoff.next_delay(None).min(remaining)).await;
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Confirms with a quorum that this node leads the group in the current term and waits
    /// until it has applied every entry committed as far as it knows (openraft's read index) —
    /// at most `within`. Fails with [`GroupError::NotLeader`] on a node that does not lead, also
    /// one that only believes it does (a leader of an older term).
    ///
    /// A leader restarted into its term does not know how far its log was committed before the
    /// restart, so this alone does not prove that every acknowledged write is applied; see
    /// [`Group::catch_up_as_leader`].
    pub async fn confirm_leadership(&self, within: Duration) -> Result<(), GroupError> {
        match tokio::time::timeout(within, self.raft.ensure_linearizable()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward)))) => {
                Err(GroupError::NotLeader {
                    leader: forward.leader_id,
                    leader_addr: forward.leader_node.map(|n| n.addr),
                })
            }
            Ok(Err(err)) => Err(self.raft_error(err)),
            Err(_) => Err(GroupError::Timeout {
                what: "confirming leadership".into(),
                within,
            }),
        }
    }

    /// Makes the state machine reflect every write ever acknowledged, on a confirmed leader:
    /// confirm leadership, note the term and the last entry of the local log (which holds every
    /// committed entry, by leader completeness), wait until that entry is applied, then confirm
    /// again in the same term — so this node led throughout. Fails with
    /// [`GroupError::NotLeader`] when it does not (or no longer) lead.
    pub async fn catch_up_as_leader(&self, within: Duration) -> Result<(), GroupError> {
        let deadline = tokio::time::Instant::now() + within;
        self.confirm_leadership(within).await?;
        let (term, last) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.current_term, m.last_log_index)
        };
        let mut metrics = self.raft.metrics();
        loop {
            {
                let m = metrics.borrow_and_update();
                if m.current_term != term {
                    return Err(GroupError::NotLeader {
                        leader: m.current_leader,
                        leader_addr: None,
                    });
                }
                if m.last_applied.map(|l| l.index) >= last {
                    break;
                }
            }
            if tokio::time::timeout_at(deadline, metrics.changed())
                .await
                .is_err()
            {
                return Err(GroupError::Timeout {
                    what: "applying the log".into(),
                    within,
                });
            }
        }
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.confirm_leadership(remaining.max(Duration::from_millis(100)))
            .await?;
        if self.raft.metrics().borrow().current_term != term {
            return Err(GroupError::NotLeader {
                leader: None,
                leader_addr: None,
            });
        }
        Ok(())
    }

    /// The address of `node` in the group's membership.
    pub fn node_addr(&self, node: NodeId) -> Option<String> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&node)
            .map(|n| n.addr.clone())
    }

    /// The current leader, if known.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    pub fn is_leader(&self) -> bool {
        self.leader() == Some(self.node_id)
    }

    /// The current Raft term as this replica knows it.
    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    /// Voters and learners of the current membership.
    /// Whether this replica knows a leader and has applied its whole local log.
    pub fn caught_up(&self) -> bool {
        is_caught_up(&self.raft.metrics().borrow())
    }

    /// Waits until [`Group::caught_up`]; returns false if the group stopped first.
    pub async fn wait_caught_up(&self) -> bool {
        let mut metrics = self.raft.metrics();
        loop {
            if is_caught_up(&metrics.borrow_and_update()) {
                return true;
            }
            if metrics.changed().await.is_err() {
                return false;
            }
        }
    }

    /// Whether the group has been formed (has a membership).
    pub async fn is_initialized(&self) -> bool {
        matches!(self.raft.is_initialized().await, Ok(true))
    }

    /// Adds `node` as a learner. With `catch_up`, waits until it has caught up, at most that long.
    pub async fn add_learner(
        &self,
        id: NodeId,
        node: PeerNode,
        catch_up: Option<Duration>,
    ) -> Result<(), GroupError> {
        let call = self.raft.add_learner(id, node, catch_up.is_some());
        let result = match catch_up {
            Some(within) => {
                tokio::time::timeout(within, call)
                    .await
                    .map_err(|_| GroupError::Timeout {
                        what: format!("learner {id} catching up"),
                        within,
                    })?
            }
            None => call.await,
        };
        result.map(|_| ()).map_err(|e| self.raft_error(e))
    }

    /// Changes the voters to `voters` in one joint-consensus step (learners not in it stay
    /// learners).
    pub async fn change_voters(&self, voters: BTreeSet<NodeId>) -> Result<(), GroupError> {
        self.raft
            .change_membership(voters, false)
            .await
            .map(|_| ())
            .map_err(|e| self.raft_error(e))
    }

    /// Starts an election now.
    pub async fn campaign(&self) -> Result<(), GroupError> {
        self.raft
            .trigger()
            .elect()
            .await
            .map_err(|e| self.fatal_error(e))
    }

    /// Confirms with a quorum that this node leads (a linearizable read point); fails with
    /// [`GroupError::NotLeader`] elsewhere.
    pub async fn ensure_linearizable(&self) -> Result<(), GroupError> {
        match self.raft.ensure_linearizable().await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward))) => {
                Err(GroupError::NotLeader {
                    leader: forward.leader_id,
                    leader_addr: forward.leader_node.map(|n| n.addr),
                })
            }
            Err(err) => Err(self.raft_error(err)),
        }
    }

    pub fn members(&self) -> (BTreeSet<NodeId>, BTreeSet<NodeId>) {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        (
            membership.voter_ids().collect(),
            membership.learner_ids().collect(),
        )
    }

    /// One retention pass: if the log holds segments past retention, agree on the cut with
    /// openraft (a snapshot at the entry before the first kept one), then purge up to it.
    pub async fn apply_retention(&self) -> Result<(), GroupError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let Some(plan) = self.log.log().retention_plan(now)? else {
            return Ok(());
        };
        let Some(point_index) = plan.first_index.checked_sub(1) else {
            return Ok(());
        };
        let applied = self.progress().borrow().applied_index;
        if applied.is_none_or(|applied| applied < point_index) {
            // Retention never removes what is not yet committed and applied here.
            return Ok(());
        }
        let Some(point) = self.log.log_id_at(point_index)? else {
            return Ok(());
        };
        self.state_machine.set_purge_target(
            point,
            LogBoundary {
                next_index: plan.first_index,
                next_offset: plan.log_start_offset,
            },
        );
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| self.fatal_error(e))?;
        let mut metrics = self.raft.metrics();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if metrics.borrow().snapshot.is_some_and(|s| s >= point) {
                break;
            }
            if tokio::time::timeout_at(deadline, metrics.changed())
                .await
                .is_err()
            {
                return Err(GroupError::Timeout {
                    what: format!("building the snapshot at {point}"),
                    within: Duration::from_secs(10),
                });
            }
        }
        self.raft
            .trigger()
            .purge_log(point.index)
            .await
            .map_err(|e| self.fatal_error(e))?;
        tracing::info!(group = %self.id, purge_upto = point.index, log_start_offset = plan.log_start_offset, "retention agreed");
        Ok(())
    }

    /// Stops the Raft node and background tasks; the files stay.
    pub async fn shutdown(&self) {
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain(..)
        {
            task.abort();
        }
        if let Err(err) = self.raft.shutdown().await {
            tracing::warn!(group = %self.id, error = %err, "raft shutdown");
        }
        tracing::info!(group = %self.id, "raft group stopped");
    }
}

/// A leader is known and the whole local log is applied.
fn is_caught_up(m: &openraft::RaftMetrics<NodeId, PeerNode>) -> bool {
    m.current_leader.is_some() && m.last_applied.map(|l| l.index) >= m.last_log_index
}

/// Proposes `batch` to the group through this node's Raft handle.
pub(crate) async fn write_local(
    raft: &Raft,
    fault: &FaultSlot,
    batch: bytes::Bytes,
) -> Result<Applied, Failure> {
    match raft.client_write(Payload(batch)).await {
        Ok(response) => Ok(response.data),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
            Err(Failure::NotLeader {
                leader: forward.leader_id,
                leader_addr: forward.leader_node.map(|n| n.addr),
            })
        }
        Err(err) => Err(Failure::from(classify(err, fault))),
    }
}

/// An openraft failure as a [`GroupError`]: a fatal one (the Raft core stopped) becomes the
/// storage fault the log store recorded, so a corrupt or full disk is not mistaken for a
/// transient replication problem. Callers handle `ForwardToLeader` themselves first.
pub(crate) fn classify<E: std::fmt::Display>(
    err: RaftError<NodeId, E>,
    fault: &FaultSlot,
) -> GroupError {
    match err {
        RaftError::Fatal(fatal) => from_fatal(fatal, fault),
        RaftError::APIError(err) => GroupError::Replication(err.to_string()),
    }
}

/// The Raft core stopped: why, as a [`GroupError`].
pub(crate) fn from_fatal(fatal: openraft::error::Fatal<NodeId>, fault: &FaultSlot) -> GroupError {
    match fault.get() {
        Some(fault) => GroupError::Halted(fault.clone()),
        None => match fatal {
            openraft::error::Fatal::Stopped => GroupError::ShuttingDown,
            other => GroupError::Replication(other.to_string()),
        },
    }
}

/// The groups running on this node, by id.
#[derive(Debug, Default)]
pub struct GroupRegistry {
    groups: RwLock<HashMap<String, GroupHandle>>,
}

impl GroupRegistry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn insert(&self, id: &str, handle: GroupHandle) {
        self.groups
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id.to_string(), handle);
    }

    pub fn remove(&self, id: &str) -> Option<GroupHandle> {
        self.groups
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(id)
    }

    pub fn get(&self, id: &str) -> Option<GroupHandle> {
        self.groups
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    pub fn len(&self) -> usize {
        self.groups
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Removes a group's files (after the group was shut down and dropped).
pub fn remove_group_files(dir: &Path) -> Result<(), GroupError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(GroupError::Io {
            path: dir.to_path_buf(),
            source,
        }),
    }
}
