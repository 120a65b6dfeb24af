//! The VPS jobs, step by step, over the Proxmox VE API.
//!
//! A VPS's VM carries `hemiron-vps=ID` in its description, set by the clone itself: after a
//! crash, a VM with that id and marker is known to be this job's work, one without the
//! marker is someone else's (the id is given up and another taken).

use std::time::{Duration, Instant};

use hemiron_pve_client::{PveClient, PveError};
use serde::{Deserialize, Serialize};

use super::{Claim, JobError};
use crate::fleet::vps::{CreatePayload, DeletePayload, Power, ResizePayload};
use crate::service::Services;
use crate::store::fleet::{self as store, EventRow, VpsRow};
use crate::store::{new_id, now_ms, Tx};

const TASK_TIMEOUT: Duration = Duration::from_secs(600);

fn marker(vps_id: &str) -> String {
    format!("hemiron-vps={vps_id}")
}

/// What a create job has made so far.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CreateCheckpoint {
    pub vmid: Option<i64>,
    pub clone_upid: Option<String>,
}

pub(super) struct Target {
    pub(super) vps: VpsRow,
    pub(super) client: PveClient,
    pub(super) node: String,
}

pub(super) async fn target(svc: &Services, claim: &Claim) -> Result<Target, JobError> {
    let vps_id = claim
        .job
        .vps_id
        .as_deref()
        .ok_or_else(|| JobError::Permanent("the job names no VPS".into()))?;
    let vps = store::vps(&svc.db, vps_id)
        .await?
        .ok_or_else(|| JobError::Permanent("the VPS is gone".into()))?;
    let (Some(cluster_id), Some(node)) = (vps.cluster_id.clone(), vps.node.clone()) else {
        return Err(JobError::Permanent("the VPS was never placed".into()));
    };
    let cluster = store::cluster(&svc.db, &cluster_id)
        .await?
        .ok_or_else(|| JobError::Permanent("the VPS's cluster is gone".into()))?;
    let client = svc
        .clients
        .get(&cluster)
        .map_err(|e| JobError::Permanent(crate::error_chain(&e)))?;
    Ok(Target { vps, client, node })
}

/// Whether a Proxmox error says the VM does not exist.
pub(super) fn is_missing(e: &PveError) -> bool {
    match e {
        PveError::Api {
            status, message, ..
        } => *status == 404 || message.contains("does not exist") || message.contains("not exist"),
        _ => false,
    }
}

/// The VM's config if it exists: Ok(None) when it does not.
async fn config_of(
    t: &Target,
    vmid: i64,
) -> Result<Option<std::collections::BTreeMap<String, serde_json::Value>>, JobError> {
    match t.client.vm_config(&t.node, vmid_u32(vmid)?).await {
        Ok(c) => Ok(Some(c)),
        Err(e) if is_missing(&e) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub(super) fn vmid_u32(vmid: i64) -> Result<u32, JobError> {
    u32::try_from(vmid).map_err(|_| JobError::Permanent(format!("bad VM id {vmid}")))
}

fn is_ours(config: &std::collections::BTreeMap<String, serde_json::Value>, vps_id: &str) -> bool {
    config
        .get("description")
        .and_then(|d| d.as_str())
        .is_some_and(|d| d.contains(&marker(vps_id)))
}

/// Waits until the VM holds no lock (a clone or other task still running on it).
pub(super) async fn wait_unlocked(t: &Target, vmid: i64) -> Result<(), JobError> {
    let deadline = Instant::now() + TASK_TIMEOUT;
    loop {
        let s = t.client.vm_status(&t.node, vmid_u32(vmid)?).await?;
        if s.lock.is_none() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(JobError::Transient(format!("VM {vmid} stays locked")));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub(super) async fn wait(t: &Target, upid: &str) -> Result<(), JobError> {
    let status = t.client.wait_task(upid, TASK_TIMEOUT).await?;
    if status.succeeded() {
        Ok(())
    } else {
        Err(JobError::Permanent(format!(
            "task {upid} failed: {}",
            status.exitstatus.unwrap_or_default()
        )))
    }
}

/// URL-encodes as Proxmox wants `sshkeys` and volume ids in paths (everything but unreserved
/// characters).
pub(super) fn uri_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Runs the create job from the step it reached.
pub async fn create(svc: &Services, claim: &mut Claim) -> Result<(), JobError> {
    let t = target(svc, claim).await?;
    let payload: CreatePayload = claim.payload()?;
    let mut ck: CreateCheckpoint = claim.checkpoint_data();
    if t.vps.state != "creating" {
        return Err(JobError::Permanent(format!(
            "the VPS is {}, not creating",
            t.vps.state
        )));
    }
    if matches!(claim.job.step.as_str(), "start" | "clone" | "cloning") {
        clone_step(svc, claim, &t, &payload, &mut ck).await?;
        claim.reach(svc, "configure", &ck).await?;
    }
    let vmid = ck
        .vmid
        .ok_or_else(|| JobError::Permanent("no VM id after the clone".into()))?;
    if claim.job.step == "configure" {
        configure(&t, vmid).await?;
        claim.reach(svc, "resize", &ck).await?;
    }
    if claim.job.step == "resize" {
        grow_disk(&t, vmid, t.vps.disk_gib).await?;
        claim.reach(svc, "power-on", &ck).await?;
    }
    if claim.job.step == "power-on" {
        let s = t.client.vm_status(&t.node, vmid_u32(vmid)?).await?;
        if s.status != "running" {
            let upid = t
                .client
                .vm_power(&t.node, vmid_u32(vmid)?, "start", &[])
                .await?;
            wait(&t, &upid).await?;
        }
        claim.reach(svc, "ready", &ck).await?;
    }
    // ready: running, with its addresses.
    let (ssh, web) = addresses(&t, vmid).await?;
    let mut vps = t.vps.clone();
    vps.vmid = Some(vmid);
    vps.state = "running".into();
    vps.power = "running".into();
    vps.ssh_address = ssh;
    vps.web_address = web;
    vps.last_error = None;
    complete(
        svc,
        claim,
        vps,
        "vps.created",
        format!("VM {vmid} on {}", t.node),
    )
    .await
}

async fn clone_step(
    svc: &Services,
    claim: &mut Claim,
    t: &Target,
    payload: &CreatePayload,
    ck: &mut CreateCheckpoint,
) -> Result<(), JobError> {
    let vmid = match ck.vmid {
        Some(v) => v,
        None => {
            let v = i64::from(t.client.next_id().await?);
            ck.vmid = Some(v);
            ck.clone_upid = None;
            claim.reach(svc, "clone", ck).await?;
            v
        }
    };
    match config_of(t, vmid).await? {
        Some(cfg) if is_ours(&cfg, &t.vps.id) => return wait_unlocked(t, vmid).await,
        Some(_) => {
            // Someone else took the id meanwhile: take another next time.
            ck.vmid = None;
            ck.clone_upid = None;
            claim.reach(svc, "clone", ck).await?;
            return Err(JobError::Transient(format!(
                "VM id {vmid} was taken; retrying with another"
            )));
        }
        None => {}
    }
    if let Some(upid) = ck.clone_upid.clone() {
        // The clone started before a crash: it either made the VM (seen above) or failed.
        let status = t.client.task_status(&upid).await?;
        if status.is_running() {
            return wait(t, &upid).await;
        }
        ck.clone_upid = None;
    }
    let params = [
        ("newid", vmid.to_string()),
        ("name", t.vps.name.clone()),
        ("full", if t.vps.full_clone { "1" } else { "0" }.to_string()),
        ("description", marker(&t.vps.id)),
    ];
    let upid = t
        .client
        .clone_vm(&t.node, vmid_u32(payload.template_vmid)?, &params)
        .await?;
    ck.clone_upid = Some(upid.clone());
    claim.reach(svc, "cloning", ck).await?;
    wait(t, &upid).await
}

/// Sets size and cloud-init identity (idempotent: the same values each time).
async fn configure(t: &Target, vmid: i64) -> Result<(), JobError> {
    let cfg = config_of(t, vmid)
        .await?
        .ok_or_else(|| JobError::Permanent(format!("VM {vmid} vanished")))?;
    let mut params = vec![
        ("cores", t.vps.vcpus.to_string()),
        ("memory", t.vps.memory_mib.to_string()),
        ("ciuser", t.vps.username.clone()),
        ("sshkeys", uri_encode(&t.vps.ssh_keys)),
        ("ipconfig0", "ip=dhcp".to_string()),
    ];
    let has_cloudinit = cfg
        .values()
        .filter_map(|v| v.as_str())
        .any(|v| v.contains("cloudinit"));
    if !has_cloudinit {
        // A cloud-init drive on the storage of the boot disk.
        let storage = boot_disk(&cfg)
            .and_then(|(_, vol)| vol.split(':').next().map(str::to_string))
            .unwrap_or_else(|| "local".into());
        params.push(("ide2", format!("{storage}:cloudinit")));
    }
    t.client
        .set_config(&t.node, vmid_u32(vmid)?, &params)
        .await?;
    Ok(())
}

/// The boot disk's key and volume string (`scsi0`, `virtio0`, … in Proxmox's boot order).
fn boot_disk(
    cfg: &std::collections::BTreeMap<String, serde_json::Value>,
) -> Option<(String, String)> {
    for key in ["scsi0", "virtio0", "sata0", "ide0"] {
        if let Some(v) = cfg.get(key).and_then(|v| v.as_str()) {
            if !v.contains("media=cdrom") {
                return Some((key.to_string(), v.to_string()));
            }
        }
    }
    None
}

/// Grows the boot disk to `gib` if it is smaller.
pub(super) async fn grow_disk(t: &Target, vmid: i64, gib: i64) -> Result<(), JobError> {
    let cfg = config_of(t, vmid)
        .await?
        .ok_or_else(|| JobError::Permanent(format!("VM {vmid} vanished")))?;
    let Some((key, vol)) = boot_disk(&cfg) else {
        return Err(JobError::Permanent("the VM has no disk".into()));
    };
    let size = vol
        .split(',')
        .find_map(|p| p.strip_prefix("size="))
        .and_then(parse_size_bytes)
        .unwrap_or(0);
    if size < gib.saturating_mul(1 << 30) {
        let upid = t
            .client
            .resize_disk(&t.node, vmid_u32(vmid)?, &key, &format!("{gib}G"))
            .await?;
        wait(t, &upid).await?;
    }
    Ok(())
}

/// `32G`, `512M`, `1T`, `1024K`, bytes.
fn parse_size_bytes(s: &str) -> Option<i64> {
    let (num, unit) = s.split_at(
        s.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len()),
    );
    let n: f64 = num.parse().ok()?;
    let mult: f64 = match unit {
        "" => 1.0,
        "K" => 1024.0,
        "M" => 1024.0 * 1024.0,
        "G" => 1024.0 * 1024.0 * 1024.0,
        "T" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some((n * mult) as i64)
}

/// Waits (up to a minute) for the VM to run and reads its forwarded SSH and web addresses
/// (Hemiron nodes report them; on real Proxmox VE there are none).
pub(super) async fn addresses(
    t: &Target,
    vmid: i64,
) -> Result<(Option<String>, Option<String>), JobError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = t.client.vm_status(&t.node, vmid_u32(vmid)?).await?;
        if s.status == "running" {
            let f = s.forwards.unwrap_or_default();
            return Ok((f.get("22").cloned(), f.get("80").cloned()));
        }
        if Instant::now() > deadline {
            return Err(JobError::Transient(format!(
                "VM {vmid} is {}, not running",
                s.status
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Writes the VPS's new state, an event and the job's success in one transaction.
pub(super) async fn complete(
    svc: &Services,
    claim: &mut Claim,
    mut vps: VpsRow,
    event: &str,
    detail: String,
) -> Result<(), JobError> {
    super::crash_point(&format!("{}:complete", claim.job.kind));
    let mut tx = svc.db.begin().await?;
    save(&mut tx, &mut vps).await?;
    add_event(&mut tx, &vps, event, &detail).await?;
    claim.finish_in(&mut tx, None).await?;
    tx.commit().await?;
    Ok(())
}

/// Writes a VPS whose version may have moved on (a reconciler write): re-reads and re-applies.
pub(super) async fn save(tx: &mut Tx, vps: &mut VpsRow) -> Result<(), JobError> {
    let mut current = store::vps_tx(tx, &vps.id)
        .await?
        .ok_or_else(|| JobError::Permanent("the VPS is gone".into()))?;
    current.vcpus = vps.vcpus;
    current.memory_mib = vps.memory_mib;
    current.disk_gib = vps.disk_gib;
    current.vmid = vps.vmid;
    current.node = vps.node.clone();
    current.state = vps.state.clone();
    current.power = vps.power.clone();
    current.ssh_address = vps.ssh_address.clone();
    current.web_address = vps.web_address.clone();
    current.last_error = vps.last_error.clone();
    current.updated_at = now_ms();
    if !store::update_vps(tx, &current).await? {
        return Err(JobError::Transient("the VPS changed meanwhile".into()));
    }
    *vps = current;
    Ok(())
}

pub(super) async fn add_event(
    tx: &mut Tx,
    vps: &VpsRow,
    kind: &str,
    detail: &str,
) -> Result<(), JobError> {
    let e = EventRow {
        id: new_id(),
        at: now_ms(),
        tenant_id: Some(vps.tenant_id.clone()),
        vps_id: Some(vps.id.clone()),
        kind: kind.to_string(),
        detail: detail.to_string(),
    };
    store::add_event(tx, &e).await?;
    Ok(())
}

/// Gives back a VPS's quota and node reservation.
async fn release(tx: &mut Tx, vps: &VpsRow) -> Result<(), JobError> {
    store::charge_tenant(
        tx,
        &vps.tenant_id,
        -vps.vcpus,
        -vps.memory_mib,
        -vps.disk_gib,
        -1,
    )
    .await?;
    if let (Some(c), Some(n)) = (&vps.cluster_id, &vps.node) {
        store::release_on_node(tx, c, n, vps.vcpus, vps.memory_mib, vps.disk_gib).await?;
    }
    Ok(())
}

/// Stops and destroys a VM if it exists (missing counts as done).
async fn destroy(t: &Target, vmid: i64) -> Result<(), JobError> {
    let id = vmid_u32(vmid)?;
    match t.client.vm_status(&t.node, id).await {
        Ok(s) => {
            if s.lock.is_some() {
                wait_unlocked(t, vmid).await?;
            }
            if s.status == "running" {
                let upid = t.client.vm_power(&t.node, id, "stop", &[]).await?;
                wait(t, &upid).await?;
            }
        }
        Err(e) if is_missing(&e) => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    match t
        .client
        .delete_vm(
            &t.node,
            id,
            &[
                ("purge", "1".into()),
                ("destroy-unreferenced-disks", "1".into()),
            ],
        )
        .await
    {
        Ok(upid) => wait(t, &upid).await,
        Err(e) if is_missing(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A permanently failed job: undo what it made, record why.
pub async fn fail(svc: &Services, claim: &mut Claim, error: &str) -> Result<(), JobError> {
    let t = target(svc, claim).await?;
    let mut vps = t.vps.clone();
    let mut tx_release = false;
    if claim.job.kind == "vps.create" {
        let ck: CreateCheckpoint = claim.checkpoint_data();
        if let Some(vmid) = ck.vmid {
            if let Some(cfg) = config_of(&t, vmid).await? {
                if is_ours(&cfg, &vps.id) {
                    destroy(&t, vmid).await?;
                }
            }
        }
        vps.state = "failed".into();
        vps.vmid = None;
        tx_release = true;
    }
    vps.last_error = Some(error.to_string());
    let mut tx = svc.db.begin().await?;
    if tx_release {
        release(&mut tx, &vps).await?;
    }
    save(&mut tx, &mut vps).await?;
    add_event(&mut tx, &vps, &format!("{}.failed", claim.job.kind), error).await?;
    claim.finish_in(&mut tx, Some(error)).await?;
    tx.commit().await?;
    Ok(())
}

/// start, stop, shutdown, reboot.
pub async fn power(svc: &Services, claim: &mut Claim) -> Result<(), JobError> {
    let t = target(svc, claim).await?;
    let op: Power = claim.payload()?;
    let vmid = t
        .vps
        .vmid
        .ok_or_else(|| JobError::Permanent("the VPS has no VM".into()))?;
    let upid = t
        .client
        .vm_power(&t.node, vmid_u32(vmid)?, op.as_str(), &[])
        .await?;
    wait(&t, &upid).await?;
    let s = t.client.vm_status(&t.node, vmid_u32(vmid)?).await?;
    let mut vps = t.vps.clone();
    vps.power = s.status.clone();
    vps.state = if s.status == "running" {
        "running"
    } else {
        "stopped"
    }
    .into();
    complete(
        svc,
        claim,
        vps,
        &format!("vps.{}", op.as_str()),
        format!("now {}", s.status),
    )
    .await
}

/// Applies a new size (CPU and memory pending until the next start if it runs).
pub async fn resize(svc: &Services, claim: &mut Claim) -> Result<(), JobError> {
    let t = target(svc, claim).await?;
    let size: ResizePayload = claim.payload()?;
    let vmid = t
        .vps
        .vmid
        .ok_or_else(|| JobError::Permanent("the VPS has no VM".into()))?;
    t.client
        .set_config(
            &t.node,
            vmid_u32(vmid)?,
            &[
                ("cores", size.vcpus.to_string()),
                ("memory", size.memory_mib.to_string()),
            ],
        )
        .await?;
    grow_disk(&t, vmid, size.disk_gib).await?;
    let vps = t.vps.clone();
    complete(
        svc,
        claim,
        vps,
        "vps.resized",
        format!(
            "{} vCPUs, {} MiB, {} GiB",
            size.vcpus, size.memory_mib, size.disk_gib
        ),
    )
    .await
}

/// Destroys the VM, then gives back quota and reservation (unless a failed create already
/// did) and marks the VPS deleted.
pub async fn delete(svc: &Services, claim: &mut Claim) -> Result<(), JobError> {
    let t = target(svc, claim).await?;
    if let Some(vmid) = t.vps.vmid {
        if let Some(cfg) = config_of(&t, vmid).await? {
            if is_ours(&cfg, &t.vps.id) {
                destroy(&t, vmid).await?;
            }
        }
    }
    super::backup::remove_all_of_vps(svc, &t.vps.id).await?;
    let payload: DeletePayload = claim.payload()?;
    let mut vps = t.vps.clone();
    let mut tx = svc.db.begin().await?;
    if payload.release {
        release(&mut tx, &vps).await?;
    }
    vps.state = "deleted".into();
    vps.power = "stopped".into();
    save(&mut tx, &mut vps).await?;
    add_event(&mut tx, &vps, "vps.deleted", "").await?;
    claim.finish_in(&mut tx, None).await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size_bytes("32G"), Some(32 << 30));
        assert_eq!(parse_size_bytes("512M"), Some(512 << 20));
        assert_eq!(parse_size_bytes("1024"), Some(1024));
        assert_eq!(parse_size_bytes("1X"), None);
    }

    #[test]
    fn keys_are_uri_encoded_as_proxmox_wants() {
        assert_eq!(
            uri_encode("ssh-ed25519 AA+/= a@b\nx"),
            "ssh-ed25519%20AA%2B%2F%3D%20a%40b%0Ax"
        );
    }
}
