//! # weir-client
//!
//! The Rust client for Weir. [`Client`] talks to any node of a cluster over gRPC: topic admin,
//! metadata, producing batches (with a producer id and sequence numbers, so a retry after an
//! ambiguous failure is dropped by the partition leader instead of written twice) and fetching.
//! Every call retries across node failures and leader changes until its deadline.
//!
//! Batches are built on the client in Weir's batch format ([`weir_storage::codec`]) and travel to
//! the log as they are.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use weir_proto::v1::admin_client::AdminClient;
use weir_proto::v1::broker_client::BrokerClient;
use weir_proto::v1::{
    Acks, CreateTopicRequest, DecommissionBrokerRequest, DeleteTopicRequest, FetchRequest,
    ListOffsetsRequest, MetadataRequest, ProduceRequest, ReassignPartitionRequest,
    RebalanceRequest,
};
pub use weir_proto::v1::{
    BrokerInfo, FetchResponse, FetchedRecord, ListOffsetsResponse, MetadataResponse, PartitionInfo,
    ProduceResponse, TopicInfo,
};
use weir_storage::codec::{BatchBuilder, Compression, ProducerInfo};

/// Largest message the client sends or accepts.
const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// Why a call failed (after retries, where they apply).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no broker address given")]
    NoBrokers,
    #[error("invalid broker address {addr:?}: {reason}")]
    BadAddress { addr: String, reason: String },
    /// The server's answer; `status.code()` says which kind (see `proto/weir/v1/weir.proto`).
    #[error("{}: {}", status.code(), status.message())]
    Status { status: Status },
    #[error("gave up after {waited:?}: {last}")]
    Timeout { waited: Duration, last: String },
}

impl ClientError {
    /// The gRPC code behind the error, if the server answered.
    pub fn code(&self) -> Option<Code> {
        match self {
            Self::Status { status } => Some(status.code()),
            _ => None,
        }
    }
}

/// Whether a status is worth retrying (elsewhere or later).
fn retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::FailedPrecondition
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Cancelled
            | Code::Internal
    )
}

/// A connection to a cluster.
#[derive(Debug)]
pub struct Client {
    channels: Vec<(String, Channel)>,
    next: AtomicUsize,
    /// How long a call keeps retrying.
    pub retry_for: Duration,
}

impl Client {
    /// A client for the nodes at `brokers` (`host:port`). Connects lazily.
    pub fn new(brokers: &[String]) -> Result<Self, ClientError> {
        if brokers.is_empty() {
            return Err(ClientError::NoBrokers);
        }
        let channels = brokers
            .iter()
            .map(|addr| {
                let endpoint = Endpoint::from_shared(format!("http://{addr}"))
                    .map_err(|e| ClientError::BadAddress {
                        addr: addr.clone(),
                        reason: e.to_string(),
                    })?
                    .connect_timeout(Duration::from_secs(1))
                    .tcp_nodelay(true);
                Ok((addr.clone(), endpoint.connect_lazy()))
            })
            .collect::<Result<Vec<_>, ClientError>>()?;
        Ok(Self {
            channels,
            next: AtomicUsize::new(0),
            retry_for: Duration::from_secs(60),
        })
    }

    fn channel(&self, attempt: usize) -> (&str, Channel) {
        let start = self.next.load(Ordering::Relaxed);
        let (addr, channel) = &self.channels[(start + attempt) % self.channels.len()];
        (addr, channel.clone())
    }

    fn broker(channel: Channel) -> BrokerClient<Channel> {
        BrokerClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Runs `call` against the nodes in turn until it succeeds, fails for good, or `retry_for`
    /// runs out.
    async fn with_retries<T, F, Fut>(&self, what: &str, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let started = tokio::time::Instant::now();
        let mut delay = Duration::from_millis(50);
        let mut attempt = 0;
        loop {
            let (addr, channel) = self.channel(attempt);
            match tokio::time::timeout(Duration::from_secs(20), call(channel)).await {
                Ok(Ok(value)) => {
                    // Stick with a node that answers.
                    self.next.store(
                        (self.next.load(Ordering::Relaxed) + attempt) % self.channels.len(),
                        Ordering::Relaxed,
                    );
                    return Ok(value);
                }
                Ok(Err(status)) if !retryable(&status) => {
                    return Err(ClientError::Status { status });
                }
                Ok(Err(status)) => {
                    tracing::debug!(%addr, what, code = ?status.code(), message = status.message(), "retrying");
                    if started.elapsed() >= self.retry_for {
                        return Err(ClientError::Timeout {
                            waited: started.elapsed(),
                            last: format!("{addr}: {}: {}", status.code(), status.message()),
                        });
                    }
                }
                Err(_) => {
                    tracing::debug!(%addr, what, "no answer in 20 s; retrying");
                    if started.elapsed() >= self.retry_for {
                        return Err(ClientError::Timeout {
                            waited: started.elapsed(),
                            last: format!("{addr}: no answer"),
                        });
                    }
                }
            }
            attempt += 1;
            if attempt % self.channels.len() == 0 {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
        }
    }

    /// Brokers, topics, partitions and their leaders.
    pub async fn metadata(&self, topics: &[String]) -> Result<MetadataResponse, ClientError> {
        self.with_retries("metadata", |channel| {
            let request = MetadataRequest {
                topics: topics.to_vec(),
            };
            async move {
                Self::broker(channel)
                    .metadata(request)
                    .await
                    .map(tonic::Response::into_inner)
            }
        })
        .await
    }

    /// Creates a topic.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u32,
    ) -> Result<TopicInfo, ClientError> {
        self.with_retries("create topic", |channel| {
            let request = CreateTopicRequest {
                name: name.to_string(),
                partitions,
                replication_factor,
            };
            async move {
                AdminClient::new(channel)
                    .create_topic(request)
                    .await
                    .map(|r| r.into_inner().topic.unwrap_or_default())
            }
        })
        .await
    }

    /// Deletes a topic and its data.
    pub async fn delete_topic(&self, name: &str) -> Result<(), ClientError> {
        self.with_retries("delete topic", |channel| {
            let request = DeleteTopicRequest {
                name: name.to_string(),
            };
            async move {
                AdminClient::new(channel)
                    .delete_topic(request)
                    .await
                    .map(|_| ())
            }
        })
        .await
    }

    /// Moves a partition to `replicas` (preferred leader first).
    pub async fn reassign_partition(
        &self,
        topic: &str,
        partition: u32,
        replicas: &[u64],
    ) -> Result<(), ClientError> {
        self.with_retries("reassign partition", |channel| {
            let request = ReassignPartitionRequest {
                topic: topic.to_string(),
                partition,
                replicas: replicas.to_vec(),
            };
            async move {
                AdminClient::new(channel)
                    .reassign_partition(request)
                    .await
                    .map(|_| ())
            }
        })
        .await
    }

    /// Evens out replicas across brokers; returns how many partitions move.
    pub async fn rebalance(&self, max_moves: u32) -> Result<u32, ClientError> {
        self.with_retries("rebalance", |channel| async move {
            AdminClient::new(channel)
                .rebalance(RebalanceRequest { max_moves })
                .await
                .map(|r| r.into_inner().moves)
        })
        .await
    }

    /// Drains broker `id`: all its replicas move to other brokers.
    pub async fn decommission_broker(&self, id: u64) -> Result<(), ClientError> {
        self.with_retries("decommission broker", |channel| async move {
            AdminClient::new(channel)
                .decommission_broker(DecommissionBrokerRequest { id })
                .await
                .map(|_| ())
        })
        .await
    }

    /// Produces one batch (built with [`BatchBuilder`] / [`Producer::batch`]) to a partition,
    /// retrying until it is acknowledged by a majority of replicas or the deadline passes. A
    /// batch carrying a producer id is written at most once, however often it is retried.
    pub async fn produce_batch(
        &self,
        topic: &str,
        partition: u32,
        batch: Bytes,
    ) -> Result<ProduceResponse, ClientError> {
        let result = self
            .with_retries("produce", |channel| {
                let request = ProduceRequest {
                    topic: topic.to_string(),
                    partition,
                    records: Vec::new(),
                    acks: Acks::All as i32,
                    batch: batch.clone(),
                };
                async move {
                    Self::broker(channel)
                        .produce(request)
                        .await
                        .map(tonic::Response::into_inner)
                }
            })
            .await;
        match result {
            // A retry of a batch older than the producer's newest: it was written before.
            Err(ClientError::Status { status }) if status.code() == Code::AlreadyExists => {
                Ok(ProduceResponse {
                    partition,
                    base_offset: u64::MAX,
                    record_count: 0,
                })
            }
            other => other,
        }
    }

    /// A partition's log start offset and high watermark, and (with `timestamp_ms`) the first
    /// offset at or after that time.
    pub async fn list_offsets(
        &self,
        topic: &str,
        partition: u32,
        timestamp_ms: Option<i64>,
    ) -> Result<ListOffsetsResponse, ClientError> {
        self.with_retries("list offsets", |channel| {
            let request = ListOffsetsRequest {
                topic: topic.to_string(),
                partition,
                timestamp_ms,
            };
            async move {
                Self::broker(channel)
                    .list_offsets(request)
                    .await
                    .map(tonic::Response::into_inner)
            }
        })
        .await
    }

    /// Fetches committed records of a partition from `offset`.
    pub async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u32,
    ) -> Result<FetchResponse, ClientError> {
        self.with_retries("fetch", |channel| {
            let request = FetchRequest {
                topic: topic.to_string(),
                partition,
                offset,
                max_bytes,
            };
            async move {
                Self::broker(channel)
                    .fetch(request)
                    .await
                    .map(tonic::Response::into_inner)
            }
        })
        .await
    }
}

/// A producer identity with per-partition sequence numbers, so retried batches are recognised.
#[derive(Debug)]
pub struct Producer {
    producer_id: i64,
    epoch: i16,
    sequences: std::collections::HashMap<u32, i32>,
    compression: Compression,
}

impl Default for Producer {
    fn default() -> Self {
        Self::new()
    }
}

impl Producer {
    /// A new producer with a random id.
    pub fn new() -> Self {
        Self {
            producer_id: rand::random::<i64>() & i64::MAX,
            epoch: 0,
            sequences: std::collections::HashMap::new(),
            compression: Compression::Lz4,
        }
    }

    pub fn producer_id(&self) -> i64 {
        self.producer_id
    }

    /// Builds the next batch for `partition` from `(timestamp_ms, key, value)` records; its
    /// sequence follows the previous batch for that partition. Retry a failed batch by sending
    /// the same bytes again. `None` when `records` is empty.
    pub fn batch<'a>(
        &mut self,
        partition: u32,
        records: impl IntoIterator<Item = (i64, Option<&'a [u8]>, &'a [u8])>,
    ) -> Option<Bytes> {
        let sequence = self.sequences.get(&partition).copied().unwrap_or(0);
        let mut builder = BatchBuilder::new(self.compression).producer(ProducerInfo {
            producer_id: self.producer_id,
            producer_epoch: self.epoch,
            base_sequence: sequence,
        });
        for (timestamp, key, value) in records {
            builder.push(timestamp, key, Some(value), &[]);
        }
        let count = builder.record_count();
        let batch = builder.build()?;
        self.sequences.insert(
            partition,
            sequence.wrapping_add(i32::try_from(count).unwrap_or(i32::MAX)),
        );
        Some(batch)
    }
}
