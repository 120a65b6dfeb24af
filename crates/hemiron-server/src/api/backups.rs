//! `/api/v1/vps/{id}/backups` and `/api/v1/vps/{id}/backup-schedules`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{Authed, Body, IfMatch, Path};
use super::fleet::Job;
use super::problem::{ApiError, Problem};
use super::views::time;
use super::{created, tagged, AppState};
use crate::backups::{self, NewBackup, ScheduleSpec};
use crate::store::backups::{BackupRow, ScheduleRow};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_backups, create_backup))
        .routes(routes!(get_backup, delete_backup))
        .routes(routes!(restore_backup))
        .routes(routes!(list_schedules, create_schedule))
        .routes(routes!(get_schedule, update_schedule, delete_schedule))
}

/// A backup of a VPS.
#[derive(Debug, Serialize, ToSchema)]
pub struct Backup {
    pub id: String,
    pub vps_id: String,
    /// The schedule that made it; absent for a backup asked for by hand (never pruned).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule_id: Option<String>,
    /// `creating`, `available`, `failed` or `deleting`.
    pub state: String,
    /// `snapshot`, `suspend` or `stop` (vzdump's modes).
    pub mode: String,
    pub node: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub storage: String,
    /// The archive's Proxmox volume id, once made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
    /// When it was taken (retention counts its periods by this).
    pub taken_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The job that makes it.
    pub job_id: String,
}

impl From<BackupRow> for Backup {
    fn from(b: BackupRow) -> Backup {
        Backup {
            id: b.id,
            vps_id: b.vps_id,
            schedule_id: b.schedule_id,
            state: b.state,
            mode: b.mode,
            node: b.node,
            storage: b.storage,
            volid: b.volid,
            size_bytes: b.size_bytes,
            notes: b.notes,
            taken_at: time(b.taken_at),
            error: b.error,
            job_id: b.job_id,
        }
    }
}

/// A backup being made, and its job.
#[derive(Debug, Serialize, ToSchema)]
pub struct BackupStarted {
    pub backup: Backup,
    pub job: Job,
}

/// A VPS's backups, newest first.
#[utoipa::path(get, path = "/vps/{id}/backups", tag = "backups",
    params(("id" = String, Path, description = "VPS id")),
    responses(
        (status = 200, description = "Its backups", body = Vec<Backup>),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such VPS", body = Problem, content_type = "application/problem+json"),
    ))]
async fn list_backups(
    State(app): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> Result<Json<Vec<Backup>>, ApiError> {
    let rows = backups::list(&app.svc, &caller, &id).await?;
    Ok(Json(rows.into_iter().map(Backup::from).collect()))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBackup {
    /// `snapshot` (default: the VPS keeps running), `suspend` or `stop`.
    #[serde(default)]
    pub mode: Option<String>,
    /// One line kept with the backup.
    #[serde(default)]
    pub notes: Option<String>,
}

/// Back a VPS up now (within its plan's number of backups).
#[utoipa::path(post, path = "/vps/{id}/backups", tag = "backups", request_body = CreateBackup,
    params(("id" = String, Path, description = "VPS id"),
           ("Idempotency-Key" = Option<String>, Header, description = "Replays return the first answer for 24 h")),
    responses(
        (status = 202, description = "Accepted; follow the job", body = BackupStarted),
        (status = 400, description = "Malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such VPS", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Busy, or the plan's backups are used up", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
    ))]
async fn create_backup(
    State(app): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    Body(req): Body<CreateBackup>,
) -> Result<Response, ApiError> {
    let new = NewBackup {
        mode: req.mode,
        notes: req.notes,
    };
    let (b, job) = backups::create(&app.svc, &caller, &id, new).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(BackupStarted {
            backup: b.into(),
            job: job.into(),
        }),
    )
        .into_response())
}

/// One backup.
#[utoipa::path(get, path = "/vps/{id}/backups/{backup}", tag = "backups",
    params(("id" = String, Path, description = "VPS id"),
           ("backup" = String, Path, description = "Backup id")),
    responses(
        (status = 200, description = "The backup; ETag: its version", body = Backup),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such VPS or backup", body = Problem, content_type = "application/problem+json"),
    ))]
async fn get_backup(
    State(app): State<AppState>,
    Authed(caller): Authed,
    Path((id, backup)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let b = backups::get(&app.svc, &caller, &id, &backup).await?;
    Ok(tagged(StatusCode::OK, b.version, &Backup::from(b)))
}

/// Delete a backup (its archive, then its record).
#[utoipa::path(delete, path = "/vps/{id}/backups/{backup}", tag = "backups",
    params(("id" = String, Path, description = "VPS id"),
           ("backup" = String, Path, description = "Backup id"),
           ("If-Match" = String, Header, description = "The ETag last read")),
    responses(
        (status = 202, description = "Accepted; follow the job", body = Job),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such VPS or backup", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Busy, or the backup is not available", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "Stale If-Match", body = Problem, content_type = "application/problem+json"),
        (status = 428, description = "If-Match missing", body = Problem, content_type = "application/problem+json"),
    ))]
async fn delete_backup(
    State(app): State<AppState>,
    Authed(caller): Authed,
    Path((id, backup)): Path<(String, String)>,
    IfMatch(version): IfMatch,
) -> Result<Response, ApiError> {
    let job = backups::delete(&app.svc, &caller, &id, &backup, version).await?;
    Ok((StatusCode::ACCEPTED, Json(Job::from(job))).into_response())
}

/// Restore a VPS from one of its backups: disks and data as they were, the current size
/// kept; it runs afterwards if it ran before.
#[utoipa::path(post, path = "/vps/{id}/backups/{backup}/restore", tag = "backups",
    params(("id" = String, Path, description = "VPS id"),
           ("backup" = String, Path, description = "Backup id")),
    responses(
        (status = 202, description = "Accepted; follow the job", body = Job),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such VPS or backup", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Busy, or the backup is not available", body = Problem, content_type = "application/problem+json"),
    ))]
async fn restore_backup(
    State(app): State<AppState>,
    Authed(caller): Authed,
    Path((id, backup)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let job = backups::restore(&app.svc, &caller, &id, &backup).await?;
    Ok((StatusCode::ACCEPTED, Json(Job::from(job))).into_response())
}

/// When a VPS is backed up and which backups are kept.
#[derive(Debug, Serialize, ToSchema)]
pub struct Schedule {
    pub id: String,
    pub vps_id: String,
    /// Five-field cron pattern (minute hour day-of-month month day-of-week).
    pub cron: String,
    /// IANA time zone the pattern is read in.
    pub timezone: String,
    /// The pattern in words.
    pub description: String,
    pub mode: String,
    pub keep_last: i64,
    pub keep_daily: i64,
    pub keep_weekly: i64,
    pub keep_monthly: i64,
    pub enabled: bool,
    /// The next run (UTC).
    pub next_run_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_run_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_job_id: Option<String>,
    pub version: i64,
    pub created_at: String,
}

impl From<ScheduleRow> for Schedule {
    fn from(s: ScheduleRow) -> Schedule {
        let description = backups::timing_of(&s)
            .map(|t| t.describe())
            .unwrap_or_default();
        Schedule {
            id: s.id,
            vps_id: s.vps_id,
            cron: s.cron,
            timezone: s.timezone,
            description,
            mode: s.mode,
            keep_last: s.keep_last,
            keep_daily: s.keep_daily,
            keep_weekly: s.keep_weekly,
            keep_monthly: s.keep_monthly,
            enabled: s.enabled,
            next_run_at: time(s.next_run_at),
            last_run_at: s.last_run_at.map(time),
            last_job_id: s.last_job_id,
            version: s.version,
            created_at: time(s.created_at),
        }
    }
}

/// A schedule to make, or what to change of one.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleRequest {
    /// Five-field cron pattern, e.g. `0 3 * * *`; `@daily` and the like too. Required to
    /// create.
    #[serde(default)]
    pub cron: Option<String>,
    /// IANA time zone (default `UTC`).
    #[serde(default)]
    pub timezone: Option<String>,
    /// `snapshot` (default), `suspend` or `stop`.
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub keep_last: Option<i64>,
    #[serde(default)]
    pub keep_daily: Option<i64>,
    #[serde(default)]
    pub keep_weekly: Option<i64>,
    #[serde(default)]
    pub keep_monthly: Option<i64>,
    #[serde(default)]
    pub enabled: Option<bool>,
}

impl From<ScheduleRequest> for ScheduleSpec {
    fn from(r: ScheduleRequest) -> ScheduleSpec {
        ScheduleSpec {
            cron: r.cron,
            timezone: r.timezone,
            mode: r.mode,
            keep_last: r.keep_last,
            keep_daily: r.keep_daily,
            keep_weekly: r.keep_weekly,
            keep_monthly: r.keep_monthly,
            enabled: r.enabled,
        }
    }
}

/// A VPS's backup schedules.
#[utoipa::path(get, path = "/vps/{id}/backup-schedules", tag = "backups",
    params(("id" = String, Path, description = "VPS id")),
    responses(
        (status = 200, description = "Its schedules", body = Vec<Schedule>),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such VPS", body = Problem, content_type = "application/problem+json"),
    ))]
async fn list_schedules(
    State(app): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> Result<Json<Vec<Schedule>>, ApiError> {
    let rows = backups::list_schedules(&app.svc, &caller, &id).await?;
    Ok(Json(rows.into_iter().map(Schedule::from).collect()))
}

/// Schedule backups of a VPS (its schedules together may keep no more than its plan allows).
#[utoipa::path(post, path = "/vps/{id}/backup-schedules", tag = "backups", request_body = ScheduleRequest,
    params(("id" = String, Path, description = "VPS id"),
           ("Idempotency-Key" = Option<String>, Header, description = "Replays return the first answer for 24 h")),
    responses(
        (status = 201, description = "Created", body = Schedule),
        (status = 400, description = "Malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such VPS", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
    ))]
async fn create_schedule(
    State(app): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    Body(req): Body<ScheduleRequest>,
) -> Result<Response, ApiError> {
    let s = backups::create_schedule(&app.svc, &caller, &id, req.into()).await?;
    Ok(created(
        &format!("/api/v1/vps/{}/backup-schedules/{}", s.vps_id, s.id),
        s.version,
        &Schedule::from(s),
    ))
}

/// One schedule.
#[utoipa::path(get, path = "/vps/{id}/backup-schedules/{schedule}", tag = "backups",
    params(("id" = String, Path, description = "VPS id"),
           ("schedule" = String, Path, description = "Schedule id")),
    responses(
        (status = 200, description = "The schedule; ETag: its version", body = Schedule),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such VPS or schedule", body = Problem, content_type = "application/problem+json"),
    ))]
async fn get_schedule(
    State(app): State<AppState>,
    Authed(caller): Authed,
    Path((id, schedule)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let s = backups::get_schedule(&app.svc, &caller, &id, &schedule).await?;
    Ok(tagged(StatusCode::OK, s.version, &Schedule::from(s)))
}

/// Change a schedule (fields left out stay).
#[utoipa::path(patch, path = "/vps/{id}/backup-schedules/{schedule}", tag = "backups", request_body = ScheduleRequest,
    params(("id" = String, Path, description = "VPS id"),
           ("schedule" = String, Path, description = "Schedule id"),
           ("If-Match" = String, Header, description = "The ETag last read")),
    responses(
        (status = 200, description = "Changed", body = Schedule),
        (status = 400, description = "Malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such VPS or schedule", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "Stale If-Match", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
        (status = 428, description = "If-Match missing", body = Problem, content_type = "application/problem+json"),
    ))]
async fn update_schedule(
    State(app): State<AppState>,
    Authed(caller): Authed,
    Path((id, schedule)): Path<(String, String)>,
    IfMatch(version): IfMatch,
    Body(req): Body<ScheduleRequest>,
) -> Result<Response, ApiError> {
    let s =
        backups::update_schedule(&app.svc, &caller, &id, &schedule, version, req.into()).await?;
    Ok(tagged(StatusCode::OK, s.version, &Schedule::from(s)))
}

/// Delete a schedule (its backups stay until deleted or the VPS goes).
#[utoipa::path(delete, path = "/vps/{id}/backup-schedules/{schedule}", tag = "backups",
    params(("id" = String, Path, description = "VPS id"),
           ("schedule" = String, Path, description = "Schedule id"),
           ("If-Match" = String, Header, description = "The ETag last read")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such VPS or schedule", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "Stale If-Match", body = Problem, content_type = "application/problem+json"),
        (status = 428, description = "If-Match missing", body = Problem, content_type = "application/problem+json"),
    ))]
async fn delete_schedule(
    State(app): State<AppState>,
    Authed(caller): Authed,
    Path((id, schedule)): Path<(String, String)>,
    IfMatch(version): IfMatch,
) -> Result<StatusCode, ApiError> {
    backups::delete_schedule(&app.svc, &caller, &id, &schedule, version).await?;
    Ok(StatusCode::NO_CONTENT)
}
