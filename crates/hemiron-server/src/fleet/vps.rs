//! VPSes: what tenants buy. Creating one checks the quota, places it and reserves capacity in
//! one transaction, then leaves the work on the cluster to a durable job; every later
//! operation (power, resize, delete) is a job too, one at a time per VPS.

use serde::{Deserialize, Serialize};

use super::placement::{self, Candidate, Need};
use crate::authz::{authorize, Access, Area, Owner};
use crate::error::{Problems, ServiceError};
use crate::service::{Caller, Services};
use crate::store::fleet::{self as store, VpsRow};
use crate::store::identity::After;
use crate::store::jobs::{self, JobRow};
use crate::store::{new_id, now_ms, tenancy, Tx};

/// A VPS to create.
#[derive(Debug, Clone)]
pub struct NewVps {
    pub name: String,
    /// Plan id or name.
    pub plan: String,
    /// Template name (or id).
    pub template: String,
    pub ssh_keys: Vec<String>,
    /// Login user made by cloud-init.
    pub username: String,
    /// The tenant; tenant users may leave it out (their own).
    pub tenant_id: Option<String>,
    pub full_clone: bool,
    pub anti_affinity: Option<String>,
}

/// What a create job needs beyond the VPS row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatePayload {
    pub template_vmid: i64,
}

/// A power operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Power {
    Start,
    Stop,
    Shutdown,
    Reboot,
}

impl Power {
    pub fn as_str(self) -> &'static str {
        match self {
            Power::Start => "start",
            Power::Stop => "stop",
            Power::Shutdown => "shutdown",
            Power::Reboot => "reboot",
        }
    }
}

/// The default login user of a VPS.
pub const DEFAULT_USER: &str = "hemiron";

fn check_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// An OpenSSH public key line: `TYPE BASE64 [COMMENT]`, one line.
pub fn check_ssh_key(key: &str) -> bool {
    let mut parts = key.split_whitespace();
    let (Some(kind), Some(blob)) = (parts.next(), parts.next()) else {
        return false;
    };
    let kinds = [
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    ];
    !key.contains('\n')
        && key.len() <= 16_384
        && kinds.contains(&kind)
        && blob.len() >= 16
        && blob
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
}

fn check_user(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// Creates a VPS: validates, charges the tenant's quota, places it and reserves the node's
/// capacity — all in one transaction, so concurrent creates never overrun either — and
/// queues the create job.
pub async fn create(
    svc: &Services,
    caller: &Caller,
    new: NewVps,
) -> Result<(VpsRow, JobRow), ServiceError> {
    let who = caller.who()?.clone();
    let tenant_id = match (&new.tenant_id, &who.tenant_id) {
        (Some(t), _) => t.clone(),
        (None, Some(own)) => own.clone(),
        (None, None) => {
            return Err(ServiceError::invalid(
                "tenant_id",
                "required for platform users",
            ))
        }
    };
    authorize(&who, Area::Vps, Access::Write, Owner::Tenant(&tenant_id))
        .map_err(|d| ServiceError::denied(d, "tenant"))?;
    let mut p = Problems::default();
    p.check(
        check_hostname(&new.name),
        "name",
        "a host name: 1 to 63 lower-case letters, digits and -",
    );
    p.check(
        !new.ssh_keys.is_empty(),
        "ssh_keys",
        "at least one SSH public key",
    );
    for (i, k) in new.ssh_keys.iter().enumerate() {
        p.check(
            check_ssh_key(k),
            &format!("ssh_keys[{i}]"),
            "not an OpenSSH public key line",
        );
    }
    p.check(
        check_user(&new.username),
        "username",
        "a Unix user name: lower-case letters, digits, _ and -",
    );
    p.check(
        new.username != "root",
        "username",
        "root cannot be the VPS user",
    );
    if let Some(g) = &new.anti_affinity {
        p.check(
            check_hostname(g),
            "anti_affinity",
            "a group name: lower-case letters, digits and -",
        );
    }
    p.finish()?;
    let plan = tenancy_plan(svc, &new.plan).await?;
    if tenancy::tenant(&svc.db, &tenant_id).await?.is_none() {
        return Err(ServiceError::NotFound { what: "tenant" });
    }

    let mut tx = svc.db.begin().await?;
    if !store::charge_tenant(
        &mut tx,
        &tenant_id,
        plan.vcpus,
        plan.memory_mib,
        plan.disk_gib,
        1,
    )
    .await?
    {
        return Err(ServiceError::QuotaExceeded(format!(
            "a {} VPS ({} vCPUs, {} MiB, {} GiB) does not fit in the tenant's quota",
            plan.name, plan.vcpus, plan.memory_mib, plan.disk_gib
        )));
    }
    let chosen = place(
        svc,
        &mut tx,
        &tenant_id,
        &new,
        plan.vcpus,
        plan.memory_mib,
        plan.disk_gib,
    )
    .await?;
    let now = now_ms();
    let vps = VpsRow {
        id: new_id(),
        tenant_id: tenant_id.clone(),
        name: new.name.clone(),
        plan_id: Some(plan.id.clone()),
        template: new.template.clone(),
        vcpus: plan.vcpus,
        memory_mib: plan.memory_mib,
        disk_gib: plan.disk_gib,
        username: new.username.clone(),
        ssh_keys: new.ssh_keys.join("\n"),
        full_clone: new.full_clone,
        anti_affinity: new.anti_affinity.clone(),
        cluster_id: Some(chosen.node.cluster_id.clone()),
        node: Some(chosen.node.name.clone()),
        vmid: None,
        state: "creating".into(),
        power: "unknown".into(),
        ssh_address: None,
        web_address: None,
        drift: None,
        last_error: None,
        version: 1,
        created_at: now,
        updated_at: now,
    };
    match store::insert_vps(&mut tx, &vps).await {
        Err(e) if e.is_unique_violation() => {
            return Err(ServiceError::Conflict(format!(
                "the tenant already has a VPS named {:?}",
                new.name
            )))
        }
        r => r?,
    }
    let payload = CreatePayload {
        template_vmid: chosen.template_vmid,
    };
    let job = new_job(&mut tx, "vps.create", &vps, &payload).await?;
    caller
        .commit(
            tx,
            "vps.create",
            format!("vps:{}", vps.id),
            Some(tenant_id),
            Some(format!(
                "name={} plan={} template={} node={}",
                vps.name, plan.name, vps.template, chosen.node.name
            )),
        )
        .await?;
    svc.wakeup.notify();
    Ok((vps, job))
}

async fn tenancy_plan(svc: &Services, plan: &str) -> Result<tenancy::PlanRow, ServiceError> {
    tenancy::plan(&svc.db, plan)
        .await?
        .ok_or_else(|| ServiceError::invalid("plan", "no such plan"))
}

/// Picks the node and reserves its capacity (in the caller's transaction).
async fn place(
    svc: &Services,
    tx: &mut Tx,
    tenant_id: &str,
    new: &NewVps,
    vcpus: i64,
    memory_mib: i64,
    disk_gib: i64,
) -> Result<Candidate, ServiceError> {
    let templates = store::templates_named_tx(tx, &new.template).await?;
    if templates.is_empty() {
        return Err(ServiceError::invalid(
            "template",
            "no such template on any cluster",
        ));
    }
    let nodes = store::nodes_tx(tx).await?;
    let candidates: Vec<Candidate> = templates
        .iter()
        .filter_map(|t| {
            nodes
                .iter()
                .find(|n| n.cluster_id == t.cluster_id && n.name == t.node)
                .map(|n| Candidate {
                    node: n.clone(),
                    template_vmid: t.vmid,
                })
        })
        .collect();
    let excluded = match &new.anti_affinity {
        Some(g) => store::anti_affinity_nodes(tx, tenant_id, g).await?,
        None => Vec::new(),
    };
    let need = Need { vcpus, memory_mib };
    let over = svc.settings.cpu_overcommit;
    for c in placement::rank(candidates, need, svc.settings.placement, over, &excluded) {
        if store::reserve_on_node(tx, &c.node.id, vcpus, memory_mib, disk_gib, over).await? {
            return Ok(c);
        }
    }
    Err(ServiceError::NoCapacity(format!(
        "no node holding template {:?} has room for {vcpus} vCPUs and {memory_mib} MiB{}",
        new.template,
        if excluded.is_empty() {
            ""
        } else {
            " outside the anti-affinity group's nodes"
        }
    )))
}

pub(crate) async fn new_job<P: Serialize>(
    tx: &mut Tx,
    kind: &str,
    vps: &VpsRow,
    payload: &P,
) -> Result<JobRow, ServiceError> {
    let job = JobRow::queued(
        kind,
        Some(vps.tenant_id.clone()),
        Some(vps.id.clone()),
        serde_json::to_string(payload).unwrap_or_else(|_| "{}".into()),
    );
    jobs::insert(tx, &job).await?;
    Ok(job)
}

/// A VPS the caller may see.
pub async fn get(svc: &Services, caller: &Caller, id: &str) -> Result<VpsRow, ServiceError> {
    let who = caller.who()?;
    let v = store::vps(&svc.db, id)
        .await?
        .filter(|v| v.state != "deleted")
        .ok_or(ServiceError::NotFound { what: "VPS" })?;
    authorize(who, Area::Vps, Access::Read, Owner::Tenant(&v.tenant_id))
        .map_err(|d| ServiceError::denied(d, "VPS"))?;
    Ok(v)
}

pub async fn list(
    svc: &Services,
    caller: &Caller,
    tenant: Option<&str>,
    after: Option<&After>,
    limit: i64,
) -> Result<Vec<VpsRow>, ServiceError> {
    let who = caller.who()?;
    let tenant = who.listing_scope(tenant);
    authorize(who, Area::Vps, Access::Read, Owner::of(tenant))
        .map_err(|d| ServiceError::denied(d, "tenant"))?;
    Ok(store::list_vps(&svc.db, tenant, after, limit).await?)
}

/// Loads a VPS for a change: visible, writable, settled, and no other job running on it.
pub(crate) async fn for_change(
    tx: &mut Tx,
    caller: &Caller,
    id: &str,
) -> Result<VpsRow, ServiceError> {
    let who = caller.who()?;
    let v = store::vps_tx(tx, id)
        .await?
        .filter(|v| v.state != "deleted")
        .ok_or(ServiceError::NotFound { what: "VPS" })?;
    authorize(who, Area::Vps, Access::Write, Owner::Tenant(&v.tenant_id))
        .map_err(|d| ServiceError::denied(d, "VPS"))?;
    if jobs::active_for_vps(tx, id).await? > 0 {
        return Err(ServiceError::Conflict(
            "another operation on this VPS is still running; wait for its job".into(),
        ));
    }
    Ok(v)
}

/// Queues a power operation.
pub async fn power(
    svc: &Services,
    caller: &Caller,
    id: &str,
    op: Power,
) -> Result<(VpsRow, JobRow), ServiceError> {
    let mut tx = svc.db.begin().await?;
    let v = for_change(&mut tx, caller, id).await?;
    if !matches!(v.state.as_str(), "running" | "stopped") {
        return Err(ServiceError::Conflict(format!(
            "the VPS is {}; power operations need it running or stopped",
            v.state
        )));
    }
    let job = new_job(&mut tx, &format!("vps.{}", op.as_str()), &v, &op).await?;
    caller
        .commit(
            tx,
            &format!("vps.{}", op.as_str()),
            format!("vps:{}", v.id),
            Some(v.tenant_id.clone()),
            None,
        )
        .await?;
    svc.wakeup.notify();
    Ok((v, job))
}

/// What a resize job applies.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResizePayload {
    pub vcpus: i64,
    pub memory_mib: i64,
    pub disk_gib: i64,
}

/// Changes a VPS to another plan (disks only grow). The quota and the node are charged the
/// difference at once; the job applies it on the cluster (CPU and memory take effect at the
/// next start if the VPS runs, as on Proxmox).
pub async fn resize(
    svc: &Services,
    caller: &Caller,
    id: &str,
    version: i64,
    plan: &str,
) -> Result<(VpsRow, JobRow), ServiceError> {
    let plan = tenancy_plan(svc, plan).await?;
    let mut tx = svc.db.begin().await?;
    let mut v = for_change(&mut tx, caller, id).await?;
    if v.version != version {
        return Err(ServiceError::stale("VPS", v.version));
    }
    if !matches!(v.state.as_str(), "running" | "stopped") {
        return Err(ServiceError::Conflict(format!("the VPS is {}", v.state)));
    }
    if plan.disk_gib < v.disk_gib {
        return Err(ServiceError::invalid(
            "plan",
            format!(
                "disks only grow: the VPS has {} GiB, the plan {} GiB",
                v.disk_gib, plan.disk_gib
            ),
        ));
    }
    let (dc, dm, dd) = (
        plan.vcpus - v.vcpus,
        plan.memory_mib - v.memory_mib,
        plan.disk_gib - v.disk_gib,
    );
    if !store::charge_tenant(&mut tx, &v.tenant_id, dc, dm, dd, 0).await? {
        return Err(ServiceError::QuotaExceeded(format!(
            "plan {} does not fit in the tenant's quota",
            plan.name
        )));
    }
    if let (Some(cluster), Some(node)) = (&v.cluster_id, &v.node) {
        // Growth must fit on the node; shrinking always does.
        let nodes = store::nodes_tx(&mut tx).await?;
        let n = nodes
            .iter()
            .find(|n| &n.cluster_id == cluster && &n.name == node);
        if let Some(n) = n {
            if (dc > 0 || dm > 0)
                && !store::reserve_on_node(
                    &mut tx,
                    &n.id,
                    dc.max(0),
                    dm.max(0),
                    dd.max(0),
                    svc.settings.cpu_overcommit,
                )
                .await?
            {
                return Err(ServiceError::NoCapacity(format!(
                    "node {node} has no room for plan {}",
                    plan.name
                )));
            }
            if dc < 0 || dm < 0 || dd < 0 {
                store::release_on_node(
                    &mut tx,
                    cluster,
                    node,
                    (-dc).max(0),
                    (-dm).max(0),
                    (-dd).max(0),
                )
                .await?;
            }
        }
    }
    v.vcpus = plan.vcpus;
    v.memory_mib = plan.memory_mib;
    v.disk_gib = plan.disk_gib;
    v.updated_at = now_ms();
    if !store::update_vps(&mut tx, &v).await? {
        return Err(ServiceError::stale("VPS", v.version));
    }
    v.version += 1;
    let payload = ResizePayload {
        vcpus: v.vcpus,
        memory_mib: v.memory_mib,
        disk_gib: v.disk_gib,
    };
    let job = new_job(&mut tx, "vps.resize", &v, &payload).await?;
    caller
        .commit(
            tx,
            "vps.resize",
            format!("vps:{}", v.id),
            Some(v.tenant_id.clone()),
            Some(format!("plan={}", plan.name)),
        )
        .await?;
    svc.wakeup.notify();
    Ok((v, job))
}

/// What a delete job must do besides destroying the VM.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeletePayload {
    /// Give back the VPS's quota and node reservation.
    pub release: bool,
}

/// Queues the deletion of a VPS (its VM is stopped and destroyed, then its quota and
/// reservation are given back).
pub async fn delete(
    svc: &Services,
    caller: &Caller,
    id: &str,
    version: i64,
) -> Result<(VpsRow, JobRow), ServiceError> {
    let mut tx = svc.db.begin().await?;
    let mut v = for_change(&mut tx, caller, id).await?;
    if v.version != version {
        return Err(ServiceError::stale("VPS", v.version));
    }
    if v.state == "deleting" {
        return Err(ServiceError::Conflict(
            "the VPS is already being deleted".into(),
        ));
    }
    // A failed create gave its quota and reservation back already.
    let payload = DeletePayload {
        release: v.state != "failed",
    };
    v.state = "deleting".into();
    v.updated_at = now_ms();
    if !store::update_vps(&mut tx, &v).await? {
        return Err(ServiceError::stale("VPS", v.version));
    }
    v.version += 1;
    // Its schedules go with the request (no backup starts after it); the job removes its
    // backups' archives.
    crate::store::backups::delete_schedules_of_vps(&mut tx, &v.id).await?;
    let job = new_job(&mut tx, "vps.delete", &v, &payload).await?;
    caller
        .commit(
            tx,
            "vps.delete",
            format!("vps:{}", v.id),
            Some(v.tenant_id.clone()),
            Some(format!("name={}", v.name)),
        )
        .await?;
    svc.wakeup.notify();
    Ok((v, job))
}

/// What a migration job is asked to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MigratePayload {
    /// The node the VPS goes to (same cluster).
    pub target_node: String,
    pub target_node_id: String,
}

/// Moves a VPS to another node of its cluster (an operator's action): `to` names the node,
/// or the best one (placement's order, anti-affinity kept) is chosen.
pub async fn migrate(
    svc: &Services,
    caller: &Caller,
    id: &str,
    to: Option<&str>,
) -> Result<(VpsRow, JobRow), ServiceError> {
    let who = caller.who()?;
    authorize(who, Area::Infra, Access::Write, Owner::Platform)
        .map_err(|d| ServiceError::denied(d, "VPS"))?;
    let mut tx = svc.db.begin().await?;
    let v = for_change(&mut tx, caller, id).await?;
    if !matches!(v.state.as_str(), "running" | "stopped") {
        return Err(ServiceError::Conflict(format!("the VPS is {}", v.state)));
    }
    let (Some(cluster), Some(node)) = (v.cluster_id.clone(), v.node.clone()) else {
        return Err(ServiceError::Conflict("the VPS was never placed".into()));
    };
    let nodes = store::nodes_tx(&mut tx).await?;
    let target = match to {
        Some(name) => {
            let n = nodes
                .iter()
                .find(|n| n.cluster_id == cluster && n.name == name)
                .ok_or_else(|| {
                    ServiceError::invalid("node", "no such node in the VPS's cluster")
                })?;
            if n.name == node {
                return Err(ServiceError::invalid(
                    "node",
                    "the VPS is on that node already",
                ));
            }
            n.clone()
        }
        None => best_other_node(svc, &mut tx, &v).await?.ok_or_else(|| {
            ServiceError::NoCapacity("no other node of the cluster can take the VPS".into())
        })?,
    };
    let job = queue_migration(&mut tx, &v, &target).await?;
    caller
        .commit(
            tx,
            "vps.migrate",
            format!("vps:{}", v.id),
            Some(v.tenant_id.clone()),
            Some(format!("from={node} to={}", target.name)),
        )
        .await?;
    svc.wakeup.notify();
    Ok((v, job))
}

/// Queues a `vps.migrate` job of `vps` to `target` (in the caller's transaction).
pub(crate) async fn queue_migration(
    tx: &mut Tx,
    vps: &VpsRow,
    target: &store::NodeRow,
) -> Result<JobRow, ServiceError> {
    let payload = MigratePayload {
        target_node: target.name.clone(),
        target_node_id: target.id.clone(),
    };
    new_job(tx, "vps.migrate", vps, &payload).await
}

/// The best node of its cluster for `vps` other than the one it is on: placement's order,
/// its anti-affinity group kept.
pub(crate) async fn best_other_node(
    svc: &Services,
    tx: &mut Tx,
    vps: &VpsRow,
) -> Result<Option<store::NodeRow>, ServiceError> {
    let (Some(cluster), Some(node)) = (&vps.cluster_id, &vps.node) else {
        return Ok(None);
    };
    let nodes = store::nodes_tx(tx).await?;
    let excluded = match &vps.anti_affinity {
        Some(group) => store::anti_affinity_nodes(tx, &vps.tenant_id, group).await?,
        None => Vec::new(),
    };
    let candidates = nodes
        .iter()
        .filter(|n| &n.cluster_id == cluster && &n.name != node)
        .map(|n| Candidate {
            node: n.clone(),
            template_vmid: 0,
        })
        .collect();
    let need = Need {
        vcpus: vps.vcpus,
        memory_mib: vps.memory_mib,
    };
    Ok(placement::rank(
        candidates,
        need,
        svc.settings.placement,
        svc.settings.cpu_overcommit,
        &excluded,
    )
    .into_iter()
    .next()
    .map(|c| c.node))
}

/// A job the caller may see (through its VPS's tenant).
pub async fn job(svc: &Services, caller: &Caller, id: &str) -> Result<JobRow, ServiceError> {
    let who = caller.who()?;
    let j = jobs::job(&svc.db, id)
        .await?
        .ok_or(ServiceError::NotFound { what: "job" })?;
    let owner = Owner::of(j.tenant_id.as_deref());
    let area = if j.vps_id.is_some() {
        Area::Vps
    } else {
        Area::Infra
    };
    authorize(who, area, Access::Read, owner).map_err(|d| ServiceError::denied(d, "job"))?;
    Ok(j)
}

/// The VPS's recent events, newest first.
pub async fn events(
    svc: &Services,
    caller: &Caller,
    id: &str,
) -> Result<Vec<store::EventRow>, ServiceError> {
    let v = get(svc, caller, id).await?;
    Ok(store::events_of_vps(&svc.db, &v.id, 100).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ssh_keys() {
        assert!(check_ssh_key(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA me@host"
        ));
        assert!(!check_ssh_key("ssh-ed25519"));
        assert!(!check_ssh_key("ssh-dss AAAAB3NzaC1kc3MAAACBAP"));
        assert!(!check_ssh_key(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA\nssh-rsa x"
        ));
    }

    proptest! {
        #[test]
        fn accepted_names_are_host_names(name in "\\PC{0,70}") {
            if check_hostname(&name) {
                prop_assert!(name.len() <= 63 && !name.starts_with('-'));
                prop_assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
            }
        }

        #[test]
        fn accepted_keys_are_one_safe_line(key in "\\PC{0,80}") {
            if check_ssh_key(&key) {
                prop_assert!(!key.contains('\n') && !key.contains('\r'));
            }
        }
    }
}
