//! Clusters, their nodes and templates, VPSes and their events.

use sqlx::FromRow;

use super::identity::After;
use super::{Db, StoreError, Tx};
use crate::{on_db, on_tx};

#[derive(Debug, Clone, FromRow)]
pub struct ClusterRow {
    pub id: String,
    pub name: String,
    pub endpoint: String,
    pub token_id: String,
    pub token_secret: String,
    pub fingerprint: Option<String>,
    pub status: String,
    pub last_error: Option<String>,
    pub last_seen_at: Option<i64>,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

const CLUSTER_COLUMNS: &str = "id, name, endpoint, token_id, token_secret, fingerprint, status, \
     last_error, last_seen_at, version, created_at, updated_at";

pub async fn insert_cluster(tx: &mut Tx, c: &ClusterRow) -> Result<(), StoreError> {
    on_tx!(tx, x => sqlx::query(
        "INSERT INTO clusters (id, name, endpoint, token_id, token_secret, fingerprint, status, \
         last_error, last_seen_at, version, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)")
        .bind(&c.id).bind(&c.name).bind(&c.endpoint).bind(&c.token_id).bind(&c.token_secret)
        .bind(&c.fingerprint).bind(&c.status).bind(&c.last_error).bind(c.last_seen_at)
        .bind(c.version).bind(c.created_at).bind(c.updated_at)
        .execute(x).await.map(|r| r.rows_affected()))?;
    Ok(())
}

/// Writes `c` if its version is still `c.version`.
pub async fn update_cluster(tx: &mut Tx, c: &ClusterRow) -> Result<bool, StoreError> {
    let n = on_tx!(tx, x => sqlx::query(
        "UPDATE clusters SET name = $2, endpoint = $3, token_id = $4, token_secret = $5, \
         fingerprint = $6, version = version + 1, updated_at = $7 WHERE id = $1 AND version = $8")
        .bind(&c.id).bind(&c.name).bind(&c.endpoint).bind(&c.token_id).bind(&c.token_secret)
        .bind(&c.fingerprint).bind(c.updated_at).bind(c.version)
        .execute(x).await.map(|r| r.rows_affected()))?;
    Ok(n == 1)
}

/// Records whether the cluster answered (no version change: this is observation).
pub async fn set_cluster_health(
    db: &Db,
    id: &str,
    status: &str,
    error: Option<&str>,
    seen: Option<i64>,
) -> Result<(), StoreError> {
    on_db!(db, p => sqlx::query(
        "UPDATE clusters SET status = $2, last_error = $3, \
         last_seen_at = COALESCE($4, last_seen_at) WHERE id = $1")
        .bind(id).bind(status).bind(error).bind(seen)
        .execute(p).await.map(|r| r.rows_affected()))?;
    Ok(())
}

pub async fn delete_cluster(tx: &mut Tx, id: &str, version: i64) -> Result<bool, StoreError> {
    let n = on_tx!(tx, x => sqlx::query("DELETE FROM clusters WHERE id = $1 AND version = $2")
        .bind(id).bind(version).execute(x).await.map(|r| r.rows_affected()))?;
    Ok(n == 1)
}

pub async fn cluster(db: &Db, id: &str) -> Result<Option<ClusterRow>, StoreError> {
    let sql = format!("SELECT {CLUSTER_COLUMNS} FROM clusters WHERE id = $1 OR name = $1");
    Ok(on_db!(db, p => sqlx::query_as::<_, ClusterRow>(&sql).bind(id).fetch_optional(p).await)?)
}

pub async fn clusters(db: &Db) -> Result<Vec<ClusterRow>, StoreError> {
    let sql = format!("SELECT {CLUSTER_COLUMNS} FROM clusters ORDER BY created_at, id");
    Ok(on_db!(db, p => sqlx::query_as::<_, ClusterRow>(&sql).fetch_all(p).await)?)
}

pub async fn vps_count_in_cluster(tx: &mut Tx, cluster_id: &str) -> Result<i64, StoreError> {
    let n: i64 = on_tx!(tx, x => sqlx::query_scalar(
        "SELECT COUNT(*) FROM vps WHERE cluster_id = $1 AND state <> 'deleted'")
        .bind(cluster_id).fetch_one(x).await)?;
    Ok(n)
}

#[derive(Debug, Clone, FromRow)]
pub struct NodeRow {
    pub id: String,
    pub cluster_id: String,
    pub name: String,
    pub status: String,
    pub accel: Option<String>,
    pub cpus: i64,
    pub memory_mib: i64,
    pub reserved_vcpus: i64,
    pub reserved_memory_mib: i64,
    pub reserved_disk_gib: i64,
    pub maintenance: bool,
    pub updated_at: i64,
}

const NODE_COLUMNS: &str =
    "id, cluster_id, name, status, accel, cpus, memory_mib, reserved_vcpus, \
     reserved_memory_mib, reserved_disk_gib, maintenance, updated_at";

/// Records a node as the cluster reports it (its reservations are kept).
pub async fn upsert_node(db: &Db, n: &NodeRow) -> Result<(), StoreError> {
    on_db!(db, p => sqlx::query(
        "INSERT INTO nodes (id, cluster_id, name, status, accel, cpus, memory_mib, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (cluster_id, name) DO UPDATE SET status = excluded.status, \
         accel = excluded.accel, cpus = excluded.cpus, memory_mib = excluded.memory_mib, \
         updated_at = excluded.updated_at")
        .bind(&n.id).bind(&n.cluster_id).bind(&n.name).bind(&n.status).bind(&n.accel)
        .bind(n.cpus).bind(n.memory_mib).bind(n.updated_at)
        .execute(p).await.map(|r| r.rows_affected()))?;
    Ok(())
}

/// Marks nodes the cluster no longer lists as gone.
pub async fn mark_nodes_gone(
    db: &Db,
    cluster_id: &str,
    seen: &[String],
    now: i64,
) -> Result<(), StoreError> {
    let all = nodes(db, Some(cluster_id)).await?;
    for n in all.into_iter().filter(|n| !seen.contains(&n.name)) {
        on_db!(db, p => sqlx::query("UPDATE nodes SET status = 'gone', updated_at = $2 WHERE id = $1")
            .bind(&n.id).bind(now).execute(p).await.map(|r| r.rows_affected()))?;
    }
    Ok(())
}

pub async fn nodes(db: &Db, cluster_id: Option<&str>) -> Result<Vec<NodeRow>, StoreError> {
    let sql = format!(
        "SELECT {NODE_COLUMNS} FROM nodes WHERE ($1 IS NULL OR cluster_id = $1) ORDER BY cluster_id, name"
    );
    Ok(on_db!(db, p => sqlx::query_as::<_, NodeRow>(&sql).bind(cluster_id).fetch_all(p).await)?)
}

pub async fn nodes_tx(tx: &mut Tx) -> Result<Vec<NodeRow>, StoreError> {
    let sql = format!("SELECT {NODE_COLUMNS} FROM nodes ORDER BY cluster_id, name");
    Ok(on_tx!(tx, x => sqlx::query_as::<_, NodeRow>(&sql).fetch_all(x).await)?)
}

pub async fn set_maintenance(db: &Db, id: &str, on: bool) -> Result<bool, StoreError> {
    let n = on_db!(db, p => sqlx::query("UPDATE nodes SET maintenance = $2 WHERE id = $1")
        .bind(id).bind(on).execute(p).await.map(|r| r.rows_affected()))?;
    Ok(n == 1)
}

/// Reserves capacity on a node if it still fits (`cpus × overcommit` vCPUs, all its memory).
pub async fn reserve_on_node(
    tx: &mut Tx,
    node_id: &str,
    vcpus: i64,
    memory_mib: i64,
    disk_gib: i64,
    cpu_overcommit: i64,
) -> Result<bool, StoreError> {
    let n = on_tx!(tx, x => sqlx::query(
        "UPDATE nodes SET reserved_vcpus = reserved_vcpus + $2, \
         reserved_memory_mib = reserved_memory_mib + $3, reserved_disk_gib = reserved_disk_gib + $4 \
         WHERE id = $1 AND reserved_vcpus + $2 <= cpus * $5 \
         AND reserved_memory_mib + $3 <= memory_mib")
        .bind(node_id).bind(vcpus).bind(memory_mib).bind(disk_gib).bind(cpu_overcommit)
        .execute(x).await.map(|r| r.rows_affected()))?;
    Ok(n == 1)
}

/// Gives back what a VPS reserved on its node (by cluster and node name).
pub async fn release_on_node(
    tx: &mut Tx,
    cluster_id: &str,
    node: &str,
    vcpus: i64,
    memory_mib: i64,
    disk_gib: i64,
) -> Result<(), StoreError> {
    on_tx!(tx, x => sqlx::query(
        "UPDATE nodes SET reserved_vcpus = reserved_vcpus - $3, \
         reserved_memory_mib = reserved_memory_mib - $4, reserved_disk_gib = reserved_disk_gib - $5 \
         WHERE cluster_id = $1 AND name = $2")
        .bind(cluster_id).bind(node).bind(vcpus).bind(memory_mib).bind(disk_gib)
        .execute(x).await.map(|r| r.rows_affected()))?;
    Ok(())
}

#[derive(Debug, Clone, FromRow)]
pub struct TemplateRow {
    pub id: String,
    pub cluster_id: String,
    pub node: String,
    pub vmid: i64,
    pub name: String,
    pub updated_at: i64,
}

/// Replaces what is known of a cluster's templates.
pub async fn replace_templates(
    db: &Db,
    cluster_id: &str,
    found: &[TemplateRow],
) -> Result<(), StoreError> {
    let mut tx = db.begin().await?;
    on_tx!(&mut tx, x => sqlx::query("DELETE FROM templates WHERE cluster_id = $1")
        .bind(cluster_id).execute(x).await.map(|r| r.rows_affected()))?;
    for t in found {
        on_tx!(&mut tx, x => sqlx::query(
            "INSERT INTO templates (id, cluster_id, node, vmid, name, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(&t.id).bind(&t.cluster_id).bind(&t.node).bind(t.vmid).bind(&t.name)
            .bind(t.updated_at)
            .execute(x).await.map(|r| r.rows_affected()))?;
    }
    tx.commit().await
}

pub async fn templates(db: &Db) -> Result<Vec<TemplateRow>, StoreError> {
    Ok(on_db!(db, p => sqlx::query_as::<_, TemplateRow>(
        "SELECT id, cluster_id, node, vmid, name, updated_at FROM templates ORDER BY name, cluster_id, node")
        .fetch_all(p).await)?)
}

pub async fn templates_named_tx(tx: &mut Tx, name: &str) -> Result<Vec<TemplateRow>, StoreError> {
    Ok(on_tx!(tx, x => sqlx::query_as::<_, TemplateRow>(
        "SELECT id, cluster_id, node, vmid, name, updated_at FROM templates \
         WHERE name = $1 OR id = $1 ORDER BY cluster_id, node")
        .bind(name).fetch_all(x).await)?)
}

#[derive(Debug, Clone, FromRow, serde::Deserialize)]
pub struct VpsRow {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub plan_id: Option<String>,
    pub template: String,
    pub vcpus: i64,
    pub memory_mib: i64,
    pub disk_gib: i64,
    pub username: String,
    pub ssh_keys: String,
    #[serde(deserialize_with = "bool_or_int")]
    pub full_clone: bool,
    pub anti_affinity: Option<String>,
    pub cluster_id: Option<String>,
    pub node: Option<String>,
    pub vmid: Option<i64>,
    pub state: String,
    pub power: String,
    pub ssh_address: Option<String>,
    pub web_address: Option<String>,
    pub drift: Option<String>,
    pub last_error: Option<String>,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

const VPS_COLUMNS: &str = "id, tenant_id, name, plan_id, template, vcpus, memory_mib, disk_gib, \
     username, ssh_keys, full_clone, anti_affinity, cluster_id, node, vmid, state, power, \
     ssh_address, web_address, drift, last_error, version, created_at, updated_at";

pub async fn insert_vps(tx: &mut Tx, v: &VpsRow) -> Result<(), StoreError> {
    on_tx!(tx, x => sqlx::query(
        "INSERT INTO vps (id, tenant_id, name, plan_id, template, vcpus, memory_mib, disk_gib, \
         username, ssh_keys, full_clone, anti_affinity, cluster_id, node, vmid, state, power, \
         ssh_address, web_address, drift, last_error, version, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
         $18, $19, $20, $21, $22, $23, $24)")
        .bind(&v.id).bind(&v.tenant_id).bind(&v.name).bind(&v.plan_id).bind(&v.template)
        .bind(v.vcpus).bind(v.memory_mib).bind(v.disk_gib).bind(&v.username).bind(&v.ssh_keys)
        .bind(v.full_clone).bind(&v.anti_affinity).bind(&v.cluster_id).bind(&v.node)
        .bind(v.vmid).bind(&v.state).bind(&v.power).bind(&v.ssh_address).bind(&v.web_address)
        .bind(&v.drift).bind(&v.last_error).bind(v.version).bind(v.created_at).bind(v.updated_at)
        .execute(x).await.map(|r| r.rows_affected()))?;
    Ok(())
}

/// Writes the mutable fields of `v` if its version is still `v.version` (then incremented).
pub async fn update_vps(tx: &mut Tx, v: &VpsRow) -> Result<bool, StoreError> {
    let n = on_tx!(tx, x => sqlx::query(
        "UPDATE vps SET vcpus = $2, memory_mib = $3, disk_gib = $4, ssh_keys = $5, \
         cluster_id = $6, node = $7, vmid = $8, state = $9, power = $10, ssh_address = $11, \
         web_address = $12, drift = $13, last_error = $14, version = version + 1, \
         updated_at = $15 WHERE id = $1 AND version = $16")
        .bind(&v.id).bind(v.vcpus).bind(v.memory_mib).bind(v.disk_gib).bind(&v.ssh_keys)
        .bind(&v.cluster_id).bind(&v.node).bind(v.vmid).bind(&v.state).bind(&v.power)
        .bind(&v.ssh_address).bind(&v.web_address).bind(&v.drift).bind(&v.last_error)
        .bind(v.updated_at).bind(v.version)
        .execute(x).await.map(|r| r.rows_affected()))?;
    Ok(n == 1)
}

pub async fn vps(db: &Db, id: &str) -> Result<Option<VpsRow>, StoreError> {
    let sql = format!("SELECT {VPS_COLUMNS} FROM vps WHERE id = $1");
    Ok(on_db!(db, p => sqlx::query_as::<_, VpsRow>(&sql).bind(id).fetch_optional(p).await)?)
}

pub async fn vps_tx(tx: &mut Tx, id: &str) -> Result<Option<VpsRow>, StoreError> {
    let sql = format!("SELECT {VPS_COLUMNS} FROM vps WHERE id = $1");
    Ok(on_tx!(tx, x => sqlx::query_as::<_, VpsRow>(&sql).bind(id).fetch_optional(x).await)?)
}

/// A page of VPSes (not deleted), oldest first; one tenant's if given.
pub async fn list_vps(
    db: &Db,
    tenant: Option<&str>,
    after: Option<&After>,
    limit: i64,
) -> Result<Vec<VpsRow>, StoreError> {
    let after = after.cloned().unwrap_or(After {
        created_at: i64::MIN,
        id: String::new(),
    });
    let page = format!(
        "SELECT {VPS_COLUMNS} FROM vps WHERE ($1 IS NULL OR tenant_id = $1) AND state <> 'deleted' \
         AND (created_at > $2 OR (created_at = $2 AND id > $3)) ORDER BY created_at, id LIMIT $4"
    );
    match db {
        Db::Sqlite(pool, _) => {
            // sqlx hands SQLite rows over one at a time from a connection thread; a page
            // comes back as one JSON document instead (listing is the busiest read).
            let object = VPS_COLUMNS
                .split(',')
                .map(|c| format!("'{0}', {0}", c.trim()))
                .collect::<Vec<_>>()
                .join(", ");
            // The aggregate's own ORDER BY (SQLite >= 3.44) keeps the page's order.
            let sql = format!(
                "SELECT json_group_array(json_object({object}) ORDER BY created_at, id) FROM ({page})"
            );
            let text: String = sqlx::query_scalar(&sql)
                .bind(tenant)
                .bind(after.created_at)
                .bind(&after.id)
                .bind(limit)
                .fetch_one(pool)
                .await?;
            serde_json::from_str(&text).map_err(|e| StoreError::Decode(e.to_string()))
        }
        Db::Postgres(pool) => Ok(sqlx::query_as::<_, VpsRow>(&page)
            .bind(tenant)
            .bind(after.created_at)
            .bind(&after.id)
            .bind(limit)
            .fetch_all(pool)
            .await?),
    }
}

/// SQLite's JSON has no booleans: 0 and 1 stand for them.
fn bool_or_int<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    use serde::Deserialize;
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum B {
        Bool(bool),
        Int(i64),
    }
    Ok(match B::deserialize(d)? {
        B::Bool(b) => b,
        B::Int(i) => i != 0,
    })
}

/// Every VPS placed on a cluster (for the reconciler).
pub async fn vps_on_cluster(db: &Db, cluster_id: &str) -> Result<Vec<VpsRow>, StoreError> {
    let sql = format!(
        "SELECT {VPS_COLUMNS} FROM vps WHERE cluster_id = $1 AND vmid IS NOT NULL \
         AND state IN ('running', 'stopped', 'missing')"
    );
    Ok(on_db!(db, p => sqlx::query_as::<_, VpsRow>(&sql).bind(cluster_id).fetch_all(p).await)?)
}

/// Nodes hosting VPSes of an anti-affinity group of a tenant.
pub async fn anti_affinity_nodes(
    tx: &mut Tx,
    tenant: &str,
    group: &str,
) -> Result<Vec<(String, String)>, StoreError> {
    let rows: Vec<(Option<String>, Option<String>)> = on_tx!(tx, x => sqlx::query_as(
        "SELECT cluster_id, node FROM vps WHERE tenant_id = $1 AND anti_affinity = $2 \
         AND state NOT IN ('deleted', 'failed')")
        .bind(tenant).bind(group).fetch_all(x).await)?;
    Ok(rows
        .into_iter()
        .filter_map(|(c, n)| Some((c?, n?)))
        .collect())
}

/// Adds to (or, negative, takes from) a tenant's usage if the quota allows it.
pub async fn charge_tenant(
    tx: &mut Tx,
    tenant: &str,
    vcpus: i64,
    memory_mib: i64,
    disk_gib: i64,
    vms: i64,
) -> Result<bool, StoreError> {
    let n = on_tx!(tx, x => sqlx::query(
        "UPDATE tenants SET used_vcpus = used_vcpus + $2, used_memory_mib = used_memory_mib + $3, \
         used_disk_gib = used_disk_gib + $4, used_vms = used_vms + $5 \
         WHERE id = $1 AND ($2 <= 0 OR used_vcpus + $2 <= quota_vcpus) \
         AND ($3 <= 0 OR used_memory_mib + $3 <= quota_memory_mib) \
         AND ($4 <= 0 OR used_disk_gib + $4 <= quota_disk_gib) \
         AND ($5 <= 0 OR used_vms + $5 <= quota_vms)")
        .bind(tenant).bind(vcpus).bind(memory_mib).bind(disk_gib).bind(vms)
        .execute(x).await.map(|r| r.rows_affected()))?;
    Ok(n == 1)
}

#[derive(Debug, Clone, FromRow)]
pub struct EventRow {
    pub id: String,
    pub at: i64,
    pub tenant_id: Option<String>,
    pub vps_id: Option<String>,
    pub kind: String,
    pub detail: String,
}

pub async fn add_event(tx: &mut Tx, e: &EventRow) -> Result<(), StoreError> {
    on_tx!(tx, x => sqlx::query(
        "INSERT INTO events (id, at, tenant_id, vps_id, kind, detail) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(&e.id).bind(e.at).bind(&e.tenant_id).bind(&e.vps_id).bind(&e.kind).bind(&e.detail)
        .execute(x).await.map(|r| r.rows_affected()))?;
    Ok(())
}

pub async fn events_of_vps(db: &Db, vps_id: &str, limit: i64) -> Result<Vec<EventRow>, StoreError> {
    Ok(on_db!(db, p => sqlx::query_as::<_, EventRow>(
        "SELECT id, at, tenant_id, vps_id, kind, detail FROM events WHERE vps_id = $1 \
         ORDER BY at DESC, id DESC LIMIT $2")
        .bind(vps_id).bind(limit).fetch_all(p).await)?)
}
