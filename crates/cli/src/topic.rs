//! `weir topic create|list|describe|alter|delete`. `list` (ListTopics) shows each topic's partitions,
//! leaders and replicas; `describe` (DescribeTopic) adds the topic's settings and each
//! partition's offsets; internal topics (`__consumer_offsets`) only with `--internal`. With
//! `--output json` both carry the settings.

use std::collections::{BTreeMap, HashMap};

use crate::table::{Table, ids};
use crate::{Brokers, OutputArg, key_value, print_json};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        #[arg(long, short = 'p', default_value_t = 1)]
        partitions: u32,
        #[arg(long, short = 'r', default_value_t = 1)]
        replication_factor: u32,
        /// A setting, KEY=VALUE (repeatable): retention.ms, retention.bytes, segment.bytes,
        /// max.message.bytes, compression (producer, none, lz4).
        #[arg(long = "config", short = 'c', value_parser = key_value)]
        configs: Vec<(String, String)>,
    },
    /// List topics with their partitions, leaders and replicas (settings: describe, or
    /// --output json).
    List {
        /// Include internal topics (`__consumer_offsets`).
        #[arg(long)]
        internal: bool,
    },
    /// One topic: settings, partitions, replicas, leaders, and each partition's log start and
    /// high watermark.
    Describe { name: String },
    /// Change a topic's settings or grow its partition count.
    Alter {
        name: String,
        /// A setting to change, KEY=VALUE (repeatable; names as for create).
        #[arg(long = "config", short = 'c', value_parser = key_value)]
        configs: Vec<(String, String)>,
        /// A setting to put back at its default (repeatable).
        #[arg(long = "reset")]
        resets: Vec<String>,
        /// The new partition count (larger than today's; partitions are never removed). Keyed
        /// records produced afterwards may land in another partition than before.
        #[arg(long, short = 'p')]
        partitions: Option<u32>,
    },
    /// Delete a topic and its data.
    Delete { name: String },
}

fn leader(id: u64) -> String {
    if id == 0 {
        "-".to_string()
    } else {
        id.to_string()
    }
}

fn yes_no(flag: bool) -> &'static str {
    if flag { "yes" } else { "no" }
}

fn partition_json(p: &weir_client::PartitionInfo, offsets: bool) -> serde_json::Value {
    let mut value = serde_json::json!({
        "partition": p.partition,
        "leader": (p.leader != 0).then_some(p.leader),
        "replicas": p.replicas,
        "reassigning": p.reassigning,
    });
    if offsets {
        value["log_start_offset"] = p.log_start_offset.into();
        value["high_watermark"] = p.high_watermark.into();
    }
    value
}

fn topic_json(topic: &weir_client::TopicInfo, offsets: bool) -> serde_json::Value {
    let configs: BTreeMap<&String, &String> = topic.configs.iter().collect();
    serde_json::json!({
        "name": topic.name,
        "replication_factor": topic.replication_factor,
        "internal": topic.internal,
        "configs": configs,
        "partitions": topic
            .partitions
            .iter()
            .map(|p| partition_json(p, offsets))
            .collect::<Vec<_>>(),
    })
}

pub(crate) async fn run(
    command: TopicCommand,
    brokers: Brokers,
    output: OutputArg,
) -> anyhow::Result<()> {
    let client = brokers.client()?;
    match command {
        TopicCommand::Create {
            name,
            partitions,
            replication_factor,
            configs,
        } => {
            let configs: HashMap<String, String> = configs.into_iter().collect();
            let topic = client
                .create_topic_with_configs(&name, partitions, replication_factor, &configs)
                .await?;
            if output.json() {
                return print_json(&topic_json(&topic, false));
            }
            let count = topic.partitions.len();
            println!(
                "created topic {} with {count} partition{}, replication factor {}",
                topic.name,
                if count == 1 { "" } else { "s" },
                topic.replication_factor
            );
        }
        TopicCommand::List { internal } => {
            let mut topics = client.list_topics().await?;
            topics.retain(|t| internal || !t.internal);
            topics.sort_by(|a, b| a.name.cmp(&b.name));
            if output.json() {
                let topics: Vec<serde_json::Value> =
                    topics.iter().map(|t| topic_json(t, false)).collect();
                return print_json(&serde_json::json!({ "topics": topics }));
            }
            let mut table = Table::new(&["TOPIC", "PARTITION", "LEADER", "REPLICAS", "MOVING"]);
            for topic in &topics {
                for p in &topic.partitions {
                    table.row([
                        topic.name.clone(),
                        p.partition.to_string(),
                        leader(p.leader),
                        ids(&p.replicas),
                        yes_no(p.reassigning).to_string(),
                    ]);
                }
            }
            table.print();
        }
        TopicCommand::Describe { name } => {
            let topic = client.describe_topic(&name).await?;
            if output.json() {
                return print_json(&topic_json(&topic, true));
            }
            println!(
                "topic {}  partitions {}  replication factor {}{}",
                topic.name,
                topic.partitions.len(),
                topic.replication_factor,
                if topic.internal { "  (internal)" } else { "" }
            );
            let mut configs = Table::new(&["CONFIG", "VALUE"]);
            let sorted: BTreeMap<&String, &String> = topic.configs.iter().collect();
            for (key, value) in sorted {
                configs.row([key, value]);
            }
            println!();
            configs.print();
            let mut partitions = Table::new(&[
                "PARTITION",
                "LEADER",
                "LOG START",
                "HIGH WATERMARK",
                "REPLICAS",
                "MOVING",
            ]);
            for p in &topic.partitions {
                partitions.row([
                    p.partition.to_string(),
                    leader(p.leader),
                    p.log_start_offset.to_string(),
                    p.high_watermark.to_string(),
                    ids(&p.replicas),
                    yes_no(p.reassigning).to_string(),
                ]);
            }
            println!();
            partitions.print();
        }
        TopicCommand::Alter {
            name,
            configs,
            resets,
            partitions,
        } => {
            if configs.is_empty() && resets.is_empty() && partitions.is_none() {
                anyhow::bail!(
                    "nothing to change: give --config KEY=VALUE, --reset KEY or --partitions N"
                );
            }
            let mut topic = None;
            if !configs.is_empty() || !resets.is_empty() {
                let set: HashMap<String, String> = configs.into_iter().collect();
                topic = Some(client.alter_topic_config(&name, &set, &resets).await?);
            }
            if let Some(count) = partitions {
                topic = Some(client.create_partitions(&name, count).await?);
            }
            let Some(topic) = topic else {
                return Ok(());
            };
            if output.json() {
                return print_json(&topic_json(&topic, false));
            }
            println!(
                "altered topic {}: {} partitions",
                topic.name,
                topic.partitions.len()
            );
            let mut table = Table::new(&["CONFIG", "VALUE"]);
            let sorted: BTreeMap<&String, &String> = topic.configs.iter().collect();
            for (key, value) in sorted {
                table.row([key, value]);
            }
            table.print();
        }
        TopicCommand::Delete { name } => {
            client.delete_topic(&name).await?;
            println!("deleted topic {name}");
        }
    }
    Ok(())
}
