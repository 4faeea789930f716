//! `GET /openapi.json`: the API described by hand in OpenAPI 3.1. Event bodies are not repeated
//! here: they reference the contract's JSON Schemas by their `$id`
//! (`https://ipam.dev/schemas/<type>.json`, as `ipam_core::event::event_schemas` generates them and
//! `schemas/` commits them), so the contract has one source.

use ipam_core::Event;
use serde_json::{Value, json};

use crate::publish::{ACCEPTED_CONTENT_TYPES, is_input_type};
use crate::stream::STREAMED;

/// The `$id` of an event type's schema.
pub fn schema_ref(type_name: &str) -> String {
    format!("https://ipam.dev/schemas/{type_name}.json")
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
        "A `/v1` endpoint that takes no query parameters got one, or `/v1/stream` got one it does not know or one twice.",
    ),
    (
        400,
        "invalid_cursor",
        "A stream position (`from`, `Last-Event-ID`) does not parse, names a topic that is not streamed or a partition that does not exist, or names a partition twice.",
    ),
    (
        400,
        "cursor_beyond_end",
        "A stream position's offset is past the end of its partition (it cannot come from this log).",
    ),
    (401, "unauthorized", "A bearer token is configured and the request lacks it or has another."),
    (404, "not_found", "No endpoint at the path, or nothing known under the id or address."),
    (405, "method_not_allowed", "The endpoint does not take this method."),
    (413, "body_too_large", "The body is larger than the configured limit (1 MiB by default)."),
    (415, "unsupported_media_type", "The content type is not one of the JSON types listed."),
    (500, "internal", "The server failed to run the request; retry."),
    (503, "log_unavailable", "The event log failed; retry."),
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

/// A `GET` of one thing by id.
fn get_one(summary: &str, operation_id: &str, parameter: Value, schema: &str) -> Value {
    json!({ "get": {
        "summary": summary,
        "operationId": operation_id,
        "parameters": [parameter],
        "responses": {
            "200": ok_json("Found; `position` says which log prefix the answer reflects.", schema),
            "400": error_response(400, "The id or address is malformed, or a query parameter was given.", &["invalid_id", "invalid_ip", "invalid_query"]),
            "401": error_response(401, UNAUTHORIZED, &["unauthorized"]),
            "404": error_response(404, "The read model knows nothing about it (yet: compare `position`).", &["not_found"]),
            "405": error_response(405, "Only GET is allowed.", &["method_not_allowed"]),
        }
    }})
}

/// The whole document.
pub fn document() -> Value {
    let inputs: Vec<Value> =
        Event::TYPES.iter().filter(|t| is_input_type(t)).map(|t| json!({ "$ref": schema_ref(t) })).collect();
    let streamed: Vec<Value> = Event::TYPES
        .iter()
        .filter(|t| Event::topic_of(t).is_some_and(|topic| STREAMED.contains(&topic)))
        .map(|t| json!({ "$ref": schema_ref(t) }))
        .collect();
    let uuid = json!({ "type": "string", "format": "uuid" });
    let ip = json!({ "type": "string", "anyOf": [{ "format": "ipv4" }, { "format": "ipv6" }] });
    let time = json!({ "type": "string", "format": "date-time" });
    let paths = paths(&streamed, &ip);
    let schemas = schemas(inputs, &uuid, &ip, &time);
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
            "requestBody": { "required": true, "content": event_body },
            "responses": {
                "202": ok_json("Appended, in one atomic append.", "Accepted"),
                "400": error_response(400, "Malformed JSON, an empty batch, an id used twice, an unknown or output type, a bad field, or a query parameter.", &["malformed_json", "unreadable_body", "empty_batch", "duplicate_event_id", "not_an_input", "unknown_type", "invalid_request", "invalid_mac", "invalid_cidr", "invalid_ip", "invalid_pool", "invalid_query"]),
                "401": error_response(401, UNAUTHORIZED, &["unauthorized"]),
                "405": error_response(405, "Only POST is allowed.", &["method_not_allowed"]),
                "413": error_response(413, "The body is larger than the configured limit.", &["body_too_large"]),
                "415": error_response(415, "The content type is not JSON.", &["unsupported_media_type"]),
                "503": error_response(503, "The log failed; retry.", &["log_unavailable"])
            }
        }},
        "/v1/networks": { "get": {
            "summary": "List networks",
            "operationId": "listNetworks",
            "responses": {
                "200": ok_json("Every network the read model knows.", "NetworkList"),
                "400": error_response(400, "A query parameter was given; this endpoint takes none.", &["invalid_query"]),
                "401": error_response(401, UNAUTHORIZED, &["unauthorized"]),
                "405": error_response(405, "Only GET is allowed.", &["method_not_allowed"])
            }
        }},
        "/v1/networks/{id}": get_one("Get a network: subnets with used and free counts, reservations, DHCP servers with epochs, recent rejections", "getNetwork", id_parameter("The network id."), "Network"),
        "/v1/vnics/{id}": get_one("Get a vNIC's current reservation and last release", "getVnic", id_parameter("The vNIC id."), "Vnic"),
        "/v1/hosts/{id}": get_one("Get a host: status, networks, last heartbeat, servers", "getHost", id_parameter("The host id."), "Host"),
        "/v1/ips/{ip}/history": get_one(
            "Who held an IP address, oldest first",
            "getIpHistory",
            json!({ "name": "ip", "in": "path", "required": true, "description": "An IPv4 or IPv6 address.", "schema": ip }),
            "IpHistory"
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
                "401": error_response(401, "A bearer token is configured and the request lacks it (no stream place is taken).", &["unauthorized"]),
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
                "401": error_response(401, UNAUTHORIZED, &["unauthorized"]),
                "405": error_response(405, "Only GET is allowed.", &["method_not_allowed"])
            }
        }},
        "/openapi.json": { "get": {
            "summary": "This document",
            "operationId": "openapi",
            "responses": {
                "200": { "description": "OpenAPI 3.1.", "content": { "application/json": { "schema": { "type": "object" } } } },
                "401": error_response(401, UNAUTHORIZED, &["unauthorized"]),
                "405": error_response(405, "Only GET is allowed.", &["method_not_allowed"])
            }
        }}
    })
}

fn schemas(inputs: Vec<Value>, uuid: &Value, ip: &Value, time: &Value) -> Value {
    let position = json!({ "$ref": "#/components/schemas/Position" });
    json!({
        "InputEvent": { "description": "An engine or host-agent request.", "oneOf": inputs },
        "EventBatch": { "oneOf": [
            { "$ref": "#/components/schemas/InputEvent" },
            { "type": "array", "minItems": 1, "items": { "$ref": "#/components/schemas/InputEvent" } }
        ]},
        "Error": {
            "type": "object", "required": ["error"],
            "properties": { "error": {
                "type": "object", "required": ["code", "message", "field"],
                "properties": {
                    "code": { "type": "string", "description": "One of `x-error-codes` at the top of this document.", "examples": ["invalid_mac", "not_an_input", "not_found"] },
                    "message": { "type": "string" },
                    "field": { "type": ["string", "null"], "examples": ["data.mac"] },
                    "index": { "type": "integer", "description": "POST /v1/events: the refused event's index." }
                }
            }}
        },
        "Position": {
            "type": "object",
            "description": "`topic/partition` → the offset of the next record the read model will read.",
            "additionalProperties": { "type": "integer", "minimum": 0 }
        },
        "Accepted": {
            "type": "object", "required": ["ids", "positions"],
            "properties": {
                "ids": { "type": "array", "items": uuid },
                "positions": { "type": "array", "items": {
                    "type": "object", "required": ["topic", "partition", "offset"],
                    "properties": { "topic": { "type": "string" }, "partition": { "type": "integer" }, "offset": { "type": "integer" } }
                }}
            }
        },
        "NetworkList": {
            "type": "object", "required": ["networks", "position"],
            "properties": {
                "networks": { "type": "array", "items": { "type": "object", "properties": {
                    "network_id": uuid, "name": { "type": ["string", "null"] }, "ipam_enabled": { "type": ["boolean", "null"] },
                    "subnets": { "type": "integer" }, "reservations": { "type": "integer" },
                    "servers": { "type": "array", "items": uuid }
                }}},
                "position": position
            }
        },
        "Network": {
            "type": "object", "required": ["network_id", "subnets", "reservations", "servers", "rejections", "position"],
            "properties": {
                "network_id": uuid,
                "name": { "type": ["string", "null"], "description": "Null when only subnets, servers or rejections are known." },
                "ipam_enabled": { "type": ["boolean", "null"] },
                "servers_count": { "type": ["integer", "null"] },
                "subnets": { "type": "array", "items": { "type": "object", "properties": {
                    "subnet_id": uuid, "cidr": { "type": "string" }, "gateway": ip,
                    "dns_servers": { "type": "array", "items": ip }, "ntp_servers": { "type": "array", "items": ip },
                    "allocation_pools": { "type": "array", "items": { "type": "object", "properties": { "start": ip, "end": ip } } },
                    "activated": time,
                    "used": { "type": "integer", "description": "Every reservation, fixed IPs and DHCP ports included." },
                    "size": { "type": "integer", "description": "Assignable addresses of the pools (saturated at 2^53-1)." },
                    "free": { "type": "integer", "description": "size less reservations inside the pools (saturated at 2^53-1)." },
                    "free_saturated": { "type": "boolean" },
                    "utilization": { "type": "number", "description": "used / (used + free)" }
                }}},
                "reservations": { "type": "array", "items": { "type": "object", "properties": {
                    "subnet_id": uuid, "ip": ip, "owner": { "type": "object" }, "mac": { "type": "string" },
                    "since": time, "cause": uuid
                }}},
                "servers": { "type": "array", "items": { "type": "object", "properties": {
                    "host_id": uuid, "interface": { "type": "string" }, "epoch": { "type": "integer" },
                    "reason": { "type": "string" }, "since": time, "status": { "type": ["string", "null"] }
                }}},
                "rejections": { "type": "array", "description": "Newest first, at most 20.", "items": { "type": "object", "properties": {
                    "request_type": { "type": "string" }, "code": { "type": "string" }, "message": { "type": "string" },
                    "cause": uuid, "time": time
                }}},
                "position": position
            }
        },
        "Vnic": {
            "type": "object", "required": ["vnic_id", "vm_id", "reservation", "last_release", "position"],
            "properties": {
                "vnic_id": uuid, "vm_id": uuid,
                "reservation": { "type": ["object", "null"], "properties": {
                    "network_id": uuid, "subnet_id": uuid, "mac": { "type": "string" }, "ip": ip, "since": time, "cause": uuid } },
                "last_release": { "type": ["object", "null"], "properties": {
                    "network_id": uuid, "subnet_id": uuid, "ip": ip, "at": time, "reason": { "type": "string" }, "cause": uuid } },
                "position": position
            }
        },
        "Host": {
            "type": "object", "required": ["host_id", "position"],
            "properties": {
                "host_id": uuid, "name": { "type": ["string", "null"] },
                "status": { "type": ["string", "null"], "enum": ["up", "down", "maintenance", null] },
                "networks": { "type": "array", "items": { "type": "object" } },
                "last_heartbeat": { "type": ["string", "null"], "format": "date-time" },
                "serving": { "type": "array", "description": "From the last heartbeat.", "items": { "type": "object" } },
                "assigned": { "type": "array", "description": "What placement assigned.", "items": { "type": "object" } },
                "server_statuses": { "type": "array", "items": { "type": "object" } },
                "position": position
            }
        },
        "IpHistory": {
            "type": "object", "required": ["ip", "history", "position"],
            "properties": {
                "ip": ip,
                "history": { "type": "array", "description": "Oldest first, at most 64.", "items": { "type": "object", "properties": {
                    "owner": { "type": "object" }, "mac": { "type": "string" }, "network_id": uuid, "subnet_id": uuid,
                    "from": time, "to": { "type": ["string", "null"], "format": "date-time" },
                    "cause": uuid, "reason": { "type": ["string", "null"] }, "released_by": { "type": ["string", "null"] }
                }}},
                "position": position
            }
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
                    "position": position } }
            }
        }
    })
}
