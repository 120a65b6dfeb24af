//! VM config files: `DATA/qemu-server/<vmid>.conf`, read with their digest and replaced
//! atomically.

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
}

impl ConfigStore {
    pub fn new(dir: PathBuf, node: &str) -> Self {
        Self {
            dir,
            node: node.to_string(),
        }
    }

    pub fn path(&self, vmid: u32) -> PathBuf {
        self.dir.join(format!("{vmid}.conf"))
    }

    pub fn exists(&self, vmid: u32) -> bool {
        self.path(vmid).exists()
    }

    /// VMIDs with a config, sorted.
    pub fn list(&self) -> Vec<u32> {
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

    pub fn load(&self, vmid: u32) -> Result<Loaded, VmError> {
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

    /// Creates the config; fails if the VMID is taken.
    pub fn create(&self, vmid: u32, conf: &VmConfig) -> Result<(), VmError> {
        let text = self.render(vmid, conf)?;
        fsutil::create_exclusive(&self.path(vmid), text.as_bytes(), 0o640).map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                VmError::Exists(vmid)
            } else {
                VmError::WriteConfig { vmid, source }
            }
        })
    }

    pub fn remove(&self, vmid: u32) -> Result<(), VmError> {
        match std::fs::remove_file(self.path(vmid)) {
            Ok(()) => {
                fsutil::sync_dir(&self.dir).map_err(|source| VmError::WriteConfig { vmid, source })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(VmError::WriteConfig { vmid, source }),
        }
    }
}
