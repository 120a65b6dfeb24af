//! The VMs of a node: their configs, their QEMU processes and the owners that drive them.
//!
//! Operations on one VM are serialised by a per-VM lock, which a writer waits for up to
//! 10 s before failing as Proxmox does. The config file is the VM's source of truth; the
//! running state is the QEMU process, which outlives the agent and is re-adopted on start.

pub mod archive;
pub mod backup;
pub mod bridge;
pub mod cloudinit;
pub mod create;
pub mod error;
pub mod forwards;
pub mod hotplug;
pub mod lifecycle;
pub mod migrate;
pub mod netstats;
pub mod owner;
pub mod snapshot;
pub mod status;
pub mod store;
pub mod template;
pub mod update;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::OwnedMutexGuard;
use tracing::{info, warn};

pub use error::VmError;
use forwards::Forwards;
use owner::OwnerHandle;
use store::ConfigStore;

use crate::paths::DataDir;
use crate::qemu::accel::Accel;
use crate::qemu::cmdline;
use crate::qemu::process;
use crate::storage::Storage;

/// How long a writer waits for a VM's lock, as Proxmox's config lock.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// A running VM as the agent tracks it.
#[derive(Debug, Clone)]
pub struct Running {
    pub owner: OwnerHandle,
    /// The machine type it runs with (`pc-i440fx-7.2`).
    pub machine: String,
    /// QEMU's version, `major.minor.micro`.
    pub qemu_version: String,
}

#[derive(Debug, Default)]
struct Slot {
    op: Arc<tokio::sync::Mutex<()>>,
    running: Mutex<Option<Running>>,
}

/// Versioned machine types the aliases resolve to on this QEMU.
#[derive(Debug, Clone)]
pub struct MachineDefaults {
    pub pc: String,
    pub q35: String,
}

/// The node's VMs.
#[derive(Debug)]
pub struct VmManager {
    pub node: String,
    pub data: DataDir,
    pub store: ConfigStore,
    storage: Storage,
    pub forwards: Forwards,
    pub accel: Accel,
    pub machines: MachineDefaults,
    slots: Mutex<HashMap<u32, Arc<Slot>>>,
    cpu_samples: Mutex<HashMap<u32, status::CpuSample>>,
    me: Weak<VmManager>,
    /// Starts a VM as a task; set by the node once its task registry exists (used to
    /// restart crashed VMs that have `autostart`).
    pub autostart: std::sync::OnceLock<Restarter>,
    /// QEMU's version, learnt from the first VM that runs.
    pub qemu_version: std::sync::OnceLock<String>,
    /// Migrations coming to this node.
    incoming: migrate::IncomingTable,
}

/// A callback that starts a VM as a task.
pub struct Restarter(pub Box<dyn Fn(u32) + Send + Sync>);

impl std::fmt::Debug for Restarter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Restarter")
    }
}

impl std::ops::Deref for Restarter {
    type Target = dyn Fn(u32) + Send + Sync;
    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl VmManager {
    pub fn new(
        node: &str,
        data: DataDir,
        storage: Storage,
        forwards: Forwards,
        accel: Accel,
        machines: MachineDefaults,
    ) -> Arc<Self> {
        let owners = storage
            .pool("shared")
            .ok()
            .map(|p| p.path.join(".hemiron").join("owner"));
        Arc::new_cyclic(|me| VmManager {
            node: node.to_string(),
            store: ConfigStore::new(data.config_dir(), node, owners),
            data,
            storage,
            forwards,
            accel,
            machines,
            slots: Mutex::new(HashMap::new()),
            cpu_samples: Mutex::new(HashMap::new()),
            me: me.clone(),
            autostart: std::sync::OnceLock::new(),
            qemu_version: std::sync::OnceLock::new(),
            incoming: migrate::IncomingTable::default(),
        })
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    pub fn run_dir(&self) -> PathBuf {
        self.data.run_dir()
    }

    fn slot(&self, vmid: u32) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry(vmid).or_default().clone()
    }

    /// Takes the VM's operation lock, waiting up to [`LOCK_TIMEOUT`].
    pub async fn lock(&self, vmid: u32) -> Result<OwnedMutexGuard<()>, VmError> {
        let op = self.slot(vmid).op.clone();
        tokio::time::timeout(LOCK_TIMEOUT, op.lock_owned())
            .await
            .map_err(|_| VmError::LockTimeout(vmid))
    }

    pub fn exists(&self, vmid: u32) -> bool {
        self.store.exists(vmid)
    }

    /// The VM on another node that a volume belongs to, if it is on shared storage and is
    /// not VM `vmid`'s or another VM's of this node. VMIDs are unique across a cluster,
    /// so such a volume is another node's VM's.
    pub fn foreign_owner(&self, vmid: u32, volid: &crate::storage::VolumeId) -> Option<u32> {
        let shared = self.storage.pool(&volid.storage).is_ok_and(|p| p.shared);
        match volid.kind() {
            hemiron_pve::volume::VolumeKind::Image { vmid: owner, .. }
                if shared && owner != vmid && !self.store.exists(owner) =>
            {
                Some(owner)
            }
            _ => None,
        }
    }

    /// Refuses to change (resize, snapshot) a shared volume that belongs to a VM on another
    /// node: only that node may.
    pub fn check_may_modify(
        &self,
        vmid: u32,
        volid: &crate::storage::VolumeId,
    ) -> Result<(), VmError> {
        match self.foreign_owner(vmid, volid) {
            Some(owner) => Err(VmError::Refused(format!(
                "volume '{volid}' on shared storage belongs to VM {owner} on another node; only that node may change it"
            ))),
            None => Ok(()),
        }
    }

    /// Deletes volumes a config no longer needs, leaving in place (and logging) any that
    /// belong to a VM on another node.
    pub fn free_unneeded(
        &self,
        vmid: u32,
        volumes: Vec<String>,
        log: Option<&crate::tasks::TaskContext>,
    ) -> Result<(), VmError> {
        for vol in volumes {
            let Ok(v) = crate::storage::parse_volid(&vol) else {
                continue;
            };
            if let Some(owner) = self.foreign_owner(vmid, &v) {
                let msg =
                    format!("volume '{vol}' belongs to VM {owner} on another node; left in place");
                warn!(vmid, "{msg}");
                if let Some(l) = log {
                    l.log(msg);
                }
                continue;
            }
            if let Some(l) = log {
                l.log(format!("removing volume '{vol}'"));
            }
            self.storage.free(&v)?;
        }
        Ok(())
    }

    pub fn vmids(&self) -> Vec<u32> {
        self.store.list()
    }

    /// The running state of a VM, if its QEMU is alive.
    pub fn running(&self, vmid: u32) -> Option<Running> {
        let slot = self.slot(vmid);
        let running = slot.running.lock().unwrap_or_else(|p| p.into_inner());
        running.clone().filter(|r| r.owner.is_alive())
    }

    fn set_running(&self, vmid: u32, r: Option<Running>) {
        let slot = self.slot(vmid);
        *slot.running.lock().unwrap_or_else(|p| p.into_inner()) = r;
    }

    /// The QEMU command line a start would run now (pending changes applied).
    pub fn command_for(
        &self,
        vmid: u32,
        conf: &hemiron_pve::config::VmConfig,
    ) -> Result<cmdline::QemuCommand, VmError> {
        let props = update::effective_props(conf);
        let forwards = if user_net0(&props) {
            Some(self.forwards.ensure(vmid)?)
        } else {
            None
        };
        self.command_with(vmid, conf, forwards.as_ref())
    }

    /// The QEMU command line of a config, with the given port forwards on `net0`.
    pub fn command_with(
        &self,
        vmid: u32,
        conf: &hemiron_pve::config::VmConfig,
        forwards: Option<&forwards::VmForwards>,
    ) -> Result<cmdline::QemuCommand, VmError> {
        let props = update::effective_props(conf);
        let run_dir = self.run_dir();
        let qemu = process::qemu_binary();
        let ctx = cmdline::BuildContext {
            vmid,
            run_dir: &run_dir,
            accel: self.accel,
            storage: &self.storage,
            forwards,
            default_machine: &self.machines.pc,
            default_q35: &self.machines.q35,
            qemu_binary: &qemu,
        };
        Ok(cmdline::build(&props, &ctx)?)
    }

    /// Connects to a started or surviving QEMU and starts its owner.
    async fn attach(&self, vmid: u32, pid: u32) -> Result<Running, VmError> {
        let qmp = cmdline::qmp_socket(&self.run_dir(), vmid);
        let me = self.me.clone();
        let hook: owner::ExitHook = Box::new(move |info| {
            if let Some(mgr) = me.upgrade() {
                mgr.on_exit(vmid, pid, info);
            }
        });
        let owner = owner::adopt(vmid, pid, &qmp, hook).await?;
        let qemu_version = owner
            .raw("query-version", None)
            .await
            .ok()
            .and_then(|v| {
                let q = v.get("qemu")?;
                Some(format!(
                    "{}.{}.{}",
                    q.get("major")?.as_u64()?,
                    q.get("minor")?.as_u64()?,
                    q.get("micro")?.as_u64()?
                ))
            })
            .unwrap_or_default();
        // The machine object's QOM type names the versioned machine: `pc-i440fx-7.2-machine`.
        let machine = owner
            .raw(
                "qom-get",
                Some(serde_json::json!({ "path": "/machine", "property": "type" })),
            )
            .await
            .ok()
            .and_then(|v| {
                v.as_str()
                    .map(|s| s.trim_end_matches("-machine").to_string())
            })
            .unwrap_or_default();
        if !qemu_version.is_empty() {
            let _ = self.qemu_version.set(qemu_version.clone());
        }
        let running = Running {
            owner,
            machine,
            qemu_version,
        };
        self.set_running(vmid, Some(running.clone()));
        Ok(running)
    }

    /// Called by a VM's owner when its QEMU is gone, whatever the reason.
    fn on_exit(&self, vmid: u32, pid: u32, info: owner::RunInfo) {
        self.set_running(vmid, None);
        self.cleanup_runtime(vmid);
        self.cpu_samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&vmid);
        info!(vmid, pid, reason = ?info.shutdown_reason, "VM stopped");
        if let Some(mgr) = self.me.upgrade() {
            tokio::spawn(async move { mgr.after_exit(vmid, info).await });
        }
    }

    /// Removes the runtime files of a stopped VM.
    fn cleanup_runtime(&self, vmid: u32) {
        let run = self.run_dir();
        let mut files = vec![
            cmdline::pid_file(&run, vmid),
            cmdline::qmp_socket(&run, vmid),
            cmdline::vnc_socket(&run, vmid),
            cmdline::qga_socket(&run, vmid),
        ];
        for n in 0..4 {
            files.push(cmdline::serial_socket(&run, vmid, n));
        }
        if let Ok(rd) = std::fs::read_dir(&run) {
            let prefix = format!("{vmid}-");
            for e in rd.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if name.starts_with(&prefix)
                    && (name.ends_with(".snapshot.qcow2")
                        || name.ends_with(".pcap")
                        || name.ends_with(".count"))
                {
                    files.push(e.path());
                }
            }
        }
        for f in files {
            if let Err(e) = std::fs::remove_file(&f) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    warn!(vmid, file = %f.display(), error = %e, "failed to remove runtime file");
                }
            }
        }
    }

    /// Whether `pid` is this VM's QEMU: alive and started with this VM's QMP socket.
    fn is_vm_process(&self, vmid: u32, pid: u32) -> bool {
        let marker = format!(
            "socket,id=qmp,path={},server=on,wait=off",
            cmdline::qmp_socket(&self.run_dir(), vmid).display()
        );
        process::is_our_process(pid, &marker)
    }

    /// A QEMU of this VM that the agent does not control (its QMP connection failed): a
    /// start must not run a second one on the same disks.
    pub fn stray_qemu(&self, vmid: u32) -> Option<u32> {
        let pid = process::read_pidfile(&cmdline::pid_file(&self.run_dir(), vmid))?;
        self.is_vm_process(vmid, pid).then_some(pid)
    }

    /// Re-adopts VMs whose QEMU survived an agent restart; cleans up after dead ones.
    pub async fn adopt_all(&self) {
        self.clean_foreign().await;
        let run = self.run_dir();
        for vmid in self.store.list() {
            let pidfile = cmdline::pid_file(&run, vmid);
            let Some(pid) = process::read_pidfile(&pidfile) else {
                self.cleanup_runtime(vmid);
                continue;
            };
            if !self.is_vm_process(vmid, pid) {
                info!(vmid, pid, "QEMU of VM is gone; cleaning up");
                self.cleanup_runtime(vmid);
                continue;
            }
            match self.attach(vmid, pid).await {
                Ok(r) if r.owner.info().qmpstatus == "postmigrate" => {
                    // A migration that completed in QEMU while the agent was away, without
                    // the target taking over: the guest runs on here.
                    info!(
                        vmid,
                        pid, "re-adopted VM paused by an unfinished migration; resuming it"
                    );
                    if let Err(e) = r.owner.resume().await {
                        warn!(vmid, error = %e, "failed to resume VM");
                    }
                }
                Ok(_) => info!(vmid, pid, "re-adopted running VM"),
                Err(e) => {
                    warn!(vmid, pid, error = %crate::error_chain(&e), "failed to re-adopt VM")
                }
            }
        }
    }
}

/// Whether a VM has a `net0` on QEMU's user-mode network, the one that carries the loopback
/// port forwards (one on a host bridge has its own address instead).
pub(crate) fn user_net0(props: &std::collections::BTreeMap<String, String>) -> bool {
    cmdline::nets(props)
        .iter()
        .find(|(i, _)| *i == 0)
        .is_some_and(|(_, v)| {
            hemiron_pve::views::NetDevice::parse(v).map_or(true, |n| {
                !n.bridge
                    .as_deref()
                    .is_some_and(crate::qemu::devices::host_bridge)
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lock_times_out_while_held() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path());
        data.create_all().unwrap();
        let mgr = VmManager::new(
            "n1",
            data.clone(),
            Storage::new(data.local_storage(), None),
            Forwards::open(data.forwards_file()).unwrap(),
            Accel::Tcg,
            MachineDefaults {
                pc: "pc-i440fx-7.2".into(),
                q35: "pc-q35-7.2".into(),
            },
        );
        let held = mgr.lock(100).await.unwrap();
        tokio::time::pause();
        let err = mgr.lock(100).await.unwrap_err();
        assert!(err.to_string().contains("got timeout"));
        drop(held);
        assert!(mgr.lock(100).await.is_ok());
    }
}
