//! The workload: producers and consumers on the bench topics, timed; then the optional backlog.
//!
//! Timeline of the timed run (`--duration` > 0):
//! 1. Producers (one `Producer`, with its own `Client`, per `--producers` and topic) and
//!    consumers (per `--consumers` and topic, each with its own `Client`) are set up: assigned
//!    consumers get partitions `p` with `p mod consumers == i` from offset 0; with `--group`
//!    they join one group per topic and the run waits until every partition is being read.
//! 2. The clock starts: warm-up, then the measurement window of `--duration`. Producers send on
//!    a fixed schedule (`--rate`, split evenly) or as fast as `send` lets them, until the window
//!    ends. A record counts as published in the window when its acknowledgement arrives inside
//!    it, and as consumed when a consumer receives it inside it; latencies are recorded for those.
//! 3. The producers flush; the consumers read on until they have everything below every
//!    partition's high watermark (the *drain*, bounded by `--drain-timeout`), so the totals
//!    compare what was acknowledged with what was read.
//!
//! Publish latency runs from the record's send time — the scheduled time at a fixed rate, so a
//! sender that falls behind is charged for it (no coordinated omission), or the moment of the
//! `send` call at max rate — to its delivery future resolving. End-to-end latency runs from the
//! same time, read from the value, to the consumer's `poll` returning the record.
//!
//! `--backlog BYTES` then (consumers stopped) writes that many bytes at max rate, waits
//! `--settle`, and starts fresh assigned consumers at the offsets where the backlog begins; the
//! drain rate is the backlog's bytes over the time from their start to the last record.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use weir_client::{
    Client, ClientError, Consumer, ConsumerConfig, DeliveryFuture, Producer, ProducerRecord,
    ResetPolicy, Start,
};

use super::Settings;
use super::payload::{Clock, Pool, Values, latency_micros, sent_micros};
use super::progress::{Live, Progress};
use super::stats::{Backlog, Errors, Latency, Report, Throughput, Timed, Totals, Window, seconds};
use crate::produce::AcksArg;

/// Most records one consumer `poll` returns.
const MAX_POLL_RECORDS: usize = 10_000;
/// How long a consumer's `poll` waits for records (also how quickly it notices a stop).
const POLL_TIMEOUT: Duration = Duration::from_millis(100);
/// How long group consumers may take to share out the partitions before the clock starts.
const GROUP_SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the timed workload and the backlog on `topics` (created, with leaders).
pub(crate) async fn run(
    settings: &Settings,
    admin: &Arc<Client>,
    topics: &[String],
    progress: &Progress,
) -> anyhow::Result<Report> {
    let live = Arc::new(Live::default());
    let _watch = progress.watch(Arc::clone(&live));
    let shared = Shared {
        settings,
        admin,
        topics,
        live,
        clock: Clock::new(),
        pool: Pool::new(settings.message_size),
        progress,
    };
    progress.phase("starting producers");
    let mut producers = Vec::new();
    for topic in topics {
        for _ in 0..settings.producers {
            let producer = Producer::new(settings.client()?, settings.producer_config())
                .await
                .context("starting a producer")?;
            producers.push((topic.clone(), producer));
        }
    }
    let mut errors = Errors::default();
    let (mut timed, mut totals) = (None, None);
    if !settings.duration.is_zero() {
        let run = shared.timed(producers).await?;
        producers = run.producers;
        errors.absorb(run.errors);
        timed = Some(run.timed);
        totals = Some(run.totals);
    }
    let backlog = match settings.backlog {
        Some(bytes) => {
            let run = shared.backlog(producers, bytes).await?;
            producers = run.producers;
            errors.absorb(run.errors);
            Some(run.backlog)
        }
        None => None,
    };
    progress.phase("closing producers");
    for (topic, producer) in producers {
        if let Err(err) = producer.close().await {
            errors.publish_error(format!("closing a producer of {topic}: {err}"));
        }
    }
    Ok(Report {
        config: super::config_json(settings, topics),
        setup: super::setup_line(settings),
        timed,
        totals,
        backlog,
        replay: None,
        errors,
    })
}

/// What every phase uses.
struct Shared<'a> {
    settings: &'a Settings,
    admin: &'a Arc<Client>,
    topics: &'a [String],
    live: Arc<Live>,
    clock: Clock,
    pool: Pool,
    progress: &'a Progress,
}

/// The timed run's outcome, with the producers handed back.
struct TimedRun {
    producers: Vec<(String, Producer)>,
    timed: Timed,
    totals: Totals,
    errors: Errors,
}

/// The backlog's outcome, with the producers handed back.
struct BacklogRun {
    producers: Vec<(String, Producer)>,
    backlog: Backlog,
    errors: Errors,
}

/// Consumers running in tasks, and what stops them.
struct Consumers {
    tasks: JoinSet<anyhow::Result<Consumed>>,
    stop: Arc<AtomicBool>,
    /// Notified after every poll that returned records.
    wake: Arc<Notify>,
    /// Partitions each consumer reads now.
    assigned: Vec<Arc<AtomicUsize>>,
}

impl Consumers {
    fn new() -> Self {
        Self {
            tasks: JoinSet::new(),
            stop: Arc::new(AtomicBool::new(false)),
            wake: Arc::new(Notify::new()),
            assigned: Vec::new(),
        }
    }

    /// Stops the consumers and closes them (a group member leaves its group).
    async fn stop(mut self, errors: &mut Errors) -> anyhow::Result<Vec<Consumed>> {
        self.stop.store(true, Ordering::Release);
        let mut out = Vec::new();
        while let Some(done) = self.tasks.join_next().await {
            let mut consumed = done.context("a consumer task failed")??;
            if let Some(consumer) = consumed.consumer.take()
                && let Err(err) = consumer.close().await
            {
                errors.consume_error(format!("closing a consumer: {err}"));
            }
            out.push(consumed);
        }
        Ok(out)
    }
}

impl Shared<'_> {
    fn consumer_config(&self) -> ConsumerConfig {
        ConsumerConfig {
            auto_commit: self.settings.group,
            reset: ResetPolicy::Earliest,
            max_bytes: self.settings.fetch_max_bytes,
            max_poll_records: MAX_POLL_RECORDS,
            poll_timeout: POLL_TIMEOUT,
            client_id: format!("weir bench pid {}", std::process::id()),
            ..ConsumerConfig::default()
        }
    }

    /// The partitions assigned consumer `index` of a topic reads.
    fn share(&self, index: u32) -> Vec<u32> {
        (0..self.settings.partitions)
            .filter(|p| p % self.settings.consumers == index)
            .collect()
    }

    fn spawn_consumer(
        &self,
        consumers: &mut Consumers,
        consumer: Consumer,
        window: &Arc<OnceLock<Window>>,
    ) {
        let assigned = Arc::new(AtomicUsize::new(consumer.assignment().len()));
        consumers.assigned.push(Arc::clone(&assigned));
        consumers.tasks.spawn(consume(ConsumeJob {
            consumer,
            window: Arc::clone(window),
            clock: self.clock,
            live: Arc::clone(&self.live),
            stop: Arc::clone(&consumers.stop),
            wake: Arc::clone(&consumers.wake),
            assigned,
            message_size: self.settings.message_size,
        }));
    }

    /// The high watermark of every partition of the bench topics.
    async fn high_watermarks(&self) -> anyhow::Result<BTreeMap<(String, u32), u64>> {
        let mut out = BTreeMap::new();
        for topic in self.topics {
            for partition in 0..self.settings.partitions {
                let offsets = self
                    .admin
                    .list_offsets(topic, partition, None)
                    .await
                    .with_context(|| {
                        format!("reading the high watermark of {topic}/{partition}")
                    })?;
                out.insert((topic.clone(), partition), offsets.high_watermark);
            }
        }
        Ok(out)
    }

    /// Waits until the consumers have received `target` records more than `base`, at most
    /// `--drain-timeout`; the moment they had, if they did.
    async fn wait_consumed(
        &self,
        consumers: &Consumers,
        base: u64,
        target: u64,
    ) -> Option<Instant> {
        let deadline = Instant::now() + self.settings.drain_timeout;
        loop {
            let consumed = self.live.consumed.load(Ordering::Acquire) - base;
            let now = Instant::now();
            if consumed >= target {
                return Some(now);
            }
            if now >= deadline {
                return None;
            }
            let _ = tokio::time::timeout_at(deadline.into(), consumers.wake.notified()).await;
        }
    }

    /// Starts one producer task per producer; they send until `until`.
    fn spawn_producers(
        &self,
        producers: Vec<(String, Producer)>,
        rate: Option<f64>,
        until: impl Fn(usize) -> Until,
        window: Window,
    ) -> JoinSet<anyhow::Result<Produced>> {
        let start = Instant::now();
        let mut tasks = JoinSet::new();
        for (i, (topic, producer)) in producers.into_iter().enumerate() {
            tasks.spawn(produce(ProduceJob {
                producer,
                topic,
                values: self.pool.values(self.settings.message_size),
                rate,
                start,
                until: until(i),
                window,
                clock: self.clock,
                live: Arc::clone(&self.live),
                message_size: self.settings.message_size,
            }));
        }
        tasks
    }

    async fn timed(&self, producers: Vec<(String, Producer)>) -> anyhow::Result<TimedRun> {
        let settings = self.settings;
        let mut errors = Errors::default();
        // Consumers first, so they read from the first record on.
        let mut consumers = Consumers::new();
        let window_cell = Arc::new(OnceLock::new());
        if settings.consumers > 0 {
            self.progress.phase("starting consumers");
            for topic in self.topics {
                for index in 0..settings.consumers {
                    let client = settings.client()?;
                    let consumer = if settings.group {
                        Consumer::join(
                            client,
                            &format!("{topic}-group"),
                            std::slice::from_ref(topic),
                            self.consumer_config(),
                        )
                        .await
                        .with_context(|| format!("joining the consumer group of {topic}"))?
                    } else {
                        let share = self.share(index);
                        if share.is_empty() {
                            continue;
                        }
                        let mut consumer = Consumer::new(client, self.consumer_config());
                        consumer
                            .assign(topic, &share, Start::Offset(0))
                            .await
                            .with_context(|| format!("assigning {topic} to a consumer"))?;
                        consumer
                    };
                    self.spawn_consumer(&mut consumers, consumer, &window_cell);
                }
            }
            if settings.group {
                self.progress
                    .phase("waiting for the groups to share out the partitions");
                let total = self.topics.len() * settings.partitions as usize;
                let deadline = Instant::now() + GROUP_SETTLE_TIMEOUT;
                loop {
                    let reading: usize = consumers
                        .assigned
                        .iter()
                        .map(|a| a.load(Ordering::Acquire))
                        .sum();
                    if reading >= total {
                        break;
                    }
                    if Instant::now() >= deadline {
                        tracing::warn!(
                            reading,
                            total,
                            "the consumer groups did not share out every partition in time; starting anyway"
                        );
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }

        let start = Instant::now();
        let window = Window {
            from: start + settings.warmup,
            until: start + settings.warmup + settings.duration,
        };
        let _ = window_cell.set(window);
        let count = producers.len();
        let rate = (settings.rate > 0).then(|| settings.rate as f64 / count as f64);
        let mut tasks =
            self.spawn_producers(producers, rate, |_| Until::Time(window.until), window);
        let phases = {
            let progress = self.progress.clone();
            let (warmup, duration) = (settings.warmup, settings.duration);
            tokio::spawn(async move {
                if !warmup.is_zero() {
                    progress.phase(&format!("warm-up ({} s)", warmup.as_secs_f64()));
                    tokio::time::sleep_until(window.from.into()).await;
                }
                progress.phase(&format!("measuring ({} s)", duration.as_secs_f64()));
            })
        };
        let mut produced = Vec::new();
        while let Some(done) = tasks.join_next().await {
            produced.push(done.context("a producer task failed")??);
        }
        phases.abort();

        let mut totals = Totals::default();
        let mut publish_latency = Latency::new()?;
        let mut publish = Throughput {
            seconds: seconds(settings.duration),
            ..Throughput::default()
        };
        let mut producers = Vec::new();
        for p in produced {
            totals.sent += p.sent;
            totals.published += p.tally.acked;
            totals.publish_failed += p.tally.errors.publish;
            publish.messages += p.tally.window_messages;
            publish.bytes += p.tally.window_bytes;
            publish_latency.merge(&p.tally.latency)?;
            errors.absorb(p.tally.errors);
            producers.push((p.topic, p.producer));
        }

        let mut consume = None;
        let mut e2e_latency = Latency::new()?;
        if !consumers.tasks.is_empty() {
            self.progress
                .phase("producers done; consumers reading the rest");
            let drain_start = Instant::now();
            // With acks=all every acknowledged record is committed, so it will be readable
            // even if the high watermark a node reports lags behind it.
            let stored: u64 = self.high_watermarks().await?.values().sum();
            let target = match settings.acks {
                AcksArg::All => stored.max(totals.published),
                AcksArg::Leader | AcksArg::None => stored,
            };
            let drained = self.wait_consumed(&consumers, 0, target).await;
            totals.drained = Some(drained.is_some());
            totals.drain_seconds = drained.map(|at| seconds(at - drain_start));
            let mut through = Throughput {
                seconds: seconds(settings.duration),
                ..Throughput::default()
            };
            let mut consumed_total = 0;
            for c in consumers.stop(&mut errors).await? {
                consumed_total += c.total;
                through.messages += c.window_messages;
                through.bytes += c.window_bytes;
                e2e_latency.merge(&c.latency)?;
                errors.absorb(c.errors);
            }
            totals.consumed = Some(consumed_total);
            consume = Some(through);
        }
        Ok(TimedRun {
            producers,
            timed: Timed {
                publish,
                publish_latency: publish_latency.summary(),
                consume,
                e2e_latency: e2e_latency.summary(),
            },
            totals,
            errors,
        })
    }

    async fn backlog(
        &self,
        producers: Vec<(String, Producer)>,
        bytes: u64,
    ) -> anyhow::Result<BacklogRun> {
        let settings = self.settings;
        let mut errors = Errors::default();
        let before = self.high_watermarks().await?;
        let size = settings.message_size as u64;
        let messages = (bytes / size).max(1);
        let count = producers.len() as u64;
        self.progress.phase(&format!(
            "writing a backlog of {} MB (consumers stopped)",
            bytes / 1_000_000
        ));
        let start = Instant::now();
        let mut tasks = self.spawn_producers(
            producers,
            None,
            |i| {
                let extra = u64::from((i as u64) < messages % count);
                Until::Messages(messages / count + extra)
            },
            Window::never(),
        );
        let mut write = Throughput::default();
        let mut producers = Vec::new();
        while let Some(done) = tasks.join_next().await {
            let p = done.context("a producer task failed")??;
            write.messages += p.tally.acked;
            write.bytes += p.tally.acked_bytes;
            errors.absorb(p.tally.errors);
            producers.push((p.topic, p.producer));
        }
        write.seconds = seconds(start.elapsed());
        let after = self.high_watermarks().await?;
        let target: u64 = after
            .iter()
            .map(|(tp, hwm)| hwm.saturating_sub(before.get(tp).copied().unwrap_or(0)))
            .sum();

        if !settings.settle.is_zero() {
            self.progress.phase("settling");
            tokio::time::sleep(settings.settle).await;
        }
        // Clients connected and metadata cached before the clock starts; assigning starts the
        // fetchers, so that is the start.
        let mut ready = Vec::new();
        for topic in self.topics {
            for index in 0..settings.consumers {
                let share = self.share(index);
                if share.is_empty() {
                    continue;
                }
                let client = settings.client()?;
                for &partition in &share {
                    client
                        .list_offsets(topic, partition, None)
                        .await
                        .with_context(|| {
                            format!("connecting to the leader of {topic}/{partition}")
                        })?;
                }
                ready.push((topic, share, client));
            }
        }
        self.progress.phase("consumers draining the backlog");
        let base = self.live.consumed.load(Ordering::Acquire);
        let mut consumers = Consumers::new();
        let start = Instant::now();
        for (topic, share, client) in ready {
            let mut consumer = Consumer::new(client, self.consumer_config());
            for partition in share {
                let from = before
                    .get(&(topic.clone(), partition))
                    .copied()
                    .unwrap_or(0);
                consumer
                    .assign(topic, &[partition], Start::Offset(from))
                    .await
                    .with_context(|| format!("assigning {topic}/{partition} to a consumer"))?;
            }
            self.spawn_consumer(&mut consumers, consumer, &Arc::new(OnceLock::new()));
        }
        let drained = self.wait_consumed(&consumers, base, target).await;
        let end = drained.unwrap_or_else(Instant::now);
        let mut drain = Throughput {
            seconds: seconds(end - start),
            ..Throughput::default()
        };
        for c in consumers.stop(&mut errors).await? {
            drain.messages += c.total;
            drain.bytes += c.total_bytes;
            errors.absorb(c.errors);
        }
        Ok(BacklogRun {
            producers,
            backlog: Backlog {
                write,
                drain,
                drained: drained.is_some(),
            },
            errors,
        })
    }
}

/// When a producer stops sending.
#[derive(Debug, Clone, Copy)]
enum Until {
    /// When its next send time is at or past this.
    Time(Instant),
    /// After this many records.
    Messages(u64),
}

struct ProduceJob {
    producer: Producer,
    topic: String,
    values: Values,
    /// Messages per second of this producer (`None`: as fast as possible).
    rate: Option<f64>,
    /// The schedule's origin.
    start: Instant,
    until: Until,
    window: Window,
    clock: Clock,
    live: Arc<Live>,
    message_size: usize,
}

/// One producer's outcome.
struct Produced {
    topic: String,
    producer: Producer,
    /// Records `send` accepted.
    sent: u64,
    /// Its acknowledgements, with the sender's own errors added to the tally's.
    tally: Tally,
}

/// Sends records per the job's schedule, then flushes; acknowledgements are tallied by a task
/// of their own, as they arrive.
async fn produce(job: ProduceJob) -> anyhow::Result<Produced> {
    let ProduceJob {
        producer,
        topic,
        mut values,
        rate,
        start,
        until,
        window,
        clock,
        live,
        message_size,
    } = job;
    let (tx, rx) = mpsc::unbounded_channel();
    let tally = tokio::spawn(tally(rx, window, Arc::clone(&live), message_size as u64));
    let mut errors = Errors::default();
    let mut sent = 0u64;
    let mut n = 0u64;
    loop {
        let scheduled = match rate {
            Some(rate) => start + Duration::from_secs_f64(n as f64 / rate),
            None => Instant::now(),
        };
        match until {
            Until::Time(end) if scheduled >= end => break,
            Until::Messages(limit) if n >= limit => break,
            _ => {}
        }
        if rate.is_some() {
            if scheduled > Instant::now() {
                tokio::time::sleep_until(scheduled.into()).await;
            }
        } else if n % 256 == 255 {
            // `send` does not wait while the buffer has room: let other tasks run.
            tokio::task::yield_now().await;
        }
        n += 1;
        let value = values.next(clock.micros(scheduled));
        match producer.send(&topic, ProducerRecord::new(value)).await {
            Ok(delivery) => {
                sent += 1;
                // The tally ends only after this sender is dropped.
                let _ = tx.send((delivery, scheduled));
            }
            Err(err) => {
                Live::add(&live.errors, 1);
                let closed = matches!(err, ClientError::Closed(_));
                errors.publish_error(format!("sending to {topic}: {err}"));
                if closed {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    drop(tx);
    if let Err(err) = producer.flush().await {
        errors.publish_error(format!("flushing a producer of {topic}: {err}"));
    }
    let mut tally = tally.await.context("the acknowledgement tally failed")??;
    errors.absorb(tally.errors);
    tally.errors = errors;
    Ok(Produced {
        topic,
        producer,
        sent,
        tally,
    })
}

/// A producer's acknowledgements: all of them, and those inside the measured window.
struct Tally {
    acked: u64,
    acked_bytes: u64,
    window_messages: u64,
    window_bytes: u64,
    latency: Latency,
    errors: Errors,
}

/// Awaits delivery futures as they resolve (in any order) and records each acknowledgement.
async fn tally(
    mut rx: mpsc::UnboundedReceiver<(DeliveryFuture, Instant)>,
    window: Window,
    live: Arc<Live>,
    size: u64,
) -> anyhow::Result<Tally> {
    let mut out = Tally {
        acked: 0,
        acked_bytes: 0,
        window_messages: 0,
        window_bytes: 0,
        latency: Latency::new()?,
        errors: Errors::default(),
    };
    let mut pending = FuturesUnordered::new();
    let mut open = true;
    loop {
        tokio::select! {
            biased;
            Some((result, scheduled)) = pending.next(), if !pending.is_empty() => {
                let now = Instant::now();
                match result {
                    Ok(_) => {
                        out.acked += 1;
                        out.acked_bytes += size;
                        Live::add(&live.published, 1);
                        Live::add(&live.published_bytes, size);
                        if window.contains(now) {
                            out.window_messages += 1;
                            out.window_bytes += size;
                            out.latency.record(micros_between(scheduled, now));
                        }
                    }
                    Err(err) => {
                        Live::add(&live.errors, 1);
                        out.errors.publish_error(format!("delivery failed: {err}"));
                    }
                }
            }
            received = rx.recv(), if open => match received {
                Some((delivery, scheduled)) => {
                    pending.push(wait_delivery(delivery, scheduled));
                    while let Ok((delivery, scheduled)) = rx.try_recv() {
                        pending.push(wait_delivery(delivery, scheduled));
                    }
                }
                None => open = false,
            },
            else => break,
        }
    }
    Ok(out)
}

async fn wait_delivery(
    delivery: DeliveryFuture,
    scheduled: Instant,
) -> (Result<weir_client::RecordMetadata, ClientError>, Instant) {
    (delivery.await, scheduled)
}

fn micros_between(from: Instant, to: Instant) -> u64 {
    u64::try_from(to.saturating_duration_since(from).as_micros()).unwrap_or(u64::MAX)
}

struct ConsumeJob {
    consumer: Consumer,
    /// Set when the clock starts (the timed run's consumers start before it).
    window: Arc<OnceLock<Window>>,
    clock: Clock,
    live: Arc<Live>,
    stop: Arc<AtomicBool>,
    wake: Arc<Notify>,
    assigned: Arc<AtomicUsize>,
    message_size: usize,
}

/// One consumer's outcome.
struct Consumed {
    /// Handed back to be closed (`None` once closed).
    consumer: Option<Consumer>,
    /// Records received, and their value bytes.
    total: u64,
    total_bytes: u64,
    /// Received inside the window.
    window_messages: u64,
    window_bytes: u64,
    latency: Latency,
    errors: Errors,
}

/// Polls until told to stop, counting and timing what arrives.
async fn consume(mut job: ConsumeJob) -> anyhow::Result<Consumed> {
    let mut consumed = Consumed::new(None)?;
    while !job.stop.load(Ordering::Acquire) {
        poll_once(&mut job, &mut consumed).await;
    }
    consumed.consumer = Some(job.consumer);
    Ok(consumed)
}

/// One poll, with what it returned recorded.
async fn poll_once(job: &mut ConsumeJob, out: &mut Consumed) {
    match job.consumer.poll_records(MAX_POLL_RECORDS).await {
        Ok(records) => {
            job.assigned
                .store(job.consumer.assignment().len(), Ordering::Release);
            if records.is_empty() {
                return;
            }
            let now = Instant::now();
            let now_us = job.clock.micros(now);
            let counted = job.window.get().is_some_and(|w| w.contains(now));
            let mut bytes = 0u64;
            for record in &records {
                let value = record.value.as_deref().unwrap_or_default();
                bytes += value.len() as u64;
                if value.len() != job.message_size {
                    Live::add(&job.live.errors, 1);
                    out.errors.consume_error(format!(
                        "{}/{} offset {}: a value of {} bytes, not --message-size {}",
                        record.topic,
                        record.partition,
                        record.offset,
                        value.len(),
                        job.message_size
                    ));
                }
                if counted {
                    out.window_messages += 1;
                    out.window_bytes += value.len() as u64;
                    if let Some(sent_us) = sent_micros(value) {
                        out.latency.record(latency_micros(sent_us, now_us));
                    }
                }
            }
            let n = records.len() as u64;
            out.total += n;
            out.total_bytes += bytes;
            Live::add(&job.live.consumed_bytes, bytes);
            // Last: the drain waits on this count.
            job.live.consumed.fetch_add(n, Ordering::AcqRel);
            job.wake.notify_one();
        }
        Err(err) => {
            Live::add(&job.live.errors, 1);
            out.errors.consume_error(format!("poll: {err}"));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Consumed {
    fn new(consumer: Option<Consumer>) -> anyhow::Result<Self> {
        Ok(Self {
            consumer,
            total: 0,
            total_bytes: 0,
            window_messages: 0,
            window_bytes: 0,
            latency: Latency::new()?,
            errors: Errors::default(),
        })
    }
}
