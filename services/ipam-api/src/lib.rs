//! The HTTP API of IPAM: the engine's and host agents' way to publish events, and everyone's way
//! to read what IPAM decided.
//!
//! Writes go straight to the log: `POST /v1/events` checks a batch against the event contract and
//! appends it whole in one call, so a `202` means durable and a `4xx` means nothing was written.
//! The API never decides anything and keeps no state of its own that the log does not hold.
//!
//! Reads come from a read model ([`model::ReadModel`]) that a background thread folds from the
//! decision topics, from offset 0; every answer carries the log position it reflects. The decisions
//! themselves are also served as a resumable Server-Sent Events stream (`GET /v1/stream`).
//!
//! Who may call it is [`auth`]: bearer tokens with a `read` or `write` role. It serves HTTPS
//! itself when given a certificate and key ([`tls`], reloaded when the files change).
//!
//! The server runs on actix-web in its own actix `System`. Blocking log calls run off the HTTP
//! workers: appends and lag queries in `web::block`, the read model and each event stream on their
//! own threads.

pub mod auth;
pub mod decision;
pub mod error;
pub mod forecast;
pub mod lease_state;
pub mod metrics;
pub mod model;
pub mod openapi;
pub mod publish;
pub mod query;
pub mod stream;
pub mod tls;
pub mod views;

mod bulk;
mod follower;
mod routes;
mod snapshot;
mod state;
mod ui;

pub use follower::Snapshots;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use actix_web::dev::Service as _;
use actix_web::http::StatusCode;
use actix_web::{App, HttpServer, ResponseError as _, web};
use anyhow::Context as _;
use futures::future::{Either, ready};
use ipam_log::EventLog;
use ipam_runtime::{ComponentState, Health, Topics};

pub use error::ApiError;

use crate::auth::{ApiToken, Denied, Role};
use crate::metrics::Metrics;
use crate::model::ReadModel;
use crate::state::AppState;
use crate::stream::StreamSlots;

/// The HTTP server's name on the health board: starting until bound, ok while serving.
pub const HTTP_COMPONENT: &str = "api-http";
/// The read model's name on the health board.
pub const READ_MODEL_COMPONENT: &str = follower::COMPONENT;
/// The name `/health` gives the log in `failing` when its own look at the log fails (not a
/// component on the board).
pub const LOG_PROBE: &str = routes::LOG_PROBE;

/// How often the server looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(100);
/// How long a graceful shutdown waits for requests in flight. Event streams end by themselves
/// when the server stops, so this only bounds slow clients.
const SHUTDOWN_TIMEOUT_SECS: u64 = 5;

/// How the API listens and whom it lets in.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiConfig {
    /// Where to listen; port 0 picks a free port (see [`bind_and_serve`] and the startup log line).
    pub bind: SocketAddr,
    /// When set, every endpoint but `/health` requires `Authorization: Bearer <token>`: a write
    /// token, the same as one in `tokens` with [`Role::Write`].
    pub bearer_token: Option<String>,
    /// More tokens, each with its role ([`auth::load_tokens`]). With none here and no
    /// `bearer_token`, the API is open to anyone who reaches it.
    pub tokens: Vec<ApiToken>,
    /// When set, the API serves HTTPS only, with these files, reloaded when they change.
    pub tls: Option<tls::TlsFiles>,
    /// The largest `POST /v1/events` body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// Event streams served at once ([`stream::MAX_STREAMS`] by default); more get 503.
    pub max_streams: usize,
    /// Event streams one client address may hold at once ([`stream::MAX_STREAMS_PER_CLIENT`] by
    /// default). Behind a proxy every client has the proxy's address: raise it to `max_streams`.
    pub max_streams_per_client: usize,
    /// How long the read model may stay behind the log without moving before `/health` calls it
    /// stuck (30 s by default; measured between calls of `/health`).
    pub read_model_stuck_after: Duration,
    /// Where the read model keeps its snapshot, so that a restart reads only the log after it
    /// (none by default: the read model reads the log from the beginning at every start).
    pub snapshots: Option<Snapshots>,
}

impl Default for ApiConfig {
    fn default() -> ApiConfig {
        ApiConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            bearer_token: None,
            tokens: Vec::new(),
            tls: None,
            max_body_bytes: 1024 * 1024,
            max_streams: stream::MAX_STREAMS,
            max_streams_per_client: stream::MAX_STREAMS_PER_CLIENT,
            read_model_stuck_after: Duration::from_secs(30),
            snapshots: None,
        }
    }
}

impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token stays out of logs.
        f.debug_struct("ApiConfig")
            .field("bind", &self.bind)
            .field("bearer_token", &self.bearer_token.as_ref().map(|_| "<redacted>"))
            .field("tokens", &self.tokens)
            .field("tls", &self.tls)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_streams", &self.max_streams)
            .field("max_streams_per_client", &self.max_streams_per_client)
            .field("read_model_stuck_after", &self.read_model_stuck_after)
            .field("snapshots", &self.snapshots)
            .finish()
    }
}

/// The consumer groups whose lag `/health` and `/metrics` report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Groups {
    /// The allocator's group; its lag is measured on `ipam.networks`.
    pub allocator: String,
    /// Placement's group; its lag is measured on `ipam.hosts`.
    pub placement: String,
}

impl Groups {
    /// The groups the `ipam` binary uses: `<prefix>ipam-allocator` and `<prefix>ipam-placement`.
    pub fn with_prefix(prefix: &str) -> Groups {
        Groups { allocator: format!("{prefix}ipam-allocator"), placement: format!("{prefix}ipam-placement") }
    }
}

/// Runs the API until `stop` is set, then shuts the server down gracefully. Blocking: it runs its
/// own actix `System` in the calling thread. Logs `API listening on http://ADDR` once bound.
///
/// `health` is the process's board: `/health` answers from it, and the API reports its own parts
/// there as [`HTTP_COMPONENT`] and `api-read-model`.
pub fn run(
    log: Arc<dyn EventLog>,
    topics: Topics,
    groups: Groups,
    config: ApiConfig,
    stop: Arc<AtomicBool>,
    health: Health,
) -> anyhow::Result<()> {
    let listener = bind(config.bind, &health)?;
    serve(listener, log, topics, groups, config, stop, health)
}

/// Binds in the calling thread (so a taken port is an error here), then serves on a new thread
/// until `stop` is set. Answers the bound address (the real port when `config.bind` asked for 0).
pub fn bind_and_serve(
    log: Arc<dyn EventLog>,
    topics: Topics,
    groups: Groups,
    config: ApiConfig,
    stop: Arc<AtomicBool>,
    health: Health,
) -> anyhow::Result<(SocketAddr, JoinHandle<anyhow::Result<()>>)> {
    let listener = bind(config.bind, &health)?;
    let address = listener.local_addr().context("reading the bound address")?;
    let thread = std::thread::Builder::new()
        .name("ipam-api".to_owned())
        .spawn(move || serve(listener, log, topics, groups, config, stop, health))
        .context("starting the API thread")?;
    Ok((address, thread))
}

fn bind(address: SocketAddr, health: &Health) -> anyhow::Result<TcpListener> {
    health.set(HTTP_COMPONENT, ComponentState::Starting(format!("binding {address}")));
    TcpListener::bind(address).with_context(|| format!("binding the API to {address}")).inspect_err(|error| {
        health.set(HTTP_COMPONENT, ComponentState::Failed(format!("{error:#}")));
    })
}

fn serve(
    listener: TcpListener,
    log: Arc<dyn EventLog>,
    topics: Topics,
    groups: Groups,
    config: ApiConfig,
    stop: Arc<AtomicBool>,
    health: Health,
) -> anyhow::Result<()> {
    let address = listener.local_addr().context("reading the bound address")?;
    let halt = Arc::new(AtomicBool::new(false));
    // Bad files at start are an error here, before anything is served.
    let tls = match &config.tls {
        Some(files) => {
            let resolver = Arc::new(tls::Resolver::new(tls::load(files)?));
            let server_config = tls::server_config(Arc::clone(&resolver))?;
            let watcher =
                tls::watch(files.clone(), resolver, Arc::clone(&halt)).context("starting the TLS reloader")?;
            Some((server_config, watcher))
        }
        None => None,
    };
    let model = Arc::new(RwLock::new(ReadModel::new()));
    let follower = {
        let (log, topics, model, halt) = (Arc::clone(&log), topics.clone(), Arc::clone(&model), Arc::clone(&halt));
        let (health, snapshots) = (health.clone(), config.snapshots.clone());
        std::thread::Builder::new()
            .name("ipam-api-read-model".to_owned())
            .spawn(move || {
                let result = follower::run(log, topics, model, Arc::clone(&halt), health, snapshots);
                // A read model that cannot go on stops the API rather than serve stale answers.
                halt.store(true, Ordering::SeqCst);
                result
            })
            .context("starting the read model")?
    };
    let metrics = Arc::new(Metrics::default());
    let tokens: Arc<[ApiToken]> = config
        .bearer_token
        .iter()
        .map(|secret| ApiToken::new(secret.clone(), Role::Write))
        .chain(config.tokens.clone())
        .collect();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let streams = Arc::new(StreamSlots::new(config.max_streams, config.max_streams_per_client));
    let state = web::Data::new(AppState {
        log,
        topics,
        groups,
        config,
        model,
        metrics: Arc::clone(&metrics),
        halt: Arc::clone(&halt),
        streams,
        health: health.clone(),
        stalled: state::Unchanged::default(),
        held_back: state::Unchanged::default(),
    });
    let document = routes::openapi_data();
    // A couple of workers is plenty: handlers never block, and each stream has its own thread.
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 4));

    let (tls_config, watcher) = tls.unzip();
    let served = actix_web::rt::System::new().block_on({
        let (halt, health) = (Arc::clone(&halt), health.clone());
        async move {
            let server = HttpServer::new(move || {
                let (tokens, metrics) = (Arc::clone(&tokens), Arc::clone(&metrics));
                App::new()
                    .app_data(state.clone())
                    .app_data(document.clone())
                    .service(
                        web::resource("/v1/events")
                            .route(web::post().to(publish::post_events))
                            .default_service(web::to(routes::method_not_allowed)),
                    )
                    .service(get("/v1/networks", routes::networks))
                    .service(get("/v1/networks/{id}", routes::network))
                    .service(get("/v1/networks/{id}/reservations", routes::reservations))
                    .service(get("/v1/hosts", routes::hosts))
                    .service(get("/v1/vnics", routes::vnics))
                    .service(get("/v1/vnics/{id}", routes::vnic))
                    .service(get("/v1/hosts/{id}", routes::host))
                    .service(get("/v1/ips/{ip}/history", routes::ip_history))
                    .service(get("/v1/vnics/{id}/history", routes::vnic_history))
                    .service(get("/v1/macs/{mac}/history", routes::mac_history))
                    .service(get("/v1/stream", stream::stream))
                    .service(get("/health", routes::health))
                    .service(get("/metrics", routes::metrics))
                    .service(get("/openapi.json", routes::openapi_document))
                    .service(ui::scope())
                    .default_service(web::to(routes::not_found))
                    .wrap_fn(move |request, service| {
                        // The page's own files hold no data: it asks for the token itself (ui.rs).
                        let public = request.path() == "/health" || ui::is_public(request.path());
                        let needed = Role::needed_for(request.method());
                        let checked = if public {
                            Ok(())
                        } else {
                            auth::check(
                                &tokens,
                                auth::bearer(request.headers()),
                                needed,
                                chrono::DateTime::<chrono::Utc>::from(std::time::SystemTime::now()),
                            )
                        };
                        if let Err(denied) = checked {
                            let error = denied_error(denied);
                            return Either::Left(ready(Ok(request.into_response(error.error_response()))));
                        }
                        Either::Right(service.call(request))
                    })
                    .wrap_fn(move |request, service| {
                        let started = Instant::now();
                        let method = request.method().to_string();
                        let metrics = Arc::clone(&metrics);
                        let response = service.call(request);
                        async move {
                            let response = response.await?;
                            let route = response.request().match_pattern().unwrap_or_else(|| "unmatched".to_owned());
                            metrics.observe(&method, &route, response.status().as_u16(), started.elapsed());
                            Ok(response)
                        }
                    })
            })
            .workers(workers)
            .disable_signals()
            .shutdown_timeout(SHUTDOWN_TIMEOUT_SECS);
            let server = match tls_config {
                Some(tls_config) => server.listen_rustls_0_23(listener, tls_config),
                None => server.listen(listener),
            }
            .context("listening")?
            .run();
            health.set(HTTP_COMPONENT, ComponentState::Ok);
            tracing::info!(address = %address, "API listening on {scheme}://{address}");
            let handle = server.handle();
            actix_web::rt::spawn(async move {
                while !stop.load(Ordering::SeqCst) && !halt.load(Ordering::SeqCst) {
                    actix_web::rt::time::sleep(STOP_POLL).await;
                }
                // Streams end first, so the graceful stop does not wait for them.
                halt.store(true, Ordering::SeqCst);
                handle.stop(true).await;
            });
            server.await.context("the HTTP server failed")
        }
    });
    halt.store(true, Ordering::SeqCst);
    health.set(
        HTTP_COMPONENT,
        match &served {
            Ok(()) => ComponentState::Degraded("stopped".to_owned()),
            Err(error) => ComponentState::Failed(format!("{error:#}")),
        },
    );
    let followed = follower.join().map_err(|_| anyhow::anyhow!("the read model thread panicked"))?;
    if let Some(watcher) = watcher {
        watcher.join().map_err(|_| anyhow::anyhow!("the TLS reloader panicked"))?;
    }
    tracing::info!(address = %address, "API stopped.");
    served?;
    followed
}

/// The answer to a request the tokens turn away.
fn denied_error(denied: Denied) -> ApiError {
    match denied {
        Denied::Unknown => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this endpoint needs `Authorization: Bearer <token>` with a valid token",
        ),
        Denied::Expired => ApiError::new(StatusCode::UNAUTHORIZED, "token_expired", "this token has expired"),
        Denied::Forbidden => ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this token's role may not do this: publishing events needs a `write` token",
        ),
    }
}

/// A resource answering `GET` with `handler`, and a JSON 405 to every other method.
fn get<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path).route(web::get().to(handler)).default_service(web::to(routes::method_not_allowed))
}
