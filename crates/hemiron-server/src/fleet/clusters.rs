//! Clusters (Proxmox VE API endpoints: Hemiron nodes or real Proxmox VE clusters), what they
//! hold (nodes with capacity and accelerator, template VMs), and the API clients to them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hemiron_pve_client::{ClientConfig, Credentials, PveClient, PveError};

use crate::authz::{authorize, Access, Area, Owner};
use crate::error::{Problems, ServiceError};
use crate::service::{Caller, Services};
use crate::store::fleet::{self as store, ClusterRow, NodeRow, TemplateRow};
use crate::store::{new_id, now_ms};

/// API clients by cluster, rebuilt when the cluster's settings change (its version).
#[derive(Debug, Clone, Default)]
pub struct Clients(Arc<Mutex<HashMap<String, (i64, PveClient)>>>);

impl Clients {
    /// The client of a cluster.
    pub fn get(&self, c: &ClusterRow) -> Result<PveClient, PveError> {
        if let Ok(map) = self.0.lock() {
            if let Some((v, client)) = map.get(&c.id) {
                if *v == c.version {
                    return Ok(client.clone());
                }
            }
        }
        let client = build_client(c)?;
        if let Ok(mut map) = self.0.lock() {
            map.insert(c.id.clone(), (c.version, client.clone()));
        }
        Ok(client)
    }
}

fn build_client(c: &ClusterRow) -> Result<PveClient, PveError> {
    PveClient::new(ClientConfig {
        endpoint: c.endpoint.clone(),
        credentials: Credentials::Token {
            tokenid: c.token_id.clone(),
            secret: c.token_secret.clone(),
        },
        fingerprint: c.fingerprint.clone(),
        timeout: Duration::from_secs(60),
    })
}

/// A new cluster's settings.
#[derive(Debug, Clone)]
pub struct NewCluster {
    pub name: String,
    pub endpoint: String,
    pub token_id: String,
    pub token_secret: String,
    pub fingerprint: Option<String>,
}

/// Registers a cluster after checking that it answers with these credentials, and reads its
/// nodes and templates.
pub async fn create(
    svc: &Services,
    caller: &Caller,
    new: NewCluster,
) -> Result<ClusterRow, ServiceError> {
    let who = caller.who()?;
    authorize(who, Area::Infra, Access::Write, Owner::Platform)
        .map_err(|d| ServiceError::denied(d, "cluster"))?;
    let mut p = Problems::default();
    p.check(
        !new.name.is_empty()
            && new.name.len() <= 64
            && new
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
        "name",
        "1 to 64 characters: lower-case letters, digits and -",
    );
    p.check(
        new.endpoint.starts_with("https://") || new.endpoint.starts_with("http://"),
        "endpoint",
        "an http:// or https:// URL, e.g. https://pve1:8006",
    );
    p.check(
        new.token_id.contains('@') && new.token_id.contains('!'),
        "token_id",
        "USER@REALM!NAME",
    );
    p.check(!new.token_secret.is_empty(), "token_secret", "required");
    if let Some(fp) = &new.fingerprint {
        p.check(
            hemiron_pve_client::tls::normalize_fingerprint(fp).is_some(),
            "fingerprint",
            "a SHA-256 fingerprint, 32 hex bytes separated by colons",
        );
    }
    p.finish()?;
    let now = now_ms();
    let mut row = ClusterRow {
        id: new_id(),
        name: new.name,
        endpoint: new.endpoint.trim_end_matches('/').to_string(),
        token_id: new.token_id,
        token_secret: new.token_secret,
        fingerprint: new.fingerprint,
        status: "online".into(),
        last_error: None,
        last_seen_at: Some(now),
        version: 1,
        created_at: now,
        updated_at: now,
    };
    let client = build_client(&row)
        .map_err(|e| ServiceError::invalid("endpoint", crate::error_chain(&e)))?;
    client.version().await.map_err(|e| {
        ServiceError::invalid(
            "endpoint",
            format!("the cluster did not answer: {}", crate::error_chain(&e)),
        )
    })?;
    let mut tx = svc.db.begin().await?;
    let result = store::insert_cluster(&mut tx, &row).await.map(|()| true);
    ServiceError::written(result, "cluster", &row.name, 1)?;
    caller
        .commit(
            tx,
            "cluster.create",
            format!("cluster:{}", row.id),
            None,
            Some(format!("endpoint={}", row.endpoint)),
        )
        .await?;
    refresh(svc, &row).await;
    if let Some(fresh) = store::cluster(&svc.db, &row.id).await? {
        row = fresh;
    }
    Ok(row)
}

/// Reads a cluster's nodes and templates into the store; records whether it answered.
pub async fn refresh(svc: &Services, c: &ClusterRow) {
    let result = read_inventory(svc, c).await;
    let now = now_ms();
    let health = match &result {
        Ok(()) => store::set_cluster_health(&svc.db, &c.id, "online", None, Some(now)).await,
        Err(e) => {
            tracing::warn!(cluster = %c.name, error = %crate::error_chain(e.as_ref()), "cluster inventory failed");
            store::set_cluster_health(
                &svc.db,
                &c.id,
                "unreachable",
                Some(&crate::error_chain(e.as_ref())),
                None,
            )
            .await
        }
    };
    if let Err(e) = health {
        tracing::warn!(cluster = %c.name, error = %crate::error_chain(&e), "recording cluster health failed");
    }
}

async fn read_inventory(
    svc: &Services,
    c: &ClusterRow,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let client = svc.clients.get(c)?;
    let now = now_ms();
    let entries = client.nodes().await?;
    let mut seen = Vec::new();
    for e in entries {
        let (cpus, memory, accel) = if e.status == "online" {
            let s = client.node_status(&e.node).await?;
            (
                s.cpuinfo.and_then(|c| c.cpus).or(e.maxcpu).unwrap_or(0),
                s.memory.and_then(|m| m.total).or(e.maxmem).unwrap_or(0),
                // Real Proxmox VE runs KVM; Hemiron nodes say which.
                Some(s.accel.unwrap_or_else(|| "kvm".into())),
            )
        } else {
            (e.maxcpu.unwrap_or(0), e.maxmem.unwrap_or(0), None)
        };
        let node = NodeRow {
            id: new_id(),
            cluster_id: c.id.clone(),
            name: e.node.clone(),
            status: e.status.clone(),
            accel,
            cpus: i64::try_from(cpus).unwrap_or(i64::MAX),
            memory_mib: i64::try_from(memory / (1024 * 1024)).unwrap_or(i64::MAX),
            reserved_vcpus: 0,
            reserved_memory_mib: 0,
            reserved_disk_gib: 0,
            maintenance: false,
            updated_at: now,
        };
        store::upsert_node(&svc.db, &node).await?;
        seen.push(e.node);
    }
    store::mark_nodes_gone(&svc.db, &c.id, &seen, now).await?;
    let templates: Vec<TemplateRow> = client
        .resources(Some("vm"))
        .await?
        .into_iter()
        .filter(|r| r.template == Some(true))
        .filter_map(|r| {
            let vmid = i64::try_from(r.vmid?).ok()?;
            Some(TemplateRow {
                id: format!("{}:{vmid}", c.id),
                cluster_id: c.id.clone(),
                node: r.node?,
                vmid,
                name: r.name.unwrap_or_else(|| format!("vm{vmid}")),
                updated_at: now,
            })
        })
        .collect();
    store::replace_templates(&svc.db, &c.id, &templates).await?;
    Ok(())
}

pub async fn get(svc: &Services, caller: &Caller, id: &str) -> Result<ClusterRow, ServiceError> {
    let who = caller.who()?;
    authorize(who, Area::Infra, Access::Read, Owner::Platform)
        .map_err(|d| ServiceError::denied(d, "cluster"))?;
    store::cluster(&svc.db, id)
        .await?
        .ok_or(ServiceError::NotFound { what: "cluster" })
}

pub async fn list(svc: &Services, caller: &Caller) -> Result<Vec<ClusterRow>, ServiceError> {
    let who = caller.who()?;
    authorize(who, Area::Infra, Access::Read, Owner::Platform)
        .map_err(|d| ServiceError::denied(d, "cluster"))?;
    Ok(store::clusters(&svc.db).await?)
}

/// Removes a cluster that hosts no VPS (its nodes and templates go with it).
pub async fn delete(
    svc: &Services,
    caller: &Caller,
    id: &str,
    version: i64,
) -> Result<(), ServiceError> {
    let c = get(svc, caller, id).await?;
    let who = caller.who()?;
    authorize(who, Area::Infra, Access::Write, Owner::Platform)
        .map_err(|d| ServiceError::denied(d, "cluster"))?;
    let mut tx = svc.db.begin().await?;
    let hosted = store::vps_count_in_cluster(&mut tx, &c.id).await?;
    if hosted > 0 {
        return Err(ServiceError::Conflict(format!(
            "the cluster still hosts {hosted} VPSes"
        )));
    }
    if c.version != version || !store::delete_cluster(&mut tx, &c.id, version).await? {
        return Err(ServiceError::stale("cluster", c.version));
    }
    caller
        .commit(
            tx,
            "cluster.delete",
            format!("cluster:{}", c.id),
            None,
            Some(format!("name={}", c.name)),
        )
        .await
}

/// Re-reads a cluster's inventory now.
pub async fn refresh_now(
    svc: &Services,
    caller: &Caller,
    id: &str,
) -> Result<ClusterRow, ServiceError> {
    let c = get(svc, caller, id).await?;
    let who = caller.who()?;
    authorize(who, Area::Infra, Access::Write, Owner::Platform)
        .map_err(|d| ServiceError::denied(d, "cluster"))?;
    refresh(svc, &c).await;
    let row = caller.audit(
        "cluster.refresh",
        Some(format!("cluster:{}", c.id)),
        None,
        "ok",
        None,
    );
    crate::store::audit::append(&svc.db, &row).await?;
    store::cluster(&svc.db, &c.id)
        .await?
        .ok_or(ServiceError::NotFound { what: "cluster" })
}

pub async fn nodes(svc: &Services, caller: &Caller) -> Result<Vec<NodeRow>, ServiceError> {
    let who = caller.who()?;
    authorize(who, Area::Infra, Access::Read, Owner::Platform)
        .map_err(|d| ServiceError::denied(d, "node"))?;
    Ok(store::nodes(&svc.db, None).await?)
}

/// Puts a node in or out of maintenance (no new placements while in it).
pub async fn set_maintenance(
    svc: &Services,
    caller: &Caller,
    id: &str,
    on: bool,
) -> Result<NodeRow, ServiceError> {
    let who = caller.who()?;
    authorize(who, Area::Infra, Access::Write, Owner::Platform)
        .map_err(|d| ServiceError::denied(d, "node"))?;
    if !store::set_maintenance(&svc.db, id, on).await? {
        return Err(ServiceError::NotFound { what: "node" });
    }
    let row = caller.audit(
        "node.maintenance",
        Some(format!("node:{id}")),
        None,
        "ok",
        Some(format!("maintenance={on}")),
    );
    crate::store::audit::append(&svc.db, &row).await?;
    store::nodes(&svc.db, None)
        .await?
        .into_iter()
        .find(|n| n.id == id)
        .ok_or(ServiceError::NotFound { what: "node" })
}

/// Templates offered for new VPSes (everyone may read them).
pub async fn templates(svc: &Services, caller: &Caller) -> Result<Vec<TemplateRow>, ServiceError> {
    let who = caller.who()?;
    authorize(who, Area::Templates, Access::Read, Owner::Platform)
        .map_err(|d| ServiceError::denied(d, "template"))?;
    Ok(store::templates(&svc.db).await?)
}
