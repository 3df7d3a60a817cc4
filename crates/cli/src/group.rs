//! `weir group list|describe|reset`: consumer groups, their members, committed offsets and lag,
//! and moving a group's committed offsets (only while it has no live members).

use weir_client::TopicPartitions;

use crate::table::{Table, or_dash};
use crate::{Brokers, OutputArg, parse_position, print_json};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum GroupCommand {
    /// Every group with committed offsets or live members.
    List,
    /// A group's members and, per partition, committed offset, high watermark, lag and reader.
    Describe {
        /// The group.
        group: String,
    },
    /// Set a group's committed offsets of a topic (the group must have no live members).
    Reset {
        /// The group.
        group: String,
        /// The topic whose committed offsets move.
        #[arg(long)]
        topic: String,
        /// earliest, latest, an offset (clamped to the log), or @TIME (RFC 3339 or ms since
        /// the Unix epoch): the first record at or after TIME.
        #[arg(long)]
        to: String,
        /// Only these partitions (repeatable; default all).
        #[arg(long)]
        partition: Vec<u32>,
    },
    /// Delete a group's committed offsets (the group must have no live members).
    Delete {
        /// The group.
        group: String,
    },
}

/// `topic: 0,1,2; other: 3` (or `-`).
fn partitions_text(list: &[TopicPartitions]) -> String {
    let parts: Vec<String> = list
        .iter()
        .filter(|tp| !tp.partitions.is_empty())
        .map(|tp| {
            let mut partitions = tp.partitions.clone();
            partitions.sort_unstable();
            format!(
                "{}:{}",
                tp.topic,
                partitions
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            )
        })
        .collect();
    if parts.is_empty() {
        "-".to_string()
    } else {
        parts.join(" ")
    }
}

fn partitions_json(list: &[TopicPartitions]) -> serde_json::Value {
    list.iter()
        .map(|tp| serde_json::json!({ "topic": tp.topic, "partitions": tp.partitions }))
        .collect::<Vec<_>>()
        .into()
}

/// A coordinator's node id, or `-` when none is known.
fn coordinator(id: u64) -> String {
    if id == 0 {
        "-".to_string()
    } else {
        id.to_string()
    }
}

pub(crate) async fn run(
    command: GroupCommand,
    brokers: Brokers,
    output: OutputArg,
) -> anyhow::Result<()> {
    let client = brokers.client()?;
    match command {
        GroupCommand::List => {
            let mut groups = client.list_groups().await?;
            groups.sort_by(|a, b| a.group.cmp(&b.group));
            if output.json() {
                let groups: Vec<serde_json::Value> = groups
                    .iter()
                    .map(|g| {
                        serde_json::json!({
                            "group": g.group,
                            "state": g.state,
                            "members": g.members,
                            "coordinator": (g.coordinator != 0).then_some(g.coordinator),
                        })
                    })
                    .collect();
                return print_json(&serde_json::json!({ "groups": groups }));
            }
            let mut table = Table::new(&["GROUP", "STATE", "MEMBERS", "COORDINATOR"]);
            for g in &groups {
                table.row([
                    g.group.clone(),
                    g.state.clone(),
                    g.members.to_string(),
                    coordinator(g.coordinator),
                ]);
            }
            table.print();
        }
        GroupCommand::Describe { group } => {
            let mut described = client.describe_group(&group).await?;
            described
                .partitions
                .sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
            if output.json() {
                let members: Vec<serde_json::Value> = described
                    .members
                    .iter()
                    .map(|m| {
                        serde_json::json!({
                            "member_id": m.member_id,
                            "client_id": m.client_id,
                            "topics": m.topics,
                            "assigned": partitions_json(&m.assigned),
                            "owned": partitions_json(&m.owned),
                            "idle_ms": m.idle_ms,
                        })
                    })
                    .collect();
                let partitions: Vec<serde_json::Value> = described
                    .partitions
                    .iter()
                    .map(|p| {
                        serde_json::json!({
                            "topic": p.topic,
                            "partition": p.partition,
                            "committed": p.committed,
                            "high_watermark": p.high_watermark,
                            "lag": p.lag,
                            "member_id": (!p.member_id.is_empty()).then_some(&p.member_id),
                        })
                    })
                    .collect();
                return print_json(&serde_json::json!({
                    "group": described.group,
                    "state": described.state,
                    "generation": described.generation,
                    "coordinator": (described.coordinator != 0).then_some(described.coordinator),
                    "members": members,
                    "partitions": partitions,
                }));
            }
            println!(
                "group {}  state {}  generation {}  coordinator {}",
                described.group,
                described.state,
                described.generation,
                if described.coordinator == 0 {
                    "unknown".to_string()
                } else {
                    format!("node {}", described.coordinator)
                }
            );
            println!();
            if described.members.is_empty() {
                println!("no live members");
            } else {
                let mut members = Table::new(&["MEMBER", "CLIENT", "IDLE MS", "ASSIGNED", "OWNED"]);
                for m in &described.members {
                    members.row([
                        m.member_id.clone(),
                        or_dash(&m.client_id).to_string(),
                        m.idle_ms.to_string(),
                        partitions_text(&m.assigned),
                        partitions_text(&m.owned),
                    ]);
                }
                members.print();
            }
            println!();
            let mut partitions = Table::new(&[
                "TOPIC",
                "PARTITION",
                "COMMITTED",
                "HIGH WATERMARK",
                "LAG",
                "MEMBER",
            ]);
            for p in &described.partitions {
                partitions.row([
                    p.topic.clone(),
                    p.partition.to_string(),
                    p.committed.map_or("-".to_string(), |c| c.to_string()),
                    p.high_watermark.to_string(),
                    p.lag.to_string(),
                    or_dash(&p.member_id).to_string(),
                ]);
            }
            partitions.print();
        }
        GroupCommand::Reset {
            group,
            topic,
            to,
            partition,
        } => {
            let to = parse_position("--to", &to)?;
            let mut offsets = client.reset_offsets(&group, &topic, &partition, to).await?;
            offsets.sort_by_key(|o| o.partition);
            if output.json() {
                let offsets: Vec<serde_json::Value> = offsets
                    .iter()
                    .map(|o| {
                        serde_json::json!({
                            "topic": o.topic,
                            "partition": o.partition,
                            "offset": o.offset,
                        })
                    })
                    .collect();
                return print_json(&serde_json::json!({ "group": group, "offsets": offsets }));
            }
            println!("group {group}: committed offsets of {topic} are now");
            let mut table = Table::new(&["PARTITION", "COMMITTED"]);
            for o in &offsets {
                table.row([o.partition.to_string(), o.offset.to_string()]);
            }
            table.print();
        }
        GroupCommand::Delete { group } => {
            let removed = client.delete_group(&group).await?;
            if output.json() {
                return print_json(
                    &serde_json::json!({ "group": group, "offsets_removed": removed }),
                );
            }
            println!("deleted group {group} ({removed} committed offsets removed)");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_lists_print_compactly() {
        let list = vec![
            TopicPartitions {
                topic: "a".into(),
                partitions: vec![2, 0],
            },
            TopicPartitions {
                topic: "b".into(),
                partitions: vec![],
            },
        ];
        assert_eq!(partitions_text(&list), "a:0,2");
        assert_eq!(partitions_text(&[]), "-");
    }
}
