//! `weir`: one binary for the server, a local development cluster, and the client commands.
//!
//! Exit codes: 0 success; 1 the operation failed (the message says why, with the server's
//! status where there is one — for example "unknown topic"); 2 bad command line.
//!
//! Owns the commands (one module each) and their output; it talks to a cluster only through
//! `weir-client` (and runs a node through `weir-broker`). Invariants: every listing has a
//! `--output json` form; every table goes through `table` (one look); long work shows progress.

/// mimalloc instead of glibc's malloc: the broker and the clients allocate and free many small
/// buffers per request (about 7% of the CPU went to glibc's malloc and free under load).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod access;
mod bench;
mod certs;
mod cluster;
mod consume;
mod group;
mod health;
mod local;
mod produce;
mod server;
mod table;
mod topic;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Weir: a replicated log.
#[derive(Debug, Parser)]
#[command(name = "weir", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where client commands connect.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Brokers {
    /// Comma-separated `host:port` of any nodes of the cluster.
    #[arg(
        long,
        env = "WEIR_BROKERS",
        default_value = "127.0.0.1:9092",
        value_delimiter = ',',
        global = true
    )]
    brokers: Vec<String>,
    /// The cluster's CA certificate (PEM): connect over TLS and check the nodes against it.
    #[arg(long, env = "WEIR_TLS_CA", value_name = "FILE", global = true)]
    tls_ca: Option<std::path::PathBuf>,
    /// A client certificate (PEM), for clusters that identify clients by certificate.
    #[arg(
        long,
        env = "WEIR_TLS_CERT",
        value_name = "FILE",
        global = true,
        requires = "tls_key"
    )]
    tls_cert: Option<std::path::PathBuf>,
    /// The key of --tls-cert (PEM).
    #[arg(
        long,
        env = "WEIR_TLS_KEY",
        value_name = "FILE",
        global = true,
        requires = "tls_cert"
    )]
    tls_key: Option<std::path::PathBuf>,
    /// The name the nodes' certificates are checked against [default: the host dialled].
    #[arg(long, env = "WEIR_TLS_SERVER_NAME", value_name = "NAME", global = true)]
    tls_server_name: Option<String>,
    /// A bearer token (from `weir token create`); sent only over TLS.
    #[arg(
        long,
        env = "WEIR_TOKEN",
        value_name = "TOKEN",
        global = true,
        hide_env_values = true
    )]
    token: Option<String>,
}

/// How listings are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Output {
    /// Aligned columns for people (see table.rs: the same look in every command).
    Table,
    /// One JSON document, for scripts.
    Json,
}

/// Parses `KEY=VALUE` (for `--config` and `--header`).
pub(crate) fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

/// Parses a position given to `flag`: earliest, latest, an offset, or @TIME — RFC 3339 (for
/// example @2026-11-23T10:00:00Z) or milliseconds since the Unix epoch.
pub(crate) fn parse_position(flag: &str, text: &str) -> anyhow::Result<weir_client::Start> {
    use anyhow::Context;
    use weir_client::Start;
    let usage = || format!("{flag} {text:?}: use earliest, latest, an offset or @TIME");
    match text {
        "earliest" => Ok(Start::Earliest),
        "latest" => Ok(Start::Latest),
        other => match other.strip_prefix('@') {
            Some(time) => {
                if let Ok(ms) = time.parse::<i64>() {
                    return Ok(Start::Timestamp(ms));
                }
                let at = humantime::parse_rfc3339_weak(time)
                    .with_context(|| format!("{}: {time:?} is not an RFC 3339 time", usage()))?;
                let ms = at
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                    .with_context(usage)?;
                Ok(Start::Timestamp(ms))
            }
            None => other.parse().map(Start::Offset).with_context(usage),
        },
    }
}

/// The `--output` option of listing commands.
#[derive(Debug, Clone, Copy, clap::Args)]
pub(crate) struct OutputArg {
    /// table or json.
    #[arg(long, value_enum, default_value = "table", global = true)]
    output: Output,
}

impl OutputArg {
    pub(crate) fn json(self) -> bool {
        self.output == Output::Json
    }
}

/// Prints `value` as pretty JSON on stdout.
pub(crate) fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

impl Brokers {
    /// The TLS and credential settings these flags give.
    pub(crate) fn security(&self) -> anyhow::Result<weir_client::Security> {
        let tls = match &self.tls_ca {
            Some(ca) => {
                let mut tls = weir_client::TlsOptions::from_files(
                    ca,
                    self.tls_cert.as_deref(),
                    self.tls_key.as_deref(),
                )?;
                tls.server_name = self.tls_server_name.clone();
                Some(tls)
            }
            None if self.tls_cert.is_some() => {
                anyhow::bail!(
                    "--tls-cert needs --tls-ca (the CA that signed the nodes' certificates)"
                )
            }
            None => None,
        };
        let security = weir_client::Security {
            tls,
            token: self.token.clone(),
        };
        security.validate()?;
        Ok(security)
    }

    pub(crate) fn client(&self) -> anyhow::Result<weir_client::Client> {
        Ok(weir_client::Client::with_security(
            &self.brokers,
            self.security()?,
        )?)
    }

    /// The client, shareable with a producer or consumer.
    pub(crate) fn shared_client(&self) -> anyhow::Result<std::sync::Arc<weir_client::Client>> {
        Ok(std::sync::Arc::new(self.client()?))
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one node.
    Server(server::ServerArgs),
    /// Run a development cluster of N nodes on loopback (Ctrl-C stops it).
    Local(local::LocalArgs),
    /// Create, list and delete topics.
    Topic {
        #[command(subcommand)]
        command: topic::TopicCommand,
        #[command(flatten)]
        brokers: Brokers,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Inspect and change the cluster: status, rebalance, remove-node, reassign.
    Cluster {
        #[command(subcommand)]
        command: cluster::ClusterCommand,
        #[command(flatten)]
        brokers: Brokers,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Consumer groups: list, describe (members, committed offsets, lag), reset offsets.
    Group {
        #[command(subcommand)]
        command: group::GroupCommand,
        #[command(flatten)]
        brokers: Brokers,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Users: create, delete, list; map client certificates to users.
    User {
        #[command(subcommand)]
        command: access::UserCommand,
        #[command(flatten)]
        brokers: Brokers,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Bearer tokens: create (printed once), revoke, list.
    Token {
        #[command(subcommand)]
        command: access::TokenCommand,
        #[command(flatten)]
        brokers: Brokers,
        #[command(flatten)]
        output: OutputArg,
    },
    /// ACLs: add, remove, list (deny wins over allow).
    Acl {
        #[command(subcommand)]
        command: access::AclCommand,
        #[command(flatten)]
        brokers: Brokers,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Tenants: a topic and group name prefix and its principals.
    Tenant {
        #[command(subcommand)]
        command: access::TenantCommand,
        #[command(flatten)]
        brokers: Brokers,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Quotas of users and tenants: rates (throttled) and hard limits.
    Quota {
        #[command(subcommand)]
        command: access::QuotaCommand,
        #[command(flatten)]
        brokers: Brokers,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Who the cluster takes you for (principal, tenant, super user).
    Whoami {
        #[command(flatten)]
        brokers: Brokers,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Make TLS certificates for a cluster: a CA (reused if DIR has one), node and client
    /// certificates.
    Certs(certs::CertsArgs),
    /// Produce records, one per line of standard input (or --file).
    Produce(produce::ProduceArgs),
    /// Read records, one value (or JSON object) per line on standard output.
    Consume(consume::ConsumeArgs),
    /// Workload benchmark: producers and consumers on fresh topics, rates and latency
    /// percentiles (or --replay-bytes: one partition's read-back rate); a table or --json.
    Bench(bench::BenchArgs),
    /// Ask one node for its gRPC health; exit 0 only when it is SERVING (container health
    /// checks).
    Health(health::HealthArgs),
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("weir: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Server(args) => {
                init_logging("info");
                server::run(args).await
            }
            Command::Local(args) => {
                init_logging("warn");
                local::run(args).await
            }
            Command::Topic {
                command,
                brokers,
                output,
            } => {
                init_logging("warn");
                topic::run(command, brokers, output).await
            }
            Command::Group {
                command,
                brokers,
                output,
            } => {
                init_logging("warn");
                group::run(command, brokers, output).await
            }
            Command::Cluster {
                command,
                brokers,
                output,
            } => {
                init_logging("warn");
                cluster::run(command, brokers, output).await
            }
            Command::User {
                command,
                brokers,
                output,
            } => {
                init_logging("warn");
                access::user(command, brokers, output).await
            }
            Command::Token {
                command,
                brokers,
                output,
            } => {
                init_logging("warn");
                access::token(command, brokers, output).await
            }
            Command::Acl {
                command,
                brokers,
                output,
            } => {
                init_logging("warn");
                access::acl(command, brokers, output).await
            }
            Command::Tenant {
                command,
                brokers,
                output,
            } => {
                init_logging("warn");
                access::tenant(command, brokers, output).await
            }
            Command::Quota {
                command,
                brokers,
                output,
            } => {
                init_logging("warn");
                access::quota(command, brokers, output).await
            }
            Command::Whoami { brokers, output } => {
                init_logging("warn");
                access::whoami(brokers, output).await
            }
            Command::Certs(args) => certs::run(args),
            Command::Produce(args) => {
                init_logging("warn");
                produce::run(args).await
            }
            Command::Consume(args) => {
                init_logging("warn");
                consume::run(args).await
            }
            Command::Bench(args) => {
                init_logging("warn");
                bench::run(args).await
            }
            Command::Health(args) => {
                init_logging("warn");
                health::run(args).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("weir: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_client::Start;

    #[test]
    fn positions_parse() {
        let parse = |t: &str| parse_position("--from", t).ok();
        assert_eq!(parse("earliest"), Some(Start::Earliest));
        assert_eq!(parse("latest"), Some(Start::Latest));
        assert_eq!(parse("42"), Some(Start::Offset(42)));
        assert_eq!(
            parse("@1700000000000"),
            Some(Start::Timestamp(1_700_000_000_000))
        );
        assert_eq!(
            parse("@2023-11-14T22:13:20Z"),
            Some(Start::Timestamp(1_700_000_000_000))
        );
        for bad in ["yesterday", "@yesterday", "-1", "@"] {
            let err = parse_position("--from", bad)
                .err()
                .map(|e| format!("{e:#}"))
                .unwrap_or_default();
            assert!(err.contains("--from"), "{bad}: {err}");
        }
        assert_eq!(key_value("a=b=c").ok(), Some(("a".into(), "b=c".into())));
        assert!(key_value("=b").is_err() && key_value("ab").is_err());
    }
}
