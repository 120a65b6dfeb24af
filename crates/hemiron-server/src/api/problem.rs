//! RFC 9457 problem details: the one place where errors become HTTP answers.

use std::collections::BTreeMap;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::ServiceError;

/// An error answer (`application/problem+json`).
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// A URI reference naming the kind of problem, e.g. `/problems/mfa-required`.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the kind.
    pub title: String,
    pub status: u16,
    /// What went wrong with this request.
    pub detail: String,
    /// For invalid requests: the problem with each field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<BTreeMap<String, String>>,
    /// For 412: the resource's current version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_version: Option<i64>,
}

/// What a handler can fail with: a service error, or a problem of the HTTP exchange itself.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error("this request needs an If-Match header with the resource's ETag")]
    PreconditionRequired,
    #[error("If-Match {given:?} is not an ETag this server gave")]
    BadIfMatch { given: String },
    #[error("the request body is not valid: {0}")]
    BadBody(String),
    #[error("the query string is not valid: {0}")]
    BadQuery(String),
    #[error("the Idempotency-Key was used before with a different request")]
    IdempotencyMismatch,
    #[error("the Idempotency-Key must be 1 to 255 visible ASCII characters")]
    BadIdempotencyKey,
    #[error("no such API endpoint")]
    NoRoute,
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        use ServiceError as S;
        match self {
            ApiError::Service(e) => match e {
                S::NotFound { .. } => (StatusCode::NOT_FOUND, "not-found", "Not found"),
                S::Forbidden => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
                S::Invalid { .. } => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid-request",
                    "Invalid request",
                ),
                S::Conflict(_) => (StatusCode::CONFLICT, "conflict", "Conflict"),
                S::QuotaExceeded(_) => (StatusCode::CONFLICT, "quota-exceeded", "Quota exceeded"),
                S::NoCapacity(_) => (StatusCode::CONFLICT, "no-capacity", "No capacity"),
                S::Stale { .. } => (
                    StatusCode::PRECONDITION_FAILED,
                    "stale-version",
                    "Precondition failed",
                ),
                S::Unauthenticated => (
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    "Authentication required",
                ),
                S::BadCredentials | S::BadMfa => (
                    StatusCode::UNAUTHORIZED,
                    "invalid-credentials",
                    "Invalid credentials",
                ),
                S::MfaRequired => (StatusCode::UNAUTHORIZED, "mfa-required", "MFA required"),
                S::RateLimited { .. } => (
                    StatusCode::TOO_MANY_REQUESTS,
                    "too-many-attempts",
                    "Too many attempts",
                ),
                S::Csrf => (StatusCode::FORBIDDEN, "csrf", "CSRF check failed"),
                S::Store(_) | S::Crypto(_) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "Internal error",
                ),
            },
            ApiError::PreconditionRequired => (
                StatusCode::PRECONDITION_REQUIRED,
                "if-match-required",
                "Precondition required",
            ),
            ApiError::BadIfMatch { .. } => (
                StatusCode::PRECONDITION_FAILED,
                "stale-version",
                "Precondition failed",
            ),
            ApiError::BadBody(_) | ApiError::BadQuery(_) | ApiError::BadIdempotencyKey => {
                (StatusCode::BAD_REQUEST, "bad-request", "Bad request")
            }
            ApiError::IdempotencyMismatch => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "Idempotency key reused",
            ),
            ApiError::NoRoute => (StatusCode::NOT_FOUND, "not-found", "Not found"),
        }
    }

    /// The problem document for this error.
    pub fn problem(&self) -> Problem {
        let (status, kind, title) = self.parts();
        let detail = match self {
            // Internal detail stays in the server's log.
            ApiError::Service(ServiceError::Store(_) | ServiceError::Crypto(_)) => {
                "the server failed to handle the request; it has been logged".to_string()
            }
            other => other.to_string(),
        };
        Problem {
            kind: format!("/problems/{kind}"),
            title: title.to_string(),
            status: status.as_u16(),
            detail,
            errors: match self {
                ApiError::Service(ServiceError::Invalid { fields }) => Some(fields.clone()),
                _ => None,
            },
            current_version: match self {
                ApiError::Service(ServiceError::Stale { current, .. }) => Some(*current),
                _ => None,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = self.problem();
        if problem.status >= 500 {
            tracing::error!(error = %crate::error_chain(&self), "request failed");
        }
        let status =
            StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut resp = (status, body).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        match &self {
            ApiError::Service(ServiceError::RateLimited { retry_after_secs }) => {
                if let Ok(v) = HeaderValue::from_str(&retry_after_secs.to_string()) {
                    resp.headers_mut().insert(header::RETRY_AFTER, v);
                }
            }
            ApiError::Service(ServiceError::Unauthenticated | ServiceError::BadCredentials) => {
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"hemiron\""),
                );
            }
            _ => {}
        }
        resp
    }
}
