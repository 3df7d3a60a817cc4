//! A node's configuration: one TOML file, overridden by `WEIR_*` environment variables and
//! command-line flags (the CLI does the layering; this module owns the settings, their defaults
//! and their checks). Defaults suit a single node on a laptop.
//!
//! ```toml
//! id = 1
//! addr = "127.0.0.1:9092"          # serves clients and peers
//! # advertised_addr = "weir-1:9092" # what peers and clients are told (default: addr)
//! # external_addr = "0.0.0.0:19092"            # a second listener, for clients outside the
//! # external_advertised_addr = "127.0.0.1:19092" # nodes' network (published container ports)
//! data_dir = "/var/lib/weir"
//! peers = ["1@10.0.0.1:9092", "2@10.0.0.2:9092", "3@10.0.0.3:9092"]   # initial controller voters
//! # join = "10.0.0.1:9092"         # instead of peers: join a running cluster
//! # rack = "eu-1a"
//! # metrics_addr = "127.0.0.1:9100"   # Prometheus text on GET /metrics
//! durability = "always"            # or { interval = { ms = 100 } }, "never"
//! [raft]
//! heartbeat_ms = 150
//! election_min_ms = 800
//! election_max_ms = 1600
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir_raft::{NodeId, PeerNode, RaftTiming};
use weir_storage::Durability;

/// Why a configuration is unusable. Each message names the setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("invalid setting {setting}: {message}")]
    Invalid {
        setting: &'static str,
        message: String,
    },
}

fn invalid(setting: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        message: message.into(),
    }
}

/// Raft timing in the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftSettings {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
}

impl Default for RaftSettings {
    fn default() -> Self {
        let t = RaftTiming::default();
        Self {
            heartbeat_ms: t.heartbeat_ms,
            election_min_ms: t.election_min_ms,
            election_max_ms: t.election_max_ms,
        }
    }
}

/// Everything a node needs to start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id (1 or more), unique in the cluster.
    pub id: NodeId,
    /// `host:port` to listen on; also the address other nodes and clients use unless
    /// `advertised_addr` is set.
    pub addr: String,
    /// The address to tell others (for example a container's DNS name).
    pub advertised_addr: Option<String>,
    /// `host:port` of a second listener for clients outside the nodes' network (a container's
    /// published port, a load balancer). It serves the client API, not peer traffic.
    pub external_addr: Option<String>,
    /// The address those clients use to reach `external_addr` (required with it when it listens
    /// on every interface). Metadata asked on the external listener names every broker by its
    /// external address, so clients that route to partition leaders reach them.
    pub external_advertised_addr: Option<String>,
    pub data_dir: PathBuf,
    /// The initial controller voters, `ID@HOST:PORT` (1, 3 or 5 of them).
    pub peers: Vec<String>,
    /// `HOST:PORT` of any node of a running cluster to join (instead of `peers`).
    pub join: Option<String>,
    pub rack: Option<String>,
    pub durability: Durability,
    pub raft: RaftSettings,
    /// How often partitions check retention, in ms.
    pub retention_check_ms: u64,
    /// `host:port` for Prometheus metrics (`GET /metrics`); none by default.
    pub metrics_addr: Option<String>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            id: 1,
            addr: "127.0.0.1:9092".into(),
            advertised_addr: None,
            external_addr: None,
            external_advertised_addr: None,
            data_dir: PathBuf::from("weir-data"),
            peers: Vec::new(),
            join: None,
            rack: None,
            durability: Durability::Always,
            raft: RaftSettings::default(),
            retention_check_ms: 30_000,
            metrics_addr: None,
        }
    }
}

/// Parses `ID@HOST:PORT`.
pub fn parse_peer(text: &str) -> Result<(NodeId, String), ConfigError> {
    let (id, addr) = text
        .split_once('@')
        .ok_or_else(|| invalid("peers", format!("{text:?} is not ID@HOST:PORT")))?;
    let id: NodeId = id
        .trim()
        .parse()
        .map_err(|_| invalid("peers", format!("{id:?} in {text:?} is not a node id")))?;
    if id == 0 {
        return Err(invalid(
            "peers",
            format!("node id 0 in {text:?} is reserved"),
        ));
    }
    check_host_port("peers", addr.trim())?;
    Ok((id, addr.trim().to_string()))
}

/// Checks that `addr` is `HOST:PORT` (a non-empty host and a valid port); the error names
/// `setting`.
pub(crate) fn check_host_port(setting: &'static str, addr: &str) -> Result<(), ConfigError> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| invalid(setting, format!("{addr:?} is not HOST:PORT")))?;
    if host.is_empty() {
        return Err(invalid(setting, format!("{addr:?} has no host")));
    }
    port.parse::<u16>()
        .map_err(|_| invalid(setting, format!("{addr:?} has no valid port")))?;
    Ok(())
}

impl NodeConfig {
    /// Reads a TOML file (unknown keys are errors).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|err| ConfigError::Parse {
            path: path.to_path_buf(),
            message: err.to_string(),
        })
    }

    /// The address others use to reach this node.
    pub fn advertised(&self) -> &str {
        self.advertised_addr.as_deref().unwrap_or(&self.addr)
    }

    /// The address clients outside the nodes' network use, when there is an external listener.
    pub fn external_advertised(&self) -> Option<&str> {
        self.external_advertised_addr
            .as_deref()
            .or(self.external_addr.as_deref())
    }

    /// The initial controller voters.
    pub fn voters(&self) -> Result<BTreeMap<NodeId, PeerNode>, ConfigError> {
        let mut voters = BTreeMap::new();
        for peer in &self.peers {
            let (id, addr) = parse_peer(peer)?;
            if voters.insert(id, PeerNode::new(addr)).is_some() {
                return Err(invalid("peers", format!("node id {id} is listed twice")));
            }
        }
        Ok(voters)
    }

    pub fn timing(&self) -> RaftTiming {
        RaftTiming {
            heartbeat_ms: self.raft.heartbeat_ms,
            election_min_ms: self.raft.election_min_ms,
            election_max_ms: self.raft.election_max_ms,
        }
    }

    pub fn retention_check(&self) -> Duration {
        Duration::from_millis(self.retention_check_ms)
    }

    /// Checks the settings against each other. A node with neither `peers` nor `join` forms a
    /// single-node cluster of itself.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == 0 {
            return Err(invalid("id", "node ids start at 1"));
        }
        if self.addr.parse::<SocketAddr>().is_err() {
            // A host name is resolved when binding.
            check_host_port("addr", &self.addr)?;
        }
        if let Some(advertised) = &self.advertised_addr {
            check_host_port("advertised_addr", advertised)?;
        } else if self
            .addr
            .parse::<SocketAddr>()
            .is_ok_and(|a| a.ip().is_unspecified())
        {
            return Err(invalid(
                "advertised_addr",
                format!(
                    "{} listens on every interface; set the address other nodes and clients use",
                    self.addr
                ),
            ));
        }
        match (&self.external_addr, &self.external_advertised_addr) {
            (None, Some(_)) => {
                return Err(invalid(
                    "external_advertised_addr",
                    "set external_addr too (the listener it advertises)",
                ));
            }
            (Some(external), advertised) => {
                if external.parse::<SocketAddr>().is_err() {
                    check_host_port("external_addr", external)?;
                }
                match advertised {
                    Some(advertised) => check_host_port("external_advertised_addr", advertised)?,
                    None if external
                        .parse::<SocketAddr>()
                        .is_ok_and(|a| a.ip().is_unspecified()) =>
                    {
                        return Err(invalid(
                            "external_advertised_addr",
                            format!(
                                "{external} listens on every interface; set the address external clients use"
                            ),
                        ));
                    }
                    None => {}
                }
                if external == &self.addr && !external.ends_with(":0") {
                    return Err(invalid(
                        "external_addr",
                        format!("{external} is also addr; give the external listener its own port"),
                    ));
                }
            }
            (None, None) => {}
        }
        let voters = self.voters()?;
        if let Some(join) = &self.join {
            check_host_port("join", join)?;
            if !voters.is_empty() {
                return Err(invalid(
                    "join",
                    "give either peers (a new cluster) or join, not both",
                ));
            }
        }
        if !voters.is_empty() {
            if ![1, 3, 5].contains(&voters.len()) {
                return Err(invalid(
                    "peers",
                    format!("{} controller voters given; use 1, 3 or 5", voters.len()),
                ));
            }
            match voters.get(&self.id) {
                Some(me) if me.addr != self.advertised() => {
                    return Err(invalid(
                        "peers",
                        format!(
                            "lists node {} at {} but this node's address is {}",
                            self.id,
                            me.addr,
                            self.advertised()
                        ),
                    ));
                }
                _ => {}
            }
        }
        let r = &self.raft;
        if r.heartbeat_ms == 0
            || r.election_min_ms <= r.heartbeat_ms
            || r.election_max_ms <= r.election_min_ms
        {
            return Err(invalid(
                "raft",
                "need 0 < heartbeat_ms < election_min_ms < election_max_ms",
            ));
        }
        if let Some(metrics) = &self.metrics_addr {
            check_host_port("metrics_addr", metrics)?;
        }
        if self.retention_check_ms == 0 {
            return Err(invalid("retention_check_ms", "must be positive"));
        }
        if let Durability::Interval { ms: 0 } = self.durability {
            return Err(invalid("durability", "interval must be at least 1 ms"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_file_parses() {
        let config: NodeConfig = toml::from_str(
            r#"
            id = 2
            addr = "127.0.0.1:9093"
            data_dir = "/tmp/w"
            peers = ["1@127.0.0.1:9092", "2@127.0.0.1:9093", "3@127.0.0.1:9094"]
            durability = { interval = { ms = 50 } }
            [raft]
            heartbeat_ms = 100
            "#,
        )
        .expect("parses");
        config.validate().expect("valid");
        assert_eq!(config.voters().expect("voters").len(), 3);
        assert_eq!(config.durability, Durability::Interval { ms: 50 });
        assert_eq!(
            config.raft.election_min_ms,
            RaftSettings::default().election_min_ms
        );
    }

    #[test]
    fn mistakes_name_the_setting() {
        let cases = [
            ("id = 0", "id"),
            ("addr = \"nowhere\"", "addr"),
            ("addr = \"0.0.0.0:9092\"", "advertised_addr"),
            (
                "peers = [\"1@127.0.0.1:9092\", \"2@127.0.0.1:9093\"]",
                "peers",
            ),
            ("peers = [\"x@127.0.0.1:1\"]", "peers"),
            ("peers = [\"1@127.0.0.1:9999\"]", "peers"),
            ("join = \"h:1\"\npeers = [\"1@127.0.0.1:9092\"]", "join"),
            (
                "external_advertised_addr = \"127.0.0.1:19092\"",
                "external_advertised_addr",
            ),
            (
                "external_addr = \"0.0.0.0:19092\"",
                "external_advertised_addr",
            ),
            ("external_addr = \"127.0.0.1:9092\"", "external_addr"),
            ("external_addr = \"nowhere\"", "external_addr"),
        ];
        for (text, setting) in cases {
            let config: NodeConfig = toml::from_str(text).expect("parses");
            let err = config.validate().expect_err(text).to_string();
            assert!(err.contains(setting), "{text}: {err}");
        }
        assert!(toml::from_str::<NodeConfig>("unknown_key = 1").is_err());
    }
}
