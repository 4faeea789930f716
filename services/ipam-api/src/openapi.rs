//! `GET /openapi.json`: the API in OpenAPI 3.1. The schemas of the answers are generated (schemars)
//! from the types the handlers serialize, so the document says what the server sends; the paths,
//! parameters and error codes are written here, beside the table of codes. Event bodies are the
//! contract's own JSON Schemas (`ipam_core::event::event_schemas`, the ones `schemas/` commits),
//! embedded under their type names with their `$id`, so every ref resolves inside the document,
//! offline.

use ipam_core::Event;
use schemars::generate::SchemaSettings;
use serde_json::{Value, json};

use crate::error::Body as ErrorBody;
use crate::model;
use crate::publish::{ACCEPTED_CONTENT_TYPES, Accepted, is_input_type};
use crate::stream::STREAMED;

/// The ref of an event type's schema inside this document (under its type name; the schema
/// keeps its `$id`, so it is the same one `schemas/` commits).
pub fn local_ref(type_name: &str) -> String {
    format!("#/components/schemas/{type_name}")
}

/// Every error code the API answers with: (status, code, when). The document lists them once in
/// `x-error-codes` and names each response's codes; a test sends a corpus of bad requests to a
/// running server and checks each answer is one of these.
pub const ERROR_CODES: &[(u16, &str, &str)] = &[
    (400, "malformed_json", "The body is not JSON (syntax, encoding, nesting deeper than 128)."),
    (400, "unreadable_body", "The body could not be read from the connection."),
    (400, "empty_batch", "The body is an empty array."),
    (400, "duplicate_event_id", "Two events of the batch have the same `id`; the message names both indexes."),
    (400, "not_an_input", "The event's type is one IPAM writes itself (a reservation, a placement, a tick)."),
    (400, "unknown_type", "The event's type is not in the contract."),
    (400, "invalid_request", "The envelope or a data field is missing, has the wrong type or an impossible value."),
    (400, "invalid_mac", "`data.mac` is malformed, all-zero, broadcast or multicast."),
    (400, "invalid_cidr", "`data.cidr` is malformed or has host bits set."),
    (
        400,
        "invalid_ip",
        "An address field (gateway, DNS or NTP server, requested IP, or the `{ip}` of a path) is not an IP address.",
    ),
    (400, "invalid_pool", "`data.allocation_pools` is not a list of `{start, end}` addresses."),
    (400, "invalid_id", "The `{id}` of the path is not a UUID."),
    (
        400,
        "invalid_query",
        "An endpoint got a query parameter it does not take, or one twice, or `position` other than true/false, or `wait` without `after` on a read.",
    ),
    (
        400,
        "invalid_cursor",
        "A list's `cursor` is not the `next` of one of its pages; or a stream position (`from`, `Last-Event-ID`) does not parse, names a topic that is not streamed or a partition that does not exist, or names a partition twice.",
    ),
    (400, "invalid_limit", "`limit` is not a whole number from 1 to 10000."),
    (
        400,
        "invalid_filter",
        "A filter (`network`, `subnet`, `host`, `vm`: UUIDs; `mac`: a unicast MAC; `ip`: an address; `at`: an RFC 3339 instant) does not parse.",
    ),
    (
        400,
        "invalid_wait",
        "`wait` (or `Prefer: wait=`) is not seconds or a duration (`250ms`, `5s`, `1m`) of at most 60 s.",
    ),
    (
        400,
        "invalid_after",
        "`after` is not a position token (`topic/partition/offset`, joined by commas) of this API's topics.",
    ),
    (
        400,
        "cursor_beyond_end",
        "A stream position's offset is past the end of its partition (it cannot come from this log).",
    ),
    (401, "unauthorized", "A bearer token is configured and the request lacks it or has another."),
    (401, "token_expired", "The bearer token is configured with an `expires` instant, and it has passed."),
    (403, "forbidden", "The bearer token's role does not allow the request: publishing events needs a `write` token."),
    (404, "not_found", "No endpoint at the path, or nothing known under the id or address."),
    (405, "method_not_allowed", "The endpoint does not take this method."),
    (413, "body_too_large", "The body is larger than the configured limit (1 MiB by default)."),
    (415, "unsupported_media_type", "The content type is not one of the JSON types listed."),
    (500, "internal", "The server failed to run the request; retry."),
    (503, "log_unavailable", "The event log failed; retry."),
    (
        503,
        "position_not_reached",
        "A read's `after` position was not decided and read within its `wait` (10 s by default); `Retry-After` says when to try again.",
    ),
    (503, "too_many_streams", "Every event-stream place is taken; `Retry-After` says when to try again."),
    (
        503,
        "too_many_client_streams",
        "This client address holds as many event streams as one may; `Retry-After` says when to try again.",
    ),
];

/// An error response carrying `codes`, each of which must be in [`ERROR_CODES`] with this status.
fn error_response(status: u16, description: &str, codes: &[&str]) -> Value {
    for code in codes {
        assert!(
            ERROR_CODES.iter().any(|(listed, known, _)| *listed == status && known == code),
            "{status} {code} is not in ERROR_CODES"
        );
    }
    json!({
        "description": description,
        "x-error-codes": codes,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
    })
}

const UNAUTHORIZED: &str = "A bearer token is configured and the request lacks it.";

fn ok_json(description: &str, schema: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } }
    })
}

fn id_parameter(description: &str) -> Value {
    json!({ "name": "id", "in": "path", "required": true, "description": description,
            "schema": { "type": "string", "format": "uuid" } })
}

/// The query parameters every read takes.
fn read_parameters() -> Vec<Value> {
    vec![
        json!({ "name": "position", "in": "query", "required": false,
                "description": "`true` adds `position`: which prefix of the log the answer reflects.",
                "schema": { "type": "boolean", "default": false } }),
        json!({ "name": "after", "in": "query", "required": false,
                "description": "A position token (`topic/partition/offset`, joined by commas; the `after` of a write that waited, or built from a write's `positions` as `topic/partition/offset+1`): the answer waits until every event of the input topics before it is decided and the read model shows the decisions, and every record of the other topics before it is read. 503 `position_not_reached` when not within `wait`.",
                "schema": { "type": "string" }, "example": "ipam.networks/3/42" }),
        json!({ "name": "wait", "in": "query", "required": false,
                "description": "With `after`: how long to wait (seconds, or `250ms`, `5s`, `1m`; at most 60 s; 10 s by default).",
                "schema": { "type": "string" } }),
    ]
}

/// The page parameters of a list.
fn page_parameters() -> Vec<Value> {
    vec![
        json!({ "name": "limit", "in": "query", "required": false, "description": "Items per page, 1 to 10000.",
                "schema": { "type": "integer", "minimum": 1, "maximum": 10000, "default": 100 } }),
        json!({ "name": "cursor", "in": "query", "required": false,
                "description": "The `next` of the previous page; absent for the first page.", "schema": { "type": "string" } }),
    ]
}

fn read_errors(status_400: &str, codes_400: &[&str]) -> Value {
    let mut codes = vec!["invalid_query", "invalid_after", "invalid_wait"];
    codes.extend_from_slice(codes_400);
    json!({
        "400": error_response(400, status_400, &codes),
        "401": error_response(401, UNAUTHORIZED, &["unauthorized", "token_expired"]),
        "405": error_response(405, "Only GET is allowed.", &["method_not_allowed"]),
        "503": {
            "description": "`after` was not reached within `wait`; or the log failed.",
            "x-error-codes": ["position_not_reached", "log_unavailable"],
            "headers": { "Retry-After": { "description": "Seconds to wait before trying again.", "schema": { "type": "integer" } } },
            "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
        }
    })
}

/// A `GET` of one thing by id.
fn get_one(summary: &str, operation_id: &str, mut parameters: Vec<Value>, schema: &str, codes_400: &[&str]) -> Value {
    parameters.extend(read_parameters());
    let mut responses = read_errors("The id, address or a query parameter is malformed or unknown.", codes_400);
    responses["200"] = ok_json("Found.", schema);
    responses["404"] =
        error_response(404, "The read model knows nothing about it (yet: pass `after`).", &["not_found"]);
    json!({ "get": { "summary": summary, "operationId": operation_id, "parameters": parameters, "responses": responses } })
}

/// A `GET` of a list, a page at a time.
fn get_page(summary: &str, operation_id: &str, mut parameters: Vec<Value>, schema: &str, codes_400: &[&str]) -> Value {
    parameters.extend(page_parameters());
    parameters.extend(read_parameters());
    let mut codes = vec!["invalid_limit", "invalid_cursor"];
    codes.extend_from_slice(codes_400);
    let mut responses = read_errors("A bad `limit`, `cursor`, filter or other query parameter.", &codes);
    responses["200"] =
        ok_json("One page, ordered by key; `next` is the cursor of the next page, null on the last.", schema);
    json!({ "get": { "summary": summary, "operationId": operation_id, "parameters": parameters, "responses": responses } })
}

fn filter(name: &str, description: &str, schema: Value) -> Value {
    json!({ "name": name, "in": "query", "required": false, "description": description, "schema": schema })
}

fn uuid_schema() -> Value {
    json!({ "type": "string", "format": "uuid" })
}

fn at_parameter() -> Value {
    json!({ "name": "at", "in": "query", "required": false,
            "description": "An RFC 3339 instant: only the holdings at it (`from <= at < to`).",
            "schema": { "type": "string", "format": "date-time" } })
}

/// The whole document.
pub fn document() -> Value {
    let inputs: Vec<Value> =
        Event::TYPES.iter().filter(|t| is_input_type(t)).map(|t| json!({ "$ref": local_ref(t) })).collect();
    let streamed: Vec<Value> = Event::TYPES
        .iter()
        .filter(|t| Event::topic_of(t).is_some_and(|topic| STREAMED.contains(&topic)))
        .map(|t| json!({ "$ref": local_ref(t) }))
        .collect();
    let ip = json!({ "type": "string", "anyOf": [{ "format": "ipv4" }, { "format": "ipv6" }] });
    let paths = paths(&streamed, &ip);
    let schemas = schemas(inputs);
    json!({
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {
            "title": "IPAM API",
            "version": "1",
            "description": "Publishes engine and host-agent events to the IPAM event log, and reads what IPAM decided: networks with their subnets, reservations and DHCP servers, vNICs, hosts, and the history of every IP address. Reads reflect a read model that follows the log; every answer says which log position it reflects. Every error is `{\"error\": {\"code\", \"message\", \"field\"}}`."
        },
        "security": [{ "bearerAuth": [] }],
        "x-error-codes": ERROR_CODES
            .iter()
            .map(|(status, code, when)| json!({ "status": status, "code": code, "description": when }))
            .collect::<Vec<_>>(),
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearerAuth": { "type": "http", "scheme": "bearer",
                                "description": "Required only when the API is configured with a token." }
            },
            "schemas": schemas
        }
    })
}

fn paths(streamed: &[Value], ip: &Value) -> Value {
    let event_body: serde_json::Map<String, Value> = ACCEPTED_CONTENT_TYPES
        .iter()
        .map(|t| ((*t).to_owned(), json!({ "schema": { "$ref": "#/components/schemas/EventBatch" } })))
        .collect();
    json!({
        "/v1/events": { "post": {
            "summary": "Publish one CloudEvent or a batch",
            "description": "Each event is checked against the contract; the first bad one refuses the whole batch (its `index` and `field` are named) and nothing is appended. Only engine and host-agent request types are accepted; IPAM's own outputs are refused with `not_an_input`. On 202 every event is durable in the log.",
            "operationId": "publishEvents",
            "parameters": [
                { "name": "wait", "in": "query", "required": false,
                  "description": "Answer once every event is decided, waiting at most this long (seconds, or `250ms`, `5s`, `1m`; at most 60 s): `outcomes` holds one outcome per event in request order, the undecided ones `pending`. Without it (and without `Prefer: wait`) the answer has only `ids` and `positions`.",
                  "schema": { "type": "string" }, "example": "5s" },
                { "name": "Prefer", "in": "header", "required": false,
                  "description": "`wait=N` (RFC 7240, seconds): as the `wait` parameter, which wins when both are given. Answered with `Preference-Applied`.",
                  "schema": { "type": "string" }, "example": "wait=5" }
            ],
            "requestBody": { "required": true, "content": event_body },
            "responses": {
                "200": ok_json("Appended and, with a wait, every event decided: `complete` is true, no outcome is `pending`.", "Accepted"),
                "202": ok_json("Appended, in one atomic append; with a wait, some events still `pending` (`complete` false).", "Accepted"),
                "400": error_response(400, "Malformed JSON, an empty batch, an id used twice, an unknown or output type, a bad field, a bad wait, or an unknown query parameter.", &["malformed_json", "unreadable_body", "empty_batch", "duplicate_event_id", "not_an_input", "unknown_type", "invalid_request", "invalid_mac", "invalid_cidr", "invalid_ip", "invalid_pool", "invalid_query", "invalid_wait"]),
                "401": error_response(401, UNAUTHORIZED, &["unauthorized", "token_expired"]),
                "403": error_response(403, "The token is a `read` token.", &["forbidden"]),
                "405": error_response(405, "Only POST is allowed.", &["method_not_allowed"]),
                "413": error_response(413, "The body is larger than the configured limit.", &["body_too_large"]),
                "415": error_response(415, "The content type is not JSON.", &["unsupported_media_type"]),
                "503": error_response(503, "The log failed; retry.", &["log_unavailable"])
            }
        }},
        "/v1/networks": get_page("List networks (never one known only from a rejection), with host names beside server ids", "listNetworks", vec![], "NetworkList", &[]),
        "/v1/networks/{id}": get_one(
            "Get a network: subnets with used and free counts, its first reservations (`limit`, 1000 by default; `reservations_next` pages on), DHCP servers with epochs and host names, recent rejections",
            "getNetwork",
            vec![id_parameter("The network id."), json!({ "name": "limit", "in": "query", "required": false, "description": "Reservations shown (1000 by default).", "schema": { "type": "integer", "minimum": 1, "maximum": 10000 } })],
            "NetworkView",
            &["invalid_id", "invalid_limit"]
        ),
        "/v1/networks/{id}/reservations": get_page("A network's reservations, by subnet and address", "listReservations", vec![id_parameter("The network id.")], "ReservationPage", &["invalid_id"]),
        "/v1/vnics": get_page(
            "List vNICs, filtered",
            "listVnics",
            vec![
                filter("network", "Holding an address in this network.", uuid_schema()),
                filter("subnet", "Holding an address in this subnet.", uuid_schema()),
                filter("host", "Holding an address in a network this host serves.", uuid_schema()),
                filter("vm", "Of this VM.", uuid_schema()),
                filter("mac", "Holding an address with this MAC.", json!({ "type": "string" })),
                filter("ip", "Holding this address.", ip.clone()),
            ],
            "VnicList",
            &["invalid_filter"]
        ),
        "/v1/vnics/{id}": get_one("Get a vNIC's current reservation, its state (reserved, served, leased) with each step's time, and its last release. A dual-stack vNIC holds an IPv4 and an IPv6 address: `addresses` lists every address with its own state; `reservation` and `progress` are the first (IPv4), `state` the least advanced", "getVnic", vec![id_parameter("The vNIC id.")], "VnicView", &["invalid_id"]),
        "/v1/hosts": get_page("List hosts", "listHosts", vec![], "HostList", &[]),
        "/v1/hosts/{id}": get_one("Get a host: status, networks, last heartbeat, servers", "getHost", vec![id_parameter("The host id.")], "HostView", &["invalid_id"]),
        "/v1/ips/{ip}/history": get_one(
            "Who held an IP address, oldest first; with `at`, who held it at that instant",
            "getIpHistory",
            vec![json!({ "name": "ip", "in": "path", "required": true, "description": "An IPv4 or IPv6 address.", "schema": ip }), at_parameter()],
            "History",
            &["invalid_ip", "invalid_filter"]
        ),
        "/v1/vnics/{id}/history": get_one(
            "Every address a vNIC held, oldest first; with `at`, what it held then",
            "getVnicHistory",
            vec![id_parameter("The vNIC id."), at_parameter()],
            "History",
            &["invalid_id", "invalid_filter"]
        ),
        "/v1/macs/{mac}/history": get_one(
            "Every address a MAC held, oldest first; with `at`, what it held then",
            "getMacHistory",
            vec![json!({ "name": "mac", "in": "path", "required": true, "description": "A unicast MAC address.", "schema": { "type": "string" } }), at_parameter()],
            "History",
            &["invalid_mac", "invalid_filter"]
        ),
        "/v1/stream": { "get": {
            "summary": "IPAM's decisions as Server-Sent Events",
            "description": "Events of the reservations and dhcp-servers topics. Each SSE `id` is the stream cursor after the event: `topic/partition:offset` entries (the next offset of each partition; unlisted partitions are at 0) joined by commas. Pass it back as `from` or `Last-Event-ID` to resume right after it. The `data` of each event is the CloudEvent; its `event` is the type.",
            "operationId": "streamEvents",
            "parameters": [
                { "name": "from", "in": "query", "required": false,
                  "description": "`start`, `end` (the default) or a cursor.",
                  "schema": { "type": "string" }, "example": "ipam.reservations/0:12,ipam.dhcp-servers/3:4" },
                { "name": "Last-Event-ID", "in": "header", "required": false,
                  "description": "A cursor; wins over `from`.", "schema": { "type": "string" } }
            ],
            "responses": {
                "200": { "description": "An endless event stream.",
                         "content": { "text/event-stream": { "schema": { "type": "string" },
                                      "x-event-schema": { "oneOf": streamed } } } },
                "400": error_response(400, "The cursor is malformed, names an unknown partition or an offset past its end, or the query has an unknown or repeated parameter.", &["invalid_cursor", "cursor_beyond_end", "invalid_query"]),
                "401": error_response(401, "A bearer token is configured and the request lacks it (no stream place is taken).", &["unauthorized", "token_expired"]),
                "405": error_response(405, "Only GET is allowed.", &["method_not_allowed"]),
                "503": {
                    "description": "Every stream place is taken, or this client holds as many as one may (both with `Retry-After`), or the log failed.",
                    "x-error-codes": ["too_many_streams", "too_many_client_streams", "log_unavailable"],
                    "headers": { "Retry-After": { "description": "Seconds to wait before trying again.", "schema": { "type": "integer" } } },
                    "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
                }
            }
        }},
        "/health": { "get": {
            "summary": "Whether every part of the process works: the components on its health board, the log, the read model",
            "description": "Never requires a token, and holds no secret. 200 when every component of the process reports `ok` (the drivers, the clock, host agents, and the API's own `api-http` and `api-read-model`), the log answers, and the read model is not stuck behind the log (behind its end without moving for longer than the configured limit, 30 s by default, as seen between calls); 503 otherwise, with the same body, whose `failing` names each part that is not ok with its state and why. `api-log` in `failing` means `/health` itself could not read the log's end offsets.",
            "operationId": "health",
            "security": [],
            "responses": {
                "200": ok_json("Every part is ok.", "Health"),
                "503": ok_json("A part is starting, degraded or failed; `failing` names it.", "Health"),
                "405": error_response(405, "Only GET is allowed.", &["method_not_allowed"])
            }
        }},
        "/metrics": { "get": {
            "summary": "Prometheus metrics",
            "operationId": "metrics",
            "responses": {
                "200": { "description": "Text exposition format 0.0.4: ipam_events_processed_total, ipam_events_appended_total, ipam_consumer_lag{group,topic}, ipam_read_model_lag{topic}, ipam_subnet_utilization{network,subnet}, ipam_reservations{network}, ipam_request_duration_seconds{method,route,status}.",
                         "content": { "text/plain": { "schema": { "type": "string" } } } },
                "401": error_response(401, UNAUTHORIZED, &["unauthorized", "token_expired"]),
                "405": error_response(405, "Only GET is allowed.", &["method_not_allowed"])
            }
        }},
        "/openapi.json": { "get": {
            "summary": "This document",
            "operationId": "openapi",
            "responses": {
                "200": { "description": "OpenAPI 3.1.", "content": { "application/json": { "schema": { "type": "object" } } } },
                "401": error_response(401, UNAUTHORIZED, &["unauthorized", "token_expired"]),
                "405": error_response(405, "Only GET is allowed.", &["method_not_allowed"])
            }
        }}
    })
}

/// Changes schemars' `format: ip` (not a JSON Schema format) into "IPv4 or IPv6", as the
/// contract's own schemas say it.
fn ip_formats(schema: &mut Value) {
    match schema {
        Value::Object(object) => {
            if object.get("format").and_then(Value::as_str) == Some("ip") {
                object.remove("format");
                object.insert("anyOf".to_owned(), json!([{ "format": "ipv4" }, { "format": "ipv6" }]));
            }
            object.values_mut().for_each(ip_formats);
        }
        Value::Array(items) => items.iter_mut().for_each(ip_formats),
        _ => {}
    }
}

/// The fields the server leaves out of an answer at times (`skip_serializing_if`), by schema; every
/// other field is always sent (an `Option` as null), so it is `required`.
const SOMETIMES: &[(&str, &[&str])] = &[
    ("Accepted", &["outcomes", "complete", "after"]),
    ("History", &["ip", "vnic_id", "mac"]),
    ("ErrorDetail", &["index"]),
];

/// Marks every property of every object in `schema` required but those in `sometimes`: schemars
/// leaves `Option` fields out of `required`, yet serde sends them (as null).
fn require_present(schema: &mut Value, sometimes: &[&str]) {
    match schema {
        Value::Object(object) => {
            if let Some(Value::Object(properties)) = object.get("properties") {
                let required: Vec<Value> = properties
                    .keys()
                    .filter(|key| !sometimes.contains(&key.as_str()))
                    .map(|key| Value::String(key.clone()))
                    .collect();
                object.insert("required".to_owned(), Value::Array(required));
            }
            object.values_mut().for_each(|value| require_present(value, sometimes));
        }
        Value::Array(items) => items.iter_mut().for_each(|value| require_present(value, sometimes)),
        _ => {}
    }
}

/// The answers that `position=true` adds the read model's position to.
pub const READ_ANSWERS: [&str; 8] =
    ["NetworkList", "NetworkView", "ReservationPage", "VnicList", "VnicView", "HostList", "HostView", "History"];

/// The schemas of the answers, generated from the very types the handlers serialize, so the
/// document cannot drift from them. Refs point within the document (`#/components/schemas/...`).
pub fn answer_schemas() -> serde_json::Map<String, Value> {
    let mut settings = SchemaSettings::draft2020_12();
    settings.definitions_path = "/components/schemas".into();
    let mut generator = settings.into_generator();
    generator.subschema_for::<Accepted>();
    generator.subschema_for::<ErrorBody<'static>>();
    generator.subschema_for::<model::NetworkList>();
    generator.subschema_for::<model::NetworkView>();
    generator.subschema_for::<model::ReservationPage>();
    generator.subschema_for::<model::VnicList>();
    generator.subschema_for::<model::VnicView>();
    generator.subschema_for::<model::HostList>();
    generator.subschema_for::<model::HostView>();
    generator.subschema_for::<model::History>();
    let mut schemas = generator.take_definitions(true);
    for (name, schema) in schemas.iter_mut() {
        ip_formats(schema);
        let sometimes = SOMETIMES.iter().find(|(n, _)| n == name).map_or(&[][..], |(_, fields)| *fields);
        require_present(schema, sometimes);
    }
    for name in READ_ANSWERS {
        if let Some(properties) = schemas.get_mut(name).and_then(|schema| schema.get_mut("properties")) {
            properties["position"] = json!({
                "$ref": "#/components/schemas/Position",
                "description": "Only with `position=true`: which prefix of the log the answer reflects."
            });
        }
    }
    schemas
}

fn schemas(inputs: Vec<Value>) -> Value {
    let mut schemas = answer_schemas();
    for (type_name, mut schema) in ipam_core::event::event_schemas() {
        if let Some(object) = schema.as_object_mut() {
            object.remove("$schema");
        }
        schemas.insert(type_name.to_owned(), schema);
    }
    let mut written = json!({
        "InputEvent": { "description": "An engine or host-agent request.", "oneOf": inputs },
        "EventBatch": { "oneOf": [
            { "$ref": "#/components/schemas/InputEvent" },
            { "type": "array", "minItems": 1, "items": { "$ref": "#/components/schemas/InputEvent" } }
        ]},
        "Position": {
            "type": "object",
            "description": "`topic/partition` → the offset of the next record the read model will read.",
            "additionalProperties": { "type": "integer", "minimum": 0 }
        },
        "HealthPart": {
            "type": "object", "required": ["component", "state", "detail"],
            "properties": {
                "component": { "type": "string", "examples": ["allocator", "placement", "api-http", "api-read-model", "api-log"] },
                "state": { "enum": ["starting", "ok", "degraded", "failed"] },
                "detail": { "type": ["string", "null"], "description": "Why it is not ok: an error text." },
                "for_secs": { "type": "integer", "description": "How long it has been in this state; absent for parts /health found itself." }
            }
        },
        "Health": {
            "type": "object", "required": ["status", "failing", "components", "lag", "read_model"],
            "properties": {
                "status": { "enum": ["ok", "unhealthy"] },
                "failing": { "type": "array", "items": { "$ref": "#/components/schemas/HealthPart" }, "description": "The parts that are not ok; empty when `status` is ok." },
                "components": { "type": "array", "items": { "$ref": "#/components/schemas/HealthPart" }, "description": "Every part, by name." },
                "lag": { "type": ["object", "null"], "description": "Null when the log could not be read.", "additionalProperties": { "type": "object", "properties": {
                    "group": { "type": "string" }, "topic": { "type": "string" }, "records": { "type": "integer" } } } },
                "read_model": { "type": "object", "properties": {
                    "caught_up": { "type": "boolean", "description": "Has read what the log held when the API started." },
                    "behind": { "type": ["integer", "null"], "description": "Records of the log it has not read yet." },
                    "stalled_secs": { "type": ["integer", "null"], "description": "How long it has been behind without moving." },
                    "position": { "$ref": "#/components/schemas/Position" } } }
            }
        }
    });
    if let Some(written) = written.as_object_mut() {
        schemas.append(written);
    }
    Value::Object(schemas)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
        match value {
            Value::Object(object) => {
                if let Some(Value::String(target)) = object.get("$ref") {
                    out.push(target);
                }
                object.values().for_each(|v| refs(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_ref_of_the_document_resolves_inside_it() {
        let document = document();
        let mut found = Vec::new();
        refs(&document, &mut found);
        assert!(found.len() > 50, "{}", found.len());
        for target in found {
            // Refs inside an embedded event schema are relative to that schema (its `$id`).
            if target.starts_with("#/$defs/") {
                continue;
            }
            let pointer = target.strip_prefix('#').unwrap_or_else(|| panic!("{target} is not local"));
            assert!(document.pointer(pointer).is_some(), "{target} does not resolve");
        }
    }

    #[test]
    fn every_read_answer_is_a_generated_schema_with_an_optional_position() {
        let schemas = answer_schemas();
        for name in READ_ANSWERS {
            let schema = &schemas[name];
            assert!(schema["properties"]["position"].is_object(), "{name}");
            let required = schema["required"].as_array().expect("required");
            assert!(!required.contains(&json!("position")), "{name}");
        }
        let mut required: Vec<&str> =
            schemas["VnicView"]["required"].as_array().expect("required").iter().filter_map(Value::as_str).collect();
        required.sort_unstable();
        assert_eq!(required, ["addresses", "last_release", "progress", "reservation", "state", "vm_id", "vnic_id"]);
        assert_eq!(schemas["History"]["required"], json!(["at", "history"]));
    }
}
