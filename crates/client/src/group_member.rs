//! The consumer group membership protocol, pure: no I/O, no tasks, no clock of its own (the
//! caller passes `now`). [`GroupMember`] decides what a member says in each heartbeat and what
//! it does with the answers; the [`Consumer`](crate::Consumer) only carries messages between it
//! and the network (heartbeats, offset commits and look-ups) and starts or stops the fetchers
//! it names. The protocol is the one described above `service Groups` in the proto.
//!
//! Events in, actions out:
//! - [`GroupMember::due`] (a tick): whether a heartbeat and an auto-commit are due;
//! - [`GroupMember::heartbeat`]: the [`Beat`] to send — member id, owned partitions, deadline;
//! - [`GroupMember::answered`] (a heartbeat answer): the [`Assignment`] it makes, saying which
//!   revoked partitions to commit *first*; then [`GroupMember::settle`] (the commit is done, or
//!   failed, or there was none): which fetchers to stop, and which claims the coordinator
//!   confirmed, whose committed offsets to look up; then [`GroupMember::offsets_fetched`]: which
//!   fetchers to start, where ([`GroupMember::offsets_failed`] if the look-up failed);
//! - [`GroupMember::failed`] (a heartbeat error, classified as a [`BeatError`]): give up, retry
//!   soon, or stop everything and rejoin;
//! - [`GroupMember::closing`]: commit and leave on close.
//!
//! Each step returns a token ([`Beat`], [`Assignment`], [`Confirmation`]) that the next one
//! takes back. The member's state changes only inside these calls, so a caller that drops a
//! step halfway (a cancelled `poll`) leaves it consistent: the token is gone, and the next
//! heartbeat reports what the member really holds.
//!
//! Invariants:
//! - a partition is *owned* (read) only after a heartbeat reporting it as claimed was answered
//!   with it still assigned: the coordinator then knew this member holds it and gives it to no
//!   one else. A partition new in an answer is first claimed, and the next heartbeat goes at once;
//! - a revoked partition is committed first (with auto-commit), then its fetcher stops, and only
//!   then does a heartbeat stop reporting it (at once) — so no partition is read by two members;
//! - NOT_FOUND from the coordinator (it does not know this member), or no successful heartbeat
//!   for the session timeout, drops every partition without committing (another member may own
//!   them already), clears the member id and rejoins with the next heartbeat;
//! - while joining (until [`GroupMember::joined`]) and when a rejoin fails in a way retrying
//!   cannot fix, failures go back to the caller; otherwise a failed heartbeat is retried in
//!   200 ms.
//!
//! Not handled here: positions and which records were returned (the consumer's), encoding
//! requests, retrying a single call (the client retries each call until its deadline).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::Start;

/// A partition of a topic.
pub(crate) type Tp = (Arc<str>, u32);

/// How soon a failed heartbeat (or a failed look-up of committed offsets) is retried.
const RETRY_AFTER: Duration = Duration::from_millis(200);
/// The shortest heartbeat interval a coordinator can ask for.
const MIN_INTERVAL: Duration = Duration::from_millis(50);
/// The least time a heartbeat may wait for its answer.
const MIN_BEAT_WAIT: Duration = Duration::from_secs(1);

/// What a member is configured with.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// The coordinator removes a member silent for this long.
    pub(crate) session_timeout: Duration,
    /// Commit on revocation, on close and every `auto_commit_interval`.
    pub(crate) auto_commit: bool,
    pub(crate) auto_commit_interval: Duration,
    /// Where a partition the group has no committed offset for starts.
    pub(crate) uncommitted_start: Start,
}

/// What is due at a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Due {
    pub(crate) heartbeat: bool,
    /// Commit every position (the auto-commit interval passed; the next one is scheduled).
    pub(crate) commit: bool,
}

/// A heartbeat to send; hand it back with its outcome.
#[derive(Debug)]
pub(crate) struct Beat {
    pub(crate) group: String,
    /// Empty when joining or rejoining.
    pub(crate) member_id: String,
    pub(crate) topics: Vec<String>,
    /// The partitions reported as owned, per topic (sorted): those read, then those claimed.
    pub(crate) owned: Vec<(String, Vec<u32>)>,
    pub(crate) session_timeout_ms: u32,
    /// Stop waiting for the answer then: never longer than the member can stay silent.
    pub(crate) deadline: Instant,
    /// The claims this beat reports.
    claimed: BTreeSet<Tp>,
    /// When a heartbeat last succeeded, as the beat was sent.
    last_ok: Instant,
}

/// A heartbeat answer.
#[derive(Debug, Clone, Default)]
pub(crate) struct Answer {
    pub(crate) member_id: String,
    pub(crate) generation: u64,
    /// 0: the coordinator suggests none.
    pub(crate) heartbeat_interval_ms: u32,
    /// The partitions assigned to this member, per topic.
    pub(crate) assigned: Vec<(String, Vec<u32>)>,
}

/// Why a heartbeat failed, as far as the protocol cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BeatError {
    /// The coordinator does not know this member (NOT_FOUND, or a FAILED_PRECONDITION without
    /// a leader hint): it timed out, or the coordinator moved.
    UnknownMember,
    /// A failure a later beat can get past (unavailable, timed out, ...).
    Retryable,
    /// Anything else (an unknown topic, a bad setting): retrying cannot fix it.
    Other,
}

/// What to do after a failed heartbeat.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Failed {
    /// Return the error to the caller: joining failed, or rejoining cannot succeed.
    GiveUp,
    /// Nothing: the next heartbeat goes soon.
    Retry,
    /// The member is out of the group: stop these fetchers, without committing (another member
    /// may own the partitions already); the next heartbeat (at once) rejoins.
    Rejoin { stop: Vec<Tp>, reason: LostBecause },
}

/// Why the member lost its membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LostBecause {
    /// The coordinator answered that it does not know the member.
    UnknownMember,
    /// No heartbeat succeeded for the session timeout.
    SessionExpired,
}

/// What an answer assigns; hand it to [`GroupMember::settle`] once the revoked partitions are
/// committed (see [`Assignment::commit_first`]).
#[derive(Debug)]
pub(crate) struct Assignment {
    assigned: BTreeSet<Tp>,
    /// Owned partitions missing from the answer.
    revoked: Vec<Tp>,
    /// The claims the answered beat reported.
    claimed: BTreeSet<Tp>,
    auto_commit: bool,
}

impl Assignment {
    /// The revoked partitions whose positions to commit before they stop (with auto-commit).
    /// A failed commit does not hold the revocation up: their next reader may repeat records.
    pub(crate) fn commit_first(&self) -> Option<&[Tp]> {
        (self.auto_commit && !self.revoked.is_empty()).then_some(self.revoked.as_slice())
    }
}

/// What settling an assignment asks for.
#[derive(Debug)]
pub(crate) struct Settled {
    /// Stop these fetchers (revoked; committed already if they were to be).
    pub(crate) stop: Vec<Tp>,
    /// Claims the coordinator confirmed: look up their committed offsets, then hand this to
    /// [`GroupMember::offsets_fetched`].
    pub(crate) confirm: Option<Confirmation>,
}

/// Confirmed claims waiting for their committed offsets.
#[derive(Debug)]
pub(crate) struct Confirmation {
    partitions: Vec<Tp>,
}

impl Confirmation {
    /// The topics whose committed offsets to look up (sorted, each once).
    pub(crate) fn topics(&self) -> Vec<String> {
        let topics: BTreeSet<&str> = self.partitions.iter().map(|(t, _)| &**t).collect();
        topics.into_iter().map(str::to_string).collect()
    }
}

/// Start reading `tp` at `start`; `committed` is the group's committed offset, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StartFetch {
    pub(crate) tp: Tp,
    pub(crate) start: Start,
    pub(crate) committed: Option<u64>,
}

/// What to do on close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Closing {
    /// Commit every position first.
    pub(crate) commit: bool,
    /// Leave the group as this member id (none when the member holds no membership).
    pub(crate) leave: Option<String>,
}

/// One member of a consumer group (see the module docs).
#[derive(Debug)]
pub(crate) struct GroupMember {
    group: String,
    topics: Vec<String>,
    settings: Settings,
    /// Empty until joined, and between losing membership and rejoining.
    member_id: String,
    generation: u64,
    heartbeat_interval: Duration,
    next_heartbeat: Instant,
    last_heartbeat_ok: Instant,
    next_auto_commit: Instant,
    /// Partitions this member reads (their fetchers run).
    owned: BTreeSet<Tp>,
    /// Partitions assigned to this member but not read yet: reported as owned, and read only
    /// once an answer to a heartbeat reporting them still assigns them.
    claimed: BTreeSet<Tp>,
    /// Until [`Self::joined`]: failures go back to the caller.
    joining: bool,
}

impl GroupMember {
    /// A member about to join `group` reading `topics`: the first heartbeat is due at once.
    pub(crate) fn new(group: &str, topics: &[String], settings: Settings, now: Instant) -> Self {
        Self {
            group: group.to_string(),
            topics: topics.to_vec(),
            member_id: String::new(),
            generation: 0,
            heartbeat_interval: settings.session_timeout / 3,
            next_heartbeat: now,
            last_heartbeat_ok: now,
            next_auto_commit: now + settings.auto_commit_interval,
            owned: BTreeSet::new(),
            claimed: BTreeSet::new(),
            joining: true,
            settings,
        }
    }

    pub(crate) fn group(&self) -> &str {
        &self.group
    }

    /// Empty between losing membership and rejoining.
    pub(crate) fn member_id(&self) -> &str {
        &self.member_id
    }

    /// Whether partitions assigned to this member wait to be read.
    pub(crate) fn has_claims(&self) -> bool {
        !self.claimed.is_empty()
    }

    /// The initial join is over: from now on, failures are retried (or lead to a rejoin).
    pub(crate) fn joined(&mut self) {
        self.joining = false;
    }

    /// What is due at `now`. An auto-commit reported due is scheduled again.
    pub(crate) fn due(&mut self, now: Instant) -> Due {
        let heartbeat = now >= self.next_heartbeat;
        let commit = self.settings.auto_commit && now >= self.next_auto_commit;
        if commit {
            self.next_auto_commit = now + self.settings.auto_commit_interval;
        }
        Due { heartbeat, commit }
    }

    /// When something is due next.
    pub(crate) fn next_wake(&self) -> Instant {
        if self.settings.auto_commit {
            self.next_heartbeat.min(self.next_auto_commit)
        } else {
            self.next_heartbeat
        }
    }

    /// The heartbeat to send at `now`.
    pub(crate) fn heartbeat(&self, now: Instant) -> Beat {
        let mut owned: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
        for (t, p) in self.owned.iter().chain(&self.claimed) {
            owned.entry(t).or_default().push(*p);
        }
        Beat {
            group: self.group.clone(),
            member_id: self.member_id.clone(),
            topics: self.topics.clone(),
            owned: owned
                .into_iter()
                .map(|(topic, partitions)| (topic.to_string(), partitions))
                .collect(),
            session_timeout_ms: u32::try_from(self.settings.session_timeout.as_millis())
                .unwrap_or(u32::MAX),
            deadline: now + self.heartbeat_interval.max(MIN_BEAT_WAIT),
            claimed: self.claimed.clone(),
            last_ok: self.last_heartbeat_ok,
        }
    }

    /// `beat` was answered at `now`: takes the member id, generation and interval, and works out
    /// what the answer revokes.
    pub(crate) fn answered(&mut self, beat: Beat, answer: Answer, now: Instant) -> Assignment {
        let interval = match answer.heartbeat_interval_ms {
            0 => self.settings.session_timeout / 3,
            ms => Duration::from_millis(u64::from(ms)),
        }
        .max(MIN_INTERVAL);
        if self.member_id != answer.member_id {
            tracing::debug!(group = %self.group, member = %answer.member_id, "joined");
        }
        self.member_id = answer.member_id;
        self.generation = answer.generation;
        self.heartbeat_interval = interval;
        self.last_heartbeat_ok = now;
        self.next_heartbeat = now + interval;
        let assigned: BTreeSet<Tp> = answer
            .assigned
            .iter()
            .flat_map(|(topic, partitions)| {
                let topic: Arc<str> = Arc::from(topic.as_str());
                partitions.iter().map(move |p| (Arc::clone(&topic), *p))
            })
            .collect();
        let revoked = self
            .owned
            .iter()
            .filter(|tp| !assigned.contains(*tp))
            .cloned()
            .collect();
        Assignment {
            assigned,
            revoked,
            claimed: beat.claimed,
            auto_commit: self.settings.auto_commit,
        }
    }

    /// The revoked partitions of `assignment` are committed (or the commit failed, or there was
    /// none): they stop being owned. Claims no longer assigned are dropped (nothing was read);
    /// partitions new in the answer are claimed; claims the answered beat reported and the
    /// answer still assigns are confirmed. A change makes the next heartbeat due at `now`.
    pub(crate) fn settle(&mut self, assignment: Assignment, now: Instant) -> Settled {
        let Assignment {
            assigned,
            revoked,
            claimed,
            ..
        } = assignment;
        for tp in &revoked {
            self.owned.remove(tp);
        }
        self.claimed.retain(|tp| assigned.contains(tp));
        let mut new_claims = false;
        for tp in &assigned {
            if !self.owned.contains(tp) && !self.claimed.contains(tp) {
                self.claimed.insert(tp.clone());
                new_claims = true;
            }
        }
        if !revoked.is_empty() || new_claims {
            // Tell the coordinator at once: released partitions move on, claims get settled.
            self.next_heartbeat = now;
        }
        let confirmed: Vec<Tp> = self
            .claimed
            .iter()
            .filter(|tp| claimed.contains(*tp))
            .cloned()
            .collect();
        Settled {
            stop: revoked,
            confirm: (!confirmed.is_empty()).then_some(Confirmation {
                partitions: confirmed,
            }),
        }
    }

    /// The group's committed offsets for `confirmation` arrived: its partitions are owned from
    /// now on, each starting at its committed offset or, without one, at the configured start.
    pub(crate) fn offsets_fetched(
        &mut self,
        confirmation: Confirmation,
        committed: &HashMap<(String, u32), u64>,
    ) -> Vec<StartFetch> {
        confirmation
            .partitions
            .into_iter()
            .map(|tp| {
                self.claimed.remove(&tp);
                self.owned.insert(tp.clone());
                let committed = committed.get(&(tp.0.to_string(), tp.1)).copied();
                let start = committed.map_or(self.settings.uncommitted_start, Start::Offset);
                StartFetch {
                    tp,
                    start,
                    committed,
                }
            })
            .collect()
    }

    /// Looking up committed offsets failed (at `now`, the time of the heartbeat answer): the
    /// claims stay, and the next heartbeat confirms them again. Returns whether to give up
    /// (while joining).
    pub(crate) fn offsets_failed(&mut self, now: Instant) -> bool {
        if self.joining {
            return true;
        }
        self.next_heartbeat = now + RETRY_AFTER;
        false
    }

    /// `beat` failed at `now` with `error`.
    pub(crate) fn failed(&mut self, beat: Beat, error: BeatError, now: Instant) -> Failed {
        let rejoining = beat.member_id.is_empty();
        if self.joining || (rejoining && error != BeatError::Retryable) {
            return Failed::GiveUp;
        }
        if error == BeatError::UnknownMember {
            return Failed::Rejoin {
                stop: self.lose_membership(now),
                reason: LostBecause::UnknownMember,
            };
        }
        if now.duration_since(beat.last_ok) >= self.settings.session_timeout {
            return Failed::Rejoin {
                stop: self.lose_membership(now),
                reason: LostBecause::SessionExpired,
            };
        }
        self.next_heartbeat = now + RETRY_AFTER;
        Failed::Retry
    }

    /// Out of the group: nothing owned or claimed, no member id, rejoin at once. Returns the
    /// partitions to stop.
    fn lose_membership(&mut self, now: Instant) -> Vec<Tp> {
        self.claimed.clear();
        self.member_id.clear();
        self.next_heartbeat = now;
        std::mem::take(&mut self.owned).into_iter().collect()
    }

    /// What closing the consumer does: commit (with auto-commit), then leave if a member.
    pub(crate) fn closing(&self) -> Closing {
        Closing {
            commit: self.settings.auto_commit,
            leave: (!self.member_id.is_empty()).then(|| self.member_id.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            session_timeout: Duration::from_secs(9),
            auto_commit: true,
            auto_commit_interval: Duration::from_secs(5),
            uncommitted_start: Start::Earliest,
        }
    }

    fn tp(topic: &str, partition: u32) -> Tp {
        (Arc::from(topic), partition)
    }

    fn answer(member_id: &str, assigned: &[(&str, &[u32])]) -> Answer {
        Answer {
            member_id: member_id.to_string(),
            generation: 1,
            heartbeat_interval_ms: 1000,
            assigned: assigned
                .iter()
                .map(|(t, ps)| (t.to_string(), ps.to_vec()))
                .collect(),
        }
    }

    fn owned(beat: &Beat) -> Vec<(&str, Vec<u32>)> {
        beat.owned
            .iter()
            .map(|(t, ps)| (t.as_str(), ps.clone()))
            .collect()
    }

    /// One heartbeat answered at `now` with `answer`, with no commit to wait for.
    fn beat_answered(member: &mut GroupMember, answer: Answer, now: Instant) -> Settled {
        let beat = member.heartbeat(now);
        let assignment = member.answered(beat, answer, now);
        assert_eq!(assignment.commit_first(), None, "nothing to revoke here");
        member.settle(assignment, now)
    }

    /// A joined member `m1` reading `partitions` of topic `t` (none committed).
    fn member_reading(partitions: &[u32], now: Instant) -> GroupMember {
        let topics = ["t".to_string()];
        let mut member = GroupMember::new("g", &topics, settings(), now);
        let settled = beat_answered(&mut member, answer("m1", &[("t", partitions)]), now);
        assert!(settled.confirm.is_none());
        let settled = beat_answered(&mut member, answer("m1", &[("t", partitions)]), now);
        let confirm = settled.confirm.expect("claims confirmed");
        let started = member.offsets_fetched(confirm, &HashMap::new());
        assert_eq!(started.len(), partitions.len());
        member.joined();
        member
    }

    #[test]
    fn joining_sends_an_empty_member_id_and_returns_failures() {
        let now = Instant::now();
        let topics = ["a".to_string(), "b".to_string()];
        let mut member = GroupMember::new("g", &topics, settings(), now);
        assert_eq!(
            member.due(now),
            Due {
                heartbeat: true,
                commit: false
            }
        );
        let beat = member.heartbeat(now);
        assert_eq!(beat.group, "g");
        assert_eq!(beat.member_id, "");
        assert_eq!(beat.topics, topics);
        assert!(beat.owned.is_empty());
        assert_eq!(beat.session_timeout_ms, 9000);
        // The initial interval is a third of the session timeout.
        assert_eq!(beat.deadline, now + Duration::from_secs(3));
        // While joining, even a failure a retry could get past goes back to the caller.
        assert_eq!(
            member.failed(beat, BeatError::Retryable, now),
            Failed::GiveUp
        );

        let settled = beat_answered(&mut member, answer("m1", &[]), now);
        assert!(settled.stop.is_empty() && settled.confirm.is_none());
        assert_eq!(member.member_id(), "m1");
        assert_eq!(member.generation, 1);
        assert!(!member.has_claims());
        assert_eq!(member.next_wake(), now + Duration::from_secs(1));
        assert!(!member.due(now).heartbeat);
        member.joined();

        let later = now + Duration::from_secs(1);
        assert!(member.due(later).heartbeat);
        let beat = member.heartbeat(later);
        assert_eq!(beat.member_id, "m1");
        assert_eq!(
            member.failed(beat, BeatError::Retryable, later),
            Failed::Retry
        );
        assert_eq!(member.next_wake(), later + RETRY_AFTER);
    }

    #[test]
    fn an_assigned_partition_is_claimed_first_and_read_once_the_claim_is_confirmed() {
        let now = Instant::now();
        let topics = ["t".to_string()];
        let mut member = GroupMember::new("g", &topics, settings(), now);
        let settled = beat_answered(&mut member, answer("m1", &[("t", &[0, 1])]), now);
        // Claimed, not read: nothing starts, and the claim is reported at once.
        assert!(settled.stop.is_empty());
        assert!(settled.confirm.is_none());
        assert!(member.has_claims());
        assert!(member.due(now).heartbeat);
        let beat = member.heartbeat(now);
        assert_eq!(owned(&beat), [("t", vec![0, 1])]);

        // The answer to the beat reporting the claims still assigns partition 0 only: partition
        // 1 is dropped unread, partition 0 is confirmed.
        let assignment = member.answered(beat, answer("m1", &[("t", &[0])]), now);
        assert_eq!(assignment.commit_first(), None);
        let settled = member.settle(assignment, now);
        assert!(settled.stop.is_empty());
        let confirm = settled.confirm.expect("partition 0 confirmed");
        assert_eq!(confirm.topics(), ["t"]);
        let committed = HashMap::from([(("t".to_string(), 0), 42)]);
        assert_eq!(
            member.offsets_fetched(confirm, &committed),
            [StartFetch {
                tp: tp("t", 0),
                start: Start::Offset(42),
                committed: Some(42)
            }]
        );
        assert!(!member.has_claims());
        assert_eq!(owned(&member.heartbeat(now)), [("t", vec![0])]);
    }

    #[test]
    fn a_partition_without_a_committed_offset_starts_at_the_configured_start() {
        let now = Instant::now();
        let topics = ["t".to_string()];
        let mut member = GroupMember::new("g", &topics, settings(), now);
        beat_answered(&mut member, answer("m1", &[("t", &[3])]), now);
        let settled = beat_answered(&mut member, answer("m1", &[("t", &[3])]), now);
        let started = member.offsets_fetched(settled.confirm.expect("confirmed"), &HashMap::new());
        assert_eq!(
            started,
            [StartFetch {
                tp: tp("t", 3),
                start: Start::Earliest,
                committed: None
            }]
        );
    }

    #[test]
    fn a_failed_offset_look_up_keeps_the_claims_and_retries_unless_joining() {
        let now = Instant::now();
        let topics = ["t".to_string()];
        let mut member = GroupMember::new("g", &topics, settings(), now);
        beat_answered(&mut member, answer("m1", &[("t", &[0])]), now);
        let settled = beat_answered(&mut member, answer("m1", &[("t", &[0])]), now);
        assert!(settled.confirm.is_some());
        assert!(member.offsets_failed(now), "joining: the error is returned");
        member.joined();
        assert!(!member.offsets_failed(now));
        assert!(member.has_claims());
        assert_eq!(member.next_wake(), now + RETRY_AFTER);
        assert_eq!(owned(&member.heartbeat(now)), [("t", vec![0])]);
    }

    #[test]
    fn a_revoked_partition_is_committed_then_stopped_then_released() {
        let now = Instant::now();
        let mut member = member_reading(&[0, 1], now);
        let beat = member.heartbeat(now);
        let assignment = member.answered(beat, answer("m1", &[("t", &[0])]), now);
        // Commit first ...
        assert_eq!(assignment.commit_first(), Some(&[tp("t", 1)][..]));
        // ... and until it is done and the fetcher stopped, the member still reports it.
        assert_eq!(owned(&member.heartbeat(now)), [("t", vec![0, 1])]);
        let later = now + Duration::from_millis(10);
        let settled = member.settle(assignment, later);
        assert_eq!(settled.stop, [tp("t", 1)]);
        assert!(settled.confirm.is_none());
        // Released at once.
        assert_eq!(member.next_wake(), later);
        assert_eq!(owned(&member.heartbeat(later)), [("t", vec![0])]);
    }

    #[test]
    fn without_auto_commit_a_revoked_partition_just_stops() {
        let now = Instant::now();
        let topics = ["t".to_string()];
        let settings = Settings {
            auto_commit: false,
            ..settings()
        };
        let mut member = GroupMember::new("g", &topics, settings, now);
        beat_answered(&mut member, answer("m1", &[("t", &[0])]), now);
        let settled = beat_answered(&mut member, answer("m1", &[("t", &[0])]), now);
        member.offsets_fetched(settled.confirm.expect("confirmed"), &HashMap::new());
        member.joined();
        let beat = member.heartbeat(now);
        let assignment = member.answered(beat, answer("m1", &[]), now);
        assert_eq!(assignment.commit_first(), None);
        assert_eq!(member.settle(assignment, now).stop, [tp("t", 0)]);
        assert_eq!(
            member.closing(),
            Closing {
                commit: false,
                leave: Some("m1".into())
            }
        );
    }

    #[test]
    fn not_found_drops_every_partition_without_committing_and_rejoins() {
        let now = Instant::now();
        let mut member = member_reading(&[0, 1], now);
        // A claim pending as well.
        let settled = beat_answered(&mut member, answer("m1", &[("t", &[0, 1, 2])]), now);
        assert!(settled.confirm.is_none());
        assert!(member.has_claims());

        let later = now + Duration::from_secs(1);
        let beat = member.heartbeat(later);
        let failed = member.failed(beat, BeatError::UnknownMember, later);
        assert_eq!(
            failed,
            Failed::Rejoin {
                stop: vec![tp("t", 0), tp("t", 1)],
                reason: LostBecause::UnknownMember
            }
        );
        assert_eq!(member.member_id(), "");
        assert!(!member.has_claims());
        assert!(member.due(later).heartbeat);
        let rejoin = member.heartbeat(later);
        assert_eq!(rejoin.member_id, "");
        assert!(rejoin.owned.is_empty());
        // No membership, nothing to leave.
        assert_eq!(member.closing().leave, None);

        // A rejoin that fails in a way retrying cannot fix goes back to the caller; one that
        // may succeed later is retried.
        assert_eq!(
            member.failed(rejoin, BeatError::UnknownMember, later),
            Failed::GiveUp
        );
        let rejoin = member.heartbeat(later);
        assert_eq!(
            member.failed(rejoin, BeatError::Other, later),
            Failed::GiveUp
        );
        let rejoin = member.heartbeat(later);
        assert_eq!(
            member.failed(rejoin, BeatError::Retryable, later),
            Failed::Retry
        );
    }

    #[test]
    fn no_successful_heartbeat_for_the_session_timeout_drops_everything() {
        let now = Instant::now();
        let mut member = member_reading(&[0], now);
        let soon = now + Duration::from_secs(8);
        let beat = member.heartbeat(soon);
        assert_eq!(
            member.failed(beat, BeatError::Retryable, soon),
            Failed::Retry
        );
        assert_eq!(member.member_id(), "m1");
        let expired = now + Duration::from_secs(9);
        let beat = member.heartbeat(expired);
        assert_eq!(
            member.failed(beat, BeatError::Other, expired),
            Failed::Rejoin {
                stop: vec![tp("t", 0)],
                reason: LostBecause::SessionExpired
            }
        );
        assert_eq!(member.member_id(), "");
    }

    #[test]
    fn a_new_member_id_is_used_from_the_next_heartbeat_on() {
        let now = Instant::now();
        let mut member = member_reading(&[0], now);
        let settled = beat_answered(&mut member, answer("m2", &[("t", &[0])]), now);
        assert!(settled.stop.is_empty() && settled.confirm.is_none());
        assert_eq!(member.member_id(), "m2");
        let beat = member.heartbeat(now);
        assert_eq!(beat.member_id, "m2");
        assert_eq!(owned(&beat), [("t", vec![0])]);
        assert_eq!(member.closing().leave.as_deref(), Some("m2"));
    }

    #[test]
    fn close_commits_then_leaves() {
        let now = Instant::now();
        let member = member_reading(&[0], now);
        assert_eq!(
            member.closing(),
            Closing {
                commit: true,
                leave: Some("m1".into())
            }
        );
    }

    #[test]
    fn auto_commit_is_due_every_interval() {
        let now = Instant::now();
        let mut member = member_reading(&[0], now);
        assert!(!member.due(now).commit);
        let at = now + Duration::from_secs(5);
        assert!(member.due(at).commit);
        assert!(!member.due(at).commit, "scheduled again");
        assert!(member.due(at + Duration::from_secs(5)).commit);
    }

    #[test]
    fn the_coordinators_interval_is_followed_but_not_below_50_ms() {
        let now = Instant::now();
        let topics = ["t".to_string()];
        let mut member = GroupMember::new("g", &topics, settings(), now);
        let mut fast = answer("m1", &[]);
        fast.heartbeat_interval_ms = 1;
        beat_answered(&mut member, fast, now);
        assert_eq!(member.next_wake(), now + MIN_INTERVAL);
        // A beat waits at least a second for its answer.
        assert_eq!(member.heartbeat(now).deadline, now + MIN_BEAT_WAIT);
    }
}
