//! The cluster metadata: brokers, topics, partition assignments and the security model
//! ([`crate::security`]), changed only by applying [`MetadataCommand`]s in log order. Applying
//! is deterministic — every controller replica ends in the same state — so commands carry every
//! decision (placement, salts and token secrets are chosen by the proposer and stored in the
//! command, as derived values only) and a command that is invalid for the state is rejected the
//! same way everywhere.
//!
//! A command travels as the value of a single record in a batch of the controller's Raft log.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use weir_format::batch::{BatchBuilder, BatchHeader, Compression, decode_records};
use weir_raft::GroupState;
use weir_raft::NodeId;

use crate::security::{
    AclFilter, AclRecord, CertMapping, CertMatcher, QuotaEntity, QuotaLimits, ScramCredential,
    SecurityState, TenantRecord, TokenRecord,
};

/// The internal topic that stores consumer groups' committed offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// The only names allowed for internal topics.
pub const INTERNAL_TOPICS: &[&str] = &[OFFSETS_TOPIC];

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
    /// `host:port` for clients outside the nodes' network (a container's published port, for
    /// example): the address metadata answers name to requests that arrive on the broker's
    /// external listener. None: clients everywhere use `addr`.
    pub external_addr: Option<String>,
    pub rack: Option<String>,
    /// Being drained: no new replicas are placed here, and its replicas move away.
    pub decommissioning: bool,
}

/// How a topic stores its batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TopicCompression {
    /// As the producer sent them (compressed or not).
    Producer,
    /// Uncompressed: compressed batches are decompressed before they are stored.
    None,
    /// lz4: uncompressed batches are compressed before they are stored.
    Lz4,
}

impl TopicCompression {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Producer => "producer",
            Self::None => "none",
            Self::Lz4 => "lz4",
        }
    }
}

/// Per-topic settings. Their names and limits are the public ones of `CreateTopicRequest` in
/// `proto/weir/v1/weir.proto`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    pub retention_ms: Option<u64>,
    pub retention_bytes: Option<u64>,
    pub segment_bytes: u64,
    pub max_message_bytes: u32,
    pub compression: TopicCompression,
}

impl Default for TopicConfig {
    fn default() -> Self {
        Self {
            retention_ms: Some(7 * 24 * 60 * 60 * 1000),
            retention_bytes: None,
            segment_bytes: 1 << 30,
            max_message_bytes: 8 << 20,
            compression: TopicCompression::Producer,
        }
    }
}

/// Smallest and largest `segment.bytes`.
pub const SEGMENT_BYTES_RANGE: (u64, u64) = (1 << 20, 1 << 30);
/// Largest `max.message.bytes` (the peer transport carries batches up to this size and more).
pub const MAX_MESSAGE_BYTES_LIMIT: u32 = 64 << 20;

impl TopicConfig {
    /// The default settings with `pairs` (`retention.ms` = `"60000"`, ...) applied. Unknown names
    /// and values out of range are rejected with the limit named.
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, MetadataError> {
        Self::default().altered(pairs, std::iter::empty())
    }

    /// These settings with `set` applied and the settings named in `reset` back at their
    /// defaults (as Kafka's IncrementalAlterConfigs SET and DELETE). All or nothing: an unknown
    /// name or a value out of range rejects the whole change.
    pub fn altered<'a>(
        &self,
        set: impl IntoIterator<Item = (&'a str, &'a str)>,
        reset: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, MetadataError> {
        let mut config = self.clone();
        let defaults = Self::default();
        for key in reset {
            let value = defaults
                .to_pairs()
                .into_iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v)
                .ok_or_else(|| MetadataError::UnknownConfig(key.to_string()))?;
            config.set(key, &value)?;
        }
        for (key, value) in set {
            config.set(key, value)?;
        }
        Ok(config)
    }

    /// Sets one setting by its public name.
    fn set(&mut self, key: &str, value: &str) -> Result<(), MetadataError> {
        let bad = |expected: &str| {
            Err(MetadataError::InvalidConfig {
                key: key.to_string(),
                value: value.to_string(),
                expected: expected.to_string(),
            })
        };
        // -1 (or any negative) means "no limit" for the retention settings.
        let limit = |value: &str| -> Option<Option<u64>> {
            let n: i64 = value.trim().parse().ok()?;
            Some(if n < 0 { None } else { Some(n as u64) })
        };
        match key {
            "retention.ms" => match limit(value) {
                Some(Some(0)) | None => return bad("milliseconds > 0, or -1 for no limit"),
                Some(v) => self.retention_ms = v,
            },
            "retention.bytes" => match limit(value) {
                Some(Some(0)) | None => return bad("bytes > 0, or -1 for no limit"),
                Some(v) => self.retention_bytes = v,
            },
            "segment.bytes" => match value.trim().parse::<u64>() {
                Ok(n) if (SEGMENT_BYTES_RANGE.0..=SEGMENT_BYTES_RANGE.1).contains(&n) => {
                    self.segment_bytes = n;
                }
                _ => {
                    return bad(&format!(
                        "bytes in [{}, {}]",
                        SEGMENT_BYTES_RANGE.0, SEGMENT_BYTES_RANGE.1
                    ));
                }
            },
            "max.message.bytes" => match value.trim().parse::<u32>() {
                Ok(n) if (1..=MAX_MESSAGE_BYTES_LIMIT).contains(&n) => {
                    self.max_message_bytes = n;
                }
                _ => return bad(&format!("bytes in [1, {MAX_MESSAGE_BYTES_LIMIT}]")),
            },
            "compression" => {
                self.compression = match value.trim() {
                    "producer" => TopicCompression::Producer,
                    "none" => TopicCompression::None,
                    "lz4" => TopicCompression::Lz4,
                    _ => return bad("one of producer, none, lz4"),
                }
            }
            _ => {
                return Err(MetadataError::UnknownConfig(key.to_string()));
            }
        }
        Ok(())
    }

    /// Every setting by its public name, as `from_pairs` reads them.
    pub fn to_pairs(&self) -> Vec<(&'static str, String)> {
        let limit = |v: Option<u64>| v.map_or_else(|| "-1".to_string(), |n| n.to_string());
        vec![
            ("compression", self.compression.as_str().to_string()),
            ("max.message.bytes", self.max_message_bytes.to_string()),
            ("retention.bytes", limit(self.retention_bytes)),
            ("retention.ms", limit(self.retention_ms)),
            ("segment.bytes", self.segment_bytes.to_string()),
        ]
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
    /// Kept by Weir itself (see [`INTERNAL_TOPICS`]).
    pub internal: bool,
    /// The principal (`User:<name>`) that created the topic, when security was on and a user
    /// created it: the topic counts against that user's `partitions` and `retained.bytes`
    /// quotas. None for topics created anonymously, by a node, or before this was recorded.
    pub created_by: Option<String>,
}

/// [`TopicRecord`] as snapshots stored it before `created_by` was added.
#[derive(Deserialize)]
struct TopicRecordWithoutCreator {
    name: String,
    id: u64,
    replication_factor: u32,
    config: TopicConfig,
    partitions: Vec<PartitionRecord>,
    internal: bool,
}

impl From<TopicRecordWithoutCreator> for TopicRecord {
    fn from(old: TopicRecordWithoutCreator) -> Self {
        Self {
            name: old.name,
            id: old.id,
            replication_factor: old.replication_factor,
            config: old.config,
            partitions: old.partitions,
            internal: old.internal,
            created_by: None,
        }
    }
}

fn upgrade_topics(
    topics: BTreeMap<String, TopicRecordWithoutCreator>,
) -> BTreeMap<String, TopicRecord> {
    topics.into_iter().map(|(k, v)| (k, v.into())).collect()
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
    /// The last idempotent producer id handed out.
    pub last_producer_id: i64,
    /// Users, credentials, tokens, certificate mappings, ACLs, tenants and quotas.
    #[serde(default)]
    pub security: SecurityState,
    /// The advertised address of each broker's Kafka listener (brokers without one are absent).
    #[serde(default)]
    pub kafka_listeners: BTreeMap<NodeId, String>,
}

/// [`Metadata`] as snapshots of layout 3 stored it: before `kafka_listeners`.
#[derive(Deserialize)]
struct MetadataWithoutKafka {
    brokers: BTreeMap<NodeId, BrokerRecord>,
    topics: BTreeMap<String, TopicRecord>,
    version: u64,
    last_producer_id: i64,
    security: SecurityState,
}

/// [`Metadata`] as snapshots stored it before `security` was added (postcard is not
/// self-describing, so a missing trailing field does not decode as its default), and so before
/// topics recorded their creator.
#[derive(Deserialize)]
struct MetadataWithoutSecurity {
    brokers: BTreeMap<NodeId, BrokerRecord>,
    topics: BTreeMap<String, TopicRecordWithoutCreator>,
    version: u64,
    last_producer_id: i64,
}

/// [`Metadata`] as snapshots stored it with `security` but before topics recorded their creator.
#[derive(Deserialize)]
struct MetadataWithoutCreators {
    brokers: BTreeMap<NodeId, BrokerRecord>,
    topics: BTreeMap<String, TopicRecordWithoutCreator>,
    version: u64,
    last_producer_id: i64,
    security: SecurityState,
}

/// The start of an encoded [`Metadata`] (then postcard): "WMD" and the layout's version (3:
/// before `kafka_listeners`; 4: now). The layouts before the version was written (1: no
/// `security`; 2: topics without `created_by`) start with a postcard map length instead, and
/// [`Metadata::decode`] reads them too. Adding a field to anything stored in `Metadata` bumps the
/// version and keeps a decoder for the old one.
const SNAPSHOT_MAGIC: &[u8; 3] = b"WMD";
const SNAPSHOT_VERSION: u8 = 4;

impl Metadata {
    /// The metadata as a controller snapshot stores it (see [`Metadata::decode`]).
    pub fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        let mut out = SNAPSHOT_MAGIC.to_vec();
        out.push(SNAPSHOT_VERSION);
        postcard::to_extend(self, out)
    }

    /// Decodes a snapshot's metadata: the current layout, or one written by an earlier version
    /// (before topics recorded their creator, `created_by` None; or before `security` existed).
    pub fn decode(data: &[u8]) -> Result<Self, postcard::Error> {
        // postcard does not check that it used every byte, so an old layout could "decode" as a
        // newer one with garbage: only a decode that uses every byte counts.
        fn exact<'a, T: Deserialize<'a>>(data: &'a [u8]) -> Result<T, postcard::Error> {
            match postcard::take_from_bytes::<T>(data)? {
                (value, []) => Ok(value),
                _ => Err(postcard::Error::DeserializeBadEncoding),
            }
        }
        let versioned = match data.split_at_checked(SNAPSHOT_MAGIC.len() + 1) {
            Some((head, body)) if head[..3] == SNAPSHOT_MAGIC[..] => match head[3] {
                SNAPSHOT_VERSION => exact::<Self>(body),
                3 => exact::<MetadataWithoutKafka>(body).map(|old| Self {
                    brokers: old.brokers,
                    topics: old.topics,
                    version: old.version,
                    last_producer_id: old.last_producer_id,
                    security: old.security,
                    kafka_listeners: BTreeMap::new(),
                }),
                _ => Err(postcard::Error::DeserializeBadEncoding),
            },
            _ => Err(postcard::Error::DeserializeBadEncoding),
        };
        versioned
            .or_else(|err| {
                let old: MetadataWithoutCreators = exact(data).map_err(|_| err)?;
                Ok(Self {
                    brokers: old.brokers,
                    topics: upgrade_topics(old.topics),
                    version: old.version,
                    last_producer_id: old.last_producer_id,
                    security: old.security,
                    kafka_listeners: BTreeMap::new(),
                })
            })
            .or_else(|err: postcard::Error| {
                let old: MetadataWithoutSecurity = exact(data).map_err(|_| err)?;
                Ok(Self {
                    brokers: old.brokers,
                    topics: upgrade_topics(old.topics),
                    version: old.version,
                    last_producer_id: old.last_producer_id,
                    security: SecurityState::default(),
                    kafka_listeners: BTreeMap::new(),
                })
            })
    }
}

/// A change to the metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetadataCommand {
    /// Adds a broker or updates its address and rack.
    RegisterBroker {
        id: NodeId,
        addr: String,
        external_addr: Option<String>,
        rack: Option<String>,
    },
    CreateTopic {
        name: String,
        replication_factor: u32,
        config: TopicConfig,
        /// An internal topic (its name must be one of [`INTERNAL_TOPICS`]).
        internal: bool,
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
    /// Hands out the next idempotent producer id (the reply).
    AllocateProducerId,
    /// Creates a user, or replaces its credentials of the mechanisms given (at most one each;
    /// the others stay).
    UpsertUser {
        name: String,
        credentials: Vec<ScramCredential>,
    },
    /// Deletes a user with its tokens and the certificate mappings to it (its ACLs, tenant
    /// membership and quota stay).
    DeleteUser {
        name: String,
    },
    /// Stores a bearer token's hash (made by the proposer, `security::new_token`) for an
    /// existing user.
    CreateToken(TokenRecord),
    /// Deletes a bearer token.
    RevokeToken {
        id: String,
    },
    /// Maps certificates to an existing user.
    AddCertMapping(CertMapping),
    /// Deletes the mapping of a matcher.
    RemoveCertMapping(CertMatcher),
    /// Adds an ACL (one that exists already is no change).
    AddAcl(AclRecord),
    /// Removes the ACLs the filter selects (the reply: how many).
    RemoveAcls(AclFilter),
    /// Creates a tenant or replaces its prefix and principals.
    UpsertTenant(TenantRecord),
    /// Deletes a tenant and its quota.
    DeleteTenant {
        name: String,
    },
    /// Sets the limits given (the others stay as they were).
    SetQuota {
        entity: QuotaEntity,
        limits: QuotaLimits,
    },
    /// Removes an entity's quota.
    RemoveQuota {
        entity: QuotaEntity,
    },
    /// [`MetadataCommand::CreateTopic`] by a user (never internal): the topic records its creator
    /// and counts against the user's `partitions` quota as well as its tenant's. (A variant of
    /// its own, after the others, so that commands logged before it still decode.)
    CreateUserTopic {
        /// `User:<name>`.
        created_by: String,
        name: String,
        replication_factor: u32,
        config: TopicConfig,
        assignment: Vec<Vec<NodeId>>,
    },
    /// Sets (or, with `None`, removes) the advertised address of a registered broker's Kafka
    /// listener. (After the others, so that commands logged before it still decode.)
    SetKafkaListener {
        id: NodeId,
        addr: Option<String>,
    },
    /// Adds partitions at the end of a non-internal topic, with replicas chosen by the proposer
    /// (see `placement`); existing partitions keep their numbers and data. (After the others,
    /// so that commands logged before it still decode.)
    AddPartitions {
        name: String,
        assignment: Vec<Vec<NodeId>>,
    },
    /// Changes settings of a non-internal topic: `set` applied and the names in `reset` back
    /// at their defaults, all or nothing ([`TopicConfig::altered`]). Replicas running the topic
    /// take the new limits at once.
    AlterTopicConfig {
        name: String,
        set: Vec<(String, String)>,
        reset: Vec<String>,
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
    #[error("invalid value {value:?} for topic setting {key}: expected {expected}")]
    InvalidConfig {
        key: String,
        value: String,
        expected: String,
    },
    #[error(
        "unknown topic setting {0:?} (known: retention.ms, retention.bytes, segment.bytes, max.message.bytes, compression)"
    )]
    UnknownConfig(String),
    #[error(
        "not enough brokers: replication factor {wanted} needs {wanted} brokers, {available} available"
    )]
    NotEnoughBrokers { wanted: u32, available: u32 },
    /// More replicas than the cluster has brokers: no wait can help (add brokers first).
    #[error(
        "replication factor {wanted} is larger than the cluster: it has {brokers} broker(s); use a replication factor of at most {brokers}, or add brokers"
    )]
    ReplicationFactorTooLarge { wanted: u32, brokers: u32 },
    #[error("invalid user name {name:?}: {reason}")]
    InvalidUserName { name: String, reason: String },
    #[error("unknown user {0:?}")]
    UnknownUser(String),
    #[error("unknown token {0:?}")]
    UnknownToken(String),
    /// A token with this id exists already (the proposer should draw a new one).
    #[error("a token with id {0:?} already exists")]
    TokenExists(String),
    #[error("no certificate mapping for {0}")]
    UnknownCertMapping(String),
    /// The matcher maps to another user: remove that mapping first.
    #[error("{matcher} is already mapped to user {user:?}; remove that mapping first")]
    CertMappingExists { matcher: String, user: String },
    #[error("unknown tenant {0:?}")]
    UnknownTenant(String),
    #[error(
        "tenant {tenant:?} prefix {prefix:?} overlaps tenant {other:?} prefix {other_prefix:?}: neither may start the other"
    )]
    TenantPrefixOverlap {
        tenant: String,
        prefix: String,
        other: String,
        other_prefix: String,
    },
    #[error("principal {principal:?} already belongs to tenant {tenant:?}")]
    PrincipalInOtherTenant { principal: String, tenant: String },
    #[error("no quota for {0}")]
    UnknownQuota(String),
    #[error("invalid value {value:?} for quota {key}: expected {expected}")]
    InvalidQuota {
        key: String,
        value: String,
        expected: String,
    },
    #[error(
        "unknown quota setting {0:?} (known: produce.bytes.per.sec, fetch.bytes.per.sec, requests.per.sec, partitions, retained.bytes)"
    )]
    UnknownQuotaSetting(String),
    /// A malformed user, credential, token, certificate mapping, ACL, tenant or quota. The
    /// message never contains a secret.
    #[error("invalid security request: {0}")]
    InvalidSecurity(String),
    /// The command would take an entity past a quota (`limit` names it, e.g. "partitions").
    #[error(
        "{entity} may have at most {max} {limit}; it has {current} and the topic would add {adding}"
    )]
    QuotaExceeded {
        entity: String,
        limit: String,
        max: u64,
        current: u64,
        adding: u64,
    },
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

    /// The partitions of the topics whose names start with tenant `tenant`'s prefix (0 for an
    /// unknown tenant).
    pub fn tenant_partitions(&self, tenant: &str) -> u32 {
        let Some(tenant) = self.security.tenant(tenant) else {
            return 0;
        };
        let partitions: usize = self
            .topics
            .range(tenant.prefix.clone()..)
            .take_while(|(name, _)| tenant.owns(name))
            .map(|(_, topic)| topic.partitions.len())
            .sum();
        u32::try_from(partitions).unwrap_or(u32::MAX)
    }

    /// The partitions of the topics principal `created_by` (`User:<name>`) created.
    pub fn user_partitions(&self, created_by: &str) -> u32 {
        let partitions: usize = self
            .topics
            .values()
            .filter(|t| t.created_by.as_deref() == Some(created_by))
            .map(|t| t.partitions.len())
            .sum();
        u32::try_from(partitions).unwrap_or(u32::MAX)
    }

    /// Rejects a new topic `name` of `adding` partitions that would take its tenant past the
    /// tenant's `partitions` quota, or its creator (`created_by`) past the user's.
    fn check_partition_quota(
        &self,
        name: &str,
        adding: usize,
        created_by: Option<&str>,
    ) -> Result<(), MetadataError> {
        let adding = adding as u64;
        let check = |entity: String, max: u32, current: u32| {
            if u64::from(current) + adding > u64::from(max) {
                return Err(MetadataError::QuotaExceeded {
                    entity,
                    limit: "partitions".into(),
                    max: u64::from(max),
                    current: u64::from(current),
                    adding,
                });
            }
            Ok(())
        };
        if let Some(tenant) = self.security.tenant_owning(name)
            && let Some(max) = self
                .security
                .quota(&QuotaEntity::Tenant(tenant.name.clone()))
                .and_then(|q| q.max_partitions)
        {
            check(
                format!("tenant {}", tenant.name),
                max,
                self.tenant_partitions(&tenant.name),
            )?;
        }
        if let Some(principal) = created_by
            && let Some(user) = crate::security::principal_user(principal)
            && let Some(max) = self
                .security
                .quota(&QuotaEntity::User(user.to_string()))
                .and_then(|q| q.max_partitions)
        {
            check(format!("user {user}"), max, self.user_partitions(principal))?;
        }
        Ok(())
    }

    /// Applies a topic creation (see [`MetadataCommand::CreateTopic`] and
    /// [`MetadataCommand::CreateUserTopic`]).
    fn create_topic(
        &mut self,
        name: String,
        replication_factor: u32,
        config: TopicConfig,
        internal: bool,
        assignment: Vec<Vec<NodeId>>,
        created_by: Option<String>,
    ) -> Result<u64, MetadataError> {
        if !internal || !INTERNAL_TOPICS.contains(&name.as_str()) {
            validate_topic_name(&name)?;
        }
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
        if let Some(principal) = &created_by
            && crate::security::principal_user(principal).is_none()
        {
            return Err(MetadataError::Invalid(format!(
                "a topic's creator must be a user principal (User:<name>), not {principal:?}"
            )));
        }
        if !internal {
            self.check_partition_quota(&name, assignment.len(), created_by.as_deref())?;
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
                internal,
                created_by,
            },
        );
        Ok(id)
    }

    /// Applies one command; a rejected command leaves the state as it was (but still counts as
    /// applied).
    pub fn apply(&mut self, command: MetadataCommand) -> Result<u64, MetadataError> {
        self.version += 1;
        match command {
            MetadataCommand::RegisterBroker {
                id,
                addr,
                external_addr,
                rack,
            } => {
                if id == 0 {
                    return Err(MetadataError::Invalid("broker id 0 is reserved".into()));
                }
                let decommissioning = self.brokers.get(&id).is_some_and(|b| b.decommissioning);
                self.brokers.insert(
                    id,
                    BrokerRecord {
                        id,
                        addr,
                        external_addr,
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
                internal,
                assignment,
            } => self.create_topic(name, replication_factor, config, internal, assignment, None),
            MetadataCommand::CreateUserTopic {
                created_by,
                name,
                replication_factor,
                config,
                assignment,
            } => self.create_topic(
                name,
                replication_factor,
                config,
                false,
                assignment,
                Some(created_by),
            ),
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
            MetadataCommand::AllocateProducerId => {
                self.last_producer_id += 1;
                Ok(self.last_producer_id as u64)
            }
            MetadataCommand::SetDecommissioning { id, on } => match self.brokers.get_mut(&id) {
                Some(broker) => {
                    broker.decommissioning = on;
                    Ok(id)
                }
                None => Err(MetadataError::UnknownBroker(id)),
            },
            MetadataCommand::SetKafkaListener { id, addr } => {
                if !self.brokers.contains_key(&id) {
                    return Err(MetadataError::UnknownBroker(id));
                }
                match addr {
                    Some(addr) => self.kafka_listeners.insert(id, addr),
                    None => self.kafka_listeners.remove(&id),
                };
                Ok(id)
            }
            MetadataCommand::AddPartitions { name, assignment } => {
                self.add_partitions(&name, assignment)
            }
            MetadataCommand::AlterTopicConfig { name, set, reset } => {
                let topic = self.changeable_topic(&name)?;
                let config = topic.config.altered(
                    set.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                    reset.iter().map(String::as_str),
                )?;
                let id = topic.id;
                if let Some(topic) = self.topics.get_mut(&name) {
                    topic.config = config;
                }
                Ok(id)
            }
            command @ (MetadataCommand::UpsertUser { .. }
            | MetadataCommand::DeleteUser { .. }
            | MetadataCommand::CreateToken(_)
            | MetadataCommand::RevokeToken { .. }
            | MetadataCommand::AddCertMapping(_)
            | MetadataCommand::RemoveCertMapping(_)
            | MetadataCommand::AddAcl(_)
            | MetadataCommand::RemoveAcls(_)
            | MetadataCommand::UpsertTenant(_)
            | MetadataCommand::DeleteTenant { .. }
            | MetadataCommand::SetQuota { .. }
            | MetadataCommand::RemoveQuota { .. }) => self.security.apply(command),
        }
    }

    /// Topic `name` if it exists and may be changed by clients (internal topics may not).
    fn changeable_topic(&self, name: &str) -> Result<&TopicRecord, MetadataError> {
        match self.topics.get(name) {
            None => Err(MetadataError::UnknownTopic(name.to_string())),
            Some(topic) if topic.internal => Err(MetadataError::Invalid(format!(
                "topic {name:?} is internal: Weir keeps its partitions and settings"
            ))),
            Some(topic) => Ok(topic),
        }
    }

    /// Applies [`MetadataCommand::AddPartitions`]; returns the new partition count.
    fn add_partitions(
        &mut self,
        name: &str,
        assignment: Vec<Vec<NodeId>>,
    ) -> Result<u64, MetadataError> {
        let topic = self.changeable_topic(name)?;
        let total = topic.partitions.len() + assignment.len();
        if assignment.is_empty() || total > MAX_PARTITIONS as usize {
            return Err(MetadataError::Invalid(format!(
                "topic {name:?} has {} partitions; the new count must be larger, and at most {MAX_PARTITIONS}",
                topic.partitions.len()
            )));
        }
        for replicas in &assignment {
            self.check_replicas(replicas, topic.replication_factor)?;
        }
        self.check_partition_quota(name, assignment.len(), topic.created_by.as_deref())?;
        if let Some(topic) = self.topics.get_mut(name) {
            topic
                .partitions
                .extend(assignment.into_iter().map(|replicas| PartitionRecord {
                    initial_replicas: replicas.clone(),
                    replicas,
                    epoch: 0,
                    settled_epoch: 0,
                }));
        }
        Ok(total as u64)
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
            let records = decode_records(header, batch.slice(weir_format::batch::HEADER_LEN..))
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
        self.metadata.encode().map(Bytes::from).unwrap_or_default()
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        self.metadata = if data.is_empty() {
            Metadata::default()
        } else {
            Metadata::decode(data).map_err(|e| e.to_string())?
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
                external_addr: None,
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
            internal: false,
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
    fn partitions_are_added_at_the_end_and_never_to_internal_topics() {
        let mut m = with_brokers(3);
        m.apply(MetadataCommand::CreateTopic {
            internal: false,
            name: "t".into(),
            replication_factor: 2,
            config: TopicConfig::default(),
            assignment: vec![vec![1, 2]],
        })
        .expect("created");
        let before = m.topic("t").cloned().expect("topic");
        let add = |assignment: Vec<Vec<NodeId>>| MetadataCommand::AddPartitions {
            name: "t".into(),
            assignment,
        };
        assert_eq!(m.apply(add(vec![vec![2, 3], vec![3, 1]])), Ok(3));
        let after = m.topic("t").cloned().expect("topic");
        assert_eq!(after.id, before.id);
        assert_eq!(after.partitions[0], before.partitions[0]);
        assert_eq!(after.partitions[2].replicas, vec![3, 1]);
        assert_eq!(after.partitions[2].initial_replicas, vec![3, 1]);
        // Wrong replica counts, unknown brokers, nothing to add, unknown topics: refused.
        for bad in [vec![vec![1]], vec![vec![1, 9]], vec![]] {
            assert!(m.apply(add(bad)).is_err());
        }
        assert!(matches!(
            m.apply(MetadataCommand::AddPartitions {
                name: "nope".into(),
                assignment: vec![vec![1, 2]],
            }),
            Err(MetadataError::UnknownTopic(_))
        ));
        m.apply(MetadataCommand::CreateTopic {
            internal: true,
            name: OFFSETS_TOPIC.into(),
            replication_factor: 1,
            config: TopicConfig::default(),
            assignment: vec![vec![1]],
        })
        .expect("internal topic");
        assert!(matches!(
            m.apply(MetadataCommand::AddPartitions {
                name: OFFSETS_TOPIC.into(),
                assignment: vec![vec![2]],
            }),
            Err(MetadataError::Invalid(_))
        ));
        assert_eq!(m.topic("t").map(|t| t.partitions.len()), Some(3));
    }

    #[test]
    fn topic_settings_are_altered_all_or_nothing() {
        let mut m = with_brokers(1);
        m.apply(MetadataCommand::CreateTopic {
            internal: false,
            name: "t".into(),
            replication_factor: 1,
            config: TopicConfig::from_pairs([("retention.bytes", "1000000")]).expect("valid"),
            assignment: vec![vec![1]],
        })
        .expect("created");
        let alter = |set: &[(&str, &str)], reset: &[&str]| MetadataCommand::AlterTopicConfig {
            name: "t".into(),
            set: set
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            reset: reset.iter().map(|k| k.to_string()).collect(),
        };
        m.apply(alter(&[("retention.ms", "60000")], &["retention.bytes"]))
            .expect("altered");
        let config = &m.topic("t").expect("topic").config;
        assert_eq!(config.retention_ms, Some(60_000));
        assert_eq!(config.retention_bytes, None, "reset to the default");
        let before = config.clone();
        assert!(matches!(
            m.apply(alter(&[("retention.ms", "5"), ("segment.bytes", "1")], &[])),
            Err(MetadataError::InvalidConfig { .. })
        ));
        assert!(matches!(
            m.apply(alter(&[], &["cleanup.policy"])),
            Err(MetadataError::UnknownConfig(_))
        ));
        assert_eq!(m.topic("t").expect("topic").config, before);
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
                internal: false,
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
            external_addr: Some("127.0.0.2:1".into()),
            rack: Some("r1".into()),
        };
        let batch = weir_format::batch::ValidBatch::new(command_batch(&command).expect("encodes"))
            .expect("valid");
        let reply = state.apply(batch.header(), batch.bytes());
        let reply: CommandReply = postcard::from_bytes(&reply).expect("reply decodes");
        assert_eq!(reply, (1, Ok(4)));
        assert_eq!(watch.borrow().brokers[&4].rack.as_deref(), Some("r1"));
    }

    /// One of each security command, valid in this order on an empty state.
    fn security_commands() -> Vec<MetadataCommand> {
        use crate::security::*;
        let (token, _) = new_token("alice", 1, Some(2), Some("ci".into()));
        let filter = AclFilter {
            principal: Some("User:alice".into()),
            resource: Some(ResourceType::Topic),
            pattern: Some(PatternType::Prefixed),
            name: Some("team-a.".into()),
            operation: Some(Operation::Write),
            permission: Some(Permission::Allow),
        };
        vec![
            MetadataCommand::UpsertUser {
                name: "alice".into(),
                credentials: vec![
                    ScramCredential::generate(ScramMechanism::Sha256, "pw", 4096).unwrap(),
                    ScramCredential::generate(ScramMechanism::Sha512, "pw", 4096).unwrap(),
                ],
            },
            MetadataCommand::CreateToken(token.clone()),
            MetadataCommand::RevokeToken { id: token.id },
            MetadataCommand::AddCertMapping(CertMapping {
                matcher: CertMatcher::Subject("CN=a,O=b".into()),
                user: "alice".into(),
            }),
            MetadataCommand::RemoveCertMapping(CertMatcher::Subject("CN=a,O=b".into())),
            MetadataCommand::AddAcl(AclRecord {
                principal: "User:alice".into(),
                resource: ResourceType::Topic,
                pattern: PatternType::Prefixed,
                name: "team-a.".into(),
                operation: Operation::Write,
                permission: Permission::Allow,
            }),
            MetadataCommand::RemoveAcls(filter),
            MetadataCommand::UpsertTenant(TenantRecord {
                name: "team-a".into(),
                prefix: "team-a.".into(),
                principals: ["User:alice".to_string()].into(),
            }),
            MetadataCommand::SetQuota {
                entity: QuotaEntity::Tenant("team-a".into()),
                limits: QuotaLimits::from_pairs([("partitions", "3"), ("retained.bytes", "9")])
                    .unwrap(),
            },
            MetadataCommand::RemoveQuota {
                entity: QuotaEntity::Tenant("team-a".into()),
            },
            MetadataCommand::DeleteTenant {
                name: "team-a".into(),
            },
            MetadataCommand::DeleteUser {
                name: "alice".into(),
            },
        ]
    }

    #[test]
    fn security_commands_round_trip_through_batches() {
        let (mut state, watch) = MetadataState::new();
        let mut direct = Metadata::default();
        for (i, command) in security_commands().into_iter().enumerate() {
            let batch =
                weir_format::batch::ValidBatch::new(command_batch(&command).expect("encodes"))
                    .expect("valid");
            let records = decode_records(
                batch.header(),
                batch.bytes().slice(weir_format::batch::HEADER_LEN..),
            )
            .unwrap();
            let value = records[0].value.clone().unwrap();
            let decoded: MetadataCommand = postcard::from_bytes(&value).unwrap();
            assert_eq!(decoded, command);
            let reply = state.apply(batch.header(), batch.bytes());
            let (version, result): CommandReply = postcard::from_bytes(&reply).unwrap();
            assert_eq!(version, i as u64 + 1);
            assert!(result.is_ok(), "{command:?}: {result:?}");
            assert_eq!(direct.apply(command), result);
        }
        assert_eq!(**watch.borrow(), direct);
        assert_eq!(direct.security, crate::SecurityState::default());
    }

    #[test]
    fn snapshots_round_trip_and_old_layouts_still_restore() {
        let mut m = with_brokers(2);
        for command in security_commands().into_iter().take(2) {
            m.apply(command).unwrap();
        }
        let topic = |name: &str| MetadataCommand::CreateTopic {
            internal: false,
            name: name.into(),
            replication_factor: 1,
            config: TopicConfig::default(),
            assignment: vec![vec![1], vec![2]],
        };
        m.apply(topic("a")).unwrap();
        m.apply(topic("b")).unwrap();
        m.apply(MetadataCommand::CreateUserTopic {
            created_by: "User:alice".into(),
            name: "c".into(),
            replication_factor: 1,
            config: TopicConfig::default(),
            assignment: vec![vec![1]],
        })
        .unwrap();
        assert_eq!(m.topics["c"].created_by.as_deref(), Some("User:alice"));
        // Layout 3: versioned, without Kafka listeners.
        #[derive(Serialize)]
        struct Layout3<'a> {
            brokers: &'a BTreeMap<NodeId, BrokerRecord>,
            topics: &'a BTreeMap<String, TopicRecord>,
            version: u64,
            last_producer_id: i64,
            security: &'a SecurityState,
        }
        let mut layout3 = b"WMD\x03".to_vec();
        layout3.extend(
            postcard::to_stdvec(&Layout3 {
                brokers: &m.brokers,
                topics: &m.topics,
                version: m.version,
                last_producer_id: m.last_producer_id,
                security: &m.security,
            })
            .unwrap(),
        );
        assert_eq!(Metadata::decode(&layout3).unwrap(), m);
        m.apply(MetadataCommand::SetKafkaListener {
            id: 2,
            addr: Some("kafka-2:9093".into()),
        })
        .unwrap();
        assert_eq!(
            m.apply(MetadataCommand::SetKafkaListener {
                id: 9,
                addr: Some("x:1".into()),
            }),
            Err(MetadataError::UnknownBroker(9))
        );
        let (mut state, watch) = MetadataState::new();
        let encoded = m.encode().unwrap();
        assert!(encoded.starts_with(b"WMD\x04"));
        state.restore(&encoded).unwrap();
        assert_eq!(**watch.borrow(), m);
        assert_eq!(watch.borrow().kafka_listeners[&2], "kafka-2:9093");
        assert_eq!(state.encode(), Bytes::from(encoded));
        m.kafka_listeners.clear();

        // Topics as stored before `created_by`.
        #[derive(Serialize)]
        struct OldTopic<'a> {
            name: &'a str,
            id: u64,
            replication_factor: u32,
            config: &'a TopicConfig,
            partitions: &'a [PartitionRecord],
            internal: bool,
        }
        let old_topics: BTreeMap<&str, OldTopic<'_>> = m
            .topics
            .values()
            .map(|t| {
                (
                    t.name.as_str(),
                    OldTopic {
                        name: &t.name,
                        id: t.id,
                        replication_factor: t.replication_factor,
                        config: &t.config,
                        partitions: &t.partitions,
                        internal: t.internal,
                    },
                )
            })
            .collect();
        let without_creators = {
            let mut m = m.clone();
            for topic in m.topics.values_mut() {
                topic.created_by = None;
            }
            m
        };

        // Layout 2: with security, topics without creators (unversioned).
        #[derive(Serialize)]
        struct WithSecurity<'a> {
            brokers: &'a BTreeMap<NodeId, BrokerRecord>,
            topics: &'a BTreeMap<&'a str, OldTopic<'a>>,
            version: u64,
            last_producer_id: i64,
            security: &'a SecurityState,
        }
        let old = postcard::to_stdvec(&WithSecurity {
            brokers: &m.brokers,
            topics: &old_topics,
            version: m.version,
            last_producer_id: m.last_producer_id,
            security: &m.security,
        })
        .unwrap();
        state.restore(&old).unwrap();
        assert_eq!(**watch.borrow(), without_creators);

        // Layout 1: before security.
        #[derive(Serialize)]
        struct Old<'a> {
            brokers: &'a BTreeMap<NodeId, BrokerRecord>,
            topics: &'a BTreeMap<&'a str, OldTopic<'a>>,
            version: u64,
            last_producer_id: i64,
        }
        let old = postcard::to_stdvec(&Old {
            brokers: &m.brokers,
            topics: &old_topics,
            version: m.version,
            last_producer_id: 7,
        })
        .unwrap();
        state.restore(&old).unwrap();
        let restored = watch.borrow().clone();
        assert_eq!(restored.brokers, m.brokers);
        assert_eq!(restored.topics, without_creators.topics);
        assert_eq!(restored.version, m.version);
        assert_eq!(restored.last_producer_id, 7);
        assert_eq!(restored.security, crate::SecurityState::default());
        assert!(state.restore(&[1, 2, 3]).is_err());
        assert!(state.restore(b"WMD\x09junk").is_err());
    }

    #[test]
    fn a_user_partition_quota_limits_the_topics_it_creates() {
        use crate::security::{QuotaEntity, QuotaLimits};
        let mut m = with_brokers(1);
        let create = |name: &str, partitions: usize, by: &str| MetadataCommand::CreateUserTopic {
            created_by: by.into(),
            name: name.into(),
            replication_factor: 1,
            config: TopicConfig::default(),
            assignment: vec![vec![1]; partitions],
        };
        m.apply(create("a1", 3, "User:alice")).unwrap();
        m.apply(create("b1", 9, "User:bob")).unwrap();
        // Anonymous topics count for no one.
        m.apply(MetadataCommand::CreateTopic {
            internal: false,
            name: "anon".into(),
            replication_factor: 1,
            config: TopicConfig::default(),
            assignment: vec![vec![1]; 7],
        })
        .unwrap();
        assert_eq!(m.user_partitions("User:alice"), 3);
        m.apply(MetadataCommand::SetQuota {
            entity: QuotaEntity::User("alice".into()),
            limits: QuotaLimits::from_pairs([("partitions", "5")]).unwrap(),
        })
        .unwrap();
        let err = m.apply(create("a2", 3, "User:alice")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "user alice may have at most 5 partitions; it has 3 and the topic would add 3"
        );
        assert!(!m.topics.contains_key("a2"));
        m.apply(create("a2", 2, "User:alice")).unwrap();
        assert_eq!(m.user_partitions("User:alice"), 5);
        // Bob has no quota; a creator must be a user.
        m.apply(create("b2", 50, "User:bob")).unwrap();
        assert!(matches!(
            m.apply(create("x", 1, "Node:1")),
            Err(MetadataError::Invalid(_))
        ));
        m.apply(MetadataCommand::DeleteTopic { name: "a1".into() })
            .unwrap();
        m.apply(create("a3", 3, "User:alice")).unwrap();
    }

    #[test]
    fn a_tenant_partition_quota_limits_new_topics() {
        use crate::security::{QuotaEntity, QuotaLimits, TenantRecord};
        let mut m = with_brokers(1);
        let create = |name: &str, partitions: usize| MetadataCommand::CreateTopic {
            internal: false,
            name: name.into(),
            replication_factor: 1,
            config: TopicConfig::default(),
            assignment: vec![vec![1]; partitions],
        };
        // Topics before the tenant and outside it count for no one.
        m.apply(create("team-a.early", 2)).unwrap();
        m.apply(create("team-b.x", 5)).unwrap();
        m.apply(create("team-a", 5)).unwrap();
        m.apply(MetadataCommand::UpsertTenant(TenantRecord {
            name: "team-a".into(),
            prefix: "team-a.".into(),
            principals: Default::default(),
        }))
        .unwrap();
        assert_eq!(m.tenant_partitions("team-a"), 2);
        assert_eq!(m.tenant_partitions("nobody"), 0);
        // No quota: no limit.
        m.apply(create("team-a.big", 6)).unwrap();
        assert_eq!(m.tenant_partitions("team-a"), 8);
        m.apply(MetadataCommand::SetQuota {
            entity: QuotaEntity::Tenant("team-a".into()),
            limits: QuotaLimits::from_pairs([("partitions", "10")]).unwrap(),
        })
        .unwrap();
        let topics = m.topics.clone();
        let err = m.apply(create("team-a.orders", 4)).unwrap_err();
        assert_eq!(
            err,
            MetadataError::QuotaExceeded {
                entity: "tenant team-a".into(),
                limit: "partitions".into(),
                max: 10,
                current: 8,
                adding: 4,
            }
        );
        assert_eq!(
            err.to_string(),
            "tenant team-a may have at most 10 partitions; it has 8 and the topic would add 4"
        );
        assert_eq!(m.topics, topics);
        // Up to the limit exactly; topics outside the prefix are not counted.
        m.apply(create("team-a.orders", 2)).unwrap();
        m.apply(create("team-b.more", 50)).unwrap();
        assert_eq!(m.tenant_partitions("team-a"), 10);
        assert!(matches!(
            m.apply(create("team-a.one-more", 1)),
            Err(MetadataError::QuotaExceeded { .. })
        ));
        m.apply(MetadataCommand::DeleteTopic {
            name: "team-a.big".into(),
        })
        .unwrap();
        m.apply(create("team-a.one-more", 1)).unwrap();
        assert_eq!(m.tenant_partitions("team-a"), 5);
    }

    #[test]
    fn topic_settings_parse_render_and_reject_bad_values() {
        let config = TopicConfig::from_pairs([
            ("retention.ms", "60000"),
            ("retention.bytes", "-1"),
            ("segment.bytes", "1048576"),
            ("max.message.bytes", "1000"),
            ("compression", "lz4"),
        ])
        .unwrap();
        assert_eq!(config.retention_ms, Some(60_000));
        assert_eq!(config.retention_bytes, None);
        assert_eq!(config.segment_bytes, 1 << 20);
        assert_eq!(config.max_message_bytes, 1000);
        assert_eq!(config.compression, TopicCompression::Lz4);
        let pairs = config.to_pairs();
        let again = TopicConfig::from_pairs(pairs.iter().map(|(k, v)| (*k, v.as_str()))).unwrap();
        assert_eq!(again, config);
        for (key, value, named) in [
            ("segment.bytes", "10", "1048576"),
            ("max.message.bytes", "0", "67108864"),
            ("max.message.bytes", "99999999999", "67108864"),
            ("retention.ms", "soon", "milliseconds"),
            ("retention.ms", "0", "milliseconds"),
            ("compression", "zstd", "producer, none, lz4"),
        ] {
            let err = TopicConfig::from_pairs([(key, value)]).unwrap_err();
            assert!(
                matches!(err, MetadataError::InvalidConfig { .. }),
                "{key}={value}: {err}"
            );
            assert!(err.to_string().contains(named), "{key}={value}: {err}");
            assert!(err.to_string().contains(key), "{err}");
        }
        let err = TopicConfig::from_pairs([("cleanup.policy", "compact")]).unwrap_err();
        assert_eq!(err, MetadataError::UnknownConfig("cleanup.policy".into()));
    }

    #[test]
    fn internal_names_only_for_internal_topics_and_producer_ids_are_unique() {
        let mut m = with_brokers(3);
        let create = |name: &str, internal| MetadataCommand::CreateTopic {
            internal,
            name: name.into(),
            replication_factor: 1,
            config: TopicConfig::default(),
            assignment: vec![vec![1]],
        };
        assert!(matches!(
            m.apply(create(OFFSETS_TOPIC, false)),
            Err(MetadataError::InvalidTopicName { .. })
        ));
        assert!(matches!(
            m.apply(create("__other", true)),
            Err(MetadataError::InvalidTopicName { .. })
        ));
        m.apply(create(OFFSETS_TOPIC, true)).unwrap();
        assert!(m.topics[OFFSETS_TOPIC].internal);
        let a = m.apply(MetadataCommand::AllocateProducerId).unwrap();
        let b = m.apply(MetadataCommand::AllocateProducerId).unwrap();
        assert_eq!(b, a + 1);
    }
}
