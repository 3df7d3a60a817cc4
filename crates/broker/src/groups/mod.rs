//! Consumer groups: the coordinator behind `weir.v1.Groups`.
//!
//! A group is coordinated by the leader of partition `partition_for_key(group)` of the internal
//! topic `__consumer_offsets` (created on first use). Any node routes a group request there —
//! handled here when this node leads that partition, else forwarded.
//!
//! What the coordinator keeps, per partition of the offsets topic (a [`Shard`]):
//! - committed offsets: records of the offsets topic (key: group, topic, partition; value: the
//!   offset), written through the partition's Raft group before they are acknowledged, and read
//!   back into memory when a node starts coordinating (a new leader, or a new term). So they
//!   survive restarts and failovers; the newest record of a key wins.
//! - live membership: in memory only. A coordinator that takes over answers members it does not
//!   know with NOT_FOUND, and they rejoin (dropping their partitions first).
//!
//! Invariants: a shard is used only while this node leads the partition in the term it was
//! loaded in; a failed write unloads it (the next request reloads from the log). A partition is
//! handed to a member only when no other member reports it owned (cooperative handoff).
//!
//! Modules: [`assignor`] (the pure membership and assignment state machine, property-tested),
//! [`offsets`] (the offset record codec); this one is the service: routing to the coordinator,
//! loading and writing shards, and the RPCs.

mod assignor;
mod offsets;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tracing::Instrument;
use weir_controller::{OFFSETS_TOPIC, PartitionReplica, TopicRecord};
use weir_format::batch::{BatchBuilder, Compression};
use weir_format::partitioner::partition_for_key;
use weir_proto::v1::groups_client::GroupsClient;
use weir_proto::v1::groups_server::Groups;
use weir_proto::v1::{
    CommitOffsetsRequest, CommitOffsetsResponse, DeleteGroupRequest, DeleteGroupResponse,
    DescribeGroupRequest, DescribeGroupResponse, FetchOffsetsRequest, FetchOffsetsResponse,
    GroupMember, GroupSummary, HeartbeatRequest, HeartbeatResponse, LeaveGroupRequest,
    LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse, ListOffsetsRequest, PartitionLag,
    PartitionOffset, ResetOffsetsRequest, ResetOffsetsResponse, StartFrom, TopicPartitions,
};

use self::assignor::{LiveGroup, Member, TopicPartition};
use self::offsets::{apply_offset_record, offset_key, offset_value};
use crate::fetch::ReadPath;
use crate::metrics::{BrokerMetrics, GroupMetrics, GroupSummaries};
use weir_controller::security::Operation;

use crate::auth::Resource;
use crate::router::{Found, Hops, Router, forward_hops, forwarded, now_ms, relayed};
use crate::status::{from_controller, from_group, from_storage};

/// Partitions of `__consumer_offsets` (fixed at its creation).
pub(crate) const OFFSETS_PARTITIONS: u32 = 4;
/// Session timeout when a member gives none, and the accepted range.
const DEFAULT_SESSION_MS: u32 = 10_000;
const SESSION_MS_RANGE: (u32, u32) = (1_000, 300_000);
/// Heartbeats come at most this far apart (less for short sessions).
const MAX_HEARTBEAT_INTERVAL_MS: u32 = 500;
/// Longest group name.
const MAX_GROUP_NAME: usize = 255;
/// How long taking over a shard (confirming leadership, applying the log) may take.
const LOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an offsets write may wait for replication (elections included).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The coordinator state of this node, one [`Shard`] per offsets partition it has served.
#[derive(Debug, Default)]
pub(crate) struct Coordinator {
    shards: Mutex<HashMap<u32, Arc<tokio::sync::Mutex<Shard>>>>,
}

impl GroupSummaries for Coordinator {
    /// The groups of the shards this node coordinates now (shards busy at this moment are
    /// left out; the next scrape has them).
    fn summary(&self) -> Vec<GroupMetrics> {
        let shards: Vec<_> = self
            .shards
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        let mut out = Vec::new();
        for shard in shards {
            let Ok(shard) = shard.try_lock() else {
                continue;
            };
            if shard.loaded.is_none() {
                continue;
            }
            let names: BTreeSet<&String> =
                shard.offsets.keys().chain(shard.groups.keys()).collect();
            for name in names {
                out.push(GroupMetrics {
                    name: name.clone(),
                    members: shard.groups.get(name).map_or(0, |g| g.members.len()),
                    committed: shard
                        .offsets
                        .get(name)
                        .map(|c| c.iter().map(|(tp, o)| (tp.clone(), *o)).collect())
                        .unwrap_or_default(),
                });
            }
        }
        out
    }
}

impl Coordinator {
    fn shard(&self, partition: u32) -> Arc<tokio::sync::Mutex<Shard>> {
        let mut shards = self
            .shards
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(shards.entry(partition).or_default())
    }
}

/// The groups of one offsets partition.
#[derive(Debug, Default)]
struct Shard {
    /// (offsets topic id, Raft term) this shard was loaded as leader in; `None`: not loaded.
    loaded: Option<(u64, u64)>,
    offsets: BTreeMap<String, BTreeMap<TopicPartition, u64>>,
    groups: BTreeMap<String, LiveGroup>,
}

impl Shard {
    /// Removes members whose session ran out, in every group.
    fn expire_all(&mut self, now: Instant) {
        for group in self.groups.values_mut() {
            group.expire(now);
        }
        self.groups.retain(|_, g| !g.members.is_empty());
    }
}

fn validate_group(group: &str) -> Result<(), Status> {
    if group.is_empty() {
        return Err(Status::invalid_argument("group name is empty"));
    }
    if group.len() > MAX_GROUP_NAME {
        return Err(Status::invalid_argument(format!(
            "group name is longer than the limit of {MAX_GROUP_NAME} bytes"
        )));
    }
    if group.chars().any(char::is_control) {
        return Err(Status::invalid_argument(
            "group name contains control characters",
        ));
    }
    Ok(())
}

fn unknown_member(group: &str, member: &str) -> Status {
    Status::not_found(format!(
        "unknown member {member:?} of group {group:?} (it timed out, or the coordinator moved); \
         drop its partitions and rejoin with an empty member id"
    ))
}

fn encoding_failed(err: postcard::Error) -> Status {
    Status::internal(format!("encoding an offset record: {err}"))
}

fn grouped(partitions: impl IntoIterator<Item = TopicPartition>) -> Vec<TopicPartitions> {
    let mut by_topic: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for (topic, p) in partitions {
        by_topic.entry(topic).or_default().push(p);
    }
    by_topic
        .into_iter()
        .map(|(topic, partitions)| TopicPartitions { topic, partitions })
        .collect()
}

fn flattened(partitions: &[TopicPartitions]) -> BTreeSet<TopicPartition> {
    partitions
        .iter()
        .flat_map(|tp| tp.partitions.iter().map(|p| (tp.topic.clone(), *p)))
        .collect()
}

/// Where a group request is served.
enum GroupRoute {
    Here {
        partition: u32,
        topic: TopicRecord,
        replica: Arc<PartitionReplica>,
    },
    Forward(GroupsClient<Channel>),
}

/// The Groups service of a node: the coordinator of the groups whose offsets partitions this
/// node leads, forwarding the others through the [`Router`].
#[derive(Debug, Clone)]
pub(crate) struct GroupService {
    pub(crate) router: Router,
    pub(crate) coordinator: Arc<Coordinator>,
    pub(crate) metrics: Arc<BrokerMetrics>,
    /// Partition offsets, for lag and offset resets.
    pub(crate) reads: ReadPath,
}

impl GroupService {
    fn groups_client(&self, addr: &str, hops: &Hops) -> Result<GroupsClient<Channel>, Status> {
        self.router.client(addr, hops)
    }

    /// The coordinator of `group`: here, or the node to forward to.
    async fn group_route(&self, group: &str, hops: &Hops) -> Result<GroupRoute, Status> {
        validate_group(group)?;
        let topic = self.offsets_topic().await?;
        let partition = partition_for_key(group.as_bytes(), topic.partitions.len() as u32);
        self.shard_route(topic, partition, hops)
    }

    /// The partition of `__consumer_offsets` that coordinates `group` (the topic is created on
    /// first use).
    pub(crate) async fn coordinator_partition(&self, group: &str) -> Result<u32, Status> {
        validate_group(group)?;
        let topic = self.offsets_topic().await?;
        Ok(partition_for_key(
            group.as_bytes(),
            topic.partitions.len() as u32,
        ))
    }

    async fn offsets_topic(&self) -> Result<TopicRecord, Status> {
        if !self.router.controller.ready() {
            return Err(crate::status::unavailable(
                "this node is still loading the cluster metadata; retry shortly",
            ));
        }
        self.router
            .controller
            .offsets_topic(OFFSETS_PARTITIONS)
            .await
            .map_err(from_controller)
    }

    fn shard_route(
        &self,
        topic: TopicRecord,
        partition: u32,
        hops: &Hops,
    ) -> Result<GroupRoute, Status> {
        let replica = self
            .router
            .partitions
            .get(OFFSETS_TOPIC, partition)
            .filter(|r| r.topic_id == topic.id);
        match replica {
            Some(replica) if replica.group.is_leader() => Ok(GroupRoute::Here {
                partition,
                topic,
                replica,
            }),
            Some(replica) => {
                let leader = replica
                    .group
                    .leader()
                    .and_then(|id| replica.group.node_addr(id))
                    .ok_or_else(|| {
                        crate::status::unavailable(
                            "the group coordinator is being elected; retry shortly",
                        )
                    })?;
                Ok(GroupRoute::Forward(self.groups_client(&leader, hops)?))
            }
            None => {
                let addr = self.router.replica_addr(&topic, partition)?;
                Ok(GroupRoute::Forward(self.groups_client(&addr, hops)?))
            }
        }
    }

    /// Makes `shard` current: loaded from the offsets partition in this node's present term as
    /// its confirmed leader.
    async fn load_shard(
        &self,
        shard: &mut Shard,
        topic: &TopicRecord,
        replica: &PartitionReplica,
    ) -> Result<(), Status> {
        let group = &replica.group;
        if shard.loaded == Some((topic.id, group.term())) && group.is_leader() {
            return Ok(());
        }
        shard.loaded = None;
        group
            .confirm_leader(LOAD_TIMEOUT)
            .await
            .map_err(from_group)?;
        let term = group.term();
        let high_watermark = group.progress().borrow().high_watermark;
        let log = group;
        let mut offset = log.bounds().map_err(from_storage)?.log_start_offset;
        let mut offsets = BTreeMap::new();
        let mut records = 0u64;
        while offset < high_watermark {
            let read = log
                .read(offset, 4 << 20, high_watermark)
                .map_err(from_storage)?;
            if read.batches.is_empty() {
                break;
            }
            for batch in &read.batches {
                for record in batch
                    .records()
                    .map_err(|e| Status::data_loss(e.to_string()))?
                {
                    if let Some(key) = &record.key {
                        apply_offset_record(&mut offsets, key, record.value.as_deref());
                        records += 1;
                    }
                }
                offset = offset.max(batch.header().next_offset());
            }
        }
        tracing::info!(
            partition = replica.partition,
            term,
            records,
            groups = offsets.len(),
            "coordinating consumer groups"
        );
        shard.offsets = offsets;
        shard.groups.clear();
        shard.loaded = Some((topic.id, term));
        Ok(())
    }

    /// Writes committed offsets of `group` to the offsets partition, then to `shard`.
    async fn write_offsets(
        &self,
        shard: &mut Shard,
        replica: &PartitionReplica,
        group: &str,
        offsets: &[PartitionOffset],
    ) -> Result<(), Status> {
        let now = now_ms();
        let mut builder = BatchBuilder::new(Compression::None);
        for o in offsets {
            let key = offset_key(group, &o.topic, o.partition).map_err(encoding_failed)?;
            let value = offset_value(o.offset).map_err(encoding_failed)?;
            builder.push(now, Some(&key), Some(&value), &[]);
        }
        let Some(batch) = builder.build() else {
            return Ok(());
        };
        if let Err(err) = replica
            .group
            .write(batch, WRITE_TIMEOUT, weir_raft::WaitFor::Committed)
            .await
        {
            shard.loaded = None;
            return Err(from_group(err));
        }
        let committed = shard.offsets.entry(group.to_string()).or_default();
        for o in offsets {
            committed.insert((o.topic.clone(), o.partition), o.offset);
        }
        Ok(())
    }

    /// Deletes every committed offset of `group`: tombstones in the offsets partition, then in
    /// `shard`. Returns how many were removed.
    async fn delete_offsets(
        &self,
        shard: &mut Shard,
        replica: &PartitionReplica,
        group: &str,
    ) -> Result<u32, Status> {
        let Some(committed) = shard.offsets.get(group) else {
            return Ok(0);
        };
        let now = now_ms();
        let mut builder = BatchBuilder::new(Compression::None);
        for (topic, partition) in committed.keys() {
            let key = offset_key(group, topic, *partition).map_err(encoding_failed)?;
            builder.push(now, Some(&key), None, &[]);
        }
        let removed = u32::try_from(committed.len()).unwrap_or(u32::MAX);
        let Some(batch) = builder.build() else {
            return Ok(0);
        };
        if let Err(err) = replica
            .group
            .write(batch, WRITE_TIMEOUT, weir_raft::WaitFor::Committed)
            .await
        {
            shard.loaded = None;
            return Err(from_group(err));
        }
        shard.offsets.remove(group);
        Ok(removed)
    }

    /// The partition count of topic `name` (NOT_FOUND when unknown; UNAVAILABLE while only the
    /// controller knows it yet — the next request will find it here).
    async fn partition_count(&self, name: &str, hops: &Hops) -> Result<u32, Status> {
        match self.router.topic(name, hops).await? {
            Found::Here(topic) => Ok(topic.partitions.len() as u32),
            Found::AskController(_) => Err(crate::status::unavailable(format!(
                "topic {name:?} is not known on this node yet; retry shortly"
            ))),
        }
    }

    /// Partition counts of `topics` (unknown ones are NOT_FOUND).
    async fn partition_counts(
        &self,
        topics: impl IntoIterator<Item = &String>,
        hops: &Hops,
    ) -> Result<BTreeMap<String, u32>, Status> {
        let mut counts = BTreeMap::new();
        for name in topics {
            counts.insert(name.clone(), self.partition_count(name, hops).await?);
        }
        Ok(counts)
    }

    async fn heartbeat_here(
        &self,
        shard: &mut Shard,
        request: HeartbeatRequest,
        hops: &Hops,
    ) -> Result<HeartbeatResponse, Status> {
        if request.topics.is_empty() {
            return Err(Status::invalid_argument(
                "a member must subscribe to at least one topic",
            ));
        }
        let session_ms = match request.session_timeout_ms {
            0 => DEFAULT_SESSION_MS,
            n if (SESSION_MS_RANGE.0..=SESSION_MS_RANGE.1).contains(&n) => n,
            n => {
                return Err(Status::invalid_argument(format!(
                    "session_timeout_ms {n} is outside [{}, {}]",
                    SESSION_MS_RANGE.0, SESSION_MS_RANGE.1
                )));
            }
        };
        let topics: BTreeSet<String> = request.topics.iter().cloned().collect();
        // Checks the subscription before touching the group.
        self.partition_counts(&topics, hops).await?;
        let now = Instant::now();
        let live = shard.groups.entry(request.group.clone()).or_default();
        live.expire(now);
        let member_id = if request.member_id.is_empty() {
            let prefix: String = request
                .client_id
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                .take(40)
                .collect();
            let prefix = if prefix.is_empty() {
                "member".into()
            } else {
                prefix
            };
            let id = format!("{prefix}-{:016x}", rand::random::<u64>());
            tracing::info!(group = %request.group, member = %id, "member joined");
            live.generation += 1;
            live.members.insert(
                id.clone(),
                Member {
                    client_id: request.client_id.clone(),
                    topics: topics.clone(),
                    owned: BTreeSet::new(),
                    granted: BTreeSet::new(),
                    last_seen: now,
                    session: Duration::from_millis(u64::from(session_ms)),
                },
            );
            id
        } else {
            request.member_id.clone()
        };
        let Some(member) = live.members.get_mut(&member_id) else {
            return Err(unknown_member(&request.group, &member_id));
        };
        if member.topics != topics {
            member.topics = topics;
            live.generation += 1;
        }
        member.owned = flattened(&request.owned);
        member.last_seen = now;
        member.session = Duration::from_millis(u64::from(session_ms));
        let counts = self.partition_counts(&live.topics(), hops).await?;
        let target = live.target(&counts);
        let assigned = live.assigned(&member_id, &target);
        if let Some(member) = live.members.get_mut(&member_id) {
            member.granted = assigned.clone();
        }
        Ok(HeartbeatResponse {
            member_id,
            generation: live.generation,
            assigned: grouped(assigned),
            heartbeat_interval_ms: (session_ms / 3).min(MAX_HEARTBEAT_INTERVAL_MS),
        })
    }

    async fn commit_here(
        &self,
        shard: &mut Shard,
        replica: &PartitionReplica,
        request: CommitOffsetsRequest,
        hops: &Hops,
    ) -> Result<(), Status> {
        if request.offsets.is_empty() {
            return Err(Status::invalid_argument("no offsets to commit"));
        }
        let topics: BTreeSet<String> = request.offsets.iter().map(|o| o.topic.clone()).collect();
        let counts = self.partition_counts(&topics, hops).await?;
        for o in &request.offsets {
            let count = counts.get(&o.topic).copied().unwrap_or(0);
            if o.partition >= count {
                return Err(Status::not_found(format!(
                    "topic {:?} has {count} partitions; partition {} does not exist",
                    o.topic, o.partition
                )));
            }
        }
        let now = Instant::now();
        let live = shard.groups.entry(request.group.clone()).or_default();
        live.expire(now);
        if request.member_id.is_empty() {
            if !live.members.is_empty() {
                return Err(Status::failed_precondition(format!(
                    "group {:?} has {} live members; only they commit (or give a member id)",
                    request.group,
                    live.members.len()
                )));
            }
        } else {
            let counts = self.partition_counts(&live.topics(), hops).await?;
            let target = live.target(&counts);
            let Some(member) = live.members.get(&request.member_id) else {
                return Err(unknown_member(&request.group, &request.member_id));
            };
            let share = target.get(&request.member_id);
            for o in &request.offsets {
                let tp = (o.topic.clone(), o.partition);
                if !member.owned.contains(&tp) && !share.is_some_and(|s| s.contains(&tp)) {
                    return Err(Status::failed_precondition(format!(
                        "partition {}/{} is not held by member {:?}",
                        o.topic, o.partition, request.member_id
                    )));
                }
            }
        }
        shard.groups.retain(|_, g| !g.members.is_empty());
        self.write_offsets(shard, replica, &request.group, &request.offsets)
            .await
    }

    async fn describe_here(
        &self,
        shard: &mut Shard,
        request: &DescribeGroupRequest,
        hops: &Hops,
    ) -> Result<DescribeGroupResponse, Status> {
        let now = Instant::now();
        shard.expire_all(now);
        let committed = shard
            .offsets
            .get(&request.group)
            .cloned()
            .unwrap_or_default();
        let empty = LiveGroup::default();
        let live = shard.groups.get(&request.group).unwrap_or(&empty);
        if live.members.is_empty() && committed.is_empty() {
            return Err(Status::not_found(format!(
                "unknown group {:?} (no members, no committed offsets)",
                request.group
            )));
        }
        let mut topics = live.topics();
        topics.extend(committed.keys().map(|(t, _)| t.clone()));
        let mut counts = BTreeMap::new();
        for name in &topics {
            match self.partition_count(name, hops).await {
                Ok(count) => {
                    counts.insert(name.clone(), count);
                }
                // A committed topic deleted since is left out.
                Err(status) if status.code() == tonic::Code::NotFound => {}
                Err(status) => return Err(status),
            }
        }
        let target = live.target(&counts);
        let members = live
            .members
            .iter()
            .map(|(id, m)| GroupMember {
                member_id: id.clone(),
                client_id: m.client_id.clone(),
                topics: m.topics.iter().cloned().collect(),
                assigned: grouped(live.assigned(id, &target)),
                owned: grouped(m.owned.iter().cloned()),
                idle_ms: now.duration_since(m.last_seen).as_millis() as u64,
            })
            .collect();
        let owners: HashMap<TopicPartition, String> = live
            .members
            .iter()
            .flat_map(|(id, m)| m.owned.iter().map(move |tp| (tp.clone(), id.clone())))
            .collect();
        let state = live.state(&target).to_string();
        let generation = live.generation;
        let mut partitions = Vec::new();
        for (topic, count) in &counts {
            for p in 0..*count {
                let tp = (topic.clone(), p);
                partitions.push(PartitionLag {
                    topic: topic.clone(),
                    partition: p,
                    committed: committed.get(&tp).copied(),
                    high_watermark: 0,
                    lag: 0,
                    member_id: owners.get(&tp).cloned().unwrap_or_default(),
                });
            }
        }
        Ok(DescribeGroupResponse {
            group: request.group.clone(),
            state,
            generation,
            coordinator: self.router.controller.node_id(),
            members,
            partitions,
        })
    }

    fn summaries(&self, shard: &mut Shard) -> Vec<GroupSummary> {
        shard.expire_all(Instant::now());
        let names: BTreeSet<&String> = shard.offsets.keys().chain(shard.groups.keys()).collect();
        let empty = LiveGroup::default();
        names
            .into_iter()
            .map(|name| {
                let live = shard.groups.get(name).unwrap_or(&empty);
                let state = if live.members.is_empty() {
                    "empty"
                } else {
                    // Assignment needs partition counts; members settled on what they own is
                    // "stable" enough for a listing when nobody waits for a partition.
                    let waiting = live.members.iter().any(|(id, m)| {
                        live.members
                            .iter()
                            .any(|(other, o)| other != id && !m.owned.is_disjoint(&o.owned))
                    });
                    if waiting { "rebalancing" } else { "stable" }
                };
                GroupSummary {
                    group: name.clone(),
                    members: live.members.len() as u32,
                    state: state.to_string(),
                    coordinator: self.router.controller.node_id(),
                }
            })
            .collect()
    }

    async fn list_groups_of(
        &self,
        topic: TopicRecord,
        partition: u32,
        hops: &Hops,
    ) -> Result<Vec<GroupSummary>, Status> {
        match self.shard_route(topic.clone(), partition, hops)? {
            GroupRoute::Forward(mut client) => Ok(client
                .list_groups(forwarded(
                    ListGroupsRequest {
                        coordinator_partition: Some(partition),
                    },
                    hops,
                ))
                .await
                .map_err(relayed)?
                .into_inner()
                .groups),
            GroupRoute::Here {
                partition,
                topic,
                replica,
            } => {
                let shard = self.coordinator.shard(partition);
                let mut shard = shard.lock().await;
                self.load_shard(&mut shard, &topic, &replica).await?;
                Ok(self.summaries(&mut shard))
            }
        }
    }

    /// The offsets a reset sets: per partition, from `to`.
    async fn reset_targets(
        &self,
        request: &ResetOffsetsRequest,
        hops: &Hops,
    ) -> Result<Vec<PartitionOffset>, Status> {
        let to = StartFrom::try_from(request.to)
            .map_err(|_| Status::invalid_argument(format!("unknown position {}", request.to)))?;
        let count = self.partition_count(&request.topic, hops).await?;
        let partitions: Vec<u32> = if request.partitions.is_empty() {
            (0..count).collect()
        } else {
            request.partitions.clone()
        };
        let mut offsets = Vec::new();
        for p in partitions {
            if p >= count {
                return Err(Status::not_found(format!(
                    "topic {:?} has {count} partitions; partition {p} does not exist",
                    request.topic
                )));
            }
            let offset = if to == StartFrom::Offset {
                let bounds = self
                    .reads
                    .list_offsets_inner(
                        Request::new(ListOffsetsRequest {
                            topic: request.topic.clone(),
                            partition: p,
                            timestamp_ms: None,
                        }),
                        hops,
                    )
                    .await?;
                request
                    .offset
                    .clamp(bounds.log_start_offset, bounds.high_watermark)
            } else {
                self.reads
                    .start_offset(
                        &request.topic,
                        p,
                        to,
                        request.offset,
                        request.timestamp_ms,
                        hops,
                    )
                    .await?
            };
            offsets.push(PartitionOffset {
                topic: request.topic.clone(),
                partition: p,
                offset,
            });
        }
        Ok(offsets)
    }
}

/// Runs `$here` with the shard of the request's group locked and loaded, or forwards the
/// request to the coordinator with `$method`.
macro_rules! coordinated {
    ($self:ident, $request:ident, $method:ident, |$shard:ident, $replica:ident, $req:ident, $hops:ident| $here:expr) => {{
        let $hops = &forward_hops(&$request);
        let $req = $request.into_inner();
        match $self.group_route(&$req.group, $hops).await? {
            GroupRoute::Forward(mut client) => client
                .$method(forwarded($req, $hops))
                .await
                .map_err(relayed),
            GroupRoute::Here {
                partition,
                topic,
                replica: $replica,
            } => {
                let shard = $self.coordinator.shard(partition);
                let mut guard = shard.lock().await;
                $self.load_shard(&mut guard, &topic, &$replica).await?;
                let $shard: &mut Shard = &mut guard;
                $here.map(Response::new)
            }
        }
    }};
}

#[tonic::async_trait]
impl Groups for GroupService {
    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let span = tracing::debug_span!("heartbeat", group = %request.get_ref().group, member = %request.get_ref().member_id);
        self.router.authorize(
            &request,
            Operation::Read,
            Resource::Group(&request.get_ref().group),
        )?;
        for topic in &request.get_ref().topics {
            self.router
                .authorize(&request, Operation::Describe, Resource::Topic(topic))?;
        }
        let result = async move {
            coordinated!(
                self,
                request,
                heartbeat,
                |shard, _replica, request, hops| {
                    self.heartbeat_here(shard, request, hops).await
                }
            )
        }
        .instrument(span)
        .await;
        self.metrics.count_group("heartbeat", &result);
        result
    }

    async fn leave_group(
        &self,
        request: Request<LeaveGroupRequest>,
    ) -> Result<Response<LeaveGroupResponse>, Status> {
        let span = tracing::info_span!("leave_group", group = %request.get_ref().group, member = %request.get_ref().member_id);
        self.router.authorize(
            &request,
            Operation::Read,
            Resource::Group(&request.get_ref().group),
        )?;
        let result = async move {
            coordinated!(
                self,
                request,
                leave_group,
                |shard, _replica, request, hops| {
                    let _ = hops;
                    let live = shard.groups.get_mut(&request.group);
                    match live.and_then(|g| g.members.remove(&request.member_id).map(|_| g)) {
                        Some(group) => {
                            group.generation += 1;
                            tracing::info!("member left");
                            shard.groups.retain(|_, g| !g.members.is_empty());
                            Ok(LeaveGroupResponse {})
                        }
                        None => Err(unknown_member(&request.group, &request.member_id)),
                    }
                }
            )
        }
        .instrument(span)
        .await;
        self.metrics.count_group("leave_group", &result);
        result
    }

    async fn commit_offsets(
        &self,
        request: Request<CommitOffsetsRequest>,
    ) -> Result<Response<CommitOffsetsResponse>, Status> {
        let span = tracing::debug_span!("commit_offsets", group = %request.get_ref().group, member = %request.get_ref().member_id);
        self.router.authorize(
            &request,
            Operation::Read,
            Resource::Group(&request.get_ref().group),
        )?;
        for offset in &request.get_ref().offsets {
            self.router
                .authorize(&request, Operation::Read, Resource::Topic(&offset.topic))?;
        }
        let result = async move {
            coordinated!(
                self,
                request,
                commit_offsets,
                |shard, replica, request, hops| {
                    self.commit_here(shard, &replica, request, hops)
                        .await
                        .map(|()| CommitOffsetsResponse {})
                }
            )
        }
        .instrument(span)
        .await;
        self.metrics.count_group("commit_offsets", &result);
        result
    }

    async fn fetch_offsets(
        &self,
        request: Request<FetchOffsetsRequest>,
    ) -> Result<Response<FetchOffsetsResponse>, Status> {
        let span = tracing::debug_span!("fetch_offsets", group = %request.get_ref().group);
        self.router.authorize(
            &request,
            Operation::Describe,
            Resource::Group(&request.get_ref().group),
        )?;
        let result = async move {
            coordinated!(
                self,
                request,
                fetch_offsets,
                |shard, _replica, request, hops| {
                    let _ = hops;
                    let offsets = shard
                        .offsets
                        .get(&request.group)
                        .map(|committed| {
                            committed
                                .iter()
                                .filter(|((topic, _), _)| {
                                    request.topics.is_empty() || request.topics.contains(topic)
                                })
                                .map(|((topic, partition), offset)| PartitionOffset {
                                    topic: topic.clone(),
                                    partition: *partition,
                                    offset: *offset,
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    Ok::<_, Status>(FetchOffsetsResponse { offsets })
                }
            )
        }
        .instrument(span)
        .await;
        self.metrics.count_group("fetch_offsets", &result);
        result
    }

    async fn list_groups(
        &self,
        request: Request<ListGroupsRequest>,
    ) -> Result<Response<ListGroupsResponse>, Status> {
        let hops = &forward_hops(&request);
        let request = request.into_inner();
        let result = async move {
            let topic = self.offsets_topic().await?;
            let partitions: Vec<u32> = match request.coordinator_partition {
                Some(p) if p as usize >= topic.partitions.len() => {
                    return Err(Status::invalid_argument(format!(
                        "coordinator_partition {p} does not exist"
                    )));
                }
                Some(p) => vec![p],
                None => (0..topic.partitions.len() as u32).collect(),
            };
            let lists = futures::future::try_join_all(
                partitions
                    .into_iter()
                    .map(|p| self.list_groups_of(topic.clone(), p, hops)),
            )
            .await?;
            // Only the groups the caller may describe.
            let mut groups: Vec<GroupSummary> = lists
                .into_iter()
                .flatten()
                .filter(|g| {
                    self.router.access.allows(
                        &hops.caller,
                        Operation::Describe,
                        Resource::Group(&g.group),
                    )
                })
                .collect();
            groups.sort_by(|a, b| a.group.cmp(&b.group));
            Ok(Response::new(ListGroupsResponse { groups }))
        }
        .instrument(tracing::debug_span!("list_groups"))
        .await;
        self.metrics.count_group("list_groups", &result);
        result
    }

    async fn describe_group(
        &self,
        request: Request<DescribeGroupRequest>,
    ) -> Result<Response<DescribeGroupResponse>, Status> {
        let hops = &forward_hops(&request);
        self.router.authorize(
            &request,
            Operation::Describe,
            Resource::Group(&request.get_ref().group),
        )?;
        let span = tracing::debug_span!("describe_group", group = %request.get_ref().group);
        let result = async move {
            let described = coordinated!(
                self,
                request,
                describe_group,
                |shard, _replica, request, hops| {
                    self.describe_here(shard, &request, hops).await
                }
            )?;
            let mut described = described.into_inner();
            // High watermarks come from the partition leaders, outside the shard's lock.
            let bounds = futures::future::try_join_all(described.partitions.iter().map(|p| {
                self.reads.list_offsets_inner(
                    Request::new(ListOffsetsRequest {
                        topic: p.topic.clone(),
                        partition: p.partition,
                        timestamp_ms: None,
                    }),
                    hops,
                )
            }))
            .await?;
            for (lag, bounds) in described.partitions.iter_mut().zip(bounds) {
                lag.high_watermark = bounds.high_watermark;
                let from = lag.committed.unwrap_or(bounds.log_start_offset);
                lag.lag = bounds.high_watermark.saturating_sub(from);
            }
            Ok(Response::new(described))
        }
        .instrument(span)
        .await;
        self.metrics.count_group("describe_group", &result);
        result
    }

    async fn reset_offsets(
        &self,
        request: Request<ResetOffsetsRequest>,
    ) -> Result<Response<ResetOffsetsResponse>, Status> {
        let hops = &forward_hops(&request);
        self.router.authorize(
            &request,
            Operation::Read,
            Resource::Group(&request.get_ref().group),
        )?;
        self.router.authorize(
            &request,
            Operation::Read,
            Resource::Topic(&request.get_ref().topic),
        )?;
        let resource = format!(
            "group {:?} topic {:?}",
            request.get_ref().group,
            request.get_ref().topic
        );
        let span = tracing::info_span!("reset_offsets", group = %request.get_ref().group, topic = %request.get_ref().topic);
        let result = async move {
            validate_group(&request.get_ref().group)?;
            // Resolved before the shard is locked: they ask partition leaders.
            let offsets = self.reset_targets(request.get_ref(), hops).await?;
            coordinated!(self, request, reset_offsets, |shard, replica, request, hops| {
                let _ = hops;
                shard.expire_all(Instant::now());
                if let Some(live) = shard.groups.get(&request.group) {
                    return Err(Status::failed_precondition(format!(
                        "group {:?} has {} live members; stop them before resetting its offsets",
                        request.group,
                        live.members.len()
                    )));
                }
                self.write_offsets(shard, &replica, &request.group, &offsets)
                    .await?;
                tracing::info!(partitions = offsets.len(), "offsets reset");
                Ok(ResetOffsetsResponse {
                    offsets: offsets.clone(),
                })
            })
        }
        .instrument(span)
        .await;
        self.metrics.count_group("reset_offsets", &result);
        self.router
            .access
            .audit
            .change(&hops.caller, "reset-offsets", resource, &result);
        result
    }

    async fn delete_group(
        &self,
        request: Request<DeleteGroupRequest>,
    ) -> Result<Response<DeleteGroupResponse>, Status> {
        let hops = &forward_hops(&request);
        self.router.authorize(
            &request,
            Operation::Delete,
            Resource::Group(&request.get_ref().group),
        )?;
        let resource = format!("group {:?}", request.get_ref().group);
        let span = tracing::info_span!("delete_group", group = %request.get_ref().group);
        let result = async move {
            validate_group(&request.get_ref().group)?;
            coordinated!(
                self,
                request,
                delete_group,
                |shard, replica, request, hops| {
                    let _ = hops;
                    shard.expire_all(Instant::now());
                    if let Some(live) = shard.groups.get(&request.group) {
                        return Err(Status::failed_precondition(format!(
                            "group {:?} has {} live members; stop them before deleting it",
                            request.group,
                            live.members.len()
                        )));
                    }
                    if !shard.offsets.contains_key(&request.group) {
                        return Err(Status::not_found(format!(
                            "group {:?} does not exist (no committed offsets, no members)",
                            request.group
                        )));
                    }
                    let removed = self.delete_offsets(shard, &replica, &request.group).await?;
                    tracing::info!(offsets = removed, "group deleted");
                    Ok(DeleteGroupResponse {
                        offsets_removed: removed,
                    })
                }
            )
        }
        .instrument(span)
        .await;
        self.metrics.count_group("delete_group", &result);
        self.router
            .access
            .audit
            .change(&hops.caller, "delete-group", resource, &result);
        result
    }
}
