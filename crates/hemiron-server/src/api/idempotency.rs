//! `Idempotency-Key` on POSTs: the first answer (below 500) is stored for 24 h per principal
//! and key; a replay with the same request gets it again without running anything, the same
//! key with a different request gets 422, and one arriving while the first still runs gets
//! 409.

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::problem::ApiError;
use super::AppState;
use crate::error::ServiceError;
use crate::identity::auth;
use crate::store::{idempotency, now_ms};

/// Bodies larger than this are refused (no API body comes near it).
const MAX_BODY: usize = 1 << 20;
pub const HEADER: &str = "idempotency-key";

pub async fn layer(State(app): State<AppState>, req: Request, next: Next) -> Response {
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    let Some(key) = req.headers().get(HEADER).cloned() else {
        return next.run(req).await;
    };
    match handle(app, key, req, next).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn handle(
    app: AppState,
    key: HeaderValue,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let key = key
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or(ApiError::BadIdempotencyKey)?
        .to_string();
    // The principal the key belongs to; without one the handler answers 401 itself.
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' ').map(|(_, s)| s.trim().to_string()));
    let cookie = req
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == super::extract::SESSION_COOKIE)
        .map(|(_, v)| v.to_string());
    let Some(secret) = bearer.or(cookie) else {
        return Ok(next.run(req).await);
    };
    let Some(who) = auth::authenticate(&app.svc, &secret).await? else {
        return Ok(next.run(req).await);
    };
    let principal = who.key();
    let (parts, body) = req.into_parts();
    let bytes = to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| ApiError::BadBody("the body is too large".into()))?;
    let mut h = Sha256::new();
    h.update(parts.method.as_str().as_bytes());
    h.update([0]);
    h.update(parts.uri.path().as_bytes());
    h.update([0]);
    h.update(&bytes);
    let hash = hex::encode(h.finalize());

    let db = &app.svc.db;
    if !idempotency::claim(db, &principal, &key, &hash, now_ms())
        .await
        .map_err(ServiceError::from)?
    {
        let Some(stored) = idempotency::get(db, &principal, &key)
            .await
            .map_err(ServiceError::from)?
        else {
            return Err(ServiceError::Conflict("retry: the key was just released".into()).into());
        };
        if stored.request_hash != hash {
            return Err(ApiError::IdempotencyMismatch);
        }
        if stored.status == 0 {
            return Err(ServiceError::Conflict(
                "a request with this Idempotency-Key is still running".into(),
            )
            .into());
        }
        let status = u16::try_from(stored.status)
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::OK);
        let empty = stored.response.is_empty();
        let mut resp = (status, stored.response).into_response();
        // Every answer of this API with a body is JSON: errors as problem details.
        let kind = if status.is_client_error() {
            "application/problem+json"
        } else {
            "application/json"
        };
        if !empty {
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
        }
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
        return Ok(resp);
    }

    let resp = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    let status = resp.status();
    if status.is_server_error() {
        idempotency::release(db, &principal, &key)
            .await
            .map_err(ServiceError::from)?;
        return Ok(resp);
    }
    let (parts, body) = resp.into_parts();
    let bytes = to_bytes(body, usize::MAX)
        .await
        .map_err(|_| ApiError::BadBody("the answer could not be read".into()))?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    idempotency::complete(db, &principal, &key, i64::from(status.as_u16()), &text)
        .await
        .map_err(ServiceError::from)?;
    Ok(Response::from_parts(parts, Body::from(bytes)))
}
