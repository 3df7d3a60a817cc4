//! The `log.meta` file: what a partition directory must remember that its segments cannot tell
//! — the log start offset (records below it are gone even if a segment still holds them) and the
//! entry index the next batch takes when the log holds no batch.
//!
//! Format: the line `weir partition log v1`, then `log_start_offset=N` and `next_index=N`, one
//! per line. Both keys are required; an unknown key, a missing key or a bad number is
//! corruption ([`StorageError::Corrupt`]), never guessed around. A missing file means a new log
//! (start 0, index 0).
//!
//! Invariant: the file is replaced with [`crate::fs::write_atomic`] (temporary file, fsync,
//! rename, fsync of the directory): a crash leaves the old content or the new, never a mix.
//!
//! Not handled here: when the file is written, and in which order with the segment files
//! (truncation and recovery decide that).

use std::path::Path;

use crate::error::{Result, StorageError};
use crate::fs;

/// Persisted log start offset and empty-log entry index.
pub const META_FILE: &str = "log.meta";
const META_HEADER: &str = "weir partition log v1";

/// The persisted part of the log's state that the segments cannot tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Meta {
    pub(super) log_start_offset: u64,
    /// The entry index the next batch takes when the log holds no batch.
    pub(super) next_index: u64,
}

pub(super) fn write_meta(dir: &Path, log_start_offset: u64, next_index: u64) -> Result<()> {
    let text =
        format!("{META_HEADER}\nlog_start_offset={log_start_offset}\nnext_index={next_index}\n");
    fs::write_atomic(&dir.join(META_FILE), text.as_bytes())?;
    Ok(())
}

pub(super) fn read_meta(dir: &Path) -> Result<Option<Meta>> {
    let path = dir.join(META_FILE);
    let Some(raw) = fs::read(&path)? else {
        return Ok(None);
    };
    let bad = |reason: String| StorageError::Corrupt {
        path: path.clone(),
        position: 0,
        reason,
    };
    let text = String::from_utf8(raw).map_err(|_| bad("not UTF-8 text".into()))?;
    let mut lines = text.lines();
    if lines.next() != Some(META_HEADER) {
        return Err(bad(format!("first line is not {META_HEADER:?}")));
    }
    let mut meta = Meta::default();
    let (mut has_start, mut has_index) = (false, false);
    for line in lines {
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| bad(format!("line {line:?} is not key=value")))?;
        let value: u64 = value
            .parse()
            .map_err(|_| bad(format!("{key} value {value:?} is not a number")))?;
        match key {
            "log_start_offset" => (meta.log_start_offset, has_start) = (value, true),
            "next_index" => (meta.next_index, has_index) = (value, true),
            other => return Err(bad(format!("unknown key {other:?}"))),
        }
    }
    if !(has_start && has_index) {
        return Err(bad("missing log_start_offset or next_index".into()));
    }
    Ok(Some(meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_a_missing_file_is_a_new_log() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_meta(dir.path()).unwrap(), None);
        write_meta(dir.path(), 42, 7).unwrap();
        assert_eq!(
            read_meta(dir.path()).unwrap(),
            Some(Meta {
                log_start_offset: 42,
                next_index: 7
            })
        );
    }

    #[test]
    fn anything_but_the_exact_format_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        for text in [
            "not the header\nlog_start_offset=1\nnext_index=2\n",
            "weir partition log v1\nlog_start_offset=1\n",
            "weir partition log v1\nlog_start_offset=x\nnext_index=2\n",
            "weir partition log v1\nlog_start_offset=1\nnext_index=2\nextra=3\n",
            "weir partition log v1\nlog_start_offset\n",
        ] {
            std::fs::write(dir.path().join(META_FILE), text).unwrap();
            let err = read_meta(dir.path()).unwrap_err();
            assert!(
                matches!(err, StorageError::Corrupt { .. }),
                "{text:?} gave {err}"
            );
        }
    }
}
