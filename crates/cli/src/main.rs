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
    },
    /// Inspect and change the cluster: status, rebalance, remove-node, reassign.
    Cluster {
        #[command(subcommand)]
        command: cluster::ClusterCommand,
        #[command(flatten)]
        brokers: Brokers,
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
    /// Delete a topic and its data.
    Delete { name: String },
}

async fn topic(command: TopicCommand, brokers: Brokers) -> anyhow::Result<()> {
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
            Command::Topic { command, brokers } => {
                init_logging("warn");
                topic(command, brokers).await
            }
            Command::Cluster { command, brokers } => {
                init_logging("warn");
                cluster::run(command, brokers).await
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
