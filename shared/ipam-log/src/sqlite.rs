//! The embedded backend: the log in one SQLite database on local disk, in WAL mode.
//!
//! One database transaction per committed batch is what makes a step atomic: its outputs, its
//! positions and the fencing check either all reach the WAL with the commit record, or none of it
//! counts when the database is next opened (after a crash or a `kill -9` mid-commit).
//! With `synchronous=NORMAL` (the default) a commit survives the process dying at any point; with
//! `synchronous=FULL` ([`Durability::Fsync`]) it also survives the machine losing power, at the
//! cost of an fsync per batch. Steps are batched ([`crate::BatchPolicy`]) to amortize that.
//!
//! Readers take a connection of their own from a pool and see committed data only, so the
//! allocator's polls, the API's read model, a host agent and `/metrics` read side by side. A
//! member's batch is buffered in memory and written in one short transaction when it commits, so
//! an open batch never holds the database's write lock.
//!
//! Writers of this process queue on one write connection behind a mutex, not in SQLite's busy
//! handler (which sleeps in steps of up to 100 ms while another connection holds the lock).
//! Appends that queue meanwhile are written together: whoever takes the write connection writes
//! every append waiting then in one transaction (group commit), and each caller is answered once
//! that transaction is committed. So concurrent `POST /v1/events` share one commit (and, with
//! [`Durability::Fsync`], one fsync) without any caller being answered before its records are
//! durable. A group whose transaction fails is written again one append at a time, so each caller
//! gets the answer its own records would have had alone.
//!
//! The WAL is checkpointed (its pages copied into the database file) mostly by a thread of its own,
//! not by the writer whose commit crossed SQLite's threshold: that checkpoint took a quarter to a
//! third of the write connection's time under load, with every writer of the process queued behind
//! it. The thread's passive checkpoints wait for nobody and are waited for by nobody. But SQLite
//! starts the WAL over (instead of growing it) only when a checkpoint has copied all of it before a
//! writer begins, which one running beside a steady writer never achieves: so the writer still
//! checkpoints once the WAL holds [`WAL_RESET_FRAMES`] (SQLite's own `wal_autocheckpoint`, four
//! times its default), copying only what the thread has not, and the WAL stays within that and one
//! transaction (`ipam bench --recovery`'s bulk load of a million records, whose transactions are
//! large, peaked at 166 MiB). A crash before a checkpoint only leaves a longer WAL, which the next
//! open reads as always. What the thread saves shows where transactions are large: `ipam bench
//! --recovery`'s bulk load appends 253k and 261k records/s with it, 215k and 217k/s without (the
//! writer's threshold alone); `ipam bench`'s load of 2,000-step batches runs the same either way.

use std::collections::{BTreeMap, HashMap};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use crate::local::{Batch, LocalLog, LocalStore, Placed};
use crate::{Appended, LogError, Record, TopicSpec};

/// What a commit survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// The process dying at any point (`synchronous=NORMAL`).
    #[default]
    ProcessCrash,
    /// The machine losing power too (`synchronous=FULL`: an fsync per commit).
    Fsync,
}

/// The embedded log.
pub type SqliteLog = LocalLog<SqliteStore>;

impl SqliteLog {
    /// Opens (or creates) the log in `dir/log.sqlite3`. A transaction left open by a crash is rolled
    /// back here.
    pub fn open(dir: &Path, durability: Durability) -> Result<SqliteLog, LogError> {
        std::fs::create_dir_all(dir).map_err(|e| LogError::Storage(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join("log.sqlite3");
        let writer = connect(&path, durability)?;
        writer
            .execute_batch(
                "CREATE TABLE IF NOT EXISTS topics (name TEXT PRIMARY KEY, partitions INTEGER NOT NULL);
                 CREATE TABLE IF NOT EXISTS records (
                     topic TEXT NOT NULL, partition INTEGER NOT NULL, offset INTEGER NOT NULL,
                     key TEXT NOT NULL, value BLOB NOT NULL,
                     PRIMARY KEY (topic, partition, offset)) WITHOUT ROWID;
                 CREATE TABLE IF NOT EXISTS positions (
                     grp TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER NOT NULL,
                     next_offset INTEGER NOT NULL,
                     PRIMARY KEY (grp, topic, partition)) WITHOUT ROWID;
                 CREATE TABLE IF NOT EXISTS producers (transactional_id TEXT PRIMARY KEY, epoch INTEGER NOT NULL);
                 CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                 INSERT OR IGNORE INTO meta (key, value) VALUES ('log_id', 'sqlite-' || lower(hex(randomblob(16))));",
            )
            .map_err(storage)?;
        let identity = writer
            .query_row("SELECT value FROM meta WHERE key = 'log_id'", [], |row| row.get::<_, String>(0))
            .map_err(storage)?;
        let partitions = {
            let mut statement = writer.prepare("SELECT name, partitions FROM topics").map_err(storage)?;
            let rows = statement
                .query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, u32>(1)?)))
                .map_err(storage)?;
            rows.collect::<Result<BTreeMap<_, _>, _>>().map_err(storage)?
        };
        writer
            .execute_batch(&format!(
                "PRAGMA wal_autocheckpoint={WAL_RESET_FRAMES}; PRAGMA journal_size_limit={WAL_SIZE_LIMIT};"
            ))
            .map_err(storage)?;
        let checkpointer = Checkpointer::start(connect(&path, durability)?)?;
        Ok(LocalLog::over(SqliteStore {
            identity,
            path,
            durability,
            readers: Mutex::new(Vec::new()),
            writer: Mutex::new(writer),
            queue: Mutex::new(AppendQueue::default()),
            partitions: RwLock::new(partitions),
            _checkpointer: checkpointer,
        }))
    }
}

/// How often the checkpointer copies what the WAL gained into the database file.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(50);

/// A WAL this many frames (pages) long is checkpointed by the writer after its commit, and so
/// started over: 16 MiB with SQLite's default page size.
const WAL_RESET_FRAMES: i64 = 4096;

/// The size the WAL file is cut back to when it starts over (SQLite's `journal_size_limit`).
const WAL_SIZE_LIMIT: u64 = 64 << 20;

/// The thread that checkpoints the WAL (see the module's documentation); it ends when dropped.
#[derive(Debug)]
struct Checkpointer {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    fn start(connection: Connection) -> Result<Checkpointer, LogError> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("ipam-log-checkpoint".to_owned())
            .spawn(move || {
                let (flag, wake) = &*stopped;
                let mut failure = None;
                loop {
                    let (stop, _) = wake
                        .wait_timeout_while(lock(flag), CHECKPOINT_INTERVAL, |stop| !*stop)
                        .unwrap_or_else(|e| e.into_inner());
                    if *stop {
                        break;
                    }
                    drop(stop);
                    // A failure is a busy database or a full disk, which the writers meet and
                    // report themselves.
                    let result = connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                    match result {
                        Ok(()) => failure = None,
                        Err(error) if failure.as_ref() != Some(&error.to_string()) => {
                            tracing::warn!(error = %error, "Cannot checkpoint the log's WAL; trying again.");
                            failure = Some(error.to_string());
                        }
                        Err(_) => {}
                    }
                }
            })
            .map_err(|e| LogError::Storage(format!("cannot start the WAL checkpoint thread: {e}")))?;
        Ok(Checkpointer { stop, thread: Some(thread) })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        let (flag, wake) = &*self.stop;
        *lock(flag) = true;
        wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn storage(error: rusqlite::Error) -> LogError {
    LogError::Storage(error.to_string())
}

fn connect(path: &Path, durability: Durability) -> Result<Connection, LogError> {
    let connection = Connection::open(path).map_err(storage)?;
    let synchronous = match durability {
        Durability::ProcessCrash => "NORMAL",
        Durability::Fsync => "FULL",
    };
    connection
        .execute_batch(&format!("PRAGMA journal_mode=WAL; PRAGMA synchronous={synchronous};"))
        .map_err(storage)?;
    // Only another process's writer (or a reader checkpointing the WAL) is waited for here: this
    // process's writers queue on the write connection's mutex.
    connection.busy_timeout(Duration::from_secs(30)).map_err(storage)?;
    Ok(connection)
}

/// The embedded backend's storage.
#[derive(Debug)]
pub struct SqliteStore {
    /// Made when the database is created (a random 128-bit id), kept for its life.
    identity: String,
    path: PathBuf,
    durability: Durability,
    /// Idle read connections, so that readers on several threads do not queue on one.
    readers: Mutex<Vec<Connection>>,
    /// The one write connection of this process (see the module's documentation).
    writer: Mutex<Connection>,
    /// Appends waiting for the write connection, and the answers of those written by another
    /// caller's group.
    queue: Mutex<AppendQueue>,
    partitions: RwLock<BTreeMap<String, u32>>,
    /// The WAL's checkpoint thread, held for its life: it ends with the store.
    _checkpointer: Checkpointer,
}

/// The appends of a group commit.
#[derive(Debug, Default)]
struct AppendQueue {
    next_ticket: u64,
    waiting: Vec<(u64, Vec<Placed>)>,
    answered: HashMap<u64, Result<Vec<Appended>, LogError>>,
}

/// A read connection taken from the pool, given back when dropped.
struct Reader<'a> {
    store: &'a SqliteStore,
    connection: Option<Connection>,
}

impl Deref for Reader<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.connection.as_ref().expect("a reader holds its connection until dropped")
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        if let Some(connection) = self.connection.take() {
            lock(&self.store.readers).push(connection);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl SqliteStore {
    fn reader(&self) -> Result<Reader<'_>, LogError> {
        let idle = lock(&self.readers).pop();
        let connection = match idle {
            Some(connection) => connection,
            None => connect(&self.path, self.durability)?,
        };
        Ok(Reader { store: self, connection: Some(connection) })
    }

    fn writer(&self) -> MutexGuard<'_, Connection> {
        lock(&self.writer)
    }

    fn check_partition(&self, topic: &str, partition: u32) -> Result<(), LogError> {
        let count = self.partition_count(topic)?;
        if partition < count { Ok(()) } else { Err(LogError::NoSuchPartition { topic: topic.to_owned(), partition }) }
    }
}

/// Writes a group of appends in one transaction; if that fails, each in a transaction of its own.
fn write_group(connection: &mut Connection, group: &[(u64, Vec<Placed>)]) -> Vec<Result<Vec<Appended>, LogError>> {
    let together = (|| {
        let transaction =
            connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(storage)?;
        let mut ends = BTreeMap::new();
        let appended =
            group.iter().map(|(_, records)| insert(&transaction, &mut ends, records)).collect::<Result<Vec<_>, _>>()?;
        transaction.commit().map_err(storage)?;
        Ok::<_, LogError>(appended)
    })();
    match together {
        Ok(appended) => appended.into_iter().map(Ok).collect(),
        Err(error) if group.len() == 1 => vec![Err(error)],
        Err(_) => group
            .iter()
            .map(|(_, records)| {
                let transaction =
                    connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(storage)?;
                let appended = insert(&transaction, &mut BTreeMap::new(), records)?;
                transaction.commit().map_err(storage)?;
                Ok(appended)
            })
            .collect(),
    }
}

fn end_offset(connection: &Connection, topic: &str, partition: u32) -> Result<u64, LogError> {
    connection
        .prepare_cached("SELECT COALESCE(MAX(offset) + 1, 0) FROM records WHERE topic = ?1 AND partition = ?2")
        .and_then(|mut statement| statement.query_row(params![topic, partition], |row| row.get::<_, i64>(0)))
        .map(|offset| offset as u64)
        .map_err(storage)
}

/// Inserts records at the ends of their partitions, inside the caller's transaction.
fn insert(
    connection: &Connection,
    ends: &mut BTreeMap<(String, u32), u64>,
    records: &[Placed],
) -> Result<Vec<Appended>, LogError> {
    let mut statement = connection
        .prepare_cached("INSERT INTO records (topic, partition, offset, key, value) VALUES (?1, ?2, ?3, ?4, ?5)")
        .map_err(storage)?;
    records
        .iter()
        .map(|record| {
            let key = (record.topic.clone(), record.partition);
            let offset = match ends.get(&key) {
                Some(offset) => *offset,
                None => end_offset(connection, &record.topic, record.partition)?,
            };
            statement
                .execute(params![record.topic, record.partition, offset as i64, record.key, record.value])
                .map_err(storage)?;
            ends.insert(key, offset + 1);
            Ok(Appended { partition: record.partition, offset })
        })
        .collect()
}

impl LocalStore for SqliteStore {
    fn identity(&self) -> Result<String, LogError> {
        Ok(self.identity.clone())
    }

    fn create_topics(&self, topics: &[TopicSpec]) -> Result<(), LogError> {
        let mut partitions = self.partitions.write().unwrap_or_else(|e| e.into_inner());
        for spec in topics {
            if spec.partitions == 0 {
                return Err(LogError::Config(format!("topic `{}` needs at least one partition", spec.name)));
            }
            match partitions.get(&spec.name) {
                Some(existing) if *existing != spec.partitions => {
                    return Err(LogError::PartitionCountMismatch {
                        topic: spec.name.clone(),
                        existing: *existing,
                        wanted: spec.partitions,
                    });
                }
                Some(_) => {}
                None => {
                    self.writer()
                        .execute(
                            "INSERT INTO topics (name, partitions) VALUES (?1, ?2)",
                            params![spec.name, spec.partitions],
                        )
                        .map_err(storage)?;
                    partitions.insert(spec.name.clone(), spec.partitions);
                }
            }
        }
        Ok(())
    }

    fn partition_count(&self, topic: &str) -> Result<u32, LogError> {
        let partitions = self.partitions.read().unwrap_or_else(|e| e.into_inner());
        partitions.get(topic).copied().ok_or_else(|| LogError::UnknownTopic(topic.to_owned()))
    }

    fn read(&self, topic: &str, partition: u32, from: u64, max: usize) -> Result<Vec<Record>, LogError> {
        self.check_partition(topic, partition)?;
        // SQLite integers are i64: no record lies at an offset beyond, and a cast would wrap to
        // a negative offset and read from the start.
        let Ok(from) = i64::try_from(from) else { return Ok(Vec::new()) };
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        let reader = self.reader()?;
        let mut statement = reader
            .prepare_cached(
                "SELECT offset, key, value FROM records WHERE topic = ?1 AND partition = ?2 AND offset >= ?3
                 ORDER BY offset LIMIT ?4",
            )
            .map_err(storage)?;
        let rows = statement
            .query_map(params![topic, partition, from, max], |row| {
                Ok(Record {
                    topic: topic.to_owned(),
                    partition,
                    offset: row.get::<_, i64>(0)? as u64,
                    key: row.get(1)?,
                    value: row.get(2)?,
                })
            })
            .map_err(storage)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(storage)
    }

    fn end_offset(&self, topic: &str, partition: u32) -> Result<u64, LogError> {
        self.check_partition(topic, partition)?;
        end_offset(&*self.reader()?, topic, partition)
    }

    fn committed_position(&self, group: &str, topic: &str, partition: u32) -> Result<Option<u64>, LogError> {
        self.check_partition(topic, partition)?;
        self.reader()?
            .prepare_cached("SELECT next_offset FROM positions WHERE grp = ?1 AND topic = ?2 AND partition = ?3")
            .and_then(|mut statement| {
                statement.query_row(params![group, topic, partition], |row| row.get::<_, i64>(0)).optional()
            })
            .map(|position| position.map(|p| p as u64))
            .map_err(storage)
    }

    fn append(&self, records: &[Placed]) -> Result<Vec<Appended>, LogError> {
        for record in records {
            self.check_partition(&record.topic, record.partition)?;
        }
        let ticket = {
            let mut queue = lock(&self.queue);
            let ticket = queue.next_ticket;
            queue.next_ticket += 1;
            queue.waiting.push((ticket, records.to_vec()));
            ticket
        };
        let mut connection = self.writer();
        // Whoever held the write connection before may have written this append in its group.
        let group = {
            let mut queue = lock(&self.queue);
            if let Some(answer) = queue.answered.remove(&ticket) {
                return answer;
            }
            std::mem::take(&mut queue.waiting)
        };
        let mut answers = write_group(&mut connection, &group);
        let mine = group.iter().position(|(t, _)| *t == ticket).expect("a caller's own append is in its group");
        let answer = answers.swap_remove(mine);
        let mut queue = lock(&self.queue);
        // `swap_remove` moved the last answer into `mine`'s place: pair them up again.
        let mut tickets: Vec<u64> = group.iter().map(|(t, _)| *t).collect();
        tickets.swap_remove(mine);
        queue.answered.extend(tickets.into_iter().zip(answers));
        // Answers are handed over before the write connection is let go, so a waiting caller finds
        // its own when it takes the connection.
        drop(queue);
        drop(connection);
        answer
    }

    fn register_producer(&self, transactional_id: &str) -> Result<u64, LogError> {
        self.writer()
            .query_row(
                "INSERT INTO producers (transactional_id, epoch) VALUES (?1, 1)
                 ON CONFLICT (transactional_id) DO UPDATE SET epoch = epoch + 1 RETURNING epoch",
                params![transactional_id],
                |row| row.get::<_, i64>(0),
            )
            .map(|epoch| epoch as u64)
            .map_err(storage)
    }

    fn commit_batch(&self, batch: &Batch) -> Result<(), LogError> {
        for position in &batch.positions {
            self.check_partition(&position.topic, position.partition)?;
        }
        // Steps usually advance one partition many times: only its last position is written.
        let mut positions: BTreeMap<(&str, u32), u64> = BTreeMap::new();
        for position in &batch.positions {
            positions.insert((&position.topic, position.partition), position.next_offset);
        }
        let mut connection = self.writer();
        let result = (|| {
            let transaction =
                connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(storage)?;
            // The write lock is held from here to the commit, so the epoch cannot change in between.
            let epoch: Option<i64> = transaction
                .query_row(
                    "SELECT epoch FROM producers WHERE transactional_id = ?1",
                    params![batch.transactional_id],
                    |row| row.get(0),
                )
                .optional()
                .map_err(storage)?;
            if epoch != Some(batch.epoch as i64) {
                return Err(LogError::Fenced(batch.transactional_id.clone()));
            }
            insert(&transaction, &mut BTreeMap::new(), &batch.outputs)?;
            let mut statement = transaction
                .prepare_cached(
                    "INSERT INTO positions (grp, topic, partition, next_offset) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (grp, topic, partition) DO UPDATE SET next_offset = excluded.next_offset",
                )
                .map_err(storage)?;
            for ((topic, partition), next_offset) in &positions {
                statement.execute(params![batch.group, topic, partition, *next_offset as i64]).map_err(storage)?;
            }
            drop(statement);
            transaction.commit().map_err(storage)
        })();
        drop(connection);
        result
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};

    use super::*;
    use crate::{EventLog, OutRecord};

    #[test]
    fn concurrent_appends_are_each_answered_with_the_offsets_of_their_own_records() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let log = SqliteLog::open(dir.path(), Durability::ProcessCrash).expect("the log opens");
        log.create_topics(&[TopicSpec { name: "t".to_owned(), partitions: 2 }]).expect("the topic is made");
        let (threads, appends, per_append) = (8, 40, 5);
        let barrier = Arc::new(Barrier::new(threads));
        let answers: Vec<Vec<(Vec<u8>, Appended)>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|thread| {
                    let (log, barrier) = (log.clone(), Arc::clone(&barrier));
                    scope.spawn(move || {
                        barrier.wait();
                        let mut seen = Vec::new();
                        for append in 0..appends {
                            let records: Vec<OutRecord> = (0..per_append)
                                .map(|i| OutRecord {
                                    topic: "t".to_owned(),
                                    key: format!("key-{thread}-{i}"),
                                    value: format!("{thread}/{append}/{i}").into_bytes(),
                                })
                                .collect();
                            let appended = log.append(&records).expect("the append is written");
                            assert_eq!(appended.len(), records.len());
                            seen.extend(records.into_iter().map(|r| r.value).zip(appended));
                        }
                        seen
                    })
                })
                .collect();
            handles.into_iter().map(|handle| handle.join().expect("no appender panics")).collect()
        });
        let mut held = 0;
        for partition in 0..2 {
            let records = log.read("t", partition, 0, usize::MAX, Duration::ZERO).expect("the partition reads");
            for (offset, record) in records.iter().enumerate() {
                assert_eq!(record.offset, offset as u64, "offsets of partition {partition} have no gaps");
            }
            held += records.len();
            for (value, appended) in answers.iter().flatten().filter(|(_, a)| a.partition == partition) {
                let record = &records[appended.offset as usize];
                assert_eq!(&record.value, value, "the answer names the caller's own record");
            }
        }
        assert_eq!(held, threads * appends * per_append);
    }

    #[test]
    fn a_batch_of_steps_on_one_partition_commits_its_last_position() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let log = SqliteLog::open(dir.path(), Durability::ProcessCrash).expect("the log opens");
        log.create_topics(&[TopicSpec { name: "in".to_owned(), partitions: 1 }]).expect("the topic is made");
        let store = log.store();
        let epoch = store.register_producer("p").expect("the producer registers");
        let position = |next_offset| crate::Position { topic: "in".to_owned(), partition: 0, next_offset };
        let batch = Batch {
            transactional_id: "p".to_owned(),
            epoch,
            group: "g".to_owned(),
            outputs: Vec::new(),
            positions: vec![position(1), position(2), position(3)],
        };
        store.commit_batch(&batch).expect("the batch commits");
        assert_eq!(store.committed_position("g", "in", 0).expect("the position reads"), Some(3));
    }

    #[test]
    fn a_steady_writer_keeps_the_wal_within_bounds() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let log = SqliteLog::open(dir.path(), Durability::ProcessCrash).expect("the log opens");
        log.create_topics(&[TopicSpec { name: "t".to_owned(), partitions: 8 }]).expect("the topic is made");
        let wal = dir.path().join("log.sqlite3-wal");
        let (appends, per_append, value) = (200, 500, vec![b'x'; 1000]);
        let mut largest = 0;
        for append in 0..appends {
            let records: Vec<OutRecord> = (0..per_append)
                .map(|i| OutRecord { topic: "t".to_owned(), key: format!("{append}-{i}"), value: value.clone() })
                .collect();
            log.append(&records).expect("the append is written");
            largest = largest.max(std::fs::metadata(&wal).map_or(0, |meta| meta.len()));
        }
        // 100 MB went through the WAL (five times that in frames); the writer's checkpoint at
        // WAL_RESET_FRAMES starts it over however far the checkpoint thread got (without it, the
        // WAL held all 504 MiB).
        assert!(largest <= WAL_SIZE_LIMIT, "the WAL grew to {} MiB", largest >> 20);
        let held: usize = (0..8)
            .map(|partition| log.read("t", partition, 0, usize::MAX, Duration::ZERO).expect("it reads").len())
            .sum();
        assert_eq!(held, appends * per_append);
    }
}
