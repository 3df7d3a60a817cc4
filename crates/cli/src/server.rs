//! `weir server`: one node. Settings come from `--config FILE`, then `WEIR_*` environment
//! variables, then flags (each overrides the one before). SIGTERM or Ctrl-C stops it cleanly.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use weir_broker::{Node, NodeConfig};
use weir_storage::Durability;

#[derive(Debug, clap::Args)]
pub(crate) struct ServerArgs {
    /// TOML configuration file (see docs/design.md for the keys).
    #[arg(long, env = "WEIR_CONFIG")]
    config: Option<PathBuf>,
    /// This node's id (1 or more).
    #[arg(long, env = "WEIR_ID", conflicts_with = "id_from_hostname")]
    id: Option<u64>,
    /// Take the node id from the host name's trailing ordinal, plus one: `weir-0` is node 1,
    /// `weir-2` node 3 (a Kubernetes StatefulSet's pods).
    #[arg(long, env = "WEIR_ID_FROM_HOSTNAME")]
    id_from_hostname: bool,
    /// Address to listen on, IP:PORT (clients and peers).
    #[arg(long, env = "WEIR_ADDR")]
    addr: Option<String>,
    /// Address other nodes and clients use, HOST:PORT (default: --addr).
    #[arg(long, env = "WEIR_ADVERTISED_ADDR")]
    advertised_addr: Option<String>,
    /// A second listener, IP:PORT, for clients outside the nodes' network (a container's
    /// published port): metadata asked there names brokers by their external addresses.
    #[arg(long, env = "WEIR_EXTERNAL_ADDR")]
    external_addr: Option<String>,
    /// The address clients outside the nodes' network use, HOST:PORT (default: --external-addr).
    #[arg(long, env = "WEIR_EXTERNAL_ADVERTISED_ADDR")]
    external_advertised_addr: Option<String>,
    /// Data directory.
    #[arg(long, env = "WEIR_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Initial controller voters: ID@HOST:PORT, comma-separated (1, 3 or 5).
    #[arg(long, env = "WEIR_PEERS", value_delimiter = ',')]
    peers: Option<Vec<String>>,
    /// Join a running cluster through this node (HOST:PORT) instead of --peers.
    #[arg(long, env = "WEIR_JOIN")]
    join: Option<String>,
    /// Rack (or zone) of this node, for rack-aware placement.
    #[arg(long, env = "WEIR_RACK")]
    rack: Option<String>,
    /// Serve Prometheus metrics on this HOST:PORT (GET /metrics).
    #[arg(long, env = "WEIR_METRICS_ADDR")]
    metrics_addr: Option<String>,
    /// When appends reach the disk: always (fsync before acknowledging; the default), never, or
    /// interval:MS.
    #[arg(long, env = "WEIR_DURABILITY", value_parser = parse_durability)]
    durability: Option<Durability>,
    /// Once the node listens, write the addresses it bound to this file (replacing it in one
    /// step): `addr=IP:PORT`, plus `external_addr=` and `metrics_addr=` lines for those
    /// listeners. With port 0 in --addr (or the others), this is how a script learns the port.
    #[arg(long, env = "WEIR_READY_FILE")]
    ready_file: Option<PathBuf>,
}

fn parse_durability(text: &str) -> Result<Durability, String> {
    match text {
        "always" => Ok(Durability::Always),
        "never" => Ok(Durability::Never),
        other => match other.strip_prefix("interval:") {
            Some(ms) => ms
                .parse()
                .map(|ms| Durability::Interval { ms })
                .map_err(|_| format!("{ms:?} is not a number of milliseconds")),
            None => Err(format!("{other:?}: use always, never or interval:MS")),
        },
    }
}

impl ServerArgs {
    fn into_config(self) -> anyhow::Result<NodeConfig> {
        let mut config = match &self.config {
            Some(path) => NodeConfig::from_file(path)?,
            None => NodeConfig::default(),
        };
        if let Some(id) = self.id {
            config.id = id;
        }
        if self.id_from_hostname {
            let hostname = hostname()?;
            config.id = id_from_hostname(&hostname)?;
            tracing::info!(%hostname, id = config.id, "node id from the host name");
        }
        if let Some(addr) = self.addr {
            config.addr = addr;
        }
        if let Some(advertised) = self.advertised_addr {
            config.advertised_addr = Some(advertised);
        }
        if let Some(external) = self.external_addr {
            config.external_addr = Some(external);
        }
        if let Some(advertised) = self.external_advertised_addr {
            config.external_advertised_addr = Some(advertised);
        }
        if let Some(dir) = self.data_dir {
            config.data_dir = dir;
        }
        if let Some(peers) = self.peers {
            config.peers = peers.into_iter().filter(|p| !p.trim().is_empty()).collect();
        }
        if let Some(join) = self.join {
            config.join = Some(join);
        }
        if let Some(rack) = self.rack {
            config.rack = Some(rack);
        }
        if let Some(metrics) = self.metrics_addr {
            config.metrics_addr = Some(metrics);
        }
        if let Some(durability) = self.durability {
            config.durability = durability;
        }
        config.validate()?;
        Ok(config)
    }
}

/// This machine's host name: `HOSTNAME` (set by Docker and Kubernetes), else the kernel's.
fn hostname() -> anyhow::Result<String> {
    if let Ok(name) = std::env::var("HOSTNAME")
        && !name.trim().is_empty()
    {
        return Ok(name.trim().to_string());
    }
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("reading the host name (/proc/sys/kernel/hostname) for --id-from-hostname")?;
    Ok(name.trim().to_string())
}

/// `weir-0` → 1: the number after the host name's last `-`, plus one (node ids start at 1).
fn id_from_hostname(hostname: &str) -> anyhow::Result<u64> {
    let ordinal = hostname
        .rsplit_once('-')
        .map(|(_, ordinal)| ordinal)
        .and_then(|ordinal| ordinal.parse::<u64>().ok())
        .with_context(|| {
            format!(
                "--id-from-hostname: host name {hostname:?} does not end in -ORDINAL (like weir-0)"
            )
        })?;
    ordinal
        .checked_add(1)
        .with_context(|| format!("--id-from-hostname: ordinal {ordinal} is too large"))
}

/// Waits for SIGTERM or Ctrl-C.
pub(crate) async fn stop_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}

/// Fails unless `path` can be created: its directory exists (checked before the node starts).
fn check_ready_file(path: &Path) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if path.file_name().is_none() || !dir.is_dir() {
        bail!(
            "--ready-file {}: not a file in an existing directory",
            path.display()
        );
    }
    Ok(())
}

/// Writes the node's bound addresses to `path` (see `--ready-file`): to a temporary file next to
/// it, renamed over it, so a reader never sees half of it.
fn write_ready_file(path: &Path, node: &Node) -> anyhow::Result<()> {
    let mut text = format!("addr={}\n", node.local_addr());
    if let Some(external) = node.external_addr() {
        text.push_str(&format!("external_addr={external}\n"));
    }
    if let Some(metrics) = node.metrics_addr() {
        text.push_str(&format!("metrics_addr={metrics}\n"));
    }
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    std::fs::write(&temporary, text)
        .and_then(|()| std::fs::rename(&temporary, path))
        .with_context(|| format!("--ready-file {}: writing it", path.display()))
}

pub(crate) async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let ready_file = args.ready_file.clone();
    if let Some(path) = &ready_file {
        check_ready_file(path)?;
    }
    let config = args.into_config()?;
    let node = Node::start(config, None).await?;
    if let Some(path) = &ready_file
        && let Err(err) = write_ready_file(path, &node)
    {
        node.shutdown().await;
        return Err(err);
    }
    tracing::info!(addr = %node.local_addr(), "weir node ready");
    stop_signal().await?;
    node.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::id_from_hostname;

    #[test]
    fn ids_come_from_statefulset_ordinals() {
        assert_eq!(id_from_hostname("weir-0").expect("ordinal"), 1);
        assert_eq!(id_from_hostname("my-weir-cluster-12").expect("ordinal"), 13);
        for bad in ["weir", "weir-", "weir-x", "weir-0a", ""] {
            let err = id_from_hostname(bad).expect_err(bad).to_string();
            assert!(err.contains("-ORDINAL"), "{bad}: {err}");
        }
    }
}
