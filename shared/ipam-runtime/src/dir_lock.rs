//! One process per directory. Two allocators on one data directory would fence each other through
//! their shared transactional id and overwrite each other's snapshots; two host agents on one
//! state directory would start, stop and restart the same dnsmasq processes. Nothing in the log can
//! tell them apart, so a process holds an exclusive lock on a file in its directory for as long as
//! it runs, taken before it opens anything there, and a second process is refused with an error
//! that names the directory and the holder's pid.
//!
//! The lock is `flock(2)` through [`File::try_lock`]: the kernel drops it when the holder exits,
//! however it exits (`kill -9` included), so a crash never leaves a stale lock behind. The pid in
//! the file is only for the error message; the lock, not the file's existence, is what counts.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

/// Which directory a lock guards: names the lock file and the error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirKind {
    /// What the holder is, for messages: `ipam` or `host agent`.
    pub holder: &'static str,
    /// What the directory is, for messages: `data directory` or `state directory`.
    pub directory: &'static str,
    /// The lock file's name in the directory. Hidden, and not ending in `.conf`, so that a dnsmasq
    /// `conf-dir` pointed at a files backend's directory never reads it.
    pub file_name: &'static str,
}

/// The data directory of `ipam up`, `ipam allocator` and `ipam placement`.
pub const DATA_DIR: DirKind = DirKind { holder: "ipam process", directory: "data directory", file_name: ".ipam.lock" };

/// A host agent's state directory (its dnsmasq servers' files, or the files backend's output).
pub const HOST_AGENT_DIR: DirKind =
    DirKind { holder: "host agent", directory: "state directory", file_name: ".ipam-host-agent.lock" };

/// Why a directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process (pid `holder`, when its lock file says) runs on this directory. Stop it, or
    /// give this process a directory of its own; this one has touched nothing.
    #[error("another {}{} already uses the {} `{}` (it holds `{}`)", kind.holder,
            holder.map(|pid| format!(" (pid {pid})")).unwrap_or_default(), kind.directory, dir.display(),
            dir.join(kind.file_name).display())]
    Held { kind: DirKind, dir: PathBuf, holder: Option<u32> },
    /// The directory or its lock file could not be created, opened, locked or written
    /// (permissions, a read-only or full disk); fix the directory and start again.
    #[error("{action} `{}`", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The exclusive lock on a directory, held until this value is dropped (or the process ends).
#[derive(Debug)]
pub struct DirLock {
    dir: PathBuf,
    /// Open for as long as the lock is held: closing it releases the lock.
    _file: File,
}

impl DirLock {
    /// Locks `dir` (created if missing) for this process, and writes this process's pid into the
    /// lock file.
    ///
    /// # Errors
    /// [`LockError::Held`] when another process holds the directory, [`LockError::Io`] when the
    /// directory or the lock file cannot be used.
    pub fn acquire(kind: DirKind, dir: impl Into<PathBuf>) -> Result<DirLock, LockError> {
        let dir = dir.into();
        let io = |action: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| LockError::Io { action, path, source }
        };
        fs::create_dir_all(&dir).map_err(io("cannot create the directory", &dir))?;
        let path = dir.join(kind.file_name);
        // Not truncated on open: until the lock is ours, the pid in it is the holder's.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io("cannot open the lock file", &path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let holder = file.read_to_string(&mut text).ok().and_then(|_| text.trim().parse().ok());
                return Err(LockError::Held { kind, dir, holder });
            }
            Err(TryLockError::Error(source)) => return Err(LockError::Io { action: "cannot lock", path, source }),
        }
        file.set_len(0).map_err(io("cannot truncate", &path))?;
        file.seek(SeekFrom::Start(0)).map_err(io("cannot seek in", &path))?;
        writeln!(file, "{}", std::process::id()).map_err(io("cannot write", &path))?;
        tracing::debug!(dir = %dir.display(), "Locked the {}.", kind.directory);
        Ok(DirLock { dir, _file: file })
    }

    /// The locked directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_directory_is_refused_and_names_the_holder() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("state");
        let lock_file = dir.join(DATA_DIR.file_name);
        let first = DirLock::acquire(DATA_DIR, &dir).unwrap();
        assert_eq!(fs::read_to_string(&lock_file).unwrap(), format!("{}\n", std::process::id()));

        let error = DirLock::acquire(DATA_DIR, &dir).unwrap_err();
        let LockError::Held { holder, .. } = &error else { panic!("{error:?}") };
        assert_eq!(*holder, Some(std::process::id()));
        let message = error.to_string();
        assert!(message.contains("already uses the data directory"), "{message}");
        assert!(message.contains(&dir.display().to_string()), "{message}");
        assert!(message.contains(&format!("pid {}", std::process::id())), "{message}");
        // The refused attempt left the holder's pid in place.
        assert_eq!(fs::read_to_string(&lock_file).unwrap(), format!("{}\n", std::process::id()));
        // Another kind of lock on the same directory is another file.
        DirLock::acquire(HOST_AGENT_DIR, &dir).unwrap();

        // Released on drop: the next process gets it.
        drop(first);
        let again = DirLock::acquire(DATA_DIR, &dir).unwrap();
        assert_eq!(again.dir(), dir);
    }

    #[test]
    fn a_directory_that_cannot_be_created_is_an_io_error_naming_it() {
        let temp = tempfile::tempdir().unwrap();
        let blocked = temp.path().join("file");
        fs::write(&blocked, "").unwrap();
        let error = DirLock::acquire(HOST_AGENT_DIR, blocked.join("state")).unwrap_err();
        assert!(matches!(error, LockError::Io { .. }), "{error:?}");
        assert!(error.to_string().contains("file/state"), "{error}");
    }
}
