//! The read model's snapshot, so that a restarted API does not read every reservation again.
//!
//! Without one, the read model reads its topics from offset zero at every start, and `/health`
//! says ok only once it has: with a million live reservations that was 7 to 10 s of the 10 to 13 s
//! `ipam up` took to be ready after a `kill -9` (`ipam bench --recovery`). With one, it reads the
//! snapshot and then only the records after it.
//!
//! The snapshot lives in the deciding services' [`SnapshotStore`] and is bound to its log the same
//! way: the store refuses a directory of another log, and the snapshot names, for every partition
//! it read, the next offset and the digest of the last record it folded ([`Anchor`]). Unlike
//! theirs, a snapshot that does not match the log (a partition behind the snapshot, another record
//! at an anchor) is only ignored with a warning: the read model decides nothing, and reading from
//! zero rebuilds it exactly.
//!
//! The state is MessagePack (`rmp_serde`), structs as arrays and, in this binary form, MACs as
//! octets, CIDRs as address and prefix length and times as numbers (see `Mac`, `Cidr` and
//! `Timestamp`): with field names and text, a million reservations made 901 MB read in 11 s; so,
//! 571 MB read in 7.7 to 9.5 s while the allocator restored beside it (`ipam bench --recovery`,
//! the API's "starts from its snapshot" log line), and 562 MB in 6.3 s once a vNIC's reservations
//! took two slots instead of a map of their own (version 3; the process's peak memory after the
//! restart went from 4.6 to 2.9 GB). Since version 4 the model's large maps are built in one pass
//! (`bulk.rs`), an owner is read without serde's buffer for internally tagged enums, and the
//! model is written in two halves decoded on two threads (the allocator's snapshots, read beside
//! it, now take under a second); see the README's recovery figures. Fields are read by position,
//! so any change to the model's shape bumps [`VERSION`]: a snapshot of another version is ignored
//! and the log read from the beginning.

use ipam_log::{EventLog, LogError, Position};
use ipam_runtime::SnapshotStore;
use ipam_runtime::snapshot::Anchor;
use serde::{Deserialize, Serialize};

use crate::model::ReadModel;

/// The snapshot's name in the store.
pub(crate) const NAME: &str = "api-read-model";

/// Bumped when the model's state changes shape in a way old snapshots cannot be read into.
/// 2: dual-stack vNICs (a vNIC's reservations by family, lease states per vNIC and family, a
/// decision's list of addresses). 3: a vNIC's reservations in two slots, not a map; CIDRs as
/// address and prefix length. 4: an owner as an externally tagged tuple; the version, the marks and
/// the model's two halves one after the other ([`encode`]).
const VERSION: u32 = 4;

/// Where the read model stands in one partition, and the last record it folded there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PartitionMark {
    topic: String,
    partition: u32,
    next_offset: u64,
    /// `None` when nothing of the partition was folded (`next_offset` 0).
    last: Option<(u64, String)>,
}

/// The snapshot's state, four MessagePack values one after the other: the format's version, the
/// partition marks, then the model's two halves as binary values (its serde form and its vNICs'
/// part, [`ReadModel::vnic_part`]). The version and marks are read first, so that a snapshot of
/// another version or log is ignored without decoding the model; the halves' lengths let them be
/// decoded on two threads.
///
/// Encoded into `state`: empty, with the room the caller expects the snapshot to take.
fn encode_into(
    mut state: Vec<u8>,
    version: u32,
    marks: &[PartitionMark],
    model: &ReadModel,
) -> Result<Vec<u8>, SaveError> {
    rmp_serde::encode::write(&mut state, &version)?;
    rmp_serde::encode::write(&mut state, marks)?;
    write_framed(&mut state, model)?;
    write_framed(&mut state, &model.vnic_part())?;
    Ok(state)
}

/// Appends `value` to `state` as a binary value of 32-bit length (which any binary value's reader
/// takes), encoded in place and its length written after: a half of a million reservations is
/// hundreds of megabytes, not to be encoded apart and copied.
fn write_framed(state: &mut Vec<u8>, value: &impl Serialize) -> Result<(), SaveError> {
    let header = state.len();
    state.push(rmp::Marker::Bin32.to_u8());
    state.extend_from_slice(&[0; 4]);
    rmp_serde::encode::write(state, value)?;
    let written = state.len() - header - 5;
    let length = u32::try_from(written).map_err(|_| SaveError::TooLarge(written))?;
    state[header + 1..header + 5].copy_from_slice(&length.to_be_bytes());
    Ok(())
}

/// Why a snapshot's state was not read.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error(transparent)]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("a half of the model is not framed: {0}")]
    Frame(String),
    #[error("a half of the model is cut short")]
    Short,
    #[error("cannot start a thread to decode a half of the model: {0}")]
    Thread(std::io::Error),
}

/// The next binary value of `state`, which it moves past.
fn half<'a>(state: &mut &'a [u8]) -> Result<&'a [u8], ReadError> {
    let length = rmp::decode::read_bin_len(state).map_err(|error| ReadError::Frame(error.to_string()))?;
    let length = usize::try_from(length).map_err(|_| ReadError::Short)?;
    if state.len() < length {
        return Err(ReadError::Short);
    }
    let (half, rest) = state.split_at(length);
    *state = rest;
    Ok(half)
}

/// The model of two halves, the vNICs' part decoded on a thread of its own.
fn decode_model(state: &mut &[u8]) -> Result<ReadModel, ReadError> {
    let (model, vnic_part) = (half(state)?, half(state)?);
    std::thread::scope(|scope| {
        let vnic_part = std::thread::Builder::new()
            .name("ipam-api-read-model-vnics".to_owned())
            .spawn_scoped(scope, || rmp_serde::from_slice::<crate::model::VnicPart>(vnic_part))
            .map_err(ReadError::Thread)?;
        let model = rmp_serde::from_slice::<ReadModel>(model);
        let vnic_part = vnic_part.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        Ok(model?.with_vnic_part(vnic_part?))
    })
}

/// Why a snapshot was not written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SaveError {
    #[error("cannot read back the last record of {topic}/{partition} at offset {offset} for the snapshot: {source}")]
    Anchor { topic: String, partition: u32, offset: u64, source: LogError },
    #[error("the last record of {topic}/{partition} at offset {offset} is not in the log")]
    Missing { topic: String, partition: u32, offset: u64 },
    #[error("cannot encode the read model: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("a half of the read model takes {0} bytes, more than a snapshot frames (4 GiB)")]
    TooLarge(usize),
    #[error(transparent)]
    Store(#[from] ipam_runtime::snapshot::SnapshotError),
}

/// What a snapshot needs besides the model, made before the follower takes the model's lock: the
/// partition marks (a read of the log per partition, for each one's last record) and the buffer to
/// encode into. The follower folds on the thread that snapshots, so the model stays the one that
/// read `positions` until it is encoded.
pub(crate) struct Prepared {
    marks: Vec<PartitionMark>,
    state: Vec<u8>,
}

/// Prepares the snapshot of a model that has read `positions` of the log. `room` is the size the
/// snapshot is expected to take (about the last one's: hundreds of megabytes grown by doubling
/// were copied once more); the buffer's memory is written once here. The kernel clears a page of
/// fresh memory when it is first touched (on the VMs measured, at under 1 GB/s): touched here,
/// that time is not folding's wait (the first snapshot after a start, with 1 M reservations, held
/// the lock 1.5 to 1.85 s with its room alone, 0.44 to 0.52 s touched first).
pub(crate) fn prepare(log: &dyn EventLog, positions: &[Position], room: usize) -> Result<Prepared, SaveError> {
    /// The smallest page the kernel hands out.
    const PAGE: usize = 4096;
    let marks = marks(log, positions)?;
    let mut state = Vec::with_capacity(room);
    // One byte per page is enough (`vec![0; room]` would ask for zeroed memory, which the kernel
    // hands out untouched).
    for page in state.spare_capacity_mut().chunks_mut(PAGE) {
        page[0].write(0);
    }
    Ok(Prepared { marks, state })
}

/// The snapshot of `model`, for [`write`]: the one part done under the model's lock, so that
/// folding waits for the encoding alone, not for the log's reads or the file's write.
pub(crate) fn encode_snapshot(prepared: Prepared, model: &ReadModel) -> Result<Vec<u8>, SaveError> {
    encode_into(prepared.state, VERSION, &prepared.marks, model)
}

/// Writes a snapshot [`encode_snapshot`] made to `store`.
pub(crate) fn write(store: &SnapshotStore, state: Vec<u8>) -> Result<(), SaveError> {
    store.save(NAME, 0, None, state)?;
    Ok(())
}

/// What a snapshot of `positions` says of each partition: its next offset and its last record.
fn marks(log: &dyn EventLog, positions: &[Position]) -> Result<Vec<PartitionMark>, SaveError> {
    let mark = |position: &Position| {
        let last = match position.next_offset.checked_sub(1) {
            Some(offset) => Some((offset, anchor_at(log, &position.topic, position.partition, offset)?.digest)),
            None => None,
        };
        Ok(PartitionMark {
            topic: position.topic.clone(),
            partition: position.partition,
            next_offset: position.next_offset,
            last,
        })
    };
    positions.iter().map(mark).collect()
}

fn anchor_at(log: &dyn EventLog, topic: &str, partition: u32, offset: u64) -> Result<Anchor, SaveError> {
    let records = log
        .read(topic, partition, offset, 1, std::time::Duration::ZERO)
        .map_err(|source| SaveError::Anchor { topic: topic.to_owned(), partition, offset, source })?;
    match records.first() {
        Some(record) if record.offset == offset => Ok(Anchor::of(record)),
        _ => Err(SaveError::Missing { topic: topic.to_owned(), partition, offset }),
    }
}

/// A read model restored from its snapshot.
#[derive(Debug)]
pub(crate) struct Restored {
    pub(crate) model: ReadModel,
    /// Where the snapshot's model had read each partition up to: reading goes on from there.
    pub(crate) positions: Vec<Position>,
    /// The snapshot state's size in bytes: the room the next snapshot's encoding starts with.
    pub(crate) size: usize,
}

/// The model of the snapshot in `store` and the positions to follow from, if there is one that
/// matches `log`; a snapshot that does not is reported and ignored. Only a store of another log is
/// an error (see [`SnapshotStore::load`]).
pub(crate) fn load(
    store: &SnapshotStore,
    log: &dyn EventLog,
) -> Result<Option<Restored>, ipam_runtime::snapshot::SnapshotError> {
    let Some(snapshot) = store.load(NAME)? else { return Ok(None) };
    let size = snapshot.state.len();
    let mut state: &[u8] = &snapshot.state;
    let unreadable = |error: ReadError| {
        tracing::warn!(error = %error, "Ignoring the read model's snapshot, which cannot be read; reading the log from the beginning.");
        Ok(None)
    };
    let version = match rmp_serde::from_read::<_, u32>(&mut state) {
        Ok(version) => version,
        Err(error) => return unreadable(error.into()),
    };
    if version != VERSION {
        tracing::warn!(
            version,
            expected = VERSION,
            "Ignoring the read model's snapshot of another format version; reading the log from the beginning."
        );
        return Ok(None);
    }
    let marks = match rmp_serde::from_read::<_, Vec<PartitionMark>>(&mut state) {
        Ok(marks) => marks,
        Err(error) => return unreadable(error.into()),
    };
    for mark in &marks {
        if let Err(why) = check(log, mark) {
            tracing::warn!(topic = %mark.topic, partition = mark.partition, why,
                           "Ignoring the read model's snapshot, which does not match the log; reading the log from the beginning.");
            return Ok(None);
        }
    }
    let mut model = match decode_model(&mut state) {
        Ok(model) => model,
        Err(error) => return unreadable(error),
    };
    model.restored();
    let positions = marks
        .into_iter()
        .map(|mark| Position { topic: mark.topic, partition: mark.partition, next_offset: mark.next_offset })
        .collect();
    Ok(Some(Restored { model, positions, size }))
}

/// Whether the log holds what the snapshot read of one partition: as many records, and the same
/// record last.
fn check(log: &dyn EventLog, mark: &PartitionMark) -> Result<(), String> {
    let end = log.end_offset(&mark.topic, mark.partition).map_err(|e| format!("cannot read its end: {e}"))?;
    if end < mark.next_offset {
        return Err(format!("the snapshot read up to offset {}, the log ends at {end}", mark.next_offset));
    }
    if let Some((offset, digest)) = &mark.last {
        let anchor = anchor_at(log, &mark.topic, mark.partition, *offset).map_err(|e| e.to_string())?;
        if anchor.digest != *digest {
            return Err(format!("the record at offset {offset} is not the one the snapshot folded"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use ipam_core::event::{Owner, ReservationAdded, SubnetActivated};
    use ipam_core::{Envelope, Event, EventId, IpRange, Mac, NetworkId, SubnetId, Timestamp, Topic, VmId, VnicId};
    use ipam_log::{MemoryLog, OutRecord, TopicSpec};

    use super::*;

    /// Encodes and writes at once, as the follower does in two parts.
    fn save(
        store: &SnapshotStore,
        log: &dyn EventLog,
        positions: &[Position],
        model: &ReadModel,
    ) -> Result<(), SaveError> {
        write(store, encode_snapshot(prepare(log, positions, 0)?, model)?)
    }

    const TOPIC: &str = "ipam.reservations";

    /// A log whose reservations topic holds a subnet and `count` reservations, and the model that
    /// folded all of it, with its positions.
    fn folded(count: u8, first_ip: u8) -> (MemoryLog, ReadModel, Vec<Position>) {
        let log = MemoryLog::new();
        log.create_topics(&[TopicSpec { name: TOPIC.to_owned(), partitions: 1 }]).unwrap();
        let (network_id, subnet_id) = (NetworkId::from_u128(1), SubnetId::from_u128(2));
        let mut events = vec![Event::SubnetActivated(SubnetActivated {
            network_id,
            subnet_id,
            cidr: "10.0.0.0/24".parse().unwrap(),
            gateway: "10.0.0.1".parse().unwrap(),
            dns_servers: vec![],
            ntp_servers: vec![],
            allocation_pools: vec![IpRange { start: "10.0.0.2".parse().unwrap(), end: "10.0.0.254".parse().unwrap() }],
            cause: EventId::from_u128(1),
        })];
        for n in 0..count {
            events.push(Event::ReservationAdded(ReservationAdded {
                network_id,
                subnet_id,
                owner: Owner::Vnic { vnic_id: VnicId::from_u128(100 + u128::from(n)), vm_id: VmId::from_u128(7) },
                mac: Mac::from_octets([0x52, 0x54, 0, 0, 0, n]).unwrap(),
                ip: std::net::IpAddr::from([10, 0, 0, first_ip + n]),
                cause: EventId::from_u128(1000 + u128::from(n)),
            }));
        }
        let mut model = ReadModel::new();
        for (n, event) in events.into_iter().enumerate() {
            let time = Timestamp::from_unix_ms(1_000 * i64::try_from(n).unwrap());
            let envelope = Envelope {
                id: EventId::from_u128(5000 + n as u128),
                source: "test".to_owned(),
                time,
                subject: None,
                event,
            };
            let record = OutRecord { topic: TOPIC.to_owned(), key: network_id.to_string(), value: envelope.to_bytes() };
            let offset = log.append(&[record]).unwrap()[0].offset;
            model.apply_at(Topic::Reservations, Some(offset), &envelope);
            model.advance(TOPIC, 0, offset + 1);
        }
        let end = log.end_offset(TOPIC, 0).unwrap();
        (log, model, vec![Position { topic: TOPIC.to_owned(), partition: 0, next_offset: end }])
    }

    /// The whole model, both halves, with field names.
    fn bytes(model: &ReadModel) -> Vec<u8> {
        rmp_serde::to_vec_named(&(model, model.vnic_part())).unwrap()
    }

    #[test]
    fn a_snapshot_gives_back_the_model_it_was_taken_of_and_its_positions() {
        let dir = tempfile::tempdir().unwrap();
        let (log, model, positions) = folded(5, 10);
        let store = SnapshotStore::open(dir.path(), log.identity().unwrap()).unwrap();
        save(&store, &log, &positions, &model).unwrap();
        let Restored { model: restored, positions: restored_positions, .. } =
            load(&store, &log).unwrap().expect("a snapshot that matches its log");
        assert_eq!(restored_positions, positions);
        assert_eq!(bytes(&restored), bytes(&model), "the restored model differs");
        assert_eq!(restored.processed(), model.processed());
        assert!(!restored.caught_up(), "a restored model has yet to catch up with the log");
    }

    #[test]
    fn a_snapshot_that_does_not_match_the_log_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let (log, model, positions) = folded(5, 10);
        let store = SnapshotStore::open(dir.path(), "one-log").unwrap();
        save(&store, &log, &positions, &model).unwrap();
        // As many records, but others: the last one folded is not the record at its offset.
        let (other, _, _) = folded(5, 50);
        assert!(load(&store, &other).unwrap().is_none(), "a snapshot of other records was used");
        // Fewer records than the snapshot read.
        let (shorter, _, _) = folded(3, 10);
        assert!(load(&store, &shorter).unwrap().is_none(), "a snapshot ahead of the log was used");
        // More records after the same ones: the snapshot is good, and the rest is read after it.
        let (longer, _, _) = folded(8, 10);
        let from = load(&store, &longer).unwrap().expect("a snapshot behind the log is used").positions;
        assert_eq!(from, positions);
        // A snapshot cut short.
        save(&store, &log, &positions, &model).unwrap();
        let whole = store.load(NAME).unwrap().unwrap().state;
        store.save(NAME, 0, None, whole[..whole.len() - 10].to_vec()).unwrap();
        assert!(load(&store, &log).unwrap().is_none(), "a truncated snapshot was used");
        // Bytes that are not a snapshot of the model.
        store.save(NAME, 0, None, b"{garbage".to_vec()).unwrap();
        assert!(load(&store, &log).unwrap().is_none(), "garbage was used");
    }

    #[test]
    fn a_snapshot_of_another_version_or_form_is_ignored_and_one_of_this_version_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (log, model, positions) = folded(5, 10);
        let store = SnapshotStore::open(dir.path(), log.identity().unwrap()).unwrap();
        let marks = marks(&log, &positions).unwrap();
        store.save(NAME, 0, None, encode_into(Vec::new(), VERSION - 1, &marks, &model).unwrap()).unwrap();
        assert!(load(&store, &log).unwrap().is_none(), "a snapshot of the previous version was used");
        // Version 3's form: one array of the version, the marks and the model.
        store.save(NAME, 0, None, rmp_serde::to_vec(&(3u32, &marks, &model)).unwrap()).unwrap();
        assert!(load(&store, &log).unwrap().is_none(), "a snapshot of version 3's form was used");
        // Framed halves read back as they were written, and a frame cut short is refused.
        let whole = encode_into(Vec::new(), VERSION, &marks, &model).unwrap();
        let mut framed = &whole[..];
        let _: (u32, Vec<PartitionMark>) =
            (rmp_serde::from_read(&mut framed).unwrap(), rmp_serde::from_read(&mut framed).unwrap());
        let halves = framed;
        assert_eq!(half(&mut framed).unwrap(), rmp_serde::to_vec(&model).unwrap());
        assert_eq!(half(&mut framed).unwrap(), rmp_serde::to_vec(&model.vnic_part()).unwrap());
        assert!(framed.is_empty());
        assert!(matches!(half(&mut &halves[..20]), Err(ReadError::Short)));
        assert!(matches!(half(&mut &[0x90u8][..]), Err(ReadError::Frame(_))));
        store.save(NAME, 0, None, encode_into(Vec::new(), VERSION, &marks, &model).unwrap()).unwrap();
        let restored = load(&store, &log).unwrap().expect("this version's snapshot is read").model;
        assert_eq!(bytes(&restored), bytes(&model));
    }
}
