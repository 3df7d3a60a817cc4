//! A cluster of real `weir server` processes on loopback, for multi-process fault tests: start,
//! SIGKILL and restart nodes on their data directories, and inspect each node's partition logs
//! on disk after the cluster stopped.
//!
//! The `weir` binary is built (if needed) with the same cargo and profile that built the test.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use weir_storage::{LogConfig, PartitionLog};

use crate::ports::PortReservation;

/// Path of the `weir` binary, built first if it is missing or stale.
pub fn weir_binary() -> anyhow::Result<PathBuf> {
    let test_exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> → target/<profile>
    let profile_dir = test_exe
        .parent()
        .and_then(Path::parent)
        .context("test binary is not in target/<profile>/deps")?
        .to_path_buf();
    let target_dir = profile_dir.parent().context("no target dir")?.to_path_buf();
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args([
            "build",
            "--quiet",
            "-p",
            "weir",
            "--bin",
            "weir",
            "--target-dir",
        ])
        .arg(&target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if release {
        build.arg("--release");
    }
    let status = build.status().context("running cargo build -p weir")?;
    if !status.success() {
        bail!("cargo build -p weir failed");
    }
    let binary = profile_dir.join("weir");
    if !binary.exists() {
        bail!("{} was not built", binary.display());
    }
    Ok(binary)
}

/// How long nodes get to stop cleanly on SIGTERM.
const STOP_WITHIN: Duration = Duration::from_secs(20);
/// How long a node gets to bind its listeners and report them in its ready file.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// N `weir server` processes.
///
/// Addresses: the initial controller voters must name each other in `--peers` before any of them
/// runs, so the cluster reserves their ports first (see [`PortReservation`]) and each binds its
/// own; a node added later binds port 0. Every node reports the address it bound in its
/// `--ready-file`, which [`ProcessCluster`] waits for (and checks) before it goes on. Once a node
/// listens on a port, the port stays the node's: held by a reservation while the node is down,
/// it is rebound on restart.
#[derive(Debug)]
pub struct ProcessCluster {
    binary: PathBuf,
    root: tempfile::TempDir,
    /// Node id → the address it listens on.
    addrs: BTreeMap<u64, SocketAddr>,
    /// Ports held for nodes (the initial voters from the start, others once they were killed).
    reservations: BTreeMap<u64, PortReservation>,
    children: BTreeMap<u64, Child>,
    /// The initial controller voters; nodes added later join through node 1.
    voters: Vec<u64>,
    /// Extra flags for every node.
    pub extra_args: Vec<String>,
    /// With TLS: the directory of the cluster's certificates (see [`ProcessCluster::start_tls`]).
    tls_dir: Option<PathBuf>,
}

/// Users that [`ProcessCluster::start_tls`] makes client certificates for. `admin` is a super
/// user when security is on.
pub const TLS_USERS: &[&str] = &["admin", "alice", "bob"];

impl ProcessCluster {
    /// Starts `n` nodes, all initial controller voters, and waits until each listens.
    pub fn start(n: u64) -> anyhow::Result<Self> {
        Self::start_with(n, false, &[])
    }

    /// Starts `n` nodes with `extra_args` on each (`weir server` flags).
    pub fn start_with_args(n: u64, extra_args: &[&str]) -> anyhow::Result<Self> {
        Self::start_with(n, false, extra_args)
    }

    /// Starts `n` nodes, each with a Kafka listener on a port of its own (see
    /// [`ProcessCluster::kafka_addr`]).
    pub fn start_kafka(n: u64) -> anyhow::Result<Self> {
        Self::start_with(n, false, &["--kafka-addr", "127.0.0.1:0"])
    }

    /// Node `id`'s Kafka listener (from its ready file).
    pub fn kafka_addr(&self, id: u64) -> anyhow::Result<SocketAddr> {
        let text = std::fs::read_to_string(self.ready_file(id))
            .with_context(|| format!("node {id}'s ready file"))?;
        let addr = text
            .lines()
            .find_map(|line| line.strip_prefix("kafka_addr="))
            .with_context(|| format!("node {id} has no Kafka listener: {text:?}"))?;
        addr.parse()
            .with_context(|| format!("kafka_addr={addr} is not IP:PORT"))
    }

    /// Every running node's Kafka listener, comma-separated (Kafka's `bootstrap.servers`).
    pub fn kafka_bootstrap(&self) -> anyhow::Result<String> {
        let addrs: anyhow::Result<Vec<String>> = self
            .children
            .keys()
            .map(|id| self.kafka_addr(*id).map(|a| a.to_string()))
            .collect();
        Ok(addrs?.join(","))
    }

    /// Starts `n` nodes with TLS (a fresh CA, node certificates for 127.0.0.1 and localhost, and
    /// client certificates for [`TLS_USERS`]) and `extra_args` (for example
    /// `--security-enabled`).
    pub fn start_tls(n: u64, extra_args: &[&str]) -> anyhow::Result<Self> {
        Self::start_with(n, true, extra_args)
    }

    fn start_with(n: u64, tls: bool, extra_args: &[&str]) -> anyhow::Result<Self> {
        let binary = weir_binary()?;
        let root = tempfile::tempdir()?;
        let tls_dir = if tls {
            let dir = root.path().join("tls");
            let hosts = vec!["127.0.0.1".to_string(), "localhost".to_string()];
            // Node ids beyond n for nodes added later.
            let nodes: Vec<(u64, Vec<String>)> =
                (1..=n + 2).map(|id| (id, hosts.clone())).collect();
            let users: Vec<String> = TLS_USERS.iter().map(|u| u.to_string()).collect();
            weir_broker::pki::write_cluster(&dir, &nodes, &users)?;
            Some(dir)
        } else {
            None
        };
        let mut reservations = BTreeMap::new();
        for id in 1..=n {
            reservations.insert(id, PortReservation::any()?);
        }
        let mut cluster = Self {
            binary,
            root,
            addrs: reservations.iter().map(|(id, r)| (*id, r.addr())).collect(),
            reservations,
            children: BTreeMap::new(),
            voters: (1..=n).collect(),
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            tls_dir,
        };
        for id in 1..=n {
            cluster.spawn(id, &cluster.addr(id))?;
        }
        for id in 1..=n {
            cluster.wait_listening(id)?;
        }
        Ok(cluster)
    }

    pub fn addr(&self, id: u64) -> String {
        self.addrs.get(&id).map_or_else(
            || format!("(node {id} has no address)"),
            ToString::to_string,
        )
    }

    pub fn brokers(&self) -> Vec<String> {
        self.addrs.keys().map(|id| self.addr(*id)).collect()
    }

    pub fn node_ids(&self) -> Vec<u64> {
        self.addrs.keys().copied().collect()
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.root.path().join(format!("node-{id}"))
    }

    pub fn log_path(&self, id: u64) -> PathBuf {
        self.root.path().join(format!("node-{id}.log"))
    }

    /// The file node `id` reports its bound addresses in (`weir server --ready-file`).
    pub fn ready_file(&self, id: u64) -> PathBuf {
        self.root.path().join(format!("node-{id}.ready"))
    }

    /// The last `lines` lines node `id` logged (for failure messages).
    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        let log = std::fs::read_to_string(self.log_path(id)).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// The certificates' directory, with TLS: `ca.pem`, `node-<id>.pem`/`.key`,
    /// `client-<user>.pem`/`.key`.
    pub fn tls_dir(&self) -> Option<&Path> {
        self.tls_dir.as_deref()
    }

    /// Client settings: TLS with the cluster CA (when the cluster has TLS), identified by the
    /// client certificate of `user` if given, sending `token` if given.
    pub fn security(
        &self,
        user: Option<&str>,
        token: Option<&str>,
    ) -> anyhow::Result<weir_client::Security> {
        let tls = match &self.tls_dir {
            Some(dir) => {
                let cert = user.map(|u| dir.join(format!("client-{u}.pem")));
                let key = user.map(|u| dir.join(format!("client-{u}.key")));
                Some(weir_client::TlsOptions::from_files(
                    &dir.join("ca.pem"),
                    cert.as_deref(),
                    key.as_deref(),
                )?)
            }
            None => None,
        };
        Ok(weir_client::Security {
            tls,
            token: token.map(str::to_string),
        })
    }

    /// A client of the cluster with [`ProcessCluster::security`]'s settings.
    pub fn client(
        &self,
        user: Option<&str>,
        token: Option<&str>,
    ) -> anyhow::Result<weir_client::Client> {
        Ok(weir_client::Client::with_security(
            &self.brokers(),
            self.security(user, token)?,
        )?)
    }

    /// Starts a new node `id` on port 0 that joins the running cluster through node 1, and waits
    /// until it listens.
    pub fn add_node(&mut self, id: u64) -> anyhow::Result<()> {
        if self.addrs.contains_key(&id) {
            bail!("node {id} exists");
        }
        self.spawn(id, "127.0.0.1:0")?;
        let addr = self.wait_listening(id)?;
        self.addrs.insert(id, addr);
        Ok(())
    }

    /// Starts node `id`'s process listening on `addr` (port 0: any).
    fn spawn(&mut self, id: u64, addr: &str) -> anyhow::Result<()> {
        let peers: Vec<String> = self
            .voters
            .iter()
            .map(|peer| format!("{peer}@{}", self.addr(*peer)))
            .collect();
        let role: Vec<String> = if self.voters.contains(&id) {
            vec!["--peers".into(), peers.join(",")]
        } else {
            vec!["--join".into(), self.addr(1)]
        };
        let ready_file = self.ready_file(id);
        match std::fs::remove_file(&ready_file) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                return Err(err).context("removing the old ready file");
            }
            _ => {}
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))?;
        let child = Command::new(&self.binary)
            .arg("server")
            .args(["--id", &id.to_string()])
            .args(["--addr", addr])
            .arg("--data-dir")
            .arg(self.data_dir(id))
            .arg("--ready-file")
            .arg(&ready_file)
            .args(&role)
            .args(self.tls_args(id))
            .args(&self.extra_args)
            .env(
                "RUST_LOG",
                std::env::var("WEIR_TEST_LOG").unwrap_or_else(|_| "info,openraft=warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting node {id}"))?;
        self.children.insert(id, child);
        Ok(())
    }

    fn tls_args(&self, id: u64) -> Vec<String> {
        let Some(dir) = &self.tls_dir else {
            return Vec::new();
        };
        let path = |name: String| dir.join(name).display().to_string();
        vec![
            "--tls-cert".into(),
            path(format!("node-{id}.pem")),
            "--tls-key".into(),
            path(format!("node-{id}.key")),
            "--tls-ca".into(),
            path("ca.pem".into()),
        ]
    }

    /// Waits until node `id` reported the address it listens on in its ready file and returns
    /// it; fails at once if the node exits first, and if a node with a known address (an
    /// initial voter, a restart) listens elsewhere.
    fn wait_listening(&mut self, id: u64) -> anyhow::Result<SocketAddr> {
        let ready_file = self.ready_file(id);
        let expected = self.addrs.get(&id).copied();
        let child = self.children.get_mut(&id).context("node not running")?;
        let listening = crate::eventually_blocking(
            READY_WITHIN,
            &format!("node {id} to listen (its ready file)"),
            || {
                if let Some(status) = child.try_wait()? {
                    return Err(crate::abort(anyhow::anyhow!(
                        "node {id} exited with {status} before it listened"
                    )));
                }
                let text = std::fs::read_to_string(&ready_file)
                    .with_context(|| format!("no {}", ready_file.display()))?;
                ready_addr(&text).map_err(crate::abort)
            },
        );
        let addr = listening.map_err(|err| {
            anyhow::anyhow!("{err:#}\n--- node {id} log ---\n{}", self.log_tail(id, 30))
        })?;
        if let Some(expected) = expected {
            ensure!(
                addr == expected,
                "node {id} listens on {addr}, not on {expected}"
            );
        }
        Ok(addr)
    }

    /// Waits until node `id` reports SERVING on gRPC health (it loaded the cluster metadata).
    pub async fn wait_serving(&self, id: u64, within: Duration) -> anyhow::Result<()> {
        let addr = self.addr(id);
        crate::eventually(within, &format!("node {id} ({addr}) SERVING"), || async {
            let security = self.security(Some("admin"), None)?;
            match weir_client::check_health_with(&addr, Duration::from_secs(1), &security).await? {
                weir_client::NodeHealth::Serving => Ok(()),
                other => bail!("health {other:?}"),
            }
        })
        .await
    }

    /// The process id of node `id`, while it runs.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.children.get(&id).map(Child::id)
    }

    pub fn is_running(&self, id: u64) -> bool {
        self.children.contains_key(&id)
    }

    /// SIGKILLs node `id` and reaps it; its port is held until it restarts.
    pub fn kill(&mut self, id: u64) -> anyhow::Result<()> {
        let mut child = self.children.remove(&id).context("node not running")?;
        child.kill()?;
        child.wait()?;
        if !self.reservations.contains_key(&id)
            && let Some(addr) = self.addrs.get(&id)
        {
            let held = PortReservation::at(addr.port()).with_context(|| {
                format!("holding node {id}'s port {} for its restart", addr.port())
            })?;
            self.reservations.insert(id, held);
        }
        Ok(())
    }

    /// Restarts node `id` on its data directory and address, and waits until it listens.
    pub fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        if self.children.contains_key(&id) {
            bail!("node {id} is running");
        }
        self.spawn(id, &self.addr(id))?;
        self.wait_listening(id)?;
        Ok(())
    }

    /// Sends SIGTERM to every node and waits for them to stop cleanly (exit 0); kills any that
    /// hang.
    pub fn stop_all(&mut self) -> anyhow::Result<()> {
        for child in self.children.values() {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        let deadline = std::time::Instant::now() + STOP_WITHIN;
        for (id, child) in self.children.iter_mut() {
            let within = deadline.saturating_duration_since(std::time::Instant::now());
            let status =
                crate::wait_for_exit(child, within, &format!("node {id} to stop on SIGTERM"))?;
            ensure!(
                status.success(),
                "node {id} exited with {status} on SIGTERM (expected a clean stop)"
            );
        }
        self.children.clear();
        Ok(())
    }

    /// The directory of `topic`'s partition `partition` on node `id`, if the node has it.
    pub fn partition_dir(&self, id: u64, topic: &str, partition: u32) -> Option<PathBuf> {
        partition_dir(&self.data_dir(id), topic, partition)
    }

    /// (entry index, term, base offset, CRC) of every stored batch of a partition on node `id`
    /// (the node must be stopped: this opens its log).
    pub fn stored_entries(
        &self,
        id: u64,
        topic: &str,
        partition: u32,
    ) -> anyhow::Result<Vec<(u64, u64, u64, u32)>> {
        stored_entries_in(&self.data_dir(id), topic, partition)
    }
}

/// The `addr=` line of a node's ready file (`weir server --ready-file`).
pub fn ready_addr(text: &str) -> anyhow::Result<SocketAddr> {
    let addr = text
        .lines()
        .find_map(|line| line.strip_prefix("addr="))
        .with_context(|| format!("no addr= line in the ready file: {text:?}"))?;
    addr.parse()
        .with_context(|| format!("addr={addr} in the ready file is not IP:PORT"))
}

/// The directory of `topic`'s partition `partition` in a node's data directory, if it is there.
pub fn partition_dir(data_dir: &Path, topic: &str, partition: u32) -> Option<PathBuf> {
    let prefix = format!("{topic}-{partition}-");
    std::fs::read_dir(data_dir.join("partitions"))
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix))
        })
}

/// (entry index, term, base offset, CRC) of every stored batch of a partition in a node's data
/// directory (no node may have it open).
pub fn stored_entries_in(
    data_dir: &Path,
    topic: &str,
    partition: u32,
) -> anyhow::Result<Vec<(u64, u64, u64, u32)>> {
    let dir = partition_dir(data_dir, topic, partition).with_context(|| {
        format!(
            "partition {topic}/{partition} is not in {}",
            data_dir.display()
        )
    })?;
    let log = PartitionLog::open(dir.join("log"), LogConfig::default())?;
    let bounds = log.bounds()?;
    crate::stored_entries(
        &log,
        bounds.first_index.unwrap_or(bounds.next_index),
        bounds.next_index,
    )
}

/// The committed part of a replica's stored entries: those holding records below the high
/// watermark `hw`, plus the control entries between them. Replicas must agree on it.
pub fn committed_prefix(entries: &[(u64, u64, u64, u32)], hw: u64) -> Vec<(u64, u64, u64, u32)> {
    entries
        .iter()
        .take_while(|(_, _, base, _)| *base < hw)
        .copied()
        .collect()
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        if std::env::var_os("WEIR_KEEP_TEST_DIR").is_some() {
            let kept = std::mem::replace(
                &mut self.root,
                match tempfile::tempdir() {
                    Ok(dir) => dir,
                    Err(_) => return,
                },
            );
            eprintln!("keeping the cluster's files in {}", kept.keep().display());
        }
        for child in self.children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
