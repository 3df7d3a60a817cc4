//! Retention of a [`PartitionLog`]: which oldest segments the configured limits remove (by age
//! and by total size), as a plan or applied at once.
//!
//! Invariants:
//! - retention removes whole sealed segments from the front, oldest first, and stops at the
//!   first segment it keeps; the active segment is never removed;
//! - a segment is expired when its newest record is older than `retention_ms` (or it holds no
//!   record); a segment is oversized while the log without it would still hold at least
//!   `retention_bytes`;
//! - [`PartitionLog::retention_plan`] and [`PartitionLog::apply_retention`] apply the same rule
//!   at the same `now_ms`: what the plan keeps is what applying would keep, given no append or
//!   cut in between.
//!
//! Not handled here: the clock (callers pass `now_ms`), scheduling passes, and deleting the
//! files — applying goes through prefix truncation's `delete_front` (see the `truncate`
//! module), which keeps its crash ordering.

use super::{LogState, PartitionLog};
use crate::error::Result;
use crate::segment::Segment;

/// What a retention pass removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionReport {
    pub deleted_segments: usize,
    pub deleted_bytes: u64,
    pub log_start_offset: u64,
}

/// Where retention would cut the log (see [`PartitionLog::retention_plan`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPlan {
    /// The log start offset after the cut: the base offset of the first segment kept.
    pub log_start_offset: u64,
    /// The entry index of the first batch kept.
    pub first_index: u64,
    pub deleted_segments: usize,
}

impl PartitionLog {
    /// Applies retention by age and size at time `now_ms` (ms since the Unix epoch): deletes the
    /// oldest sealed segments whose newest record is older than `retention_ms`, and while the log
    /// without the oldest segment is still at least `retention_bytes`. Never deletes the active
    /// segment.
    pub fn apply_retention(&self, now_ms: i64) -> Result<RetentionReport> {
        let mut state = self.write_state()?;
        let start = state.log_start_offset;
        let mut expired = self.retention_rule(&state, now_ms);
        let result = self.delete_front(&mut state, start, |segment, _| expired(segment));
        self.guard(result)
    }

    /// What [`Self::apply_retention`] at `now_ms` would keep, without deleting anything: the
    /// base offset and first entry index of the first segment it would keep, or `None` when it
    /// would delete nothing. A replicated log uses this to agree on the cut (a Raft purge point)
    /// before removing data with [`Self::truncate_prefix`].
    pub fn retention_plan(&self, now_ms: i64) -> Result<Option<RetentionPlan>> {
        let state = self.read_state()?;
        let mut expired = self.retention_rule(&state, now_ms);
        let mut doomed = 0;
        while doomed + 1 < state.segments.len() && expired(&state.segments[doomed]) {
            doomed += 1;
        }
        if doomed == 0 {
            return Ok(None);
        }
        let kept = &state.segments[doomed];
        Ok(Some(RetentionPlan {
            log_start_offset: kept.base_offset,
            first_index: kept.first_index.unwrap_or(state.next.next_index),
            deleted_segments: doomed,
        }))
    }

    /// The retention rule at `now_ms`, applied to segments oldest first: true for each segment
    /// that retention removes (by age, or while the rest is still at least the size limit).
    fn retention_rule(
        &self,
        state: &LogState,
        now_ms: i64,
    ) -> impl FnMut(&Segment) -> bool + use<> {
        let config = self.shared.config().clone();
        let mut total: u64 = state.segments.iter().map(|s| s.size).sum();
        let expired_before = config
            .retention_ms
            .map(|ms| now_ms.saturating_sub(i64::try_from(ms).unwrap_or(i64::MAX)));
        let retention_bytes = config.retention_bytes;
        move |segment: &Segment| {
            let expired = expired_before
                .is_some_and(|limit| segment.max_timestamp.is_none_or(|max| max < limit));
            let oversized = retention_bytes.is_some_and(|limit| total - segment.size >= limit);
            if expired || oversized {
                total -= segment.size;
                true
            } else {
                false
            }
        }
    }
}
