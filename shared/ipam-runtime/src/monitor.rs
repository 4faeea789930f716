//! `/health` and `/metrics` for a process that runs services without the API (`ipam allocator`,
//! `ipam placement`, `ipam host-agent`, or `ipam up` on its own address): one small HTTP server
//! the binary starts on `--metrics-bind`, the same for every service, so that an orchestrator can
//! probe each process and Prometheus can scrape it.
//!
//! `/health` is 200 only when the process is ready: every component on its [`Health`] board is ok,
//! every driver owns partitions and finished a round the log accepted within [`STALE_AFTER`], and
//! no host agent is behind the log or without an accepted heartbeat, and no DHCP server is failed
//! or restarting. Otherwise 503, naming each failing part. `/metrics` is
//! [`crate::metrics::render`] plus each driver's lag on every partition it owns: the partition's
//! end, asked of the log at each scrape, less the driver's own position there (no consumer-group
//! lookup per partition, which on Kafka costs a client each).

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};
use anyhow::Context as _;
use ipam_core::event::DhcpServerState;
use ipam_log::EventLog;
use serde_json::json;

use crate::health::Health;
use crate::metrics::{self, escape, header};

/// A driver that has not finished a round for this long is not ready. A round polls for at most
/// 100 ms, so this is a stuck driver (a log call that hangs), not a quiet one.
pub const STALE_AFTER: Duration = Duration::from_secs(30);

/// How often the server looks whether it should stop.
const STOP_POLL: Duration = Duration::from_millis(100);

/// What the monitor of one process looks at.
#[derive(Clone)]
pub struct Monitor {
    /// The process's board.
    pub health: Health,
    /// The log, for the ends of the drivers' partitions.
    pub log: Arc<dyn EventLog>,
    /// A driver that has not finished a round, or a host agent without an accepted heartbeat,
    /// for this long is not ready ([`STALE_AFTER`]).
    pub stale_after: Duration,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor").field("stale_after", &self.stale_after).finish_non_exhaustive()
    }
}

impl Monitor {
    /// Why the process is not ready, one sentence per failing part; empty when it is.
    pub fn failing(&self) -> Vec<String> {
        let mut failing = Vec::new();
        for report in self.health.report() {
            if let Some(detail) = report.state.detail() {
                failing.push(format!("{} is {}: {detail}", report.component, report.state.name()));
            }
        }
        for (name, driver) in metrics::DRIVERS {
            if !driver.is_started() || !driver.has_run() {
                // A driver before its first round is `starting` on the board, said above.
                continue;
            }
            if driver.owned_partitions() == 0 {
                failing.push(format!("{name} owns no partition (the group has assigned it none)"));
            }
            let age = driver.last_round_age();
            if age > self.stale_after {
                failing.push(format!("{name} has not committed for {} s", age.as_secs()));
            }
        }
        for (host, agent) in metrics::host_agents() {
            if !agent.caught_up {
                failing.push(format!("the host agent of {host} is catching up with the log"));
            }
            let since = agent.last_heartbeat.unwrap_or(agent.started);
            let age = since.elapsed().unwrap_or_default();
            if age > self.stale_after {
                failing
                    .push(format!("the host agent of {host} has not had a heartbeat accepted for {} s", age.as_secs()));
            }
        }
        for ((host, network), report) in metrics::dhcp_servers() {
            if matches!(report.state, DhcpServerState::Failed | DhcpServerState::Restarting) {
                failing.push(format!(
                    "the DHCP server of network {network} on host {host} is {}: {}",
                    metrics::dhcp_state_name(report.state),
                    report.detail
                ));
            }
        }
        failing
    }

    /// The body of `/health`.
    fn health_document(&self, failing: &[String]) -> serde_json::Value {
        let components: Vec<_> = self
            .health
            .report()
            .into_iter()
            .map(|report| {
                json!({
                    "component": report.component,
                    "state": report.state.name(),
                    "detail": report.state.detail(),
                    "for_secs": report.for_duration.as_secs(),
                })
            })
            .collect();
        let drivers: Vec<_> = metrics::DRIVERS
            .into_iter()
            .filter(|(_, driver)| driver.is_started())
            .map(|(name, driver)| {
                json!({
                    "driver": name,
                    "partitions_owned": driver.owned_partitions(),
                    "last_commit_age_secs": driver.last_round_age().as_secs_f64(),
                })
            })
            .collect();
        let servers: Vec<_> = metrics::dhcp_servers()
            .into_iter()
            .map(|((host, network), report)| {
                json!({
                    "host": host,
                    "network": network,
                    "state": metrics::dhcp_state_name(report.state),
                    "detail": report.detail,
                    "restarts": report.restarts,
                })
            })
            .collect();
        let agents: Vec<_> = metrics::host_agents()
            .into_iter()
            .map(|(host, agent)| {
                json!({
                    "host": host,
                    "caught_up": agent.caught_up,
                    "last_heartbeat_age_secs": agent.last_heartbeat.map(|at| at.elapsed().unwrap_or_default().as_secs_f64()),
                })
            })
            .collect();
        json!({
            "status": if failing.is_empty() { "ok" } else { "unhealthy" },
            "host_agents": agents,
            "failing": failing,
            "components": components,
            "drivers": drivers,
            "dhcp_servers": servers,
        })
    }

    /// Each driver's lag on the partitions it owns; a partition whose end the log does not give
    /// is left out (and said in the log at debug level).
    fn render_lag(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        header(
            &mut out,
            "ipam_partition_lag",
            "gauge",
            "Records of an input partition the driver that owns it has not processed yet (on Kafka a transaction's \
             commit marker counts as one).",
        );
        for (name, driver) in metrics::DRIVERS.into_iter().filter(|(_, driver)| driver.is_started()) {
            for (partition, position) in driver.positions() {
                match self.log.end_offset(&partition.topic, partition.partition) {
                    Ok(end) => {
                        let _ = writeln!(
                            out,
                            "ipam_partition_lag{{driver=\"{name}\",topic=\"{}\",partition=\"{}\"}} {}",
                            escape(&partition.topic),
                            partition.partition,
                            end.saturating_sub(position)
                        );
                    }
                    Err(error) => tracing::debug!(topic = %partition.topic, partition = partition.partition,
                                                  error = %error, "No lag for a partition."),
                }
            }
        }
        out
    }
}

async fn health(monitor: web::Data<Monitor>) -> HttpResponse {
    let failing = monitor.failing();
    let document = monitor.health_document(&failing);
    let mut response = if failing.is_empty() { HttpResponse::Ok() } else { HttpResponse::ServiceUnavailable() };
    response.json(document)
}

async fn render_metrics(monitor: web::Data<Monitor>) -> HttpResponse {
    // Asking Kafka for offsets blocks: off the server's threads.
    let lag = web::block(move || monitor.render_lag()).await.unwrap_or_default();
    HttpResponse::Ok().content_type("text/plain; version=0.0.4; charset=utf-8").body(metrics::render() + &lag)
}

/// Binds `address` now (so that a taken address is an error at start) and serves `/health` and
/// `/metrics` on a thread of its own until `stop` is set. Answers the bound address (port 0 picks
/// a free one) and the thread.
///
/// # Errors
/// When the address cannot be bound or the thread cannot be started.
pub fn spawn(
    address: SocketAddr,
    monitor: Monitor,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<(SocketAddr, JoinHandle<anyhow::Result<()>>)> {
    let listener =
        TcpListener::bind(address).with_context(|| format!("binding the health and metrics server to {address}"))?;
    let bound = listener.local_addr().context("reading the bound address")?;
    let thread = std::thread::Builder::new()
        .name("ipam-monitor".to_owned())
        .spawn(move || serve(listener, monitor, &stop))
        .context("starting the health and metrics server")?;
    tracing::info!(address = %bound, "Health and metrics on http://{bound}/health and /metrics");
    Ok((bound, thread))
}

fn serve(listener: TcpListener, monitor: Monitor, stop: &Arc<AtomicBool>) -> anyhow::Result<()> {
    let data = web::Data::new(monitor);
    let stop = Arc::clone(stop);
    actix_web::rt::System::new().block_on(async move {
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/health", web::get().to(health))
                .route("/metrics", web::get().to(render_metrics))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(1)
        .listen(listener)
        .context("listening")?
        .run();
        let handle = server.handle();
        actix_web::rt::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                actix_web::rt::time::sleep(STOP_POLL).await;
            }
            handle.stop(true).await;
        });
        server.await.context("the health and metrics server failed")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use ipam_log::TopicPartition;

    use crate::health::ComponentState;

    #[test]
    fn a_component_that_is_not_ok_is_named_with_its_reason() {
        let health = Health::new();
        health.set("placement", ComponentState::Starting("rebuilding ipam.hosts/0".to_owned()));
        let log: Arc<dyn EventLog> = Arc::new(ipam_log::memory::MemoryLog::new());
        let monitor = Monitor { health: health.clone(), log, stale_after: STALE_AFTER };
        let failing = monitor.failing();
        assert!(failing.iter().any(|line| line == "placement is starting: rebuilding ipam.hosts/0"), "{failing:?}");
        health.set("placement", ComponentState::Ok);
        assert!(!monitor.failing().iter().any(|line| line.starts_with("placement is")));
    }

    #[test]
    fn a_driver_that_owns_no_partition_or_has_not_committed_lately_is_not_ready() {
        // Placement's statics: the runtime's own driver tests feed the allocator's.
        let log: Arc<dyn EventLog> = Arc::new(ipam_log::memory::MemoryLog::new());
        let monitor = Monitor { health: Health::new(), log, stale_after: Duration::from_secs(3600) };
        let placement = |monitor: &Monitor| -> Vec<String> {
            monitor.failing().into_iter().filter(|line| line.starts_with("placement ")).collect()
        };
        metrics::PLACEMENT.started();
        assert_eq!(placement(&monitor), Vec::<String>::new(), "before its first round the board speaks for it");
        metrics::PLACEMENT.round_done(&BTreeMap::new());
        assert_eq!(placement(&monitor), ["placement owns no partition (the group has assigned it none)"]);
        let hosts = TopicPartition { topic: "ipam.hosts".to_owned(), partition: 0 };
        metrics::PLACEMENT.round_done(&BTreeMap::from([(hosts, 0)]));
        assert_eq!(placement(&monitor), Vec::<String>::new());
        let stale = Monitor { stale_after: Duration::ZERO, ..monitor };
        let failing = placement(&stale);
        assert!(failing.len() == 1 && failing[0].starts_with("placement has not committed for "), "{failing:?}");
    }
}
