//! `weir server`: one node. Settings come from `--config FILE`, then `WEIR_*` environment
//! variables, then flags (each overrides the one before). SIGTERM or Ctrl-C stops it cleanly.

use std::path::PathBuf;

use anyhow::Context;
use weir_broker::{Node, NodeConfig};
use weir_storage::Durability;

#[derive(Debug, clap::Args)]
pub(crate) struct ServerArgs {
    /// TOML configuration file (see docs/design.md for the keys).
    #[arg(long, env = "WEIR_CONFIG")]
    config: Option<PathBuf>,
    /// This node's id (1 or more).
    #[arg(long, env = "WEIR_ID")]
    id: Option<u64>,
    /// Address to listen on, IP:PORT (clients and peers).
    #[arg(long, env = "WEIR_ADDR")]
    addr: Option<String>,
    /// Address other nodes and clients use, HOST:PORT (default: --addr).
    #[arg(long, env = "WEIR_ADVERTISED_ADDR")]
    advertised_addr: Option<String>,
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
        if let Some(addr) = self.addr {
            config.addr = addr;
        }
        if let Some(advertised) = self.advertised_addr {
            config.advertised_addr = Some(advertised);
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

pub(crate) async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let config = args.into_config()?;
    let node = Node::start(config, None).await?;
    tracing::info!(addr = %node.local_addr(), "weir node ready");
    stop_signal().await?;
    node.shutdown().await;
    Ok(())
}
