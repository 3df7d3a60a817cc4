//! # weir-controller
//!
//! The cluster's control plane: a metadata Raft group (brokers, topics, partition assignments),
//! placement of replicas, and a reconciler on every node that runs the partition groups assigned
//! to it and carries out replica moves.
//!
//! Invariants: metadata changes only by commands applied in log order (every replica computes
//! the same metadata); placement never puts two replicas of a partition on one broker and never
//! places more replicas than there are brokers (a replication factor above the broker count is
//! refused for good, `MetadataError::ReplicationFactorTooLarge`); partitions are reached only
//! through `weir_raft::Partition`, never the segment log or openraft.
//!
//! - [`metadata`]: the state and the commands that change it (deterministic apply).
//! - [`security`]: users, SCRAM credentials, token hashes, certificate mappings, ACLs (and the
//!   authorizer), tenants and quotas; part of the metadata, no secret stored.
//! - [`placement`]: where replicas go (balanced, rack-aware), drains and rebalancing.
//! - [`Controller`]: this node's replica of the metadata group; proposals from any node.
//! - [`Partitions`]: the partition groups on this node and the reconciler.
//!
//! Known gaps: broker liveness is not tracked in the metadata yet (a down broker still receives
//! placements); leader balancing is by preferred-replica campaigns, not a global plan.

mod controller;
pub mod metadata;
mod partitions;
pub mod placement;
pub mod security;

pub use controller::{
    CONTROLLER_GROUP, Controller, ControllerConfig, ControllerError, LIVENESS_WINDOW,
    PROPOSE_TIMEOUT,
};
pub use metadata::{
    BrokerRecord, INTERNAL_TOPICS, Metadata, MetadataCommand, MetadataError, OFFSETS_TOPIC,
    PartitionRecord, TopicCompression, TopicConfig, TopicRecord,
};
pub use partitions::{PARTITIONS_DIR, PartitionReplica, PartitionSettings, Partitions};
pub use security::{
    ANY_PRINCIPAL, AclFilter, AclRecord, CertMapping, CertMatcher, Decision, Operation,
    PatternType, Permission, QuotaEntity, QuotaLimits, ResourceType, ScramCredential,
    ScramMechanism, SecurityState, TenantRecord, TokenRecord, TokenRejection, UserRecord,
    new_token, parse_token, user_principal,
};
