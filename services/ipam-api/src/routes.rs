//! The read endpoints, health, metrics and the OpenAPI document. Every read answers from the read
//! model under one read lock, so the body and its `position` always agree.

use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError as _, web};
use ipam_core::{HostId, NetworkId, Topic, VnicId};
use serde::Serialize;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::follower::FOLLOWED;
use crate::metrics::{self, Gauges};
use crate::model::{Positions, position_key};
use crate::openapi;
use crate::state::AppState;

/// A view with the read model's position added.
fn with_position(view: impl Serialize, positions: &Positions) -> HttpResponse {
    let mut value = serde_json::to_value(view).unwrap_or(Value::Null);
    if let Value::Object(object) = &mut value {
        object.insert("position".to_owned(), json!(positions));
    }
    HttpResponse::Ok().json(value)
}

fn parse_id<T: FromStr>(text: &str, what: &str) -> Result<T, ApiError> {
    text.parse().map_err(|_| {
        let shown: String = text.chars().take(64).collect();
        ApiError::bad_request("invalid_id", format!("`{shown}` is not a {what} id (a UUID)")).with_field("id")
    })
}

pub(crate) async fn networks(state: web::Data<AppState>) -> HttpResponse {
    let model = state.model();
    with_position(json!({ "networks": model.networks() }), model.positions())
}

pub(crate) async fn network(id: web::Path<String>, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let network_id: NetworkId = parse_id(&id, "network")?;
    let model = state.model();
    let view = model.network(network_id).ok_or_else(|| ApiError::not_found(format!("no network {network_id}")))?;
    Ok(with_position(view, model.positions()))
}

pub(crate) async fn vnic(id: web::Path<String>, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let vnic_id: VnicId = parse_id(&id, "vNIC")?;
    let model = state.model();
    let view =
        model.vnic(vnic_id).ok_or_else(|| ApiError::not_found(format!("no reservation of vNIC {vnic_id} seen")))?;
    Ok(with_position(view, model.positions()))
}

pub(crate) async fn host(id: web::Path<String>, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let host_id: HostId = parse_id(&id, "host")?;
    let model = state.model();
    let view = model.host(host_id).ok_or_else(|| ApiError::not_found(format!("no host {host_id}")))?;
    Ok(with_position(view, model.positions()))
}

pub(crate) async fn ip_history(ip: web::Path<String>, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let ip: IpAddr = ip.parse().map_err(|_| {
        let shown: String = ip.chars().take(64).collect();
        ApiError::bad_request("invalid_ip", format!("`{shown}` is not an IP address")).with_field("ip")
    })?;
    let model = state.model();
    let history = model.ip_history(ip).ok_or_else(|| ApiError::not_found(format!("{ip} was never reserved")))?;
    Ok(with_position(json!({ "ip": ip, "history": history }), model.positions()))
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

pub(crate) async fn health(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let lags = blocking(&state, consumer_lags).await?;
    let names = ["allocator", "placement"];
    let lag: serde_json::Map<String, Value> = names
        .iter()
        .zip(lags)
        .map(|(name, (group, topic, records))| {
            ((*name).to_owned(), json!({ "group": group, "topic": topic, "records": records }))
        })
        .collect();
    let model = state.model();
    Ok(HttpResponse::Ok().json(json!({
        "status": "ok",
        "lag": lag,
        "read_model": { "caught_up": model.caught_up(), "position": model.positions() },
    })))
}

pub(crate) async fn metrics(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let (consumer_lag, ends) = blocking(&state, |state| {
        let mut ends = Vec::new();
        for topic in FOLLOWED {
            let topic = state.topics.name(topic);
            for partition in 0..state.log.partition_count(&topic)? {
                ends.push((topic.clone(), partition, state.log.end_offset(&topic, partition)?));
            }
        }
        Ok((consumer_lags(state)?, ends))
    })
    .await?;
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
        Gauges {
            processed: model.processed(),
            consumer_lag,
            read_model_lag,
            utilization: model
                .utilizations()
                .into_iter()
                .map(|(network, subnet, ratio)| (network.to_string(), subnet.to_string(), ratio))
                .collect(),
            reservations: model
                .reservation_counts()
                .into_iter()
                .map(|(network, count)| (network.to_string(), count))
                .collect(),
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
