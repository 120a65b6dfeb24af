//! `/api/v1/users`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{Authed, Body, IfMatch, Path, Query};
use super::problem::{ApiError, Problem};
use super::views::{Page, PageQuery, User};
use super::{created, tagged, AppState};
use crate::authz::Role;
use crate::identity::users::{self, NewUser, UserPatch};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_users, create_user))
        .routes(routes!(get_user, update_user, delete_user))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UserFilter {
    /// Only this tenant's users (tenant users always see only their own tenant's).
    pub tenant_id: Option<String>,
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

/// List users.
#[utoipa::path(get, path = "/users", tag = "users", params(UserFilter),
    responses(
        (status = 200, description = "A page of users", body = Page<User>),
        (status = 400, description = "Bad paging parameters", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
    ))]
async fn list_users(
    State(app): State<AppState>,
    Authed(caller): Authed,
    Query(q): Query<UserFilter>,
) -> Result<axum::Json<Page<User>>, ApiError> {
    let page = PageQuery {
        limit: q.limit,
        cursor: q.cursor,
    };
    let limit = page.limit()?;
    let rows = users::list(
        &app.svc,
        &caller,
        q.tenant_id.as_deref(),
        page.after()?.as_ref(),
        limit,
    )
    .await?;
    Ok(axum::Json(Page::of(
        rows,
        limit,
        |u| (u.created_at, u.id.clone()),
        User::from,
    )))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub username: String,
    /// At least 12 characters.
    pub password: String,
    pub role: Role,
    /// Required for owner, member and viewer; absent for admin and operator.
    #[serde(default)]
    pub tenant_id: Option<String>,
}

/// Create a user.
#[utoipa::path(post, path = "/users", tag = "users", request_body = CreateUser,
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays return the first answer for 24 h")),
    responses(
        (status = 201, description = "Created", body = User),
        (status = 400, description = "Malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Username taken", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
    ))]
async fn create_user(
    State(app): State<AppState>,
    Authed(caller): Authed,
    Body(req): Body<CreateUser>,
) -> Result<Response, ApiError> {
    let u = users::create(
        &app.svc,
        &caller,
        NewUser {
            username: req.username,
            password: req.password,
            role: req.role,
            tenant_id: req.tenant_id,
        },
    )
    .await?;
    Ok(created(
        &format!("/api/v1/users/{}", u.id),
        u.version,
        &User::from(u),
    ))
}

/// A user.
#[utoipa::path(get, path = "/users/{id}", tag = "users",
    params(("id" = String, Path, description = "User id")),
    responses(
        (status = 200, description = "The user; ETag: its version", body = User),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
    ))]
async fn get_user(
    State(app): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let u = users::get(&app.svc, &caller, &id).await?;
    Ok(tagged(StatusCode::OK, u.version, &User::from(u)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    pub role: Option<Role>,
    /// A new password (ends the user's sessions).
    pub password: Option<String>,
    /// Disabling ends the user's sessions and stops their tokens.
    pub disabled: Option<bool>,
}

/// Change a user's role, password or disabled flag.
#[utoipa::path(patch, path = "/users/{id}", tag = "users", request_body = UpdateUser,
    params(("id" = String, Path, description = "User id"),
           ("If-Match" = String, Header, description = "The ETag last read")),
    responses(
        (status = 200, description = "Changed", body = User),
        (status = 400, description = "Malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Would remove the last admin", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "Stale If-Match", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
        (status = 428, description = "If-Match missing", body = Problem, content_type = "application/problem+json"),
    ))]
async fn update_user(
    State(app): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    IfMatch(version): IfMatch,
    Body(req): Body<UpdateUser>,
) -> Result<Response, ApiError> {
    let patch = UserPatch {
        role: req.role,
        password: req.password,
        disabled: req.disabled,
    };
    let u = users::update(&app.svc, &caller, &id, version, patch).await?;
    Ok(tagged(StatusCode::OK, u.version, &User::from(u)))
}

/// Remove a user (their sessions and tokens go too).
#[utoipa::path(delete, path = "/users/{id}", tag = "users",
    params(("id" = String, Path, description = "User id"),
           ("If-Match" = String, Header, description = "The ETag last read")),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The last admin", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "Stale If-Match", body = Problem, content_type = "application/problem+json"),
        (status = 428, description = "If-Match missing", body = Problem, content_type = "application/problem+json"),
    ))]
async fn delete_user(
    State(app): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    IfMatch(version): IfMatch,
) -> Result<StatusCode, ApiError> {
    users::delete(&app.svc, &caller, &id, version).await?;
    Ok(StatusCode::NO_CONTENT)
}
