//! The durable job queue.
//!
//! A worker claims the oldest runnable job — queued and due, or running with an expired
//! lease (its worker died) — setting itself as lease owner and incrementing the fence. On
//! PostgreSQL the claim skips rows other servers are claiming (`FOR UPDATE SKIP LOCKED`); on
//! SQLite one server owns the file and its writes are serialized (`BEGIN IMMEDIATE`). Every
//! later write of the job (checkpoint, lease renewal, completion) names the owner and fence
//! it claimed with: once another worker has re-claimed the job, they change nothing.

use sqlx::FromRow;

use super::{Backend, Db, StoreError, Tx};
use crate::{on_db, on_tx};

#[derive(Debug, Clone, FromRow)]
pub struct JobRow {
    pub id: String,
    pub kind: String,
    pub tenant_id: Option<String>,
    pub vps_id: Option<String>,
    pub state: String,
    pub step: String,
    pub payload: String,
    pub checkpoint: String,
    pub error: Option<String>,
    pub attempts: i64,
    pub lease_owner: Option<String>,
    pub lease_until: Option<i64>,
    pub fence: i64,
    pub run_after: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
}

impl JobRow {
    /// A new job, queued to run now.
    pub fn queued(
        kind: &str,
        tenant_id: Option<String>,
        vps_id: Option<String>,
        payload: String,
    ) -> JobRow {
        let now = super::now_ms();
        JobRow {
            id: super::new_id(),
            kind: kind.to_string(),
            tenant_id,
            vps_id,
            state: "queued".into(),
            step: "start".into(),
            payload,
            checkpoint: "{}".into(),
            error: None,
            attempts: 0,
            lease_owner: None,
            lease_until: None,
            fence: 0,
            run_after: now,
            created_at: now,
            updated_at: now,
            finished_at: None,
        }
    }
}

const JOB_COLUMNS: &str = "id, kind, tenant_id, vps_id, state, step, payload, checkpoint, error, \
     attempts, lease_owner, lease_until, fence, run_after, created_at, updated_at, finished_at";

pub async fn insert(tx: &mut Tx, j: &JobRow) -> Result<(), StoreError> {
    on_tx!(tx, x => sqlx::query(
        "INSERT INTO jobs (id, kind, tenant_id, vps_id, state, step, payload, checkpoint, error, \
         attempts, lease_owner, lease_until, fence, run_after, created_at, updated_at, finished_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)")
        .bind(&j.id).bind(&j.kind).bind(&j.tenant_id).bind(&j.vps_id).bind(&j.state)
        .bind(&j.step).bind(&j.payload).bind(&j.checkpoint).bind(&j.error).bind(j.attempts)
        .bind(&j.lease_owner).bind(j.lease_until).bind(j.fence).bind(j.run_after)
        .bind(j.created_at).bind(j.updated_at).bind(j.finished_at)
        .execute(x).await.map(|r| r.rows_affected()))?;
    Ok(())
}

/// Claims one runnable job for `owner` until `lease_until`.
pub async fn claim(
    db: &Db,
    owner: &str,
    now: i64,
    lease_until: i64,
) -> Result<Option<JobRow>, StoreError> {
    let lock = match db.backend() {
        Backend::Postgres => "FOR UPDATE SKIP LOCKED",
        Backend::Sqlite => "",
    };
    let sql = format!(
        "UPDATE jobs SET state = 'running', lease_owner = $1, lease_until = $2, \
         fence = fence + 1, attempts = attempts + 1, updated_at = $3 \
         WHERE id = (SELECT id FROM jobs WHERE (state = 'queued' AND run_after <= $3) \
         OR (state = 'running' AND lease_until < $3) ORDER BY run_after, created_at, id LIMIT 1 {lock}) \
         RETURNING {JOB_COLUMNS}"
    );
    let mut tx = db.begin().await?;
    let row = on_tx!(&mut tx, x => sqlx::query_as::<_, JobRow>(&sql)
        .bind(owner).bind(lease_until).bind(now).fetch_optional(x).await)?;
    tx.commit().await?;
    Ok(row)
}

/// Renews a lease; false if the job is no longer this claim's.
pub async fn renew(
    db: &Db,
    id: &str,
    owner: &str,
    fence: i64,
    lease_until: i64,
) -> Result<bool, StoreError> {
    let n = on_db!(db, p => sqlx::query(
        "UPDATE jobs SET lease_until = $4 WHERE id = $1 AND lease_owner = $2 AND fence = $3 \
         AND state = 'running'")
        .bind(id).bind(owner).bind(fence).bind(lease_until)
        .execute(p).await.map(|r| r.rows_affected()))?;
    Ok(n == 1)
}

/// Records progress (the step reached and what it made) under the claim.
pub async fn checkpoint(
    tx: &mut Tx,
    id: &str,
    owner: &str,
    fence: i64,
    step: &str,
    checkpoint: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let n = on_tx!(tx, x => sqlx::query(
        "UPDATE jobs SET step = $4, checkpoint = $5, updated_at = $6 \
         WHERE id = $1 AND lease_owner = $2 AND fence = $3 AND state = 'running'")
        .bind(id).bind(owner).bind(fence).bind(step).bind(checkpoint).bind(now)
        .execute(x).await.map(|r| r.rows_affected()))?;
    Ok(n == 1)
}

/// Ends the job (`succeeded` or `failed`) under the claim.
pub async fn finish(
    tx: &mut Tx,
    id: &str,
    owner: &str,
    fence: i64,
    state: &str,
    error: Option<&str>,
    now: i64,
) -> Result<bool, StoreError> {
    let n = on_tx!(tx, x => sqlx::query(
        "UPDATE jobs SET state = $4, error = $5, lease_owner = NULL, lease_until = NULL, \
         updated_at = $6, finished_at = $6 \
         WHERE id = $1 AND lease_owner = $2 AND fence = $3 AND state = 'running'")
        .bind(id).bind(owner).bind(fence).bind(state).bind(error).bind(now)
        .execute(x).await.map(|r| r.rows_affected()))?;
    Ok(n == 1)
}

/// Gives the job back to the queue to run again after `run_after` (a transient failure).
pub async fn retry_later(
    db: &Db,
    id: &str,
    owner: &str,
    fence: i64,
    error: &str,
    run_after: i64,
    now: i64,
) -> Result<bool, StoreError> {
    let n = on_db!(db, p => sqlx::query(
        "UPDATE jobs SET state = 'queued', error = $4, lease_owner = NULL, lease_until = NULL, \
         run_after = $5, updated_at = $6 \
         WHERE id = $1 AND lease_owner = $2 AND fence = $3 AND state = 'running'")
        .bind(id).bind(owner).bind(fence).bind(error).bind(run_after).bind(now)
        .execute(p).await.map(|r| r.rows_affected()))?;
    Ok(n == 1)
}

pub async fn job(db: &Db, id: &str) -> Result<Option<JobRow>, StoreError> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1");
    Ok(on_db!(db, p => sqlx::query_as::<_, JobRow>(&sql).bind(id).fetch_optional(p).await)?)
}

/// A VPS's unfinished jobs.
pub async fn active_for_vps(tx: &mut Tx, vps_id: &str) -> Result<i64, StoreError> {
    let n: i64 = on_tx!(tx, x => sqlx::query_scalar(
        "SELECT COUNT(*) FROM jobs WHERE vps_id = $1 AND state IN ('queued', 'running')")
        .bind(vps_id).fetch_one(x).await)?;
    Ok(n)
}

/// The kind of a queued or running job of the VPS older than job `id` (created at
/// `created_at`), if there is one.
pub async fn older_active_for_vps(
    tx: &mut Tx,
    vps_id: &str,
    id: &str,
    created_at: i64,
) -> Result<Option<String>, StoreError> {
    let kind: Option<String> = on_tx!(tx, x => sqlx::query_scalar(
        "SELECT kind FROM jobs WHERE vps_id = $1 AND state IN ('queued', 'running') \
         AND id <> $2 AND (created_at < $3 OR (created_at = $3 AND id < $2)) \
         ORDER BY created_at LIMIT 1")
        .bind(vps_id).bind(id).bind(created_at).fetch_optional(x).await)?;
    Ok(kind)
}

pub async fn jobs_of_vps(db: &Db, vps_id: &str, limit: i64) -> Result<Vec<JobRow>, StoreError> {
    let sql = format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE vps_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2"
    );
    Ok(
        on_db!(db, p => sqlx::query_as::<_, JobRow>(&sql).bind(vps_id).bind(limit).fetch_all(p).await)?,
    )
}

/// Puts every running job back in the queue. Only for SQLite at start-up: one server owns
/// the file, so a job still marked running belonged to this server's previous life.
pub async fn requeue_all_running(db: &Db, now: i64) -> Result<u64, StoreError> {
    let n = on_db!(db, p => sqlx::query(
        "UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_until = NULL, \
         fence = fence + 1, updated_at = $1 WHERE state = 'running'")
        .bind(now).execute(p).await.map(|r| r.rows_affected()))?;
    Ok(n)
}
