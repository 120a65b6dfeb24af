//! Active health checks: an HTTP GET per endpoint at the app's interval; `unhealthy_after`
//! failures in a row take an endpoint out, `healthy_after` passes bring it back. The same
//! loop sweeps the upstream connection pools.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::config::UpstreamProtocol;
use crate::engine::Shared;
use crate::runtime::{now_ms, EndpointRt, VersionRt};

type CheckClient = Client<HttpConnector, Empty<Bytes>>;

/// A client per upstream protocol: an endpoint is checked in the protocol it is sent
/// requests in.
#[derive(Clone)]
struct CheckClients {
    http1: CheckClient,
    h2c: CheckClient,
}

impl CheckClients {
    fn new() -> CheckClients {
        let build = |h2: bool| {
            let mut connector = HttpConnector::new();
            connector.set_connect_timeout(Some(Duration::from_secs(1)));
            // A fresh connection per check: a check should see what a new connection would.
            Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .http2_only(h2)
                .build(connector)
        };
        CheckClients {
            http1: build(false),
            h2c: build(true),
        }
    }

    fn request(
        &self,
        protocol: UpstreamProtocol,
        mut req: http::Request<Empty<Bytes>>,
    ) -> hyper_util::client::legacy::ResponseFuture {
        match protocol {
            UpstreamProtocol::Http1 => self.http1.request(req),
            UpstreamProtocol::H2c => {
                *req.version_mut() = http::Version::HTTP_2;
                self.h2c.request(req)
            }
        }
    }
}

/// Checks every endpoint once and waits for the answers (each within its check's timeout):
/// run before the listeners open, so that a starting proxy — a restart or the second half
/// of a handover included — sends nothing to an endpoint that is down, as a proxy that had
/// been running would not have. (A new endpoint's first check is due at once.)
pub async fn first_round(shared: &Arc<Shared>) {
    let started = std::time::Instant::now();
    let checks = start_due(shared, &CheckClients::new());
    let total = checks.len();
    for check in checks {
        let _ = check.await;
    }
    if total > 0 {
        tracing::info!(checks = total, elapsed_ms = %started.elapsed().as_millis(), "first health checks done");
    }
}

/// Runs until the process ends: every 100 ms, starts the checks that are due.
pub async fn run(shared: Arc<Shared>) {
    let client = CheckClients::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u64 = 0;
    loop {
        tick.tick().await;
        ticks += 1;
        if ticks % 10 == 0 {
            // Once a second: idle upstream connections that timed out or were closed by
            // the upstream are let go.
            let now = now_ms(shared.epoch);
            for rt in shared.routes.load().apps.iter().flat_map(|a| &a.versions) {
                rt.sweep_idle(now);
            }
        }
        // Each runs on its own; nothing waits for them here.
        drop(start_due(&shared, &client));
    }
}

/// Starts the checks that are due, each scheduling its endpoint's next.
fn start_due(shared: &Arc<Shared>, client: &CheckClients) -> Vec<tokio::task::JoinHandle<()>> {
    let routes = shared.routes.load_full();
    let now = now_ms(shared.epoch);
    let mut started = Vec::new();
    for rt in routes.apps.iter().flat_map(|a| &a.versions) {
        let Some(check) = &rt.health else { continue };
        let interval = u64::try_from(check.interval.as_millis()).unwrap_or(1000);
        for ep in &rt.endpoints {
            if ep.next_check.load(Ordering::Relaxed) > now {
                continue;
            }
            ep.next_check.store(now + interval, Ordering::Relaxed);
            started.push(tokio::spawn(check_one(
                shared.clone(),
                client.clone(),
                rt.clone(),
                ep.clone(),
            )));
        }
    }
    started
}

async fn check_one(
    shared: Arc<Shared>,
    client: CheckClients,
    rt: Arc<VersionRt>,
    ep: Arc<EndpointRt>,
) {
    let Some(check) = &rt.health else { return };
    let uri = format!("http://{}{}", ep.address, check.path);
    let ok = match uri.parse::<http::Uri>() {
        Err(_) => false,
        Ok(uri) => {
            let mut req = http::Request::new(Empty::new());
            *req.uri_mut() = uri;
            req.headers_mut().insert(
                http::header::USER_AGENT,
                http::HeaderValue::from_static("hemiron-proxy-health"),
            );
            matches!(
                tokio::time::timeout(check.timeout, client.request(rt.spec.protocol, req)).await,
                Ok(Ok(r)) if r.status().is_success() || r.status().is_redirection()
            )
        }
    };
    let was = ep.active_ok.load(Ordering::Relaxed);
    let first = !ep.checked.swap(true, Ordering::Relaxed);
    if ok {
        ep.check_failures.store(0, Ordering::Relaxed);
        let passes = ep.check_passes.fetch_add(1, Ordering::Relaxed) + 1;
        if !was && passes >= check.healthy_after {
            ep.active_ok.store(true, Ordering::Relaxed);
            // A recovered endpoint starts with a clean ejection record.
            ep.ejections.store(0, Ordering::Relaxed);
            tracing::info!(app = %rt.app, version = %rt.id, endpoint = %ep.address, "endpoint healthy");
            shared.health_changed.notify_one();
        }
    } else {
        ep.check_passes.store(0, Ordering::Relaxed);
        let failures = ep.check_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if was && (first || failures >= check.unhealthy_after) {
            ep.active_ok.store(false, Ordering::Relaxed);
            tracing::warn!(app = %rt.app, version = %rt.id, endpoint = %ep.address, "endpoint unhealthy");
            shared.health_changed.notify_one();
        }
    }
}
