//! The data directory lock: one emcachers process per data directory.
//!
//! [`DataDirLock::acquire`] takes an exclusive OS file lock (`flock` on
//! Unix, `LockFileEx` on Windows, through [`std::fs::File::try_lock`]) on
//! `{data_dir}/emcachers.lock` and writes the holder's pid into the file. The
//! lock is the kernel's: it goes away with the file handle, so it is released
//! when the [`DataDirLock`] is dropped and when the process dies, however it
//! dies. A stale lock file is therefore harmless; the file is never deleted
//! (deleting it would let two processes lock two different inodes).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The lock file's name inside the data directory.
pub const LOCK_FILE: &str = "emcachers.lock";

/// Why the data directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// Another process (or another node in this process) holds the lock.
    #[error(
        "data directory {} is in use by another emcachers process{}; stop it or use another data_dir",
        dir.display(),
        pid.map(|pid| format!(" (pid {pid})")).unwrap_or_default()
    )]
    Locked {
        /// The data directory.
        dir: PathBuf,
        /// The holder's pid, when the lock file names one.
        pid: Option<u32>,
    },
    /// The lock file could not be opened, locked or written.
    #[error("cannot lock data directory {}: {}: {source}", dir.display(), path.display())]
    Io {
        /// The data directory.
        dir: PathBuf,
        /// The lock file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// An exclusive lock on a data directory, held until dropped.
#[derive(Debug)]
pub struct DataDirLock {
    file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Lock `dir` (which must exist) without waiting: fails with
    /// [`DataDirError::Locked`] when another holder has it.
    pub fn acquire(dir: &Path) -> Result<DataDirLock, DataDirError> {
        let path = dir.join(LOCK_FILE);
        let io = |source| DataDirError::Io {
            dir: dir.to_owned(),
            path: path.clone(),
            source,
        };
        // Not truncated on open: the holder's pid must survive a failed try.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(DataDirError::Locked {
                    dir: dir.to_owned(),
                    pid: holder_pid(&mut file),
                });
            }
            Err(TryLockError::Error(source)) => return Err(io(source)),
        }
        let pid = std::process::id();
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| writeln!(file, "{pid}"))
            .and_then(|()| file.sync_data())
            .map_err(io)?;
        tracing::debug!(path = %path.display(), pid, "data directory locked");
        Ok(DataDirLock { file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for DataDirLock {
    fn drop(&mut self) {
        // Forget the pid first so a later reader never names a process that
        // no longer holds the lock; closing the handle then unlocks.
        let _ = self.file.set_len(0);
        tracing::debug!(path = %self.path.display(), "data directory unlocked");
    }
}

/// The pid the holder wrote into the lock file, if any.
fn holder_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_and_names_the_holder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = DataDirLock::acquire(dir.path()).expect("first lock");
        assert_eq!(first.path(), dir.path().join(LOCK_FILE));
        let error = DataDirLock::acquire(dir.path()).expect_err("second lock refused");
        match &error {
            DataDirError::Locked { dir: locked, pid } => {
                assert_eq!(locked, dir.path());
                assert_eq!(*pid, Some(std::process::id()));
            }
            other => panic!("unexpected error {other}"),
        }
        let message = error.to_string();
        assert!(
            message.contains(&dir.path().display().to_string())
                && message.contains(&format!("pid {}", std::process::id())),
            "{message}"
        );
    }

    #[test]
    fn dropping_the_lock_releases_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = DataDirLock::acquire(dir.path()).expect("first lock");
        drop(first);
        let again = DataDirLock::acquire(dir.path()).expect("lock again after drop");
        drop(again);
        let text = std::fs::read_to_string(dir.path().join(LOCK_FILE)).expect("lock file");
        assert!(text.is_empty(), "no pid left behind: {text:?}");
    }

    #[test]
    fn a_missing_directory_is_an_io_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing");
        let error = DataDirLock::acquire(&missing).expect_err("no directory");
        assert!(matches!(error, DataDirError::Io { .. }), "{error}");
    }
}
