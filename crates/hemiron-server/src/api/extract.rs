//! Request extractors: the authenticated caller, JSON bodies and query strings whose
//! rejections are problem+json, `If-Match` versions.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRef, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, Method};
use serde::de::DeserializeOwned;

use super::problem::ApiError;
use super::AppState;
use crate::authz::Via;
use crate::error::ServiceError;
use crate::identity::auth;
use crate::service::Caller;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "hemiron_session";
/// The cookie holding the CSRF token (readable by the page's scripts).
pub const CSRF_COOKIE: &str = "hemiron_csrf";
/// The header cookie-authenticated mutations must carry, with the CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The client's address (the TCP peer).
pub fn client_of(parts: &Parts) -> String {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// An anonymous caller (login): only the address is known.
#[derive(Debug, Clone)]
pub struct Anonymous(pub Caller);

impl<S: Send + Sync> FromRequestParts<S> for Anonymous {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Anonymous(Caller {
            principal: None,
            client: client_of(parts),
        }))
    }
}

/// An authenticated caller: `Authorization: Bearer SECRET` (an API token or a session token),
/// or the session cookie — then, on anything but GET/HEAD/OPTIONS, the CSRF header too.
#[derive(Debug, Clone)]
pub struct Authed(pub Caller);

impl<S> FromRequestParts<S> for Authed
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let app = AppState::from_ref(state);
        let client = client_of(parts);
        let bearer = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then(|| rest.trim().to_string())
            });
        let (secret, from_cookie) = match bearer {
            Some(b) => (b, false),
            None => match cookie(parts, SESSION_COOKIE) {
                Some(c) => (c, true),
                None => return Err(ServiceError::Unauthenticated.into()),
            },
        };
        let principal = auth::authenticate(&app.svc, &secret)
            .await?
            .ok_or(ServiceError::Unauthenticated)?;
        if from_cookie {
            let Via::Session { csrf_token, .. } = &principal.via else {
                return Err(ServiceError::Unauthenticated.into());
            };
            let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
            let header = parts.headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
            if !safe && header != Some(csrf_token.as_str()) {
                return Err(ServiceError::Csrf.into());
            }
        }
        tracing::Span::current().record("user", principal.username.as_str());
        Ok(Authed(Caller {
            principal: Some(principal),
            client,
        }))
    }
}

fn cookie(parts: &Parts, name: &str) -> Option<String> {
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// Request bodies larger than this are refused (none comes near it).
pub const MAX_BODY: usize = 1 << 20;

/// A JSON body; a bad one answers 400 problem+json saying what is wrong.
#[derive(Debug)]
pub struct Body<T>(pub T);

impl<T, S> FromRequest<S> for Body<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;
    async fn from_request(req: Request, _: &S) -> Result<Self, Self::Rejection> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|m| {
                let m = m.trim().to_ascii_lowercase();
                m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
            })
            .unwrap_or(false);
        if !json {
            return Err(ApiError::BadBody(
                "expected Content-Type: application/json".into(),
            ));
        }
        let bytes = axum::body::to_bytes(req.into_body(), MAX_BODY)
            .await
            .map_err(|_| ApiError::BadBody(format!("larger than {MAX_BODY} bytes")))?;
        // No store keeps NUL in text (PostgreSQL refuses it): refuse it here, for every field.
        if bytes.windows(6).any(|w| w == b"\\u0000") {
            return Err(ApiError::BadBody(
                "strings must not contain NUL characters".into(),
            ));
        }
        serde_json::from_slice(&bytes)
            .map(Body)
            .map_err(|e| ApiError::BadBody(e.to_string()))
    }
}

/// A query string; a bad one answers 400 problem+json.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(e) => Err(ApiError::BadQuery(e.body_text())),
        }
    }
}

/// The version an `If-Match` header names (`"N"`, as ETags are given). Required: 428
/// without it; an ETag this server never gave (weak, malformed) cannot match: 412.
#[derive(Debug, Clone, Copy)]
pub struct IfMatch(pub i64);

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let Some(v) = parts.headers.get(header::IF_MATCH) else {
            return Err(ApiError::PreconditionRequired);
        };
        let text = v.to_str().unwrap_or("").trim();
        text.strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            .and_then(|t| t.parse::<i64>().ok())
            .map(IfMatch)
            .ok_or_else(|| ApiError::BadIfMatch {
                given: text.chars().take(100).collect(),
            })
    }
}

/// The strong ETag of a version.
pub fn etag(version: i64) -> String {
    format!("\"{version}\"")
}

/// Path parameters; a bad one (not UTF-8, say) answers 400 problem+json.
#[derive(Debug)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            Err(e) => Err(ApiError::BadQuery(e.body_text())),
        }
    }
}
