//! The one place where failures become HTTP answers, in Proxmox's shape.
//!
//! Proxmox puts the error message in the HTTP reason phrase (proxmoxer reports `resp.reason`)
//! and in the body as `{"data":null,"message":"…\n","errors":{param: msg}}`. Parameter errors
//! are 400 `Parameter verification failed.`; bad credentials 401; runtime failures 500 with
//! the message; unknown paths and methods 501 `Method 'GET /x' not implemented`.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// A failed API call.
#[derive(Debug)]
pub enum ApiError {
    /// Invalid parameters: 400 with one message per parameter.
    Params(BTreeMap<String, String>),
    /// A request that is wrong as a whole: 400.
    BadRequest(String),
    /// Missing or bad credentials: 401 (after the caller's delay).
    Unauthorized(String),
    /// Permission check failed: 403.
    Forbidden(String),
    /// No such method or path: 501.
    NotImplemented(String),
    /// Any failure while doing what was asked: 500 with the message.
    Runtime(String),
    /// Another node of the cluster could not be reached: 595, as Proxmox's proxy answers.
    Unreachable(String),
}

impl ApiError {
    pub fn param(name: &str, msg: impl Into<String>) -> Self {
        let mut m = BTreeMap::new();
        m.insert(name.to_string(), msg.into());
        ApiError::Params(m)
    }

    pub fn runtime(msg: impl Into<String>) -> Self {
        ApiError::Runtime(msg.into())
    }

    /// A runtime failure described by an error and its whole source chain.
    pub fn from_err(err: &(dyn std::error::Error + 'static)) -> Self {
        ApiError::Runtime(crate::error_chain(err))
    }

    fn parts(&self) -> (StatusCode, String, Option<&BTreeMap<String, String>>) {
        match self {
            ApiError::Params(errors) => (
                StatusCode::BAD_REQUEST,
                "Parameter verification failed.".into(),
                Some(errors),
            ),
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m.clone(), None),
            ApiError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, m.clone(), None),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, m.clone(), None),
            ApiError::NotImplemented(m) => (StatusCode::NOT_IMPLEMENTED, m.clone(), None),
            ApiError::Runtime(m) => (StatusCode::INTERNAL_SERVER_ERROR, m.clone(), None),
            ApiError::Unreachable(m) => (
                StatusCode::from_u16(595).unwrap_or(StatusCode::BAD_GATEWAY),
                m.clone(),
                None,
            ),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (_, msg, errors) = self.parts();
        write!(f, "{msg}")?;
        if let Some(errors) = errors {
            for (k, v) in errors {
                write!(f, " {k}: {v};")?;
            }
        }
        Ok(())
    }
}

/// The reason phrase: the message's first line, with anything a status line can't carry
/// replaced (Proxmox turns messages with CR/LF into a plain 400; we keep the first line).
pub fn reason_phrase(message: &str) -> String {
    let first = message.lines().next().unwrap_or_default().trim();
    let cleaned: String = first
        .chars()
        .map(|c| {
            if c == '\t' || (' '..='~').contains(&c) {
                c
            } else {
                '?'
            }
        })
        .take(300)
        .collect();
    if cleaned.is_empty() {
        "error".into()
    } else {
        cleaned
    }
}

/// Builds a Proxmox error response.
pub fn error_response(
    status: StatusCode,
    message: &str,
    errors: Option<&BTreeMap<String, String>>,
) -> Response {
    let mut body = json!({ "data": null, "message": format!("{message}\n") });
    if let Some(errors) = errors {
        body["errors"] = json!(errors);
    }
    let mut resp = (status, axum::Json(body)).into_response();
    if let Ok(reason) = hyper::ext::ReasonPhrase::try_from(reason_phrase(message).into_bytes()) {
        resp.extensions_mut().insert(reason);
    }
    resp
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message, errors) = self.parts();
        tracing::debug!(status = status.as_u16(), %message, "request failed");
        error_response(status, &message, errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_phrase_is_first_line_and_safe() {
        assert_eq!(
            reason_phrase("VM is locked (backup)\nmore"),
            "VM is locked (backup)"
        );
        assert_eq!(reason_phrase("bad\u{7}bell"), "bad?bell");
        assert_eq!(reason_phrase(""), "error");
    }
}
