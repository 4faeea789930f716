//! One agent per state directory. Two agents on one directory would each start, stop and restart
//! the same dnsmasq processes, rewrite the same files and sweep each other's servers as leftovers;
//! nothing in the log can tell them apart. So an agent holds an exclusive lock on a file in its
//! directory for as long as it runs, taken before it touches anything else there, and a second
//! agent is refused with an error that names the directory and the holder's pid.
//!
//! The lock is `flock(2)` through [`File::try_lock`]: the kernel drops it when the holder exits,
//! however it exits (`kill -9` included), so a crash never leaves a stale lock behind. The pid in
//! the file is only for the error message; the lock, not the file's existence, is what counts.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

/// The lock file's name in the agent's directory. Hidden, and not ending in `.conf`, so that a
/// dnsmasq `conf-dir` pointed at the files backend's directory never reads it.
pub const LOCK_FILE_NAME: &str = ".ipam-host-agent.lock";

/// Why the state directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another agent (pid `holder`, when its lock file says) runs on this directory. Stop it, or
    /// give this agent a directory of its own; this agent has touched nothing.
    #[error("another host agent{} already uses the state directory `{}` (it holds `{}`)",
            holder.map(|pid| format!(" (pid {pid})")).unwrap_or_default(), dir.display(), dir.join(LOCK_FILE_NAME).display())]
    Held { dir: PathBuf, holder: Option<u32> },
    /// The directory or its lock file could not be created, opened, locked or written
    /// (permissions, a read-only or full disk); fix the directory and start the agent again.
    #[error("{action} `{}`", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The exclusive lock on an agent's directory, held until this value is dropped (or the process
/// ends). Pass it to [`crate::run`], which keeps it for the agent's lifetime.
#[derive(Debug)]
pub struct StateDirLock {
    dir: PathBuf,
    /// Open for as long as the lock is held: closing it releases the lock.
    _file: File,
}

impl StateDirLock {
    /// Locks `dir` (created if missing) for this process, and writes this process's pid into the
    /// lock file.
    ///
    /// # Errors
    /// [`LockError::Held`] when another agent holds the directory, [`LockError::Io`] when the
    /// directory or the lock file cannot be used.
    pub fn acquire(dir: impl Into<PathBuf>) -> Result<StateDirLock, LockError> {
        let dir = dir.into();
        let io = |action: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| LockError::Io { action, path, source }
        };
        fs::create_dir_all(&dir).map_err(io("cannot create the state directory", &dir))?;
        let path = dir.join(LOCK_FILE_NAME);
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
                return Err(LockError::Held { dir, holder });
            }
            Err(TryLockError::Error(source)) => return Err(LockError::Io { action: "cannot lock", path, source }),
        }
        file.set_len(0).map_err(io("cannot truncate", &path))?;
        file.seek(SeekFrom::Start(0)).map_err(io("cannot seek in", &path))?;
        writeln!(file, "{}", std::process::id()).map_err(io("cannot write", &path))?;
        tracing::debug!(dir = %dir.display(), "Locked the state directory.");
        Ok(StateDirLock { dir, _file: file })
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
        let first = StateDirLock::acquire(&dir).unwrap();
        assert_eq!(fs::read_to_string(dir.join(LOCK_FILE_NAME)).unwrap(), format!("{}\n", std::process::id()));

        let error = StateDirLock::acquire(&dir).unwrap_err();
        let LockError::Held { holder, .. } = &error else { panic!("{error:?}") };
        assert_eq!(*holder, Some(std::process::id()));
        let message = error.to_string();
        assert!(message.contains(&dir.display().to_string()), "{message}");
        assert!(message.contains(&format!("pid {}", std::process::id())), "{message}");
        // The refused attempt left the holder's pid in place.
        assert_eq!(fs::read_to_string(dir.join(LOCK_FILE_NAME)).unwrap(), format!("{}\n", std::process::id()));

        // Released on drop: the next agent gets it.
        drop(first);
        let again = StateDirLock::acquire(&dir).unwrap();
        assert_eq!(again.dir(), dir);
    }

    #[test]
    fn a_directory_that_cannot_be_created_is_an_io_error_naming_it() {
        let temp = tempfile::tempdir().unwrap();
        let blocked = temp.path().join("file");
        fs::write(&blocked, "").unwrap();
        let error = StateDirLock::acquire(blocked.join("state")).unwrap_err();
        assert!(matches!(error, LockError::Io { .. }), "{error:?}");
        assert!(error.to_string().contains("file/state"), "{error}");
    }
}
