//! The bounds on what one client, connection or request can make a node hold: the HTTP/2 and gRPC
//! settings of each listener ([`server`]), the request size of the client services, and the
//! node-wide budgets of background work ([`NodeLimits`]: `acks=none` writes, Subscribe streams).
//! `docs/api.md` ("Limits") lists every value.
//!
//! Invariants: every client listener bounds streams and in-flight requests per connection, the
//! size of a request, and drops peers that stop answering HTTP/2 pings; work a request leaves
//! behind (an `acks=none` write, a Subscribe task, a ProduceStream lane) is counted against a
//! fixed budget — when the budget is spent a request waits (`acks=none`) or is refused with a
//! status naming the limit, never spawns unbounded tasks.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use weir_controller::metadata::MAX_MESSAGE_BYTES_LIMIT;

use crate::metrics::BrokerMetrics;
use crate::router::Listener;

/// Concurrent HTTP/2 streams (calls, streaming ones included) per connection on the external
/// listener, which serves only clients. A client's further calls wait on its side until one ends.
pub(crate) const CLIENT_MAX_STREAMS: u32 = 256;

/// Concurrent HTTP/2 streams per connection on the internal listener. Higher than
/// [`CLIENT_MAX_STREAMS`] because a peer multiplexes on one connection every Raft RPC of every
/// group it leads here and every call it forwards for its own clients (a caught-up subscriber on
/// a follower forwards a long poll to the leader), and streams past the limit queue on the peer's
/// side — Raft heartbeats behind long polls.
pub(crate) const INTERNAL_MAX_STREAMS: u32 = 4096;

/// Requests per connection whose handler runs at once (external listener); further ones wait
/// for one to finish (backpressure, not an error). Streaming calls count until they answer with
/// their stream, so open streams are bounded by [`CLIENT_MAX_STREAMS`] instead.
pub(crate) const CLIENT_MAX_IN_FLIGHT: usize = 256;

/// Requests per connection whose handler runs at once on the internal listener: as many as it
/// allows streams, for the reason given at [`INTERNAL_MAX_STREAMS`].
pub(crate) const INTERNAL_MAX_IN_FLIGHT: usize = INTERNAL_MAX_STREAMS as usize;

/// Largest request the client services (Broker, Admin, Groups, Security) decode, on both
/// listeners: a produce request carries at most one batch of the topic's `max.message.bytes`
/// (itself at most 64 MiB), plus 4 MiB for its other fields and the protobuf framing of a
/// `records` request. A larger request is refused by the decoder (OUT_OF_RANGE, "decoded message
/// length too large") before its body is buffered. The peer service keeps
/// [`weir_format::wire::MAX_MESSAGE_BYTES`] (Raft entries and snapshots).
pub(crate) const CLIENT_MAX_REQUEST_BYTES: usize = MAX_MESSAGE_BYTES_LIMIT as usize + (4 << 20);

// A batch of the largest topic limit fits a client request, which is smaller than a peer's.
const _: () = assert!(
    CLIENT_MAX_REQUEST_BYTES > MAX_MESSAGE_BYTES_LIMIT as usize
        && CLIENT_MAX_REQUEST_BYTES < weir_format::wire::MAX_MESSAGE_BYTES
);

/// Longest interval between HTTP/2 keepalive pings the server sends on a connection it has read
/// nothing from; shorter when the idle timeout is (see [`keepalive_interval`]).
pub(crate) const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// How long a keepalive ping may go unanswered before the connection is closed: a dead peer
/// (its host gone, a network partition) is dropped after at most interval + this.
pub(crate) const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Writes of `acks=none` requests (answered before they are written) running at once on a node.
/// When all are taken a further `acks=none` request waits for one before it is answered, so a
/// client that sends faster than the node writes is slowed down instead of piling up tasks.
pub(crate) const ACKS_NONE_WRITES: usize = 1024;

/// Partitions (lanes) one ProduceStream may write to. A request for a further partition is
/// answered on the stream with INVALID_ARGUMENT naming the limit; the stream goes on.
pub(crate) const STREAM_LANES: usize = 64;

/// The interval of the server's HTTP/2 keepalive pings on connections idle for at most
/// `idle_timeout`: a third of it (at most [`HTTP2_KEEPALIVE_INTERVAL`]), so a live peer answers
/// (its ping ACK is read) well before the listener's idle timeout would close the connection.
/// Open streams that carry no data for a while (a Subscribe at the end of its partition, a
/// forwarded long poll) thereby keep their connection.
pub(crate) fn keepalive_interval(idle_timeout: Duration) -> Duration {
    (idle_timeout / 3).min(HTTP2_KEEPALIVE_INTERVAL)
}

/// A gRPC server builder with the bounds of listener `which`.
pub(crate) fn server(which: Listener, idle_timeout: Duration) -> tonic::transport::Server {
    let (streams, in_flight) = match which {
        Listener::External | Listener::Kafka => (CLIENT_MAX_STREAMS, CLIENT_MAX_IN_FLIGHT),
        Listener::Internal => (INTERNAL_MAX_STREAMS, INTERNAL_MAX_IN_FLIGHT),
    };
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .max_concurrent_streams(streams)
        .concurrency_limit_per_connection(in_flight)
        .http2_keepalive_interval(Some(keepalive_interval(idle_timeout)))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
}

/// The node-wide budgets, shared by the services of every listener. What is taken shows in the
/// gauges `weir_acks_none_writes_in_flight` and `weir_subscribe_streams`.
#[derive(Debug, Clone)]
pub(crate) struct NodeLimits {
    acks_none: Arc<Semaphore>,
    acks_none_gauge: Gauge,
    subscribes: Arc<Semaphore>,
    subscribes_gauge: Gauge,
    /// The `limits.subscribe_streams` setting, for messages.
    subscribe_limit: usize,
}

/// One unit of a budget, given back (and uncounted) when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    _permit: OwnedSemaphorePermit,
    gauge: Gauge,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit, gauge: &Gauge) -> Self {
        gauge.inc();
        Self {
            _permit: permit,
            gauge: gauge.clone(),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

impl NodeLimits {
    /// Budgets of [`ACKS_NONE_WRITES`] background writes and `subscribe_streams` open Subscribe
    /// streams, counted in `metrics`.
    pub(crate) fn new(subscribe_streams: usize, metrics: &BrokerMetrics) -> Self {
        Self {
            acks_none: Arc::new(Semaphore::new(ACKS_NONE_WRITES)),
            acks_none_gauge: metrics.acks_none_writes.clone(),
            subscribes: Arc::new(Semaphore::new(subscribe_streams)),
            subscribes_gauge: metrics.subscribe_streams.clone(),
            subscribe_limit: subscribe_streams,
        }
    }

    /// A slot for one `acks=none` background write, waiting while all are taken.
    pub(crate) async fn acks_none_write(&self) -> Slot {
        // The semaphore is never closed, so acquiring only waits.
        loop {
            if let Ok(permit) = Arc::clone(&self.acks_none).acquire_owned().await {
                return Slot::new(permit, &self.acks_none_gauge);
            }
        }
    }

    /// A slot for one Subscribe stream, or RESOURCE_EXHAUSTED naming the limit.
    pub(crate) fn subscribe_stream(&self) -> Result<Slot, tonic::Status> {
        match Arc::clone(&self.subscribes).try_acquire_owned() {
            Ok(permit) => Ok(Slot::new(permit, &self.subscribes_gauge)),
            Err(_) => Err(tonic::Status::resource_exhausted(format!(
                "this node serves at most {} Subscribe streams at once \
                 (limits.subscribe_streams); close one or subscribe through another node",
                self.subscribe_limit
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_pings_come_well_within_the_idle_timeout() {
        assert_eq!(
            keepalive_interval(Duration::from_secs(600)),
            HTTP2_KEEPALIVE_INTERVAL
        );
        assert_eq!(
            keepalive_interval(Duration::from_millis(1500)),
            Duration::from_millis(500)
        );
    }

    #[tokio::test]
    async fn budgets_count_what_is_taken_and_refuse_past_the_limit() {
        let metrics = BrokerMetrics::default();
        let limits = NodeLimits::new(2, &metrics);
        let a = limits.subscribe_stream().expect("first");
        let _b = limits.subscribe_stream().expect("second");
        assert_eq!(metrics.subscribe_streams.get(), 2);
        let refused = limits.subscribe_stream().expect_err("third");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("at most 2"), "{refused:?}");
        drop(a);
        assert_eq!(metrics.subscribe_streams.get(), 1);
        let _c = limits
            .subscribe_stream()
            .expect("a slot given back is free again");
        assert_eq!(metrics.subscribe_streams.get(), 2);
        let write = limits.acks_none_write().await;
        assert_eq!(metrics.acks_none_writes.get(), 1);
        drop(write);
        assert_eq!(metrics.acks_none_writes.get(), 0);
    }
}
