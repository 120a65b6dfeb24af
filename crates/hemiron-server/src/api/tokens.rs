//! `/api/v1/tokens`: the caller's API tokens (a tenant owner sees their tenant's, an admin
//! everyone's).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{Authed, Body, IfMatch, Path, Query};
use super::problem::{ApiError, Problem};
use super::views::{Page, PageQuery, Token};
use super::{created, tagged, AppState};
use crate::identity::tokens;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_tokens, create_token))
        .routes(routes!(get_token, revoke_token))
}

/// List API tokens.
#[utoipa::path(get, path = "/tokens", tag = "tokens", params(PageQuery),
    responses(
        (status = 200, description = "A page of tokens", body = Page<Token>),
        (status = 400, description = "Bad paging parameters", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
    ))]
async fn list_tokens(
    State(app): State<AppState>,
    Authed(caller): Authed,
    Query(page): Query<PageQuery>,
) -> Result<axum::Json<Page<Token>>, ApiError> {
    let limit = page.limit()?;
    let rows = tokens::list(&app.svc, &caller, page.after()?.as_ref(), limit).await?;
    Ok(axum::Json(Page::of(
        rows,
        limit,
        |t| (t.token.created_at, t.token.id.clone()),
        Token::from,
    )))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    pub name: String,
    /// `read:AREA`, `write:AREA` (areas: tenants, users, tokens, plans, vps, infra,
    /// templates, audit), `read:*` or `*` (default: all the role allows).
    #[serde(default)]
    pub scopes: Option<String>,
    /// Lifetime in days, 1 to 366 (default 90).
    #[serde(default)]
    pub expires_in_days: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub token: Token,
    /// The secret, shown only now: `Authorization: Bearer SECRET`.
    pub secret: String,
}

/// Create an API token for yourself.
#[utoipa::path(post, path = "/tokens", tag = "tokens", request_body = CreateToken,
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays return the first answer for 24 h")),
    responses(
        (status = 201, description = "Created; the secret is in the body only now", body = CreatedToken),
        (status = 400, description = "Malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
    ))]
async fn create_token(
    State(app): State<AppState>,
    Authed(caller): Authed,
    Body(req): Body<CreateToken>,
) -> Result<Response, ApiError> {
    let t = tokens::create(
        &app.svc,
        &caller,
        &req.name,
        req.scopes.as_deref(),
        req.expires_in_days,
    )
    .await?;
    let version = t.token.token.version;
    let id = t.token.token.id.clone();
    let body = CreatedToken {
        token: t.token.into(),
        secret: t.secret,
    };
    Ok(created(&format!("/api/v1/tokens/{id}"), version, &body))
}

/// An API token.
#[utoipa::path(get, path = "/tokens/{id}", tag = "tokens",
    params(("id" = String, Path, description = "Token id")),
    responses(
        (status = 200, description = "The token; ETag: its version", body = Token),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such token", body = Problem, content_type = "application/problem+json"),
    ))]
async fn get_token(
    State(app): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let t = tokens::get(&app.svc, &caller, &id).await?;
    Ok(tagged(StatusCode::OK, t.token.version, &Token::from(t)))
}

/// Revoke an API token.
#[utoipa::path(delete, path = "/tokens/{id}", tag = "tokens",
    params(("id" = String, Path, description = "Token id"),
           ("If-Match" = String, Header, description = "The ETag last read")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such token", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already revoked", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "Stale If-Match", body = Problem, content_type = "application/problem+json"),
        (status = 428, description = "If-Match missing", body = Problem, content_type = "application/problem+json"),
    ))]
async fn revoke_token(
    State(app): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    IfMatch(version): IfMatch,
) -> Result<StatusCode, ApiError> {
    tokens::revoke(&app.svc, &caller, &id, version).await?;
    Ok(StatusCode::NO_CONTENT)
}
