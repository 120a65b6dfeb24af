//! Turning an HTTP request into a validated Proxmox API call.
//!
//! Parameters arrive as the query string and, for POST/PUT, an urlencoded or JSON body;
//! query parameters are merged over body ones and `_dc` (a cache buster) is dropped, as in
//! Proxmox's `extract_params`. Path parameters join them, and a body value that contradicts
//! the path is refused. The set is then checked against the endpoint's hand-written
//! Proxmox schema (`hemiron_pve::spec`), which reports every problem at once.

use axum::extract::{FromRequest, MatchedPath, RawPathParams, Request};
use axum::http::{header, Method};
use hemiron_pve::ValidatedParams;

use super::error::ApiError;
use super::server::ClientAddr;
use crate::auth::Principal;

/// The API prefix every endpoint lives under.
pub const PREFIX: &str = "/api2/json";

/// A validated call: who makes it and with which parameters.
#[derive(Debug)]
pub struct Call {
    pub principal: Principal,
    pub params: ValidatedParams,
    pub client: Option<std::net::SocketAddr>,
}

pub const MAX_BODY: usize = 4 * 1024 * 1024;

fn form_pairs(raw: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(raw)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// JSON bodies carry typed values; validation takes strings as a form would deliver them.
fn json_pairs(raw: &[u8]) -> Result<Vec<(String, String)>, ApiError> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let value: serde_json::Value = serde_json::from_slice(raw)
        .map_err(|e| ApiError::BadRequest(format!("unable to parse JSON body - {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| ApiError::BadRequest("JSON body must be an object".into()))?;
    let mut out = Vec::new();
    for (k, v) in obj {
        match v {
            serde_json::Value::Null => {}
            serde_json::Value::String(s) => out.push((k.clone(), s.clone())),
            serde_json::Value::Bool(b) => out.push((k.clone(), if *b { "1" } else { "0" }.into())),
            serde_json::Value::Number(n) => out.push((k.clone(), n.to_string())),
            serde_json::Value::Array(items) => {
                for item in items {
                    let s = match item {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    out.push((k.clone(), s));
                }
            }
            serde_json::Value::Object(_) => out.push((k.clone(), v.to_string())),
        }
    }
    Ok(out)
}

impl<S: Send + Sync> FromRequest<S> for Call {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let method = parts.method.clone();
        let template = parts
            .extensions
            .get::<MatchedPath>()
            .map(|m| m.as_str().trim_start_matches(PREFIX).to_string())
            .ok_or_else(|| ApiError::NotImplemented("no route".into()))?;
        let principal = parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| ApiError::Unauthorized("no ticket".into()))?;
        let client = parts.extensions.get::<ClientAddr>().map(|c| c.0);
        let path_params =
            <RawPathParams as axum::extract::FromRequestParts<S>>::from_request_parts(
                &mut parts, state,
            )
            .await
            .map_err(|_| ApiError::BadRequest("invalid path".into()))?;

        let mut params: Vec<(String, String)> = Vec::new();
        if method == Method::POST || method == Method::PUT {
            let is_json = parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| ct.starts_with("application/json"));
            let bytes = axum::body::to_bytes(body, MAX_BODY)
                .await
                .map_err(|_| ApiError::BadRequest("request body too large or unreadable".into()))?;
            params = if is_json {
                json_pairs(&bytes)?
            } else {
                form_pairs(&bytes)
            };
        }
        if let Some(query) = parts.uri.query() {
            // Query values override body values of the same name.
            let query = form_pairs(query.as_bytes());
            params.retain(|(k, _)| !query.iter().any(|(q, _)| q == k));
            params.extend(query);
        }
        params.retain(|(k, _)| k != "_dc");
        for (name, value) in path_params.iter() {
            let value = value.to_string();
            if let Some((_, given)) = params.iter().find(|(k, _)| k == name) {
                if *given != value {
                    return Err(ApiError::param(
                        name,
                        "duplicate parameter (already defined in URI) with conflicting values!",
                    ));
                }
                continue;
            }
            params.push((name.to_string(), value));
        }
        let spec = hemiron_pve::endpoint(method.as_str(), &template).ok_or_else(|| {
            ApiError::NotImplemented(format!("Method '{} {}' not implemented", method, template))
        })?;
        let params = spec
            .validate(&params)
            .map_err(|e| ApiError::Params(e.errors))?;
        Ok(Call {
            principal,
            params,
            client,
        })
    }
}
