//! # weir-controller
//!
//! The cluster's control plane: a metadata Raft group (brokers, topics, partition assignments),
//! placement of replicas, and a reconciler on every node that runs the partition groups assigned
//! to it and carries out replica moves.
//!
//! - [`metadata`]: the state and the commands that change it (deterministic apply).
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

pub use controller::{
    CONTROLLER_GROUP, Controller, ControllerConfig, ControllerError, LIVENESS_WINDOW,
    PROPOSE_TIMEOUT,
};
pub use metadata::{
    BrokerRecord, INTERNAL_TOPICS, Metadata, MetadataCommand, MetadataError, OFFSETS_TOPIC,
    PartitionRecord, TopicCompression, TopicConfig, TopicRecord,
};
pub use partitions::{PARTITIONS_DIR, PartitionReplica, PartitionSettings, Partitions};
