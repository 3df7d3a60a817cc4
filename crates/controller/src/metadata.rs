//! The cluster metadata: brokers, topics and partition assignments, changed only by applying
//! [`MetadataCommand`]s in log order. Applying is deterministic — every controller replica ends
//! in the same state — so commands carry every decision (placement is made by the proposer and
//! stored in the command) and a command that is invalid for the state is rejected the same way
//! everywhere.
//!
//! A command travels as the value of a single record in a batch of the controller's Raft log.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use weir_raft::GroupState;
use weir_raft::NodeId;
use weir_storage::codec::{BatchBuilder, BatchHeader, Compression, decode_records};

/// Longest topic name.
pub const MAX_TOPIC_NAME_LEN: usize = 200;
/// Most partitions a topic may have.
pub const MAX_PARTITIONS: u32 = 10_000;
/// Largest replication factor.
pub const MAX_REPLICATION_FACTOR: u32 = 7;

/// A broker as the cluster knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerRecord {
    pub id: NodeId,
    /// `host:port` for clients and peers.
    pub addr: String,
    pub rack: Option<String>,
    /// Being drained: no new replicas are placed here, and its replicas move away.
    pub decommissioning: bool,
}

/// Per-topic settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    pub retention_ms: Option<u64>,
    pub retention_bytes: Option<u64>,
    pub segment_bytes: u64,
    pub max_message_bytes: u32,
}

impl Default for TopicConfig {
    fn default() -> Self {
        Self {
            retention_ms: Some(7 * 24 * 60 * 60 * 1000),
            retention_bytes: None,
            segment_bytes: 1 << 30,
            max_message_bytes: 8 << 20,
        }
    }
}

/// One partition's replica assignment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRecord {
    /// The replicas wanted now; the first is the preferred leader.
    pub replicas: Vec<NodeId>,
    /// The replicas the partition group was formed with. Only these may initialize the group, and
    /// only while `epoch` is 0: a replica added later joins through a membership change.
    pub initial_replicas: Vec<NodeId>,
    /// Bumped by every reassignment.
    pub epoch: u32,
    /// The last epoch whose replica set the partition group's membership has reached: replicas
    /// that left are removed from their nodes only once this catches up with `epoch`.
    pub settled_epoch: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRecord {
    pub name: String,
    /// Unique per incarnation: a topic deleted and created again gets a new id (and new files).
    pub id: u64,
    pub replication_factor: u32,
    pub config: TopicConfig,
    pub partitions: Vec<PartitionRecord>,
}

impl TopicRecord {
    /// The Raft group id of partition `p` (also its directory name).
    pub fn group_id(&self, partition: u32) -> String {
        group_id(&self.name, self.id, partition)
    }
}

/// The Raft group id of a partition: `topic-partition-topicid`.
pub fn group_id(topic: &str, topic_id: u64, partition: u32) -> String {
    format!("{topic}-{partition}-{topic_id}")
}

/// The whole cluster metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    pub brokers: BTreeMap<NodeId, BrokerRecord>,
    pub topics: BTreeMap<String, TopicRecord>,
    /// Commands applied so far (also the source of topic ids).
    pub version: u64,
}

/// A change to the metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetadataCommand {
    /// Adds a broker or updates its address and rack.
    RegisterBroker {
        id: NodeId,
        addr: String,
        rack: Option<String>,
    },
    CreateTopic {
        name: String,
        replication_factor: u32,
        config: TopicConfig,
        /// Replicas per partition, chosen by the proposer (see `placement`).
        assignment: Vec<Vec<NodeId>>,
    },
    DeleteTopic {
        name: String,
    },
    /// Moves a partition to a new replica set.
    ReassignPartition {
        topic: String,
        partition: u32,
        replicas: Vec<NodeId>,
    },
    /// Marks a broker as draining (or not).
    SetDecommissioning {
        id: NodeId,
        on: bool,
    },
    /// The partition group's voters now equal the replicas of `epoch`.
    ReassignmentDone {
        topic: String,
        partition: u32,
        epoch: u32,
    },
}

/// Why a command was rejected. Stable: clients see these as gRPC statuses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum MetadataError {
    #[error("topic {0:?} already exists")]
    TopicExists(String),
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    #[error("unknown broker {0}")]
    UnknownBroker(NodeId),
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidTopicName { name: String, reason: String },
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error(
        "not enough brokers: replication factor {wanted} needs {wanted} brokers, {available} available"
    )]
    NotEnoughBrokers { wanted: u32, available: u32 },
}

/// Checks a topic name: 1 to 200 of `[A-Za-z0-9._-]`, not starting with `__` (reserved for
/// internal topics).
pub fn validate_topic_name(name: &str) -> Result<(), MetadataError> {
    let fail = |reason: &str| {
        Err(MetadataError::InvalidTopicName {
            name: name.to_string(),
            reason: reason.to_string(),
        })
    };
    if name.is_empty() {
        return fail("it is empty");
    }
    if name.len() > MAX_TOPIC_NAME_LEN {
        return fail("it is longer than 200 characters");
    }
    if name == "." || name == ".." {
        return fail("'.' and '..' are not allowed");
    }
    if name.starts_with("__") {
        return fail("names starting with '__' are reserved");
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return fail(&format!("character {bad:?} is not one of [A-Za-z0-9._-]"));
    }
    Ok(())
}

impl Metadata {
    pub fn topic(&self, name: &str) -> Option<&TopicRecord> {
        self.topics.get(name)
    }

    /// Applies one command; a rejected command leaves the state as it was (but still counts as
    /// applied).
    pub fn apply(&mut self, command: MetadataCommand) -> Result<u64, MetadataError> {
        self.version += 1;
        match command {
            MetadataCommand::RegisterBroker { id, addr, rack } => {
                if id == 0 {
                    return Err(MetadataError::Invalid("broker id 0 is reserved".into()));
                }
                let decommissioning = self.brokers.get(&id).is_some_and(|b| b.decommissioning);
                self.brokers.insert(
                    id,
                    BrokerRecord {
                        id,
                        addr,
                        rack,
                        decommissioning,
                    },
                );
                Ok(id)
            }
            MetadataCommand::CreateTopic {
                name,
                replication_factor,
                config,
                assignment,
            } => {
                validate_topic_name(&name)?;
                if self.topics.contains_key(&name) {
                    return Err(MetadataError::TopicExists(name));
                }
                if assignment.is_empty() || assignment.len() > MAX_PARTITIONS as usize {
                    return Err(MetadataError::Invalid(format!(
                        "partition count {} must be in [1, {MAX_PARTITIONS}]",
                        assignment.len()
                    )));
                }
                for replicas in &assignment {
                    self.check_replicas(replicas, replication_factor)?;
                }
                let id = self.version;
                let partitions = assignment
                    .into_iter()
                    .map(|replicas| PartitionRecord {
                        initial_replicas: replicas.clone(),
                        replicas,
                        epoch: 0,
                        settled_epoch: 0,
                    })
                    .collect();
                self.topics.insert(
                    name.clone(),
                    TopicRecord {
                        name,
                        id,
                        replication_factor,
                        config,
                        partitions,
                    },
                );
                Ok(id)
            }
            MetadataCommand::DeleteTopic { name } => match self.topics.remove(&name) {
                Some(topic) => Ok(topic.id),
                None => Err(MetadataError::UnknownTopic(name)),
            },
            MetadataCommand::ReassignPartition {
                topic,
                partition,
                replicas,
            } => {
                let rf = match self.topics.get(&topic) {
                    Some(t) => t.replication_factor,
                    None => return Err(MetadataError::UnknownTopic(topic)),
                };
                self.check_replicas(&replicas, rf)?;
                let Some(record) = self
                    .topics
                    .get_mut(&topic)
                    .and_then(|t| t.partitions.get_mut(partition as usize))
                else {
                    return Err(MetadataError::Invalid(format!(
                        "topic {topic:?} has no partition {partition}"
                    )));
                };
                if record.replicas != replicas {
                    record.replicas = replicas;
                    record.epoch += 1;
                }
                Ok(u64::from(record.epoch))
            }
            MetadataCommand::ReassignmentDone {
                topic,
                partition,
                epoch,
            } => {
                let record = self
                    .topics
                    .get_mut(&topic)
                    .and_then(|t| t.partitions.get_mut(partition as usize))
                    .ok_or_else(|| MetadataError::UnknownTopic(topic.clone()))?;
                if epoch > record.settled_epoch && epoch <= record.epoch {
                    record.settled_epoch = epoch;
                }
                Ok(u64::from(record.settled_epoch))
            }
            MetadataCommand::SetDecommissioning { id, on } => match self.brokers.get_mut(&id) {
                Some(broker) => {
                    broker.decommissioning = on;
                    Ok(id)
                }
                None => Err(MetadataError::UnknownBroker(id)),
            },
        }
    }

    fn check_replicas(&self, replicas: &[NodeId], rf: u32) -> Result<(), MetadataError> {
        if replicas.len() != rf as usize {
            return Err(MetadataError::Invalid(format!(
                "{} replicas given for replication factor {rf}",
                replicas.len()
            )));
        }
        let mut seen = std::collections::BTreeSet::new();
        for id in replicas {
            if !self.brokers.contains_key(id) {
                return Err(MetadataError::UnknownBroker(*id));
            }
            if !seen.insert(*id) {
                return Err(MetadataError::Invalid(format!(
                    "broker {id} is listed twice"
                )));
            }
        }
        Ok(())
    }
}

/// The controller group's state machine data: [`Metadata`], published on a watch channel after
/// every apply.
#[derive(Debug)]
pub struct MetadataState {
    metadata: Metadata,
    publish: tokio::sync::watch::Sender<std::sync::Arc<Metadata>>,
}

impl MetadataState {
    pub fn new() -> (Self, tokio::sync::watch::Receiver<std::sync::Arc<Metadata>>) {
        let (publish, watch) =
            tokio::sync::watch::channel(std::sync::Arc::new(Metadata::default()));
        (
            Self {
                metadata: Metadata::default(),
                publish,
            },
            watch,
        )
    }

    fn publish(&self) {
        self.publish
            .send_replace(std::sync::Arc::new(self.metadata.clone()));
    }
}

/// Encodes a command as the one-record batch the controller log stores.
pub fn command_batch(command: &MetadataCommand) -> Result<Bytes, postcard::Error> {
    let value = postcard::to_stdvec(command)?;
    let mut builder = BatchBuilder::new(Compression::None);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    builder.push(now, None, Some(&value), &[]);
    builder.build().ok_or(postcard::Error::SerializeBufferFull)
}

/// The reply to a command as it travels back to the proposer: the metadata version after it
/// applied, and its result.
pub type CommandReply = (u64, Result<u64, MetadataError>);

impl GroupState for MetadataState {
    fn apply(&mut self, header: &BatchHeader, batch: &Bytes) -> Bytes {
        let result: Result<u64, MetadataError> = (|| {
            let records = decode_records(header, batch.slice(weir_storage::codec::HEADER_LEN..))
                .map_err(|e| MetadataError::Invalid(format!("undecodable command batch: {e}")))?;
            let value = records
                .first()
                .and_then(|r| r.value.clone())
                .ok_or_else(|| MetadataError::Invalid("empty command batch".into()))?;
            let command: MetadataCommand = postcard::from_bytes(&value)
                .map_err(|e| MetadataError::Invalid(format!("undecodable command: {e}")))?;
            tracing::info!(?command, "applying metadata command");
            self.metadata.apply(command)
        })();
        if let Err(err) = &result {
            tracing::info!(error = %err, "metadata command rejected");
        }
        self.publish();
        let reply: CommandReply = (self.metadata.version, result);
        postcard::to_stdvec(&reply)
            .map(Bytes::from)
            .unwrap_or_default()
    }

    fn encode(&self) -> Bytes {
        postcard::to_stdvec(&self.metadata)
            .map(Bytes::from)
            .unwrap_or_default()
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        self.metadata = if data.is_empty() {
            Metadata::default()
        } else {
            postcard::from_bytes(data).map_err(|e| e.to_string())?
        };
        self.publish();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_brokers(n: u64) -> Metadata {
        let mut m = Metadata::default();
        for id in 1..=n {
            m.apply(MetadataCommand::RegisterBroker {
                id,
                addr: format!("127.0.0.1:{}", 9000 + id),
                rack: None,
            })
            .expect("registers");
        }
        m
    }

    #[test]
    fn topic_names_are_checked() {
        for bad in ["", "a b", "__internal", "x/y", ".", "é"] {
            assert!(validate_topic_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_topic_name(&"a".repeat(201)).is_err());
        for good in ["orders", "a.b-c_d", "X1", &"a".repeat(200)] {
            assert!(validate_topic_name(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn create_delete_and_recreate_gets_a_new_id() {
        let mut m = with_brokers(3);
        let create = || MetadataCommand::CreateTopic {
            name: "t".into(),
            replication_factor: 3,
            config: TopicConfig::default(),
            assignment: vec![vec![1, 2, 3], vec![2, 3, 1]],
        };
        let first = m.apply(create()).expect("created");
        assert_eq!(
            m.apply(create()),
            Err(MetadataError::TopicExists("t".into()))
        );
        m.apply(MetadataCommand::DeleteTopic { name: "t".into() })
            .expect("deleted");
        let second = m.apply(create()).expect("created again");
        assert_ne!(first, second);
        assert_eq!(m.topic("t").map(|t| t.partitions.len()), Some(2));
    }

    #[test]
    fn bad_assignments_are_rejected_without_change() {
        let mut m = with_brokers(3);
        let before = m.clone();
        for assignment in [
            vec![vec![1, 1, 2]],
            vec![vec![1, 2, 9]],
            vec![vec![1, 2]],
            vec![],
        ] {
            let result = m.apply(MetadataCommand::CreateTopic {
                name: "t".into(),
                replication_factor: 3,
                config: TopicConfig::default(),
                assignment,
            });
            assert!(result.is_err());
        }
        assert_eq!(m.topics, before.topics);
        assert_eq!(m.brokers, before.brokers);
    }

    #[test]
    fn commands_round_trip_through_batches() {
        let (mut state, watch) = MetadataState::new();
        let command = MetadataCommand::RegisterBroker {
            id: 4,
            addr: "127.0.0.1:1".into(),
            rack: Some("r1".into()),
        };
        let batch = weir_storage::codec::ValidBatch::new(command_batch(&command).expect("encodes"))
            .expect("valid");
        let reply = state.apply(batch.header(), batch.bytes());
        let reply: CommandReply = postcard::from_bytes(&reply).expect("reply decodes");
        assert_eq!(reply, (1, Ok(4)));
        assert_eq!(watch.borrow().brokers[&4].rack.as_deref(), Some("r1"));
    }
}
