//! Per-partition log settings. Defaults suit a single node on a laptop and are safe: appends are
//! durable (fsync, group commit) before they are acknowledged.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Result, StorageError};
use weir_format::batch::{HEADER_LEN, MAX_BATCH_LEN};

/// When appended data reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Every append is synced (fdatasync) before it counts as durable; appends that arrive while a
    /// sync runs share the next one (group commit).
    #[default]
    Always,
    /// A background sync every `ms` milliseconds. A crash can lose up to that much acknowledged
    /// data.
    Interval { ms: u64 },
    /// No sync except on explicit `flush`, `wait_durable` and close; the OS writes back when it
    /// likes. A crash can lose anything not yet written back.
    Never,
}

/// Settings of one partition log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LogConfig {
    /// A segment rolls when the next batch would take it past this size.
    pub segment_bytes: u64,
    /// A segment rolls once its first batch is this old (None: never by age).
    pub segment_ms: Option<u64>,
    /// Retention keeps the log at or under this many bytes by deleting whole old segments.
    pub retention_bytes: Option<u64>,
    /// Retention deletes segments whose newest record is older than this.
    pub retention_ms: Option<u64>,
    /// An offset-index entry (and possibly a time-index entry) every this many bytes of log.
    pub index_interval_bytes: u32,
    /// Largest batch an append accepts, header included.
    pub max_batch_bytes: u32,
    pub durability: Durability,
}

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 1 << 30,
            segment_ms: Some(7 * DAY_MS),
            retention_bytes: None,
            retention_ms: Some(7 * DAY_MS),
            index_interval_bytes: 4096,
            max_batch_bytes: 8 << 20,
            durability: Durability::Always,
        }
    }
}

/// Index positions are `u32`, so no segment may reach 4 GiB.
pub const MAX_SEGMENT_BYTES: u64 = (u32::MAX as u64) - (MAX_BATCH_LEN as u64);

impl LogConfig {
    /// Checks the settings against each other and the format's limits.
    pub fn validate(&self) -> Result<()> {
        let fail = |msg: String| Err(StorageError::InvalidConfig(msg));
        if self.segment_bytes < 1024 || self.segment_bytes > MAX_SEGMENT_BYTES {
            return fail(format!(
                "segment_bytes {} must be in [1024, {MAX_SEGMENT_BYTES}]",
                self.segment_bytes
            ));
        }
        if (self.max_batch_bytes as usize) < HEADER_LEN
            || self.max_batch_bytes as usize > MAX_BATCH_LEN
        {
            return fail(format!(
                "max_batch_bytes {} must be in [{HEADER_LEN}, {MAX_BATCH_LEN}]",
                self.max_batch_bytes
            ));
        }
        if self.index_interval_bytes == 0 {
            return fail("index_interval_bytes must be positive".into());
        }
        if let Durability::Interval { ms: 0 } = self.durability {
            return fail("durability interval must be at least 1 ms".into());
        }
        if self.segment_ms == Some(0) {
            return fail("segment_ms must be positive".into());
        }
        Ok(())
    }

    pub(crate) fn segment_age_limit(&self) -> Option<Duration> {
        self.segment_ms.map(Duration::from_millis)
    }
}
