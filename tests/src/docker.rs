//! The compose cluster of `deploy/` on this machine's Docker engine, for container fault tests:
//! build the image from the `weir` binary under test (with `deploy/build-image.sh`, pulling
//! nothing), bring `deploy/docker-compose.yml` up under a project name of its own with loopback
//! ports of its own, inject faults into its containers (`docker kill`, `pause`/`unpause`, `network
//! disconnect`/`connect`, `restart`), and copy each node's data directory out once it stopped.
//!
//! Invariant: everything a [`ComposeCluster`] creates — containers, the network, the named
//! volumes and the image tag — is removed when it is dropped, also when the test panics.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

use crate::ports::PortReservation;
use crate::process_cluster::weir_binary;

/// The environment variable that makes the container tests required: with
/// `WEIR_DOCKER_TESTS=1` (`.ci/run` sets it where an engine answers) a missing Docker engine or
/// Compose fails them; otherwise they are skipped with a message.
pub const REQUIRED_VAR: &str = "WEIR_DOCKER_TESTS";

/// What a container test needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// A Docker engine (`docker run`, networks).
    Engine,
    /// An engine and Compose (`docker compose`, or `docker-compose` v1).
    Compose,
}

/// Whether container test `test` runs here: `Ok(true)` when Docker (and Compose, if it needs
/// it) is usable; `Ok(false)` after printing why it is skipped when not; an error naming what is
/// missing when [`REQUIRED_VAR`] is `1`.
pub fn available(test: &str, needs: Needs) -> anyhow::Result<bool> {
    let required = std::env::var(REQUIRED_VAR).is_ok_and(|v| v == "1");
    decide(test, required, unavailable(needs))
}

/// [`available`]'s decision, given whether the tests are required and what is missing.
pub fn decide(test: &str, required: bool, missing: Option<String>) -> anyhow::Result<bool> {
    match missing {
        None => Ok(true),
        Some(reason) if required => {
            bail!("{test}: {REQUIRED_VAR}=1 requires Docker, but {reason}")
        }
        Some(reason) => {
            eprintln!("SKIPPED {test}: {reason} (with {REQUIRED_VAR}=1 this fails instead)");
            Ok(false)
        }
    }
}

/// Why Docker cannot be used here for what a test `needs`, or `None` when it can.
pub fn unavailable(needs: Needs) -> Option<String> {
    match Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdin(Stdio::null())
        .output()
    {
        Err(err) => return Some(format!("the docker command cannot run: {err}")),
        Ok(out) if !out.status.success() => {
            return Some(format!(
                "no Docker engine answers: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(_) => {}
    }
    if needs == Needs::Compose && compose_command().is_none() {
        return Some("neither `docker compose` nor `docker-compose` is installed".into());
    }
    None
}

/// Runs `program args` with no input or output; true when it ran and succeeded. For probes and
/// best-effort clean-up.
fn quietly(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `docker compose` (v2) when it works, else `docker-compose` (v1).
fn compose_command() -> Option<Vec<String>> {
    if quietly("docker", &["compose", "version"]) {
        Some(vec!["docker".into(), "compose".into()])
    } else if quietly("docker-compose", &["version"]) {
        Some(vec!["docker-compose".into()])
    } else {
        None
    }
}

fn run(command: &mut Command) -> anyhow::Result<Output> {
    let shown = format!("{command:?}");
    let out = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {shown}"))?;
    ensure!(
        out.status.success(),
        "{shown} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(out)
}

fn docker(args: &[&str]) -> anyhow::Result<String> {
    let out = run(Command::new("docker").args(args))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The repository's root (the tests crate lives in `tests/`).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from(".."), Path::to_path_buf)
}

/// Builds image `tag` from the `weir` binary under test with `deploy/build-image.sh`.
fn build_image(tag: &str) -> anyhow::Result<()> {
    let binary = weir_binary()?;
    let started = Instant::now();
    run(Command::new(repo_root().join("deploy/build-image.sh"))
        .arg("--binary")
        .arg(&binary)
        .args(["--tag", tag]))?;
    eprintln!(
        "docker: built {tag} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The three-node compose cluster of `deploy/docker-compose.yml`.
#[derive(Debug)]
pub struct ComposeCluster {
    project: String,
    compose: Vec<String>,
    image: String,
    /// Node id → client port published on 127.0.0.1 (the node's external listener).
    client_ports: Vec<u16>,
    /// Node id → metrics port published on 127.0.0.1.
    metrics_ports: Vec<u16>,
    /// The published Kafka ports, node 1 first.
    kafka_ports: Vec<u16>,
    /// The TLS variant (`deploy/docker-compose.tls.yml`): the certificates' directory.
    tls: Option<tempfile::TempDir>,
}

pub const NODES: u64 = 3;

impl ComposeCluster {
    /// Builds the image from the `weir` binary under test and starts the cluster (without
    /// waiting for it to be healthy: see [`ComposeCluster::wait_healthy`]).
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(false)
    }

    /// [`ComposeCluster::start`] with the TLS variant: certificates for weir-1..3, localhost and
    /// 127.0.0.1 (the published ports) and a client certificate `admin`, the super user.
    pub fn start_tls() -> anyhow::Result<Self> {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> anyhow::Result<Self> {
        let compose = compose_command().context("docker compose is not installed")?;
        let tls = if tls {
            let dir = tempfile::tempdir()?;
            let nodes: Vec<(u64, Vec<String>)> = (1..=NODES)
                .map(|id| {
                    (
                        id,
                        vec![format!("weir-{id}"), "localhost".into(), "127.0.0.1".into()],
                    )
                })
                .collect();
            weir_broker::pki::write_cluster(dir.path(), &nodes, &["admin".to_string()])?;
            // The containers run as uid 65532 (deploy/tls-certs.sh does the same).
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
            for id in 1..=NODES {
                std::fs::set_permissions(
                    dir.path().join(format!("node-{id}.key")),
                    std::fs::Permissions::from_mode(0o644),
                )?;
            }
            Some(dir)
        } else {
            None
        };
        let project = format!("weirtest{}", std::process::id());
        let image = format!("weir-test:{project}");
        // The nodes advertise their published ports, so those are chosen before the containers
        // start: held (see PortReservation) while the image builds, released for Docker to bind
        // them the moment before `up`.
        let held = (0..3 * NODES)
            .map(|_| PortReservation::any())
            .collect::<anyhow::Result<Vec<_>>>()?;
        let ports: Vec<u16> = held.iter().map(PortReservation::port).collect();
        let cluster = Self {
            project,
            compose,
            image,
            client_ports: ports[..NODES as usize].to_vec(),
            metrics_ports: ports[NODES as usize..2 * NODES as usize].to_vec(),
            kafka_ports: ports[2 * NODES as usize..].to_vec(),
            tls,
        };
        // From here on, Drop cleans up whatever was created.
        build_image(&cluster.image)?;
        drop(held);
        cluster.compose(&["up", "-d"])?;
        Ok(cluster)
    }

    fn compose_cmd(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.compose[0]);
        command
            .args(&self.compose[1..])
            .arg("-p")
            .arg(&self.project)
            .arg("-f")
            .arg(repo_root().join("deploy/docker-compose.yml"));
        if let Some(dir) = &self.tls {
            command
                .arg("-f")
                .arg(repo_root().join("deploy/docker-compose.tls.yml"))
                .env("WEIR_CERTS", dir.path());
        }
        command.args(args).env("WEIR_IMAGE", &self.image);
        for (i, (client, metrics)) in self
            .client_ports
            .iter()
            .zip(&self.metrics_ports)
            .enumerate()
        {
            command
                .env(format!("WEIR_PORT_{}", i + 1), client.to_string())
                .env(format!("WEIR_METRICS_PORT_{}", i + 1), metrics.to_string());
        }
        for (i, kafka) in self.kafka_ports.iter().enumerate() {
            command.env(format!("WEIR_KAFKA_PORT_{}", i + 1), kafka.to_string());
        }
        command
    }

    fn compose(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = run(&mut self.compose_cmd(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Client settings: TLS with the cluster CA in the TLS variant (with the client certificate
    /// of `user` if given), plaintext otherwise.
    pub fn security(&self, user: Option<&str>) -> anyhow::Result<weir_client::Security> {
        let Some(dir) = &self.tls else {
            return Ok(weir_client::Security::default());
        };
        let cert = user.map(|u| dir.path().join(format!("client-{u}.pem")));
        let key = user.map(|u| dir.path().join(format!("client-{u}.key")));
        Ok(weir_client::Security {
            tls: Some(weir_client::TlsOptions::from_files(
                &dir.path().join("ca.pem"),
                cert.as_deref(),
                key.as_deref(),
            )?),
            token: None,
        })
    }

    /// The client addresses (published on loopback) of every node.
    pub fn brokers(&self) -> Vec<String> {
        self.client_ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect()
    }

    /// The client address of node `id`.
    pub fn broker(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.client_ports[(id - 1) as usize])
    }

    /// The metrics address of node `id`.
    /// The published Kafka listeners, comma-separated (Kafka's `bootstrap.servers`).
    pub fn kafka_bootstrap(&self) -> String {
        self.kafka_ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn metrics_addr(&self, id: u64) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.metrics_ports[(id - 1) as usize]))
    }

    /// The container of node `id`.
    pub fn container(&self, id: u64) -> anyhow::Result<String> {
        let container = self.compose(&["ps", "-q", &format!("weir-{id}")])?;
        ensure!(!container.is_empty(), "node {id} has no container");
        Ok(container)
    }

    /// The compose network the nodes talk over.
    pub fn network(&self) -> String {
        format!("{}_weir", self.project)
    }

    /// `docker kill` (SIGKILL) node `id`'s container.
    pub fn kill(&self, id: u64) -> anyhow::Result<()> {
        docker(&["kill", &self.container(id)?]).map(drop)
    }

    /// Starts node `id`'s container again (a no-op when the restart policy already did).
    pub fn start_node(&self, id: u64) -> anyhow::Result<()> {
        docker(&["start", &self.container(id)?]).map(drop)
    }

    /// `docker pause` (freezes every process of the container).
    pub fn pause(&self, id: u64) -> anyhow::Result<()> {
        docker(&["pause", &self.container(id)?]).map(drop)
    }

    pub fn unpause(&self, id: u64) -> anyhow::Result<()> {
        docker(&["unpause", &self.container(id)?]).map(drop)
    }

    /// Cuts node `id` off the cluster's network (its peers and its published port).
    pub fn disconnect(&self, id: u64) -> anyhow::Result<()> {
        docker(&[
            "network",
            "disconnect",
            &self.network(),
            &self.container(id)?,
        ])
        .map(drop)
    }

    /// Connects node `id` back, under its service's DNS name.
    pub fn connect(&self, id: u64) -> anyhow::Result<()> {
        let alias = format!("weir-{id}");
        docker(&[
            "network",
            "connect",
            "--alias",
            &alias,
            &self.network(),
            &self.container(id)?,
        ])
        .map(drop)
    }

    /// `docker restart` (SIGTERM, then start) node `id`.
    pub fn restart(&self, id: u64) -> anyhow::Result<()> {
        docker(&["restart", "--time", "20", &self.container(id)?]).map(drop)
    }

    /// Waits until every node reports SERVING on gRPC health through its published port.
    pub async fn wait_healthy(&self, within: Duration) -> anyhow::Result<()> {
        crate::eventually(within, "every node SERVING", || async {
            let mut not_serving = Vec::new();
            for id in 1..=NODES {
                let addr = self.broker(id);
                let health = weir_client::check_health_with(
                    &addr,
                    Duration::from_secs(1),
                    &self.security(None)?,
                )
                .await;
                if !matches!(health, Ok(weir_client::NodeHealth::Serving)) {
                    not_serving.push(format!("node {id} ({addr}): {health:?}"));
                }
            }
            ensure!(not_serving.is_empty(), "{}", not_serving.join("; "));
            Ok(())
        })
        .await
        .map_err(|err| anyhow::anyhow!("{err:#}\n{}", self.logs().unwrap_or_default()))
    }

    /// The last lines each node logged (for failure messages).
    pub fn logs(&self) -> anyhow::Result<String> {
        let out = run(&mut self.compose_cmd(&["logs", "--no-color", "--tail", "40"]))?;
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }

    /// Stops every node cleanly (SIGTERM) and copies each one's data directory to
    /// `dest/node-<id>`.
    pub fn stop_and_copy_data(&self, dest: &Path) -> anyhow::Result<Vec<PathBuf>> {
        let containers: Vec<String> = (1..=NODES)
            .map(|id| self.container(id))
            .collect::<anyhow::Result<_>>()?;
        self.compose(&["stop", "--timeout", "20"])?;
        let mut dirs = Vec::new();
        for (i, container) in containers.iter().enumerate() {
            let dir = dest.join(format!("node-{}", i + 1));
            docker(&[
                "cp",
                &format!("{container}:/var/lib/weir"),
                &dir.to_string_lossy(),
            ])?;
            dirs.push(dir);
        }
        Ok(dirs)
    }
}

impl Drop for ComposeCluster {
    fn drop(&mut self) {
        // Unpause first: a paused container does not stop.
        for id in 1..=NODES {
            if let Ok(container) = self.container(id) {
                quietly("docker", &["unpause", &container]);
            }
        }
        match run(&mut self.compose_cmd(&[
            "down",
            "--volumes",
            "--remove-orphans",
            "--timeout",
            "5",
        ])) {
            Ok(_) => eprintln!(
                "docker: removed project {} (containers, network, volumes)",
                self.project
            ),
            Err(err) => eprintln!(
                "docker: cleaning up project {} failed: {err:#}",
                self.project
            ),
        }
        quietly("docker", &["image", "rm", "--force", &self.image]);
    }
}

/// Containers started one by one with `docker run` on a network of their own, the way a
/// Kubernetes StatefulSet runs pods: each node is `weir-<ordinal>` with the DNS name
/// `weir-<ordinal>.weir-headless` and the settings of `deploy/kubernetes/weir.yaml`.
///
/// Invariant: dropping it removes every container (with its anonymous volume), the network and
/// the image tag.
#[derive(Debug)]
pub struct StatefulSetLike {
    prefix: String,
    network: String,
    image: String,
    containers: Vec<String>,
}

impl StatefulSetLike {
    /// Builds the image from the `weir` binary under test and creates the network.
    pub fn new() -> anyhow::Result<Self> {
        let prefix = format!("weirsts{}", std::process::id());
        let set = Self {
            network: format!("{prefix}-net"),
            image: format!("weir-test:{prefix}"),
            prefix,
            containers: Vec::new(),
        };
        build_image(&set.image)?;
        docker(&["network", "create", &set.network])?;
        Ok(set)
    }

    /// The peer list of the manifest's ConfigMap: the first three pods are the voters.
    pub const PEERS: &'static str =
        "1@weir-0.weir-headless:9092,2@weir-1.weir-headless:9092,3@weir-2.weir-headless:9092";

    /// Starts pod `weir-<ordinal>` with the manifest's environment.
    pub fn start_pod(&mut self, ordinal: u32) -> anyhow::Result<()> {
        let pod = format!("weir-{ordinal}");
        let name = format!("{}-{pod}", self.prefix);
        let dns = format!("{pod}.weir-headless");
        docker(&[
            "run",
            "--detach",
            "--name",
            &name,
            "--hostname",
            &pod,
            "--network",
            &self.network,
            "--network-alias",
            &dns,
            "--env",
            "WEIR_ID_FROM_HOSTNAME=true",
            "--env",
            "WEIR_ADDR=0.0.0.0:9092",
            "--env",
            &format!("WEIR_ADVERTISED_ADDR={dns}:9092"),
            "--env",
            &format!("WEIR_PEERS={}", Self::PEERS),
            "--env",
            "WEIR_DATA_DIR=/var/lib/weir",
            &self.image,
            "server",
        ])?;
        self.containers.push(name);
        Ok(())
    }

    /// Stops pod `weir-<ordinal>` and deletes it with its volume (a scale-in, PVC deleted).
    pub fn delete_pod(&mut self, ordinal: u32) -> anyhow::Result<()> {
        let name = format!("{}-weir-{ordinal}", self.prefix);
        docker(&["stop", "--time", "20", &name])?;
        docker(&["rm", "--volumes", &name])?;
        self.containers.retain(|c| c != &name);
        Ok(())
    }

    /// Runs `weir ARGS` in a throwaway container on the network (as `kubectl run` does), with
    /// `stdin` as its standard input; returns its standard output, failing on a non-zero exit.
    pub fn weir(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
        use std::io::Write;
        let mut command = Command::new("docker");
        command
            .args(["run", "--rm", "--interactive", "--network", &self.network])
            .arg(&self.image)
            .args(args)
            .args([
                "--brokers",
                "weir-0.weir-headless:9092,weir-1.weir-headless:9092",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let shown = format!("weir {}", args.join(" "));
        let mut child = command
            .spawn()
            .with_context(|| format!("running {shown}"))?;
        if let Some(mut input) = child.stdin.take() {
            input.write_all(stdin.unwrap_or_default().as_bytes())?;
        }
        let out = child.wait_with_output()?;
        ensure!(
            out.status.success(),
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }

    /// The last lines each pod logged (for failure messages).
    pub fn logs(&self) -> String {
        let mut all = String::new();
        for name in &self.containers {
            if let Ok(out) = Command::new("docker")
                .args(["logs", "--tail", "30", name])
                .stdin(Stdio::null())
                .output()
            {
                all.push_str(&format!(
                    "--- {name}\n{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        all
    }
}

impl Drop for StatefulSetLike {
    fn drop(&mut self) {
        let quiet = |args: &[&str]| quietly("docker", args);
        for name in &self.containers {
            quiet(&["rm", "--force", "--volumes", name]);
        }
        let removed = quiet(&["network", "rm", &self.network]);
        quiet(&["image", "rm", "--force", &self.image]);
        eprintln!(
            "docker: removed {} container(s) and their volumes; network {} removed: {removed}",
            self.containers.len(),
            self.network
        );
    }
}

#[cfg(test)]
mod tests {
    use super::decide;

    #[test]
    fn missing_docker_skips_unless_required() {
        assert!(decide("t", false, None).expect("runs"));
        assert!(decide("t", true, None).expect("runs"));
        assert!(!decide("t", false, Some("no engine".into())).expect("skipped"));
        let err = decide("t", true, Some("no Docker engine answers".into()))
            .expect_err("required")
            .to_string();
        assert_eq!(
            err,
            "t: WEIR_DOCKER_TESTS=1 requires Docker, but no Docker engine answers"
        );
    }
}
