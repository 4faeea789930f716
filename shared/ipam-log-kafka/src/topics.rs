//! Topics: creating them with the admin API, checking that existing ones can hold the log, and
//! knowing how many partitions each has. The count decides every record's partition
//! (`partition::for_key`), so it is read from the brokers once per topic and cached for the life of
//! the log: a topic's count never changes under this system (`create_topics` refuses a different
//! count, and nothing here adds partitions).
//!
//! Every topic is a log that state is rebuilt from, so each one is made, and an existing one must
//! be, like this ([`Topics::create`] checks every topic it is asked for, made now or long ago):
//! - `cleanup.policy=delete`, never `compact`: a rebuild replays every record of a key (every
//!   event of a network), and compaction keeps only the last one;
//! - `retention.ms` from the options, -1 (never expire) by default, and `retention.bytes=-1`: a
//!   size limit would drop inputs with no regard to their age, so it is not offered;
//! - the options' replication factor and `min.insync.replicas` at least, with
//!   `unclean.leader.election.enable=false`, so an acknowledged record is never lost to a replica
//!   that did not have it.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use ipam_log::{LogError, TopicSpec};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};

use crate::errors::storage;
use crate::options::KafkaOptions;

/// Bound on one metadata, offset or admin round trip.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What the metadata says about one topic.
enum TopicState {
    Missing,
    /// The partition count, whether every partition has a leader, and the fewest replicas any
    /// partition has.
    Present {
        partitions: u32,
        ready: bool,
        replicas: usize,
    },
}

/// Partition counts, read from the cluster's metadata and cached.
pub(crate) struct Topics {
    /// A read_committed consumer that never subscribes: used for metadata, and for last stable
    /// offsets.
    metadata: BaseConsumer,
    /// A read_uncommitted one: the latest offset it is answered is the high watermark.
    uncommitted: BaseConsumer,
    counts: RwLock<HashMap<String, u32>>,
}

impl Topics {
    pub(crate) fn new(metadata: BaseConsumer, uncommitted: BaseConsumer) -> Topics {
        Topics { metadata, uncommitted, counts: RwLock::new(HashMap::new()) }
    }

    pub(crate) fn uncommitted_client(&self) -> &BaseConsumer {
        &self.uncommitted
    }

    pub(crate) fn metadata_client(&self) -> &BaseConsumer {
        &self.metadata
    }

    fn state(&self, topic: &str) -> Result<TopicState, LogError> {
        let metadata = self
            .metadata
            .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
            .map_err(|e| storage(&format!("metadata of topic `{topic}`"), &e))?;
        let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
            return Ok(TopicState::Missing);
        };
        match found.error() {
            None => {}
            Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
            | Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE) => return Ok(TopicState::Missing),
            Some(error) => {
                return Err(LogError::Storage(format!(
                    "metadata of topic `{topic}`: {}",
                    RDKafkaErrorCode::from(error)
                )));
            }
        }
        let partitions = found.partitions();
        if partitions.is_empty() {
            return Ok(TopicState::Missing);
        }
        let ready = partitions.iter().all(|p| p.error().is_none() && p.leader() >= 0);
        let replicas = partitions.iter().map(|p| p.replicas().len()).min().unwrap_or_default();
        let count = u32::try_from(partitions.len())
            .map_err(|_| LogError::Storage(format!("topic `{topic}` has too many partitions")))?;
        Ok(TopicState::Present { partitions: count, ready, replicas })
    }

    /// The topic's partition count, cached after the first answer.
    pub(crate) fn partition_count(&self, topic: &str) -> Result<u32, LogError> {
        if let Some(count) = self.counts.read().unwrap_or_else(|e| e.into_inner()).get(topic) {
            return Ok(*count);
        }
        match self.state(topic)? {
            TopicState::Missing => Err(LogError::UnknownTopic(topic.to_owned())),
            TopicState::Present { partitions, .. } => {
                self.counts.write().unwrap_or_else(|e| e.into_inner()).insert(topic.to_owned(), partitions);
                Ok(partitions)
            }
        }
    }

    /// Checks that `partition` exists in `topic` and returns it as librdkafka wants it.
    pub(crate) fn check_partition(&self, topic: &str, partition: u32) -> Result<i32, LogError> {
        let count = self.partition_count(topic)?;
        match i32::try_from(partition) {
            Ok(p) if partition < count => Ok(p),
            _ => Err(LogError::NoSuchPartition { topic: topic.to_owned(), partition }),
        }
    }

    /// Creates the missing topics, waits until every partition of every topic has a leader, and
    /// checks that every topic, new or old, is what the log needs (the module doc says what).
    pub(crate) fn create(
        &self,
        admin: &AdminClient<DefaultClientContext>,
        specs: &[TopicSpec],
        options: &KafkaOptions,
    ) -> Result<(), LogError> {
        self.make(admin, specs, Needed::from(options), options)
    }

    /// Creates a group's positions topic (`crate::positions`) if it is missing, and checks it:
    /// one partition, compacted (only the last position of each input partition matters),
    /// replicated like the log's topics.
    pub(crate) fn create_positions(
        &self,
        admin: &AdminClient<DefaultClientContext>,
        name: &str,
        options: &KafkaOptions,
    ) -> Result<(), LogError> {
        let spec = TopicSpec { name: name.to_owned(), partitions: 1 };
        self.make(admin, &[spec], Needed { kind: Kind::Positions, ..Needed::from(options) }, options)
    }

    fn make(
        &self,
        admin: &AdminClient<DefaultClientContext>,
        specs: &[TopicSpec],
        needed: Needed,
        options: &KafkaOptions,
    ) -> Result<(), LogError> {
        if specs.is_empty() {
            return Ok(());
        }
        let configs = needed.topic_configs();
        let mut wanted = Vec::with_capacity(specs.len());
        for spec in specs {
            let partitions = i32::try_from(spec.partitions).ok().filter(|p| *p > 0).ok_or_else(|| {
                LogError::Config(format!("topic `{}` needs between 1 and 2^31-1 partitions", spec.name))
            })?;
            let mut topic = NewTopic::new(&spec.name, partitions, TopicReplication::Fixed(options.replication_factor));
            for (key, value) in &configs {
                topic = topic.set(key, value);
            }
            wanted.push(topic);
        }
        let admin_options =
            AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT)).request_timeout(Some(REQUEST_TIMEOUT));
        let results =
            block_on(admin.create_topics(&wanted, &admin_options)).map_err(|e| storage("create topics", &e))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((
                    name,
                    code @ (RDKafkaErrorCode::InvalidPartitions
                    | RDKafkaErrorCode::InvalidReplicationFactor
                    | RDKafkaErrorCode::InvalidTopic
                    | RDKafkaErrorCode::InvalidConfig
                    | RDKafkaErrorCode::PolicyViolation),
                )) => {
                    return Err(LogError::Config(format!("cannot create topic `{name}`: {code}")));
                }
                Err((name, code)) => return Err(LogError::Storage(format!("cannot create topic `{name}`: {code}"))),
            }
        }
        // The controller has accepted the topics; the metadata may take a moment to show them with
        // leaders, and producing before that fails.
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let mut mismatches = Vec::new();
        for spec in specs {
            loop {
                match self.state(&spec.name)? {
                    TopicState::Present { partitions, .. } if partitions != spec.partitions => {
                        return Err(LogError::PartitionCountMismatch {
                            topic: spec.name.clone(),
                            existing: partitions,
                            wanted: spec.partitions,
                        });
                    }
                    TopicState::Present { partitions, ready: true, replicas } => {
                        self.counts.write().unwrap_or_else(|e| e.into_inner()).insert(spec.name.clone(), partitions);
                        if needed.replication_factor.is_some_and(|wanted| replicas < wanted) {
                            mismatches.push(format!(
                                "topic `{}` has {replicas} replicas per partition, needs at least {} (replication \
                                 factor)",
                                spec.name, options.replication_factor
                            ));
                        }
                        break;
                    }
                    TopicState::Present { ready: false, .. } | TopicState::Missing => {}
                }
                if Instant::now() >= deadline {
                    return Err(LogError::Storage(format!(
                        "topic `{}` has no leader for every partition after {REQUEST_TIMEOUT:?}",
                        spec.name
                    )));
                }
                thread::sleep(Duration::from_millis(50));
            }
        }
        mismatches.extend(self.check_configs(admin, specs, &needed)?);
        if mismatches.is_empty() {
            Ok(())
        } else {
            Err(LogError::Config(format!(
                "{}; change the topics (kafka-configs.sh --alter --entity-type topics ...) or the settings, or use \
                 a topic prefix of new topics",
                mismatches.join("; ")
            )))
        }
    }

    /// Every way the topics' configurations differ from what the log needs, one sentence each.
    fn check_configs(
        &self,
        admin: &AdminClient<DefaultClientContext>,
        specs: &[TopicSpec],
        needed: &Needed,
    ) -> Result<Vec<String>, LogError> {
        let resources: Vec<ResourceSpecifier<'_>> =
            specs.iter().map(|spec| ResourceSpecifier::Topic(&spec.name)).collect();
        let options =
            AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT)).request_timeout(Some(REQUEST_TIMEOUT));
        let results =
            block_on(admin.describe_configs(&resources, &options)).map_err(|e| storage("describe topics", &e))?;
        let mut mismatches = Vec::new();
        for (spec, result) in specs.iter().zip(results) {
            let resource = result.map_err(|code| match code {
                RDKafkaErrorCode::TopicAuthorizationFailed | RDKafkaErrorCode::ClusterAuthorizationFailed => {
                    LogError::Config(format!(
                        "not allowed to read the configuration of topic `{}` ({code}): the service's Kafka user \
                         needs Describe and DescribeConfigs on its topics, to check them at start",
                        spec.name
                    ))
                }
                code => LogError::Storage(format!("cannot read the configuration of topic `{}`: {code}", spec.name)),
            })?;
            let has: BTreeMap<&str, &str> = resource
                .entries
                .iter()
                .filter_map(|entry| entry.value.as_deref().map(|value| (entry.name.as_str(), value)))
                .collect();
            mismatches.extend(needed.mismatches(&spec.name, &has));
        }
        Ok(mismatches)
    }
}

/// What a topic is for, which decides how it is cleaned up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A topic of the log: every record is kept.
    Log,
    /// A group's positions topic: the last record of each key is kept.
    Positions,
}

/// What every topic must be, from the options.
struct Needed {
    kind: Kind,
    /// `None` when a single replica is asked for: any topic has at least that.
    replication_factor: Option<usize>,
    min_insync_replicas: Option<i32>,
    retention_ms: i64,
}

impl From<&KafkaOptions> for Needed {
    fn from(options: &KafkaOptions) -> Needed {
        Needed {
            kind: Kind::Log,
            replication_factor: usize::try_from(options.replication_factor).ok().filter(|factor| *factor > 1),
            min_insync_replicas: options.min_insync_replicas,
            retention_ms: options.retention_ms,
        }
    }
}

impl Needed {
    /// The configuration a new topic is created with.
    fn topic_configs(&self) -> Vec<(&'static str, String)> {
        let mut configs = match self.kind {
            Kind::Log => vec![
                ("cleanup.policy", "delete".to_owned()),
                ("retention.ms", self.retention_ms.to_string()),
                ("retention.bytes", "-1".to_owned()),
            ],
            // Segments roll every 10 minutes, so that the cleaner compacts a quiet group's
            // positions too (it never touches the active segment).
            Kind::Positions => vec![("cleanup.policy", "compact".to_owned()), ("segment.ms", "600000".to_owned())],
        };
        configs.push(("unclean.leader.election.enable", "false".to_owned()));
        if let Some(min_insync) = self.min_insync_replicas {
            configs.push(("min.insync.replicas", min_insync.to_string()));
        }
        configs
    }

    /// How the configuration `has` of `topic` falls short, one sentence per setting.
    fn mismatches(&self, topic: &str, has: &BTreeMap<&str, &str>) -> Vec<String> {
        let mut mismatches = Vec::new();
        let mut differs = |setting: &str, value: Option<&str>, needed: String| {
            mismatches.push(format!("topic `{topic}` has {setting}={}, needs {needed}", value.unwrap_or("(unset)")));
        };
        let number = |setting: &str| has.get(setting).and_then(|value| value.trim().parse::<i64>().ok());
        // A retention of -1 (or any negative value) keeps records for ever.
        let forever = |value: Option<i64>| value.is_some_and(|v| v < 0);

        let policy = has.get("cleanup.policy").copied();
        if self.kind == Kind::Positions {
            // Any policy keeps the last position of a key but one that deletes by age.
            let only_compacts = policy.is_some_and(|policy| policy.trim() == "compact");
            if !only_compacts && !forever(number("retention.ms")) {
                differs(
                    "cleanup.policy",
                    policy,
                    "compact (a group's positions must outlive any retention)".to_owned(),
                );
            }
        } else if policy.map(str::trim) != Some("delete") {
            differs(
                "cleanup.policy",
                policy,
                "delete (compaction would keep only the last record of each key, and state is rebuilt from every \
                 record)"
                    .to_owned(),
            );
        }
        if self.kind == Kind::Log {
            let retention = number("retention.ms");
            let kept_long_enough = if self.retention_ms < 0 {
                forever(retention)
            } else {
                forever(retention) || retention.is_some_and(|ms| ms >= self.retention_ms)
            };
            if !kept_long_enough {
                let needed = if self.retention_ms < 0 {
                    "-1 (never expire; the retention setting)".to_owned()
                } else {
                    format!("-1 or at least {} (the retention setting)", self.retention_ms)
                };
                differs("retention.ms", has.get("retention.ms").copied(), needed);
            }
            let bytes = number("retention.bytes");
            if !forever(bytes) {
                differs("retention.bytes", has.get("retention.bytes").copied(), "-1 (no size limit)".to_owned());
            }
        }
        if let Some(min_insync) = self.min_insync_replicas
            && number("min.insync.replicas").is_none_or(|has| has < i64::from(min_insync))
        {
            differs(
                "min.insync.replicas",
                has.get("min.insync.replicas").copied(),
                format!("at least {min_insync} (the min-insync-replicas setting)"),
            );
        }
        let unclean = has.get("unclean.leader.election.enable").copied();
        if unclean.map(str::trim) == Some("true") {
            differs(
                "unclean.leader.election.enable",
                unclean,
                "false (an unclean election loses acknowledged records)".to_owned(),
            );
        }
        mismatches
    }
}

/// Where a partition's last stable offset stood when [`await_stable`] returned.
pub(crate) struct Stable {
    pub(crate) low: i64,
    pub(crate) stable: i64,
    /// Whether it reached the target before the deadline.
    pub(crate) reached: bool,
}

/// Waits until `topic`/`partition`'s last stable offset, as `client` (a read_committed client, whose
/// "high" watermark is the last stable offset) sees it, reaches `target`, or `deadline` passes.
pub(crate) fn await_stable(
    client: &BaseConsumer,
    topic: &str,
    partition: i32,
    target: i64,
    deadline: Instant,
) -> Result<Stable, LogError> {
    loop {
        let (low, stable) = client
            .fetch_watermarks(topic, partition, REQUEST_TIMEOUT)
            .map_err(|e| storage(&format!("watermarks of `{topic}` partition {partition}"), &e))?;
        let reached = stable >= target;
        if reached || Instant::now() >= deadline {
            return Ok(Stable { low, stable, reached });
        }
        thread::sleep(Duration::from_millis(2));
    }
}

/// The latest offset of each of `partitions` as `client` sees it: the last stable offset for a
/// read_committed client, the high watermark for a read_uncommitted one. One ListOffsets request
/// per leader for all of its partitions. A partition whose leader answered with an error is
/// missing from the answer.
pub(crate) fn latest_offsets<'a>(
    client: &BaseConsumer,
    partitions: impl IntoIterator<Item = (&'a str, i32)>,
) -> Result<BTreeMap<(String, i32), i64>, LogError> {
    let mut asked = TopicPartitionList::new();
    for (topic, partition) in partitions {
        asked
            .add_partition_offset(topic, partition, Offset::End)
            .map_err(|e| storage(&format!("asking for the last stable offset of `{topic}`"), &e))?;
    }
    let answered = client.offsets_for_times(asked, REQUEST_TIMEOUT).map_err(|e| storage("last stable offsets", &e))?;
    Ok(answered
        .elements()
        .iter()
        .filter_map(|element| match (element.error(), element.offset()) {
            (Ok(()), Offset::Offset(stable)) => Some(((element.topic().to_owned(), element.partition()), stable)),
            _ => None,
        })
        .collect())
}

/// Waits until the last stable offset of every partition of `pending` reaches its target (as
/// `client`, a read_committed client, sees it), or `deadline` passes; answers the partitions that
/// did not. Each try is one [`latest_offsets`], where [`await_stable`] costs two requests per
/// partition: after every commit under load, the member's visibility wait asked the broker about
/// 17 partitions every 2 ms, two requests each.
///
/// A request that fails is asked again until the deadline (then its error is answered): right
/// after a broker restarts, its leaders answer `FENCED_LEADER_EPOCH` or `NOT_LEADER_OR_FOLLOWER`
/// until the client's metadata catches up, which takes a few hundred milliseconds.
pub(crate) fn await_all_stable(
    client: &BaseConsumer,
    mut pending: BTreeMap<(String, i32), i64>,
    deadline: Instant,
) -> Result<Vec<(String, i32)>, LogError> {
    loop {
        match latest_offsets(client, pending.keys().map(|(topic, partition)| (topic.as_str(), *partition))) {
            Ok(answered) => {
                pending.retain(|key, target| answered.get(key).is_none_or(|stable| stable < target));
                if pending.is_empty() || Instant::now() >= deadline {
                    return Ok(pending.into_keys().collect());
                }
                thread::sleep(Duration::from_millis(1));
            }
            Err(error) if Instant::now() >= deadline => return Err(error),
            Err(_) => thread::sleep(FAILED_ASK_AGAIN),
        }
    }
}

/// How long [`await_all_stable`] waits before asking again after a failed request.
const FAILED_ASK_AGAIN: Duration = Duration::from_millis(50);

/// Wakes the thread blocked in [`block_on`].
struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs a future to completion on this thread. Only the admin API is async in rdkafka, and its
/// futures are completed by rdkafka's own polling thread, so parking until woken is enough: no
/// async runtime is needed for the three calls that use it.
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut context = Context::from_waker(&waker);
    loop {
        match future.as_mut().poll(&mut context) {
            Poll::Ready(output) => return output,
            // A spurious wake-up only polls once more.
            Poll::Pending => thread::park(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needed() -> Needed {
        Needed { kind: Kind::Log, replication_factor: None, min_insync_replicas: Some(2), retention_ms: -1 }
    }

    fn mismatches(needed: &Needed, has: &[(&'static str, &'static str)]) -> Vec<String> {
        needed.mismatches("t", &has.iter().copied().collect())
    }

    const GOOD: [(&str, &str); 5] = [
        ("cleanup.policy", "delete"),
        ("retention.ms", "-1"),
        ("retention.bytes", "-1"),
        ("min.insync.replicas", "2"),
        ("unclean.leader.election.enable", "false"),
    ];

    #[test]
    fn a_topic_made_as_the_log_needs_passes() {
        assert_eq!(mismatches(&needed(), &GOOD), Vec::<String>::new());
        let configs: BTreeMap<&str, String> = needed().topic_configs().into_iter().collect();
        let has: Vec<(&str, &str)> = configs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(needed().mismatches("t", &has.into_iter().collect()), Vec::<String>::new(), "what we create passes");
    }

    #[test]
    fn a_compacted_expiring_or_weakly_replicated_topic_is_named_with_what_it_has_and_needs() {
        let has = [
            ("cleanup.policy", "compact"),
            ("retention.ms", "604800000"),
            ("retention.bytes", "1073741824"),
            ("min.insync.replicas", "1"),
            ("unclean.leader.election.enable", "true"),
        ];
        let found = mismatches(&needed(), &has);
        assert_eq!(found.len(), 5, "{found:#?}");
        assert!(found[0].starts_with("topic `t` has cleanup.policy=compact, needs delete"), "{}", found[0]);
        assert!(found[1].starts_with("topic `t` has retention.ms=604800000, needs -1"), "{}", found[1]);
        assert!(found[2].starts_with("topic `t` has retention.bytes=1073741824, needs -1"), "{}", found[2]);
        assert!(found[3].starts_with("topic `t` has min.insync.replicas=1, needs at least 2"), "{}", found[3]);
        assert!(found[4].starts_with("topic `t` has unclean.leader.election.enable=true, needs false"), "{}", found[4]);
    }

    #[test]
    fn a_positions_topic_is_compacted_or_kept_for_ever_and_replicated_like_the_others() {
        let positions = Needed { kind: Kind::Positions, retention_ms: 86_400_000, ..needed() };
        let configs: BTreeMap<&str, String> = positions.topic_configs().into_iter().collect();
        assert_eq!(configs.get("cleanup.policy").map(String::as_str), Some("compact"));
        let has: Vec<(&str, &str)> = configs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(
            positions.mismatches("t", &has.into_iter().collect()),
            Vec::<String>::new(),
            "what we create passes"
        );
        // The log's retention setting is not the positions topic's business.
        let kept = [("cleanup.policy", "delete"), ("retention.ms", "-1"), ("min.insync.replicas", "2")];
        assert_eq!(mismatches(&positions, &kept), Vec::<String>::new(), "a topic that never deletes keeps them");
        let expiring =
            [("cleanup.policy", "compact,delete"), ("retention.ms", "604800000"), ("min.insync.replicas", "1")];
        let found = mismatches(&positions, &expiring);
        assert_eq!(found.len(), 2, "{found:#?}");
        assert!(found[0].starts_with("topic `t` has cleanup.policy=compact,delete, needs compact"), "{}", found[0]);
        assert!(found[1].starts_with("topic `t` has min.insync.replicas=1, needs at least 2"), "{}", found[1]);
    }

    #[test]
    fn a_finite_retention_setting_accepts_a_longer_or_endless_one() {
        let week = Needed { retention_ms: 604_800_000, ..needed() };
        let mut has = GOOD;
        assert!(mismatches(&week, &has).is_empty());
        has[1] = ("retention.ms", "700000000");
        assert!(mismatches(&week, &has).is_empty());
        has[1] = ("retention.ms", "86400000");
        assert_eq!(mismatches(&week, &has).len(), 1);
    }
}
