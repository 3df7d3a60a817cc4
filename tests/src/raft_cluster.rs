//! An in-process Raft cluster for replication tests: N nodes, each with its own peer transport,
//! group registry and gRPC server on a loopback port, all sharing one [`FaultPlan`] that can drop,
//! delay or cut links. Nodes are "crashed" by stopping their groups and server abruptly (the
//! segment logs stay as they are on disk) and restarted on the same directories and ports.
//!
//! Every record written through [`RaftCluster::write`] carries a unique value, so a test can check
//! afterwards that each acknowledged value is present exactly once, in order.
//!
//! Writers that run while the test crashes nodes use a [`GroupClient`] (cloneable, `'static`,
//! it follows the running replicas of one group) and, through [`spawn_writer`], a fresh value for
//! every attempt: a failed write may still have been committed, so retrying the same value could
//! make a legitimate duplicate and hide a real one.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use tokio::net::TcpListener;
use weir_format::batch::{BatchBuilder, Compression, ValidBatch};
use weir_proto::peer::peer_server::PeerServer;
use weir_raft::{
    Applied, FaultPlan, Group, GroupConfig, GroupError, GroupRegistry, NodeId, PartitionState,
    PeerNode, PeerService, PeerTransport, RaftTiming, SnapshotPoint,
};
use weir_storage::LogConfig;

/// How long a restarted node may take to get its port and its groups' files back.
const REOPEN_WITHIN: Duration = Duration::from_secs(5);

/// Raft timing for tests: fast elections, but slow enough for a loaded 2-core CI machine.
pub fn test_timing() -> RaftTiming {
    RaftTiming {
        heartbeat_ms: 50,
        election_min_ms: 300,
        election_max_ms: 600,
    }
}

/// A batch of one record whose value is `value`.
pub fn record_batch(value: &str) -> Bytes {
    let mut builder = BatchBuilder::new(Compression::None);
    builder.push(1_700_000_000_000, None, Some(value.as_bytes()), &[]);
    builder.build().unwrap_or_default()
}

/// The running replicas of every group, by group and node: shared with [`GroupClient`]s.
type LiveGroups = Arc<RwLock<BTreeMap<String, BTreeMap<NodeId, Arc<Group<PartitionState>>>>>>;

struct RunningNode {
    registry: Arc<GroupRegistry>,
    transport: Arc<PeerTransport>,
    groups: HashMap<String, Arc<Group<PartitionState>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
}

/// A cluster of in-process nodes.
pub struct RaftCluster {
    pub faults: Arc<FaultPlan>,
    root: tempfile::TempDir,
    addrs: BTreeMap<NodeId, SocketAddr>,
    nodes: BTreeMap<NodeId, Option<RunningNode>>,
    /// Groups created, with their log configuration, to reopen after a restart.
    group_configs: BTreeMap<String, LogConfig>,
    live: LiveGroups,
    pub timing: RaftTiming,
}

impl std::fmt::Debug for RaftCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftCluster")
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}

impl RaftCluster {
    /// Starts `n` nodes (ids 1..=n) with fault plan seed `seed`.
    pub async fn start(n: u64, seed: u64) -> anyhow::Result<Self> {
        let mut cluster = Self {
            faults: FaultPlan::new(seed),
            root: tempfile::tempdir()?,
            addrs: BTreeMap::new(),
            nodes: BTreeMap::new(),
            group_configs: BTreeMap::new(),
            live: LiveGroups::default(),
            timing: test_timing(),
        };
        for id in 1..=n {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            cluster.addrs.insert(id, listener.local_addr()?);
            let node = cluster.run_node(id, listener).await?;
            cluster.nodes.insert(id, Some(node));
        }
        Ok(cluster)
    }

    pub fn node_ids(&self) -> Vec<NodeId> {
        self.addrs.keys().copied().collect()
    }

    pub fn members(&self, ids: &[NodeId]) -> BTreeMap<NodeId, PeerNode> {
        ids.iter()
            .map(|id| (*id, PeerNode::new(self.addrs[id].to_string())))
            .collect()
    }

    fn group_dir(&self, node: NodeId, group: &str) -> PathBuf {
        self.root
            .path()
            .join(format!("node-{node}"))
            .join(group.replace('/', "-"))
    }

    async fn run_node(&self, id: NodeId, listener: TcpListener) -> anyhow::Result<RunningNode> {
        let registry = GroupRegistry::new();
        let faults: Arc<dyn weir_raft::LinkFaults> = self.faults.clone();
        let transport = PeerTransport::new(id, Some(faults));
        let service = PeerServer::new(PeerService::new(Arc::clone(&registry)))
            .max_decoding_message_size(weir_format::wire::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(weir_format::wire::MAX_MESSAGE_BYTES);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let server = tokio::spawn(async move {
            let result = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(err) = result {
                tracing::warn!(node = id, error = %err, "test server stopped");
            }
        });
        Ok(RunningNode {
            registry,
            transport,
            groups: HashMap::new(),
            stop: Some(stop),
            server,
        })
    }

    async fn open_group(
        &mut self,
        node: NodeId,
        group: &str,
        log: LogConfig,
    ) -> anyhow::Result<Arc<Group<PartitionState>>> {
        let dir = self.group_dir(node, group);
        let timing = self.timing;
        let running = self
            .nodes
            .get_mut(&node)
            .and_then(Option::as_mut)
            .context("node is down")?;
        let config = GroupConfig {
            id: group.to_string(),
            dir,
            log,
            point: SnapshotPoint::LogStart,
            timing,
            retention_check: Duration::from_millis(200),
        };
        // After a crash, the old incarnation's log closes once its last handle is gone (tasks of
        // the old group may still hold one for a moment).
        let transport = &running.transport;
        let what = format!("opening {group} on node {node}");
        let opened = crate::eventually(REOPEN_WITHIN, &what, || async {
            let opened = Group::open(
                node,
                config.clone(),
                PartitionState::default(),
                Arc::clone(transport),
            )
            .await;
            match opened {
                Ok(opened) => Ok(opened),
                Err(err) if err.to_string().contains("in use") => Err(err.into()),
                Err(err) => Err(crate::abort(err)),
            }
        })
        .await?;
        running.registry.insert(group, opened.handle());
        running
            .groups
            .insert(group.to_string(), Arc::clone(&opened));
        write_lock(&self.live)
            .entry(group.to_string())
            .or_default()
            .insert(node, Arc::clone(&opened));
        Ok(opened)
    }

    /// Creates `group` on `replicas` and forms it with them as voters.
    pub async fn create_group(
        &mut self,
        group: &str,
        replicas: &[NodeId],
        log: LogConfig,
    ) -> anyhow::Result<()> {
        self.group_configs.insert(group.to_string(), log.clone());
        let members = self.members(replicas);
        for &node in replicas {
            let opened = self.open_group(node, group, log.clone()).await?;
            opened.initialize(&members).await?;
        }
        Ok(())
    }

    /// Opens `group` on `node` without initializing it (a replica to be added by membership).
    pub async fn add_empty_replica(&mut self, group: &str, node: NodeId) -> anyhow::Result<()> {
        let log = self
            .group_configs
            .get(group)
            .cloned()
            .context("unknown group")?;
        self.open_group(node, group, log).await?;
        Ok(())
    }

    pub fn group(&self, node: NodeId, group: &str) -> Option<Arc<Group<PartitionState>>> {
        self.nodes.get(&node)?.as_ref()?.groups.get(group).cloned()
    }

    pub fn is_up(&self, node: NodeId) -> bool {
        self.nodes.get(&node).is_some_and(Option::is_some)
    }

    /// A client for `group` that follows its running replicas (crashes and restarts included).
    pub fn client(&self, group: &str) -> GroupClient {
        GroupClient {
            group: group.to_string(),
            live: Arc::clone(&self.live),
        }
    }

    /// Waits until a running node leads `group` and returns it. While an old leader is cut off
    /// it may still believe it leads; the leader of the highest term wins.
    pub async fn leader(&self, group: &str, within: Duration) -> anyhow::Result<NodeId> {
        self.client(group).wait_leader(within).await
    }

    /// Writes one batch through the current leader, retrying across leader changes until
    /// `within` runs out. Only unambiguous failures are retried (NOT_LEADER: the entry was
    /// never appended, or was truncated as a conflicting suffix); any other failure is returned,
    /// because the entry may still commit.
    pub async fn write(
        &self,
        group: &str,
        batch: Bytes,
        within: Duration,
    ) -> anyhow::Result<Applied> {
        self.client(group).write(batch, within).await
    }

    /// Stops `node` abruptly: its groups stop and its server closes; files stay as they are.
    pub async fn crash(&mut self, node: NodeId) -> anyhow::Result<()> {
        let Some(Some(mut running)) = self.nodes.insert(node, None) else {
            bail!("node {node} is not running");
        };
        // Clients stop seeing the node's replicas before they stop.
        for members in write_lock(&self.live).values_mut() {
            members.remove(&node);
        }
        if let Some(stop) = running.stop.take() {
            let _ = stop.send(());
        }
        running.server.abort();
        for group in running.groups.values() {
            group.shutdown().await;
        }
        drop(running);
        Ok(())
    }

    /// Restarts `node` on its old address and directories, reopening every group it had.
    pub async fn restart(&mut self, node: NodeId) -> anyhow::Result<()> {
        let addr = self.addrs[&node];
        let listener = crate::eventually(REOPEN_WITHIN, &format!("rebinding {addr}"), || async {
            Ok(TcpListener::bind(addr).await?)
        })
        .await?;
        let running = self.run_node(node, listener).await?;
        self.nodes.insert(node, Some(running));
        let groups: Vec<(String, LogConfig)> = self
            .group_configs
            .iter()
            .map(|(g, c)| (g.clone(), c.clone()))
            .collect();
        for (group, log) in groups {
            if self.group_dir(node, &group).exists() {
                self.open_group(node, &group, log).await?;
            }
        }
        Ok(())
    }

    /// Every record value of `group` on `node`, in offset order, with its offset (reads the
    /// replica's log directly, up to its high watermark when `committed_only`).
    pub fn read_all(
        &self,
        node: NodeId,
        group: &str,
        committed_only: bool,
    ) -> anyhow::Result<Vec<(u64, String)>> {
        let g = self.group(node, group).context("group not running there")?;
        let log = g.log();
        let bounds = log.bounds()?;
        let until = if committed_only {
            g.progress().borrow().high_watermark
        } else {
            bounds.next_offset
        };
        let mut out = Vec::new();
        let mut offset = bounds.log_start_offset;
        while offset < until {
            let read = log.read_until(offset, 1 << 20, until)?;
            if read.batches.is_empty() {
                break;
            }
            for batch in &read.batches {
                for (i, record) in batch.records()?.into_iter().enumerate() {
                    let value = String::from_utf8_lossy(record.value.as_deref().unwrap_or(b""))
                        .into_owned();
                    out.push((batch.header().base_offset + i as u64, value));
                }
            }
            offset = read.next_offset().unwrap_or(until);
        }
        Ok(out)
    }

    /// (entry index, term, base offset, CRC) of every stored batch of `group` on `node` from
    /// `from_index` up to (not including) `until_index`.
    pub fn entries(
        &self,
        node: NodeId,
        group: &str,
        from_index: u64,
        until_index: u64,
    ) -> anyhow::Result<Vec<(u64, u64, u64, u32)>> {
        let g = self.group(node, group).context("group not running there")?;
        crate::stored_entries(g.log(), from_index, until_index)
    }

    /// Waits until every running replica of `group` has applied at least `index`.
    pub async fn wait_applied(
        &self,
        group: &str,
        index: u64,
        within: Duration,
    ) -> anyhow::Result<()> {
        let what = format!("every running replica of {group} applied up to {index}");
        crate::eventually(within, &what, || {
            let behind: Vec<String> = self
                .nodes
                .iter()
                .filter_map(|(id, node)| {
                    let applied = node
                        .as_ref()?
                        .groups
                        .get(group)?
                        .progress()
                        .borrow()
                        .applied_index;
                    applied
                        .is_none_or(|a| a < index)
                        .then(|| format!("node {id} applied {applied:?}"))
                })
                .collect();
            std::future::ready(if behind.is_empty() {
                Ok(())
            } else {
                Err(anyhow::anyhow!("{}", behind.join(", ")))
            })
        })
        .await
    }

    /// The nodes running a replica of `group`.
    pub fn running_replicas(&self, group: &str) -> Vec<NodeId> {
        read_lock(&self.live)
            .get(group)
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Index of the last entry of `group` applied on `node`.
    pub fn applied_index(&self, node: NodeId, group: &str) -> Option<u64> {
        self.group(node, group)?.progress().borrow().applied_index
    }

    /// A replica's view of its log: where it starts and ends, and how far it applied.
    pub fn replica_state(&self, node: NodeId, group: &str) -> anyhow::Result<ReplicaState> {
        let g = self.group(node, group).context("group not running there")?;
        let bounds = g.log().bounds()?;
        let progress = *g.progress().borrow();
        Ok(ReplicaState {
            log_start_offset: bounds.log_start_offset,
            next_offset: bounds.next_offset,
            first_index: bounds.first_index,
            next_index: bounds.next_index,
            applied_index: progress.applied_index,
            high_watermark: progress.high_watermark,
        })
    }

    /// Every stored entry of `group` on `node` (index, term, base offset, CRC), from its first.
    pub fn all_entries(
        &self,
        node: NodeId,
        group: &str,
    ) -> anyhow::Result<Vec<(u64, u64, u64, u32)>> {
        let state = self.replica_state(node, group)?;
        match state.first_index {
            Some(first) => self.entries(node, group, first, state.next_index),
            None => Ok(Vec::new()),
        }
    }

    /// Waits until the replicas of `group` agree: the current leader has applied its whole log,
    /// and every running member of the group (voters and learners of the leader's membership)
    /// has applied the same last entry and stores exactly the same entries (index, term, base
    /// offset, CRC), starting at the same entry and offset. Returns the leader and the last
    /// index.
    pub async fn converge(&self, group: &str, within: Duration) -> anyhow::Result<Converged> {
        let client = self.client(group);
        crate::eventually(within, &format!("replicas of {group} to converge"), || {
            std::future::ready(self.agreement(&client, group))
        })
        .await
    }

    fn agreement(&self, client: &GroupClient, group: &str) -> anyhow::Result<Converged> {
        let (leader, g) = client.current_leader().context("no leader")?;
        let (last_log_index, voters, learners) = {
            let metrics = g.raft().metrics();
            let metrics = metrics.borrow();
            let membership = metrics.membership_config.membership();
            (
                metrics.last_log_index,
                membership.voter_ids().collect::<Vec<_>>(),
                membership.learner_ids().collect::<Vec<_>>(),
            )
        };
        let last = last_log_index.context("leader has an empty log")?;
        let leader_state = self.replica_state(leader, group)?;
        if leader_state.applied_index != Some(last) {
            bail!(
                "leader {leader} applied {:?} of {last}",
                leader_state.applied_index
            );
        }
        let leader_entries = self.all_entries(leader, group)?;
        let mut nodes = Vec::new();
        for node in voters.into_iter().chain(learners) {
            if self.group(node, group).is_none() {
                continue;
            }
            nodes.push(node);
            if node == leader {
                continue;
            }
            let state = self.replica_state(node, group)?;
            if state != leader_state {
                bail!("node {node} is at {state:?}, leader {leader} at {leader_state:?}");
            }
            let entries = self.all_entries(node, group)?;
            if entries != leader_entries {
                let differ = entries
                    .iter()
                    .zip(&leader_entries)
                    .find(|(a, b)| a != b)
                    .map(|(a, b)| format!("{a:?} (there) against {b:?} (leader)"));
                bail!(
                    "node {node} stores other entries than leader {leader}: {} (index, term, \
                     base offset, CRC)",
                    differ.unwrap_or_else(|| format!(
                        "{} entries against {}",
                        entries.len(),
                        leader_entries.len()
                    ))
                );
            }
        }
        Ok(Converged {
            leader,
            last_index: last,
            nodes,
        })
    }

    /// Shuts every node down.
    pub async fn shutdown(mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            if self.is_up(id) {
                let _ = self.crash(id).await;
            }
        }
    }
}

/// Checks a batch is what [`record_batch`] makes.
pub fn values_of(batch: &ValidBatch) -> anyhow::Result<Vec<String>> {
    Ok(batch
        .records()?
        .into_iter()
        .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or(b"")).into_owned())
        .collect())
}

/// What [`RaftCluster::converge`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Converged {
    pub leader: NodeId,
    /// The index of the last entry, applied everywhere.
    pub last_index: u64,
    /// The running members compared (the leader included).
    pub nodes: Vec<NodeId>,
}

/// One replica's log bounds and progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaState {
    pub log_start_offset: u64,
    pub next_offset: u64,
    pub first_index: Option<u64>,
    pub next_index: u64,
    pub applied_index: Option<u64>,
    pub high_watermark: u64,
}

fn read_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Writes to one group through whichever running replica leads it. Cheap to clone; usable from
/// spawned tasks while the test crashes and restarts nodes.
#[derive(Clone)]
pub struct GroupClient {
    group: String,
    live: LiveGroups,
}

impl std::fmt::Debug for GroupClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupClient")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl GroupClient {
    /// The running replica that leads the group in the highest term, if any.
    pub fn current_leader(&self) -> Option<(NodeId, Arc<Group<PartitionState>>)> {
        let live = read_lock(&self.live);
        let members = live.get(&self.group)?;
        members
            .iter()
            .filter_map(|(&id, g)| {
                let metrics = g.raft().metrics();
                let metrics = metrics.borrow();
                (metrics.state.is_leader() && metrics.current_leader == Some(id))
                    .then_some((metrics.current_term, id))
            })
            .max()
            .and_then(|(_, id)| members.get(&id).map(|g| (id, Arc::clone(g))))
    }

    /// Waits until a running replica leads the group.
    pub async fn wait_leader(&self, within: Duration) -> anyhow::Result<NodeId> {
        self.leader_within(within).await.map(|(id, _)| id)
    }

    async fn leader_within(
        &self,
        within: Duration,
    ) -> anyhow::Result<(NodeId, Arc<Group<PartitionState>>)> {
        crate::eventually(within, &format!("a leader for {}", self.group), || {
            std::future::ready(self.current_leader().context("no running replica leads"))
        })
        .await
    }

    /// One attempt: waits for a leader, proposes `batch` there and waits for it to commit, all
    /// within `within`. An error does not mean the batch was not committed.
    pub async fn write_once(&self, batch: Bytes, within: Duration) -> anyhow::Result<Applied> {
        let deadline = tokio::time::Instant::now() + within;
        let (id, g) = self.leader_within(within).await?;
        match tokio::time::timeout_at(deadline, g.write(batch)).await {
            Ok(Ok(applied)) => Ok(applied),
            Ok(Err(err)) => Err(anyhow::Error::new(err).context(format!("write on node {id}"))),
            Err(_) => bail!("write on node {id} not acknowledged within {within:?}"),
        }
    }

    /// Writes `batch`, retrying only unambiguous failures (see [`RaftCluster::write`]).
    pub async fn write(&self, batch: Bytes, within: Duration) -> anyhow::Result<Applied> {
        let deadline = tokio::time::Instant::now() + within;
        let what = format!("a write to {} acknowledged", self.group);
        crate::eventually(within, &what, || async {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.write_once(batch.clone(), remaining).await {
                Ok(applied) => Ok(applied),
                // Refused by a node that no longer leads: not written, safe to retry.
                Err(err)
                    if matches!(
                        err.downcast_ref::<GroupError>(),
                        Some(GroupError::NotLeader { .. })
                    ) =>
                {
                    Err(err)
                }
                Err(err) => Err(crate::abort(err)),
            }
        })
        .await
    }
}

/// How long a [`spawn_writer`] attempt waits for its acknowledgement. An attempt stuck on a
/// leader that was cut off gives up after this and tries the next value on the current leader.
pub const WRITE_ATTEMPT: Duration = Duration::from_millis(1500);

/// What a [`spawn_writer`] task did.
#[derive(Debug, Clone, Default)]
pub struct WriterReport {
    /// Acknowledged values with what the write returned, in acknowledgement order.
    pub acked: Vec<(String, Applied)>,
    /// Values whose write failed or timed out: they may or may not be in the log.
    pub unacked: Vec<String>,
}

/// Starts a task that writes one-record batches `{prefix}-{n}` (n = 0, 1, ...) one after the
/// other until `stop` is set, with a fresh value for every attempt (never a retry of the same
/// value). Every acknowledgement increments `acks`.
pub fn spawn_writer(
    client: GroupClient,
    prefix: String,
    stop: Arc<AtomicBool>,
    acks: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<WriterReport> {
    tokio::spawn(async move {
        let mut report = WriterReport::default();
        let mut n = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let value = format!("{prefix}-{n}");
            n += 1;
            match client.write_once(record_batch(&value), WRITE_ATTEMPT).await {
                Ok(applied) => {
                    report.acked.push((value, applied));
                    acks.fetch_add(1, Ordering::SeqCst);
                }
                Err(err) => {
                    tracing::debug!(%value, error = %format!("{err:#}"), "write not acknowledged");
                    report.unacked.push(value);
                    // Back off a little: no leader yet, or it is being replaced.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        report
    })
}
