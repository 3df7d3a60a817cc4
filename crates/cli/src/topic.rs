//! `weir topic create|list|describe|delete`. Listings come from ListTopics and DescribeTopic and
//! show each topic's settings; internal topics (`__consumer_offsets`) only with `--internal`.

use std::collections::{BTreeMap, HashMap};

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
    /// List topics with their settings, partitions, replicas and leaders.
    List {
        /// Include internal topics (`__consumer_offsets`).
        #[arg(long)]
        internal: bool,
    },
    /// One topic: settings, partitions, replicas, leaders, and each partition's log start and
    /// high watermark.
    Describe { name: String },
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

/// Settings in key order, as `k=v, k=v`.
fn configs_line(configs: &HashMap<String, String>) -> String {
    let sorted: BTreeMap<&String, &String> = configs.iter().collect();
    sorted
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
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
            println!(
                "{:<24} {:>9} {:>8}  replicas",
                "TOPIC", "PARTITION", "LEADER"
            );
            for topic in &topics {
                for p in &topic.partitions {
                    println!(
                        "{:<24} {:>9} {:>8}  {:?}{}",
                        topic.name,
                        p.partition,
                        leader(p.leader),
                        p.replicas,
                        if p.reassigning { " (moving)" } else { "" }
                    );
                }
                println!(
                    "  {}configs: {}",
                    if topic.internal { "(internal) " } else { "" },
                    configs_line(&topic.configs)
                );
            }
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
            println!("configs: {}", configs_line(&topic.configs));
            println!(
                "{:>9} {:>8} {:>12} {:>14}  replicas",
                "PARTITION", "LEADER", "LOG START", "HIGH WATERMARK"
            );
            for p in &topic.partitions {
                println!(
                    "{:>9} {:>8} {:>12} {:>14}  {:?}{}",
                    p.partition,
                    leader(p.leader),
                    p.log_start_offset,
                    p.high_watermark,
                    p.replicas,
                    if p.reassigning { " (moving)" } else { "" }
                );
            }
        }
        TopicCommand::Delete { name } => {
            client.delete_topic(&name).await?;
            println!("deleted topic {name}");
        }
    }
    Ok(())
}
