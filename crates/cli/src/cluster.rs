//! `weir cluster`: the brokers and where partitions live; moving replicas.
//!
//! A node is added by starting `weir server --join HOST:PORT`; `weir cluster rebalance` then moves
//! replicas onto it. `weir cluster remove-node ID` drains a node before it is stopped.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::bail;

use crate::{Brokers, OutputArg, print_json};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum ClusterCommand {
    /// Brokers, the controller leader, partitions and leaders per broker.
    Status,
    /// Move replicas so each broker holds about as many as the others.
    Rebalance {
        /// Most partitions to move in this round.
        #[arg(long, default_value_t = 100)]
        max_moves: u32,
        /// Wait until the moves are done.
        #[arg(long)]
        wait: bool,
    },
    /// Drain a broker: move all its replicas elsewhere (then it can be stopped).
    RemoveNode {
        id: u64,
        /// Wait until the broker holds no replica.
        #[arg(long)]
        wait: bool,
    },
    /// Move one partition to the given replicas (preferred leader first).
    Reassign {
        topic: String,
        partition: u32,
        /// Comma-separated broker ids.
        #[arg(long, value_delimiter = ',', required = true)]
        replicas: Vec<u64>,
    },
}

async fn wait_settled(
    client: &weir_client::Client,
    done: impl Fn(&weir_client::MetadataResponse) -> bool,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    loop {
        let metadata = client.metadata(&[]).await?;
        let moving = metadata
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .filter(|p| p.reassigning)
            .count();
        if moving == 0 && done(&metadata) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{moving} partitions still moving after 10 minutes");
        }
        eprintln!("{moving} partitions moving...");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

pub(crate) async fn run(
    command: ClusterCommand,
    brokers: Brokers,
    output: OutputArg,
) -> anyhow::Result<()> {
    let client = brokers.client()?;
    match command {
        ClusterCommand::Status => {
            let metadata = client.metadata(&[]).await?;
            let mut replicas: BTreeMap<u64, usize> = BTreeMap::new();
            let mut leaders: BTreeMap<u64, usize> = BTreeMap::new();
            let mut leaderless = 0;
            let mut moving = 0;
            for partition in metadata.topics.iter().flat_map(|t| &t.partitions) {
                for id in &partition.replicas {
                    *replicas.entry(*id).or_default() += 1;
                }
                match partition.leader {
                    0 => leaderless += 1,
                    id => *leaders.entry(id).or_default() += 1,
                }
                if partition.reassigning {
                    moving += 1;
                }
            }
            if output.json() {
                let brokers: Vec<serde_json::Value> = metadata
                    .brokers
                    .iter()
                    .map(|b| {
                        serde_json::json!({
                            "id": b.id,
                            "address": b.address,
                            "alive": b.alive,
                            "draining": b.decommissioning,
                            "replicas": replicas.get(&b.id).copied().unwrap_or(0),
                            "leaders": leaders.get(&b.id).copied().unwrap_or(0),
                        })
                    })
                    .collect();
                return print_json(&serde_json::json!({
                    "controller_leader": (metadata.controller != 0).then_some(metadata.controller),
                    "brokers": brokers,
                    "partitions_without_leader": leaderless,
                    "partitions_moving": moving,
                }));
            }
            println!(
                "controller leader: {}",
                match metadata.controller {
                    0 => "none".to_string(),
                    id => format!("node {id}"),
                }
            );
            println!(
                "{:>4}  {:<22} {:>6} {:>9} {:>8}  state",
                "NODE", "ADDRESS", "ALIVE", "REPLICAS", "LEADERS"
            );
            for broker in &metadata.brokers {
                println!(
                    "{:>4}  {:<22} {:>6} {:>9} {:>8}  {}",
                    broker.id,
                    broker.address,
                    if broker.alive { "yes" } else { "no" },
                    replicas.get(&broker.id).copied().unwrap_or(0),
                    leaders.get(&broker.id).copied().unwrap_or(0),
                    if broker.decommissioning {
                        "draining"
                    } else {
                        "active"
                    },
                );
            }
            println!("partitions without a known leader: {leaderless}; moving: {moving}");
        }
        ClusterCommand::Rebalance { max_moves, wait } => {
            let moves = client.rebalance(max_moves).await?;
            println!("{moves} partitions moving");
            if wait {
                wait_settled(&client, |_| true).await?;
                println!("rebalanced");
            }
        }
        ClusterCommand::RemoveNode { id, wait } => {
            client.decommission_broker(id).await?;
            println!("node {id} is draining");
            if wait {
                wait_settled(&client, |m| {
                    m.topics
                        .iter()
                        .flat_map(|t| &t.partitions)
                        .all(|p| !p.replicas.contains(&id))
                })
                .await?;
                println!("node {id} holds no replicas; it can be stopped");
            }
        }
        ClusterCommand::Reassign {
            topic,
            partition,
            replicas,
        } => {
            client
                .reassign_partition(&topic, partition, &replicas)
                .await?;
            println!("partition {topic}/{partition} moving to {replicas:?}");
        }
    }
    Ok(())
}
