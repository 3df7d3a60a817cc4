//! [`Client`]: connections, routing and retries, and one method per RPC of the public API.
//!
//! Routing: produce and fetch requests go straight to the partition's leader, found in a cached
//! copy of the cluster metadata ([`crate::metadata::Cache`]). When the leader is unknown the
//! request goes to any node — every node forwards to the leader. Everything else goes to any
//! node (sticking to one that answers). There is one gRPC channel per broker address, created
//! lazily and shared by every request to it.
//!
//! Throttling: a Produce or Fetch answer with `throttle_time_ms` > 0 (the node held it back
//! because the caller is over a rate quota) makes every next request to that node wait until
//! that time has passed, as Kafka's clients do (KIP-219); the producer and consumer send through
//! these calls, so they slow down to their quota. Nothing fails because of a throttle.
//!
//! Retries: a call is repeated until it succeeds, fails with a status that retrying cannot fix
//! (NOT_FOUND, INVALID_ARGUMENT, ...), or its deadline passes ([`Client::retry_for`] unless the
//! caller gives one). FAILED_PRECONDITION carrying a `weir-leader` trailer sends the retry to the
//! named leader at once; UNAVAILABLE, connection errors and FAILED_PRECONDITION without a hint
//! forget the leader, wait (50 ms doubling to 1 s) and refresh the metadata first. A request is
//! only retried when repeating it is safe: produce requests carry a producer id and sequence (the
//! leader drops a batch it already wrote), everything else is a read or idempotent.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::security::{Auth, Security};
use tonic::{Code, Status};
use weir_proto::v1::admin_client::AdminClient;
use weir_proto::v1::broker_client::BrokerClient;
use weir_proto::v1::groups_client::GroupsClient;
use weir_proto::v1::{
    Acks as WireAcks, AlterTopicConfigRequest, CommitOffsetsRequest, CreatePartitionsRequest,
    CreateTopicRequest, DecommissionBrokerRequest, DeleteGroupRequest, DeleteTopicRequest,
    DescribeGroupRequest, DescribeGroupResponse, DescribeTopicRequest, FetchOffsetsRequest,
    FetchRequest, FetchResponse, GroupSummary, HeartbeatRequest, HeartbeatResponse,
    InitProducerRequest, LeaveGroupRequest, ListGroupsRequest, ListOffsetsRequest,
    ListOffsetsResponse, ListTopicsRequest, MetadataRequest, MetadataResponse, PartitionOffset,
    ProduceRequest, ProduceResponse, ReassignPartitionRequest, RebalanceRequest,
    ResetOffsetsRequest, StartFrom, TopicInfo,
};

use crate::ClientError;
use crate::metadata::{Cache, parse_leader_hint};

use weir_format::retry::RetryPolicy;
use weir_format::wire::{LEADER_TRAILER, MAX_MESSAGE_BYTES, Retry, contract};
/// How long one attempt may take before it counts as failed (long polls included).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);
/// Redirects followed in a row without waiting (leadership can move while we chase it).
const MAX_QUICK_REDIRECTS: u32 = 3;

/// Where a read starts, or where a group's offsets are reset to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The oldest record still stored.
    Earliest,
    /// The high watermark: only records produced from then on.
    Latest,
    /// This offset.
    Offset(u64),
    /// The first record at or after this time (ms since the Unix epoch).
    Timestamp(i64),
}

impl Start {
    /// The wire form: (`StartFrom`, offset, timestamp_ms).
    pub(crate) fn wire(self) -> (StartFrom, u64, i64) {
        match self {
            Self::Earliest => (StartFrom::Earliest, 0, 0),
            Self::Latest => (StartFrom::Latest, 0, 0),
            Self::Offset(offset) => (StartFrom::Offset, offset, 0),
            Self::Timestamp(ms) => (StartFrom::Timestamp, 0, ms),
        }
    }
}

/// How much a produce request waits for (see the proto's `Acks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Acks {
    /// A majority of replicas have the records on disk; the answer carries offsets.
    #[default]
    All,
    /// The leader checked and queued the records; no offsets.
    Leader,
    /// The receiving node checked the request; no offsets, failures only logged server-side.
    None,
}

impl Acks {
    pub(crate) fn wire(self) -> WireAcks {
        match self {
            Self::All => WireAcks::All,
            Self::Leader => WireAcks::Leader,
            Self::None => WireAcks::None,
        }
    }
}

/// Which node a request goes to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Route<'a> {
    /// Any node.
    Any,
    /// The leader of a partition (any node while it is unknown).
    Leader { topic: &'a str, partition: u32 },
}

/// Turns the stored batches of a raw fetch into `records` (skipping control batches and records
/// below `from`), checking each batch's CRC.
fn decode_raw_batches(response: &mut FetchResponse, from: u64) -> Result<(), ClientError> {
    let batches = std::mem::take(&mut response.batches);
    for batch in weir_format::batch::BatchIter::new(batches) {
        let batch = batch.map_err(|e| ClientError::Corrupt(e.to_string()))?;
        if batch.header().control {
            continue;
        }
        let records = batch
            .records()
            .map_err(|e| ClientError::Corrupt(e.to_string()))?;
        response
            .records
            .extend(records.into_iter().filter(|r| r.offset >= from).map(|r| {
                weir_proto::v1::FetchedRecord {
                    offset: r.offset,
                    timestamp_ms: r.timestamp,
                    key: r.key,
                    value: r.value,
                    headers: r
                        .headers
                        .into_iter()
                        .map(|h| weir_proto::v1::Header {
                            key: h.key,
                            value: h.value,
                        })
                        .collect(),
                }
            }));
    }
    Ok(())
}

/// Whether a failed attempt is worth another, by the error contract of `weir.proto`
/// ([`weir_format::wire::ERROR_CONTRACT`]): UNAVAILABLE and ABORTED are retried,
/// FAILED_PRECONDITION only as a redirect to the leader its trailer names, every other answer of
/// the server (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION without a leader, INTERNAL,
/// UNKNOWN, ...) is final. A status the client's own transport made up (the connection broke
/// before an answer came) is retried: the request may not have arrived.
fn retryable(status: &Status) -> bool {
    if made_by_transport(status) {
        return true;
    }
    if status.code() == Code::Aborted {
        // A sequence gap: the producer resends once its earlier batches are answered.
        return false;
    }
    match contract(status.code() as i32) {
        Some((Retry::Yes, _)) => true,
        Some((Retry::AtLeader, _)) => status.metadata().get(LEADER_TRAILER).is_some(),
        Some((Retry::No, _)) | None => false,
    }
}

/// The TLS failure behind a status tonic made from a failed connection, if that is what it was:
/// a handshake refused by either side does not heal by retrying.
pub(crate) fn tls_failure(status: &Status) -> Option<String> {
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(tls) = io.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>())
        {
            return Some(tls.to_string());
        }
        source = err.source();
    }
    None
}

/// True for a status tonic made from a local transport failure (it keeps the failure as its
/// source); statuses a server sent carry none.
fn made_by_transport(status: &Status) -> bool {
    std::error::Error::source(status).is_some()
}

/// The delay the server asked for in `google.rpc.RetryInfo`, if any.
fn retry_hint(status: &Status) -> Option<Duration> {
    use tonic_types::StatusExt;
    status.get_details_retry_info()?.retry_delay
}

fn leader_hint(status: &Status) -> Option<(u64, String)> {
    if status.code() != Code::FailedPrecondition {
        return None;
    }
    let value = status.metadata().get(LEADER_TRAILER)?.to_str().ok()?;
    parse_leader_hint(value)
}

/// A channel to one node, with the client's credentials added to every call.
pub(crate) type Conn = InterceptedService<Channel, Auth>;

/// A lazily connecting channel to `addr`, over TLS when `security` has TLS options.
pub(crate) fn connect(addr: &str, security: &Security) -> Result<Conn, ClientError> {
    let bad = |reason: String| ClientError::BadAddress {
        addr: addr.to_string(),
        reason,
    };
    let scheme = if security.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| bad(e.to_string()))?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true);
    if let Some(tls) = &security.tls {
        let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        endpoint = endpoint
            .tls_config(tls.tonic_config(host))
            .map_err(|e| ClientError::Tls(e.to_string()))?;
    }
    Ok(InterceptedService::new(
        endpoint.connect_lazy(),
        security.interceptor(),
    ))
}

#[derive(Debug, Default)]
struct State {
    /// One channel per broker address.
    channels: HashMap<String, Conn>,
    cache: Cache,
}

/// A connection to a cluster: routing, retries and every RPC of the public API. Share it
/// between tasks (and with [`crate::Producer`] and [`crate::Consumer`]) through an `Arc`.
#[derive(Debug)]
pub struct Client {
    /// The addresses the client was given (used until metadata names the brokers).
    seeds: Vec<String>,
    state: Mutex<State>,
    /// Held while refreshing metadata; per topic, when its last refresh finished.
    refreshed: tokio::sync::Mutex<HashMap<String, Instant>>,
    /// Rotates "any node" requests; advanced past nodes that fail.
    next: AtomicUsize,
    /// How long a call keeps retrying (default 60 s).
    pub retry_for: Duration,
    /// TLS and credentials for every connection.
    security: Security,
    /// Per broker address: until when a throttled answer asked the client to wait before its
    /// next request there.
    throttles: Mutex<HashMap<String, Instant>>,
}

impl Client {
    /// A plaintext, anonymous client for the nodes at `brokers` (`host:port`). Connects
    /// lazily.
    pub fn new(brokers: &[String]) -> Result<Self, ClientError> {
        Self::with_security(brokers, Security::default())
    }

    /// A client for the nodes at `brokers` that connects over TLS and/or sends a token, as
    /// `security` says.
    pub fn with_security(brokers: &[String], security: Security) -> Result<Self, ClientError> {
        if brokers.is_empty() {
            return Err(ClientError::NoBrokers);
        }
        security.validate()?;
        let mut channels = HashMap::new();
        for addr in brokers {
            channels.insert(addr.clone(), connect(addr, &security)?);
        }
        Ok(Self {
            seeds: brokers.to_vec(),
            state: Mutex::new(State {
                channels,
                cache: Cache::default(),
            }),
            refreshed: tokio::sync::Mutex::new(HashMap::new()),
            next: AtomicUsize::new(0),
            retry_for: Duration::from_secs(60),
            security,
            throttles: Mutex::new(HashMap::new()),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a cache: a panic while holding the lock cannot leave it inconsistent in a
        // way that matters, so a poisoned lock is used as is.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The channel for `addr`, created on first use.
    fn channel_to(&self, addr: &str) -> Option<Conn> {
        let mut state = self.state();
        if let Some(channel) = state.channels.get(addr) {
            return Some(channel.clone());
        }
        match connect(addr, &self.security) {
            Ok(channel) => {
                state.channels.insert(addr.to_string(), channel.clone());
                Some(channel)
            }
            Err(err) => {
                tracing::warn!(%addr, %err, "unusable broker address in metadata");
                None
            }
        }
    }

    /// Candidates for "any node": the seeds, then brokers learnt from metadata.
    fn any_addresses(&self) -> Vec<String> {
        let state = self.state();
        let mut addrs = self.seeds.clone();
        let mut learnt: Vec<&str> = state
            .cache
            .broker_addresses()
            .filter(|a| !self.seeds.iter().any(|s| s == a))
            .collect();
        learnt.sort_unstable();
        addrs.extend(learnt.into_iter().map(str::to_string));
        addrs
    }

    fn pick(&self, route: Route<'_>, attempt: usize) -> Option<(String, Conn)> {
        if let Route::Leader { topic, partition } = route {
            let leader = self
                .state()
                .cache
                .leader(topic, partition)
                .map(|(_, addr)| addr.to_string());
            if let Some(addr) = leader
                && let Some(channel) = self.channel_to(&addr)
            {
                return Some((addr, channel));
            }
        }
        let addrs = self.any_addresses();
        let start = self.next.load(Ordering::Relaxed);
        let addr = addrs.get((start + attempt) % addrs.len().max(1))?.clone();
        let channel = self.channel_to(&addr)?;
        Some((addr, channel))
    }

    /// Remembers that the "any node" at `attempt` answered, so later calls start there.
    fn stick(&self, attempt: usize) {
        if attempt > 0 {
            self.next.fetch_add(attempt, Ordering::Relaxed);
        }
    }

    fn broker(channel: Conn) -> BrokerClient<Conn> {
        BrokerClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    fn admin(channel: Conn) -> AdminClient<Conn> {
        AdminClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    fn groups(channel: Conn) -> GroupsClient<Conn> {
        GroupsClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    pub(crate) fn deadline(&self) -> Instant {
        Instant::now() + self.retry_for
    }

    /// Runs `call` against the node `route` picks until it succeeds, fails for good, or
    /// `deadline` passes (see the module docs).
    pub(crate) async fn call<T, F, Fut>(
        &self,
        what: &str,
        route: Route<'_>,
        deadline: Instant,
        call: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(Conn) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        self.call_throttled(what, route, deadline, call, |_| 0)
            .await
    }

    /// When the client may send to `addr` again: the node said it throttled the caller.
    fn throttled_until(&self, addr: &str) -> Option<Instant> {
        let mut throttles = self.throttles.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        throttles.retain(|_, until| *until > now);
        throttles.get(addr).copied()
    }

    /// Remembers that `addr` answered with a throttle of `ms` milliseconds.
    fn note_throttle(&self, addr: &str, ms: u32) {
        if ms == 0 {
            return;
        }
        let until = Instant::now() + Duration::from_millis(u64::from(ms));
        let mut throttles = self.throttles.lock().unwrap_or_else(|e| e.into_inner());
        let entry = throttles.entry(addr.to_string()).or_insert(until);
        *entry = (*entry).max(until);
    }

    /// [`Client::call`] for answers that may say the node throttled the caller
    /// (`throttle_of` reads their `throttle_time_ms`): the next request to that node waits until
    /// the throttle time has passed (Kafka's KIP-219 client behaviour). Every call waits out a
    /// throttle its node announced, so a producer or consumer slows down to its quota.
    pub(crate) async fn call_throttled<T, F, Fut>(
        &self,
        what: &str,
        route: Route<'_>,
        deadline: Instant,
        mut call: F,
        throttle_of: fn(&T) -> u32,
    ) -> Result<T, ClientError>
    where
        F: FnMut(Conn) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let started = Instant::now();
        if let Route::Leader { topic, .. } = route
            && !self.state().cache.knows_topic(topic)
        {
            // First use of the topic: learn its leaders (an unknown topic fails here). Boxed:
            // the refresh itself is a `call`.
            Box::pin(self.refresh_metadata(topic, started, deadline)).await?;
        }
        let mut backoff = RetryPolicy::REQUEST.backoff();
        let mut hint = None;
        let mut attempt = 0usize;
        let mut quick_redirects = 0;
        let mut any_tried = 0usize;
        loop {
            let Some((addr, channel)) = self.pick(route, attempt) else {
                return Err(ClientError::NoBrokers);
            };
            if let Some(until) = self.throttled_until(&addr) {
                tracing::debug!(%addr, what, wait = ?until.saturating_duration_since(Instant::now()), "throttled by the node; waiting");
                tokio::time::sleep_until(until.min(deadline)).await;
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            let (last, redirected) = match tokio::time::timeout(
                remaining.min(ATTEMPT_TIMEOUT),
                call(channel),
            )
            .await
            {
                Ok(Ok(value)) => {
                    if matches!(route, Route::Any) {
                        self.stick(attempt);
                    }
                    self.note_throttle(&addr, throttle_of(&value));
                    return Ok(value);
                }
                Ok(Err(status)) if !retryable(&status) => {
                    return Err(ClientError::status(status));
                }
                Ok(Err(status)) if let Some(reason) = tls_failure(&status) => {
                    return Err(ClientError::Tls(format!(
                        "connection to {addr} refused: {reason}"
                    )));
                }
                Ok(Err(status)) => {
                    tracing::debug!(%addr, what, code = ?status.code(), message = status.message(), "retrying");
                    hint = retry_hint(&status);
                    let mut redirected = false;
                    if let Route::Leader { topic, partition } = route {
                        match leader_hint(&status) {
                            Some((id, leader)) if leader != addr => {
                                self.state().cache.set_leader(topic, partition, id, &leader);
                                redirected = true;
                            }
                            _ => self.state().cache.forget_leader(topic, partition),
                        }
                    }
                    (
                        format!("{addr}: {}: {}", status.code(), status.message()),
                        redirected,
                    )
                }
                Err(_) => {
                    tracing::debug!(%addr, what, "no answer in time; retrying");
                    if let Route::Leader { topic, partition } = route {
                        self.state().cache.forget_leader(topic, partition);
                    }
                    (format!("{addr}: no answer"), false)
                }
            };
            if Instant::now() >= deadline {
                return Err(ClientError::Timeout {
                    waited: started.elapsed(),
                    last,
                });
            }
            attempt += 1;
            if redirected && quick_redirects < MAX_QUICK_REDIRECTS {
                quick_redirects += 1;
                continue;
            }
            quick_redirects = 0;
            any_tried += 1;
            // "Any node" requests try every node once before waiting.
            if matches!(route, Route::Any)
                && !any_tried.is_multiple_of(self.any_addresses().len().max(1))
            {
                continue;
            }
            let failed_at = Instant::now();
            let delay = backoff.next_delay(hint.take());
            tokio::time::sleep(delay.min(deadline.saturating_duration_since(failed_at))).await;
            if let Route::Leader { topic, .. } = route {
                match Box::pin(self.refresh_metadata(topic, failed_at, deadline)).await {
                    Err(err @ ClientError::Status { .. }) if err.code() == Some(Code::NotFound) => {
                        return Err(err);
                    }
                    // Other failures: the next attempt goes to any node, which forwards.
                    _ => {}
                }
            }
        }
    }

    /// Refreshes the cached metadata of `topic` unless a refresh of it finished after
    /// `stale_since`. Fails with NOT_FOUND when `topic` does not exist. (A named topic is
    /// looked up with the controller when the answering node does not know it yet, so a topic
    /// just created is found.)
    async fn refresh_metadata(
        &self,
        topic: &str,
        stale_since: Instant,
        deadline: Instant,
    ) -> Result<(), ClientError> {
        let mut refreshed = self.refreshed.lock().await;
        if refreshed.get(topic).is_some_and(|at| *at > stale_since) {
            return Ok(());
        }
        let answer = self
            .call("metadata", Route::Any, deadline, |channel| {
                let request = MetadataRequest {
                    topics: vec![topic.to_string()],
                };
                async move {
                    Self::broker(channel)
                        .metadata(request)
                        .await
                        .map(tonic::Response::into_inner)
                }
            })
            .await;
        match answer {
            Ok(metadata) => {
                self.state().cache.update(&metadata, false);
                refreshed.insert(topic.to_string(), Instant::now());
                if self.state().cache.knows_topic(topic) {
                    Ok(())
                } else {
                    Err(ClientError::status(Status::not_found(format!(
                        "unknown topic {topic:?}"
                    ))))
                }
            }
            Err(err) => {
                if err.code() == Some(Code::NotFound) {
                    self.state().cache.forget_topic(topic);
                    refreshed.remove(topic);
                }
                Err(err)
            }
        }
    }

    /// The number of partitions of `topic` (from the cached metadata, fetched on first use).
    pub async fn partition_count(&self, topic: &str) -> Result<u32, ClientError> {
        if let Some(count) = self.state().cache.partition_count(topic) {
            return Ok(count);
        }
        let now = Instant::now();
        self.refresh_metadata(topic, now, now + self.retry_for)
            .await?;
        self.state()
            .cache
            .partition_count(topic)
            .ok_or_else(|| Status::not_found(format!("unknown topic {topic:?}")).into())
    }

    /// Forgets what the client knows about `topic`'s partitions (for example after it was
    /// recreated with another partition count).
    pub fn invalidate_topic(&self, topic: &str) {
        self.state().cache.forget_topic(topic);
    }

    /// Brokers, topics, partitions and their leaders (`topics` empty: every topic).
    pub async fn metadata(&self, topics: &[String]) -> Result<MetadataResponse, ClientError> {
        let metadata = self
            .call("metadata", Route::Any, self.deadline(), |channel| {
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
            .await?;
        self.state().cache.update(&metadata, topics.is_empty());
        Ok(metadata)
    }

    /// Creates a topic with default settings.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u32,
    ) -> Result<TopicInfo, ClientError> {
        self.create_topic_with_configs(name, partitions, replication_factor, &HashMap::new())
            .await
    }

    /// Creates a topic with settings (`retention.ms`, `retention.bytes`, `segment.bytes`,
    /// `max.message.bytes`, `compression`; see the proto's `CreateTopicRequest`).
    pub async fn create_topic_with_configs(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u32,
        configs: &HashMap<String, String>,
    ) -> Result<TopicInfo, ClientError> {
        let topic = self
            .call("create topic", Route::Any, self.deadline(), |channel| {
                let request = CreateTopicRequest {
                    name: name.to_string(),
                    partitions,
                    replication_factor,
                    configs: configs.clone(),
                };
                async move {
                    Self::admin(channel)
                        .create_topic(request)
                        .await
                        .map(|r| r.into_inner().topic.unwrap_or_default())
                }
            })
            .await?;
        self.invalidate_topic(name);
        Ok(topic)
    }

    /// Deletes a topic and its data.
    pub async fn delete_topic(&self, name: &str) -> Result<(), ClientError> {
        self.call("delete topic", Route::Any, self.deadline(), |channel| {
            let request = DeleteTopicRequest {
                name: name.to_string(),
            };
            async move { Self::admin(channel).delete_topic(request).await.map(|_| ()) }
        })
        .await?;
        self.invalidate_topic(name);
        Ok(())
    }

    /// Every topic with its settings (internal ones included, marked `internal`).
    pub async fn list_topics(&self) -> Result<Vec<TopicInfo>, ClientError> {
        self.call(
            "list topics",
            Route::Any,
            self.deadline(),
            |channel| async move {
                Self::admin(channel)
                    .list_topics(ListTopicsRequest {})
                    .await
                    .map(|r| r.into_inner().topics)
            },
        )
        .await
    }

    /// One topic: settings, replicas, leaders, and each partition's log start and high
    /// watermark.
    pub async fn describe_topic(&self, name: &str) -> Result<TopicInfo, ClientError> {
        self.call("describe topic", Route::Any, self.deadline(), |channel| {
            let request = DescribeTopicRequest {
                name: name.to_string(),
            };
            async move {
                let topic = Self::admin(channel)
                    .describe_topic(request)
                    .await?
                    .into_inner()
                    .topic;
                topic.ok_or_else(|| Status::internal("DescribeTopic answered without a topic"))
            }
        })
        .await
    }

    /// Grows topic `name` to `partitions` partitions; returns the topic as it is now.
    pub async fn create_partitions(
        &self,
        name: &str,
        partitions: u32,
    ) -> Result<TopicInfo, ClientError> {
        let topic = self
            .call(
                "create partitions",
                Route::Any,
                self.deadline(),
                |channel| {
                    let request = CreatePartitionsRequest {
                        topic: name.to_string(),
                        partitions,
                        validate_only: false,
                    };
                    async move {
                        Self::admin(channel)
                            .create_partitions(request)
                            .await
                            .map(|r| r.into_inner().topic.unwrap_or_default())
                    }
                },
            )
            .await?;
        self.invalidate_topic(name);
        Ok(topic)
    }

    /// Sets settings of topic `name` and puts those in `reset` back at their defaults (all or
    /// nothing); returns the topic with its settings now.
    pub async fn alter_topic_config(
        &self,
        name: &str,
        set: &HashMap<String, String>,
        reset: &[String],
    ) -> Result<TopicInfo, ClientError> {
        self.call(
            "alter topic config",
            Route::Any,
            self.deadline(),
            |channel| {
                let request = AlterTopicConfigRequest {
                    topic: name.to_string(),
                    set: set.clone(),
                    reset: reset.to_vec(),
                    validate_only: false,
                };
                async move {
                    Self::admin(channel)
                        .alter_topic_config(request)
                        .await
                        .map(|r| r.into_inner().topic.unwrap_or_default())
                }
            },
        )
        .await
    }

    /// Moves a partition to `replicas` (preferred leader first).
    pub async fn reassign_partition(
        &self,
        topic: &str,
        partition: u32,
        replicas: &[u64],
    ) -> Result<(), ClientError> {
        self.call(
            "reassign partition",
            Route::Any,
            self.deadline(),
            |channel| {
                let request = ReassignPartitionRequest {
                    topic: topic.to_string(),
                    partition,
                    replicas: replicas.to_vec(),
                };
                async move {
                    Self::admin(channel)
                        .reassign_partition(request)
                        .await
                        .map(|_| ())
                }
            },
        )
        .await
    }

    /// Evens out replicas across brokers; returns how many partitions move.
    pub async fn rebalance(&self, max_moves: u32) -> Result<u32, ClientError> {
        self.call(
            "rebalance",
            Route::Any,
            self.deadline(),
            |channel| async move {
                Self::admin(channel)
                    .rebalance(RebalanceRequest { max_moves })
                    .await
                    .map(|r| r.into_inner().moves)
            },
        )
        .await
    }

    /// Drains broker `id`: all its replicas move to other brokers.
    pub async fn decommission_broker(&self, id: u64) -> Result<(), ClientError> {
        self.call(
            "decommission broker",
            Route::Any,
            self.deadline(),
            |channel| async move {
                Self::admin(channel)
                    .decommission_broker(DecommissionBrokerRequest { id })
                    .await
                    .map(|_| ())
            },
        )
        .await
    }

    /// A new idempotent producer id and epoch, allocated by the cluster.
    pub async fn init_producer(&self) -> Result<(i64, i16), ClientError> {
        let answer = self
            .call(
                "init producer",
                Route::Any,
                self.deadline(),
                |channel| async move {
                    Self::broker(channel)
                        .init_producer(InitProducerRequest {})
                        .await
                        .map(tonic::Response::into_inner)
                },
            )
            .await?;
        let epoch = i16::try_from(answer.producer_epoch).map_err(|_| {
            ClientError::status(Status::internal(format!(
                "InitProducer answered epoch {}, outside the batch format's range",
                answer.producer_epoch
            )))
        })?;
        Ok((answer.producer_id, epoch))
    }

    /// Produces one batch (built with [`crate::IdempotentBatcher`] or
    /// [`weir_format::batch::BatchBuilder`]) to a partition with acks = all, retrying until it
    /// is acknowledged or [`Client::retry_for`] passes. A batch carrying a producer id is
    /// written at most once, however often it is retried; a retry of a batch the leader already
    /// wrote answers with `base_offset: None` and `record_count: 0`.
    pub async fn produce_batch(
        &self,
        topic: &str,
        partition: u32,
        batch: Bytes,
    ) -> Result<ProduceResponse, ClientError> {
        self.produce_batch_with(topic, partition, batch, Acks::All, self.deadline())
            .await
    }

    /// [`Client::produce_batch`] with the acknowledgement mode and deadline given.
    pub async fn produce_batch_with(
        &self,
        topic: &str,
        partition: u32,
        batch: Bytes,
        acks: Acks,
        deadline: Instant,
    ) -> Result<ProduceResponse, ClientError> {
        let result = self
            .call_throttled(
                "produce",
                Route::Leader { topic, partition },
                deadline,
                |channel| {
                    let request = ProduceRequest {
                        topic: topic.to_string(),
                        partition: Some(partition),
                        records: Vec::new(),
                        acks: acks.wire() as i32,
                        batch: batch.clone(),
                        ..ProduceRequest::default()
                    };
                    async move {
                        Self::broker(channel)
                            .produce(request)
                            .await
                            .map(tonic::Response::into_inner)
                    }
                },
                |answer| answer.throttle_time_ms,
            )
            .await;
        match result {
            // A retry of a batch the leader already wrote (an earlier attempt succeeded but its
            // answer was lost).
            Err(ClientError::Status { status }) if status.code() == Code::AlreadyExists => {
                Ok(ProduceResponse {
                    partition,
                    base_offset: None,
                    record_count: 0,
                    ..Default::default()
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
        self.call(
            "list offsets",
            Route::Leader { topic, partition },
            self.deadline(),
            |channel| {
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
            },
        )
        .await
    }

    /// Fetches committed records of a partition from `offset`, answering at once.
    pub async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u32,
    ) -> Result<FetchResponse, ClientError> {
        self.fetch_from(
            topic,
            partition,
            Start::Offset(offset),
            max_bytes,
            Duration::ZERO,
        )
        .await
    }

    /// Fetches committed records of a partition from `start`; when there are none yet, waits up
    /// to `max_wait` for some (long poll).
    pub async fn fetch_from(
        &self,
        topic: &str,
        partition: u32,
        start: Start,
        max_bytes: u32,
        max_wait: Duration,
    ) -> Result<FetchResponse, ClientError> {
        self.fetch_until(
            topic,
            partition,
            start,
            max_bytes,
            max_wait,
            self.deadline(),
            false,
        )
        .await
    }

    /// A fetch; with `raw` the broker answers with its stored batches, which are checked and
    /// decoded here into `records` (the answer looks the same either way).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn fetch_until(
        &self,
        topic: &str,
        partition: u32,
        start: Start,
        max_bytes: u32,
        max_wait: Duration,
        deadline: Instant,
        raw: bool,
    ) -> Result<FetchResponse, ClientError> {
        let (from, offset, timestamp_ms) = start.wire();
        // Raw batches start at or before the position; only an exact offset says where to cut.
        let raw = raw && matches!(start, Start::Offset(_));
        let max_wait_ms = u32::try_from(max_wait.as_millis()).unwrap_or(u32::MAX);
        self.call_throttled(
            "fetch",
            Route::Leader { topic, partition },
            deadline,
            |channel| {
                let request = FetchRequest {
                    topic: topic.to_string(),
                    partition,
                    offset,
                    max_bytes,
                    max_wait_ms,
                    from: from as i32,
                    timestamp_ms,
                    raw_batches: raw,
                };
                async move {
                    Self::broker(channel)
                        .fetch(request)
                        .await
                        .map(tonic::Response::into_inner)
                }
            },
            |answer| answer.throttle_time_ms,
        )
        .await
        .and_then(|mut response| {
            if raw {
                decode_raw_batches(&mut response, offset)?;
            }
            Ok(response)
        })
    }

    /// One group heartbeat (joins with an empty `member_id`). NOT_FOUND means the coordinator
    /// does not know the member: rejoin with an empty id.
    pub async fn heartbeat(
        &self,
        request: HeartbeatRequest,
        deadline: Instant,
    ) -> Result<HeartbeatResponse, ClientError> {
        self.call("heartbeat", Route::Any, deadline, |channel| {
            let request = request.clone();
            async move {
                Self::groups(channel)
                    .heartbeat(request)
                    .await
                    .map(tonic::Response::into_inner)
            }
        })
        .await
    }

    /// Leaves a group at once.
    pub async fn leave_group(&self, group: &str, member_id: &str) -> Result<(), ClientError> {
        self.call("leave group", Route::Any, self.deadline(), |channel| {
            let request = LeaveGroupRequest {
                group: group.to_string(),
                member_id: member_id.to_string(),
            };
            async move { Self::groups(channel).leave_group(request).await.map(|_| ()) }
        })
        .await
    }

    /// Stores committed offsets (the next offset to read) for a group. `member_id` empty: as a
    /// client outside group membership (only allowed while the group has no members).
    pub async fn commit_offsets(
        &self,
        group: &str,
        member_id: &str,
        offsets: &[PartitionOffset],
    ) -> Result<(), ClientError> {
        self.commit_offsets_until(group, member_id, offsets, self.deadline())
            .await
    }

    pub(crate) async fn commit_offsets_until(
        &self,
        group: &str,
        member_id: &str,
        offsets: &[PartitionOffset],
        deadline: Instant,
    ) -> Result<(), ClientError> {
        self.call("commit offsets", Route::Any, deadline, |channel| {
            let request = CommitOffsetsRequest {
                group: group.to_string(),
                member_id: member_id.to_string(),
                offsets: offsets.to_vec(),
            };
            async move {
                Self::groups(channel)
                    .commit_offsets(request)
                    .await
                    .map(|_| ())
            }
        })
        .await
    }

    /// A group's committed offsets (of `topics`, or all when empty).
    pub async fn fetch_offsets(
        &self,
        group: &str,
        topics: &[String],
    ) -> Result<Vec<PartitionOffset>, ClientError> {
        self.fetch_offsets_until(group, topics, self.deadline())
            .await
    }

    pub(crate) async fn fetch_offsets_until(
        &self,
        group: &str,
        topics: &[String],
        deadline: Instant,
    ) -> Result<Vec<PartitionOffset>, ClientError> {
        self.call("fetch offsets", Route::Any, deadline, |channel| {
            let request = FetchOffsetsRequest {
                group: group.to_string(),
                topics: topics.to_vec(),
            };
            async move {
                Self::groups(channel)
                    .fetch_offsets(request)
                    .await
                    .map(|r| r.into_inner().offsets)
            }
        })
        .await
    }

    /// Every group with committed offsets or live members.
    pub async fn list_groups(&self) -> Result<Vec<GroupSummary>, ClientError> {
        self.call(
            "list groups",
            Route::Any,
            self.deadline(),
            |channel| async move {
                Self::groups(channel)
                    .list_groups(ListGroupsRequest {
                        coordinator_partition: None,
                    })
                    .await
                    .map(|r| r.into_inner().groups)
            },
        )
        .await
    }

    /// A group's members and, per partition, committed offset, high watermark and lag.
    pub async fn describe_group(&self, group: &str) -> Result<DescribeGroupResponse, ClientError> {
        self.call("describe group", Route::Any, self.deadline(), |channel| {
            let request = DescribeGroupRequest {
                group: group.to_string(),
            };
            async move {
                Self::groups(channel)
                    .describe_group(request)
                    .await
                    .map(tonic::Response::into_inner)
            }
        })
        .await
    }

    /// Deletes a group's committed offsets (the group must have no live members); returns how
    /// many were removed.
    pub async fn delete_group(&self, group: &str) -> Result<u32, ClientError> {
        self.call("delete group", Route::Any, self.deadline(), |channel| {
            let request = DeleteGroupRequest {
                group: group.to_string(),
            };
            async move {
                Self::groups(channel)
                    .delete_group(request)
                    .await
                    .map(|r| r.into_inner().offsets_removed)
            }
        })
        .await
    }

    /// Sets a group's committed offsets of `topic` (of `partitions`, or all when empty) to
    /// `to`; returns the offsets now committed. Only while the group has no live members.
    pub async fn reset_offsets(
        &self,
        group: &str,
        topic: &str,
        partitions: &[u32],
        to: Start,
    ) -> Result<Vec<PartitionOffset>, ClientError> {
        let (to, offset, timestamp_ms) = to.wire();
        self.call("reset offsets", Route::Any, self.deadline(), |channel| {
            let request = ResetOffsetsRequest {
                group: group.to_string(),
                topic: topic.to_string(),
                partitions: partitions.to_vec(),
                to: to as i32,
                offset,
                timestamp_ms,
            };
            async move {
                Self::groups(channel)
                    .reset_offsets(request)
                    .await
                    .map(|r| r.into_inner().offsets)
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_precondition_is_followed_only_with_a_leader_hint() {
        let plain = Status::failed_precondition("producer 7 epoch 0 is fenced by epoch 1");
        assert!(!retryable(&plain));
        let mut hinted = Status::failed_precondition("not the leader");
        hinted
            .metadata_mut()
            .insert(LEADER_TRAILER, "2@127.0.0.1:9093".parse().unwrap());
        assert!(retryable(&hinted));
        assert_eq!(leader_hint(&hinted), Some((2, "127.0.0.1:9093".into())));
        assert_eq!(leader_hint(&plain), None);
    }

    #[test]
    fn final_answers_of_the_server_are_never_retried() {
        for status in [
            Status::invalid_argument("x"),
            Status::not_found("x"),
            Status::already_exists("x"),
            Status::out_of_range("x"),
            Status::internal("x"),
            Status::unknown("x"),
            Status::data_loss("x"),
            Status::resource_exhausted("disk full"),
            Status::permission_denied("x"),
            // Resent by the producer once its earlier batches are answered, not blindly here.
            Status::aborted("sequence gap"),
        ] {
            assert!(!retryable(&status), "{status:?}");
        }
        assert!(retryable(&Status::unavailable("x")));
    }

    #[test]
    fn transport_failures_are_retried_whatever_their_code() {
        // What tonic makes of a connection that broke mid-call: the failure as its source.
        let broken = Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset",
        )));
        assert_eq!(broken.code(), Code::Unknown);
        assert!(retryable(&broken));
    }

    #[test]
    fn the_server_retry_hint_is_read_from_the_status_details() {
        use tonic_types::{ErrorDetails, StatusExt};
        let status = Status::with_error_details(
            Code::Unavailable,
            "not enough brokers",
            ErrorDetails::with_retry_info(Some(Duration::from_secs(2))),
        );
        assert_eq!(retry_hint(&status), Some(Duration::from_secs(2)));
        assert_eq!(retry_hint(&Status::unavailable("x")), None);
    }

    #[test]
    fn bad_addresses_are_refused() {
        assert!(matches!(Client::new(&[]), Err(ClientError::NoBrokers)));
        assert!(matches!(
            Client::new(&["bad address".to_string()]),
            Err(ClientError::BadAddress { .. })
        ));
    }
}
