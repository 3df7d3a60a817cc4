//! Constants of the wire contract that are not messages: gRPC metadata keys and size limits that
//! the client, the broker and the peer transport must agree on. Changing one is a protocol change.

/// Trailer (gRPC response metadata) naming a partition's leader on a FAILED_PRECONDITION
/// "not the leader" answer: `ID@HOST:PORT`. Clients follow it instead of asking for metadata.
pub const LEADER_TRAILER: &str = "weir-leader";

/// Request metadata key a node sets on a request it forwards to another node: the number of hops
/// taken so far. A node never forwards a request past [`MAX_FORWARD_HOPS`].
pub const FORWARDED_HEADER: &str = "weir-forwarded";

/// How many times one request may be forwarded between nodes (a stale route plus one correction).
pub const MAX_FORWARD_HOPS: u32 = 2;

/// Largest gRPC message any Weir endpoint sends or accepts — client to node, node to node, and
/// Raft traffic between peers. It is twice [`crate::batch::MAX_BATCH_LEN`], so one batch of the
/// largest size the format allows, with its envelope, always fits.
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;

const _: () = assert!(MAX_MESSAGE_BYTES >= 2 * crate::batch::MAX_BATCH_LEN);
