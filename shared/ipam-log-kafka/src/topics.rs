//! Topics: creating them with the admin API, and knowing how many partitions each has. The count
//! decides every record's partition (`partition::for_key`), so it is read from the brokers once per
//! topic and cached for the life of the log: a topic's count never changes under this system
//! (`create_topics` refuses a different count, and nothing here adds partitions).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use ipam_log::{LogError, TopicSpec};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::types::RDKafkaRespErr;

use crate::errors::storage;

/// Bound on one metadata, offset or admin round trip.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What the metadata says about one topic.
enum TopicState {
    Missing,
    /// The partition count, and whether every partition has a leader.
    Present {
        partitions: u32,
        ready: bool,
    },
}

/// Partition counts, read from the cluster's metadata and cached.
pub(crate) struct Topics {
    /// A consumer that never subscribes: used for metadata only.
    metadata: BaseConsumer,
    counts: RwLock<HashMap<String, u32>>,
}

impl Topics {
    pub(crate) fn new(metadata: BaseConsumer) -> Topics {
        Topics { metadata, counts: RwLock::new(HashMap::new()) }
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
        let count = u32::try_from(partitions.len())
            .map_err(|_| LogError::Storage(format!("topic `{topic}` has too many partitions")))?;
        Ok(TopicState::Present { partitions: count, ready })
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

    /// Creates the missing topics and waits until every partition of every topic has a leader.
    pub(crate) fn create(
        &self,
        admin: &AdminClient<DefaultClientContext>,
        specs: &[TopicSpec],
        replication_factor: i32,
    ) -> Result<(), LogError> {
        if specs.is_empty() {
            return Ok(());
        }
        let mut wanted = Vec::with_capacity(specs.len());
        for spec in specs {
            let partitions = i32::try_from(spec.partitions).ok().filter(|p| *p > 0).ok_or_else(|| {
                LogError::Config(format!("topic `{}` needs between 1 and 2^31-1 partitions", spec.name))
            })?;
            wanted.push(NewTopic::new(&spec.name, partitions, TopicReplication::Fixed(replication_factor)));
        }
        let options =
            AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT)).request_timeout(Some(REQUEST_TIMEOUT));
        let results = block_on(admin.create_topics(&wanted, &options)).map_err(|e| storage("create topics", &e))?;
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
                    TopicState::Present { partitions, ready: true } => {
                        self.counts.write().unwrap_or_else(|e| e.into_inner()).insert(spec.name.clone(), partitions);
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
        Ok(())
    }
}

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
