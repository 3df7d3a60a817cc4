//! Producing: `Produce` (one partition, or records spread by key), `ProduceStream` (pipelined
//! requests on one stream, in order per partition) and `InitProducer` (idempotent producer ids).
//!
//! A produce request is checked on the node that receives it (topic, partition, batch, size
//! limit), turned into one stored batch per partition (kept as the producer built it, or
//! re-encoded when the topic's `compression` setting says so), and written by the partition
//! leader through its Raft group — forwarded there when this node does not lead. The leader drops
//! retried duplicates of idempotent batches.

use std::collections::HashMap;
use std::pin::Pin;

use bytes::Bytes;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;
use weir_controller::{TopicCompression, TopicRecord};
use weir_format::batch::{
    BatchBuilder, BatchHeader, Compression, ProducerInfo, Record, ValidBatch,
};
use weir_format::partitioner::partition_for_key;
use weir_proto::v1::{
    Acks, InitProducerRequest, InitProducerResponse, PartitionOffsets, ProduceRequest,
    ProduceResponse,
};
use weir_raft::WaitFor;

use crate::limits::{NodeLimits, STREAM_LANES};
use crate::metrics::BrokerMetrics;
use weir_controller::security::Operation;

use crate::auth::Resource;
use crate::quota::{Kind, Throttle, throttle_ms};
use crate::router::{FORWARDED, Found, Hops, Router, forward_hops, forwarded, now_ms, relayed};
use crate::status::{from_controller, from_group, from_quota};

/// Requests a ProduceStream may have queued per partition before it stops reading the stream.
const STREAM_QUEUE: usize = 64;

pub(crate) type ProduceStreamResponse =
    Pin<Box<dyn Stream<Item = Result<ProduceResponse, Status>> + Send + 'static>>;

/// How long a write may wait for replication (elections included).
const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Writes of one node.
#[derive(Debug, Clone)]
pub(crate) struct WritePath {
    pub(crate) router: Router,
    pub(crate) metrics: std::sync::Arc<BrokerMetrics>,
    /// The node's budget of `acks=none` background writes.
    pub(crate) limits: NodeLimits,
}

impl WritePath {
    pub(crate) async fn produce_inner(
        &self,
        request: Request<ProduceRequest>,
    ) -> Result<ProduceResponse, Status> {
        let hops = &forward_hops(&request);
        self.router.authorize(
            &request,
            Operation::Write,
            Resource::Topic(&request.get_ref().topic),
        )?;
        let request = request.into_inner();
        let acks = Acks::try_from(request.acks).map_err(|_| {
            Status::invalid_argument(format!("unknown acks value {}", request.acks))
        })?;
        let topic = match self.router.topic(&request.topic, hops).await? {
            Found::Here(topic) => topic,
            Found::AskController(addr) => {
                let mut client = self.router.broker_client(&addr, hops)?;
                return Ok(client
                    .produce(forwarded(request, hops))
                    .await
                    .map_err(relayed)?
                    .into_inner());
            }
        };
        if topic.internal {
            // Internal topics (`__consumer_offsets`) are written by the cluster only, through
            // the group coordinator; a client's records there would corrupt committed offsets.
            return Err(Status::permission_denied(format!(
                "topic {:?} is internal: only the cluster writes to it",
                topic.name
            )));
        }
        // A hard quota: refused before anything is written.
        self.router
            .quotas
            .check_retained(&topic)
            .map_err(from_quota)?;
        let request_id = request.request_id;
        let mut response = match request.partition {
            Some(partition) => {
                let part = self
                    .produce_partition(&topic, partition, request, acks, hops)
                    .await?;
                ProduceResponse {
                    partition: part.partition,
                    base_offset: part.base_offset,
                    record_count: part.record_count,
                    partitions: vec![part],
                    ..ProduceResponse::default()
                }
            }
            None => self.produce_by_key(&topic, request, acks, hops).await?,
        };
        response.request_id = request_id;
        Ok(response)
    }

    /// Spreads the records of a request without a partition over the partitions of their keys
    /// (keyless records all go to one partition picked at random) and writes each part.
    async fn produce_by_key(
        &self,
        topic: &TopicRecord,
        request: ProduceRequest,
        acks: Acks,
        hops: &Hops,
    ) -> Result<ProduceResponse, Status> {
        if !request.batch.is_empty() {
            return Err(Status::invalid_argument(
                "a prebuilt batch needs a partition; give `partition` or send `records`",
            ));
        }
        if request.records.is_empty() {
            return Err(Status::invalid_argument(
                "empty produce request: no records",
            ));
        }
        idempotence(&request)?;
        let count = topic.partitions.len() as u32;
        let keyless = rand::random_range(0..count.max(1));
        let mut parts: Vec<(u32, Vec<weir_proto::v1::Record>)> = Vec::new();
        for record in request.records {
            let partition = match &record.key {
                Some(key) => partition_for_key(key, count),
                None => keyless,
            };
            match parts.iter_mut().find(|(p, _)| *p == partition) {
                Some((_, records)) => records.push(record),
                None => parts.push((partition, vec![record])),
            }
        }
        let writes = parts.into_iter().map(|(partition, records)| {
            let part = ProduceRequest {
                topic: request.topic.clone(),
                partition: Some(partition),
                records,
                acks: request.acks,
                batch: Bytes::new(),
                request_id: request.request_id,
                ..ProduceRequest::default()
            };
            self.produce_partition(topic, partition, part, acks, hops)
        });
        let partitions = futures::future::try_join_all(writes).await?;
        let first = partitions.first().cloned().unwrap_or_default();
        Ok(ProduceResponse {
            partition: first.partition,
            base_offset: first.base_offset,
            record_count: first.record_count,
            partitions,
            ..ProduceResponse::default()
        })
    }

    /// Writes the records of `request` to `partition` (here if this node leads it, else on the
    /// leader).
    async fn produce_partition(
        &self,
        topic: &TopicRecord,
        partition: u32,
        request: ProduceRequest,
        acks: Acks,
        hops: &Hops,
    ) -> Result<PartitionOffsets, Status> {
        Router::check_partition(topic, partition)?;
        let (batch, record_count) = produce_batch(&request, topic)?;
        if acks == Acks::None {
            // Checked; the write happens in the background, its outcome only logged. It needs a
            // slot of the node's budget first: a client sending faster than the node writes
            // waits here for its answer.
            let slot = self.limits.acks_none_write().await;
            let this = self.clone();
            let topic = topic.clone();
            let hops = hops.clone();
            let request = ProduceRequest {
                acks: Acks::Leader as i32,
                ..request
            };
            tokio::spawn(
                async move {
                    let _slot = slot;
                    if let Err(status) = this
                        .deliver(&topic, partition, request, batch, record_count, Acks::Leader, &hops)
                        .await
                    {
                        tracing::warn!(code = ?status.code(), message = status.message(), "acks=none write failed");
                    }
                }
                .in_current_span(),
            );
            return Ok(PartitionOffsets {
                partition,
                base_offset: None,
                record_count,
            });
        }
        self.deliver(topic, partition, request, batch, record_count, acks, hops)
            .await
    }

    /// Writes `batch` (built from `request`) on the partition leader: here, or by forwarding
    /// `request` to it.
    #[allow(clippy::too_many_arguments)]
    async fn deliver(
        &self,
        topic: &TopicRecord,
        partition: u32,
        request: ProduceRequest,
        batch: Bytes,
        record_count: u32,
        acks: Acks,
        hops: &Hops,
    ) -> Result<PartitionOffsets, Status> {
        let replica = self
            .router
            .partitions
            .get(&topic.name, partition)
            .filter(|r| r.topic_id == topic.id);
        let leader_here = replica.as_ref().is_some_and(|r| r.group.is_leader());
        let Some(replica) = replica.filter(|_| leader_here) else {
            let mut client = self.router.produce_target(topic, partition, hops)?;
            self.metrics.forwarded_requests.inc();
            let request = ProduceRequest {
                partition: Some(partition),
                ..request
            };
            let response = client
                .produce(forwarded(request, hops))
                .await
                .map_err(relayed)?
                .into_inner();
            return Ok(PartitionOffsets {
                partition,
                base_offset: response.base_offset,
                record_count: response.record_count,
            });
        };
        let batch_len = batch.len();
        let wait = match acks {
            Acks::Leader => WaitFor::Accepted,
            _ => WaitFor::Committed,
        };
        let applied = replica
            .group
            .write(batch, WRITE_TIMEOUT, wait)
            .await
            .map_err(from_group)?;
        let base_offset = applied.map(|a| a.base_offset);
        tracing::debug!(?base_offset, record_count, ?acks, "produced");
        self.metrics
            .produced_records
            .inc_by(u64::from(record_count));
        self.metrics.produced_bytes.inc_by(batch_len as u64);
        Ok(PartitionOffsets {
            partition,
            base_offset,
            record_count,
        })
    }

    pub(crate) async fn init_producer_inner(
        &self,
        request: Request<InitProducerRequest>,
    ) -> Result<Response<InitProducerResponse>, Status> {
        self.router
            .access
            .may_write_somewhere(&crate::auth::Caller::of(&request))?;
        let producer_id = self
            .router
            .controller
            .allocate_producer_id()
            .await
            .map_err(from_controller)?;
        tracing::info!(producer_id, "producer id allocated");
        Ok(Response::new(InitProducerResponse {
            producer_id,
            producer_epoch: 0,
        }))
    }

    /// Serves a ProduceStream: each request runs like a Produce; requests naming the same
    /// partition (or the same topic, when routed by key) run one after another in stream order,
    /// others concurrently. A queue per partition bounds how far the stream is read ahead, and a
    /// stream writes to at most [`STREAM_LANES`] partitions: a request for another one is answered
    /// with INVALID_ARGUMENT naming the limit (nothing of it written), and the stream goes on.
    pub(crate) fn produce_stream_inner(
        &self,
        request: Request<Streaming<ProduceRequest>>,
    ) -> ProduceStreamResponse {
        let hops = forward_hops(&request);
        let mut incoming = request.into_inner();
        let (answers, answers_rx) = mpsc::channel::<Result<ProduceResponse, Status>>(STREAM_QUEUE);
        let this = self.clone();
        let span = tracing::info_span!("produce_stream");
        tokio::spawn(
            async move {
                let mut lanes: HashMap<(String, Option<u32>), mpsc::Sender<ProduceRequest>> =
                    HashMap::new();
                loop {
                    let next = tokio::select! {
                        next = incoming.message() => next,
                        () = answers.closed() => break,
                    };
                    let request = match next {
                        Ok(Some(request)) => request,
                        Ok(None) => break,
                        Err(status) => {
                            tracing::debug!(code = ?status.code(), "produce stream ended by the client");
                            break;
                        }
                    };
                    let lane = (request.topic.clone(), request.partition);
                    if lanes.len() >= STREAM_LANES && !lanes.contains_key(&lane) {
                        this.metrics.stream_lanes_refused.inc();
                        let status = Status::invalid_argument(format!(
                            "a ProduceStream writes to at most {STREAM_LANES} partitions; this \
                             request names another ({:?}, partition {:?}): open another stream",
                            request.topic, request.partition
                        ));
                        BrokerMetrics::count::<()>(&this.metrics.produce_requests, &Err(status.clone()));
                        let refused = ProduceResponse {
                            request_id: request.request_id,
                            error_code: status.code() as i32,
                            error_message: status.message().to_string(),
                            ..ProduceResponse::default()
                        };
                        if answers.send(Ok(refused)).await.is_err() {
                            break;
                        }
                        continue;
                    }
                    let sender = lanes
                        .entry(lane)
                        .or_insert_with(|| this.spawn_lane(hops.clone(), answers.clone()));
                    if sender.send(request).await.is_err() {
                        break;
                    }
                }
                // Dropping the lanes lets each finish what it has queued; the answer stream
                // ends when the last lane does.
            }
            .instrument(span),
        );
        Box::pin(ReceiverStream::new(answers_rx))
    }

    /// A task writing the requests of one lane in order, answering each on `answers`.
    fn spawn_lane(
        &self,
        hops: Hops,
        answers: mpsc::Sender<Result<ProduceResponse, Status>>,
    ) -> mpsc::Sender<ProduceRequest> {
        let (lane, mut queue) = mpsc::channel::<ProduceRequest>(STREAM_QUEUE);
        let this = self.clone();
        tokio::spawn(
            async move {
                while let Some(request) = queue.recv().await {
                    let request_id = request.request_id;
                    // Each request of the stream is charged as a call of its own.
                    let bytes = prost::Message::encoded_len(&request) as u64;
                    let quotas = &this.router.quotas;
                    let throttle = [
                        quotas.charge(&hops, Kind::Request, 1),
                        quotas.charge(&hops, Kind::Produce, bytes),
                    ]
                    .into_iter()
                    .flatten()
                    .max_by_key(|t: &Throttle| t.delay);
                    let mut forwarded = Request::new(request);
                    // As if it came alone: the stream's hop count and caller.
                    if hops.count > 0 {
                        forwarded
                            .metadata_mut()
                            .insert(FORWARDED, tonic::metadata::MetadataValue::from(hops.count));
                    }
                    forwarded.extensions_mut().insert(hops.caller.clone());
                    let result = this.produce_inner(forwarded).await;
                    BrokerMetrics::count(&this.metrics.produce_requests, &result);
                    let mut answer = match result {
                        Ok(response) => response,
                        Err(status) => ProduceResponse {
                            request_id,
                            error_code: status.code() as i32,
                            error_message: status.message().to_string(),
                            ..ProduceResponse::default()
                        },
                    };
                    answer.throttle_time_ms = throttle_ms(throttle);
                    if let Some(throttle) = throttle {
                        // Held back like a throttled Produce; the lane's next requests wait.
                        quotas.hold(throttle).await;
                    }
                    if answers.send(Ok(answer)).await.is_err() {
                        break;
                    }
                }
            }
            .in_current_span(),
        );
        lane
    }
}

/// The batch to append for a produce request: the client's batch (checked) or one built from
/// its records, stored with the topic's compression, within its `max.message.bytes`. Returns
/// the batch and its record count.
pub(crate) fn produce_batch(
    request: &ProduceRequest,
    topic: &TopicRecord,
) -> Result<(Bytes, u32), Status> {
    let limit = topic.config.max_message_bytes;
    let wanted = match topic.config.compression {
        TopicCompression::Producer => None,
        TopicCompression::None => Some(Compression::None),
        TopicCompression::Lz4 => Some(Compression::Lz4),
    };
    let bytes = if !request.batch.is_empty() {
        if !request.records.is_empty() {
            return Err(Status::invalid_argument(
                "give records or a batch, not both",
            ));
        }
        if request.producer_id.is_some() {
            return Err(Status::invalid_argument(
                "producer_id goes with records; a batch carries its producer id in its header",
            ));
        }
        check_size(request.batch.len(), limit)?;
        let batch = ValidBatch::new(request.batch.clone())
            .map_err(|e| Status::invalid_argument(format!("invalid batch: {e}")))?;
        let header = *batch.header();
        if header.control || header.record_count == 0 {
            return Err(Status::invalid_argument(
                "empty batch: a produced batch must hold records",
            ));
        }
        // Stored only if every reader can read it: the records parse, their count is the
        // header's, and compressed records decompress to their declared size, which the topic's
        // message limit bounds before anything is allocated. A batch that passes only the CRC
        // would otherwise poison the partition for every reader after it.
        let records = batch
            .records_within(limit as usize)
            .map_err(|e| Status::invalid_argument(format!("invalid batch: {e}")))?;
        match wanted {
            Some(codec) if codec != header.compression => recompress(&header, &records, codec)?,
            _ => request.batch.clone(),
        }
    } else {
        if request.records.is_empty() {
            return Err(Status::invalid_argument(
                "empty produce request: no records",
            ));
        }
        let now = now_ms();
        let mut builder = BatchBuilder::new(wanted.unwrap_or(Compression::None));
        if let Some(producer) = idempotence(request)? {
            builder = builder.producer(producer);
        }
        for record in &request.records {
            let headers: Vec<(&str, Option<&[u8]>)> = record
                .headers
                .iter()
                .map(|h| (h.key.as_str(), h.value.as_deref()))
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
    check_size(bytes.len(), limit)?;
    let count = BatchHeader::parse(&bytes)
        .map(|h| h.record_count)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok((bytes, count))
}

/// The producer identity of an idempotent `records` request, checked.
fn idempotence(request: &ProduceRequest) -> Result<Option<ProducerInfo>, Status> {
    let Some(producer_id) = request.producer_id else {
        return Ok(None);
    };
    if producer_id < 0 {
        return Err(Status::invalid_argument(format!(
            "producer_id {producer_id} is negative; use the id InitProducer returned"
        )));
    }
    if request.partition.is_none() {
        return Err(Status::invalid_argument(
            "an idempotent request (producer_id) needs a partition: sequences count per partition",
        ));
    }
    let producer_epoch = i16::try_from(request.producer_epoch)
        .ok()
        .filter(|epoch| *epoch >= 0)
        .ok_or_else(|| {
            Status::invalid_argument(format!(
                "producer_epoch {} is outside [0, {}]",
                request.producer_epoch,
                i16::MAX
            ))
        })?;
    if request.base_sequence < 0 {
        return Err(Status::invalid_argument(format!(
            "base_sequence {} is negative; the first request to a partition starts at 0",
            request.base_sequence
        )));
    }
    Ok(Some(ProducerInfo {
        producer_id,
        producer_epoch,
        base_sequence: request.base_sequence,
    }))
}

fn check_size(len: usize, limit: u32) -> Result<(), Status> {
    if len > limit as usize {
        return Err(Status::invalid_argument(format!(
            "batch of {len} bytes exceeds the topic's max.message.bytes limit of {limit} bytes"
        )));
    }
    Ok(())
}

/// The batch of `header` and `records` (checked already) re-encoded with `codec`, keeping its
/// records, timestamps and producer identity.
fn recompress(
    header: &BatchHeader,
    records: &[Record],
    codec: Compression,
) -> Result<Bytes, Status> {
    let mut builder = BatchBuilder::new(codec).producer(ProducerInfo {
        producer_id: header.producer_id,
        producer_epoch: header.producer_epoch,
        base_sequence: header.base_sequence,
    });
    for record in records {
        let headers: Vec<(&str, Option<&[u8]>)> = record
            .headers
            .iter()
            .map(|h| (h.key.as_str(), h.value.as_deref()))
            .collect();
        builder.push(
            record.timestamp,
            record.key.as_deref(),
            record.value.as_deref(),
            &headers,
        );
    }
    builder
        .build()
        .ok_or_else(|| Status::invalid_argument("empty batch: a produced batch must hold records"))
}
