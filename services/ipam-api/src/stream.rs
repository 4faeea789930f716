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
//! Each stream has a thread that follows the log (one positioned [`ipam_log::Follower`]) and feeds a bounded channel the response body
//! drains, so a slow client slows its own reader only. The thread ends, and gives its place back,
//! when the server stops or the client goes away. actix-web drops a response body only once a
//! write to its connection fails, so an idle stream writes a comment every [`KEEP_ALIVE`]; the
//! dropped body closes the channel, which the thread looks at every round (at least every
//! [`IDLE_WAIT`]). A client that went away frees its place within about two keep-alives.
//!
//! # Places
//! At most `ApiConfig::max_streams` run at once ([`MAX_STREAMS`] by default), and at most
//! `ApiConfig::max_streams_per_client` per client address, so one client cannot hold them all; a
//! stream over either limit is refused with 503 and `Retry-After`. When a token is configured, a
//! client without it is refused before it gets a place.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use futures::StreamExt as _;
use futures::channel::mpsc;
use ipam_core::{Envelope, Topic};
use ipam_log::{EventLog, Position};
use serde::Deserialize;

use crate::error::ApiError;
use crate::state::AppState;

/// The topics the stream carries.
pub const STREAMED: [Topic; 2] = [Topic::Reservations, Topic::DhcpServers];
/// Streams served at once by default; more are refused with 503.
pub const MAX_STREAMS: usize = 64;
/// Streams one client address may hold at once by default.
pub const MAX_STREAMS_PER_CLIENT: usize = 8;
/// What a refused stream is told to wait before trying again.
const RETRY_AFTER_SECS: u32 = 5;
/// How long a stream stays silent before it writes a comment. The server notices a closed
/// connection only when a write to it fails (the first write after the client left draws a reset,
/// the second fails), so this bounds how long a gone client holds its place: about twice this. A
/// three-byte comment a second per stream is cheap; it also keeps proxies from timing out.
pub const KEEP_ALIVE: Duration = Duration::from_secs(1);
/// How long the follower waits when nothing is ready (a record that commits ends the wait at once);
/// also how late a closed channel is seen.
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

/// Reads a cursor over the partitions of `ends` (each partition's end offset now); partitions it
/// does not name start at 0. `start` (or nothing) names none.
///
/// Every offset must be a decimal number no larger than its partition's end: a larger one cannot
/// come from this log (a stream's ids never pass the end), and reading from it would either wait
/// forever or, in a store that keeps offsets as signed integers, wrap around and replay from the
/// beginning. Such a cursor is refused with `cursor_beyond_end`; one that does not parse, names
/// an unknown topic or partition, or names a partition twice with `invalid_cursor`.
pub fn parse_cursor(text: &str, ends: &Cursor) -> Result<Cursor, ApiError> {
    let mut cursor: Cursor = ends.keys().map(|place| (place.clone(), 0)).collect();
    let text = text.trim();
    if text == "start" || text.is_empty() {
        return Ok(cursor);
    }
    let shown = |entry: &str| entry.chars().take(100).collect::<String>();
    let bad = |entry: &str, why: &str| {
        ApiError::bad_request(
            "invalid_cursor",
            format!("`{}` is not a stream position ({why}); expected topic/partition:offset", shown(entry)),
        )
        .with_field("from")
    };
    let mut named = std::collections::BTreeSet::new();
    for entry in text.split(',').map(str::trim).filter(|entry| !entry.is_empty()) {
        let (place, offset) = entry.rsplit_once(':').ok_or_else(|| bad(entry, "no `:offset`"))?;
        let (topic, partition) = place.rsplit_once('/').ok_or_else(|| bad(entry, "no `/partition`"))?;
        if !is_decimal(partition) {
            return Err(bad(entry, "the partition is not a decimal number"));
        }
        if !is_decimal(offset) {
            return Err(bad(entry, "the offset is not a decimal number"));
        }
        if !ends.keys().any(|(streamed, _)| streamed == topic) {
            return Err(bad(entry, "not a streamed topic"));
        }
        let key = partition.parse::<u32>().ok().map(|partition| (topic.to_owned(), partition));
        let Some(end) = key.as_ref().and_then(|key| ends.get(key)) else {
            return Err(bad(entry, "no such partition"));
        };
        let key = key.unwrap_or_default();
        let offset = offset.parse::<u64>().ok().filter(|offset| offset <= end).ok_or_else(|| {
            ApiError::bad_request(
                "cursor_beyond_end",
                format!("`{}` is past the end of that partition (offset {end})", shown(entry)),
            )
            .with_field("from")
        })?;
        if !named.insert(key.clone()) {
            return Err(bad(entry, "the partition is named twice"));
        }
        cursor.insert(key, offset);
    }
    Ok(cursor)
}

/// ASCII digits only: no sign, no space, not empty (`str::parse` would take a `+`).
fn is_decimal(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamQuery {
    from: Option<String>,
}

/// Who holds the stream places: at most `max` in all and `per_client` per client address, so
/// that one client cannot take them all.
#[derive(Debug)]
pub(crate) struct StreamSlots {
    max: usize,
    per_client: usize,
    /// Open streams per client address; the total is their sum.
    open: Mutex<BTreeMap<IpAddr, usize>>,
}

impl StreamSlots {
    pub(crate) fn new(max: usize, per_client: usize) -> StreamSlots {
        StreamSlots { max, per_client, open: Mutex::new(BTreeMap::new()) }
    }

    /// Streams open now.
    pub(crate) fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).values().sum()
    }

    /// A place for a stream of `client`, or the 503 that says why there is none.
    fn take(self: &Arc<Self>, client: IpAddr) -> Result<Slot, ApiError> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let full = |code: &str, message: String| {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message).with_retry_after(RETRY_AFTER_SECS)
        };
        if open.values().sum::<usize>() >= self.max {
            return Err(full("too_many_streams", format!("all {} event streams are taken; retry later", self.max)));
        }
        let mine = open.entry(client).or_insert(0);
        if *mine >= self.per_client {
            let message =
                format!("{client} already has {} event streams open, the most one client may", self.per_client);
            return Err(full("too_many_client_streams", message));
        }
        *mine += 1;
        Ok(Slot { slots: Arc::clone(self), client })
    }
}

/// One place of [`StreamSlots`], given back when dropped.
#[derive(Debug)]
struct Slot {
    slots: Arc<StreamSlots>,
    client: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.client);
            }
        }
    }
}

pub(crate) async fn stream(request: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let query = web::Query::<StreamQuery>::from_query(request.query_string())
        .map_err(|e| ApiError::bad_request("invalid_query", format!("bad query string: {e}")))?;
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
    // Refuse a client over its share before any work; the place is given back if anything fails.
    let client = request.peer_addr().map_or(IpAddr::from([0, 0, 0, 0]), |address| address.ip());
    let slot = state.streams.take(client)?;

    let log = Arc::clone(&state.log);
    let names: Vec<String> = STREAMED.iter().map(|topic| state.topics.name(*topic)).collect();
    let ends = web::block(move || -> Result<_, ipam_log::LogError> {
        let mut ends = Cursor::new();
        for name in names {
            for partition in 0..log.partition_count(&name)? {
                ends.insert((name.clone(), partition), log.end_offset(&name, partition)?);
            }
        }
        Ok(ends)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
    .map_err(|e| ApiError::log(&e))?;
    let cursor = match spec.as_deref().map(str::trim) {
        None | Some("end") => ends,
        Some(text) => parse_cursor(text, &ends)?,
    };

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
    let from: Vec<Position> = cursor
        .iter()
        .map(|((topic, partition), next_offset)| Position {
            topic: topic.clone(),
            partition: *partition,
            next_offset: *next_offset,
        })
        .collect();
    // Made in the loop, so that a log that fails at first is retried like a failing read.
    let mut follower: Option<Box<dyn ipam_log::Follower>> = None;
    let mut last_write = Instant::now();
    // A closed channel means the response body was dropped: the client went away.
    while !halt.load(Ordering::SeqCst) && !sender.is_closed() {
        let records = match follower.as_mut() {
            Some(follower) => follower.next(READ_MAX, IDLE_WAIT),
            None => log.follow(&from).map(|started| {
                follower = Some(started);
                Vec::new()
            }),
        };
        match records {
            Ok(records) => {
                for record in records {
                    cursor.insert((record.topic.clone(), record.partition), record.offset + 1);
                    if let Some(frame) = frame(&cursor, &record.value) {
                        if !send(&mut sender, frame, halt) {
                            return;
                        }
                        last_write = Instant::now();
                    }
                }
            }
            Err(error) => {
                tracing::warn!(error = %error, "A stream cannot read the log.");
                thread::sleep(IDLE_WAIT);
            }
        }
        if last_write.elapsed() >= KEEP_ALIVE {
            if !send(&mut sender, ":\n\n".to_owned(), halt) {
                return;
            }
            last_write = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two topics of two partitions, each partition ending at offset 10.
    fn ends() -> Cursor {
        ["ipam.reservations", "ipam.dhcp-servers"]
            .into_iter()
            .flat_map(|topic| (0..2).map(move |partition| ((topic.to_owned(), partition), 10)))
            .collect()
    }

    #[test]
    fn a_cursor_round_trips_and_unlisted_partitions_start_at_zero() {
        let cursor = parse_cursor("ipam.reservations/1:7, ipam.dhcp-servers/0:3", &ends()).expect("cursor");
        assert_eq!(cursor.len(), 4);
        assert_eq!(cursor[&("ipam.reservations".to_owned(), 0)], 0);
        assert_eq!(format_cursor(&cursor), "ipam.dhcp-servers/0:3,ipam.reservations/1:7");
        assert_eq!(parse_cursor(&format_cursor(&cursor), &ends()).expect("again"), cursor);
        assert!(parse_cursor("start", &ends()).expect("start").values().all(|next| *next == 0));
        assert_eq!(
            parse_cursor("ipam.reservations/0:10", &ends()).expect("the end itself")
                [&("ipam.reservations".to_owned(), 0)],
            10
        );
    }

    #[test]
    fn bad_cursors_are_refused() {
        for text in [
            "ipam.reservations/2:0",
            "ipam.hosts/0:1",
            "ipam.reservations/0",
            "ipam.reservations/x:1",
            "ipam.reservations/0:-1",
            "ipam.reservations/0:+1",
            "ipam.reservations/-1:0",
            "ipam.reservations/4294967296:0",
            "ipam.reservations/0:1e3",
            "ipam.reservations/0: 1",
            "ipam.reservations/0:1,ipam.reservations/0:2",
        ] {
            let error = parse_cursor(text, &ends()).expect_err(text);
            assert_eq!(error.code, "invalid_cursor", "{text}");
        }
    }

    #[test]
    fn an_offset_past_the_end_is_refused_rather_than_wrapped() {
        for text in [
            "ipam.reservations/0:11",
            "ipam.reservations/0:9223372036854775808",
            "ipam.reservations/0:18446744073709551615",
            "ipam.reservations/0:18446744073709551616",
            "ipam.reservations/0:99999999999999999999999999",
        ] {
            let error = parse_cursor(text, &ends()).expect_err(text);
            assert_eq!(error.code, "cursor_beyond_end", "{text}");
        }
    }
}
