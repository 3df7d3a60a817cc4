//! `weir.v1.Broker`: produce (the [`WritePath`]), fetch, subscribe and list offsets (the
//! [`ReadPath`]) and the cluster metadata, each request in a `tracing` span and counted in the
//! node's metrics.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::Instrument;
use weir_proto::v1::broker_server::Broker;
use weir_proto::v1::{
    BrokerInfo, FetchRequest, FetchResponse, InitProducerRequest, InitProducerResponse,
    ListOffsetsRequest, ListOffsetsResponse, MetadataRequest, MetadataResponse, ProduceRequest,
    ProduceResponse, SubscribeRequest,
};

use crate::fetch::ReadPath;
use crate::limits::NodeLimits;
use crate::metrics::BrokerMetrics;
use crate::produce::WritePath;
use crate::quota::{Kind, ThrottleSlot, throttle_ms};
use prost::Message;
use weir_controller::security::Operation;

use crate::auth::Resource;
use crate::router::{Found, Listener, Router, forward_hops, forwarded, relayed, topic_info};

/// The Broker service of one listener of a node.
#[derive(Debug, Clone)]
pub(crate) struct BrokerService {
    pub(crate) router: Router,
    pub(crate) writes: WritePath,
    pub(crate) reads: ReadPath,
    pub(crate) metrics: Arc<BrokerMetrics>,
    /// Which of the node's listeners this service answers on (metadata names brokers by the
    /// addresses of that listener).
    pub(crate) listener: Listener,
}

impl BrokerService {
    pub(crate) fn new(
        router: Router,
        metrics: Arc<BrokerMetrics>,
        listener: Listener,
        limits: NodeLimits,
    ) -> Self {
        Self {
            writes: WritePath {
                router: router.clone(),
                metrics: Arc::clone(&metrics),
                limits: limits.clone(),
            },
            reads: ReadPath {
                router: router.clone(),
                metrics: Arc::clone(&metrics),
                limits,
            },
            router,
            metrics,
            listener,
        }
    }
}

#[tonic::async_trait]
impl Broker for BrokerService {
    async fn produce(
        &self,
        request: Request<ProduceRequest>,
    ) -> Result<Response<ProduceResponse>, Status> {
        let span = tracing::info_span!(
            "produce",
            topic = %request.get_ref().topic,
            partition = ?request.get_ref().partition
        );
        let hops = forward_hops(&request);
        let slot = ThrottleSlot::of(&request);
        let bytes = request.get_ref().encoded_len() as u64;
        let result = self.writes.produce_inner(request).instrument(span).await;
        crate::metrics::BrokerMetrics::count(&self.metrics.produce_requests, &result);
        // Charged whatever the outcome (the bytes arrived); the Throttled wrapper holds the
        // answer back.
        slot.raise(self.router.quotas.charge(&hops, Kind::Produce, bytes));
        result.map(|mut response| {
            response.throttle_time_ms = throttle_ms(slot.get());
            Response::new(response)
        })
    }

    type ProduceStreamStream = crate::produce::ProduceStreamResponse;

    async fn produce_stream(
        &self,
        request: Request<tonic::Streaming<ProduceRequest>>,
    ) -> Result<Response<Self::ProduceStreamStream>, Status> {
        Ok(Response::new(self.writes.produce_stream_inner(request)))
    }

    async fn init_producer(
        &self,
        request: Request<InitProducerRequest>,
    ) -> Result<Response<InitProducerResponse>, Status> {
        self.writes
            .init_producer_inner(request)
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
        let hops = forward_hops(&request);
        let slot = ThrottleSlot::of(&request);
        let result = self.reads.fetch_inner(request).instrument(span).await;
        crate::metrics::BrokerMetrics::count(&self.metrics.fetch_requests, &result);
        result.map(|mut response| {
            self.metrics
                .fetched_records
                .inc_by(response.records.len() as u64);
            // The answer's size, whether this node read it or another node did.
            let bytes = response.encoded_len() as u64;
            slot.raise(self.router.quotas.charge(&hops, Kind::Fetch, bytes));
            response.throttle_time_ms = throttle_ms(slot.get());
            Response::new(response)
        })
    }

    type SubscribeStream = crate::fetch::SubscribeResponse;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let hops = &forward_hops(&request);
        self.router.authorize(
            &request,
            Operation::Read,
            Resource::Topic(&request.get_ref().topic),
        )?;
        let slot = self.reads.limits.subscribe_stream()?;
        Ok(Response::new(
            self.reads.subscribe_inner(request, hops, slot),
        ))
    }

    async fn list_offsets(
        &self,
        request: Request<ListOffsetsRequest>,
    ) -> Result<Response<ListOffsetsResponse>, Status> {
        let hops = &forward_hops(&request);
        self.router.authorize(
            &request,
            Operation::Describe,
            Resource::Topic(&request.get_ref().topic),
        )?;
        let span = tracing::debug_span!(
            "list_offsets",
            topic = %request.get_ref().topic,
            partition = request.get_ref().partition
        );
        self.reads
            .list_offsets_inner(request, hops)
            .instrument(span)
            .await
            .map(Response::new)
    }

    async fn metadata(
        &self,
        request: Request<MetadataRequest>,
    ) -> Result<Response<MetadataResponse>, Status> {
        let hops = &forward_hops(&request);
        for name in &request.get_ref().topics {
            self.router
                .authorize(&request, Operation::Describe, Resource::Topic(name))?;
        }
        let request = request.into_inner();
        if !self.router.controller.ready() {
            // Not an empty cluster: a node that has not loaded the metadata yet.
            return Err(crate::status::unavailable(
                "this node is still loading the cluster metadata; retry shortly",
            ));
        }
        for name in &request.topics {
            if let Found::AskController(addr) = self.router.topic(name, hops).await? {
                let mut client = self.router.broker_client(&addr, hops)?;
                return client
                    .metadata(forwarded(request, hops))
                    .await
                    .map_err(relayed);
            }
        }
        let metadata = self.router.controller.metadata();
        let mut topics = Vec::new();
        if request.topics.is_empty() {
            // Only the topics the caller may describe.
            topics.extend(
                metadata
                    .topics
                    .values()
                    .filter(|t| {
                        self.router.access.allows(
                            &hops.caller,
                            Operation::Describe,
                            Resource::Topic(&t.name),
                        )
                    })
                    .map(|t| topic_info(&metadata, t, &self.router.partitions)),
            );
        } else {
            for name in &request.topics {
                let topic = metadata
                    .topics
                    .get(name)
                    .ok_or_else(|| Status::not_found(format!("unknown topic {name:?}")))?;
                topics.push(topic_info(&metadata, topic, &self.router.partitions));
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
                    alive: self.router.controller.is_alive(b.id),
                    decommissioning: b.decommissioning,
                    kafka_address: metadata
                        .kafka_listeners
                        .get(&b.id)
                        .cloned()
                        .unwrap_or_default(),
                })
                .collect(),
            topics,
            controller: self.router.controller.leader().unwrap_or(0),
        }))
    }
}
