//! Store rows for tests that write straight into a server's database (before it starts):
//! plain values with the fields the tests vary as arguments.

use hemiron_server::store::fleet::{ClusterRow, NodeRow, VpsRow};
use hemiron_server::store::jobs::JobRow;
use hemiron_server::store::now_ms;
use hemiron_server::store::tenancy::TenantRow;

/// A tenant with roomy quotas (`quota_vms` VMs) using what `used` 1-vCPU, 128 MiB, 1 GiB
/// VPSes use.
pub fn tenant(id: &str, name: &str, quota_vms: i64, used: i64) -> TenantRow {
    let now = now_ms();
    TenantRow {
        id: id.into(),
        name: name.into(),
        quota_vcpus: 1000,
        quota_memory_mib: 1 << 30,
        quota_disk_gib: 100_000,
        quota_vms,
        used_vcpus: used,
        used_memory_mib: used * 128,
        used_disk_gib: used,
        used_vms: used,
        version: 1,
        created_at: now,
        updated_at: now,
    }
}

pub fn cluster(id: &str, name: &str, endpoint: &str, token_id: &str, secret: &str) -> ClusterRow {
    let now = now_ms();
    ClusterRow {
        id: id.into(),
        name: name.into(),
        endpoint: endpoint.into(),
        token_id: token_id.into(),
        token_secret: secret.into(),
        fingerprint: None,
        status: "online".into(),
        last_error: None,
        last_seen_at: Some(now),
        version: 1,
        created_at: now,
        updated_at: now,
    }
}

/// An online node with nothing reserved.
pub fn node(id: &str, cluster_id: &str, name: &str, cpus: i64, memory_mib: i64) -> NodeRow {
    NodeRow {
        id: id.into(),
        cluster_id: cluster_id.into(),
        name: name.into(),
        status: "online".into(),
        accel: Some("tcg".into()),
        cpus,
        memory_mib,
        reserved_vcpus: 0,
        reserved_memory_mib: 0,
        reserved_disk_gib: 0,
        maintenance: false,
        updated_at: now_ms(),
    }
}

/// A 1-vCPU, 128 MiB, 1 GiB VPS on node `n1` of `cluster-0`.
pub fn vps(id: &str, tenant: &str, name: &str, state: &str, vmid: i64, created_at: i64) -> VpsRow {
    VpsRow {
        id: id.into(),
        tenant_id: tenant.into(),
        name: name.into(),
        plan_id: None,
        template: "guest".into(),
        vcpus: 1,
        memory_mib: 128,
        disk_gib: 1,
        username: "hemiron".into(),
        ssh_keys: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA x".into(),
        full_clone: false,
        anti_affinity: None,
        cluster_id: Some("cluster-0".into()),
        node: Some("n1".into()),
        vmid: Some(vmid),
        state: state.into(),
        power: if state == "running" {
            "running"
        } else {
            "stopped"
        }
        .into(),
        ssh_address: None,
        web_address: None,
        drift: None,
        last_error: None,
        version: 1,
        created_at,
        updated_at: created_at,
    }
}

/// A job of a VPS, in `state` (`queued`, or finished).
pub fn job(
    id: &str,
    kind: &str,
    tenant: &str,
    vps: &str,
    state: &str,
    payload: &str,
    created_at: i64,
) -> JobRow {
    let finished = state != "queued";
    JobRow {
        id: id.into(),
        kind: kind.into(),
        tenant_id: Some(tenant.into()),
        vps_id: Some(vps.into()),
        state: state.into(),
        step: if finished { "done" } else { "start" }.into(),
        payload: payload.into(),
        checkpoint: "{}".into(),
        error: None,
        attempts: i64::from(finished),
        lease_owner: None,
        lease_until: None,
        fence: i64::from(finished),
        run_after: created_at,
        created_at,
        updated_at: created_at,
        finished_at: finished.then_some(created_at),
    }
}

/// The id [`backup`] gives the backup of VPS `vps_id`.
pub fn backup_id(vps_id: &str) -> String {
    format!("bk-{vps_id}")
}

/// An available backup of `v` on its node.
pub fn backup(v: &VpsRow) -> hemiron_server::store::backups::BackupRow {
    hemiron_server::store::backups::BackupRow {
        id: backup_id(&v.id),
        tenant_id: v.tenant_id.clone(),
        vps_id: v.id.clone(),
        schedule_id: None,
        job_id: format!("job-of-{}", v.id),
        cluster_id: v.cluster_id.clone().unwrap_or_default(),
        node: v.node.clone().unwrap_or_default(),
        storage: "local".into(),
        volid: Some(format!(
            "local:backup/vzdump-qemu-{}-2026_12_06-03_00_00.tar.zst",
            v.vmid.unwrap_or(0)
        )),
        size_bytes: Some(1 << 20),
        mode: "snapshot".into(),
        notes: None,
        state: "available".into(),
        taken_at: v.created_at,
        error: None,
        version: 1,
        created_at: v.created_at,
        updated_at: v.created_at,
    }
}
