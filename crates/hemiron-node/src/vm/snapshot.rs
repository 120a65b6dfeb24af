//! Snapshots: qcow2 internal snapshots of every disk, optionally with the VM's RAM state in a
//! state volume (`vm-VMID-state-NAME.qcow2`), recorded as `[NAME]` sections of the config as
//! Proxmox writes them (`parent`, `snaptime`, `vmstate`, `description`).
//!
//! A snapshot is made in steps that are each undone on failure: the config first records it
//! as `snapstate: prepare` under `lock: snapshot`, then the volumes are snapshotted (for a
//! running VM atomically, in one QMP transaction or `snapshot-save` job), then the section is
//! finalised. So a failure leaves neither a half-made section nor stray volume snapshots.

use std::time::Duration;

use hemiron_pve::config::{Section, VmConfig};
use hemiron_pve::views::{Drive, DriveKey};
use hemiron_pve::volume::{DriveFile, VolumeKind};
use serde_json::{json, Value};
use tracing::{info, warn};

use super::lifecycle::{StartOptions, StopOptions};
use super::owner::OwnerHandle;
use super::template::wait_job;
use super::update::check_lock;
use super::{VmError, VmManager};
use crate::qemu::devices::format_node;
use crate::storage::{parse_volid, ImageFormat, SnapshotOp, VolumeId};
use crate::tasks::TaskContext;

/// Keys of the main section a snapshot does not copy (Proxmox's `snapshot_copy_config`).
const NOT_COPIED: &[&str] = &[
    "lock",
    "parent",
    "snapstate",
    "snaptime",
    "vmstate",
    "runningmachine",
    "runningcpu",
];

/// A disk that takes part in snapshots.
#[derive(Debug, Clone)]
struct SnapDisk {
    key: DriveKey,
    volid: VolumeId,
    /// The QEMU node to snapshot while the VM runs.
    node: String,
}

/// The storage-volume disks of a config (not CD-ROMs or the cloud-init drive), with the
/// QEMU node each is attached as while the VM runs.
pub(super) fn volume_disks(
    props: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<(DriveKey, VolumeId, String)>, VmError> {
    let mut out = Vec::new();
    for (key, value) in crate::qemu::cmdline::drives(props) {
        let Ok(d) = Drive::parse(key, &value, false) else {
            continue;
        };
        if d.is_cdrom() || d.is_cloudinit() {
            continue;
        }
        let Some(DriveFile::Volume(v)) = d.drive_file() else {
            continue;
        };
        let throttled = d.throttle != Default::default();
        out.push((
            key,
            parse_volid(&v.to_string())?,
            format_node(&key, throttled),
        ));
    }
    Ok(out)
}

/// The disks of a config that are snapshotted: every volume disk, all of them qcow2.
fn snap_disks(
    props: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<SnapDisk>, VmError> {
    let mut out = Vec::new();
    for (key, volid, node) in volume_disks(props)? {
        if crate::storage::volume_format(&volid) != Some(ImageFormat::Qcow2) {
            return Err(VmError::Refused(format!(
                "snapshot feature is not available for {key} ({volid}): only qcow2 volumes have snapshots"
            )));
        }
        out.push(SnapDisk { key, node, volid });
    }
    Ok(out)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The state volume named in a snapshot section.
fn state_volume(section: &Section) -> Option<VolumeId> {
    section
        .props
        .get("vmstate")
        .and_then(|v| parse_volid(v).ok())
}

impl VmManager {
    /// [`snap_disks`] of VM `vmid`, refused if one of them is another node's ([`VmManager::check_may_modify`]).
    fn snap_disks_here(
        &self,
        vmid: u32,
        props: &std::collections::BTreeMap<String, String>,
    ) -> Result<Vec<SnapDisk>, VmError> {
        let disks = snap_disks(props)?;
        for d in &disks {
            self.check_may_modify(vmid, &d.volid)?;
        }
        Ok(disks)
    }

    /// `GET .../snapshot`: the snapshots, oldest first, then the `current` pseudo-entry.
    pub fn snapshot_list(&self, vmid: u32) -> Result<Vec<Value>, VmError> {
        let loaded = self.store.load(vmid)?;
        let conf = &loaded.conf;
        let mut snaps: Vec<(&String, &Section)> = conf.snapshots.iter().collect();
        snaps.sort_by_key(|(name, s)| {
            (
                s.props
                    .get("snaptime")
                    .and_then(|t| t.parse::<i64>().ok())
                    .unwrap_or(0),
                name.to_string(),
            )
        });
        let mut out = Vec::new();
        for (name, s) in snaps {
            let mut e = json!({
                "name": name,
                "description": s.description.clone().unwrap_or_default(),
            });
            if let Some(t) = s.props.get("snaptime").and_then(|t| t.parse::<i64>().ok()) {
                e["snaptime"] = json!(t);
            }
            if s.props.contains_key("vmstate") {
                e["vmstate"] = json!(1);
            }
            if let Some(p) = s.props.get("parent") {
                e["parent"] = json!(p);
            }
            out.push(e);
        }
        let mut current = json!({
            "name": "current",
            "digest": loaded.digest,
            "running": u8::from(self.running(vmid).is_some()),
            "description": "You are here!",
        });
        if let Some(p) = conf.parent() {
            current["parent"] = json!(p);
        }
        out.push(current);
        Ok(out)
    }

    /// A snapshot's section, for `GET .../snapshot/{name}/config`.
    pub fn snapshot_section(&self, vmid: u32, name: &str) -> Result<Section, VmError> {
        let loaded = self.store.load(vmid)?;
        loaded
            .conf
            .snapshots
            .get(name)
            .cloned()
            .ok_or_else(|| VmError::Refused(format!("snapshot '{name}' does not exist")))
    }

    /// `PUT .../snapshot/{name}/config`: changes the description.
    pub async fn snapshot_describe(
        &self,
        vmid: u32,
        name: &str,
        description: Option<String>,
    ) -> Result<(), VmError> {
        let _guard = self.lock(vmid).await?;
        let mut conf = self.store.load(vmid)?.conf;
        let section = conf
            .snapshots
            .get_mut(name)
            .ok_or_else(|| VmError::Refused(format!("snapshot '{name}' does not exist")))?;
        if let Some(d) = description {
            section.description = Some(d);
        }
        self.store.write(vmid, &conf)
    }

    /// `POST .../snapshot` (task `qmsnapshot`).
    pub async fn snapshot_create(
        &self,
        vmid: u32,
        name: &str,
        description: Option<String>,
        vmstate: bool,
        log: &TaskContext,
    ) -> Result<(), VmError> {
        let _guard = self.lock(vmid).await?;
        let loaded = self.store.load(vmid)?;
        let mut conf = loaded.conf;
        check_lock(&conf, false)?;
        if name == "current" {
            return Err(VmError::param(
                "snapname",
                "invalid snapshot name 'current'",
            ));
        }
        if conf.snapshots.contains_key(name) {
            return Err(VmError::Refused(format!(
                "snapshot name '{name}' already used"
            )));
        }
        if conf.get("template") == Some("1") {
            return Err(VmError::Refused("you can't snapshot a template".into()));
        }
        let disks = self.snap_disks_here(vmid, &conf.main.props)?;
        let running = self.running(vmid);
        let vmstate = vmstate && running.is_some();

        // 1. Record the snapshot as being prepared, under a lock.
        let mut section = Section {
            description: Some(description.unwrap_or_default()),
            props: conf
                .main
                .props
                .iter()
                .filter(|(k, _)| !NOT_COPIED.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        if let Some(p) = conf.parent() {
            section.props.insert("parent".into(), p.to_string());
        }
        section
            .props
            .insert("snaptime".into(), unix_now().to_string());
        section.props.insert("snapstate".into(), "prepare".into());
        let state_vol = if vmstate {
            let storage = conf
                .get("vmstatestorage")
                .map(str::to_string)
                .or_else(|| disks.first().map(|d| d.volid.storage.clone()))
                .unwrap_or_else(|| "local".into());
            let vol = VolumeId {
                storage,
                volname: format!("{vmid}/vm-{vmid}-state-{name}.qcow2"),
            };
            section.props.insert("vmstate".into(), vol.to_string());
            if let Some(r) = &running {
                section
                    .props
                    .insert("runningmachine".into(), r.machine.clone());
            }
            Some(vol)
        } else {
            None
        };
        conf.snapshots.insert(name.to_string(), section);
        conf.main.props.insert("lock".into(), "snapshot".into());
        self.store.write(vmid, &conf)?;

        // 2. Snapshot the volumes.
        let made = match &running {
            Some(run) => match &state_vol {
                Some(vol) => self
                    .save_with_state(&run.owner, name, &disks, vol, log)
                    .await
                    .map(|()| disks.clone()),
                None => self
                    .snapshot_live(&run.owner, name, &disks, log)
                    .await
                    .map(|()| disks.clone()),
            },
            None => self.snapshot_offline(name, &disks, log).await,
        };

        // 3. Finalise, or undo everything.
        let mut conf = self.store.load(vmid)?.conf;
        conf.main.props.remove("lock");
        match made {
            Ok(_) => {
                if let Some(s) = conf.snapshots.get_mut(name) {
                    s.props.remove("snapstate");
                }
                conf.main.props.insert("parent".into(), name.to_string());
                self.store.write(vmid, &conf)?;
                info!(vmid, name, vmstate, "snapshot created");
                Ok(())
            }
            Err(e) => {
                log.log(format!("snapshot failed - removing what was made: {e}"));
                conf.snapshots.remove(name);
                self.store.write(vmid, &conf)?;
                if let Some(vol) = &state_vol {
                    let _ = self.storage().free(vol);
                }
                Err(e)
            }
        }
    }

    /// Internal snapshots of a stopped VM's disks; on failure the ones made are deleted.
    async fn snapshot_offline(
        &self,
        name: &str,
        disks: &[SnapDisk],
        log: &TaskContext,
    ) -> Result<Vec<SnapDisk>, VmError> {
        let mut done: Vec<SnapDisk> = Vec::new();
        for d in disks {
            log.log(format!("snapshotting '{}' ({})", d.key, d.volid));
            if let Err(e) = self
                .storage()
                .snapshot_offline(&d.volid, SnapshotOp::Create, name)
                .await
            {
                for u in &done {
                    let _ = self
                        .storage()
                        .snapshot_offline(&u.volid, SnapshotOp::Delete, name)
                        .await;
                }
                return Err(e.into());
            }
            done.push(d.clone());
        }
        Ok(done)
    }

    /// Disk-only snapshot of a running VM: one QMP transaction, so all disks are taken at
    /// the same instant or none is.
    async fn snapshot_live(
        &self,
        owner: &OwnerHandle,
        name: &str,
        disks: &[SnapDisk],
        log: &TaskContext,
    ) -> Result<(), VmError> {
        let actions: Vec<Value> = disks
            .iter()
            .map(|d| {
                json!({
                    "type": "blockdev-snapshot-internal-sync",
                    "data": { "device": d.node, "name": name },
                })
            })
            .collect();
        log.log(format!(
            "snapshotting {} disk(s) of the running VM",
            disks.len()
        ));
        owner
            .raw("transaction", Some(json!({ "actions": actions })))
            .await?;
        Ok(())
    }

    /// Snapshot with RAM: QEMU's `snapshot-save` job writes the disks' snapshots and the
    /// machine state (into the state volume) at one point, pausing the guest meanwhile.
    async fn save_with_state(
        &self,
        owner: &OwnerHandle,
        name: &str,
        disks: &[SnapDisk],
        state: &VolumeId,
        log: &TaskContext,
    ) -> Result<(), VmError> {
        let state_node = "vmstate-save";
        self.attach_state(owner, state, state_node, true).await?;
        let mut devices: Vec<String> = disks.iter().map(|d| d.node.clone()).collect();
        devices.push(state_node.to_string());
        let job = "snapshot-save";
        log.log("saving VM state and disk snapshots");
        let result = async {
            owner
                .raw(
                    "snapshot-save",
                    Some(json!({ "job-id": job, "tag": name, "vmstate": state_node, "devices": devices })),
                )
                .await?;
            wait_job(owner, job, log).await
        }
        .await;
        let _ = owner.raw("job-dismiss", Some(json!({ "id": job }))).await;
        let _ = owner
            .raw("blockdev-del", Some(json!({ "node-name": state_node })))
            .await;
        let _ = owner
            .raw(
                "blockdev-del",
                Some(json!({ "node-name": format!("{state_node}-file") })),
            )
            .await;
        if let Err(e) = result {
            // The job may have snapshotted some disks before failing.
            for d in disks {
                let _ = owner
                    .raw(
                        "blockdev-snapshot-delete-internal-sync",
                        Some(json!({ "device": d.node, "name": name })),
                    )
                    .await;
            }
            return Err(e);
        }
        Ok(())
    }

    /// Attaches a state volume to a running QEMU as a block node (no guest device).
    async fn attach_state(
        &self,
        owner: &OwnerHandle,
        vol: &VolumeId,
        node: &str,
        create: bool,
    ) -> Result<(), VmError> {
        if create {
            // The RAM state lives in the image's VM state area, outside the virtual disk.
            self.storage()
                .alloc_named(
                    &vol.storage,
                    match vol.kind() {
                        VolumeKind::Image { vmid, .. } => vmid,
                        _ => 0,
                    },
                    match vol.kind() {
                        VolumeKind::Image { ref name, .. } => name.as_str(),
                        _ => "state.qcow2",
                    },
                    1 << 20,
                    ImageFormat::Qcow2,
                )
                .await?;
        }
        let path = self.storage().existing_path(vol)?;
        owner
            .raw(
                "blockdev-add",
                Some(json!({
                    "driver": "qcow2",
                    "node-name": node,
                    "file": {
                        "driver": "file",
                        "node-name": format!("{node}-file"),
                        "filename": path.to_string_lossy(),
                    },
                })),
            )
            .await?;
        Ok(())
    }

    /// `POST .../snapshot/{name}/rollback` (task `qmrollback`): the disks (and RAM, if saved)
    /// return to the snapshot; the config becomes the snapshot's.
    pub async fn snapshot_rollback(
        &self,
        vmid: u32,
        name: &str,
        start: bool,
        log: &TaskContext,
    ) -> Result<(), VmError> {
        let _guard = self.lock(vmid).await?;
        let mut conf = self.store.load(vmid)?.conf;
        check_lock(&conf, false)?;
        let section = conf
            .snapshots
            .get(name)
            .cloned()
            .ok_or_else(|| VmError::Refused(format!("snapshot '{name}' does not exist")))?;
        if section.props.contains_key("snapstate") {
            return Err(VmError::Refused(
                "unable to rollback to incomplete snapshot (snapstate = prepare)".into(),
            ));
        }
        if self.running(vmid).is_some() {
            log.log("stopping the running VM");
            self.stop_locked(
                vmid,
                StopOptions {
                    skiplock: true,
                    timeout: Duration::from_secs(30),
                    force_stop: true,
                },
                log,
            )
            .await?;
        }
        conf.main.props.insert("lock".into(), "rollback".into());
        self.store.write(vmid, &conf)?;

        let result = self.rollback_volumes(vmid, name, &section, log).await;
        let mut conf = self.store.load(vmid)?.conf;
        if let Err(e) = result {
            conf.main.props.remove("lock");
            self.store.write(vmid, &conf)?;
            return Err(e);
        }
        // The config returns to the snapshot's (its disks, sizes, settings).
        let mut props: std::collections::BTreeMap<String, String> = section
            .props
            .iter()
            .filter(|(k, _)| !NOT_COPIED.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        props.insert("parent".into(), name.to_string());
        // Disks added after the snapshot are kept as unused, not forgotten.
        for (k, v) in &conf.main.props {
            if let Some(vol) = super::update::drive_volume(k, v) {
                if !props.values().any(|pv| pv.contains(&vol)) {
                    let n = (0..256)
                        .find(|i| !props.contains_key(&format!("unused{i}")))
                        .unwrap_or(255);
                    props.insert(format!("unused{n}"), vol);
                }
            } else if k.starts_with("unused") && !props.values().any(|pv| pv == v) {
                let n = (0..256)
                    .find(|i| !props.contains_key(&format!("unused{i}")))
                    .unwrap_or(255);
                props.insert(format!("unused{n}"), v.clone());
            }
        }
        conf.main.props = props;
        conf.pending = None;
        self.store.write(vmid, &conf)?;

        if let Some(state) = state_volume(&section) {
            log.log("restoring the VM state");
            self.resume_from_state(vmid, name, &section, &state, log)
                .await?;
        } else if start {
            self.start_locked(vmid, StartOptions::default(), log)
                .await?;
        }
        info!(vmid, name, "rolled back to snapshot");
        Ok(())
    }

    async fn rollback_volumes(
        &self,
        vmid: u32,
        name: &str,
        section: &Section,
        log: &TaskContext,
    ) -> Result<(), VmError> {
        for d in self.snap_disks_here(vmid, &section.props)? {
            log.log(format!("rolling back '{}' ({})", d.key, d.volid));
            self.storage()
                .snapshot_offline(&d.volid, SnapshotOp::Apply, name)
                .await?;
        }
        Ok(())
    }

    /// Starts the VM paused with the snapshot's machine type, loads its saved RAM (and
    /// disks) with `snapshot-load`, and lets it run on from where it was.
    async fn resume_from_state(
        &self,
        vmid: u32,
        name: &str,
        section: &Section,
        state: &VolumeId,
        log: &TaskContext,
    ) -> Result<(), VmError> {
        let opts = StartOptions {
            machine: section.props.get("runningmachine").cloned(),
            paused: true,
            ..StartOptions::default()
        };
        self.start_locked(vmid, opts, log).await?;
        let run = self.running(vmid).ok_or(VmError::NotRunning(vmid))?;
        let state_node = "vmstate-load";
        let result = async {
            self.attach_state(&run.owner, state, state_node, false).await?;
            let mut devices: Vec<String> = self.snap_disks_here(vmid, &section.props)?
                .iter()
                .map(|d| d.node.clone())
                .collect();
            devices.push(state_node.to_string());
            let job = "snapshot-load";
            run.owner
                .raw(
                    "snapshot-load",
                    Some(json!({ "job-id": job, "tag": name, "vmstate": state_node, "devices": devices })),
                )
                .await?;
            let r = wait_job(&run.owner, job, log).await;
            let _ = run.owner.raw("job-dismiss", Some(json!({ "id": job }))).await;
            r
        }
        .await;
        let _ = run
            .owner
            .raw("blockdev-del", Some(json!({ "node-name": state_node })))
            .await;
        let _ = run
            .owner
            .raw(
                "blockdev-del",
                Some(json!({ "node-name": format!("{state_node}-file") })),
            )
            .await;
        if let Err(e) = result {
            let _ = run.owner.quit().await;
            return Err(e);
        }
        run.owner.resume().await?;
        Ok(())
    }

    /// `DELETE .../snapshot/{name}` (task `qmdelsnapshot`).
    pub async fn snapshot_delete(
        &self,
        vmid: u32,
        name: &str,
        force: bool,
        log: &TaskContext,
    ) -> Result<(), VmError> {
        let _guard = self.lock(vmid).await?;
        let mut conf = self.store.load(vmid)?.conf;
        if !force {
            check_lock(&conf, false)?;
        }
        let section = conf
            .snapshots
            .get(name)
            .cloned()
            .ok_or_else(|| VmError::Refused(format!("snapshot '{name}' does not exist")))?;
        conf.main
            .props
            .insert("lock".into(), "snapshot-delete".into());
        self.store.write(vmid, &conf)?;
        let result = self.delete_volumes(vmid, name, &section, log).await;
        let mut conf = self.store.load(vmid)?.conf;
        conf.main.props.remove("lock");
        if let Err(e) = result {
            if !force {
                self.store.write(vmid, &conf)?;
                return Err(e);
            }
            warn!(vmid, name, error = %e, "forced snapshot removal despite errors");
        }
        remove_section(&mut conf, name);
        self.store.write(vmid, &conf)?;
        info!(vmid, name, "snapshot deleted");
        Ok(())
    }

    async fn delete_volumes(
        &self,
        vmid: u32,
        name: &str,
        section: &Section,
        log: &TaskContext,
    ) -> Result<(), VmError> {
        let running = self.running(vmid);
        let live = match &running {
            Some(_) => {
                let conf = self.store.load(vmid)?.conf;
                self.snap_disks_here(vmid, &conf.main.props)?
            }
            None => Vec::new(),
        };
        for d in self.snap_disks_here(vmid, &section.props)? {
            log.log(format!("deleting snapshot of '{}' ({})", d.key, d.volid));
            let attached = live.iter().find(|l| l.volid == d.volid);
            match (&running, attached) {
                (Some(run), Some(l)) => {
                    run.owner
                        .raw(
                            "blockdev-snapshot-delete-internal-sync",
                            Some(json!({ "device": l.node, "name": name })),
                        )
                        .await?;
                }
                _ => {
                    if self.storage().existing_path(&d.volid).is_ok() {
                        self.storage()
                            .snapshot_offline(&d.volid, SnapshotOp::Delete, name)
                            .await?;
                    }
                }
            }
        }
        if let Some(state) = state_volume(section) {
            log.log(format!("removing VM state {state}"));
            self.storage().free(&state)?;
        }
        Ok(())
    }
}

/// Removes a snapshot section and re-links its children (and the current state) to its parent.
fn remove_section(conf: &mut VmConfig, name: &str) {
    let parent = conf
        .snapshots
        .remove(name)
        .and_then(|s| s.props.get("parent").cloned());
    let relink = |props: &mut std::collections::BTreeMap<String, String>| {
        if props.get("parent").map(String::as_str) == Some(name) {
            match &parent {
                Some(p) => {
                    props.insert("parent".into(), p.clone());
                }
                None => {
                    props.remove("parent");
                }
            }
        }
    };
    relink(&mut conf.main.props);
    for s in conf.snapshots.values_mut() {
        relink(&mut s.props);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removing_a_snapshot_relinks_its_children() {
        let mut conf = VmConfig::default();
        let mut a = Section::default();
        a.props.insert("snaptime".into(), "1".into());
        let mut b = Section::default();
        b.props.insert("parent".into(), "a".into());
        conf.snapshots.insert("a".into(), a);
        conf.snapshots.insert("b".into(), b);
        conf.main.props.insert("parent".into(), "b".into());
        remove_section(&mut conf, "a");
        assert!(!conf.snapshots["b"].props.contains_key("parent"));
        remove_section(&mut conf, "b");
        assert!(!conf.main.props.contains_key("parent"));
        assert!(conf.snapshots.is_empty());
    }

    #[test]
    fn raw_disks_have_no_snapshots() {
        let mut props = std::collections::BTreeMap::new();
        props.insert(
            "virtio0".to_string(),
            "local:100/vm-100-disk-0.raw".to_string(),
        );
        assert!(snap_disks(&props).is_err());
        props.insert(
            "virtio0".to_string(),
            "local:100/vm-100-disk-0.qcow2".to_string(),
        );
        props.insert("ide2".to_string(), "none,media=cdrom".to_string());
        let d = snap_disks(&props).unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].node, "drive-virtio0");
    }
}
