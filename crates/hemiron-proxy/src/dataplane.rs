//! The data plane: accepts HTTP/1.1 and HTTP/2 (h2c, or TLS with ALPN), picks the app, the
//! version and an endpoint for each request, forwards it over a keep-alive pool, and
//! measures it. Built on hyper 1.x + hyper-util (see the README for why not Pingora).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tower::retry::budget::Budget;

use crate::engine::Shared;
use crate::routing::{Ask, Reason};
use crate::runtime::{now_ms, UpstreamBody, VersionRt};

/// Request bodies up to this size are buffered, so that a failed connect can be retried.
pub(crate) const BUFFER_LIMIT: u64 = 64 * 1024;

/// The response body: an upstream's, streamed, or one the proxy made.
pub enum ProxyBody {
    Upstream {
        inner: Incoming,
        guard: Inflight,
        /// Set once the body has waited on the upstream: what wakes it when the version's
        /// drain times out, so that a stalled body is cancelled then and not when (if ever)
        /// the upstream sends more.
        drain: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    },
    Local(Full<Bytes>),
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            ProxyBody::Upstream {
                inner,
                guard,
                drain,
            } => {
                let cancelled = |guard: &mut Inflight| {
                    guard.cancelled();
                    Poll::Ready(Some(Err("cancelled: the version's drain timed out".into())))
                };
                if guard.token.is_cancelled() {
                    return cancelled(guard);
                }
                match Pin::new(inner).poll_frame(cx) {
                    Poll::Pending => {
                        let wait = drain.get_or_insert_with(|| {
                            Box::pin(CancellationToken::clone(&guard.token).cancelled_owned())
                        });
                        if wait.as_mut().poll(cx).is_ready() {
                            return cancelled(guard);
                        }
                        Poll::Pending
                    }
                    ready => ready.map_err(Into::into),
                }
            }
            ProxyBody::Local(full) => Pin::new(full).poll_frame(cx).map_err(|e| match e {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream { inner, .. } => inner.is_end_stream(),
            ProxyBody::Local(full) => full.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream { inner, .. } => inner.size_hint(),
            ProxyBody::Local(full) => full.size_hint(),
        }
    }
}

/// Counts a request in flight on its version until dropped (after its body is sent).
pub struct Inflight {
    rt: Arc<VersionRt>,
    token: Arc<CancellationToken>,
    counted_cancel: bool,
}

impl Inflight {
    pub fn new(rt: Arc<VersionRt>) -> Inflight {
        rt.metrics.inflight.inc();
        let token = rt.drain.load_full();
        Inflight {
            rt,
            token,
            counted_cancel: false,
        }
    }

    pub fn cancelled(&mut self) {
        if !self.counted_cancel {
            self.counted_cancel = true;
            self.rt.metrics.drain_cancelled.inc();
        }
    }
}

impl Drop for Inflight {
    fn drop(&mut self) {
        self.rt.metrics.inflight.dec();
    }
}

/// Per-connection context.
#[derive(Clone)]
pub struct Conn {
    pub shared: Arc<Shared>,
    pub peer: SocketAddr,
    /// The peer's address as a header value, made once per connection.
    pub peer_header: HeaderValue,
    pub tls: bool,
}

impl Conn {
    pub fn new(shared: Arc<Shared>, peer: SocketAddr, tls: bool) -> Conn {
        let peer_header = HeaderValue::from_str(&peer.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Conn {
            shared,
            peer,
            peer_header,
            tls,
        }
    }
}

fn local(status: StatusCode, message: &'static str) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::Local(Full::new(Bytes::from_static(
        message.as_bytes(),
    ))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The request's host, lower case, without port.
fn host_of(req: &Request<Incoming>) -> String {
    host_name(
        req.uri().host(),
        req.headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok()),
    )
}

/// The host name a request names: the URI's authority (HTTP/2, absolute-form) or else the
/// `Host` header, without its port or IPv6 brackets, in lower case.
pub(crate) fn host_name(authority: Option<&str>, host_header: Option<&str>) -> String {
    let raw = match (authority, host_header) {
        (Some(a), _) => a,
        (None, Some(h)) => match h.rsplit_once(':') {
            Some((name, port))
                if port.bytes().all(|b| b.is_ascii_digit()) && !name.ends_with(':') =>
            {
                name
            }
            _ => h,
        },
        (None, None) => "",
    };
    raw.trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
}

/// Looks up cookies by name over every `Cookie` header.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    cookie_in(
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok()),
        name,
    )
}

/// Looks up a cookie by name over `Cookie` header values.
pub(crate) fn cookie_in<'a>(values: impl Iterator<Item = &'a str>, name: &str) -> Option<&'a str> {
    values
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry none: one pass over the names instead of seven hashed removals.
    if !headers.keys().any(|k| HOP_BY_HOP.contains(k)) {
        return;
    }
    if let Some(conn) = headers.get(header::CONNECTION) {
        let named: Vec<HeaderName> = conn
            .to_str()
            .unwrap_or("")
            .split(',')
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .filter(|n| !(keep_upgrade && *n == header::UPGRADE))
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    for h in &HOP_BY_HOP {
        if keep_upgrade && (*h == header::UPGRADE || *h == header::CONNECTION) {
            continue;
        }
        headers.remove(h);
    }
}

fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

pub(crate) fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// The version a request was admitted on, taken from the routing table at admission: the
/// request then runs on it, whatever the table says later.
pub struct Admitted {
    pub rt: Arc<VersionRt>,
    pub reason: Reason,
    /// The session cookie to set on the answer, if the session is new or moved.
    pub set_cookie: Option<HeaderValue>,
    pub settings: Arc<crate::config::ProxySettings>,
}

/// Why a request found nothing to serve it.
#[derive(Debug, Clone, Copy)]
pub enum Refused {
    NoApp,
    NoVersion,
    /// The fast path asked for an app it does not serve (one with an HTTP/2 version):
    /// the connection goes to hyper, nothing was chosen or counted.
    Handoff,
}

impl Refused {
    pub fn status(self) -> StatusCode {
        match self {
            Refused::NoApp => StatusCode::NOT_FOUND,
            Refused::NoVersion => StatusCode::SERVICE_UNAVAILABLE,
            Refused::Handoff => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Refused::NoApp => "no app is configured for this host and path\n",
            Refused::NoVersion => "no version to serve\n",
            Refused::Handoff => "the request was not handed over\n",
        }
    }
}

/// Who asks [`admit`]: the HTTP/1.1 fast path serves apps whose versions all speak
/// HTTP/1.1; hyper serves every app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    Fast,
    Hyper,
}

/// Chooses the app, version and session cookie for a request, whatever its protocol:
/// `header` looks up a request header, `cookie` a cookie; `now` is Unix seconds.
#[allow(clippy::too_many_arguments)] // each is one fact of the request, read once
pub fn admit<'a>(
    shared: &Shared,
    host: &str,
    path: &str,
    header: impl FnOnce(&str) -> Option<&'a str>,
    cookie: impl Fn(&str) -> Option<&'a str>,
    tls: bool,
    now: u64,
    by: Path,
) -> Result<Admitted, Refused> {
    let routes = shared.routes.load();
    let app = routes.find(host, path).ok_or(Refused::NoApp)?;
    if by == Path::Fast && app.hyper_only {
        return Err(Refused::Handoff);
    }
    let settings = &routes.settings;
    let override_version =
        header(settings.override_header.as_str()).or_else(|| cookie(&settings.override_cookie));
    let sticky = cookie(&app.session_cookie).and_then(|c| routes.signer.verify(&app.name, c, now));
    let ticket = app.shared.tickets.fetch_add(1, Ordering::Relaxed);
    let ask = Ask {
        override_version,
        sticky,
    };
    let table = &app.table;
    let (index, reason) = match table.choose(ask, ticket) {
        Some(d) => (
            table
                .versions()
                .iter()
                .position(|v| v.id == d.version.id)
                .unwrap_or(0),
            d.reason,
        ),
        // Nothing healthy anywhere: the heaviest version, failing open.
        None => (
            table
                .versions()
                .iter()
                .enumerate()
                .max_by_key(|(_, v)| v.weight)
                .map_or(0, |(i, _)| i),
            Reason::Fallback,
        ),
    };
    let rt = app.versions.get(index).cloned().ok_or(Refused::NoVersion)?;
    let set_cookie = if reason == Reason::Weighted
        || reason == Reason::Fallback
        || sticky.is_some_and(|s| s != rt.id)
    {
        rt.session_cookie(&routes.signer, &app.session_cookie, settings, now, tls)
    } else {
        None
    };
    shared.retry_budget.deposit();
    Ok(Admitted {
        rt,
        reason,
        set_cookie,
        settings: settings.clone(),
    })
}

/// How a request ended, for the measurements and the access log.
pub struct Outcome<'a> {
    pub method: &'a str,
    pub host: &'a str,
    pub path: Option<&'a str>,
    /// 0: no response.
    pub status: u16,
    pub endpoint: Option<&'a str>,
    pub attempts: u32,
    pub error: Option<&'a str>,
}

/// Measures a request once its response headers are known (or it failed): per-version
/// counts and latency, the analysis sample, and the access-log line.
pub fn record(conn: &Conn, admitted: &Admitted, started: Instant, outcome: &Outcome<'_>) {
    let rt = &admitted.rt;
    let latency = started.elapsed();
    let status = outcome.status;
    let class = usize::from(status / 100).min(5);
    rt.metrics.requests[class].inc();
    rt.metrics.duration.observe(latency.as_secs_f64());
    rt.sample(status >= 500 || status == 0, latency);
    log_access(conn, latency, outcome, Some((rt, admitted.reason)));
}

/// Writes the access-log line of a request the proxy answered itself, without an upstream:
/// no app for its host and path, or a request it could not read (`error` says why; an empty
/// method or host was not read).
pub fn record_local(
    conn: &Conn,
    started: Instant,
    method: &str,
    host: &str,
    path: Option<&str>,
    status: http::StatusCode,
    message: &str,
) {
    let outcome = Outcome {
        method,
        host,
        path,
        status: status.as_u16(),
        endpoint: None,
        attempts: 0,
        error: Some(message.trim_end()),
    };
    log_access(conn, started.elapsed(), &outcome, None);
}

/// One JSON access-log line; `served` is the version that served it and how it was chosen.
fn log_access<'a>(
    conn: &Conn,
    latency: Duration,
    outcome: &Outcome<'a>,
    served: Option<(&VersionRt, Reason)>,
) {
    let Some(log) = &conn.shared.access_log else {
        return;
    };
    // A request answered locally may not have been read far enough to have these.
    let read = |v: &'a str| (served.is_some() || !v.is_empty()).then_some(v);
    let route = served.map_or_else(
        || "local".to_owned(),
        |(_, reason)| format!("{reason:?}").to_ascii_lowercase(),
    );
    let line = serde_json::json!({
        "time": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        "remote": conn.peer.ip().to_string(),
        "method": read(outcome.method),
        "host": read(outcome.host),
        "path": outcome.path,
        "status": outcome.status,
        "app": served.map(|(rt, _)| rt.app.as_str()),
        "version": served.map(|(rt, _)| rt.id.as_str()),
        "route": route,
        "endpoint": outcome.endpoint,
        "attempts": outcome.attempts,
        "duration_ms": (latency.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
        "error": outcome.error,
    });
    let _ = log.send(line.to_string());
}

/// Serves one request (HTTP/2, and the HTTP/1 requests the fast path hands over).
pub async fn handle(req: Request<Incoming>, conn: Conn) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    let shared = &conn.shared;
    let host = host_of(&req);
    let admitted = match admit(
        shared,
        &host,
        req.uri().path(),
        |name| req.headers().get(name).and_then(|v| v.to_str().ok()),
        |name| cookie(req.headers(), name),
        conn.tls,
        shared.unix_secs(started),
        Path::Hyper,
    ) {
        Ok(a) => a,
        Err(refused) => {
            record_local(
                &conn,
                started,
                req.method().as_str(),
                &host,
                req.uri().path_and_query().map(|p| p.as_str()),
                refused.status(),
                refused.message(),
            );
            return Ok(local(refused.status(), refused.message()));
        }
    };
    let rt = admitted.rt.clone();
    let guard = Inflight::new(rt.clone());
    let method = req.method().clone();
    let path = req.uri().path_and_query().map(|p| p.as_str().to_owned());
    let mut resp = forward(req, &conn, &rt, &admitted.settings, &host).await;
    record(
        &conn,
        &admitted,
        started,
        &Outcome {
            method: method.as_str(),
            host: &host,
            path: path.as_deref(),
            status: resp.status.map(|s| s.as_u16()).unwrap_or(0),
            endpoint: resp.endpoint.as_deref(),
            attempts: resp.attempts,
            error: resp.error.as_deref(),
        },
    );

    let mut response = match resp.response.take() {
        Some(r) => {
            let (parts, body) = r.into_parts();
            Response::from_parts(
                parts,
                ProxyBody::Upstream {
                    inner: body,
                    guard,
                    drain: None,
                },
            )
        }
        None => {
            drop(guard);
            match resp.error_status {
                s if s == StatusCode::GATEWAY_TIMEOUT => {
                    local(s, "the upstream did not answer in time\n")
                }
                s if s == StatusCode::NOT_IMPLEMENTED => local(
                    s,
                    "this version speaks HTTP/2 to its upstreams: upgrades and CONNECT need an http1 version\n",
                ),
                s => local(s, "the upstream could not be reached\n"),
            }
        }
    };
    let headers = response.headers_mut();
    if admitted.settings.expose_version {
        if let Ok(v) = HeaderValue::from_str(&rt.id) {
            headers.insert(HeaderName::from_static("x-hemiron-version"), v);
        }
    }
    if let Some(c) = admitted.set_cookie {
        headers.append(header::SET_COOKIE, c);
    }
    Ok(response)
}

/// What forwarding produced.
struct Forwarded {
    response: Option<Response<Incoming>>,
    status: Option<StatusCode>,
    error_status: StatusCode,
    error: Option<String>,
    endpoint: Option<String>,
    attempts: u32,
}

async fn forward(
    mut req: Request<Incoming>,
    conn: &Conn,
    rt: &Arc<VersionRt>,
    settings: &crate::config::ProxySettings,
    host: &str,
) -> Forwarded {
    let shared = &conn.shared;
    let upgrade = wants_upgrade(req.headers());
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let h2 = rt.spec.protocol == crate::config::UpstreamProtocol::H2c;
    if h2 && (upgrade || parts.method == Method::CONNECT) {
        // HTTP/2 has no Upgrade, and a CONNECT would name the endpoint itself.
        return Forwarded {
            response: None,
            status: None,
            error_status: StatusCode::NOT_IMPLEMENTED,
            error: Some(format!(
                "version {} speaks HTTP/2 to its endpoints: upgrades and CONNECT need an http1 version",
                rt.id
            )),
            endpoint: None,
            attempts: 0,
        };
    }
    // The one `TE` HTTP/2 allows, and gRPC requires: it goes on to an h2c version.
    let te_trailers = h2
        && parts
            .headers
            .get(header::TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    strip_hop_by_hop(&mut parts.headers, upgrade);
    if te_trailers {
        parts
            .headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    // Forwarding headers.
    let peer_ip = conn.peer.ip().to_string();
    let xff = match parts
        .headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
    {
        Some(prior) => format!("{prior}, {peer_ip}"),
        None => peer_ip,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        parts
            .headers
            .insert(HeaderName::from_static("x-forwarded-for"), v);
    }
    parts.headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static(if conn.tls { "https" } else { "http" }),
    );
    let original_host = parts.headers.get(header::HOST).cloned();
    if original_host.is_none() {
        // HTTP/2 carries the host in :authority; upstreams speak HTTP/1.1.
        if let Some(a) = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            parts.headers.insert(header::HOST, a);
        }
    }
    let forwarded_host = match original_host {
        Some(h) => Some(h),
        None => HeaderValue::from_str(host).ok(),
    };
    if let Some(v) = forwarded_host {
        parts
            .headers
            .insert(HeaderName::from_static("x-forwarded-host"), v);
    }
    let path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));

    // A body we hold can be sent again; a large one is streamed once.
    let mut body = Some(body);
    let retryable_body: Option<Bytes> = match body.take() {
        Some(b) if b.is_end_stream() => Some(Bytes::new()),
        Some(b) if b.size_hint().upper().is_some_and(|n| n <= BUFFER_LIMIT) => {
            match b.collect().await {
                Ok(b) => Some(b.to_bytes()),
                Err(e) => {
                    return Forwarded {
                        response: None,
                        status: None,
                        error_status: StatusCode::BAD_REQUEST,
                        error: Some(format!("reading the request body: {e}")),
                        endpoint: None,
                        attempts: 0,
                    };
                }
            }
        }
        other => {
            body = other;
            None
        }
    };
    let mut streamed = body;
    let token = rt.drain.load_full();
    let now = now_ms(shared.epoch);
    let mut tried: Vec<usize> = Vec::new();
    let mut last_error = None;
    let mut error_status = StatusCode::BAD_GATEWAY;
    let attempts_max = rt.endpoints.len().max(1);
    for attempt in 1..=attempts_max {
        let Some(ei) = rt.pick(now, &tried) else {
            break;
        };
        tried.push(ei);
        let ep = rt.endpoints[ei].clone();
        let uri = match Uri::builder()
            .scheme("http")
            .authority(ep.authority.clone())
            .path_and_query(path_and_query.clone())
            .build()
        {
            Ok(u) => u,
            Err(e) => {
                last_error = Some(e.to_string());
                break;
            }
        };
        let body: UpstreamBody = match (&retryable_body, streamed.take()) {
            (Some(b), _) => Either::Left(Full::new(b.clone())),
            (None, Some(s)) => Either::Right(s),
            (None, None) => break,
        };
        let more_left = attempt < attempts_max && retryable_body.is_some();
        let mut up = Request::new(body);
        *up.method_mut() = parts.method.clone();
        *up.uri_mut() = uri;
        *up.headers_mut() = if more_left {
            parts.headers.clone()
        } else {
            std::mem::take(&mut parts.headers)
        };
        if h2 {
            *up.version_mut() = http::Version::HTTP_2;
            // :authority is the endpoint's address (the pool's key); a Host header that
            // differed from it would break HTTP/2's rules. The client's host is in
            // X-Forwarded-Host.
            up.headers_mut().remove(header::HOST);
        } else {
            *up.version_mut() = http::Version::HTTP_11;
        }
        let client = rt.client.load_full();
        let sent = tokio::select! {
            r = tokio::time::timeout(settings.response_timeout, client.request(up)) => r,
            () = token.cancelled() => {
                rt.metrics.drain_cancelled.inc();
                last_error = Some("cancelled: the version's drain timed out".into());
                break;
            }
        };
        match sent {
            Ok(Ok(mut resp)) => {
                ep.consecutive_connect.store(0, Ordering::Relaxed);
                let status = resp.status();
                passive_5xx(shared, rt, &ep, status, now);
                strip_hop_by_hop(
                    resp.headers_mut(),
                    status == StatusCode::SWITCHING_PROTOCOLS,
                );
                if status == StatusCode::SWITCHING_PROTOCOLS {
                    if let Some(down) = downstream_upgrade {
                        let up = hyper::upgrade::on(&mut resp);
                        tokio::spawn(tunnel(down, up, rt.clone(), token.clone()));
                    }
                }
                return Forwarded {
                    response: Some(resp),
                    status: Some(status),
                    error_status,
                    error: None,
                    endpoint: Some(ep.address.clone()),
                    attempts: u32::try_from(attempt).unwrap_or(u32::MAX),
                };
            }
            Ok(Err(e)) if e.is_connect() => {
                // Nothing reached the upstream: safe to send elsewhere, whatever the method.
                rt.metrics.connect_failure(&ep.address);
                passive_connect_failure(shared, rt, &ep, now);
                last_error = Some(format!("connect to {}: {e}", ep.address));
                if more_left {
                    rt.metrics.retries.inc();
                    continue;
                }
                break;
            }
            Ok(Err(e)) => {
                last_error = Some(format!("{}: {e}", ep.address));
                if more_left && idempotent(&parts.method) && shared.retry_budget.withdraw() {
                    rt.metrics.retries.inc();
                    continue;
                }
                break;
            }
            Err(_) => {
                last_error = Some(format!(
                    "{}: no response within {:?}",
                    ep.address, settings.response_timeout
                ));
                error_status = StatusCode::GATEWAY_TIMEOUT;
                if more_left && idempotent(&parts.method) && shared.retry_budget.withdraw() {
                    rt.metrics.retries.inc();
                    continue;
                }
                break;
            }
        }
    }
    if let Some(e) = &last_error {
        tracing::warn!(app = %rt.app, version = %rt.id, error = %e, "upstream request failed");
    }
    Forwarded {
        response: None,
        status: None,
        error_status,
        error: last_error,
        endpoint: None,
        attempts: u32::try_from(tried.len()).unwrap_or(u32::MAX),
    }
}

fn eject(shared: &Shared, rt: &VersionRt, ep: &crate::runtime::EndpointRt, now: u64, why: &str) {
    let n = ep.ejections.fetch_add(1, Ordering::Relaxed) + 1;
    let base = rt.outlier.base_ejection;
    let ms = u64::try_from(base.as_millis()).unwrap_or(30_000) * u64::from(n.min(10));
    ep.ejected_until.store(now + ms, Ordering::Relaxed);
    tracing::warn!(app = %rt.app, version = %rt.id, endpoint = %ep.address, ejection_ms = ms, why, "endpoint ejected");
    shared.health_changed.notify_one();
}

pub(crate) fn passive_5xx(
    shared: &Shared,
    rt: &VersionRt,
    ep: &crate::runtime::EndpointRt,
    status: StatusCode,
    now: u64,
) {
    if status.is_server_error() {
        let limit = rt.outlier.consecutive_5xx;
        let n = ep.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
        if limit > 0 && n >= limit {
            ep.consecutive_5xx.store(0, Ordering::Relaxed);
            eject(shared, rt, ep, now, "consecutive 5xx responses");
        }
    } else if ep.consecutive_5xx.load(Ordering::Relaxed) != 0 {
        ep.consecutive_5xx.store(0, Ordering::Relaxed);
    }
}

pub(crate) fn passive_connect_failure(
    shared: &Shared,
    rt: &VersionRt,
    ep: &crate::runtime::EndpointRt,
    now: u64,
) {
    let limit = rt.outlier.consecutive_connect_failures;
    let n = ep.consecutive_connect.fetch_add(1, Ordering::Relaxed) + 1;
    if limit > 0 && n >= limit {
        ep.consecutive_connect.store(0, Ordering::Relaxed);
        eject(shared, rt, ep, now, "consecutive connect failures");
    }
}

/// Copies an upgraded connection (WebSocket) both ways until either side closes, or the
/// version's drain times out: then the client gets a WebSocket close frame, code 1001
/// ("going away").
async fn tunnel(
    down: hyper::upgrade::OnUpgrade,
    up: hyper::upgrade::OnUpgrade,
    rt: Arc<VersionRt>,
    token: Arc<CancellationToken>,
) {
    let (down, up) = match tokio::try_join!(down, up) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let _inflight = Inflight::new(rt.clone());
    let mut down = TokioIo::new(down);
    let mut up = TokioIo::new(up);
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut down, &mut up) => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "tunnel ended");
            }
        }
        () = token.cancelled() => {
            rt.metrics.drain_cancelled.inc();
            // Close frame, unmasked (server to client), status 1001.
            let _ = down.write_all(&[0x88, 0x02, 0x03, 0xE9]).await;
            let _ = down.shutdown().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names() {
        assert_eq!(host_name(None, Some("Shop.Test:8080")), "shop.test");
        assert_eq!(host_name(None, Some("shop.test")), "shop.test");
        assert_eq!(host_name(None, Some("[::1]:8080")), "::1");
        assert_eq!(host_name(Some("h2.test"), Some("other")), "h2.test");
        assert_eq!(host_name(None, None), "");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_hosts_and_cookies_never_panic(host in "\\PC{0,80}", cookies in "\\PC{0,200}") {
            let name = host_name(None, Some(&host));
            proptest::prop_assert!(name.len() <= host.len());
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&cookies) {
                h.insert(header::COOKIE, v);
            }
            let _ = cookie(&h, "hemiron-session");
        }
    }

    #[test]
    fn cookies_and_hop_by_hop() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; hemiron-session=v1.x.9.y"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("b=\"2\""));
        assert_eq!(cookie(&h, "hemiron-session"), Some("v1.x.9.y"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "c"), None);

        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private, Upgrade"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        assert!(wants_upgrade(&h));
        let mut stripped = h.clone();
        strip_hop_by_hop(&mut stripped, false);
        assert_eq!(stripped.len(), 1);
        strip_hop_by_hop(&mut h, true);
        assert!(h.contains_key(header::UPGRADE) && h.contains_key(header::CONNECTION));
        assert!(!h.contains_key("x-private"));
    }
}
