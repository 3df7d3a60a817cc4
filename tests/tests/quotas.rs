//! Quotas on a secure cluster of `weir server` processes (TLS, `--security-enabled`, super user
//! `User:admin` by client certificate). These check behaviour, not timing:
//! - rate quotas throttle and never fail: a user over `produce.bytes.per.sec`,
//!   `fetch.bytes.per.sec` or `requests.per.sec` gets answers with `throttle_time_ms` > 0 and the
//!   `weir-throttle-ms` header, every request succeeding; a user without a quota gets 0 and no
//!   header;
//! - hard quotas fail with RESOURCE_EXHAUSTED naming the limit: a tenant's `retained.bytes` (once
//!   the usage reaches the other nodes, the tenant's next produce is refused with nothing
//!   written, while another tenant still writes), a user's `retained.bytes` and `partitions`.
//!
//! The benchmark (`--run-ignored only`) measures a 5 MB/s producer next to an unlimited one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use tonic::Code;
use weir_client::access::{
    Acl, AddAclRequest, CreateTokenRequest, SetQuotaRequest, Tenant, UpsertTenantRequest,
    UpsertUserRequest,
};
use weir_client::{Client, ClientError, Compression, Producer, ProducerConfig, ProducerRecord};
use weir_format::batch::BatchBuilder;
use weir_format::wire::THROTTLE_HEADER;
use weir_tests::eventually;
use weir_tests::process_cluster::ProcessCluster;

const WAIT: Duration = Duration::from_secs(60);

const SECURE: &[&str] = &["--security-enabled", "--security-super-users", "User:admin"];

async fn secure_cluster() -> anyhow::Result<(ProcessCluster, Client)> {
    let cluster = ProcessCluster::start_tls(3, SECURE)?;
    for id in cluster.node_ids() {
        cluster.wait_serving(id, WAIT).await?;
    }
    let admin = cluster.client(Some("admin"), None)?;
    Ok((cluster, admin))
}

async fn user_token(admin: &Client, name: &str) -> anyhow::Result<String> {
    admin
        .upsert_user(UpsertUserRequest {
            name: name.into(),
            password: format!("{name}-secret"),
            mechanisms: vec![],
        })
        .await?;
    Ok(admin
        .create_token(CreateTokenRequest {
            user: name.into(),
            ttl_ms: 0,
            description: "test".into(),
        })
        .await?
        .token)
}

/// Allows `principal` every operation on every topic.
async fn allow_topics(admin: &Client, principal: &str) -> anyhow::Result<()> {
    admin
        .add_acl(AddAclRequest {
            acl: Some(Acl {
                principal: principal.into(),
                resource: "topic".into(),
                pattern: "literal".into(),
                name: "*".into(),
                operation: "all".into(),
                permission: "allow".into(),
            }),
        })
        .await?;
    Ok(())
}

async fn tenant(admin: &Client, name: &str, members: &[&str]) -> anyhow::Result<()> {
    admin
        .upsert_tenant(UpsertTenantRequest {
            tenant: Some(Tenant {
                name: name.into(),
                prefix: format!("{name}."),
                principals: members.iter().map(|m| m.to_string()).collect(),
            }),
        })
        .await?;
    Ok(())
}

async fn quota(admin: &Client, entity: &str, limits: &[(&str, &str)]) -> anyhow::Result<()> {
    admin
        .set_quota(SetQuotaRequest {
            entity: entity.into(),
            limits: limits
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
        .await?;
    Ok(())
}

/// A batch of one record of `len` bytes.
fn batch(len: usize) -> anyhow::Result<Bytes> {
    let mut builder = BatchBuilder::new(Compression::None);
    builder.push(0, None, Some(&vec![b'x'; len]), &[]);
    builder.build().context("an empty batch")
}

/// A raw Broker client of the node at `addr` (over the cluster's TLS).
async fn raw_broker(
    cluster: &ProcessCluster,
    addr: &str,
) -> anyhow::Result<weir_proto::v1::broker_client::BrokerClient<tonic::transport::Channel>> {
    let ca = std::fs::read(cluster.tls_dir().context("TLS")?.join("ca.pem"))?;
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&ca))
                .domain_name("127.0.0.1"),
        )?
        .connect()
        .await?;
    Ok(weir_proto::v1::broker_client::BrokerClient::new(channel))
}

fn with_token<T>(message: T, token: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(request)
}

/// The `weir-throttle-ms` header of an answer, if it has one.
fn throttle_header(metadata: &tonic::metadata::MetadataMap) -> anyhow::Result<Option<u32>> {
    match metadata.get(THROTTLE_HEADER) {
        Some(value) => Ok(Some(value.to_str()?.parse()?)),
        None => Ok(None),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_quotas_throttle_answers_and_never_fail_them() -> anyhow::Result<()> {
    let (cluster, admin) = secure_cluster().await?;
    admin.create_topic("events", 1, 1).await?;
    let mut tokens = Vec::new();
    for user in ["alice", "bob", "carol"] {
        tokens.push(user_token(&admin, user).await?);
        allow_topics(&admin, &format!("User:{user}")).await?;
    }
    let [alice_token, bob_token, carol_token] = &tokens[..] else {
        anyhow::bail!("three tokens");
    };
    // alice: 10 kB/s of produce and of fetch; carol: 5 requests/s; bob: no quota.
    quota(
        &admin,
        "user:alice",
        &[
            ("produce.bytes.per.sec", "10000"),
            ("fetch.bytes.per.sec", "10000"),
        ],
    )
    .await?;
    quota(&admin, "user:carol", &[("requests.per.sec", "5")]).await?;

    // Raw calls to one node: alice's produce answers carry the header once she is past her
    // one-second burst, every one of them a success.
    let node = cluster.brokers()[0].clone();
    let mut raw = raw_broker(&cluster, &node).await?;
    let produce = || weir_proto::v1::ProduceRequest {
        topic: "events".into(),
        partition: Some(0),
        records: vec![weir_proto::v1::Record {
            value: Some(Bytes::from(vec![b'a'; 4000])),
            ..Default::default()
        }],
        acks: weir_proto::v1::Acks::All as i32,
        ..Default::default()
    };
    let mut throttled = None;
    for attempt in 0..10 {
        let answer = raw
            .produce(with_token(produce(), alice_token)?)
            .await
            .with_context(|| format!("alice's produce {attempt}"))?;
        let header = throttle_header(answer.metadata())?;
        let body = answer.get_ref().throttle_time_ms;
        assert_eq!(header.unwrap_or(0), body, "the header and the field agree");
        if body > 0 {
            throttled = Some((attempt, body));
            break;
        }
    }
    let (attempt, ms) = throttled.context("alice was never throttled in 10 produces of 4 kB")?;
    assert!(
        attempt >= 2,
        "throttled at produce {attempt}: before her burst was used"
    );
    assert!(ms > 0);
    // bob has no quota: never throttled, no header.
    for _ in 0..10 {
        let answer = raw.produce(with_token(produce(), bob_token)?).await?;
        assert_eq!(throttle_header(answer.metadata())?, None);
        assert_eq!(answer.get_ref().throttle_time_ms, 0);
    }

    // The Rust client: every produce succeeds, some say they were throttled (the client waited
    // them out before the next one).
    let alice = cluster.client(None, Some(alice_token))?;
    let mut throttled = 0;
    for i in 0..6 {
        let answer = alice
            .produce_batch("events", 0, batch(4000)?)
            .await
            .with_context(|| format!("alice's batch {i}"))?;
        throttled += usize::from(answer.throttle_time_ms > 0);
    }
    assert!(throttled > 0, "no answer of alice's client was throttled");
    // Fetching far more than 10 kB at once: answered in full, throttled.
    let fetched = alice.fetch("events", 0, 0, 1 << 20).await?;
    assert!(
        fetched.records.len() >= 10,
        "{} records",
        fetched.records.len()
    );
    assert!(fetched.throttle_time_ms > 0, "a 50 kB fetch at 10 kB/s");
    let bob = cluster.client(None, Some(bob_token))?;
    let fetched = bob.fetch("events", 0, 0, 1 << 20).await?;
    assert_eq!(fetched.throttle_time_ms, 0);

    // carol: 5 requests/s. Every call succeeds; after the burst the answers say they were held.
    let mut headers = 0;
    for i in 0..15 {
        let answer = raw
            .metadata(with_token(
                weir_proto::v1::MetadataRequest { topics: vec![] },
                carol_token,
            )?)
            .await
            .with_context(|| format!("carol's metadata call {i}"))?;
        headers += usize::from(throttle_header(answer.metadata())?.is_some_and(|ms| ms > 0));
    }
    assert!(headers > 0, "carol's 15 calls at 5/s were never throttled");
    let carol = cluster.client(None, Some(carol_token))?;
    let mut throttled = 0;
    for _ in 0..8 {
        throttled += usize::from(carol.fetch("events", 0, 0, 1024).await?.throttle_time_ms > 0);
    }
    assert!(throttled > 0, "carol's fetches were never throttled");
    Ok(())
}

fn status_of<T: std::fmt::Debug>(result: &Result<T, ClientError>) -> (Option<Code>, String) {
    match result {
        Ok(_) => (Some(Code::Ok), String::new()),
        Err(err) => (err.code(), err.to_string()),
    }
}

/// Produces 8 kB batches as `client` to `topic` until one is refused with RESOURCE_EXHAUSTED
/// (the retained bytes reached the other nodes); that refusal's message. Checks that the refusal
/// wrote nothing.
async fn produce_until_refused(client: &Client, topic: &str) -> anyhow::Result<String> {
    eventually(
        Duration::from_secs(60),
        "a produce refused by retained.bytes",
        || async {
            let before = client.list_offsets(topic, 0, None).await?.high_watermark;
            let result = client.produce_batch(topic, 0, batch(8000)?).await;
            match status_of(&result) {
                (Some(Code::Ok), _) => anyhow::bail!("still accepted at offset {before}"),
                (Some(Code::ResourceExhausted), message) => {
                    let after = client.list_offsets(topic, 0, None).await?.high_watermark;
                    if after != before {
                        return Err(weir_tests::abort(anyhow::anyhow!(
                            "a refused produce wrote: {before} -> {after}"
                        )));
                    }
                    Ok(message)
                }
                other => Err(weir_tests::abort(anyhow::anyhow!(
                    "unexpected answer {other:?}"
                ))),
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_quotas_refuse_with_resource_exhausted_naming_the_limit() -> anyhow::Result<()> {
    let (cluster, admin) = secure_cluster().await?;
    let alice_token = user_token(&admin, "alice").await?;
    let bob_token = user_token(&admin, "bob").await?;
    let carol_token = user_token(&admin, "carol").await?;
    for user in ["alice", "bob", "carol"] {
        allow_topics(&admin, &format!("User:{user}")).await?;
    }
    tenant(&admin, "team-a", &["User:alice"]).await?;
    tenant(&admin, "team-b", &["User:bob"]).await?;
    quota(&admin, "tenant:team-a", &[("retained.bytes", "65536")]).await?;
    quota(
        &admin,
        "user:carol",
        &[("partitions", "3"), ("retained.bytes", "16384")],
    )
    .await?;
    let alice = cluster.client(None, Some(&alice_token))?;
    let bob = cluster.client(None, Some(&bob_token))?;
    let carol = cluster.client(None, Some(&carol_token))?;

    // A user's partitions: topics carol creates count, up to 3.
    carol.create_topic("c.one", 2, 3).await?;
    let over = carol.create_topic("c.two", 2, 1).await;
    let (code, message) = status_of(&over);
    assert_eq!(code, Some(Code::ResourceExhausted), "{message}");
    assert!(
        message.contains("user carol may have at most 3 partitions; it has 2"),
        "{message}"
    );
    carol.create_topic("c.three", 1, 1).await?;
    // The super user has no quota.
    admin.create_topic("admin.big", 8, 1).await?;

    // A tenant's retained bytes: past 64 KiB (counted on the leaders, gathered every few
    // seconds), team-a's next produce is refused; team-b writes on.
    alice.create_topic("team-a.logs", 1, 3).await?;
    bob.create_topic("team-b.logs", 1, 3).await?;
    for i in 0..10 {
        alice
            .produce_batch("team-a.logs", 0, batch(8000)?)
            .await
            .with_context(|| format!("alice's batch {i}, below the limit"))?;
    }
    let message = produce_until_refused(&alice, "team-a.logs").await?;
    assert!(
        message.contains("tenant team-a may retain at most 65536 bytes; it retains"),
        "{message}"
    );
    bob.produce_batch("team-b.logs", 0, batch(8000)?).await?;
    // Deleting the topic frees the tenant's bytes again.
    alice.delete_topic("team-a.logs").await?;
    alice.create_topic("team-a.fresh", 1, 1).await?;
    eventually(
        WAIT,
        "team-a writes again after deleting its topic",
        || async {
            alice
                .produce_batch("team-a.fresh", 0, batch(100)?)
                .await
                .map(drop)
                .map_err(anyhow::Error::from)
        },
    )
    .await?;

    // A user's retained bytes: the topics carol created.
    let message = produce_until_refused(&carol, "c.three").await?;
    assert!(
        message.contains("user carol may retain at most 16384 bytes; it retains"),
        "{message}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Benchmark

/// A producer of `topic` as `client` sending 1 KiB records as fast as it can until `stop`;
/// `acked` counts the value bytes acknowledged.
async fn run_producer(
    client: Arc<Client>,
    topic: &'static str,
    acked: Arc<AtomicU64>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    const VALUE: usize = 1024;
    let producer = Producer::new(
        client,
        ProducerConfig {
            compression: Compression::None,
            ..ProducerConfig::default()
        },
    )
    .await?;
    let (futures, mut pending) = tokio::sync::mpsc::channel(100_000);
    let counter = tokio::spawn(async move {
        while let Some(delivery) = pending.recv().await {
            let delivery: weir_client::DeliveryFuture = delivery;
            delivery.await?;
            acked.fetch_add(VALUE as u64, Ordering::Relaxed);
        }
        anyhow::Ok(())
    });
    let value = Bytes::from(vec![0x5a; VALUE]);
    while !*stop.borrow() {
        let delivery = producer
            .send(topic, ProducerRecord::new(value.clone()))
            .await?;
        if futures.send(delivery).await.is_err() {
            break;
        }
    }
    drop(futures);
    producer.close().await?;
    counter.await??;
    Ok(())
}

/// Runs producers of `topics` (each with its client) for `warmup` then `window`; each one's
/// acknowledged MB/s over the window.
async fn measure(
    producers: &[(Arc<Client>, &'static str)],
    warmup: Duration,
    window: Duration,
) -> anyhow::Result<Vec<f64>> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    let mut counters = Vec::new();
    for (client, topic) in producers {
        let acked = Arc::new(AtomicU64::new(0));
        counters.push(Arc::clone(&acked));
        tasks.push(tokio::spawn(run_producer(
            Arc::clone(client),
            topic,
            acked,
            stopped.clone(),
        )));
    }
    tokio::time::sleep(warmup).await;
    let start: Vec<u64> = counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let started = tokio::time::Instant::now();
    tokio::time::sleep(window).await;
    let end: Vec<u64> = counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let seconds = started.elapsed().as_secs_f64();
    stop.send_replace(true);
    for task in tasks {
        task.await??;
    }
    Ok(start
        .iter()
        .zip(&end)
        .map(|(s, e)| (e - s) as f64 / seconds / 1e6)
        .collect())
}

/// Two tenants' producers on a secure 3-node cluster (RF 3, one partition each): team-a limited
/// to 5 MB/s of produce, team-b not. Measures team-b alone, then both together, for 20 s each
/// (after 5 s of warm-up, which also spends team-a's one-second burst).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark (about a minute of load): cargo nextest run -p weir-tests --test quotas --run-ignored only"]
async fn bench_a_5_mb_per_s_tenant_leaves_the_other_its_rate() -> anyhow::Result<()> {
    let (cluster, admin) = secure_cluster().await?;
    let alice_token = user_token(&admin, "alice").await?;
    let bob_token = user_token(&admin, "bob").await?;
    for user in ["alice", "bob"] {
        allow_topics(&admin, &format!("User:{user}")).await?;
    }
    tenant(&admin, "team-a", &["User:alice"]).await?;
    tenant(&admin, "team-b", &["User:bob"]).await?;
    quota(
        &admin,
        "tenant:team-a",
        &[("produce.bytes.per.sec", "5000000")],
    )
    .await?;
    let alice = Arc::new(cluster.client(None, Some(&alice_token))?);
    let bob = Arc::new(cluster.client(None, Some(&bob_token))?);
    alice.create_topic("team-a.bench", 1, 3).await?;
    bob.create_topic("team-b.bench", 1, 3).await?;
    let warmup = Duration::from_secs(5);
    let window = Duration::from_secs(20);

    let solo = measure(&[(Arc::clone(&bob), "team-b.bench")], warmup, window).await?[0];
    let both = measure(
        &[
            (Arc::clone(&alice), "team-a.bench"),
            (Arc::clone(&bob), "team-b.bench"),
        ],
        warmup,
        window,
    )
    .await?;
    let (limited, other) = (both[0], both[1]);
    let ratio = other / solo;
    println!(
        "quota bench: limited (5 MB/s) producer {limited:.2} MB/s; unlimited producer {other:.2} MB/s \
         alongside it, {solo:.2} MB/s alone: {:.0}% of its solo rate",
        ratio * 100.0
    );
    assert!(
        (4.5..=5.5).contains(&limited),
        "the limited producer made {limited:.2} MB/s, not 5 MB/s ±10%"
    );
    assert!(
        ratio >= 0.9,
        "the unlimited producer kept {:.0}% of its solo rate ({other:.2} of {solo:.2} MB/s), below 90%",
        ratio * 100.0
    );
    Ok(())
}
