//! `/healthz` and `/metrics` (Prometheus) of the node agent, outside the Proxmox API and
//! without authentication, as monitoring expects. Metric names are defined here only.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::Node;

/// Requests answered, by method and status.
pub const REQUESTS: &str = "hemiron_node_http_requests";
/// Time to answer, by method.
pub const DURATION: &str = "hemiron_node_http_request_duration_seconds";
/// VMs defined on the node, and those running.
pub const VMS: &str = "hemiron_node_vms";
pub const VMS_RUNNING: &str = "hemiron_node_vms_running";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    pub status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: String,
}

fn histogram() -> Histogram {
    Histogram::new([0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0])
}

/// The agent's HTTP metrics.
#[derive(Debug)]
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<MethodLabels, Histogram, fn() -> Histogram>,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        Arc::new(Metrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(histogram),
        })
    }
}

#[derive(Clone)]
pub struct ObserveState {
    pub node: Arc<Node>,
    pub metrics: Arc<Metrics>,
}

/// Counts every request.
pub async fn count(State(m): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    let started = Instant::now();
    let resp = next.run(req).await;
    m.requests
        .get_or_create(&RequestLabels {
            method: method.clone(),
            status: resp.status().as_u16(),
        })
        .inc();
    m.duration
        .get_or_create(&MethodLabels { method })
        .observe(started.elapsed().as_secs_f64());
    resp
}

pub async fn healthz(State(s): State<ObserveState>) -> Response {
    axum::Json(serde_json::json!({
        "status": "ok",
        "node": s.node.name,
        "accel": s.node.accel.as_str(),
    }))
    .into_response()
}

pub async fn metrics(State(s): State<ObserveState>) -> Response {
    let mut registry = Registry::default();
    registry.register(
        REQUESTS,
        "HTTP requests answered",
        s.metrics.requests.clone(),
    );
    registry.register(
        DURATION,
        "Time to answer HTTP requests",
        s.metrics.duration.clone(),
    );
    let vmids = s.node.vms.vmids();
    let running = vmids
        .iter()
        .filter(|v| s.node.vms.running(**v).is_some())
        .count();
    let vms = prometheus_client::metrics::gauge::Gauge::<i64>::default();
    vms.set(i64::try_from(vmids.len()).unwrap_or(i64::MAX));
    let up = prometheus_client::metrics::gauge::Gauge::<i64>::default();
    up.set(i64::try_from(running).unwrap_or(i64::MAX));
    registry.register(VMS, "VMs defined on this node", vms);
    registry.register(VMS_RUNNING, "VMs running on this node", up);
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
        out.clear();
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}
