//! A node's configuration: the settings, their defaults, their checks, and the one loader that
//! layers them ([`NodeConfig::load`], built on figment). Each layer overrides the one before:
//!
//! 1. defaults, which suit a single node on a laptop;
//! 2. the TOML file given with `--config FILE` (or `WEIR_CONFIG`): unknown keys are errors;
//! 3. `WEIR_*` environment variables: `WEIR_` and the key in capitals, with `__` between a table
//!    and its key (figment's `Env::prefixed("WEIR_").split("__")`): `WEIR_ADVERTISED_ADDR`,
//!    `WEIR_RAFT__HEARTBEAT_MS`. Other `WEIR_*` variables (`WEIR_BROKERS` of the client
//!    commands, `WEIR_CONFIG`, test switches) are not server settings and are ignored, except
//!    an unknown key inside a known table (`WEIR_RAFT__HEARTBEAT`), which is an error; an empty
//!    variable counts as unset;
//! 4. command-line flags: `--` and the key with `-` for `_` and `.`: `--advertised-addr`,
//!    `--raft-heartbeat-ms`.
//!
//! A value is written the same way in every layer: numbers, `true`/`false`, addresses as
//! `HOST:PORT`, durability as `always`, `never` or `interval:MS`; a list (`peers`) is a TOML
//! array in the file and comma-separated in the environment and flags
//! (`WEIR_PEERS=1@h1:9092,2@h2:9092`). [`SETTINGS`] lists every setting. An error names the
//! setting and where its value came from (the file, the variable or the flag).
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
//! # id_from_hostname = true        # instead of id: weir-0 is node 1 (StatefulSet pods)
//! # rack = "eu-1a"
//! # metrics_addr = "127.0.0.1:9100"   # Prometheus text on GET /metrics
//! durability = "always"            # or "interval:100" (ms), "never"
//! retention_check_ms = 30000
//! [limits]
//! idle_timeout_ms = 600000         # close connections silent this long
//! subscribe_streams = 4096         # Subscribe streams served at once
//! [raft]
//! heartbeat_ms = 150
//! election_min_ms = 800
//! election_max_ms = 1600
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider, Source};
use serde::{Deserialize, Serialize};
use weir_raft::{NodeId, PeerNode, RaftTiming};
use weir_storage::Durability;

/// Why a configuration is unusable. Each message names the setting and, when it was given
/// rather than defaulted, where: `config file PATH`, `environment variable WEIR_…` or
/// `flag --…`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read or is not TOML.
    #[error("{origin}: {message}")]
    Source { origin: String, message: String },
    /// A setting has a wrong value, is unknown, or does not fit the others.
    #[error("invalid setting {setting}{}: {message}", origin.as_ref().map(|o| format!(" ({o})")).unwrap_or_default())]
    Invalid {
        setting: String,
        origin: Option<String>,
        message: String,
    },
    /// Several of the above (one per line).
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Several(Vec<ConfigError>),
}

fn invalid(setting: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting: setting.to_string(),
        origin: None,
        message: message.into(),
    }
}

/// How a setting is written in the environment and in flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettingKind {
    /// Text as given (an address, a path, a name, a durability).
    Text,
    /// A whole number.
    Number,
    /// `true` or `false` in the environment (also `1`/`0`, `yes`/`no`, `on`/`off`); a flag
    /// without a value.
    Switch,
    /// Comma-separated in the environment and flags, a TOML array in the file.
    List,
}

/// One setting: its file key, environment variable and flag, and what it means.
#[derive(Debug)]
pub struct Setting {
    /// The key in the file; `table.key` for a nested one.
    pub key: &'static str,
    /// `WEIR_` + the key in capitals, `__` for the dot.
    pub env: &'static str,
    /// The long flag without its `--`: the key with `-` for `_` and `.`.
    pub flag: &'static str,
    pub kind: SettingKind,
    /// What the value looks like, for help texts.
    pub value_name: &'static str,
    pub help: &'static str,
}

impl Setting {
    /// The default value as text (`None` for an unset option, an empty list or `false`).
    pub fn default_text(&self) -> Option<String> {
        let defaults = Figment::from(Serialized::defaults(NodeConfig::default()));
        match defaults.find_value(self.key).ok()? {
            Value::String(_, text) => Some(text),
            Value::Num(_, n) => n.to_u128().map(|n| n.to_string()),
            Value::Bool(_, true) => Some("true".to_string()),
            _ => None,
        }
    }
}

const fn setting(
    key: &'static str,
    env: &'static str,
    flag: &'static str,
    kind: SettingKind,
    value_name: &'static str,
    help: &'static str,
) -> Setting {
    Setting {
        key,
        env,
        flag,
        kind,
        value_name,
        help,
    }
}

/// Every server setting (a unit test checks this against [`NodeConfig`]'s fields and the
/// naming rules of the module docs).
pub const SETTINGS: &[Setting] = {
    use SettingKind::{List, Number, Switch, Text};
    &[
        setting(
            "id",
            "WEIR_ID",
            "id",
            Number,
            "ID",
            "This node's id (1 or more), unique in the cluster",
        ),
        setting(
            "id_from_hostname",
            "WEIR_ID_FROM_HOSTNAME",
            "id-from-hostname",
            Switch,
            "",
            "Take the node id from the host name's trailing ordinal, plus one: weir-0 is node 1, \
             weir-2 node 3 (a Kubernetes StatefulSet's pods); not with id",
        ),
        setting(
            "addr",
            "WEIR_ADDR",
            "addr",
            Text,
            "HOST:PORT",
            "Address to listen on, for clients and peers",
        ),
        setting(
            "advertised_addr",
            "WEIR_ADVERTISED_ADDR",
            "advertised-addr",
            Text,
            "HOST:PORT",
            "Address other nodes and clients use [default: addr]",
        ),
        setting(
            "external_addr",
            "WEIR_EXTERNAL_ADDR",
            "external-addr",
            Text,
            "HOST:PORT",
            "A second listener for clients outside the nodes' network (a container's published \
             port): metadata asked there names brokers by their external addresses",
        ),
        setting(
            "external_advertised_addr",
            "WEIR_EXTERNAL_ADVERTISED_ADDR",
            "external-advertised-addr",
            Text,
            "HOST:PORT",
            "The address clients outside the nodes' network use [default: external_addr]",
        ),
        setting(
            "kafka_addr",
            "WEIR_KAFKA_ADDR",
            "kafka-addr",
            Text,
            "HOST:PORT",
            "A listener speaking Kafka's wire protocol (Kafka clients, kcat) over the same \
             partitions, groups, users and ACLs; none by default",
        ),
        setting(
            "kafka_advertised_addr",
            "WEIR_KAFKA_ADVERTISED_ADDR",
            "kafka-advertised-addr",
            Text,
            "HOST:PORT",
            "The address Kafka clients use to reach kafka_addr (Kafka's advertised.listeners) \
             [default: kafka_addr]",
        ),
        setting(
            "data_dir",
            "WEIR_DATA_DIR",
            "data-dir",
            Text,
            "DIR",
            "Data directory",
        ),
        setting(
            "peers",
            "WEIR_PEERS",
            "peers",
            List,
            "ID@HOST:PORT,...",
            "Initial controller voters (1, 3 or 5); a node not among them joins through them",
        ),
        setting(
            "join",
            "WEIR_JOIN",
            "join",
            Text,
            "HOST:PORT",
            "Join a running cluster through this node instead of peers",
        ),
        setting(
            "rack",
            "WEIR_RACK",
            "rack",
            Text,
            "RACK",
            "Rack (or zone) of this node, for rack-aware placement",
        ),
        setting(
            "durability",
            "WEIR_DURABILITY",
            "durability",
            Text,
            "always|never|interval:MS",
            "When appends reach the disk: always (fsync before acknowledging), never, or every \
             MS milliseconds",
        ),
        setting(
            "retention_check_ms",
            "WEIR_RETENTION_CHECK_MS",
            "retention-check-ms",
            Number,
            "MS",
            "How often partitions apply retention",
        ),
        setting(
            "metrics_addr",
            "WEIR_METRICS_ADDR",
            "metrics-addr",
            Text,
            "HOST:PORT",
            "Serve Prometheus metrics here (GET /metrics)",
        ),
        setting(
            "tls.cert",
            "WEIR_TLS__CERT",
            "tls-cert",
            Text,
            "FILE",
            "This node's certificate (PEM), naming weir://node/<id> in a URI SAN; with tls.key \
             and tls.ca it turns TLS on for every listener and mutual TLS between nodes",
        ),
        setting(
            "tls.key",
            "WEIR_TLS__KEY",
            "tls-key",
            Text,
            "FILE",
            "The private key of tls.cert (PEM)",
        ),
        setting(
            "tls.ca",
            "WEIR_TLS__CA",
            "tls-ca",
            Text,
            "FILE",
            "The CA (PEM) that signs node and client certificates",
        ),
        setting(
            "tls.client_auth",
            "WEIR_TLS__CLIENT_AUTH",
            "tls-client-auth",
            Text,
            "optional|required",
            "Whether clients must present a certificate (nodes always do)",
        ),
        setting(
            "tls.reload_ms",
            "WEIR_TLS__RELOAD_MS",
            "tls-reload-ms",
            Number,
            "MS",
            "How often the TLS files are checked for changes (changed files are reloaded \
             without a restart)",
        ),
        setting(
            "security.enabled",
            "WEIR_SECURITY__ENABLED",
            "security-enabled",
            Switch,
            "",
            "Authenticate every client call (bearer token or client certificate) and authorize \
             it by ACLs; needs TLS",
        ),
        setting(
            "security.super_users",
            "WEIR_SECURITY__SUPER_USERS",
            "security-super-users",
            List,
            "User:NAME,...",
            "Principals allowed everything, whatever the ACLs say",
        ),
        setting(
            "security.audit_log",
            "WEIR_SECURITY__AUDIT_LOG",
            "security-audit-log",
            Text,
            "FILE",
            "The audit log (JSON lines) [default: DATA_DIR/audit.log when security is enabled]",
        ),
        setting(
            "security.audit_max_bytes",
            "WEIR_SECURITY__AUDIT_MAX_BYTES",
            "security-audit-max-bytes",
            Number,
            "BYTES",
            "Size at which the audit log is rotated",
        ),
        setting(
            "security.audit_files",
            "WEIR_SECURITY__AUDIT_FILES",
            "security-audit-files",
            Number,
            "N",
            "Rotated audit logs kept (audit.log.1 .. audit.log.N)",
        ),
        setting(
            "limits.idle_timeout_ms",
            "WEIR_LIMITS__IDLE_TIMEOUT_MS",
            "limits-idle-timeout-ms",
            Number,
            "MS",
            "Close a client or peer connection after this long without a byte read from it (live \
             peers answer the server's HTTP/2 pings, so open streams stay)",
        ),
        setting(
            "limits.subscribe_streams",
            "WEIR_LIMITS__SUBSCRIBE_STREAMS",
            "limits-subscribe-streams",
            Number,
            "N",
            "Subscribe streams this node serves at once; more are refused (RESOURCE_EXHAUSTED)",
        ),
        setting(
            "raft.heartbeat_ms",
            "WEIR_RAFT__HEARTBEAT_MS",
            "raft-heartbeat-ms",
            Number,
            "MS",
            "Raft heartbeat interval",
        ),
        setting(
            "raft.election_min_ms",
            "WEIR_RAFT__ELECTION_MIN_MS",
            "raft-election-min-ms",
            Number,
            "MS",
            "Shortest Raft election timeout",
        ),
        setting(
            "raft.election_max_ms",
            "WEIR_RAFT__ELECTION_MAX_MS",
            "raft-election-max-ms",
            Number,
            "MS",
            "Longest Raft election timeout",
        ),
    ]
};

/// Raft timing (`[raft]` in the file).
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

/// TLS (`[tls]` in the file). TLS is on when `cert`, `key` and `ca` are all given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    /// `optional` or `required`.
    pub client_auth: String,
    pub reload_ms: u64,
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self {
            cert: None,
            key: None,
            ca: None,
            client_auth: "optional".into(),
            reload_ms: 5_000,
        }
    }
}

impl TlsSettings {
    /// The files, when TLS is on.
    pub fn files(&self) -> Option<weir_raft::tls::TlsFiles> {
        Some(weir_raft::tls::TlsFiles {
            cert: self.cert.clone()?,
            key: self.key.clone()?,
            ca: self.ca.clone()?,
        })
    }

    /// Whether every client must present a certificate (`client_auth = "required"`).
    pub fn client_cert_required(&self) -> bool {
        self.files().is_some() && self.client_auth == "required"
    }
}

/// Authentication, authorization and audit (`[security]` in the file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecuritySettings {
    pub enabled: bool,
    pub super_users: Vec<String>,
    pub audit_log: Option<PathBuf>,
    pub audit_max_bytes: u64,
    pub audit_files: u64,
}

impl Default for SecuritySettings {
    fn default() -> Self {
        Self {
            enabled: false,
            super_users: Vec::new(),
            audit_log: None,
            audit_max_bytes: 64 << 20,
            audit_files: 5,
        }
    }
}

/// Bounds on connections and streams (`[limits]` in the file); the fixed ones are constants
/// in `limits.rs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Close a connection after this long without a byte read from it, in ms.
    pub idle_timeout_ms: u64,
    /// Subscribe streams served at once by the node.
    pub subscribe_streams: u64,
}

/// Smallest `limits.idle_timeout_ms`: the keepalive pings that keep open streams' connections
/// alive come every third of it.
pub(crate) const MIN_IDLE_TIMEOUT_MS: u64 = 300;

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            idle_timeout_ms: 600_000,
            subscribe_streams: 4096,
        }
    }
}

impl LimitSettings {
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
}

/// Everything a node needs to start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id (1 or more), unique in the cluster.
    pub id: NodeId,
    /// Take `id` from the host name's trailing ordinal plus one (`weir-0` is node 1). The loader
    /// does this; [`Node::start`](crate::Node::start) only reads `id`.
    pub id_from_hostname: bool,
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
    /// `host:port` of a listener speaking Kafka's wire protocol.
    pub kafka_addr: Option<String>,
    /// The address Kafka clients use to reach `kafka_addr` (required with it when it listens on
    /// every interface); Kafka metadata names every broker by its own.
    pub kafka_advertised_addr: Option<String>,
    pub data_dir: PathBuf,
    /// The initial controller voters, `ID@HOST:PORT` (1, 3 or 5 of them).
    pub peers: Vec<String>,
    /// `HOST:PORT` of any node of a running cluster to join (instead of `peers`).
    pub join: Option<String>,
    pub rack: Option<String>,
    /// `always`, `never` or `interval:MS` (the only syntax, in every layer).
    #[serde(with = "durability_text")]
    pub durability: Durability,
    pub raft: RaftSettings,
    /// How often partitions check retention, in ms.
    pub retention_check_ms: u64,
    /// `host:port` for Prometheus metrics (`GET /metrics`); none by default.
    pub metrics_addr: Option<String>,
    pub tls: TlsSettings,
    pub security: SecuritySettings,
    pub limits: LimitSettings,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            id: 1,
            id_from_hostname: false,
            addr: "127.0.0.1:9092".into(),
            advertised_addr: None,
            external_addr: None,
            external_advertised_addr: None,
            kafka_addr: None,
            kafka_advertised_addr: None,
            data_dir: PathBuf::from("weir-data"),
            peers: Vec::new(),
            join: None,
            rack: None,
            durability: Durability::Always,
            raft: RaftSettings::default(),
            retention_check_ms: 30_000,
            metrics_addr: None,
            tls: TlsSettings::default(),
            security: SecuritySettings::default(),
            limits: LimitSettings::default(),
        }
    }
}

/// Parses a durability: `always`, `never` or `interval:MS`.
pub fn parse_durability(text: &str) -> Result<Durability, String> {
    match text.trim() {
        "always" => Ok(Durability::Always),
        "never" => Ok(Durability::Never),
        other => match other.strip_prefix("interval:") {
            Some(ms) => ms
                .trim()
                .parse()
                .map(|ms| Durability::Interval { ms })
                .map_err(|_| format!("{ms:?} is not a number of milliseconds (interval:MS)")),
            None => Err(format!("{other:?}: use always, never or interval:MS")),
        },
    }
}

/// `durability` as text in every layer (`Durability`'s own serde form, used in stored
/// metadata, stays as it is).
mod durability_text {
    use serde::de::{Deserializer, Error, Visitor};
    use serde::ser::Serializer;
    use weir_storage::Durability;

    pub(super) fn serialize<S: Serializer>(d: &Durability, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Durability::Always => s.serialize_str("always"),
            Durability::Never => s.serialize_str("never"),
            Durability::Interval { ms } => s.serialize_str(&format!("interval:{ms}")),
        }
    }

    struct Text;

    impl Visitor<'_> for Text {
        type Value = Durability;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("always, never or interval:MS")
        }

        fn visit_str<E: Error>(self, text: &str) -> Result<Durability, E> {
            super::parse_durability(text).map_err(E::custom)
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Durability, D::Error> {
        d.deserialize_str(Text)
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
pub(crate) fn check_host_port(setting: &str, addr: &str) -> Result<(), ConfigError> {
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

/// The layers above the defaults, as [`NodeConfig::load`] takes them.
#[derive(Debug, Default)]
pub struct Layers<'a> {
    /// The TOML file, if one was given.
    pub file: Option<&'a Path>,
    /// `WEIR_*` variables as figment's `Env::prefixed("WEIR_").split("__")` names them: the
    /// key in lower case with `.` for `__` (`raft.heartbeat_ms`), and the raw value. See
    /// [`NodeConfig::environment`].
    pub env: Vec<(String, String)>,
    /// Flags given: the setting's key and the raw value (`"true"` for a switch).
    pub flags: Vec<(String, String)>,
}

/// Names of the layers' figment metadata, to say where a value came from.
const ENV_LAYER: &str = "environment";
const FLAG_LAYER: &str = "command line";

/// The environment or the flags: text values typed by [`SETTINGS`].
struct TextLayer {
    name: &'static str,
    values: Dict,
}

impl TextLayer {
    fn new(name: &'static str, pairs: Vec<(String, String)>) -> Result<Self, ConfigError> {
        let mut values = Dict::new();
        let mut errors = Vec::new();
        for (key, text) in pairs {
            let Some(setting) = SETTINGS.iter().find(|s| s.key == key) else {
                // A key inside a known table is a misspelt setting; anything else is some other
                // program's WEIR_* variable.
                if let Some((table, _)) = key.split_once('.')
                    && SETTINGS
                        .iter()
                        .any(|s| s.key.starts_with(&format!("{table}.")))
                {
                    let known: Vec<&str> = SETTINGS
                        .iter()
                        .filter(|s| s.key.starts_with(&format!("{table}.")))
                        .map(|s| s.env)
                        .collect();
                    errors.push(ConfigError::Invalid {
                        setting: key.clone(),
                        origin: Some(origin_text(name, &key)),
                        message: format!("no such setting; {table} has {}", known.join(", ")),
                    });
                }
                continue;
            };
            if name == ENV_LAYER && text.is_empty() {
                continue;
            }
            insert(&mut values, setting.key, typed(setting.kind, &text));
        }
        match errors.len() {
            0 => Ok(Self { name, values }),
            1 => Err(errors.remove(0)),
            _ => Err(ConfigError::Several(errors)),
        }
    }
}

impl Provider for TextLayer {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.values.clone()))
    }
}

/// The value of `text` for a setting of `kind`. Text that does not fit stays a string, and the
/// extraction then reports the type it should have had.
fn typed(kind: SettingKind, text: &str) -> Value {
    match kind {
        SettingKind::Text => Value::from(text.to_string()),
        SettingKind::Number => match text.trim().parse::<u64>() {
            Ok(n) => Value::from(n),
            Err(_) => Value::from(text.to_string()),
        },
        SettingKind::Switch => match text.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Value::from(true),
            "false" | "0" | "no" | "off" => Value::from(false),
            _ => Value::from(text.to_string()),
        },
        SettingKind::List => Value::from(
            text.split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>(),
        ),
    }
}

/// Puts `value` at the dotted `key` (`raft.heartbeat_ms`) of `dict`.
fn insert(dict: &mut Dict, key: &str, value: Value) {
    match key.split_once('.') {
        None => {
            dict.insert(key.to_string(), value);
        }
        Some((table, rest)) => {
            let entry = dict
                .entry(table.to_string())
                .or_insert_with(|| Value::from(Dict::new()));
            if let Value::Dict(_, inner) = entry {
                insert(inner, rest, value);
            }
        }
    }
}

/// `environment variable WEIR_…`, `flag --…`, for a key given in that layer.
fn origin_text(layer: &str, key: &str) -> String {
    let setting = SETTINGS.iter().find(|s| s.key == key);
    match layer {
        ENV_LAYER => match setting {
            Some(s) => format!("environment variable {}", s.env),
            None => format!(
                "environment variable WEIR_{}",
                key.to_ascii_uppercase().replace('.', "__")
            ),
        },
        _ => match setting {
            Some(s) => format!("flag --{}", s.flag),
            None => format!("flag --{}", key.replace(['.', '_'], "-")),
        },
    }
}

/// Where the value at `key` came from, when a layer gave it (`None` for a default).
fn origin(metadata: Option<&Metadata>, key: &str) -> Option<String> {
    let metadata = metadata?;
    if let Some(Source::File(path)) = &metadata.source {
        return Some(format!("config file {}", path.display()));
    }
    match metadata.name.as_ref() {
        ENV_LAYER | FLAG_LAYER => Some(origin_text(&metadata.name, key)),
        _ => None,
    }
}

/// The dotted key of an error's path, cut to the setting it belongs to (`peers.2` is `peers`).
fn setting_of(path: &[String]) -> String {
    let full = path.join(".");
    SETTINGS
        .iter()
        .map(|s| s.key)
        .filter(|key| full == *key || full.starts_with(&format!("{key}.")))
        .max_by_key(|key| key.len())
        .map_or(full, str::to_string)
}

/// figment's errors, each naming its setting and where the value came from.
fn from_figment(error: figment::Error) -> ConfigError {
    let mut errors: Vec<ConfigError> = error
        .into_iter()
        .map(|e| {
            let message = match &e.kind {
                figment::error::Kind::UnknownField(found, expected) => format!(
                    "unknown key {found:?}; the keys here are {}",
                    expected.join(", ")
                ),
                kind => kind.to_string().trim_end().to_string(),
            };
            if e.path.is_empty() {
                // The provider failed as a whole: the file is unreadable or not TOML.
                let origin =
                    origin(e.metadata.as_ref(), "").unwrap_or_else(|| "configuration".to_string());
                ConfigError::Source { origin, message }
            } else {
                let setting = setting_of(&e.path);
                ConfigError::Invalid {
                    origin: origin(e.metadata.as_ref(), &setting),
                    setting,
                    message,
                }
            }
        })
        .collect();
    match errors.len() {
        1 => errors.remove(0),
        _ => ConfigError::Several(errors),
    }
}

impl NodeConfig {
    /// Layers defaults, the file, the environment and the flags (each overriding the one
    /// before), resolves `id_from_hostname` and checks the result. Errors name the setting and
    /// the file, variable or flag it came from.
    pub fn load(layers: Layers<'_>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(NodeConfig::default()));
        if let Some(path) = layers.file {
            figment = figment.merge(Toml::file_exact(path));
        }
        let figment = figment
            .merge(TextLayer::new(ENV_LAYER, layers.env)?)
            .merge(TextLayer::new(FLAG_LAYER, layers.flags)?);
        let mut config: NodeConfig = figment.extract().map_err(from_figment)?;
        let from = |key: &str| origin(figment.find_metadata(key), key);
        // The checks below name a setting; say where its value came from.
        let with_origin = |err: ConfigError| match err {
            ConfigError::Invalid {
                setting,
                origin: None,
                message,
            } => ConfigError::Invalid {
                origin: from(&setting),
                setting,
                message,
            },
            other => other,
        };
        if config.id_from_hostname {
            if let Some(id_origin) = from("id") {
                return Err(with_origin(invalid(
                    "id_from_hostname",
                    format!("cannot be used with id (given by {id_origin})"),
                )));
            }
            let hostname = hostname().map_err(with_origin)?;
            config.id = id_from_hostname(&hostname).map_err(with_origin)?;
            tracing::info!(%hostname, id = config.id, "node id from the host name");
        }
        config.validate().map_err(with_origin)?;
        Ok(config)
    }

    /// This process's `WEIR_*` variables, named as [`Layers::env`] wants them.
    pub fn environment() -> Vec<(String, String)> {
        figment::providers::Env::prefixed("WEIR_")
            .split("__")
            .iter()
            .map(|(key, value)| (key.as_str().to_string(), value))
            .collect()
    }

    /// The address others use to reach this node.
    pub fn advertised(&self) -> &str {
        self.advertised_addr.as_deref().unwrap_or(&self.addr)
    }

    /// Checks a second listener (`listen`) and the address its clients use (`advertised`):
    /// the advertised one needs the listener, a listener on every interface needs an advertised
    /// address, and neither may share `addr`'s port.
    fn check_listener(
        &self,
        (listen_key, listen): (&'static str, Option<&str>),
        (advertised_key, advertised): (&'static str, Option<&str>),
        clients: &str,
    ) -> Result<(), ConfigError> {
        let Some(listen) = listen else {
            if advertised.is_some() {
                return Err(invalid(
                    advertised_key,
                    format!("set {listen_key} too (the listener it advertises)"),
                ));
            }
            return Ok(());
        };
        if listen.parse::<SocketAddr>().is_err() {
            check_host_port(listen_key, listen)?;
        }
        match advertised {
            Some(advertised) => check_host_port(advertised_key, advertised)?,
            None if listen
                .parse::<SocketAddr>()
                .is_ok_and(|a| a.ip().is_unspecified()) =>
            {
                return Err(invalid(
                    advertised_key,
                    format!("{listen} listens on every interface; set the address {clients} use"),
                ));
            }
            None => {}
        }
        if listen == self.addr && !listen.ends_with(":0") {
            return Err(invalid(
                listen_key,
                format!("{listen} is also addr; give this listener its own port"),
            ));
        }
        Ok(())
    }

    /// The address Kafka clients use, when there is a Kafka listener.
    pub fn kafka_advertised(&self) -> Option<&str> {
        self.kafka_advertised_addr
            .as_deref()
            .or(self.kafka_addr.as_deref())
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
        self.check_listener(
            ("external_addr", self.external_addr.as_deref()),
            (
                "external_advertised_addr",
                self.external_advertised_addr.as_deref(),
            ),
            "external clients",
        )?;
        self.check_listener(
            ("kafka_addr", self.kafka_addr.as_deref()),
            (
                "kafka_advertised_addr",
                self.kafka_advertised_addr.as_deref(),
            ),
            "Kafka clients",
        )?;
        if let (Some(kafka), Some(external)) = (&self.kafka_addr, &self.external_addr)
            && kafka == external
            && !kafka.ends_with(":0")
        {
            return Err(invalid(
                "kafka_addr",
                format!("{kafka} is also external_addr; give each listener its own port"),
            ));
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
        let order = "need 0 < heartbeat_ms < election_min_ms < election_max_ms";
        if r.heartbeat_ms == 0 {
            return Err(invalid("raft.heartbeat_ms", order));
        }
        if r.election_min_ms <= r.heartbeat_ms {
            return Err(invalid(
                "raft.election_min_ms",
                format!("{order} (heartbeat_ms is {})", r.heartbeat_ms),
            ));
        }
        if r.election_max_ms <= r.election_min_ms {
            return Err(invalid(
                "raft.election_max_ms",
                format!("{order} (election_min_ms is {})", r.election_min_ms),
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
        if self.limits.idle_timeout_ms < MIN_IDLE_TIMEOUT_MS {
            return Err(invalid(
                "limits.idle_timeout_ms",
                format!("must be at least {MIN_IDLE_TIMEOUT_MS}"),
            ));
        }
        if self.limits.subscribe_streams == 0 {
            return Err(invalid("limits.subscribe_streams", "must be positive"));
        }
        self.validate_tls()
    }

    fn validate_tls(&self) -> Result<(), ConfigError> {
        let tls = &self.tls;
        let given = [
            ("tls.cert", &tls.cert),
            ("tls.key", &tls.key),
            ("tls.ca", &tls.ca),
        ];
        let missing: Vec<&str> = given
            .iter()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| *k)
            .collect();
        if missing.len() == 1 || missing.len() == 2 {
            let (setting, _) = given
                .iter()
                .find(|(_, v)| v.is_some())
                .copied()
                .unwrap_or(given[0]);
            return Err(invalid(
                setting,
                format!(
                    "TLS needs tls.cert, tls.key and tls.ca; {} missing",
                    missing.join(" and ")
                ),
            ));
        }
        if !["optional", "required"].contains(&tls.client_auth.as_str()) {
            return Err(invalid(
                "tls.client_auth",
                format!("{:?} is not optional or required", tls.client_auth),
            ));
        }
        if tls.reload_ms == 0 {
            return Err(invalid("tls.reload_ms", "must be positive"));
        }
        if self.security.enabled && tls.files().is_none() {
            return Err(invalid(
                "security.enabled",
                "needs TLS (tls.cert, tls.key, tls.ca): tokens must not cross the network in \
                 plaintext, and nodes vouch for forwarded callers only over mutual TLS",
            ));
        }
        for principal in &self.security.super_users {
            if !principal.starts_with("User:") || principal.len() == 5 {
                return Err(invalid(
                    "security.super_users",
                    format!("{principal:?} is not a principal (User:NAME)"),
                ));
            }
        }
        if self.security.audit_max_bytes < 4096 {
            return Err(invalid("security.audit_max_bytes", "must be at least 4096"));
        }
        Ok(())
    }
}

/// This machine's host name: `HOSTNAME` (set by Docker and Kubernetes), else the kernel's.
fn hostname() -> Result<String, ConfigError> {
    if let Ok(name) = std::env::var("HOSTNAME")
        && !name.trim().is_empty()
    {
        return Ok(name.trim().to_string());
    }
    let path = "/proc/sys/kernel/hostname";
    let name = std::fs::read_to_string(path).map_err(|err| {
        invalid(
            "id_from_hostname",
            format!("cannot read the host name ({path}): {err}"),
        )
    })?;
    Ok(name.trim().to_string())
}

/// `weir-0` → 1: the number after the host name's last `-`, plus one (node ids start at 1).
fn id_from_hostname(hostname: &str) -> Result<NodeId, ConfigError> {
    let ordinal = hostname
        .rsplit_once('-')
        .map(|(_, ordinal)| ordinal)
        .and_then(|ordinal| ordinal.parse::<u64>().ok())
        .ok_or_else(|| {
            invalid(
                "id_from_hostname",
                format!("host name {hostname:?} does not end in -ORDINAL (like weir-0)"),
            )
        })?;
    ordinal.checked_add(1).ok_or_else(|| {
        invalid(
            "id_from_hostname",
            format!("ordinal {ordinal} is too large"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    type Pairs<'a> = Vec<(&'a str, &'a str)>;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// A TOML file in a temporary directory (kept alive by the returned guard).
    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("node.toml");
        std::fs::write(&path, text).expect("write config");
        (dir, path)
    }

    fn load(
        file: Option<&Path>,
        env: &[(&str, &str)],
        flags: &[(&str, &str)],
    ) -> Result<NodeConfig, ConfigError> {
        NodeConfig::load(Layers {
            file,
            env: pairs(env),
            flags: pairs(flags),
        })
    }

    const FULL: &str = r#"
        id = 2
        addr = "127.0.0.1:9093"
        data_dir = "/tmp/w"
        peers = ["1@127.0.0.1:9092", "2@127.0.0.1:9093", "3@127.0.0.1:9094"]
        durability = "interval:50"
        retention_check_ms = 1000
        [raft]
        heartbeat_ms = 100
    "#;

    #[test]
    fn a_file_alone_sets_everything_it_names() {
        let (_dir, path) = file(FULL);
        let config = load(Some(&path), &[], &[]).expect("loads");
        assert_eq!(config.id, 2);
        assert_eq!(config.addr, "127.0.0.1:9093");
        assert_eq!(config.data_dir, PathBuf::from("/tmp/w"));
        assert_eq!(config.voters().expect("voters").len(), 3);
        assert_eq!(config.durability, Durability::Interval { ms: 50 });
        assert_eq!(config.retention_check_ms, 1000);
        assert_eq!(config.raft.heartbeat_ms, 100);
        assert_eq!(
            config.raft.election_min_ms,
            RaftSettings::default().election_min_ms
        );
        // Nothing given: the defaults.
        assert_eq!(load(None, &[], &[]).expect("loads"), NodeConfig::default());
    }

    #[test]
    fn the_environment_overrides_the_file_and_flags_override_both() {
        let (_dir, path) = file(FULL);
        let env = [
            ("addr", "127.0.0.1:7000"),
            ("advertised_addr", "127.0.0.1:9093"),
            ("rack", "1"),
            ("durability", "never"),
            ("raft.election_min_ms", "900"),
        ];
        let config = load(Some(&path), &env, &[]).expect("loads");
        assert_eq!(config.addr, "127.0.0.1:7000");
        assert_eq!(config.rack.as_deref(), Some("1"), "a number stays text");
        assert_eq!(config.durability, Durability::Never);
        assert_eq!(config.raft.election_min_ms, 900);
        assert_eq!(config.raft.heartbeat_ms, 100, "the file's, beside env's");
        assert_eq!(config.id, 2);

        let flags = [
            ("addr", "127.0.0.1:7001"),
            ("durability", "always"),
            ("raft.election_min_ms", "950"),
            (
                "peers",
                "1@127.0.0.1:9092, 2@127.0.0.1:9093,3@127.0.0.1:9094,",
            ),
        ];
        let config = load(Some(&path), &env, &flags).expect("loads");
        assert_eq!(config.addr, "127.0.0.1:7001");
        assert_eq!(config.durability, Durability::Always);
        assert_eq!(config.raft.election_min_ms, 950);
        assert_eq!(config.peers.len(), 3);
        assert_eq!(config.peers[1], "2@127.0.0.1:9093");
    }

    #[test]
    fn nested_and_list_settings_come_from_the_environment() {
        let env = [
            ("raft.heartbeat_ms", "50"),
            ("raft.election_min_ms", "300"),
            ("raft.election_max_ms", "600"),
            ("peers", "1@127.0.0.1:9092"),
            ("id_from_hostname", "false"),
        ];
        let config = load(None, &env, &[]).expect("loads");
        assert_eq!(
            config.raft,
            RaftSettings {
                heartbeat_ms: 50,
                election_min_ms: 300,
                election_max_ms: 600,
            }
        );
        assert_eq!(config.peers, ["1@127.0.0.1:9092"]);
    }

    #[test]
    fn other_programs_weir_variables_are_ignored() {
        let env = [
            ("brokers", "127.0.0.1:1,127.0.0.1:2"),
            ("docker_tests", "1"),
            ("fuzz_seconds", "60"),
            ("config", "/elsewhere.toml"),
            ("port_9092_tcp", "tcp://10.0.0.1:9092"),
            ("addr", ""),
        ];
        assert_eq!(load(None, &env, &[]).expect("loads"), NodeConfig::default());
        // A misspelt key inside a known table is not someone else's variable.
        let err = load(None, &[("raft.heartbeat", "100")], &[])
            .expect_err("unknown raft key")
            .to_string();
        assert!(
            err.contains("WEIR_RAFT__HEARTBEAT") && err.contains("WEIR_RAFT__HEARTBEAT_MS"),
            "{err}"
        );
    }

    #[test]
    fn bad_values_name_the_setting_and_where_it_came_from() {
        let (_dir, path) = file("retention_check_ms = \"soon\"\n");
        let cases: Vec<(Option<&Path>, Pairs<'_>, Pairs<'_>, &[&str])> = vec![
            (
                None,
                vec![("raft.heartbeat_ms", "fast")],
                vec![],
                &[
                    "raft.heartbeat_ms",
                    "environment variable WEIR_RAFT__HEARTBEAT_MS",
                    "\"fast\"",
                ],
            ),
            (
                None,
                vec![],
                vec![("durability", "sometimes")],
                &[
                    "durability",
                    "flag --durability",
                    "always, never or interval:MS",
                ],
            ),
            (
                Some(&path),
                vec![],
                vec![],
                &["retention_check_ms", "config file", "node.toml", "\"soon\""],
            ),
            (
                None,
                vec![("id_from_hostname", "maybe")],
                vec![],
                &["id_from_hostname", "WEIR_ID_FROM_HOSTNAME"],
            ),
            // Checks across settings name the one to fix, and its source.
            (
                None,
                vec![("addr", "nowhere")],
                vec![],
                &["addr", "environment variable WEIR_ADDR", "not HOST:PORT"],
            ),
            (
                None,
                vec![("raft.election_min_ms", "100")],
                vec![],
                &[
                    "raft.election_min_ms",
                    "WEIR_RAFT__ELECTION_MIN_MS",
                    "heartbeat_ms is 150",
                ],
            ),
            (
                None,
                vec![],
                vec![("peers", "1@127.0.0.1:9092,2@127.0.0.1:9093")],
                &["peers", "flag --peers", "use 1, 3 or 5"],
            ),
            (
                None,
                vec![("id", "3")],
                vec![("id_from_hostname", "true")],
                &[
                    "id_from_hostname",
                    "flag --id-from-hostname",
                    "environment variable WEIR_ID",
                ],
            ),
        ];
        for (file, env, flags, mentions) in cases {
            let err = load(file, &env, &flags)
                .expect_err(&format!("{env:?} {flags:?}"))
                .to_string();
            for mention in mentions {
                assert!(
                    err.contains(mention),
                    "{env:?} {flags:?}: {err:?} lacks {mention:?}"
                );
            }
        }
    }

    #[test]
    fn unknown_or_unreadable_files_are_errors_naming_them() {
        let (_dir, path) = file("id = 1\nbogus_setting = true\n");
        let err = load(Some(&path), &[], &[])
            .expect_err("unknown key")
            .to_string();
        assert!(
            err.contains("bogus_setting") && err.contains("node.toml"),
            "{err}"
        );
        let (_dir, path) = file("[raft]\nheartbeat = 100\n");
        let err = load(Some(&path), &[], &[])
            .expect_err("unknown raft key")
            .to_string();
        assert!(
            err.contains("raft.heartbeat") && err.contains("heartbeat_ms"),
            "{err}"
        );
        // The old table form of durability is gone: one syntax.
        let (_dir, path) = file("durability = { interval = { ms = 100 } }\n");
        let err = load(Some(&path), &[], &[])
            .expect_err("table durability")
            .to_string();
        assert!(
            err.contains("durability") && err.contains("interval:MS"),
            "{err}"
        );
        let missing = Path::new("/nonexistent/weir.toml");
        let err = load(Some(missing), &[], &[])
            .expect_err("missing file")
            .to_string();
        assert!(err.contains("/nonexistent/weir.toml"), "{err}");
        let (_dir, path) = file("id = \n");
        let err = load(Some(&path), &[], &[])
            .expect_err("not TOML")
            .to_string();
        assert!(err.contains("node.toml"), "{err}");
    }

    #[test]
    fn every_field_is_a_setting_named_by_the_rules() {
        // The leaf keys of the serialized defaults are NodeConfig's fields.
        fn leaves(prefix: &str, dict: &Dict, out: &mut Vec<String>) {
            for (key, value) in dict {
                let key = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                match value {
                    Value::Dict(_, inner) => leaves(&key, inner, out),
                    _ => out.push(key),
                }
            }
        }
        let data = Serialized::defaults(NodeConfig::default())
            .data()
            .expect("serializes");
        let mut fields = Vec::new();
        leaves("", &data[&Profile::Default], &mut fields);
        fields.sort();
        let mut keys: Vec<String> = SETTINGS.iter().map(|s| s.key.to_string()).collect();
        keys.sort();
        assert_eq!(fields, keys);
        for s in SETTINGS {
            assert_eq!(
                s.env,
                format!("WEIR_{}", s.key.to_ascii_uppercase().replace('.', "__"))
            );
            assert_eq!(s.flag, s.key.replace(['.', '_'], "-"));
        }
    }

    #[test]
    fn defaults_are_shown_as_written() {
        let text = |key: &str| {
            SETTINGS
                .iter()
                .find(|s| s.key == key)
                .and_then(Setting::default_text)
        };
        assert_eq!(text("addr").as_deref(), Some("127.0.0.1:9092"));
        assert_eq!(text("durability").as_deref(), Some("always"));
        assert_eq!(text("raft.heartbeat_ms").as_deref(), Some("150"));
        assert_eq!(text("advertised_addr"), None);
        assert_eq!(text("peers"), None);
        assert_eq!(text("id_from_hostname"), None);
    }

    #[test]
    fn durability_text_round_trips() {
        for d in [
            Durability::Always,
            Durability::Never,
            Durability::Interval { ms: 7 },
        ] {
            let config = NodeConfig {
                durability: d,
                ..NodeConfig::default()
            };
            let figment = Figment::from(Serialized::defaults(&config));
            assert_eq!(figment.extract::<NodeConfig>().expect("extracts"), config);
        }
        assert!(parse_durability("interval:x").is_err());
    }

    #[test]
    fn ids_come_from_statefulset_ordinals() {
        assert_eq!(id_from_hostname("weir-0").expect("ordinal"), 1);
        assert_eq!(id_from_hostname("my-weir-cluster-12").expect("ordinal"), 13);
        for bad in ["weir", "weir-", "weir-x", "weir-0a", ""] {
            let err = id_from_hostname(bad).expect_err(bad).to_string();
            assert!(
                err.contains("-ORDINAL") && err.contains("id_from_hostname"),
                "{bad}: {err}"
            );
        }
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
            ("[raft]\nheartbeat_ms = 0", "raft.heartbeat_ms"),
            ("[raft]\nelection_max_ms = 800", "raft.election_max_ms"),
            ("retention_check_ms = 0", "retention_check_ms"),
            ("durability = \"interval:0\"", "durability"),
            ("[limits]\nidle_timeout_ms = 10", "limits.idle_timeout_ms"),
            (
                "[limits]\nsubscribe_streams = 0",
                "limits.subscribe_streams",
            ),
        ];
        for (text, setting) in cases {
            let (_dir, path) = file(text);
            let err = load(Some(&path), &[], &[]).expect_err(text).to_string();
            assert!(
                err.contains(&format!("invalid setting {setting}")),
                "{text}: {err}"
            );
            // A setting the file gave is said to come from it.
            let leaf = setting.rsplit('.').next().unwrap_or(setting);
            if text.contains(&format!("{leaf} =")) {
                assert!(
                    err.contains(&format!("invalid setting {setting} (config file")),
                    "{text}: {err}"
                );
            }
        }
    }
}
