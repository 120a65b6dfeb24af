//! A client of the Proxmox VE API, for real Proxmox clusters and Hemiron nodes alike.
//!
//! - Authentication with an API token (`PVEAPIToken=USER@REALM!NAME=SECRET`, stateless, no
//!   CSRF) or a password ticket (`POST /access/ticket`, renewed before its two hours run out;
//!   writes carry the CSRF token).
//! - TLS pinned to the certificate's SHA-256 fingerprint (self-signed clusters are the norm),
//!   or verified against the web PKI.
//! - Errors decoded from Proxmox's shape: the HTTP status, the reason phrase (which carries the
//!   message), `message` and the per-parameter `errors`.
//! - Tasks: calls that start one return its UPID; [`PveClient::wait_task`] polls its status
//!   until it ends and turns a failed exit status into an error.

#![forbid(unsafe_code)]

pub mod tls;
pub mod types;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use reqwest::Method;
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;
use tracing::debug;

pub use types::*;

/// A failed call.
#[derive(Debug, thiserror::Error)]
pub enum PveError {
    #[error("invalid endpoint URL '{0}'")]
    BadEndpoint(String),
    #[error("invalid certificate fingerprint '{0}'")]
    BadFingerprint(String),
    #[error("failed to set up the HTTP client")]
    Setup(#[source] reqwest::Error),
    #[error("TLS setup failed")]
    Tls(#[source] rustls::Error),
    #[error("request {method} {path} failed")]
    Transport {
        method: String,
        path: String,
        #[source]
        source: reqwest::Error,
    },
    /// Proxmox answered with an error; `message` is its text, `errors` the per-parameter ones.
    #[error("{method} {path}: {status} {message}")]
    Api {
        method: String,
        path: String,
        status: u16,
        message: String,
        errors: BTreeMap<String, String>,
    },
    #[error("unexpected answer to {method} {path}")]
    Decode {
        method: String,
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("login failed: {0}")]
    Login(String),
    #[error("task {upid} failed: {exitstatus}")]
    TaskFailed { upid: String, exitstatus: String },
    #[error("task {0} did not finish in time")]
    TaskTimeout(String),
    #[error("'{0}' is not a UPID")]
    BadUpid(String),
}

impl PveError {
    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            PveError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the call may succeed if simply repeated (network trouble, 5xx from a proxy).
    pub fn is_transient(&self) -> bool {
        match self {
            PveError::Transport { .. } => true,
            PveError::Api { status, .. } => matches!(status, 502..=504 | 595..=599),
            _ => false,
        }
    }
}

/// How the client authenticates.
#[derive(Clone)]
pub enum Credentials {
    /// `USER@REALM!TOKENNAME` and its secret.
    Token { tokenid: String, secret: String },
    /// A user and password, exchanged for a ticket.
    Password { username: String, password: String },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Token { tokenid, .. } => write!(f, "Token({tokenid})"),
            Credentials::Password { username, .. } => write!(f, "Password({username})"),
        }
    }
}

/// A request to pass on unchanged ([`PveClient::forward`]).
#[derive(Debug)]
pub struct Forward<'a> {
    pub method: Method,
    /// Below `/api2/json`, with the query string.
    pub path_and_query: &'a str,
    pub content_type: Option<&'a str>,
    pub body: Vec<u8>,
    /// Extra request headers.
    pub headers: &'a [(&'a str, &'a str)],
}

/// The answer to a forwarded request, as it came.
#[derive(Debug)]
pub struct Forwarded {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `https://host:8006` (the `/api2/json` prefix is added).
    pub endpoint: String,
    pub credentials: Credentials,
    /// SHA-256 fingerprint of the server certificate (`AA:BB:…`); `None` = web PKI.
    pub fingerprint: Option<String>,
    /// Per-request timeout.
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
struct TicketState {
    ticket: String,
    csrf: String,
    issued: Instant,
}

/// Proxmox tickets live two hours; renew well before.
const TICKET_RENEW_AFTER: Duration = Duration::from_secs(3600);

/// A Proxmox VE API client. Cheap to clone; clones share the connection pool and ticket.
#[derive(Debug, Clone)]
pub struct PveClient {
    base: String,
    http: reqwest::Client,
    credentials: Credentials,
    ticket: Arc<Mutex<Option<TicketState>>>,
}

type Params<'a> = &'a [(&'a str, String)];

impl PveClient {
    pub fn new(config: ClientConfig) -> Result<Self, PveError> {
        let endpoint = config.endpoint.trim_end_matches('/').to_string();
        if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
            return Err(PveError::BadEndpoint(config.endpoint));
        }
        let base = if endpoint.ends_with("/api2/json") {
            endpoint
        } else {
            format!("{endpoint}/api2/json")
        };
        let mut builder = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(60));
        if let Some(fp) = &config.fingerprint {
            let hex = tls::normalize_fingerprint(fp)
                .ok_or_else(|| PveError::BadFingerprint(fp.clone()))?;
            builder =
                builder.use_preconfigured_tls(tls::pinned_config(hex).map_err(PveError::Tls)?);
        }
        Ok(Self {
            base,
            http: builder.build().map_err(PveError::Setup)?,
            credentials: config.credentials,
            ticket: Arc::new(Mutex::new(None)),
        })
    }

    /// A valid ticket, logging in or renewing as needed.
    async fn ticket(&self) -> Result<TicketState, PveError> {
        let Credentials::Password { username, password } = &self.credentials else {
            return Err(PveError::Login("not a password client".into()));
        };
        let mut guard = self.ticket.lock().await;
        if let Some(t) = guard.as_ref() {
            if t.issued.elapsed() < TICKET_RENEW_AFTER {
                return Ok(t.clone());
            }
        }
        // Renew with the old ticket while it is valid, else log in with the password.
        let secret = guard
            .as_ref()
            .map(|t| t.ticket.clone())
            .unwrap_or_else(|| password.clone());
        let form = [
            ("username", username.as_str()),
            ("password", secret.as_str()),
        ];
        let url = format!("{}/access/ticket", self.base);
        let resp = self
            .http
            .post(&url)
            .form(&form)
            .send()
            .await
            .map_err(|source| PveError::Transport {
                method: "POST".into(),
                path: "/access/ticket".into(),
                source,
            })?;
        if !resp.status().is_success() {
            *guard = None;
            return Err(PveError::Login(format!("{}", resp.status())));
        }
        let body: serde_json::Value = resp.json().await.map_err(|source| PveError::Transport {
            method: "POST".into(),
            path: "/access/ticket".into(),
            source,
        })?;
        let t: Ticket =
            serde_json::from_value(body["data"].clone()).map_err(|source| PveError::Decode {
                method: "POST".into(),
                path: "/access/ticket".into(),
                source,
            })?;
        if t.need_tfa == Some(true) {
            return Err(PveError::Login("the account needs a second factor".into()));
        }
        let (Some(ticket), Some(csrf)) = (t.ticket, t.csrf) else {
            return Err(PveError::Login("no ticket in the answer".into()));
        };
        let state = TicketState {
            ticket,
            csrf,
            issued: Instant::now(),
        };
        *guard = Some(state.clone());
        Ok(state)
    }

    /// Makes a call and decodes its `data`.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        params: Params<'_>,
    ) -> Result<T, PveError> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.request(method.clone(), &url);
        req = if method == Method::GET || method == Method::DELETE {
            req.query(params)
        } else {
            req.form(params)
        };
        req = self.authorize(req, &method).await?;
        debug!(%method, path, "Proxmox API call");
        let resp = req.send().await.map_err(|source| PveError::Transport {
            method: method.to_string(),
            path: path.to_string(),
            source,
        })?;
        let status = resp.status();
        // Proxmox puts the error message in the reason phrase; hyper does not expose a
        // custom one, so the body's `message` is used, falling back to the canonical reason.
        let text = resp.text().await.map_err(|source| PveError::Transport {
            method: method.to_string(),
            path: path.to_string(),
            source,
        })?;
        let body: serde_json::Value =
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        if !status.is_success() {
            let message = body["message"]
                .as_str()
                .map(|m| m.trim_end().to_string())
                .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_string());
            let errors = body["errors"]
                .as_object()
                .map(|o| {
                    o.iter()
                        .map(|(k, v)| {
                            (
                                k.clone(),
                                v.as_str().unwrap_or_default().trim_end().to_string(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            if status.as_u16() == 401 {
                // A rejected ticket: log in again next time.
                *self.ticket.lock().await = None;
            }
            return Err(PveError::Api {
                method: method.to_string(),
                path: path.to_string(),
                status: status.as_u16(),
                message,
                errors,
            });
        }
        serde_json::from_value(body["data"].clone()).map_err(|source| PveError::Decode {
            method: method.to_string(),
            path: path.to_string(),
            source,
        })
    }

    /// Adds this client's credentials to a request.
    async fn authorize(
        &self,
        req: reqwest::RequestBuilder,
        method: &Method,
    ) -> Result<reqwest::RequestBuilder, PveError> {
        Ok(match &self.credentials {
            Credentials::Token { tokenid, secret } => {
                req.header("Authorization", format!("PVEAPIToken={tokenid}={secret}"))
            }
            Credentials::Password { .. } => {
                let t = self.ticket().await?;
                let req = req.header("Cookie", format!("PVEAuthCookie={}", t.ticket));
                if *method == Method::GET {
                    req
                } else {
                    req.header("CSRFPreventionToken", t.csrf)
                }
            }
        })
    }

    /// Passes a request on as it came, with this client's credentials (a node handing a
    /// call for another node of its cluster to that node, as Proxmox's `proxyto` does):
    /// `path_and_query` is below `/api2/json`; the answer comes back unchanged, errors
    /// included.
    pub async fn forward(&self, request: Forward<'_>) -> Result<Forwarded, PveError> {
        let url = format!("{}{}", self.base, request.path_and_query);
        let transport = |source| PveError::Transport {
            method: request.method.to_string(),
            path: request.path_and_query.to_string(),
            source,
        };
        let mut req = self
            .http
            .request(request.method.clone(), &url)
            .body(request.body);
        if let Some(ct) = request.content_type {
            req = req.header(reqwest::header::CONTENT_TYPE, ct);
        }
        for (name, value) in request.headers {
            req = req.header(*name, *value);
        }
        req = self.authorize(req, &request.method).await?;
        debug!(method = %request.method, path = request.path_and_query, "forwarded call");
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp.bytes().await.map_err(transport)?.to_vec();
        Ok(Forwarded {
            status,
            content_type,
            body,
        })
    }

    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        params: Params<'_>,
    ) -> Result<T, PveError> {
        self.call(Method::GET, path, params).await
    }

    /// A call that starts a task; returns the UPID.
    pub async fn start_task(
        &self,
        method: Method,
        path: &str,
        params: Params<'_>,
    ) -> Result<String, PveError> {
        self.call(method, path, params).await
    }

    pub async fn version(&self) -> Result<Version, PveError> {
        self.get("/version", &[]).await
    }

    pub async fn nodes(&self) -> Result<Vec<NodeEntry>, PveError> {
        self.get("/nodes", &[]).await
    }

    pub async fn node_status(&self, node: &str) -> Result<NodeStatus, PveError> {
        self.get(&format!("/nodes/{node}/status"), &[]).await
    }

    /// `GET /cluster/resources`, optionally of one type (`vm`, `node`, `storage`).
    pub async fn resources(&self, kind: Option<&str>) -> Result<Vec<Resource>, PveError> {
        match kind {
            Some(k) => {
                self.get("/cluster/resources", &[("type", k.to_string())])
                    .await
            }
            None => self.get("/cluster/resources", &[]).await,
        }
    }

    /// The next free VMID (Proxmox answers a string, Hemiron a number).
    pub async fn next_id(&self) -> Result<u32, PveError> {
        let v: serde_json::Value = self.get("/cluster/nextid", &[]).await?;
        v.as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| PveError::Decode {
                method: "GET".into(),
                path: "/cluster/nextid".into(),
                source: serde::de::Error::custom("not a VMID"),
            })
    }

    pub async fn vms(&self, node: &str) -> Result<Vec<VmStatus>, PveError> {
        self.get(&format!("/nodes/{node}/qemu"), &[]).await
    }

    pub async fn vm_status(&self, node: &str, vmid: u32) -> Result<VmStatus, PveError> {
        self.get(&format!("/nodes/{node}/qemu/{vmid}/status/current"), &[])
            .await
    }

    /// A VM's config (with pending changes applied, as Proxmox shows it).
    pub async fn vm_config(
        &self,
        node: &str,
        vmid: u32,
    ) -> Result<BTreeMap<String, serde_json::Value>, PveError> {
        self.get(&format!("/nodes/{node}/qemu/{vmid}/config"), &[])
            .await
    }

    /// `PUT .../config` (synchronous).
    pub async fn set_config(
        &self,
        node: &str,
        vmid: u32,
        params: Params<'_>,
    ) -> Result<(), PveError> {
        let _: serde_json::Value = self
            .call(
                Method::PUT,
                &format!("/nodes/{node}/qemu/{vmid}/config"),
                params,
            )
            .await?;
        Ok(())
    }

    /// `POST .../qemu/{vmid}/status/{action}` (start, stop, shutdown, reboot, …).
    pub async fn vm_power(
        &self,
        node: &str,
        vmid: u32,
        action: &str,
        params: Params<'_>,
    ) -> Result<String, PveError> {
        self.start_task(
            Method::POST,
            &format!("/nodes/{node}/qemu/{vmid}/status/{action}"),
            params,
        )
        .await
    }

    pub async fn clone_vm(
        &self,
        node: &str,
        vmid: u32,
        params: Params<'_>,
    ) -> Result<String, PveError> {
        self.start_task(
            Method::POST,
            &format!("/nodes/{node}/qemu/{vmid}/clone"),
            params,
        )
        .await
    }

    pub async fn create_vm(&self, node: &str, params: Params<'_>) -> Result<String, PveError> {
        self.start_task(Method::POST, &format!("/nodes/{node}/qemu"), params)
            .await
    }

    pub async fn delete_vm(
        &self,
        node: &str,
        vmid: u32,
        params: Params<'_>,
    ) -> Result<String, PveError> {
        self.start_task(
            Method::DELETE,
            &format!("/nodes/{node}/qemu/{vmid}"),
            params,
        )
        .await
    }

    pub async fn resize_disk(
        &self,
        node: &str,
        vmid: u32,
        disk: &str,
        size: &str,
    ) -> Result<String, PveError> {
        self.start_task(
            Method::PUT,
            &format!("/nodes/{node}/qemu/{vmid}/resize"),
            &[("disk", disk.to_string()), ("size", size.to_string())],
        )
        .await
    }

    pub async fn make_template(&self, node: &str, vmid: u32) -> Result<String, PveError> {
        self.start_task(
            Method::POST,
            &format!("/nodes/{node}/qemu/{vmid}/template"),
            &[],
        )
        .await
    }

    /// `GET …/migrate`: where the VM may move and what holds it back.
    pub async fn migrate_check(
        &self,
        node: &str,
        vmid: u32,
        target: &str,
    ) -> Result<serde_json::Value, PveError> {
        self.get(
            &format!("/nodes/{node}/qemu/{vmid}/migrate"),
            &[("target", target.to_string())],
        )
        .await
    }

    /// `POST …/migrate`: the migration task.
    pub async fn migrate_vm(
        &self,
        node: &str,
        vmid: u32,
        params: Params<'_>,
    ) -> Result<String, PveError> {
        self.start_task(
            Method::POST,
            &format!("/nodes/{node}/qemu/{vmid}/migrate"),
            params,
        )
        .await
    }

    /// Stops a running task (`DELETE /nodes/{node}/tasks/{upid}`).
    pub async fn stop_task(&self, upid: &str) -> Result<(), PveError> {
        let node = upid_node(upid).ok_or_else(|| PveError::BadUpid(upid.to_string()))?;
        self.call::<serde_json::Value>(Method::DELETE, &format!("/nodes/{node}/tasks/{upid}"), &[])
            .await
            .map(drop)
    }

    pub async fn task_status(&self, upid: &str) -> Result<TaskStatus, PveError> {
        let node = upid_node(upid).ok_or_else(|| PveError::BadUpid(upid.to_string()))?;
        self.get(&format!("/nodes/{node}/tasks/{upid}/status"), &[])
            .await
    }

    pub async fn task_log(&self, upid: &str, limit: u64) -> Result<Vec<TaskLogLine>, PveError> {
        let node = upid_node(upid).ok_or_else(|| PveError::BadUpid(upid.to_string()))?;
        self.get(
            &format!("/nodes/{node}/tasks/{upid}/log"),
            &[("limit", limit.to_string())],
        )
        .await
    }

    /// Waits for a task to end (polling with a growing interval, 50 ms to 1 s); a failed
    /// exit status becomes [`PveError::TaskFailed`].
    pub async fn wait_task(&self, upid: &str, timeout: Duration) -> Result<TaskStatus, PveError> {
        let deadline = Instant::now() + timeout;
        let mut interval = Duration::from_millis(50);
        loop {
            match self.task_status(upid).await {
                Ok(st) if !st.is_running() => {
                    if st.succeeded() {
                        return Ok(st);
                    }
                    return Err(PveError::TaskFailed {
                        upid: upid.to_string(),
                        exitstatus: st.exitstatus.unwrap_or_else(|| "unknown".into()),
                    });
                }
                Ok(_) => {}
                Err(e) if e.is_transient() => {
                    debug!(error = %e, "task status poll failed; retrying")
                }
                Err(e) => return Err(e),
            }
            if Instant::now() + interval > deadline {
                return Err(PveError::TaskTimeout(upid.to_string()));
            }
            tokio::time::sleep(interval).await;
            interval = (interval * 2).min(Duration::from_secs(1));
        }
    }
}
