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

use std::io::Read;
use std::ops::Deref;
use std::path::{Path, PathBuf};

use ipam_log::Record;
use sha2::{Digest, Sha256};

/// The first line of a snapshot file names the format; the state follows it.
const FORMAT: &str = "ipam-snapshot v2";

/// A snapshot file's extension: `<name>.snapshot`, a text header line and then the state's bytes
/// (MessagePack for every state there is).
const EXTENSION: &str = "snapshot";

/// The extension of snapshot files written before 0.3 (the same contents, misnamed as JSON since
/// the states became MessagePack): read while no `.snapshot` file of the name exists, and removed
/// by the name's next save.
const OLDER_EXTENSION: &str = "json";

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

/// A snapshot's state: its file's contents past the header (mapped, or read where the file
/// cannot be mapped), or bytes given. Derefs to the state's bytes.
pub struct State {
    contents: Contents,
    start: usize,
}

/// A snapshot file's whole contents.
enum Contents {
    Mapped(memmap2::Mmap),
    Bytes(Vec<u8>),
}

impl Contents {
    /// The file mapped read-only (see the module documentation for why this is sound) and advised
    /// for a sequential read, or, where it cannot be mapped (an empty file, a file system without
    /// mappings), read; `None` when it cannot be read either.
    #[allow(unsafe_code)]
    fn of(mut file: std::fs::File) -> Option<Contents> {
        if file.metadata().ok()?.len() > 0 {
            // SAFETY: a snapshot file is not written or truncated once it has its name (see the
            // module documentation), so the mapped bytes do not change under the reference.
            if let Ok(map) = unsafe { memmap2::Mmap::map(&file) } {
                // Advice only: a decode that runs without it is as correct.
                let _ = map.advise(memmap2::Advice::Sequential);
                return Some(Contents::Mapped(map));
            }
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).ok()?;
        Some(Contents::Bytes(bytes))
    }
}

impl Deref for Contents {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Contents::Mapped(map) => map,
            Contents::Bytes(bytes) => bytes,
        }
    }
}

impl State {
    /// Whether the state is read from its file's mapping.
    pub fn is_mapped(&self) -> bool {
        matches!(self.contents, Contents::Mapped(_))
    }
}

impl Deref for State {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.contents[self.start..]
    }
}

impl From<Vec<u8>> for State {
    fn from(bytes: Vec<u8>) -> State {
        State { contents: Contents::Bytes(bytes), start: 0 }
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
        let how = if self.is_mapped() { "mapped" } else { "bytes" };
        write!(f, "State({} bytes, {how})", self.len())
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
        Some(Snapshot { log, offset, anchor, state: State::from(Vec::new()) })
    }
}

/// Whether `path` names a snapshot file (of this version or an older one).
pub fn is_snapshot_file(path: &Path) -> bool {
    path.extension().is_some_and(|extension| extension == EXTENSION || extension == OLDER_EXTENSION)
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
            if !is_snapshot_file(&path) {
                continue;
            }
            // The header names the log: mapped, a store of a million reservations is not read
            // through its hundreds of megabytes of state to know whose they are.
            let contents = std::fs::File::open(&path).ok().and_then(Contents::of);
            if let Some(snapshot) = contents.as_deref().and_then(first_line).and_then(Snapshot::parse_header) {
                store.check_log(&path, &snapshot)?;
            }
        }
        Ok(store)
    }

    /// The directory the snapshots are in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `name`'s file. Names hold dots (topic names): the extension is appended, never set.
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.{EXTENSION}"))
    }

    /// The file an older version wrote for `name`.
    fn older_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.{OLDER_EXTENSION}"))
    }

    /// Where `name`'s snapshot is read from: its file, or one an older version wrote.
    fn readable_path(&self, name: &str) -> PathBuf {
        let (path, older) = (self.path(name), self.older_path(name));
        if !path.exists() && older.exists() { older } else { path }
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
            let temporary = path.with_extension(format!("{EXTENSION}.tmp"));
            write_synced(&temporary, &[header.as_bytes(), &state])?;
            std::fs::rename(&temporary, &path)?;
            // An older version's file of the name is stale from now on.
            match std::fs::remove_file(self.older_path(name)) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
                _ => Ok(()),
            }
        };
        write().map_err(|source| SnapshotError::Write { path: path.clone(), source })
    }

    /// The latest snapshot of `name`, if there is a readable one of this log. An unreadable file is
    /// reported and ignored (rebuilding then replays from zero); one of another log is refused.
    pub fn load(&self, name: &str) -> Result<Option<Snapshot>, SnapshotError> {
        let path = self.readable_path(name);
        let Ok(file) = std::fs::File::open(&path) else { return Ok(None) };
        let Some(contents) = Contents::of(file) else { return Ok(unreadable(&path)) };
        let Some(line) = first_line(&contents) else { return Ok(unreadable(&path)) };
        let Some(mut snapshot) = Snapshot::parse_header(line) else { return Ok(unreadable(&path)) };
        let start = line.len();
        self.check_log(&path, &snapshot)?;
        snapshot.state = State { contents, start };
        Ok(Some(snapshot))
    }
}

/// Reports a snapshot that cannot be read; answers that there is none to use.
fn unreadable(path: &Path) -> Option<Snapshot> {
    tracing::warn!(path = %path.display(),
                   "Ignoring a snapshot that cannot be read (torn, garbled or of an older format); replaying from zero.");
    None
}

/// The longest header looked for: a snapshot's first line is far shorter.
const MAX_HEADER: usize = 4096;

/// The first line of `bytes`, newline included (as much as there is, up to [`MAX_HEADER`], when
/// it has none): a snapshot's header. `None` when there is nothing.
fn first_line(bytes: &[u8]) -> Option<&[u8]> {
    let head = &bytes[..bytes.len().min(MAX_HEADER)];
    let end = head.iter().position(|byte| *byte == b'\n').map_or(head.len(), |newline| newline + 1);
    (end > 0).then(|| &head[..end])
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
        assert_eq!(store.load("p1").unwrap().unwrap().state, State::from(large));
    }

    #[test]
    fn a_loaded_state_is_mapped_and_keeps_its_bytes_when_a_newer_snapshot_replaces_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path(), "log-a").unwrap();
        let old: Vec<u8> = (0..100_000u32).map(|n| (n % 13) as u8).collect();
        store.save("p0", 1, None, old.clone()).unwrap();
        let loaded = store.load("p0").unwrap().unwrap();
        assert!(loaded.state.is_mapped(), "{:?}", loaded.state);
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

    /// Before 0.3 snapshot files were named `<name>.json` (their states MessagePack all the
    /// same): one is read while the name has no `.snapshot` file, checked against the log on open,
    /// and removed by the name's next save.
    #[test]
    fn a_snapshot_an_older_version_named_json_is_read_until_the_next_save_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path(), "log-a").unwrap();
        store.save("allocator-ipam.networks-0", 3, None, b"older".to_vec()).unwrap();
        store.save("allocator-ipam.networks-1", 5, None, b"other".to_vec()).unwrap();
        let older = dir.path().join("allocator-ipam.networks-0.json");
        std::fs::rename(dir.path().join("allocator-ipam.networks-0.snapshot"), &older).unwrap();
        let loaded = store.load("allocator-ipam.networks-0").unwrap().unwrap();
        assert_eq!((loaded.offset, &loaded.state[..]), (3, &b"older"[..]));
        let error = SnapshotStore::open(dir.path(), "log-b").unwrap_err();
        assert!(matches!(error, SnapshotError::OtherLog { .. }), "an older file names its log too: {error}");
        store.save("allocator-ipam.networks-0", 4, None, b"newer".to_vec()).unwrap();
        assert!(!older.exists(), "the save removed the older file");
        let file = dir.path().join("allocator-ipam.networks-0.snapshot");
        assert!(file.exists(), "names with dots keep them: the extension is appended");
        assert_eq!(store.load("allocator-ipam.networks-0").unwrap().unwrap().offset, 4);
        assert_eq!(store.load("allocator-ipam.networks-1").unwrap().unwrap().offset, 5, "each name its own file");
        // What a start that finds snapshots without their log counts as snapshots.
        assert!(is_snapshot_file(&older) && is_snapshot_file(&file));
        assert!(!is_snapshot_file(&dir.path().join("p0.snapshot.tmp")));
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
            std::fs::write(dir.path().join("p0.snapshot"), garbage).unwrap();
            assert_eq!(store.load("p0").unwrap(), None);
            SnapshotStore::open(dir.path(), "log-a").unwrap();
        }
    }
}
