//! The public gRPC services (`weir.v1.Broker`, `weir.v1.Admin`) of one node. Any node answers any
//! request: writes to a partition hosted here go through its Raft group (forwarded to the leader
//! over the peer transport when this replica does not lead); requests for partitions not hosted
//! here are forwarded once to a node that hosts them.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::Instrument;
use weir_controller::{Controller, Metadata, Partitions, TopicConfig, TopicRecord};
use weir_proto::v1::admin_server::Admin;
use weir_proto::v1::broker_client::BrokerClient;
use weir_proto::v1::broker_server::Broker;
use weir_proto::v1::{
    BrokerInfo, CreateTopicRequest, CreateTopicResponse, DecommissionBrokerRequest,
    DecommissionBrokerResponse, DeleteTopicRequest, DeleteTopicResponse, DescribeTopicRequest,
    DescribeTopicResponse, FetchRequest, FetchResponse, FetchedRecord, Header, InitProducerRequest,
    InitProducerResponse, JoinClusterRequest, JoinClusterResponse, ListOffsetsRequest,
    ListOffsetsResponse, ListTopicsRequest, ListTopicsResponse, MetadataRequest, MetadataResponse,
    PartitionInfo, ProduceRequest, ProduceResponse, ReassignPartitionRequest,
    ReassignPartitionResponse, RebalanceRequest, RebalanceResponse, StartFrom, SubscribeRequest,
    TopicInfo,
};
use weir_raft::PeerTransport;

use crate::status::{from_controller, from_group, from_metadata, from_storage};

pub(crate) use weir_format::wire::FORWARDED_HEADER as FORWARDED;
/// How long a write may wait for replication (elections included).
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a leader may take to confirm its leadership for a read.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(3);
pub(crate) use weir_format::wire::MAX_FORWARD_HOPS;
/// Longest long poll of a fetch.
const MAX_FETCH_WAIT_MS: u32 = 30_000;
/// The long poll of each fetch behind a Subscribe stream.
const SUBSCRIBE_POLL_MS: u32 = 5_000;
/// Pause before a Subscribe stream retries after its partition's leadership moved.
const SUBSCRIBE_RETRY: Duration = Duration::from_millis(200);

type SubscribeResponse =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<FetchResponse, Status>> + Send + 'static>>;

/// Default and largest fetch size.
const DEFAULT_FETCH_BYTES: usize = 1 << 20;
const MAX_FETCH_BYTES: usize = 64 << 20;

/// Where a topic's record was found.
pub(crate) enum Found {
    Here(TopicRecord),
    /// Not known here: ask the controller leader at this address.
    AskController(String),
}

/// Where a partition request is served.
pub(crate) enum Route {
    Local(Arc<weir_controller::PartitionReplica>),
    Forward(BrokerClient<tonic::transport::Channel>),
}

/// Shared by the services of one node.
#[derive(Debug, Clone)]
pub(crate) struct Services {
    pub(crate) controller: Arc<Controller>,
    pub(crate) partitions: Arc<Partitions>,
    pub(crate) transport: Arc<PeerTransport>,
    pub(crate) metrics: Arc<crate::metrics::BrokerMetrics>,
    pub(crate) coordinator: Arc<crate::groups::Coordinator>,
    /// Which of the node's listeners these services answer on.
    pub(crate) listener: Listener,
}

/// A node's listeners. The internal one serves peers and clients on the nodes' network; the
/// optional external one serves clients that reach the node through another address (a
/// container's published port, a load balancer), and its metadata answers name brokers by their
/// external addresses, as Kafka's advertised listeners do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Listener {
    Internal,
    External,
}

pub(crate) fn forward_hops<T>(request: &Request<T>) -> u32 {
    request
        .metadata()
        .get(FORWARDED)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn topic_info(metadata: &Metadata, topic: &TopicRecord, partitions: &Partitions) -> TopicInfo {
    let _ = metadata;
    TopicInfo {
        name: topic.name.clone(),
        replication_factor: topic.replication_factor,
        configs: topic
            .config
            .to_pairs()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        internal: topic.internal,
        partitions: topic
            .partitions
            .iter()
            .enumerate()
            .map(|(p, record)| {
                let p = p as u32;
                let leader = partitions
                    .get(&topic.name, p)
                    .filter(|r| r.topic_id == topic.id)
                    .and_then(|r| r.group.leader())
                    .unwrap_or(0);
                PartitionInfo {
                    partition: p,
                    replicas: record.replicas.clone(),
                    leader,
                    reassigning: record.settled_epoch < record.epoch,
                    log_start_offset: 0,
                    high_watermark: 0,
                }
            })
            .collect(),
    }
}

impl Services {
    /// Finds a topic. A node that has not loaded its metadata since it started answers
    /// UNAVAILABLE; a topic this node does not know is looked up on the controller leader (a
    /// linearizable read there, or the request is forwarded to it), so NOT_FOUND is never an
    /// artifact of a lagging replica.
    pub(crate) async fn topic(&self, name: &str, hops: u32) -> Result<Found, Status> {
        if !self.controller.ready() {
            return Err(crate::status::unavailable(
                "this node is still loading the cluster metadata; retry shortly",
            ));
        }
        if let Some(topic) = self.controller.metadata().topics.get(name) {
            return Ok(Found::Here(topic.clone()));
        }
        if self.controller.is_leader() {
            let latest = self
                .controller
                .latest_metadata()
                .await
                .map_err(from_controller)?;
            return match latest.topics.get(name) {
                Some(topic) => Ok(Found::Here(topic.clone())),
                None => Err(Status::not_found(format!("unknown topic {name:?}"))),
            };
        }
        match self.controller.leader_addr() {
            Some(addr) if hops < MAX_FORWARD_HOPS => Ok(Found::AskController(addr)),
            _ => Err(crate::status::unavailable(
                "topic not known here and no controller leader to ask; retry shortly",
            )),
        }
    }

    pub(crate) fn check_partition(topic: &TopicRecord, partition: u32) -> Result<(), Status> {
        if partition as usize >= topic.partitions.len() {
            return Err(Status::not_found(format!(
                "topic {:?} has {} partitions; partition {partition} does not exist",
                topic.name,
                topic.partitions.len()
            )));
        }
        Ok(())
    }

    /// Where a read of `topic`/`partition` is served: the replica on this node (any replica
    /// serves committed records), or another node — the controller leader when the topic is not
    /// known here, else a node hosting the partition — to forward the request to.
    pub(crate) async fn read_route(
        &self,
        topic: &str,
        partition: u32,
        hops: u32,
    ) -> Result<Route, Status> {
        let topic = match self.topic(topic, hops).await? {
            Found::Here(topic) => topic,
            Found::AskController(addr) => {
                return Ok(Route::Forward(self.broker_client(&addr, hops)?));
            }
        };
        Self::check_partition(&topic, partition)?;
        match self
            .partitions
            .get(&topic.name, partition)
            .filter(|r| r.topic_id == topic.id)
        {
            Some(replica) => Ok(Route::Local(replica)),
            None => {
                let addr = self.replica_addr(&topic, partition)?;
                Ok(Route::Forward(self.broker_client(&addr, hops)?))
            }
        }
    }

    /// The address of another node hosting `partition` of `topic`. When the only replica is on
    /// this node (its group is still starting), UNAVAILABLE: forwarding to itself would only
    /// come back here.
    pub(crate) fn replica_addr(
        &self,
        topic: &TopicRecord,
        partition: u32,
    ) -> Result<String, Status> {
        let metadata = self.controller.metadata();
        let own = self.controller.node_id();
        topic.partitions[partition as usize]
            .replicas
            .iter()
            .filter(|id| **id != own)
            .find_map(|id| metadata.brokers.get(id).map(|b| b.addr.clone()))
            .ok_or_else(|| {
                crate::status::unavailable("the partition is starting on this node; retry shortly")
            })
    }

    /// Where to send a produce this node cannot serve: the leader if a local replica knows it,
    /// else a node hosting the partition.
    pub(crate) fn produce_target(
        &self,
        topic: &TopicRecord,
        partition: u32,
        hops: u32,
    ) -> Result<BrokerClient<tonic::transport::Channel>, Status> {
        let local = self
            .partitions
            .get(&topic.name, partition)
            .filter(|r| r.topic_id == topic.id);
        match local {
            Some(replica) => self.leader_client(&replica, hops),
            None => {
                let addr = self.replica_addr(topic, partition)?;
                self.broker_client(&addr, hops)
            }
        }
    }

    /// Whether this node leads the partition, confirmed with a quorum, with its whole log applied
    /// (so its high watermark covers every acknowledged record). `false` means another node
    /// leads (ask it).
    pub(crate) async fn confirmed_leader(
        &self,
        replica: &weir_controller::PartitionReplica,
    ) -> Result<bool, Status> {
        if !replica.group.is_leader() {
            return Ok(false);
        }
        match replica.group.catch_up_as_leader(CONFIRM_TIMEOUT).await {
            Ok(()) => Ok(true),
            Err(weir_raft::GroupError::NotLeader { .. }) => Ok(false),
            Err(err) => Err(from_group(err)),
        }
    }

    /// A client for the leader of a partition this node hosts a replica of.
    pub(crate) fn leader_client(
        &self,
        replica: &weir_controller::PartitionReplica,
        hops: u32,
    ) -> Result<BrokerClient<tonic::transport::Channel>, Status> {
        let leader = replica
            .group
            .leader()
            .filter(|leader| *leader != replica.group.node_id())
            .ok_or_else(|| {
                crate::status::unavailable("the partition's leadership is changing; retry shortly")
            })?;
        let addr = replica.group.node_addr(leader).ok_or_else(|| {
            crate::status::unavailable("the leader's address is not known yet; retry shortly")
        })?;
        self.broker_client(&addr, hops)
    }

    /// A client for a forwarded request to `addr`; refuses past [`MAX_FORWARD_HOPS`].
    pub(crate) fn broker_client(
        &self,
        addr: &str,
        hops: u32,
    ) -> Result<BrokerClient<tonic::transport::Channel>, Status> {
        if hops >= MAX_FORWARD_HOPS {
            return Err(crate::status::unavailable(
                "the partition's leader moved while the request was forwarded; retry",
            ));
        }
        let channel = self
            .transport
            .channel(addr)
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(BrokerClient::new(channel)
            .max_decoding_message_size(weir_raft::MAX_PEER_MESSAGE_BYTES)
            .max_encoding_message_size(weir_raft::MAX_PEER_MESSAGE_BYTES))
    }

    /// A client for the admin service of the node at `addr`.
    pub(crate) fn admin_client(
        &self,
        addr: &str,
    ) -> Result<weir_proto::v1::admin_client::AdminClient<tonic::transport::Channel>, Status> {
        let channel = self
            .transport
            .channel(addr)
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(weir_proto::v1::admin_client::AdminClient::new(channel))
    }

    /// `None` when this node leads the controller; otherwise a client for the leader, to which
    /// admin requests that must run there are forwarded.
    fn controller_leader(
        &self,
        hops: u32,
    ) -> Result<Option<weir_proto::v1::admin_client::AdminClient<tonic::transport::Channel>>, Status>
    {
        if self.controller.is_leader() {
            return Ok(None);
        }
        let addr = self
            .controller
            .leader_addr()
            .filter(|_| hops < MAX_FORWARD_HOPS)
            .ok_or_else(|| {
                crate::status::unavailable("no controller leader known; retry shortly")
            })?;
        let channel = self
            .transport
            .channel(&addr)
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Some(weir_proto::v1::admin_client::AdminClient::new(
            channel,
        )))
    }

    pub(crate) fn forwarded<T>(request: T, hops: u32) -> Request<T> {
        let mut request = Request::new(request);
        request
            .metadata_mut()
            .insert(FORWARDED, tonic::metadata::MetadataValue::from(hops + 1));
        request
    }
}

impl Services {
    /// The offset a read starting `from` begins at: `offset` as given, or the log start, the
    /// high watermark, or the first offset at `timestamp_ms`, as the leader answers them.
    pub(crate) async fn start_offset(
        &self,
        topic: &str,
        partition: u32,
        from: StartFrom,
        offset: u64,
        timestamp_ms: i64,
        hops: u32,
    ) -> Result<u64, Status> {
        if from == StartFrom::Offset {
            return Ok(offset);
        }
        let offsets = self
            .list_offsets_inner(
                Request::new(ListOffsetsRequest {
                    topic: topic.to_string(),
                    partition,
                    timestamp_ms: (from == StartFrom::Timestamp).then_some(timestamp_ms),
                }),
                hops,
            )
            .await?;
        Ok(match from {
            StartFrom::Earliest => offsets.log_start_offset,
            StartFrom::Latest => offsets.high_watermark,
            _ => offsets
                .offset_for_timestamp
                .unwrap_or(offsets.high_watermark),
        })
    }

    pub(crate) async fn fetch_inner(
        &self,
        request: Request<FetchRequest>,
    ) -> Result<FetchResponse, Status> {
        let hops = forward_hops(&request);
        let mut request = request.into_inner();
        let from = StartFrom::try_from(request.from).map_err(|_| {
            Status::invalid_argument(format!("unknown start position {}", request.from))
        })?;
        if request.max_wait_ms > MAX_FETCH_WAIT_MS {
            return Err(Status::invalid_argument(format!(
                "max_wait_ms {} exceeds the limit of {MAX_FETCH_WAIT_MS}",
                request.max_wait_ms
            )));
        }
        if from != StartFrom::Offset {
            request.offset = self
                .start_offset(
                    &request.topic,
                    request.partition,
                    from,
                    request.offset,
                    request.timestamp_ms,
                    hops,
                )
                .await?;
            request.from = StartFrom::Offset as i32;
        }
        let replica = match self
            .read_route(&request.topic, request.partition, hops)
            .await?
        {
            Route::Local(replica) => replica,
            Route::Forward(mut client) => {
                return Ok(client
                    .fetch(Self::forwarded(request, hops))
                    .await?
                    .into_inner());
            }
        };
        let max_bytes = match request.max_bytes as usize {
            0 => DEFAULT_FETCH_BYTES,
            n => n.min(MAX_FETCH_BYTES),
        };
        let log = replica.group.log();
        let mut progress = replica.group.progress();
        let mut high_watermark = progress.borrow_and_update().high_watermark;
        let bounds = log.bounds().map_err(from_storage)?;
        let start = bounds.log_start_offset;
        // A follower serves what it has committed; at or beyond its high watermark (it may lag,
        // or be new) the leader answers, so a record acknowledged is readable at once. Before a
        // leader calls a position out of range, it makes sure it still leads and has applied
        // everything committed.
        if request.offset >= high_watermark {
            let confirmed = if replica.group.is_leader() && request.offset > high_watermark {
                self.confirmed_leader(&replica).await?
            } else {
                replica.group.is_leader()
            };
            if !confirmed {
                let mut client = self.leader_client(&replica, hops)?;
                return Ok(client
                    .fetch(Self::forwarded(request, hops))
                    .await?
                    .into_inner());
            }
            high_watermark = progress.borrow_and_update().high_watermark;
        }
        if request.offset < start || request.offset > high_watermark {
            return Err(Status::out_of_range(format!(
                "offset {} is outside [{start}, {high_watermark}] (log start, high watermark)",
                request.offset
            )));
        }
        // Long poll: at the high watermark, wait (as the leader) for the next commit. Losing
        // leadership or the deadline ends the wait with an empty answer; the caller asks again.
        if request.offset == high_watermark && request.max_wait_ms > 0 {
            let deadline =
                tokio::time::Instant::now() + Duration::from_millis(u64::from(request.max_wait_ms));
            while high_watermark <= request.offset && replica.group.is_leader() {
                match tokio::time::timeout_at(deadline, progress.changed()).await {
                    Ok(Ok(())) => high_watermark = progress.borrow_and_update().high_watermark,
                    Ok(Err(_)) | Err(_) => break,
                }
            }
        }
        let mut records = Vec::new();
        let mut batches = bytes::Bytes::new();
        let mut next_offset = request.offset;
        if request.offset < high_watermark {
            let read = log
                .read_until(request.offset, max_bytes, high_watermark)
                .map_err(from_storage)?;
            if request.raw_batches {
                // As stored: a zero-copy slice of a sealed segment, checked (CRC) by the read.
                next_offset = read
                    .batches
                    .last()
                    .map_or(next_offset, |b| b.header().next_offset().max(next_offset));
                batches = read.data;
                return Ok(FetchResponse {
                    records,
                    next_offset,
                    high_watermark,
                    log_start_offset: start,
                    batches,
                });
            }
            for batch in &read.batches {
                let header = batch.header();
                let decoded = batch
                    .records()
                    .map_err(|e| Status::data_loss(e.to_string()))?;
                for record in decoded {
                    let offset = record.offset;
                    if offset < request.offset {
                        continue;
                    }
                    records.push(FetchedRecord {
                        offset,
                        timestamp_ms: record.timestamp,
                        key: record.key,
                        value: record.value,
                        headers: record
                            .headers
                            .into_iter()
                            .map(|h| Header {
                                key: h.key,
                                value: h.value,
                            })
                            .collect(),
                    });
                }
                next_offset = next_offset.max(header.next_offset());
            }
        }
        Ok(FetchResponse {
            records,
            next_offset,
            high_watermark,
            log_start_offset: start,
            batches,
        })
    }

    pub(crate) async fn list_offsets_inner(
        &self,
        request: Request<ListOffsetsRequest>,
        hops: u32,
    ) -> Result<ListOffsetsResponse, Status> {
        let request = request.into_inner();
        let replica = match self
            .read_route(&request.topic, request.partition, hops)
            .await?
        {
            Route::Local(replica) => replica,
            Route::Forward(mut client) => {
                return Ok(client
                    .list_offsets(Self::forwarded(request, hops))
                    .await?
                    .into_inner());
            }
        };
        // The high watermark ("latest") is the leader's to tell, confirmed with a quorum: a
        // follower's may lag, and so may that of a node that only believes it leads.
        if !self.confirmed_leader(&replica).await? {
            let mut client = self.leader_client(&replica, hops)?;
            return Ok(client
                .list_offsets(Self::forwarded(request, hops))
                .await?
                .into_inner());
        }
        let log = replica.group.log();
        let high_watermark = replica.group.progress().borrow().high_watermark;
        let log_start_offset = log.bounds().map_err(from_storage)?.log_start_offset;
        let offset_for_timestamp = match request.timestamp_ms {
            Some(ts) => Some(
                log.offset_for_timestamp(ts)
                    .map_err(from_storage)?
                    .map_or(high_watermark, |o| o.min(high_watermark)),
            ),
            None => None,
        };
        Ok(ListOffsetsResponse {
            log_start_offset,
            high_watermark,
            offset_for_timestamp,
        })
    }

    /// Serves a Subscribe: long-polling fetches in a task, each non-empty answer sent on a
    /// channel of two, so the task waits while the client does not take what was sent.
    fn subscribe_inner(&self, request: Request<SubscribeRequest>, hops: u32) -> SubscribeResponse {
        let request = request.into_inner();
        let (sender, receiver) = mpsc::channel::<Result<FetchResponse, Status>>(2);
        let this = self.clone();
        let span =
            tracing::info_span!("subscribe", topic = %request.topic, partition = request.partition);
        tokio::spawn(
            async move {
                let start = StartFrom::try_from(request.from).map_err(|_| {
                    Status::invalid_argument(format!("unknown start position {}", request.from))
                });
                let mut offset = match start {
                    Ok(from) => {
                        this.start_offset(
                            &request.topic,
                            request.partition,
                            from,
                            request.offset,
                            request.timestamp_ms,
                            hops,
                        )
                        .await
                    }
                    Err(status) => Err(status),
                };
                loop {
                    let position = match offset {
                        Ok(position) => position,
                        Err(status) => {
                            let _ = sender.send(Err(status)).await;
                            return;
                        }
                    };
                    let fetch = FetchRequest {
                        topic: request.topic.clone(),
                        partition: request.partition,
                        offset: position,
                        max_bytes: request.max_bytes,
                        max_wait_ms: SUBSCRIBE_POLL_MS,
                        from: StartFrom::Offset as i32,
                        timestamp_ms: 0,
                        raw_batches: false,
                    };
                    let fetched = tokio::select! {
                        fetched = this.fetch_inner(Request::new(fetch)) => fetched,
                        () = sender.closed() => return,
                    };
                    offset = match fetched {
                        Ok(response) if response.records.is_empty() => {
                            Ok(response.next_offset.max(position))
                        }
                        Ok(response) => {
                            let next = response.next_offset;
                            this.metrics
                                .fetched_records
                                .inc_by(response.records.len() as u64);
                            if sender.send(Ok(response)).await.is_err() {
                                return;
                            }
                            Ok(next)
                        }
                        // Leadership moving or a node restarting: the stream rides it out.
                        Err(status)
                            if status.code() == tonic::Code::Unavailable
                                || status.code() == tonic::Code::FailedPrecondition =>
                        {
                            tracing::debug!(message = status.message(), "subscribe retrying");
                            tokio::time::sleep(SUBSCRIBE_RETRY).await;
                            Ok(position)
                        }
                        Err(status) => Err(status),
                    };
                }
            }
            .instrument(span),
        );
        Box::pin(ReceiverStream::new(receiver))
    }
}

#[tonic::async_trait]
impl Broker for Services {
    async fn produce(
        &self,
        request: Request<ProduceRequest>,
    ) -> Result<Response<ProduceResponse>, Status> {
        let span = tracing::info_span!(
            "produce",
            topic = %request.get_ref().topic,
            partition = ?request.get_ref().partition
        );
        let result = self.produce_inner(request).instrument(span).await;
        crate::metrics::BrokerMetrics::count(&self.metrics.produce_requests, &result);
        result.map(Response::new)
    }

    type ProduceStreamStream = crate::produce::ProduceStreamResponse;

    async fn produce_stream(
        &self,
        request: Request<tonic::Streaming<ProduceRequest>>,
    ) -> Result<Response<Self::ProduceStreamStream>, Status> {
        Ok(Response::new(self.produce_stream_inner(request)))
    }

    async fn init_producer(
        &self,
        request: Request<InitProducerRequest>,
    ) -> Result<Response<InitProducerResponse>, Status> {
        self.init_producer_inner(request)
            .instrument(tracing::info_span!("init_producer"))
            .await
    }

    async fn fetch(
        &self,
        request: Request<FetchRequest>,
    ) -> Result<Response<FetchResponse>, Status> {
        let span = tracing::debug_span!(
            "fetch",
            topic = %request.get_ref().topic,
            partition = request.get_ref().partition,
            offset = request.get_ref().offset
        );
        let result = self.fetch_inner(request).instrument(span).await;
        crate::metrics::BrokerMetrics::count(&self.metrics.fetch_requests, &result);
        if let Ok(response) = &result {
            self.metrics
                .fetched_records
                .inc_by(response.records.len() as u64);
        }
        result.map(Response::new)
    }

    type SubscribeStream = SubscribeResponse;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let hops = forward_hops(&request);
        Ok(Response::new(self.subscribe_inner(request, hops)))
    }

    async fn list_offsets(
        &self,
        request: Request<ListOffsetsRequest>,
    ) -> Result<Response<ListOffsetsResponse>, Status> {
        let hops = forward_hops(&request);
        let span = tracing::debug_span!(
            "list_offsets",
            topic = %request.get_ref().topic,
            partition = request.get_ref().partition
        );
        self.list_offsets_inner(request, hops)
            .instrument(span)
            .await
            .map(Response::new)
    }

    async fn metadata(
        &self,
        request: Request<MetadataRequest>,
    ) -> Result<Response<MetadataResponse>, Status> {
        let hops = forward_hops(&request);
        let request = request.into_inner();
        for name in &request.topics {
            if let Found::AskController(addr) = self.topic(name, hops).await? {
                let mut client = self.broker_client(&addr, hops)?;
                return client.metadata(Self::forwarded(request, hops)).await;
            }
        }
        let metadata = self.controller.metadata();
        let mut topics = Vec::new();
        if request.topics.is_empty() {
            topics.extend(
                metadata
                    .topics
                    .values()
                    .map(|t| topic_info(&metadata, t, &self.partitions)),
            );
        } else {
            for name in &request.topics {
                let topic = metadata
                    .topics
                    .get(name)
                    .ok_or_else(|| Status::not_found(format!("unknown topic {name:?}")))?;
                topics.push(topic_info(&metadata, topic, &self.partitions));
            }
        }
        Ok(Response::new(MetadataResponse {
            brokers: metadata
                .brokers
                .values()
                .map(|b| BrokerInfo {
                    id: b.id,
                    address: match (self.listener, &b.external_addr) {
                        (Listener::External, Some(external)) => external.clone(),
                        _ => b.addr.clone(),
                    },
                    rack: b.rack.clone().unwrap_or_default(),
                    alive: self.controller.is_alive(b.id),
                    decommissioning: b.decommissioning,
                })
                .collect(),
            topics,
            controller: self.controller.leader().unwrap_or(0),
        }))
    }
}

#[tonic::async_trait]
impl Admin for Services {
    async fn create_topic(
        &self,
        request: Request<CreateTopicRequest>,
    ) -> Result<Response<CreateTopicResponse>, Status> {
        let hops = forward_hops(&request);
        let request = request.into_inner();
        if let Some(mut leader) = self.controller_leader(hops)? {
            return leader.create_topic(Self::forwarded(request, hops)).await;
        }
        tracing::info!(topic = %request.name, partitions = request.partitions, replication_factor = request.replication_factor, "create topic");
        let topic = self
            .controller
            .create_topic(
                &request.name,
                request.partitions,
                request.replication_factor,
                TopicConfig::from_pairs(
                    request
                        .configs
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str())),
                )
                .map_err(from_metadata)?,
            )
            .await
            .map_err(from_controller)?;
        let metadata = self.controller.metadata();
        Ok(Response::new(CreateTopicResponse {
            topic: Some(topic_info(&metadata, &topic, &self.partitions)),
        }))
    }

    async fn list_topics(
        &self,
        request: Request<ListTopicsRequest>,
    ) -> Result<Response<ListTopicsResponse>, Status> {
        let hops = forward_hops(&request);
        if !self.controller.ready() {
            return Err(crate::status::unavailable(
                "this node is still loading the cluster metadata; retry shortly",
            ));
        }
        // Answer from the controller leader's view, so a topic just created is listed.
        if let Some(mut leader) = self.controller_leader(hops)? {
            return leader
                .list_topics(Self::forwarded(request.into_inner(), hops))
                .await;
        }
        let metadata = self
            .controller
            .latest_metadata()
            .await
            .map_err(from_controller)?;
        Ok(Response::new(ListTopicsResponse {
            topics: metadata
                .topics
                .values()
                .map(|t| topic_info(&metadata, t, &self.partitions))
                .collect(),
        }))
    }

    async fn describe_topic(
        &self,
        request: Request<DescribeTopicRequest>,
    ) -> Result<Response<DescribeTopicResponse>, Status> {
        let hops = forward_hops(&request);
        let request = request.into_inner();
        let span = tracing::debug_span!("describe_topic", topic = %request.name);
        async move {
            let topic = match self.topic(&request.name, hops).await? {
                Found::Here(topic) => topic,
                Found::AskController(addr) => {
                    let mut client = self.admin_client(&addr)?;
                    return client.describe_topic(Self::forwarded(request, hops)).await;
                }
            };
            let metadata = self.controller.metadata();
            let mut info = topic_info(&metadata, &topic, &self.partitions);
            let offsets = info.partitions.iter().map(|p| {
                self.list_offsets_inner(
                    Request::new(ListOffsetsRequest {
                        topic: topic.name.clone(),
                        partition: p.partition,
                        timestamp_ms: None,
                    }),
                    hops,
                )
            });
            let offsets = futures::future::try_join_all(offsets).await?;
            for (partition, offsets) in info.partitions.iter_mut().zip(offsets) {
                partition.log_start_offset = offsets.log_start_offset;
                partition.high_watermark = offsets.high_watermark;
            }
            Ok(Response::new(DescribeTopicResponse { topic: Some(info) }))
        }
        .instrument(span)
        .await
    }

    async fn delete_topic(
        &self,
        request: Request<DeleteTopicRequest>,
    ) -> Result<Response<DeleteTopicResponse>, Status> {
        let request = request.into_inner();
        tracing::info!(topic = %request.name, "delete topic");
        if !self
            .controller
            .metadata()
            .topics
            .contains_key(&request.name)
        {
            return Err(from_metadata(weir_controller::MetadataError::UnknownTopic(
                request.name,
            )));
        }
        self.controller
            .propose(weir_controller::MetadataCommand::DeleteTopic { name: request.name })
            .await
            .map_err(from_controller)?;
        Ok(Response::new(DeleteTopicResponse {}))
    }

    async fn join_cluster(
        &self,
        request: Request<JoinClusterRequest>,
    ) -> Result<Response<JoinClusterResponse>, Status> {
        let hops = forward_hops(&request);
        let request = request.into_inner();
        if request.id == 0 {
            return Err(Status::invalid_argument("node id 0 is reserved"));
        }
        for (field, value) in [
            ("address", &request.address),
            ("external_address", &request.external_address),
        ] {
            let optional = field == "external_address" && value.is_empty();
            if !optional && crate::config::check_host_port(field, value).is_err() {
                return Err(Status::invalid_argument(format!(
                    "{field} {value:?} is not HOST:PORT"
                )));
            }
        }
        tracing::info!(node = request.id, addr = %request.address, external = %request.external_address, "join request");
        if let Some(mut leader) = self.controller_leader(hops)? {
            return leader.join_cluster(Self::forwarded(request, hops)).await;
        }
        let rack = (!request.rack.is_empty()).then(|| request.rack.clone());
        let external =
            (!request.external_address.is_empty()).then(|| request.external_address.clone());
        self.controller
            .admit(request.id, &request.address, external, rack)
            .await
            .map_err(from_controller)?;
        Ok(Response::new(JoinClusterResponse {}))
    }

    async fn reassign_partition(
        &self,
        request: Request<ReassignPartitionRequest>,
    ) -> Result<Response<ReassignPartitionResponse>, Status> {
        let request = request.into_inner();
        tracing::info!(topic = %request.topic, partition = request.partition, replicas = ?request.replicas, "reassign partition");
        self.controller
            .propose(weir_controller::MetadataCommand::ReassignPartition {
                topic: request.topic,
                partition: request.partition,
                replicas: request.replicas,
            })
            .await
            .map_err(from_controller)?;
        Ok(Response::new(ReassignPartitionResponse {}))
    }

    async fn rebalance(
        &self,
        request: Request<RebalanceRequest>,
    ) -> Result<Response<RebalanceResponse>, Status> {
        let hops = forward_hops(&request);
        let request = request.into_inner();
        if let Some(mut leader) = self.controller_leader(hops)? {
            return leader.rebalance(Self::forwarded(request, hops)).await;
        }
        let limit = match request.max_moves {
            0 => 100,
            n => n as usize,
        };
        let moves = self
            .controller
            .rebalance(limit)
            .await
            .map_err(from_controller)?;
        tracing::info!(moves, "rebalance proposed");
        Ok(Response::new(RebalanceResponse {
            moves: u32::try_from(moves).unwrap_or(u32::MAX),
        }))
    }

    async fn decommission_broker(
        &self,
        request: Request<DecommissionBrokerRequest>,
    ) -> Result<Response<DecommissionBrokerResponse>, Status> {
        let request = request.into_inner();
        tracing::info!(broker = request.id, "decommission broker");
        self.controller
            .decommission(request.id)
            .await
            .map_err(from_controller)?;
        Ok(Response::new(DecommissionBrokerResponse {}))
    }
}
