//! Replica placement: which brokers hold a new topic's partitions, and where replicas go when a
//! broker drains or the cluster rebalances. Pure functions of the metadata, so they are easy to
//! test; the controller leader calls them and stores the result in the command it proposes.
//!
//! Rules: only brokers not being decommissioned take replicas; a partition's replicas are distinct
//! brokers, spread over as many racks as possible; across the cluster, partitions' first replicas
//! (preferred leaders) and all replicas are spread as evenly as possible (fewest first, ties to the
//! lowest id, so the result is deterministic).

use std::collections::{BTreeMap, BTreeSet};

use weir_raft::NodeId;

use crate::metadata::{MAX_PARTITIONS, MAX_REPLICATION_FACTOR, Metadata, MetadataError};

#[derive(Debug, Default, Clone, Copy)]
struct Load {
    replicas: u64,
    leaders: u64,
}

fn loads(metadata: &Metadata) -> BTreeMap<NodeId, Load> {
    loads_among(metadata, None)
}

/// Load of every broker that can take replicas: not draining and, when `alive` is given, in it.
fn loads_among(metadata: &Metadata, alive: Option<&BTreeSet<NodeId>>) -> BTreeMap<NodeId, Load> {
    let mut loads: BTreeMap<NodeId, Load> = metadata
        .brokers
        .values()
        .filter(|b| !b.decommissioning && alive.is_none_or(|a| a.contains(&b.id)))
        .map(|b| (b.id, Load::default()))
        .collect();
    for topic in metadata.topics.values() {
        for partition in &topic.partitions {
            for (i, id) in partition.replicas.iter().enumerate() {
                if let Some(load) = loads.get_mut(id) {
                    load.replicas += 1;
                    if i == 0 {
                        load.leaders += 1;
                    }
                }
            }
        }
    }
    loads
}

fn rack_of(metadata: &Metadata, id: NodeId) -> Option<&str> {
    metadata.brokers.get(&id).and_then(|b| b.rack.as_deref())
}

/// Picks one more replica for a partition that already has `chosen`: an eligible broker not in
/// it, preferring an unused rack, then the fewest replicas (or leaders, for the first replica).
fn pick(
    metadata: &Metadata,
    loads: &BTreeMap<NodeId, Load>,
    chosen: &[NodeId],
    exclude: &BTreeSet<NodeId>,
    as_leader: bool,
) -> Option<NodeId> {
    let used_racks: BTreeSet<&str> = chosen
        .iter()
        .filter_map(|id| rack_of(metadata, *id))
        .collect();
    loads
        .iter()
        .filter(|(id, _)| !chosen.contains(id) && !exclude.contains(id))
        .min_by_key(|(id, load)| {
            let rack_used = rack_of(metadata, **id).is_some_and(|r| used_racks.contains(r));
            let primary = if as_leader {
                load.leaders
            } else {
                load.replicas
            };
            (rack_used, primary, load.replicas, **id)
        })
        .map(|(id, _)| *id)
}

/// Replica lists for a new topic of `partitions` partitions with `replication_factor` replicas,
/// on brokers in `alive` (all brokers when `None`).
pub fn place_topic(
    metadata: &Metadata,
    partitions: u32,
    replication_factor: u32,
    alive: Option<&BTreeSet<NodeId>>,
) -> Result<Vec<Vec<NodeId>>, MetadataError> {
    if partitions == 0 || partitions > MAX_PARTITIONS {
        return Err(MetadataError::Invalid(format!(
            "partition count {partitions} must be in [1, {MAX_PARTITIONS}]"
        )));
    }
    if replication_factor == 0 || replication_factor > MAX_REPLICATION_FACTOR {
        return Err(MetadataError::Invalid(format!(
            "replication factor {replication_factor} must be in [1, {MAX_REPLICATION_FACTOR}]"
        )));
    }
    let brokers = u32::try_from(loads_among(metadata, None).len()).unwrap_or(u32::MAX);
    if brokers < replication_factor {
        return Err(MetadataError::ReplicationFactorTooLarge {
            wanted: replication_factor,
            brokers,
        });
    }
    let mut loads = loads_among(metadata, alive);
    let available = u32::try_from(loads.len()).unwrap_or(u32::MAX);
    if available < replication_factor {
        return Err(MetadataError::NotEnoughBrokers {
            wanted: replication_factor,
            available,
        });
    }
    let mut assignment = Vec::with_capacity(partitions as usize);
    for _ in 0..partitions {
        let mut replicas = Vec::with_capacity(replication_factor as usize);
        for i in 0..replication_factor {
            let Some(id) = pick(metadata, &loads, &replicas, &BTreeSet::new(), i == 0) else {
                break;
            };
            if let Some(load) = loads.get_mut(&id) {
                load.replicas += 1;
                if i == 0 {
                    load.leaders += 1;
                }
            }
            replicas.push(id);
        }
        assignment.push(replicas);
    }
    Ok(assignment)
}

/// A replacement for every replica on a draining broker: `(topic, partition, new replicas)`.
/// The new replica takes the drained one's place in the list.
pub fn drain_moves(metadata: &Metadata) -> Vec<(String, u32, Vec<NodeId>)> {
    let draining: BTreeSet<NodeId> = metadata
        .brokers
        .values()
        .filter(|b| b.decommissioning)
        .map(|b| b.id)
        .collect();
    let mut loads = loads(metadata);
    let mut moves = Vec::new();
    for topic in metadata.topics.values() {
        for (p, partition) in topic.partitions.iter().enumerate() {
            if !partition.replicas.iter().any(|id| draining.contains(id)) {
                continue;
            }
            let mut replicas = partition.replicas.clone();
            let mut complete = true;
            for slot in 0..replicas.len() {
                if !draining.contains(&replicas[slot]) {
                    continue;
                }
                let others: Vec<NodeId> = replicas
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != slot)
                    .map(|(_, id)| *id)
                    .collect();
                match pick(metadata, &loads, &others, &draining, false) {
                    Some(id) => {
                        if let Some(load) = loads.get_mut(&id) {
                            load.replicas += 1;
                        }
                        replicas[slot] = id;
                    }
                    None => complete = false,
                }
            }
            if complete {
                moves.push((topic.name.clone(), p as u32, replicas));
            }
        }
    }
    moves
}

/// Moves that even out replicas per broker (for example after a node joined): while some broker
/// holds at least two replicas more than another, move one of its replicas (of a partition the
/// other does not hold) there. At most `limit` moves.
pub fn rebalance_moves(metadata: &Metadata, limit: usize) -> Vec<(String, u32, Vec<NodeId>)> {
    let mut loads = loads(metadata);
    let mut assignment: BTreeMap<(String, u32), Vec<NodeId>> = metadata
        .topics
        .values()
        .flat_map(|t| {
            t.partitions
                .iter()
                .enumerate()
                .map(|(p, r)| ((t.name.clone(), p as u32), r.replicas.clone()))
        })
        .collect();
    let mut moved = BTreeSet::new();
    while moved.len() < limit {
        let Some((&most, most_load)) = loads
            .iter()
            .max_by_key(|(id, l)| (l.replicas, std::cmp::Reverse(**id)))
        else {
            break;
        };
        let Some((&least, least_load)) = loads.iter().min_by_key(|(id, l)| (l.replicas, **id))
        else {
            break;
        };
        if most_load.replicas < least_load.replicas + 2 {
            break;
        }
        let candidate = assignment.iter().find(|(key, replicas)| {
            !moved.contains(*key) && replicas.contains(&most) && !replicas.contains(&least)
        });
        let Some((key, replicas)) = candidate else {
            break;
        };
        let key = key.clone();
        let replicas: Vec<NodeId> = replicas
            .iter()
            .map(|id| if *id == most { least } else { *id })
            .collect();
        if let Some(l) = loads.get_mut(&most) {
            l.replicas -= 1;
        }
        if let Some(l) = loads.get_mut(&least) {
            l.replicas += 1;
        }
        assignment.insert(key.clone(), replicas);
        moved.insert(key);
    }
    moved
        .into_iter()
        .filter_map(|key| {
            let replicas = assignment.get(&key)?.clone();
            Some((key.0, key.1, replicas))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::{MetadataCommand, TopicConfig};

    fn cluster(racks: &[Option<&str>]) -> Metadata {
        let mut m = Metadata::default();
        for (i, rack) in racks.iter().enumerate() {
            m.apply(MetadataCommand::RegisterBroker {
                id: i as u64 + 1,
                addr: format!("127.0.0.1:{}", 9000 + i),
                external_addr: None,
                rack: rack.map(str::to_string),
            })
            .expect("registers");
        }
        m
    }

    fn create(m: &mut Metadata, name: &str, partitions: u32, rf: u32) {
        let assignment = place_topic(m, partitions, rf, None).expect("placed");
        m.apply(MetadataCommand::CreateTopic {
            internal: false,
            name: name.into(),
            replication_factor: rf,
            config: TopicConfig::default(),
            assignment,
        })
        .expect("created");
    }

    #[test]
    fn replicas_and_leaders_are_spread_evenly() {
        let mut m = cluster(&[None, None, None]);
        create(&mut m, "a", 6, 3);
        create(&mut m, "b", 3, 1);
        let loads = loads(&m);
        for load in loads.values() {
            assert_eq!(load.leaders, 3);
            assert_eq!(load.replicas, 7);
        }
    }

    #[test]
    fn replicas_spread_over_racks() {
        let mut m = cluster(&[Some("r1"), Some("r1"), Some("r2"), Some("r2")]);
        create(&mut m, "a", 8, 2);
        for partition in &m.topics["a"].partitions {
            let racks: BTreeSet<_> = partition
                .replicas
                .iter()
                .map(|id| rack_of(&m, *id))
                .collect();
            assert_eq!(racks.len(), 2, "{:?}", partition.replicas);
        }
    }

    #[test]
    fn a_replication_factor_above_the_broker_count_is_refused_for_good() {
        let m = cluster(&[None, None]);
        assert_eq!(
            place_topic(&m, 1, 3, None),
            Err(MetadataError::ReplicationFactorTooLarge {
                wanted: 3,
                brokers: 2
            })
        );
    }

    #[test]
    fn only_live_brokers_get_new_replicas() {
        let m = cluster(&[None, None, None, None]);
        let alive = BTreeSet::from([1, 2, 4]);
        let assignment = place_topic(&m, 4, 3, Some(&alive)).expect("placed");
        assert!(assignment.iter().flatten().all(|id| *id != 3));
        assert_eq!(
            place_topic(&m, 1, 3, Some(&BTreeSet::from([1, 2]))),
            Err(MetadataError::NotEnoughBrokers {
                wanted: 3,
                available: 2
            })
        );
    }

    #[test]
    fn draining_moves_every_replica_off_the_broker() {
        let mut m = cluster(&[None, None, None, None]);
        create(&mut m, "a", 8, 3);
        m.apply(MetadataCommand::SetDecommissioning { id: 2, on: true })
            .expect("marked");
        let moves = drain_moves(&m);
        assert!(!moves.is_empty());
        for (topic, p, replicas) in moves {
            assert!(!replicas.contains(&2));
            assert_eq!(replicas.len(), 3);
            m.apply(MetadataCommand::ReassignPartition {
                topic,
                partition: p,
                replicas,
            })
            .expect("reassigned");
        }
        assert!(
            m.topics["a"]
                .partitions
                .iter()
                .all(|p| !p.replicas.contains(&2))
        );
    }

    #[test]
    fn rebalance_fills_a_new_broker() {
        let mut m = cluster(&[None, None, None]);
        create(&mut m, "a", 6, 2);
        m.apply(MetadataCommand::RegisterBroker {
            id: 4,
            addr: "127.0.0.1:1".into(),
            external_addr: None,
            rack: None,
        })
        .expect("joined");
        let moves = rebalance_moves(&m, 100);
        for (topic, p, replicas) in moves {
            m.apply(MetadataCommand::ReassignPartition {
                topic,
                partition: p,
                replicas,
            })
            .expect("reassigned");
        }
        let loads = loads(&m);
        let max = loads.values().map(|l| l.replicas).max().unwrap_or(0);
        let min = loads.values().map(|l| l.replicas).min().unwrap_or(0);
        assert!(max - min <= 1, "{loads:?}");
        assert_eq!(loads[&4].replicas, 3);
    }
}
