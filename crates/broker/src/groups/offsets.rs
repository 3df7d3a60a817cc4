//! The records of the internal `__consumer_offsets` topic: key (version, group, topic,
//! partition) and value (version, offset), postcard-encoded. Pure: bytes in and out.
//!
//! Invariants: the newest record of a key wins when the partition is read back; a record with no
//! value (a tombstone, written when a group is deleted) removes the key; records of an unknown
//! version are skipped (a newer writer's records are never misread).

use std::collections::BTreeMap;

use super::assignor::TopicPartition;

/// The version written in every key and value.
const RECORD_VERSION: u8 = 1;

/// The key of the record committing an offset of `group` for `topic`/`partition`.
pub(crate) fn offset_key(
    group: &str,
    topic: &str,
    partition: u32,
) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_stdvec(&(RECORD_VERSION, group, topic, partition))
}

/// The value of the record committing `offset`.
pub(crate) fn offset_value(offset: u64) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_stdvec(&(RECORD_VERSION, offset))
}

/// Applies one record of the offsets topic (records of unknown versions are skipped; no value:
/// the key's offset is removed, and a group left with none with it).
pub(crate) fn apply_offset_record(
    offsets: &mut BTreeMap<String, BTreeMap<TopicPartition, u64>>,
    key: &[u8],
    value: Option<&[u8]>,
) {
    let Ok((RECORD_VERSION, group, topic, partition)) =
        postcard::from_bytes::<(u8, String, String, u32)>(key)
    else {
        return;
    };
    let Some(value) = value else {
        if let Some(committed) = offsets.get_mut(&group) {
            committed.remove(&(topic, partition));
            if committed.is_empty() {
                offsets.remove(&group);
            }
        }
        return;
    };
    let Ok((RECORD_VERSION, offset)) = postcard::from_bytes::<(u8, u64)>(value) else {
        return;
    };
    offsets
        .entry(group)
        .or_default()
        .insert((topic, partition), offset);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_records_round_trip_and_the_newest_wins() {
        let mut offsets = BTreeMap::new();
        let key = offset_key("g", "t", 3).unwrap();
        apply_offset_record(&mut offsets, &key, Some(&offset_value(5).unwrap()));
        apply_offset_record(&mut offsets, &key, Some(&offset_value(9).unwrap()));
        apply_offset_record(&mut offsets, b"garbage", Some(b"x"));
        apply_offset_record(&mut offsets, b"garbage", None);
        assert_eq!(offsets["g"][&("t".to_string(), 3)], 9);
        assert_eq!(offsets.len(), 1);
    }

    #[test]
    fn a_tombstone_removes_the_offset_and_an_emptied_group() {
        let mut offsets = BTreeMap::new();
        let (k1, k2) = (
            offset_key("g", "t", 0).unwrap(),
            offset_key("g", "t", 1).unwrap(),
        );
        apply_offset_record(&mut offsets, &k1, Some(&offset_value(5).unwrap()));
        apply_offset_record(&mut offsets, &k2, Some(&offset_value(7).unwrap()));
        apply_offset_record(&mut offsets, &k1, None);
        assert_eq!(offsets["g"].len(), 1);
        apply_offset_record(&mut offsets, &k2, None);
        assert!(offsets.is_empty());
        // A commit after the deletion starts the group again.
        apply_offset_record(&mut offsets, &k1, Some(&offset_value(8).unwrap()));
        assert_eq!(offsets["g"][&("t".to_string(), 0)], 8);
    }
}
