//! # weir-format
//!
//! What the client and the server must agree on byte for byte, in one pure crate (no files, no
//! sockets, no async, no clock), so that both sides cannot drift:
//!
//! - [`batch`]: the batch and record format, on the wire and on disk — encode, validate (CRC),
//!   decode, re-stamp. Fuzzed (`crates/format/fuzz`) and property-tested.
//! - [`partitioner`]: the key → partition rule (Kafka's murmur2 partitioner).
//! - [`wire`]: gRPC metadata keys (leader trailer, forwarding header), message-size limits and
//!   the error contract (which status codes a client may retry).
//! - [`retry`]: the one retry policy — exponential backoff with jitter that honours the server's
//!   retry hint — used by every retry loop of the client and of the nodes.
//!
//! Invariants: decoding never panics, never allocates more than the limits in [`batch`] allow,
//! and accepts exactly what encoding produces; the partitioner never changes.

pub mod batch;
pub mod partitioner;
pub mod retry;
pub mod wire;

pub use batch::{
    BatchBuilder, BatchHeader, BatchIter, CodecError, Compression, ProducerInfo, Record,
    RecordHeader, Stamp, ValidBatch,
};
pub use partitioner::partition_for_key;
