//! Loopback ports forwarded to guest ports.
//!
//! Each VM with a NIC gets two free `127.0.0.1` ports at create time, forwarded by QEMU's
//! user-mode network to the guest's ports 80 and 22. They are recorded in
//! `DATA/forwards.json` so that they stay the same across stop/start, reboots and agent
//! restarts, and are freed when the VM is deleted.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::fsutil;

/// Guest ports that get a loopback forward.
pub const GUEST_PORTS: [u16; 2] = [80, 22];

/// Failure to allocate or persist forwards.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no free loopback port")]
    NoFreePort(#[source] std::io::Error),
    #[error("failed to write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("forward table {path} is corrupt")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Guest port → host port, for one VM.
pub type VmForwards = BTreeMap<u16, u16>;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Table {
    #[serde(default)]
    vms: BTreeMap<u32, VmForwards>,
}

/// The node's forward table.
#[derive(Debug)]
pub struct Forwards {
    path: PathBuf,
    table: Mutex<Table>,
}

impl Forwards {
    pub fn open(path: PathBuf) -> Result<Self, ForwardError> {
        let table = match std::fs::read(&path) {
            Ok(raw) => serde_json::from_slice(&raw).map_err(|source| ForwardError::Corrupt {
                path: path.clone(),
                source,
            })?,
            Err(_) => Table::default(),
        };
        Ok(Self {
            path,
            table: Mutex::new(table),
        })
    }

    fn save(&self, table: &Table) -> Result<(), ForwardError> {
        let json = serde_json::to_vec_pretty(table).map_err(|source| ForwardError::Corrupt {
            path: self.path.clone(),
            source,
        })?;
        fsutil::write_atomic(&self.path, &json, 0o644).map_err(|source| ForwardError::Write {
            path: self.path.clone(),
            source,
        })
    }

    /// The forwards of a VM, if it has any.
    pub fn get(&self, vmid: u32) -> Option<VmForwards> {
        let table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        table.vms.get(&vmid).cloned()
    }

    /// Returns the VM's forwards, allocating free ports first if it has none.
    pub fn ensure(&self, vmid: u32) -> Result<VmForwards, ForwardError> {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = table.vms.get(&vmid) {
            return Ok(f.clone());
        }
        let taken: Vec<u16> = table
            .vms
            .values()
            .flat_map(|f| f.values().copied())
            .collect();
        let mut fresh = VmForwards::new();
        for guest in GUEST_PORTS {
            let port = free_port(&taken, &fresh)?;
            fresh.insert(guest, port);
        }
        table.vms.insert(vmid, fresh.clone());
        self.save(&table)?;
        Ok(fresh)
    }

    /// Records the ports a VM brings along (an incoming migration keeps the guest's
    /// forwards); refused if another VM of this node has one of them.
    pub fn adopt(&self, vmid: u32, ports: &VmForwards) -> Result<(), ForwardError> {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let clash = table
            .vms
            .iter()
            .filter(|(v, _)| **v != vmid)
            .flat_map(|(_, f)| f.values())
            .any(|p| ports.values().any(|q| q == p));
        if clash {
            return Err(ForwardError::NoFreePort(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "a forwarded port of the VM is another VM's on this node",
            )));
        }
        table.vms.insert(vmid, ports.clone());
        self.save(&table)
    }

    /// Frees a VM's ports.
    pub fn release(&self, vmid: u32) -> Result<(), ForwardError> {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if table.vms.remove(&vmid).is_some() {
            self.save(&table)?;
        }
        Ok(())
    }
}

/// A loopback port the kernel considers free and no other VM has reserved.
fn free_port(taken: &[u16], fresh: &VmForwards) -> Result<u16, ForwardError> {
    for _ in 0..64 {
        let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
            .map_err(ForwardError::NoFreePort)?;
        let port = listener
            .local_addr()
            .map_err(ForwardError::NoFreePort)?
            .port();
        if !taken.contains(&port) && !fresh.values().any(|p| *p == port) {
            return Ok(port);
        }
    }
    Err(ForwardError::NoFreePort(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        "every port tried is reserved",
    )))
}

/// The `hemiron-forwards` field: `{"80": "127.0.0.1:P", "22": "127.0.0.1:Q"}`.
pub fn to_json(f: &VmForwards) -> serde_json::Value {
    let map: serde_json::Map<String, serde_json::Value> = f
        .iter()
        .map(|(g, h)| {
            (
                g.to_string(),
                serde_json::Value::String(format!("127.0.0.1:{h}")),
            )
        })
        .collect();
    serde_json::Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_kept_and_released() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("forwards.json");
        let f = Forwards::open(path.clone()).unwrap();
        let a = f.ensure(100).unwrap();
        assert_eq!(a.len(), 2);
        assert_ne!(a[&80], a[&22]);
        assert_eq!(f.ensure(100).unwrap(), a);
        let b = f.ensure(101).unwrap();
        assert!(b.values().all(|p| !a.values().any(|q| q == p)));
        let reopened = Forwards::open(path).unwrap();
        assert_eq!(reopened.get(100), Some(a));
        reopened.release(100).unwrap();
        assert_eq!(reopened.get(100), None);
        assert_eq!(
            to_json(&b)["80"],
            serde_json::Value::String(format!("127.0.0.1:{}", b[&80]))
        );
    }
}
