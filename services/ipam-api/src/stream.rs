//! `GET /v1/stream`: the system's decisions (`ipam.reservations` and `ipam.dhcp-servers`) as
//! Server-Sent Events, resumable.
//!
//! # Cursors
//! A cursor lists `topic/partition:offset` entries separated by commas: the offset of the next
//! record to send from each partition. A partition it does not list starts at 0. Every event's SSE
//! `id` is the whole cursor after that event (partitions still at 0 left out), because one
//! partition's offset alone cannot say where the others were: passing it back as `?from=` or as
//! `Last-Event-ID` (which browsers send on reconnect, and which wins over `from`) resumes right
//! after the event, with nothing lost or repeated. `from=start` replays everything; without either,
//! the stream starts at the current end.
//!
//! # Threads
//! Each stream has a thread that blocks on log reads and feeds a bounded channel the response body
//! drains, so a slow client slows its own reader only. The thread ends when the client goes away
//! (noticed at the next write; a comment is written every [`KEEP_ALIVE`] when idle) or when the
//! server stops. At most [`MAX_STREAMS`] run at once.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use futures::StreamExt as _;
use futures::channel::mpsc;
use ipam_core::{Envelope, Topic};
use ipam_log::EventLog;
use serde::Deserialize;

use crate::error::ApiError;
use crate::state::AppState;

/// The topics the stream carries.
pub const STREAMED: [Topic; 2] = [Topic::Reservations, Topic::DhcpServers];
/// Streams served at once; more are refused with 503.
pub const MAX_STREAMS: usize = 64;
/// How long a stream stays silent before it writes a comment, which also reveals a gone client.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How long a read waits when a whole round found nothing.
const IDLE_WAIT: Duration = Duration::from_millis(100);
const READ_MAX: usize = 256;
/// Frames buffered between the reader thread and the response.
const CHANNEL_FRAMES: usize = 64;

/// The next offset to send from each partition.
pub type Cursor = BTreeMap<(String, u32), u64>;

/// Writes a cursor as the `id` of an event: `topic/partition:offset,...`, zeros left out.
pub fn format_cursor(cursor: &Cursor) -> String {
    let entries: Vec<String> = cursor
        .iter()
        .filter(|(_, next)| **next > 0)
        .map(|((topic, partition), next)| format!("{topic}/{partition}:{next}"))
        .collect();
    entries.join(",")
}

/// Reads a cursor over `partitions` (topic → partition count); partitions it does not name start
/// at 0. `start` names none.
pub fn parse_cursor(text: &str, partitions: &BTreeMap<String, u32>) -> Result<Cursor, ApiError> {
    let mut cursor: Cursor = partitions
        .iter()
        .flat_map(|(topic, count)| (0..*count).map(move |partition| ((topic.clone(), partition), 0)))
        .collect();
    let text = text.trim();
    if text == "start" || text.is_empty() {
        return Ok(cursor);
    }
    let bad = |entry: &str, why: &str| {
        ApiError::bad_request(
            "invalid_cursor",
            format!(
                "`{}` is not a stream position ({why}); expected topic/partition:offset",
                entry.chars().take(100).collect::<String>()
            ),
        )
        .with_field("from")
    };
    for entry in text.split(',').map(str::trim).filter(|entry| !entry.is_empty()) {
        let (place, offset) = entry.rsplit_once(':').ok_or_else(|| bad(entry, "no `:offset`"))?;
        let (topic, partition) = place.rsplit_once('/').ok_or_else(|| bad(entry, "no `/partition`"))?;
        let partition: u32 = partition.parse().map_err(|_| bad(entry, "the partition is not a number"))?;
        let offset: u64 = offset.parse().map_err(|_| bad(entry, "the offset is not a number"))?;
        let count = partitions.get(topic).ok_or_else(|| bad(entry, "not a streamed topic"))?;
        if partition >= *count {
            return Err(bad(entry, "no such partition"));
        }
        cursor.insert((topic.to_owned(), partition), offset);
    }
    Ok(cursor)
}

#[derive(Debug, Deserialize)]
struct StreamQuery {
    from: Option<String>,
}

/// One of the [`MAX_STREAMS`] places, given back when dropped.
#[derive(Debug)]
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(streams: &Arc<AtomicUsize>) -> Option<Slot> {
        let taken = streams.fetch_add(1, Ordering::SeqCst);
        let slot = Slot(Arc::clone(streams));
        (taken < MAX_STREAMS).then_some(slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

pub(crate) async fn stream(request: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let query = web::Query::<StreamQuery>::from_query(request.query_string())
        .map_err(|e| ApiError::bad_request("invalid_query", e.to_string()))?;
    let last_event_id = match request.headers().get("last-event-id") {
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| {
                    ApiError::bad_request("invalid_cursor", "Last-Event-ID is not text").with_field("Last-Event-ID")
                })?
                .to_owned(),
        ),
        None => None,
    };
    let spec = last_event_id.or_else(|| query.into_inner().from);

    let log = Arc::clone(&state.log);
    let names: Vec<String> = STREAMED.iter().map(|topic| state.topics.name(*topic)).collect();
    let (partitions, ends) = web::block(move || -> Result<_, ipam_log::LogError> {
        let mut partitions = BTreeMap::new();
        let mut ends = Cursor::new();
        for name in names {
            let count = log.partition_count(&name)?;
            for partition in 0..count {
                ends.insert((name.clone(), partition), log.end_offset(&name, partition)?);
            }
            partitions.insert(name, count);
        }
        Ok((partitions, ends))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
    .map_err(|e| ApiError::log(&e))?;
    let cursor = match spec.as_deref().map(str::trim) {
        None | Some("end") => ends,
        Some(text) => parse_cursor(text, &partitions)?,
    };

    let slot = Slot::take(&state.streams).ok_or_else(|| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "too_many_streams", format!("{MAX_STREAMS} streams are open"))
    })?;
    let (sender, receiver) = mpsc::channel::<web::Bytes>(CHANNEL_FRAMES);
    let (log, halt) = (Arc::clone(&state.log), Arc::clone(&state.halt));
    thread::Builder::new()
        .name("ipam-api-stream".to_owned())
        .spawn(move || {
            let _slot = slot;
            pump(&*log, cursor, sender, &halt);
        })
        .map_err(|e| {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "internal", format!("cannot start a stream: {e}"))
        })?;
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(receiver.map(Ok::<_, Infallible>)))
}

/// Hands a frame to the response, waiting while the client is slow. Answers `false` when the client
/// went away or the server is stopping.
fn send(sender: &mut mpsc::Sender<web::Bytes>, frame: String, halt: &AtomicBool) -> bool {
    let mut frame = web::Bytes::from(frame);
    loop {
        match sender.try_send(frame) {
            Ok(()) => return true,
            Err(error) if error.is_full() && !halt.load(Ordering::SeqCst) => {
                frame = error.into_inner();
                thread::sleep(Duration::from_millis(10));
            }
            Err(_) => return false,
        }
    }
}

/// One SSE frame for a record, or `None` for a record that is not an event.
fn frame(cursor: &Cursor, value: &[u8]) -> Option<String> {
    let envelope = Envelope::decode(value).ok()?;
    // The stored bytes are compact JSON; anything with a line break is re-encoded, since a line
    // break would end the SSE `data` field.
    let data = match std::str::from_utf8(value) {
        Ok(text) if !text.contains(['\n', '\r']) => text.to_owned(),
        _ => serde_json::to_string(&envelope.to_json()).ok()?,
    };
    Some(format!("id: {}\nevent: {}\ndata: {data}\n\n", format_cursor(cursor), envelope.event.type_name()))
}

fn pump(log: &dyn EventLog, mut cursor: Cursor, mut sender: mpsc::Sender<web::Bytes>, halt: &AtomicBool) {
    if !send(&mut sender, "retry: 1000\n: connected\n\n".to_owned(), halt) {
        return;
    }
    let partitions: Vec<(String, u32)> = cursor.keys().cloned().collect();
    let mut last_write = Instant::now();
    let mut next_wait = 0;
    while !halt.load(Ordering::SeqCst) {
        let mut sent_any = false;
        for place in &partitions {
            let from = cursor[place];
            let records = match log.read(&place.0, place.1, from, READ_MAX, Duration::ZERO) {
                Ok(records) => records,
                Err(error) => {
                    tracing::warn!(topic = %place.0, partition = place.1, error = %error, "A stream cannot read the log.");
                    continue;
                }
            };
            for record in records {
                cursor.insert(place.clone(), record.offset + 1);
                if let Some(frame) = frame(&cursor, &record.value) {
                    if !send(&mut sender, frame, halt) {
                        return;
                    }
                    sent_any = true;
                    last_write = Instant::now();
                }
            }
        }
        if sent_any || partitions.is_empty() {
            if partitions.is_empty() {
                thread::sleep(IDLE_WAIT);
            }
            continue;
        }
        if last_write.elapsed() >= KEEP_ALIVE {
            if !send(&mut sender, ": keep-alive\n\n".to_owned(), halt) {
                return;
            }
            last_write = Instant::now();
        }
        // Nothing anywhere: wait on one partition, a different one each round.
        let place = &partitions[next_wait % partitions.len()];
        next_wait += 1;
        if let Err(error) = log.read(&place.0, place.1, cursor[place], 1, IDLE_WAIT) {
            tracing::warn!(topic = %place.0, partition = place.1, error = %error, "A stream cannot read the log.");
            thread::sleep(IDLE_WAIT);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_and_unlisted_partitions_start_at_zero() {
        let partitions: BTreeMap<String, u32> =
            [("ipam.reservations".to_owned(), 2), ("ipam.dhcp-servers".to_owned(), 2)].into();
        let cursor = parse_cursor("ipam.reservations/1:7, ipam.dhcp-servers/0:3", &partitions).expect("cursor");
        assert_eq!(cursor.len(), 4);
        assert_eq!(cursor[&("ipam.reservations".to_owned(), 0)], 0);
        assert_eq!(format_cursor(&cursor), "ipam.dhcp-servers/0:3,ipam.reservations/1:7");
        assert_eq!(parse_cursor(&format_cursor(&cursor), &partitions).expect("again"), cursor);
        assert!(parse_cursor("start", &partitions).expect("start").values().all(|next| *next == 0));
    }

    #[test]
    fn bad_cursors_are_refused() {
        let partitions: BTreeMap<String, u32> = [("ipam.reservations".to_owned(), 2)].into();
        for text in ["ipam.reservations/2:0", "ipam.hosts/0:1", "ipam.reservations/0", "ipam.reservations/x:1"] {
            let error = parse_cursor(text, &partitions).expect_err(text);
            assert_eq!(error.code, "invalid_cursor");
        }
    }
}
