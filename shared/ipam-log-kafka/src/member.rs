//! A member of a consumer group: one consumer that reads the group's partitions assigned to it, and
//! one transactional producer that writes a batch of steps' outputs together with the consumed
//! positions (KIP-447: `send_offsets_to_transaction` with the consumer's group metadata), so that
//! outputs and positions become visible together or not at all.
//!
//! The transactional state lives behind a mutex shared with the consumer's context, because
//! librdkafka runs the rebalance callbacks inside `BaseConsumer::poll`, and a revocation must
//! commit the open batch before the partitions go to their next owner (so it starts from our
//! positions), while a loss must abort it (someone else may already own them). The member never
//! holds that mutex while it polls the consumer.
//!
//! Every call blocks (broker round trips, up to the transaction timeout); the runtime makes them
//! off its actor threads.
//!
//! # When a batch commits
//! At the policy's `max_steps` or `max_delay`, as on every backend; and a batch whose first input
//! came after the member had waited [`QUIET`] (or the delay, if shorter) in its polls for input
//! with no batch open commits as soon as a poll finds the input drained, since a lone event would
//! otherwise wait out the delay for nothing. Under load input is waiting whenever the member
//! polls, and batches keep the delay, which groups steps into transactions worth their 10 to 30
//! ms. The quiet spell is not the delay itself: with a 20 ms delay, a start that a client posts as
//! soon as its previous one was served comes sooner than that after the commit, and waited the
//! delay out (one start → its line p50 36 ms instead of 17, `ipam bench --kafka
//! --batch-max-delay-ms 20`); nor is it any wait at all: under load the consumer's queue is empty
//! for a moment between fetches, and eager batches then made transactions so small that the rate
//! fell by a third. It is time spent waiting in polls, not since the last one: input that came
//! while the runtime was busy is a load's.
//!
//! # Commits in flight
//! A transaction's commit is mostly waiting: for the batch's delivery reports, the offsets'
//! round trips, `EndTxn`, and the markers that make it visible, 25 to 60 ms under load, during
//! which a member that waited did nothing else (its process on a core a quarter of the time).
//! So a batch due to commit ([`KafkaMember::step`], `poll`) commits on a thread of its own
//! ([`CommitJob::run`]) while the runtime goes on polling and stepping. One producer has one
//! transaction at a time, so the steps taken meanwhile queue ([`Queued`]: their outputs and
//! positions, in order) and open the next transaction as soon as the commit is done; under load
//! commits follow one another with no gap, each holding the steps of the one before's wait. The
//! next transaction begins only once the commit is visible (its markers written), as before: one
//! that began sooner would meet `CONCURRENT_TRANSACTIONS` at its first write and back off.
//! Order is kept (outputs leave in step order, and a batch commits only after the one before it),
//! and so is atomicity: a commit that fails discards the queue behind it too, and the owned
//! partitions are rebuilt as for any failed commit. [`Member::commit`], an abort and a revocation
//! wait for the commit in flight first, so what the runtime asks for explicitly still returns once
//! visible.
//!
//! # Static membership
//! The consumer joins as a static member whose instance is the transactional id (see
//! `KafkaOptions::member_consumer_config`): a member restarted after a crash takes its partitions
//! back at once instead of after the dead one's session. It leaves explicitly when it stops
//! (`KafkaMember::leave`), and a consumer the group fences for its own instance id is re-created
//! (`KafkaMember::replace_fenced_consumer`).
//!
//! # When the broker goes away
//! A broker that restarts (or a coordinator that moves) while a transaction is open leaves it
//! undecided; if it stays away longer than the transaction timeout, the coordinator aborts the
//! transaction itself when it is back and bumps the producer's epoch. librdkafka then reports
//! every call as fatal `_FENCED`, exactly as when a newer member took the transactional id over
//! (`MemberState::txn_outlived_timeout` holds the rule that tells them apart). Neither that nor an
//! abort that cannot reach the coordinator ends the member: the open batch is discarded, the
//! producer is created anew at the next call (its `init_transactions` aborts whatever the broker
//! still holds of the old transaction), and so is the consumer (`KafkaMember::renew_consumer`
//! says why): the next `poll` reports every owned partition as `lost`, and as `assigned` once the
//! new consumer is given it, read from the committed positions, so that the runtime rebuilds their
//! state and re-derives the discarded outputs. Meanwhile calls fail with [`LogError::Storage`],
//! which may be retried.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ipam_log::{LogError, Member, MemberConfig, OutRecord, Polled, Position, TopicPartition, partition};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, ConsumerGroupMetadata, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use crate::errors::{TxnFailure, classify_txn, client_creation, storage};
use crate::options::KafkaOptions;
use crate::positions::{self, Positions};
use crate::read::Readers;
use crate::record::{SEAL_KEY, record_of};
use crate::topics::{self, REQUEST_TIMEOUT, Topics};

/// How long the member must have waited in its polls for input, with no batch open, for the next
/// input to be a lone one whose batch commits once drained (see the module documentation). Input
/// that is there when the member polls was not waited for, however long since the last poll.
const QUIET: Duration = Duration::from_millis(2);

/// How often a retriable transactional call is tried before giving up.
const ATTEMPTS: usize = 3;

/// How long one try to initialize a re-created producer may take; a broker still away makes it
/// fail with [`LogError::Storage`], and the next transactional call tries again.
const REINIT_TIMEOUT: Duration = Duration::from_secs(5);

/// How many times in a row the producer is re-created without a commit succeeding in between
/// before the member gives up (a fatal error that a new producer does not cure).
const MAX_REINITS: u32 = 5;

/// How long a poll waits at most while a commit is in flight, so that the steps queued meanwhile
/// open the next transaction soon after it is done.
const COLLECT_EVERY: Duration = Duration::from_millis(1);

/// How long a re-created producer waits for the partitions of a transaction in doubt to be
/// decided before it asks them how it ended (`MemberState::settle_in_doubt`): the coordinator has
/// decided it by then, and writes its markers a moment later.
const SETTLE_WAIT: Duration = Duration::from_secs(3);

/// How a transaction ended, as this member knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Committed,
    Aborted,
}

/// Whether the member can still work.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Health {
    Healthy,
    /// A newer member took over the transactional id.
    Fenced,
    /// The producer or consumer failed for good.
    Failed(String),
}

/// The steps since the last commit, in one open Kafka transaction.
struct OpenBatch {
    opened: Instant,
    steps: usize,
    /// Its first input came after the member had waited [`QUIET`] for input with no batch open: it
    /// commits as soon as a poll finds the input drained rather than at its age (see
    /// `KafkaMember::poll`).
    eager: bool,
    /// An eager batch's last poll found nothing more to read.
    drained: bool,
    /// The latest position per partition; committed with the transaction.
    positions: BTreeMap<(String, i32), i64>,
}

/// Steps taken while a commit was in flight: the producer's transaction is busy until the commit
/// is done, so their outputs wait here and open the next transaction then (`MemberState::collect`).
struct Queued {
    /// The next batch as it will be: opened at the first queued step, its steps and positions.
    batch: OpenBatch,
    /// The outputs to produce, each with its partition.
    records: Vec<(OutRecord, i32)>,
}

/// Everything a commit's broker round trips need, moved to the commit thread.
struct CommitJob {
    producer: Arc<TxnProducer>,
    topics: Arc<Topics>,
    transactional_id: String,
    /// The group's positions to commit with the transaction (KIP-447).
    offsets: Vec<((String, i32), i64)>,
    group: Option<ConsumerGroupMetadata>,
    timeout: Duration,
    steps: usize,
    age: Duration,
}

/// How a commit ended, and where its time went (for the member's debug line).
struct CommitReport {
    result: Result<(), TxnFailure>,
    /// `commit_transaction` was called: a failure leaves the outcome to the coordinator.
    commit_sent: bool,
    steps: usize,
    age: Duration,
    drained: Duration,
    offsets_sent: Duration,
    committed: Duration,
    visible: Duration,
}

impl CommitReport {
    /// A commit that failed before any broker round trip.
    fn failed(failure: TxnFailure, steps: usize, age: Duration) -> CommitReport {
        CommitReport {
            result: Err(failure),
            commit_sent: false,
            steps,
            age,
            drained: Duration::ZERO,
            offsets_sent: Duration::ZERO,
            committed: Duration::ZERO,
            visible: Duration::ZERO,
        }
    }
}

impl CommitJob {
    /// Waits for the batch's delivery reports, sends the group's positions through the group
    /// coordinator, commits, and waits until read_committed readers can see the batch.
    ///
    /// The positions' records were produced before (`MemberState::start_commit`), and are
    /// acknowledged here before the group coordinator hears of the positions: a reader that waits
    /// for the positions topic to be stable then waits for every transaction whose offsets the
    /// coordinator accepted (`crate::positions` says why it must). rdkafka's
    /// `commit_transaction` flushes first, and while anything is in flight its flush polls in
    /// slices of 100 ms that do not end early; after this wait it finds nothing to do.
    fn run(self) -> CommitReport {
        let began = Instant::now();
        let timeout = self.timeout;
        drain(&self.producer, began + timeout);
        let drained = began.elapsed();
        let mut result = Ok(());
        if !self.offsets.is_empty() {
            let mut offsets = TopicPartitionList::with_capacity(self.offsets.len());
            for ((topic, partition), next) in &self.offsets {
                if let Err(error) = offsets.add_partition_offset(topic, *partition, Offset::Offset(*next)) {
                    result = Err(TxnFailure::Other(error.to_string()));
                }
            }
            result = result.and_then(|()| match &self.group {
                Some(group) => retry(&self.producer, &self.transactional_id, |producer| {
                    producer.send_offsets_to_transaction(&offsets, group, timeout)
                }),
                None => Err(TxnFailure::Fatal("the member's consumer has no group metadata".to_owned())),
            });
        }
        let offsets_sent = began.elapsed();
        let mut commit_sent = false;
        let result = result.and_then(|()| {
            commit_sent = true;
            retry(&self.producer, &self.transactional_id, |producer| producer.commit_transaction(timeout))
        });
        let committed = began.elapsed();
        if result.is_ok() {
            let behind = await_visibility(&self.producer, &self.topics, timeout);
            self.seal_where_invisible(&behind);
        }
        CommitReport {
            result,
            commit_sent,
            steps: self.steps,
            age: self.age,
            drained,
            offsets_sent,
            committed,
            visible: began.elapsed(),
        }
    }

    /// Seals the partitions where the committed batch stayed invisible for the whole wait (see
    /// [`MemberState::seal_with`] on hanging transactions): a coordinator that loaded the
    /// transaction while its partitions had no leader (a single broker restarting) completes the
    /// commit without writing their markers, and the batch then hangs there: in the positions
    /// topic it holds back every read of the group's positions, the other members' rebuilds too;
    /// in an output topic every read_committed reader of the partition. A member with nothing more
    /// to write there would never end it (on 4 December `ipam.dead-letter` stayed stuck so). The
    /// commit succeeded, so the seal commits; were a partition held back by another producer's
    /// open transaction instead, the seal only adds a record that every read path of this backend
    /// drops (`crate::record`).
    fn seal_where_invisible(&self, behind: &[(String, i32)]) {
        if behind.is_empty() {
            return;
        }
        let partitions: BTreeSet<(String, i32)> = behind.iter().cloned().collect();
        match seal_transaction(&self.producer, &partitions, Outcome::Committed, self.timeout) {
            Ok(()) => tracing::info!(transactional_id = %self.transactional_id, ?partitions,
                "Kafka member sealed the partitions where its committed batch stayed invisible."),
            Err(error) => {
                tracing::warn!(transactional_id = %self.transactional_id, ?partitions, error = %error,
                    "Kafka member could not seal the partitions where its committed batch stays invisible.");
                // The seal's own transaction, if it is still open, holds nothing of a batch.
                let _ = self.producer.abort_transaction(self.timeout);
            }
        }
    }
}

/// The delivery reports of the open transaction's records.
#[derive(Default)]
struct Deliveries {
    sent: usize,
    reported: usize,
    /// The highest offset written per partition: the commit is visible once the partition's last
    /// stable offset passes it.
    last_offsets: BTreeMap<(String, i32), i64>,
    /// The first failed delivery, to explain why the commit fails.
    error: Option<String>,
}

/// Collects the delivery reports, which rdkafka's polling thread delivers.
#[derive(Default)]
struct TxnContext {
    deliveries: Mutex<Deliveries>,
    reported: Condvar,
}

impl TxnContext {
    fn lock(&self) -> MutexGuard<'_, Deliveries> {
        self.deliveries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits, until `deadline` at most, for the delivery report of every record sent.
    fn wait_for_reports(&self, deadline: Instant) -> MutexGuard<'_, Deliveries> {
        let mut deliveries = self.lock();
        while deliveries.reported < deliveries.sent && Instant::now() < deadline {
            deliveries = self
                .reported
                .wait_timeout(deliveries, Duration::from_millis(10))
                .map_or_else(|e| e.into_inner().0, |r| r.0);
        }
        deliveries
    }
}

impl ClientContext for TxnContext {}

impl ProducerContext for TxnContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let mut deliveries = self.lock();
        deliveries.reported += 1;
        match result {
            Ok(message) => {
                let last =
                    deliveries.last_offsets.entry((message.topic().to_owned(), message.partition())).or_insert(-1);
                *last = (*last).max(message.offset());
            }
            Err((error, message)) => {
                if deliveries.error.is_none() {
                    deliveries.error = Some(format!(
                        "delivery to `{}` partition {} failed: {error}",
                        message.topic(),
                        message.partition()
                    ));
                }
            }
        }
        self.reported.notify_all();
    }
}

/// The transactional producer. Threaded: librdkafka needs delivery reports served while it
/// flushes, commits and aborts.
type TxnProducer = ThreadedProducer<TxnContext>;

/// What the member and its consumer's rebalance callbacks share.
struct MemberState {
    transactional_id: String,
    /// Shared with the commit thread while a commit is in flight.
    producer: Arc<TxnProducer>,
    topics: Arc<Topics>,
    /// Where the group's positions are read from and written to (`crate::positions`).
    positions: Arc<Positions>,
    group: String,
    positions_topic: String,
    txn_timeout: Duration,
    /// The open transaction's batch; while a commit is in flight, the batch being committed.
    batch: Option<OpenBatch>,
    /// The commit of `batch` under way on a thread of its own, if one is (see "Commits in
    /// flight" in the module doc).
    in_flight: Option<JoinHandle<CommitReport>>,
    /// Steps taken while the commit is in flight.
    queued: Option<Queued>,
    assignment: BTreeSet<TopicPartition>,
    /// Assignment changes not yet returned by `poll`.
    changes: Polled,
    health: Health,
    /// An error met in a rebalance callback, returned by the next `poll`.
    deferred: Option<LogError>,
    /// An open batch was aborted: reading must restart at the committed positions.
    needs_rewind: bool,
    /// When the current Kafka transaction began, until it is known committed or aborted: how
    /// `txn_outlived_timeout` tells a timeout from a fence.
    txn_began: Option<Instant>,
    /// Why the producer must be re-created before the next transaction, if it must.
    reinit: Option<String>,
    /// The re-created producer exists but its `init_transactions` has not succeeded yet.
    reinit_created: bool,
    /// The partitions the current transaction wrote to, and whether its commit was asked for.
    txn_partitions: BTreeSet<(String, i32)>,
    commit_sent: bool,
    /// What discarded transactions known to be aborted wrote to; the re-created producer seals
    /// these partitions ([`MemberState::seal`]).
    unsealed: BTreeSet<(String, i32)>,
    /// What a discarded transaction whose commit was asked for wrote: the last offset per
    /// partition, until its outcome is known and what it left open is sealed with it
    /// ([`MemberState::settle_in_doubt`]).
    in_doubt: BTreeMap<(String, i32), i64>,
    /// How the producer's last transaction ended, when this member knows.
    last_outcome: Option<Outcome>,
    /// A batch was discarded (the broker away): the consumer's assignment is no longer to be
    /// trusted, and the consumer is re-created before anything more is read
    /// ([`KafkaMember::renew_consumer`]).
    renew_consumer: bool,
    /// Re-creations of the producer or the consumer since the last successful commit.
    reinits: u32,
    /// How to create the producer again.
    producer_config: ClientConfig,
    /// The member is being dropped: callbacks must not commit anything.
    closing: bool,
    /// How long the member has waited in its polls for input, with no batch open, since the last
    /// records came.
    quiet: Duration,
    /// The records `poll` last returned came after the member had been quiet for [`QUIET`]: the
    /// batch they open is eager (see [`OpenBatch::eager`]).
    eager_next: bool,
}

impl MemberState {
    fn check(&self) -> Result<(), LogError> {
        match &self.health {
            Health::Healthy => Ok(()),
            Health::Fenced => Err(LogError::Fenced(self.transactional_id.clone())),
            Health::Failed(message) => Err(LogError::Fatal(message.clone())),
        }
    }

    fn classify(&self, error: &KafkaError) -> TxnFailure {
        classify(&self.producer, error)
    }

    /// Turns a failure into the error to return, marking the member fenced or failed for good
    /// when it is. Abortable and other failures leave the caller to abort.
    fn fail(&mut self, failure: TxnFailure, during: &str) -> LogError {
        match failure {
            TxnFailure::Fenced if self.txn_outlived_timeout() => {
                let age = self.txn_began.map(|began| began.elapsed()).unwrap_or_default();
                self.discard(format!(
                    "{during}: the broker refused the producer's epoch for a transaction open {age:.1?}, longer than \
                     its timeout {:?}: the coordinator aborted it on timeout (librdkafka reports this as fenced, \
                     but no newer member is known to hold transactional id `{}`)",
                    self.txn_timeout, self.transactional_id
                ))
            }
            TxnFailure::Fenced => {
                self.health = Health::Fenced;
                self.batch = None;
                LogError::Fenced(self.transactional_id.clone())
            }
            TxnFailure::Fatal(message) if self.reinits < MAX_REINITS => {
                self.discard(format!("{during}: the transactional producer failed: {message}"))
            }
            TxnFailure::Fatal(message) => {
                let message = format!(
                    "{during}: {message} (the producer failed again after being re-created {} times)",
                    self.reinits
                );
                self.health = Health::Failed(message.clone());
                self.batch = None;
                LogError::Fatal(message)
            }
            TxnFailure::Abortable(message) | TxnFailure::Retriable(message) | TxnFailure::Other(message) => {
                let delivery = self.producer.context().lock().error.take();
                match delivery {
                    Some(delivery) => LogError::Storage(format!("{during}: {message}; {delivery}")),
                    None => LogError::Storage(format!("{during}: {message}")),
                }
            }
        }
    }

    /// Whether the current transaction has been open for the transaction timeout or longer, so
    /// that the coordinator may have aborted it.
    ///
    /// # The rule that tells a transaction the coordinator aborted on timeout from a real fence
    ///
    /// librdkafka (2.12, `rdkafka_txnmgr.c` `rd_kafka_txn_normalize_err`, the AddPartitionsToTxn,
    /// AddOffsetsToTxn, TxnOffsetCommit and EndTxn handlers, and `rdkafka_request.c`'s Produce
    /// handler) turns both `PRODUCER_FENCED` and `INVALID_PRODUCER_EPOCH` into a fatal `_FENCED`
    /// ("fenced by newer producer instance"), and the broker (TV1 `TransactionCoordinator`, KIP-360 /
    /// KIP-588) answers with one of those two both when a newer producer called `InitProducerId` for
    /// the transactional id and when the coordinator aborted a transaction that outlived
    /// `transaction.timeout.ms` (the abort bumps the epoch; the old producer's next EndTxn is refused
    /// with `PRODUCER_FENCED`, its next Produce with `INVALID_PRODUCER_EPOCH`). So the error cannot
    /// tell them apart, but time can: the coordinator times a transaction out only once it has been
    /// open for `transaction.timeout.ms` since its first AddPartitionsToTxn, which is after our
    /// `begin_transaction`. Hence:
    /// - `_FENCED` while our transaction has been open for less than the timeout (or with none open):
    ///   a newer member holds the id for certain. [`LogError::Fenced`]; the member stops.
    /// - `_FENCED` once our transaction has been open for the timeout or longer: the coordinator may
    ///   have aborted it on timeout. The producer is re-created and re-initialized. Were a newer
    ///   member to have taken the id over at that very moment (only a zombie's transaction gets that
    ///   old), our `init_transactions` fences it in turn, and it, with a young transaction, stops as
    ///   fenced: one of the two carries on, and fencing still keeps a batch from committing twice.
    /// - Any other fatal error: re-created as well, at most [`MAX_REINITS`] times without a commit in
    ///   between; an error that a new producer does not cure (authorization) then ends the member.
    fn txn_outlived_timeout(&self) -> bool {
        self.txn_began.is_some_and(|began| began.elapsed() >= self.txn_timeout)
    }

    /// Discards the open batch and the producer whose transaction is in doubt: the producer is
    /// re-created before the next transaction, and then the consumer
    /// ([`KafkaMember::renew_consumer`]), which reports the owned partitions lost (their state
    /// holds the discarded steps) and reads each again from the positions stable when the new
    /// consumer is assigned it. No rewind of the old consumer: it is replaced before it reads.
    fn discard(&mut self, reason: String) -> LogError {
        tracing::warn!(transactional_id = %self.transactional_id, reason = %reason,
            "Kafka member discards its open batch and re-creates its transactional producer.");
        self.batch = None;
        self.txn_began = None;
        let written = std::mem::take(&mut self.txn_partitions);
        self.last_outcome = if self.commit_sent { None } else { Some(Outcome::Aborted) };
        if self.commit_sent {
            tracing::warn!(transactional_id = %self.transactional_id, partitions = written.len(),
                "Kafka member discards a transaction whose commit it asked for: its outcome is the coordinator's, and \
                 its partitions are sealed once the partitions tell it.");
            // The producer that wrote them is still this one: its delivery reports say where.
            self.in_doubt = std::mem::take(&mut self.producer.context().lock().last_offsets);
        } else {
            self.unsealed.extend(written);
        }
        self.commit_sent = false;
        self.reinit = Some(reason.clone());
        self.renew_consumer = true;
        LogError::Storage(format!(
            "{reason}; the open batch is discarded and its inputs will be read again, and the transactional \
             producer is re-created"
        ))
    }

    /// Reports every owned partition as lost and then assigned again (see the module doc).
    fn report_rebuild(&mut self) {
        let owned: Vec<TopicPartition> = self.assignment.iter().cloned().collect();
        for tp in owned {
            if !self.changes.lost.contains(&tp) {
                self.changes.lost.push(tp.clone());
            }
            if !self.changes.assigned.contains(&tp) {
                self.changes.assigned.push(tp);
            }
        }
    }

    /// Re-creates and initializes the producer when a failure asked for it; its
    /// `init_transactions` aborts whatever the coordinator still holds of the old transaction.
    fn ensure_producer(&mut self) -> Result<(), LogError> {
        let Some(reason) = self.reinit.clone() else { return Ok(()) };
        if !self.reinit_created {
            let producer: TxnProducer = self
                .producer_config
                .create_with_context(TxnContext::default())
                .map_err(|e| client_creation("transactional producer", &e))?;
            // Dropping the old producer purges what it still holds (no commit is in flight: a
            // producer is re-created only after a failure, and commits' failures are collected).
            self.producer = Arc::new(producer);
            self.reinit_created = true;
            self.reinits += 1;
        }
        match self.producer.init_transactions(REINIT_TIMEOUT) {
            Ok(()) => {
                tracing::info!(transactional_id = %self.transactional_id, after = %reason,
                    "Kafka member re-created its transactional producer.");
                self.reinit = None;
                self.reinit_created = false;
                self.seal();
                self.settle_in_doubt();
                Ok(())
            }
            Err(error) => match self.classify(&error) {
                failure @ (TxnFailure::Fenced | TxnFailure::Fatal(_)) => {
                    // A fresh producer that fails to initialize for good: nothing left to try.
                    self.reinits = MAX_REINITS;
                    self.reinit_created = false;
                    Err(self.fail(failure, "initialize the re-created transactional producer"))
                }
                TxnFailure::Abortable(message) | TxnFailure::Retriable(message) | TxnFailure::Other(message) => {
                    Err(LogError::Storage(format!(
                        "initialize the re-created transactional producer (after: {reason}): {message}"
                    )))
                }
            },
        }
    }

    /// Ends, as aborted, whatever discarded transactions that were never committed may have left
    /// open on the partitions they wrote to (see [`MemberState::seal_with`]).
    fn seal(&mut self) {
        if !self.unsealed.is_empty() {
            let partitions = std::mem::take(&mut self.unsealed);
            self.seal_with(&partitions, Outcome::Aborted);
        }
    }

    /// Ends what a discarded transaction whose commit was asked for left open, once its outcome is
    /// known: the coordinator decided it (the re-created producer's `init_transactions` waited for
    /// that), and a partition whose markers were written says how, since a read_committed read
    /// returns the transaction's last record there exactly when it committed. The partitions still
    /// holding it open, whose markers the coordinator dropped (a restarted broker's coordinator
    /// that found no leader for them), are then sealed with that outcome (see
    /// [`MemberState::seal_with`]). While no partition tells, it stays in doubt and is tried
    /// again when the positions are found held back ([`MemberState::heal_positions`]).
    fn settle_in_doubt(&mut self) {
        if self.in_doubt.is_empty() || self.batch.is_some() || self.reinit.is_some() {
            return;
        }
        let targets = self.in_doubt.iter().map(|(partition, last)| (partition.clone(), last + 1)).collect();
        let deadline = Instant::now() + SETTLE_WAIT;
        let open = match topics::await_all_stable(self.topics.metadata_client(), targets, deadline) {
            Ok(open) => open.into_iter().collect::<BTreeSet<_>>(),
            Err(error) => {
                tracing::warn!(transactional_id = %self.transactional_id, error = %error,
                    "Kafka member could not ask where its transaction in doubt is decided; it tries again later.");
                return;
            }
        };
        // One partition that tells is enough: the coordinator wrote one outcome to all of them.
        // Output partitions first: the positions topic is compacted, and a record compaction
        // removed would read as aborted (only a closed segment is compacted, so not one this
        // recent; but an output partition keeps every record).
        let mut decided: Vec<(&(String, i32), &i64)> =
            self.in_doubt.iter().filter(|(partition, _)| !open.contains(*partition)).collect();
        decided.sort_by_key(|((topic, _), _)| *topic == self.positions_topic);
        let told = decided
            .into_iter()
            .find_map(|((topic, partition), last)| outcome_in(self.positions.readers(), topic, *partition, *last));
        let Some(outcome) = told else {
            tracing::warn!(transactional_id = %self.transactional_id, open = open.len(),
                "Kafka member cannot tell yet how its transaction in doubt ended; it tries again later.");
            return;
        };
        self.in_doubt.clear();
        if open.is_empty() {
            self.last_outcome = Some(outcome);
            tracing::info!(transactional_id = %self.transactional_id, ?outcome,
                "Kafka member's transaction in doubt is decided in every partition it wrote.");
        } else {
            self.seal_with(&open, outcome);
        }
    }

    /// After reading the group's positions failed because a transaction that wrote some stays
    /// undecided: ends this producer's own, if one hangs there, as its last transaction ended
    /// (see [`MemberState::seal_with`]). With a batch open, its commit does the same.
    fn heal_positions(&mut self) {
        if self.batch.is_some() || self.reinit.is_some() {
            return;
        }
        if !self.in_doubt.is_empty() {
            // What held the positions back may be the transaction in doubt itself.
            self.settle_in_doubt();
            return;
        }
        match self.last_outcome {
            Some(outcome) => {
                let partitions = BTreeSet::from([(self.positions_topic.clone(), positions::PARTITION)]);
                self.seal_with(&partitions, outcome);
            }
            None => tracing::warn!(transactional_id = %self.transactional_id,
                "Kafka member does not know how its last transaction ended, and cannot seal the positions topic."),
        }
    }

    /// Ends what this producer's earlier transaction may have left open on `partitions`, with one
    /// transaction of the producer that writes a record to each of them and ends as `outcome`.
    ///
    /// # Hanging transactions
    /// After a broker was killed and restarted mid-load, a partition sometimes kept a transaction
    /// of ours open for minutes (its last stable offset stuck at the transaction's first record)
    /// although the coordinator had ended it: `kafka-transactions.sh describe` said
    /// `CompleteCommit` while `describe-producers` on the partition showed the same producer id
    /// with a current transaction (a marker that never reached the partition). Every
    /// read_committed reader of the partition waits behind it, and so does every read of stable
    /// positions (`crate::positions`), this member's own before it can commit again. A partition
    /// ends the open transaction of a producer id at the next marker of that producer id, whatever
    /// its epoch; the marker must say what the coordinator decided. So only a transaction whose
    /// outcome this member knows is sealed: one that was never asked to commit is aborted (its
    /// outcome for certain), one whose commit succeeded is committed; a commit that failed in
    /// doubt is sealed once a partition its markers reached tells its outcome
    /// ([`MemberState::settle_in_doubt`]). Sealing records carry the key [`SEAL_KEY`] and no value:
    /// aborted, nobody reading committed records sees them; committed, every read path of this
    /// backend drops them (`crate::record`).
    fn seal_with(&mut self, partitions: &BTreeSet<(String, i32)>, outcome: Outcome) {
        let timeout = self.txn_timeout;
        let sealed = seal_transaction(&self.producer, partitions, outcome, timeout);
        match sealed {
            Ok(()) => {
                self.last_outcome = Some(outcome);
                tracing::info!(transactional_id = %self.transactional_id, partitions = partitions.len(), ?outcome,
                    "Kafka member sealed partitions its earlier transaction may have left open.");
            }
            Err(error) => {
                tracing::warn!(transactional_id = %self.transactional_id, error = %error, ?outcome,
                    "Kafka member could not seal partitions its earlier transaction may have left open.");
                self.last_outcome = match self.producer.abort_transaction(timeout) {
                    Ok(()) if outcome == Outcome::Aborted => Some(Outcome::Aborted),
                    _ => None,
                };
            }
        }
    }

    /// Runs a transactional call, again while it fails with a retriable error.
    fn retry(&self, call: impl FnMut(&TxnProducer) -> KafkaResult<()>) -> Result<(), TxnFailure> {
        retry(&self.producer, &self.transactional_id, call)
    }

    /// Opens a transaction unless one is open.
    fn begin_if_needed(&mut self) -> Result<(), LogError> {
        if self.batch.is_some() {
            return Ok(());
        }
        self.ensure_producer()?;
        if let Err(failure) = self.retry(|producer| producer.begin_transaction()) {
            return Err(self.fail(failure, "begin a transaction"));
        }
        *self.producer.context().lock() = Deliveries::default();
        self.txn_partitions.clear();
        self.commit_sent = false;
        let now = Instant::now();
        self.txn_began = Some(now);
        let eager = std::mem::take(&mut self.eager_next);
        self.batch = Some(OpenBatch { opened: now, steps: 0, eager, drained: false, positions: BTreeMap::new() });
        Ok(())
    }

    /// Enqueues one output in the open transaction.
    fn produce(&mut self, topic: &str, partition: i32, key: &[u8], value: &[u8]) -> Result<(), LogError> {
        let deadline = Instant::now() + self.txn_timeout;
        loop {
            let record = BaseRecord::to(topic).partition(partition).key(key).payload(value);
            match self.producer.send(record) {
                Ok(()) => {
                    self.producer.context().lock().sent += 1;
                    if !self.txn_partitions.iter().any(|(t, p)| *p == partition && t == topic) {
                        self.txn_partitions.insert((topic.to_owned(), partition));
                    }
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) if Instant::now() < deadline => {
                    // Serve delivery reports so the local queue drains.
                    self.producer.poll(Duration::from_millis(20));
                }
                Err((error, _)) => {
                    let failure = self.classify(&error);
                    return Err(self.fail(failure, &format!("produce to `{topic}` partition {partition}")));
                }
            }
        }
    }

    /// Aborts the open transaction, if any, and discards the steps queued behind a commit in
    /// flight (which is let finish first: a transaction being committed cannot be aborted).
    fn abort_batch(&mut self) -> Result<(), LogError> {
        if self.queued.take().is_some() {
            // Read from the consumer but never written: reading must come back to them.
            self.needs_rewind = true;
        }
        self.collect(true)?;
        if self.batch.take().is_none() {
            return Ok(());
        }
        self.needs_rewind = true;
        let timeout = self.txn_timeout;
        match self.retry(|producer| producer.abort_transaction(timeout)) {
            Ok(()) => {
                self.txn_began = None;
                self.txn_partitions.clear();
                self.commit_sent = false;
                self.last_outcome = Some(Outcome::Aborted);
                Ok(())
            }
            Err(failure @ (TxnFailure::Fenced | TxnFailure::Fatal(_))) => Err(self.fail(failure, "abort the batch")),
            Err(TxnFailure::Abortable(message) | TxnFailure::Retriable(message) | TxnFailure::Other(message)) => {
                // The coordinator cannot be reached (a broker away): the transaction is in doubt,
                // and the producer stuck between transactions. A new producer's
                // `init_transactions` aborts it once the coordinator answers again.
                Err(self.discard(format!("abort the batch: {message}")))
            }
        }
    }

    /// Aborts the open batch after a failed step or commit; the owned partitions' state holds the
    /// aborted steps, so they are reported lost and assigned again.
    fn abort_after_failure(&mut self) -> Result<(), LogError> {
        if self.batch.is_none() {
            return Ok(());
        }
        self.report_rebuild();
        self.abort_batch()
    }

    /// Commits everything stepped so far and waits until it is visible: the commit in flight,
    /// then the open batch (with the steps queued meanwhile).
    fn commit_batch(&mut self, group: Option<ConsumerGroupMetadata>) -> Result<(), LogError> {
        self.collect(true)?;
        self.start_commit(group)?;
        self.collect(true)
    }

    /// Starts committing the open batch: its positions to the group's positions topic, then the
    /// broker round trips on a thread of their own ([`CommitJob::run`]), while the caller goes on
    /// and queues its next steps. On a failure that is neither a fence nor fatal, the batch is
    /// aborted and reading rewinds (when the failure is collected, for the round trips').
    fn start_commit(&mut self, group: Option<ConsumerGroupMetadata>) -> Result<(), LogError> {
        if self.in_flight.is_some() {
            return Ok(());
        }
        let Some(batch) = self.batch.as_ref() else { return Ok(()) };
        let (age, steps) = (batch.opened.elapsed(), batch.steps);
        let offsets: Vec<((String, i32), i64)> = batch.positions.iter().map(|(tp, next)| (tp.clone(), *next)).collect();
        let positions_topic = self.positions_topic.clone();
        for ((topic, partition), next) in &offsets {
            let key = positions::key_of(topic, *partition);
            let written = self.produce(
                &positions_topic,
                positions::PARTITION,
                key.as_bytes(),
                positions::value_of(*next).as_bytes(),
            );
            if let Err(error) = written {
                self.needs_rewind = true;
                self.abort_after_failure()?;
                return Err(error);
            }
        }
        let job = CommitJob {
            producer: Arc::clone(&self.producer),
            topics: Arc::clone(&self.topics),
            transactional_id: self.transactional_id.clone(),
            offsets,
            group,
            timeout: self.txn_timeout,
            steps,
            age,
        };
        match std::thread::Builder::new().name("kafka-commit".to_owned()).spawn(move || job.run()) {
            Ok(handle) => {
                self.in_flight = Some(handle);
                Ok(())
            }
            Err(error) => {
                let failure = TxnFailure::Other(format!("start the commit's thread: {error}"));
                self.finish(CommitReport::failed(failure, steps, age))
            }
        }
    }

    /// Takes the outcome of the commit in flight once it is done (waiting for it if `wait`), and
    /// then opens the next transaction with the steps queued meanwhile.
    fn collect(&mut self, wait: bool) -> Result<(), LogError> {
        let Some(in_flight) = self.in_flight.take_if(|in_flight| wait || in_flight.is_finished()) else {
            return Ok(());
        };
        let report = in_flight.join().unwrap_or_else(|_| {
            let steps = self.batch.as_ref().map_or(0, |batch| batch.steps);
            CommitReport::failed(TxnFailure::Fatal("the commit's thread panicked".to_owned()), steps, Duration::ZERO)
        });
        self.finish(report)?;
        self.open_queued()
    }

    /// Settles the member's side of a commit that ended. A failed commit discards the steps
    /// queued behind it too: the failure reports the owned partitions lost and assigned again, and
    /// their state (which holds the queued steps) is rebuilt.
    fn finish(&mut self, report: CommitReport) -> Result<(), LogError> {
        self.commit_sent = report.commit_sent;
        match report.result {
            Ok(()) => {
                self.batch = None;
                self.txn_began = None;
                self.txn_partitions.clear();
                self.commit_sent = false;
                self.last_outcome = Some(Outcome::Committed);
                self.reinits = 0;
                // Where a batch's time goes, for tuning (`ipam bench --kafka` prints the stages
                // a reader sees; this is the member's side of them).
                tracing::debug!(transactional_id = %self.transactional_id, steps = report.steps,
                    age_us = report.age.as_micros(), drained_us = report.drained.as_micros(),
                    offsets_us = report.offsets_sent.as_micros(), committed_us = report.committed.as_micros(),
                    visible_us = report.visible.as_micros(), queued = self.queued.as_ref().map_or(0, |q| q.batch.steps),
                    "Kafka member committed a batch.");
                Ok(())
            }
            Err(failure @ (TxnFailure::Fenced | TxnFailure::Fatal(_))) => {
                self.queued = None;
                self.needs_rewind = true;
                Err(self.fail(failure, "commit the batch"))
            }
            Err(failure) => {
                self.queued = None;
                let error = self.fail(failure, "commit the batch");
                self.abort_after_failure()?;
                Err(error)
            }
        }
    }

    /// Opens a transaction for the steps queued while the last commit was in flight.
    fn open_queued(&mut self) -> Result<(), LogError> {
        let Some(queued) = self.queued.take() else { return Ok(()) };
        match self.produce_in_batch(queued.records.iter().map(|(record, partition)| (record, *partition))) {
            Ok(()) => {
                self.batch = Some(queued.batch);
                Ok(())
            }
            Err(error) => {
                self.discard_failed_step();
                Err(error)
            }
        }
    }

    /// Like the local backends: a step that cannot be added discards the batch. The caller's
    /// state already holds this step (and the batch's): the owned partitions are reported lost
    /// and assigned again, and their records come again.
    fn discard_failed_step(&mut self) {
        if self.check().is_ok() {
            self.report_rebuild();
            self.needs_rewind = true;
            if let Err(abort) = self.abort_batch() {
                tracing::warn!(error = %abort, "Kafka member could not abort after a failed step.");
            }
        }
    }

    /// Adds a step to the open batch, or queues it behind the commit in flight.
    fn add_step(&mut self, placed: &[(&OutRecord, i32)], positions: Vec<((String, i32), i64)>) -> Result<(), LogError> {
        if self.in_flight.is_some() {
            let queued = self.queued.get_or_insert_with(|| Queued {
                batch: OpenBatch {
                    opened: Instant::now(),
                    steps: 0,
                    // A lone input that came while the last commit was in flight commits once
                    // drained after it, not at the policy's delay.
                    eager: std::mem::take(&mut self.eager_next),
                    drained: false,
                    positions: BTreeMap::new(),
                },
                records: Vec::new(),
            });
            queued.records.extend(placed.iter().map(|(record, partition)| ((*record).clone(), *partition)));
            queued.batch.positions.extend(positions);
            queued.batch.steps += 1;
            return Ok(());
        }
        self.produce_in_batch(placed.iter().copied())?;
        if let Some(open) = self.batch.as_mut() {
            open.positions.extend(positions);
            open.steps += 1;
        }
        Ok(())
    }

    /// Enqueues `records` (each with its partition) in the open transaction, opening one if none is.
    fn produce_in_batch<'a>(&mut self, records: impl Iterator<Item = (&'a OutRecord, i32)>) -> Result<(), LogError> {
        self.begin_if_needed()?;
        for (record, partition) in records {
            self.produce(&record.topic, partition, record.key.as_bytes(), &record.value)?;
        }
        Ok(())
    }

    /// Whether a batch takes the next steps: an open one, or a queue behind a commit in flight.
    fn collecting(&self) -> bool {
        (self.batch.is_some() && self.in_flight.is_none()) || self.queued.is_some()
    }

    /// Steps not committed yet: the batch (being committed or open) and those queued.
    fn pending_steps(&self) -> usize {
        self.batch.as_ref().map_or(0, |batch| batch.steps) + self.queued.as_ref().map_or(0, |queued| queued.batch.steps)
    }

    /// The open batch should commit now (never while a commit is in flight: the batch is being
    /// committed, and the queue behind it waits for the producer).
    fn overdue(&self, policy: &ipam_log::BatchPolicy) -> bool {
        self.in_flight.is_none()
            && self.batch.as_ref().is_some_and(|open| {
                open.steps >= policy.max_steps
                    || open.opened.elapsed() >= policy.max_delay
                    || (open.eager && open.drained)
            })
    }

    /// Partitions handed over (cleanly or not): forget them, and report them unless they were
    /// assigned and taken away again before any poll reported the assignment.
    fn release(&mut self, partitions: Vec<TopicPartition>, clean: bool) {
        for tp in partitions {
            self.assignment.remove(&tp);
            if let Some(at) = self.changes.assigned.iter().position(|a| *a == tp) {
                self.changes.assigned.remove(at);
            } else if clean {
                self.changes.revoked.push(tp);
            } else {
                self.changes.lost.push(tp);
            }
        }
    }
}

/// The consumer's context: runs the rebalance callbacks against the shared state.
/// How a failed call of `producer` is to be handled.
fn classify(producer: &TxnProducer, error: &KafkaError) -> TxnFailure {
    classify_txn(error, producer.client().fatal_error())
}

/// Runs a transactional call, again while it fails with a retriable error.
fn retry(
    producer: &TxnProducer,
    transactional_id: &str,
    mut call: impl FnMut(&TxnProducer) -> KafkaResult<()>,
) -> Result<(), TxnFailure> {
    let mut attempt = 1;
    loop {
        match call(producer) {
            Ok(()) => return Ok(()),
            Err(error) => match classify(producer, &error) {
                TxnFailure::Retriable(message) if attempt < ATTEMPTS => {
                    tracing::warn!(transactional_id, attempt, error = %message,
                        "Kafka transactional call failed; retrying.");
                    attempt += 1;
                }
                failure => return Err(failure),
            },
        }
    }
}

/// One transaction of `producer` that writes a sealing record (key [`SEAL_KEY`], no value) to each
/// of `partitions` and ends as `outcome`: the partitions' markers end whatever earlier transaction
/// of the producer id hangs there (see [`MemberState::seal_with`]).
fn seal_transaction(
    producer: &TxnProducer,
    partitions: &BTreeSet<(String, i32)>,
    outcome: Outcome,
    timeout: Duration,
) -> KafkaResult<()> {
    producer.begin_transaction()?;
    for (topic, partition) in partitions {
        let record = BaseRecord::<[u8], [u8]>::to(topic).partition(*partition).key(SEAL_KEY).payload(&[]);
        producer.send(record).map_err(|(error, _)| error)?;
    }
    // Written before the end, so that the coordinator knows the partitions and marks them: an
    // abort purges what is still queued.
    producer.flush(timeout)?;
    match outcome {
        Outcome::Committed => producer.commit_transaction(timeout),
        Outcome::Aborted => producer.abort_transaction(timeout),
    }
}

/// How a transaction of this member's producer that wrote its last record of `topic`/`partition`
/// at `last` ended, as the partition says once its markers are past that record: committed when a
/// read_committed read from `last` returns the record at `last`, aborted when it skips it. `None`
/// when the partition cannot be read.
fn outcome_in(readers: &Readers, topic: &str, partition: i32, last: i64) -> Option<Outcome> {
    let from = u64::try_from(last).ok()?;
    match readers.read(topic, partition, from, 1, OUTCOME_READ_WAIT) {
        Ok(records) => Some(if records.first().is_some_and(|record| record.offset == from) {
            Outcome::Committed
        } else {
            Outcome::Aborted
        }),
        Err(error) => {
            tracing::warn!(topic, partition, error = %error, "Kafka member could not read how its transaction ended.");
            None
        }
    }
}

/// How long [`outcome_in`] waits for the records after a transaction's last one: only to see
/// whether its own comes, since the partition is decided past it.
const OUTCOME_READ_WAIT: Duration = Duration::from_millis(500);

/// Waits, until `deadline` at most, until librdkafka holds nothing in flight: every record
/// delivered and its report served.
fn drain(producer: &TxnProducer, deadline: Instant) {
    drop(producer.context().wait_for_reports(deadline));
    while producer.in_flight_count() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Waits until read_committed readers can see the committed batch. `commit_transaction` returns
/// once the coordinator has decided; the commit markers, which move each partition's last stable
/// offset past the batch, are written a moment later. Waiting here keeps the local backends'
/// promise that a batch is visible once its commit is done, and keeps the next transaction from
/// beginning before the markers are written (its AddPartitionsToTxn would meet
/// CONCURRENT_TRANSACTIONS and back off). An earlier open transaction of another producer on the
/// same partition holds the LSO back too, and so does a marker the broker never wrote, so the wait
/// is bounded by the transaction timeout; answers the partitions the batch is still invisible in
/// then ([`CommitJob::seal_where_invisible`] deals with them), and every partition it wrote when
/// the broker could not be asked until then: right after a broker's restart, before it has
/// registered with its controller again (12 to 15 s on a single broker), every request fails
/// (`FENCED_LEADER_EPOCH`), and that is when its coordinator may have dropped the batch's markers.
/// A seal where the markers were written only adds a record the positions reader skips.
fn await_visibility(producer: &TxnProducer, topics: &Topics, timeout: Duration) -> Vec<(String, i32)> {
    let deadline = Instant::now() + timeout;
    // Every report has normally been served by now (the commit drained them).
    let mut deliveries = producer.context().wait_for_reports(deadline);
    let written = std::mem::take(&mut deliveries.last_offsets);
    drop(deliveries);
    // Visible once each partition's last stable offset is past the last record written there.
    let targets: BTreeMap<(String, i32), i64> =
        written.into_iter().map(|(partition, last)| (partition, last + 1)).collect();
    let partitions: Vec<(String, i32)> = targets.keys().cloned().collect();
    match topics::await_all_stable(topics.metadata_client(), targets, deadline) {
        Ok(behind) => behind,
        Err(error) => {
            tracing::warn!(error = %error,
                "Kafka member could not check that its commit is visible; taking it as invisible where it wrote.");
            partitions
        }
    }
}

struct MemberContext {
    state: Arc<Mutex<MemberState>>,
}

impl MemberContext {
    fn lock(&self) -> MutexGuard<'_, MemberState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ClientContext for MemberContext {}

impl ConsumerContext for MemberContext {
    /// rdkafka's own `rebalance` first asks librdkafka which protocol is in use, and that call can
    /// block for ever when the revocation comes from closing the consumer
    /// (confluentinc/librdkafka#4041, fede1024/rust-rdkafka#509; seen here as a member's drop that
    /// never returned after it unsubscribed). The protocol is always cooperative
    /// (`partition.assignment.strategy` is the backend's own, see `options::RESERVED_KEYS`), so
    /// this applies the change incrementally without asking, between the same two hooks.
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, partitions: &mut TopicPartitionList) {
        let assigned = err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS;
        if assigned {
            self.position_assigned(consumer, partitions);
        }
        let partitions: &TopicPartitionList = partitions;
        let rebalance = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => Rebalance::Assign(partitions),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => Rebalance::Revoke(partitions),
            other => Rebalance::Error(KafkaError::Rebalance(other.into())),
        };
        self.pre_rebalance(consumer, &rebalance);
        // As rdkafka does for the cooperative protocol: anything but an assignment gives the
        // listed partitions up.
        let applied =
            if assigned { consumer.incremental_assign(partitions) } else { consumer.incremental_unassign(partitions) };
        if let Err(error) = applied {
            tracing::warn!(error = %error, "Kafka member could not apply a rebalance.");
        }
        self.post_rebalance(consumer, &rebalance);
    }

    /// Runs before rdkafka applies the change (`incremental_assign`/`incremental_unassign`, as the
    /// cooperative protocol requires), so a revoked partition's open batch commits while we still
    /// own the partition.
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut state = self.lock();
        match rebalance {
            Rebalance::Assign(list) => {
                for tp in partitions_of(list) {
                    if state.assignment.insert(tp.clone()) && !state.changes.assigned.contains(&tp) {
                        state.changes.assigned.push(tp);
                    }
                }
            }
            Rebalance::Revoke(list) => {
                let partitions = partitions_of(list);
                if state.closing || state.health != Health::Healthy || state.batch.is_none() {
                    let clean = !consumer.assignment_lost();
                    state.release(partitions, clean);
                    return;
                }
                let lost = consumer.assignment_lost();
                let outcome = if lost {
                    state.abort_batch().map(|()| false)
                } else {
                    state.commit_batch(consumer.group_metadata()).map(|()| true)
                };
                let clean = match outcome {
                    Ok(clean) => clean,
                    Err(error) => {
                        tracing::warn!(transactional_id = %state.transactional_id, error = %error,
                            "Kafka member could not finish its open batch at a rebalance.");
                        if state.health == Health::Healthy {
                            state.deferred = Some(error);
                        }
                        false
                    }
                };
                state.release(partitions, clean);
                if !clean {
                    // The aborted batch may hold steps of the partitions we keep: their state must
                    // be dropped and rebuilt too, from the positions reading rewinds to.
                    let kept: Vec<TopicPartition> = state.assignment.iter().cloned().collect();
                    for tp in kept {
                        if !state.changes.assigned.contains(&tp) {
                            state.changes.lost.push(tp.clone());
                            state.changes.assigned.push(tp);
                        }
                    }
                }
            }
            Rebalance::Error(error) => {
                tracing::warn!(transactional_id = %state.transactional_id, error = %error, "Kafka rebalance failed.");
            }
        }
    }
}

impl MemberContext {
    /// Sets the assigned partitions' offsets to the group's positions in its positions topic,
    /// where it has them; librdkafka asks the group coordinator for the others. Should the topic
    /// not answer, reading rewinds to it before the next poll.
    ///
    /// Reading positions waits for every transaction that wrote some, this member's own
    /// included: a discarded producer is re-created first (which seals what the discarded
    /// transaction left), and if the wait still ends undecided, the member seals the positions
    /// topic as its last transaction ended and reads again.
    fn position_assigned(&self, consumer: &BaseConsumer<Self>, partitions: &mut TopicPartitionList) {
        let (positions, group) = {
            let mut state = self.lock();
            if state.closing {
                // A member that leaves reads nothing more; its close must not wait on a read
                // (a close that outlives the leave's wait meets librdkafka's close hang, see
                // `rebalance`).
                return;
            }
            if let Err(error) = state.ensure_producer() {
                tracing::warn!(error = %error, "Kafka member could not re-create its producer at an assignment.");
            }
            (Arc::clone(&state.positions), state.group.clone())
        };
        let wanted: Vec<(String, i32)> =
            partitions.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect();
        let read = positions.read(&group, &wanted, positions::STABLE_WAIT).or_else(|error| {
            tracing::warn!(group = %group, error = %error, "Kafka member's positions are not stable; it seals its own.");
            self.lock().heal_positions();
            positions.read(&group, &wanted, positions::STABLE_WAIT)
        });
        let found = match read {
            Ok(found) => found,
            Err(error) => {
                tracing::warn!(group = %group, error = %error,
                    "Kafka member could not read its positions at an assignment; it will rewind to them.");
                self.lock().needs_rewind = true;
                return;
            }
        };
        let starts = match starting_offsets(consumer, &wanted, &found) {
            Ok(starts) => starts,
            Err(error) => {
                tracing::warn!(group = %group, error = %error,
                    "Kafka member could not read its committed positions at an assignment; it will rewind to them.");
                self.lock().needs_rewind = true;
                return;
            }
        };
        for start in starts.elements() {
            if let Err(error) = partitions.set_partition_offset(start.topic(), start.partition(), start.offset()) {
                tracing::warn!(topic = %start.topic(), partition = start.partition(), error = %error,
                    "Kafka member could not position a partition.");
                self.lock().needs_rewind = true;
            }
        }
    }
}

/// Where reading `wanted` starts: the positions topic's position (`found`) where it has one, else
/// the group coordinator's committed offset, else the beginning; every partition gets an explicit
/// offset. librdkafka is never left to look committed offsets up itself: after a broker restart
/// its lookup can meet a request-level `NOT_COORDINATOR`, which it never retries, and the
/// partition then stays unstarted for ever (confluentinc/librdkafka#5586, open in 2.12; seen here
/// as an allocator stuck for minutes after a broker restart, every rewind answered `__STATE`).
/// Our own lookup fails instead, and the caller tries again.
fn starting_offsets(
    consumer: &BaseConsumer<MemberContext>,
    wanted: &[(String, i32)],
    found: &BTreeMap<(String, i32), u64>,
) -> Result<TopicPartitionList, LogError> {
    let mut starts = TopicPartitionList::with_capacity(wanted.len());
    let mut elsewhere = TopicPartitionList::new();
    for (topic, partition) in wanted {
        match found.get(&(topic.clone(), *partition)) {
            Some(next) => {
                let offset = Offset::Offset(i64::try_from(*next).unwrap_or(i64::MAX));
                starts.add_partition_offset(topic, *partition, offset).map_err(|e| storage("a start position", &e))?;
            }
            None => {
                elsewhere.add_partition(topic, *partition);
            }
        }
    }
    if elsewhere.count() > 0 {
        let committed =
            consumer.committed_offsets(elsewhere, REQUEST_TIMEOUT).map_err(|e| storage("committed positions", &e))?;
        for element in committed.elements() {
            let offset = match element.offset() {
                Offset::Offset(next) => Offset::Offset(next),
                _ => Offset::Beginning,
            };
            starts
                .add_partition_offset(element.topic(), element.partition(), offset)
                .map_err(|e| storage("a start position", &e))?;
        }
    }
    Ok(starts)
}

fn partitions_of(list: &TopicPartitionList) -> Vec<TopicPartition> {
    list.elements()
        .iter()
        .filter_map(|e| {
            u32::try_from(e.partition()).ok().map(|partition| TopicPartition { topic: e.topic().to_owned(), partition })
        })
        .collect()
}

/// A member of a consumer group on Kafka; see the module doc.
pub struct KafkaMember {
    topics: Arc<Topics>,
    config: MemberConfig,
    state: Arc<Mutex<MemberState>>,
    /// `None` once the member is fenced or failed: it has left the group so that its partitions
    /// move to the member that replaced it.
    consumer: Option<BaseConsumer<MemberContext>>,
    /// How to create the consumer again (see `replace_fenced_consumer`).
    consumer_config: ClientConfig,
}

impl fmt::Debug for KafkaMember {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("KafkaMember")
            .field("group", &self.config.group)
            .field("transactional_id", &self.config.transactional_id)
            .field("health", &state.health)
            .field("assignment", &state.assignment)
            .field("pending_steps", &state.pending_steps())
            .finish()
    }
}

impl KafkaMember {
    /// Creates the producer (fencing any older holder of the transactional id and aborting its
    /// open transaction) and then the consumer, which joins the group at its first poll.
    pub(crate) fn join(
        options: &KafkaOptions,
        topics: Arc<Topics>,
        positions: Arc<Positions>,
        config: MemberConfig,
    ) -> Result<KafkaMember, LogError> {
        if config.batch.max_steps == 0 {
            return Err(LogError::Config("batch.max_steps must be at least 1".to_owned()));
        }
        if config.group.is_empty() || config.transactional_id.is_empty() || config.topics.is_empty() {
            return Err(LogError::Config("a member needs a group, a transactional id and topics".to_owned()));
        }
        for topic in &config.topics {
            topics.partition_count(topic)?;
        }
        let producer_config = options.member_producer_config(&config.transactional_id);
        let producer: TxnProducer = producer_config
            .create_with_context(TxnContext::default())
            .map_err(|e| client_creation("transactional producer", &e))?;
        let txn_timeout = Duration::from_millis(u64::from(options.transaction_timeout_ms));
        let mut state = MemberState {
            transactional_id: config.transactional_id.clone(),
            producer: Arc::new(producer),
            topics: Arc::clone(&topics),
            positions,
            group: config.group.clone(),
            positions_topic: positions::topic_of(&config.group),
            txn_timeout,
            batch: None,
            in_flight: None,
            queued: None,
            assignment: BTreeSet::new(),
            changes: Polled::default(),
            health: Health::Healthy,
            deferred: None,
            needs_rewind: false,
            txn_began: None,
            reinit: None,
            reinit_created: false,
            txn_partitions: BTreeSet::new(),
            commit_sent: false,
            unsealed: BTreeSet::new(),
            in_doubt: BTreeMap::new(),
            last_outcome: None,
            renew_consumer: false,
            reinits: 0,
            producer_config,
            closing: false,
            quiet: Duration::ZERO,
            eager_next: false,
        };
        if let Err(failure) = state.retry(|producer| producer.init_transactions(txn_timeout)) {
            return Err(state.fail(failure, "initialize transactions"));
        }
        let state = Arc::new(Mutex::new(state));
        let consumer_config = options.member_consumer_config(&config.group, &config.transactional_id);
        let consumer = subscribed_consumer(&consumer_config, &state, &config.topics)?;
        Ok(KafkaMember { topics, config, state, consumer: Some(consumer), consumer_config })
    }

    fn lock(&self) -> MutexGuard<'_, MemberState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Refuses to work once fenced or failed, and then leaves the group (once) so the partitions
    /// move on.
    fn usable(&mut self) -> Result<(), LogError> {
        let checked = self.lock().check();
        if checked.is_err() {
            self.leave();
        }
        checked
    }

    /// Leaves the group, so that the partitions move on at once. A static member (see
    /// `KafkaOptions::member_consumer_config`) that merely closes does not send LeaveGroup
    /// (KIP-345: librdkafka leaves on close only as a dynamic member), and its partitions would
    /// wait for its session to expire; unsubscribing first makes it leave. A fenced member does
    /// not: the member that fenced it holds the same instance id and the partitions already.
    fn leave(&mut self) {
        if let Some(consumer) = self.consumer.take() {
            let fenced = {
                let mut state = self.lock();
                state.closing = true;
                state.health == Health::Fenced
            };
            if !fenced && consumer.client().fatal_error().is_none() {
                unsubscribe(&consumer);
            }
            // Closing serves the final revocation, whose callback takes the state lock.
            close(consumer);
        }
    }

    /// Replaces a consumer that the group fenced for its own instance id. A static member can be
    /// fenced by itself: after a broker restart the coordinator may hold a join of ours under
    /// another member id than the one the consumer goes on with, and answers it with
    /// FENCED_INSTANCE_ID, fatal for a librdkafka consumer (seen in
    /// `a_member_whose_transaction_timed_out_while_the_broker_was_away...`; the Java client has
    /// the same self-fencing, KAFKA-20983). The member goes on with a new
    /// consumer, as a member after a lost assignment does: the open batch is aborted (where a
    /// newer member really holds the transactional id, the abort is refused as fenced and the
    /// member stops as [`LogError::Fenced`]), the owned partitions are reported lost, and the
    /// new consumer's assignment is reported as it comes. At most [`MAX_REINITS`] times without a
    /// commit in between.
    fn replace_fenced_consumer(&mut self, message: String) -> LogError {
        let mut state = self.lock();
        if let Err(error) = state.abort_batch()
            && state.check().is_err()
        {
            drop(state);
            self.leave();
            return error;
        }
        if state.reinits >= MAX_REINITS {
            state.health = Health::Failed(format!(
                "the member's consumer failed: {message} (after {} re-creations of its clients)",
                state.reinits
            ));
            let error = state.check().err().unwrap_or_else(|| LogError::Fatal(message.clone()));
            drop(state);
            self.leave();
            return error;
        }
        state.reinits += 1;
        drop(state);
        match self.renew_consumer() {
            Ok(()) => {
                tracing::warn!(group = %self.config.group, transactional_id = %self.config.transactional_id,
                    reason = %message, "Kafka member's consumer was fenced by its own instance id; re-created it.");
                LogError::Storage(format!(
                    "{message}; the member's consumer is re-created and its partitions come again"
                ))
            }
            Err(error) => error,
        }
    }

    /// Replaces the consumer with a new one of the same static instance: the owned partitions are
    /// reported lost, and the new consumer's assignment is reported as it comes, each partition
    /// read from the positions stable when it is assigned (`MemberContext::position_assigned`).
    ///
    /// # Why after every discarded batch
    /// A consumer's assignment can outlive its membership. On 5 December a restarted broker's
    /// coordinator loaded the allocator group with no members; the other allocator joined first
    /// and took every partition (generation 8) and committed them on; this member, whose consumer
    /// still held generation 7's assignment, re-created its producer, rewound to the positions of
    /// that moment and read on while it rejoined. Generation 9 gave its stale claims to the newer
    /// owner, librdkafka revoked them as an ordinary revocation (not a lost one), and the open
    /// batch committed there with generation 9's metadata, which the group coordinator accepts
    /// (KIP-447 checks the generation, not the partitions the steps were taken for): one
    /// reservation was written twice (`tests/it/kafka_restart.rs`, 1 run in 12). A batch is
    /// discarded when the broker went away, which is when the group may have moved on without
    /// this member; a fresh consumer owns nothing until the group assigns it, and cooperative
    /// rebalancing assigns a partition only once its previous owner has revoked it (committing)
    /// or is gone. A static member that rejoins a group that kept it gets its assignment back
    /// without a rebalance (KIP-345), so the renewal costs little when nothing moved.
    fn renew_consumer(&mut self) -> Result<(), LogError> {
        let mut state = self.lock();
        state.renew_consumer = false;
        let owned = std::mem::take(&mut state.assignment);
        state.changes.assigned.retain(|tp| !owned.contains(tp));
        for tp in owned {
            if !state.changes.lost.contains(&tp) {
                state.changes.lost.push(tp);
            }
        }
        state.needs_rewind = false;
        state.closing = true;
        drop(state);
        // Closing the old consumer serves its last callbacks, which only release partitions while
        // `closing` is set.
        if let Some(consumer) = self.consumer.take() {
            close(consumer);
        }
        self.lock().closing = false;
        match subscribed_consumer(&self.consumer_config, &self.state, &self.config.topics) {
            Ok(consumer) => {
                self.consumer = Some(consumer);
                Ok(())
            }
            Err(error) => {
                self.lock().health = Health::Failed(format!("re-creating the member's consumer: {error}"));
                Err(error)
            }
        }
    }

    /// After a failed call: leave the group if the member is finished, else rewind if a batch was
    /// aborted. Returns `error`.
    fn after_failure(&mut self, error: LogError) -> LogError {
        if self.lock().check().is_err() {
            self.leave();
        } else if let Err(rewind) = self.rewind_if_needed() {
            tracing::warn!(error = %rewind, "Kafka member could not rewind after a failure.");
        }
        error
    }

    /// Rewinds when a batch was aborted, after re-creating a discarded producer: the positions a
    /// rewind reads wait for every transaction that wrote some to be decided, this member's own
    /// discarded one included.
    fn rewind_if_needed(&mut self) -> Result<(), LogError> {
        if !self.lock().needs_rewind {
            return Ok(());
        }
        self.lock().ensure_producer()?;
        let needed = std::mem::take(&mut self.lock().needs_rewind);
        if needed && let Err(error) = self.rewind() {
            let mut state = self.lock();
            state.needs_rewind = true;
            state.heal_positions();
            return Err(error);
        }
        Ok(())
    }

    /// Moves reading back to the group's committed positions (the positions topic's, else the
    /// group coordinator's, else the beginning), so that records of an aborted batch are delivered
    /// again.
    fn rewind(&self) -> Result<(), LogError> {
        let Some(consumer) = &self.consumer else { return Ok(()) };
        let assignment = consumer.assignment().map_err(|e| storage("the member's assignment", &e))?;
        if assignment.count() == 0 {
            return Ok(());
        }
        let positions = Arc::clone(&self.lock().positions);
        let wanted: Vec<(String, i32)> =
            assignment.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect();
        let found = positions.read(&self.config.group, &wanted, positions::STABLE_WAIT)?;
        let starts = starting_offsets(consumer, &wanted, &found)?;
        let sought = consumer.seek_partitions(starts.clone(), REQUEST_TIMEOUT).map_err(|e| storage("rewind", &e))?;
        // A partition whose fetcher has not started yet cannot be sought (`__STATE`): librdkafka
        // still waits for an offset lookup, and may wait for ever (see `starting_offsets`). It
        // is assigned again, at the wanted offset; nothing was read from it, so nothing is lost.
        let mut unstarted = TopicPartitionList::new();
        for element in sought.elements() {
            match element.error() {
                Ok(()) => {}
                Err(error) if error.rdkafka_error_code() == Some(RDKafkaErrorCode::State) => {
                    let start = starts
                        .find_partition(element.topic(), element.partition())
                        .map(|e| e.offset())
                        .ok_or_else(|| storage("rewind", &error))?;
                    unstarted
                        .add_partition_offset(element.topic(), element.partition(), start)
                        .map_err(|e| storage("rewind", &e))?;
                }
                Err(error) => {
                    return Err(storage(
                        &format!("rewind `{}` partition {}", element.topic(), element.partition()),
                        &error,
                    ));
                }
            }
        }
        if unstarted.count() > 0 {
            tracing::warn!(partitions = ?partitions_of(&unstarted), "Kafka member assigns again partitions whose reading never started.");
            consumer.incremental_unassign(&unstarted).map_err(|e| storage("unassign an unstarted partition", &e))?;
            consumer.incremental_assign(&unstarted).map_err(|e| storage("assign an unstarted partition", &e))?;
        }
        Ok(())
    }

    /// Before each wait in `poll`: report a callback's error, collect a commit that ended,
    /// re-create a discarded producer, rewind, start committing an overdue batch.
    fn settle(&mut self) -> Result<(), LogError> {
        let deferred = self.lock().deferred.take();
        if let Some(error) = deferred {
            return Err(self.after_failure(error));
        }
        let collected = self.lock().collect(false);
        if let Err(error) = collected {
            return Err(self.after_failure(error));
        }
        // Re-create a discarded producer now rather than at the next step: its `init_transactions`
        // aborts what the broker still holds of the old transaction, whose pending positions
        // otherwise keep `committed_position` (and so the runtime's rebuild) waiting until the
        // coordinator times the transaction out.
        let reinit = self.lock().ensure_producer();
        if let Err(error) = reinit {
            return Err(self.after_failure(error));
        }
        if self.lock().renew_consumer {
            tracing::info!(group = %self.config.group, transactional_id = %self.config.transactional_id,
                "Kafka member re-creates its consumer after a discarded batch: its assignment may be stale.");
            if let Err(error) = self.renew_consumer() {
                return Err(self.after_failure(error));
            }
        }
        self.rewind_if_needed()?;
        if self.lock().overdue(&self.config.batch) {
            self.start_commit()?;
        }
        Ok(())
    }

    /// Starts committing the open batch; it commits while the caller goes on (see "Commits in
    /// flight" in the module doc).
    fn start_commit(&mut self) -> Result<(), LogError> {
        let group = self.consumer.as_ref().and_then(|c| c.group_metadata());
        let result = self.lock().start_commit(group);
        result.map_err(|error| self.after_failure(error))
    }

    /// The partition of each output, from its key.
    fn place<'a>(&self, outputs: &'a [OutRecord]) -> Result<Vec<(&'a OutRecord, i32)>, LogError> {
        outputs
            .iter()
            .map(|record| {
                let count = self.topics.partition_count(&record.topic)?;
                let chosen = partition::for_key(record.key.as_bytes(), count);
                let chosen = i32::try_from(chosen)
                    .map_err(|_| LogError::NoSuchPartition { topic: record.topic.clone(), partition: chosen })?;
                Ok((record, chosen))
            })
            .collect()
    }
}
/// How long a member that leaves waits for its revocation to be served before it closes.
const LEAVE_WAIT: Duration = Duration::from_secs(5);

/// A member consumer made from `config`, subscribed to `topics`; it joins the group at its first
/// poll.
fn subscribed_consumer(
    config: &ClientConfig,
    state: &Arc<Mutex<MemberState>>,
    topics: &[String],
) -> Result<BaseConsumer<MemberContext>, LogError> {
    let consumer: BaseConsumer<MemberContext> = config
        .create_with_context(MemberContext { state: Arc::clone(state) })
        .map_err(|e| client_creation("member consumer", &e))?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&names).map_err(|e| storage("subscribe", &e))?;
    Ok(consumer)
}

/// Unsubscribes, and polls until the revocation has been served (or [`LEAVE_WAIT`] passed), so
/// that librdkafka sends LeaveGroup, which a static member does not send when it only closes.
/// Records polled meanwhile are dropped: the next owner reads them from the committed positions.
fn unsubscribe(consumer: &BaseConsumer<MemberContext>) {
    consumer.unsubscribe();
    let deadline = Instant::now() + LEAVE_WAIT;
    while Instant::now() < deadline && consumer.assignment().is_ok_and(|assigned| assigned.count() > 0) {
        drop(consumer.poll(Duration::from_millis(10)));
    }
}

/// Closes a consumer (rdkafka's drop serves its last revocation and waits until librdkafka says it
/// is closed), unless it still owns partitions. Then librdkafka can block for ever in that
/// revocation's `incremental_unassign`, whose request to the closing group is never answered
/// (confluentinc/librdkafka#4884, open; seen here twice in CI, in `a_member_that_stops_polling...`,
/// when a member left while another member of its group was not polling, so the revocation of its
/// unsubscribe waited for a rebalance longer than [`LEAVE_WAIT`]). Such a consumer is left open to
/// the process instead, with a warning: its threads and connections stay until the process ends,
/// and the group hands its partitions on once its session expires, as after a crash.
fn close(consumer: BaseConsumer<MemberContext>) {
    match consumer.assignment() {
        Ok(assigned) if assigned.count() > 0 => {
            tracing::warn!(
                partitions = assigned.count(),
                "Kafka member still owns partitions as it closes; leaving its consumer open, since closing it now \
                 can hang (librdkafka#4884). The group hands them on when its session expires."
            );
            std::mem::forget(consumer);
        }
        _ => close_within(consumer, CLOSE_WAIT),
    }
}

/// How long a member's close may take before it is left to finish on a thread of its own.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// Drops `consumer` (rdkafka's drop serves the last rebalance events and closes it) on a thread of
/// its own, and waits for it at most `wait`. An assignment still queued when [`close`] found none
/// (a member dropped right after it joined, before any poll served the assignment) is served
/// during the close, and the revocation after it can block for ever in `incremental_unassign`
/// (librdkafka#4884 again; seen once in CI: the successor member of
/// `log::kafka::keeps_every_batch_whole_when_killed_mid_commit`, joined and dropped without a
/// poll, hung the test run). Such a thread is left blocked, as a forgotten consumer is left open,
/// with a warning; the caller goes on.
fn close_within(consumer: BaseConsumer<MemberContext>, wait: Duration) {
    let (closed, done) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new().name("kafka-close".to_owned()).spawn(move || {
        drop(consumer);
        let _ = closed.send(());
    });
    match spawned {
        Ok(_) => {
            if done.recv_timeout(wait).is_err() {
                tracing::warn!(
                    wait_ms = wait.as_millis() as u64,
                    "Kafka member's consumer did not close in time; leaving it closing on its own thread \
                     (librdkafka#4884). The group hands its partitions on when its session expires."
                );
            }
        }
        Err(error) => {
            tracing::warn!(error = %error, "Cannot start a thread to close a Kafka member's consumer; it was closed here.")
        }
    }
}

impl Member for KafkaMember {
    fn poll(&mut self, max: usize, timeout: Duration) -> Result<Polled, LogError> {
        let deadline = Instant::now() + timeout;
        let mut records = Vec::new();
        loop {
            self.usable()?;
            self.settle()?;
            if records.is_empty() {
                // A batch discarded outside a rebalance (see the module doc): report it before
                // reading on from the positions `settle` rewound to.
                let mut state = self.lock();
                if !state.changes.lost.is_empty() {
                    let changes = std::mem::take(&mut state.changes);
                    return Ok(Polled { records: Vec::new(), ..changes });
                }
            }
            let mut wait = deadline.saturating_duration_since(Instant::now());
            let mut eager = false;
            let batch_open;
            {
                let state = self.lock();
                // A batch being committed takes no more steps: waiting then is a quiet spell too.
                batch_open = state.collecting();
                // An eager batch (its first input came after a quiet spell) does not wait for more
                // input: a lone event would wait out the policy's delay for nothing (`ipam bench
                // --kafka`'s single starts). Under load input is waiting whenever the member polls,
                // no batch is eager, and the delay groups steps into transactions that are worth
                // their 10 to 30 ms.
                if state.in_flight.is_some() {
                    // Collect the commit soon after it is done, so that the steps queued behind
                    // it go out in the next transaction without waiting for more input.
                    wait = wait.min(COLLECT_EVERY);
                } else if let Some(open) = &state.batch {
                    eager = open.eager;
                    let left = if eager { Duration::ZERO } else { self.config.batch.max_delay };
                    wait = wait.min(left.saturating_sub(open.opened.elapsed()));
                }
            }
            let Some(consumer) = &self.consumer else {
                return Err(self
                    .lock()
                    .check()
                    .err()
                    .unwrap_or_else(|| LogError::Fatal("the member has left its group".to_owned())));
            };
            let mut failure = None;
            let mut waited = Duration::ZERO;
            if max > 0 {
                let waiting = Instant::now();
                let mut event = consumer.poll(wait);
                // Until the first record came, or for nothing.
                waited = waiting.elapsed();
                // Take what is ready now, up to `max`, without waiting again.
                while let Some(result) = event {
                    match result {
                        Ok(message) => records.extend(record_of(&message)),
                        Err(KafkaError::MessageConsumptionFatal(code)) => {
                            failure = Some(code.to_string());
                            break;
                        }
                        Err(error) => {
                            tracing::warn!(group = %self.config.group, error = %error, "Kafka member consumer error.");
                        }
                    }
                    if records.len() >= max {
                        break;
                    }
                    event = consumer.poll(Duration::ZERO);
                }
            }
            {
                let mut state = self.lock();
                // Only a poll that may wait waits for input: one that may not (a caller that spins
                // while a commit is in flight) spends its time looking, not waiting.
                if !batch_open && !wait.is_zero() {
                    state.quiet += waited;
                }
                if !records.is_empty() {
                    let quiet = std::mem::take(&mut state.quiet);
                    state.eager_next = !state.collecting() && quiet >= QUIET.min(self.config.batch.max_delay);
                } else if eager
                    && failure.is_none()
                    && let Some(open) = state.batch.as_mut()
                {
                    open.drained = true;
                }
            }
            if let Some(message) = failure {
                let fenced_instance = self.consumer.as_ref().is_some_and(|consumer| {
                    consumer.client().fatal_error().is_some_and(|(code, _)| code == RDKafkaErrorCode::FencedInstanceId)
                });
                if fenced_instance {
                    return Err(self.replace_fenced_consumer(message));
                }
                let mut state = self.lock();
                state.health = Health::Failed(format!("the member's consumer failed: {message}"));
                let error = state.check().err().unwrap_or(LogError::Fatal(message));
                drop(state);
                self.leave();
                return Err(error);
            }
            let mut state = self.lock();
            if state.check().is_err() || state.deferred.is_some() {
                // A callback fenced or failed the member: the records are discarded with the batch.
                drop(state);
                continue;
            }
            let changes = std::mem::take(&mut state.changes);
            drop(state);
            let changed = !(changes.assigned.is_empty() && changes.revoked.is_empty() && changes.lost.is_empty());
            if changed || !records.is_empty() || max == 0 || Instant::now() >= deadline {
                // Records polled before a revocation belong to the next owner now.
                records.retain(|r| {
                    let tp = TopicPartition { topic: r.topic.clone(), partition: r.partition };
                    !changes.revoked.contains(&tp) && !changes.lost.contains(&tp)
                });
                return Ok(Polled { records, ..changes });
            }
        }
    }

    fn step(&mut self, outputs: &[OutRecord], positions: &[Position]) -> Result<(), LogError> {
        self.usable()?;
        let placed = self.place(outputs)?;
        let mut converted = Vec::with_capacity(positions.len());
        for position in positions {
            let partition = i32::try_from(position.partition).map_err(|_| LogError::NoSuchPartition {
                topic: position.topic.clone(),
                partition: position.partition,
            })?;
            let next = i64::try_from(position.next_offset).map_err(|_| {
                LogError::Storage(format!("position {} is beyond any Kafka offset", position.next_offset))
            })?;
            converted.push(((position.topic.clone(), partition), next));
        }
        let result = {
            let mut state = self.lock();
            // A failed commit collected here has already discarded its batch and the queue.
            state.collect(false).and_then(|()| match state.add_step(&placed, converted) {
                Ok(()) => {
                    let queue_full =
                        state.queued.as_ref().is_some_and(|queued| queued.batch.steps >= self.config.batch.max_steps);
                    if queue_full {
                        // The queue is as long as a batch may be: wait for the commit before it.
                        state.collect(true)?;
                    }
                    Ok(state.overdue(&self.config.batch))
                }
                Err(error) => {
                    state.discard_failed_step();
                    Err(error)
                }
            })
        };
        match result {
            Ok(true) => self.start_commit(),
            Ok(false) => Ok(()),
            Err(error) => Err(self.after_failure(error)),
        }
    }

    /// Commits everything stepped so far, and returns once it is visible to read_committed
    /// readers.
    fn commit(&mut self) -> Result<(), LogError> {
        self.usable()?;
        let group = self.consumer.as_ref().and_then(|c| c.group_metadata());
        let result = self.lock().commit_batch(group);
        result.map_err(|error| self.after_failure(error))
    }

    fn abort(&mut self) -> Result<(), LogError> {
        self.usable()?;
        let result = self.lock().abort_batch();
        if let Err(error) = result {
            return Err(self.after_failure(error));
        }
        // A caller that aborts is about to rebuild from the committed positions: see `settle`.
        let result = self.lock().ensure_producer();
        if let Err(error) = result {
            return Err(self.after_failure(error));
        }
        // Like the local backends, rewind even without an open batch: records polled since the
        // last commit come again.
        self.lock().needs_rewind = true;
        self.rewind_if_needed()
    }

    fn assignment(&self) -> Vec<TopicPartition> {
        self.lock().assignment.iter().cloned().collect()
    }

    fn pending_steps(&self) -> usize {
        self.lock().pending_steps()
    }

    /// A transaction costs 10 to 20 ms of round trips (offsets, end, markers): batches are worth
    /// their delay.
    fn commits_cheaply(&self) -> bool {
        false
    }
}

impl Drop for KafkaMember {
    /// Like the local backends, dropping a member discards its open batch; aborting it now rather
    /// than letting the broker time it out keeps read_committed readers of its output partitions
    /// from stalling for the transaction timeout.
    fn drop(&mut self) {
        {
            let mut state = self.lock();
            if state.health == Health::Healthy
                && state.batch.is_some()
                && let Err(error) = state.abort_batch()
            {
                tracing::warn!(error = %error, "Kafka member could not abort its open batch when dropped.");
            }
            state.closing = true;
        }
        self.leave();
    }
}
