//! Tenants (with quotas and what they use) and plans (named VPS sizes).

use sqlx::FromRow;

use super::identity::After;
use super::{Db, StoreError, Tx};
use crate::{on_db, on_tx};

#[derive(Debug, Clone, FromRow)]
pub struct TenantRow {
    pub id: String,
    pub name: String,
    pub quota_vcpus: i64,
    pub quota_memory_mib: i64,
    pub quota_disk_gib: i64,
    pub quota_vms: i64,
    pub used_vcpus: i64,
    pub used_memory_mib: i64,
    pub used_disk_gib: i64,
    pub used_vms: i64,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

const TENANT_COLUMNS: &str = "id, name, quota_vcpus, quota_memory_mib, quota_disk_gib, quota_vms, \
     used_vcpus, used_memory_mib, used_disk_gib, used_vms, version, created_at, updated_at";

pub async fn insert_tenant(tx: &mut Tx, t: &TenantRow) -> Result<(), StoreError> {
    on_tx!(tx, c => sqlx::query(
        "INSERT INTO tenants (id, name, quota_vcpus, quota_memory_mib, quota_disk_gib, quota_vms, \
         used_vcpus, used_memory_mib, used_disk_gib, used_vms, version, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)")
        .bind(&t.id).bind(&t.name).bind(t.quota_vcpus).bind(t.quota_memory_mib)
        .bind(t.quota_disk_gib).bind(t.quota_vms).bind(t.used_vcpus).bind(t.used_memory_mib)
        .bind(t.used_disk_gib).bind(t.used_vms).bind(t.version).bind(t.created_at)
        .bind(t.updated_at)
        .execute(c).await.map(|r| r.rows_affected()))?;
    Ok(())
}

/// Writes name and quotas if the version is still `t.version`; usage is not touched here.
pub async fn update_tenant(tx: &mut Tx, t: &TenantRow) -> Result<bool, StoreError> {
    let done = on_tx!(tx, c => sqlx::query(
        "UPDATE tenants SET name = $2, quota_vcpus = $3, quota_memory_mib = $4, \
         quota_disk_gib = $5, quota_vms = $6, version = version + 1, updated_at = $7 \
         WHERE id = $1 AND version = $8")
        .bind(&t.id).bind(&t.name).bind(t.quota_vcpus).bind(t.quota_memory_mib)
        .bind(t.quota_disk_gib).bind(t.quota_vms).bind(t.updated_at).bind(t.version)
        .execute(c).await.map(|r| r.rows_affected()))?;
    Ok(done == 1)
}

pub async fn delete_tenant(tx: &mut Tx, id: &str, version: i64) -> Result<bool, StoreError> {
    let done = on_tx!(tx, c => sqlx::query("DELETE FROM tenants WHERE id = $1 AND version = $2")
        .bind(id).bind(version).execute(c).await.map(|r| r.rows_affected()))?;
    Ok(done == 1)
}

pub async fn tenant(db: &Db, id: &str) -> Result<Option<TenantRow>, StoreError> {
    let sql = format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE id = $1");
    Ok(on_db!(db, p => sqlx::query_as::<_, TenantRow>(&sql).bind(id).fetch_optional(p).await)?)
}

pub async fn tenant_tx(tx: &mut Tx, id: &str) -> Result<Option<TenantRow>, StoreError> {
    let sql = format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE id = $1");
    Ok(on_tx!(tx, c => sqlx::query_as::<_, TenantRow>(&sql).bind(id).fetch_optional(c).await)?)
}

pub async fn list_tenants(
    db: &Db,
    only: Option<&str>,
    after: Option<&After>,
    limit: i64,
) -> Result<Vec<TenantRow>, StoreError> {
    let after = after.cloned().unwrap_or(After {
        created_at: i64::MIN,
        id: String::new(),
    });
    let sql = format!(
        "SELECT {TENANT_COLUMNS} FROM tenants WHERE ($1 IS NULL OR id = $1) \
         AND (created_at > $2 OR (created_at = $2 AND id > $3)) ORDER BY created_at, id LIMIT $4"
    );
    Ok(on_db!(db, p => sqlx::query_as::<_, TenantRow>(&sql)
        .bind(only).bind(after.created_at).bind(&after.id).bind(limit).fetch_all(p).await)?)
}

/// How many users a tenant has (a tenant with users cannot be deleted).
pub async fn tenant_user_count(tx: &mut Tx, id: &str) -> Result<i64, StoreError> {
    let n: i64 = on_tx!(tx, c => sqlx::query_scalar(
        "SELECT COUNT(*) FROM users WHERE tenant_id = $1").bind(id).fetch_one(c).await)?;
    Ok(n)
}

#[derive(Debug, Clone, FromRow)]
pub struct PlanRow {
    pub id: String,
    pub name: String,
    pub vcpus: i64,
    pub memory_mib: i64,
    pub disk_gib: i64,
    /// How many backups a VPS of the plan may keep (0: none).
    pub backups: i64,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

const PLAN_COLUMNS: &str =
    "id, name, vcpus, memory_mib, disk_gib, backups, version, created_at, updated_at";

pub async fn insert_plan(tx: &mut Tx, p: &PlanRow) -> Result<(), StoreError> {
    on_tx!(tx, c => sqlx::query(
        "INSERT INTO plans (id, name, vcpus, memory_mib, disk_gib, version, created_at, updated_at, \
         backups) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)")
        .bind(&p.id).bind(&p.name).bind(p.vcpus).bind(p.memory_mib).bind(p.disk_gib)
        .bind(p.version).bind(p.created_at).bind(p.updated_at).bind(p.backups)
        .execute(c).await.map(|r| r.rows_affected()))?;
    Ok(())
}

pub async fn update_plan(tx: &mut Tx, p: &PlanRow) -> Result<bool, StoreError> {
    let done = on_tx!(tx, c => sqlx::query(
        "UPDATE plans SET name = $2, vcpus = $3, memory_mib = $4, disk_gib = $5, \
         backups = $8, version = version + 1, updated_at = $6 WHERE id = $1 AND version = $7")
        .bind(&p.id).bind(&p.name).bind(p.vcpus).bind(p.memory_mib).bind(p.disk_gib)
        .bind(p.updated_at).bind(p.version).bind(p.backups)
        .execute(c).await.map(|r| r.rows_affected()))?;
    Ok(done == 1)
}

pub async fn delete_plan(tx: &mut Tx, id: &str, version: i64) -> Result<bool, StoreError> {
    let done = on_tx!(tx, c => sqlx::query("DELETE FROM plans WHERE id = $1 AND version = $2")
        .bind(id).bind(version).execute(c).await.map(|r| r.rows_affected()))?;
    Ok(done == 1)
}

pub async fn plan(db: &Db, id: &str) -> Result<Option<PlanRow>, StoreError> {
    let sql = format!("SELECT {PLAN_COLUMNS} FROM plans WHERE id = $1 OR name = $1");
    Ok(on_db!(db, p => sqlx::query_as::<_, PlanRow>(&sql).bind(id).fetch_optional(p).await)?)
}

pub async fn list_plans(
    db: &Db,
    after: Option<&After>,
    limit: i64,
) -> Result<Vec<PlanRow>, StoreError> {
    let after = after.cloned().unwrap_or(After {
        created_at: i64::MIN,
        id: String::new(),
    });
    let sql = format!(
        "SELECT {PLAN_COLUMNS} FROM plans WHERE created_at > $1 OR (created_at = $1 AND id > $2) \
         ORDER BY created_at, id LIMIT $3"
    );
    Ok(on_db!(db, p => sqlx::query_as::<_, PlanRow>(&sql)
        .bind(after.created_at).bind(&after.id).bind(limit).fetch_all(p).await)?)
}
