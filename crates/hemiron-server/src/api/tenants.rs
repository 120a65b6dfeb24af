//! `/api/v1/tenants`, `/api/v1/plans` and `/api/v1/audit`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{Authed, Body, IfMatch, Path, Query};
use super::problem::{ApiError, Problem};
use super::views::{AuditRecord, Page, PageQuery, Plan, Quota, Tenant};
use super::{created, tagged, AppState};
use crate::tenancy::{self, Quotas, Size};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_tenants, create_tenant))
        .routes(routes!(get_tenant, update_tenant, delete_tenant))
        .routes(routes!(list_plans, create_plan))
        .routes(routes!(get_plan, update_plan, delete_plan))
        .routes(routes!(audit_log))
}

fn quotas(q: Quota) -> Quotas {
    Quotas {
        vcpus: q.vcpus,
        memory_mib: q.memory_mib,
        disk_gib: q.disk_gib,
        vms: q.vms,
    }
}

/// List tenants (a tenant user sees their own).
#[utoipa::path(get, path = "/tenants", tag = "tenants", params(PageQuery),
    responses(
        (status = 200, description = "A page of tenants", body = Page<Tenant>),
        (status = 400, description = "Bad paging parameters", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
    ))]
async fn list_tenants(
    State(app): State<AppState>,
    Authed(caller): Authed,
    Query(page): Query<PageQuery>,
) -> Result<axum::Json<Page<Tenant>>, ApiError> {
    let limit = page.limit()?;
    let rows = tenancy::list_tenants(&app.svc, &caller, page.after()?.as_ref(), limit).await?;
    Ok(axum::Json(Page::of(
        rows,
        limit,
        |t| (t.created_at, t.id.clone()),
        Tenant::from,
    )))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// Lower-case letters, digits and -.
    pub name: String,
    pub quota: Quota,
}

/// Create a tenant.
#[utoipa::path(post, path = "/tenants", tag = "tenants", request_body = CreateTenant,
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays return the first answer for 24 h")),
    responses(
        (status = 201, description = "Created", body = Tenant),
        (status = 400, description = "Malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Name taken", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
    ))]
async fn create_tenant(
    State(app): State<AppState>,
    Authed(caller): Authed,
    Body(req): Body<CreateTenant>,
) -> Result<Response, ApiError> {
    let t = tenancy::create_tenant(&app.svc, &caller, &req.name, quotas(req.quota)).await?;
    Ok(created(
        &format!("/api/v1/tenants/{}", t.id),
        t.version,
        &Tenant::from(t),
    ))
}

/// A tenant.
#[utoipa::path(get, path = "/tenants/{id}", tag = "tenants",
    params(("id" = String, Path, description = "Tenant id")),
    responses(
        (status = 200, description = "The tenant; ETag: its version", body = Tenant),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant", body = Problem, content_type = "application/problem+json"),
    ))]
async fn get_tenant(
    State(app): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let t = tenancy::get_tenant(&app.svc, &caller, &id).await?;
    Ok(tagged(StatusCode::OK, t.version, &Tenant::from(t)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTenant {
    pub name: Option<String>,
    pub quota: Option<Quota>,
}

/// Rename a tenant or change its quotas.
#[utoipa::path(patch, path = "/tenants/{id}", tag = "tenants", request_body = UpdateTenant,
    params(("id" = String, Path, description = "Tenant id"),
           ("If-Match" = String, Header, description = "The ETag last read")),
    responses(
        (status = 200, description = "Changed", body = Tenant),
        (status = 400, description = "Malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Name taken", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "Stale If-Match", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
        (status = 428, description = "If-Match missing", body = Problem, content_type = "application/problem+json"),
    ))]
async fn update_tenant(
    State(app): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    IfMatch(version): IfMatch,
    Body(req): Body<UpdateTenant>,
) -> Result<Response, ApiError> {
    let t = tenancy::update_tenant(
        &app.svc,
        &caller,
        &id,
        version,
        req.name.as_deref(),
        req.quota.map(quotas),
    )
    .await?;
    Ok(tagged(StatusCode::OK, t.version, &Tenant::from(t)))
}

/// Remove a tenant that has no users and no VPSes.
#[utoipa::path(delete, path = "/tenants/{id}", tag = "tenants",
    params(("id" = String, Path, description = "Tenant id"),
           ("If-Match" = String, Header, description = "The ETag last read")),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Still has users or VPSes", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "Stale If-Match", body = Problem, content_type = "application/problem+json"),
        (status = 428, description = "If-Match missing", body = Problem, content_type = "application/problem+json"),
    ))]
async fn delete_tenant(
    State(app): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    IfMatch(version): IfMatch,
) -> Result<StatusCode, ApiError> {
    tenancy::delete_tenant(&app.svc, &caller, &id, version).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// List plans.
#[utoipa::path(get, path = "/plans", tag = "plans", params(PageQuery),
    responses(
        (status = 200, description = "A page of plans", body = Page<Plan>),
        (status = 400, description = "Bad paging parameters", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
    ))]
async fn list_plans(
    State(app): State<AppState>,
    Authed(caller): Authed,
    Query(page): Query<PageQuery>,
) -> Result<axum::Json<Page<Plan>>, ApiError> {
    let limit = page.limit()?;
    let rows = tenancy::list_plans(&app.svc, &caller, page.after()?.as_ref(), limit).await?;
    Ok(axum::Json(Page::of(
        rows,
        limit,
        |p| (p.created_at, p.id.clone()),
        Plan::from,
    )))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePlan {
    pub name: String,
    pub vcpus: i64,
    pub memory_mib: i64,
    pub disk_gib: i64,
    /// How many backups a VPS of the plan may keep (0: none; 7 when left out).
    #[serde(default)]
    pub backups: Option<i64>,
}

/// Create a plan.
#[utoipa::path(post, path = "/plans", tag = "plans", request_body = CreatePlan,
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays return the first answer for 24 h")),
    responses(
        (status = 201, description = "Created", body = Plan),
        (status = 400, description = "Malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Name taken", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
    ))]
async fn create_plan(
    State(app): State<AppState>,
    Authed(caller): Authed,
    Body(req): Body<CreatePlan>,
) -> Result<Response, ApiError> {
    let size = Size {
        vcpus: req.vcpus,
        memory_mib: req.memory_mib,
        disk_gib: req.disk_gib,
    };
    let p = tenancy::create_plan(&app.svc, &caller, &req.name, size, req.backups).await?;
    Ok(created(
        &format!("/api/v1/plans/{}", p.id),
        p.version,
        &Plan::from(p),
    ))
}

/// A plan (by id or name).
#[utoipa::path(get, path = "/plans/{id}", tag = "plans",
    params(("id" = String, Path, description = "Plan id or name")),
    responses(
        (status = 200, description = "The plan; ETag: its version", body = Plan),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such plan", body = Problem, content_type = "application/problem+json"),
    ))]
async fn get_plan(
    State(app): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let p = tenancy::get_plan(&app.svc, &caller, &id).await?;
    Ok(tagged(StatusCode::OK, p.version, &Plan::from(p)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdatePlan {
    pub name: Option<String>,
    pub vcpus: Option<i64>,
    pub memory_mib: Option<i64>,
    pub disk_gib: Option<i64>,
    pub backups: Option<i64>,
}

/// Change a plan (VPSes made from it keep their size).
#[utoipa::path(patch, path = "/plans/{id}", tag = "plans", request_body = UpdatePlan,
    params(("id" = String, Path, description = "Plan id or name"),
           ("If-Match" = String, Header, description = "The ETag last read")),
    responses(
        (status = 200, description = "Changed", body = Plan),
        (status = 400, description = "Malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such plan", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Name taken", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "Stale If-Match", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
        (status = 428, description = "If-Match missing", body = Problem, content_type = "application/problem+json"),
    ))]
async fn update_plan(
    State(app): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    IfMatch(version): IfMatch,
    Body(req): Body<UpdatePlan>,
) -> Result<Response, ApiError> {
    let current = tenancy::get_plan(&app.svc, &caller, &id).await?;
    let size =
        (req.vcpus.is_some() || req.memory_mib.is_some() || req.disk_gib.is_some()).then(|| Size {
            vcpus: req.vcpus.unwrap_or(current.vcpus),
            memory_mib: req.memory_mib.unwrap_or(current.memory_mib),
            disk_gib: req.disk_gib.unwrap_or(current.disk_gib),
        });
    let p = tenancy::update_plan(
        &app.svc,
        &caller,
        &current.id,
        version,
        req.name.as_deref(),
        size,
        req.backups,
    )
    .await?;
    Ok(tagged(StatusCode::OK, p.version, &Plan::from(p)))
}

/// Remove a plan.
#[utoipa::path(delete, path = "/plans/{id}", tag = "plans",
    params(("id" = String, Path, description = "Plan id or name"),
           ("If-Match" = String, Header, description = "The ETag last read")),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such plan", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "Stale If-Match", body = Problem, content_type = "application/problem+json"),
        (status = 428, description = "If-Match missing", body = Problem, content_type = "application/problem+json"),
    ))]
async fn delete_plan(
    State(app): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    IfMatch(version): IfMatch,
) -> Result<StatusCode, ApiError> {
    tenancy::delete_plan(&app.svc, &caller, &id, version).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Records per page, 1 to 500 (default 50).
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page (pages go back in time).
    pub cursor: Option<String>,
}

/// The audit log, newest first (an admin's: everything; a tenant owner's: their tenant's).
#[utoipa::path(get, path = "/audit", tag = "audit", params(AuditQuery),
    responses(
        (status = 200, description = "A page of records", body = Page<AuditRecord>),
        (status = 400, description = "Bad paging parameters", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
    ))]
async fn audit_log(
    State(app): State<AppState>,
    Authed(caller): Authed,
    Query(q): Query<AuditQuery>,
) -> Result<axum::Json<Page<AuditRecord>>, ApiError> {
    let page = PageQuery {
        limit: q.limit,
        cursor: q.cursor,
    };
    let limit = page.limit()?;
    let before = page.after()?.map(|a| (a.created_at, a.id));
    let rows = tenancy::audit_log(&app.svc, &caller, before, limit).await?;
    Ok(axum::Json(Page::of(
        rows,
        limit,
        |r| (r.at, r.id.clone()),
        AuditRecord::from,
    )))
}
