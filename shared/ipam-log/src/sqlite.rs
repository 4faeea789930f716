//! The embedded backend: the log in one SQLite database on local disk, in WAL mode.
//!
//! One database transaction per committed batch is what makes a step atomic: its outputs, its
//! positions and the fencing check either all reach the WAL with the commit record, or none of it
//! counts when the database is next opened (after a crash or a `kill -9` mid-commit).
//! With `synchronous=NORMAL` (the default) a commit survives the process dying at any point; with
//! `synchronous=FULL` ([`Durability::Fsync`]) it also survives the machine losing power, at the
//! cost of an fsync per batch. Steps are batched ([`crate::BatchPolicy`]) to amortize that.
//!
//! Readers use their own connection and see committed data only. A member's batch is buffered in
//! memory and written in one short transaction when it commits, so an open batch never holds the
//! database's write lock.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, RwLock};
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
        let reader = connect(&path, durability)?;
        reader
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
        let identity = reader
            .query_row("SELECT value FROM meta WHERE key = 'log_id'", [], |row| row.get::<_, String>(0))
            .map_err(storage)?;
        let partitions = {
            let mut statement = reader.prepare("SELECT name, partitions FROM topics").map_err(storage)?;
            let rows = statement
                .query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, u32>(1)?)))
                .map_err(storage)?;
            rows.collect::<Result<BTreeMap<_, _>, _>>().map_err(storage)?
        };
        Ok(LocalLog::over(SqliteStore {
            identity,
            path,
            durability,
            reader: Mutex::new(reader),
            writers: Mutex::new(Vec::new()),
            partitions: RwLock::new(partitions),
        }))
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
    // Writers queue behind a member's open batch, which the batch policy keeps short.
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
    reader: Mutex<Connection>,
    /// Idle write connections, so concurrent writers do not queue on one mutex.
    writers: Mutex<Vec<Connection>>,
    partitions: RwLock<BTreeMap<String, u32>>,
}

impl SqliteStore {
    fn reader(&self) -> MutexGuard<'_, Connection> {
        self.reader.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn writer(&self) -> Result<Connection, LogError> {
        let idle = self.writers.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match idle {
            Some(connection) => Ok(connection),
            None => connect(&self.path, self.durability),
        }
    }

    fn give_back(&self, connection: Connection) {
        self.writers.lock().unwrap_or_else(|e| e.into_inner()).push(connection);
    }

    fn check_partition(&self, topic: &str, partition: u32) -> Result<(), LogError> {
        let count = self.partition_count(topic)?;
        if partition < count { Ok(()) } else { Err(LogError::NoSuchPartition { topic: topic.to_owned(), partition }) }
    }
}

fn end_offset(connection: &Connection, topic: &str, partition: u32) -> Result<u64, LogError> {
    connection
        .query_row(
            "SELECT COALESCE(MAX(offset) + 1, 0) FROM records WHERE topic = ?1 AND partition = ?2",
            params![topic, partition],
            |row| row.get::<_, i64>(0),
        )
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
                    self.reader()
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
        let reader = self.reader();
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
        end_offset(&self.reader(), topic, partition)
    }

    fn committed_position(&self, group: &str, topic: &str, partition: u32) -> Result<Option<u64>, LogError> {
        self.check_partition(topic, partition)?;
        self.reader()
            .query_row(
                "SELECT next_offset FROM positions WHERE grp = ?1 AND topic = ?2 AND partition = ?3",
                params![group, topic, partition],
                |row| row.get::<_, i64>(0),
            )
            .optional()
            .map(|position| position.map(|p| p as u64))
            .map_err(storage)
    }

    fn append(&self, records: &[Placed]) -> Result<Vec<Appended>, LogError> {
        for record in records {
            self.check_partition(&record.topic, record.partition)?;
        }
        let mut connection = self.writer()?;
        let result = (|| {
            let transaction =
                connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(storage)?;
            let appended = insert(&transaction, &mut BTreeMap::new(), records)?;
            transaction.commit().map_err(storage)?;
            Ok(appended)
        })();
        self.give_back(connection);
        result
    }

    fn register_producer(&self, transactional_id: &str) -> Result<u64, LogError> {
        self.reader()
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
        let mut connection = self.writer()?;
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
            for position in &batch.positions {
                statement
                    .execute(params![batch.group, position.topic, position.partition, position.next_offset as i64])
                    .map_err(storage)?;
            }
            drop(statement);
            transaction.commit().map_err(storage)
        })();
        self.give_back(connection);
        result
    }
}
