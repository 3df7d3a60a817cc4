//! Real Kafka clients (confluent-kafka with librdkafka inside, kafka-python; from PyPI into a
//! venv under `target/kafka-clients/`, see `tests/kafka/`) against the Kafka listeners of a
//! 3-node process cluster:
//! - an idempotent producer sends 100,000 records while the leader of a partition is killed
//!   with SIGKILL (and restarted): every acknowledged record is stored once, at the offset its
//!   acknowledgement named, none is lost, none duplicated, each partition in send order;
//! - two consumers in one group split the partitions; one leaves, the other takes over from the
//!   committed offsets; Weir's own group API then sees those offsets, and a gRPC consumer of
//!   the group continues from them; kafka-python's admin client creates and describes a topic
//!   and its settings, and lists and describes the groups with their offsets;
//! - SASL users (SCRAM-SHA-256/512, PLAIN over TLS) are authenticated and held to their ACLs.
//!
//! Without python3 these tests fail, naming what to install; they never skip.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::Value;
use weir_tests::cli::weir;
use weir_tests::process_cluster::ProcessCluster;
use weir_tests::python::{run, venv};

const RECORDS: usize = 100_000;
const WAIT: Duration = Duration::from_secs(60);

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("kafka")
}

fn python() -> anyhow::Result<PathBuf> {
    venv("kafka-clients", &clients_dir().join("requirements.txt"))
}

/// `clients.py ARGS` to completion: its findings (the JSON on its last stdout line).
fn clients(python: &Path, args: &[&str], within: Duration) -> anyhow::Result<Value> {
    let result = run(
        Command::new(python)
            .arg(clients_dir().join("clients.py"))
            .args(args),
        within,
    )?;
    ensure!(
        result.status.success(),
        "clients.py {args:?}: {}",
        result.describe()
    );
    let last = result.stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .with_context(|| format!("clients.py {args:?} printed {}", result.describe()))
}

fn weir_ok(cluster: &ProcessCluster, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    let brokers = cluster.brokers().join(",");
    let run = weir(
        cluster.binary(),
        &[args, &["--brokers", &brokers]].concat(),
        stdin,
    )?;
    ensure!(run.code == Some(0), "weir {args:?}: {}", run.stderr);
    Ok(run.stdout)
}

/// A cluster with Kafka listeners and a topic, once the Kafka metadata shows every broker.
fn cluster_with_topic(topic: &str, partitions: u32) -> anyhow::Result<ProcessCluster> {
    let cluster = ProcessCluster::start_kafka(3)?;
    weir_ok(
        &cluster,
        &[
            "topic",
            "create",
            topic,
            "-p",
            &partitions.to_string(),
            "-r",
            "3",
        ],
        None,
    )?;
    wait_for_kafka_listeners(&cluster, |args| weir_ok(&cluster, args, None))?;
    Ok(cluster)
}

/// Waits until the metadata names every node's Kafka listener (`weir` runs `weir ARGS`).
fn wait_for_kafka_listeners(
    cluster: &ProcessCluster,
    weir: impl Fn(&[&str]) -> anyhow::Result<String>,
) -> anyhow::Result<()> {
    weir_tests::eventually_blocking(WAIT, "every node's Kafka listener in the metadata", || {
        let status = weir(&["cluster", "status", "--output", "json"])?;
        let listed = cluster
            .node_ids()
            .into_iter()
            .filter(|id| {
                cluster
                    .kafka_addr(*id)
                    .is_ok_and(|a| status.contains(&a.to_string()))
            })
            .count();
        ensure!(listed == cluster.node_ids().len(), "{status}");
        Ok(())
    })
}

/// Every record of `topic` through weir: partition → [(offset, value)] in offset order.
fn stored(
    cluster: &ProcessCluster,
    topic: &str,
    count: usize,
) -> anyhow::Result<BTreeMap<u64, Vec<(u64, String)>>> {
    let out = weir_ok(
        cluster,
        &[
            "consume",
            topic,
            "--from",
            "earliest",
            "--count",
            &count.to_string(),
            "--output",
            "json",
        ],
        None,
    )?;
    let mut by_partition: BTreeMap<u64, Vec<(u64, String)>> = BTreeMap::new();
    for line in out.lines() {
        let v: Value = serde_json::from_str(line)?;
        by_partition
            .entry(v["partition"].as_u64().context("partition")?)
            .or_default()
            .push((
                v["offset"].as_u64().context("offset")?,
                v["value"].as_str().context("value")?.to_string(),
            ));
    }
    for records in by_partition.values_mut() {
        records.sort();
    }
    Ok(by_partition)
}

/// The leader of `topic`'s partition `partition`, by the metadata of the cluster's nodes.
fn leader_of(cluster: &ProcessCluster, topic: &str, partition: u32) -> anyhow::Result<u64> {
    weir_tests::eventually_blocking(WAIT, "a leader for the partition", || {
        let described = weir_ok(
            cluster,
            &["topic", "describe", topic, "--output", "json"],
            None,
        )?;
        let v: Value = serde_json::from_str(&described)?;
        let leader = v["partitions"]
            .as_array()
            .and_then(|ps| {
                ps.iter()
                    .find(|p| p["partition"].as_u64() == Some(u64::from(partition)))
            })
            .and_then(|p| p["leader"].as_u64())
            .unwrap_or(0);
        ensure!(leader != 0, "no leader yet: {described}");
        Ok(leader)
    })
}

fn lines_in(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

/// Kills the child's process on drop (a failed test leaves no producer behind).
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn an_idempotent_producer_loses_and_duplicates_nothing_while_a_leader_is_killed()
-> anyhow::Result<()> {
    let python = python()?;
    let mut cluster = cluster_with_topic("orders", 3)?;
    let bootstrap = cluster.kafka_bootstrap()?;
    let dir = tempfile::tempdir()?;
    let acked = dir.path().join("acked.txt");
    let findings = dir.path().join("findings.json");
    let producer = Command::new(&python)
        .arg(clients_dir().join("clients.py"))
        .args(["produce", "--bootstrap", &bootstrap, "--topic", "orders"])
        .args(["--count", &RECORDS.to_string()])
        .arg("--acked")
        .arg(&acked)
        .stdout(std::fs::File::create(&findings)?)
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the producer")?;
    let mut producer = Reaped(producer);

    // Once a fifth is acknowledged, SIGKILL partition 0's leader, and bring it back.
    let started = Instant::now();
    while lines_in(&acked) < RECORDS / 5 {
        if let Some(status) = producer.0.try_wait()? {
            bail!(
                "the producer ended early ({status}): {}",
                std::fs::read_to_string(&findings)?
            );
        }
        ensure!(
            started.elapsed() < Duration::from_secs(120),
            "the producer is stuck at {} acks",
            lines_in(&acked)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let victim = leader_of(&cluster, "orders", 0)?;
    cluster.kill(victim)?;
    let killed_at = lines_in(&acked);
    std::thread::sleep(Duration::from_secs(3));
    cluster.restart(victim)?;
    let status = loop {
        if let Some(status) = producer.0.try_wait()? {
            break status;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(280),
            "the producer did not finish"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let report: Value = serde_json::from_str(
        std::fs::read_to_string(&findings)?
            .lines()
            .last()
            .unwrap_or("{}"),
    )?;
    ensure!(
        status.success() && report["failures"] == 0 && report["undelivered"] == 0,
        "producer: {status} {report}"
    );
    ensure!(
        killed_at < RECORDS,
        "the kill came after the last acknowledgement"
    );

    // What the producer was told, and what is stored.
    let mut acks: HashMap<String, (u64, u64)> = HashMap::new();
    for line in std::fs::read_to_string(&acked)?.lines() {
        let mut parts = line.split(' ');
        let (Some(p), Some(o), Some(v)) = (parts.next(), parts.next(), parts.next()) else {
            bail!("bad ack line {line:?}");
        };
        ensure!(
            acks.insert(v.to_string(), (p.parse()?, o.parse()?))
                .is_none(),
            "{v} acknowledged twice"
        );
    }
    ensure!(
        acks.len() == RECORDS,
        "{} of {RECORDS} acknowledged",
        acks.len()
    );
    let stored = stored(&cluster, "orders", RECORDS)?;
    let mut seen: HashMap<&str, (u64, u64)> = HashMap::new();
    for (partition, records) in &stored {
        let mut last = None;
        for (offset, value) in records {
            ensure!(
                seen.insert(value, (*partition, *offset)).is_none(),
                "{value} stored twice"
            );
            // Values are the send order; within a partition they only grow.
            let n: u64 = value.trim_start_matches('v').parse()?;
            ensure!(
                last.is_none_or(|l| l < n),
                "partition {partition}: {value} after v{last:?} at offset {offset}"
            );
            last = Some(n);
        }
    }
    let lost: Vec<&String> = acks
        .keys()
        .filter(|v| !seen.contains_key(v.as_str()))
        .take(5)
        .collect();
    ensure!(lost.is_empty(), "acknowledged but not stored: {lost:?}");
    ensure!(
        seen.len() == RECORDS,
        "{} stored, {RECORDS} sent",
        seen.len()
    );
    for (value, at) in &acks {
        ensure!(
            seen.get(value.as_str()) == Some(at),
            "{value} acknowledged at {at:?}, stored at {:?}",
            seen.get(value.as_str())
        );
    }
    eprintln!(
        "kafka idempotence: {RECORDS} sent, node {victim} killed after {killed_at} acks; 0 lost, 0 duplicated, in order"
    );
    Ok(())
}

#[test]
fn kafka_consumers_split_a_group_and_one_takes_over_from_the_commits() -> anyhow::Result<()> {
    const COUNT: usize = 20_000;
    let python = python()?;
    let cluster = cluster_with_topic("work", 3)?;
    let bootstrap = cluster.kafka_bootstrap()?;
    let dir = tempfile::tempdir()?;
    let acked = dir.path().join("acked.txt");
    let produced = clients(
        &python,
        &[
            "produce",
            "--bootstrap",
            &bootstrap,
            "--topic",
            "work",
            "--count",
            &COUNT.to_string(),
            "--acked",
            &acked.display().to_string(),
            "--compression",
            "gzip",
        ],
        Duration::from_secs(180),
    )?;
    ensure!(produced["failures"] == 0, "{produced}");
    let group = clients(
        &python,
        &[
            "group",
            "--bootstrap",
            &bootstrap,
            "--topic",
            "work",
            "--group",
            "workers",
            "--partitions",
            "3",
            "--expect",
            &COUNT.to_string(),
        ],
        Duration::from_secs(240),
    )?;
    ensure!(group["read"] == COUNT, "{group}");
    ensure!(group["taken_over"] == true, "{group}");
    let split = &group["split"];
    let (a, b) = (split["a"].as_array(), split["b"].as_array());
    ensure!(
        a.is_some_and(|a| !a.is_empty()) && b.is_some_and(|b| !b.is_empty()),
        "{group}"
    );
    ensure!(
        group["read_by_a_before_leaving"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "{group}"
    );

    // Weir's group API sees the offsets the Kafka consumers committed: all of them.
    let described: Value = serde_json::from_str(&weir_ok(
        &cluster,
        &["group", "describe", "workers", "--output", "json"],
        None,
    )?)?;
    let mut total = 0;
    for p in described["partitions"].as_array().context("partitions")? {
        ensure!(
            p["committed"] == p["high_watermark"] && p["lag"] == 0,
            "{described}"
        );
        ensure!(
            group["committed"][p["partition"].to_string()] == p["committed"],
            "kafka {group} weir {described}"
        );
        total += p["committed"].as_u64().unwrap_or(0);
    }
    ensure!(total == COUNT as u64, "{described}");
    // A gRPC member of the group continues from there: it reads only what comes next.
    weir_ok(
        &cluster,
        &["produce", "work", "--partition", "1"],
        Some("after 1\nafter 2\n"),
    )?;
    let next = weir_ok(
        &cluster,
        &["consume", "work", "--group", "workers", "--count", "2"],
        None,
    )?;
    ensure!(
        next.lines().collect::<Vec<_>>() == ["after 1", "after 2"],
        "{next}"
    );

    // A group to delete through Kafka: it has committed offsets and no members.
    weir_ok(
        &cluster,
        &[
            "consume", "work", "--group", "doomed", "--from", "earliest", "--count", "2",
        ],
        None,
    )?;

    // kafka-python's admin client: a topic with a setting, its description and settings, the
    // groups and their committed offsets; then the topic grows and changes its settings, and a
    // group is deleted.
    let admin = clients(
        &python,
        &[
            "admin",
            "--bootstrap",
            &bootstrap,
            "--topic",
            "made-by-kafka",
            "--group",
            "workers",
            "--delete-group",
            "doomed",
        ],
        Duration::from_secs(120),
    )?;
    ensure!(
        admin["topics"][0]["name"] == "made-by-kafka"
            && admin["topics"][0]["partitions"] == 4
            && admin["topics"][0]["replicas"] == serde_json::json!([3, 3, 3, 3]),
        "{admin}"
    );
    ensure!(admin["config"]["retention.ms"] == "3600000", "{admin}");
    ensure!(
        admin["groups"]
            .as_array()
            .is_some_and(|g| g.iter().any(|g| g == "workers")),
        "{admin}"
    );
    ensure!(admin["described"]["workers"]["state"] == "Empty", "{admin}");
    let described: Value = serde_json::from_str(&weir_ok(
        &cluster,
        &["group", "describe", "workers", "--output", "json"],
        None,
    )?)?;
    for p in described["partitions"].as_array().context("partitions")? {
        let key = format!("work/{}", p["partition"]);
        ensure!(
            admin["offsets"][&key] == p["committed"],
            "kafka {admin} weir {described}"
        );
    }

    // CreatePartitions grew it to 6 (and refused to shrink it); IncrementalAlterConfigs set
    // retention.bytes and reset retention.ms; a whole-set AlterConfigs added segment.bytes; an
    // out-of-range value was refused and changed nothing; DeleteGroups removed the group once.
    ensure!(
        admin["grow_errors"] == serde_json::json!([0]) && admin["partitions_after_grow"] == 6,
        "{admin}"
    );
    ensure!(
        admin["shrink_errors"] == serde_json::json!([37]),
        "INVALID_PARTITIONS expected: {admin}"
    );
    ensure!(
        admin["incremental"] == "OK" && admin["whole"] == "OK",
        "{admin}"
    );
    let own = serde_json::json!({"retention.bytes": "5000000"});
    ensure!(admin["after_incremental"] == own, "{admin}");
    let own = serde_json::json!({"retention.bytes": "5000000", "segment.bytes": "2097152"});
    ensure!(admin["after_whole"] == own, "{admin}");
    ensure!(
        admin["refused"]
            .as_str()
            .is_some_and(|r| r.contains("InvalidConfigurationError")),
        "{admin}"
    );
    ensure!(admin["after_refused"] == own, "{admin}");
    ensure!(admin["deleted"]["doomed"] == "OK", "{admin}");
    ensure!(
        admin["deleted_again"]["doomed"] == "GroupIdNotFoundError",
        "{admin}"
    );
    // Weir's own API agrees: six partitions with leaders, the settings, and no group "doomed".
    let topic: Value = serde_json::from_str(&weir_ok(
        &cluster,
        &["topic", "describe", "made-by-kafka", "--output", "json"],
        None,
    )?)?;
    ensure!(
        topic["partitions"].as_array().map(Vec::len) == Some(6),
        "{topic}"
    );
    ensure!(
        topic["configs"]["retention.bytes"] == "5000000"
            && topic["configs"]["segment.bytes"] == "2097152"
            && topic["configs"]["retention.ms"] == "604800000",
        "{topic}"
    );
    let groups = weir_ok(&cluster, &["group", "list", "--output", "json"], None)?;
    ensure!(
        !groups.contains("\"doomed\"") && groups.contains("\"workers\""),
        "{groups}"
    );
    Ok(())
}

/// `weir ARGS` as the super user `admin` (its client certificate) of a TLS cluster.
fn as_admin(
    cluster: &ProcessCluster,
    args: &[&str],
    stdin: Option<&str>,
) -> anyhow::Result<String> {
    let dir = cluster.tls_dir().context("a TLS cluster")?;
    let path = |name: &str| dir.join(name).display().to_string();
    let (ca, cert, key) = (
        path("ca.pem"),
        path("client-admin.pem"),
        path("client-admin.key"),
    );
    let brokers = cluster.brokers().join(",");
    let run = weir_tests::cli::weir_with_env(
        cluster.binary(),
        &[args, &["--brokers", &brokers]].concat(),
        &[
            ("WEIR_TLS_CA", &ca),
            ("WEIR_TLS_CERT", &cert),
            ("WEIR_TLS_KEY", &key),
        ],
        stdin,
    )?;
    ensure!(run.code == Some(0), "weir {args:?}: {}", run.stderr);
    Ok(run.stdout)
}

#[test]
fn sasl_users_authenticate_over_tls_and_acls_decide_what_they_may_do() -> anyhow::Result<()> {
    let python = python()?;
    let cluster = ProcessCluster::start_tls(
        3,
        &[
            "--security-enabled",
            "--security-super-users",
            "User:admin",
            "--kafka-addr",
            "127.0.0.1:0",
        ],
    )?;
    as_admin(
        &cluster,
        &["topic", "create", "payments", "-p", "1", "-r", "3"],
        None,
    )?;
    as_admin(
        &cluster,
        &["user", "create", "carol", "--password-stdin"],
        Some("c4rol-pw\n"),
    )?;
    wait_for_kafka_listeners(&cluster, |args| as_admin(&cluster, args, None))?;
    let bootstrap = cluster.kafka_bootstrap()?;
    let ca = cluster
        .tls_dir()
        .context("tls")?
        .join("ca.pem")
        .display()
        .to_string();
    let sasl = |mechanism: &str, password: &str, records: u32| {
        clients(
            &python,
            &[
                "sasl",
                "--bootstrap",
                &bootstrap,
                "--topic",
                "payments",
                "--user",
                "carol",
                "--password",
                password,
                "--mechanism",
                mechanism,
                "--ca",
                &ca,
                "--records",
                &records.to_string(),
            ],
            Duration::from_secs(120),
        )
    };
    // Authenticated, but no ACL: refused, by name.
    let denied = sasl("SCRAM-SHA-256", "c4rol-pw", 1)?;
    ensure!(
        denied["produce"] == "TOPIC_AUTHORIZATION_FAILED",
        "{denied}"
    );
    ensure!(
        denied["consume"] == "GROUP_AUTHORIZATION_FAILED"
            || denied["consume"] == "TOPIC_AUTHORIZATION_FAILED",
        "{denied}"
    );
    // A wrong password does not authenticate at all.
    let wrong = sasl("SCRAM-SHA-512", "not-her-password", 1)?;
    ensure!(
        wrong["authentication"] == "_AUTHENTICATION" && wrong["produce"] != "none",
        "{wrong}"
    );
    // With ACLs for the topic and the group, every mechanism works.
    for (resource, name, operation) in [
        ("topic", "payments", "write"),
        ("topic", "payments", "read"),
        ("topic", "payments", "describe"),
        ("group", "sasl-group", "read"),
    ] {
        as_admin(
            &cluster,
            &[
                "acl",
                "add",
                "--principal",
                "User:carol",
                "--resource",
                resource,
                "--name",
                name,
                "--operation",
                operation,
            ],
            None,
        )?;
    }
    for mechanism in ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"] {
        let allowed = sasl(mechanism, "c4rol-pw", 1)?;
        ensure!(
            allowed["produce"] == "none" && allowed["consume"] == "none",
            "{mechanism}: {allowed}"
        );
        ensure!(allowed["throttled_ms"] == 0, "no quota yet: {allowed}");
    }
    // Her quotas apply to Kafka requests as to gRPC ones: 80 kB at 10 kB/s is throttled (the
    // answers say for how long, as Kafka's do) and never refused.
    as_admin(
        &cluster,
        &[
            "quota",
            "set",
            "user:carol",
            "-l",
            "produce.bytes.per.sec=10000",
            "-l",
            "fetch.bytes.per.sec=10000",
        ],
        None,
    )?;
    let throttled = sasl("SCRAM-SHA-256", "c4rol-pw", 20)?;
    ensure!(
        throttled["produce"] == "none" && throttled["consume"] == "none",
        "{throttled}"
    );
    ensure!(
        throttled["throttled_ms"].as_u64().is_some_and(|ms| ms > 0),
        "carol's requests over her quota were not throttled: {throttled}"
    );
    // Refusals are in the audit log of some node.
    let audited = (1..=3).any(|id| {
        std::fs::read_to_string(cluster.data_dir(id).join("audit.log")).is_ok_and(|log| {
            log.contains("Kafka SASL") && log.contains("User:carol") || log.contains("Kafka SASL")
        })
    });
    ensure!(audited, "no node audited the refused SASL authentication");
    Ok(())
}
