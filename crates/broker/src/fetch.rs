//! The read path of `weir.v1.Broker`: `Fetch` (long poll), `Subscribe` (a stream of fetches) and
//! `ListOffsets`, served by any replica of the partition on this node (committed records only,
//! below the high watermark) or forwarded through the [`Router`].
//!
//! Invariants: a read never returns a record above the high watermark; a start position that
//! needs the leader's view (earliest, latest, by time) is answered by a confirmed leader.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Status};
use tracing::Instrument;
use weir_format::retry::RetryPolicy;
use weir_proto::v1::{
    FetchRequest, FetchResponse, FetchedRecord, Header, ListOffsetsRequest, ListOffsetsResponse,
    StartFrom, SubscribeRequest,
};

use crate::limits::{NodeLimits, Slot};
use crate::metrics::BrokerMetrics;
use weir_controller::security::Operation;

use crate::auth::Resource;
use crate::quota::{Kind, throttle_ms};
use crate::router::{Hops, Route, Router, forward_hops, forwarded, relayed};
use crate::status::from_storage;

/// Longest long poll of a fetch.
const MAX_FETCH_WAIT_MS: u32 = 30_000;
/// The long poll of each fetch behind a Subscribe stream.
const SUBSCRIBE_POLL_MS: u32 = 5_000;

pub(crate) type SubscribeResponse =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<FetchResponse, Status>> + Send + 'static>>;

/// Default and largest fetch size.
const DEFAULT_FETCH_BYTES: usize = 1 << 20;
const MAX_FETCH_BYTES: usize = 64 << 20;

/// Reads of one node.
#[derive(Debug, Clone)]
pub(crate) struct ReadPath {
    pub(crate) router: Router,
    pub(crate) metrics: Arc<BrokerMetrics>,
    /// The node's budget of Subscribe streams.
    pub(crate) limits: NodeLimits,
}

impl ReadPath {
    /// The offset a read starting `from` begins at: `offset` as given, or the log start, the
    /// high watermark, or the first offset at `timestamp_ms`, as the leader answers them.
    pub(crate) async fn start_offset(
        &self,
        topic: &str,
        partition: u32,
        from: StartFrom,
        offset: u64,
        timestamp_ms: i64,
        hops: &Hops,
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
        let hops = &forward_hops(&request);
        self.router.authorize(
            &request,
            Operation::Read,
            Resource::Topic(&request.get_ref().topic),
        )?;
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
            .router
            .read_route(&request.topic, request.partition, hops)
            .await?
        {
            Route::Local(replica) => replica,
            Route::Forward(mut client) => {
                return Ok(client
                    .fetch(forwarded(request, hops))
                    .await
                    .map_err(relayed)?
                    .into_inner());
            }
        };
        let max_bytes = match request.max_bytes as usize {
            0 => DEFAULT_FETCH_BYTES,
            n => n.min(MAX_FETCH_BYTES),
        };
        let log = &replica.group;
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
                self.router.confirmed_leader(&replica).await?
            } else {
                replica.group.is_leader()
            };
            if !confirmed {
                let mut client = self.router.leader_client(&replica, hops)?;
                return Ok(client
                    .fetch(forwarded(request, hops))
                    .await
                    .map_err(relayed)?
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
                .read(request.offset, max_bytes, high_watermark)
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
                    throttle_time_ms: 0,
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
            throttle_time_ms: 0,
        })
    }

    pub(crate) async fn list_offsets_inner(
        &self,
        request: Request<ListOffsetsRequest>,
        hops: &Hops,
    ) -> Result<ListOffsetsResponse, Status> {
        let request = request.into_inner();
        let replica = match self
            .router
            .read_route(&request.topic, request.partition, hops)
            .await?
        {
            Route::Local(replica) => replica,
            Route::Forward(mut client) => {
                return Ok(client
                    .list_offsets(forwarded(request, hops))
                    .await
                    .map_err(relayed)?
                    .into_inner());
            }
        };
        // The high watermark ("latest") is the leader's to tell, confirmed with a quorum: a
        // follower's may lag, and so may that of a node that only believes it leads.
        if !self.router.confirmed_leader(&replica).await? {
            let mut client = self.router.leader_client(&replica, hops)?;
            return Ok(client
                .list_offsets(forwarded(request, hops))
                .await
                .map_err(relayed)?
                .into_inner());
        }
        let log = &replica.group;
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
    /// channel of two, so the task waits while the client does not take what was sent. The task
    /// holds `slot` (of the node's Subscribe budget) until it ends with the stream.
    pub(crate) fn subscribe_inner(
        &self,
        request: Request<SubscribeRequest>,
        hops: &Hops,
        slot: Slot,
    ) -> SubscribeResponse {
        let request = request.into_inner();
        let (sender, receiver) = mpsc::channel::<Result<FetchResponse, Status>>(2);
        let this = self.clone();
        let hops = hops.clone();
        let span =
            tracing::info_span!("subscribe", topic = %request.topic, partition = request.partition);
        tokio::spawn(
            async move {
                let _slot = slot;
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
                            &hops,
                        )
                        .await
                    }
                    Err(status) => Err(status),
                };
                // Waits between attempts while leadership moves: the one retry policy, never
                // shorter than a RetryInfo hint in the answer.
                let mut backoff = RetryPolicy::REQUEST.backoff();
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
                        Ok(mut response) => {
                            backoff.reset();
                            let next = response.next_offset;
                            this.metrics
                                .fetched_records
                                .inc_by(response.records.len() as u64);
                            // Each message is charged like a Fetch answer; a throttled one
                            // says so, and the next fetch waits the throttle out.
                            let bytes = prost::Message::encoded_len(&response) as u64;
                            let throttle = this.router.quotas.charge(&hops, Kind::Fetch, bytes);
                            response.throttle_time_ms = throttle_ms(throttle);
                            if sender.send(Ok(response)).await.is_err() {
                                return;
                            }
                            if let Some(throttle) = throttle {
                                this.router.quotas.hold(throttle).await;
                            }
                            Ok(next)
                        }
                        // Leadership moving or a node restarting: the stream rides it out.
                        Err(status)
                            if status.code() == tonic::Code::Unavailable
                                || status.code() == tonic::Code::FailedPrecondition =>
                        {
                            tracing::debug!(message = status.message(), "subscribe retrying");
                            let hint = tonic_types::StatusExt::get_details_retry_info(&status)
                                .and_then(|info| info.retry_delay);
                            tokio::time::sleep(backoff.next_delay(hint)).await;
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
