//! What the data plane reads per request: the published [`Routes`] (swapped whole, atomically,
//! on every change) and the per-version runtimes they point to. A [`VersionRt`] outlives
//! table swaps: its endpoints' health, its connection pool, its in-flight count and its
//! measurements carry over from one table to the next, and a request that started on it
//! keeps its `Arc` until it ends, whatever the table says meanwhile.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Either;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::config::{self, App, ProxySettings};
use crate::metrics::VersionMetrics;
use crate::routing::Table;

/// A request body going upstream: buffered (so a failed connect can be retried) or streamed.
pub type UpstreamBody = Either<http_body_util::Full<Bytes>, hyper::body::Incoming>;
pub type UpstreamClient = Client<HttpConnector, UpstreamBody>;

/// Milliseconds since the proxy started (monotonic), for cheap atomic timestamps.
pub fn now_ms(epoch: Instant) -> u64 {
    ms_at(epoch, Instant::now())
}

/// An instant on the same millisecond clock as [`now_ms`].
pub fn ms_at(epoch: Instant, at: Instant) -> u64 {
    millis(at.saturating_duration_since(epoch))
}

/// One upstream address of a version.
#[derive(Debug)]
pub struct EndpointRt {
    pub address: String,
    pub authority: http::uri::Authority,
    /// Result of the active checks (true when there are none).
    pub active_ok: AtomicBool,
    /// Passive ejection: no traffic until this instant (ms on the proxy's clock).
    pub ejected_until: AtomicU64,
    pub ejections: AtomicU32,
    pub consecutive_5xx: AtomicU32,
    pub consecutive_connect: AtomicU32,
    /// Active checks: when the next one is due, and the current runs of results.
    pub next_check: AtomicU64,
    pub check_passes: AtomicU32,
    pub check_failures: AtomicU32,
    /// Whether an active check has run yet: the first one decides alone (a new endpoint
    /// that fails it is out at once rather than after `unhealthy_after` failures).
    pub checked: AtomicBool,
    /// The health last exported as a metric (2: never).
    pub reported: std::sync::atomic::AtomicU8,
    /// Idle keep-alive connections of the HTTP/1.1 fast path, most recently used last.
    idle: Mutex<Vec<IdleConn>>,
    /// Whether finished exchanges may pool their connection: not while the version drains,
    /// so that a drained version holds no idle connection to its upstreams.
    pooling: AtomicBool,
}

/// A pooled upstream connection and when it went idle (ms on the proxy's clock).
#[derive(Debug)]
struct IdleConn {
    stream: TcpStream,
    since: u64,
}

impl IdleConn {
    /// Neither timed out nor closed (or written to) by the upstream.
    fn usable(&self, now: u64, idle_timeout_ms: u64) -> bool {
        self.since + idle_timeout_ms > now && idle_alive(&self.stream)
    }
}

/// Whether an idle connection can carry a request: the upstream has neither closed it nor
/// sent anything unasked. Costs no system call unless the socket was signalled readable.
fn idle_alive(stream: &TcpStream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    match stream.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => {
            let mut probe = [0u8; 1];
            matches!(stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        }
    }
}

impl EndpointRt {
    /// Takes over what is known of the same address's health from the endpoint this one
    /// replaces (its version's endpoint list changed): a reload neither forgives an endpoint
    /// that is down nor tests again one that is up.
    pub fn inherit_health(&self, old: &EndpointRt) {
        macro_rules! copy {
            ($($field:ident),*) => {
                $(self.$field.store(old.$field.load(Ordering::Relaxed), Ordering::Relaxed);)*
            };
        }
        copy!(
            active_ok,
            checked,
            ejected_until,
            next_check,
            ejections,
            consecutive_5xx,
            consecutive_connect,
            check_passes,
            check_failures
        );
    }

    pub fn usable(&self, now: u64) -> bool {
        self.active_ok.load(Ordering::Relaxed) && self.ejected_until.load(Ordering::Relaxed) <= now
    }

    /// An idle pooled connection that is still good, if any (most recently used first: the
    /// warmest, and the least likely to have been closed by the upstream meanwhile).
    pub fn checkout(&self, now: u64, idle_timeout_ms: u64) -> Option<TcpStream> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(c) = idle.pop() {
            if c.usable(now, idle_timeout_ms) {
                return Some(c.stream);
            }
        }
        None
    }

    /// Returns a connection to the pool (closed instead when the pool is full).
    pub fn checkin(&self, stream: TcpStream, now: u64, max_idle: usize) {
        if !self.pooling.load(Ordering::Relaxed) {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < max_idle {
                idle.push(IdleConn { stream, since: now });
            }
        }
    }

    /// Closes idle connections that timed out or that the upstream closed.
    pub fn sweep(&self, now: u64, idle_timeout_ms: u64) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.retain(|c| c.usable(now, idle_timeout_ms));
        }
    }

    /// Closes every idle connection, and those returned later until [`EndpointRt::pool`].
    pub fn close_idle(&self) {
        self.pooling.store(false, Ordering::Relaxed);
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }
}

/// Latency samples kept per version and interval (a uniform sample beyond this).
pub const SAMPLE_CAP: usize = 20_000;

/// Requests measured in the current analysis interval.
#[derive(Debug, Default)]
pub struct Window {
    pub requests: u64,
    pub errors: u64,
    /// Latency to response headers, in milliseconds.
    pub latencies: Vec<f64>,
}

/// A signed `Set-Cookie` value, kept for the minute it was made in (and only for the cookie
/// name and lifetime it was made with: a reload may change them).
#[derive(Debug)]
pub struct CachedCookie {
    minute: u64,
    ttl: u64,
    name: Box<str>,
    value: Option<http::HeaderValue>,
}

/// A version of an app as the data plane sees it.
#[derive(Debug)]
pub struct VersionRt {
    pub app: String,
    pub id: String,
    pub endpoints: Vec<Arc<EndpointRt>>,
    /// Endpoint indexes repeated by weight, for weighted round robin.
    pick_order: Vec<usize>,
    next: AtomicUsize,
    pub client: ArcSwap<UpstreamClient>,
    pub metrics: VersionMetrics,
    /// Cancelled when this version's drain times out; replaced when it serves again.
    pub drain: ArcSwap<CancellationToken>,
    /// Whether the analysis is collecting samples from this version.
    pub collect: AtomicBool,
    pub window: Mutex<Window>,
    /// Bumped whenever the version starts or stops serving, so a drain in progress knows
    /// it was called off.
    pub drain_generation: AtomicU64,
    pub health: Option<config::HealthCheck>,
    pub outlier: config::Outlier,
    /// What it was built from, to tell whether a reload changed it.
    pub spec: Spec,
    /// The last `Set-Cookie` value made for this version, and the minute it was made in:
    /// signing once a minute instead of once per new session keeps HMAC off the hot path
    /// (sessions then expire on a minute boundary, which nobody can tell apart).
    cookie: ArcSwap<CachedCookie>,
    /// The fast path's pool limits (ms; connections per endpoint).
    pub pool_idle_ms: AtomicU64,
    pub pool_max_idle: AtomicUsize,
}

/// The configuration a version runtime is built from.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub endpoints: Vec<config::Endpoint>,
    pub protocol: config::UpstreamProtocol,
    pub health: Option<config::HealthCheck>,
    pub outlier: config::Outlier,
}

impl Spec {
    /// Whether a runtime built from this spec still fits the configuration (no copies).
    pub fn matches(&self, app: &App, version: &config::AppVersion) -> bool {
        self.endpoints == version.endpoints
            && self.protocol == version.protocol
            && self.health == app.health
            && self.outlier == app.outlier
    }

    pub fn of(app: &App, version: &config::AppVersion) -> Spec {
        Spec {
            endpoints: version.endpoints.clone(),
            protocol: version.protocol,
            health: app.health.clone(),
            outlier: app.outlier.clone(),
        }
    }
}

fn client(settings: &ProxySettings, protocol: config::UpstreamProtocol) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(settings.connect_timeout));
    connector.set_nodelay(true);
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(settings.pool_idle_timeout)
        .pool_max_idle_per_host(settings.pool_max_idle)
        .http2_only(protocol == config::UpstreamProtocol::H2c)
        .build(connector)
}

impl VersionRt {
    pub fn new(
        app: &App,
        version: &config::AppVersion,
        settings: &ProxySettings,
        metrics: VersionMetrics,
    ) -> VersionRt {
        let endpoints: Vec<Arc<EndpointRt>> = version
            .endpoints
            .iter()
            .filter_map(|e| {
                // Validated by the config loader; an unparsable one is left out, not fatal.
                let authority = e.address.parse().ok()?;
                Some(Arc::new(EndpointRt {
                    address: e.address.clone(),
                    authority,
                    // Until the first check says otherwise: a new endpoint takes traffic.
                    active_ok: AtomicBool::new(true),
                    ejected_until: AtomicU64::new(0),
                    ejections: AtomicU32::new(0),
                    consecutive_5xx: AtomicU32::new(0),
                    consecutive_connect: AtomicU32::new(0),
                    next_check: AtomicU64::new(0),
                    check_passes: AtomicU32::new(0),
                    check_failures: AtomicU32::new(0),
                    checked: AtomicBool::new(false),
                    reported: std::sync::atomic::AtomicU8::new(2),
                    idle: Mutex::new(Vec::new()),
                    pooling: AtomicBool::new(true),
                }))
            })
            .collect();
        let gcd = version
            .endpoints
            .iter()
            .map(|e| e.weight)
            .fold(0, num_gcd)
            .max(1);
        let mut pick_order = Vec::new();
        // Interleave (a a b a a b …) rather than (a a a a b b): spreads bursts.
        let mut left: Vec<u32> = version.endpoints.iter().map(|e| e.weight / gcd).collect();
        while left.iter().any(|&w| w > 0) {
            for (i, w) in left.iter_mut().enumerate() {
                if *w > 0 && i < endpoints.len() {
                    pick_order.push(i);
                    *w -= 1;
                }
            }
            if pick_order.is_empty() {
                break;
            }
        }
        VersionRt {
            app: app.name.clone(),
            id: version.id.clone(),
            endpoints,
            pick_order,
            next: AtomicUsize::new(0),
            client: ArcSwap::from_pointee(client(settings, version.protocol)),
            metrics,
            drain: ArcSwap::from_pointee(CancellationToken::new()),
            collect: AtomicBool::new(false),
            window: Mutex::new(Window::default()),
            drain_generation: AtomicU64::new(0),
            health: app.health.clone(),
            outlier: app.outlier.clone(),
            spec: Spec::of(app, version),
            cookie: ArcSwap::from_pointee(CachedCookie {
                minute: u64::MAX,
                ttl: 0,
                name: "".into(),
                value: None,
            }),
            pool_idle_ms: AtomicU64::new(millis(settings.pool_idle_timeout)),
            pool_max_idle: AtomicUsize::new(settings.pool_max_idle),
        }
    }

    /// Whether any endpoint takes traffic now.
    pub fn healthy(&self, now: u64) -> bool {
        self.endpoints.iter().any(|e| e.usable(now))
    }

    /// The next endpoint by weighted round robin, skipping unusable ones and `avoid`; if none
    /// is usable, the next one anyway (failing open beats refusing while checks catch up).
    pub fn pick(&self, now: u64, avoid: &[usize]) -> Option<usize> {
        let n = self.pick_order.len();
        if n == 0 {
            return None;
        }
        // A retry looks on from where the round robin is, without taking a turn: otherwise
        // every retry would shift the rotation and requests would keep starting on the
        // endpoint that just failed.
        let start = if avoid.is_empty() {
            self.next.fetch_add(1, Ordering::Relaxed)
        } else {
            self.next.load(Ordering::Relaxed)
        };
        let mut fallback = None;
        for k in 0..n {
            let i = self.pick_order[(start + k) % n];
            if avoid.contains(&i) {
                continue;
            }
            if self.endpoints[i].usable(now) {
                return Some(i);
            }
            fallback.get_or_insert(i);
        }
        fallback
    }

    /// Records a finished request for the analysis window.
    pub fn sample(&self, error: bool, latency: Duration) {
        if !self.collect.load(Ordering::Relaxed) {
            return;
        }
        if let Ok(mut w) = self.window.lock() {
            w.requests += 1;
            w.errors += u64::from(error);
            let ms = latency.as_secs_f64() * 1000.0;
            if w.latencies.len() < SAMPLE_CAP {
                w.latencies.push(ms);
            } else {
                // Reservoir sampling (Vitter's algorithm R): every request of the interval
                // has the same chance to be in the sample, and memory stays bounded.
                let slot = crate::routing::mix(w.requests) % w.requests;
                if let Some(s) = usize::try_from(slot)
                    .ok()
                    .and_then(|i| w.latencies.get_mut(i))
                {
                    *s = ms;
                }
            }
        }
    }

    /// Takes the current window, leaving an empty one.
    pub fn take_window(&self) -> Window {
        self.window
            .lock()
            .map(|mut w| std::mem::take(&mut *w))
            .unwrap_or_default()
    }

    /// The `Set-Cookie` header pinning a session to this version: `name` is the app's session
    /// cookie ([`AppRoute::session_cookie`]).
    pub fn session_cookie(
        &self,
        signer: &crate::sticky::Signer,
        name: &str,
        settings: &ProxySettings,
        now: u64,
        secure: bool,
    ) -> Option<http::HeaderValue> {
        let minute = now / 60;
        let ttl = settings.session_ttl.as_secs();
        let cached = self.cookie.load();
        if !secure && cached.minute == minute && cached.ttl == ttl && *cached.name == *name {
            return cached.value.clone();
        }
        let value = signer
            .sign(&self.app, &self.id, (minute + 1) * 60 + ttl)
            .and_then(|v| {
                http::HeaderValue::from_str(&format!(
                    "{name}={v}; Path=/; Max-Age={ttl}; HttpOnly; SameSite=Lax{}",
                    if secure { "; Secure" } else { "" }
                ))
                .ok()
            });
        if !secure {
            self.cookie.store(Arc::new(CachedCookie {
                minute,
                ttl,
                name: name.into(),
                value: value.clone(),
            }));
        }
        value
    }

    /// Closes idle pooled connections, now and as requests finish (a draining version keeps
    /// only its in-flight ones).
    pub fn close_idle(&self, settings: &ProxySettings) {
        self.client
            .store(Arc::new(client(settings, self.spec.protocol)));
        for ep in &self.endpoints {
            ep.close_idle();
        }
    }

    /// Takes new pool and connect settings (a reload): the fast path's limits at once, and a
    /// new pooled client for what follows (requests in flight keep the one they have).
    pub fn apply_settings(&self, settings: &ProxySettings) {
        self.pool_idle_ms
            .store(millis(settings.pool_idle_timeout), Ordering::Relaxed);
        self.pool_max_idle
            .store(settings.pool_max_idle, Ordering::Relaxed);
        self.client
            .store(Arc::new(client(settings, self.spec.protocol)));
    }

    /// Pools connections again (the version serves again).
    pub fn pool(&self) {
        for ep in &self.endpoints {
            ep.pooling.store(true, Ordering::Relaxed);
        }
    }

    /// Closes the fast path's idle connections that timed out or were closed upstream.
    pub fn sweep_idle(&self, now: u64) {
        for ep in &self.endpoints {
            ep.sweep(now, self.pool_idle_ms.load(Ordering::Relaxed));
        }
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn num_gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        num_gcd(b, a % b)
    }
}

/// State an app keeps across table swaps.
#[derive(Debug)]
pub struct AppShared {
    /// Numbers new sessions for the weighted choice (see `routing`).
    pub tickets: AtomicU64,
}

impl AppShared {
    pub fn new(app: &str) -> AppShared {
        AppShared {
            tickets: AtomicU64::new(crate::routing::first_ticket(app)),
        }
    }
}

/// What requests are matched to an app by.
#[derive(Debug)]
pub struct RouteKeys {
    pub hosts: Vec<String>,
    pub paths: Vec<String>,
}

/// One app in the published routes.
#[derive(Debug)]
pub struct AppRoute {
    pub name: Box<str>,
    pub keys: Arc<RouteKeys>,
    /// The name of the cookie that pins this app's sessions: the configured name and the
    /// app's (`hemiron-session-web`), so that apps sharing a host keep their own pins.
    pub session_cookie: Box<str>,
    pub table: Table,
    /// Aligned with `table.versions()`.
    pub versions: Vec<Arc<VersionRt>>,
    pub shared: Arc<AppShared>,
    /// A version speaks HTTP/2 to its endpoints: the app's requests go through hyper's
    /// client, and the HTTP/1.1 fast path hands such connections to hyper before choosing.
    pub hyper_only: bool,
}

/// Everything the data plane routes by, swapped whole.
#[derive(Debug)]
pub struct Routes {
    pub apps: Vec<Arc<AppRoute>>,
    pub settings: Arc<ProxySettings>,
    pub signer: crate::sticky::Signer,
    pub generation: u64,
}

impl Routes {
    /// The app for a host (lower case, no port) and path: the longest matching path prefix
    /// among apps whose hosts match (an app without hosts matches every host, after those
    /// that name it).
    pub fn find(&self, host: &str, path: &str) -> Option<&Arc<AppRoute>> {
        let mut best: Option<(&Arc<AppRoute>, usize, bool)> = None;
        for app in &self.apps {
            let named = app.keys.hosts.iter().any(|h| config::host_matches(h, host));
            if !named && !app.keys.hosts.is_empty() {
                continue;
            }
            for prefix in &app.keys.paths {
                if prefix_matches(prefix, path) {
                    let better = match best {
                        None => true,
                        Some((_, len, was_named)) => (named, prefix.len()) > (was_named, len),
                    };
                    if better {
                        best = Some((app, prefix.len(), named));
                    }
                }
            }
        }
        best.map(|(a, _, _)| a)
    }
}

/// `/api` matches `/api`, `/api/x` and `/api?q`, not `/apix`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api", "/api/v1"));
        assert!(!prefix_matches("/api", "/apix"));
        assert!(prefix_matches("/api/", "/api/x"));
    }

    #[test]
    fn weighted_round_robin_interleaves_and_skips_avoided() {
        let app = crate::config::parse(
            "[[listeners]]\naddress=\"127.0.0.1:1\"\n[apps.a.versions.v]\nendpoints=[{address=\"127.0.0.1:2\",weight=2},\"127.0.0.1:3\"]\n",
            std::path::Path::new("."),
        )
        .unwrap()
        .apps
        .remove(0);
        let settings = crate::config::parse(
            "[[listeners]]\naddress=\"127.0.0.1:1\"\n[apps.a.versions.v]\nendpoints=[\"127.0.0.1:2\"]\n",
            std::path::Path::new("."),
        )
        .unwrap()
        .proxy;
        let metrics = crate::metrics::Metrics::new();
        let v = VersionRt::new(&app, &app.versions[0], &settings, metrics.version("a", "v"));
        let picks: Vec<usize> = (0..6).map(|_| v.pick(0, &[]).unwrap()).collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 4);
        assert_eq!(v.pick(0, &[0]), Some(1));
        v.endpoints[1].active_ok.store(false, Ordering::Relaxed);
        assert_eq!(
            v.pick(0, &[0]),
            Some(1),
            "fails open when nothing else is left"
        );
        assert!(v.healthy(0));
    }
}
