//! [`Controller`]: this node's replica of the metadata Raft group (`__controller`). The initial
//! voters are configured (1, 3 or 5 nodes); nodes that join later follow as learners. Every
//! command goes through [`Controller::propose`], which forwards to the controller leader when this
//! node does not lead, so any node can serve admin requests.
//!
//! On the leader, [`Controller::run_leader_duties`] drains decommissioning brokers by proposing
//! reassignments.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use weir_raft::{
    Group, GroupConfig, GroupError, GroupRegistry, NodeId, PeerNode, PeerTransport, RaftTiming,
    SnapshotPoint,
};
use weir_storage::LogConfig;

use crate::metadata::{
    CommandReply, Metadata, MetadataCommand, MetadataError, MetadataState, OFFSETS_TOPIC,
    TopicConfig, TopicRecord, command_batch, validate_topic_name,
};
use crate::placement::{drain_moves, place_topic, rebalance_moves};

/// The controller group's id on the wire and its directory name.
pub const CONTROLLER_GROUP: &str = "__controller";

/// A broker that answered within this window counts as alive.
pub const LIVENESS_WINDOW: Duration = Duration::from_secs(5);

/// How long a proposal may take (elections included) before it fails.
pub const PROPOSE_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a controller operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Rejected(#[from] MetadataError),
    #[error(transparent)]
    Group(#[from] GroupError),
    #[error("reply does not decode: {0}")]
    BadReply(String),
}

/// Settings of this node's controller replica.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub node_id: NodeId,
    /// This node's `host:port`.
    pub addr: String,
    pub rack: Option<String>,
    /// The node's data directory; the controller group lives in `DIR/__controller`.
    pub data_dir: PathBuf,
    /// The initial controller voters (empty for a node that joins an existing cluster).
    pub voters: BTreeMap<NodeId, PeerNode>,
    pub timing: RaftTiming,
}

/// This node's replica of the metadata group.
#[derive(Debug)]
pub struct Controller {
    node_id: NodeId,
    group: Arc<Group<MetadataState>>,
    metadata: watch::Receiver<Arc<Metadata>>,
    ready: std::sync::atomic::AtomicBool,
    transport: Arc<PeerTransport>,
}

impl Controller {
    /// Opens the controller group and, on an initial voter, forms it with the configured voters
    /// (idempotent: a group that already has a log ignores this).
    pub async fn start(
        config: &ControllerConfig,
        transport: Arc<PeerTransport>,
        registry: &GroupRegistry,
    ) -> Result<Arc<Self>, ControllerError> {
        let (state, metadata) = MetadataState::new();
        let group_config = GroupConfig {
            id: CONTROLLER_GROUP.to_string(),
            dir: config.data_dir.join(CONTROLLER_GROUP),
            log: LogConfig {
                segment_bytes: 16 << 20,
                segment_ms: None,
                retention_ms: None,
                retention_bytes: None,
                ..LogConfig::default()
            },
            point: SnapshotPoint::Applied,
            timing: config.timing,
            retention_check: Duration::from_secs(3600),
        };
        let group =
            Group::open(config.node_id, group_config, state, Arc::clone(&transport)).await?;
        registry.insert(CONTROLLER_GROUP, group.handle());
        if config.voters.contains_key(&config.node_id) {
            group.initialize(&config.voters).await?;
        }
        Ok(Arc::new(Self {
            node_id: config.node_id,
            group,
            metadata,
            ready: std::sync::atomic::AtomicBool::new(false),
            transport,
        }))
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    pub fn group(&self) -> &Arc<Group<MetadataState>> {
        &self.group
    }

    /// The metadata as this replica has applied it.
    pub fn metadata(&self) -> Arc<Metadata> {
        Arc::clone(&self.metadata.borrow())
    }

    /// Watches the applied metadata.
    pub fn watch(&self) -> watch::Receiver<Arc<Metadata>> {
        self.metadata.clone()
    }

    /// The controller leader, as this node knows it.
    pub fn leader(&self) -> Option<NodeId> {
        self.group.leader()
    }

    pub fn is_leader(&self) -> bool {
        self.group.is_leader()
    }

    /// True once this replica has applied its whole local log with a leader known (latched): its
    /// metadata is no older than what it had before a restart.
    pub fn ready(&self) -> bool {
        if self.ready.load(std::sync::atomic::Ordering::Acquire) {
            return true;
        }
        let caught_up = self.group.caught_up();
        if caught_up {
            self.ready.store(true, std::sync::atomic::Ordering::Release);
        }
        caught_up
    }

    /// On the controller leader: the metadata with every committed command applied (a
    /// linearizable read). Elsewhere: [`GroupError::NotLeader`].
    pub async fn latest_metadata(&self) -> Result<Arc<Metadata>, ControllerError> {
        self.group.ensure_linearizable().await?;
        Ok(self.metadata())
    }

    /// Whether broker `id` answered this node recently (this node itself always counts): a reply
    /// to Raft traffic, or to the liveness probe every node sends the brokers it has not heard
    /// from lately (see the broker's node), so the view covers every broker on every node.
    pub fn is_alive(&self, id: NodeId) -> bool {
        id == self.node_id
            || self
                .transport
                .last_heard(id)
                .is_some_and(|ago| ago < LIVENESS_WINDOW)
    }

    /// The brokers that count as alive (see [`Controller::is_alive`]).
    pub fn alive_brokers(&self) -> std::collections::BTreeSet<NodeId> {
        self.metadata()
            .brokers
            .keys()
            .copied()
            .filter(|id| self.is_alive(*id))
            .collect()
    }

    /// The address of the controller leader, if known.
    pub fn leader_addr(&self) -> Option<String> {
        self.leader().and_then(|id| self.group.node_addr(id))
    }

    /// Proposes a command (forwarded to the leader when needed) and returns its applied result
    /// once this node's replica has applied it too, so that what this node answers next reflects
    /// the change (read-your-writes through the same node).
    pub async fn propose(&self, command: MetadataCommand) -> Result<u64, ControllerError> {
        let batch =
            command_batch(&command).map_err(|e| ControllerError::BadReply(e.to_string()))?;
        let applied = self.group.write_anywhere(batch, PROPOSE_TIMEOUT).await?;
        let (version, result): CommandReply = postcard::from_bytes(&applied.reply)
            .map_err(|e| ControllerError::BadReply(e.to_string()))?;
        self.wait_for(|m| (m.version >= version).then_some(()))
            .await?;
        Ok(result?)
    }

    /// Creates a topic: places its replicas on the current metadata and proposes it. The
    /// placement is checked again when the command applies. `created_by` (`User:<name>`): the
    /// user creating it, recorded on the topic and held to its `partitions` quota.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u32,
        config: TopicConfig,
        created_by: Option<&str>,
    ) -> Result<TopicRecord, ControllerError> {
        validate_topic_name(name)?;
        self.create_topic_unchecked(
            name,
            partitions,
            replication_factor,
            config,
            false,
            created_by,
        )
        .await
    }

    async fn create_topic_unchecked(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u32,
        config: TopicConfig,
        internal: bool,
        created_by: Option<&str>,
    ) -> Result<TopicRecord, ControllerError> {
        let metadata = self.metadata();
        if metadata.topics.contains_key(name) {
            return Err(MetadataError::TopicExists(name.to_string()).into());
        }
        // On the leader, place only on brokers that answer; elsewhere the view is partial.
        let alive = self.is_leader().then(|| self.alive_brokers());
        let assignment =
            match place_topic(&metadata, partitions, replication_factor, alive.as_ref()) {
                // Nodes of the controller group that have not registered as brokers yet (a cluster
                // starting) still count: wait for them rather than refuse for good.
                Err(MetadataError::ReplicationFactorTooLarge { wanted, brokers }) => {
                    let (voters, learners) = self.group.members();
                    let members =
                        u32::try_from(voters.union(&learners).count()).unwrap_or(u32::MAX);
                    return Err(if members >= wanted {
                        MetadataError::NotEnoughBrokers {
                            wanted,
                            available: brokers,
                        }
                    } else {
                        // Name the cluster's size, also while some of it is still registering.
                        MetadataError::ReplicationFactorTooLarge {
                            wanted,
                            brokers: brokers.max(members),
                        }
                    }
                    .into());
                }
                other => other?,
            };
        let command = match created_by {
            Some(created_by) => MetadataCommand::CreateUserTopic {
                created_by: created_by.to_string(),
                name: name.to_string(),
                replication_factor,
                config,
                assignment,
            },
            None => MetadataCommand::CreateTopic {
                name: name.to_string(),
                replication_factor,
                config,
                internal,
                assignment,
            },
        };
        self.propose(command).await?;
        self.wait_for(|m| m.topics.get(name).cloned()).await
    }

    /// Grows topic `name` to `total` partitions: places the new ones on the current metadata
    /// (like a new topic's, balanced against the replicas already placed) and proposes them.
    /// `validate_only`: checks the change against this node's metadata and proposes nothing.
    pub async fn add_partitions(
        &self,
        name: &str,
        total: u32,
        validate_only: bool,
    ) -> Result<TopicRecord, ControllerError> {
        let metadata = self.metadata();
        let topic = metadata
            .topics
            .get(name)
            .ok_or_else(|| MetadataError::UnknownTopic(name.to_string()))?;
        let current = topic.partitions.len() as u32;
        if total <= current {
            return Err(MetadataError::Invalid(format!(
                "topic {name:?} has {current} partitions; the new count must be larger (partitions are never removed)"
            ))
            .into());
        }
        let alive = self.is_leader().then(|| self.alive_brokers());
        let assignment = place_topic(
            &metadata,
            total - current,
            topic.replication_factor,
            alive.as_ref(),
        )?;
        let command = MetadataCommand::AddPartitions {
            name: name.to_string(),
            assignment,
        };
        if validate_only {
            (*metadata).clone().apply(command)?;
            return Ok(topic.clone());
        }
        self.propose(command).await?;
        self.wait_for(|m| {
            m.topics
                .get(name)
                .filter(|t| t.partitions.len() as u32 >= total)
                .cloned()
        })
        .await
    }

    /// Changes settings of topic `name` (see [`MetadataCommand::AlterTopicConfig`]); returns
    /// the topic with its new settings. `validate_only`: checks the change and proposes nothing.
    pub async fn alter_topic_config(
        &self,
        name: &str,
        set: Vec<(String, String)>,
        reset: Vec<String>,
        validate_only: bool,
    ) -> Result<TopicRecord, ControllerError> {
        let command = MetadataCommand::AlterTopicConfig {
            name: name.to_string(),
            set,
            reset,
        };
        let mut check = (*self.metadata()).clone();
        check.apply(command.clone())?;
        let Some(expected) = check.topics.get(name).cloned() else {
            return Err(MetadataError::UnknownTopic(name.to_string()).into());
        };
        if validate_only {
            return Ok(expected);
        }
        self.propose(command).await?;
        self.wait_for(|m| m.topics.get(name).cloned()).await
    }

    /// The internal topic of consumer-group offsets, created on first use with `partitions`
    /// partitions and as many replicas as there are brokers, up to 3. Kept forever.
    pub async fn offsets_topic(&self, partitions: u32) -> Result<TopicRecord, ControllerError> {
        if let Some(topic) = self.metadata().topics.get(OFFSETS_TOPIC) {
            return Ok(topic.clone());
        }
        // Replicated like the data it tracks: on 3 brokers (or as many as the cluster has, when
        // fewer). Not only on the live ones: a broker that is down for a moment must not leave
        // the offsets with fewer copies forever; creation waits (UNAVAILABLE) until they answer.
        let brokers = self.metadata().brokers.len().max(1) as u32;
        let config = TopicConfig {
            retention_ms: None,
            retention_bytes: None,
            segment_bytes: 64 << 20,
            ..TopicConfig::default()
        };
        match self
            .create_topic_unchecked(
                OFFSETS_TOPIC,
                partitions,
                brokers.min(3),
                config,
                true,
                None,
            )
            .await
        {
            Err(ControllerError::Rejected(MetadataError::TopicExists(_))) => {
                self.wait_for(|m| m.topics.get(OFFSETS_TOPIC).cloned())
                    .await
            }
            other => other,
        }
    }

    /// A new idempotent producer id, unique in the cluster.
    pub async fn allocate_producer_id(&self) -> Result<i64, ControllerError> {
        let id = self.propose(MetadataCommand::AllocateProducerId).await?;
        i64::try_from(id).map_err(|_| ControllerError::BadReply("producer id overflow".into()))
    }

    /// Waits (briefly) until this replica's metadata satisfies `f`.
    pub async fn wait_for<T>(
        &self,
        mut f: impl FnMut(&Metadata) -> Option<T>,
    ) -> Result<T, ControllerError> {
        let mut watch = self.metadata.clone();
        let deadline = tokio::time::Instant::now() + PROPOSE_TIMEOUT;
        loop {
            if let Some(found) = f(&watch.borrow_and_update()) {
                return Ok(found);
            }
            if tokio::time::timeout_at(deadline, watch.changed())
                .await
                .is_err()
            {
                return Err(GroupError::Timeout {
                    what: "catching up with the metadata".into(),
                    within: PROPOSE_TIMEOUT,
                }
                .into());
            }
        }
    }

    /// Adds a node that joins later as a learner of the controller group (it follows the
    /// metadata) and registers it as a broker.
    pub async fn admit(
        &self,
        id: NodeId,
        addr: &str,
        external_addr: Option<String>,
        rack: Option<String>,
    ) -> Result<(), ControllerError> {
        let (voters, learners) = self.group.members();
        if !voters.contains(&id) && !learners.contains(&id) {
            self.group
                .add_learner(id, PeerNode::new(addr), None)
                .await?;
            tracing::info!(node = id, addr, "node admitted as controller learner");
        }
        self.propose(MetadataCommand::RegisterBroker {
            id,
            addr: addr.to_string(),
            external_addr,
            rack,
        })
        .await?;
        Ok(())
    }

    /// Marks broker `id` as draining: its replicas move elsewhere (see
    /// [`Controller::run_leader_duties`]).
    pub async fn decommission(&self, id: NodeId) -> Result<(), ControllerError> {
        self.propose(MetadataCommand::SetDecommissioning { id, on: true })
            .await?;
        Ok(())
    }

    /// Proposes the moves that even out replicas across brokers; returns how many.
    pub async fn rebalance(&self, limit: usize) -> Result<usize, ControllerError> {
        let moves = rebalance_moves(&self.metadata(), limit);
        let count = moves.len();
        for (topic, partition, replicas) in moves {
            self.propose(MetadataCommand::ReassignPartition {
                topic,
                partition,
                replicas,
            })
            .await?;
        }
        Ok(count)
    }

    /// Runs forever: while this node leads the controller, moves replicas off draining brokers.
    pub async fn run_leader_duties(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !self.is_leader() {
                continue;
            }
            for (topic, partition, replicas) in drain_moves(&self.metadata()) {
                tracing::info!(%topic, partition, ?replicas, "moving replicas off a draining broker");
                if let Err(err) = self
                    .propose(MetadataCommand::ReassignPartition {
                        topic,
                        partition,
                        replicas,
                    })
                    .await
                {
                    tracing::warn!(error = %err, "drain move failed");
                }
            }
        }
    }

    pub async fn shutdown(&self) {
        self.group.shutdown().await;
    }
}
