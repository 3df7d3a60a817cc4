//! The consumer-group assignor: a pure state machine over a group's live members. It decides
//! where each partition should be (`target`: partition `p` of a topic to the `p mod n`-th of the
//! `n` subscribing members, in id order) and what a member may read now (`assigned`: its share
//! minus partitions another member still holds — reported as owned, or granted and not yet
//! reported). Members expire when their session runs out. No I/O, no clock of its own: time is
//! passed in.
//!
//! Invariant: no partition is ever handed to a member while another member holds it, so no
//! partition is read by two members at once (property-tested below).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// A (topic, partition) pair.
pub(crate) type TopicPartition = (String, u32);

/// The live members of a group.
#[derive(Debug, Default)]
pub(crate) struct LiveGroup {
    pub(crate) generation: u64,
    pub(crate) members: BTreeMap<String, Member>,
}

/// One live member, as its last heartbeat described it.
#[derive(Debug)]
pub(crate) struct Member {
    pub(crate) client_id: String,
    pub(crate) topics: BTreeSet<String>,
    /// What the member last reported reading.
    pub(crate) owned: BTreeSet<TopicPartition>,
    /// What the member was last told it may read: held for it like `owned` (it may have started
    /// reading before its next heartbeat reports so) until its next heartbeat replaces it.
    pub(crate) granted: BTreeSet<TopicPartition>,
    pub(crate) last_seen: Instant,
    pub(crate) session: Duration,
}

impl LiveGroup {
    pub(crate) fn expire(&mut self, now: Instant) {
        let before = self.members.len();
        self.members.retain(|id, m| {
            let alive = now.duration_since(m.last_seen) <= m.session;
            if !alive {
                tracing::info!(member = %id, "group member timed out");
            }
            alive
        });
        if self.members.len() != before {
            self.generation += 1;
        }
    }

    pub(crate) fn topics(&self) -> BTreeSet<String> {
        self.members
            .values()
            .flat_map(|m| m.topics.iter().cloned())
            .collect()
    }

    /// Where each partition should be: per topic, partition `p` goes to the `p mod n`-th of the
    /// `n` members subscribing to it (members in id order).
    pub(crate) fn target(
        &self,
        counts: &BTreeMap<String, u32>,
    ) -> BTreeMap<String, BTreeSet<TopicPartition>> {
        let mut target: BTreeMap<String, BTreeSet<TopicPartition>> = self
            .members
            .keys()
            .map(|id| (id.clone(), BTreeSet::new()))
            .collect();
        for (topic, count) in counts {
            let readers: Vec<&String> = self
                .members
                .iter()
                .filter(|(_, m)| m.topics.contains(topic))
                .map(|(id, _)| id)
                .collect();
            if readers.is_empty() {
                continue;
            }
            for p in 0..*count {
                if let Some(set) = target.get_mut(readers[p as usize % readers.len()]) {
                    set.insert((topic.clone(), p));
                }
            }
        }
        target
    }

    /// `member`'s share of `target`, without partitions another member still holds (reports as
    /// owned, or was granted and has not heartbeat since).
    pub(crate) fn assigned(
        &self,
        member: &str,
        target: &BTreeMap<String, BTreeSet<TopicPartition>>,
    ) -> BTreeSet<TopicPartition> {
        let Some(share) = target.get(member) else {
            return BTreeSet::new();
        };
        share
            .iter()
            .filter(|tp| {
                !self.members.iter().any(|(id, m)| {
                    id != member && (m.owned.contains(*tp) || m.granted.contains(*tp))
                })
            })
            .cloned()
            .collect()
    }

    /// "stable" when every member owns exactly its share, else "rebalancing"; "empty" without
    /// members.
    pub(crate) fn state(
        &self,
        target: &BTreeMap<String, BTreeSet<TopicPartition>>,
    ) -> &'static str {
        if self.members.is_empty() {
            return "empty";
        }
        let settled = self
            .members
            .iter()
            .all(|(id, m)| target.get(id).is_some_and(|share| *share == m.owned));
        if settled { "stable" } else { "rebalancing" }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(topics: &[&str], owned: &[(&str, u32)]) -> Member {
        Member {
            client_id: String::new(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            owned: owned.iter().map(|(t, p)| (t.to_string(), *p)).collect(),
            granted: BTreeSet::new(),
            last_seen: Instant::now(),
            session: Duration::from_secs(10),
        }
    }

    #[test]
    fn partitions_are_spread_evenly_and_handed_over_only_when_released() {
        let mut group = LiveGroup::default();
        for id in ["a", "b", "c"] {
            group.members.insert(id.into(), member(&["t"], &[]));
        }
        let counts = BTreeMap::from([("t".to_string(), 6)]);
        let target = group.target(&counts);
        let mut all = BTreeSet::new();
        for share in target.values() {
            assert_eq!(share.len(), 2);
            all.extend(share.iter().cloned());
        }
        assert_eq!(all.len(), 6);
        // Everyone takes its share.
        for id in ["a", "b", "c"] {
            let share = group.assigned(id, &target);
            group.members.get_mut(id).unwrap().owned = share;
        }
        assert_eq!(group.state(&target), "stable");
        // "c" leaves: "a" and "b" are due c's partitions, which are free at once.
        group.members.remove("c");
        let target = group.target(&counts);
        assert_eq!(target["a"].len() + target["b"].len(), 6);
        assert_eq!(group.state(&target), "rebalancing");
        // "d" joins while "a" still owns partitions now due to "d": d gets them only once a
        // releases them.
        group.members.insert("d".into(), member(&["t"], &[]));
        let target = group.target(&counts);
        let owned_by_a = group.members["a"].owned.clone();
        let due_to_d_held_by_a: BTreeSet<_> =
            target["d"].intersection(&owned_by_a).cloned().collect();
        let d_now = group.assigned("d", &target);
        assert!(d_now.is_disjoint(&owned_by_a));
        group.members.get_mut("a").unwrap().owned = target["a"].clone();
        let d_later = group.assigned("d", &target);
        assert!(due_to_d_held_by_a.is_subset(&d_later) || due_to_d_held_by_a.is_empty());
    }

    #[test]
    fn a_partition_granted_but_not_yet_reported_is_not_granted_twice() {
        let mut group = LiveGroup::default();
        group.members.insert("a".into(), member(&["t"], &[]));
        let counts = BTreeMap::from([("t".to_string(), 2)]);
        let target = group.target(&counts);
        let to_a = group.assigned("a", &target);
        assert_eq!(to_a.len(), 2);
        group.members.get_mut("a").unwrap().granted = to_a.clone();
        // b joins before a's next heartbeat reports what it reads.
        group.members.insert("b".into(), member(&["t"], &[]));
        let target = group.target(&counts);
        assert!(group.assigned("b", &target).is_disjoint(&to_a));
        // a's next heartbeat: it reads only its new share (reported owned), and its grant
        // shrinks to it; then b gets the rest.
        let a_now = group.assigned("a", &target);
        let a = group.members.get_mut("a").unwrap();
        a.granted = a_now.clone();
        a.owned = a_now.clone();
        let b_now = group.assigned("b", &target);
        assert_eq!(b_now.len(), 1);
        assert!(b_now.is_disjoint(&a_now));
    }

    #[test]
    fn members_only_get_topics_they_subscribe_to() {
        let mut group = LiveGroup::default();
        group.members.insert("a".into(), member(&["x"], &[]));
        group.members.insert("b".into(), member(&["x", "y"], &[]));
        let counts = BTreeMap::from([("x".to_string(), 2), ("y".to_string(), 3)]);
        let target = group.target(&counts);
        assert!(target["a"].iter().all(|(t, _)| t == "x"));
        assert_eq!(target["b"].iter().filter(|(t, _)| t == "y").count(), 3);
    }

    #[test]
    fn expired_members_are_removed() {
        let mut group = LiveGroup::default();
        let mut old = member(&["t"], &[]);
        old.session = Duration::from_millis(1);
        old.last_seen = Instant::now() - Duration::from_secs(1);
        group.members.insert("old".into(), old);
        group.members.insert("new".into(), member(&["t"], &[]));
        group.expire(Instant::now());
        assert_eq!(group.members.len(), 1);
        assert_eq!(group.generation, 1);
    }

    use proptest::prelude::*;

    /// Members (subscriptions), topics (partition counts) and what each member reports owning.
    fn groups() -> impl Strategy<Value = (LiveGroup, BTreeMap<String, u32>)> {
        let topics = prop::collection::btree_map("[a-c]", 1u32..12, 1..4);
        let members = prop::collection::btree_map(
            "[m-r][0-9]",
            (
                prop::collection::btree_set("[a-c]", 0..3),
                prop::collection::btree_set(("[a-c]", 0u32..12), 0..6),
            ),
            1..7,
        );
        (topics, members).prop_map(|(counts, members)| {
            let mut group = LiveGroup::default();
            let mut claimed = BTreeSet::new();
            for (id, (topics, owned)) in members {
                // A partition is reported by at most one member (the invariant the protocol
                // keeps; the assignor must preserve it).
                let owned: BTreeSet<TopicPartition> = owned
                    .into_iter()
                    .map(|(t, p)| (t.to_string(), p))
                    .filter(|tp| claimed.insert(tp.clone()))
                    .collect();
                group.members.insert(
                    id,
                    Member {
                        client_id: String::new(),
                        topics: topics.into_iter().collect(),
                        owned,
                        granted: BTreeSet::new(),
                        last_seen: Instant::now(),
                        session: Duration::from_secs(10),
                    },
                );
            }
            (group, counts)
        })
    }

    proptest! {
        /// Every partition of a topic someone reads has exactly one target owner, a subscriber,
        /// and the shares of one topic differ by at most one partition.
        #[test]
        fn the_target_covers_each_partition_once_and_evenly((group, counts) in groups()) {
            let target = group.target(&counts);
            for (topic, count) in &counts {
                let readers: Vec<&String> = group
                    .members
                    .iter()
                    .filter(|(_, m)| m.topics.contains(topic))
                    .map(|(id, _)| id)
                    .collect();
                for p in 0..*count {
                    let owners: Vec<&String> = target
                        .iter()
                        .filter(|(_, share)| share.contains(&(topic.clone(), p)))
                        .map(|(id, _)| id)
                        .collect();
                    prop_assert_eq!(owners.len(), usize::from(!readers.is_empty()));
                    for owner in owners {
                        prop_assert!(readers.contains(&owner));
                    }
                }
                let sizes: Vec<usize> = readers
                    .iter()
                    .map(|id| target[*id].iter().filter(|(t, _)| t == topic).count())
                    .collect();
                if let (Some(min), Some(max)) = (sizes.iter().min(), sizes.iter().max()) {
                    prop_assert!(max - min <= 1, "{:?}", sizes);
                }
            }
        }

        /// Whatever members report, no partition is handed to a member while another member
        /// still holds it, and the members' assignments never overlap.
        #[test]
        fn no_partition_is_assigned_to_two_members((mut group, counts) in groups()) {
            let target = group.target(&counts);
            let ids: Vec<String> = group.members.keys().cloned().collect();
            let mut handed: BTreeMap<TopicPartition, String> = BTreeMap::new();
            for id in &ids {
                let share = group.assigned(id, &target);
                for tp in &share {
                    for (other, m) in &group.members {
                        if other != id {
                            prop_assert!(!m.owned.contains(tp) && !m.granted.contains(tp));
                        }
                    }
                    prop_assert!(handed.insert(tp.clone(), id.clone()).is_none());
                }
                // The member is told its share: it holds it from now on.
                if let Some(member) = group.members.get_mut(id) {
                    member.granted = share;
                }
            }
        }
    }
}
