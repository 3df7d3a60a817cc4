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
    let tmp = path.with_extension("tmp");
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
