//! # weir-broker
//!
//! One Weir node: its configuration ([`NodeConfig`], layered: defaults < file < `WEIR_*` <
//! flags), the public gRPC services and the wiring of the controller replica, the partition
//! reconciler and the peer transport ([`Node`]).
//!
//! - `router`: the one [`Router`](router::Router) every service goes through — topic lookup,
//!   routes to a local replica or another node, hop-bounded forwarding, the node-to-node client
//!   factory.
//! - `broker` (`weir.v1.Broker`) with `produce` (the write path) and `fetch` (the read path);
//!   `admin` (`weir.v1.Admin`); `groups` (`weir.v1.Groups`: the coordinator, with a pure
//!   `assignor` and the `offsets` record codec). Separate types; none names another.
//! - `status`: every error of the layers below → one gRPC status, by the table of
//!   `proto/weir/v1/weir.proto` ([`weir_format::wire::ERROR_CONTRACT`]).
//! - `metrics`: Prometheus text on `metrics_addr` (`GET /metrics`).
//! - `quota`: rate quotas (throttling every call of Broker, Admin and Groups on the node it
//!   reached) and the retained-bytes hard limit (with the internal `weir.peer.v1.Usage` service).
//! - `limits`: the bounds of each listener (streams, in-flight requests, request size,
//!   keepalive) and the node-wide budgets of background work; `listener`: the accept loop
//!   (plaintext or TLS) that closes idle and slow connections.
//! - `kafka`: the Kafka listener (`kafka_addr`): `weir_kafka` over the same services.
//!
//! Invariants: services reach partitions only through `weir_raft::Partition` (never the segment
//! log or openraft); a request is forwarded at most [`weir_format::wire::MAX_FORWARD_HOPS`]
//! times; every client-visible error is mapped in `status` and nowhere else; every request runs
//! in a `tracing` span and is counted in the metrics.

mod admin;
mod audit;
mod auth;
mod broker;
mod config;
mod fetch;
mod groups;
mod kafka;
mod limits;
mod listener;
mod metrics;
mod node;
pub mod pki;
mod produce;
mod quota;
mod router;
mod security;
mod status;

pub use config::{
    ConfigError, Layers, LimitSettings, NodeConfig, RaftSettings, SETTINGS, Setting, SettingKind,
    parse_durability, parse_peer,
};
pub use node::{Node, NodeError};
pub use weir_format::wire::LEADER_TRAILER;
pub use weir_storage::Durability;
