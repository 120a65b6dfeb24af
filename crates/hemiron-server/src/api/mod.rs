//! The HTTP API: REST JSON under `/api/v1`, problem+json errors, OpenAPI 3.1 generated from
//! the handlers (served at `/api/v1/openapi.json`, with an interactive page at
//! `/api/v1/docs`), `/healthz` and `/metrics`.
//!
//! Everything under `/api/v1` but login and the documents needs credentials (401 without).

pub mod auth;
pub mod backups;
pub mod extract;
pub mod fleet;
pub mod idempotency;
pub mod metrics;
pub mod problem;
pub mod tenants;
pub mod tokens;
pub mod users;
pub mod views;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tracing::Instrument;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::OpenApi;
use utoipa::Modify;
use utoipa_axum::router::OpenApiRouter;

use self::extract::{etag, Authed};
use self::metrics::{Metrics, RequestLabels, RouteLabels};
use self::problem::ApiError;
use crate::service::Services;

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    pub svc: Services,
    /// Served over TLS (session cookies get `Secure`).
    pub tls: bool,
    pub metrics: Arc<Metrics>,
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Hemiron control plane",
        description = "Multi-tenant API over clusters of Proxmox VE-compatible nodes. Errors are \
                       RFC 9457 problem+json. Reads give an ETag (the resource's version); \
                       PATCH and DELETE need it in If-Match (428 without, 412 when stale). \
                       POSTs accept an Idempotency-Key.",
        license(name = "Apache-2.0")
    ),
    servers((url = "/api/v1")),
    modifiers(&Security),
    security(("bearer" = []), ("session" = [])),
    tags(
        (name = "auth", description = "Login, sessions, MFA"),
        (name = "users", description = "User accounts"),
        (name = "tokens", description = "API tokens"),
        (name = "tenants", description = "Tenants and quotas"),
        (name = "plans", description = "VPS sizes"),
        (name = "audit", description = "Audit log"),
        (name = "infra", description = "Clusters and nodes"),
        (name = "vps", description = "VPSes, templates, jobs"),
        (name = "backups", description = "Backups of VPSes, their schedules and restores"),
    )
)]
struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(extract::SESSION_COOKIE))),
        );
    }
}

/// The `/api/v1` routes and their OpenAPI document.
pub fn api_routes() -> (Router<AppState>, OpenApi) {
    let (router, api) = OpenApiRouter::with_openapi(<ApiDoc as utoipa::OpenApi>::openapi())
        .merge(auth::router())
        .merge(users::router())
        .merge(tokens::router())
        .merge(tenants::router())
        .merge(fleet::router())
        .merge(backups::router())
        .split_for_parts();
    (router, api)
}

/// The OpenAPI document as served (and committed as `openapi.json`).
pub fn openapi_json() -> String {
    document_json(&api_routes().1)
}

fn document_json(doc: &OpenApi) -> String {
    let mut text = doc.to_pretty_json().unwrap_or_default();
    text.push('\n');
    text
}

/// The whole application.
pub fn app(state: AppState) -> Router {
    let (api, doc) = api_routes();
    let doc_json = document_json(&doc);
    let api = api
        .route(
            "/openapi.json",
            get(move || {
                let text = doc_json.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], text) }
            }),
        )
        .merge(<utoipa_scalar::Scalar<_> as utoipa_scalar::Servable<_>>::with_url("/docs", doc))
        .fallback(no_route)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            idempotency::layer,
        ))
        .layer(middleware::from_fn(refuse_nul));
    Router::new()
        .nest("/api/v1", api)
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .fallback(no_route_public)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// A span per request, and the request metrics.
async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let span = tracing::info_span!("request", %method, %route, user = tracing::field::Empty, status = tracing::field::Empty);
    let started = Instant::now();
    let mut resp = next.run(req).instrument(span.clone()).await;
    let status = resp.status().as_u16();
    span.record("status", status);
    state
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            route: route.clone(),
            method: method.clone(),
            status,
        })
        .inc();
    state
        .metrics
        .duration
        .get_or_create(&RouteLabels { route, method })
        .observe(started.elapsed().as_secs_f64());
    resp.headers_mut()
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    resp
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    database: &'static str,
}

/// Refuses NUL characters anywhere in the path or query (no store keeps them in text).
async fn refuse_nul(req: Request, next: Next) -> Response {
    let uri = req.uri().to_string();
    if uri.contains("%00") {
        return ApiError::BadQuery("the URL must not contain NUL characters".into())
            .into_response();
    }
    next.run(req).await
}

/// Liveness and database reachability.
async fn healthz(State(state): State<AppState>) -> Response {
    let ok = crate::store::ping(&state.svc.db).await.is_ok();
    let body = Health {
        status: if ok { "ok" } else { "degraded" },
        database: state.svc.db.backend().as_str(),
    };
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// Unknown `/api/v1` paths: 401 without credentials (nothing is revealed), else 404.
async fn no_route(_: Authed) -> ApiError {
    ApiError::NoRoute
}

async fn no_route_public() -> ApiError {
    ApiError::NoRoute
}

/// A JSON answer with the resource version as its strong ETag.
pub fn tagged<T: Serialize>(status: StatusCode, version: i64, body: &T) -> Response {
    let mut resp = (status, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&etag(version)) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

/// 201 with Location and ETag.
pub fn created<T: Serialize>(location: &str, version: i64, body: &T) -> Response {
    let mut resp = tagged(StatusCode::CREATED, version, body);
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}
