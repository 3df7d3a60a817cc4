//! # weir-client
//!
//! The Rust client for Weir.
//!
//! - [`Client`] (module `client`): one connection to a cluster — a gRPC channel per broker,
//!   a cached copy of the cluster metadata, and one method per RPC: topic and cluster admin,
//!   metadata, produce, fetch, offsets, consumer groups. Produce and fetch requests go straight to
//!   the partition's leader; every call retries across node failures and leader changes
//!   (following `weir-leader` hints) until its deadline.
//! - [`Producer`] (modules `producer`, `accumulator`): batches records per partition (by size and
//!   linger), compresses them, and sends each partition's batches in order to its leader, all
//!   partitions in parallel. Idempotent: a producer id from the cluster and a sequence per
//!   partition let the leader drop a retried batch it already wrote.
//! - [`Consumer`] (modules `consumer`, `group_member`): reads assigned partitions, or a consumer
//!   group's share of its topics, with long-poll fetchers in the background; commits positions.
//!   The group membership protocol is a pure state machine (`group_member`) that the consumer
//!   drives, as the producer drives its `accumulator`.
//! - [`check_health`] (module `health`): one node's standard gRPC health status.
//! - [`IdempotentBatcher`] (module `batch`): the low-level batch builder for callers that batch
//!   themselves.
//!
//! Batches are built on the client in Weir's batch format ([`weir_format::batch`]) and travel to
//! the log as they are. Keys map to partitions with [`partition_for_key`], Kafka's default
//! partitioner, as the wire contract prescribes.
//!
//! Invariants: retries follow the error contract of `weir.proto`
//! ([`weir_format::wire::ERROR_CONTRACT`]) — final answers (INVALID_ARGUMENT, NOT_FOUND,
//! FAILED_PRECONDITION without a leader, INTERNAL, UNKNOWN, DATA_LOSS, ...) are returned at once,
//! never retried — and every retry loop waits by the one policy of [`weir_format::retry`]
//! (backoff with jitter, never shorter than the server's `RetryInfo`); a failed batch is resent
//! as the same bytes, so the leader writes it at most once. The client depends on the wire
//! contract only (`weir-proto`, `weir-format`), never on server crates.
//!
//! ```no_run
//! # async fn example() -> Result<(), weir_client::ClientError> {
//! use std::sync::Arc;
//! use weir_client::{Client, Consumer, ConsumerConfig, Producer, ProducerConfig, ProducerRecord, Start};
//!
//! let client = Arc::new(Client::new(&["127.0.0.1:9092".to_string()])?);
//! let producer = Producer::new(Arc::clone(&client), ProducerConfig::default()).await?;
//! let delivered = producer
//!     .send("orders", ProducerRecord::new("42 apples").key("customer-7"))
//!     .await?;
//! println!("written at {:?}", delivered.await?.offset);
//! producer.close().await?;
//!
//! let mut consumer = Consumer::new(Arc::clone(&client), ConsumerConfig::default());
//! consumer.assign("orders", &[], Start::Earliest).await?;
//! for record in consumer.poll().await? {
//!     println!("{}/{} @{}: {:?}", record.topic, record.partition, record.offset, record.value);
//! }
//! # Ok(()) }
//! ```

mod access_calls;
mod accumulator;
mod batch;
mod client;
mod consumer;
mod error;
mod group_member;
mod health;
mod metadata;
mod producer;
mod security;

pub use batch::IdempotentBatcher;
pub use client::{Acks, Client, Start};
pub use consumer::{ConsumedRecord, Consumer, ConsumerConfig, ResetPolicy};
pub use error::ClientError;
pub use health::{NodeHealth, check_health, check_health_with};
pub use producer::{DeliveryFuture, Producer, ProducerConfig, ProducerRecord, RecordMetadata};
pub use security::{Security, TlsOptions};
/// gRPC status codes, as [`ClientError::code`] reports them.
pub use tonic::Code;
pub use weir_format::batch::Compression;
pub use weir_format::partitioner::partition_for_key;
pub use weir_proto::v1::{
    BrokerInfo, DescribeGroupResponse, FetchResponse, FetchedRecord, GroupMember, GroupSummary,
    HeartbeatRequest, HeartbeatResponse, ListOffsetsResponse, MetadataResponse, PartitionInfo,
    PartitionLag, PartitionOffset, ProduceResponse, TopicInfo, TopicPartitions,
};
/// The Security service's messages (users, tokens, ACLs, tenants, quotas).
pub mod access {
    pub use weir_proto::v1::{
        Acl, AclFilter, AddAclRequest, CertificateMapping, CreateTokenRequest, CreateTokenResponse,
        DeleteTenantRequest, DeleteUserRequest, ListAclsRequest, ListCertificateMappingsRequest,
        ListQuotasRequest, ListTenantsRequest, ListTokensRequest, ListUsersRequest,
        MapCertificateRequest, Quota, RemoveAclsRequest, RemoveQuotaRequest, RevokeTokenRequest,
        SetQuotaRequest, Tenant, TokenInfo, UnmapCertificateRequest, UpsertTenantRequest,
        UpsertUserRequest, UserInfo, WhoAmIRequest, WhoAmIResponse,
    };
}
