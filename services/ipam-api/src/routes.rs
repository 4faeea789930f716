//! The read endpoints, health, metrics and the OpenAPI document. Every read answers from the read
//! model under one read lock, so the body and its `position` always agree.

use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError as _, web};
use ipam_core::{HostId, Mac, NetworkId, Timestamp, Topic, VnicId};
use ipam_runtime::ComponentState;
use serde::Serialize;
use serde_json::{Value, json};

use crate::decision;
use crate::error::ApiError;
use crate::follower;
use crate::metrics::{self, Gauges};
use crate::model::{History, HostList, NetworkList, Positions, ReservationPage, VnicFilter, VnicList};
use crate::model::{parse_reservation_cursor, position_key, reservation_cursor};
use crate::openapi;
use crate::query::{PAGE_PARAMETERS, Params, READ_PARAMETERS};
use crate::state::AppState;

/// Reservations `GET /v1/networks/{id}` shows without a `limit`; the rest are a page away.
pub const NETWORK_RESERVATIONS_SHOWN: usize = 1000;

/// The name `/health` gives the log when its own look at the log fails.
pub(crate) const LOG_PROBE: &str = "api-log";

/// A view, with the read model's position added when the request asked (`position=true`).
fn answer(view: impl Serialize, positions: &Positions, params: &Params) -> Result<HttpResponse, ApiError> {
    let mut value = serde_json::to_value(view).unwrap_or(Value::Null);
    if params.position()?
        && let Value::Object(object) = &mut value
    {
        object.insert("position".to_owned(), json!(positions));
    }
    Ok(HttpResponse::Ok().json(value))
}

fn parse_id<T: FromStr>(text: &str, what: &str) -> Result<T, ApiError> {
    text.parse().map_err(|_| {
        let shown: String = text.chars().take(64).collect();
        ApiError::bad_request("invalid_id", format!("`{shown}` is not a {what} id (a UUID)")).with_field("id")
    })
}

/// Reads a request's parameters (the ones every read takes and `extra`), and waits for `after`
/// when it is given: a read after a write sees the write's decisions.
async fn read_params(request: &HttpRequest, state: &web::Data<AppState>, extra: &[&str]) -> Result<Params, ApiError> {
    let allowed: Vec<&str> = READ_PARAMETERS.iter().chain(extra).copied().collect();
    let params = Params::parse(request.query_string(), &allowed)?;
    params.position()?;
    let wait = params.get("wait").map(decision::parse_wait).transpose()?;
    match params.get("after") {
        Some(token) => {
            let marks = decision::parse_token(state, token)?;
            if !decision::reach(state, &marks, wait.unwrap_or(decision::DEFAULT_AFTER_WAIT)).await? {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "position_not_reached",
                    "the read model has not reached the `after` position within the wait; retry",
                )
                .with_retry_after(1));
            }
        }
        None if wait.is_some() => {
            return Err(ApiError::bad_request("invalid_query", "`wait` goes with `after`").with_field("wait"));
        }
        None => {}
    }
    Ok(params)
}

pub(crate) async fn networks(request: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let params = read_params(&request, &state, &PAGE_PARAMETERS).await?;
    let (limit, after) = (params.limit()?, params.cursor(|c| c.parse::<NetworkId>().ok())?);
    let model = state.model();
    let (items, next) = model.networks_page(after, limit);
    answer(NetworkList { networks: items, next: next.map(|id| id.to_string()) }, model.positions(), &params)
}

pub(crate) async fn network(
    request: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let network_id: NetworkId = parse_id(&id, "network")?;
    let params = read_params(&request, &state, &["limit"]).await?;
    let limit = if params.get("limit").is_some() { params.limit()? } else { NETWORK_RESERVATIONS_SHOWN };
    let model = state.model();
    let view =
        model.network_with(network_id, limit).ok_or_else(|| ApiError::not_found(format!("no network {network_id}")))?;
    answer(view, model.positions(), &params)
}

pub(crate) async fn reservations(
    request: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let network_id: NetworkId = parse_id(&id, "network")?;
    let params = read_params(&request, &state, &PAGE_PARAMETERS).await?;
    let (limit, after) = (params.limit()?, params.cursor(parse_reservation_cursor)?);
    let model = state.model();
    let (items, next) = model
        .reservations_page(network_id, after, limit)
        .ok_or_else(|| ApiError::not_found(format!("no network {network_id}")))?;
    let next = next.map(|(subnet_id, ip)| reservation_cursor(subnet_id, ip));
    answer(ReservationPage { network_id, reservations: items, next }, model.positions(), &params)
}

pub(crate) async fn hosts(request: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let params = read_params(&request, &state, &PAGE_PARAMETERS).await?;
    let (limit, after) = (params.limit()?, params.cursor(|c| c.parse::<HostId>().ok())?);
    let model = state.model();
    let (items, next) = model.hosts_page(after, limit);
    answer(HostList { hosts: items, next: next.map(|id| id.to_string()) }, model.positions(), &params)
}

/// The filters of `GET /v1/vnics`.
const VNIC_FILTERS: [&str; 6] = ["network", "subnet", "host", "vm", "mac", "ip"];

pub(crate) async fn vnics(request: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let extra: Vec<&str> = PAGE_PARAMETERS.iter().chain(&VNIC_FILTERS).copied().collect();
    let params = read_params(&request, &state, &extra).await?;
    let (limit, after) = (params.limit()?, params.cursor(|c| c.parse::<VnicId>().ok())?);
    let filter = VnicFilter {
        network: params.filter("network", "a network id (a UUID)", |t| t.parse().ok())?,
        subnet: params.filter("subnet", "a subnet id (a UUID)", |t| t.parse().ok())?,
        host: params.filter("host", "a host id (a UUID)", |t| t.parse().ok())?,
        vm: params.filter("vm", "a VM id (a UUID)", |t| t.parse().ok())?,
        mac: params.filter("mac", "a unicast MAC address", |t| t.parse::<Mac>().ok())?,
        ip: params.filter("ip", "an IP address", |t| t.parse::<IpAddr>().ok())?,
    };
    let model = state.model();
    let (items, next) = model.vnics_page(&filter, after, limit);
    answer(VnicList { vnics: items, next: next.map(|id| id.to_string()) }, model.positions(), &params)
}

pub(crate) async fn vnic(
    request: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let vnic_id: VnicId = parse_id(&id, "vNIC")?;
    let params = read_params(&request, &state, &[]).await?;
    let model = state.model();
    let view =
        model.vnic(vnic_id).ok_or_else(|| ApiError::not_found(format!("no reservation of vNIC {vnic_id} seen")))?;
    answer(view, model.positions(), &params)
}

pub(crate) async fn host(
    request: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let host_id: HostId = parse_id(&id, "host")?;
    let params = read_params(&request, &state, &[]).await?;
    let model = state.model();
    let view = model.host(host_id).ok_or_else(|| ApiError::not_found(format!("no host {host_id}")))?;
    answer(view, model.positions(), &params)
}

/// `at`: an RFC 3339 instant.
fn parse_at(params: &Params) -> Result<Option<Timestamp>, ApiError> {
    params.filter("at", "an RFC 3339 instant (`2026-12-01T10:00:00Z`)", |text| {
        serde_json::from_value::<Timestamp>(Value::String(text.to_owned())).ok()
    })
}

pub(crate) async fn ip_history(
    request: HttpRequest,
    ip: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let ip: IpAddr = ip.parse().map_err(|_| {
        let shown: String = ip.chars().take(64).collect();
        ApiError::bad_request("invalid_ip", format!("`{shown}` is not an IP address")).with_field("ip")
    })?;
    let params = read_params(&request, &state, &["at"]).await?;
    let at = parse_at(&params)?;
    let model = state.model();
    let history = model.ip_history(ip, at).ok_or_else(|| ApiError::not_found(format!("{ip} was never reserved")))?;
    answer(History { ip: Some(ip), vnic_id: None, mac: None, at, history }, model.positions(), &params)
}

pub(crate) async fn vnic_history(
    request: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let vnic_id: VnicId = parse_id(&id, "vNIC")?;
    let params = read_params(&request, &state, &["at"]).await?;
    let at = parse_at(&params)?;
    let model = state.model();
    let history = model
        .vnic_history(vnic_id, at)
        .ok_or_else(|| ApiError::not_found(format!("vNIC {vnic_id} never held an address")))?;
    answer(History { ip: None, vnic_id: Some(vnic_id), mac: None, at, history }, model.positions(), &params)
}

pub(crate) async fn mac_history(
    request: HttpRequest,
    mac: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let mac: Mac = mac.parse().map_err(|_| {
        let shown: String = mac.chars().take(64).collect();
        ApiError::bad_request("invalid_mac", format!("`{shown}` is not a unicast MAC address")).with_field("mac")
    })?;
    let params = read_params(&request, &state, &["at"]).await?;
    let at = parse_at(&params)?;
    let model = state.model();
    let history =
        model.mac_history(mac, at).ok_or_else(|| ApiError::not_found(format!("{mac} never held an address")))?;
    answer(History { ip: None, vnic_id: None, mac: Some(mac), at, history }, model.positions(), &params)
}

/// (group, topic, records behind) of the allocator and placement.
fn consumer_lags(state: &AppState) -> Result<Vec<(String, String, u64)>, ipam_log::LogError> {
    let mut lags = Vec::new();
    for (group, topic) in [(&state.groups.allocator, Topic::Networks), (&state.groups.placement, Topic::Hosts)] {
        let topic = state.topics.name(topic);
        lags.push((group.clone(), topic.clone(), ipam_runtime::lag(&*state.log, group, &topic)?));
    }
    Ok(lags)
}

async fn blocking<T: Send + 'static>(
    state: &web::Data<AppState>,
    work: impl FnOnce(&AppState) -> Result<T, ipam_log::LogError> + Send + 'static,
) -> Result<T, ApiError> {
    let state = web::Data::clone(state);
    web::block(move || work(&state))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(|e| ApiError::log(&e))
}

/// The records the read model has not read yet, over `ends`.
fn read_model_behind(positions: &Positions, ends: &[(String, u32, u64)]) -> u64 {
    ends.iter()
        .map(|(topic, partition, end)| {
            end.saturating_sub(positions.get(&position_key(topic, *partition)).copied().unwrap_or(0))
        })
        .sum()
}

/// Every partition of the deployment's topics with records held back behind its last stable
/// offset: (topic, partition, last stable offset, records held back). `followed` holds the last
/// stable offsets of the read model's topics, already asked for.
fn held_back(
    state: &AppState,
    followed: &[(String, u32, u64)],
) -> Result<Vec<(String, u32, u64, u64)>, ipam_log::LogError> {
    let mut held = Vec::new();
    for topic in Topic::ALL {
        let topic = state.topics.name(topic);
        let known: Vec<u64> = followed.iter().filter(|(name, _, _)| *name == topic).map(|(_, _, end)| *end).collect();
        let stable = if known.is_empty() { state.log.end_offsets(&topic)? } else { known };
        let written = state.log.written_ends(&topic)?;
        for (partition, (stable, written)) in (0..).zip(stable.into_iter().zip(written)) {
            held.push((topic.clone(), partition, stable, written.saturating_sub(stable)));
        }
    }
    Ok(held)
}

/// The log's part for each partition that has held records back behind the same last stable offset
/// for longer than the read model may be stuck: a transaction on it that was never ended. Kafka
/// aborts a producer's open transaction at its timeout, so one that outlasts it is a hanging
/// transaction (a marker that never reached the partition), and every read_committed reader (the
/// read model, the host agents, the allocators) waits behind it.
fn held_back_parts(state: &AppState, held: &[(String, u32, u64, u64)]) -> Vec<Part> {
    let limit = state.config.read_model_stuck_after;
    held.iter()
        .filter_map(|(topic, partition, stable, records)| {
            let since = state.held_back_for(topic, *partition, *stable, *records)?;
            (since >= limit).then(|| Part {
                component: LOG_PROBE.to_owned(),
                state: ComponentState::Degraded(String::new()).name(),
                detail: Some(format!(
                    "`{topic}` partition {partition}: {records} records after its last stable offset {stable} held \
                     back for {} s (the limit is {} s): a transaction there was never ended, and every \
                     read_committed reader waits behind it (a hanging transaction, see the README's Monitoring)",
                    since.as_secs(),
                    limit.as_secs()
                )),
                for_secs: Some(since.as_secs()),
            })
        })
        .collect()
}

/// One part of the process in `/health`.
#[derive(Debug, Serialize)]
struct Part {
    component: String,
    state: &'static str,
    detail: Option<String>,
    /// Whole seconds in this state; absent for parts `/health` found by looking, not on the board.
    #[serde(skip_serializing_if = "Option::is_none")]
    for_secs: Option<u64>,
}

/// `GET /health`: 200 when every component on the board is ok, the log answers and the read model
/// is not stuck behind it; 503 otherwise, with each failing part named in `failing`. The same body
/// either way; never a secret in it (details are error texts, never configuration).
pub(crate) async fn health(state: web::Data<AppState>) -> HttpResponse {
    let probed = {
        let state = web::Data::clone(&state);
        web::block(move || {
            let ends = state.followed_ends()?;
            let held = held_back(&state, &ends)?;
            Ok::<_, ipam_log::LogError>((consumer_lags(&state)?, ends, held))
        })
        .await
    };
    let mut parts: Vec<Part> = state
        .health
        .report()
        .into_iter()
        .map(|report| Part {
            component: report.component,
            state: report.state.name(),
            detail: report.state.detail().map(str::to_owned),
            for_secs: Some(report.for_duration.as_secs()),
        })
        .collect();
    let (lags, ends) = match probed {
        Ok(Ok((lags, ends, held))) => {
            parts.extend(held_back_parts(&state, &held));
            (Some(lags), Some(ends))
        }
        Ok(Err(error)) => {
            parts.push(Part {
                component: LOG_PROBE.to_owned(),
                state: ComponentState::Degraded(String::new()).name(),
                detail: Some(format!("reading the log's end offsets and consumer positions failed: {error}")),
                for_secs: None,
            });
            (None, None)
        }
        Err(error) => {
            parts.push(Part {
                component: LOG_PROBE.to_owned(),
                state: ComponentState::Failed(String::new()).name(),
                detail: Some(format!("the probe of the log did not run: {error}")),
                for_secs: None,
            });
            (None, None)
        }
    };
    let model = state.model();
    let positions = model.positions().clone();
    let caught_up = model.caught_up();
    drop(model);
    let behind = ends.as_deref().map(|ends| read_model_behind(&positions, ends));
    let stalled = behind.and_then(|behind| state.stalled_for(&positions, behind));
    let stuck_after = state.config.read_model_stuck_after;
    if let (Some(behind), Some(stalled)) = (behind, stalled)
        && stalled >= stuck_after
    {
        let detail = format!(
            "stuck: {behind} records behind the log and no progress for {} s (the limit is {} s)",
            stalled.as_secs(),
            stuck_after.as_secs()
        );
        match parts.iter_mut().find(|part| part.component == follower::COMPONENT) {
            // The board already says what is wrong; being stuck follows from it.
            Some(part) if part.state != ComponentState::Ok.name() => {}
            Some(part) => {
                part.state = ComponentState::Degraded(String::new()).name();
                part.detail = Some(detail);
            }
            None => parts.push(Part {
                component: follower::COMPONENT.to_owned(),
                state: ComponentState::Degraded(String::new()).name(),
                detail: Some(detail),
                for_secs: None,
            }),
        }
    }
    let failing: Vec<&Part> = parts.iter().filter(|part| part.state != ComponentState::Ok.name()).collect();
    let lag: Option<serde_json::Map<String, Value>> = lags.map(|lags| {
        ["allocator", "placement"]
            .iter()
            .zip(lags)
            .map(|(name, (group, topic, records))| {
                ((*name).to_owned(), json!({ "group": group, "topic": topic, "records": records }))
            })
            .collect()
    });
    let body = json!({
        "status": if failing.is_empty() { "ok" } else { "unhealthy" },
        "failing": failing,
        "components": parts,
        "lag": lag,
        "read_model": {
            "caught_up": caught_up,
            "behind": behind,
            "stalled_secs": stalled.map(|stalled| stalled.as_secs()),
            "position": positions,
        },
    });
    if failing.is_empty() { HttpResponse::Ok().json(body) } else { HttpResponse::ServiceUnavailable().json(body) }
}

pub(crate) async fn metrics(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let (consumer_lag, ends) = blocking(&state, |state| Ok((consumer_lags(state)?, state.followed_ends()?))).await?;
    let gauges = {
        let model = state.model();
        let mut read_model_lag: Vec<(String, u64)> = Vec::new();
        for (topic, partition, end) in ends {
            let read = model.positions().get(&position_key(&topic, partition)).copied().unwrap_or(0);
            match read_model_lag.last_mut() {
                Some((last, lag)) if *last == topic => *lag += end.saturating_sub(read),
                _ => read_model_lag.push((topic, end.saturating_sub(read))),
            }
        }
        // One pass over the subnets and their reservations gives both their utilization and their
        // forecast.
        let subnets = model.subnets();
        Gauges {
            streams_open: state.streams.open(),
            processed: model.processed(),
            consumer_lag,
            read_model_lag,
            utilization: subnets
                .iter()
                .map(|(network, subnet)| (network.to_string(), subnet.subnet_id.to_string(), subnet.utilization))
                .collect(),
            reservations: model
                .reservation_counts()
                .into_iter()
                .map(|(network, count)| (network.to_string(), count))
                .collect(),
            network_names: model.network_names().into_iter().map(|(id, name)| (id.to_string(), name)).collect(),
            ..crate::lease_state::gauges(&model, &subnets)
        }
    };
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(metrics::render(&state.metrics, &gauges) + &ipam_runtime::metrics::render()))
}

pub(crate) async fn openapi_document(document: web::Data<Arc<Value>>) -> HttpResponse {
    HttpResponse::Ok().json(&**document.get_ref())
}

/// The document, built once per server.
pub(crate) fn openapi_data() -> web::Data<Arc<Value>> {
    web::Data::new(Arc::new(openapi::document()))
}

pub(crate) async fn not_found(request: HttpRequest) -> HttpResponse {
    let path: String = request.path().chars().take(200).collect();
    ApiError::not_found(format!("no endpoint at {path}")).error_response()
}

pub(crate) async fn method_not_allowed(request: HttpRequest) -> HttpResponse {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {}", request.method(), request.path().chars().take(200).collect::<String>()),
    )
    .error_response()
}
