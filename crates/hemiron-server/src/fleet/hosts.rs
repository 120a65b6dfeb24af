//! Node maintenance with evacuation (drain) and rebalancing of a cluster.

use serde::{Deserialize, Serialize};

use super::rebalance::{self, Guest, NodeCap};
use super::vps::queue_migration;
use crate::authz::{authorize, Access, Area, Owner};
use crate::error::ServiceError;
use crate::service::{Caller, Services};
use crate::store::fleet::{self as store, NodeRow, VpsRow};
use crate::store::jobs::{self, JobRow};

/// What a drain job is asked to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrainPayload {
    pub node_id: String,
}

/// Puts a node in maintenance and queues the job that moves every VPS off it.
pub async fn drain(svc: &Services, caller: &Caller, node_id: &str) -> Result<JobRow, ServiceError> {
    let who = caller.who()?;
    authorize(who, Area::Infra, Access::Write, Owner::Platform)
        .map_err(|d| ServiceError::denied(d, "node"))?;
    if !store::set_maintenance(&svc.db, node_id, true).await? {
        return Err(ServiceError::NotFound { what: "node" });
    }
    let payload = DrainPayload {
        node_id: node_id.to_string(),
    };
    let job = JobRow::queued(
        "node.drain",
        None,
        None,
        serde_json::to_string(&payload).unwrap_or_else(|_| "{}".into()),
    );
    let mut tx = svc.db.begin().await?;
    jobs::insert(&mut tx, &job).await?;
    caller
        .commit(
            tx,
            "node.drain",
            format!("node:{node_id}"),
            None,
            Some("maintenance=true".into()),
        )
        .await?;
    svc.wakeup.notify();
    Ok(job)
}

/// A rebalancing request.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RebalanceRequest {
    /// Only this cluster (id or name); every cluster when left out.
    #[serde(default)]
    pub cluster: Option<String>,
    /// Print the plan without moving anything.
    #[serde(default)]
    pub dry_run: bool,
}

/// One move of a plan.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PlannedMove {
    pub vps_id: String,
    pub vps_name: String,
    pub cluster_id: String,
    pub from: String,
    pub to: String,
    /// The cluster's imbalance once this move is made.
    pub imbalance_after: f64,
    /// The migration job (not on a dry run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
}

/// A cluster's plan.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ClusterPlan {
    pub cluster_id: String,
    pub cluster: String,
    /// In [0, 1]; the cluster is rebalanced above 0.3.
    pub imbalance: f64,
    pub moves: Vec<PlannedMove>,
}

/// The scheduler's view of a cluster: its nodes and its VPSes that may move (placed, not
/// busy with a job).
async fn view(
    svc: &Services,
    cluster_id: &str,
) -> Result<(Vec<NodeRow>, Vec<VpsRow>, Vec<NodeCap>, Vec<Guest>), ServiceError> {
    let nodes = store::nodes(&svc.db, Some(cluster_id)).await?;
    let mut vpses = Vec::new();
    let mut tx = svc.db.begin().await?;
    for v in store::vps_on_cluster(&svc.db, cluster_id).await? {
        if matches!(v.state.as_str(), "running" | "stopped")
            && jobs::active_for_vps(&mut tx, &v.id).await? == 0
        {
            vpses.push(v);
        }
    }
    drop(tx);
    let caps = nodes
        .iter()
        .map(|n| NodeCap {
            name: n.name.clone(),
            cpus: n.cpus as f64,
            memory_mib: n.memory_mib as f64,
            usable: n.status == "online" && !n.maintenance,
            overcommit: svc.settings.cpu_overcommit as f64,
        })
        .collect();
    let guests = vpses
        .iter()
        .filter_map(|v| {
            Some(Guest {
                id: v.id.clone(),
                node: v.node.clone()?,
                vcpus: v.vcpus as f64,
                memory_mib: v.memory_mib as f64,
                group: v
                    .anti_affinity
                    .as_ref()
                    .map(|g| format!("{}/{g}", v.tenant_id)),
            })
        })
        .collect();
    Ok((nodes, vpses, caps, guests))
}

/// Plans (and unless it is a dry run, starts) the moves that even out each cluster's load.
pub async fn rebalance(
    svc: &Services,
    caller: &Caller,
    req: &RebalanceRequest,
) -> Result<Vec<ClusterPlan>, ServiceError> {
    let who = caller.who()?;
    let access = if req.dry_run {
        Access::Read
    } else {
        Access::Write
    };
    authorize(who, Area::Infra, access, Owner::Platform)
        .map_err(|d| ServiceError::denied(d, "cluster"))?;
    let clusters: Vec<_> = store::clusters(&svc.db)
        .await?
        .into_iter()
        .filter(|c| {
            req.cluster
                .as_ref()
                .is_none_or(|want| *want == c.id || *want == c.name)
        })
        .collect();
    if clusters.is_empty() && req.cluster.is_some() {
        return Err(ServiceError::NotFound { what: "cluster" });
    }
    let mut out = Vec::new();
    for c in clusters {
        let (nodes, vpses, caps, guests) = view(svc, &c.id).await?;
        let (imbalance, moves) = rebalance::plan(&caps, &guests, guests.len());
        let mut planned = Vec::new();
        for m in moves {
            let Some(v) = vpses.iter().find(|v| v.id == m.guest) else {
                continue;
            };
            let mut job_id = None;
            if !req.dry_run {
                let Some(target) = nodes.iter().find(|n| n.name == m.to) else {
                    continue;
                };
                let mut tx = svc.db.begin().await?;
                if jobs::active_for_vps(&mut tx, &v.id).await? > 0 {
                    continue;
                }
                let job = queue_migration(&mut tx, v, target).await?;
                caller
                    .commit(
                        tx,
                        "vps.migrate",
                        format!("vps:{}", v.id),
                        Some(v.tenant_id.clone()),
                        Some(format!("rebalance from={} to={}", m.from, m.to)),
                    )
                    .await?;
                job_id = Some(job.id);
            }
            planned.push(PlannedMove {
                vps_id: v.id.clone(),
                vps_name: v.name.clone(),
                cluster_id: c.id.clone(),
                from: m.from,
                to: m.to,
                imbalance_after: m.imbalance_after,
                job_id,
            });
        }
        out.push(ClusterPlan {
            cluster_id: c.id.clone(),
            cluster: c.name.clone(),
            imbalance,
            moves: planned,
        });
    }
    if !req.dry_run {
        svc.wakeup.notify();
    }
    Ok(out)
}
