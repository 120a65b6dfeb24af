//! `POST /nodes/{node}/vzdump` and restores (`POST /nodes/{node}/qemu` with `archive`).

use std::sync::Arc;

use axum::extract::State;
use hemiron_pve::prune::PruneOptions;

use super::qemu::user;
use super::{check_node, ApiError, ApiResult, Call, Data};
use crate::tasks::TaskFailure;
use crate::vm::backup::{BackupRequest, Compress, Mode};
use crate::vm::lifecycle::StartOptions;
use crate::Node;

/// vzdump options this node does not carry out: refused rather than silently ignored.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("all", "back up VMs by listing them in 'vmid'"),
    ("exclude", "back up VMs by listing them in 'vmid'"),
    ("exclude-path", "only whole VMs are backed up"),
    ("dumpdir", "backups go to a storage ('storage')"),
    ("tmpdir", "backups are staged in the target storage"),
    ("script", "hook scripts are not run for backups"),
    ("pool", "resource pools are not supported by this node"),
    ("mailto", "this node sends no mail"),
    (
        "fleecing",
        "backups of running VMs need no fleecing image here",
    ),
    (
        "performance",
        "there are no tunables for this archive format",
    ),
    (
        "pbs-change-detection-mode",
        "there is no Proxmox Backup Server here",
    ),
];

pub async fn vzdump(State(node): State<Arc<Node>>, call: Call) -> ApiResult {
    let p = &call.params;
    if let Some(n) = p.str("node") {
        check_node(&node, n)?;
    }
    for (key, why) in UNSUPPORTED {
        let set = match p.get(key) {
            Some(hemiron_pve::Value::Bool(b)) => *b,
            Some(_) => true,
            None => false,
        };
        if set {
            return Err(ApiError::param(key, format!("not supported: {why}")));
        }
    }
    if p.bool("stdout") == Some(true) {
        return Err(ApiError::param(
            "stdout",
            "not supported: archives go to a storage",
        ));
    }
    if p.bool("stop") == Some(true) {
        return Err(ApiError::param(
            "stop",
            "not supported: cancel a running backup by stopping its task",
        ));
    }
    let vmids: Vec<u32> = hemiron_pve::text::split_list(p.str("vmid").unwrap_or_default())
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect();
    if vmids.is_empty() {
        return Err(ApiError::param("vmid", "give the VMs to back up"));
    }
    for vmid in &vmids {
        if !node.vms.exists(*vmid) {
            return Err(ApiError::param(
                "vmid",
                format!("VM {vmid} does not exist on node '{}'", node.name),
            ));
        }
    }
    let storage = p.str("storage").unwrap_or("local").to_string();
    node.vms
        .storage()
        .pool(&storage)
        .map_err(|e| ApiError::param("storage", e.to_string()))?;
    let mode = match p.str("mode").unwrap_or("snapshot") {
        "suspend" => Mode::Suspend,
        "stop" => Mode::Stop,
        _ => Mode::Snapshot,
    };
    let compress = Compress::parse(p.str("compress").unwrap_or("0"))
        .map_err(|e| ApiError::param("compress", e))?;
    // `maxfiles` is the old name of `keep-last`.
    let prune = match (p.str("prune-backups"), p.int("maxfiles")) {
        (Some(text), _) => Some(
            text.parse::<PruneOptions>()
                .map_err(|e| ApiError::param("prune-backups", e.to_string()))?,
        ),
        (None, Some(n)) => Some(PruneOptions {
            keep_last: u64::try_from(n).ok(),
            ..PruneOptions::default()
        }),
        (None, None) => None,
    };
    let req = BackupRequest {
        storage,
        mode,
        compress,
        bwlimit_kib: p.int("bwlimit").and_then(|b| u64::try_from(b).ok()),
        notes_template: p.str("notes-template").map(str::to_string),
        protected: p.bool("protected").unwrap_or(false),
        // `remove=0` keeps everything whatever the retention says.
        prune: prune.filter(|_| p.bool("remove").unwrap_or(true)),
        node: node.name.clone(),
        // Minutes, as Proxmox counts them.
        stopwait: std::time::Duration::from_secs(
            u64::try_from(p.int("stopwait").unwrap_or(10)).unwrap_or(10) * 60,
        ),
    };
    let vms = node.vms.clone();
    let id = if vmids.len() == 1 {
        vmids[0].to_string()
    } else {
        String::new()
    };
    let upid = node
        .tasks
        .spawn("vzdump", &id, &user(&call), move |ctx| async move {
            let mut failed = 0;
            for vmid in vmids {
                match vms.backup(vmid, &req, &ctx).await {
                    Ok(volid) => ctx.log(format!("VM {vmid}: backup '{volid}' finished")),
                    Err(e) => {
                        failed += 1;
                        ctx.log(format!(
                            "ERROR: VM {vmid}: backup failed: {}",
                            crate::error_chain(&e)
                        ));
                    }
                }
            }
            if failed > 0 {
                // Proxmox's exit status for a vzdump run with failed guests.
                return Err(TaskFailure("job errors".into()));
            }
            Ok(())
        })
        .map_err(|e| ApiError::from_err(&e))?;
    Data::new(upid.to_string())
}

/// A VMID reserved for a restore (its `lock: create` config), given back when dropped while
/// held.
struct Reservation {
    vms: Arc<crate::vm::VmManager>,
    vmid: u32,
    held: bool,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.held {
            let _ = self.vms.store.remove(self.vmid);
        }
    }
}

/// A restore: `vmid` made from `archive` (or, with `force`, replacing the stopped VM).
pub async fn restore(
    node: &Arc<Node>,
    call: &Call,
    vmid: u32,
    archive: String,
    start: bool,
) -> ApiResult {
    let p = &call.params;
    let volid = crate::storage::parse_volid(&archive)
        .map_err(|e| ApiError::param("archive", e.to_string()))?;
    if !matches!(volid.kind(), hemiron_pve::volume::VolumeKind::Backup(_)) {
        return Err(ApiError::param("archive", "not a backup archive volume"));
    }
    let storage = p.str("storage").map(str::to_string);
    if let Some(s) = &storage {
        node.vms
            .storage()
            .pool(s)
            .map_err(|e| ApiError::param("storage", e.to_string()))?;
    }
    if p.contains("bwlimit") {
        return Err(ApiError::param(
            "bwlimit",
            "not supported for restores here",
        ));
    }
    let path = node
        .vms
        .storage()
        .existing_path(&volid)
        .map_err(|e| ApiError::param("archive", e.to_string()))?;
    // Read before anything changes: a bad archive refuses the call and touches no VM.
    let archive = tokio::task::spawn_blocking(move || crate::vm::backup::Archive::open(&path))
        .await
        .map_err(|e| ApiError::runtime(e.to_string()))?
        .map_err(|e| ApiError::param("archive", crate::error_chain(&e)))?;
    let force = p.bool("force").unwrap_or(false);
    let unique = p.bool("unique").unwrap_or(false);
    let replace = node.vms.exists(vmid);
    if replace && !force {
        return Err(ApiError::param(
            "vmid",
            format!("VM {vmid} already exists (use force to overwrite it)"),
        ));
    }
    if replace && node.vms.running(vmid).is_some() {
        return Err(ApiError::runtime(format!(
            "VM {vmid} is running; stop it before restoring over it"
        )));
    }
    if !replace {
        let mut reserved = hemiron_pve::config::VmConfig::default();
        reserved.main.props.insert("lock".into(), "create".into());
        node.vms.store.create(vmid, &reserved)?;
        if let Err(e) = super::cluster::check_vmid_free_elsewhere(node, vmid, "vmid").await {
            let _ = node.vms.store.remove(vmid);
            return Err(e);
        }
    }
    let vms = node.vms.clone();
    let spawned = node.tasks.spawn(
        "qmrestore",
        &vmid.to_string(),
        &user(call),
        move |ctx| async move {
            // The reservation goes if the restore fails or its task is stopped.
            let mut reservation = Reservation {
                vms: vms.clone(),
                vmid,
                held: !replace,
            };
            vms.restore(vmid, &archive, storage.as_deref(), unique, replace, &ctx)
                .await?;
            reservation.held = false;
            if start {
                vms.start(vmid, StartOptions::default(), &ctx).await?;
            }
            Ok(())
        },
    );
    match spawned {
        Ok(u) => Data::new(u.to_string()),
        Err(e) => {
            if !replace {
                let _ = node.vms.store.remove(vmid);
            }
            Err(ApiError::from_err(&e))
        }
    }
}
