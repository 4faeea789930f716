//! Snapshots of a partition's state, each taken at an input offset: the state after every input
//! before that offset. Rebuilding reads the latest snapshot and replays the input log from its
//! offset, so a snapshot only shortens replay and is never required: without one, replay starts at
//! zero.
//!
//! A snapshot is only as good as the log it was taken from. Applied on top of another log (the
//! log file lost and made anew, a topic re-created) it would hand out addresses the log does not
//! know, so two VMs would get one IP. Each snapshot therefore names its log
//! ([`ipam_log::EventLog::identity`], made with the log) and the last input it holds (its offset
//! and a digest of the record, an [`Anchor`]). A snapshot that names another log, lies ahead of
//! the log, or whose anchor record differs, is refused: the process does not start, and says how
//! to start afresh on purpose. A snapshot that cannot be read at all (torn, garbled, an older
//! format) is only ignored with a warning: replay from zero rebuilds the same state.
//!
//! # Reading by mapping
//! A state of a million reservations is hundreds of megabytes. Read into a buffer, it first costs
//! that much fresh memory, which the kernel clears page by page before the copy (on a virtual
//! machine, at well under a gigabyte a second: a profile of a restart had the kernel clearing pages
//! in half of the read model's samples). A snapshot file is therefore mapped and decoded where the
//! page cache holds it ([`State`]). This is sound because a snapshot file is never written once it
//! has its name: [`SnapshotStore::save`] writes a temporary file and renames it over the old one,
//! whose mapping keeps the old contents, and one data directory has one process (its lock). A file
//! that cannot be mapped is read.

use std::io::{BufRead, BufReader, Read};
use std::ops::Deref;
use std::path::{Path, PathBuf};

use ipam_log::Record;
use sha2::{Digest, Sha256};

/// The first line of a snapshot file names the format; the state follows it.
const FORMAT: &str = "ipam-snapshot v2";

/// Why a snapshot cannot be used with this log. Each means the data directory holds state derived
/// from another log than the one it now has: the process must not start on it.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The snapshot names another log: the log was lost or replaced since it was taken.
    #[error(
        "the snapshot {path} was taken from log `{snapshot_log}`, but the log is now `{log}`: the log it describes \
         was lost or replaced, and its state must not be applied to another log. Restore the log it came from, or, \
         to start afresh on purpose with an empty state, move the snapshot directory {dir} aside"
    )]
    OtherLog { path: PathBuf, dir: PathBuf, snapshot_log: String, log: String },
    /// The snapshot holds inputs the log does not have (committed position behind its offset, or
    /// its last input is not in the log as it was).
    #[error(
        "the snapshot {path} does not match the log: {reason}. The log was truncated or replaced since the snapshot \
         was taken, and its state must not be applied to it. Restore the log it came from, or, to start afresh on \
         purpose with an empty state, move the snapshot directory {dir} aside (and the log with it)"
    )]
    NotInLog { path: PathBuf, dir: PathBuf, reason: String },
    /// The snapshot could not be written.
    #[error("cannot write the snapshot {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// The last input a snapshot's state holds: its offset and a digest of its key and value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    pub offset: u64,
    pub digest: String,
}

impl Anchor {
    pub fn of(record: &Record) -> Anchor {
        let mut hasher = Sha256::new();
        hasher.update((record.key.len() as u64).to_be_bytes());
        hasher.update(record.key.as_bytes());
        hasher.update(&record.value);
        let digest = hasher.finalize().iter().map(|byte| format!("{byte:02x}")).collect();
        Anchor { offset: record.offset, digest }
    }
}

/// A snapshot's state bytes: its file mapped past the header, or bytes read or given.
pub enum State {
    Mapped { map: memmap2::Mmap, start: usize },
    Bytes(Vec<u8>),
}

impl Deref for State {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            State::Mapped { map, start } => &map[*start..],
            State::Bytes(bytes) => bytes,
        }
    }
}

impl From<Vec<u8>> for State {
    fn from(bytes: Vec<u8>) -> State {
        State::Bytes(bytes)
    }
}

impl PartialEq for State {
    fn eq(&self, other: &State) -> bool {
        self[..] == other[..]
    }
}

impl Eq for State {}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = if matches!(self, State::Mapped { .. }) { "mapped" } else { "bytes" };
        write!(f, "State({} {how})", self.len())
    }
}

/// A partition's state at an input offset, and what ties it to its log.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The identity of the log it was taken from.
    pub log: String,
    /// The offset of the next input: the state holds every input before it.
    pub offset: u64,
    /// The last input the state holds; `None` when it holds none.
    pub anchor: Option<Anchor>,
    /// The state machine's canonical bytes.
    pub state: State,
}

impl Snapshot {
    /// The header line of a snapshot of `log` at `offset`, newline included; the state follows
    /// it in the file.
    fn header(log: &str, offset: u64, anchor: Option<&Anchor>) -> String {
        let anchor = anchor.map_or_else(|| "none".to_owned(), |a| format!("{}:{}", a.offset, a.digest));
        format!("{FORMAT} log={log} offset={offset} anchor={anchor}\n")
    }

    /// A snapshot's header line, its newline included: the snapshot with its state still empty, or
    /// `None` when it is not a header of this format.
    fn parse_header(line: &[u8]) -> Option<Snapshot> {
        let header = std::str::from_utf8(line.strip_suffix(b"\n")?).ok()?;
        let mut fields = header.strip_prefix(FORMAT)?.split_whitespace();
        let log = fields.next()?.strip_prefix("log=")?.to_owned();
        let offset = fields.next()?.strip_prefix("offset=")?.parse().ok()?;
        let anchor = match fields.next()?.strip_prefix("anchor=")? {
            "none" => None,
            anchor => {
                let (offset, digest) = anchor.split_once(':')?;
                let digest_ok = digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit());
                digest_ok.then_some(())?;
                Some(Anchor { offset: offset.parse().ok()?, digest: digest.to_owned() })
            }
        };
        if fields.next().is_some() || log.is_empty() {
            return None;
        }
        Some(Snapshot { log, offset, anchor, state: State::Bytes(Vec::new()) })
    }
}

/// Where snapshots are kept: one file per name in a directory, replaced atomically, each bound to
/// the log `identity` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotStore {
    dir: PathBuf,
    log: String,
}

impl SnapshotStore {
    /// The store in `dir` for the log whose identity is `log`. Refuses a directory holding a
    /// snapshot of another log, so that a process whose log is gone does not start at all.
    pub fn open(dir: impl Into<PathBuf>, log: impl Into<String>) -> Result<SnapshotStore, SnapshotError> {
        let store = SnapshotStore { dir: dir.into(), log: log.into() };
        let Ok(entries) = std::fs::read_dir(&store.dir) else { return Ok(store) };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|extension| extension != "json") {
                continue;
            }
            // The header names the log: a store of a million reservations need not read its
            // hundreds of megabytes of state to know whose they are.
            let header = std::fs::File::open(&path).ok().and_then(|file| read_header(&mut BufReader::new(file)));
            if let Some(snapshot) = header.as_deref().and_then(Snapshot::parse_header) {
                store.check_log(&path, &snapshot)?;
            }
        }
        Ok(store)
    }

    /// The directory the snapshots are in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    fn check_log(&self, path: &Path, snapshot: &Snapshot) -> Result<(), SnapshotError> {
        if snapshot.log == self.log {
            Ok(())
        } else {
            Err(SnapshotError::OtherLog {
                path: path.to_owned(),
                dir: self.dir.clone(),
                snapshot_log: snapshot.log.clone(),
                log: self.log.clone(),
            })
        }
    }

    /// An error saying snapshot `name` does not match the log, for `reason`.
    pub fn not_in_log(&self, name: &str, reason: String) -> SnapshotError {
        SnapshotError::NotInLog { path: self.path(name), dir: self.dir.clone(), reason }
    }

    /// Saves the state (canonical bytes) taken at input offset `offset`, holding the input
    /// `anchor` last.
    pub fn save(&self, name: &str, offset: u64, anchor: Option<Anchor>, state: Vec<u8>) -> Result<(), SnapshotError> {
        let path = self.path(name);
        let header = Snapshot::header(&self.log, offset, anchor.as_ref());
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(&self.dir)?;
            let temporary = path.with_extension("json.tmp");
            write_synced(&temporary, &[header.as_bytes(), &state])?;
            std::fs::rename(&temporary, &path)
        };
        write().map_err(|source| SnapshotError::Write { path: path.clone(), source })
    }

    /// The latest snapshot of `name`, if there is a readable one of this log. An unreadable file is
    /// reported and ignored (rebuilding then replays from zero); one of another log is refused.
    pub fn load(&self, name: &str) -> Result<Option<Snapshot>, SnapshotError> {
        let path = self.path(name);
        let Ok(file) = std::fs::File::open(&path) else { return Ok(None) };
        let unreadable = || {
            tracing::warn!(path = %path.display(),
                           "Ignoring a snapshot that cannot be read (torn, garbled or of an older format); replaying from zero.");
            Ok(None)
        };
        let Some(map) = map(&file) else { return self.read(&path, file) };
        let Some(header) = first_line(&map) else { return unreadable() };
        let Some(mut snapshot) = Snapshot::parse_header(header) else { return unreadable() };
        self.check_log(&path, &snapshot)?;
        snapshot.state = State::Mapped { start: header.len(), map };
        Ok(Some(snapshot))
    }

    /// [`SnapshotStore::load`] of a file that cannot be mapped (an empty one, or a file system
    /// without mappings): its state read into a buffer of its size.
    fn read(&self, path: &Path, file: std::fs::File) -> Result<Option<Snapshot>, SnapshotError> {
        let size = file.metadata().map_or(0, |metadata| metadata.len());
        let mut reader = BufReader::new(file);
        let unreadable = || {
            tracing::warn!(path = %path.display(),
                           "Ignoring a snapshot that cannot be read (torn, garbled or of an older format); replaying from zero.");
            Ok(None)
        };
        let Some(header) = read_header(&mut reader) else { return unreadable() };
        let Some(mut snapshot) = Snapshot::parse_header(&header) else { return unreadable() };
        self.check_log(path, &snapshot)?;
        let mut state = Vec::with_capacity(usize::try_from(size).unwrap_or(0).saturating_sub(header.len()));
        match reader.read_to_end(&mut state) {
            Ok(_) => {
                snapshot.state = State::Bytes(state);
                Ok(Some(snapshot))
            }
            Err(_) => unreadable(),
        }
    }
}

/// The longest header read: a snapshot's first line is far shorter.
const MAX_HEADER: u64 = 4096;

/// The file mapped read-only (see the module documentation for why this is sound), advised for a
/// sequential read; `None` when it cannot be mapped.
#[allow(unsafe_code)]
fn map(file: &std::fs::File) -> Option<memmap2::Mmap> {
    if file.metadata().ok()?.len() == 0 {
        return None;
    }
    // SAFETY: a snapshot file is not written or truncated once it has its name (see the module
    // documentation), so the mapped bytes do not change under the reference.
    let map = unsafe { memmap2::Mmap::map(file) }.ok()?;
    // Advice only: a decode that runs without it is as correct.
    let _ = map.advise(memmap2::Advice::Sequential);
    Some(map)
}

/// The first line of `bytes`, newline included (as much as there is, up to [`MAX_HEADER`], when
/// it has none): a snapshot's header. `None` when there is nothing.
fn first_line(bytes: &[u8]) -> Option<&[u8]> {
    let head = &bytes[..bytes.len().min(MAX_HEADER as usize)];
    let end = head.iter().position(|byte| *byte == b'\n').map_or(head.len(), |newline| newline + 1);
    (end > 0).then(|| &head[..end])
}

/// The first line of a file, newline included (as much as there is, up to [`MAX_HEADER`], when
/// it has none): a snapshot's header. `None` when it cannot be read.
fn read_header(reader: &mut BufReader<std::fs::File>) -> Option<Vec<u8>> {
    let mut header = Vec::new();
    reader.take(MAX_HEADER).read_until(b'\n', &mut header).ok()?;
    Some(header)
}

/// Writes `parts` one after the other (a header and a state, not copied together) and syncs.
fn write_synced(path: &Path, parts: &[&[u8]]) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(path)?;
    for part in parts {
        file.write_all(part)?;
    }
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(offset: u64, value: &str) -> Record {
        Record { topic: "t".into(), partition: 0, offset, key: "k".into(), value: value.as_bytes().to_vec() }
    }

    #[test]
    fn a_saved_snapshot_loads_back_with_its_log_and_anchor() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path(), "log-a").unwrap();
        let anchor = Anchor::of(&record(41, "x"));
        store.save("p0", 42, Some(anchor.clone()), b"{\"state\":1}".to_vec()).unwrap();
        let loaded = store.load("p0").unwrap().unwrap();
        assert_eq!(loaded.log, "log-a");
        assert_eq!((loaded.offset, loaded.anchor), (42, Some(anchor)));
        assert_eq!(&loaded.state[..], b"{\"state\":1}");
        assert_ne!(Anchor::of(&record(41, "x")), Anchor::of(&record(41, "y")));
        // A state far longer than the reader's buffer, newlines and all, comes back whole.
        let large: Vec<u8> = (0..300_000u32).map(|n| (n % 251) as u8).collect();
        store.save("p1", 7, None, large.clone()).unwrap();
        assert_eq!(store.load("p1").unwrap().unwrap().state, State::Bytes(large));
    }

    #[test]
    fn a_loaded_state_is_mapped_and_keeps_its_bytes_when_a_newer_snapshot_replaces_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path(), "log-a").unwrap();
        let old: Vec<u8> = (0..100_000u32).map(|n| (n % 13) as u8).collect();
        store.save("p0", 1, None, old.clone()).unwrap();
        let loaded = store.load("p0").unwrap().unwrap();
        assert!(matches!(loaded.state, State::Mapped { .. }), "{:?}", loaded.state);
        store.save("p0", 2, None, vec![7; 50_000]).unwrap();
        assert_eq!(&loaded.state[..], &old[..]);
        let newer = store.load("p0").unwrap().unwrap();
        assert_eq!((newer.offset, &newer.state[..]), (2, &[7; 50_000][..]));
    }

    #[test]
    fn a_snapshot_of_another_log_is_refused_on_open_and_on_load() {
        let dir = tempfile::tempdir().unwrap();
        SnapshotStore::open(dir.path(), "log-a").unwrap().save("p0", 1, None, b"{}".to_vec()).unwrap();
        let error = SnapshotStore::open(dir.path(), "log-b").unwrap_err();
        assert!(matches!(error, SnapshotError::OtherLog { .. }), "{error}");
        assert!(error.to_string().contains("move the snapshot directory"), "{error}");
        let store = SnapshotStore { dir: dir.path().to_owned(), log: "log-b".into() };
        assert!(matches!(store.load("p0"), Err(SnapshotError::OtherLog { .. })));
    }

    #[test]
    fn an_unreadable_snapshot_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path(), "log-a").unwrap();
        for garbage in [
            &b"{garbage"[..],
            b"ipam-snapshot v1 offset=5\n{}",
            b"ipam-snapshot v2 log=log-a offset=x anchor=none\n{}",
            b"",
        ] {
            std::fs::write(dir.path().join("p0.json"), garbage).unwrap();
            assert_eq!(store.load("p0").unwrap(), None);
            SnapshotStore::open(dir.path(), "log-a").unwrap();
        }
    }
}
