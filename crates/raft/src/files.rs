//! Small files a Raft group keeps beside its segment log, written atomically: write a temporary
//! file, fsync it, rename it over the old one, fsync the directory. A reader sees the old or the
//! new content, never a mix.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

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

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FileError + use<> {
    let path = path.to_path_buf();
    move |source| FileError::Io { op, path, source }
}

/// Replaces `path` with `value` (postcard) atomically and durably.
pub(crate) fn write_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), FileError> {
    let bytes = postcard::to_stdvec(value).map_err(|err| FileError::Decode {
        path: path.to_path_buf(),
        reason: err.to_string(),
    })?;
    // The temporary file is named after the whole target name (`raft.meta.tmp`,
    // `raft.snapshot.tmp`). It used to be `with_extension("tmp")`, which gave `raft.meta` and
    // `raft.snapshot` the same `raft.tmp`: when openraft's core (vote, purge point) and its state
    // machine worker (snapshot) wrote at the same moment — as on a snapshot install, which purges
    // the log while the snapshot is stored — one rename failed (a fatal storage error that
    // stopped the group) or put one file's content under the other's name.
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut file = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .map_err(io("write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("rename", &tmp))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("sync directory", dir))?;
    }
    Ok(())
}

/// Reads `path` written by [`write_atomic`]; `None` when it does not exist.
pub(crate) fn read<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, FileError> {
    match std::fs::read(path) {
        Ok(bytes) => postcard::from_bytes(&bytes)
            .map(Some)
            .map_err(|err| FileError::Decode {
                path: path.to_path_buf(),
                reason: err.to_string(),
            }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(io("read", path)(err)),
    }
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
