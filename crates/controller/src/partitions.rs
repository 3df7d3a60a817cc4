//! [`Partitions`]: the partition groups running on this node, and the reconciler that makes them
//! match the metadata.
//!
//! Reconciling (on every metadata change, and every second for leader duties):
//! - a partition whose replicas include this node gets a running group; the replicas it was
//!   created with form it (`initialize`, only while the partition was never reassigned), a
//!   replica added later starts empty and is brought in by a membership change (the preferred
//!   leader forms the group at once and so starts as its leader; the others only if it has not
//!   done so within a few election timeouts);
//! - a group whose topic was deleted, or that moved off this node once the move has settled
//!   (the group's voters reached the new replica set), is stopped and its files removed;
//! - on a partition's leader: when the wanted replicas differ from the group's voters, add the
//!   new ones as learners, wait for them to catch up, then change the voters (joint consensus),
//!   and report the move settled to the controller;
//! - on a partition's preferred replica (first in the list) that is caught up but not leading:
//!   campaign, so leadership returns to the balanced placement (at most once per 5 s).
//!
//! Invariant: nothing is removed from disk unless the applied metadata says so; at start-up the
//! reconciler waits until the controller replica has applied its whole local log, so it never
//! acts on a stale intermediate state.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use weir_raft::{
    GroupConfig, GroupRegistry, NodeId, Partition, PeerNode, PeerTransport, RaftTiming,
    SnapshotPoint, remove_group_files,
};
use weir_storage::{Durability, LogConfig};

use crate::controller::Controller;
use crate::metadata::{Metadata, MetadataCommand, TopicConfig, TopicRecord};

/// Least time between two leadership campaigns of one partition replica.
const CAMPAIGN_BACKOFF: Duration = Duration::from_secs(5);
/// How long a removed replica's files may stay busy (in-flight requests holding its log).
const REMOVE_FILES_WITHIN: Duration = Duration::from_secs(5);

/// Directory under the data dir that holds partition groups.
pub const PARTITIONS_DIR: &str = "partitions";

/// One partition replica running here.
#[derive(Debug)]
pub struct PartitionReplica {
    pub topic: String,
    pub partition: u32,
    pub topic_id: u64,
    /// The topic settings its log runs with (changed by [`MetadataCommand::AlterTopicConfig`]).
    pub config: Mutex<TopicConfig>,
    /// The replica: writes, reads, progress, leadership and membership.
    pub group: Arc<Partition>,
}

/// Node-wide settings for partition groups.
#[derive(Debug, Clone)]
pub struct PartitionSettings {
    pub node_id: NodeId,
    pub data_dir: PathBuf,
    pub timing: RaftTiming,
    pub durability: Durability,
    pub retention_check: Duration,
}

/// The partition groups on this node.
#[derive(Debug)]
pub struct Partitions {
    settings: PartitionSettings,
    transport: Arc<PeerTransport>,
    registry: Arc<GroupRegistry>,
    running: RwLock<HashMap<String, Arc<PartitionReplica>>>,
    /// Partitions with a membership change in flight (led from here).
    moving: Arc<Mutex<HashSet<String>>>,
    last_campaign: Mutex<HashMap<String, Instant>>,
}

impl Partitions {
    pub fn new(
        settings: PartitionSettings,
        transport: Arc<PeerTransport>,
        registry: Arc<GroupRegistry>,
    ) -> Arc<Self> {
        Arc::new(Self {
            settings,
            transport,
            registry,
            running: RwLock::new(HashMap::new()),
            moving: Arc::new(Mutex::new(HashSet::new())),
            last_campaign: Mutex::new(HashMap::new()),
        })
    }

    /// The replica of `topic`/`partition` running here, if any.
    pub fn get(&self, topic: &str, partition: u32) -> Option<Arc<PartitionReplica>> {
        self.running
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .find(|r| r.topic == topic && r.partition == partition)
            .cloned()
    }

    /// Every replica running here.
    pub fn all(&self) -> Vec<Arc<PartitionReplica>> {
        self.running
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    fn log_config(&self, config: &TopicConfig) -> LogConfig {
        LogConfig {
            segment_bytes: config.segment_bytes,
            segment_ms: None,
            retention_bytes: config.retention_bytes,
            retention_ms: config.retention_ms,
            max_batch_bytes: config.max_message_bytes.saturating_add(1024),
            durability: self.settings.durability,
            ..LogConfig::default()
        }
    }

    fn group_dir(&self, group_id: &str) -> PathBuf {
        self.settings.data_dir.join(PARTITIONS_DIR).join(group_id)
    }

    /// Runs the reconciler until the process ends.
    pub async fn run(self: Arc<Self>, controller: Arc<Controller>) {
        // Act only on the complete local metadata (see the module docs).
        if !controller.group().wait_caught_up().await {
            return;
        }
        let mut watch = controller.watch();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let metadata = controller.metadata();
            self.reconcile(&metadata).await;
            self.leader_duties(&metadata, &controller);
            tokio::select! {
                changed = watch.changed() => if changed.is_err() { return },
                _ = tick.tick() => {}
            }
        }
    }

    /// Starts and stops groups to match `metadata`.
    pub async fn reconcile(&self, metadata: &Metadata) {
        let me = self.settings.node_id;
        let mut wanted: BTreeMap<String, (&TopicRecord, u32)> = BTreeMap::new();
        for topic in metadata.topics.values() {
            for (p, record) in topic.partitions.iter().enumerate() {
                let p = p as u32;
                let here = record.replicas.contains(&me);
                let leaving = !here && record.settled_epoch < record.epoch;
                if here || (leaving && self.is_running(&topic.group_id(p))) {
                    wanted.insert(topic.group_id(p), (topic, p));
                }
            }
        }
        for group_id in self.running_ids() {
            if !wanted.contains_key(&group_id) {
                self.stop(&group_id, true).await;
            }
        }
        for (group_id, (topic, p)) in wanted {
            if let Some(replica) = self.running_replica(&group_id) {
                self.apply_config(&replica, &topic.config);
                continue;
            }
            if let Err(err) = self.start(metadata, topic, p).await {
                tracing::warn!(group = %group_id, error = %err, "cannot start partition replica");
            }
        }
    }

    /// Ids of the groups running now (a snapshot: starting and stopping may follow).
    fn running_ids(&self) -> Vec<String> {
        self.running
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    fn running_replica(&self, group_id: &str) -> Option<Arc<PartitionReplica>> {
        self.running
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(group_id)
            .cloned()
    }

    /// Gives a running replica's log the limits of `config` when they changed.
    fn apply_config(&self, replica: &PartitionReplica, config: &TopicConfig) {
        let mut current = replica
            .config
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *current == *config {
            return;
        }
        match replica.group.reconfigure_log(&self.log_config(config)) {
            Ok(()) => {
                tracing::info!(group = %replica.group.id(), "topic settings applied to the replica's log");
                *current = config.clone();
            }
            Err(err) => {
                // Metadata checked the values; a refusal here is a bug worth seeing once.
                tracing::warn!(group = %replica.group.id(), error = %err, "cannot apply topic settings");
                *current = config.clone();
            }
        }
    }

    fn is_running(&self, group_id: &str) -> bool {
        self.running
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(group_id)
    }

    async fn start(
        &self,
        metadata: &Metadata,
        topic: &TopicRecord,
        partition: u32,
    ) -> Result<(), weir_raft::GroupError> {
        let group_id = topic.group_id(partition);
        let record = &topic.partitions[partition as usize];
        let config = GroupConfig {
            id: group_id.clone(),
            dir: self.group_dir(&group_id),
            log: self.log_config(&topic.config),
            point: SnapshotPoint::LogStart,
            timing: self.settings.timing,
            retention_check: self.settings.retention_check,
        };
        let group =
            Partition::open(self.settings.node_id, config, Arc::clone(&self.transport)).await?;
        self.registry.insert(&group_id, group.handle());
        if record.epoch == 0 && record.initial_replicas.contains(&self.settings.node_id) {
            let members: Option<BTreeMap<NodeId, PeerNode>> = record
                .initial_replicas
                .iter()
                .map(|id| {
                    metadata
                        .brokers
                        .get(id)
                        .map(|b| (*id, PeerNode::new(b.addr.clone())))
                })
                .collect();
            if let Some(members) = members {
                if record.initial_replicas.first() == Some(&self.settings.node_id) {
                    // The preferred leader forms the group and so starts as its leader.
                    group.initialize(&members).await?;
                } else {
                    // The others form it only if the preferred leader has not done so soon (it
                    // may be down): the same first entry on every replica, so this is safe.
                    let weak = Arc::downgrade(&group);
                    let wait = Duration::from_millis(3 * self.settings.timing.election_max_ms);
                    tokio::spawn(async move {
                        tokio::time::sleep(wait).await;
                        let Some(group) = weak.upgrade() else { return };
                        if !group.is_initialized().await
                            && let Err(err) = group.initialize(&members).await
                        {
                            tracing::warn!(group = %group.id(), error = %err, "cannot form the group");
                        }
                    });
                }
            }
        }
        tracing::info!(group = %group_id, "partition replica started");
        self.running
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(
                group_id,
                Arc::new(PartitionReplica {
                    topic: topic.name.clone(),
                    partition,
                    topic_id: topic.id,
                    config: Mutex::new(topic.config.clone()),
                    group,
                }),
            );
        Ok(())
    }

    async fn stop(&self, group_id: &str, remove_files: bool) {
        let replica = self
            .running
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(group_id);
        let Some(replica) = replica else { return };
        self.registry.remove(group_id);
        replica.group.shutdown().await;
        let dir = self.group_dir(group_id);
        drop(replica);
        if remove_files {
            // The group's log closes when its last handle drops; give in-flight requests a moment.
            let deadline = Instant::now() + REMOVE_FILES_WITHIN;
            let mut backoff = weir_format::retry::RetryPolicy::BACKGROUND.backoff();
            loop {
                match remove_group_files(&dir) {
                    Ok(()) => {
                        tracing::info!(group = %group_id, "partition replica removed");
                        break;
                    }
                    Err(err) if Instant::now() < deadline => {
                        tracing::debug!(error = %err, "removing partition files; retrying");
                        tokio::time::sleep(backoff.next_delay(None)).await;
                    }
                    Err(err) => {
                        tracing::warn!(group = %group_id, error = %err, dir = %dir.display(), "partition replica stopped, but its files could not be removed");
                        break;
                    }
                }
            }
        }
    }

    /// Membership changes, settling and preferred-leader campaigns for groups on this node.
    fn leader_duties(&self, metadata: &Metadata, controller: &Arc<Controller>) {
        let me = self.settings.node_id;
        for replica in self.all() {
            let Some(topic) = metadata.topics.get(&replica.topic) else {
                continue;
            };
            if topic.id != replica.topic_id {
                continue;
            }
            let Some(record) = topic.partitions.get(replica.partition as usize) else {
                continue;
            };
            let group_id = topic.group_id(replica.partition);
            let wanted: BTreeSet<NodeId> = record.replicas.iter().copied().collect();
            if replica.group.is_leader() {
                let (voters, _) = replica.group.members();
                if voters != wanted {
                    self.spawn_move(
                        &group_id,
                        &replica,
                        metadata,
                        record.replicas.clone(),
                        record.epoch,
                        controller,
                    );
                } else if record.settled_epoch < record.epoch {
                    self.spawn_settle(&replica, record.epoch, controller);
                }
            } else if record.replicas.first() == Some(&me) && record.settled_epoch == record.epoch {
                self.maybe_campaign(&group_id, &replica);
            }
        }
    }

    fn spawn_move(
        &self,
        group_id: &str,
        replica: &Arc<PartitionReplica>,
        metadata: &Metadata,
        replicas: Vec<NodeId>,
        epoch: u32,
        controller: &Arc<Controller>,
    ) {
        {
            let mut moving = self
                .moving
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !moving.insert(group_id.to_string()) {
                return;
            }
        }
        let nodes: BTreeMap<NodeId, PeerNode> = replicas
            .iter()
            .filter_map(|id| {
                metadata
                    .brokers
                    .get(id)
                    .map(|b| (*id, PeerNode::new(b.addr.clone())))
            })
            .collect();
        let replica = Arc::clone(replica);
        let controller = Arc::clone(controller);
        let group_id = group_id.to_string();
        let moving = Arc::clone(&self.moving);
        tokio::spawn(async move {
            let result = change_replicas(&replica, &nodes, &replicas).await;
            match result {
                Ok(()) => {
                    tracing::info!(group = %group_id, ?replicas, "partition replicas changed");
                    settle(&replica, epoch, &controller).await;
                }
                Err(err) => {
                    tracing::warn!(group = %group_id, error = %err, "replica move failed; will retry")
                }
            }
            moving
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&group_id);
        });
    }

    fn spawn_settle(
        &self,
        replica: &Arc<PartitionReplica>,
        epoch: u32,
        controller: &Arc<Controller>,
    ) {
        let replica = Arc::clone(replica);
        let controller = Arc::clone(controller);
        tokio::spawn(async move { settle(&replica, epoch, &controller).await });
    }

    fn maybe_campaign(&self, group_id: &str, replica: &PartitionReplica) {
        if !replica.group.caught_up() {
            return;
        }
        let mut last = self
            .last_campaign
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        if last
            .get(group_id)
            .is_some_and(|at| now.duration_since(*at) < CAMPAIGN_BACKOFF)
        {
            return;
        }
        last.insert(group_id.to_string(), now);
        let group = Arc::clone(&replica.group);
        let group_id = group_id.to_string();
        tokio::spawn(async move {
            tracing::info!(group = %group_id, "preferred replica campaigns for leadership");
            if let Err(err) = group.campaign().await {
                tracing::warn!(group = %group_id, error = %err, "campaign failed");
            }
        });
    }

    /// Stops every group (files stay).
    pub async fn shutdown(&self) {
        for id in self.running_ids() {
            self.stop(&id, false).await;
        }
    }
}

/// Moves a group's voters to `replicas`: new replicas join as learners and catch up first, then
/// one joint-consensus membership change swaps the voter set.
async fn change_replicas(
    replica: &PartitionReplica,
    nodes: &BTreeMap<NodeId, PeerNode>,
    replicas: &[NodeId],
) -> Result<(), String> {
    let (voters, learners) = replica.group.members();
    for id in replicas {
        if voters.contains(id) || learners.contains(id) {
            continue;
        }
        let node = nodes
            .get(id)
            .cloned()
            .ok_or_else(|| format!("no address for broker {id}"))?;
        replica
            .group
            .add_learner(*id, node, Duration::from_secs(120))
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(group = %replica.group.id(), learner = id, "learner caught up");
    }
    let target: BTreeSet<NodeId> = replicas.iter().copied().collect();
    replica
        .group
        .change_voters(target)
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Tells the controller that the group's voters reached the replicas of `epoch`.
async fn settle(replica: &PartitionReplica, epoch: u32, controller: &Controller) {
    let command = MetadataCommand::ReassignmentDone {
        topic: replica.topic.clone(),
        partition: replica.partition,
        epoch,
    };
    if let Err(err) = controller.propose(command).await {
        tracing::warn!(group = %replica.group.id(), error = %err, "cannot record a settled move");
    }
}
