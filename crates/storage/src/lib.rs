//! # weir-storage
//!
//! The per-partition segment log that every Weir partition lives on. It knows nothing of Raft,
//! gRPC or tokio: it stores batches, assigns offsets and entry indexes, finds data by offset,
//! entry index or time, keeps itself within retention, and survives crashes.
//!
//! Batches are in the format of [`weir_format::batch`] (pure, shared with the client; fuzzed there).
//! - [`PartitionLog`]: a directory of segments with append, read, truncation at both ends,
//!   retention and recovery.
//! - [`Durability`]: when appends reach the disk (`always` with group commit by default).
//! - [`fs`]: replacing a whole file atomically and durably (also used for Raft's small files).
//!
//! Invariants: offsets are dense and assigned from the log prefix (every replica gives a record
//! the same offset); an append is readable when `append` returns and durable once the group
//! commit says so; a torn or corrupt tail is cut back to the last whole batch on open, and
//! corruption in the middle stops the log ([`StorageError::Stopped`]) rather than serve it;
//! errors name the file, the offset and what was expected.
//!
//! ```
//! use weir_format::batch::{BatchBuilder, Compression, ValidBatch};
//! use weir_storage::{LogConfig, PartitionLog};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let log = PartitionLog::open(dir.path(), LogConfig::default())?;
//! let mut batch = BatchBuilder::new(Compression::Lz4);
//! batch.push(1_700_000_000_000, Some(b"key"), Some(b"value"), &[]);
//! let batch = ValidBatch::new(batch.build().expect("one record"))?;
//! let appended = log.append_durable(&batch, 1)?;
//! let read = log.read(appended.base_offset, 1 << 20)?;
//! assert_eq!(read.batches[0].records()?[0].value.as_deref(), Some(&b"value"[..]));
//! # Ok(()) }
//! ```

mod config;
mod durability;
mod error;
pub mod fs;
mod index;
mod log;
mod metrics;
mod segment;

pub use config::{Durability, LogConfig, MAX_SEGMENT_BYTES};
pub use durability::{DurableCallback, Watermark};
pub use error::{Result, StorageError};
pub use log::{
    Appended, LOCK_FILE, LogBounds, META_FILE, PartitionLog, ReadBatches, RecoveryReport,
    RetentionPlan, RetentionReport, VerifyReport,
};
pub use metrics::LogMetrics;
pub use segment::{IndexRebuild, TailRepair};
