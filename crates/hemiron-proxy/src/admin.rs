//! The admin API (bearer token) and `/metrics`, on their own loopback port.
//!
//! - `GET /healthz`, `GET /metrics`: no credentials.
//! - `GET /api/v1/apps`, `GET /api/v1/apps/{app}`: status (weights, verdicts, live numbers).
//! - `POST /api/v1/apps/{app}/rollout` `{"version": "v2", "canary": "10:2m,50"}` or
//!   `{"version": "v2", "blue_green": true}`.
//! - `POST /api/v1/apps/{app}/{promote|pause|resume|abort|rollback}`.
//! - `POST /api/v1/reload`: reread the configuration file now.
//!
//! Errors are RFC 9457 problem documents.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::engine::{persist, Engine, Op, Shared};
use crate::rollout::{parse_steps, RolloutError, Strategy};
use crate::runtime::now_ms;

/// What the admin handlers share.
pub struct Admin {
    pub engine: tokio::sync::Mutex<Engine>,
    /// Serializes state-file writes in the order of the operations.
    pub persist: tokio::sync::Mutex<()>,
    pub shared: Arc<Shared>,
    pub config_path: PathBuf,
    /// The data plane's certificates (when a listener speaks TLS): a reload may change them.
    pub resolver: Option<Arc<crate::tls::Resolver>>,
    token_digest: [u8; 32],
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Admin(..)")
    }
}

impl Admin {
    pub fn new(
        engine: Engine,
        config_path: PathBuf,
        resolver: Option<Arc<crate::tls::Resolver>>,
        token: &str,
    ) -> Admin {
        let shared = engine.shared.clone();
        Admin {
            engine: tokio::sync::Mutex::new(engine),
            persist: tokio::sync::Mutex::new(()),
            shared,
            config_path,
            resolver,
            token_digest: Sha256::digest(token.as_bytes()).into(),
        }
    }

    /// Persists the engine's state after a change (called with the engine locked; the
    /// write itself happens after the lock is released, in operation order).
    pub async fn save(
        &self,
        engine: tokio::sync::MutexGuard<'_, Engine>,
    ) -> Result<(), AdminError> {
        // Nothing is written rather than a damaged file.
        let bytes = engine
            .snapshot()
            .map_err(|e| AdminError::Persist(e.to_string()))?;
        let path = engine.state_path().to_owned();
        let order = self.persist.lock().await;
        drop(engine);
        let written = tokio::task::spawn_blocking(move || persist(&path, &bytes)).await;
        drop(order);
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(AdminError::Persist(e.to_string())),
            Err(e) => Err(AdminError::Persist(e.to_string())),
        }
    }
}

/// A failed admin request, answered in one place as a problem document.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("a valid bearer token is required")]
    Unauthorized,
    #[error(transparent)]
    Rollout(#[from] RolloutError),
    #[error("{0}")]
    BadRequest(String),
    #[error("the configuration is invalid; nothing changed")]
    Config(Vec<String>),
    #[error("the state could not be saved: {0}")]
    Persist(String),
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let (status, title) = match &self {
            AdminError::Unauthorized => (StatusCode::UNAUTHORIZED, "Unauthorized"),
            AdminError::Rollout(RolloutError::NoApp(_)) => (StatusCode::NOT_FOUND, "No such app"),
            AdminError::Rollout(RolloutError::NoVersion { .. } | RolloutError::Steps(_))
            | AdminError::BadRequest(_) => (StatusCode::BAD_REQUEST, "Bad request"),
            AdminError::Rollout(_) => (StatusCode::CONFLICT, "Conflict"),
            AdminError::Config(_) => (StatusCode::UNPROCESSABLE_ENTITY, "Invalid configuration"),
            AdminError::Persist(_) => (StatusCode::INTERNAL_SERVER_ERROR, "State not saved"),
        };
        let mut body = json!({
            "type": "about:blank",
            "title": title,
            "status": status.as_u16(),
            "detail": self.to_string(),
        });
        if let AdminError::Config(problems) = &self {
            body["problems"] = json!(problems);
        }
        let mut r = (status, Json(body)).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        r
    }
}

fn authorize(admin: &Admin, headers: &HeaderMap) -> Result<(), AdminError> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(AdminError::Unauthorized)?;
    // Comparing digests: equal time whatever the guess.
    let digest: [u8; 32] = Sha256::digest(given.trim().as_bytes()).into();
    if digest == admin.token_digest {
        Ok(())
    } else {
        Err(AdminError::Unauthorized)
    }
}

pub fn router(admin: Arc<Admin>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/api/v1/apps", get(list))
        .route("/api/v1/apps/{app}", get(show))
        .route("/api/v1/apps/{app}/rollout", post(start))
        .route("/api/v1/apps/{app}/{action}", post(action))
        .route("/api/v1/reload", post(reload))
        .with_state(admin)
}

async fn metrics(State(admin): State<Arc<Admin>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        admin.shared.metrics.render(),
    )
        .into_response()
}

async fn list(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
) -> Result<Json<Value>, AdminError> {
    authorize(&admin, &headers)?;
    let engine = admin.engine.lock().await;
    let apps: Vec<Value> = engine
        .config()
        .apps
        .iter()
        .filter_map(|a| status(&engine, &a.name))
        .collect();
    Ok(Json(json!({ "apps": apps })))
}

async fn show(
    State(admin): State<Arc<Admin>>,
    Path(app): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, AdminError> {
    authorize(&admin, &headers)?;
    let engine = admin.engine.lock().await;
    status(&engine, &app)
        .map(Json)
        .ok_or(AdminError::Rollout(RolloutError::NoApp(app)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartBody {
    version: String,
    canary: Option<String>,
    #[serde(default)]
    blue_green: bool,
}

async fn start(
    State(admin): State<Arc<Admin>>,
    Path(app): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, AdminError> {
    let arrived = Instant::now();
    authorize(&admin, &headers)?;
    let body: StartBody = serde_json::from_slice(&body)
        .map_err(|e| AdminError::BadRequest(format!("bad request body: {e}")))?;
    let strategy = match (body.blue_green, body.canary) {
        (true, Some(_)) => {
            return Err(AdminError::BadRequest(
                "choose canary steps or blue_green, not both".into(),
            ))
        }
        (true, None) => Strategy::BlueGreen,
        (false, steps) => Strategy::Canary {
            steps: parse_steps(steps.as_deref().unwrap_or("10:2m,25:2m,50:5m,100"))?,
        },
    };
    run_op(
        &admin,
        &app,
        Op::Start {
            version: body.version,
            strategy,
        },
        arrived,
    )
    .await
}

async fn action(
    State(admin): State<Arc<Admin>>,
    Path((app, action)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, AdminError> {
    let arrived = Instant::now();
    authorize(&admin, &headers)?;
    let op = match action.as_str() {
        "promote" => Op::Promote,
        "pause" => Op::Pause,
        "resume" => Op::Resume,
        "abort" => Op::Abort,
        "rollback" => Op::Rollback,
        other => {
            return Err(AdminError::BadRequest(format!(
                "unknown action {other:?}; use rollout, promote, pause, resume, abort or rollback"
            )))
        }
    };
    run_op(&admin, &app, op, arrived).await
}

async fn run_op(
    admin: &Admin,
    app: &str,
    op: Op,
    arrived: Instant,
) -> Result<Json<Value>, AdminError> {
    // Not subject to tokio's cooperative budget: a free lock is taken at once instead of
    // the task yielding behind every ready data-plane task (which the switch latency, from
    // the call's arrival to the new table, would count).
    let mut engine = tokio::task::unconstrained(admin.engine.lock()).await;
    engine.apply(app, op, arrived)?;
    let body = status(&engine, app).unwrap_or(Value::Null);
    admin.save(engine).await?;
    Ok(Json(body))
}

async fn reload(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
) -> Result<Json<Value>, AdminError> {
    authorize(&admin, &headers)?;
    reload_config(&admin).await?;
    Ok(Json(json!({ "reloaded": true })))
}

/// Rereads the configuration file; an invalid file changes nothing.
pub async fn reload_config(admin: &Admin) -> Result<(), AdminError> {
    let path = admin.config_path.clone();
    let resolver = admin.resolver.clone();
    let read = tokio::task::spawn_blocking(move || read_config(&path, resolver.as_deref()))
        .await
        .map_err(|e| AdminError::BadRequest(e.to_string()))?;
    let (config, certificates) = match read {
        Ok(read) => read,
        Err(problems) => {
            for p in &problems {
                tracing::error!(problem = %p, "configuration not reloaded");
            }
            return Err(AdminError::Config(problems));
        }
    };
    let mut engine = admin.engine.lock().await;
    if let (Some(resolver), Some(prepared)) = (&admin.resolver, certificates) {
        resolver.install(prepared);
    }
    if **engine.config() == config {
        return Ok(());
    }
    engine.reload(config);
    tracing::info!("configuration reloaded");
    admin.save(engine).await
}

/// Reads the configuration file and, when its certificates differ from those served, loads
/// them: one that cannot be read is a problem of the file like any other, and refuses it.
fn read_config(
    path: &std::path::Path,
    resolver: Option<&crate::tls::Resolver>,
) -> Result<(crate::config::Config, Option<crate::tls::Prepared>), Vec<String>> {
    let config = crate::config::load(path).map_err(|e| match e {
        crate::config::ConfigError::Invalid { problems, .. } => problems,
        e => vec![e.to_string()],
    })?;
    let certificates = match resolver {
        Some(r) if r.differs(&config.certificates) => Some(
            crate::tls::Resolver::prepare(&config.certificates)
                .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>())?,
        ),
        _ => None,
    };
    Ok((config, certificates))
}

/// An app's status: rollout, weights, verdicts and live numbers.
pub fn status(engine: &Engine, app_name: &str) -> Option<Value> {
    let app = engine.config().apps.iter().find(|a| a.name == app_name)?;
    let state = engine.state(app_name)?;
    let weights = state.weights();
    let mono = now_ms(engine.shared.epoch);
    let versions: Vec<Value> = app
        .versions
        .iter()
        .map(|v| {
            let weight = weights.iter().find(|(id, _)| *id == v.id).map(|(_, w)| *w);
            let rt = engine.runtime(app_name, &v.id);
            let counts = rt.map(|rt| {
                let m = &rt.metrics;
                json!({
                    "2xx": m.requests[2].get(),
                    "3xx": m.requests[3].get(),
                    "4xx": m.requests[4].get(),
                    "5xx": m.requests[5].get(),
                    "failed": m.requests[0].get(),
                    "inflight": m.inflight.get(),
                    "drain_cancelled": m.drain_cancelled.get(),
                    "retries": m.retries.get(),
                })
            });
            let endpoints: Vec<Value> = rt
                .map(|rt| {
                    rt.endpoints
                        .iter()
                        .map(|e| {
                            json!({
                                "address": e.address,
                                "healthy": e.usable(mono),
                                "checks_pass": e.active_ok.load(std::sync::atomic::Ordering::Relaxed),
                                "ejected": e.ejected_until.load(std::sync::atomic::Ordering::Relaxed) > mono,
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            json!({
                "version": v.id,
                "weight_percent": weight.map_or(0.0, |w| f64::from(w) / 100.0),
                "serving": weight.is_some(),
                "healthy": rt.is_some_and(|rt| rt.healthy(mono)),
                "requests": counts,
                "endpoints": endpoints,
            })
        })
        .collect();
    let rollout = state.rollout.as_ref().map(|r| {
        let (steps, step_weight, step_duration) = match &r.strategy {
            Strategy::BlueGreen => (Value::Null, 100.0, None),
            Strategy::Canary { steps } => (
                json!(steps
                    .iter()
                    .map(|s| json!({"weight_percent": f64::from(s.weight) / 100.0, "duration_ms": s.duration_ms}))
                    .collect::<Vec<_>>()),
                steps.get(r.step).map_or(100.0, |s| f64::from(s.weight) / 100.0),
                steps.get(r.step).and_then(|s| s.duration_ms),
            ),
        };
        let baseline = match &r.baseline {
            Some(b) => json!({"version": b, "kind": "separate baseline instance set"}),
            None => json!({"version": state.stable, "kind": "stable (no separate baseline declared)"}),
        };
        json!({
            "version": r.version,
            "strategy": match r.strategy { Strategy::BlueGreen => "blue-green", Strategy::Canary { .. } => "canary" },
            "step": r.step,
            "step_weight_percent": step_weight,
            "step_duration_ms": step_duration,
            "steps": steps,
            "paused": r.paused,
            "waiting_for_promote": step_duration.is_none(),
            "passing_intervals": r.passes,
            "passes_needed": app.analysis.passes_per_step,
            "analysis": app.analysis.enabled,
            "baseline": baseline,
            "started_ms": r.started_ms,
        })
    });
    let verdict = engine.last_verdicts.get(app_name).map(|f| {
        json!({
            "verdict": match f.verdict {
                crate::metrics::VerdictKind::Pass => "pass",
                crate::metrics::VerdictKind::NoData => "no data (hold)",
                crate::metrics::VerdictKind::Fail => "fail",
            },
            "canary_error_percent": f.canary_error_ratio * 100.0,
            "baseline_error_percent": f.baseline_error_ratio * 100.0,
            "canary_median_ms": f.canary_median_ms,
            "baseline_median_ms": f.baseline_median_ms,
            "errors_p": f.errors_p,
            "latency_p": f.latency_p,
            "alpha": f.alpha,
            "error_points_threshold": f.error_points * 100.0,
            "latency_shift_threshold_percent": f.latency_shift * 100.0,
        })
    });
    let events: Vec<Value> = state
        .events
        .iter()
        .rev()
        .take(20)
        .map(|e| json!({"at_ms": e.at_ms, "what": e.what}))
        .collect();
    Some(json!({
        "app": app_name,
        "stable": state.stable,
        "previous_stable": state.previous_stable,
        "rollout": rollout,
        "last_outcome": state.last_outcome,
        "versions": versions,
        "last_interval": verdict,
        "events": events,
        "switch_p99_seconds": engine.shared.metrics.switch_quantile(0.99),
    }))
}
