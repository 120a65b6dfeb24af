//! A JSON client of `/api/v1` that turns problem+json answers into typed errors.

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use crate::CliError;

#[derive(Debug, Clone)]
pub struct Api {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Api {
    pub fn new(server: &str, token: Option<String>) -> Result<Api, CliError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| CliError::Connect(e.to_string()))?;
        Ok(Api {
            base: format!("{}/api/v1", server.trim_end_matches('/')),
            token,
            http,
        })
    }

    /// Sends a request; answers other than 2xx become errors with the problem's detail.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Result<(Value, Option<String>), CliError> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        if let Some(e) = if_match {
            req = req.header("if-match", e);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| CliError::Connect(format!("{} {}: {e}", method, self.base)))?;
        let status = resp.status().as_u16();
        let etag = resp
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = resp.text().await.unwrap_or_default();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            return Ok((value, etag));
        }
        let mut detail = value["detail"].as_str().unwrap_or(&text).to_string();
        if let Some(fields) = value["errors"].as_object() {
            for (k, v) in fields {
                detail.push_str(&format!("\n  {k}: {}", v.as_str().unwrap_or_default()));
            }
        }
        Err(CliError::Api {
            status,
            kind: value["type"].as_str().unwrap_or_default().to_string(),
            detail,
        })
    }

    pub async fn get(&self, path: &str) -> Result<Value, CliError> {
        Ok(self.send(Method::GET, path, None, None).await?.0)
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, CliError> {
        Ok(self.send(Method::POST, path, Some(body), None).await?.0)
    }

    /// GET then PATCH with the ETag read.
    pub async fn patch_current(&self, path: &str, body: &Value) -> Result<Value, CliError> {
        let (_, etag) = self.send(Method::GET, path, None, None).await?;
        let etag = etag.unwrap_or_else(|| "\"0\"".into());
        Ok(self
            .send(Method::PATCH, path, Some(body), Some(&etag))
            .await?
            .0)
    }

    /// GET then DELETE with the ETag read (the server requires If-Match).
    pub async fn delete_current(&self, path: &str) -> Result<Value, CliError> {
        let (_, etag) = self.send(Method::GET, path, None, None).await?;
        let etag = etag.unwrap_or_else(|| "\"0\"".into());
        Ok(self.send(Method::DELETE, path, None, Some(&etag)).await?.0)
    }
}
