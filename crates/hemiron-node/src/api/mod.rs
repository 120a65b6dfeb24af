//! The Proxmox VE–compatible HTTP API: routes, authentication and the response envelope.

pub mod call;
pub mod error;
pub mod server;

mod access;
mod backup;
mod clone;
mod cluster;
mod migrate;
pub mod nodes;
mod observe;
mod qemu;
mod snapshot;
mod storage;
mod tasks;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use serde::Serialize;
use tracing::{info, Instrument};

use crate::Node;
pub use call::{Call, PREFIX};
pub use error::ApiError;

/// Proxmox delays every 401 by this much to slow down password guessing.
pub const AUTH_FAILURE_DELAY: Duration = Duration::from_secs(3);

/// A successful answer: `{"data": …}` plus `total` for paged lists.
#[derive(Debug)]
pub struct Data {
    data: serde_json::Value,
    total: Option<u64>,
}

impl Data {
    pub fn new(value: impl Serialize) -> Result<Self, ApiError> {
        let data = serde_json::to_value(value)
            .map_err(|e| ApiError::runtime(format!("failed to encode the answer: {e}")))?;
        Ok(Self { data, total: None })
    }

    pub fn null() -> Self {
        Self {
            data: serde_json::Value::Null,
            total: None,
        }
    }

    pub fn with_total(mut self, total: u64) -> Self {
        self.total = Some(total);
        self
    }
}

impl IntoResponse for Data {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "data": self.data });
        if let Some(total) = self.total {
            body["total"] = total.into();
        }
        axum::Json(body).into_response()
    }
}

pub type ApiResult = Result<Data, ApiError>;

/// Builds the router of every endpoint.
pub fn router(node: Arc<Node>) -> Router {
    let api = Router::new()
        .route("/version", get(nodes::version))
        .route(
            "/access/ticket",
            get(access::ticket_get).post(access::ticket_post),
        )
        .route("/nodes", get(nodes::list))
        .route("/nodes/{node}/status", get(nodes::status))
        .route("/cluster/resources", get(cluster::resources))
        .route("/cluster/nextid", get(cluster::nextid))
        .route("/nodes/{node}/tasks", get(tasks::list))
        .route(
            "/nodes/{node}/tasks/{upid}",
            get(tasks::index).delete(tasks::stop),
        )
        .route("/nodes/{node}/tasks/{upid}/status", get(tasks::status))
        .route("/nodes/{node}/tasks/{upid}/log", get(tasks::log))
        .route("/nodes/{node}/storage", get(storage::list))
        .route(
            "/nodes/{node}/storage/{storage}/content",
            get(storage::content),
        )
        .route(
            "/nodes/{node}/storage/{storage}/content/{volume}",
            get(storage::volume_get)
                .put(storage::volume_put)
                .delete(storage::volume_delete),
        )
        .route(
            "/nodes/{node}/vzdump/extractconfig",
            get(storage::extractconfig),
        )
        .route("/nodes/{node}/qemu", get(qemu::list).post(qemu::create))
        .route("/nodes/{node}/vzdump", post(backup::vzdump))
        .route(
            "/nodes/{node}/qemu/{vmid}",
            get(qemu::index).delete(qemu::destroy),
        )
        .route(
            "/nodes/{node}/qemu/{vmid}/config",
            get(qemu::config_get)
                .post(qemu::config_post)
                .put(qemu::config_put),
        )
        .route("/nodes/{node}/qemu/{vmid}/pending", get(qemu::pending))
        .route("/nodes/{node}/qemu/{vmid}/status", get(qemu::status_index))
        .route(
            "/nodes/{node}/qemu/{vmid}/status/current",
            get(qemu::status_current),
        )
        .route("/nodes/{node}/qemu/{vmid}/status/start", post(qemu::start))
        .route("/nodes/{node}/qemu/{vmid}/status/stop", post(qemu::stop))
        .route(
            "/nodes/{node}/qemu/{vmid}/status/shutdown",
            post(qemu::shutdown),
        )
        .route(
            "/nodes/{node}/qemu/{vmid}/status/reboot",
            post(qemu::reboot),
        )
        .route("/nodes/{node}/qemu/{vmid}/status/reset", post(qemu::reset))
        .route(
            "/nodes/{node}/qemu/{vmid}/status/suspend",
            post(qemu::suspend),
        )
        .route(
            "/nodes/{node}/qemu/{vmid}/status/resume",
            post(qemu::resume),
        )
        .route("/nodes/{node}/qemu/{vmid}/resize", put(qemu::resize))
        .route("/nodes/{node}/qemu/{vmid}/template", post(clone::template))
        .route("/nodes/{node}/qemu/{vmid}/clone", post(clone::clone))
        .route(
            "/nodes/{node}/qemu/{vmid}/migrate",
            get(migrate::check).post(migrate::migrate),
        )
        .route(
            "/nodes/{node}/hemiron/migration/{vmid}/{action}",
            post(migrate::incoming),
        )
        .route(
            "/nodes/{node}/qemu/{vmid}/cloudinit",
            get(clone::cloudinit_get).put(clone::cloudinit_put),
        )
        .route(
            "/nodes/{node}/qemu/{vmid}/cloudinit/dump",
            get(clone::cloudinit_dump),
        )
        .route(
            "/nodes/{node}/qemu/{vmid}/snapshot",
            get(snapshot::list).post(snapshot::create),
        )
        .route(
            "/nodes/{node}/qemu/{vmid}/snapshot/{snapname}",
            get(snapshot::index).delete(snapshot::delete),
        )
        .route(
            "/nodes/{node}/qemu/{vmid}/snapshot/{snapname}/config",
            get(snapshot::config_get).put(snapshot::config_put),
        )
        .route(
            "/nodes/{node}/qemu/{vmid}/snapshot/{snapname}/rollback",
            post(snapshot::rollback),
        )
        .method_not_allowed_fallback(not_implemented)
        .fallback(not_implemented)
        // Inside authentication: the caller is checked here, the peer trusts this node.
        .layer(axum::middleware::from_fn_with_state(node.clone(), proxyto))
        .layer(axum::middleware::from_fn_with_state(
            node.clone(),
            authenticate,
        ))
        .with_state(node.clone());
    let metrics = observe::Metrics::new();
    let outside = Router::new()
        .route("/healthz", get(observe::healthz))
        .route("/metrics", get(observe::metrics))
        .with_state(observe::ObserveState {
            node,
            metrics: metrics.clone(),
        });
    Router::new()
        .nest(PREFIX, api)
        .merge(outside)
        .fallback(not_implemented)
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            observe::count,
        ))
        .layer(axum::middleware::from_fn(trace_request))
}

async fn not_implemented(method: Method, uri: axum::http::Uri) -> ApiError {
    let path = uri.path().trim_start_matches(PREFIX);
    ApiError::NotImplemented(format!("Method '{method} {path}' not implemented"))
}

/// One span per request, and one log line with the outcome.
async fn trace_request(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let span = tracing::info_span!("request", %method, %path);
    async move {
        let started = Instant::now();
        let resp = next.run(req).await;
        info!(
            status = resp.status().as_u16(),
            ms = started.elapsed().as_millis() as u64,
            "request"
        );
        resp
    }
    .instrument(span)
    .await
}

fn cookie_value<'a>(cookies: &'a str, name: &str) -> Option<&'a str> {
    cookies.split(';').find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

/// Authenticates every call but `/access/ticket`, which is how one logs in.
async fn authenticate(State(node): State<Arc<Node>>, mut req: Request, next: Next) -> Response {
    // Exactly the login path (inside the nested API router, or with its prefix): a path
    // that merely ends like it (`/nodes/x/../access/ticket`) is not exempt.
    let path = req.uri().path();
    if path == "/access/ticket" || path == format!("{PREFIX}/access/ticket") {
        return next.run(req).await;
    }
    let headers = req.headers();
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| cookie_value(c, "PVEAuthCookie").map(str::to_string));
    // Cookies are URI-escaped (not form-encoded: a `+` in the signature stays a `+`).
    let cookie = cookie.map(|c| crate::auth::percent_decode(&c));
    let csrf = headers
        .get("CSRFPreventionToken")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let is_read = req.method() == Method::GET || req.method() == Method::HEAD;
    match node.auth.authenticate(
        authorization.as_deref(),
        cookie.as_deref(),
        csrf.as_deref(),
        is_read,
    ) {
        Ok(principal) => {
            let user = principal.display_name().to_string();
            req.extensions_mut().insert(principal);
            tracing::Span::current().record("user", user.as_str());
            next.run(req).await
        }
        Err(err) => {
            tracing::debug!(error = %err, "authentication failed");
            tokio::time::sleep(AUTH_FAILURE_DELAY).await;
            ApiError::Unauthorized(err.to_string()).into_response()
        }
    }
}

/// Hands a call for another node of the cluster (`/nodes/{other}/…`) to that node, as
/// Proxmox's `proxyto` does, and passes its answer back unchanged. Calls for this node, for
/// nodes the cluster does not name, and everything outside `/nodes/{node}` are served here.
async fn proxyto(State(node): State<Arc<Node>>, req: Request, next: Next) -> Response {
    let Some(cluster) = &node.cluster else {
        return next.run(req).await;
    };
    let path = req.uri().path();
    let rest = path.strip_prefix(PREFIX).unwrap_or(path);
    let Some(target) = rest
        .strip_prefix("/nodes/")
        .and_then(|r| r.split('/').next())
        .filter(|t| !t.is_empty() && *t != node.name)
    else {
        return next.run(req).await;
    };
    let Some(peer) = cluster.peer(target) else {
        return next.run(req).await;
    };
    // The peer's HTTP client would resolve dot segments: a call for one node must not
    // reach any other path there.
    let dotted = rest.split('/').any(|seg| {
        let lower = seg.to_ascii_lowercase().replace("%2e", ".");
        lower == "." || lower == ".."
    });
    if dotted {
        return ApiError::BadRequest("path segments '.' and '..' are not allowed".into())
            .into_response();
    }
    if let Some(by) = req.headers().get(crate::cluster::FORWARDED_BY_HEADER) {
        // Two nodes whose files disagree would pass the call back and forth.
        return ApiError::runtime(format!(
            "call for node '{target}' forwarded here by {} although this is node '{}'; check the cluster files",
            String::from_utf8_lossy(by.as_bytes()),
            node.name
        ))
        .into_response();
    }
    let method = req.method().clone();
    let path_and_query = match req.uri().query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_string(),
    };
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = match axum::body::to_bytes(req.into_body(), call::MAX_BODY).await {
        Ok(b) => b.to_vec(),
        Err(e) => {
            return ApiError::BadRequest(format!("unreadable request body: {e}")).into_response()
        }
    };
    let span = tracing::info_span!("proxyto", node = %peer.name);
    let answer = peer
        .forward(hemiron_pve_client::Forward {
            method,
            path_and_query: &path_and_query,
            content_type: content_type.as_deref(),
            body,
            headers: &[(crate::cluster::FORWARDED_BY_HEADER, &node.name)],
        })
        .instrument(span)
        .await;
    match answer {
        Ok(a) => forwarded_response(a),
        Err(e) => ApiError::Unreachable(format!("node '{}' is unreachable: {e}", peer.name))
            .into_response(),
    }
}

/// A peer's answer as this node's, the reason phrase included (Proxmox clients read errors
/// from it).
fn forwarded_response(a: hemiron_pve_client::Forwarded) -> Response {
    let status =
        axum::http::StatusCode::from_u16(a.status).unwrap_or(axum::http::StatusCode::BAD_GATEWAY);
    let reason = (!status.is_success())
        .then(|| serde_json::from_slice::<serde_json::Value>(&a.body).ok())
        .flatten()
        .and_then(|b| b["message"].as_str().map(error::reason_phrase));
    let mut resp = (status, a.body).into_response();
    if let Some(ct) = a
        .content_type
        .and_then(|c| header::HeaderValue::from_str(&c).ok())
    {
        resp.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    if let Some(r) = reason.and_then(|r| hyper::ext::ReasonPhrase::try_from(r.into_bytes()).ok()) {
        resp.extensions_mut().insert(r);
    }
    resp
}

/// Refuses a call for another node: without a cluster, only this node exists.
pub fn check_node(node: &Node, name: &str) -> Result<(), ApiError> {
    if name == node.name {
        Ok(())
    } else {
        Err(ApiError::runtime(format!("no such node '{name}'")))
    }
}
