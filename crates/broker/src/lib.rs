//! # weir-broker
//!
//! One Weir node: its configuration ([`NodeConfig`]), the public gRPC services (produce, fetch,
//! metadata, admin), request routing (writes go through the partition's Raft group, requests for
//! partitions hosted elsewhere are forwarded once), and the wiring of the controller replica,
//! the partition reconciler and the peer transport ([`Node`]).
//!
//! Prometheus metrics are served on `metrics_addr` (`GET /metrics`).
//!
//! Errors become gRPC statuses in one place (`status`); the codes are documented in
//! `proto/weir/v1/weir.proto`.

mod admin;
mod broker;
mod config;
mod fetch;
mod groups;
mod metrics;
mod node;
mod produce;
mod router;
mod status;

pub use config::{
    ConfigError, Layers, NodeConfig, RaftSettings, SETTINGS, Setting, SettingKind,
    parse_durability, parse_peer,
};
pub use node::{Node, NodeError};
pub use weir_format::wire::LEADER_TRAILER;
pub use weir_storage::Durability;
