//! `weir cluster`: the brokers and where partitions live; moving replicas.
//!
//! A node is added by starting `weir server --join HOST:PORT`; `weir cluster rebalance` then moves
//! replicas onto it. `weir cluster remove-node ID` drains a node before it is stopped.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::bail;

use crate::table::{Table, ids, or_dash};
use crate::{Brokers, OutputArg, print_json};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum ClusterCommand {
    /// Brokers, the controller leader, replicas and leaders per broker, partitions without a
    /// leader and under-replicated partitions (a replica on a node that is not alive).
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

/// What `weir cluster status` reports, computed from one Metadata answer.
#[derive(Debug, Default)]
struct Status {
    /// Broker → replicas it holds.
    replicas: BTreeMap<u64, usize>,
    /// Broker → partitions it leads.
    leaders: BTreeMap<u64, usize>,
    /// (topic, partition) without a known leader.
    leaderless: Vec<(String, u32)>,
    /// Partitions with a replica on a broker that is not alive.
    under_replicated: Vec<UnderReplicated>,
    moving: usize,
}

#[derive(Debug)]
struct UnderReplicated {
    topic: String,
    partition: u32,
    leader: u64,
    replicas: Vec<u64>,
    down: Vec<u64>,
}

impl Status {
    fn of(metadata: &weir_client::MetadataResponse) -> Self {
        let alive: BTreeMap<u64, bool> = metadata.brokers.iter().map(|b| (b.id, b.alive)).collect();
        let mut status = Self::default();
        for topic in &metadata.topics {
            for partition in &topic.partitions {
                for id in &partition.replicas {
                    *status.replicas.entry(*id).or_default() += 1;
                }
                match partition.leader {
                    0 => status
                        .leaderless
                        .push((topic.name.clone(), partition.partition)),
                    id => *status.leaders.entry(id).or_default() += 1,
                }
                let down: Vec<u64> = partition
                    .replicas
                    .iter()
                    .copied()
                    .filter(|id| !alive.get(id).copied().unwrap_or(false))
                    .collect();
                if !down.is_empty() {
                    status.under_replicated.push(UnderReplicated {
                        topic: topic.name.clone(),
                        partition: partition.partition,
                        leader: partition.leader,
                        replicas: partition.replicas.clone(),
                        down,
                    });
                }
                if partition.reassigning {
                    status.moving += 1;
                }
            }
        }
        status
    }

    fn json(&self, metadata: &weir_client::MetadataResponse) -> serde_json::Value {
        let brokers: Vec<serde_json::Value> = metadata
            .brokers
            .iter()
            .map(|b| {
                serde_json::json!({
                    "id": b.id,
                    "address": b.address,
                    "kafka_address": (!b.kafka_address.is_empty()).then_some(&b.kafka_address),
                    "rack": (!b.rack.is_empty()).then_some(&b.rack),
                    "alive": b.alive,
                    "draining": b.decommissioning,
                    "replicas": self.replicas.get(&b.id).copied().unwrap_or(0),
                    "leaders": self.leaders.get(&b.id).copied().unwrap_or(0),
                })
            })
            .collect();
        let under: Vec<serde_json::Value> = self
            .under_replicated
            .iter()
            .map(|u| {
                serde_json::json!({
                    "topic": u.topic,
                    "partition": u.partition,
                    "leader": (u.leader != 0).then_some(u.leader),
                    "replicas": u.replicas,
                    "replicas_down": u.down,
                })
            })
            .collect();
        let leaderless: Vec<serde_json::Value> = self
            .leaderless
            .iter()
            .map(|(t, p)| serde_json::json!({ "topic": t, "partition": p }))
            .collect();
        serde_json::json!({
            "controller_leader": (metadata.controller != 0).then_some(metadata.controller),
            "brokers": brokers,
            "partitions": metadata.topics.iter().map(|t| t.partitions.len()).sum::<usize>(),
            "partitions_without_leader": self.leaderless.len(),
            "leaderless": leaderless,
            "under_replicated": under,
            "partitions_moving": self.moving,
        })
    }

    fn print(&self, metadata: &weir_client::MetadataResponse) {
        println!(
            "controller leader: {}",
            match metadata.controller {
                0 => "none".to_string(),
                id => format!("node {id}"),
            }
        );
        let mut table = Table::new(&[
            "NODE", "ADDRESS", "KAFKA", "RACK", "ALIVE", "REPLICAS", "LEADERS", "STATE",
        ]);
        for broker in &metadata.brokers {
            table.row([
                broker.id.to_string(),
                broker.address.clone(),
                or_dash(&broker.kafka_address).to_string(),
                or_dash(&broker.rack).to_string(),
                if broker.alive { "yes" } else { "no" }.to_string(),
                self.replicas
                    .get(&broker.id)
                    .copied()
                    .unwrap_or(0)
                    .to_string(),
                self.leaders
                    .get(&broker.id)
                    .copied()
                    .unwrap_or(0)
                    .to_string(),
                if broker.decommissioning {
                    "draining"
                } else {
                    "active"
                }
                .to_string(),
            ]);
        }
        table.print();
        let total: usize = metadata.topics.iter().map(|t| t.partitions.len()).sum();
        println!(
            "partitions: {total}; without a known leader: {}; under-replicated: {}; moving: {}",
            self.leaderless.len(),
            self.under_replicated.len(),
            self.moving
        );
        for (topic, partition) in &self.leaderless {
            println!("  no leader: {topic}/{partition}");
        }
        for u in &self.under_replicated {
            println!(
                "  under-replicated: {}/{}  replicas {}, down {}, leader {}",
                u.topic,
                u.partition,
                ids(&u.replicas),
                ids(&u.down),
                if u.leader == 0 {
                    "-".to_string()
                } else {
                    u.leader.to_string()
                }
            );
        }
    }
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
            let status = Status::of(&metadata);
            if output.json() {
                return print_json(&status.json(&metadata));
            }
            status.print(&metadata);
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
            println!(
                "partition {topic}/{partition} moving to replicas {}",
                ids(&replicas)
            );
        }
    }
    Ok(())
}
