//! Replacing a whole file so that a crash leaves the old content or the new, never a torn mix:
//! the one implementation of "write a temporary file, fsync it, rename it over the target,
//! fsync the directory" shared by the partition log (`log.meta`, index files, a segment cut in
//! its middle) and by Raft's small files (`raft.meta`, `raft.snapshot`).
//!
//! Invariants:
//! - the temporary file of `dir/name` is `dir/name.tmp` ([`temp_path`]): beside the target, so
//!   the rename stays within one directory (and so is atomic), and named after the whole target
//!   name, so two files of one directory written at the same moment never share one;
//! - the target is replaced only by a rename of a complete, fsynced temporary file: a reader (or
//!   a process restarted after a crash) finds the old content or the new;
//! - a temporary file left behind by a crash is never read: [`read`] reads the target only, the
//!   next write of the same target truncates it, and directory scans may delete any `*.tmp`;
//! - when a write fails, its temporary file is removed (best effort) and the target is
//!   untouched.
//!
//! Not handled here: concurrent writers of the *same* target (callers serialize them), and what
//! the bytes mean (callers encode and decode).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// What could not be done to which file.
#[derive(Debug, Error)]
#[error("{op} {}: {source}", path.display())]
pub struct FsError {
    /// The operation that failed ("create", "write", "sync", "rename", "sync directory", ...).
    pub op: &'static str,
    /// The file or directory it failed on.
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl FsError {
    fn on(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self + use<> {
        let path = path.to_path_buf();
        move |source| Self { op, path, source }
    }
}

/// The suffix of temporary files: a directory scan may delete any file ending in it.
pub const TEMP_SUFFIX: &str = ".tmp";

/// Whether [`write_atomic_with`] makes the rename itself durable before it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirSync {
    /// Fsync the directory: once the call returns, the new content survives a crash.
    Now,
    /// Leave the directory to the caller, who syncs it later (for example once for several
    /// changes), or can live with the old content after a crash. The new content is still
    /// whole once it is visible.
    Later,
}

/// The temporary file that [`write_atomic`] writes before renaming it to `path`:
/// `path` with [`TEMP_SUFFIX`] appended to its file name.
pub fn temp_path(path: &Path) -> Result<PathBuf, FsError> {
    let Some(name) = path.file_name() else {
        return Err(FsError {
            op: "name a temporary file for",
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name"),
        });
    };
    let mut tmp_name = name.to_os_string();
    tmp_name.push(TEMP_SUFFIX);
    Ok(path.with_file_name(tmp_name))
}

/// Replaces `path` with `bytes`, atomically and durably (see the module docs).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FsError> {
    write_atomic_with(path, DirSync::Now, |file| file.write_all(bytes))
}

/// Replaces `path` with what `fill` writes into a fresh temporary file: the temporary file is
/// fsynced and renamed over `path`, then the directory is synced as `dir_sync` says. On failure
/// the temporary file is removed and `path` keeps its old content.
pub fn write_atomic_with(
    path: &Path,
    dir_sync: DirSync,
    fill: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> Result<(), FsError> {
    let tmp = temp_path(path)?;
    let written = (|| {
        let mut file = File::create(&tmp).map_err(FsError::on("create", &tmp))?;
        fill(&mut file).map_err(FsError::on("write", &tmp))?;
        file.sync_all().map_err(FsError::on("sync", &tmp))?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(FsError::on("rename", &tmp))
    })();
    if let Err(err) = written {
        // Best effort: a leftover is harmless (never read, truncated by the next write).
        let _ = std::fs::remove_file(&tmp);
        return Err(err);
    }
    match dir_sync {
        DirSync::Now => sync_dir(parent_dir(path)),
        DirSync::Later => Ok(()),
    }
}

/// Reads the whole of `path` (written by [`write_atomic`]); `None` when it does not exist.
pub fn read(path: &Path) -> Result<Option<Vec<u8>>, FsError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(FsError::on("read", path)(err)),
    }
}

/// Makes the directory's entries (created, renamed, removed files) durable.
pub fn sync_dir(dir: &Path) -> Result<(), FsError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(FsError::on("sync directory", dir))
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_whole_content_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        assert_eq!(read(&path).unwrap(), None);
        write_atomic(&path, b"first, longer content").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(read(&path).unwrap().as_deref(), Some(&b"second"[..]));
        assert!(!temp_path(&path).unwrap().exists());
    }

    /// What a crash between writing the temporary file and the rename leaves: the old content is
    /// what is read, and the next write is whole.
    #[test]
    fn a_temporary_file_left_by_a_crash_is_ignored_then_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.meta");
        write_atomic(&path, b"old content").unwrap();
        let tmp = temp_path(&path).unwrap();
        assert_eq!(tmp, dir.path().join("raft.meta.tmp"));
        std::fs::write(&tmp, b"new con").unwrap();
        assert_eq!(read(&path).unwrap().as_deref(), Some(&b"old content"[..]));
        write_atomic(&path, b"new").unwrap();
        assert_eq!(read(&path).unwrap().as_deref(), Some(&b"new"[..]));
        assert!(!tmp.exists());
    }

    /// A write that fails halfway (a full disk, say) leaves the old content, not a torn file.
    #[test]
    fn a_failed_write_leaves_the_old_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.meta");
        write_atomic(&path, b"old content").unwrap();
        let err = write_atomic_with(&path, DirSync::Now, |file| {
            file.write_all(b"half of the new")?;
            Err(std::io::Error::other("disk full"))
        })
        .unwrap_err();
        assert_eq!(err.op, "write");
        assert_eq!(err.path, temp_path(&path).unwrap());
        assert!(err.to_string().contains("disk full"), "{err}");
        assert_eq!(read(&path).unwrap().as_deref(), Some(&b"old content"[..]));
        assert!(!temp_path(&path).unwrap().exists());
    }

    #[test]
    fn errors_name_the_operation_and_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("file");
        let err = write_atomic(&path, b"x").unwrap_err();
        assert_eq!(err.op, "create");
        assert_eq!(err.path, dir.path().join("missing").join("file.tmp"));
        assert!(
            err.to_string()
                .starts_with(&format!("create {}", err.path.display()))
        );
        assert!(temp_path(Path::new("/")).is_err());
    }

    #[test]
    fn sibling_files_have_their_own_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        let a = temp_path(&dir.path().join("raft.meta")).unwrap();
        let b = temp_path(&dir.path().join("raft.snapshot")).unwrap();
        assert_ne!(a, b);
    }
}
