//! Backup jobs over the Proxmox VE API: `vps.backup` (a vzdump archive of the VPS's VM, then
//! its schedule's retention and the plan's limit), `backup.delete` and `vps.restore`.
//!
//! The archive carries the backup's id in its notes (`hemiron backup ID`), so a job that
//! crashed after starting vzdump finds the archive it made instead of making another.

use std::collections::BTreeMap;

use hemiron_pve_client::Method;
use serde::{Deserialize, Serialize};

use super::vps_jobs::{self, add_event, target, vmid_u32, Target};
use super::{Claim, JobError};
use crate::service::Services;
use crate::store::backups::{self as store, BackupRow};
use crate::store::{jobs, now_ms};

/// The backup a job makes, deletes or restores.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupPayload {
    pub backup_id: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct TaskCheckpoint {
    upid: Option<String>,
    /// Restores: whether the VM ran before (it is started again after).
    #[serde(default)]
    was_running: bool,
}

fn notes(backup_id: &str) -> String {
    format!("hemiron backup {backup_id}")
}

/// One entry of `GET /nodes/{node}/storage/{storage}/content`.
#[derive(Debug, Deserialize)]
struct Content {
    volid: String,
    #[serde(default)]
    size: Option<i64>,
    #[serde(default)]
    notes: Option<String>,
}

async fn backup_row(svc: &Services, claim: &Claim) -> Result<BackupRow, JobError> {
    let p: BackupPayload = claim.payload()?;
    store::backup(&svc.db, &p.backup_id)
        .await?
        .ok_or_else(|| JobError::Permanent("the backup's record is gone".into()))
}

/// Waits (by retrying later) while an older job of the same VPS is queued or running: a
/// schedule's backup does not cut into a migration or a restore.
async fn after_older_jobs(svc: &Services, claim: &Claim) -> Result<(), JobError> {
    let Some(vps_id) = claim.job.vps_id.as_deref() else {
        return Ok(());
    };
    let mut tx = svc.db.begin().await?;
    let older =
        jobs::older_active_for_vps(&mut tx, vps_id, &claim.job.id, claim.job.created_at).await?;
    tx.commit().await?;
    match older {
        Some(kind) => Err(JobError::Transient(format!(
            "waiting for an earlier {kind} job of the VPS"
        ))),
        None => Ok(()),
    }
}

/// The archives of `vmid` on `storage`.
async fn archives(t: &Target, storage: &str, vmid: i64) -> Result<Vec<Content>, JobError> {
    Ok(t.client
        .get(
            &format!("/nodes/{}/storage/{storage}/content", t.node),
            &[("content", "backup".into()), ("vmid", vmid.to_string())],
        )
        .await?)
}

/// A storage as `GET /nodes/{node}/storage` lists it.
#[derive(Debug, Deserialize)]
struct Storage {
    storage: String,
    #[serde(default)]
    content: String,
    #[serde(default)]
    shared: Option<u8>,
    #[serde(default)]
    active: Option<u8>,
}

async fn storages(t: &Target) -> Result<Vec<Storage>, JobError> {
    Ok(t.client
        .get(&format!("/nodes/{}/storage", t.node), &[])
        .await?)
}

/// The storage a backup goes to: one of the node's that takes backups, a shared one first
/// (its backups can be restored wherever the VPS moves).
async fn backup_storage(t: &Target) -> Result<String, JobError> {
    storages(t)
        .await?
        .into_iter()
        .filter(|s| s.content.split(',').any(|c| c == "backup") && s.active != Some(0))
        .max_by_key(|s| s.shared == Some(1))
        .map(|s| s.storage)
        .ok_or_else(|| JobError::Permanent(format!("node {} has no storage for backups", t.node)))
}

/// `vps.backup`: start → dump → dumping → prune.
pub async fn run(svc: &Services, claim: &mut Claim) -> Result<(), JobError> {
    let t = target(svc, claim).await?;
    let mut b = backup_row(svc, claim).await?;
    let vmid = t
        .vps
        .vmid
        .ok_or_else(|| JobError::Permanent("the VPS has no VM".into()))?;
    let mut ck: TaskCheckpoint = claim.checkpoint_data();
    if claim.job.step == "start" {
        after_older_jobs(svc, claim).await?;
        if !matches!(t.vps.state.as_str(), "running" | "stopped") {
            return Err(JobError::Permanent(format!("the VPS is {}", t.vps.state)));
        }
        let storage = backup_storage(&t).await?;
        b.node = t.node.clone();
        b.storage = storage;
        b.taken_at = svc.clock.now_ms();
        b.updated_at = now_ms();
        let mut tx = svc.db.begin().await?;
        store::update_backup(&mut tx, &b).await?;
        claim.reach_in(&mut tx, "dump", &ck).await?;
        tx.commit().await?;
    }
    if claim.job.step == "dump" {
        let made = archives(&t, &b.storage, vmid)
            .await?
            .into_iter()
            .any(|c| c.notes.as_deref() == Some(notes(&b.id).as_str()));
        if !made {
            let upid = t
                .client
                .start_task(
                    Method::POST,
                    &format!("/nodes/{}/vzdump", t.node),
                    &[
                        ("vmid", vmid.to_string()),
                        ("storage", b.storage.clone()),
                        ("mode", b.mode.clone()),
                        ("compress", "zstd".into()),
                        ("remove", "0".into()),
                        ("notes-template", notes(&b.id)),
                    ],
                )
                .await?;
            ck.upid = Some(upid);
        }
        claim.reach(svc, "dumping", &ck).await?;
    }
    if claim.job.step == "dumping" {
        if let Some(upid) = &ck.upid {
            vps_jobs::wait(&t, upid).await?;
        }
        let archive = archives(&t, &b.storage, vmid)
            .await?
            .into_iter()
            .find(|c| c.notes.as_deref() == Some(notes(&b.id).as_str()))
            .ok_or_else(|| {
                JobError::Permanent("vzdump ended but its archive is not on the storage".into())
            })?;
        b.volid = Some(archive.volid);
        b.size_bytes = archive.size;
        b.state = "available".into();
        b.updated_at = now_ms();
        let mut tx = svc.db.begin().await?;
        store::update_backup(&mut tx, &b).await?;
        claim.reach_in(&mut tx, "prune", &ck).await?;
        tx.commit().await?;
        super::crash_point("vps.backup:made");
    }
    // prune: the schedule's retention, then the plan's limit; deletions are recorded
    // (`deleting`) before they are made, so a crash here finishes them on the next run.
    let doomed = doomed_by_retention(svc, &t, &b).await?;
    let mut tx = svc.db.begin().await?;
    for d in &doomed {
        store::set_backup_state(&mut tx, &d.id, "deleting", None, now_ms()).await?;
    }
    tx.commit().await?;
    let all = store::backups_of_vps(&svc.db, &t.vps.id).await?;
    for d in all.iter().filter(|d| d.state == "deleting") {
        remove_archive(svc, d).await?;
        let mut tx = svc.db.begin().await?;
        store::set_backup_state(&mut tx, &d.id, "deleted", None, now_ms()).await?;
        add_event(
            &mut tx,
            &t.vps,
            "backup.pruned",
            &format!("{} ({})", d.id, d.volid.as_deref().unwrap_or("no archive")),
        )
        .await?;
        tx.commit().await?;
    }
    let mut tx = svc.db.begin().await?;
    add_event(
        &mut tx,
        &t.vps,
        "backup.created",
        &format!(
            "{} on {}: {} ({} bytes)",
            b.id,
            b.node,
            b.volid.as_deref().unwrap_or_default(),
            b.size_bytes.unwrap_or(0)
        ),
    )
    .await?;
    claim.finish_in(&mut tx, None).await?;
    tx.commit().await?;
    Ok(())
}

/// The backups of `b`'s schedule that its retention removes, then the oldest scheduled ones
/// beyond the plan's limit (backups someone asked for are never removed automatically).
async fn doomed_by_retention(
    svc: &Services,
    t: &Target,
    b: &BackupRow,
) -> Result<Vec<BackupRow>, JobError> {
    let all: Vec<BackupRow> = store::backups_of_vps(&svc.db, &t.vps.id)
        .await?
        .into_iter()
        .filter(|x| x.state == "available")
        .collect();
    let mut doomed: Vec<BackupRow> = Vec::new();
    if let Some(sid) = &b.schedule_id {
        if let Some(s) = store::schedule(&svc.db, sid).await? {
            let timing = crate::backups::timing_of(&s).ok_or_else(|| {
                JobError::Permanent(format!("schedule {sid}: its timing no longer parses"))
            })?;
            let retention = crate::backups::retention(&s);
            let mine: Vec<&BackupRow> = all
                .iter()
                .filter(|x| x.schedule_id.as_deref() == Some(sid))
                .collect();
            let times: Vec<i64> = mine.iter().map(|x| x.taken_at).collect();
            for (x, remove) in mine.iter().zip(retention.remove(&times, &timing)) {
                if remove && x.id != b.id {
                    doomed.push((*x).clone());
                }
            }
        }
    }
    let limit = crate::backups::plan_limit(&svc.db, &t.vps).await?;
    let mut left: Vec<&BackupRow> = all
        .iter()
        .filter(|x| !doomed.iter().any(|d| d.id == x.id))
        .collect();
    // Oldest first, scheduled ones only, never the one just made.
    left.sort_by_key(|x| x.taken_at);
    let mut over = i64::try_from(left.len()).unwrap_or(i64::MAX) - limit;
    for x in left {
        if over <= 0 {
            break;
        }
        if x.schedule_id.is_some() && x.id != b.id {
            doomed.push(x.clone());
            over -= 1;
        }
    }
    Ok(doomed)
}

/// Deletes a backup's archive on its node (already gone counts as done).
async fn remove_archive(svc: &Services, b: &BackupRow) -> Result<(), JobError> {
    let Some(volid) = &b.volid else {
        return Ok(());
    };
    let cluster = crate::store::fleet::cluster(&svc.db, &b.cluster_id)
        .await?
        .ok_or_else(|| JobError::Permanent("the backup's cluster is gone".into()))?;
    let client = svc
        .clients
        .get(&cluster)
        .map_err(|e| JobError::Permanent(crate::error_chain(&e)))?;
    let listed: Vec<Content> = client
        .get(
            &format!("/nodes/{}/storage/{}/content", b.node, b.storage),
            &[("content", "backup".into())],
        )
        .await?;
    if !listed.iter().any(|c| &c.volid == volid) {
        return Ok(());
    }
    let _: serde_json::Value = client
        .call(
            Method::DELETE,
            &format!(
                "/nodes/{}/storage/{}/content/{}",
                b.node,
                b.storage,
                vps_jobs::uri_encode(volid)
            ),
            &[],
        )
        .await?;
    Ok(())
}

/// Removes every archive of a VPS being deleted (its schedules went with the request).
pub(crate) async fn remove_all_of_vps(svc: &Services, vps_id: &str) -> Result<(), JobError> {
    for b in store::backups_of_vps(&svc.db, vps_id).await? {
        remove_archive(svc, &b).await?;
        let mut tx = svc.db.begin().await?;
        store::set_backup_state(&mut tx, &b.id, "deleted", None, now_ms()).await?;
        tx.commit().await?;
    }
    Ok(())
}

/// `backup.delete`: the archive goes, then the record.
pub async fn delete(svc: &Services, claim: &mut Claim) -> Result<(), JobError> {
    let t = target(svc, claim).await?;
    let b = backup_row(svc, claim).await?;
    remove_archive(svc, &b).await?;
    let mut tx = svc.db.begin().await?;
    store::set_backup_state(&mut tx, &b.id, "deleted", None, now_ms()).await?;
    add_event(&mut tx, &t.vps, "backup.deleted", &b.id).await?;
    claim.finish_in(&mut tx, None).await?;
    tx.commit().await?;
    Ok(())
}

/// `vps.restore`: start → stop → restore → restoring → power-on. The VM gets the archive's
/// disks and config back, then the VPS's current size (a plan change since the backup
/// stays), and runs again if it ran before.
pub async fn restore(svc: &Services, claim: &mut Claim) -> Result<(), JobError> {
    let t = target(svc, claim).await?;
    let b = backup_row(svc, claim).await?;
    let vmid = t
        .vps
        .vmid
        .ok_or_else(|| JobError::Permanent("the VPS has no VM".into()))?;
    let id = vmid_u32(vmid)?;
    let mut ck: TaskCheckpoint = claim.checkpoint_data();
    if claim.job.step == "start" {
        let volid = b
            .volid
            .clone()
            .filter(|_| b.state == "available")
            .ok_or_else(|| JobError::Permanent(format!("the backup is {}", b.state)))?;
        if b.node != t.node && !storage_shared(&t, &b.storage).await? {
            return Err(JobError::Permanent(format!(
                "the backup {volid} is on node {}'s own storage and the VPS now runs on {}",
                b.node, t.node
            )));
        }
        ck.was_running = t.client.vm_status(&t.node, id).await?.status == "running";
        claim.reach(svc, "stop", &ck).await?;
    }
    if claim.job.step == "stop" {
        let s = t.client.vm_status(&t.node, id).await?;
        if s.lock.is_some() {
            vps_jobs::wait_unlocked(&t, vmid).await?;
        }
        if s.status == "running" {
            let upid = t.client.vm_power(&t.node, id, "stop", &[]).await?;
            vps_jobs::wait(&t, &upid).await?;
        }
        claim.reach(svc, "restore", &ck).await?;
    }
    if claim.job.step == "restore" {
        let volid = b.volid.clone().unwrap_or_default();
        let upid = t
            .client
            .create_vm(
                &t.node,
                &[
                    ("vmid", vmid.to_string()),
                    ("archive", volid),
                    ("force", "1".into()),
                ],
            )
            .await?;
        ck.upid = Some(upid);
        claim.reach(svc, "restoring", &ck).await?;
    }
    if claim.job.step == "restoring" {
        if let Some(upid) = &ck.upid {
            vps_jobs::wait(&t, upid).await?;
        }
        let mut size: BTreeMap<&str, String> = BTreeMap::new();
        size.insert("cores", t.vps.vcpus.to_string());
        size.insert("memory", t.vps.memory_mib.to_string());
        let params: Vec<(&str, String)> = size.into_iter().collect();
        t.client.set_config(&t.node, id, &params).await?;
        vps_jobs::grow_disk(&t, vmid, t.vps.disk_gib).await?;
        claim.reach(svc, "power-on", &ck).await?;
    }
    let mut vps = t.vps.clone();
    if ck.was_running {
        let s = t.client.vm_status(&t.node, id).await?;
        if s.status != "running" {
            let upid = t.client.vm_power(&t.node, id, "start", &[]).await?;
            vps_jobs::wait(&t, &upid).await?;
        }
        let (ssh, web) = vps_jobs::addresses(&t, vmid).await?;
        vps.ssh_address = ssh;
        vps.web_address = web;
        vps.state = "running".into();
        vps.power = "running".into();
    } else {
        vps.state = "stopped".into();
        vps.power = "stopped".into();
    }
    vps.last_error = None;
    vps_jobs::complete(
        svc,
        claim,
        vps,
        "vps.restored",
        format!("from {} ({})", b.id, b.volid.as_deref().unwrap_or_default()),
    )
    .await
}

async fn storage_shared(t: &Target, storage: &str) -> Result<bool, JobError> {
    Ok(storages(t)
        .await?
        .iter()
        .any(|s| s.storage == storage && s.shared == Some(1)))
}

/// A backup job that failed for good: its record says why (a failed backup; a deletion
/// that did not happen leaves the backup available).
pub async fn fail(svc: &Services, claim: &mut Claim, error: &str) -> Result<(), JobError> {
    let p: Result<BackupPayload, _> = claim.payload();
    let mut tx = svc.db.begin().await?;
    if let Ok(p) = p {
        let state = match claim.job.kind.as_str() {
            "vps.backup" => Some("failed"),
            "backup.delete" => Some("available"),
            _ => None,
        };
        if let Some(state) = state {
            store::set_backup_state(&mut tx, &p.backup_id, state, Some(error), now_ms()).await?;
        }
    }
    tx.commit().await?;
    vps_jobs::fail(svc, claim, error).await
}
