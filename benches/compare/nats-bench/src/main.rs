//! The NATS JetStream side of Weir's comparison benchmark (`benches/compare/run.sh`).
//!
//! `nats-bench run` creates file-backed streams with R replicas on a running nats-server (or
//! cluster), then runs the same workload as `weir bench`: N publishers, each on its own connection,
//! publishing asynchronously (a publish does not wait for its ack; up to `--window` acks are
//! outstanding per publisher, like `nats bench --js --pub N`), optional consumers, a warm-up and a
//! measured period. It reports publish and consume msgs/s and MB/s, publish latency (send to ack)
//! and end-to-end latency (send to receipt by a consumer), as JSON in the shape of
//! `weir bench --json`.
//!
//! `nats-bench summary --weir FILE --nats FILE` prints the two results side by side with ratios.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use async_nats::jetstream::{self, consumer, stream};
use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::sync::{Barrier, Semaphore};

const USAGE: &str = "\
usage:
  nats-bench run [options]
    --servers URLS          comma-separated nats:// URLs (default nats://127.0.0.1:4222)
    --streams N             streams to spread publishers over, one Raft group each (default 1)
    --replicas R            stream replicas (default 1)
    --message-size BYTES    payload size (default 1024)
    --producers N           publishers, one connection each (default 4)
    --consumers N           consumers, one connection each (default 0)
    --rate MSGS             total target publish rate per second, 0 = as fast as possible (default 0)
    --window N              outstanding (unacknowledged) publishes per publisher (default 256)
    --warmup SECS           not measured (default 5)
    --duration SECS         measured (default 20)
    --json                  one JSON object on stdout instead of a table
  nats-bench summary --weir FILE --nats FILE [--label TEXT] [--json]
";

#[derive(Debug, Clone)]
struct RunOpts {
    servers: String,
    streams: usize,
    replicas: usize,
    message_size: usize,
    producers: usize,
    consumers: usize,
    rate: f64,
    window: usize,
    warmup: Duration,
    duration: Duration,
    json: bool,
}

impl Default for RunOpts {
    fn default() -> Self {
        Self {
            servers: "nats://127.0.0.1:4222".into(),
            streams: 1,
            replicas: 1,
            message_size: 1024,
            producers: 4,
            consumers: 0,
            rate: 0.0,
            window: 256,
            warmup: Duration::from_secs(5),
            duration: Duration::from_secs(20),
            json: false,
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("run") => {
            let opts = parse_run(&args[1..])?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(run(opts))
        }
        Some("summary") => summary(&args[1..]),
        _ => {
            eprint!("{USAGE}");
            std::process::exit(2);
        }
    }
}

fn secs(value: &str) -> anyhow::Result<Duration> {
    let v: f64 = value.trim_end_matches('s').parse()?;
    Ok(Duration::from_secs_f64(v))
}

fn parse_run(args: &[String]) -> anyhow::Result<RunOpts> {
    let mut o = RunOpts::default();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--json" {
            o.json = true;
            continue;
        }
        let value = it
            .next()
            .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        let bad = || format!("bad value {value:?} for {flag}");
        match flag.as_str() {
            "--servers" => o.servers = value.clone(),
            "--streams" => o.streams = value.parse().with_context(bad)?,
            "--replicas" => o.replicas = value.parse().with_context(bad)?,
            "--message-size" => o.message_size = value.parse().with_context(bad)?,
            "--producers" => o.producers = value.parse().with_context(bad)?,
            "--consumers" => o.consumers = value.parse().with_context(bad)?,
            "--rate" => o.rate = value.parse().with_context(bad)?,
            "--window" => o.window = value.parse().with_context(bad)?,
            "--warmup" => o.warmup = secs(value).with_context(bad)?,
            "--duration" => o.duration = secs(value).with_context(bad)?,
            _ => bail!("unknown option {flag}\n{USAGE}"),
        }
    }
    if o.streams == 0 || o.producers == 0 || o.window == 0 || o.duration.is_zero() {
        bail!("--streams, --producers, --window and --duration must be positive");
    }
    if o.message_size < 8 {
        bail!("--message-size must be at least 8 (the send time is carried in the payload)");
    }
    Ok(o)
}

fn stream_name(i: usize) -> String {
    format!("WEIRCMP{i}")
}

fn subject(i: usize) -> String {
    format!("weircmp.{i}")
}

async fn connect(servers: &str, name: &str) -> anyhow::Result<async_nats::Client> {
    let urls: Vec<async_nats::ServerAddr> = servers
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing --servers {servers}"))?;
    async_nats::ConnectOptions::new()
        .name(name)
        .connect(urls)
        .await
        .with_context(|| format!("connecting to {servers}"))
}

/// Retries `f` until it succeeds or `limit` has passed (the cluster may still be electing).
async fn retry<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(err) if Instant::now() < deadline => {
                eprintln!("nats-bench: {what}: {err:#}; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(err) => return Err(err.context(format!("{what} (gave up after {limit:?})"))),
        }
    }
}

/// `at` as microseconds since the Unix epoch, from one monotonic base paired once with the wall
/// clock (publishers and consumers are tasks of this process, so they agree exactly).
fn now_micros(at: Instant) -> u64 {
    static BASE: std::sync::OnceLock<(Instant, u64)> = std::sync::OnceLock::new();
    let (base, base_us) = *BASE.get_or_init(|| {
        let us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        (Instant::now(), us)
    });
    base_us + at.saturating_duration_since(base).as_micros() as u64
}

fn new_hist() -> Histogram<u64> {
    // Microseconds, 1 µs to 10 min, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

#[derive(Debug)]
struct Timeline {
    measure_start: Instant,
    measure_end: Instant,
}

impl Timeline {
    fn measured(&self, at: Instant) -> bool {
        at >= self.measure_start && at < self.measure_end
    }
}

#[derive(Debug, Default)]
struct PubResult {
    /// Publishes handed to the client.
    sent: u64,
    /// Acknowledged, over the whole run.
    acked: u64,
    /// Acknowledged inside the measurement window.
    acked_in_window: u64,
    errors: u64,
    first_error: Option<String>,
}

#[derive(Debug, Default)]
struct SubResult {
    /// Received inside the measurement window.
    in_window: u64,
    errors: u64,
    first_error: Option<String>,
}

async fn setup_streams(o: &RunOpts) -> anyhow::Result<(String, String)> {
    let client = retry("connecting", Duration::from_secs(30), || {
        connect(&o.servers, "nats-bench-admin")
    })
    .await?;
    let version = client.server_info().version.clone();
    let js = jetstream::new(client.clone());
    for i in 0..o.streams {
        let name = stream_name(i);
        // A leftover stream from an interrupted run is removed first.
        let _ = js.delete_stream(&name).await;
        let config = stream::Config {
            name: name.clone(),
            subjects: vec![subject(i)],
            storage: stream::StorageType::File,
            num_replicas: o.replicas,
            retention: stream::RetentionPolicy::Limits,
            ..Default::default()
        };
        retry(
            &format!("creating stream {name}"),
            Duration::from_secs(60),
            || {
                let js = js.clone();
                let config = config.clone();
                async move {
                    js.create_stream(config).await?;
                    Ok(())
                }
            },
        )
        .await?;
        // Wait until the stream's Raft group has a leader and, for R>1, every replica is
        // current, so the measured period does not include the group's start.
        retry(
            &format!("waiting for stream {name} to be ready"),
            Duration::from_secs(60),
            || {
                let js = js.clone();
                let name = name.clone();
                let replicas = o.replicas;
                async move {
                    let info = js.get_stream(&name).await?.get_info().await?;
                    if replicas > 1 {
                        let cluster = info.cluster.context("no cluster info yet")?;
                        let leader = cluster.leader.context("no leader yet")?;
                        let current = cluster.replicas.iter().filter(|p| p.current).count();
                        if current + 1 < replicas {
                            bail!("leader {leader}, {current} current followers");
                        }
                    }
                    Ok(())
                }
            },
        )
        .await?;
        if o.consumers > 0 {
            let stream = js.get_stream(&name).await?;
            stream
                .create_consumer(consumer::pull::Config {
                    durable_name: Some("bench".into()),
                    deliver_policy: consumer::DeliverPolicy::All,
                    ack_policy: consumer::AckPolicy::None,
                    ..Default::default()
                })
                .await
                .with_context(|| format!("creating the consumer on {name}"))?;
        }
    }
    client.flush().await.ok();
    Ok((version, client.server_info().server_name.clone()))
}

async fn cleanup_streams(o: &RunOpts) {
    if let Ok(client) = connect(&o.servers, "nats-bench-admin").await {
        let js = jetstream::new(client);
        for i in 0..o.streams {
            let _ = js.delete_stream(stream_name(i)).await;
        }
    }
}

async fn run(o: RunOpts) -> anyhow::Result<()> {
    let (server_version, _) = setup_streams(&o).await?;

    // Every publisher and consumer connects first; the clock starts once all are ready.
    let parties = o.producers + o.consumers + 1;
    let barrier = Arc::new(Barrier::new(parties));
    let start_at: Arc<std::sync::OnceLock<Arc<Timeline>>> = Arc::new(std::sync::OnceLock::new());
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));

    let mut producers = Vec::new();
    for p in 0..o.producers {
        let o = o.clone();
        let barrier = barrier.clone();
        let start_at = start_at.clone();
        producers.push(tokio::spawn(async move {
            let client = connect(&o.servers, &format!("nats-bench-pub-{p}")).await?;
            let js = jetstream::ContextBuilder::new()
                .max_ack_inflight(o.window + 16)
                .backpressure_on_inflight(true)
                .timeout(Duration::from_secs(30))
                .build(client.clone());
            barrier.wait().await;
            let timeline = start_at.get().context("timeline")?.clone();
            publisher(p, &o, &js, &timeline).await
        }));
    }
    let mut consumers = Vec::new();
    for c in 0..o.consumers {
        let o = o.clone();
        let barrier = barrier.clone();
        let start_at = start_at.clone();
        let stop = stop.clone();
        let received = received.clone();
        consumers.push(tokio::spawn(async move {
            let client = connect(&o.servers, &format!("nats-bench-sub-{c}")).await?;
            let js = jetstream::new(client.clone());
            // Consumer c reads stream c % streams; with fewer consumers than streams, it reads
            // every stream s with s % consumers == c. Consumers on the same stream share its
            // durable pull consumer (each message goes to one of them), like a consumer group.
            let streams: Vec<usize> = if o.consumers >= o.streams {
                vec![c % o.streams]
            } else {
                (0..o.streams).filter(|s| s % o.consumers == c).collect()
            };
            let mut messages = Vec::new();
            for s in streams {
                let consumer: consumer::PullConsumer = js
                    .get_stream(stream_name(s))
                    .await?
                    .get_consumer("bench")
                    .await
                    .map_err(|e| anyhow::anyhow!("getting the consumer: {e}"))?;
                messages.push(
                    consumer
                        .stream()
                        .max_messages_per_batch(1000)
                        .heartbeat(Duration::from_secs(1))
                        .expires(Duration::from_secs(5))
                        .messages()
                        .await?,
                );
            }
            barrier.wait().await;
            let timeline = start_at.get().context("timeline")?.clone();
            subscriber(
                futures::stream::select_all(messages),
                &timeline,
                &stop,
                &received,
            )
            .await
        }));
    }

    let started = Instant::now();
    let measure_start = started + o.warmup;
    let timeline = Arc::new(Timeline {
        measure_start,
        measure_end: measure_start + o.duration,
    });
    start_at
        .set(timeline.clone())
        .map_err(|_| anyhow::anyhow!("timeline set twice"))?;
    barrier.wait().await;
    eprintln!(
        "nats-bench: {} publisher(s), {} consumer(s), {} stream(s) R{}, {} B messages: warm-up {:?}, measuring {:?}",
        o.producers, o.consumers, o.streams, o.replicas, o.message_size, o.warmup, o.duration
    );

    let mut pub_hist = new_hist();
    let mut publish = PubResult::default();
    let mut failures = Vec::new();
    for handle in producers {
        match handle.await? {
            Ok((r, h)) => {
                publish.sent += r.sent;
                publish.acked += r.acked;
                publish.acked_in_window += r.acked_in_window;
                publish.errors += r.errors;
                if publish.first_error.is_none() {
                    publish.first_error = r.first_error;
                }
                pub_hist.add(&h)?;
            }
            Err(err) => failures.push(format!("{err:#}")),
        }
    }
    let producers_done = Instant::now();

    // Like `weir bench`: once the producers stopped, the consumers read everything the streams
    // hold (or give up after the drain timeout); that is `totals.drained`.
    let mut drained = None;
    let mut drain_seconds = None;
    if o.consumers > 0 {
        let stored = stored_messages(&o).await.unwrap_or(publish.acked);
        let deadline = producers_done + DRAIN_TIMEOUT;
        loop {
            if received.load(Ordering::Relaxed) >= stored {
                drained = Some(true);
                drain_seconds = Some(producers_done.elapsed().as_secs_f64());
                break;
            }
            if Instant::now() >= deadline {
                drained = Some(false);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut e2e_hist = new_hist();
    let mut consume = SubResult::default();
    for handle in consumers {
        match tokio::time::timeout(Duration::from_secs(15), handle).await {
            Ok(joined) => match joined? {
                Ok((r, h)) => {
                    consume.in_window += r.in_window;
                    consume.errors += r.errors;
                    if consume.first_error.is_none() {
                        consume.first_error = r.first_error;
                    }
                    e2e_hist.add(&h)?;
                }
                Err(err) => failures.push(format!("{err:#}")),
            },
            Err(_) => failures.push("a consumer did not stop within 15 s".into()),
        }
    }
    cleanup_streams(&o).await;
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }

    let secs = o.duration.as_secs_f64();
    let throughput = |messages: u64| {
        let bytes = messages * o.message_size as u64;
        json!({
            "messages": messages,
            "bytes": bytes,
            "seconds": secs,
            "msgs_per_s": round(messages as f64 / secs, 1),
            "mb_per_s": round(bytes as f64 / 1e6 / secs, 2),
        })
    };
    let mut publish_json = throughput(publish.acked_in_window);
    publish_json["latency_ms"] = latency_json(&pub_hist);
    let consume_json = if o.consumers > 0 {
        let mut v = throughput(consume.in_window);
        v["e2e_latency_ms"] = latency_json(&e2e_hist);
        v
    } else {
        Value::Null
    };
    let total_errors = publish.errors + consume.errors;
    let result = json!({
        "system": "nats-jetstream",
        "server_version": server_version,
        "client": format!("async-nats {ASYNC_NATS_VERSION}"),
        "mode": "workload",
        "config": {
            "servers": o.servers,
            "streams": o.streams,
            "replicas": o.replicas,
            "storage": "file",
            "message_size": o.message_size,
            "producers": o.producers,
            "consumers": o.consumers,
            "rate": o.rate,
            "window": o.window,
            "warmup_s": o.warmup.as_secs_f64(),
            "duration_s": secs,
        },
        "publish": publish_json,
        "consume": consume_json,
        "totals": {
            "sent": publish.sent,
            "published": publish.acked,
            "publish_failed": publish.errors,
            "consumed": (o.consumers > 0).then(|| received.load(Ordering::Relaxed)),
            "drained": drained,
            "drain_seconds": drain_seconds.map(|s| round(s, 6)),
        },
        "errors": {
            "publish": publish.errors,
            "consume": consume.errors,
            "total": total_errors,
            "first": publish.first_error.or(consume.first_error),
        },
    });
    if o.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print_result(&result);
    }
    Ok(())
}

/// How long consumers may take to read everything after the producers stopped.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Messages the streams hold now.
async fn stored_messages(o: &RunOpts) -> anyhow::Result<u64> {
    let client = connect(&o.servers, "nats-bench-admin").await?;
    let js = jetstream::new(client);
    let mut total = 0;
    for i in 0..o.streams {
        total += js
            .get_stream(stream_name(i))
            .await?
            .get_info()
            .await?
            .state
            .messages;
    }
    Ok(total)
}

const ASYNC_NATS_VERSION: &str = env!("ASYNC_NATS_VERSION");

fn round(x: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (x * scale).round() / scale
}

/// Same shape as `weir bench --json`: count, then p50 … mean in milliseconds (null when empty).
fn latency_json(h: &Histogram<u64>) -> Value {
    let ms = |us: f64| (!h.is_empty()).then(|| round(us / 1000.0, 3));
    json!({
        "count": h.len(),
        "p50": ms(h.value_at_quantile(0.50) as f64),
        "p90": ms(h.value_at_quantile(0.90) as f64),
        "p99": ms(h.value_at_quantile(0.99) as f64),
        "p99_9": ms(h.value_at_quantile(0.999) as f64),
        "max": ms(h.max() as f64),
        "mean": ms(h.mean()),
    })
}

/// A message value: the send time (microseconds since the Unix epoch, u64 little-endian, as in
/// `weir bench`) and filler.
fn value(buf: &mut BytesMut, sent_us: u64, filler: &[u8]) -> Bytes {
    buf.put_u64_le(sent_us);
    buf.put_slice(filler);
    buf.split().freeze()
}

/// One publisher: publishes without waiting for acks, keeping at most `window` outstanding. A
/// second task awaits the acks in order (JetStream acknowledges one stream's messages in order)
/// and records latency from the send time — on a fixed-rate schedule (`--rate`), the intended
/// send time, so a stall is not hidden (as `weir bench` does).
async fn publisher(
    p: usize,
    o: &RunOpts,
    js: &jetstream::Context,
    t: &Timeline,
) -> anyhow::Result<(PubResult, Histogram<u64>)> {
    let subject = subject(p % o.streams);
    let window = Arc::new(Semaphore::new(o.window));
    let (tx, mut rx) =
        tokio::sync::mpsc::unbounded_channel::<(Instant, jetstream::context::PublishAckFuture)>();
    let timeline = Timeline {
        measure_start: t.measure_start,
        measure_end: t.measure_end,
    };
    let acker = {
        let window = window.clone();
        tokio::spawn(async move {
            let mut hist = new_hist();
            let mut r = PubResult::default();
            while let Some((sent, ack)) = rx.recv().await {
                let outcome = ack.await;
                let at = Instant::now();
                window.add_permits(1);
                match outcome {
                    Ok(_) => {
                        r.acked += 1;
                        if timeline.measured(at) {
                            r.acked_in_window += 1;
                            let us = at.saturating_duration_since(sent).as_micros() as u64;
                            hist.saturating_record(us.max(1));
                        }
                    }
                    Err(err) => {
                        r.errors += 1;
                        r.first_error.get_or_insert_with(|| err.to_string());
                    }
                }
            }
            (r, hist)
        })
    };

    let per_producer_rate = o.rate / o.producers as f64;
    let started = Instant::now();
    let mut sent: u64 = 0;
    let mut buf = BytesMut::with_capacity(o.message_size * 64);
    // Filler that differs per publisher; NATS 2.9 does not compress, so its content is moot.
    let filler: Vec<u8> = (0..o.message_size - 8)
        .map(|i| (i as u64).wrapping_mul(2654435761).wrapping_add(p as u64) as u8)
        .collect();
    let mut send_errors: u64 = 0;
    let mut first_error = None;
    loop {
        let now = Instant::now();
        if now >= t.measure_end {
            break;
        }
        let due = (per_producer_rate > 0.0)
            .then(|| started + Duration::from_secs_f64(sent as f64 / per_producer_rate));
        if let Some(due) = due
            && due > now
        {
            tokio::time::sleep_until(due.into()).await;
        }
        window.acquire().await?.forget();
        let send_time = due.unwrap_or_else(Instant::now);
        let message = value(&mut buf, now_micros(send_time), &filler);
        match js.publish(subject.clone(), message).await {
            Ok(ack) => {
                sent += 1;
                tx.send((send_time, ack)).ok();
            }
            Err(err) => {
                window.add_permits(1);
                send_errors += 1;
                first_error.get_or_insert_with(|| err.to_string());
            }
        }
        if buf.capacity() < o.message_size {
            buf.reserve(o.message_size * 64);
        }
    }
    drop(tx);
    let (mut r, hist) = acker.await?;
    r.sent = sent;
    r.errors += send_errors;
    if r.first_error.is_none() {
        r.first_error = first_error;
    }
    Ok((r, hist))
}

async fn subscriber<S>(
    mut messages: S,
    t: &Timeline,
    stop: &AtomicBool,
    received: &AtomicU64,
) -> anyhow::Result<(SubResult, Histogram<u64>)>
where
    S: futures::Stream<Item = Result<jetstream::Message, consumer::pull::MessagesError>> + Unpin,
{
    let mut hist = new_hist();
    let mut r = SubResult::default();
    while !stop.load(Ordering::Relaxed) {
        let next = match tokio::time::timeout(Duration::from_millis(100), messages.next()).await {
            Ok(Some(next)) => next,
            Ok(None) => break,
            Err(_) => continue,
        };
        let message = match next {
            Ok(message) => message,
            Err(err) => {
                r.errors += 1;
                r.first_error.get_or_insert_with(|| err.to_string());
                continue;
            }
        };
        let at = Instant::now();
        received.fetch_add(1, Ordering::Relaxed);
        if !t.measured(at) {
            continue;
        }
        r.in_window += 1;
        let payload = &message.message.payload;
        if payload.len() >= 8 {
            let sent = u64::from_le_bytes(payload[..8].try_into().unwrap_or([0; 8]));
            let us = now_micros(at).saturating_sub(sent);
            hist.saturating_record(us.max(1));
        }
    }
    Ok((r, hist))
}

fn num(v: &Value, path: &[&str]) -> Option<f64> {
    let mut cur = v;
    for key in path {
        cur = cur.get(key)?;
    }
    cur.as_f64()
}

fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{x:.digits$}"))
}

fn print_result(r: &Value) {
    println!(
        "{} {} ({})",
        r["system"].as_str().unwrap_or("?"),
        r["server_version"].as_str().unwrap_or("?"),
        r["client"].as_str().unwrap_or("?")
    );
    for key in ["publish", "consume"] {
        println!(
            "{key}: {} msgs/s, {} MB/s, {} messages",
            fmt(num(r, &[key, "msgs_per_s"]), 0),
            fmt(num(r, &[key, "mb_per_s"]), 1),
            fmt(num(r, &[key, "messages"]), 0)
        );
    }
    for (name, path) in [
        ("publish latency", ["publish", "latency_ms"]),
        ("end-to-end latency", ["consume", "e2e_latency_ms"]),
    ] {
        let q = |p: &str| fmt(num(r, &[path[0], path[1], p]), 2);
        println!(
            "{name} ms: p50 {} p90 {} p99 {} p99.9 {} max {}",
            q("p50"),
            q("p90"),
            q("p99"),
            q("p99_9"),
            q("max")
        );
    }
    println!("totals: {}", r["totals"]);
    println!("errors: {}", r["errors"]);
}

fn summary(args: &[String]) -> anyhow::Result<()> {
    let mut weir = None;
    let mut nats = None;
    let mut label = String::new();
    let mut as_json = false;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--weir" => weir = it.next().cloned(),
            "--nats" => nats = it.next().cloned(),
            "--label" => label = it.next().cloned().unwrap_or_default(),
            "--json" => as_json = true,
            _ => bail!("unknown option {flag}\n{USAGE}"),
        }
    }
    // A side that was not run (no file) shows as "-".
    let read = |path: Option<String>| -> anyhow::Result<Value> {
        let path = path.context("summary needs --weir FILE and --nats FILE")?;
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).with_context(|| format!("parsing {path}")),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Value::Null),
            Err(err) => Err(err).with_context(|| format!("reading {path}")),
        }
    };
    let w = read(weir)?;
    let n = read(nats)?;
    let rows: [(&str, &[&str], usize); 11] = [
        ("publish msgs/s", &["publish", "msgs_per_s"], 0),
        ("publish MB/s", &["publish", "mb_per_s"], 1),
        ("consume msgs/s", &["consume", "msgs_per_s"], 0),
        ("consume MB/s", &["consume", "mb_per_s"], 1),
        ("publish p50 ms", &["publish", "latency_ms", "p50"], 2),
        ("publish p99 ms", &["publish", "latency_ms", "p99"], 2),
        ("publish p99.9 ms", &["publish", "latency_ms", "p99_9"], 2),
        ("publish max ms", &["publish", "latency_ms", "max"], 2),
        (
            "end-to-end p50 ms",
            &["consume", "e2e_latency_ms", "p50"],
            2,
        ),
        (
            "end-to-end p99 ms",
            &["consume", "e2e_latency_ms", "p99"],
            2,
        ),
        ("errors", &["errors", "total"], 0),
    ];
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    if as_json {
        let mut out = serde_json::Map::new();
        out.insert("label".into(), json!(label));
        for (name, path, _) in rows {
            let (a, b) = (num(&w, path), num(&n, path));
            out.insert(
                name.into(),
                json!({"weir": a, "jetstream": b, "weir_over_jetstream": ratio(a, b).map(|r| round(r, 3))}),
            );
        }
        println!("{}", serde_json::to_string(&Value::Object(out))?);
        return Ok(());
    }
    if !label.is_empty() {
        println!("== {label}");
    }
    println!(
        "{:<20} {:>12} {:>12} {:>16}",
        "", "weir", "jetstream", "weir/jetstream"
    );
    for (name, path, digits) in rows {
        let (a, b) = (num(&w, path), num(&n, path));
        println!(
            "{:<20} {:>12} {:>12} {:>16}",
            name,
            fmt(a, digits),
            fmt(b, digits),
            fmt(ratio(a, b), 2)
        );
    }
    Ok(())
}
