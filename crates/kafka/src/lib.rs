//! # weir-kafka
//!
//! Kafka's wire protocol in front of a Weir node, so existing Kafka clients (librdkafka and its
//! bindings, kafka-python, the Java client, kcat) produce and consume Weir topics by changing
//! their bootstrap address.
//!
//! - `conn`: one connection — size-prefixed frames, request header, dispatch, answers in order.
//! - `versions`: the API keys and versions served (what ApiVersions advertises).
//! - `api`: each API translated to Weir's own partition and admin API, and Weir statuses to
//!   Kafka error codes.
//! - `group_api`: the consumer-group APIs (coordinator lookup, membership, offsets).
//! - `groups`: Kafka's classic group membership protocol for the groups coordinated here
//!   (committed offsets are Weir's, shared with gRPC groups).
//! - `records`: Kafka record batches (any codec) to Weir batches and back, checked whole.
//! - `sasl`: SASL PLAIN (over TLS) and SCRAM-SHA-256/512 against Weir's stored credentials.
//! - `backend`: what the listener needs of the node ([`Backend`]), implemented by weir-broker.
//!
//! Message codecs come from the `kafka-protocol` crate; record batches are coded here (see
//! `records` for why). This crate knows no node internals: it sees `weir.v1` messages only, so
//! a Kafka request is routed, authorized, throttled and written exactly as the gRPC request it
//! becomes.
//!
//! One data model: a record produced through Kafka (key, value, headers, timestamp) is stored as
//! Weir stores any record and reads back identically through gRPC at the same offset, and the
//! other way round.

pub mod api;
pub mod backend;
pub mod conn;
pub mod group_api;
pub mod groups;
pub mod records;
pub mod sasl;
pub mod versions;

pub use backend::{Backend, KafkaBroker, Session};
pub use conn::{ConnError, Listener, serve};
