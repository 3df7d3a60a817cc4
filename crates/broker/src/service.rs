//! The public gRPC services (`weir.v1.Broker`, `weir.v1.Admin`) of one node. Any node answers any
//! request: writes to a partition hosted here go through its Raft group (forwarded to the leader
//! over the peer transport when this replica does not lead); requests for partitions not hosted
//! here are forwarded once to a node that hosts them.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tonic::{Request, Response, Status};
use tracing::Instrument;
use weir_controller::{Controller, Metadata, Partitions, TopicConfig, TopicRecord};
use weir_proto::v1::admin_server::Admin;
use weir_proto::v1::broker_client::BrokerClient;
use weir_proto::v1::broker_server::Broker;
use weir_proto::v1::{
    Acks, BrokerInfo, CreateTopicRequest, CreateTopicResponse, DecommissionBrokerRequest,
    DecommissionBrokerResponse, DeleteTopicRequest, DeleteTopicResponse, FetchRequest,
    FetchResponse, FetchedRecord, Header, JoinClusterRequest, JoinClusterResponse,
    ListOffsetsRequest, ListOffsetsResponse, MetadataRequest, MetadataResponse, PartitionInfo,
    ProduceRequest, ProduceResponse, ReassignPartitionRequest, ReassignPartitionResponse,
    RebalanceRequest, RebalanceResponse, TopicInfo,
};
use weir_raft::PeerTransport;
use weir_storage::codec::{BatchBuilder, Compression, ValidBatch};

use crate::status::{from_controller, from_group, from_metadata, from_storage};

/// Request metadata key marking a request another node forwarded (never forwarded again).
const FORWARDED: &str = "weir-forwarded";
/// How long a write may wait for replication (elections included).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a leader may take to confirm its leadership for a read.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(3);
/// How many times a request may be forwarded between nodes.
const MAX_FORWARD_HOPS: u32 = 2;
/// Default and largest fetch size.
const DEFAULT_FETCH_BYTES: usize = 1 << 20;
const MAX_FETCH_BYTES: usize = 64 << 20;

/// Where a topic's record was found.
enum Found {
    Here(TopicRecord),
    /// Not known here: ask the controller leader at this address.
    AskController(String),
}

/// Where a partition request is served.
enum Route {
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
}

fn forward_hops<T>(request: &Request<T>) -> u32 {
    request
        .metadata()
        .get(FORWARDED)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn topic_info(metadata: &Metadata, topic: &TopicRecord, partitions: &Partitions) -> TopicInfo {
    let _ = metadata;
    TopicInfo {
        name: topic.name.clone(),
        replication_factor: topic.replication_factor,
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
    async fn topic(&self, name: &str, hops: u32) -> Result<Found, Status> {
        if !self.controller.ready() {
            return Err(Status::unavailable(
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
            _ => Err(Status::unavailable(
                "topic not known here and no controller leader to ask; retry shortly",
            )),
        }
    }

    fn check_partition(topic: &TopicRecord, partition: u32) -> Result<(), Status> {
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
    async fn read_route(&self, topic: &str, partition: u32, hops: u32) -> Result<Route, Status> {
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

    /// The address of some node hosting `partition` of `topic`.
    fn replica_addr(&self, topic: &TopicRecord, partition: u32) -> Result<String, Status> {
        let metadata = self.controller.metadata();
        topic.partitions[partition as usize]
            .replicas
            .iter()
            .find_map(|id| metadata.brokers.get(id).map(|b| b.addr.clone()))
            .ok_or_else(|| Status::unavailable("no replica address known; retry shortly"))
    }

    /// Where to send a produce this node cannot serve: the leader if a local replica knows it,
    /// else a node hosting the partition.
    fn produce_target(
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
    async fn confirmed_leader(
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
    fn leader_client(
        &self,
        replica: &weir_controller::PartitionReplica,
        hops: u32,
    ) -> Result<BrokerClient<tonic::transport::Channel>, Status> {
        let leader = replica
            .group
            .leader()
            .filter(|leader| *leader != replica.group.node_id())
            .ok_or_else(|| {
                Status::unavailable("the partition's leadership is changing; retry shortly")
            })?;
        let addr = replica.group.node_addr(leader).ok_or_else(|| {
            Status::unavailable("the leader's address is not known yet; retry shortly")
        })?;
        self.broker_client(&addr, hops)
    }

    /// A client for a forwarded request to `addr`; refuses past [`MAX_FORWARD_HOPS`].
    fn broker_client(
        &self,
        addr: &str,
        hops: u32,
    ) -> Result<BrokerClient<tonic::transport::Channel>, Status> {
        if hops >= MAX_FORWARD_HOPS {
            return Err(Status::unavailable(
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
            .ok_or_else(|| Status::unavailable("no controller leader known; retry shortly"))?;
        let channel = self
            .transport
            .channel(&addr)
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Some(weir_proto::v1::admin_client::AdminClient::new(
            channel,
        )))
    }

    fn forwarded<T>(request: T, hops: u32) -> Request<T> {
        let mut request = Request::new(request);
        request
            .metadata_mut()
            .insert(FORWARDED, tonic::metadata::MetadataValue::from(hops + 1));
        request
    }

    /// The batch to append for a produce request: the client's batch (checked) or one built from
    /// its records.
    fn produce_batch(request: &ProduceRequest, limit: u32) -> Result<(Bytes, u32), Status> {
        let bytes = if !request.batch.is_empty() {
            if !request.records.is_empty() {
                return Err(Status::invalid_argument(
                    "give records or a batch, not both",
                ));
            }
            let batch = ValidBatch::new(request.batch.clone())
                .map_err(|e| Status::invalid_argument(format!("invalid batch: {e}")))?;
            if batch.header().control || batch.header().record_count == 0 {
                return Err(Status::invalid_argument(
                    "a produced batch must hold records",
                ));
            }
            request.batch.clone()
        } else {
            if request.records.is_empty() {
                return Err(Status::invalid_argument(
                    "empty produce request: no records",
                ));
            }
            let now = now_ms();
            let mut builder = BatchBuilder::new(Compression::None);
            for record in &request.records {
                let headers: Vec<(String, Option<Vec<u8>>)> = record
                    .headers
                    .iter()
                    .map(|h| (h.key.clone(), h.value.as_ref().map(|v| v.to_vec())))
                    .collect();
                let headers: Vec<(&str, Option<&[u8]>)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_deref()))
                    .collect();
                let timestamp = if record.timestamp_ms == 0 {
                    now
                } else {
                    record.timestamp_ms
                };
                builder.push(
                    timestamp,
                    record.key.as_deref(),
                    record.value.as_deref(),
                    &headers,
                );
            }
            builder
                .build()
                .ok_or_else(|| Status::invalid_argument("empty produce request: no records"))?
        };
        if bytes.len() > limit as usize {
            return Err(Status::invalid_argument(format!(
                "batch of {} bytes exceeds the topic's max.message.bytes limit of {limit} bytes",
                bytes.len()
            )));
        }
        let count = weir_storage::codec::BatchHeader::parse(&bytes)
            .map(|h| h.record_count)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok((bytes, count))
    }
}

impl Services {
    async fn produce_inner(
        &self,
        request: Request<ProduceRequest>,
    ) -> Result<Response<ProduceResponse>, Status> {
        let hops = forward_hops(&request);
        let request = request.into_inner();
        if Acks::try_from(request.acks).is_err() {
            return Err(Status::invalid_argument(format!(
                "unknown acks value {}",
                request.acks
            )));
        }
        let topic = match self.topic(&request.topic, hops).await? {
            Found::Here(topic) => topic,
            Found::AskController(addr) => {
                let mut client = self.broker_client(&addr, hops)?;
                return client.produce(Self::forwarded(request, hops)).await;
            }
        };
        Self::check_partition(&topic, request.partition)?;
        let (batch, record_count) = Self::produce_batch(&request, topic.config.max_message_bytes)?;
        let replica = self
            .partitions
            .get(&topic.name, request.partition)
            .filter(|r| r.topic_id == topic.id);
        let leader_here = replica.as_ref().is_some_and(|r| r.group.is_leader());
        let Some(replica) = replica.filter(|_| leader_here) else {
            let mut client = self.produce_target(&topic, request.partition, hops)?;
            self.metrics.forwarded_requests.inc();
            return client.produce(Self::forwarded(request, hops)).await;
        };
        let batch_len = batch.len();
        let applied = replica
            .group
            .write_deduplicated(batch, WRITE_TIMEOUT)
            .await
            .map_err(from_group)?;
        tracing::debug!(base_offset = applied.base_offset, record_count, "produced");
        self.metrics
            .produced_records
            .inc_by(u64::from(record_count));
        self.metrics.produced_bytes.inc_by(batch_len as u64);
        Ok(Response::new(ProduceResponse {
            partition: request.partition,
            base_offset: applied.base_offset,
            record_count,
        }))
    }

    async fn fetch_inner(
        &self,
        request: Request<FetchRequest>,
    ) -> Result<Response<FetchResponse>, Status> {
        let hops = forward_hops(&request);
        let request = request.into_inner();
        let replica = match self
            .read_route(&request.topic, request.partition, hops)
            .await?
        {
            Route::Local(replica) => replica,
            Route::Forward(mut client) => {
                return client.fetch(Self::forwarded(request, hops)).await;
            }
        };
        let max_bytes = match request.max_bytes as usize {
            0 => DEFAULT_FETCH_BYTES,
            n => n.min(MAX_FETCH_BYTES),
        };
        let log = replica.group.log();
        let mut high_watermark = replica.group.progress().borrow().high_watermark;
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
                return client.fetch(Self::forwarded(request, hops)).await;
            }
            high_watermark = replica.group.progress().borrow().high_watermark;
        }
        if request.offset < start || request.offset > high_watermark {
            return Err(Status::out_of_range(format!(
                "offset {} is outside [{start}, {high_watermark}] (log start, high watermark)",
                request.offset
            )));
        }
        let mut records = Vec::new();
        let mut next_offset = request.offset;
        if request.offset < high_watermark {
            let read = log
                .read_until(request.offset, max_bytes, high_watermark)
                .map_err(from_storage)?;
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
        Ok(Response::new(FetchResponse {
            records,
            next_offset,
            high_watermark,
            log_start_offset: start,
        }))
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
            partition = request.get_ref().partition
        );
        let result = self.produce_inner(request).instrument(span).await;
        crate::metrics::BrokerMetrics::count(&self.metrics.produce_requests, &result);
        result
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
                .inc_by(response.get_ref().records.len() as u64);
        }
        result
    }

    async fn list_offsets(
        &self,
        request: Request<ListOffsetsRequest>,
    ) -> Result<Response<ListOffsetsResponse>, Status> {
        let hops = forward_hops(&request);
        let request = request.into_inner();
        let replica = match self
            .read_route(&request.topic, request.partition, hops)
            .await?
        {
            Route::Local(replica) => replica,
            Route::Forward(mut client) => {
                return client.list_offsets(Self::forwarded(request, hops)).await;
            }
        };
        // The high watermark ("latest") is the leader's to tell, confirmed with a quorum: a
        // follower's may lag, and so may that of a node that only believes it leads.
        if !self.confirmed_leader(&replica).await? {
            let mut client = self.leader_client(&replica, hops)?;
            return client.list_offsets(Self::forwarded(request, hops)).await;
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
        Ok(Response::new(ListOffsetsResponse {
            log_start_offset,
            high_watermark,
            offset_for_timestamp,
        }))
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
                    address: b.addr.clone(),
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
                TopicConfig::default(),
            )
            .await
            .map_err(from_controller)?;
        let metadata = self.controller.metadata();
        Ok(Response::new(CreateTopicResponse {
            topic: Some(topic_info(&metadata, &topic, &self.partitions)),
        }))
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
        tracing::info!(node = request.id, addr = %request.address, "join request");
        if let Some(mut leader) = self.controller_leader(hops)? {
            return leader.join_cluster(Self::forwarded(request, hops)).await;
        }
        let rack = (!request.rack.is_empty()).then(|| request.rack.clone());
        self.controller
            .admit(request.id, &request.address, rack)
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
