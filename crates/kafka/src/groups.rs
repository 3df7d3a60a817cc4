//! Kafka's classic consumer-group protocol (JoinGroup, SyncGroup, Heartbeat, LeaveGroup) for
//! the groups this node coordinates: membership in memory, as Weir's own groups keep theirs;
//! committed offsets are Weir's (the listener commits and fetches them through the backend, so
//! a group that read half a topic through Kafka continues from there through gRPC).
//!
//! Each group moves Empty → PreparingRebalance (members (re)join; it waits until every known
//! member has, or the rebalance timeout passes and drops the rest) → CompletingRebalance (a new
//! generation; the leader got every member's metadata and sends the assignment in SyncGroup) →
//! Stable. A member that sends no heartbeat within its session timeout is removed, which starts
//! a rebalance; heartbeats during one answer REBALANCE_IN_PROGRESS so members rejoin.
//!
//! Invariants: a generation's members all got their JoinGroup answer from the same completion,
//! with the same generation, protocol and leader; an assignment is handed out only for the
//! generation the leader computed it for; every waiting JoinGroup or SyncGroup is answered (an
//! error when its member is dropped), never left hanging.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{JoinGroupResponse, SyncGroupResponse};
use kafka_protocol::protocol::StrBytes;
use tokio::sync::oneshot;

use crate::api::codes;

/// Group states, as Kafka names them (DescribeGroups and ListGroups show them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Empty => "Empty",
            Self::PreparingRebalance => "PreparingRebalance",
            Self::CompletingRebalance => "CompletingRebalance",
            Self::Stable => "Stable",
        }
    }
}

/// The longest a rebalance waits for members to rejoin.
const MAX_REBALANCE: Duration = Duration::from_secs(300);
/// Session timeouts accepted (Kafka's group.min/max.session.timeout.ms defaults).
const SESSION_RANGE: (i32, i32) = (6_000, 1_800_000);

#[derive(Debug)]
struct Member {
    client_id: String,
    client_host: String,
    session: Duration,
    rebalance: Duration,
    /// (protocol name, metadata), in the member's order of preference.
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    last_seen: Instant,
}

#[derive(Debug)]
struct Group {
    state: State,
    generation: i32,
    protocol_type: String,
    protocol: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, not yet joined.
    pending: HashSet<String>,
    joining: HashMap<String, oneshot::Sender<JoinGroupResponse>>,
    syncing: HashMap<String, oneshot::Sender<SyncGroupResponse>>,
    deadline: Option<Instant>,
}

impl Group {
    fn new(protocol_type: String) -> Self {
        Self {
            state: State::Empty,
            generation: 0,
            protocol_type,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            pending: HashSet::new(),
            joining: HashMap::new(),
            syncing: HashMap::new(),
            deadline: None,
        }
    }

    /// Starts a rebalance (or extends the one under way to the members' rebalance timeout).
    fn prepare(&mut self, now: Instant) {
        if self.state != State::PreparingRebalance {
            self.state = State::PreparingRebalance;
            let wait = self
                .members
                .values()
                .map(|m| m.rebalance)
                .max()
                .unwrap_or_default()
                .min(MAX_REBALANCE);
            self.deadline = Some(now + wait);
            // Members waiting for an assignment of the old generation rejoin.
            for (_, waiter) in self.syncing.drain() {
                let _ = waiter.send(sync_error(codes::REBALANCE_IN_PROGRESS));
            }
        }
    }

    /// Completes the join phase if every member has rejoined (or `force`: the deadline passed,
    /// and members that did not rejoin are dropped).
    fn try_complete_join(&mut self, force: bool) {
        if self.state != State::PreparingRebalance {
            return;
        }
        let all_joined = self.members.keys().all(|id| self.joining.contains_key(id));
        if !all_joined && !force {
            return;
        }
        let joining = &self.joining;
        self.members.retain(|id, _| joining.contains_key(id));
        if self.members.is_empty() {
            self.state = State::Empty;
            self.deadline = None;
            self.leader = None;
            self.protocol = None;
            self.generation += 1;
            return;
        }
        self.generation += 1;
        if self
            .leader
            .as_ref()
            .is_none_or(|l| !self.members.contains_key(l))
        {
            self.leader = self.members.keys().next().cloned();
        }
        let leader = self.leader.clone().unwrap_or_default();
        // The first of the leader's protocols that every member supports.
        let chosen = self.members.get(&leader).and_then(|l| {
            l.protocols
                .iter()
                .map(|(name, _)| name.clone())
                .find(|name| {
                    self.members
                        .values()
                        .all(|m| m.protocols.iter().any(|(n, _)| n == name))
                })
        });
        let Some(protocol) = chosen else {
            for (_, waiter) in self.joining.drain() {
                let _ = waiter.send(join_error(codes::INCONSISTENT_GROUP_PROTOCOL, ""));
            }
            self.members.clear();
            self.state = State::Empty;
            self.deadline = None;
            return;
        };
        self.protocol = Some(protocol.clone());
        self.state = State::CompletingRebalance;
        self.deadline = None;
        let roster: Vec<JoinGroupResponseMember> = self
            .members
            .iter()
            .map(|(id, m)| {
                let mut member = JoinGroupResponseMember::default();
                member.member_id = StrBytes::from_string(id.clone());
                member.metadata = m
                    .protocols
                    .iter()
                    .find(|(n, _)| *n == protocol)
                    .map(|(_, meta)| meta.clone())
                    .unwrap_or_default();
                member
            })
            .collect();
        let now = Instant::now();
        for member in self.members.values_mut() {
            member.assignment = Bytes::new();
            member.last_seen = now;
        }
        for (id, waiter) in self.joining.drain() {
            let mut response = JoinGroupResponse::default();
            response.generation_id = self.generation;
            response.protocol_type = Some(StrBytes::from_string(self.protocol_type.clone()));
            response.protocol_name = Some(StrBytes::from_string(protocol.clone()));
            response.leader = StrBytes::from_string(leader.clone());
            response.member_id = StrBytes::from_string(id.clone());
            if id == leader {
                response.members = roster.clone();
            }
            let _ = waiter.send(response);
        }
    }

    fn remove(&mut self, id: &str, now: Instant) {
        self.members.remove(id);
        if let Some(waiter) = self.joining.remove(id) {
            let _ = waiter.send(join_error(codes::UNKNOWN_MEMBER_ID, id));
        }
        if let Some(waiter) = self.syncing.remove(id) {
            let _ = waiter.send(sync_error(codes::UNKNOWN_MEMBER_ID));
        }
        if self.members.is_empty() {
            for (_, waiter) in self.joining.drain() {
                let _ = waiter.send(join_error(codes::UNKNOWN_MEMBER_ID, ""));
            }
            self.state = State::Empty;
            self.deadline = None;
            self.leader = None;
        } else {
            self.prepare(now);
            self.try_complete_join(false);
        }
    }
}

fn join_error(code: i16, member: &str) -> JoinGroupResponse {
    let mut response = JoinGroupResponse::default();
    response.error_code = code;
    response.generation_id = -1;
    response.member_id = StrBytes::from_string(member.to_string());
    response
}

fn sync_error(code: i16) -> SyncGroupResponse {
    let mut response = SyncGroupResponse::default();
    response.error_code = code;
    response
}

/// What a JoinGroup asks.
#[derive(Debug, Clone)]
pub struct Join {
    pub group: String,
    pub member_id: String,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4 and later: a new member first gets its id with MEMBER_ID_REQUIRED.
    pub require_known_id: bool,
}

/// A group as DescribeGroups shows it.
#[derive(Debug, Clone)]
pub struct Described {
    pub state: State,
    pub protocol_type: String,
    pub protocol: String,
    /// (member id, client id, client host, metadata, assignment)
    pub members: Vec<(String, String, String, Bytes, Bytes)>,
}

/// The groups this node coordinates for Kafka clients.
#[derive(Debug, Default)]
pub struct Coordinator {
    groups: Mutex<HashMap<String, Group>>,
}

impl Coordinator {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, Group>) -> T) -> T {
        let mut groups = match self.groups.lock() {
            Ok(groups) => groups,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut groups)
    }

    /// JoinGroup: waits for the rebalance to complete (see the module docs).
    pub async fn join(&self, join: Join) -> JoinGroupResponse {
        if !(SESSION_RANGE.0..=SESSION_RANGE.1).contains(&join.session_timeout_ms) {
            return join_error(codes::INVALID_SESSION_TIMEOUT, &join.member_id);
        }
        if join.protocols.is_empty() || join.protocol_type.is_empty() {
            return join_error(codes::INCONSISTENT_GROUP_PROTOCOL, &join.member_id);
        }
        let now = Instant::now();
        let waiter = self.with(|groups| {
            let group = groups
                .entry(join.group.clone())
                .or_insert_with(|| Group::new(join.protocol_type.clone()));
            if group.members.is_empty() && group.state == State::Empty {
                group.protocol_type = join.protocol_type.clone();
            }
            if group.protocol_type != join.protocol_type
                || !group.members.values().all(|m| {
                    m.protocols
                        .iter()
                        .any(|(n, _)| join.protocols.iter().any(|(p, _)| p == n))
                })
            {
                return Err(Box::new(join_error(
                    codes::INCONSISTENT_GROUP_PROTOCOL,
                    &join.member_id,
                )));
            }
            let member_id = if join.member_id.is_empty() {
                let id = format!(
                    "{}-{:016x}",
                    if join.client_id.is_empty() {
                        "member"
                    } else {
                        &join.client_id
                    },
                    rand::random::<u64>()
                );
                if join.require_known_id {
                    group.pending.insert(id.clone());
                    return Err(Box::new(join_error(codes::MEMBER_ID_REQUIRED, &id)));
                }
                id
            } else if group.members.contains_key(&join.member_id)
                || group.pending.remove(&join.member_id)
            {
                join.member_id.clone()
            } else {
                return Err(Box::new(join_error(
                    codes::UNKNOWN_MEMBER_ID,
                    &join.member_id,
                )));
            };
            let session =
                Duration::from_millis(u64::try_from(join.session_timeout_ms).unwrap_or(0));
            let rebalance = Duration::from_millis(
                u64::try_from(join.rebalance_timeout_ms.max(join.session_timeout_ms)).unwrap_or(0),
            );
            group.members.insert(
                member_id.clone(),
                Member {
                    client_id: join.client_id.clone(),
                    client_host: join.client_host.clone(),
                    session,
                    rebalance,
                    protocols: join.protocols.clone(),
                    assignment: Bytes::new(),
                    last_seen: now,
                },
            );
            let (tx, rx) = oneshot::channel();
            if let Some(old) = group.joining.insert(member_id.clone(), tx) {
                let _ = old.send(join_error(codes::REBALANCE_IN_PROGRESS, &member_id));
            }
            // Any (re)join starts a rebalance: a rejoining member gave up its assignment.
            group.prepare(now);
            group.try_complete_join(false);
            Ok((rx, rebalance))
        });
        match waiter {
            Err(response) => *response,
            Ok((rx, rebalance)) => {
                match tokio::time::timeout(rebalance + Duration::from_secs(5), rx).await {
                    Ok(Ok(response)) => response,
                    _ => join_error(codes::REBALANCE_IN_PROGRESS, &join.member_id),
                }
            }
        }
    }

    /// SyncGroup: the leader hands in the assignment; everyone gets their share.
    pub async fn sync(
        &self,
        group: &str,
        member_id: &str,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
    ) -> SyncGroupResponse {
        let now = Instant::now();
        let waiter = self.with(|groups| {
            let Some(g) = groups.get_mut(group) else {
                return Err(Box::new(sync_error(codes::UNKNOWN_MEMBER_ID)));
            };
            let Some(member) = g.members.get_mut(member_id) else {
                return Err(Box::new(sync_error(codes::UNKNOWN_MEMBER_ID)));
            };
            member.last_seen = now;
            if generation != g.generation {
                return Err(Box::new(sync_error(codes::ILLEGAL_GENERATION)));
            }
            let with_protocol = |mut r: SyncGroupResponse, g: &Group| {
                r.protocol_type = Some(StrBytes::from_string(g.protocol_type.clone()));
                r.protocol_name = g.protocol.clone().map(StrBytes::from_string);
                r
            };
            match g.state {
                State::PreparingRebalance | State::Empty => {
                    Err(Box::new(sync_error(codes::REBALANCE_IN_PROGRESS)))
                }
                State::Stable => {
                    let mut r = SyncGroupResponse::default();
                    r.assignment = g
                        .members
                        .get(member_id)
                        .map(|m| m.assignment.clone())
                        .unwrap_or_default();
                    Err(Box::new(with_protocol(r, g)))
                }
                State::CompletingRebalance => {
                    if g.leader.as_deref() == Some(member_id) {
                        let mut given: HashMap<String, Bytes> = assignments.into_iter().collect();
                        for (id, m) in &mut g.members {
                            m.assignment = given.remove(id).unwrap_or_default();
                        }
                        g.state = State::Stable;
                        let waiting: Vec<_> = g.syncing.drain().collect();
                        for (id, tx) in waiting {
                            let mut r = SyncGroupResponse::default();
                            r.assignment = g
                                .members
                                .get(&id)
                                .map(|m| m.assignment.clone())
                                .unwrap_or_default();
                            let _ = tx.send(with_protocol(r, g));
                        }
                        let mut r = SyncGroupResponse::default();
                        r.assignment = g
                            .members
                            .get(member_id)
                            .map(|m| m.assignment.clone())
                            .unwrap_or_default();
                        Err(Box::new(with_protocol(r, g)))
                    } else {
                        let (tx, rx) = oneshot::channel();
                        if let Some(old) = g.syncing.insert(member_id.to_string(), tx) {
                            let _ = old.send(sync_error(codes::REBALANCE_IN_PROGRESS));
                        }
                        let wait = g
                            .members
                            .get(member_id)
                            .map_or(Duration::from_secs(30), |m| m.session);
                        Ok((rx, wait))
                    }
                }
            }
        });
        match waiter {
            Err(response) => *response,
            Ok((rx, wait)) => match tokio::time::timeout(wait, rx).await {
                Ok(Ok(response)) => response,
                _ => sync_error(codes::REBALANCE_IN_PROGRESS),
            },
        }
    }

    /// Heartbeat: the error code to answer.
    pub fn heartbeat(&self, group: &str, member_id: &str, generation: i32) -> i16 {
        let now = Instant::now();
        self.with(|groups| {
            let Some(g) = groups.get_mut(group) else {
                return codes::UNKNOWN_MEMBER_ID;
            };
            let Some(member) = g.members.get_mut(member_id) else {
                return codes::UNKNOWN_MEMBER_ID;
            };
            member.last_seen = now;
            if g.state == State::PreparingRebalance {
                return codes::REBALANCE_IN_PROGRESS;
            }
            if generation != g.generation {
                return codes::ILLEGAL_GENERATION;
            }
            codes::NONE
        })
    }

    /// LeaveGroup of one member: the error code for it.
    pub fn leave(&self, group: &str, member_id: &str) -> i16 {
        let now = Instant::now();
        self.with(|groups| {
            let Some(g) = groups.get_mut(group) else {
                return codes::UNKNOWN_MEMBER_ID;
            };
            if !g.members.contains_key(member_id) {
                return codes::UNKNOWN_MEMBER_ID;
            }
            g.remove(member_id, now);
            codes::NONE
        })
    }

    /// Whether an offset commit by (`member_id`, `generation`) may go ahead: the error code.
    /// A commit outside membership (generation -1, no member) is allowed while the group has
    /// no members.
    pub fn check_commit(&self, group: &str, member_id: &str, generation: i32) -> i16 {
        self.with(|groups| {
            let g = groups.get(group);
            if generation < 0 && member_id.is_empty() {
                return match g {
                    Some(g) if !g.members.is_empty() => codes::UNKNOWN_MEMBER_ID,
                    _ => codes::NONE,
                };
            }
            let Some(g) = g else {
                return codes::UNKNOWN_MEMBER_ID;
            };
            if !g.members.contains_key(member_id) {
                return codes::UNKNOWN_MEMBER_ID;
            }
            if g.generation != generation {
                return codes::ILLEGAL_GENERATION;
            }
            if g.state == State::PreparingRebalance {
                return codes::REBALANCE_IN_PROGRESS;
            }
            codes::NONE
        })
    }

    /// Drops members whose session ran out and completes rebalances whose time is up. Called
    /// periodically.
    pub fn expire(&self, now: Instant) {
        self.with(|groups| {
            for g in groups.values_mut() {
                let joining = &g.joining;
                let expired: Vec<String> = g
                    .members
                    .iter()
                    .filter(|(id, m)| {
                        !joining.contains_key(*id) && now.duration_since(m.last_seen) > m.session
                    })
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in expired {
                    tracing::info!(member = %id, "kafka group member's session expired");
                    g.remove(&id, now);
                }
                if g.deadline.is_some_and(|d| now >= d) {
                    g.try_complete_join(true);
                }
            }
            groups.retain(|_, g| {
                g.state != State::Empty || !g.pending.is_empty() || !g.joining.is_empty()
            });
        });
    }

    /// The groups with live members here: (name, protocol type, state).
    pub fn list(&self) -> Vec<(String, String, State)> {
        self.with(|groups| {
            groups
                .iter()
                .map(|(name, g)| (name.clone(), g.protocol_type.clone(), g.state))
                .collect()
        })
    }

    pub fn describe(&self, group: &str) -> Option<Described> {
        self.with(|groups| {
            let g = groups.get(group)?;
            let protocol = g.protocol.clone().unwrap_or_default();
            Some(Described {
                state: g.state,
                protocol_type: g.protocol_type.clone(),
                protocol: protocol.clone(),
                members: g
                    .members
                    .iter()
                    .map(|(id, m)| {
                        let metadata = m
                            .protocols
                            .iter()
                            .find(|(n, _)| *n == protocol)
                            .map(|(_, meta)| meta.clone())
                            .unwrap_or_default();
                        (
                            id.clone(),
                            m.client_id.clone(),
                            m.client_host.clone(),
                            metadata,
                            m.assignment.clone(),
                        )
                    })
                    .collect(),
            })
        })
    }

    /// Whether the group has members here (a group with members is not deleted).
    pub fn has_members(&self, group: &str) -> bool {
        self.with(|groups| groups.get(group).is_some_and(|g| !g.members.is_empty()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(member: &str) -> Join {
        Join {
            group: "g".into(),
            member_id: member.into(),
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 10_000,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(b"meta"))],
            require_known_id: true,
        }
    }

    #[tokio::test]
    async fn two_members_join_the_leader_assigns_and_both_get_their_share() {
        let c = std::sync::Arc::new(Coordinator::default());
        // A new member first gets its id.
        let first = c.join(join("")).await;
        assert_eq!(first.error_code, codes::MEMBER_ID_REQUIRED);
        let a = first.member_id.to_string();
        let joined = c.join(join(&a)).await;
        assert_eq!(joined.error_code, 0);
        assert_eq!(joined.generation_id, 1);
        assert_eq!(joined.leader.as_str(), a);
        let synced = c
            .sync("g", &a, 1, vec![(a.clone(), Bytes::from_static(b"all"))])
            .await;
        assert_eq!(synced.assignment.as_ref(), b"all");
        assert_eq!(c.heartbeat("g", &a, 1), 0);

        // A second member: the first learns of the rebalance from its heartbeat and rejoins.
        let b = c.join(join("")).await.member_id.to_string();
        let c2 = std::sync::Arc::clone(&c);
        let b2 = b.clone();
        let b_join = tokio::spawn(async move { c2.join(join(&b2)).await });
        tokio::task::yield_now().await;
        assert_eq!(c.heartbeat("g", &a, 1), codes::REBALANCE_IN_PROGRESS);
        let a_join = c.join(join(&a)).await;
        let b_join = b_join.await.expect("joined");
        assert_eq!((a_join.generation_id, b_join.generation_id), (2, 2));
        assert_eq!(a_join.leader, b_join.leader);
        let (leader, follower) = if a_join.leader.as_str() == a {
            (&a, &b)
        } else {
            (&b, &a)
        };
        let roster = if a_join.leader.as_str() == a {
            &a_join.members
        } else {
            &b_join.members
        };
        assert_eq!(roster.len(), 2);
        // The follower waits for the leader's assignment.
        let c3 = std::sync::Arc::clone(&c);
        let f = follower.clone();
        let follower_sync = tokio::spawn(async move { c3.sync("g", &f, 2, vec![]).await });
        tokio::task::yield_now().await;
        let assignments = vec![
            (leader.clone(), Bytes::from_static(b"p0")),
            (follower.clone(), Bytes::from_static(b"p1")),
        ];
        assert_eq!(
            c.sync("g", leader, 2, assignments)
                .await
                .assignment
                .as_ref(),
            b"p0"
        );
        assert_eq!(
            follower_sync.await.expect("synced").assignment.as_ref(),
            b"p1"
        );
        assert_eq!(c.check_commit("g", leader, 2), 0);
        assert_eq!(c.check_commit("g", leader, 1), codes::ILLEGAL_GENERATION);
        assert_eq!(c.check_commit("g", "", -1), codes::UNKNOWN_MEMBER_ID);

        // One leaves: the other rejoins alone and gets generation 3.
        assert_eq!(c.leave("g", follower), 0);
        assert_eq!(c.heartbeat("g", leader, 2), codes::REBALANCE_IN_PROGRESS);
        let again = c.join(join(leader)).await;
        assert_eq!((again.error_code, again.generation_id), (0, 3));
        assert_eq!(c.leave("g", leader), 0);
        assert_eq!(c.check_commit("g", "", -1), 0);
    }

    #[tokio::test]
    async fn a_silent_member_is_dropped_and_unknown_members_are_refused() {
        let c = Coordinator::default();
        let mut j = join("");
        j.require_known_id = false;
        let a = c.join(j).await;
        assert_eq!(a.error_code, 0);
        let a = a.member_id.to_string();
        assert_eq!(c.heartbeat("g", "stranger", 1), codes::UNKNOWN_MEMBER_ID);
        assert_eq!(
            c.join(join("stranger")).await.error_code,
            codes::UNKNOWN_MEMBER_ID
        );
        c.expire(Instant::now() + Duration::from_secs(11));
        assert_eq!(c.heartbeat("g", &a, 1), codes::UNKNOWN_MEMBER_ID);
        let mut bad = join("");
        bad.session_timeout_ms = 10;
        assert_eq!(c.join(bad).await.error_code, codes::INVALID_SESSION_TIMEOUT);
    }
}
