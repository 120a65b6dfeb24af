//! Backups of VPSes and their schedules.

use sqlx::FromRow;

use super::{Db, StoreError, Tx};
use crate::{on_db, on_tx};

#[derive(Debug, Clone, FromRow)]
pub struct BackupRow {
    pub id: String,
    pub tenant_id: String,
    pub vps_id: String,
    pub schedule_id: Option<String>,
    pub job_id: String,
    pub cluster_id: String,
    pub node: String,
    pub storage: String,
    pub volid: Option<String>,
    pub size_bytes: Option<i64>,
    pub mode: String,
    pub notes: Option<String>,
    /// `creating`, `available`, `failed`, `deleting`, `deleted`.
    pub state: String,
    pub taken_at: i64,
    pub error: Option<String>,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

const BACKUP_COLUMNS: &str = "id, tenant_id, vps_id, schedule_id, job_id, cluster_id, node, \
     storage, volid, size_bytes, mode, notes, state, taken_at, error, version, created_at, \
     updated_at";

pub async fn insert_backup(tx: &mut Tx, b: &BackupRow) -> Result<(), StoreError> {
    on_tx!(tx, x => sqlx::query(
        "INSERT INTO backups (id, tenant_id, vps_id, schedule_id, job_id, cluster_id, node, \
         storage, volid, size_bytes, mode, notes, state, taken_at, error, created_at, updated_at, \
         version) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)")
        .bind(&b.id).bind(&b.tenant_id).bind(&b.vps_id).bind(&b.schedule_id).bind(&b.job_id)
        .bind(&b.cluster_id).bind(&b.node).bind(&b.storage).bind(&b.volid).bind(b.size_bytes)
        .bind(&b.mode).bind(&b.notes).bind(&b.state).bind(b.taken_at).bind(&b.error)
        .bind(b.created_at).bind(b.updated_at).bind(b.version)
        .execute(x).await.map(|r| r.rows_affected()))?;
    Ok(())
}

/// Writes everything a job learns of a backup (where it went, its state).
pub async fn update_backup(tx: &mut Tx, b: &BackupRow) -> Result<(), StoreError> {
    on_tx!(tx, x => sqlx::query(
        "UPDATE backups SET node = $2, storage = $3, volid = $4, size_bytes = $5, state = $6, \
         taken_at = $7, error = $8, updated_at = $9, version = version + 1 WHERE id = $1")
        .bind(&b.id).bind(&b.node).bind(&b.storage).bind(&b.volid).bind(b.size_bytes)
        .bind(&b.state).bind(b.taken_at).bind(&b.error).bind(b.updated_at)
        .execute(x).await.map(|r| r.rows_affected()))?;
    Ok(())
}

pub async fn set_backup_state(
    tx: &mut Tx,
    id: &str,
    state: &str,
    error: Option<&str>,
    now: i64,
) -> Result<(), StoreError> {
    on_tx!(tx, x => sqlx::query(
        "UPDATE backups SET state = $2, error = COALESCE($3, error), updated_at = $4, \
         version = version + 1 WHERE id = $1")
        .bind(id).bind(state).bind(error).bind(now)
        .execute(x).await.map(|r| r.rows_affected()))?;
    Ok(())
}

pub async fn backup(db: &Db, id: &str) -> Result<Option<BackupRow>, StoreError> {
    let sql = format!("SELECT {BACKUP_COLUMNS} FROM backups WHERE id = $1");
    Ok(on_db!(db, p => sqlx::query_as::<_, BackupRow>(&sql).bind(id).fetch_optional(p).await)?)
}

pub async fn backup_tx(tx: &mut Tx, id: &str) -> Result<Option<BackupRow>, StoreError> {
    let sql = format!("SELECT {BACKUP_COLUMNS} FROM backups WHERE id = $1");
    Ok(on_tx!(tx, x => sqlx::query_as::<_, BackupRow>(&sql).bind(id).fetch_optional(x).await)?)
}

/// The backup a `vps.backup` job makes.
pub async fn backup_of_job(tx: &mut Tx, job_id: &str) -> Result<Option<BackupRow>, StoreError> {
    let sql = format!("SELECT {BACKUP_COLUMNS} FROM backups WHERE job_id = $1");
    Ok(on_tx!(tx, x => sqlx::query_as::<_, BackupRow>(&sql).bind(job_id).fetch_optional(x).await)?)
}

/// A VPS's backups that are not deleted, newest first.
pub async fn backups_of_vps(db: &Db, vps_id: &str) -> Result<Vec<BackupRow>, StoreError> {
    let sql = format!(
        "SELECT {BACKUP_COLUMNS} FROM backups WHERE vps_id = $1 AND state <> 'deleted' \
         ORDER BY taken_at DESC, id DESC"
    );
    Ok(on_db!(db, p => sqlx::query_as::<_, BackupRow>(&sql).bind(vps_id).fetch_all(p).await)?)
}

pub async fn backups_of_vps_tx(tx: &mut Tx, vps_id: &str) -> Result<Vec<BackupRow>, StoreError> {
    let sql = format!(
        "SELECT {BACKUP_COLUMNS} FROM backups WHERE vps_id = $1 AND state <> 'deleted' \
         ORDER BY taken_at DESC, id DESC"
    );
    Ok(on_tx!(tx, x => sqlx::query_as::<_, BackupRow>(&sql).bind(vps_id).fetch_all(x).await)?)
}

/// Backups that count against the plan's limit: made or being made.
pub async fn kept_count(tx: &mut Tx, vps_id: &str) -> Result<i64, StoreError> {
    let n: i64 = on_tx!(tx, x => sqlx::query_scalar(
        "SELECT COUNT(*) FROM backups WHERE vps_id = $1 AND state IN ('creating', 'available')")
        .bind(vps_id).fetch_one(x).await)?;
    Ok(n)
}

/// Whether a run of the schedule is queued or running.
pub async fn schedule_busy(tx: &mut Tx, schedule_id: &str) -> Result<bool, StoreError> {
    let n: i64 = on_tx!(tx, x => sqlx::query_scalar(
        "SELECT COUNT(*) FROM backups WHERE schedule_id = $1 AND state = 'creating'")
        .bind(schedule_id).fetch_one(x).await)?;
    Ok(n > 0)
}

#[derive(Debug, Clone, FromRow)]
pub struct ScheduleRow {
    pub id: String,
    pub tenant_id: String,
    pub vps_id: String,
    pub cron: String,
    pub timezone: String,
    pub mode: String,
    pub keep_last: i64,
    pub keep_daily: i64,
    pub keep_weekly: i64,
    pub keep_monthly: i64,
    pub enabled: bool,
    pub next_run_at: i64,
    pub last_run_at: Option<i64>,
    pub last_job_id: Option<String>,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

const SCHEDULE_COLUMNS: &str = "id, tenant_id, vps_id, cron, timezone, mode, keep_last, \
     keep_daily, keep_weekly, keep_monthly, enabled, next_run_at, last_run_at, last_job_id, \
     version, created_at, updated_at";

pub async fn insert_schedule(tx: &mut Tx, s: &ScheduleRow) -> Result<(), StoreError> {
    on_tx!(tx, x => sqlx::query(
        "INSERT INTO backup_schedules (id, tenant_id, vps_id, cron, timezone, mode, keep_last, \
         keep_daily, keep_weekly, keep_monthly, enabled, next_run_at, last_run_at, last_job_id, \
         version, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)")
        .bind(&s.id).bind(&s.tenant_id).bind(&s.vps_id).bind(&s.cron).bind(&s.timezone)
        .bind(&s.mode).bind(s.keep_last).bind(s.keep_daily).bind(s.keep_weekly)
        .bind(s.keep_monthly).bind(s.enabled).bind(s.next_run_at).bind(s.last_run_at)
        .bind(&s.last_job_id).bind(s.version).bind(s.created_at).bind(s.updated_at)
        .execute(x).await.map(|r| r.rows_affected()))?;
    Ok(())
}

/// Writes what a user may change of `s` if its version is still `s.version`.
pub async fn update_schedule(tx: &mut Tx, s: &ScheduleRow) -> Result<bool, StoreError> {
    let n = on_tx!(tx, x => sqlx::query(
        "UPDATE backup_schedules SET cron = $2, timezone = $3, mode = $4, keep_last = $5, \
         keep_daily = $6, keep_weekly = $7, keep_monthly = $8, enabled = $9, next_run_at = $10, \
         version = version + 1, updated_at = $11 WHERE id = $1 AND version = $12")
        .bind(&s.id).bind(&s.cron).bind(&s.timezone).bind(&s.mode).bind(s.keep_last)
        .bind(s.keep_daily).bind(s.keep_weekly).bind(s.keep_monthly).bind(s.enabled)
        .bind(s.next_run_at).bind(s.updated_at).bind(s.version)
        .execute(x).await.map(|r| r.rows_affected()))?;
    Ok(n == 1)
}

pub async fn schedule(db: &Db, id: &str) -> Result<Option<ScheduleRow>, StoreError> {
    let sql = format!("SELECT {SCHEDULE_COLUMNS} FROM backup_schedules WHERE id = $1");
    Ok(on_db!(db, p => sqlx::query_as::<_, ScheduleRow>(&sql).bind(id).fetch_optional(p).await)?)
}

pub async fn schedule_tx(tx: &mut Tx, id: &str) -> Result<Option<ScheduleRow>, StoreError> {
    let sql = format!("SELECT {SCHEDULE_COLUMNS} FROM backup_schedules WHERE id = $1");
    Ok(on_tx!(tx, x => sqlx::query_as::<_, ScheduleRow>(&sql).bind(id).fetch_optional(x).await)?)
}

pub async fn schedules_of_vps(db: &Db, vps_id: &str) -> Result<Vec<ScheduleRow>, StoreError> {
    let sql = format!(
        "SELECT {SCHEDULE_COLUMNS} FROM backup_schedules WHERE vps_id = $1 ORDER BY created_at, id"
    );
    Ok(on_db!(db, p => sqlx::query_as::<_, ScheduleRow>(&sql).bind(vps_id).fetch_all(p).await)?)
}

pub async fn schedules_of_vps_tx(
    tx: &mut Tx,
    vps_id: &str,
) -> Result<Vec<ScheduleRow>, StoreError> {
    let sql = format!(
        "SELECT {SCHEDULE_COLUMNS} FROM backup_schedules WHERE vps_id = $1 ORDER BY created_at, id"
    );
    Ok(on_tx!(tx, x => sqlx::query_as::<_, ScheduleRow>(&sql).bind(vps_id).fetch_all(x).await)?)
}

pub async fn delete_schedule(tx: &mut Tx, id: &str, version: i64) -> Result<bool, StoreError> {
    let n = on_tx!(tx, x => sqlx::query(
        "DELETE FROM backup_schedules WHERE id = $1 AND version = $2")
        .bind(id).bind(version).execute(x).await.map(|r| r.rows_affected()))?;
    Ok(n == 1)
}

pub async fn delete_schedules_of_vps(tx: &mut Tx, vps_id: &str) -> Result<(), StoreError> {
    on_tx!(tx, x => sqlx::query("DELETE FROM backup_schedules WHERE vps_id = $1")
        .bind(vps_id).execute(x).await.map(|r| r.rows_affected()))?;
    Ok(())
}

/// Enabled schedules due at `now`, the longest overdue first.
pub async fn due_schedules(db: &Db, now: i64, limit: i64) -> Result<Vec<ScheduleRow>, StoreError> {
    let sql = format!(
        "SELECT {SCHEDULE_COLUMNS} FROM backup_schedules WHERE enabled AND next_run_at <= $1 \
         ORDER BY next_run_at, id LIMIT $2"
    );
    Ok(
        on_db!(db, p => sqlx::query_as::<_, ScheduleRow>(&sql).bind(now).bind(limit).fetch_all(p).await)?,
    )
}

/// The earliest next run of an enabled schedule.
pub async fn next_due(db: &Db) -> Result<Option<i64>, StoreError> {
    let n: Option<i64> = on_db!(db, p => sqlx::query_scalar(
        "SELECT MIN(next_run_at) FROM backup_schedules WHERE enabled")
        .fetch_one(p).await)?;
    Ok(n)
}

/// Moves a due schedule on to `next` if nobody else did (its next run is still `due`): the
/// one server that succeeds runs it.
pub async fn advance_schedule(
    tx: &mut Tx,
    id: &str,
    due: i64,
    next: i64,
    now: i64,
    job_id: Option<&str>,
) -> Result<bool, StoreError> {
    let n = on_tx!(tx, x => sqlx::query(
        "UPDATE backup_schedules SET next_run_at = $3, last_run_at = $4, \
         last_job_id = COALESCE($5, last_job_id) WHERE id = $1 AND next_run_at = $2")
        .bind(id).bind(due).bind(next).bind(now).bind(job_id)
        .execute(x).await.map(|r| r.rows_affected()))?;
    Ok(n == 1)
}
