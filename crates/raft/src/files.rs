//! Small files a Raft group keeps beside its segment log (`raft.meta`, `raft.snapshot`):
//! postcard values written with [`weir_storage::fs::write_atomic`] (a temporary file named after
//! the whole target name, fsync, rename over the old one, fsync of the directory), so a reader
//! sees the old or the new content, never a mix — also after a crash. This module only adds the
//! encoding and maps the storage helper's errors into [`FileError`].

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use weir_storage::fs::{self, FsError};

/// Why a group file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} does not decode: {reason}", path.display())]
    Decode { path: PathBuf, reason: String },
}

impl From<FsError> for FileError {
    fn from(err: FsError) -> Self {
        Self::Io {
            op: err.op,
            path: err.path,
            source: err.source,
        }
    }
}

/// Replaces `path` with `value` (postcard) atomically and durably.
///
/// The vote/purge file and the snapshot file are written from different tasks (openraft's core
/// and its state machine worker), possibly at the same moment — as on a snapshot install, which
/// purges the log while the snapshot is stored. Their temporary files must differ (the helper
/// names them after the whole target name: `raft.meta.tmp`, `raft.snapshot.tmp`); a shared
/// `raft.tmp`, as `with_extension("tmp")` once gave, failed one rename (a fatal storage error
/// that stopped the group) or put one file's content under the other's name.
pub(crate) fn write_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), FileError> {
    let bytes = postcard::to_stdvec(value).map_err(|err| FileError::Decode {
        path: path.to_path_buf(),
        reason: err.to_string(),
    })?;
    fs::write_atomic(path, &bytes)?;
    Ok(())
}

/// Reads `path` written by [`write_atomic`]; `None` when it does not exist.
pub(crate) fn read<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, FileError> {
    let Some(bytes) = fs::read(path)? else {
        return Ok(None);
    };
    postcard::from_bytes(&bytes)
        .map(Some)
        .map_err(|err| FileError::Decode {
            path: path.to_path_buf(),
            reason: err.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vote/purge file and the snapshot file of a group are written from different tasks
    /// (openraft's core and its state machine worker), possibly at the same moment.
    #[test]
    fn concurrent_writes_of_sibling_files_do_not_interfere() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = dir.path().join("raft.meta");
        let snapshot = dir.path().join("raft.snapshot");
        let writer = |path: PathBuf, tag: u8| {
            std::thread::spawn(move || {
                for i in 0..300u32 {
                    write_atomic(&path, &(tag, i)).expect("atomic write");
                }
            })
        };
        let a = writer(meta.clone(), 1);
        let b = writer(snapshot.clone(), 2);
        a.join().expect("meta writer");
        b.join().expect("snapshot writer");
        assert_eq!(read::<(u8, u32)>(&meta).expect("meta"), Some((1, 299)));
        assert_eq!(
            read::<(u8, u32)>(&snapshot).expect("snapshot"),
            Some((2, 299))
        );
    }
}
