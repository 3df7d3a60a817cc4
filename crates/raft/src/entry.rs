//! Raft entries ⇄ stored batches: the one mapping between openraft's log and the segment log.
//!
//! - `Normal(batch)`: the record batch itself, stamped with term and entry index by the log.
//! - `Blank` and `Membership`: a control batch (no records, no offsets) whose payload is a
//!   postcard-encoded [`ControlEntry`].
//!
//! Reading a stored batch gives back the entry with its log id taken from the header, so a log
//! id never needs storing twice. The same encoding is used on the wire between peers.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use weir_format::batch::{ValidBatch, encode_control_batch};

use crate::types::{Entry, Membership, Payload, log_id};

/// The payload of a control batch.
#[derive(Debug, Serialize, Deserialize)]
enum ControlEntry {
    Blank,
    Membership(Membership),
}

/// Why a batch is not a Raft entry.
#[derive(Debug, thiserror::Error)]
pub enum EntryDecodeError {
    #[error("control batch at entry index {index} does not decode: {reason}")]
    BadControl { index: u64, reason: String },
    #[error(transparent)]
    Codec(#[from] weir_format::batch::CodecError),
}

/// The timestamp of every control batch.
///
/// It must be a function of the entry alone: openraft's blank and membership entries carry no
/// time, so a follower re-encodes them from the entry it received, and a timestamp taken there
/// (each replica's own clock, as before) made the same entry a different batch — another CRC —
/// on every replica. The storage ignores control batches' timestamps (time index, retention).
const CONTROL_TIMESTAMP: i64 = 0;

/// The bytes to append for `entry` (a control batch for blank and membership entries). The log
/// stamps term and index. Every replica stores the same bytes for the same entry.
pub fn entry_to_batch(entry: &Entry) -> Result<Bytes, postcard::Error> {
    Ok(match &entry.payload {
        openraft::EntryPayload::Normal(Payload(bytes)) => bytes.clone(),
        openraft::EntryPayload::Blank => encode_control_batch(
            CONTROL_TIMESTAMP,
            &postcard::to_stdvec(&ControlEntry::Blank)?,
        ),
        openraft::EntryPayload::Membership(membership) => encode_control_batch(
            CONTROL_TIMESTAMP,
            &postcard::to_stdvec(&ControlEntry::Membership(membership.clone()))?,
        ),
    })
}

/// The entry a stored (stamped) batch holds.
pub fn batch_to_entry(batch: &ValidBatch) -> Result<Entry, EntryDecodeError> {
    let header = batch.header();
    let payload = if header.control {
        let control: ControlEntry =
            postcard::from_bytes(&batch.payload()).map_err(|err| EntryDecodeError::BadControl {
                index: header.index,
                reason: err.to_string(),
            })?;
        match control {
            ControlEntry::Blank => openraft::EntryPayload::Blank,
            ControlEntry::Membership(m) => openraft::EntryPayload::Membership(m),
        }
    } else {
        openraft::EntryPayload::Normal(Payload(batch.bytes().clone()))
    };
    Ok(Entry {
        log_id: log_id(header.term, header.index),
        payload,
    })
}

/// The stamped bytes of an entry for the wire: stored batches go as they are.
pub fn wire_bytes(entry: &Entry) -> Result<Bytes, postcard::Error> {
    let bytes = entry_to_batch(entry)?;
    match ValidBatch::new(bytes.clone()) {
        Ok(batch) => Ok(batch.restamped(weir_format::batch::Stamp {
            base_offset: batch.header().base_offset,
            term: entry.log_id.leader_id.term,
            index: entry.log_id.index,
        })),
        Err(_) => Ok(bytes),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::types::PeerNode;

    #[test]
    fn control_entries_round_trip_with_their_log_id() {
        let members = BTreeMap::from([(1, PeerNode::new("127.0.0.1:1"))]);
        let membership = Membership::new(vec![BTreeSet::from([1])], members);
        for payload in [
            openraft::EntryPayload::Blank,
            openraft::EntryPayload::Membership(membership),
        ] {
            let entry = Entry {
                log_id: log_id(7, 42),
                payload,
            };
            let wire = wire_bytes(&entry).expect("encodes");
            let back = batch_to_entry(&ValidBatch::new(wire).expect("valid")).expect("decodes");
            assert_eq!(back, entry);
        }
    }
}
