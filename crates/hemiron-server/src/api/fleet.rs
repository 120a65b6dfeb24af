//! `/api/v1/clusters`, `/nodes`, `/templates`, `/vps`, `/jobs`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{Authed, Body, IfMatch, Path, Query};
use super::problem::{ApiError, Problem};
use super::views::{time, Page, PageQuery};
use super::{created, tagged, AppState};
use crate::fleet::clusters::{self, NewCluster};
use crate::fleet::hosts::{self, ClusterPlan, RebalanceRequest};
use crate::fleet::vps::{self, NewVps, Power, DEFAULT_USER};
use crate::store::fleet::{ClusterRow, EventRow, NodeRow, TemplateRow, VpsRow};
use crate::store::jobs::JobRow;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_clusters, create_cluster))
        .routes(routes!(get_cluster, delete_cluster))
        .routes(routes!(refresh_cluster))
        .routes(routes!(list_nodes))
        .routes(routes!(update_node))
        .routes(routes!(drain_node))
        .routes(routes!(rebalance))
        .routes(routes!(list_templates))
        .routes(routes!(list_vps, create_vps))
        .routes(routes!(get_vps, resize_vps, delete_vps))
        .routes(routes!(vps_power))
        .routes(routes!(migrate_vps))
        .routes(routes!(vps_events))
        .routes(routes!(get_job))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Cluster {
    pub id: String,
    pub name: String,
    pub endpoint: String,
    pub token_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// `online` or `unreachable` (as of the last inventory).
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen_at: Option<String>,
    pub version: i64,
    pub created_at: String,
}

impl From<ClusterRow> for Cluster {
    fn from(c: ClusterRow) -> Cluster {
        Cluster {
            id: c.id,
            name: c.name,
            endpoint: c.endpoint,
            token_id: c.token_id,
            fingerprint: c.fingerprint,
            status: c.status,
            last_error: c.last_error,
            last_seen_at: c.last_seen_at.map(time),
            version: c.version,
            created_at: time(c.created_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Node {
    pub id: String,
    pub cluster_id: String,
    pub name: String,
    /// `online`, `offline` or `gone`.
    pub status: String,
    /// `kvm` or `tcg`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accel: Option<String>,
    pub cpus: i64,
    pub memory_mib: i64,
    pub reserved_vcpus: i64,
    pub reserved_memory_mib: i64,
    pub reserved_disk_gib: i64,
    /// No new placements while set.
    pub maintenance: bool,
    pub updated_at: String,
}

impl From<NodeRow> for Node {
    fn from(n: NodeRow) -> Node {
        Node {
            id: n.id,
            cluster_id: n.cluster_id,
            name: n.name,
            status: n.status,
            accel: n.accel,
            cpus: n.cpus,
            memory_mib: n.memory_mib,
            reserved_vcpus: n.reserved_vcpus,
            reserved_memory_mib: n.reserved_memory_mib,
            reserved_disk_gib: n.reserved_disk_gib,
            maintenance: n.maintenance,
            updated_at: time(n.updated_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Template {
    pub id: String,
    pub name: String,
    pub cluster_id: String,
    pub node: String,
    pub vmid: i64,
}

impl From<TemplateRow> for Template {
    fn from(t: TemplateRow) -> Template {
        Template {
            id: t.id,
            name: t.name,
            cluster_id: t.cluster_id,
            node: t.node,
            vmid: t.vmid,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Vps {
    pub id: String,
    pub name: String,
    pub tenant_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan_id: Option<String>,
    pub template: String,
    pub vcpus: i64,
    pub memory_mib: i64,
    pub disk_gib: i64,
    /// The login user cloud-init makes.
    pub username: String,
    pub ssh_keys: Vec<String>,
    pub full_clone: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anti_affinity: Option<String>,
    /// `creating`, `running`, `stopped`, `deleting`, `failed` or `missing`.
    pub state: String,
    /// What the cluster last reported: `running`, `stopped` or `unknown`.
    pub power: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vmid: Option<i64>,
    /// `HOST:PORT` reaching the VPS's SSH server (Hemiron nodes forward it on loopback).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh_address: Option<String>,
    /// `HOST:PORT` reaching the VPS's port 80.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub web_address: Option<String>,
    /// A ready command line: `ssh -p PORT USER@HOST`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh_command: Option<String>,
    /// Configuration drift seen on the cluster (never reverted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drift: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

impl From<VpsRow> for Vps {
    fn from(v: VpsRow) -> Vps {
        let ssh_command = v.ssh_address.as_deref().and_then(|a| {
            let (host, port) = a.rsplit_once(':')?;
            Some(format!("ssh -p {port} {}@{host}", v.username))
        });
        Vps {
            ssh_command,
            id: v.id,
            name: v.name,
            tenant_id: v.tenant_id,
            plan_id: v.plan_id,
            template: v.template,
            vcpus: v.vcpus,
            memory_mib: v.memory_mib,
            disk_gib: v.disk_gib,
            username: v.username,
            ssh_keys: v.ssh_keys.lines().map(str::to_string).collect(),
            full_clone: v.full_clone,
            anti_affinity: v.anti_affinity,
            state: v.state,
            power: v.power,
            cluster_id: v.cluster_id,
            node: v.node,
            vmid: v.vmid,
            ssh_address: v.ssh_address,
            web_address: v.web_address,
            drift: v.drift.and_then(|d| serde_json::from_str(&d).ok()),
            last_error: v.last_error,
            version: v.version,
            created_at: time(v.created_at),
            updated_at: time(v.updated_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Job {
    pub id: String,
    /// `vps.create`, `vps.start`, `vps.stop`, `vps.shutdown`, `vps.reboot`, `vps.resize`,
    /// `vps.delete`, `vps.migrate`.
    pub kind: String,
    /// `queued`, `running`, `succeeded`, `failed` or `needs-attention` (a migration whose
    /// VM moved but did not pass verification).
    pub state: String,
    /// The last step reached.
    pub step: String,
    /// The cluster's last progress report (a migration's transfer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vps_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub attempts: i64,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

impl From<JobRow> for Job {
    fn from(j: JobRow) -> Job {
        let progress = serde_json::from_str::<serde_json::Value>(&j.checkpoint)
            .ok()
            .and_then(|c| c["progress"].as_str().map(str::to_string));
        Job {
            id: j.id,
            kind: j.kind,
            state: j.state,
            step: j.step,
            progress,
            vps_id: j.vps_id,
            error: j.error,
            attempts: j.attempts,
            created_at: time(j.created_at),
            updated_at: time(j.updated_at),
            finished_at: j.finished_at.map(time),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Event {
    pub id: String,
    pub at: String,
    /// `vps.created`, `vps.power`, `vps.missing`, `vps.moved`, `vps.drift`, `vps.migrated`,
    /// `vps.deleted`, `*.failed`…
    pub kind: String,
    pub detail: String,
}

impl From<EventRow> for Event {
    fn from(e: EventRow) -> Event {
        Event {
            id: e.id,
            at: time(e.at),
            kind: e.kind,
            detail: e.detail,
        }
    }
}

/// List clusters.
#[utoipa::path(get, path = "/clusters", tag = "infra",
    responses(
        (status = 200, description = "Every cluster", body = Vec<Cluster>),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
    ))]
async fn list_clusters(
    State(app): State<AppState>,
    Authed(caller): Authed,
) -> Result<Json<Vec<Cluster>>, ApiError> {
    let rows = clusters::list(&app.svc, &caller).await?;
    Ok(Json(rows.into_iter().map(Cluster::from).collect()))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCluster {
    pub name: String,
    /// `https://HOST:8006` of a Hemiron node or a Proxmox VE cluster.
    pub endpoint: String,
    /// `USER@REALM!NAME`.
    pub token_id: String,
    pub token_secret: String,
    /// SHA-256 fingerprint of its certificate (`AA:BB:…`), pinned; omit for a
    /// publicly trusted certificate.
    #[serde(default)]
    pub fingerprint: Option<String>,
}

/// Register a cluster (it must answer with these credentials); its nodes and templates are
/// read at once.
#[utoipa::path(post, path = "/clusters", tag = "infra", request_body = CreateCluster,
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays return the first answer for 24 h")),
    responses(
        (status = 201, description = "Registered", body = Cluster),
        (status = 400, description = "Malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Name taken", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, or the cluster did not answer", body = Problem, content_type = "application/problem+json"),
    ))]
async fn create_cluster(
    State(app): State<AppState>,
    Authed(caller): Authed,
    Body(req): Body<CreateCluster>,
) -> Result<Response, ApiError> {
    let c = clusters::create(
        &app.svc,
        &caller,
        NewCluster {
            name: req.name,
            endpoint: req.endpoint,
            token_id: req.token_id,
            token_secret: req.token_secret,
            fingerprint: req.fingerprint,
        },
    )
    .await?;
    Ok(created(
        &format!("/api/v1/clusters/{}", c.id),
        c.version,
        &Cluster::from(c),
    ))
}

/// A cluster (by id or name).
#[utoipa::path(get, path = "/clusters/{id}", tag = "infra",
    params(("id" = String, Path, description = "Cluster id or name")),
    responses(
        (status = 200, description = "The cluster; ETag: its version", body = Cluster),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such cluster", body = Problem, content_type = "application/problem+json"),
    ))]
async fn get_cluster(
    State(app): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let c = clusters::get(&app.svc, &caller, &id).await?;
    Ok(tagged(StatusCode::OK, c.version, &Cluster::from(c)))
}

/// Remove a cluster that hosts no VPS.
#[utoipa::path(delete, path = "/clusters/{id}", tag = "infra",
    params(("id" = String, Path, description = "Cluster id or name"),
           ("If-Match" = String, Header, description = "The ETag last read")),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such cluster", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "It hosts VPSes", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "Stale If-Match", body = Problem, content_type = "application/problem+json"),
        (status = 428, description = "If-Match missing", body = Problem, content_type = "application/problem+json"),
    ))]
async fn delete_cluster(
    State(app): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    IfMatch(version): IfMatch,
) -> Result<StatusCode, ApiError> {
    clusters::delete(&app.svc, &caller, &id, version).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Re-read a cluster's nodes and templates now.
#[utoipa::path(post, path = "/clusters/{id}/refresh", tag = "infra",
    params(("id" = String, Path, description = "Cluster id or name")),
    responses(
        (status = 200, description = "Refreshed", body = Cluster),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such cluster", body = Problem, content_type = "application/problem+json"),
    ))]
async fn refresh_cluster(
    State(app): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> Result<Json<Cluster>, ApiError> {
    Ok(Json(
        clusters::refresh_now(&app.svc, &caller, &id).await?.into(),
    ))
}

/// List the clusters' nodes, with capacity and reservations.
#[utoipa::path(get, path = "/nodes", tag = "infra",
    responses(
        (status = 200, description = "Every node", body = Vec<Node>),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
    ))]
async fn list_nodes(
    State(app): State<AppState>,
    Authed(caller): Authed,
) -> Result<Json<Vec<Node>>, ApiError> {
    let rows = clusters::nodes(&app.svc, &caller).await?;
    Ok(Json(rows.into_iter().map(Node::from).collect()))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateNode {
    /// A node in maintenance gets no new VPSes.
    pub maintenance: bool,
}

/// Put a node in or out of maintenance.
#[utoipa::path(post, path = "/nodes/{id}/maintenance", tag = "infra", request_body = UpdateNode,
    params(("id" = String, Path, description = "Node id")),
    responses(
        (status = 200, description = "Changed", body = Node),
        (status = 400, description = "Malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such node", body = Problem, content_type = "application/problem+json"),
    ))]
async fn update_node(
    State(app): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    Body(req): Body<UpdateNode>,
) -> Result<Json<Node>, ApiError> {
    Ok(Json(
        clusters::set_maintenance(&app.svc, &caller, &id, req.maintenance)
            .await?
            .into(),
    ))
}

/// Put a node in maintenance and move every VPS off it (at most 2 migrations at once,
/// stopped and small VPSes first); follow the returned `node.drain` job. Taking the node
/// out of maintenance stops the drain.
#[utoipa::path(post, path = "/nodes/{id}/drain", tag = "infra",
    params(("id" = String, Path, description = "Node id")),
    responses(
        (status = 202, description = "Accepted; follow the job", body = Job),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such node", body = Problem, content_type = "application/problem+json"),
    ))]
async fn drain_node(
    State(app): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let job = hosts::drain(&app.svc, &caller, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(Job::from(job))).into_response())
}

/// Even out the clusters' load (Proxmox's static scheduler: TOPSIS over configured CPU and
/// memory): moves VPSes while a cluster's imbalance is above 0.3 and a move lowers it by at
/// least 0.1, keeping anti-affinity and capacity. `dry_run` returns the plan only.
#[utoipa::path(post, path = "/rebalance", tag = "infra", request_body = RebalanceRequest,
    responses(
        (status = 200, description = "The plan per cluster (with the migration jobs unless a dry run)", body = Vec<ClusterPlan>),
        (status = 400, description = "Malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such cluster", body = Problem, content_type = "application/problem+json"),
    ))]
async fn rebalance(
    State(app): State<AppState>,
    Authed(caller): Authed,
    Body(req): Body<RebalanceRequest>,
) -> Result<Json<Vec<ClusterPlan>>, ApiError> {
    Ok(Json(hosts::rebalance(&app.svc, &caller, &req).await?))
}

/// Templates new VPSes can be made from.
#[utoipa::path(get, path = "/templates", tag = "vps",
    responses(
        (status = 200, description = "Every template", body = Vec<Template>),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
    ))]
async fn list_templates(
    State(app): State<AppState>,
    Authed(caller): Authed,
) -> Result<Json<Vec<Template>>, ApiError> {
    let rows = clusters::templates(&app.svc, &caller).await?;
    Ok(Json(rows.into_iter().map(Template::from).collect()))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct VpsFilter {
    /// Only this tenant's (tenant users always see only their own).
    pub tenant_id: Option<String>,
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

/// List VPSes.
#[utoipa::path(get, path = "/vps", tag = "vps", params(VpsFilter),
    responses(
        (status = 200, description = "A page of VPSes", body = Page<Vps>),
        (status = 400, description = "Bad paging parameters", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant", body = Problem, content_type = "application/problem+json"),
    ))]
async fn list_vps(
    State(app): State<AppState>,
    Authed(caller): Authed,
    Query(q): Query<VpsFilter>,
) -> Result<Json<Page<Vps>>, ApiError> {
    let page = PageQuery {
        limit: q.limit,
        cursor: q.cursor,
    };
    let limit = page.limit()?;
    let rows = vps::list(
        &app.svc,
        &caller,
        q.tenant_id.as_deref(),
        page.after()?.as_ref(),
        limit,
    )
    .await?;
    Ok(Json(Page::of(
        rows,
        limit,
        |v| (v.created_at, v.id.clone()),
        Vps::from,
    )))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVps {
    /// The VPS's host name.
    pub name: String,
    /// Plan id or name.
    pub plan: String,
    /// Template name.
    pub template: String,
    /// OpenSSH public keys allowed to log in.
    pub ssh_keys: Vec<String>,
    /// Login user (default `hemiron`).
    #[serde(default)]
    pub username: Option<String>,
    /// Required for platform users; tenant users create in their own tenant.
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// `linked` (default: a qcow2 overlay on the template) or `full` (a copy).
    #[serde(default)]
    pub clone: Option<CloneMode>,
    /// VPSes of one tenant sharing a group name are placed on different nodes.
    #[serde(default)]
    pub anti_affinity: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CloneMode {
    Linked,
    Full,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VpsWithJob {
    #[serde(flatten)]
    pub vps: Vps,
    /// The job doing the work (`GET /jobs/{id}`).
    pub job: Job,
}

/// Create a VPS from a plan and a template. The quota is charged and a node is reserved at
/// once; the VM is made by the returned job.
#[utoipa::path(post, path = "/vps", tag = "vps", request_body = CreateVps,
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays return the first answer for 24 h")),
    responses(
        (status = 201, description = "Accepted: the VPS is `creating`; follow its job", body = VpsWithJob),
        (status = 400, description = "Malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Name taken, quota exceeded (`/problems/quota-exceeded`) or no capacity (`/problems/no-capacity`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
    ))]
async fn create_vps(
    State(app): State<AppState>,
    Authed(caller): Authed,
    Body(req): Body<CreateVps>,
) -> Result<Response, ApiError> {
    let (v, job) = vps::create(
        &app.svc,
        &caller,
        NewVps {
            name: req.name,
            plan: req.plan,
            template: req.template,
            ssh_keys: req.ssh_keys,
            username: req.username.unwrap_or_else(|| DEFAULT_USER.to_string()),
            tenant_id: req.tenant_id,
            full_clone: matches!(req.clone, Some(CloneMode::Full)),
            anti_affinity: req.anti_affinity,
        },
    )
    .await?;
    let version = v.version;
    let location = format!("/api/v1/vps/{}", v.id);
    Ok(created(
        &location,
        version,
        &VpsWithJob {
            vps: v.into(),
            job: job.into(),
        },
    ))
}

/// A VPS, with its addresses and a ready `ssh` command line.
#[utoipa::path(get, path = "/vps/{id}", tag = "vps",
    params(("id" = String, Path, description = "VPS id")),
    responses(
        (status = 200, description = "The VPS; ETag: its version", body = Vps),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such VPS", body = Problem, content_type = "application/problem+json"),
    ))]
async fn get_vps(
    State(app): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let v = vps::get(&app.svc, &caller, &id).await?;
    Ok(tagged(StatusCode::OK, v.version, &Vps::from(v)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResizeVps {
    /// The new plan (id or name); disks only grow.
    pub plan: String,
}

/// Move a VPS to another plan.
#[utoipa::path(patch, path = "/vps/{id}", tag = "vps", request_body = ResizeVps,
    params(("id" = String, Path, description = "VPS id"),
           ("If-Match" = String, Header, description = "The ETag last read")),
    responses(
        (status = 202, description = "Accepted; follow the job", body = VpsWithJob),
        (status = 400, description = "Malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such VPS", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Busy, quota exceeded or no capacity", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "Stale If-Match", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
        (status = 428, description = "If-Match missing", body = Problem, content_type = "application/problem+json"),
    ))]
async fn resize_vps(
    State(app): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    IfMatch(version): IfMatch,
    Body(req): Body<ResizeVps>,
) -> Result<Response, ApiError> {
    let (v, job) = vps::resize(&app.svc, &caller, &id, version, &req.plan).await?;
    let version = v.version;
    Ok(tagged(
        StatusCode::ACCEPTED,
        version,
        &VpsWithJob {
            vps: v.into(),
            job: job.into(),
        },
    ))
}

/// Delete a VPS (its VM is destroyed by the returned job).
#[utoipa::path(delete, path = "/vps/{id}", tag = "vps",
    params(("id" = String, Path, description = "VPS id"),
           ("If-Match" = String, Header, description = "The ETag last read")),
    responses(
        (status = 202, description = "Accepted; follow the job", body = Job),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such VPS", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Busy", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "Stale If-Match", body = Problem, content_type = "application/problem+json"),
        (status = 428, description = "If-Match missing", body = Problem, content_type = "application/problem+json"),
    ))]
async fn delete_vps(
    State(app): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    IfMatch(version): IfMatch,
) -> Result<Response, ApiError> {
    let (_, job) = vps::delete(&app.svc, &caller, &id, version).await?;
    Ok((StatusCode::ACCEPTED, Json(Job::from(job))).into_response())
}

/// Start, stop (hard), shut down (ACPI) or reboot a VPS.
#[utoipa::path(post, path = "/vps/{id}/{action}", tag = "vps",
    params(("id" = String, Path, description = "VPS id"),
           ("action" = String, Path, description = "start, stop, shutdown or reboot")),
    responses(
        (status = 202, description = "Accepted; follow the job", body = Job),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such VPS or action", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Busy or not in a state for it", body = Problem, content_type = "application/problem+json"),
    ))]
async fn vps_power(
    State(app): State<AppState>,
    Authed(caller): Authed,
    Path((id, action)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let op = match action.as_str() {
        "start" => Power::Start,
        "stop" => Power::Stop,
        "shutdown" => Power::Shutdown,
        "reboot" => Power::Reboot,
        _ => return Err(ApiError::NoRoute),
    };
    let (_, job) = vps::power(&app.svc, &caller, &id, op).await?;
    Ok((StatusCode::ACCEPTED, Json(Job::from(job))).into_response())
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MigrateVps {
    /// The node to move to (same cluster); the best one when left out.
    #[serde(default)]
    pub node: Option<String>,
}

/// Move a VPS to another node of its cluster (live if it runs). Operators only.
#[utoipa::path(post, path = "/vps/{id}/migrate", tag = "vps", request_body = MigrateVps,
    params(("id" = String, Path, description = "VPS id")),
    responses(
        (status = 202, description = "Accepted; follow the job", body = Job),
        (status = 400, description = "Malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such VPS", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Busy, not placed, or no node can take it", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "No such node", body = Problem, content_type = "application/problem+json"),
    ))]
async fn migrate_vps(
    State(app): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    Body(req): Body<MigrateVps>,
) -> Result<Response, ApiError> {
    let (_, job) = vps::migrate(&app.svc, &caller, &id, req.node.as_deref()).await?;
    Ok((StatusCode::ACCEPTED, Json(Job::from(job))).into_response())
}

/// What happened to a VPS, newest first.
#[utoipa::path(get, path = "/vps/{id}/events", tag = "vps",
    params(("id" = String, Path, description = "VPS id")),
    responses(
        (status = 200, description = "Up to 100 events", body = Vec<Event>),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such VPS", body = Problem, content_type = "application/problem+json"),
    ))]
async fn vps_events(
    State(app): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> Result<Json<Vec<Event>>, ApiError> {
    let rows = vps::events(&app.svc, &caller, &id).await?;
    Ok(Json(rows.into_iter().map(Event::from).collect()))
}

/// A job.
#[utoipa::path(get, path = "/jobs/{id}", tag = "vps",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job", body = Job),
        (status = 401, description = "Not authenticated", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job", body = Problem, content_type = "application/problem+json"),
    ))]
async fn get_job(
    State(app): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    Ok(Json(vps::job(&app.svc, &caller, &id).await?.into()))
}
