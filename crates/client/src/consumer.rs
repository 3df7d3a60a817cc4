//! [`Consumer`]: reads partitions, either assigned by hand ([`Consumer::assign`]) or shared with
//! the other members of a consumer group ([`Consumer::join`]).
//!
//! Each partition read has a background fetcher task that long-polls its leader (Fetch with
//! `max_wait_ms`) and feeds one bounded channel; [`Consumer::poll`] takes from it. A fetch
//! answer that says the node throttled the caller (`throttle_time_ms`, a fetch or request rate
//! quota) makes the fetcher's next fetch from that node wait that long (in [`Client`]'s calls).
//! Every message carries the partition's *epoch*, bumped whenever the partition is revoked or
//! seeked, and messages of an older epoch are dropped — so nothing read before a seek or a
//! revocation is ever returned after it.
//!
//! Positions: a partition's position is the offset after the last record `poll` returned (or
//! where reading starts); `commit` stores exactly that, so a record returned is never committed
//! twice and a record not returned is never skipped.
//!
//! Group membership follows the protocol described above `service Groups` in the proto. What a
//! member says and does is decided by [`GroupMember`] (module `group_member`, pure: no I/O, no
//! clock); this module drives it from `poll` (call it at least every few seconds; a member that
//! stays silent for `session_timeout` loses its partitions) and only carries messages: it sends
//! the heartbeats, commits and offset look-ups the member asks for, hands back the answers, and
//! starts or stops the fetchers the member names. In short:
//! - a heartbeat every `heartbeat_interval_ms`, reporting the partitions this member reads;
//! - a partition missing from the answer is revoked: its position is committed (with
//!   auto-commit), its fetcher stops and its buffered records are dropped, and only then is it
//!   reported as no longer owned (at once, with another heartbeat) — so no partition is read by
//!   two members;
//! - a partition new in the answer is first *claimed*: reported as owned in the next heartbeat
//!   (sent at once) and read only if that heartbeat's answer still assigns it — the coordinator
//!   then knew this member reports it, so it gives it to no one else. (Reading straight away is
//!   unsafe: between the answer and this member's next heartbeat the coordinator does not know
//!   the member holds the partition and may hand it to a member that joins meanwhile.) It
//!   starts at the group's committed offset, or at the reset policy when the group has none;
//! - NOT_FOUND (the coordinator does not know the member) or no successful heartbeat
//!   for `session_timeout` drops every partition without committing and rejoins.
//!
//! Not handled yet: pausing partitions; a cap on buffered bytes other than the channel's length.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::Code;
use weir_proto::v1::{FetchResponse, HeartbeatRequest, PartitionOffset, TopicPartitions};

use crate::group_member::{
    Answer, BeatError, Failed, GroupMember, LostBecause, Settings, StartFetch, Tp,
};
use crate::{Client, ClientError, Start};

/// Where a group member starts on a partition the group has no committed offset for (and where
/// any consumer jumps when its position is outside the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResetPolicy {
    /// The oldest record still stored.
    Earliest,
    /// Only records produced from now on (Kafka's default).
    #[default]
    Latest,
    /// No jump: `poll` returns the OUT_OF_RANGE error and the partition is no longer read
    /// (Kafka's `none`) — for a reader that asked for an exact position. (A group partition
    /// without a committed offset starts at the earliest record.)
    Fail,
}

impl ResetPolicy {
    fn start(self) -> Option<Start> {
        match self {
            Self::Earliest => Some(Start::Earliest),
            Self::Latest => Some(Start::Latest),
            Self::Fail => None,
        }
    }
}

/// How a [`Consumer`] reads and commits.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Commit positions every `auto_commit_interval`, on revocation and on close (groups only).
    /// Default true.
    pub auto_commit: bool,
    /// Default 5 s.
    pub auto_commit_interval: Duration,
    /// The coordinator removes a member silent for this long (1 s to 300 s). Default 10 s.
    pub session_timeout: Duration,
    /// Start of a partition without a committed offset. Default latest.
    pub reset: ResetPolicy,
    /// Most bytes one fetch returns (0: the server's default, 1 MiB).
    pub max_bytes: u32,
    /// How long a fetch waits at the end of a partition for new records (long poll). Default
    /// 500 ms.
    pub max_wait: Duration,
    /// Most records one `poll` returns. Default 500.
    pub max_poll_records: usize,
    /// How long `poll` waits for records before returning none. Default 500 ms.
    pub poll_timeout: Duration,
    /// Shown by DescribeGroup. Default `weir-client pid N`.
    pub client_id: String,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            auto_commit: true,
            auto_commit_interval: Duration::from_secs(5),
            session_timeout: Duration::from_secs(10),
            reset: ResetPolicy::Latest,
            max_bytes: 0,
            max_wait: Duration::from_millis(500),
            max_poll_records: 500,
            poll_timeout: Duration::from_millis(500),
            client_id: format!("weir-client pid {}", std::process::id()),
        }
    }
}

/// One record read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedRecord {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    /// Ms since the Unix epoch.
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// What fetchers send.
#[derive(Debug)]
enum Fetched {
    Response {
        tp: Tp,
        epoch: u64,
        response: FetchResponse,
    },
    Error {
        tp: Tp,
        epoch: u64,
        error: ClientError,
    },
}

/// An entry of the buffer `poll` hands out from.
#[derive(Debug)]
enum Buffered {
    Record(Tp, u64, ConsumedRecord),
    /// After a response's records: the partition's next offset and high watermark.
    End {
        tp: Tp,
        epoch: u64,
        next_offset: u64,
        high_watermark: u64,
    },
    Error(Tp, u64, ClientError),
}

#[derive(Debug)]
struct PartitionState {
    epoch: u64,
    fetcher: JoinHandle<()>,
    /// Offset after the last record returned (or where reading starts, once known).
    position: Option<u64>,
    /// High watermark of the last response whose records were all returned.
    high_watermark: Option<u64>,
    /// What this consumer last committed.
    committed: Option<u64>,
}

/// Reads records of assigned partitions, or of a consumer group's share (see the module docs).
#[derive(Debug)]
pub struct Consumer {
    client: Arc<Client>,
    config: ConsumerConfig,
    partitions: BTreeMap<Tp, PartitionState>,
    next_epoch: u64,
    tx: mpsc::Sender<Fetched>,
    rx: mpsc::Receiver<Fetched>,
    buffer: VecDeque<Buffered>,
    /// The group protocol, for a group member: it decides which partitions are read.
    group: Option<GroupMember>,
}

/// Fetch answers buffered between the fetchers and `poll` (each at most `max_bytes`): the
/// read-ahead bound.
const CHANNEL_MESSAGES: usize = 32;

impl Consumer {
    /// A consumer outside any group, reading nothing yet: add partitions with
    /// [`Consumer::assign`].
    pub fn new(client: Arc<Client>, config: ConsumerConfig) -> Self {
        let (tx, rx) = mpsc::channel(CHANNEL_MESSAGES);
        Self {
            client,
            config,
            partitions: BTreeMap::new(),
            next_epoch: 1,
            tx,
            rx,
            buffer: VecDeque::new(),
            group: None,
        }
    }

    /// Joins consumer group `group` reading `topics`: the coordinator shares their partitions
    /// among the group's members. Fails for an unknown topic.
    pub async fn join(
        client: Arc<Client>,
        group: &str,
        topics: &[String],
        config: ConsumerConfig,
    ) -> Result<Self, ClientError> {
        if group.is_empty() {
            return Err(ClientError::Usage("a group name cannot be empty".into()));
        }
        if topics.is_empty() {
            return Err(ClientError::Usage(
                "a group member reads at least one topic".into(),
            ));
        }
        let secs = config.session_timeout.as_secs_f64();
        if !(1.0..=300.0).contains(&secs) {
            return Err(ClientError::Usage(format!(
                "session timeout {:?} is outside 1 s to 300 s",
                config.session_timeout
            )));
        }
        for topic in topics {
            client.partition_count(topic).await?;
        }
        let settings = Settings {
            session_timeout: config.session_timeout,
            auto_commit: config.auto_commit,
            auto_commit_interval: config.auto_commit_interval,
            // `Fail` is for exact positions; a group partition nobody committed yet starts at
            // the oldest record under it.
            uncommitted_start: config.reset.start().unwrap_or(Start::Earliest),
        };
        let mut consumer = Self::new(client, config);
        consumer.group = Some(GroupMember::new(group, topics, settings, std_now()));
        consumer.heartbeat().await?;
        if consumer.group.as_ref().is_some_and(GroupMember::has_claims) {
            // Claim what the first answer assigned, and start reading it.
            consumer.heartbeat().await?;
        }
        if let Some(member) = &mut consumer.group {
            member.joined();
        }
        Ok(consumer)
    }

    /// Reads `partitions` of `topic` (all of them when empty) from `start`, outside any group.
    /// Partitions already read are restarted at `start`.
    pub async fn assign(
        &mut self,
        topic: &str,
        partitions: &[u32],
        start: Start,
    ) -> Result<(), ClientError> {
        if self.group.is_some() {
            return Err(ClientError::Usage(
                "a group member's partitions come from the group; use seek to move".into(),
            ));
        }
        let count = self.client.partition_count(topic).await?;
        let partitions: Vec<u32> = if partitions.is_empty() {
            (0..count).collect()
        } else {
            partitions.to_vec()
        };
        if let Some(&bad) = partitions.iter().find(|&&p| p >= count) {
            return Err(ClientError::UnknownPartition {
                topic: topic.to_string(),
                partition: bad,
                partitions: count,
            });
        }
        let topic: Arc<str> = Arc::from(topic);
        for partition in partitions {
            self.start_partition((Arc::clone(&topic), partition), start);
        }
        Ok(())
    }

    /// The partitions this consumer reads now.
    pub fn assignment(&self) -> Vec<(String, u32)> {
        self.partitions
            .keys()
            .map(|(t, p)| (t.to_string(), *p))
            .collect()
    }

    /// The position of each partition read whose position is known: the offset after the last
    /// record returned, or where reading starts.
    pub fn positions(&self) -> BTreeMap<(String, u32), u64> {
        self.partitions
            .iter()
            .filter_map(|((t, p), s)| s.position.map(|o| ((t.to_string(), *p), o)))
            .collect()
    }

    /// Whether every partition read has returned all records below the high watermark seen
    /// by its latest fetch, and no partition the group assigned waits to be read (true when
    /// no partition is read or assigned).
    pub fn caught_up(&self) -> bool {
        !self.group.as_ref().is_some_and(GroupMember::has_claims)
            && self
                .partitions
                .values()
                .all(|s| match (s.position, s.high_watermark) {
                    (Some(position), Some(hwm)) => position >= hwm,
                    _ => false,
                })
    }

    /// The group member id: `None` outside a group; empty between losing membership and
    /// rejoining.
    pub fn member_id(&self) -> Option<&str> {
        self.group.as_ref().map(GroupMember::member_id)
    }

    /// Continues reading `partition` of `topic` at `offset`. Records buffered from before are
    /// dropped.
    pub fn seek(&mut self, topic: &str, partition: u32, offset: u64) -> Result<(), ClientError> {
        self.seek_to(topic, partition, Start::Offset(offset))
    }

    /// Continues reading at the first record at or after `timestamp_ms` (ms since the Unix
    /// epoch); the high watermark when every record is older.
    pub fn seek_to_timestamp(
        &mut self,
        topic: &str,
        partition: u32,
        timestamp_ms: i64,
    ) -> Result<(), ClientError> {
        self.seek_to(topic, partition, Start::Timestamp(timestamp_ms))
    }

    /// Continues reading a partition this consumer reads at `start`.
    pub fn seek_to(
        &mut self,
        topic: &str,
        partition: u32,
        start: Start,
    ) -> Result<(), ClientError> {
        let Some(tp) = self
            .partitions
            .keys()
            .find(|(t, p)| &**t == topic && *p == partition)
            .cloned()
        else {
            return Err(ClientError::Usage(format!(
                "partition {topic}/{partition} is not read by this consumer"
            )));
        };
        self.start_partition(tp, start);
        Ok(())
    }

    /// Starts (or restarts) reading `tp` at `start`, under a new epoch.
    fn start_partition(&mut self, tp: Tp, start: Start) {
        let committed = self.stop_partition(&tp).and_then(|s| s.committed);
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        let fetcher = tokio::spawn(fetch_loop(
            Arc::clone(&self.client),
            tp.clone(),
            epoch,
            start,
            self.config.clone(),
            self.tx.clone(),
        ));
        let position = match start {
            Start::Offset(offset) => Some(offset),
            _ => None,
        };
        self.partitions.insert(
            tp,
            PartitionState {
                epoch,
                fetcher,
                position,
                high_watermark: None,
                committed,
            },
        );
    }

    /// Stops reading `tp`: its fetcher ends and its buffered records are dropped.
    fn stop_partition(&mut self, tp: &Tp) -> Option<PartitionState> {
        let state = self.partitions.remove(tp)?;
        state.fetcher.abort();
        self.buffer.retain(|b| match b {
            Buffered::Record(t, ..) | Buffered::End { tp: t, .. } | Buffered::Error(t, ..) => {
                t != tp
            }
        });
        Some(state)
    }

    /// Records read since the last call: waits up to `poll_timeout` for some; returns at most
    /// `max_poll_records`. Also keeps group membership and auto-commit going.
    pub async fn poll(&mut self) -> Result<Vec<ConsumedRecord>, ClientError> {
        self.poll_records(self.config.max_poll_records).await
    }

    /// [`Consumer::poll`] returning at most `max` records. Cancel-safe: dropping the future
    /// (for example in `tokio::select!`) loses no record and leaves membership consistent.
    pub async fn poll_records(&mut self, max: usize) -> Result<Vec<ConsumedRecord>, ClientError> {
        let deadline = Instant::now() + self.config.poll_timeout;
        loop {
            self.maintain_group().await?;
            let (records, error) = self.take_buffered(max.max(1));
            if !records.is_empty() {
                return Ok(records);
            }
            if let Some(error) = error {
                return Err(error);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let mut wake = deadline;
            if let Some(group) = &self.group {
                wake = wake.min(Instant::from_std(group.next_wake()));
            }
            if let Ok(Some(message)) = tokio::time::timeout_at(wake, self.rx.recv()).await {
                self.accept(message);
                while let Ok(message) = self.rx.try_recv() {
                    self.accept(message);
                }
            }
        }
    }

    /// The records as a stream (one `poll` per record at most, so a record the stream never
    /// yielded is never counted as read). Errors are yielded and the stream goes on.
    pub fn stream(&mut self) -> impl Stream<Item = Result<ConsumedRecord, ClientError>> + '_ {
        futures::stream::unfold(self, |consumer| async move {
            loop {
                match consumer.poll_records(1).await {
                    Ok(mut records) => {
                        if let Some(record) = records.pop() {
                            return Some((Ok(record), consumer));
                        }
                    }
                    Err(err) => return Some((Err(err), consumer)),
                }
            }
        })
    }

    /// Files a fetcher message into the buffer, unless it is from an older epoch.
    fn accept(&mut self, message: Fetched) {
        let (tp, epoch) = match &message {
            Fetched::Response { tp, epoch, .. } | Fetched::Error { tp, epoch, .. } => {
                (tp.clone(), *epoch)
            }
        };
        if self.partitions.get(&tp).map(|s| s.epoch) != Some(epoch) {
            return;
        }
        match message {
            Fetched::Response { response, .. } => {
                for r in response.records {
                    let record = ConsumedRecord {
                        topic: tp.0.to_string(),
                        partition: tp.1,
                        offset: r.offset,
                        timestamp_ms: r.timestamp_ms,
                        key: r.key,
                        value: r.value,
                        headers: r.headers.into_iter().map(|h| (h.key, h.value)).collect(),
                    };
                    self.buffer
                        .push_back(Buffered::Record(tp.clone(), epoch, record));
                }
                self.buffer.push_back(Buffered::End {
                    tp,
                    epoch,
                    next_offset: response.next_offset,
                    high_watermark: response.high_watermark,
                });
            }
            Fetched::Error { error, .. } => {
                self.buffer.push_back(Buffered::Error(tp, epoch, error))
            }
        }
    }

    /// Up to `max` buffered records (advancing positions), or the first error in line.
    fn take_buffered(&mut self, max: usize) -> (Vec<ConsumedRecord>, Option<ClientError>) {
        let mut records = Vec::new();
        while let Some(entry) = self.buffer.front() {
            if let Buffered::Record(..) = entry
                && records.len() >= max
            {
                break;
            }
            if let Buffered::Error(..) = entry
                && !records.is_empty()
            {
                break;
            }
            let Some(entry) = self.buffer.pop_front() else {
                break;
            };
            match entry {
                Buffered::Record(tp, epoch, record) => {
                    if let Some(state) = self.partitions.get_mut(&tp)
                        && state.epoch == epoch
                    {
                        state.position = Some(record.offset + 1);
                        records.push(record);
                    }
                }
                Buffered::End {
                    tp,
                    epoch,
                    next_offset,
                    high_watermark,
                } => {
                    if let Some(state) = self.partitions.get_mut(&tp)
                        && state.epoch == epoch
                    {
                        state.position = Some(next_offset);
                        state.high_watermark = Some(high_watermark);
                    }
                }
                Buffered::Error(tp, epoch, error) => {
                    if self.partitions.get(&tp).map(|s| s.epoch) == Some(epoch) {
                        return (records, Some(error));
                    }
                }
            }
        }
        (records, None)
    }

    /// Commits the position of every partition read (groups only): the offset after the last
    /// record returned.
    pub async fn commit(&mut self) -> Result<(), ClientError> {
        let all: Vec<Tp> = self.partitions.keys().cloned().collect();
        self.commit_partitions(&all).await
    }

    async fn commit_partitions(&mut self, tps: &[Tp]) -> Result<(), ClientError> {
        let Some(group) = &self.group else {
            return Err(ClientError::Usage(
                "commit needs a consumer group (Consumer::join)".into(),
            ));
        };
        let offsets: Vec<PartitionOffset> = tps
            .iter()
            .filter_map(|tp| {
                let state = self.partitions.get(tp)?;
                let position = state.position?;
                (state.committed != Some(position)).then(|| PartitionOffset {
                    topic: tp.0.to_string(),
                    partition: tp.1,
                    offset: position,
                })
            })
            .collect();
        if offsets.is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + self.group_call_limit();
        self.client
            .commit_offsets_until(group.group(), group.member_id(), &offsets, deadline)
            .await?;
        for offset in offsets {
            let tp: Tp = (Arc::from(offset.topic.as_str()), offset.partition);
            if let Some(state) = self.partitions.get_mut(&tp) {
                state.committed = Some(offset.offset);
            }
        }
        Ok(())
    }

    /// How long a group call made while polling may keep retrying: heartbeats wait meanwhile,
    /// and the member must not go silent for its session timeout.
    fn group_call_limit(&self) -> Duration {
        (self.config.session_timeout / 2).max(Duration::from_millis(500))
    }

    /// Heartbeat and auto-commit, when due.
    async fn maintain_group(&mut self) -> Result<(), ClientError> {
        let Some(group) = &mut self.group else {
            return Ok(());
        };
        let due = group.due(std_now());
        if due.commit
            && let Err(err) = self.commit().await
        {
            tracing::warn!(%err, "auto-commit failed; retrying at the next interval");
        }
        if due.heartbeat {
            self.heartbeat().await?;
        }
        Ok(())
    }

    /// One heartbeat and what its answer asks for: [`GroupMember`] decides, this carries the
    /// messages. While joining, failures are returned; later ones are retried on the next beat
    /// (or lead to a rejoin).
    async fn heartbeat(&mut self) -> Result<(), ClientError> {
        let Some(group) = &self.group else {
            return Ok(());
        };
        let beat = group.heartbeat(std_now());
        let request = HeartbeatRequest {
            group: beat.group.clone(),
            member_id: beat.member_id.clone(),
            topics: beat.topics.clone(),
            owned: beat
                .owned
                .iter()
                .map(|(topic, partitions)| TopicPartitions {
                    topic: topic.clone(),
                    partitions: partitions.clone(),
                })
                .collect(),
            session_timeout_ms: beat.session_timeout_ms,
            client_id: self.config.client_id.clone(),
        };
        let answer = self
            .client
            .heartbeat(request, Instant::from_std(beat.deadline))
            .await;
        let now = std_now();
        let Some(group) = &mut self.group else {
            return Ok(());
        };
        let answer = match answer {
            Ok(answer) => answer,
            Err(err) => {
                match group.failed(beat, beat_error(&err), now) {
                    // Joining failed, or rejoining failed in a way retrying cannot fix (an
                    // unknown topic, a bad setting).
                    Failed::GiveUp => return Err(err),
                    Failed::Retry => tracing::warn!(%err, "heartbeat failed"),
                    Failed::Rejoin { stop, reason } => {
                        match reason {
                            LostBecause::UnknownMember => tracing::warn!(
                                %err,
                                "the group coordinator no longer knows this member; rejoining"
                            ),
                            LostBecause::SessionExpired => {
                                tracing::warn!(%err, "heartbeat failed");
                                tracing::warn!(
                                    "no heartbeat succeeded for the session timeout; dropping partitions and rejoining"
                                );
                            }
                        }
                        for tp in &stop {
                            self.stop_partition(tp);
                        }
                    }
                }
                return Ok(());
            }
        };
        let answer = Answer {
            member_id: answer.member_id,
            generation: answer.generation,
            heartbeat_interval_ms: answer.heartbeat_interval_ms,
            assigned: answer
                .assigned
                .into_iter()
                .map(|tps| (tps.topic, tps.partitions))
                .collect(),
        };
        let assignment = group.answered(beat, answer, now);
        // Positions only move when `poll` returns records, so what is committed here is final.
        // Stopping comes after the commit, so a poll cancelled while committing leaves
        // everything as it was (the next heartbeat revokes again).
        if let Some(revoked) = assignment.commit_first()
            && let Err(err) = self.commit_partitions(revoked).await
        {
            tracing::warn!(%err, "committing revoked partitions failed; their next reader may repeat records");
        }
        let Some(group) = &mut self.group else {
            return Ok(());
        };
        let settled = group.settle(assignment, std_now());
        for tp in &settled.stop {
            self.stop_partition(tp);
        }
        let Some(confirmation) = settled.confirm else {
            return Ok(());
        };
        let Some(group) = &self.group else {
            return Ok(());
        };
        let deadline = Instant::now() + self.group_call_limit();
        let fetched = self
            .client
            .fetch_offsets_until(group.group(), &confirmation.topics(), deadline)
            .await;
        let Some(group) = &mut self.group else {
            return Ok(());
        };
        match fetched {
            Ok(offsets) => {
                let committed: HashMap<(String, u32), u64> = offsets
                    .into_iter()
                    .map(|o| ((o.topic, o.partition), o.offset))
                    .collect();
                for StartFetch {
                    tp,
                    start,
                    committed,
                } in group.offsets_fetched(confirmation, &committed)
                {
                    self.start_partition(tp.clone(), start);
                    if let Some(state) = self.partitions.get_mut(&tp) {
                        state.committed = committed;
                    }
                }
                Ok(())
            }
            Err(err) => {
                if group.offsets_failed(now) {
                    return Err(err);
                }
                tracing::warn!(%err, "starting newly assigned partitions failed; retrying");
                Ok(())
            }
        }
    }

    /// Commits (with auto-commit), leaves the group, and stops reading. Every step is tried;
    /// the first failure is returned.
    pub async fn close(mut self) -> Result<(), ClientError> {
        let mut result = Ok(());
        if let Some(closing) = self.group.as_ref().map(GroupMember::closing) {
            if closing.commit {
                result = self.commit().await;
            }
            if let (Some(group), Some(member_id)) = (&self.group, &closing.leave) {
                let left = self.client.leave_group(group.group(), member_id).await;
                if result.is_ok() {
                    result = left;
                }
            }
        }
        let all: Vec<Tp> = self.partitions.keys().cloned().collect();
        for tp in &all {
            self.stop_partition(tp);
        }
        result
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        for state in self.partitions.values() {
            state.fetcher.abort();
        }
    }
}

/// The protocol's view of a failed heartbeat.
fn beat_error(err: &ClientError) -> BeatError {
    if retryable_group_error(err) {
        BeatError::Retryable
    } else if matches!(err.code(), Some(Code::FailedPrecondition | Code::NotFound)) {
        // NOT_FOUND per the proto. A FAILED_PRECONDITION without a leader hint (a heartbeat
        // never gets one otherwise) is treated the same.
        BeatError::UnknownMember
    } else {
        BeatError::Other
    }
}

/// The group protocol's clock: the runtime's (so tests with paused time see it), as a std
/// instant.
fn std_now() -> std::time::Instant {
    Instant::now().into_std()
}

/// Whether a failed heartbeat may succeed when repeated (the client already retried it until
/// its deadline; these are the failures a later beat can get past).
fn retryable_group_error(err: &ClientError) -> bool {
    match err {
        ClientError::Timeout { .. } => true,
        ClientError::Status { status } => matches!(
            status.code(),
            Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Internal
                | Code::Unknown
                | Code::Cancelled
        ),
        _ => false,
    }
}

/// One partition's fetcher: long-polls from `start` and sends each answer (or error) tagged
/// with `epoch`, until aborted or the consumer is gone.
async fn fetch_loop(
    client: Arc<Client>,
    tp: Tp,
    epoch: u64,
    start: Start,
    config: ConsumerConfig,
    tx: mpsc::Sender<Fetched>,
) {
    let mut start = start;
    let mut backoff = weir_format::retry::RetryPolicy::BACKGROUND.backoff();
    loop {
        let deadline = Instant::now() + client.retry_for;
        let message = match client
            .fetch_until(
                &tp.0,
                tp.1,
                start,
                config.max_bytes,
                config.max_wait,
                deadline,
                true,
            )
            .await
        {
            Ok(response) => {
                backoff.reset();
                start = Start::Offset(response.next_offset);
                Fetched::Response {
                    tp: tp.clone(),
                    epoch,
                    response,
                }
            }
            Err(err) if err.code() == Some(Code::OutOfRange) => {
                let Some(reset) = config.reset.start() else {
                    let message = Fetched::Error {
                        tp: tp.clone(),
                        epoch,
                        error: err,
                    };
                    let _ = tx.send(message).await;
                    return;
                };
                tracing::warn!(topic = %tp.0, partition = tp.1, %err, policy = ?config.reset, "position outside the log; resetting");
                start = reset;
                continue;
            }
            Err(error) => {
                let message = Fetched::Error {
                    tp: tp.clone(),
                    epoch,
                    error,
                };
                if tx.send(message).await.is_err() {
                    return;
                }
                tokio::time::sleep(backoff.next_delay(None)).await;
                continue;
            }
        };
        if tx.send(message).await.is_err() {
            return;
        }
    }
}
