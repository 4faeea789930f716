//! Snapshots of a partition's state, each taken at an input offset: the state after every input
//! before that offset. Rebuilding reads the latest snapshot and replays the input log from its
//! offset, so a snapshot only shortens replay and is never required: without one, replay starts at
//! zero. A snapshot from an older run, or from another instance, is still valid for that reason.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// Where snapshots are kept: one file per name in a directory, replaced atomically.
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    dir: PathBuf,
}

/// The first line of a snapshot file; the state follows it.
const HEADER: &str = "ipam-snapshot v1 offset=";

impl SnapshotStore {
    pub fn new(dir: impl Into<PathBuf>) -> SnapshotStore {
        SnapshotStore { dir: dir.into() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// Saves the state (canonical JSON bytes) taken at input offset `offset`.
    pub fn save(&self, name: &str, offset: u64, state: &[u8]) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
        let mut bytes = format!("{HEADER}{offset}\n").into_bytes();
        bytes.extend_from_slice(state);
        let path = self.path(name);
        let temporary = path.with_extension("json.tmp");
        write_synced(&temporary, &bytes)?;
        std::fs::rename(&temporary, &path).with_context(|| format!("replacing {}", path.display()))?;
        Ok(())
    }

    /// The latest snapshot: its offset and state. An unreadable file is reported and ignored, so
    /// rebuilding falls back to a full replay.
    pub fn load(&self, name: &str) -> Option<(u64, Vec<u8>)> {
        let path = self.path(name);
        let bytes = std::fs::read(&path).ok()?;
        let parsed = (|| {
            let newline = bytes.iter().position(|b| *b == b'\n')?;
            let header = std::str::from_utf8(&bytes[..newline]).ok()?;
            let offset = header.strip_prefix(HEADER)?.parse().ok()?;
            Some((offset, bytes[newline + 1..].to_vec()))
        })();
        if parsed.is_none() {
            tracing::warn!(path = %path.display(), "Ignoring an unreadable snapshot; replaying from zero.");
        }
        parsed
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}
