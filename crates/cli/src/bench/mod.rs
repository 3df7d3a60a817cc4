//! `weir bench`: an OpenMessaging-Benchmark-like workload against a running cluster.
//!
//! This module owns the command line (options, their parsing and validation), the run's
//! skeleton — fresh topics, the workload or replay, deleting the topics — and Ctrl-C. The parts:
//!
//! - [`payload`]: the message value (send timestamp + incompressible filler) and the clock both
//!   ends of a measurement read;
//! - [`workload`]: the timed run (warm-up, measurement window, drain) and the backlog drain,
//!   with the producer and consumer tasks;
//! - [`replay`]: `--replay-bytes`, writing N bytes into one partition and timing reading them
//!   back from offset 0;
//! - [`stats`]: latency histograms, counters, and the report (table and JSON);
//! - [`progress`]: the live status line on standard error.
//!
//! Everything the report contains is defined in `benches/README.md` ("weir bench"), which is
//! the reference for the JSON field names; they are stable.

mod payload;
mod progress;
mod replay;
mod stats;
mod workload;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use weir_client::{Client, Compression};

use crate::Brokers;
use crate::produce::AcksArg;

/// Largest batch or message the bench asks for (the server's ceiling for `max.message.bytes`).
const MAX_BATCH_BYTES: u64 = 64 << 20;
/// The topics' default `max.message.bytes`; bigger batches raise it on the bench topics.
const DEFAULT_MAX_MESSAGE_BYTES: u64 = 8 << 20;
/// How long setup calls (metadata, topic creation) retry before the run gives up.
const SETUP_RETRY: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum CompressionArg {
    None,
    Lz4,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ReaderArg {
    /// `weir_client::Consumer` (background long-poll fetcher, records through `poll`).
    Consumer,
    /// `Client::fetch` in a loop, one request at a time, without the consumer machinery; the
    /// broker decodes the records (what a client generated from the proto gets).
    Fetch,
}

/// Options of `weir bench` (sizes take K, M, G suffixes, binary; times are seconds or
/// humantime like `1m30s`).
#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    /// Topics to create (each with its own producers and consumers).
    #[arg(long, default_value_t = 1)]
    topics: u32,
    /// Partitions per topic.
    #[arg(long, default_value_t = 6)]
    partitions: u32,
    /// Replicas per partition (default: 3, or the number of brokers if fewer).
    #[arg(long)]
    replication_factor: Option<u32>,
    /// Bytes per message value (at least 8: the send timestamp).
    #[arg(long, default_value = "1024", value_parser = parse_size)]
    message_size: u64,
    /// Producers per topic, each a `Producer` with its own connections.
    #[arg(long, default_value_t = 1)]
    producers: u32,
    /// Consumers per topic, sharing its partitions (0: no consumers).
    #[arg(long, default_value_t = 1)]
    consumers: u32,
    /// Consumers of a topic join one consumer group (like OMB's subscription) instead of being
    /// assigned its partitions round-robin.
    #[arg(long)]
    group: bool,
    /// Target messages per second over all producers, on a fixed schedule (0: as fast as
    /// possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Warm-up before the measurement window; excluded from every figure.
    #[arg(long, default_value = "5", value_parser = parse_duration)]
    warmup: Duration,
    /// The measurement window (0: no timed run; only --backlog).
    #[arg(long, default_value = "30", value_parser = parse_duration)]
    duration: Duration,
    /// What an acknowledgement means.
    #[arg(long, value_enum, default_value = "all")]
    acks: AcksArg,
    /// Batch compression (the filler is random bytes, so lz4 only costs).
    #[arg(long, value_enum, default_value = "none")]
    compression: CompressionArg,
    /// A batch closes at this many bytes of records (the client's default).
    #[arg(long, default_value = "1M", value_parser = parse_size)]
    batch_size: u64,
    /// How long a batch waits for more records, in milliseconds.
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
    /// Most bytes each producer buffers (waiting or in flight) before `send` waits.
    #[arg(long, default_value = "32M", value_parser = parse_size)]
    buffer_memory: u64,
    /// After the timed run: with consumers stopped, write this many bytes (spread over the
    /// producers), then time the consumers draining them.
    #[arg(long, value_parser = parse_size)]
    backlog: Option<u64>,
    /// Replay mode instead of the workload: write this many value bytes into one partition,
    /// then time reading them all back from offset 0.
    #[arg(long, value_parser = parse_size, conflicts_with_all = ["backlog", "rate", "group"])]
    replay_bytes: Option<u64>,
    /// What reads the replay back.
    #[arg(long, value_enum, default_value = "consumer")]
    replay_reader: ReaderArg,
    /// Most bytes one fetch returns (0: the server's default, 1 MiB).
    #[arg(long, default_value = "0", value_parser = parse_size)]
    fetch_max_bytes: u64,
    /// Pause between writing a backlog (or replay data) and reading it, so replication and
    /// syncs of the writes are finished before the clock starts.
    #[arg(long, default_value = "2", value_parser = parse_duration)]
    settle: Duration,
    /// How long the consumers may take to read everything once the producers stopped.
    #[arg(long, default_value = "60", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// Print one JSON object on standard output instead of the table.
    #[arg(long)]
    json: bool,
    /// Topic names start with this (then a run id and the topic's number).
    #[arg(long, default_value = "weir-bench")]
    topic_prefix: String,
    /// Leave the bench topics in place at the end (default: delete them).
    #[arg(long)]
    keep_topics: bool,
    #[command(flatten)]
    brokers: Brokers,
}

/// The options, checked and resolved against the cluster.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) brokers: Vec<String>,
    /// TLS and credentials of every client the run makes.
    pub(crate) security: weir_client::Security,
    pub(crate) topics: u32,
    pub(crate) partitions: u32,
    pub(crate) replication_factor: u32,
    pub(crate) message_size: usize,
    pub(crate) producers: u32,
    pub(crate) consumers: u32,
    pub(crate) group: bool,
    pub(crate) rate: u64,
    pub(crate) warmup: Duration,
    pub(crate) duration: Duration,
    pub(crate) acks: AcksArg,
    pub(crate) compression: CompressionArg,
    pub(crate) batch_size: usize,
    pub(crate) linger: Duration,
    pub(crate) buffer_memory: usize,
    pub(crate) backlog: Option<u64>,
    pub(crate) replay_bytes: Option<u64>,
    pub(crate) replay_reader: ReaderArg,
    pub(crate) fetch_max_bytes: u32,
    pub(crate) settle: Duration,
    pub(crate) drain_timeout: Duration,
    pub(crate) json: bool,
}

impl Settings {
    /// The producer configuration every bench producer runs with.
    pub(crate) fn producer_config(&self) -> weir_client::ProducerConfig {
        weir_client::ProducerConfig {
            acks: self.acks.into(),
            batch_size: self.batch_size,
            linger: self.linger,
            compression: match self.compression {
                CompressionArg::None => Compression::None,
                CompressionArg::Lz4 => Compression::Lz4,
            },
            buffer_memory: self.buffer_memory,
            ..weir_client::ProducerConfig::default()
        }
    }

    /// A client of its own (its own connections), for one producer or consumer.
    pub(crate) fn client(&self) -> anyhow::Result<Arc<Client>> {
        Ok(Arc::new(Client::with_security(
            &self.brokers,
            self.security.clone(),
        )?))
    }

    /// The topic setting bigger batches need.
    fn topic_configs(&self) -> std::collections::HashMap<String, String> {
        let mut configs = std::collections::HashMap::new();
        let needed = (self.batch_size as u64)
            .saturating_add(self.message_size as u64)
            .saturating_add(64 << 10);
        if needed > DEFAULT_MAX_MESSAGE_BYTES {
            configs.insert(
                "max.message.bytes".to_string(),
                needed.min(MAX_BATCH_BYTES).to_string(),
            );
        }
        configs
    }
}

/// Parses a byte size: digits with an optional K, M, G or T suffix (binary; `KiB`, `KB` and
/// `K` all mean 1024), or a plain `B`.
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, suffix) = trimmed.split_at(digits_end);
    let bad = || format!("{text:?} is not a size (for example 1024, 64K, 8M, 1G)");
    let number: u64 = digits.parse().map_err(|_| bad())?;
    let shift = match suffix.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(bad()),
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Parses a duration: seconds (`30`, `0.5`) or humantime (`1m30s`, `500ms`).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    if let Ok(secs) = text.trim().parse::<f64>() {
        return Duration::try_from_secs_f64(secs)
            .map_err(|_| format!("{text:?} is not a duration in seconds"));
    }
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration (seconds, or like 1m30s): {e}"))
}

/// Checks what can be checked without the cluster.
fn validate(args: &BenchArgs) -> anyhow::Result<()> {
    if args.topics == 0 {
        bail!("--topics must be at least 1");
    }
    if args.partitions == 0 {
        bail!("--partitions must be at least 1");
    }
    if args.replication_factor == Some(0) {
        bail!("--replication-factor must be at least 1");
    }
    if args.message_size < payload::TIMESTAMP_BYTES as u64 {
        bail!(
            "--message-size {} is too small: a message carries its {}-byte send timestamp",
            args.message_size,
            payload::TIMESTAMP_BYTES
        );
    }
    if args.message_size > DEFAULT_MAX_MESSAGE_BYTES {
        bail!(
            "--message-size {} is larger than the topics' largest message ({DEFAULT_MAX_MESSAGE_BYTES} bytes)",
            args.message_size
        );
    }
    if args.batch_size == 0 || args.batch_size > MAX_BATCH_BYTES - (1 << 20) {
        bail!(
            "--batch-size {} must be between 1 byte and {} MiB",
            args.batch_size,
            (MAX_BATCH_BYTES >> 20) - 1
        );
    }
    if args.buffer_memory < args.message_size {
        bail!(
            "--buffer-memory {} must hold at least one message (--message-size {})",
            args.buffer_memory,
            args.message_size
        );
    }
    if args.fetch_max_bytes > u64::from(u32::MAX) {
        bail!("--fetch-max-bytes {} is too large", args.fetch_max_bytes);
    }
    if args.topic_prefix.is_empty()
        || args.topic_prefix.starts_with("__")
        || args.topic_prefix.len() > 150
        || !args
            .topic_prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        bail!(
            "--topic-prefix {:?}: use 1 to 150 of A-Z a-z 0-9 . _ - (not starting with __)",
            args.topic_prefix
        );
    }
    if let Some(bytes) = args.replay_bytes {
        if bytes == 0 {
            bail!("--replay-bytes must be at least 1 byte");
        }
        return Ok(());
    }
    if args.producers == 0 {
        bail!("--producers must be at least 1");
    }
    if args.duration.is_zero() && args.backlog.is_none() {
        bail!("--duration 0 leaves nothing to measure without --backlog");
    }
    if let Some(backlog) = args.backlog {
        if backlog < args.message_size {
            bail!(
                "--backlog {backlog} is smaller than one message (--message-size {})",
                args.message_size
            );
        }
        if args.consumers == 0 {
            bail!("--backlog measures consumers draining it: it needs --consumers 1 or more");
        }
    }
    Ok(())
}

/// The number of brokers the cluster lists. A cluster that is still starting lists fewer than
/// it has: wait (up to [`SETUP_RETRY`]) until it lists every address given, or the replication
/// factor asked for.
async fn registered_brokers(
    admin: &Client,
    seeds: &[String],
    replication_factor: Option<u32>,
) -> anyhow::Result<u32> {
    let seeds = seeds
        .iter()
        .collect::<std::collections::BTreeSet<_>>()
        .len()
        .max(1);
    let deadline = tokio::time::Instant::now() + SETUP_RETRY;
    loop {
        let listed = admin.metadata(&[]).await?.brokers.len();
        let listed = u32::try_from(listed).unwrap_or(u32::MAX);
        let enough = listed as usize >= seeds || replication_factor.is_some_and(|rf| listed >= rf);
        if enough || tokio::time::Instant::now() >= deadline {
            return Ok(listed);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A short id that makes this run's topic names unique.
fn run_id() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("{secs}-{:04x}", rand::random::<u16>())
}

pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    validate(&args)?;
    let security = args.brokers.security()?;
    let mut admin = Client::with_security(&args.brokers.brokers, security.clone())?;
    admin.retry_for = SETUP_RETRY;
    let admin = Arc::new(admin);
    let brokers_list = args.brokers.brokers.join(",");
    let brokers = registered_brokers(&admin, &args.brokers.brokers, args.replication_factor)
        .await
        .with_context(|| format!("cannot reach the cluster at {brokers_list}"))?;
    if brokers == 0 {
        bail!("the cluster at {brokers_list} lists no brokers");
    }
    let replication_factor = match args.replication_factor {
        Some(rf) if rf > brokers => bail!(
            "--replication-factor {rf} is more than the {brokers} brokers of the cluster at {brokers_list}"
        ),
        Some(rf) => rf,
        None => brokers.min(3),
    };
    let settings = Settings {
        brokers: args.brokers.brokers.clone(),
        security,
        topics: args.topics,
        partitions: args.partitions,
        replication_factor,
        message_size: usize::try_from(args.message_size)?,
        producers: args.producers,
        consumers: args.consumers,
        group: args.group,
        rate: args.rate,
        warmup: if args.duration.is_zero() {
            Duration::ZERO
        } else {
            args.warmup
        },
        duration: args.duration,
        acks: args.acks,
        compression: args.compression,
        batch_size: usize::try_from(args.batch_size)?,
        linger: Duration::from_millis(args.linger_ms),
        buffer_memory: usize::try_from(args.buffer_memory)?,
        backlog: args.backlog,
        replay_bytes: args.replay_bytes,
        replay_reader: args.replay_reader,
        fetch_max_bytes: u32::try_from(args.fetch_max_bytes)?,
        settle: args.settle,
        drain_timeout: args.drain_timeout,
        json: args.json,
    };

    let id = run_id();
    let names: Vec<String> = if settings.replay_bytes.is_some() {
        vec![format!("{}-{id}-replay", args.topic_prefix)]
    } else {
        (0..settings.topics)
            .map(|i| format!("{}-{id}-{i}", args.topic_prefix))
            .collect()
    };
    let progress = progress::Progress::new(settings.json);
    let created = Topics::default();
    let outcome = tokio::select! {
        outcome = bench(&settings, &admin, &names, &created, &progress) => outcome,
        signal = tokio::signal::ctrl_c() => match signal {
            Ok(()) => Err(anyhow::anyhow!("interrupted")),
            Err(err) => Err(anyhow::anyhow!("waiting for Ctrl-C failed: {err}")),
        },
    };
    progress.finish();
    let cleanup = if args.keep_topics {
        if !settings.json {
            eprintln!("kept topics: {}", created.names().join(", "));
        }
        Ok(())
    } else {
        created.delete_all(&admin).await
    };
    let report = outcome?;
    if settings.json {
        crate::print_json(&report.json())?;
    } else {
        print!("{}", report.table());
    }
    cleanup
}

fn acks_name(acks: AcksArg) -> &'static str {
    match acks {
        AcksArg::All => "all",
        AcksArg::Leader => "leader",
        AcksArg::None => "none",
    }
}

fn compression_name(compression: CompressionArg) -> &'static str {
    match compression {
        CompressionArg::None => "none",
        CompressionArg::Lz4 => "lz4",
    }
}

/// The report's `config` object: every option as the run used it.
pub(crate) fn config_json(settings: &Settings, topics: &[String]) -> serde_json::Value {
    let replay = settings.replay_bytes.is_some();
    serde_json::json!({
        "weir_version": env!("CARGO_PKG_VERSION"),
        "started_at": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "brokers": settings.brokers,
        "topics": topics,
        "partitions": if replay { 1 } else { settings.partitions },
        "replication_factor": settings.replication_factor,
        "message_size": settings.message_size,
        "producers_per_topic": if replay { 1 } else { settings.producers },
        "consumers_per_topic": if replay { 1 } else { settings.consumers },
        "consumer_mode": if settings.group { "group" } else { "assign" },
        "rate": settings.rate,
        "warmup_seconds": settings.warmup.as_secs_f64(),
        "duration_seconds": settings.duration.as_secs_f64(),
        "acks": acks_name(settings.acks),
        "compression": compression_name(settings.compression),
        "batch_size": settings.batch_size,
        "linger_ms": settings.linger.as_millis() as u64,
        "buffer_memory": settings.buffer_memory,
        "fetch_max_bytes": settings.fetch_max_bytes,
        "backlog_bytes": settings.backlog,
        "replay_bytes": settings.replay_bytes,
        "replay_reader": replay.then_some(match settings.replay_reader {
            ReaderArg::Consumer => "consumer",
            ReaderArg::Fetch => "fetch",
        }),
        "settle_seconds": settings.settle.as_secs_f64(),
        "drain_timeout_seconds": settings.drain_timeout.as_secs_f64(),
    })
}

/// One line describing the run, above the table.
pub(crate) fn setup_line(settings: &Settings) -> String {
    let plural = |n: u32, one: &str| {
        if n == 1 {
            format!("{n} {one}")
        } else {
            format!("{n} {one}s")
        }
    };
    let producer = format!(
        "acks {}, compression {}, batch {} B, linger {} ms",
        acks_name(settings.acks),
        compression_name(settings.compression),
        settings.batch_size,
        settings.linger.as_millis()
    );
    if let Some(bytes) = settings.replay_bytes {
        return format!(
            "weir bench --replay-bytes {bytes}: 1 partition, replication factor {}, {}-byte messages, {producer}; read back with the {}",
            settings.replication_factor,
            settings.message_size,
            match settings.replay_reader {
                ReaderArg::Consumer => "Consumer",
                ReaderArg::Fetch => "Client::fetch loop",
            }
        );
    }
    let rate = if settings.rate == 0 {
        "max rate".to_string()
    } else {
        format!("{} msgs/s", stats::thousands(settings.rate))
    };
    let consumers = match (settings.consumers, settings.group) {
        (0, _) => "no consumers".to_string(),
        (n, true) => format!("{} in a group", plural(n, "consumer")),
        (n, false) => format!("{} (assigned partitions)", plural(n, "consumer")),
    };
    let timed = if settings.duration.is_zero() {
        "no timed run".to_string()
    } else {
        format!(
            "warm-up {} s, measured {} s",
            settings.warmup.as_secs_f64(),
            settings.duration.as_secs_f64()
        )
    };
    let backlog = settings
        .backlog
        .map(|b| format!("; backlog {b} B"))
        .unwrap_or_default();
    format!(
        "weir bench: {} x {} partitions, replication factor {}, {}-byte messages; per topic {} and {consumers}; {rate}, {producer}; {timed}{backlog}",
        plural(settings.topics, "topic"),
        settings.partitions,
        settings.replication_factor,
        settings.message_size,
        plural(settings.producers, "producer"),
    )
}

/// The run itself: topics, then the replay or the workload.
async fn bench(
    settings: &Settings,
    admin: &Arc<Client>,
    names: &[String],
    created: &Topics,
    progress: &progress::Progress,
) -> anyhow::Result<stats::Report> {
    let partitions = if settings.replay_bytes.is_some() {
        1
    } else {
        settings.partitions
    };
    progress.phase(&format!("creating {} topic(s)", names.len()));
    for name in names {
        admin
            .create_topic_with_configs(
                name,
                partitions,
                settings.replication_factor,
                &settings.topic_configs(),
            )
            .await
            .with_context(|| format!("creating topic {name}"))?;
        created.add(name);
    }
    progress.phase("waiting for partition leaders");
    for name in names {
        for partition in 0..partitions {
            admin
                .list_offsets(name, partition, None)
                .await
                .with_context(|| format!("waiting for a leader of {name}/{partition}"))?;
        }
    }
    match settings.replay_bytes {
        Some(bytes) => replay::run(settings, admin, &names[0], bytes, progress).await,
        None => workload::run(settings, admin, names, progress).await,
    }
}

/// The topics this run created, to delete at the end (also after a failure or Ctrl-C).
#[derive(Debug, Default)]
struct Topics(std::sync::Mutex<Vec<String>>);

impl Topics {
    fn add(&self, name: &str) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(name.to_string());
    }

    fn names(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    async fn delete_all(&self, admin: &Client) -> anyhow::Result<()> {
        let mut failed = Vec::new();
        for name in self.names() {
            if let Err(err) = admin.delete_topic(&name).await {
                failed.push(format!("{name}: {err}"));
            }
        }
        if !failed.is_empty() {
            bail!("deleting the bench topics failed: {}", failed.join("; "));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("8m"), Ok(8 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("2 GB"), Ok(2 << 30));
        assert_eq!(parse_size("10B"), Ok(10));
        for bad in ["", "K", "1.5G", "12X", "-1"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1").is_err());
    }
}
