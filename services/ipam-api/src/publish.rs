//! `POST /v1/events`: the engine's and host agents' way in. A batch is checked whole before anything
//! is appended, and appended in one `EventLog::append` call, so a client never has to find out which
//! half of a batch landed: a `202` means every event is durable, a `4xx` means none was written.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use futures::StreamExt as _;
use ipam_core::{Envelope, Event, EventId, Topic};
use ipam_log::OutRecord;
use ipam_runtime::Topics;
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::Value;

use crate::decision::{self, Decision, Outcome, parse_wait};
use crate::error::ApiError;
use crate::query::Params;
use crate::state::AppState;

/// The media types a body may be sent as: plain JSON, or CloudEvents' structured and batch modes.
pub const ACCEPTED_CONTENT_TYPES: [&str; 3] =
    ["application/json", "application/cloudevents+json", "application/cloudevents-batch+json"];

/// Whether events of this type are inputs the API takes: engine and host-agent requests. Outputs
/// of the allocator and placement, and placement's clock ticks, are written by IPAM alone.
pub fn is_input_type(type_name: &str) -> bool {
    type_name != "ipam.clock.ticked.v1"
        && matches!(Event::topic_of(type_name), Some(Topic::Networks) | Some(Topic::Hosts))
}

/// Decodes a body already parsed as JSON: one CloudEvent or an array of them. The first bad event
/// refuses the whole batch, naming its index and field. So does an id used twice in the batch: the
/// log treats a repeated id as a retry of the same event, so two different events under one id
/// would lose one of them, and two copies of one event are a client bug worth hearing about.
pub fn decode_batch(body: Value) -> Result<Vec<Envelope>, ApiError> {
    let (items, is_batch) = match body {
        Value::Array(items) => (items, true),
        single => (vec![single], false),
    };
    if items.is_empty() {
        return Err(ApiError::bad_request("empty_batch", "the batch holds no event"));
    }
    let prefix = |index: usize| if is_batch { format!("event {index}: ") } else { String::new() };
    let mut envelopes = Vec::with_capacity(items.len());
    let mut seen: BTreeMap<EventId, usize> = BTreeMap::new();
    for (index, item) in items.into_iter().enumerate() {
        // Refuse outputs before looking at their data: the type is the whole problem.
        if let Some(type_name) = item.get("type").and_then(Value::as_str)
            && Event::topic_of(type_name).is_some()
            && !is_input_type(type_name)
        {
            let message = format!("{}`{type_name}` is written by IPAM itself and cannot be posted", prefix(index));
            return Err(ApiError::bad_request("not_an_input", message).with_field("type").with_index(index));
        }
        let envelope = Envelope::decode_value(item).map_err(|error| {
            let unknown_type = error.field.as_deref() == Some("type")
                && error.event_type.as_deref().is_some_and(|t| Event::topic_of(t).is_none());
            let code = if unknown_type { "unknown_type" } else { error.code.as_str() };
            let mut api = ApiError::bad_request(code, format!("{}{}", prefix(index), error.message)).with_index(index);
            api.field = error.field.filter(|field| !field.is_empty() && field != ".");
            api
        })?;
        if let Some(first) = seen.insert(envelope.id, index) {
            let message =
                format!("events {first} and {index} have the same id {}; each event needs its own", envelope.id);
            return Err(ApiError::bad_request("duplicate_event_id", message).with_field("id").with_index(index));
        }
        envelopes.push(envelope);
    }
    Ok(envelopes)
}

/// The fast path of [`decode_batch`] for a body of good events: each event read straight from its
/// bytes by [`Envelope::decode`], without building a JSON tree of the whole body first. Answers
/// `None` for anything it does not accept (a bad or output event, an id twice, a body that is not
/// an object or an array of objects), which [`decode_batch`] then reads and explains; so the
/// answer is the same either way, only faster for the usual body.
pub fn decode_batch_fast(body: &[u8]) -> Option<Vec<Envelope>> {
    let elements = match body.iter().find(|b| !b.is_ascii_whitespace())? {
        b'[' => array_elements(body)?,
        b'{' => vec![body],
        _ => return None,
    };
    if elements.is_empty() {
        return None;
    }
    let mut seen = HashSet::with_capacity(elements.len());
    let mut envelopes = Vec::with_capacity(elements.len());
    for element in elements {
        let envelope = Envelope::decode(element).ok()?;
        if !is_input_type(envelope.event.type_name()) || !seen.insert(envelope.id) {
            return None;
        }
        envelopes.push(envelope);
    }
    Some(envelopes)
}

/// The elements of a JSON array of objects, each as its own bytes; `None` for anything else.
/// It only finds where each object ends (outside strings, where the braces and brackets opened
/// are closed again); whether an element is good JSON is for the decoder to say.
fn array_elements(body: &[u8]) -> Option<Vec<&[u8]>> {
    let skip = |mut at: usize| {
        while body.get(at).is_some_and(u8::is_ascii_whitespace) {
            at += 1;
        }
        at
    };
    let mut at = skip(0);
    if body.get(at) != Some(&b'[') {
        return None;
    }
    at = skip(at + 1);
    let mut elements = Vec::new();
    if body.get(at) == Some(&b']') {
        return (skip(at + 1) == body.len()).then_some(elements);
    }
    loop {
        if body.get(at) != Some(&b'{') {
            return None;
        }
        let start = at;
        let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
        loop {
            let byte = *body.get(at)?;
            at += 1;
            if in_string {
                match byte {
                    _ if escaped => escaped = false,
                    b'\\' => escaped = true,
                    b'"' => in_string = false,
                    _ => {}
                }
                continue;
            }
            match byte {
                b'"' => in_string = true,
                b'{' | b'[' => depth += 1,
                b'}' | b']' => {
                    depth = depth.checked_sub(1)?;
                    if depth == 0 {
                        break;
                    }
                }
                _ => {}
            }
        }
        elements.push(&body[start..at]);
        at = skip(at);
        match body.get(at)? {
            b',' => at = skip(at + 1),
            b']' => return (skip(at + 1) == body.len()).then_some(elements),
            _ => return None,
        }
    }
}

/// The records of a checked batch: each event on its topic, keyed for its partition, as the
/// canonical envelope bytes.
pub fn records(topics: &Topics, envelopes: &[Envelope]) -> Vec<OutRecord> {
    envelopes
        .iter()
        .map(|envelope| OutRecord {
            topic: topics.name(envelope.event.topic()),
            key: envelope.event.key(),
            value: envelope.to_bytes(),
        })
        .collect()
}

/// The answer to `POST /v1/events`.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct Accepted {
    ids: Vec<String>,
    positions: Vec<Landed>,
    /// With a wait: one outcome per event, in request order.
    #[serde(skip_serializing_if = "Option::is_none")]
    outcomes: Option<Vec<Outcome>>,
    /// With a wait: whether every event is decided (none `pending`).
    #[serde(skip_serializing_if = "Option::is_none")]
    complete: Option<bool>,
    /// With a wait: the position token a read passes as `after` to see these events' decisions.
    #[serde(skip_serializing_if = "Option::is_none")]
    after: Option<String>,
}

/// The wait a write asks for: `?wait=` or `Prefer: wait=N` (RFC 7240, seconds); the query wins.
fn asked_wait(request: &HttpRequest) -> Result<Option<std::time::Duration>, ApiError> {
    let params = Params::parse(request.query_string(), &["wait"])?;
    if let Some(wait) = params.get("wait") {
        return parse_wait(wait).map(Some);
    }
    for value in request.headers().get_all("prefer") {
        let Ok(value) = value.to_str() else { continue };
        for preference in value.split(',') {
            let preference = preference.split(';').next().unwrap_or("").trim();
            if let Some((name, seconds)) = preference.split_once('=')
                && name.trim().eq_ignore_ascii_case("wait")
            {
                return parse_wait(seconds.trim().trim_matches('"')).map(Some);
            }
        }
    }
    Ok(None)
}

/// Where one event of the batch landed.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct Landed {
    topic: String,
    partition: u32,
    offset: u64,
}

fn check_content_type(request: &HttpRequest) -> Result<(), ApiError> {
    let given = request.headers().get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or("");
    let essence = given.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if ACCEPTED_CONTENT_TYPES.contains(&essence.as_str()) {
        return Ok(());
    }
    let shown =
        if given.is_empty() { "none".to_owned() } else { format!("`{}`", given.chars().take(100).collect::<String>()) };
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        format!("the content type is {shown}; send one of {}", ACCEPTED_CONTENT_TYPES.join(", ")),
    ))
}

fn too_large(max: usize) -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", format!("the body is larger than {max} bytes"))
}

/// Reads the body, refusing it as soon as it passes `max` bytes.
async fn read_body(request: &HttpRequest, mut payload: web::Payload, max: usize) -> Result<web::Bytes, ApiError> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > max as u64) {
        return Err(too_large(max));
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::bad_request("unreadable_body", format!("reading the body failed: {e}")))?;
        if body.len() + chunk.len() > max {
            return Err(too_large(max));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

pub(crate) async fn post_events(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let wait = asked_wait(&request)?;
    check_content_type(&request)?;
    let body = read_body(&request, payload, state.config.max_body_bytes).await?;
    let envelopes = match decode_batch_fast(&body) {
        Some(envelopes) => envelopes,
        None => {
            let value: Value = serde_json::from_slice(&body)
                .map_err(|e| ApiError::bad_request("malformed_json", format!("the body is not JSON: {e}")))?;
            decode_batch(value)?
        }
    };
    let records = records(&state.topics, &envelopes);
    let log = Arc::clone(&state.log);
    let appended = web::block(move || log.append(&records))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(|e| {
            tracing::warn!(error = %e, "Could not append posted events.");
            ApiError::log(&e)
        })?;
    state.metrics.appended(envelopes.len() as u64);
    let positions: Vec<Landed> = envelopes
        .iter()
        .zip(appended)
        .map(|(envelope, landed)| Landed {
            topic: state.topics.name(envelope.event.topic()),
            partition: landed.partition,
            offset: landed.offset,
        })
        .collect();
    let ids = envelopes.iter().map(|envelope| envelope.id.to_string()).collect();
    let Some(wait) = wait else {
        return Ok(HttpResponse::Accepted().json(Accepted {
            ids,
            positions,
            outcomes: None,
            complete: None,
            after: None,
        }));
    };
    let landed: Vec<(String, u32, u64)> = positions.iter().map(|p| (p.topic.clone(), p.partition, p.offset)).collect();
    let outcomes = decision::decide(&state, &envelopes, &landed, wait).await?;
    let complete = outcomes.iter().all(|outcome| !matches!(outcome.decision, Decision::Pending));
    let after = decision::token(&decision::marks_after(landed));
    let accepted = Accepted { ids, positions, outcomes: Some(outcomes), complete: Some(complete), after: Some(after) };
    // 200: decided; 202: taken, and some of it still pending.
    Ok(if complete { HttpResponse::Ok() } else { HttpResponse::Accepted() }
        .insert_header(("Preference-Applied", format!("wait={}", wait.as_secs_f64())))
        .json(accepted))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn network_upserted(ipam_enabled: Value) -> Value {
        json!({
            "specversion": "1.0",
            "id": "7f1d1a52-3f5a-4a53-9d0e-0a4f5a4c2b01",
            "source": "ovirt-engine",
            "type": "ipam.network.upserted.v1",
            "time": "2025-01-01T00:00:00Z",
            "data": {"network_id": "7f1d1a52-3f5a-4a53-9d0e-0a4f5a4c2b02", "name": "n", "ipam_enabled": ipam_enabled}
        })
    }

    #[test]
    fn inputs_are_engine_and_host_agent_types_only() {
        assert!(is_input_type("ipam.vnic.started.v1"));
        assert!(is_input_type("ipam.host.heartbeat.v1"));
        assert!(!is_input_type("ipam.clock.ticked.v1"));
        assert!(!is_input_type("ipam.reservation.added.v1"));
        assert!(!is_input_type("ipam.dhcp_server.assigned.v1"));
        assert!(!is_input_type("ipam.nothing.v1"));
    }

    #[test]
    fn a_bad_element_names_its_index_and_field() {
        let error = decode_batch(json!([network_upserted(json!(true)), network_upserted(json!("yes"))]))
            .expect_err("the second event is bad");
        assert_eq!((error.index, error.field.as_deref()), (Some(1), Some("data.ipam_enabled")));
        assert!(error.message.starts_with("event 1: "), "{}", error.message);
    }

    #[test]
    fn unknown_and_output_types_have_their_own_codes() {
        let mut unknown = network_upserted(json!(true));
        unknown["type"] = json!("ipam.nothing.v1");
        assert_eq!(decode_batch(unknown).expect_err("unknown").code, "unknown_type");
        let mut output = network_upserted(json!(true));
        output["type"] = json!("ipam.reservation.added.v1");
        assert_eq!(decode_batch(output).expect_err("output").code, "not_an_input");
        assert_eq!(decode_batch(json!([])).expect_err("empty").code, "empty_batch");
    }

    #[test]
    fn the_fast_path_reads_a_batch_as_the_careful_path_does() {
        let mut second = network_upserted(json!(false));
        second["id"] = json!("7f1d1a52-3f5a-4a53-9d0e-0a4f5a4c2b09");
        second["data"]["name"] = json!("with \\\" a quote, a ] and a {");
        let batch = json!([network_upserted(json!(true)), second]);
        let careful = decode_batch(batch.clone()).expect("a good batch");
        for body in [serde_json::to_vec(&batch), serde_json::to_vec_pretty(&batch)] {
            let body = body.expect("JSON");
            assert_eq!(decode_batch_fast(&body).as_ref(), Some(&careful));
        }
        let single = serde_json::to_vec(&network_upserted(json!(true))).expect("JSON");
        assert_eq!(decode_batch_fast(&single), Some(careful[..1].to_vec()));
    }

    #[test]
    fn the_fast_path_leaves_what_it_does_not_accept_to_the_careful_path() {
        let good = network_upserted(json!(true));
        let mut output = good.clone();
        output["type"] = json!("ipam.reservation.added.v1");
        for body in [
            json!([good.clone(), good.clone()]),
            json!([good.clone(), network_upserted(json!("yes"))]),
            json!([output]),
            json!([]),
            json!([good.clone(), 1]),
            json!("text"),
        ] {
            let bytes = serde_json::to_vec(&body).expect("JSON");
            assert_eq!(decode_batch_fast(&bytes), None, "{body}");
            assert!(decode_batch(body).is_err());
        }
        let good = serde_json::to_vec(&good).expect("JSON");
        let mut unclosed = b"[".to_vec();
        unclosed.extend_from_slice(&good);
        let mut trailing = unclosed.clone();
        trailing.extend_from_slice(b"] x");
        for body in [unclosed, trailing, b"[{\"a\": \"}]".to_vec()] {
            assert_eq!(decode_batch_fast(&body), None, "{}", String::from_utf8_lossy(&body));
        }
    }

    #[test]
    fn a_batch_with_one_id_twice_is_refused_naming_both_indexes() {
        let mut other = network_upserted(json!(false));
        other["data"]["name"] = json!("another");
        let error = decode_batch(json!([network_upserted(json!(true)), network_upserted(json!(true)), other]))
            .expect_err("events 0 and 1 share an id");
        assert_eq!(
            (error.code.as_str(), error.index, error.field.as_deref()),
            ("duplicate_event_id", Some(1), Some("id"))
        );
        assert!(error.message.contains("events 0 and 1"), "{}", error.message);
        let mut distinct = network_upserted(json!(true));
        distinct["id"] = json!("7f1d1a52-3f5a-4a53-9d0e-0a4f5a4c2b09");
        assert_eq!(decode_batch(json!([network_upserted(json!(true)), distinct])).expect("distinct ids").len(), 2);
    }
}
