//! # weir-proto
//!
//! Rust types and tonic services generated from `proto/` at the workspace root: the public client
//! API (`weir.v1`) and the node-to-node replication service (`weir.peer.v1`). The contract itself
//! is the `.proto` files; the rules of it that are code (batch format, partitioner, metadata keys,
//! size limits, the error contract) live in `weir-format`.
//!
//! Invariant: `weir.v1` only grows (fields and RPCs are added, never renumbered or removed);
//! `weir.peer.v1` is internal and may change between releases.

/// The public client API.
#[allow(unreachable_pub, missing_debug_implementations, clippy::all)]
pub mod v1 {
    tonic::include_proto!("weir.v1");
}

/// Node-to-node replication traffic (internal).
#[allow(unreachable_pub, missing_debug_implementations, clippy::all)]
pub mod peer {
    tonic::include_proto!("weir.peer.v1");
}

/// The encoded descriptor set of every service, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/weir_descriptor.bin"));
