//! Creating and destroying VMs.

use std::collections::BTreeMap;

use hemiron_pve::config::VmConfig;
use hemiron_pve::views::DriveKey;
use tracing::info;

use super::lifecycle::StartOptions;
use super::update::{check_lock, check_request, referenced_volumes, UpdateRequest};
use super::{VmError, VmManager};
use crate::storage::parse_volid;
use crate::tasks::TaskContext;

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Proxmox's default boot order for a new VM: the first disk, CD-ROMs, then NICs.
fn default_boot(props: &BTreeMap<String, String>) -> Option<String> {
    let drives = crate::qemu::cmdline::drives(props);
    let mut order: Vec<String> = Vec::new();
    if let Some((k, _)) = drives
        .iter()
        .find(|(k, v)| !v.contains("media=cdrom") && k.bus != hemiron_pve::views::DriveBus::Efidisk)
    {
        order.push(k.to_string());
    }
    order.extend(
        drives
            .iter()
            .filter(|(_, v)| v.contains("media=cdrom"))
            .map(|(k, _)| k.to_string()),
    );
    order.extend(
        crate::qemu::cmdline::nets(props)
            .into_iter()
            .map(|(i, _)| format!("net{i}")),
    );
    (!order.is_empty()).then(|| format!("order={}", order.join(";")))
}

impl VmManager {
    /// Reserves a VMID by writing a config that only holds `lock: create`, so a second
    /// create of the same VMID fails at once and the VM shows as being created.
    pub fn reserve(&self, vmid: u32, req: &UpdateRequest) -> Result<(), VmError> {
        check_request(req)?;
        let mut conf = VmConfig::default();
        conf.main.props.insert("lock".into(), "create".into());
        self.store.create(vmid, &conf)
    }

    /// The `qmcreate` task: allocates disks, writes the config, optionally starts the VM.
    /// On failure it removes what it made, including the reservation.
    pub async fn create(
        &self,
        vmid: u32,
        req: UpdateRequest,
        start: bool,
        log: &TaskContext,
    ) -> Result<(), VmError> {
        let guard = self.lock(vmid).await?;
        let mut set = req.set;
        let created = match self.materialise(vmid, &mut set, Some(log)).await {
            Ok(c) => c,
            Err(e) => {
                let _ = self.store.remove(vmid);
                return Err(e);
            }
        };
        let mut conf = VmConfig::default();
        if let Some(d) = set.remove("description") {
            conf.main.description = Some(d);
        }
        conf.main.props = set;
        let props = &mut conf.main.props;
        if !props.contains_key("boot") {
            if let Some(b) = default_boot(props) {
                props.insert("boot".into(), b);
            }
        }
        if !props.get("smbios1").is_some_and(|s| s.contains("uuid=")) {
            let uuid = uuid::Uuid::new_v4().to_string();
            let smbios = match props.get("smbios1") {
                Some(s) if !s.is_empty() => format!("{s},uuid={uuid}"),
                _ => format!("uuid={uuid}"),
            };
            props.insert("smbios1".into(), smbios);
        }
        match props.get("vmgenid").map(String::as_str) {
            None | Some("1") => {
                props.insert("vmgenid".into(), uuid::Uuid::new_v4().to_string());
            }
            _ => {}
        }
        props.insert(
            "meta".into(),
            format!("creation-qemu={},ctime={}", self.qemu_version(), unix_now()),
        );
        let result = async {
            if props_has_net0(&conf) {
                self.forwards.ensure(vmid)?;
            }
            self.store.write(vmid, &conf)?;
            if start {
                self.start_locked(vmid, StartOptions::default(), log)
                    .await?;
            }
            Ok::<(), VmError>(())
        }
        .await;
        drop(guard);
        match result {
            Ok(()) => {
                info!(vmid, "VM created");
                Ok(())
            }
            Err(e)
                if start
                    && self.store.exists(vmid)
                    && self
                        .store
                        .load(vmid)
                        .is_ok_and(|l| l.conf.get("lock").is_none()) =>
            {
                // The VM exists; only the start failed, as in Proxmox.
                Err(e)
            }
            Err(e) => {
                for vol in created {
                    if let Ok(v) = parse_volid(&vol) {
                        let _ = self.storage().free(&v);
                    }
                }
                let _ = self.forwards.release(vmid);
                let _ = self.store.remove(vmid);
                Err(e)
            }
        }
    }

    /// QEMU's version for `meta: creation-qemu=`.
    fn qemu_version(&self) -> String {
        self.qemu_version
            .get()
            .cloned()
            .unwrap_or_else(|| "7.2.0".to_string())
    }

    /// Checks done before a destroy task is started.
    pub async fn check_destroy(&self, vmid: u32, skiplock: bool) -> Result<(), VmError> {
        let loaded = self.store.load(vmid)?;
        if loaded.conf.get("protection") == Some("1") {
            return Err(VmError::Protected(vmid));
        }
        check_lock(&loaded.conf, skiplock)?;
        if self.running(vmid).is_some() {
            return Err(VmError::RunningDestroy(vmid));
        }
        let clones = self.linked_clones(&loaded.conf).await?;
        if !clones.is_empty() {
            let list: Vec<String> = clones.iter().map(u32::to_string).collect();
            return Err(VmError::Refused(format!(
                "can't remove template VM {vmid} - linked clones use its base disks: {}",
                list.join(", ")
            )));
        }
        Ok(())
    }

    /// The `qmdestroy` task.
    pub async fn destroy(
        &self,
        vmid: u32,
        skiplock: bool,
        destroy_unreferenced: bool,
        log: &TaskContext,
    ) -> Result<(), VmError> {
        let _guard = self.lock(vmid).await?;
        self.check_destroy(vmid, skiplock).await?;
        let loaded = self.store.load(vmid)?;
        let mut volumes: Vec<String> = referenced_volumes(&loaded.conf)
            .into_iter()
            .filter(|v| {
                // Only this VM's own images are destroyed, never shared ISOs or other VMs'
                // base images.
                parse_volid(v).is_ok_and(|p| {
                    matches!(p.kind(), hemiron_pve::volume::VolumeKind::Image { vmid: owner, .. } if owner == vmid)
                })
            })
            .collect();
        // The cloud-init drive is a CD-ROM, but the VM's own volume.
        if let Some((_, vol)) =
            super::cloudinit::cloudinit_drive(&super::update::effective_props(&loaded.conf))
        {
            if self.storage().existing_path(&vol).is_ok() {
                volumes.push(vol.to_string());
            }
        }
        if destroy_unreferenced {
            for pool in self.storage().pools() {
                let entries = self
                    .storage()
                    .list(&pool.id, Some("images"), Some(vmid))
                    .await?;
                volumes.extend(entries.into_iter().map(|e| e.volid));
            }
        }
        volumes.sort();
        volumes.dedup();
        for vol in &volumes {
            log.log(format!("destroying volume '{vol}'"));
            self.storage().free(&parse_volid(vol)?)?;
        }
        self.store.remove(vmid)?;
        self.forwards.release(vmid)?;
        self.cleanup_runtime(vmid);
        info!(vmid, "VM destroyed");
        Ok(())
    }
}

fn props_has_net0(conf: &VmConfig) -> bool {
    conf.main.props.contains_key("net0")
}

/// Keys of `POST /nodes/{node}/qemu` that steer the call rather than set config.
pub const CREATE_CONTROL_PARAMS: &[&str] = &[
    "node",
    "vmid",
    "start",
    "archive",
    "storage",
    "force",
    "unique",
    "pool",
    "bwlimit",
    "live-restore",
    "ha-managed",
    "import-working-storage",
];

/// Refusals for control parameters this node does not implement (yet).
pub fn check_create_control(params: &hemiron_pve::ValidatedParams) -> Result<(), VmError> {
    let mut errors = BTreeMap::new();
    if params.bool("live-restore") == Some(true) {
        errors.insert(
            "live-restore".to_string(),
            "live restore is not supported by this node; the VM starts once restored".to_string(),
        );
    }
    if params.contains("archive") {
        // A restore takes the archive's config; config keys beside it are not merged.
        for (key, _) in params.iter() {
            if !CREATE_CONTROL_PARAMS.contains(&key) {
                errors.insert(
                    key.to_string(),
                    "not allowed together with 'archive' (the archive's config is restored)"
                        .to_string(),
                );
            }
        }
    }
    for key in ["force", "unique", "live-restore", "bwlimit"] {
        if params.contains(key) && !params.contains("archive") {
            errors.insert(
                key.to_string(),
                "only allowed together with 'archive'".to_string(),
            );
        }
    }
    if params.contains("storage") && !params.contains("archive") {
        errors.insert(
            "storage".to_string(),
            "only allowed together with 'archive'".to_string(),
        );
    }
    if params.contains("pool") {
        errors.insert(
            "pool".to_string(),
            "resource pools are not supported by this node".to_string(),
        );
    }
    if params.bool("ha-managed") == Some(true) {
        errors.insert(
            "ha-managed".to_string(),
            "HA is not supported by this node".to_string(),
        );
    }
    if params.contains("import-working-storage") {
        errors.insert(
            "import-working-storage".to_string(),
            "this node imports directly into the target storage; no working storage is used"
                .to_string(),
        );
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(VmError::Params(errors))
    }
}

/// Drive keys in a set of config props.
pub fn drive_keys(props: &BTreeMap<String, String>) -> Vec<DriveKey> {
    props.keys().filter_map(|k| k.parse().ok()).collect()
}
