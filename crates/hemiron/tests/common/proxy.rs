//! Deploy-proxy harness: real upstream HTTP servers on loopback (each says which version it
//! is, counts what it served, and can be told to fail, slow down or report unhealthy), and
//! the real `hemiron proxy` binary started on a configuration file.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::{hemiron, wait_for};

/// A free loopback port (bound and released; tests run their servers on it at once).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// What an upstream does; change it while it runs.
#[derive(Debug, Default)]
pub struct Behaviour {
    /// Every Nth request answers 500 (0: never).
    pub fail_every: AtomicU64,
    /// Added to every answer, in milliseconds.
    pub delay_ms: AtomicU64,
    /// `/healthz` answers 503 when set.
    pub unhealthy: AtomicBool,
    pub requests: AtomicU64,
    pub posts: AtomicU64,
    pub websockets: AtomicU64,
}

/// One upstream server, answering its name.
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    pub behaviour: Arc<Behaviour>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    pub fn posts(&self) -> u64 {
        self.behaviour.posts.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> u64 {
        self.behaviour.requests.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    req: Request<Incoming>,
    name: Arc<String>,
    b: Arc<Behaviour>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let text = |status: u16, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
        r.headers_mut().insert("x-upstream", name.parse().unwrap());
        Ok(r)
    };
    if req.uri().path() == "/healthz" {
        return if b.unhealthy.load(Ordering::SeqCst) {
            text(503, "unhealthy".into())
        } else {
            text(200, "ok".into())
        };
    }
    if req.headers().contains_key("upgrade") {
        return websocket(req, name, b);
    }
    let n = b.requests.fetch_add(1, Ordering::SeqCst) + 1;
    let is_post = req.method() == hyper::Method::POST;
    let forwarded_for = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    if is_post {
        b.posts.fetch_add(1, Ordering::SeqCst);
    }
    let delay = b.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let every = b.fail_every.load(Ordering::SeqCst);
    if every > 0 && n % every == 0 {
        return text(500, format!("{name} failed"));
    }
    text(
        200,
        format!("{name} {} bytes xff={forwarded_for}", body.len()),
    )
}

fn websocket(
    mut req: Request<Incoming>,
    name: Arc<String>,
    b: Arc<Behaviour>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let key = req
        .headers()
        .get("sec-websocket-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(&mut req);
    b.websockets.fetch_add(1, Ordering::SeqCst);
    tokio::spawn(async move {
        let Ok(io) = upgrade.await else { return };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(io),
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_text() {
                let reply = format!("{name}: {}", msg.into_text().unwrap());
                if ws.send(reply.into()).await.is_err() {
                    break;
                }
            } else if msg.is_close() {
                break;
            }
        }
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert("upgrade", "websocket".parse().unwrap());
    h.insert("connection", "upgrade".parse().unwrap());
    h.insert("sec-websocket-accept", accept.parse().unwrap());
    Ok(r)
}

/// Starts an upstream on `rt` answering `name`.
pub fn upstream(rt: &tokio::runtime::Runtime, name: &str) -> Upstream {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let behaviour = Arc::new(Behaviour::default());
    let b = behaviour.clone();
    let shared_name = Arc::new(name.to_string());
    let task = rt.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (b, name) = (b.clone(), shared_name.clone());
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req| answer(req, name.clone(), b.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Upstream {
        addr,
        name: name.into(),
        behaviour,
        task,
    }
}

/// A runtime for upstreams and async clients.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A running `hemiron proxy`.
pub struct Proxy {
    child: Option<Child>,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub data: SocketAddr,
    pub admin: SocketAddr,
    pub token: String,
    log: PathBuf,
}

impl Proxy {
    /// Writes `config` (with `{listen}` replaced by a free loopback address) into a fresh
    /// directory and starts the proxy on it.
    pub fn start(dir: &Path, config: &str) -> Proxy {
        let data: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let text = config.replace("{listen}", &data.to_string());
        std::fs::create_dir_all(dir).unwrap();
        let config_path = dir.join("proxy.toml");
        std::fs::write(&config_path, text).unwrap();
        std::fs::write(dir.join("admin.token.given"), "test-admin-token\n").unwrap();
        let mut p = Proxy {
            child: None,
            dir: dir.to_owned(),
            config: config_path,
            data,
            admin,
            token: "test-admin-token".into(),
            log: dir.join("proxy.log"),
        };
        p.launch();
        p
    }

    /// Starts (again) on the same configuration and state.
    pub fn launch(&mut self) {
        let child = self.spawn();
        self.child = Some(child);
        self.wait_ready();
    }

    /// Another process on the same configuration and state directory (the handover).
    pub fn spawn(&self) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        Command::new(hemiron())
            .args(["proxy", "--config"])
            .arg(&self.config)
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .arg("--admin")
            .arg(self.admin.to_string())
            .arg("--admin-token-file")
            .arg(self.dir.join("admin.token.given"))
            .env("HEMIRON_LOG", "info,hemiron_proxy=debug")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap()
    }

    pub fn wait_ready(&self) {
        wait_for("the proxy's admin port", Duration::from_secs(20), || {
            reqwest::blocking::get(format!("http://{}/healthz", self.admin))
                .ok()
                .filter(|r| r.status().is_success())
        });
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.data)
    }

    /// An admin call: (status, body).
    pub fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let client = reqwest::blocking::Client::new();
        let mut req = client
            .request(
                method.parse().unwrap(),
                format!("http://{}/api/v1{path}", self.admin),
            )
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().unwrap_or(Value::Null))
    }

    /// An admin call that must succeed.
    pub fn admin_ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.admin(method, path, body);
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {v}"
        );
        v
    }

    pub fn metrics(&self) -> String {
        reqwest::blocking::get(format!("http://{}/metrics", self.admin))
            .unwrap()
            .text()
            .unwrap()
    }

    /// Sends SIGTERM and waits for the process to end.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c);
        }
    }

    pub fn take_child(&mut self) -> Option<Child> {
        self.child.take()
    }
}

/// A proxy process started beside the harness's own; killed if the test ends early.
pub struct Spawned(pub Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// SIGTERM, then wait (SIGKILL after 40 s).
pub fn terminate(c: &mut Child) {
    // SAFETY-free: kill(1) is a separate process.
    let _ = Command::new("kill")
        .args(["-TERM", &c.id().to_string()])
        .status();
    for _ in 0..400 {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = c.kill();
    let _ = c.wait();
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
