//! The client's picture of the cluster: broker addresses and, per partition, the leader — what
//! [`crate::Client`] routes produce and fetch requests by. Pure data, no I/O: the client fills it
//! from Metadata answers and corrects it from `weir-leader` hints.
//!
//! Invariants: a leader is only ever used together with an address for it (a leader whose broker
//! is not known counts as unknown); a stale entry is harmless — the node that gets a request for a
//! partition it does not lead forwards it or answers FAILED_PRECONDITION with the leader, and the
//! entry is corrected or dropped.

use std::collections::HashMap;

use weir_proto::v1::MetadataResponse;

/// Broker addresses and partition leaders.
#[derive(Debug, Default, Clone)]
pub(crate) struct Cache {
    /// Broker id → `host:port`.
    brokers: HashMap<u64, String>,
    /// Topic → leader of each partition (index = partition; 0 = unknown).
    topics: HashMap<String, Vec<u64>>,
}

impl Cache {
    /// Takes in a Metadata answer. With `complete` (the request named no topic) topics missing
    /// from the answer are forgotten; otherwise only the topics in the answer are replaced.
    pub(crate) fn update(&mut self, metadata: &MetadataResponse, complete: bool) {
        for broker in &metadata.brokers {
            if !broker.address.is_empty() {
                self.brokers.insert(broker.id, broker.address.clone());
            }
        }
        if complete {
            self.topics.clear();
        }
        for topic in &metadata.topics {
            let count = topic
                .partitions
                .iter()
                .map(|p| p.partition as usize + 1)
                .max()
                .unwrap_or(0);
            let mut leaders = vec![0; count];
            for p in &topic.partitions {
                leaders[p.partition as usize] = p.leader;
            }
            self.topics.insert(topic.name.clone(), leaders);
        }
    }

    pub(crate) fn partition_count(&self, topic: &str) -> Option<u32> {
        self.topics.get(topic).map(|l| l.len() as u32)
    }

    pub(crate) fn knows_topic(&self, topic: &str) -> bool {
        self.topics.contains_key(topic)
    }

    pub(crate) fn forget_topic(&mut self, topic: &str) {
        self.topics.remove(topic);
    }

    /// The leader of a partition and its address, when both are known.
    pub(crate) fn leader(&self, topic: &str, partition: u32) -> Option<(u64, &str)> {
        let id = *self.topics.get(topic)?.get(partition as usize)?;
        if id == 0 {
            return None;
        }
        self.brokers.get(&id).map(|addr| (id, addr.as_str()))
    }

    /// Records a leader learnt from a `weir-leader` hint. A hint names the leader's internal
    /// address; a broker the metadata already named keeps the metadata's address, which is the
    /// one for the listener this client uses (see `external_addr` in the node configuration).
    pub(crate) fn set_leader(&mut self, topic: &str, partition: u32, id: u64, addr: &str) {
        self.brokers.entry(id).or_insert_with(|| addr.to_string());
        if let Some(leaders) = self.topics.get_mut(topic)
            && let Some(slot) = leaders.get_mut(partition as usize)
        {
            *slot = id;
        }
    }

    /// Forgets a partition's leader (it failed to answer as one).
    pub(crate) fn forget_leader(&mut self, topic: &str, partition: u32) {
        if let Some(slot) = self
            .topics
            .get_mut(topic)
            .and_then(|l| l.get_mut(partition as usize))
        {
            *slot = 0;
        }
    }

    /// Every known broker address.
    pub(crate) fn broker_addresses(&self) -> impl Iterator<Item = &str> {
        self.brokers.values().map(String::as_str)
    }
}

/// Parses the `weir-leader` trailer: `ID@HOST:PORT`.
pub(crate) fn parse_leader_hint(value: &str) -> Option<(u64, String)> {
    let (id, addr) = value.split_once('@')?;
    let id: u64 = id.trim().parse().ok()?;
    let addr = addr.trim();
    if id == 0 || addr.is_empty() || !addr.contains(':') {
        return None;
    }
    Some((id, addr.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_proto::v1::{BrokerInfo, PartitionInfo, TopicInfo};

    fn metadata() -> MetadataResponse {
        MetadataResponse {
            brokers: (1..=3)
                .map(|id| BrokerInfo {
                    id,
                    address: format!("127.0.0.1:{}", 9000 + id),
                    ..Default::default()
                })
                .collect(),
            topics: vec![TopicInfo {
                name: "t".into(),
                replication_factor: 3,
                partitions: (0..3)
                    .map(|p| PartitionInfo {
                        partition: p,
                        replicas: vec![1, 2, 3],
                        leader: if p == 2 { 0 } else { u64::from(p) + 1 },
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            controller: 1,
        }
    }

    #[test]
    fn leaders_come_from_metadata_and_hints() {
        let mut cache = Cache::default();
        cache.update(&metadata(), true);
        assert_eq!(cache.partition_count("t"), Some(3));
        assert_eq!(cache.leader("t", 0), Some((1, "127.0.0.1:9001")));
        assert_eq!(cache.leader("t", 1), Some((2, "127.0.0.1:9002")));
        assert_eq!(cache.leader("t", 2), None, "leader 0 means unknown");
        assert_eq!(cache.leader("t", 3), None);
        assert_eq!(cache.leader("u", 0), None);

        cache.set_leader("t", 2, 4, "127.0.0.1:9004");
        assert_eq!(cache.leader("t", 2), Some((4, "127.0.0.1:9004")));
        // A hint names the internal address; a broker the metadata named keeps the metadata's
        // (the one for this client's listener).
        cache.set_leader("t", 2, 3, "weir-3:9092");
        assert_eq!(cache.leader("t", 2), Some((3, "127.0.0.1:9003")));
        cache.forget_leader("t", 0);
        assert_eq!(cache.leader("t", 0), None);

        // A complete answer without the topic forgets it; a partial one keeps others.
        let mut other = metadata();
        other.topics[0].name = "u".into();
        cache.update(&other, false);
        assert!(cache.knows_topic("t") && cache.knows_topic("u"));
        cache.update(&other, true);
        assert!(!cache.knows_topic("t") && cache.knows_topic("u"));
    }

    #[test]
    fn leader_hints_parse() {
        assert_eq!(
            parse_leader_hint("2@127.0.0.1:9093"),
            Some((2, "127.0.0.1:9093".to_string()))
        );
        assert_eq!(
            parse_leader_hint("17@node-17.example:9092"),
            Some((17, "node-17.example:9092".to_string()))
        );
        for bad in ["", "2", "@h:1", "x@h:1", "0@h:1", "2@", "2@host"] {
            assert_eq!(parse_leader_hint(bad), None, "{bad:?}");
        }
    }
}
