//! Config changes: setting and deleting properties, pending changes of running VMs, disk
//! allocation and import, and disk resize.
//!
//! As in Proxmox, a running VM takes changes that need no hardware change at once (name,
//! description, tags, onboot…); everything else waits in the `[PENDING]` section and applies
//! at the next start. A disk that is replaced or removed becomes `unusedN` rather than being
//! destroyed, unless `force` says otherwise.

use std::collections::BTreeMap;

use hemiron_pve::config::{PendingSection, VmConfig};
use hemiron_pve::views::{Drive, DriveKey, NetDevice};
use hemiron_pve::volume::{Allocation, DriveFile};
use tracing::info;

use super::{VmError, VmManager};
use crate::qemu::support::check_property;
use crate::storage::{parse_volid, ImageFormat};
use crate::tasks::TaskContext;

/// Options a running VM takes without a restart (Proxmox's `$fast_plug_option`).
const FAST_PLUG: &[&str] = &[
    "lock",
    "name",
    "onboot",
    "shares",
    "startup",
    "description",
    "protection",
    "vmstatestorage",
    "hookscript",
    "hotplug",
    "tags",
    "migrate_downtime",
    "migrate_speed",
    "autostart",
    "ciuser",
    "cipassword",
    "sshkeys",
    "nameserver",
    "searchdomain",
    "citype",
    "ciupgrade",
];

fn is_fast_plug(key: &str) -> bool {
    FAST_PLUG.contains(&key) || key.starts_with("ipconfig")
}

/// The main section with pending values applied and pending deletions removed: what the
/// VM will look like at its next start (and what `GET config` shows by default).
pub fn effective_props(conf: &VmConfig) -> BTreeMap<String, String> {
    let mut props = conf.main.props.clone();
    if let Some(p) = &conf.pending {
        for key in p.delete.keys() {
            props.remove(key);
        }
        for (k, v) in &p.section.props {
            props.insert(k.clone(), v.clone());
        }
    }
    props
}

/// The volume a drive value uses, if it is a storage volume and not a CD-ROM image.
pub fn drive_volume(key: &str, value: &str) -> Option<String> {
    let dk: DriveKey = key.parse().ok()?;
    let d = Drive::parse(dk, value, false).ok()?;
    if d.is_cdrom() {
        return None;
    }
    match d.drive_file()? {
        DriveFile::Volume(v) => Some(v.to_string()),
        _ => None,
    }
}

/// The volume an `unusedN` value names.
fn unused_volume(value: &str) -> Option<String> {
    let v = value.split(',').next()?;
    let v = v
        .strip_prefix("file=")
        .or_else(|| v.strip_prefix("volume="))
        .unwrap_or(v);
    Some(v.to_string())
}

fn is_drive_key(key: &str) -> bool {
    key.parse::<DriveKey>().is_ok()
}

/// Every volume the config references (drives, unused, pending, snapshots).
pub fn referenced_volumes(conf: &VmConfig) -> Vec<String> {
    let mut out = Vec::new();
    let mut scan = |props: &BTreeMap<String, String>| {
        for (k, v) in props {
            if k.starts_with("unused") {
                out.extend(unused_volume(v));
            } else if let Some(vol) = drive_volume(k, v) {
                out.push(vol);
            }
        }
    };
    scan(&conf.main.props);
    if let Some(p) = &conf.pending {
        scan(&p.section.props);
    }
    for s in conf.snapshots.values() {
        scan(&s.props);
    }
    // A snapshot's saved RAM lives in a volume of its own.
    out.extend(
        conf.snapshots
            .values()
            .filter_map(|s| s.props.get("vmstate").cloned()),
    );
    out.sort();
    out.dedup();
    out
}

/// Records a volume as `unusedN` unless something still references it.
fn add_unused(conf: &mut VmConfig, volid: &str) {
    if referenced_volumes(conf).iter().any(|v| v == volid) {
        return;
    }
    let n = (0..256)
        .find(|i| !conf.main.props.contains_key(&format!("unused{i}")))
        .unwrap_or(255);
    conf.main
        .props
        .insert(format!("unused{n}"), volid.to_string());
}

/// Removes `key` from the main section as Proxmox does: a disk becomes `unusedN` (or, with
/// `force`, is returned for destruction); an `unusedN` entry's volume is destroyed.
fn remove_key(conf: &mut VmConfig, key: &str, force: bool, to_free: &mut Vec<String>) {
    if key == "description" {
        conf.main.description = None;
        return;
    }
    let Some(old) = conf.main.props.remove(key) else {
        return;
    };
    if key.starts_with("unused") {
        if let Some(vol) = unused_volume(&old) {
            if !referenced_volumes(conf).contains(&vol) {
                to_free.push(vol);
            }
        }
    } else if let Some(vol) = drive_volume(key, &old) {
        if force {
            if !referenced_volumes(conf).contains(&vol) {
                to_free.push(vol);
            }
        } else {
            add_unused(conf, &vol);
        }
    }
}

/// Sets `key` in the main section; a replaced disk volume becomes `unusedN`.
fn set_key(conf: &mut VmConfig, key: &str, value: String) {
    if key == "description" {
        conf.main.description = Some(value);
        return;
    }
    let old = conf.main.props.insert(key.to_string(), value.clone());
    if let Some(old) = old {
        if let Some(old_vol) = drive_volume(key, &old) {
            if drive_volume(key, &value).as_deref() != Some(old_vol.as_str()) {
                add_unused(conf, &old_vol);
            }
        }
    }
}

/// Moves the pending section into the main one; returns volumes to destroy.
pub fn apply_pending(conf: &mut VmConfig) -> Vec<String> {
    let mut to_free = Vec::new();
    let Some(pending) = conf.pending.take() else {
        return to_free;
    };
    for (key, force) in &pending.delete {
        remove_key(conf, key, *force, &mut to_free);
    }
    if let Some(d) = pending.section.description {
        conf.main.description = Some(d);
    }
    for (k, v) in pending.section.props {
        set_key(conf, &k, v);
    }
    to_free
}

/// A config change as the API asks for it.
#[derive(Debug, Default, Clone)]
pub struct UpdateRequest {
    /// Config keys to set, with their values as validated strings.
    pub set: BTreeMap<String, String>,
    pub delete: Vec<String>,
    pub revert: Vec<String>,
    pub digest: Option<String>,
    pub force: bool,
    pub skiplock: bool,
}

/// Checks a request's keys against each other and against what this node supports.
pub fn check_request(req: &UpdateRequest) -> Result<(), VmError> {
    let mut errors = BTreeMap::new();
    for key in &req.delete {
        if req.set.contains_key(key) {
            errors.insert(
                "delete".to_string(),
                format!("you can't use '-{key}' and -delete {key}' at the same time"),
            );
        }
        if req.revert.contains(key) {
            errors.insert(
                "revert".to_string(),
                format!("you can't use '-delete {key}' and '-revert {key}' at the same time"),
            );
        }
    }
    for key in &req.revert {
        if req.set.contains_key(key) {
            errors.insert(
                "revert".to_string(),
                format!("you can't use '-{key}' and '-revert {key}' at the same time"),
            );
        }
    }
    for (k, v) in &req.set {
        if let Err(msg) = check_property(k, v) {
            errors.insert(k.clone(), msg);
        }
    }
    if req.force && req.delete.is_empty() {
        errors.insert(
            "force".into(),
            "force is only allowed together with delete".into(),
        );
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(VmError::Params(errors))
    }
}

/// Checks that the config's lock allows an operation.
pub fn check_lock(conf: &VmConfig, skiplock: bool) -> Result<(), VmError> {
    match conf.get("lock") {
        Some(lock) if !skiplock => Err(VmError::Locked(lock.to_string())),
        _ => Ok(()),
    }
}

impl VmManager {
    /// Turns allocation requests (`local:4`, `local:0,import-from=…`) in drive values into
    /// new volumes, and gives new NICs a MAC address. Returns the volumes it created, so a
    /// failure later can remove them.
    pub async fn materialise(
        &self,
        vmid: u32,
        set: &mut BTreeMap<String, String>,
        log: Option<&TaskContext>,
    ) -> Result<Vec<String>, VmError> {
        let mut created = Vec::new();
        let result = self.materialise_inner(vmid, set, log, &mut created).await;
        if result.is_err() {
            for vol in &created {
                if let Ok(v) = parse_volid(vol) {
                    let _ = self.storage().free(&v);
                }
            }
        }
        result.map(|()| created)
    }

    async fn materialise_inner(
        &self,
        vmid: u32,
        set: &mut BTreeMap<String, String>,
        log: Option<&TaskContext>,
        created: &mut Vec<String>,
    ) -> Result<(), VmError> {
        let keys: Vec<String> = set.keys().cloned().collect();
        for key in keys {
            let Some(value) = set.get(&key).cloned() else {
                continue;
            };
            if key == "cipassword" {
                set.insert(key.clone(), super::cloudinit::hash_password(&value)?);
                continue;
            }
            if key.starts_with("net") && !key.starts_with("netin") {
                let mut net =
                    NetDevice::parse(&value).map_err(|e| VmError::param(&key, e.to_string()))?;
                if net.macaddr.is_none() {
                    net.ensure_mac(Some(hemiron_pve::mac::PROXMOX_MAC_PREFIX))
                        .map_err(|e| VmError::param(&key, e.to_string()))?;
                }
                set.insert(key.clone(), net.to_string());
                continue;
            }
            let Ok(dk) = key.parse::<DriveKey>() else {
                continue;
            };
            let mut drive =
                Drive::parse(dk, &value, true).map_err(|e| VmError::param(&key, e.to_string()))?;
            if let Some(Allocation::Cloudinit { storage }) = drive.allocation() {
                // The drive's content is generated at each start (see `cloudinit`).
                self.storage().pool(&storage)?;
                set.insert(
                    key.clone(),
                    format!("{storage}:{vmid}/vm-{vmid}-cloudinit.qcow2,media=cdrom"),
                );
                continue;
            }
            let Some(Allocation::Disk { storage, .. }) = drive.allocation() else {
                if drive.import_from.is_some() {
                    return Err(VmError::param(
                        &key,
                        "'import-from' requires special syntax - use <storage ID>:0,import-from=<source>",
                    ));
                }
                // An existing volume: it must exist and belong to this VM (or be an ISO).
                if let Some(DriveFile::Volume(v)) = drive.drive_file() {
                    let vol = parse_volid(&v.to_string())?;
                    if !drive.is_cloudinit() {
                        self.storage().existing_path(&vol)?;
                    }
                    if let Some(owner) = self.foreign_owner(vmid, &vol) {
                        return Err(VmError::param(
                            &key,
                            format!("volume '{vol}' belongs to VM {owner} on another node"),
                        ));
                    }
                }
                set.insert(key.clone(), drive.to_string());
                continue;
            };
            let size = drive.allocation().and_then(|a| a.size_bytes()).unwrap_or(0);
            let storage = storage.ok_or_else(|| {
                VmError::param(&key, "no storage given for the new disk (use STORAGE:SIZE)")
            })?;
            let format = ImageFormat::parse(drive.format.as_deref().unwrap_or("qcow2"))?;
            let volid = match drive.import_from.take() {
                Some(source) => {
                    let path = if source.starts_with('/') {
                        std::path::PathBuf::from(&source)
                    } else {
                        let v = parse_volid(&source)?;
                        self.storage().existing_path(&v)?
                    };
                    if let Some(l) = log {
                        l.log(format!("importing disk '{source}' to VM {vmid} ..."));
                    }
                    let v = self.storage().import(&storage, vmid, &path, format).await?;
                    // A given size grows the imported disk (never shrinks it).
                    let actual = self.storage().volume_size(&v).await?;
                    if size > actual {
                        self.storage().resize_offline(&v, size).await?;
                    }
                    v
                }
                None => {
                    if size == 0 {
                        return Err(VmError::param(&key, "disk size must be greater than 0"));
                    }
                    self.storage().alloc(&storage, vmid, size, format).await?
                }
            };
            created.push(volid.to_string());
            let actual = self.storage().volume_size(&volid).await?;
            if let Some(l) = log {
                l.log(format!(
                    "{key}: successfully created disk '{volid},size={}'",
                    hemiron_pve::size::format_size(actual)
                ));
            }
            info!(vmid, %volid, "created disk");
            drive.file = volid.to_string();
            drive.format = None;
            drive.size = Some(actual);
            set.insert(key.clone(), drive.to_string());
        }
        Ok(())
    }

    /// Applies a config change (`PUT`/`POST config`) under the VM's lock.
    pub async fn update_config(
        &self,
        vmid: u32,
        mut req: UpdateRequest,
        log: Option<&TaskContext>,
    ) -> Result<(), VmError> {
        check_request(&req)?;
        let _guard = self.lock(vmid).await?;
        let loaded = self.store.load(vmid)?;
        if let Some(d) = &req.digest {
            if *d != loaded.digest {
                return Err(VmError::DigestMismatch);
            }
        }
        // Removing the lock itself is how a stuck lock is cleared (with skiplock).
        check_lock(&loaded.conf, req.skiplock)?;
        let mut conf = loaded.conf;
        if conf.get("protection") == Some("1") {
            for key in &req.delete {
                if is_drive_key(key) || key.starts_with("unused") {
                    return Err(VmError::Refused(format!(
                        "can't remove drive '{key}' - protection mode enabled"
                    )));
                }
            }
        }
        let created = self.materialise(vmid, &mut req.set, log).await?;
        let running = self.running(vmid);
        let mut to_free = Vec::new();
        let mut live_links: Vec<(String, bool)> = Vec::new();
        if let Some(run) = &running {
            let pending = conf.pending.get_or_insert_with(PendingSection::default);
            for key in &req.revert {
                pending.section.props.remove(key);
                pending.delete.remove(key);
                if key == "description" {
                    pending.section.description = None;
                }
            }
            for key in &req.delete {
                if is_fast_plug(key) {
                    remove_key(&mut conf, key, req.force, &mut to_free);
                    if let Some(p) = conf.pending.as_mut() {
                        p.section.props.remove(key);
                    }
                } else if let Some(p) = conf.pending.as_mut() {
                    p.section.props.remove(key);
                    p.delete.insert(key.clone(), req.force);
                }
            }
            for (key, value) in &req.set {
                // A NIC whose only change is its link state is switched live.
                if let (Some(old), true) = (conf.main.props.get(key), key.starts_with("net")) {
                    if let (Ok(mut a), Ok(b)) = (NetDevice::parse(old), NetDevice::parse(value)) {
                        let wanted = b.link_down;
                        a.link_down = wanted;
                        if a == b {
                            live_links.push((key.clone(), wanted != Some(true)));
                            set_key(&mut conf, key, value.clone());
                            continue;
                        }
                    }
                }
                if is_fast_plug(key) {
                    set_key(&mut conf, key, value.clone());
                    if let Some(p) = conf.pending.as_mut() {
                        p.section.props.remove(key);
                        p.delete.remove(key);
                    }
                } else if let Some(p) = conf.pending.as_mut() {
                    p.delete.remove(key);
                    if key == "description" {
                        p.section.description = Some(value.clone());
                    } else {
                        p.section.props.insert(key.clone(), value.clone());
                    }
                }
            }
            if conf.pending.as_ref().is_some_and(PendingSection::is_empty) {
                conf.pending = None;
            }
            for (dev, up) in &live_links {
                run.owner.set_link(dev, *up).await?;
            }
            to_free.extend(
                self.hotplug_pending(vmid, &mut conf, &run.owner, log)
                    .await?,
            );
        } else {
            for key in &req.revert {
                if let Some(p) = conf.pending.as_mut() {
                    p.section.props.remove(key);
                    p.delete.remove(key);
                }
            }
            for key in &req.delete {
                remove_key(&mut conf, key, req.force, &mut to_free);
            }
            for (key, value) in &req.set {
                set_key(&mut conf, key, value.clone());
            }
            // A stopped VM has nothing to wait for: fold in what was pending.
            to_free.extend(apply_pending(&mut conf));
        }
        if let Err(e) = self.store.write(vmid, &conf) {
            for vol in &created {
                if let Ok(v) = parse_volid(vol) {
                    let _ = self.storage().free(&v);
                }
            }
            return Err(e);
        }
        self.free_unneeded(vmid, to_free, log)?;
        Ok(())
    }

    /// `PUT .../resize`: grows a disk, live through QMP when the VM runs.
    pub async fn resize(
        &self,
        vmid: u32,
        disk: &str,
        size: &str,
        digest: Option<&str>,
        skiplock: bool,
        log: &TaskContext,
    ) -> Result<(), VmError> {
        let _guard = self.lock(vmid).await?;
        let loaded = self.store.load(vmid)?;
        if digest.is_some_and(|d| d != loaded.digest) {
            return Err(VmError::Refused(
                "detected modified configuration - file changed by other user? Try again.".into(),
            ));
        }
        check_lock(&loaded.conf, skiplock)?;
        let mut conf = loaded.conf;
        let key: DriveKey = disk
            .parse()
            .map_err(|_| VmError::param("disk", format!("invalid disk '{disk}'")))?;
        let value = conf
            .main
            .props
            .get(disk)
            .cloned()
            .ok_or_else(|| VmError::Refused(format!("disk '{disk}' does not exist")))?;
        let mut drive = Drive::parse(key, &value, false).map_err(|e| VmError::InvalidConfig {
            vmid,
            msg: e.to_string(),
        })?;
        if drive.is_cdrom() {
            return Err(VmError::Refused(format!(
                "you can't resize a cdrom ({disk})"
            )));
        }
        let volid = match drive.drive_file() {
            Some(DriveFile::Volume(v)) => parse_volid(&v.to_string())?,
            _ => {
                return Err(VmError::Refused(format!(
                    "disk '{disk}' is not a storage volume"
                )))
            }
        };
        self.check_may_modify(vmid, &volid)?;
        let spec: hemiron_pve::size::ResizeSpec = size
            .parse()
            .map_err(|e: hemiron_pve::size::ParseResizeError| VmError::param("size", e.0))?;
        let current = self.storage().volume_size(&volid).await?;
        let target = spec.target(current);
        if target < current {
            return Err(VmError::Refused("shrinking disks is not supported".into()));
        }
        log.log(format!(
            "resizing {disk} ({volid}) from {} to {}",
            hemiron_pve::size::format_size(current),
            hemiron_pve::size::format_size(target)
        ));
        if target != current {
            match self.running(vmid) {
                Some(run) => {
                    let throttled = drive.throttle != Default::default();
                    let node = crate::qemu::devices::format_node(&key, throttled);
                    run.owner.block_resize(&node, target).await?;
                }
                None => self.storage().resize_offline(&volid, target).await?,
            }
        }
        drive.size = Some(target);
        conf.main.props.insert(disk.to_string(), drive.to_string());
        self.store.write(vmid, &conf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(props: &[(&str, &str)]) -> VmConfig {
        let mut c = VmConfig::default();
        for (k, v) in props {
            c.main.props.insert(k.to_string(), v.to_string());
        }
        c
    }

    #[test]
    fn replaced_and_deleted_disks_become_unused() {
        let mut c = conf(&[("scsi0", "local:100/vm-100-disk-0.qcow2,size=1G")]);
        set_key(
            &mut c,
            "scsi0",
            "local:100/vm-100-disk-1.qcow2,size=2G".into(),
        );
        assert_eq!(c.get("unused0"), Some("local:100/vm-100-disk-0.qcow2"));
        let mut freed = Vec::new();
        remove_key(&mut c, "scsi0", false, &mut freed);
        assert_eq!(c.get("unused1"), Some("local:100/vm-100-disk-1.qcow2"));
        assert!(freed.is_empty());
        remove_key(&mut c, "unused0", false, &mut freed);
        assert_eq!(freed, vec!["local:100/vm-100-disk-0.qcow2".to_string()]);
    }

    #[test]
    fn pending_applies_in_order() {
        let mut c = conf(&[("memory", "128"), ("name", "a")]);
        let mut p = PendingSection::default();
        p.section.props.insert("memory".into(), "256".into());
        p.delete.insert("name".into(), false);
        c.pending = Some(p);
        let eff = effective_props(&c);
        assert_eq!(eff.get("memory").map(String::as_str), Some("256"));
        assert!(!eff.contains_key("name"));
        assert!(apply_pending(&mut c).is_empty());
        assert_eq!(c.get("memory"), Some("256"));
        assert_eq!(c.get("name"), None);
        assert!(c.pending.is_none());
    }

    #[test]
    fn conflicting_keys_are_refused() {
        let mut req = UpdateRequest::default();
        req.set.insert("name".into(), "x".into());
        req.delete.push("name".into());
        assert!(matches!(check_request(&req), Err(VmError::Params(_))));
    }
}
