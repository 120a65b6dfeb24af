//! The proxy's configuration file (TOML): listeners, certificates, apps and their versions.
//!
//! The file declares *what exists*; which version gets how much traffic belongs to the
//! rollout engine and its state file. Loading checks everything and reports every problem
//! at once, each with the path of the offending key, so an operator fixes a file in one go;
//! an invalid file changes nothing.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::sticky::valid_version_id;

/// A configuration that could not be loaded: every problem found, one per line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path} has {} problem(s):\n{}", .problems.len(), .problems.join("\n"))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub proxy: ProxySettings,
    pub listeners: Vec<Listener>,
    pub certificates: Vec<Certificate>,
    /// In routing order (the order of the file).
    pub apps: Vec<App>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProxySettings {
    /// Worker threads of the data plane (0: one per CPU).
    pub workers: usize,
    pub drain_timeout: Duration,
    pub connect_timeout: Duration,
    /// From the request sent upstream to its response headers.
    pub response_timeout: Duration,
    /// Idle keep-alive connections to upstreams are closed after this.
    pub pool_idle_timeout: Duration,
    pub pool_max_idle: usize,
    pub access_log: AccessLog,
    /// Lifetime of a session's pin to its version.
    pub session_ttl: Duration,
    /// Request header that forces a version (QA, smoke tests).
    pub override_header: String,
    /// Cookie that forces a version.
    pub override_cookie: String,
    /// Cookie that pins a session to its version.
    pub session_cookie: String,
    /// Add `x-hemiron-version` to responses.
    pub expose_version: bool,
    /// Retry budget: retries allowed as a share of requests, plus a floor per second.
    pub retry_ratio: f64,
    pub retry_per_second: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AccessLog {
    Off,
    Stdout,
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    pub tls: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Certificate {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// SNI names this certificate serves (`*.example.com` allowed); empty: the default.
    pub hosts: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct App {
    pub name: String,
    /// Host names (lower case, no port; `*.example.com` wildcards); empty: any host.
    pub hosts: Vec<String>,
    /// Path prefixes; the longest matching prefix of any app wins.
    pub paths: Vec<String>,
    /// The stable version when the state directory knows nothing of this app yet.
    pub stable: String,
    /// A separately deployed instance set of the stable build, compared with the canary.
    pub baseline: Option<String>,
    pub versions: Vec<AppVersion>,
    pub health: Option<HealthCheck>,
    pub outlier: Outlier,
    pub analysis: Analysis,
}

impl App {
    pub fn version(&self, id: &str) -> Option<&AppVersion> {
        self.versions.iter().find(|v| v.id == id)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AppVersion {
    pub id: String,
    pub endpoints: Vec<Endpoint>,
    pub protocol: UpstreamProtocol,
}

/// How the proxy speaks to a version's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 over a keep-alive pool (the default).
    #[default]
    Http1,
    /// HTTP/2 without TLS, prior knowledge (gRPC servers, for one): requests of every
    /// client protocol are multiplexed on few connections, and a drain ends them with GOAWAY.
    H2c,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// `host:port` (IP literal or name).
    pub address: String,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive passes that make an endpoint healthy again.
    pub healthy_after: u32,
    /// Consecutive failures that make it unhealthy.
    pub unhealthy_after: u32,
}

/// Passive ejection of endpoints that fail real requests.
#[derive(Debug, Clone, PartialEq)]
pub struct Outlier {
    pub consecutive_5xx: u32,
    pub consecutive_connect_failures: u32,
    /// First ejection; each further one lasts this times the number of ejections.
    pub base_ejection: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Analysis {
    pub enabled: bool,
    pub interval: Duration,
    pub min_requests: u64,
    pub alpha: f64,
    /// Error-rate difference (fraction) that fails the canary when significant.
    pub error_points: f64,
    /// Latency shift, as a fraction of the baseline median, that fails when significant.
    pub latency_shift: f64,
    /// Passing intervals a step needs before it may advance.
    pub passes_per_step: u32,
}

impl Default for Analysis {
    fn default() -> Self {
        Analysis {
            enabled: true,
            interval: Duration::from_secs(10),
            min_requests: 50,
            alpha: 0.01,
            error_points: 0.01,
            latency_shift: 0.10,
            passes_per_step: 3,
        }
    }
}

// ---- the file as written ----

#[derive(Debug, Deserialize, Default)]
struct RawFile {
    #[serde(default)]
    proxy: RawProxy,
    #[serde(default)]
    listeners: Vec<RawListener>,
    #[serde(default)]
    certificates: Vec<RawCertificate>,
    #[serde(default)]
    apps: toml::Table,
}

#[derive(Debug, Deserialize, Default)]
struct RawProxy {
    workers: Option<usize>,
    drain_timeout: Option<String>,
    connect_timeout: Option<String>,
    response_timeout: Option<String>,
    pool_idle_timeout: Option<String>,
    pool_max_idle: Option<usize>,
    access_log: Option<String>,
    session_ttl: Option<String>,
    override_header: Option<String>,
    override_cookie: Option<String>,
    session_cookie: Option<String>,
    expose_version: Option<bool>,
    retry_ratio: Option<f64>,
    retry_per_second: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct RawListener {
    name: Option<String>,
    address: String,
    #[serde(default)]
    tls: bool,
}

#[derive(Debug, Deserialize)]
struct RawCertificate {
    cert: PathBuf,
    key: PathBuf,
    #[serde(default)]
    hosts: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct RawApp {
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    paths: Vec<String>,
    stable: Option<String>,
    baseline: Option<String>,
    #[serde(default)]
    versions: BTreeMap<String, RawVersion>,
    health: Option<RawHealth>,
    #[serde(default)]
    outlier: RawOutlier,
    #[serde(default)]
    analysis: RawAnalysis,
}

#[derive(Debug, Deserialize)]
struct RawVersion {
    endpoints: Vec<RawEndpoint>,
    protocol: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawEndpoint {
    Address(String),
    Weighted {
        address: String,
        #[serde(default = "one")]
        weight: u32,
    },
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
struct RawHealth {
    path: Option<String>,
    interval: Option<String>,
    timeout: Option<String>,
    healthy_after: Option<u32>,
    unhealthy_after: Option<u32>,
}

#[derive(Debug, Deserialize, Default)]
struct RawOutlier {
    consecutive_5xx: Option<u32>,
    consecutive_connect_failures: Option<u32>,
    base_ejection: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
struct RawAnalysis {
    enabled: Option<bool>,
    interval: Option<String>,
    min_requests: Option<u64>,
    alpha: Option<f64>,
    error_points: Option<f64>,
    latency_shift: Option<f64>,
    passes_per_step: Option<u32>,
}

/// Collects problems with their key paths.
struct Problems(Vec<String>);

impl Problems {
    fn add(&mut self, at: &str, message: impl std::fmt::Display) {
        self.0.push(format!("{at}: {message}"));
    }

    fn duration(&mut self, at: &str, value: &Option<String>, default: Duration) -> Duration {
        match value {
            None => default,
            Some(text) => match humantime::parse_duration(text) {
                Ok(d) if !d.is_zero() => d,
                Ok(_) => {
                    self.add(at, "must be longer than zero");
                    default
                }
                Err(e) => {
                    self.add(at, format!("{text:?} is not a duration ({e}); e.g. 5s, 2m"));
                    default
                }
            },
        }
    }
}

/// Reads and validates a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, path.parent().unwrap_or(Path::new("."))).map_err(|e| match e {
        ParseError::Syntax(message) => ConfigError::Syntax {
            path: path.to_owned(),
            message,
        },
        ParseError::Invalid(problems) => ConfigError::Invalid {
            path: path.to_owned(),
            problems,
        },
    })
}

/// Why text is not a configuration.
#[derive(Debug, PartialEq)]
pub enum ParseError {
    Syntax(String),
    Invalid(Vec<String>),
}

/// Parses and validates configuration text; relative certificate paths are taken from `base`.
pub fn parse(text: &str, base: &Path) -> Result<Config, ParseError> {
    let syntax = |e: toml::de::Error| ParseError::Syntax(e.to_string());
    // Unknown keys are gathered, not stopped at, so that every one is reported with the rest.
    let mut unknown = Vec::new();
    let raw: RawFile =
        serde_ignored::deserialize(toml::Deserializer::parse(text).map_err(syntax)?, |path| {
            unknown.push(path.to_string())
        })
        .map_err(syntax)?;
    let mut p = Problems(Vec::new());
    for key in unknown {
        p.add(&key, "unknown setting");
    }
    let proxy = proxy_settings(&raw.proxy, &mut p);

    let mut listeners: Vec<Listener> = Vec::new();
    for (i, l) in raw.listeners.iter().enumerate() {
        let at = format!("listeners[{i}]");
        let name = l.name.clone().unwrap_or_else(|| format!("listener{i}"));
        match l.address.parse::<SocketAddr>() {
            Ok(address) => {
                if listeners.iter().any(|o| o.address == address) {
                    p.add(
                        &format!("{at}.address"),
                        format!("{address} is listed twice"),
                    );
                }
                listeners.push(Listener {
                    name,
                    address,
                    tls: l.tls,
                });
            }
            Err(_) => p.add(
                &format!("{at}.address"),
                format!("{:?} is not an IP:port address", l.address),
            ),
        }
    }
    if raw.listeners.is_empty() {
        p.add("listeners", "at least one listener is required");
    }

    let certificates: Vec<Certificate> = raw
        .certificates
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut hosts = Vec::new();
            for (j, h) in c.hosts.iter().enumerate() {
                match host_pattern(h) {
                    Some(h) => hosts.push(h),
                    None => p.add(
                        &format!("certificates[{i}].hosts[{j}]"),
                        format!("{h:?} is not a host name"),
                    ),
                }
            }
            Certificate {
                cert: base.join(&c.cert),
                key: base.join(&c.key),
                hosts,
            }
        })
        .collect();
    if listeners.iter().any(|l| l.tls) && certificates.is_empty() {
        p.add(
            "certificates",
            "a TLS listener needs at least one certificate",
        );
    }

    let mut apps = Vec::new();
    for (name, value) in &raw.apps {
        let at = format!("apps.{name}");
        if !valid_version_id(name) {
            p.add(&at, "app names use letters, digits, '-' and '_' only");
        }
        let mut unknown = Vec::new();
        let raw_app: RawApp = match serde_ignored::deserialize(value.clone(), |path| {
            unknown.push(path.to_string())
        }) {
            Ok(a) => a,
            Err(e) => {
                p.add(&at, e.to_string().trim());
                continue;
            }
        };
        for key in unknown {
            p.add(&format!("{at}.{key}"), "unknown setting");
        }
        if let Some(app) = app(name, &at, raw_app, &mut p) {
            apps.push(app);
        }
    }
    // Two apps must not claim the same host and prefix.
    for (i, a) in apps.iter().enumerate() {
        for b in &apps[..i] {
            let hosts_meet = a.hosts.is_empty() && b.hosts.is_empty()
                || a.hosts.iter().any(|h| b.hosts.contains(h));
            if let Some(path) = a.paths.iter().find(|x| b.paths.contains(x)) {
                if hosts_meet {
                    p.add(
                        &format!("apps.{}.paths", a.name),
                        format!("{path:?} on the same hosts is already app {:?}'s", b.name),
                    );
                }
            }
        }
    }
    if !p.0.is_empty() {
        return Err(ParseError::Invalid(p.0));
    }
    Ok(Config {
        proxy,
        listeners,
        certificates,
        apps,
    })
}

fn proxy_settings(r: &RawProxy, p: &mut Problems) -> ProxySettings {
    let header = |p: &mut Problems, at: &str, v: &Option<String>, default: &str| {
        let v = v.clone().unwrap_or_else(|| default.to_owned());
        if v.is_empty()
            || !v
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            p.add(at, format!("{v:?} is not a header or cookie name"));
        }
        v.to_ascii_lowercase()
    };
    let retry_ratio = r.retry_ratio.unwrap_or(0.2);
    if !(0.0..=1.0).contains(&retry_ratio) {
        p.add("proxy.retry_ratio", "must be between 0 and 1");
    }
    ProxySettings {
        workers: r.workers.unwrap_or(0),
        drain_timeout: p.duration(
            "proxy.drain_timeout",
            &r.drain_timeout,
            Duration::from_secs(30),
        ),
        connect_timeout: p.duration(
            "proxy.connect_timeout",
            &r.connect_timeout,
            Duration::from_secs(5),
        ),
        response_timeout: p.duration(
            "proxy.response_timeout",
            &r.response_timeout,
            Duration::from_secs(60),
        ),
        pool_idle_timeout: p.duration(
            "proxy.pool_idle_timeout",
            &r.pool_idle_timeout,
            Duration::from_secs(90),
        ),
        pool_max_idle: r.pool_max_idle.unwrap_or(256),
        access_log: match r.access_log.as_deref() {
            None | Some("off") => AccessLog::Off,
            Some("stdout") => AccessLog::Stdout,
            Some(path) => AccessLog::File(PathBuf::from(path)),
        },
        session_ttl: p.duration(
            "proxy.session_ttl",
            &r.session_ttl,
            Duration::from_secs(24 * 3600),
        ),
        override_header: header(
            p,
            "proxy.override_header",
            &r.override_header,
            "x-hemiron-version",
        ),
        override_cookie: header(
            p,
            "proxy.override_cookie",
            &r.override_cookie,
            "hemiron-version",
        ),
        session_cookie: header(
            p,
            "proxy.session_cookie",
            &r.session_cookie,
            "hemiron-session",
        ),
        expose_version: r.expose_version.unwrap_or(true),
        retry_ratio,
        retry_per_second: r.retry_per_second.unwrap_or(3),
    }
}

fn app(name: &str, at: &str, r: RawApp, p: &mut Problems) -> Option<App> {
    let mut hosts = Vec::new();
    for (i, h) in r.hosts.iter().enumerate() {
        match host_pattern(h) {
            Some(h) => hosts.push(h),
            None => p.add(
                &format!("{at}.hosts[{i}]"),
                format!("{h:?} is not a host name"),
            ),
        }
    }
    let mut paths = r.paths.clone();
    if paths.is_empty() {
        paths.push("/".into());
    }
    for (i, path) in paths.iter().enumerate() {
        if !path.starts_with('/') || path.contains(['?', '#', ' ']) {
            p.add(
                &format!("{at}.paths[{i}]"),
                format!("{path:?} is not a path prefix (it starts with '/')"),
            );
        }
    }
    let mut versions = Vec::new();
    for (id, v) in &r.versions {
        let vat = format!("{at}.versions.{id}");
        if !valid_version_id(id) {
            p.add(
                &vat,
                "version names use letters, digits, '-' and '_' only (at most 64)",
            );
        }
        if v.endpoints.is_empty() {
            p.add(
                &format!("{vat}.endpoints"),
                "at least one endpoint is required",
            );
        }
        let mut endpoints = Vec::new();
        for (i, e) in v.endpoints.iter().enumerate() {
            let (address, weight) = match e {
                RawEndpoint::Address(a) => (a.clone(), 1),
                RawEndpoint::Weighted { address, weight } => (address.clone(), *weight),
            };
            let eat = format!("{vat}.endpoints[{i}]");
            if address.parse::<http::uri::Authority>().is_err()
                || !address.rsplit_once(':').is_some_and(|(h, port)| {
                    !h.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
                })
            {
                p.add(&eat, format!("{address:?} is not a host:port address"));
            }
            if weight == 0 || weight > 1000 {
                p.add(&eat, "weight must be between 1 and 1000");
            }
            if endpoints.iter().any(|o: &Endpoint| o.address == address) {
                p.add(&eat, format!("{address} is listed twice"));
            }
            endpoints.push(Endpoint { address, weight });
        }
        let protocol = match v.protocol.as_deref() {
            None | Some("http1") => UpstreamProtocol::Http1,
            Some("h2c") => UpstreamProtocol::H2c,
            Some(other) => {
                p.add(
                    &format!("{vat}.protocol"),
                    format!("{other:?} is not \"http1\" or \"h2c\""),
                );
                UpstreamProtocol::Http1
            }
        };
        versions.push(AppVersion {
            id: id.clone(),
            endpoints,
            protocol,
        });
    }
    if versions.is_empty() {
        p.add(
            &format!("{at}.versions"),
            "at least one version is required",
        );
    }
    let stable = match r.stable {
        Some(s) => s,
        None if versions.len() == 1 => versions[0].id.clone(),
        None => {
            p.add(
                &format!("{at}.stable"),
                "required when an app has several versions",
            );
            String::new()
        }
    };
    if !stable.is_empty() && !versions.iter().any(|v| v.id == stable) {
        p.add(
            &format!("{at}.stable"),
            format!("{stable:?} is not one of the app's versions"),
        );
    }
    if let Some(b) = &r.baseline {
        if !versions.iter().any(|v| &v.id == b) {
            p.add(
                &format!("{at}.baseline"),
                format!("{b:?} is not one of the app's versions"),
            );
        } else if *b == stable {
            p.add(
                &format!("{at}.baseline"),
                "the baseline is a separate instance set, not the stable version itself",
            );
        }
    }
    let health = r.health.as_ref().map(|h| {
        let path = h.path.clone().unwrap_or_else(|| "/".into());
        if !path.starts_with('/') {
            p.add(&format!("{at}.health.path"), "must start with '/'");
        }
        HealthCheck {
            path,
            interval: p.duration(
                &format!("{at}.health.interval"),
                &h.interval,
                Duration::from_secs(2),
            ),
            timeout: p.duration(
                &format!("{at}.health.timeout"),
                &h.timeout,
                Duration::from_secs(1),
            ),
            healthy_after: h.healthy_after.unwrap_or(2).max(1),
            unhealthy_after: h.unhealthy_after.unwrap_or(2).max(1),
        }
    });
    let outlier = Outlier {
        consecutive_5xx: r.outlier.consecutive_5xx.unwrap_or(5),
        consecutive_connect_failures: r.outlier.consecutive_connect_failures.unwrap_or(3),
        base_ejection: p.duration(
            &format!("{at}.outlier.base_ejection"),
            &r.outlier.base_ejection,
            Duration::from_secs(30),
        ),
    };
    let d = Analysis::default();
    let a = &r.analysis;
    let analysis = Analysis {
        enabled: a.enabled.unwrap_or(true),
        interval: p.duration(&format!("{at}.analysis.interval"), &a.interval, d.interval),
        min_requests: a.min_requests.unwrap_or(d.min_requests).max(2),
        alpha: a.alpha.unwrap_or(d.alpha),
        error_points: a.error_points.unwrap_or(d.error_points),
        latency_shift: a.latency_shift.unwrap_or(d.latency_shift),
        passes_per_step: a.passes_per_step.unwrap_or(d.passes_per_step).max(1),
    };
    if !(analysis.alpha > 0.0 && analysis.alpha < 0.5) {
        p.add(&format!("{at}.analysis.alpha"), "must be between 0 and 0.5");
    }
    Some(App {
        name: name.to_owned(),
        hosts,
        paths,
        stable,
        baseline: r.baseline,
        versions,
        health,
        outlier,
        analysis,
    })
}

/// A host name as written in the file, lower-cased; `*.` wildcards allowed.
fn host_pattern(h: &str) -> Option<String> {
    let h = h.to_ascii_lowercase();
    let bare = h.strip_prefix("*.").unwrap_or(&h);
    let ok = !bare.is_empty()
        && bare.len() <= 253
        && bare.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    ok.then_some(h)
}

/// Whether `host` (lower case, no port) matches a pattern of [`host_pattern`].
pub fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .strip_suffix(suffix)
            .is_some_and(|rest| rest.len() > 1 && rest.ends_with('.')),
        None => pattern == host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GOOD: &str = r#"
[proxy]
workers = 1
drain_timeout = "5s"

[[listeners]]
address = "127.0.0.1:8000"

[apps.shop]
hosts = ["shop.test", "*.shop.test"]
stable = "v1"
baseline = "v1-baseline"

[apps.shop.versions.v1]
endpoints = ["127.0.0.1:9001", { address = "127.0.0.1:9002", weight = 3 }]

[apps.shop.versions.v1-baseline]
endpoints = ["127.0.0.1:9003"]

[apps.shop.versions.v2]
endpoints = ["127.0.0.1:9004"]

[apps.shop.health]
path = "/healthz"
interval = "1s"
"#;

    #[test]
    fn a_good_file() {
        let c = parse(GOOD, Path::new("/etc")).unwrap();
        assert_eq!(c.proxy.workers, 1);
        assert_eq!(c.proxy.drain_timeout, Duration::from_secs(5));
        assert_eq!(c.listeners[0].address.port(), 8000);
        let app = &c.apps[0];
        assert_eq!(app.stable, "v1");
        assert_eq!(app.paths, vec!["/".to_string()]);
        assert_eq!(app.version("v1").unwrap().endpoints[1].weight, 3);
        assert_eq!(app.health.as_ref().unwrap().path, "/healthz");
        assert_eq!(app.analysis.interval, Duration::from_secs(10));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let bad = r#"
[proxy]
drain_timeout = "soon"
[[listeners]]
address = "localhost"
[apps.shop]
stable = "v9"
[apps.shop.versions.v1]
endpoints = ["nowhere", "127.0.0.1:0"]
protocol = "h3"
[apps.shop.versions."bad id"]
endpoints = []
"#;
        let ParseError::Invalid(problems) = parse(bad, Path::new(".")).unwrap_err() else {
            panic!("expected problems");
        };
        let all = problems.join("\n");
        for needle in [
            "proxy.drain_timeout",
            "listeners[0].address",
            "apps.shop.stable",
            "apps.shop.versions.v1.endpoints[0]",
            "apps.shop.versions.v1.endpoints[1]",
            "apps.shop.versions.v1.protocol: \"h3\" is not \"http1\" or \"h2c\"",
            "apps.shop.versions.bad id:",
            "apps.shop.versions.bad id.endpoints",
        ] {
            assert!(all.contains(needle), "{needle} missing from:\n{all}");
        }
    }

    #[test]
    fn unknown_keys_are_refused_every_one() {
        let e = parse(
            "[proxy]\nworkerz = 2\n[[listeners]]\naddress = \"127.0.0.1:1\"\nport = 3\n[apps.a]\nstable = \"v\"\nstabel = \"v\"\n[apps.a.versions.v]\nendpoints = [\"127.0.0.1:2\"]\nweigth = 3\n[apps.a.analysis]\nalfa = 0.1\n",
            Path::new("."),
        )
        .unwrap_err();
        let ParseError::Invalid(problems) = e else {
            panic!("{e:?}")
        };
        for key in [
            "proxy.workerz",
            "listeners.0.port",
            "apps.a.stabel",
            "apps.a.versions.v.weigth",
            "apps.a.analysis.alfa",
        ] {
            assert!(
                problems
                    .iter()
                    .any(|p| p.starts_with(key) && p.contains("unknown setting")),
                "{key} in {problems:?}"
            );
        }
        assert_eq!(problems.len(), 5, "{problems:?}");
    }

    #[test]
    fn hosts() {
        assert!(host_matches("*.shop.test", "a.shop.test"));
        assert!(!host_matches("*.shop.test", "shop.test"));
        assert!(!host_matches("*.shop.test", "ashop.test"));
        assert!(host_matches("shop.test", "shop.test"));
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
            let _ = parse(&text, Path::new("."));
        }

        #[test]
        fn arbitrary_app_tables_never_panic(
            endpoint in "\\PC{0,30}", weight in 0u32..2000, path in "\\PC{0,10}", host in "\\PC{0,20}",
        ) {
            let text = format!(
                "[[listeners]]\naddress = \"127.0.0.1:1\"\n[apps.a]\nhosts = [{host:?}]\npaths = [{path:?}]\n[apps.a.versions.v]\nendpoints = [{{ address = {endpoint:?}, weight = {weight} }}]\n"
            );
            let _ = parse(&text, Path::new("."));
        }
    }
}
