//! `weir local --nodes N`: a development cluster on loopback — N `weir server` child processes
//! with their own data directories (`DIR/node-I`) and logs (`DIR/node-I.log`), ports
//! `BASE`..`BASE+N-1`, all initial controller voters when N is 1, 3 or 5 (otherwise the first
//! three are voters and the rest join). A node that dies is restarted on its data. Ctrl-C (or
//! SIGTERM) stops them cleanly; running it again on the same directory restarts the cluster on
//! its data.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use crate::table::Table;

#[derive(Debug, clap::Args)]
pub(crate) struct LocalArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    nodes: u32,
    /// Where the nodes keep their data and logs.
    #[arg(long, default_value = "weir-local")]
    data_dir: PathBuf,
    /// Port of node 1; node I listens on BASE+I-1.
    #[arg(long, default_value_t = 9092)]
    base_port: u16,
    /// Port of node 1's Kafka listener (node I's is KAFKA_BASE+I-1) [default: BASE+10000,
    /// so 19092 for Kafka clients and kcat].
    #[arg(long)]
    kafka_base_port: Option<u16>,
    /// Durability passed to every node (always, never, interval:MS).
    #[arg(long, default_value = "always")]
    durability: String,
    /// Once the cluster is up, run a short demo: create a topic, produce, consume and replay.
    #[arg(long)]
    demo: bool,
    /// Encrypted and authenticated: a throwaway CA and certificates in DATA_DIR/certs (TLS for
    /// clients, mutual TLS between nodes), security on with User:admin (certificate
    /// client-admin.pem) as super user, and a user `demo` with a bearer token allowed every
    /// topic and group; the token and the CA are printed.
    #[arg(long)]
    secure: bool,
}

/// What a client of a `--secure` cluster needs.
struct SecureClient {
    ca: PathBuf,
    token: String,
    /// The demo user's client settings.
    security: weir_client::Security,
}

/// Sets up the demo user of a secure cluster as the admin (by its client certificate): the user,
/// ACLs for every topic and group, and a fresh token (also written to DATA_DIR/certs/demo.token).
async fn secure_setup(brokers: &[String], certs: &std::path::Path) -> anyhow::Result<SecureClient> {
    use weir_client::access::{Acl, AddAclRequest, CreateTokenRequest, UpsertUserRequest};
    let ca = certs.join("ca.pem");
    let admin = weir_client::Client::with_security(
        brokers,
        weir_client::Security {
            tls: Some(weir_client::TlsOptions::from_files(
                &ca,
                Some(&certs.join("client-admin.pem")),
                Some(&certs.join("client-admin.key")),
            )?),
            token: None,
        },
    )?;
    let password = format!("{:032x}", rand::random::<u128>());
    admin
        .upsert_user(UpsertUserRequest {
            name: "demo".into(),
            password,
            mechanisms: Vec::new(),
        })
        .await
        .context("creating the demo user")?;
    for resource in ["topic", "group"] {
        admin
            .add_acl(AddAclRequest {
                acl: Some(Acl {
                    principal: "User:demo".into(),
                    resource: resource.into(),
                    pattern: "literal".into(),
                    name: "*".into(),
                    operation: "all".into(),
                    permission: "allow".into(),
                }),
            })
            .await
            .with_context(|| format!("allowing the demo user every {resource}"))?;
    }
    let token = admin
        .create_token(CreateTokenRequest {
            user: "demo".into(),
            ttl_ms: 0,
            description: "weir local --secure".into(),
        })
        .await
        .context("creating the demo user's token")?
        .token;
    weir_broker::pki::write_pem(&certs.join("demo.token"), &format!("{token}\n"), true)?;
    let security = weir_client::Security {
        tls: Some(weir_client::TlsOptions::from_files(&ca, None, None)?),
        token: Some(token.clone()),
    };
    Ok(SecureClient {
        ca,
        token,
        security,
    })
}

/// The demo: a replicated topic; ten records in (five stamped a minute ago, five now), all of them
/// out; a replay from an offset and one from a time; a consumer group that reads and commits.
async fn demo(
    brokers: &[String],
    replication_factor: u32,
    security: weir_client::Security,
) -> anyhow::Result<()> {
    use std::sync::Arc;
    use weir_client::{Consumer, ConsumerConfig, Producer, ProducerConfig, ProducerRecord};

    let client = Arc::new(weir_client::Client::with_security(brokers, security)?);
    let topic = "weir-demo";
    // A rerun finds the topic from the run before: that is fine (the group then resumes).
    match client.create_topic(topic, 1, replication_factor).await {
        Ok(_) => println!(
            "demo: created topic {topic} (1 partition, replication factor {replication_factor})"
        ),
        Err(err) if err.code() == Some(weir_client::Code::AlreadyExists) => {
            println!("demo: topic {topic} exists from an earlier run; adding to it");
        }
        Err(err) => return Err(err).context("creating the demo topic"),
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let a_minute_ago = now - 60_000;
    let producer = Producer::new(Arc::clone(&client), ProducerConfig::default()).await?;
    let mut deliveries = Vec::new();
    for i in 1..=10 {
        let stamp = if i <= 5 { a_minute_ago + i } else { now + i };
        let record = ProducerRecord::new(format!("hello {i}"))
            .key(format!("user-{}", i % 3))
            .header("source", "weir-demo")
            .timestamp_ms(stamp)
            .partition(0);
        deliveries.push(producer.send(topic, record).await?);
    }
    producer.flush().await?;
    let mut offsets = Vec::new();
    for delivery in deliveries {
        offsets.push(
            delivery
                .await?
                .offset
                .context("acks=all answers with offsets")?,
        );
    }
    producer.close().await?;
    let (first, last) = match (offsets.first(), offsets.last()) {
        (Some(first), Some(last)) => (*first, *last),
        _ => bail!("no demo record was produced"),
    };
    println!(
        "demo: produced 10 records at offsets {first}..{last} (acknowledged by a majority, on disk; \
         hello 1-5 stamped a minute ago, hello 6-10 now)"
    );
    let values = |records: &[weir_client::FetchedRecord]| {
        records
            .iter()
            .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or(b"")).into_owned())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let fetched = client.fetch(topic, 0, first, 1 << 20).await?;
    for record in fetched.records.iter().take(10) {
        println!(
            "demo: offset {:>4}  key {:<7} {}",
            record.offset,
            String::from_utf8_lossy(record.key.as_deref().unwrap_or(b"")),
            String::from_utf8_lossy(record.value.as_deref().unwrap_or(b""))
        );
    }
    let replay_from = first + 7;
    let replay = client.fetch(topic, 0, replay_from, 1 << 20).await?;
    println!(
        "demo: replay from offset {replay_from}: {}",
        values(&replay.records)
    );
    let thirty_seconds_ago = now - 30_000;
    let by_time = client
        .list_offsets(topic, 0, Some(thirty_seconds_ago))
        .await?
        .offset_for_timestamp
        .context("the broker answers offsets for a time")?;
    let replay = client.fetch(topic, 0, by_time, 1 << 20).await?;
    println!(
        "demo: replay from 30 seconds ago (offset {by_time}): {}",
        values(&replay.records)
    );
    let group = "weir-demo-group";
    let committed_offset = || async {
        Ok::<_, weir_client::ClientError>(
            client
                .fetch_offsets(group, &[topic.to_string()])
                .await?
                .into_iter()
                .find(|o| o.partition == 0)
                .map(|o| o.offset),
        )
    };
    match committed_offset().await? {
        Some(offset) => println!(
            "demo: consumer group {group} resumes at offset {offset}, where the last run committed"
        ),
        None => println!("demo: consumer group {group} is new: it starts at the earliest offset"),
    }
    let mut consumer = Consumer::join(
        Arc::clone(&client),
        group,
        &[topic.to_string()],
        ConsumerConfig {
            reset: weir_client::ResetPolicy::Earliest,
            ..ConsumerConfig::default()
        },
    )
    .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut read = 0usize;
    loop {
        read += consumer.poll().await?.len();
        if (read > 0 && consumer.caught_up()) || tokio::time::Instant::now() >= deadline {
            break;
        }
    }
    consumer.close().await?;
    let position = committed_offset().await?.unwrap_or(0);
    println!(
        "demo: consumer group {group} read {read} records and committed offset {position} \
         (run the demo again: the group resumes there and reads only the new records)"
    );
    Ok(())
}

/// SIGINT and SIGTERM, listened to from the moment they are installed.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            terminate: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

struct Running {
    id: u32,
    child: Child,
    /// When it was restarted after exiting.
    restarts: Vec<std::time::Instant>,
}

fn stop(children: &mut [Running]) {
    for running in children.iter() {
        if let Some(pid) = running.child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
    }
}

pub(crate) async fn run(args: LocalArgs) -> anyhow::Result<()> {
    if args.nodes == 0 || args.nodes > 9 {
        bail!("--nodes {} must be between 1 and 9", args.nodes);
    }
    if u32::from(args.base_port) + args.nodes > 65_535 {
        bail!(
            "--base-port {} leaves no room for {} nodes",
            args.base_port,
            args.nodes
        );
    }
    let kafka_base = match args.kafka_base_port {
        Some(port) => u32::from(port),
        None => u32::from(args.base_port) + 10_000,
    };
    if kafka_base + args.nodes > 65_535 {
        bail!(
            "the Kafka ports from {kafka_base} leave no room for {} nodes: give --kafka-base-port",
            args.nodes
        );
    }
    if kafka_base < u32::from(args.base_port) + args.nodes
        && u32::from(args.base_port) < kafka_base + args.nodes
    {
        bail!(
            "--kafka-base-port {kafka_base} overlaps the nodes' ports from --base-port {}",
            args.base_port
        );
    }
    weir_broker::parse_durability(&args.durability)
        .map_err(|err| anyhow::anyhow!("--durability {err}"))?;
    // Installed before any node starts: a Ctrl-C or SIGTERM during the set-up or the demo stops
    // the nodes too, instead of killing this process and leaving them running.
    let mut signals = Signals::install()?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let exe = std::env::current_exe().context("finding the weir binary")?;
    let addr = |id: u32| format!("127.0.0.1:{}", u32::from(args.base_port) + id - 1);
    let kafka_addr = |id: u32| format!("127.0.0.1:{}", kafka_base + id - 1);
    let voters: u32 = if [1, 3, 5].contains(&args.nodes) {
        args.nodes
    } else {
        args.nodes.min(3)
    };
    let peers: Vec<String> = (1..=voters)
        .map(|id| format!("{id}@{}", addr(id)))
        .collect();
    let certs = args.data_dir.join("certs");
    if args.secure {
        let hosts = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        let nodes: Vec<(u64, Vec<String>)> = (1..=u64::from(args.nodes))
            .map(|id| (id, hosts.clone()))
            .collect();
        weir_broker::pki::write_cluster(&certs, &nodes, &["admin".to_string()])
            .with_context(|| format!("making certificates in {}", certs.display()))?;
    }
    let spawn = |id: u32| -> anyhow::Result<Child> {
        let dir = args.data_dir.join(format!("node-{id}"));
        let log_path = args.data_dir.join(format!("node-{id}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut command = Command::new(&exe);
        // The nodes get their settings from these flags only, not from this shell's WEIR_*.
        for (key, _) in std::env::vars() {
            if key.starts_with("WEIR_") {
                command.env_remove(&key);
            }
        }
        command
            .arg("server")
            .arg("--id")
            .arg(id.to_string())
            .arg("--addr")
            .arg(addr(id))
            .arg("--kafka-addr")
            .arg(kafka_addr(id))
            .arg("--data-dir")
            .arg(&dir)
            .arg("--durability")
            .arg(&args.durability)
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        if args.secure {
            command
                .arg("--tls-cert")
                .arg(certs.join(format!("node-{id}.pem")))
                .arg("--tls-key")
                .arg(certs.join(format!("node-{id}.key")))
                .arg("--tls-ca")
                .arg(certs.join("ca.pem"))
                .arg("--security-enabled")
                .arg("--security-super-users")
                .arg("User:admin");
        }
        if id <= voters {
            command.arg("--peers").arg(peers.join(","));
        } else {
            command.arg("--join").arg(addr(1));
        }
        command
            .spawn()
            .with_context(|| format!("starting node {id}"))
    };
    let mut children = Vec::new();
    for id in 1..=args.nodes {
        children.push(Running {
            id,
            child: spawn(id)?,
            restarts: Vec::new(),
        });
    }
    println!("weir local: {} nodes running", args.nodes);
    let mut table = Table::new(&["NODE", "ADDRESS", "KAFKA", "ROLE", "DATA", "LOG"]);
    for id in 1..=args.nodes {
        table.row([
            id.to_string(),
            addr(id),
            kafka_addr(id),
            if id <= voters { "voter" } else { "joins" }.to_string(),
            args.data_dir
                .join(format!("node-{id}"))
                .display()
                .to_string(),
            args.data_dir
                .join(format!("node-{id}.log"))
                .display()
                .to_string(),
        ]);
    }
    table.print();
    let brokers: Vec<String> = (1..=args.nodes).map(addr).collect();
    let weir = exe.display();
    let kafka_bootstrap: Vec<String> = (1..=args.nodes).map(kafka_addr).collect();
    println!(
        "Kafka clients: bootstrap servers {} (for example: kcat -b {} -L)",
        kafka_bootstrap.join(","),
        kafka_bootstrap.first().map_or("", String::as_str)
    );
    println!("Ctrl-C stops the cluster; run the same command again to restart it on its data.");
    let setup = async {
        let mut security = weir_client::Security::default();
        let mut exports = vec![format!("  export WEIR_BROKERS={}", brokers.join(","))];
        if args.secure {
            match secure_setup(&brokers, &certs).await {
                Ok(secure) => {
                    println!(
                        "secure: TLS everywhere, mutual TLS between nodes; user demo may use every \
                     topic and group with its token (also in {}); super user admin has the \
                     certificate {}",
                        certs.join("demo.token").display(),
                        certs.join("client-admin.pem").display()
                    );
                    exports.push(format!("  export WEIR_TLS_CA={}", secure.ca.display()));
                    exports.push(format!("  export WEIR_TOKEN={}", secure.token));
                    security = secure.security;
                }
                Err(err) => eprintln!("secure setup failed: {err:#}"),
            }
        }
        if args.demo
            && let Err(err) = demo(&brokers, args.nodes.min(3), security).await
        {
            eprintln!("demo failed: {err:#}");
        }
        println!("try, in another terminal:");
        for line in &exports {
            println!("{line}");
        }
        println!(
            "  {weir} topic create demo --partitions 3 --replication-factor {}",
            args.nodes.min(3)
        );
        println!("  seq 1 10 | {weir} produce demo");
        println!(
            "  printf 'alice:1\\nbob:2\\n' | {weir} produce demo --separator : --header src=cli"
        );
        println!("  {weir} consume demo --from earliest --output json");
        println!("  {weir} consume demo --group readers --from earliest   # again: resumes");
        println!("  {weir} consume weir-demo --from @$(date -u -d '-5 min' +%FT%TZ)");
        println!("  {weir} group describe readers");
        println!("  {weir} cluster status");
    };
    let stopped_early = tokio::select! {
        () = setup => false,
        () = signals.recv() => true,
    };

    // A node that dies (a crash, or `kill -9` to try failover) is restarted on its data after a
    // second; one that keeps dying (5 times in a minute) stops the cluster.
    let outcome = if stopped_early {
        None
    } else {
        let supervise = async {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                for running in children.iter_mut() {
                    let Ok(Some(status)) = running.child.try_wait() else {
                        continue;
                    };
                    let log = args.data_dir.join(format!("node-{}.log", running.id));
                    running
                        .restarts
                        .retain(|at| at.elapsed() < Duration::from_secs(60));
                    if running.restarts.len() >= 5 {
                        return Err::<(), _>(anyhow::anyhow!(
                            "node {} keeps exiting ({status}); see {}",
                            running.id,
                            log.display()
                        ));
                    }
                    eprintln!(
                        "node {} exited ({status}); restarting it in 1 s (log: {})",
                        running.id,
                        log.display()
                    );
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    running.child = match spawn(running.id) {
                        Ok(child) => child,
                        Err(err) => return Err(err),
                    };
                    running.restarts.push(std::time::Instant::now());
                }
            }
        };
        tokio::select! {
            () = signals.recv() => None,
            failed = supervise => Some(failed),
        }
    };
    if let Some(Err(err)) = &outcome {
        eprintln!("{err:#}; stopping the others");
    }
    println!("stopping {} nodes", children.len());
    stop(&mut children);
    for running in children.iter_mut() {
        match tokio::time::timeout(Duration::from_secs(15), running.child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                eprintln!("node {} did not stop within 15 s; killing it", running.id);
                let _ = running.child.kill().await;
            }
        }
    }
    if outcome.is_some() {
        bail!("a node exited unexpectedly");
    }
    println!("stopped");
    Ok(())
}
