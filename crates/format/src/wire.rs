//! Constants of the wire contract that are not messages: gRPC metadata keys and size limits that
//! the client, the broker and the peer transport must agree on. Changing one is a protocol change.

/// Trailer (gRPC response metadata) naming a partition's leader on a FAILED_PRECONDITION
/// "not the leader" answer: `ID@HOST:PORT`. Clients follow it instead of asking for metadata.
pub const LEADER_TRAILER: &str = "weir-leader";

/// Request metadata key a node sets on a request it forwards to another node: the number of hops
/// taken so far. A node never forwards a request past [`MAX_FORWARD_HOPS`].
pub const FORWARDED_HEADER: &str = "weir-forwarded";

/// Response header (initial gRPC metadata) on an answer a node held back because the caller is
/// over a rate quota: the throttle time in milliseconds (decimal). Set only on throttled answers;
/// a client waits that long before its next request to that node.
pub const THROTTLE_HEADER: &str = "weir-throttle-ms";

/// How many times one request may be forwarded between nodes (a stale route plus one correction).
pub const MAX_FORWARD_HOPS: u32 = 2;

/// Largest gRPC message any Weir endpoint sends or accepts — client to node, node to node, and
/// Raft traffic between peers. It is twice [`crate::batch::MAX_BATCH_LEN`], so one batch of the
/// largest size the format allows, with its envelope, always fits.
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;

const _: () = assert!(MAX_MESSAGE_BYTES >= 2 * crate::batch::MAX_BATCH_LEN);

/// Whether a client may send a failed request again (see [`ERROR_CONTRACT`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Retry after the delay in the status's `google.rpc.RetryInfo` (or a backoff).
    Yes,
    /// Send it to the leader named in the [`LEADER_TRAILER`]; without the trailer it is final.
    AtLeader,
    /// Final: the same request fails the same way.
    No,
}

/// What a failed write tells about its records (see [`ERROR_CONTRACT`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Nothing of the request is in the log.
    No,
    /// The records may or may not be in the log (an idempotent producer's retry writes them at
    /// most once).
    Unknown,
    /// An earlier attempt of the same idempotent batch wrote them.
    Before,
}

/// gRPC status codes (their numbers in the gRPC specification) that Weir answers with.
pub mod code {
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const UNAUTHENTICATED: i32 = 16;
    pub const PERMISSION_DENIED: i32 = 7;
    pub const NOT_FOUND: i32 = 5;
    pub const ALREADY_EXISTS: i32 = 6;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const FAILED_PRECONDITION: i32 = 9;
    pub const ABORTED: i32 = 10;
    pub const OUT_OF_RANGE: i32 = 11;
    pub const INTERNAL: i32 = 13;
    pub const UNAVAILABLE: i32 = 14;
    pub const DATA_LOSS: i32 = 15;
}

/// The metadata key of a forwarded call's principal (`User:alice`): set by the node that
/// authenticated the caller, believed only from a peer that proved a node certificate.
pub const PRINCIPAL_HEADER: &str = "weir-principal";

/// Every status code a Weir node answers with, what retrying can do and what a failed write
/// tells about its records — the table at the top of `proto/weir/v1/weir.proto` (a test in
/// `weir-broker` holds the two together). The server maps its errors into these codes; the Rust
/// client decides its retries by this table.
pub const ERROR_CONTRACT: &[(i32, Retry, Written)] = &[
    (code::INVALID_ARGUMENT, Retry::No, Written::No),
    (code::UNAUTHENTICATED, Retry::No, Written::No),
    (code::PERMISSION_DENIED, Retry::No, Written::No),
    (code::NOT_FOUND, Retry::No, Written::No),
    (code::ALREADY_EXISTS, Retry::No, Written::Before),
    (code::FAILED_PRECONDITION, Retry::AtLeader, Written::No),
    (code::UNAVAILABLE, Retry::Yes, Written::Unknown),
    (code::OUT_OF_RANGE, Retry::No, Written::No),
    (code::ABORTED, Retry::Yes, Written::No),
    (code::DATA_LOSS, Retry::No, Written::Unknown),
    (code::RESOURCE_EXHAUSTED, Retry::No, Written::Unknown),
    (code::INTERNAL, Retry::No, Written::Unknown),
];

/// The contract's row for a status code the server answered with; `None` for codes a Weir node
/// never answers with (those come from the client's own transport, or from something else).
pub fn contract(code: i32) -> Option<(Retry, Written)> {
    ERROR_CONTRACT
        .iter()
        .find(|(c, _, _)| *c == code)
        .map(|(_, retry, written)| (*retry, *written))
}
