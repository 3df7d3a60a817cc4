//! Prometheus metrics of a node, served as text on `GET /metrics` at `metrics_addr`.
//!
//! Counters of the request paths live in [`BrokerMetrics`] and are bumped by the services; the
//! state an operator graphs per partition (high watermark, log end and start offsets, size, term,
//! leadership, storage activity) is read from the running groups at scrape time, so it is never
//! stale and costs nothing between scrapes.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use weir_controller::{Controller, Partitions};

/// What the metrics show of one consumer group coordinated on this node.
#[derive(Debug)]
pub(crate) struct GroupMetrics {
    pub(crate) name: String,
    pub(crate) members: usize,
    pub(crate) committed: Vec<((String, u32), u64)>,
}

/// Where the metrics read the consumer groups from (the group coordinator implements it).
pub(crate) trait GroupSummaries: Send + Sync + 'static {
    /// The groups coordinated here now.
    fn summary(&self) -> Vec<GroupMetrics>;
}

/// Labels of a request counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    /// `ok` or the gRPC code name.
    pub(crate) result: String,
}

/// Labels of a consumer-group request counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct GroupRequestLabels {
    pub(crate) rpc: &'static str,
    /// `ok` or the gRPC code name.
    pub(crate) result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabels {
    group: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommittedLabels {
    group: String,
    topic: String,
    partition: u32,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    topic: String,
    partition: u32,
}

/// Request counters of one node.
#[derive(Debug, Default)]
pub(crate) struct BrokerMetrics {
    pub(crate) produce_requests: Family<RequestLabels, Counter>,
    pub(crate) produced_records: Counter,
    pub(crate) produced_bytes: Counter,
    pub(crate) fetch_requests: Family<RequestLabels, Counter>,
    pub(crate) fetched_records: Counter,
    pub(crate) forwarded_requests: Counter,
    pub(crate) group_requests: Family<GroupRequestLabels, Counter>,
    /// Answers held back by a rate quota, by the kind of quota that decided it.
    pub(crate) throttled_responses: Family<crate::quota::ThrottleLabels, Counter>,
    /// Time answers were held back by rate quotas, by kind.
    pub(crate) throttle_seconds:
        Family<crate::quota::ThrottleLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    /// `acks=none` writes running in the background (bounded by `limits::ACKS_NONE_WRITES`).
    pub(crate) acks_none_writes: Gauge,
    /// Subscribe streams open (bounded by `limits.subscribe_streams`).
    pub(crate) subscribe_streams: Gauge,
    /// ProduceStream requests refused for naming more partitions than a stream may write to.
    pub(crate) stream_lanes_refused: Counter,
}

impl BrokerMetrics {
    /// Counts one request of `family` with its outcome.
    pub(crate) fn count<T>(
        family: &Family<RequestLabels, Counter>,
        result: &Result<T, tonic::Status>,
    ) {
        let result = match result {
            Ok(_) => "ok".to_string(),
            Err(status) => format!("{:?}", status.code()),
        };
        family.get_or_create(&RequestLabels { result }).inc();
    }

    /// Counts one consumer-group request with its outcome.
    pub(crate) fn count_group<T>(&self, rpc: &'static str, result: &Result<T, tonic::Status>) {
        let result = match result {
            Ok(_) => "ok".to_string(),
            Err(status) => format!("{:?}", status.code()),
        };
        self.group_requests
            .get_or_create(&GroupRequestLabels { rpc, result })
            .inc();
    }
}

fn register_requests(registry: &mut Registry, metrics: &BrokerMetrics) {
    registry.register(
        "weir_produce_requests",
        "Produce requests answered, by result",
        metrics.produce_requests.clone(),
    );
    registry.register(
        "weir_produced_records",
        "Records appended through this node",
        metrics.produced_records.clone(),
    );
    registry.register(
        "weir_produced_bytes",
        "Batch bytes appended through this node",
        metrics.produced_bytes.clone(),
    );
    registry.register(
        "weir_fetch_requests",
        "Fetch requests answered, by result",
        metrics.fetch_requests.clone(),
    );
    registry.register(
        "weir_fetched_records",
        "Records returned by fetches",
        metrics.fetched_records.clone(),
    );
    registry.register(
        "weir_forwarded_requests",
        "Client requests forwarded to another node",
        metrics.forwarded_requests.clone(),
    );
    registry.register(
        "weir_group_requests",
        "Consumer-group requests answered, by call and result",
        metrics.group_requests.clone(),
    );
    registry.register(
        "weir_throttled_responses",
        "Answers held back because the caller (user or tenant) was over a rate quota, by the \
         kind of quota that decided (produce, fetch, request)",
        metrics.throttled_responses.clone(),
    );
    registry.register(
        "weir_throttle_seconds",
        "Time answers were held back by rate quotas, by kind (produce, fetch, request)",
        metrics.throttle_seconds.clone(),
    );
    registry.register(
        "weir_acks_none_writes_in_flight",
        "acks=none writes running in the background (at most 1024; more requests wait)",
        metrics.acks_none_writes.clone(),
    );
    registry.register(
        "weir_subscribe_streams",
        "Subscribe streams open on this node (at most limits.subscribe_streams)",
        metrics.subscribe_streams.clone(),
    );
    registry.register(
        "weir_stream_lanes_refused",
        "ProduceStream requests refused for a partition past the stream's 64",
        metrics.stream_lanes_refused.clone(),
    );
}

fn gauge_family(registry: &mut Registry, name: &str, help: &str) -> Family<PartitionLabels, Gauge> {
    let family = Family::<PartitionLabels, Gauge>::default();
    registry.register(name, help, family.clone());
    family
}

fn as_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The text exposition of every metric of the node, read now.
pub(crate) fn render(
    metrics: &BrokerMetrics,
    controller: &Controller,
    partitions: &Partitions,
    coordinator: &dyn GroupSummaries,
) -> String {
    let mut registry = Registry::default();
    register_requests(&mut registry, metrics);
    let members = Family::<GroupLabels, Gauge>::default();
    registry.register(
        "weir_group_members",
        "Live members of each consumer group this node coordinates",
        members.clone(),
    );
    let committed = Family::<CommittedLabels, Gauge>::default();
    registry.register(
        "weir_group_committed_offset",
        "Committed offset of each partition of the consumer groups this node coordinates \
         (lag = weir_partition_high_watermark - this)",
        committed.clone(),
    );
    for group in coordinator.summary() {
        members
            .get_or_create(&GroupLabels {
                group: group.name.clone(),
            })
            .set(as_i64(group.members as u64));
        for ((topic, partition), offset) in group.committed {
            committed
                .get_or_create(&CommittedLabels {
                    group: group.name.clone(),
                    topic,
                    partition,
                })
                .set(as_i64(offset));
        }
    }
    let high_watermark = gauge_family(
        &mut registry,
        "weir_partition_high_watermark",
        "Offset after the last committed record",
    );
    let log_end = gauge_family(
        &mut registry,
        "weir_partition_log_end_offset",
        "Offset the next record will take on this replica",
    );
    let log_start = gauge_family(
        &mut registry,
        "weir_partition_log_start_offset",
        "Oldest offset still stored on this replica",
    );
    let size = gauge_family(
        &mut registry,
        "weir_partition_size_bytes",
        "Bytes of segments",
    );
    let leader = gauge_family(
        &mut registry,
        "weir_partition_is_leader",
        "1 when this node leads the partition",
    );
    let term = gauge_family(
        &mut registry,
        "weir_partition_raft_term",
        "Current Raft term",
    );
    let appended = gauge_family(
        &mut registry,
        "weir_partition_appended_bytes",
        "Bytes appended to this replica's log since it opened",
    );
    let syncs = gauge_family(
        &mut registry,
        "weir_partition_syncs",
        "fdatasync calls of this replica's log since it opened (group commit)",
    );
    for replica in partitions.all() {
        let labels = PartitionLabels {
            topic: replica.topic.clone(),
            partition: replica.partition,
        };
        let group = &replica.group;
        high_watermark
            .get_or_create(&labels)
            .set(as_i64(group.progress().borrow().high_watermark));
        if let Ok(bounds) = group.bounds() {
            log_end
                .get_or_create(&labels)
                .set(as_i64(bounds.next_offset));
            log_start
                .get_or_create(&labels)
                .set(as_i64(bounds.log_start_offset));
            size.get_or_create(&labels).set(as_i64(bounds.size_bytes));
        }
        leader
            .get_or_create(&labels)
            .set(i64::from(group.is_leader()));
        term.get_or_create(&labels).set(as_i64(group.term()));
        let log_metrics = group.log_metrics();
        appended
            .get_or_create(&labels)
            .set(as_i64(log_metrics.appended_bytes));
        syncs.get_or_create(&labels).set(as_i64(log_metrics.syncs));
    }
    let controller_leader = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
    controller_leader.set(i64::from(controller.is_leader()));
    registry.register(
        "weir_controller_is_leader",
        "1 when this node leads the controller group",
        controller_leader,
    );
    let brokers = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
    brokers.set(i64::try_from(controller.metadata().brokers.len()).unwrap_or(i64::MAX));
    registry.register("weir_brokers", "Brokers in the cluster metadata", brokers);
    let alive = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
    alive.set(i64::try_from(controller.alive_brokers().len()).unwrap_or(i64::MAX));
    registry.register(
        "weir_brokers_alive",
        "Brokers this node heard from recently",
        alive,
    );
    let mut text = String::new();
    if let Err(err) = encode(&mut text, &registry) {
        tracing::warn!(error = %err, "encoding metrics");
    }
    text
}

/// Serves `GET /metrics` on `listener` until `stop` fires.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<BrokerMetrics>,
    controller: Arc<Controller>,
    partitions: Arc<Partitions>,
    coordinator: Arc<dyn GroupSummaries>,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let text = render(&metrics, &controller, &partitions, coordinator.as_ref());
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    text,
                )
            }
        }),
    );
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = stop.await;
        })
        .await;
    if let Err(err) = result {
        tracing::error!(error = %err, "metrics server failed");
    }
}
