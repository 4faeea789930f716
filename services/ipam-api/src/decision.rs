//! Decisions on write and reads after a write: what `POST /v1/events?wait=` answers, and what
//! `?after=` waits for.
//!
//! The API decides nothing, so it cannot say what an event caused by looking at the event: it waits
//! until the service that decides it (the allocator for `ipam.networks`, placement for
//! `ipam.hosts`) has committed past the event's offset, and until the read model has read what that
//! commit wrote. Outputs name their cause (`cause` in their data), and the read model keeps the
//! decisions by cause ([`ReadModel::decided`]), so an event whose decision is already in the model
//! needs no look at the log at all; only events that decide nothing (a heartbeat, a vNIC without a
//! subnet, a retry) wait for the commit.
//!
//! Because a deciding service commits its outputs and its position in one transaction, "committed
//! past the event" means "every output of the event is in the log", and "the read model read up to
//! the ends it saw after that" means "every output is in the model".

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::web;
use ipam_core::event::Owner;
use ipam_core::{Cidr, Envelope, Event, EventId, HostId, Mac, NetworkId, RejectionCode, SubnetId, Topic};
use ipam_core::{VmId, VnicId};
use ipam_log::LogError;
use schemars::JsonSchema;
use serde::Serialize;

use crate::error::ApiError;
use crate::follower::FOLLOWED;
use crate::model::{Decided, HostRef, ReadModel};
use crate::state::AppState;

/// The longest a client may ask to wait, on write or on read.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// How long a read with `after` waits when it does not say (`wait`).
pub const DEFAULT_AFTER_WAIT: Duration = Duration::from_secs(10);
/// How often a waiting request looks again. The read model is looked at in memory; the log only
/// for events that decided nothing the model shows.
const POLL: Duration = Duration::from_millis(10);

/// One event's fate, in the order of the batch.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Outcome {
    pub event_id: EventId,
    #[serde(rename = "type")]
    pub event_type: String,
    #[serde(flatten)]
    pub decision: Decision,
}

/// What was decided; `outcome` names the variant.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Decision {
    /// An address was reserved.
    Reserved(Reserved),
    /// An address was released.
    Released(Released),
    /// The request was refused.
    Rejected(Rejected),
    /// The event was taken, but it decides no address (a host event, a network without a change
    /// of subnets, a vNIC without a subnet, a retry of an event already decided and forgotten).
    NothingToDecide,
    /// Not decided within the wait.
    Pending,
}

/// What an input reserved. A dual-stack vNIC gets two addresses: `addresses` lists both, IPv4
/// first; `ip`, `subnet_id` and `cidr` are the first, as for a single-stack vNIC.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Reserved {
    pub network_id: NetworkId,
    /// Null for a DHCP server's own address.
    pub vnic_id: Option<VnicId>,
    pub vm_id: Option<VmId>,
    /// The host whose DHCP server holds the address; null for a vNIC's.
    pub host_id: Option<HostId>,
    pub mac: Mac,
    pub ip: IpAddr,
    pub subnet_id: SubnetId,
    /// Null when the subnet has gone since.
    pub cidr: Option<Cidr>,
    /// Every address reserved (one, or an IPv4 and an IPv6 one), IPv4 first.
    pub addresses: Vec<ReservedAddress>,
    /// The hosts whose DHCP servers serve the network now, with their names.
    pub served_by: Vec<HostRef>,
}

/// One address an input reserved.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ReservedAddress {
    pub ip: IpAddr,
    pub subnet_id: SubnetId,
    /// Null when the subnet has gone since.
    pub cidr: Option<Cidr>,
}

/// What an input released: `addresses` lists every address (a dual-stack vNIC's two, IPv4
/// first); `ip` and `subnet_id` are the first.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Released {
    pub network_id: NetworkId,
    pub vnic_id: Option<VnicId>,
    pub host_id: Option<HostId>,
    pub mac: Mac,
    pub ip: IpAddr,
    pub subnet_id: SubnetId,
    /// Every address released, IPv4 first.
    pub addresses: Vec<ReleasedAddress>,
}

/// One address an input released.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ReleasedAddress {
    pub ip: IpAddr,
    pub subnet_id: SubnetId,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Rejected {
    pub network_id: NetworkId,
    pub code: RejectionCode,
    pub message: String,
    /// From the refused request, when it names one.
    pub vnic_id: Option<VnicId>,
    pub mac: Option<Mac>,
    pub subnet_id: Option<SubnetId>,
}

/// "Everything before offset N of this partition": decided (for the input topics) and shown by the
/// read model (for every topic). The text form is `topic/partition/N`, joined by commas.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mark {
    pub topic: String,
    pub partition: u32,
    pub next_offset: u64,
}

/// Formats marks as a position token.
pub fn token(marks: &[Mark]) -> String {
    marks.iter().map(|m| format!("{}/{}/{}", m.topic, m.partition, m.next_offset)).collect::<Vec<_>>().join(",")
}

/// The marks of records that landed at `(topic, partition, offset)`: one per partition, past the
/// last record.
pub fn marks_after(landed: impl IntoIterator<Item = (String, u32, u64)>) -> Vec<Mark> {
    let mut ends: BTreeMap<(String, u32), u64> = BTreeMap::new();
    for (topic, partition, offset) in landed {
        let end = ends.entry((topic, partition)).or_insert(0);
        *end = (*end).max(offset + 1);
    }
    ends.into_iter().map(|((topic, partition), next_offset)| Mark { topic, partition, next_offset }).collect()
}

fn invalid_after(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_after", message).with_field("after")
}

/// Parses a position token, checking each topic is one the API knows and each partition exists.
pub(crate) fn parse_token(state: &AppState, text: &str) -> Result<Vec<Mark>, ApiError> {
    let shown: String = text.chars().take(100).collect();
    let known = known_topics(state);
    let mut marks = Vec::new();
    for entry in text.split(',') {
        let mut parts = entry.rsplitn(3, '/');
        let (Some(offset), Some(partition), Some(topic)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(invalid_after(format!("`{shown}` is not a position token (`topic/partition/offset`, ...)")));
        };
        let (Ok(partition), Ok(next_offset)) = (partition.parse::<u32>(), offset.parse::<u64>()) else {
            return Err(invalid_after(format!("`{shown}`: partition and offset must be whole numbers")));
        };
        if !known.iter().any(|(name, _)| name == topic) {
            return Err(invalid_after(format!("`{shown}` names `{topic}`, which is not a topic of this API")));
        }
        marks.push(Mark { topic: topic.to_owned(), partition, next_offset });
    }
    Ok(marks)
}

/// Every topic a mark may name: the input topics and the ones the read model follows.
fn known_topics(state: &AppState) -> Vec<(String, Topic)> {
    let mut known: Vec<(String, Topic)> =
        [Topic::Networks, Topic::Hosts].iter().map(|t| (state.topics.name(*t), *t)).collect();
    for topic in FOLLOWED {
        if !known.iter().any(|(_, t)| *t == topic) {
            known.push((state.topics.name(topic), topic));
        }
    }
    known
}

/// Parses a wait: `250ms`, `5s`, `1m`, or a number of seconds.
pub fn parse_wait(text: &str) -> Result<Duration, ApiError> {
    let text = text.trim();
    let shown: String = text.chars().take(40).collect();
    let bad = || {
        ApiError::bad_request(
            "invalid_wait",
            format!(
                "`{shown}` is not a wait: give seconds (`5`, `0.5`) or a duration (`250ms`, `5s`, `1m`), at most 60 s"
            ),
        )
        .with_field("wait")
    };
    let (number, unit) = if let Some(n) = text.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number.trim().parse().map_err(|_| bad())?;
    if !value.is_finite() || value < 0.0 {
        return Err(bad());
    }
    let seconds = value * unit;
    if seconds > MAX_WAIT.as_secs_f64() {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// The group that decides events of an input topic.
fn deciding_group(state: &AppState, topic: Topic) -> Option<&str> {
    match topic {
        Topic::Networks => Some(&state.groups.allocator),
        Topic::Hosts => Some(&state.groups.placement),
        _ => None,
    }
}

/// Where a mark stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Progress {
    /// Not decided yet (input topics only).
    Undecided,
    /// Decided; the read model must read up to these ends of its partitions.
    Decided(Vec<(String, u32, u64)>),
    /// Decided and shown.
    Shown,
}

/// Whether the read model has read every record below `ends`. A partition the model is short of
/// may hold only transaction markers there (Kafka), so the log is asked whether a record is left.
fn model_reached(state: &AppState, ends: &[(String, u32, u64)]) -> Result<bool, LogError> {
    for (topic, partition, end) in ends {
        let at = state.model().positions().get(&crate::model::position_key(topic, *partition)).copied().unwrap_or(0);
        if at >= *end {
            continue;
        }
        let left = state.log.read(topic, *partition, at, 1, Duration::ZERO)?;
        if left.first().is_some_and(|record| record.offset < *end) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Moves one mark forward as far as the log and the model allow now.
fn look(state: &AppState, mark: &Mark, progress: &Progress) -> Result<Progress, LogError> {
    let kind = known_topics(state).into_iter().find(|(name, _)| *name == mark.topic).map(|(_, kind)| kind);
    let progress = match (progress, kind.and_then(|kind| deciding_group(state, kind))) {
        (Progress::Undecided, Some(group)) => {
            let committed = state.log.committed_position(group, &mark.topic, mark.partition)?.unwrap_or(0);
            if committed < mark.next_offset {
                return Ok(Progress::Undecided);
            }
            Progress::Decided(state.followed_ends()?)
        }
        (Progress::Undecided, None) => Progress::Decided(vec![(mark.topic.clone(), mark.partition, mark.next_offset)]),
        (other, _) => other.clone(),
    };
    match progress {
        Progress::Decided(ends) if model_reached(state, &ends)? => Ok(Progress::Shown),
        other => Ok(other),
    }
}

/// Looks at every mark not shown yet, off the HTTP workers.
async fn look_all(state: &web::Data<AppState>, marks: &[Mark], progress: &mut [Progress]) -> Result<(), ApiError> {
    let work: Vec<(usize, Mark, Progress)> = marks
        .iter()
        .zip(progress.iter())
        .enumerate()
        .filter(|(_, (_, p))| **p != Progress::Shown)
        .map(|(i, (m, p))| (i, m.clone(), p.clone()))
        .collect();
    if work.is_empty() {
        return Ok(());
    }
    let state = web::Data::clone(state);
    let looked = web::block(move || {
        work.into_iter().map(|(i, mark, p)| look(&state, &mark, &p).map(|p| (i, p))).collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
    .map_err(|e| ApiError::log(&e))?;
    for (i, p) in looked {
        progress[i] = p;
    }
    Ok(())
}

/// Refuses a token that names a partition its topic does not have (it cannot come from this log).
async fn check_partitions(state: &web::Data<AppState>, marks: &[Mark]) -> Result<(), ApiError> {
    let (state, marks) = (web::Data::clone(state), marks.to_vec());
    let counts = web::block(move || {
        marks
            .iter()
            .map(|mark| state.log.partition_count(&mark.topic).map(|count| (mark.clone(), count)))
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
    .map_err(|e| ApiError::log(&e))?;
    match counts.into_iter().find(|(mark, count)| mark.partition >= *count) {
        Some((mark, count)) => {
            Err(invalid_after(format!("`{}` has {count} partitions, not a partition {}", mark.topic, mark.partition)))
        }
        None => Ok(()),
    }
}

/// Waits until the read model shows everything before `marks`, or `wait` passes. Answers whether
/// it does.
pub(crate) async fn reach(state: &web::Data<AppState>, marks: &[Mark], wait: Duration) -> Result<bool, ApiError> {
    let deadline = Instant::now() + wait;
    check_partitions(state, marks).await?;
    let mut progress = vec![Progress::Undecided; marks.len()];
    loop {
        look_all(state, marks, &mut progress).await?;
        if progress.iter().all(|p| *p == Progress::Shown) {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        actix_web::rt::time::sleep(POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}

/// The outcome of each event of a batch that landed at `landed` (topic, partition, offset), once
/// decided, or `pending` after `wait`.
pub(crate) async fn decide(
    state: &web::Data<AppState>,
    envelopes: &[Envelope],
    landed: &[(String, u32, u64)],
    wait: Duration,
) -> Result<Vec<Outcome>, ApiError> {
    let deadline = Instant::now() + wait;
    let marks: Vec<Mark> = landed
        .iter()
        .map(|(topic, partition, offset)| Mark { topic: topic.clone(), partition: *partition, next_offset: offset + 1 })
        .collect();
    let mut progress = vec![Progress::Undecided; envelopes.len()];
    let mut outcomes: Vec<Option<Decision>> = vec![None; envelopes.len()];
    loop {
        {
            let model = state.model();
            for ((envelope, outcome), progress) in envelopes.iter().zip(outcomes.iter_mut()).zip(progress.iter_mut()) {
                if outcome.is_none()
                    && let Some(decided) = model.decided(envelope.id)
                {
                    *outcome = Some(from_model(&model, envelope, decided));
                    *progress = Progress::Shown;
                }
            }
        }
        look_all(state, &marks, &mut progress).await?;
        {
            let model = state.model();
            for ((envelope, outcome), progress) in envelopes.iter().zip(outcomes.iter_mut()).zip(&progress) {
                if outcome.is_none() && *progress == Progress::Shown {
                    // Decided; the model may have learnt its decision between the two looks.
                    *outcome = Some(match model.decided(envelope.id) {
                        Some(decided) => from_model(&model, envelope, decided),
                        None => undecided(&model, envelope),
                    });
                }
            }
        }
        if outcomes.iter().all(Option::is_some) || Instant::now() >= deadline {
            break;
        }
        actix_web::rt::time::sleep(POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
    Ok(envelopes
        .iter()
        .zip(outcomes)
        .map(|(envelope, outcome)| Outcome {
            event_id: envelope.id,
            event_type: envelope.event.type_name().to_owned(),
            decision: outcome.unwrap_or(Decision::Pending),
        })
        .collect())
}

fn owner_ids(owner: Owner) -> (Option<VnicId>, Option<VmId>, Option<HostId>) {
    match owner {
        Owner::Vnic { vnic_id, vm_id } => (Some(vnic_id), Some(vm_id), None),
        Owner::DhcpServer { host_id } => (None, None, Some(host_id)),
    }
}

/// The answer for `addresses` reserved (at least one, IPv4 first) for `owner`.
fn reserved(
    model: &ReadModel,
    network_id: NetworkId,
    owner: Owner,
    mac: Mac,
    addresses: &[(SubnetId, IpAddr)],
) -> Decision {
    let (vnic_id, vm_id, host_id) = owner_ids(owner);
    let mut addresses: Vec<ReservedAddress> = addresses
        .iter()
        .map(|&(subnet_id, ip)| ReservedAddress { ip, subnet_id, cidr: model.subnet_cidr(network_id, subnet_id) })
        .collect();
    addresses.sort_by_key(|address| address.ip);
    let Some(first) = addresses.first().cloned() else { return Decision::NothingToDecide };
    Decision::Reserved(Reserved {
        network_id,
        vnic_id,
        vm_id,
        host_id,
        mac,
        ip: first.ip,
        subnet_id: first.subnet_id,
        cidr: first.cidr,
        addresses,
        served_by: model.served_by(network_id),
    })
}

fn from_model(model: &ReadModel, envelope: &Envelope, decided: &Decided) -> Decision {
    match decided.clone() {
        Decided::Reserved { network_id, owner, mac, addresses } => reserved(model, network_id, owner, mac, &addresses),
        Decided::Released { network_id, owner, mac, addresses } => {
            let (vnic_id, _, host_id) = owner_ids(owner);
            let mut addresses: Vec<ReleasedAddress> =
                addresses.into_iter().map(|(subnet_id, ip)| ReleasedAddress { ip, subnet_id }).collect();
            addresses.sort_by_key(|address| address.ip);
            let Some(first) = addresses.first().cloned() else { return Decision::NothingToDecide };
            Decision::Released(Released {
                network_id,
                vnic_id,
                host_id,
                mac,
                ip: first.ip,
                subnet_id: first.subnet_id,
                addresses,
            })
        }
        Decided::Rejected { network_id, code, message, vnic_id, mac, subnet_id, .. } => {
            // A rejection written before IPAM recorded the names: the request still has them.
            let (asked_vnic, asked_mac, asked_subnet) = envelope.event.request_names();
            Decision::Rejected(Rejected {
                network_id,
                code,
                message,
                vnic_id: vnic_id.or(asked_vnic),
                mac: mac.or(asked_mac),
                subnet_id: subnet_id.or(asked_subnet),
            })
        }
    }
}

/// A decided event with no decision of its own in the model: a vNIC start that finds its vNIC
/// holding an address already (a retry) answers that reservation; anything else decided nothing.
fn undecided(model: &ReadModel, envelope: &Envelope) -> Decision {
    if let Event::VnicStarted(e) | Event::VnicPlugged(e) | Event::VnicLinked(e) = &envelope.event {
        let held = model.vnic_reservations(e.vnic_id);
        if let Some(&(network_id, _, mac, _)) = held.first()
            && network_id == e.network_id
        {
            let addresses: Vec<(SubnetId, IpAddr)> =
                held.iter().map(|&(_, subnet_id, _, ip)| (subnet_id, ip)).collect();
            let owner = Owner::Vnic { vnic_id: e.vnic_id, vm_id: e.vm_id };
            return reserved(model, network_id, owner, mac, &addresses);
        }
    }
    Decision::NothingToDecide
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_are_seconds_or_durations_up_to_a_minute() {
        assert_eq!(parse_wait("5").expect("5"), Duration::from_secs(5));
        assert_eq!(parse_wait("0.5").expect("0.5"), Duration::from_millis(500));
        assert_eq!(parse_wait("250ms").expect("250ms"), Duration::from_millis(250));
        assert_eq!(parse_wait("1m").expect("1m"), Duration::from_secs(60));
        for bad in ["", "-1", "61", "2m", "soon", "NaN", "inf"] {
            assert_eq!(parse_wait(bad).expect_err(bad).code, "invalid_wait", "{bad}");
        }
    }

    #[test]
    fn marks_after_records_keep_the_furthest_of_each_partition() {
        let marks = marks_after([("t".to_owned(), 0, 4), ("t".to_owned(), 0, 9), ("t".to_owned(), 1, 0)]);
        assert_eq!(token(&marks), "t/0/10,t/1/1");
    }
}
