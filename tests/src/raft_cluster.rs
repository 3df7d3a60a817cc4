//! An in-process Raft cluster for replication tests: N nodes, each with its own peer transport,
//! group registry and gRPC server on a loopback port, all sharing one [`FaultPlan`] that can drop,
//! delay or cut links. Nodes are "crashed" by stopping their groups and server abruptly (the
//! segment logs stay as they are on disk) and restarted on the same directories and ports.
//!
//! Every record written through [`RaftCluster::write`] carries a unique value, so a test can check
//! afterwards that each acknowledged value is present exactly once, in order.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use tokio::net::TcpListener;
use weir_proto::peer::peer_server::PeerServer;
use weir_raft::{
    Applied, FaultPlan, Group, GroupConfig, GroupError, GroupRegistry, MAX_PEER_MESSAGE_BYTES,
    NodeId, PartitionState, PeerNode, PeerService, PeerTransport, RaftTiming, SnapshotPoint,
};
use weir_storage::LogConfig;
use weir_storage::codec::{BatchBuilder, Compression, ValidBatch};

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
            .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES);
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
        let opened = Group::open(
            node,
            config,
            PartitionState::default(),
            Arc::clone(&running.transport),
        )
        .await?;
        running.registry.insert(group, opened.handle());
        running
            .groups
            .insert(group.to_string(), Arc::clone(&opened));
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

    /// Waits until a running node leads `group` (as that node sees it) and returns it.
    pub async fn leader(&self, group: &str, within: Duration) -> anyhow::Result<NodeId> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            for (&id, node) in &self.nodes {
                if let Some(g) = node.as_ref().and_then(|n| n.groups.get(group))
                    && g.is_leader()
                {
                    return Ok(id);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("no leader for {group} within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Writes one batch through the current leader, retrying across leader changes until
    /// `within` runs out.
    pub async fn write(
        &self,
        group: &str,
        batch: Bytes,
        within: Duration,
    ) -> anyhow::Result<Applied> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if remaining.is_zero() {
                bail!("write to {group} not acknowledged within {within:?}");
            }
            let leader = self.leader(group, remaining).await?;
            let Some(g) = self.group(leader, group) else {
                continue;
            };
            match tokio::time::timeout(remaining, g.write(batch.clone())).await {
                Ok(Ok(applied)) => return Ok(applied),
                Ok(Err(GroupError::NotLeader { .. })) | Ok(Err(GroupError::Raft(_))) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(Err(err)) => return Err(err.into()),
                Err(_) => bail!("write to {group} not acknowledged within {within:?}"),
            }
        }
    }

    /// Stops `node` abruptly: its groups stop and its server closes; files stay as they are.
    pub async fn crash(&mut self, node: NodeId) -> anyhow::Result<()> {
        let Some(Some(mut running)) = self.nodes.insert(node, None) else {
            bail!("node {node} is not running");
        };
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
        let listener = {
            let mut tries = 0;
            loop {
                match TcpListener::bind(addr).await {
                    Ok(l) => break l,
                    Err(err) if tries < 50 => {
                        tries += 1;
                        tracing::debug!(error = %err, "rebinding {addr}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(err) => return Err(err.into()),
                }
            }
        };
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
        let mut out = Vec::new();
        let mut from = from_index;
        while from < until_index {
            let read = g.log().read_entries(from, until_index, 1 << 20)?;
            if read.batches.is_empty() {
                break;
            }
            for batch in &read.batches {
                let h = batch.header();
                out.push((h.index, h.term, h.base_offset, h.crc));
                from = h.index + 1;
            }
        }
        Ok(out)
    }

    /// Waits until every running replica of `group` has applied at least `index`.
    pub async fn wait_applied(
        &self,
        group: &str,
        index: u64,
        within: Duration,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        for (&id, node) in &self.nodes {
            let Some(g) = node.as_ref().and_then(|n| n.groups.get(group)) else {
                continue;
            };
            let mut progress = g.progress();
            loop {
                if progress.borrow().applied_index.is_some_and(|a| a >= index) {
                    break;
                }
                if tokio::time::timeout_at(deadline, progress.changed())
                    .await
                    .is_err()
                {
                    bail!("node {id} did not apply {group} up to {index} within {within:?}");
                }
            }
        }
        Ok(())
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
