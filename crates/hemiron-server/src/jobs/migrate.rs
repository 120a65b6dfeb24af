//! The migration job (`vps.migrate`): four recorded phases over the Proxmox API.
//!
//! 1. `validated`: the target can take the VPS (online, not in maintenance, room for it,
//!    the same accelerator), the VM is not locked and the node agrees it may move there
//!    (`GET …/migrate`: storages, local devices; local disks move with it).
//! 2. `reserved`: the target's capacity is reserved (in the transaction that records it).
//! 3. `transferring` (the node's task recorded before it is waited for) → `transferred`:
//!    `POST …/migrate`; the node moves the VM, live if it runs.
//! 4. verification: the VM runs on the target (if it ran), its guest answers, nothing is
//!    left on the source; the VPS is then the target's and the source's reservation freed.
//!
//! A failure before the switchover (the node's task failed, the VM still on the source)
//! undoes the earlier phases: the reservation is freed and the VPS stays where it was. A
//! failure after it leaves the VM where it runs and ends the job `needs-attention`. A
//! server that dies mid-job resumes from the recorded phase: a task already started is
//! waited for, not started again.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::vps_jobs::{add_event, is_missing, save, target, vmid_u32, Target};
use super::{Claim, JobError};
use crate::fleet::placement::{fits, Need};
use crate::fleet::vps::MigratePayload;
use crate::service::Services;
use crate::store::fleet as store;

const TASK_TIMEOUT: Duration = Duration::from_secs(3600);

/// What the job learnt and did so far.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MigrateCheckpoint {
    pub source_node: Option<String>,
    pub was_running: bool,
    pub with_local_disks: bool,
    pub reserved: bool,
    pub upid: Option<String>,
    /// The node's last progress line.
    pub progress: Option<String>,
}

/// Test hook: `HEMIRON_TEST_FAIL_AT=vps.migrate:PHASE` makes that phase fail (after it has
/// done its work) as a cluster error would; the fault tests use it.
fn fault(at: &str) -> Result<(), JobError> {
    static FAIL: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let fail = FAIL.get_or_init(|| std::env::var("HEMIRON_TEST_FAIL_AT").ok());
    if fail.as_deref() == Some(&format!("vps.migrate:{at}")) {
        tracing::error!(at, "HEMIRON_TEST_FAIL_AT reached: failing the job here");
        return Err(JobError::Permanent(format!("injected failure at {at}")));
    }
    Ok(())
}

/// The node a VM is on now, as the cluster lists it.
async fn locate(t: &Target, vmid: i64) -> Result<Option<String>, JobError> {
    let list = t.client.resources(Some("vm")).await?;
    Ok(list
        .into_iter()
        .find(|r| r.vmid.and_then(|v| i64::try_from(v).ok()) == Some(vmid))
        .and_then(|r| r.node))
}

/// Runs the job from the phase it reached.
pub async fn run(svc: &Services, claim: &mut Claim) -> Result<(), JobError> {
    let t = target(svc, claim).await?;
    let p: MigratePayload = claim.payload()?;
    let mut ck: MigrateCheckpoint = claim.checkpoint_data();
    let vmid = t
        .vps
        .vmid
        .ok_or_else(|| JobError::Permanent("the VPS has no VM".into()))?;
    let id = vmid_u32(vmid)?;

    if claim.job.step == "start" {
        let nodes = store::nodes(&svc.db, t.vps.cluster_id.as_deref()).await?;
        let dst = nodes
            .iter()
            .find(|n| n.id == p.target_node_id)
            .ok_or_else(|| JobError::Permanent("the target node is gone".into()))?;
        let src = nodes.iter().find(|n| n.name == t.node);
        let need = Need {
            vcpus: t.vps.vcpus,
            memory_mib: t.vps.memory_mib,
        };
        if !fits(dst, need, svc.settings.cpu_overcommit) {
            return Err(JobError::Permanent(format!(
                "node {} cannot take the VPS (status {}, maintenance {}, {} of {} MiB reserved)",
                dst.name, dst.status, dst.maintenance, dst.reserved_memory_mib, dst.memory_mib
            )));
        }
        if let Some(src) = src {
            if src.accel.is_some() && dst.accel.is_some() && src.accel != dst.accel {
                return Err(JobError::Permanent(format!(
                    "node {} runs VMs with {}, node {} with {}: a running guest cannot move between them",
                    src.name,
                    src.accel.as_deref().unwrap_or("?"),
                    dst.name,
                    dst.accel.as_deref().unwrap_or("?")
                )));
            }
        }
        let status = t.client.vm_status(&t.node, id).await?;
        if let Some(lock) = &status.lock {
            return Err(JobError::Transient(format!("the VM is locked ({lock})")));
        }
        let check = t.client.migrate_check(&t.node, id, &p.target_node).await?;
        let allowed = check["allowed_nodes"]
            .as_array()
            .is_some_and(|a| a.iter().any(|n| n == p.target_node.as_str()));
        if !allowed {
            return Err(JobError::Permanent(format!(
                "node {} may not take the VM: {}",
                p.target_node, check["not_allowed_nodes"][&p.target_node]
            )));
        }
        if let Some(res) = check["local_resources"]
            .as_array()
            .filter(|a| !a.is_empty())
        {
            return Err(JobError::Permanent(format!(
                "the VM uses local devices: {res:?}"
            )));
        }
        ck.source_node = Some(t.node.clone());
        ck.was_running = status.status == "running";
        ck.with_local_disks = check["local_disks"]
            .as_array()
            .is_some_and(|a| !a.is_empty());
        fault("validate")?;
        claim.reach(svc, "validated", &ck).await?;
    }

    if claim.job.step == "validated" {
        let mut tx = svc.db.begin().await?;
        if !store::reserve_on_node(
            &mut tx,
            &p.target_node_id,
            t.vps.vcpus,
            t.vps.memory_mib,
            t.vps.disk_gib,
            svc.settings.cpu_overcommit,
        )
        .await?
        {
            return Err(JobError::Permanent(format!(
                "node {} has no room for the VPS any more",
                p.target_node
            )));
        }
        ck.reserved = true;
        claim.reach_in(&mut tx, "reserved", &ck).await?;
        tx.commit().await?;
        super::crash_point("vps.migrate:reserved");
        fault("reserve")?;
    }

    if claim.job.step == "reserved" || claim.job.step == "transferring" {
        if ck.upid.is_none() {
            fault("transfer-start")?;
            // A task started before a crash that was not recorded has moved the VM, or is
            // moving it: the VM's lock says so.
            match locate(&t, vmid).await? {
                Some(n) if n == p.target_node => {}
                _ => {
                    let online = if ck.was_running { "1" } else { "0" };
                    let mut params = vec![
                        ("target", p.target_node.clone()),
                        ("online", online.to_string()),
                    ];
                    if ck.with_local_disks {
                        params.push(("with-local-disks", "1".to_string()));
                    }
                    let upid = t.client.migrate_vm(&t.node, id, &params).await?;
                    ck.upid = Some(upid);
                    claim.reach(svc, "transferring", &ck).await?;
                }
            }
        }
        if let Some(upid) = ck.upid.clone() {
            wait_transfer(svc, claim, &t, &upid, &mut ck).await?;
        }
        // Where is it now? A task that failed left it on the source.
        match locate(&t, vmid).await? {
            Some(n) if n == p.target_node => {}
            other => {
                return Err(JobError::Permanent(format!(
                    "the migration did not move the VM (it is on {})",
                    other.unwrap_or_else(|| "no node".into())
                )))
            }
        }
        claim.reach(svc, "transferred", &ck).await?;
    }

    if claim.job.step == "transferred" {
        verify(&t, vmid, &p, &ck).await?;
        fault("verify")?;
        finish_on_target(svc, claim, &t, &p, &ck, None).await?;
    }
    Ok(())
}

/// Waits for the node's migration task, recording its progress; a job told to stop (it
/// failed elsewhere) stops the task.
async fn wait_transfer(
    svc: &Services,
    claim: &mut Claim,
    t: &Target,
    upid: &str,
    ck: &mut MigrateCheckpoint,
) -> Result<(), JobError> {
    let deadline = Instant::now() + TASK_TIMEOUT;
    let mut fault_checked = false;
    loop {
        let st = t.client.task_status(upid).await?;
        if let Ok(lines) = t.client.task_log(upid, 100_000).await {
            let last = lines
                .iter()
                .rev()
                .find(|l| l.t.starts_with("migration ") || l.t.contains(": transferred "))
                .map(|l| l.t.clone());
            if last.is_some() && last != ck.progress {
                ck.progress = last;
                claim.reach(svc, "transferring", ck).await?;
            }
        }
        if !st.is_running() {
            // The result is read from where the VM is, by the caller.
            return Ok(());
        }
        if !fault_checked {
            fault_checked = true;
            if let Err(e) = fault("transfer-wait") {
                let _ = t.client.stop_task(upid).await;
                let _ = t.client.wait_task(upid, Duration::from_secs(120)).await;
                return Err(e);
            }
        }
        if Instant::now() > deadline {
            let _ = t.client.stop_task(upid).await;
            return Err(JobError::Permanent(format!("task {upid} did not end")));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Post-migration checks: running on the target (if it ran), its guest answering, nothing
/// left on the source.
async fn verify(
    t: &Target,
    vmid: i64,
    p: &MigratePayload,
    ck: &MigrateCheckpoint,
) -> Result<(), JobError> {
    let id = vmid_u32(vmid)?;
    let st = t.client.vm_status(&p.target_node, id).await?;
    if ck.was_running && st.status != "running" {
        return Err(JobError::Permanent(format!(
            "the VM is {} on {}, not running",
            st.status, p.target_node
        )));
    }
    if let Some(src) = &ck.source_node {
        match t.client.vm_status(src, id).await {
            Err(e) if is_missing(&e) => {}
            Ok(_) => {
                return Err(JobError::Permanent(format!(
                    "node {src} still lists the VM"
                )))
            }
            Err(e) => return Err(e.into()),
        }
    }
    if ck.was_running {
        if let Some(web) = &t.vps.web_address {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(3))
                .build()
                .map_err(|e| JobError::Permanent(e.to_string()))?;
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let ok = client
                    .get(format!("http://{web}/"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ok {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(JobError::Permanent(format!(
                        "the guest does not answer at {web}"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    Ok(())
}

/// The VPS is the target's now: its node changes and the source's reservation is freed.
/// With `attention`, the job ends `needs-attention` saying why.
async fn finish_on_target(
    svc: &Services,
    claim: &mut Claim,
    t: &Target,
    p: &MigratePayload,
    ck: &MigrateCheckpoint,
    attention: Option<&str>,
) -> Result<(), JobError> {
    let mut vps = t.vps.clone();
    let source = ck.source_node.clone().unwrap_or_else(|| t.node.clone());
    let mut tx = svc.db.begin().await?;
    if vps.node.as_deref() != Some(p.target_node.as_str()) {
        if let Some(cluster) = &vps.cluster_id {
            store::release_on_node(
                &mut tx,
                cluster,
                &source,
                vps.vcpus,
                vps.memory_mib,
                vps.disk_gib,
            )
            .await?;
        }
        vps.node = Some(p.target_node.clone());
    }
    if let Some(why) = attention {
        vps.last_error = Some(why.to_string());
    }
    save(&mut tx, &mut vps).await?;
    let detail = format!("{source} -> {}", p.target_node);
    match attention {
        None => {
            add_event(&mut tx, &vps, "vps.migrated", &detail).await?;
            claim.finish_in(&mut tx, None).await?;
        }
        Some(why) => {
            add_event(
                &mut tx,
                &vps,
                "vps.migrate.needs-attention",
                &format!("{detail}: {why}"),
            )
            .await?;
            claim
                .finish_state_in(&mut tx, "needs-attention", Some(why))
                .await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

/// A migration job that failed for good: before the switchover its reservation is freed
/// and the VPS stays; after it, the VPS follows its VM and the job needs attention.
pub async fn fail(svc: &Services, claim: &mut Claim, error: &str) -> Result<(), JobError> {
    let t = target(svc, claim).await?;
    let p: MigratePayload = claim.payload()?;
    let ck: MigrateCheckpoint = claim.checkpoint_data();
    if let Some(vmid) = t.vps.vmid {
        if locate(&t, vmid).await?.as_deref() == Some(p.target_node.as_str()) {
            return finish_on_target(svc, claim, &t, &p, &ck, Some(error)).await;
        }
    }
    let mut vps = t.vps.clone();
    vps.last_error = Some(error.to_string());
    let mut tx = svc.db.begin().await?;
    if ck.reserved {
        if let Some(cluster) = &vps.cluster_id {
            store::release_on_node(
                &mut tx,
                cluster,
                &p.target_node,
                vps.vcpus,
                vps.memory_mib,
                vps.disk_gib,
            )
            .await?;
        }
    }
    save(&mut tx, &mut vps).await?;
    add_event(&mut tx, &vps, "vps.migrate.failed", error).await?;
    claim.finish_in(&mut tx, Some(error)).await?;
    tx.commit().await?;
    Ok(())
}
