//! VM config files: `DATA/qemu-server/<vmid>.conf`, read with their digest and replaced
//! atomically.
//!
//! In a cluster with shared storage, `SHARED/.hemiron/owner/<vmid>` may name the node a VM
//! belongs to. A node holding a config whose record names another node does not list it:
//! that is how a migration hands a VM over in one instant (the record is replaced by a
//! rename), while both nodes briefly hold its config. Without a record, the node holding
//! the config owns the VM.

use std::path::PathBuf;

use hemiron_pve::config::{self, VmConfig};

use super::VmError;
use crate::fsutil;

/// A config as read from disk.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub conf: VmConfig,
    /// SHA-1 of the raw file, the `digest` clients send back.
    pub digest: String,
}

/// The directory of VM configs.
#[derive(Debug, Clone)]
pub struct ConfigStore {
    dir: PathBuf,
    node: String,
    /// Where ownership records live (on the shared storage), if there is one.
    owners: Option<PathBuf>,
}

impl ConfigStore {
    pub fn new(dir: PathBuf, node: &str, owners: Option<PathBuf>) -> Self {
        Self {
            dir,
            node: node.to_string(),
            owners,
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn path(&self, vmid: u32) -> PathBuf {
        self.dir.join(format!("{vmid}.conf"))
    }

    /// Whether this node has VM `vmid` (a config that no other node's record claims).
    pub fn exists(&self, vmid: u32) -> bool {
        self.path(vmid).exists() && self.is_ours(vmid)
    }

    /// Whether ownership records can be kept (the node has shared storage).
    pub fn has_owner_records(&self) -> bool {
        self.owners.is_some()
    }

    fn record_path(&self, vmid: u32) -> Option<PathBuf> {
        self.owners.as_ref().map(|d| d.join(vmid.to_string()))
    }

    /// The node VM `vmid`'s ownership record names, if it has one.
    pub fn owner_of(&self, vmid: u32) -> Option<String> {
        let raw = std::fs::read_to_string(self.record_path(vmid)?).ok()?;
        let name = raw.trim();
        (!name.is_empty()).then(|| name.to_string())
    }

    fn is_ours(&self, vmid: u32) -> bool {
        self.owner_of(vmid).is_none_or(|n| n == self.node)
    }

    /// Records `node` as VM `vmid`'s owner, replacing the record in one rename.
    pub fn set_owner(&self, vmid: u32, node: &str) -> Result<(), VmError> {
        let Some(path) = self.record_path(vmid) else {
            return Err(VmError::Refused(
                "ownership records need shared storage (--shared-storage)".into(),
            ));
        };
        let write = || -> std::io::Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            fsutil::write_atomic(&path, format!("{node}\n").as_bytes(), 0o644)
        };
        write().map_err(|source| VmError::WriteConfig { vmid, source })
    }

    /// Removes VM `vmid`'s ownership record if it names this node.
    fn clear_owner(&self, vmid: u32) -> Result<(), VmError> {
        let Some(path) = self.record_path(vmid) else {
            return Ok(());
        };
        if self.owner_of(vmid).as_deref() != Some(self.node.as_str()) {
            return Ok(());
        }
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(VmError::WriteConfig { vmid, source }),
        }
    }

    fn all(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| {
                        let name = e.file_name();
                        let name = name.to_str()?;
                        name.strip_suffix(".conf")?.parse().ok()
                    })
                    .collect()
            })
            .unwrap_or_default();
        ids.sort_unstable();
        ids
    }

    /// VMIDs of this node's VMs, sorted.
    pub fn list(&self) -> Vec<u32> {
        let mut ids = self.all();
        ids.retain(|v| self.is_ours(*v));
        ids
    }

    /// Configs held here of VMs another node's record claims: a migration under way to
    /// this node, or what one left behind.
    pub fn foreign(&self) -> Vec<(u32, String)> {
        self.all()
            .into_iter()
            .filter_map(|v| self.owner_of(v).filter(|n| *n != self.node).map(|n| (v, n)))
            .collect()
    }

    /// Loads VM `vmid`'s config if this node owns the VM.
    pub fn load(&self, vmid: u32) -> Result<Loaded, VmError> {
        if !self.is_ours(vmid) {
            return Err(VmError::NoConfig {
                node: self.node.clone(),
                vmid,
            });
        }
        self.load_any(vmid)
    }

    /// Loads the config held here, whoever owns the VM.
    pub fn load_any(&self, vmid: u32) -> Result<Loaded, VmError> {
        let raw = std::fs::read(self.path(vmid)).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                VmError::NoConfig {
                    node: self.node.clone(),
                    vmid,
                }
            } else {
                VmError::ReadConfig { vmid, source }
            }
        })?;
        let text = String::from_utf8_lossy(&raw);
        let conf = config::parse(&text).map_err(|e| VmError::ParseConfig {
            vmid,
            msg: e.to_string(),
        })?;
        Ok(Loaded {
            conf,
            digest: config::digest(&raw),
        })
    }

    fn render(&self, vmid: u32, conf: &VmConfig) -> Result<String, VmError> {
        config::write(conf).map_err(|e| VmError::InvalidConfig {
            vmid,
            msg: e.to_string(),
        })
    }

    /// Replaces the config atomically.
    pub fn write(&self, vmid: u32, conf: &VmConfig) -> Result<(), VmError> {
        let text = self.render(vmid, conf)?;
        fsutil::write_atomic(&self.path(vmid), text.as_bytes(), 0o640)
            .map_err(|source| VmError::WriteConfig { vmid, source })
    }

    /// Creates the config; fails if the VMID is taken (here, or by another node's record).
    pub fn create(&self, vmid: u32, conf: &VmConfig) -> Result<(), VmError> {
        if !self.is_ours(vmid) {
            return Err(VmError::Exists(vmid));
        }
        self.create_any(vmid, conf)
    }

    /// Creates a config whatever the VM's ownership record says (a migration's target).
    pub fn create_any(&self, vmid: u32, conf: &VmConfig) -> Result<(), VmError> {
        let text = self.render(vmid, conf)?;
        fsutil::create_exclusive(&self.path(vmid), text.as_bytes(), 0o640).map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                VmError::Exists(vmid)
            } else {
                VmError::WriteConfig { vmid, source }
            }
        })
    }

    /// Removes a VM's config, and its ownership record first if it names this node (so a
    /// crash in between leaves the VM whole rather than an orphaned record).
    pub fn remove(&self, vmid: u32) -> Result<(), VmError> {
        if self.path(vmid).exists() {
            self.clear_owner(vmid)?;
        }
        self.remove_file(vmid)
    }

    /// Removes the config file held here, leaving any ownership record alone.
    pub fn remove_file(&self, vmid: u32) -> Result<(), VmError> {
        match std::fs::remove_file(self.path(vmid)) {
            Ok(()) => {
                fsutil::sync_dir(&self.dir).map_err(|source| VmError::WriteConfig { vmid, source })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(VmError::WriteConfig { vmid, source }),
        }
    }
}
