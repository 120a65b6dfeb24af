//! `/access/ticket`: password logins and ticket renewal.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::IntoResponse;
use serde_json::json;

use super::{ApiError, ApiResult, Data, AUTH_FAILURE_DELAY};
use crate::auth::{AuthError, Principal};
use crate::Node;

/// `GET /access/ticket`: a no-op Proxmox keeps for login forms.
pub async fn ticket_get() -> ApiResult {
    Ok(Data::null())
}

/// `POST /access/ticket`. This route runs without authentication, so the call is built
/// here with an anonymous principal before validation.
pub async fn ticket_post(
    State(node): State<Arc<Node>>,
    mut req: Request,
) -> axum::response::Response {
    req.extensions_mut().insert(Principal {
        userid: String::new(),
        tokenid: None,
    });
    let call = match <super::Call as axum::extract::FromRequest<()>>::from_request(req, &()).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let p = &call.params;
    if p.contains("otp") || p.contains("tfa-challenge") {
        // No second factors exist on a node, so an OTP can never be right.
        tokio::time::sleep(AUTH_FAILURE_DELAY).await;
        return ApiError::Unauthorized("authentication failure".into()).into_response();
    }
    let username = p.str("username").unwrap_or_default().to_string();
    let password = p.str("password").unwrap_or_default().to_string();
    let realm = p.str("realm").map(str::to_string);
    let auth_node = node.clone();
    // argon2 verification is CPU-heavy: keep it off the async workers.
    let result = tokio::task::spawn_blocking(move || {
        auth_node.auth.login(&username, realm.as_deref(), &password)
    })
    .await;
    match result {
        Ok(Ok(login)) => {
            tracing::info!(user = %login.username, "login");
            Data::new(json!({
                "username": login.username,
                "ticket": login.ticket,
                "CSRFPreventionToken": login.csrf_token,
                "cap": capabilities(),
            }))
            .map(IntoResponse::into_response)
            .unwrap_or_else(IntoResponse::into_response)
        }
        Ok(Err(AuthError::Store(e))) => ApiError::from_err(&e).into_response(),
        Ok(Err(_)) | Err(_) => {
            tracing::info!("login failed");
            tokio::time::sleep(AUTH_FAILURE_DELAY).await;
            ApiError::Unauthorized("authentication failure".into()).into_response()
        }
    }
}

/// The permission map Proxmox returns with a ticket. Every node user is an administrator.
fn capabilities() -> serde_json::Value {
    let all = |privs: &[&str]| -> serde_json::Value {
        privs
            .iter()
            .map(|p| (p.to_string(), json!(1)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    json!({
        "vms": all(&["VM.Allocate", "VM.Audit", "VM.Clone", "VM.Config.CDROM", "VM.Config.CPU",
            "VM.Config.Cloudinit", "VM.Config.Disk", "VM.Config.HWType", "VM.Config.Memory",
            "VM.Config.Network", "VM.Config.Options", "VM.Console", "VM.Migrate",
            "VM.PowerMgmt", "VM.Snapshot", "VM.Snapshot.Rollback"]),
        "storage": all(&["Datastore.Allocate", "Datastore.AllocateSpace",
            "Datastore.AllocateTemplate", "Datastore.Audit"]),
        "nodes": all(&["Sys.Audit", "Sys.Console", "Sys.Modify", "Sys.PowerMgmt", "Sys.Syslog"]),
        "access": all(&["User.Modify", "Permissions.Modify"]),
        "dc": all(&["Sys.Audit"]),
    })
}
