//! Quotas on one node: the rate quotas (throttling) and the `retained.bytes` hard limit.
//!
//! Owns the throttle buckets of this node, the per-call throttle record ([`ThrottleSlot`]), the
//! [`Throttled`] service wrapper that charges every call of Broker, Admin and Groups and holds
//! throttled answers back, the cluster-wide view of retained bytes ([`track_usage`], fed by the
//! internal `weir.peer.v1.Usage` service) and the retained-bytes check of produce requests.
//!
//! Rate quotas (`produce.bytes.per.sec`, `fetch.bytes.per.sec`, `requests.per.sec` of
//! `weir_controller::security::QuotaLimits`) are enforced per node, as Kafka's per-broker quotas
//! are: each node charges the calls clients send to it. A call is charged to its caller's user
//! entity and, when the principal belongs to a tenant, to the tenant's entity; each (entity, kind)
//! with a limit has a [`Bucket`]. Charged: 1 request per RPC (and per message of a ProduceStream),
//! the produce request's encoded size, the fetch answer's encoded size (each message of a
//! Subscribe too). The call's throttle is the largest delay of the buckets it was charged to; the
//! node holds the answer back that long (at most [`MAX_HOLD`]), says so (`throttle_time_ms`, the
//! `weir-throttle-ms` header) and never fails it. The Kafka listener charges the same buckets:
//! 1 request per Kafka request (after authentication), and the bytes of the `weir.v1` produce
//! and fetch calls each Kafka request becomes; its answer carries the largest throttle in
//! `throttle_time_ms` and is held back as long (the connection reads nothing meanwhile).
//!
//! Invariants:
//! - A call is charged once, on the node the client called: never when it arrives forwarded
//!   (hop count > 0), never for anonymous callers (security off) or nodes.
//! - Limits are read from the replicated metadata on every charge, so a changed quota applies to
//!   the next call; bucket state is this node's memory only, and bounded: a bucket with no debt
//!   left is equal to a new one, so idle buckets are dropped, and at most [`MAX_BUCKETS`] are
//!   kept.
//! - Long-run rate: a bucket is a virtual clock (the time at which everything charged so far is
//!   paid for at the quota's rate), so however many calls are in flight, the rate a caller gets
//!   converges to its quota; at most one second of quota is credited to an idle caller (the
//!   burst).
//! - Retained bytes are the sum, over a tenant's topics (its prefix) or a user's (the topics it
//!   created), of each partition's leader log size, as the leaders reported it at most a few
//!   seconds ago ([`USAGE_EVERY`]): a produce may pass the limit by what arrives in that time;
//!   the next one after the view catches up fails with RESOURCE_EXHAUSTED, nothing written.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use tonic::server::NamedService;
use tonic::{Request, Response, Status};
use weir_controller::security::{QuotaEntity, QuotaLimits, principal_user};
use weir_controller::{Controller, Metadata, Partitions, TopicRecord};
use weir_format::wire::{FORWARDED_HEADER, THROTTLE_HEADER};
use weir_proto::peer::usage_client::UsageClient;
use weir_proto::peer::usage_server::Usage;
use weir_proto::peer::{LeaderUsageRequest, LeaderUsageResponse, PartitionUsage};
use weir_raft::{NodeId, PeerTransport};

use crate::auth::{Caller, Principal};
use crate::metrics::BrokerMetrics;
use crate::router::Hops;

/// Credit an idle caller gets: this much time's worth of its quota, sent at once.
pub(crate) const BURST: Duration = Duration::from_secs(1);
/// Longest a node holds one answer back (the rest of a larger throttle is still reported, and
/// the debt stays in the bucket). Below the clients' per-attempt timeout (20 s).
pub(crate) const MAX_HOLD: Duration = Duration::from_secs(5);
/// Largest debt a bucket records (keeps the virtual clock in range whatever one call costs).
const MAX_DEBT: Duration = Duration::from_secs(3600);
/// Most buckets kept; past it, idle ones are dropped, then the least indebted.
pub(crate) const MAX_BUCKETS: usize = 10_000;
/// How often retained bytes are gathered from the partition leaders.
pub(crate) const USAGE_EVERY: Duration = Duration::from_secs(2);
/// How long one node's report is used when it does not answer the next time.
const USAGE_STALE: Duration = Duration::from_secs(10);

/// What a bucket limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    /// `produce.bytes.per.sec`.
    Produce,
    /// `fetch.bytes.per.sec`.
    Fetch,
    /// `requests.per.sec`.
    Request,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Produce => "produce",
            Self::Fetch => "fetch",
            Self::Request => "request",
        }
    }

    /// The quota's rate of this kind, if it sets one.
    fn rate(self, limits: &QuotaLimits) -> Option<u64> {
        match self {
            Self::Produce => limits.produce_bytes_per_sec,
            Self::Fetch => limits.fetch_bytes_per_sec,
            Self::Request => limits.requests_per_sec,
        }
    }
}

/// Labels of the throttle metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ThrottleLabels {
    /// `produce`, `fetch` or `request`: the quota that decided the throttle.
    pub(crate) kind: &'static str,
}

/// A throttle: how long, and which kind of quota decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Throttle {
    pub(crate) delay: Duration,
    pub(crate) kind: Kind,
}

impl Throttle {
    /// The larger of two throttles.
    fn max(a: Option<Self>, b: Option<Self>) -> Option<Self> {
        match (a, b) {
            (Some(a), Some(b)) => Some(if b.delay > a.delay { b } else { a }),
            (a, b) => a.or(b),
        }
    }

    /// The delay in whole milliseconds (rounded up, so a throttle is never reported as 0).
    pub(crate) fn millis(&self) -> u32 {
        let micros = self.delay.as_micros();
        u32::try_from(micros.div_ceil(1000)).unwrap_or(u32::MAX)
    }
}

/// The throttle of `slot` in ms, 0 without one.
pub(crate) fn throttle_ms(throttle: Option<Throttle>) -> u32 {
    throttle.map_or(0, |t| t.millis())
}

// ---------------------------------------------------------------------------------------------
// The bucket

/// A token bucket kept as a virtual clock: `paid_until` is when everything charged so far is
/// paid for at the quota's rate. Charging moves it forward by `amount / rate`, starting no
/// earlier than `now - BURST` (so an idle caller has at most one second of credit); the delay is
/// how far it is ahead of now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bucket {
    paid_until: Instant,
}

impl Bucket {
    /// A bucket with full credit at `now`.
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            paid_until: now.checked_sub(BURST).unwrap_or(now),
        }
    }

    /// Charges `amount` at `rate` per second (> 0) at `now`; the delay the caller should wait
    /// (zero while it has credit).
    pub(crate) fn charge(&mut self, amount: u64, rate: u64, now: Instant) -> Duration {
        let floor = now.checked_sub(BURST).unwrap_or(now);
        let start = self.paid_until.max(floor);
        let cost = Duration::try_from_secs_f64(amount as f64 / rate.max(1) as f64)
            .unwrap_or(MAX_DEBT)
            .min(MAX_DEBT);
        let ceiling = now + MAX_DEBT;
        self.paid_until = (start + cost).min(ceiling);
        self.paid_until.saturating_duration_since(now)
    }

    /// Whether the bucket has its full credit back (then it equals a new one).
    pub(crate) fn idle(&self, now: Instant) -> bool {
        self.paid_until <= now.checked_sub(BURST).unwrap_or(now)
    }
}

/// The buckets of a node, by (entity, kind), bounded (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Buckets {
    buckets: HashMap<(QuotaEntity, Kind), Bucket>,
}

impl Buckets {
    /// Charges `amount` to `entity`'s bucket of `kind` at `rate`; the delay.
    pub(crate) fn charge(
        &mut self,
        entity: &QuotaEntity,
        kind: Kind,
        amount: u64,
        rate: u64,
        now: Instant,
    ) -> Duration {
        if !self.buckets.contains_key(&(entity.clone(), kind)) && self.buckets.len() >= MAX_BUCKETS
        {
            self.evict(now);
        }
        self.buckets
            .entry((entity.clone(), kind))
            .or_insert_with(|| Bucket::new(now))
            .charge(amount, rate, now)
    }

    /// Drops idle buckets; if that is not enough, the least indebted half.
    fn evict(&mut self, now: Instant) {
        self.buckets.retain(|_, bucket| !bucket.idle(now));
        if self.buckets.len() >= MAX_BUCKETS {
            let mut by_debt: Vec<Instant> = self.buckets.values().map(|b| b.paid_until).collect();
            by_debt.sort_unstable();
            let cut = by_debt[by_debt.len() / 2];
            self.buckets.retain(|_, bucket| bucket.paid_until > cut);
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.buckets.len()
    }
}

// ---------------------------------------------------------------------------------------------
// Charging

/// Why a produce is refused by a hard quota (RESOURCE_EXHAUSTED, nothing written).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum QuotaError {
    #[error(
        "{entity} may retain at most {max} bytes; it retains {current} (quota retained.bytes; \
         usage is counted every few seconds: it succeeds again once retention or deleted topics \
         bring it below the limit, or the quota is raised)"
    )]
    RetainedBytes {
        /// `tenant team-a` or `user alice`.
        entity: String,
        max: u64,
        current: u64,
    },
}

/// The quotas of one node: its throttle buckets and its view of retained bytes. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Quotas {
    controller: Arc<Controller>,
    metrics: Arc<BrokerMetrics>,
    buckets: Arc<Mutex<Buckets>>,
    usage: Arc<RwLock<UsageView>>,
}

impl Quotas {
    pub(crate) fn new(controller: Arc<Controller>, metrics: Arc<BrokerMetrics>) -> Self {
        Self {
            controller,
            metrics,
            buckets: Arc::new(Mutex::new(Buckets::default())),
            usage: Arc::new(RwLock::new(UsageView::default())),
        }
    }

    /// Charges `amount` of `kind` to the caller of a call that took `hops` forwards so far; the
    /// throttle it earned, if any (see the module docs for who is charged).
    pub(crate) fn charge(&self, hops: &Hops, kind: Kind, amount: u64) -> Option<Throttle> {
        self.charge_principal(&hops.caller.principal, hops.count, kind, amount)
    }

    pub(crate) fn charge_principal(
        &self,
        principal: &Principal,
        hops: u32,
        kind: Kind,
        amount: u64,
    ) -> Option<Throttle> {
        let Principal::User(principal) = principal else {
            return None;
        };
        if hops > 0 {
            return None;
        }
        let metadata = self.controller.metadata();
        let limited = limited_entities(&metadata, principal, kind);
        if limited.is_empty() {
            return None;
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let delay = limited
            .iter()
            .map(|(entity, rate)| buckets.charge(entity, kind, amount, *rate, now))
            .max()
            .unwrap_or_default();
        (!delay.is_zero()).then_some(Throttle { delay, kind })
    }

    /// Holds a throttled answer back (at most [`MAX_HOLD`]) and counts it in the metrics.
    pub(crate) async fn hold(&self, throttle: Throttle) {
        let labels = ThrottleLabels {
            kind: throttle.kind.as_str(),
        };
        self.metrics
            .throttled_responses
            .get_or_create(&labels)
            .inc();
        let held = throttle.delay.min(MAX_HOLD);
        self.metrics
            .throttle_seconds
            .get_or_create(&labels)
            .inc_by(held.as_secs_f64());
        tracing::debug!(
            kind = labels.kind,
            delay_ms = throttle.millis(),
            "throttled"
        );
        tokio::time::sleep(held).await;
    }

    /// Refuses a produce to `topic` when its tenant (by prefix) or its creator is at or past a
    /// `retained.bytes` quota.
    pub(crate) fn check_retained(&self, topic: &TopicRecord) -> Result<(), QuotaError> {
        let metadata = self.controller.metadata();
        let security = &metadata.security;
        let mut owners = Vec::new();
        if let Some(tenant) = security.tenant_owning(&topic.name) {
            owners.push((
                QuotaEntity::Tenant(tenant.name.clone()),
                format!("tenant {}", tenant.name),
            ));
        }
        if let Some(user) = topic.created_by.as_deref().and_then(principal_user) {
            owners.push((QuotaEntity::User(user.to_string()), format!("user {user}")));
        }
        let usage = self.usage.read().unwrap_or_else(|e| e.into_inner());
        for (entity, name) in owners {
            let Some(max) = security.quota(&entity).and_then(|q| q.max_retained_bytes) else {
                continue;
            };
            let current = usage.totals.get(&entity).copied().unwrap_or(0);
            if current >= max {
                return Err(QuotaError::RetainedBytes {
                    entity: name,
                    max,
                    current,
                });
            }
        }
        Ok(())
    }
}

/// The entities charged for a call of `principal` (`User:<name>`) with a limit of `kind`: the
/// user and its tenant, with their rates.
fn limited_entities(metadata: &Metadata, principal: &str, kind: Kind) -> Vec<(QuotaEntity, u64)> {
    let security = &metadata.security;
    let mut entities = Vec::new();
    if let Some(user) = principal_user(principal) {
        let entity = QuotaEntity::User(user.to_string());
        if let Some(rate) = security.quota(&entity).and_then(|q| kind.rate(q)) {
            entities.push((entity, rate));
        }
    }
    if let Some(tenant) = security.tenant_of(principal) {
        let entity = QuotaEntity::Tenant(tenant.name.clone());
        if let Some(rate) = security.quota(&entity).and_then(|q| kind.rate(q)) {
            entities.push((entity, rate));
        }
    }
    entities
}

// ---------------------------------------------------------------------------------------------
// The per-call record and the service wrapper

/// The throttle of one call so far, shared by the [`Throttled`] wrapper (which charges the
/// request and holds the answer back) and the handler (which charges bytes and reports the
/// throttle in the answer). A request extension.
#[derive(Debug, Clone, Default)]
pub(crate) struct ThrottleSlot(Arc<Mutex<Option<Throttle>>>);

impl ThrottleSlot {
    /// The slot of `request` (a new, unshared one when the request came without: calls made
    /// inside the node).
    pub(crate) fn of<T>(request: &Request<T>) -> Self {
        request
            .extensions()
            .get::<ThrottleSlot>()
            .cloned()
            .unwrap_or_default()
    }

    /// Records `throttle` if it is longer than the one recorded.
    pub(crate) fn raise(&self, throttle: Option<Throttle>) {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *slot = Throttle::max(*slot, throttle);
    }

    /// The longest throttle recorded.
    pub(crate) fn get(&self) -> Option<Throttle> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Wraps a public service (inside authentication, so the call's [`Caller`] is known): charges
/// each call one request, gives the handler the call's [`ThrottleSlot`], and holds a throttled
/// answer back by the slot's throttle, marking it with the `weir-throttle-ms` header.
#[derive(Debug, Clone)]
pub(crate) struct Throttled<S> {
    inner: S,
    quotas: Quotas,
}

impl<S> Throttled<S> {
    pub(crate) fn new(inner: S, quotas: Quotas) -> Self {
        Self { inner, quotas }
    }
}

impl<S: NamedService> NamedService for Throttled<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Throttled<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let hops: u32 = request
            .headers()
            .get(FORWARDED_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let slot = ThrottleSlot::default();
        if let Some(caller) = request.extensions().get::<Caller>() {
            slot.raise(
                self.quotas
                    .charge_principal(&caller.principal, hops, Kind::Request, 1),
            );
        }
        request.extensions_mut().insert(slot.clone());
        // The ready service answers this call; a fresh clone waits for the next one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let quotas = self.quotas.clone();
        Box::pin(async move {
            let mut response = inner.call(request).await?;
            if let Some(throttle) = slot.get() {
                quotas.hold(throttle).await;
                response
                    .headers_mut()
                    .insert(THROTTLE_HEADER, http::HeaderValue::from(throttle.millis()));
            }
            Ok(response)
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Retained bytes

/// What this node knows of the cluster's retained bytes.
#[derive(Debug, Default)]
struct UsageView {
    /// Each node's last report: when it came, and the partitions it led.
    reports: HashMap<NodeId, (Instant, Vec<PartitionUsage>)>,
    /// Retained bytes per entity (tenant: its prefix's topics; user: the topics it created).
    totals: HashMap<QuotaEntity, u64>,
}

/// The sizes of the partitions this node leads.
pub(crate) fn local_usage(partitions: &Partitions) -> Vec<PartitionUsage> {
    partitions
        .all()
        .into_iter()
        .filter(|replica| replica.group.is_leader())
        .filter_map(|replica| {
            let bounds = replica.group.bounds().ok()?;
            Some(PartitionUsage {
                topic: replica.topic.clone(),
                topic_id: replica.topic_id,
                partition: replica.partition,
                size_bytes: bounds.size_bytes,
            })
        })
        .collect()
}

/// Retained bytes per entity from the nodes' reports: per partition of a current topic, the
/// largest report (two nodes may both have led it lately), summed per topic, then per owner.
pub(crate) fn totals<'a>(
    metadata: &Metadata,
    reports: impl IntoIterator<Item = &'a PartitionUsage>,
) -> HashMap<QuotaEntity, u64> {
    let mut partitions: HashMap<(&str, u32), u64> = HashMap::new();
    for report in reports {
        let current = metadata
            .topics
            .get(&report.topic)
            .is_some_and(|t| t.id == report.topic_id);
        if current {
            let size = partitions
                .entry((report.topic.as_str(), report.partition))
                .or_default();
            *size = (*size).max(report.size_bytes);
        }
    }
    let mut topics: HashMap<&str, u64> = HashMap::new();
    for ((topic, _), size) in partitions {
        *topics.entry(topic).or_default() += size;
    }
    let mut totals: HashMap<QuotaEntity, u64> = HashMap::new();
    for (name, size) in topics {
        let Some(topic) = metadata.topics.get(name) else {
            continue;
        };
        if let Some(tenant) = metadata.security.tenant_owning(name) {
            *totals
                .entry(QuotaEntity::Tenant(tenant.name.clone()))
                .or_default() += size;
        }
        if let Some(user) = topic.created_by.as_deref().and_then(principal_user) {
            *totals
                .entry(QuotaEntity::User(user.to_string()))
                .or_default() += size;
        }
    }
    totals
}

/// Gathers the partition leaders' log sizes from every node every [`USAGE_EVERY`] and keeps the
/// retained bytes per entity up to date — only while some quota sets `retained.bytes`.
pub(crate) async fn track_usage(
    quotas: Quotas,
    partitions: Arc<Partitions>,
    transport: Arc<PeerTransport>,
) {
    let mut tick = tokio::time::interval(USAGE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let metadata = quotas.controller.metadata();
        let wanted = metadata
            .security
            .quotas()
            .any(|(_, limits)| limits.max_retained_bytes.is_some());
        if !wanted {
            let mut usage = quotas.usage.write().unwrap_or_else(|e| e.into_inner());
            *usage = UsageView::default();
            continue;
        }
        let own = quotas.controller.node_id();
        let asks = metadata
            .brokers
            .values()
            .filter(|broker| broker.id != own)
            .map(|broker| {
                let transport = &transport;
                async move {
                    let answer = async {
                        let channel = transport.channel(&broker.addr).map_err(|e| e.to_string())?;
                        let answer = tokio::time::timeout(
                            USAGE_EVERY,
                            UsageClient::new(channel).leader_usage(LeaderUsageRequest {}),
                        )
                        .await
                        .map_err(|_| "no answer in time".to_string())?
                        .map_err(|status| status.message().to_string())?;
                        Ok::<_, String>(answer.into_inner().partitions)
                    }
                    .await;
                    (broker.id, answer)
                }
            });
        let answers = futures::future::join_all(asks).await;
        let now = Instant::now();
        let mut usage = quotas.usage.write().unwrap_or_else(|e| e.into_inner());
        usage.reports.insert(own, (now, local_usage(&partitions)));
        for (node, answer) in answers {
            match answer {
                Ok(report) => {
                    usage.reports.insert(node, (now, report));
                }
                Err(err) => {
                    tracing::debug!(node, error = %err, "no usage report");
                }
            }
        }
        usage.reports.retain(|node, (at, _)| {
            metadata.brokers.contains_key(node) && now.duration_since(*at) < USAGE_STALE
        });
        usage.totals = totals(
            &metadata,
            usage.reports.values().flat_map(|(_, report)| report.iter()),
        );
    }
}

/// `weir.peer.v1.Usage`: this node's leader log sizes, for other nodes (with TLS, nodes only).
#[derive(Debug, Clone)]
pub(crate) struct UsageService {
    pub(crate) partitions: Arc<Partitions>,
}

#[tonic::async_trait]
impl Usage for UsageService {
    async fn leader_usage(
        &self,
        _request: Request<LeaderUsageRequest>,
    ) -> Result<Response<LeaderUsageResponse>, Status> {
        Ok(Response::new(LeaderUsageResponse {
            partitions: local_usage(&self.partitions),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn an_idle_bucket_lets_a_second_of_quota_through_then_delays() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut bucket = Bucket::new(t0);
        // 1000 bytes/s: the first 1000 bytes are credit.
        assert_eq!(bucket.charge(600, 1000, t0), Duration::ZERO);
        assert_eq!(bucket.charge(400, 1000, t0), Duration::ZERO);
        assert_eq!(bucket.charge(250, 1000, t0), 250 * MS);
        assert_eq!(bucket.charge(250, 1000, t0), 500 * MS);
        // Time pays the debt back.
        assert_eq!(bucket.charge(0, 1000, t0 + 500 * MS), Duration::ZERO);
        assert!(!bucket.idle(t0 + 500 * MS));
        assert!(bucket.idle(t0 + 1500 * MS));
        // Credit never exceeds one second's worth, however long it idled.
        let later = t0 + Duration::from_secs(100);
        assert_eq!(bucket.charge(1000, 1000, later), Duration::ZERO);
        assert_eq!(bucket.charge(100, 1000, later), 100 * MS);
    }

    #[test]
    fn the_rate_converges_to_the_quota_whatever_the_concurrency() {
        // A client with `in_flight` calls of 100 bytes each, each sent again as soon as its
        // delayed answer comes back, against 10_000 bytes/s: over 60 s it gets 60 s of quota
        // plus the one-second burst, whatever the concurrency.
        for in_flight in [1usize, 4, 32] {
            let start = Instant::now() + Duration::from_secs(10);
            let mut bucket = Bucket::new(start);
            let mut next: Vec<Instant> = vec![start; in_flight];
            let end = start + Duration::from_secs(60);
            let mut sent = 0u64;
            loop {
                let (i, at) = next
                    .iter()
                    .copied()
                    .enumerate()
                    .min_by_key(|(_, at)| *at)
                    .unwrap();
                if at >= end {
                    break;
                }
                let delay = bucket.charge(100, 10_000, at);
                sent += 100;
                next[i] = at + delay + MS;
            }
            let expected = 61 * 10_000;
            assert!(
                sent.abs_diff(expected) <= 100 * in_flight as u64 + 1_000,
                "{in_flight} in flight: {sent} bytes, expected about {expected}"
            );
        }
    }

    #[test]
    fn one_huge_charge_is_capped_and_a_lower_rate_applies_at_once() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut bucket = Bucket::new(t0);
        assert_eq!(bucket.charge(u64::MAX, 1, t0), MAX_DEBT - BURST);
        let mut bucket = Bucket::new(t0);
        assert_eq!(bucket.charge(2000, 1000, t0), Duration::from_secs(1));
        // The next charge uses the rate in force now.
        assert_eq!(bucket.charge(10, 10, t0), Duration::from_secs(2));
    }

    #[test]
    fn idle_buckets_are_evicted_first_and_the_map_stays_bounded() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut buckets = Buckets::default();
        let user = |i: usize| QuotaEntity::User(format!("u{i}"));
        // Half of them in debt, half idle.
        for i in 0..MAX_BUCKETS {
            let amount = if i % 2 == 0 { 5000 } else { 0 };
            buckets.charge(&user(i), Kind::Produce, amount, 1000, t0);
        }
        assert_eq!(buckets.len(), MAX_BUCKETS);
        buckets.charge(&user(MAX_BUCKETS), Kind::Produce, 1, 1000, t0 + 2 * BURST);
        assert!(buckets.len() <= MAX_BUCKETS / 2 + 1, "{}", buckets.len());
        // The indebted ones kept their debt.
        assert!(buckets.charge(&user(0), Kind::Produce, 0, 1000, t0 + 2 * BURST) > Duration::ZERO);
        // Everyone indebted: half go.
        let mut buckets = Buckets::default();
        for i in 0..MAX_BUCKETS {
            buckets.charge(&user(i), Kind::Fetch, 2000 + i as u64, 1000, t0);
        }
        buckets.charge(&user(MAX_BUCKETS), Kind::Fetch, 1, 1000, t0);
        assert!(buckets.len() <= MAX_BUCKETS / 2 + 1, "{}", buckets.len());
    }

    #[test]
    fn throttles_take_the_longest_and_round_up() {
        let short = Throttle {
            delay: 3 * MS,
            kind: Kind::Request,
        };
        let long = Throttle {
            delay: Duration::from_micros(7_001),
            kind: Kind::Produce,
        };
        assert_eq!(Throttle::max(Some(short), Some(long)), Some(long));
        assert_eq!(Throttle::max(None, Some(short)), Some(short));
        assert_eq!(long.millis(), 8);
        let slot = ThrottleSlot::default();
        slot.raise(None);
        assert_eq!(throttle_ms(slot.get()), 0);
        slot.raise(Some(long));
        slot.raise(Some(short));
        assert_eq!(slot.get(), Some(long));
    }

    #[test]
    fn retained_bytes_sum_per_tenant_and_creator_from_current_topics() {
        use weir_controller::security::TenantRecord;
        use weir_controller::{MetadataCommand, TopicConfig};
        let mut metadata = Metadata::default();
        metadata
            .apply(MetadataCommand::RegisterBroker {
                id: 1,
                addr: "127.0.0.1:1".into(),
                external_addr: None,
                rack: None,
            })
            .unwrap();
        metadata
            .apply(MetadataCommand::UpsertTenant(TenantRecord {
                name: "team-a".into(),
                prefix: "team-a.".into(),
                principals: Default::default(),
            }))
            .unwrap();
        let mut create = |name: &str, by: Option<&str>| {
            let command = match by {
                Some(by) => MetadataCommand::CreateUserTopic {
                    created_by: by.into(),
                    name: name.into(),
                    replication_factor: 1,
                    config: TopicConfig::default(),
                    assignment: vec![vec![1], vec![1]],
                },
                None => MetadataCommand::CreateTopic {
                    name: name.into(),
                    replication_factor: 1,
                    config: TopicConfig::default(),
                    internal: false,
                    assignment: vec![vec![1], vec![1]],
                },
            };
            metadata.apply(command).unwrap()
        };
        let a1 = create("team-a.one", Some("User:alice"));
        let a2 = create("team-a.two", None);
        let b = create("bob-topic", Some("User:bob"));
        let usage = |topic: &str, topic_id: u64, partition: u32, size_bytes: u64| PartitionUsage {
            topic: topic.into(),
            topic_id,
            partition,
            size_bytes,
        };
        let reports = [
            usage("team-a.one", a1, 0, 100),
            usage("team-a.one", a1, 1, 10),
            // Two nodes report partition 1 (leadership moved): the larger counts.
            usage("team-a.one", a1, 1, 30),
            usage("team-a.two", a2, 0, 1000),
            // An earlier incarnation of the topic: ignored.
            usage("team-a.two", a2 + 100, 1, 5000),
            usage("bob-topic", b, 0, 7),
            usage("gone", 1, 0, 9),
        ];
        let totals = totals(&metadata, &reports);
        assert_eq!(totals[&QuotaEntity::Tenant("team-a".into())], 1130);
        assert_eq!(totals[&QuotaEntity::User("alice".into())], 130);
        assert_eq!(totals[&QuotaEntity::User("bob".into())], 7);
        assert_eq!(totals.len(), 3);
    }

    #[test]
    fn only_users_with_limits_on_the_first_hop_are_charged() {
        use weir_controller::MetadataCommand;
        use weir_controller::security::TenantRecord;
        let mut metadata = Metadata::default();
        metadata
            .apply(MetadataCommand::UpsertTenant(TenantRecord {
                name: "team-a".into(),
                prefix: "team-a.".into(),
                principals: ["User:alice".to_string()].into(),
            }))
            .unwrap();
        metadata
            .apply(MetadataCommand::SetQuota {
                entity: QuotaEntity::Tenant("team-a".into()),
                limits: QuotaLimits::from_pairs([("produce.bytes.per.sec", "10")]).unwrap(),
            })
            .unwrap();
        metadata
            .apply(MetadataCommand::SetQuota {
                entity: QuotaEntity::User("alice".into()),
                limits: QuotaLimits::from_pairs([
                    ("produce.bytes.per.sec", "20"),
                    ("requests.per.sec", "5"),
                ])
                .unwrap(),
            })
            .unwrap();
        let entities = limited_entities(&metadata, "User:alice", Kind::Produce);
        assert_eq!(
            entities,
            vec![
                (QuotaEntity::User("alice".into()), 20),
                (QuotaEntity::Tenant("team-a".into()), 10)
            ]
        );
        assert_eq!(
            limited_entities(&metadata, "User:alice", Kind::Request),
            vec![(QuotaEntity::User("alice".into()), 5)]
        );
        assert!(limited_entities(&metadata, "User:alice", Kind::Fetch).is_empty());
        assert!(limited_entities(&metadata, "User:bob", Kind::Produce).is_empty());
    }
}
