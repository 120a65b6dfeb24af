//! `/api/v1/auth`: login, logout, who am I, TOTP MFA.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{Anonymous, Authed, Body, CSRF_COOKIE, SESSION_COOKIE};
use super::problem::{ApiError, Problem};
use super::views::{time, User};
use super::AppState;
use crate::identity::auth::{self, TotpEnrollment};
use crate::store::identity as store;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(login))
        .routes(routes!(logout))
        .routes(routes!(me))
        .routes(routes!(totp_begin, totp_disable))
        .routes(routes!(totp_confirm))
        .routes(routes!(recovery_codes))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
    /// The current TOTP code, or an unused recovery code, for accounts with MFA.
    #[serde(default)]
    pub totp: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LoginResponse {
    /// The session secret: send it as `Authorization: Bearer TOKEN`, or rely on the cookie.
    pub token: String,
    /// When the session ends (RFC 3339).
    pub expires_at: String,
    /// Cookie-authenticated requests other than GET must send this as `X-CSRF-Token`.
    pub csrf_token: String,
    pub user: User,
}

/// Log in with username, password and (if the account has MFA) a TOTP or recovery code.
///
/// Sets the session cookie (HttpOnly, SameSite=Strict, Secure under TLS) and a readable CSRF
/// cookie. After 5 failures for an account within 15 minutes, or 20 from one client within a
/// minute, answers 429 with Retry-After.
#[utoipa::path(post, path = "/auth/login", tag = "auth", request_body = LoginRequest,
    security(()),
    responses(
        (status = 200, description = "Logged in", body = LoginResponse),
        (status = 400, description = "Malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Wrong credentials, or `/problems/mfa-required`", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many failures", body = Problem, content_type = "application/problem+json"),
    ))]
async fn login(
    State(app): State<AppState>,
    Anonymous(caller): Anonymous,
    Body(req): Body<LoginRequest>,
) -> Result<Response, ApiError> {
    let ok = auth::login(
        &app.svc,
        &caller,
        &req.username,
        &req.password,
        req.totp.as_deref(),
    )
    .await?;
    let max_age = (ok.expires_at - crate::store::now_ms()) / 1000;
    let secure = if app.tls { "; Secure" } else { "" };
    let session = format!(
        "{SESSION_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}",
        ok.token
    );
    let csrf = format!(
        "{CSRF_COOKIE}={}; Path=/; SameSite=Strict; Max-Age={max_age}{secure}",
        ok.csrf_token
    );
    let body = LoginResponse {
        token: ok.token,
        expires_at: time(ok.expires_at),
        csrf_token: ok.csrf_token,
        user: ok.user.into(),
    };
    let mut resp = Json(body).into_response();
    for c in [session, csrf] {
        if let Ok(v) = HeaderValue::from_str(&c) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// End the current session (and clear its cookies). API tokens are revoked through
/// `/tokens`.
#[utoipa::path(post, path = "/auth/logout", tag = "auth",
    responses(
        (status = 204, description = "Logged out"),
        (status = 401, description = "Not logged in", body = Problem, content_type = "application/problem+json"),
    ))]
async fn logout(State(app): State<AppState>, Authed(caller): Authed) -> Result<Response, ApiError> {
    auth::logout(&app.svc, &caller).await?;
    let mut resp = StatusCode::NO_CONTENT.into_response();
    for name in [SESSION_COOKIE, CSRF_COOKIE] {
        if let Ok(v) = HeaderValue::from_str(&format!("{name}=; Path=/; Max-Age=0")) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    Ok(resp)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    pub user: User,
    /// `session` or `token`.
    pub via: String,
    /// What this credential allows (`*`: all the role allows).
    pub scopes: String,
    /// Unused recovery codes left (with MFA).
    pub recovery_codes_left: i64,
}

/// The caller's own account.
#[utoipa::path(get, path = "/auth/me", tag = "auth",
    responses(
        (status = 200, description = "The caller", body = Me),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
    ))]
async fn me(State(app): State<AppState>, Authed(caller): Authed) -> Result<Json<Me>, ApiError> {
    let who = caller.who()?;
    let user = store::user_by_id(&app.svc.db, &who.user_id)
        .await
        .map_err(crate::error::ServiceError::from)?
        .ok_or(crate::error::ServiceError::Unauthenticated)?;
    let left = auth::recovery_codes_left(&app.svc, &user.id).await?;
    Ok(Json(Me {
        user: user.into(),
        via: match who.via {
            crate::authz::Via::Session { .. } => "session".into(),
            crate::authz::Via::Token { .. } => "token".into(),
        },
        scopes: who.scopes.to_text(),
        recovery_codes_left: left,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordCheck {
    /// The caller's current password (MFA changes need it).
    pub password: String,
}

/// Start TOTP enrollment: returns the secret and its `otpauth://` URL. Nothing changes at
/// login until it is confirmed with a code.
#[utoipa::path(post, path = "/auth/mfa/totp", tag = "auth", request_body = PasswordCheck,
    responses(
        (status = 400, description = "Malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 200, description = "Enrollment started", body = TotpEnrollment),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "TOTP already enabled", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Wrong password", body = Problem, content_type = "application/problem+json"),
    ))]
async fn totp_begin(
    State(app): State<AppState>,
    Authed(caller): Authed,
    Body(req): Body<PasswordCheck>,
) -> Result<Json<TotpEnrollment>, ApiError> {
    Ok(Json(
        auth::totp_begin(&app.svc, &caller, &req.password).await?,
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeCheck {
    /// A current TOTP code.
    pub code: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RecoveryCodes {
    /// Ten single-use codes, each accepted once in place of a TOTP code. Shown only now.
    pub recovery_codes: Vec<String>,
}

/// Confirm TOTP enrollment with a first code: from now on login needs a code.
#[utoipa::path(post, path = "/auth/mfa/totp/confirm", tag = "auth", request_body = CodeCheck,
    responses(
        (status = 400, description = "Malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 200, description = "TOTP enabled", body = RecoveryCodes),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "No enrollment in progress", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Wrong code", body = Problem, content_type = "application/problem+json"),
    ))]
async fn totp_confirm(
    State(app): State<AppState>,
    Authed(caller): Authed,
    Body(req): Body<CodeCheck>,
) -> Result<Json<RecoveryCodes>, ApiError> {
    let codes = auth::totp_confirm(&app.svc, &caller, &req.code).await?;
    Ok(Json(RecoveryCodes {
        recovery_codes: codes,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordAndCode {
    pub password: String,
    /// A current TOTP code or an unused recovery code.
    pub code: String,
}

/// Turn TOTP off.
#[utoipa::path(delete, path = "/auth/mfa/totp", tag = "auth", request_body = PasswordAndCode,
    responses(
        (status = 400, description = "Malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 204, description = "TOTP disabled"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "TOTP not enabled", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Wrong password or code", body = Problem, content_type = "application/problem+json"),
    ))]
async fn totp_disable(
    State(app): State<AppState>,
    Authed(caller): Authed,
    Body(req): Body<PasswordAndCode>,
) -> Result<StatusCode, ApiError> {
    auth::totp_disable(&app.svc, &caller, &req.password, &req.code).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Replace the recovery codes with ten new ones.
#[utoipa::path(post, path = "/auth/mfa/recovery-codes", tag = "auth", request_body = PasswordAndCode,
    responses(
        (status = 400, description = "Malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 200, description = "New codes", body = RecoveryCodes),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "TOTP not enabled", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Wrong password or code", body = Problem, content_type = "application/problem+json"),
    ))]
async fn recovery_codes(
    State(app): State<AppState>,
    Authed(caller): Authed,
    Body(req): Body<PasswordAndCode>,
) -> Result<Json<RecoveryCodes>, ApiError> {
    let codes = auth::recovery_codes_renew(&app.svc, &caller, &req.password, &req.code).await?;
    Ok(Json(RecoveryCodes {
        recovery_codes: codes,
    }))
}
