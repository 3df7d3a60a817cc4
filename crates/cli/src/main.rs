//! `weir`: one binary for the server, a local development cluster, and the client commands.
//!
//! Exit codes: 0 success; 1 the operation failed (the message says why); 2 bad command line.

mod cluster;
mod consume;
mod local;
mod produce;
mod server;

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
}

/// How listings are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Output {
    /// Aligned columns for people.
    Table,
    /// One JSON document, for scripts.
    Json,
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

fn partition_json(p: &weir_client::PartitionInfo) -> serde_json::Value {
    serde_json::json!({
        "partition": p.partition,
        "leader": (p.leader != 0).then_some(p.leader),
        "replicas": p.replicas,
        "reassigning": p.reassigning,
    })
}

impl Brokers {
    pub(crate) fn client(&self) -> anyhow::Result<weir_client::Client> {
        Ok(weir_client::Client::new(&self.brokers)?)
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
        command: TopicCommand,
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
    /// Produce records, one per line of standard input.
    Produce(produce::ProduceArgs),
    /// Read records, one value per line on standard output.
    Consume(consume::ConsumeArgs),
}

#[derive(Debug, Subcommand)]
enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        #[arg(long, short = 'p', default_value_t = 1)]
        partitions: u32,
        #[arg(long, short = 'r', default_value_t = 1)]
        replication_factor: u32,
    },
    /// List topics with their partitions, replicas and leaders.
    List,
    /// One topic: partitions, replicas, leaders, and each partition's log start and high
    /// watermark.
    Describe { name: String },
    /// Delete a topic and its data.
    Delete { name: String },
}

async fn topic(command: TopicCommand, brokers: Brokers, output: OutputArg) -> anyhow::Result<()> {
    let client = brokers.client()?;
    match command {
        TopicCommand::Create {
            name,
            partitions,
            replication_factor,
        } => {
            let topic = client
                .create_topic(&name, partitions, replication_factor)
                .await?;
            let count = topic.partitions.len();
            println!(
                "created topic {} with {count} partition{}, replication factor {}",
                topic.name,
                if count == 1 { "" } else { "s" },
                topic.replication_factor
            );
        }
        TopicCommand::List if output.json() => {
            let metadata = client.metadata(&[]).await?;
            let topics: Vec<serde_json::Value> = metadata
                .topics
                .iter()
                .map(|t| {
                    serde_json::json!({
                        "name": t.name,
                        "replication_factor": t.replication_factor,
                        "partitions": t.partitions.iter().map(partition_json).collect::<Vec<_>>(),
                    })
                })
                .collect();
            print_json(&serde_json::json!({ "topics": topics }))?;
        }
        TopicCommand::Describe { name } => {
            let metadata = client.metadata(std::slice::from_ref(&name)).await?;
            let topic = metadata
                .topics
                .first()
                .ok_or_else(|| anyhow::anyhow!("unknown topic {name:?}"))?;
            let mut partitions = Vec::new();
            for p in &topic.partitions {
                let offsets = client.list_offsets(&name, p.partition, None).await?;
                partitions.push((p, offsets));
            }
            if output.json() {
                let partitions: Vec<serde_json::Value> = partitions
                    .iter()
                    .map(|(p, o)| {
                        let mut value = partition_json(p);
                        value["log_start_offset"] = o.log_start_offset.into();
                        value["high_watermark"] = o.high_watermark.into();
                        value
                    })
                    .collect();
                print_json(&serde_json::json!({
                    "name": topic.name,
                    "replication_factor": topic.replication_factor,
                    "partitions": partitions,
                }))?;
            } else {
                println!(
                    "topic {}  partitions {}  replication factor {}",
                    topic.name,
                    topic.partitions.len(),
                    topic.replication_factor
                );
                println!(
                    "{:>9} {:>8} {:>12} {:>14}  replicas",
                    "PARTITION", "LEADER", "LOG START", "HIGH WATERMARK"
                );
                for (p, o) in &partitions {
                    let leader = if p.leader == 0 {
                        "-".to_string()
                    } else {
                        p.leader.to_string()
                    };
                    println!(
                        "{:>9} {:>8} {:>12} {:>14}  {:?}{}",
                        p.partition,
                        leader,
                        o.log_start_offset,
                        o.high_watermark,
                        p.replicas,
                        if p.reassigning { " (moving)" } else { "" }
                    );
                }
            }
        }
        TopicCommand::List => {
            let metadata = client.metadata(&[]).await?;
            println!(
                "{:<24} {:>9} {:>8}  replicas (leader)",
                "TOPIC", "PARTITION", "LEADER"
            );
            for topic in metadata.topics {
                for p in topic.partitions {
                    let leader = if p.leader == 0 {
                        "-".to_string()
                    } else {
                        p.leader.to_string()
                    };
                    println!(
                        "{:<24} {:>9} {:>8}  {:?}",
                        topic.name, p.partition, leader, p.replicas
                    );
                }
            }
        }
        TopicCommand::Delete { name } => {
            client.delete_topic(&name).await?;
            println!("deleted topic {name}");
        }
    }
    Ok(())
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
                topic(command, brokers, output).await
            }
            Command::Cluster {
                command,
                brokers,
                output,
            } => {
                init_logging("warn");
                cluster::run(command, brokers, output).await
            }
            Command::Produce(args) => {
                init_logging("warn");
                produce::run(args).await
            }
            Command::Consume(args) => {
                init_logging("warn");
                consume::run(args).await
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
