//! The Rust client against a real 3-node cluster (`weir server` processes): the batching
//! [`Producer`] (keys, headers, acks), [`Consumer`]s reading assigned partitions from the start,
//! an offset and a time, many tiny records read back exactly once, a consumer group sharing a
//! topic and handing partitions over without a record read twice, and committed offsets
//! surviving a SIGKILL of the group's coordinator.
//!
//! The tests take turns (one cluster at a time keeps a 2-core machine responsive); every wait
//! is bounded and names what it waited for.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, ensure};
use bytes::Bytes;
use std::future::ready;
use weir_client::{
    Acks, Client, ConsumedRecord, Consumer, ConsumerConfig, Producer, ProducerConfig,
    ProducerRecord, ResetPolicy, Start, partition_for_key,
};
use weir_tests::process_cluster::ProcessCluster;
use weir_tests::{abort, eventually, wait_for_leader};

/// How long the group's members keep reading after the last expected record, for a repeat to
/// show up.
const QUIET_PERIOD: Duration = Duration::from_millis(1500);

/// One cluster at a time.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn cluster() -> anyhow::Result<(ProcessCluster, Arc<Client>)> {
    let cluster = ProcessCluster::start(3)?;
    let mut client = Client::new(&cluster.brokers())?;
    client.retry_for = Duration::from_secs(60);
    Ok((cluster, Arc::new(client)))
}

/// Polls `consumer` until it returned `n` records; fails after `within`.
async fn read_n(
    consumer: &mut Consumer,
    n: usize,
    within: Duration,
) -> anyhow::Result<Vec<ConsumedRecord>> {
    let mut out = Vec::new();
    let filled = tokio::time::timeout(within, async {
        while out.len() < n {
            out.extend(consumer.poll_records(n - out.len()).await?);
        }
        anyhow::Ok(())
    })
    .await;
    match filled {
        Ok(result) => result.map(|()| out),
        Err(_) => anyhow::bail!("read {} of {n} records within {within:?}", out.len()),
    }
}

/// Polls until the consumer is caught up; returns whatever it still read.
async fn read_to_end(
    consumer: &mut Consumer,
    within: Duration,
) -> anyhow::Result<Vec<ConsumedRecord>> {
    let mut out = Vec::new();
    let caught_up = tokio::time::timeout(within, async {
        loop {
            out.extend(consumer.poll().await?);
            if consumer.caught_up() {
                return anyhow::Ok(());
            }
        }
    })
    .await;
    match caught_up {
        Ok(result) => result.map(|()| out),
        Err(_) => anyhow::bail!(
            "not caught up within {within:?} ({} records read)",
            out.len()
        ),
    }
}

fn text(bytes: &Option<Bytes>) -> String {
    bytes
        .as_ref()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default()
}

/// (key, value, `seq` header) of each record of topic `events`, by (partition, offset).
type Events = BTreeMap<(u32, u64), (String, String, String)>;

/// Topic `events` (3 partitions) and 60 keyed records with headers, produced with acks=all:
/// each lands on its key's partition, with an offset; per partition the offsets are dense from
/// 0, in send order. Returns where each went.
async fn produce_events(client: &Arc<Client>) -> anyhow::Result<Events> {
    client.create_topic("events", 3, 3).await?;
    let producer = Producer::new(Arc::clone(client), ProducerConfig::default()).await?;
    let mut sent = Vec::new();
    for i in 0..60 {
        let key = format!("user-{}", i % 7);
        let record = ProducerRecord::new(format!("event-{i}"))
            .key(key.clone())
            .header("seq", i.to_string())
            .header("source", "client_api");
        sent.push((key, i, producer.send("events", record).await?));
    }
    producer.flush().await?;
    let mut expected = Events::new();
    for (key, i, delivery) in sent {
        let metadata = delivery.await?;
        ensure!(metadata.topic == "events");
        ensure!(
            metadata.partition == partition_for_key(key.as_bytes(), 3),
            "{key} went to partition {} instead of {}",
            metadata.partition,
            partition_for_key(key.as_bytes(), 3)
        );
        let offset = metadata.offset.context("acks=all answers with offsets")?;
        ensure!(
            expected
                .insert(
                    (metadata.partition, offset),
                    (key, format!("event-{i}"), i.to_string())
                )
                .is_none(),
            "offset {offset} of partition {} given twice",
            metadata.partition
        );
    }
    // Per partition the offsets are dense from 0, in send order.
    for p in 0..3 {
        let offsets: Vec<u64> = expected
            .keys()
            .filter(|(q, _)| *q == p)
            .map(|(_, o)| *o)
            .collect();
        ensure!(
            offsets == (0..offsets.len() as u64).collect::<Vec<_>>(),
            "partition {p}: offsets {offsets:?}"
        );
    }
    producer.close().await?;
    Ok(expected)
}

/// Keyed records with headers, acks=all, read back from the start: exactly what was sent, where
/// it was acknowledged, headers in order, and nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keyed_records_with_headers_are_read_back_where_they_were_acknowledged()
-> anyhow::Result<()> {
    let _turn = TURN.lock().await;
    weir_tests::init_tracing();
    let (_cluster, client) = cluster().await?;
    let expected = produce_events(&client).await?;

    let mut consumer = Consumer::new(Arc::clone(&client), ConsumerConfig::default());
    consumer.assign("events", &[], Start::Earliest).await?;
    let records = read_n(&mut consumer, 60, Duration::from_secs(30)).await?;
    let mut got = BTreeMap::new();
    for r in &records {
        let headers: Vec<(String, String)> = r
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), text(v)))
            .collect();
        let seq = headers
            .iter()
            .find(|(k, _)| k == "seq")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        ensure!(
            headers.get(1) == Some(&("source".to_string(), "client_api".to_string())),
            "{headers:?}"
        );
        ensure!(r.timestamp_ms > 0);
        got.insert((r.partition, r.offset), (text(&r.key), text(&r.value), seq));
    }
    ensure!(
        got == expected,
        "read back differs from what was acknowledged"
    );
    let rest = read_to_end(&mut consumer, Duration::from_secs(30)).await?;
    ensure!(rest.is_empty(), "{} records more than produced", rest.len());
    consumer.close().await?;
    Ok(())
}

/// A consumer that seeks to an offset replays its partition from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_consumer_replays_a_partition_from_an_offset() -> anyhow::Result<()> {
    let _turn = TURN.lock().await;
    weir_tests::init_tracing();
    let (_cluster, client) = cluster().await?;
    let expected = produce_events(&client).await?;
    let mut consumer = Consumer::new(Arc::clone(&client), ConsumerConfig::default());
    consumer.assign("events", &[], Start::Earliest).await?;
    read_n(&mut consumer, 60, Duration::from_secs(30)).await?;

    let p = partition_for_key(b"user-3", 3);
    // (offset, value) of the partition, in offset order.
    let in_p: Vec<(u64, String)> = expected
        .iter()
        .filter(|((q, _), _)| *q == p)
        .map(|((_, o), (_, v, _))| (*o, v.clone()))
        .collect();
    let from = 2u64;
    consumer.seek("events", p, from)?;
    let replay = read_n(
        &mut consumer,
        in_p.len() - from as usize,
        Duration::from_secs(30),
    )
    .await?;
    let want = &in_p[from as usize..];
    let replayed: Vec<(u64, String)> = replay.iter().map(|r| (r.offset, text(&r.value))).collect();
    ensure!(replayed == want, "replay from {from}: {replayed:?}");
    consumer.close().await?;
    Ok(())
}

/// Topic `timed` (1 partition) holding `at-0` .. `at-9` stamped T0, T0 + 1 s, ... Returns T0.
async fn produce_timed(client: &Arc<Client>) -> anyhow::Result<i64> {
    client.create_topic("timed", 1, 3).await?;
    let producer = Producer::new(
        Arc::clone(client),
        ProducerConfig {
            linger: Duration::from_millis(1),
            ..ProducerConfig::default()
        },
    )
    .await?;
    let t0: i64 = 1_800_000_000_000;
    let mut deliveries = Vec::new();
    for i in 0..10 {
        let record = ProducerRecord::new(format!("at-{i}")).timestamp_ms(t0 + i * 1000);
        deliveries.push(producer.send("timed", record).await?);
    }
    for d in deliveries {
        d.await?;
    }
    producer.close().await?;
    Ok(t0)
}

/// Replay from a time: records with explicit timestamps, one partition; the same as a stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_consumer_replays_from_a_time_also_as_a_stream() -> anyhow::Result<()> {
    let _turn = TURN.lock().await;
    weir_tests::init_tracing();
    let (_cluster, client) = cluster().await?;
    let t0 = produce_timed(&client).await?;
    let mut consumer = Consumer::new(Arc::clone(&client), ConsumerConfig::default());
    consumer
        .assign("timed", &[0], Start::Timestamp(t0 + 6500))
        .await?;
    let late = read_n(&mut consumer, 3, Duration::from_secs(30)).await?;
    let late: Vec<(u64, i64, String)> = late
        .iter()
        .map(|r| (r.offset, r.timestamp_ms, text(&r.value)))
        .collect();
    ensure!(
        late == (7..10)
            .map(|i| (i as u64, t0 + i * 1000, format!("at-{i}")))
            .collect::<Vec<_>>(),
        "from t0+6.5 s: {late:?}"
    );
    // The same as a stream.
    consumer.seek_to_timestamp("timed", 0, t0 + 2000)?;
    let mut again = Vec::new();
    {
        use tokio_stream::StreamExt;
        let mut stream = std::pin::pin!(consumer.stream());
        while again.len() < 8 {
            let next = tokio::time::timeout(Duration::from_secs(30), stream.next())
                .await
                .context("the stream stalled")?;
            again.push(next.context("the stream ended")??);
        }
    }
    ensure!(
        again.first().map(|r| r.offset) == Some(2) && again.last().map(|r| r.offset) == Some(9),
        "from t0+2 s: {:?}",
        again.iter().map(|r| r.offset).collect::<Vec<_>>()
    );
    consumer.close().await?;
    Ok(())
}

/// acks=leader and acks=none are acknowledged without offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acks_leader_and_none_are_acknowledged_without_offsets() -> anyhow::Result<()> {
    let _turn = TURN.lock().await;
    weir_tests::init_tracing();
    let (_cluster, client) = cluster().await?;
    produce_timed(&client).await?;
    for acks in [Acks::Leader, Acks::None] {
        let producer = Producer::new(
            Arc::clone(&client),
            ProducerConfig {
                acks,
                ..ProducerConfig::default()
            },
        )
        .await?;
        let metadata = producer
            .send("timed", ProducerRecord::new("quick"))
            .await?
            .await?;
        ensure!(metadata.offset.is_none(), "{acks:?}: {metadata:?}");
        producer.close().await?;
    }
    Ok(())
}

/// Mistakes fail at once with the problem named: an unknown topic, a partition it does not have.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn producer_mistakes_fail_at_once_with_the_problem_named() -> anyhow::Result<()> {
    let _turn = TURN.lock().await;
    weir_tests::init_tracing();
    let (_cluster, client) = cluster().await?;
    produce_timed(&client).await?;
    let producer = Producer::new(Arc::clone(&client), ProducerConfig::default()).await?;
    let unknown = producer.send("nope", ProducerRecord::new("x")).await;
    ensure!(
        unknown.as_ref().err().and_then(|e| e.code()) == Some(tonic::Code::NotFound),
        "{unknown:?}"
    );
    let bad = producer
        .send("timed", ProducerRecord::new("x").partition(5))
        .await;
    ensure!(
        bad.as_ref()
            .err()
            .is_some_and(|e| e.to_string().contains("partition 5")),
        "{bad:?}"
    );
    producer.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_thousand_tiny_records_are_read_back_once() -> anyhow::Result<()> {
    let _turn = TURN.lock().await;
    weir_tests::init_tracing();
    let (_cluster, client) = cluster().await?;
    client.create_topic("tiny", 4, 3).await?;
    const N: usize = 20_000;
    let producer = Producer::new(Arc::clone(&client), ProducerConfig::default()).await?;
    let mut deliveries = Vec::with_capacity(N);
    let mut sent_per_byte: HashMap<u8, usize> = HashMap::new();
    for i in 0..N {
        let byte = b'a' + (i % 26) as u8;
        *sent_per_byte.entry(byte).or_default() += 1;
        deliveries.push(
            producer
                .send("tiny", ProducerRecord::new(vec![byte]))
                .await?,
        );
    }
    producer.flush().await?;
    let mut acknowledged: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
    for d in deliveries {
        let m = d.await?;
        let offset = m.offset.context("offset")?;
        ensure!(
            acknowledged.entry(m.partition).or_default().insert(offset),
            "offset {offset} of partition {} acknowledged twice",
            m.partition
        );
    }
    producer.close().await?;
    ensure!(
        acknowledged.len() > 1,
        "keyless records should spread over partitions: {:?}",
        acknowledged.keys()
    );

    let mut consumer = Consumer::new(Arc::clone(&client), ConsumerConfig::default());
    consumer.assign("tiny", &[], Start::Earliest).await?;
    let records = read_n(&mut consumer, N, Duration::from_secs(120)).await?;
    let rest = read_to_end(&mut consumer, Duration::from_secs(30)).await?;
    ensure!(rest.is_empty(), "{} records beyond {N}", rest.len());
    let mut read: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
    let mut read_per_byte: HashMap<u8, usize> = HashMap::new();
    for r in &records {
        ensure!(
            read.entry(r.partition).or_default().insert(r.offset),
            "{}/{} read twice",
            r.partition,
            r.offset
        );
        let value = r.value.as_deref().unwrap_or_default();
        ensure!(value.len() == 1, "value {value:?}");
        *read_per_byte.entry(value[0]).or_default() += 1;
    }
    ensure!(
        read == acknowledged,
        "offsets read differ from offsets acknowledged"
    );
    ensure!(
        read_per_byte == sent_per_byte,
        "values read differ from values sent"
    );
    for (p, offsets) in &read {
        ensure!(
            offsets.iter().copied().eq(0..offsets.len() as u64),
            "partition {p}: offsets not dense"
        );
    }
    consumer.close().await?;
    Ok(())
}

/// What a group member task shares with the test.
#[derive(Debug, Default)]
struct MemberView {
    assignment: Vec<(String, u32)>,
    closed: bool,
}

/// Runs a group member: polls, hands every record to `records`, publishes its assignment;
/// closes (commit, leave) once `stop` is set.
fn spawn_member(
    index: usize,
    mut consumer: Consumer,
    records: tokio::sync::mpsc::UnboundedSender<(usize, ConsumedRecord)>,
    view: Arc<Mutex<MemberView>>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    tokio::spawn(async move {
        loop {
            if *stop.borrow() {
                consumer.close().await?;
                if let Ok(mut v) = view.lock() {
                    v.closed = true;
                    v.assignment.clear();
                }
                return Ok(());
            }
            let polled = consumer.poll().await?;
            if let Ok(mut v) = view.lock() {
                v.assignment = consumer.assignment();
            }
            for record in polled {
                records.send((index, record))?;
            }
        }
    })
}

async fn produce_values(
    client: &Arc<Client>,
    topic: &str,
    values: &[String],
) -> anyhow::Result<()> {
    let producer = Producer::new(Arc::clone(client), ProducerConfig::default()).await?;
    let mut deliveries = Vec::new();
    for (i, v) in values.iter().enumerate() {
        let record = ProducerRecord::new(v.clone()).key(format!("k{i}"));
        deliveries.push(producer.send(topic, record).await?);
    }
    for d in deliveries {
        d.await?;
    }
    producer.close().await?;
    Ok(())
}

/// Records consumed by the group's members.
#[derive(Debug, Default)]
struct Seen {
    /// Value → times consumed.
    count: HashMap<String, usize>,
    /// Member → records consumed.
    by_member: BTreeMap<usize, usize>,
}

impl Seen {
    /// Takes what the members consumed so far and fails until `total` distinct records were
    /// consumed; a record consumed twice ends the wait at once.
    fn take_until(
        &mut self,
        records: &mut tokio::sync::mpsc::UnboundedReceiver<(usize, ConsumedRecord)>,
        total: usize,
    ) -> anyhow::Result<()> {
        self.take(records).map_err(abort)?;
        ensure!(
            self.count.len() >= total,
            "read {} of {total}",
            self.count.len()
        );
        Ok(())
    }

    /// Takes what the members consumed so far; fails on a record consumed twice.
    fn take(
        &mut self,
        records: &mut tokio::sync::mpsc::UnboundedReceiver<(usize, ConsumedRecord)>,
    ) -> anyhow::Result<()> {
        while let Ok((index, record)) = records.try_recv() {
            let value = text(&record.value);
            *self.by_member.entry(index).or_default() += 1;
            let count = self.count.entry(value.clone()).or_default();
            *count += 1;
            ensure!(
                *count == 1,
                "{value} consumed twice (second time by member {index})"
            );
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_splits_partitions_and_hands_them_over_without_repeats() -> anyhow::Result<()> {
    let _turn = TURN.lock().await;
    weir_tests::init_tracing();
    let (_cluster, client) = cluster().await?;
    client.create_topic("work", 6, 3).await?;
    let first: Vec<String> = (0..600).map(|i| format!("first-{i}")).collect();
    produce_values(&client, "work", &first).await?;

    let config = ConsumerConfig {
        reset: ResetPolicy::Earliest,
        auto_commit_interval: Duration::from_millis(500),
        ..ConsumerConfig::default()
    };
    let (records_tx, mut records_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut members = Vec::new();
    for index in 0..3 {
        let consumer = Consumer::join(
            Arc::clone(&client),
            "workers",
            &["work".to_string()],
            config.clone(),
        )
        .await?;
        let view = Arc::new(Mutex::new(MemberView::default()));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let task = spawn_member(
            index,
            consumer,
            records_tx.clone(),
            Arc::clone(&view),
            stop_rx,
        );
        members.push((view, stop_tx, task));
    }
    drop(records_tx);
    let views: Vec<Arc<Mutex<MemberView>>> = members.iter().map(|(v, ..)| Arc::clone(v)).collect();
    let assignments = move || -> Vec<Vec<(String, u32)>> {
        views
            .iter()
            .map(|v| v.lock().map(|v| v.assignment.clone()).unwrap_or_default())
            .collect()
    };

    // Three members share six partitions: two each, none twice.
    let check = assignments.clone();
    eventually(Duration::from_secs(60), "two partitions per member", || {
        let a = check();
        let all: BTreeSet<&(String, u32)> = a.iter().flatten().collect();
        let shared = a.iter().all(|m| m.len() == 2) && all.len() == 6;
        ready(if shared {
            Ok(())
        } else {
            Err(anyhow::anyhow!("assignments {a:?}"))
        })
    })
    .await?;

    let mut seen = Seen::default();
    eventually(
        Duration::from_secs(60),
        "the first 600 records read",
        || ready(seen.take_until(&mut records_rx, first.len())),
    )
    .await?;

    // Member 0 leaves (committing on the way out); the other two take over all six.
    let (_, stop, task) = members.remove(0);
    stop.send(true)?;
    task.await??;
    let second: Vec<String> = (0..600).map(|i| format!("second-{i}")).collect();
    produce_values(&client, "work", &second).await?;
    let check = assignments.clone();
    eventually(
        Duration::from_secs(60),
        "two members cover six partitions",
        || {
            let a = check();
            let all: BTreeSet<&(String, u32)> = a[1..].iter().flatten().collect();
            let covered = all.len() == 6 && a[1].len() + a[2].len() == 6 && a[1].len() == 3;
            ready(if covered {
                Ok(())
            } else {
                Err(anyhow::anyhow!("assignments {a:?}"))
            })
        },
    )
    .await?;
    let total = first.len() + second.len();
    eventually(Duration::from_secs(60), "all 1200 records read", || {
        ready(seen.take_until(&mut records_rx, total))
    })
    .await?;
    // Nothing more arrives (no record read twice after the handoff either): members that kept
    // reading for this long would have delivered a repeat.
    tokio::time::sleep(QUIET_PERIOD).await;
    seen.take(&mut records_rx)?;
    ensure!(seen.count.len() == total && seen.count.values().all(|c| *c == 1));
    ensure!(
        seen.by_member.len() == 3,
        "every member read something: {:?}",
        seen.by_member
    );
    for (_, stop, task) in members {
        stop.send(true)?;
        task.await??;
    }
    // Closed members committed everything: the group has no lag.
    let described = client.describe_group("workers").await?;
    ensure!(described.members.is_empty(), "{described:?}");
    ensure!(
        described.partitions.len() == 6 && described.partitions.iter().all(|p| p.lag == 0),
        "{:?}",
        described.partitions
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn committed_offsets_survive_a_coordinator_kill() -> anyhow::Result<()> {
    let _turn = TURN.lock().await;
    weir_tests::init_tracing();
    let (mut cluster, client) = cluster().await?;
    client.create_topic("durable", 2, 3).await?;
    let values: Vec<String> = (0..100).map(|i| format!("d-{i}")).collect();
    produce_values(&client, "durable", &values).await?;

    let config = ConsumerConfig {
        reset: ResetPolicy::Earliest,
        auto_commit: false,
        ..ConsumerConfig::default()
    };
    let topics = ["durable".to_string()];
    let mut consumer =
        Consumer::join(Arc::clone(&client), "keeper", &topics, config.clone()).await?;
    let first = read_n(&mut consumer, 60, Duration::from_secs(30)).await?;
    consumer.commit().await?;
    let positions = consumer.positions();
    consumer.close().await?;
    ensure!(
        positions.values().sum::<u64>() == 60,
        "positions after 60 records: {positions:?}"
    );

    let coordinator = client.describe_group("keeper").await?.coordinator;
    ensure!(coordinator != 0, "no coordinator reported");
    cluster.kill(coordinator)?;
    cluster.restart(coordinator)?;

    // The committed offsets are still there, wherever the coordinator is now.
    let committed: BTreeMap<(String, u32), u64> = client
        .fetch_offsets("keeper", &topics)
        .await?
        .into_iter()
        .map(|o| ((o.topic, o.partition), o.offset))
        .collect();
    ensure!(
        committed == positions,
        "committed {committed:?}, positions {positions:?}"
    );

    // A new member resumes exactly there: the other 40 records, none of the first 60.
    let mut consumer = Consumer::join(Arc::clone(&client), "keeper", &topics, config).await?;
    let rest = read_n(&mut consumer, 40, Duration::from_secs(60)).await?;
    let extra = read_to_end(&mut consumer, Duration::from_secs(30)).await?;
    ensure!(extra.is_empty(), "{} records beyond the 100", extra.len());
    let mut all: Vec<String> = first.iter().chain(&rest).map(|r| text(&r.value)).collect();
    all.sort();
    let mut want = values.clone();
    want.sort();
    ensure!(
        all == want,
        "records before and after the restart do not add up to all 100 once"
    );
    consumer.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_producer_rides_out_a_leader_kill_without_duplicates() -> anyhow::Result<()> {
    let _turn = TURN.lock().await;
    weir_tests::init_tracing();
    let (mut cluster, client) = cluster().await?;
    client.create_topic("sturdy", 3, 3).await?;
    let producer = Arc::new(Producer::new(Arc::clone(&client), ProducerConfig::default()).await?);
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = {
        let producer = Arc::clone(&producer);
        let sent = Arc::clone(&sent);
        tokio::spawn(async move {
            let mut deliveries = Vec::new();
            let mut i = 0usize;
            while !*stop_rx.borrow() {
                let value = format!("s-{i}");
                let delivery = producer
                    .send("sturdy", ProducerRecord::new(value.clone()))
                    .await?;
                deliveries.push((value, delivery));
                i += 1;
                sent.store(i, std::sync::atomic::Ordering::Relaxed);
                if i.is_multiple_of(200) {
                    // Let acknowledgements and the test's kill interleave with sending.
                    tokio::task::yield_now().await;
                }
            }
            let mut acknowledged = Vec::new();
            for (value, delivery) in deliveries {
                acknowledged.push((value, delivery.await?));
            }
            anyhow::Ok(acknowledged)
        })
    };
    let progress = |at_least: usize| {
        let sent = Arc::clone(&sent);
        let what = format!("{at_least} records sent");
        async move {
            eventually(Duration::from_secs(60), &what, || {
                let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
                ready(if sent >= at_least {
                    Ok(())
                } else {
                    Err(anyhow::anyhow!("{sent} sent"))
                })
            })
            .await
        }
    };
    progress(2_000).await?;
    // Sends are buffered, so they can outrun the first election of the new topic: wait until a
    // leader of partition 0 is known.
    let leader = wait_for_leader(&client, "sturdy", 0, 0, Duration::from_secs(30)).await?;
    cluster.kill(leader)?;
    let killed_at = sent.load(std::sync::atomic::Ordering::Relaxed);
    wait_for_leader(&client, "sturdy", 0, leader, Duration::from_secs(60)).await?;
    progress(killed_at + 2_000).await?;
    cluster.restart(leader)?;
    stop_tx.send(true)?;
    let acknowledged = task.await??;
    producer.flush().await?;

    // acks=all answers with every record's offset, except for one case `RecordMetadata::offset`
    // documents: a batch the old leader wrote but whose answer the kill lost, retried behind a
    // newer batch of its partition, is answered ALREADY_EXISTS (written before) without offsets.
    // Those records too must be read back exactly once, on the partition that acknowledged them.
    let mut want: HashMap<String, (u32, Option<u64>)> = HashMap::new();
    for (value, metadata) in &acknowledged {
        want.insert(value.clone(), (metadata.partition, metadata.offset));
    }
    ensure!(want.len() == acknowledged.len());
    let retried = want.values().filter(|(_, offset)| offset.is_none()).count();
    eprintln!(
        "{} records acknowledged, {retried} of them by a retry without offsets",
        want.len()
    );
    let mut consumer = Consumer::new(Arc::clone(&client), ConsumerConfig::default());
    consumer.assign("sturdy", &[], Start::Earliest).await?;
    let records = read_to_end(&mut consumer, Duration::from_secs(120)).await?;
    let mut got: HashMap<String, (u32, Option<u64>)> = HashMap::new();
    for r in &records {
        let value = text(&r.value);
        // Where the acknowledgement carried no offset, any offset of that partition will do.
        let offset = match want.get(&value) {
            Some((_, None)) => None,
            _ => Some(r.offset),
        };
        ensure!(
            got.insert(value.clone(), (r.partition, offset)).is_none(),
            "{value} written twice"
        );
    }
    ensure!(
        got == want,
        "{} records read, {} acknowledged",
        got.len(),
        want.len()
    );
    consumer.close().await?;
    Ok(())
}
