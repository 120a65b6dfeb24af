//! Templates and clones: turning a stopped VM into a template with read-only base images,
//! and making new VMs from a VM or template — linked clones (qcow2 overlays on the base) or
//! full copies, each with its own MAC addresses, SMBIOS UUID, generation ID and port forwards.

use std::collections::BTreeMap;
use std::time::Duration;

use hemiron_pve::config::VmConfig;
use hemiron_pve::views::{Drive, DriveKey, NetDevice};
use hemiron_pve::volume::{DriveFile, VolumeKind};
use serde_json::json;
use tracing::info;

use super::update::check_lock;
use super::{VmError, VmManager};
use crate::storage::{parse_volid, ImageFormat, VolumeId};
use crate::tasks::TaskContext;

/// What `POST .../clone` asks for.
#[derive(Debug, Clone, Default)]
pub struct CloneRequest {
    pub newid: u32,
    pub name: Option<String>,
    pub description: Option<String>,
    /// `None`: linked from a template, full otherwise.
    pub full: Option<bool>,
    pub storage: Option<String>,
    pub format: Option<String>,
    pub snapname: Option<String>,
    /// Copy rate limit in KiB/s.
    pub bwlimit: Option<u64>,
}

/// The volume a drive value names, unless it is a CD-ROM or cloud-init drive.
fn disk_volume(key: &DriveKey, value: &str) -> Option<(Drive, VolumeId)> {
    let d = Drive::parse(*key, value, false).ok()?;
    if d.is_cdrom() || d.is_cloudinit() {
        return None;
    }
    match d.drive_file()? {
        DriveFile::Volume(v) => {
            let v = parse_volid(&v.to_string()).ok()?;
            Some((d, v))
        }
        _ => None,
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl VmManager {
    /// VMIDs of linked clones using any base image of `conf`.
    pub async fn linked_clones(&self, conf: &VmConfig) -> Result<Vec<u32>, VmError> {
        let mut vmids = Vec::new();
        for (key, value) in crate::qemu::cmdline::drives(&conf.main.props) {
            let Some((_, vol)) = disk_volume(&key, &value) else {
                continue;
            };
            if !matches!(vol.kind(), VolumeKind::Image { is_base: true, .. }) {
                continue;
            }
            for clone in self.storage().linked_clones_of(&vol).await? {
                if let Ok(v) = parse_volid(&clone) {
                    if let VolumeKind::Image { vmid, .. } = v.kind() {
                        vmids.push(vmid);
                    }
                }
            }
        }
        vmids.sort_unstable();
        vmids.dedup();
        Ok(vmids)
    }

    /// `POST .../template`: the VM's disks (or only `disk`) become base images.
    pub async fn make_template(
        &self,
        vmid: u32,
        disk: Option<&str>,
        log: &TaskContext,
    ) -> Result<(), VmError> {
        let _guard = self.lock(vmid).await?;
        let loaded = self.store.load(vmid)?;
        check_lock(&loaded.conf, false)?;
        if self.running(vmid).is_some() {
            return Err(VmError::Refused(
                "you can't convert a running VM to a template".into(),
            ));
        }
        let mut conf = loaded.conf;
        if conf.pending.is_some() {
            return Err(VmError::Refused(
                "VM has pending changes; start it once or revert them first".into(),
            ));
        }
        for (key, value) in crate::qemu::cmdline::drives(&conf.main.props) {
            if disk.is_some_and(|d| d != key.to_string()) {
                continue;
            }
            let Some((mut drive, vol)) = disk_volume(&key, &value) else {
                continue;
            };
            if matches!(vol.kind(), VolumeKind::Image { is_base: true, .. }) {
                continue;
            }
            let base = self.storage().make_base(&vol)?;
            log.log(format!("{key}: {vol} is now base image {base}"));
            drive.file = base.to_string();
            conf.main.props.insert(key.to_string(), drive.to_string());
            // Written after each disk: a crash never leaves the config naming a moved file.
            self.store.write(vmid, &conf)?;
        }
        if disk.is_none() {
            conf.main.props.insert("template".into(), "1".into());
            self.store.write(vmid, &conf)?;
        }
        info!(vmid, "VM converted to template");
        Ok(())
    }

    /// Checks done before a clone task starts; reserves the new VMID.
    pub fn prepare_clone(&self, vmid: u32, req: &CloneRequest) -> Result<(), VmError> {
        let loaded = self.store.load(vmid)?;
        let template = loaded.conf.get("template") == Some("1");
        let full = req.full.unwrap_or(!template);
        let mut errors = BTreeMap::new();
        if !full && !template {
            errors.insert(
                "full".to_string(),
                "linked clones can only be made from templates".to_string(),
            );
        }
        if !full && (req.storage.is_some() || req.format.is_some()) {
            errors.insert(
                "storage".to_string(),
                "storage and format only apply to full clones".to_string(),
            );
        }
        if !full && req.snapname.is_some() {
            errors.insert(
                "snapname".to_string(),
                "linked clones are made from the template's current state".to_string(),
            );
        }
        if let Some(s) = &req.snapname {
            if !loaded.conf.snapshots.contains_key(s) {
                errors.insert(
                    "snapname".to_string(),
                    format!("snapshot '{s}' does not exist"),
                );
            }
        }
        if let Some(f) = &req.format {
            if ImageFormat::parse(f).is_err() {
                errors.insert(
                    "format".to_string(),
                    format!("format '{f}' is not supported (qcow2 or raw)"),
                );
            }
        }
        if let Some(s) = &req.storage {
            if self.storage().pool(s).is_err() {
                errors.insert(
                    "storage".to_string(),
                    format!("storage '{s}' does not exist"),
                );
            }
        }
        if !errors.is_empty() {
            return Err(VmError::Params(errors));
        }
        let mut reserved = VmConfig::default();
        reserved.main.props.insert("lock".into(), "clone".into());
        self.store.create(req.newid, &reserved)
    }

    /// The `qmclone` task. On failure everything made for the new VM is removed again.
    pub async fn clone_vm(
        &self,
        vmid: u32,
        req: CloneRequest,
        log: &TaskContext,
    ) -> Result<(), VmError> {
        let newid = req.newid;
        let mut created: Vec<VolumeId> = Vec::new();
        let result = self.clone_inner(vmid, &req, log, &mut created).await;
        if result.is_err() {
            for vol in &created {
                let _ = self.storage().free(vol);
            }
            let _ = self.forwards.release(newid);
            let _ = self.store.remove(newid);
        }
        result
    }

    async fn clone_inner(
        &self,
        vmid: u32,
        req: &CloneRequest,
        log: &TaskContext,
        created: &mut Vec<VolumeId>,
    ) -> Result<(), VmError> {
        let newid = req.newid;
        let _new_guard = self.lock(newid).await?;
        let source = {
            let _guard = self.lock(vmid).await?;
            self.store.load(vmid)?.conf
        };
        check_lock(&source, false)?;
        let template = source.get("template") == Some("1");
        let full = req.full.unwrap_or(!template);
        let props = match &req.snapname {
            Some(s) => source
                .snapshots
                .get(s)
                .map(|sec| sec.props.clone())
                .ok_or_else(|| VmError::Refused(format!("snapshot '{s}' does not exist")))?,
            None => source.main.props.clone(),
        };
        let running = if req.snapname.is_none() {
            self.running(vmid)
        } else {
            None
        };
        let mut new = VmConfig::default();
        new.main.description = req
            .description
            .clone()
            .or_else(|| source.main.description.clone());
        for (key, value) in &props {
            if key.starts_with("unused")
                || matches!(
                    key.as_str(),
                    "template"
                        | "lock"
                        | "parent"
                        | "snaptime"
                        | "vmstate"
                        | "runningmachine"
                        | "runningcpu"
                        | "meta"
                        | "vmgenid"
                )
            {
                continue;
            }
            if let Ok(dk) = key.parse::<DriveKey>() {
                if let Some((mut drive, vol)) = disk_volume(&dk, value) {
                    let new_vol = if full {
                        let storage = req.storage.clone().unwrap_or_else(|| vol.storage.clone());
                        let format = match &req.format {
                            Some(f) => ImageFormat::parse(f)?,
                            None => {
                                crate::storage::volume_format(&vol).unwrap_or(ImageFormat::Qcow2)
                            }
                        };
                        log.log(format!("{key}: full copy of {vol} to storage '{storage}'"));
                        match &running {
                            Some(run) => {
                                let node = crate::qemu::devices::format_node(
                                    &dk,
                                    drive.throttle != Default::default(),
                                );
                                let target = self
                                    .storage()
                                    .alloc(
                                        &storage,
                                        newid,
                                        self.storage().volume_size(&vol).await?,
                                        format,
                                    )
                                    .await?;
                                created.push(target.clone());
                                self.live_copy(
                                    &run.owner,
                                    &node,
                                    &target,
                                    format,
                                    req.bwlimit,
                                    log,
                                )
                                .await?;
                                target
                            }
                            None => {
                                let path = self.storage().existing_path(&vol)?;
                                let v = self
                                    .storage()
                                    .copy_full(
                                        &path,
                                        &storage,
                                        newid,
                                        format,
                                        req.snapname.as_deref(),
                                        req.bwlimit,
                                    )
                                    .await?;
                                created.push(v.clone());
                                v
                            }
                        }
                    } else {
                        let v = self.storage().clone_linked(&vol, newid).await?;
                        created.push(v.clone());
                        log.log(format!("{key}: linked clone {v}"));
                        v
                    };
                    drive.file = new_vol.to_string();
                    drive.format = None;
                    new.main.props.insert(key.clone(), drive.to_string());
                    continue;
                }
                if let Ok(d) = Drive::parse(dk, value, false) {
                    if d.is_cloudinit() {
                        // The clone gets its own cloud-init drive, generated at its start.
                        let storage = parse_volid(&d.file)
                            .map(|v| v.storage)
                            .unwrap_or_else(|_| "local".into());
                        new.main.props.insert(
                            key.clone(),
                            format!("{storage}:{newid}/vm-{newid}-cloudinit.qcow2,media=cdrom"),
                        );
                        continue;
                    }
                }
            }
            if key.starts_with("net") {
                if let Ok(mut net) = NetDevice::parse(value) {
                    net.macaddr = None;
                    net.ensure_mac(Some(hemiron_pve::mac::PROXMOX_MAC_PREFIX))
                        .map_err(|e| VmError::Refused(e.to_string()))?;
                    new.main.props.insert(key.clone(), net.to_string());
                    continue;
                }
            }
            if key == "smbios1" {
                let kept: Vec<&str> = value
                    .split(',')
                    .filter(|kv| !kv.starts_with("uuid="))
                    .collect();
                let mut v = kept.join(",");
                if !v.is_empty() {
                    v.push(',');
                }
                v.push_str(&format!("uuid={}", uuid::Uuid::new_v4()));
                new.main.props.insert(key.clone(), v);
                continue;
            }
            new.main.props.insert(key.clone(), value.clone());
        }
        let src_name = props
            .get("name")
            .cloned()
            .unwrap_or_else(|| format!("VM{vmid}"));
        new.main.props.insert(
            "name".into(),
            req.name
                .clone()
                .unwrap_or_else(|| format!("Copy-of-VM-{src_name}")),
        );
        new.main
            .props
            .insert("vmgenid".into(), uuid::Uuid::new_v4().to_string());
        if !new.main.props.contains_key("smbios1") {
            new.main
                .props
                .insert("smbios1".into(), format!("uuid={}", uuid::Uuid::new_v4()));
        }
        new.main.props.insert(
            "meta".into(),
            format!(
                "creation-qemu={},ctime={}",
                self.qemu_version.get().cloned().unwrap_or_default(),
                unix_now()
            ),
        );
        if new.main.props.contains_key("net0") {
            self.forwards.ensure(newid)?;
        }
        self.store.write(newid, &new)?;
        info!(vmid, newid, full, "VM cloned");
        Ok(())
    }

    /// Copies a running VM's disk into `target` at one point in time (QMP `blockdev-backup`),
    /// so a full clone of a running VM is consistent.
    async fn live_copy(
        &self,
        owner: &super::owner::OwnerHandle,
        node: &str,
        target: &VolumeId,
        format: ImageFormat,
        rate_kib: Option<u64>,
        log: &TaskContext,
    ) -> Result<(), VmError> {
        let path = self.storage().existing_path(target)?;
        let tnode = format!("clone-target-{}", rand::random::<u32>());
        owner
            .raw(
                "blockdev-add",
                Some(json!({
                    "driver": format.as_str(),
                    "node-name": tnode,
                    "file": { "driver": "file", "filename": path.to_string_lossy() },
                })),
            )
            .await?;
        let job = format!("{tnode}-job");
        let result = async {
            let mut args = json!({
                "job-id": job, "device": node, "target": tnode, "sync": "full",
                "auto-dismiss": false,
            });
            if let Some(r) = rate_kib.filter(|r| *r > 0) {
                args["speed"] = json!(r * 1024);
            }
            owner.raw("blockdev-backup", Some(args)).await?;
            wait_job(owner, &job, log).await
        }
        .await;
        let _ = owner.raw("job-dismiss", Some(json!({ "id": job }))).await;
        let _ = owner
            .raw("blockdev-del", Some(json!({ "node-name": tnode })))
            .await;
        result
    }
}

/// Waits for a QEMU job to conclude; its error, if any, is the result.
pub async fn wait_job(
    owner: &super::owner::OwnerHandle,
    job: &str,
    log: &TaskContext,
) -> Result<(), VmError> {
    let mut last_pct = 0;
    loop {
        let jobs = owner.raw("query-jobs", None).await?;
        let Some(j) = jobs.as_array().and_then(|a| {
            a.iter()
                .find(|j| j.get("id").and_then(|i| i.as_str()) == Some(job))
        }) else {
            return Err(VmError::Refused(format!("QEMU job {job} vanished")));
        };
        let status = j.get("status").and_then(|s| s.as_str()).unwrap_or("");
        let done = j
            .get("current-progress")
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        let total = j
            .get("total-progress")
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        if let Some(pct) = (done * 100).checked_div(total) {
            if pct >= last_pct + 25 {
                last_pct = pct;
                log.log(format!("transferred {done} of {total} bytes ({pct}%)"));
            }
        }
        if status == "concluded" || status == "null" {
            if let Some(err) = j.get("error").and_then(|e| e.as_str()) {
                return Err(VmError::Refused(format!("QEMU job {job} failed: {err}")));
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
