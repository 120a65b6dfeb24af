//! Moving a VM to another node of the cluster (`POST …/migrate`), as Proxmox's `qmigrate`.
//!
//! The source drives; the target answers four calls (`prepare`, `status`, `commit`,
//! `abort`) on its API. `prepare` writes the VM's config on the target — hidden, because the
//! VM's ownership record on the shared storage still names the source — makes new volumes
//! for local disks and, for a running VM, starts QEMU with `-incoming defer -S` and the
//! source's machine type. Local disks are mirrored into the target's volumes over NBD
//! before RAM moves; then `migrate` runs over TCP. When QEMU reports completion the source
//! hands its port forwards over and calls `commit`: the target replaces the ownership
//! record (the instant the VM changes node) and only then resumes the guest, so at no
//! time do two nodes list the VM or run it.
//!
//! Until `commit`, the source can take everything back: the target's QEMU is killed and its
//! files removed, and the source's guest (paused only in QEMU's last phase) runs on. The
//! target's images stay inactive until it resumes (`late-block-activate`), so the source
//! can resume on shared disks. A target that hears nothing from its source for
//! [`LEASE`] gives up on its own, and an agent that restarts removes what an interrupted
//! migration left (see [`VmManager::clean_foreign`]).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hemiron_pve::config::{self, VmConfig};
use hemiron_pve::views::Drive;
use hemiron_pve::volume::DriveFile;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::{info, warn};

use super::forwards::VmForwards;
use super::owner::OwnerHandle;
use super::update::check_lock;
use super::{VmError, VmManager};
use crate::cluster::Peer;
use crate::qemu::{cmdline, limits, process};
use crate::storage::{parse_volid, ImageFormat, VolumeId};
use crate::tasks::TaskContext;

/// How long a target waits for word from its source before it gives up.
pub const LEASE: Duration = Duration::from_secs(30);
/// How often the source tells the target it is still there.
const PING_EVERY: Duration = Duration::from_secs(2);
/// How long a call between the nodes may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Proxmox's default `migrate_downtime` (seconds).
const DEFAULT_DOWNTIME: f64 = 0.1;
/// The downtime limit a migration starts with (ms), below the configured maximum: QEMU
/// hands over once the rest fits in this, so an idle or lightly used guest pauses for a
/// few ms rather than up to the maximum. Raised step by step when the migration does not
/// converge, as Proxmox raises `migrate_downtime`.
const FIRST_DOWNTIME_MS: u64 = 20;
/// Polls without progress before the downtime limit is doubled (Proxmox: 5).
const STALLED_POLLS: u32 = 5;

/// `targetstorage`: where each source storage's volumes go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageMap {
    pairs: BTreeMap<String, String>,
    /// The storage every unpaired one maps to; `None`: each to itself.
    default: Option<String>,
}

impl StorageMap {
    /// Parses Proxmox's `storage-pair-list`: `src:dst` pairs, one bare ID that every other
    /// storage maps to, or `1` (each storage to itself).
    pub fn parse(items: &[String]) -> Result<StorageMap, String> {
        let mut map = StorageMap::default();
        for item in items {
            match item.split_once(':') {
                Some((src, dst)) => {
                    if map.pairs.insert(src.to_string(), dst.to_string()).is_some() {
                        return Err(format!("storage '{src}' is mapped twice"));
                    }
                }
                None if item == "1" => {}
                None => {
                    if map.default.replace(item.clone()).is_some() {
                        return Err("more than one default target storage".into());
                    }
                }
            }
        }
        Ok(map)
    }

    pub fn target_of(&self, source: &str) -> String {
        self.pairs
            .get(source)
            .or(self.default.as_ref())
            .cloned()
            .unwrap_or_else(|| source.to_string())
    }
}

/// What `POST …/migrate` asks for.
#[derive(Debug, Clone)]
pub struct MigrateRequest {
    pub target: String,
    pub online: bool,
    pub with_local_disks: bool,
    pub storage_map: StorageMap,
    /// KiB/s.
    pub bwlimit: Option<u64>,
}

/// A local disk the target makes anew.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewDisk {
    /// The drive (`scsi0`): also the NBD export's name.
    pub key: String,
    pub volid: String,
    pub target_storage: String,
    pub size: u64,
    pub format: String,
}

/// `prepare`: the source's request to the target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Prepare {
    /// Names this migration (an `abort` that overtook its `prepare` refuses it).
    pub id: String,
    pub source: String,
    /// The config file as the source holds it.
    pub config: String,
    /// Start an incoming QEMU (a live migration).
    pub live: bool,
    pub machine: Option<String>,
    pub accel: String,
    pub qemu_version: String,
    pub disks: Vec<NewDisk>,
    pub forwards: Option<VmForwards>,
}

/// The target's answer to `prepare`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Prepared {
    /// Where the incoming QEMU listens for the migration stream.
    pub migrate_port: Option<u16>,
    /// NBD server of the incoming QEMU (live) and its exports, one per new disk.
    pub nbd_port: Option<u16>,
    /// For a stopped VM: one `qemu-nbd` per new disk (key → port).
    pub disk_ports: BTreeMap<String, u16>,
    /// Old volume ID → new one.
    pub volumes: BTreeMap<String, String>,
}

/// An incoming migration the target holds.
#[derive(Debug)]
struct Incoming {
    source: String,
    volumes: Vec<VolumeId>,
    forwards: bool,
    live: bool,
    nbd: bool,
    servers: Vec<tokio::process::Child>,
    renewed: Instant,
    /// Binding the forwarded ports (they may still be the source's for a moment).
    forwarding: Option<tokio::task::JoinHandle<Result<(), String>>>,
}

/// The incoming migrations of a node.
#[derive(Debug, Default)]
pub struct IncomingTable {
    map: Mutex<HashMap<u32, Incoming>>,
    /// Migrations aborted here (the latest few): a `prepare` that comes after its `abort`
    /// (the source gave up while it was under way) is refused.
    aborted: Mutex<std::collections::VecDeque<String>>,
}

impl IncomingTable {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<u32, Incoming>) -> T) -> T {
        f(&mut self.map.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn note_aborted(&self, id: &str) {
        let mut a = self.aborted.lock().unwrap_or_else(|p| p.into_inner());
        if a.len() >= 256 {
            a.pop_front();
        }
        a.push_back(id.to_string());
    }

    fn was_aborted(&self, id: &str) -> bool {
        let a = self.aborted.lock().unwrap_or_else(|p| p.into_inner());
        a.iter().any(|x| x == id)
    }
}

/// Config keys for host devices a VM cannot take along.
const LOCAL_DEVICE_KEYS: &[&str] = &["hostpci", "usb", "serial", "parallel"];

/// The config's host devices (`hostpci0`, `usb1`, …): they keep a VM on its node.
pub fn local_devices(conf: &VmConfig) -> Vec<String> {
    conf.main
        .props
        .keys()
        .filter(|k| {
            LOCAL_DEVICE_KEYS.iter().any(|prefix| {
                k.strip_prefix(prefix)
                    .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
            })
        })
        .cloned()
        .collect()
}

/// `1.5 GiB`.
pub fn human_bytes(bytes: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} {}", units[u])
    } else {
        format!("{v:.1} {}", units[u])
    }
}

fn mig(msg: impl Into<String>) -> VmError {
    VmError::Migration(msg.into())
}

/// `major.minor.micro` as numbers, for comparing QEMU versions.
fn version_tuple(v: &str) -> Vec<u64> {
    v.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

/// Replaces volume `old` by `new` in every drive line of `props`.
fn rename_volume(props: &mut BTreeMap<String, String>, old: &str, new: &str) {
    for value in props.values_mut() {
        if value == old {
            *value = new.to_string();
        } else if let Some(rest) = value.strip_prefix(&format!("{old},")) {
            *value = format!("{new},{rest}");
        }
    }
}

/// A loopback or host port nobody listens on now.
fn free_port(ip: IpAddr) -> Result<u16, VmError> {
    let l = std::net::TcpListener::bind((ip, 0)).map_err(VmError::Runtime)?;
    Ok(l.local_addr().map_err(VmError::Runtime)?.port())
}

/// The QMP/HMP steps the source undoes when a live migration fails before its commit.
struct SourceSide {
    owner: OwnerHandle,
    jobs: Vec<String>,
    nodes: Vec<String>,
    /// Forwards taken off the source's QEMU (to give back).
    forwards_removed: Option<VmForwards>,
    /// Taps whose guest frames are flooded to the whole bridge (learning to give back).
    flooded: Vec<String>,
}

impl SourceSide {
    async fn undo(&mut self, log: Option<&TaskContext>) {
        let o = &self.owner;
        let _ = o.raw("migrate_cancel", None).await;
        for job in self.jobs.drain(..) {
            let _ = o
                .raw(
                    "block-job-cancel",
                    Some(json!({ "device": job, "force": true })),
                )
                .await;
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                let jobs = o.raw("query-block-jobs", None).await.unwrap_or_default();
                if !jobs
                    .as_array()
                    .is_some_and(|a| a.iter().any(|j| j["device"] == job.as_str()))
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        for node in self.nodes.drain(..) {
            let _ = o
                .raw("blockdev-del", Some(json!({ "node-name": node })))
                .await;
        }
        for tap in self.flooded.drain(..) {
            super::bridge::unflood(&tap).await;
        }
        if let Some(fw) = self.forwards_removed.take() {
            for (guest, host) in fw {
                if let Err(e) = o
                    .hmp(&format!("hostfwd_add net0 tcp:127.0.0.1:{host}-:{guest}"))
                    .await
                {
                    note(
                        log,
                        format!("WARNING: port forward {host} -> {guest} not restored: {e}"),
                    );
                }
            }
        }
    }
}

/// A line for the task's log, or (once the task is gone) for the agent's.
fn note(log: Option<&TaskContext>, msg: impl AsRef<str>) {
    match log {
        Some(l) => l.log(msg),
        None => warn!("{}", msg.as_ref()),
    }
}

/// A migration under way on the source, from the target's `prepare` to the end: what it
/// takes to take it back.
struct PendingInner {
    mgr: std::sync::Weak<VmManager>,
    id: String,
    vmid: u32,
    peer: Arc<Peer>,
    base: String,
    target: String,
    conf: VmConfig,
    disks: Vec<NewDisk>,
    running: Option<super::Running>,
    side: Option<SourceSide>,
    pinger: Option<tokio::task::JoinHandle<()>>,
}

/// Takes a migration back (as a task of its own) when its task is stopped midway and the
/// migration's future dropped.
struct Pending(Option<PendingInner>);

impl Drop for Pending {
    fn drop(&mut self) {
        let Some(mut inner) = self.0.take() else {
            return;
        };
        if let Some(h) = inner.pinger.take() {
            h.abort();
        }
        let Some(mgr) = inner.mgr.upgrade() else {
            return;
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                warn!(vmid = inner.vmid, "migration interrupted; taking it back");
                if mgr.take_back(&mut inner, None).await {
                    mgr.finish_source(
                        inner.vmid,
                        &inner.conf,
                        &inner.disks,
                        inner.running.as_ref(),
                        None,
                    )
                    .await;
                }
            });
        }
    }
}

/// Turns migration capabilities on.
async fn enable_caps(owner: &OwnerHandle, caps: &[&str]) -> Result<(), VmError> {
    let list: Vec<Value> = caps
        .iter()
        .map(|c| json!({ "capability": c, "state": true }))
        .collect();
    owner
        .raw(
            "migrate-set-capabilities",
            Some(json!({ "capabilities": list })),
        )
        .await?;
    Ok(())
}

/// Binds a VM's forwarded ports on its QEMU, retrying each every millisecond while it is
/// taken (by the migration's source on the same host) until `patience` has passed.
async fn bind_forwards(
    owner: OwnerHandle,
    fw: VmForwards,
    patience: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + patience;
    for (guest, host) in fw {
        loop {
            let out = owner
                .hmp(&format!("hostfwd_add net0 tcp:127.0.0.1:{host}-:{guest}"))
                .await
                .map_err(|e| e.to_string())?;
            if out.trim().is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(format!("port {host}: {}", out.trim()));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    Ok(())
}

/// Whether the VM's QEMU is stopped by (or for) a migration rather than by a user.
fn paused_by_migration(status: &str) -> bool {
    matches!(status, "postmigrate" | "finish-migrate" | "paused")
}

impl VmManager {
    /// The `qmigrate` task on the source.
    pub async fn migrate(
        &self,
        vmid: u32,
        req: MigrateRequest,
        peer: Arc<Peer>,
        peer_host: String,
        log: &TaskContext,
    ) -> Result<(), VmError> {
        let started = Instant::now();
        let _guard = self.lock(vmid).await?;
        let loaded = self.store.load(vmid)?;
        let conf = loaded.conf;
        check_lock(&conf, false)?;
        let running = self.running(vmid);
        if running.is_some() && !req.online {
            return Err(VmError::Refused(
                "can't migrate running VM without --online".into(),
            ));
        }
        if !self.store.has_owner_records() {
            return Err(VmError::Refused(
                "migration needs the cluster's shared storage (--shared-storage on both nodes): the VM's ownership record lives there".into(),
            ));
        }
        let live = running.is_some();
        let disks = self.disks_to_move(&conf, live, &req).await?;
        if !disks.is_empty() && !conf.snapshots.is_empty() {
            return Err(VmError::Refused(
                "can't migrate local disks of a VM with snapshots: delete the snapshots first"
                    .into(),
            ));
        }
        if self.store.owner_of(vmid).is_none() {
            self.store.set_owner(vmid, &self.node)?;
        }
        log.log(format!(
            "starting migration of VM {vmid} to node '{}' ({peer_host})",
            req.target
        ));
        for d in &disks {
            log.log(format!(
                "found local disk '{}' ({}, {})",
                d.volid,
                d.key,
                human_bytes(d.size as f64)
            ));
        }
        let raw = config::write(&conf).map_err(|e| VmError::InvalidConfig {
            vmid,
            msg: e.to_string(),
        })?;
        let migration_id = format!("{:016x}", rand::random::<u64>());
        let prepare = Prepare {
            id: migration_id.clone(),
            source: self.node.clone(),
            config: raw,
            live,
            machine: running.as_ref().map(|r| r.machine.clone()),
            accel: self.accel.as_str().to_string(),
            qemu_version: self.qemu_version.get().cloned().unwrap_or_default(),
            disks: disks.clone(),
            // A NIC on a bridge keeps its own address: only user-mode net0 has forwards.
            forwards: super::user_net0(&conf.main.props)
                .then(|| self.forwards.get(vmid))
                .flatten(),
        };
        let base = format!("/nodes/{}/hemiron/migration/{vmid}", req.target);
        // From here on the target may hold something of the VM: taken back if this task
        // ends early.
        let mut pending = Pending(Some(PendingInner {
            mgr: self.me.clone(),
            id: migration_id.clone(),
            vmid,
            peer: peer.clone(),
            base: base.clone(),
            target: req.target.clone(),
            conf: conf.clone(),
            disks: disks.clone(),
            running: running.clone(),
            side: running.as_ref().map(|run| SourceSide {
                owner: run.owner.clone(),
                jobs: Vec::new(),
                nodes: Vec::new(),
                forwards_removed: None,
                flooded: Vec::new(),
            }),
            pinger: None,
        }));
        let answer = peer
            .call_json(
                &format!("{base}/prepare"),
                &serde_json::to_value(&prepare).map_err(|e| mig(e.to_string()))?,
                CALL_TIMEOUT,
            )
            .await
            .map_err(|e| mig(format!("target could not prepare: {e}")));
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                if let Some(mut inner) = pending.0.take() {
                    self.abort_target(&inner.peer, &inner.base, &inner.id, Some(log))
                        .await;
                    inner.side = None;
                }
                return Err(e);
            }
        };
        let prepared: Prepared =
            serde_json::from_value(answer).map_err(|e| mig(format!("target answer: {e}")))?;
        log.log(format!("target node '{}' prepared VM {vmid}", req.target));

        let moved = match (&running, pending.0.as_mut()) {
            (Some(_), Some(p)) => {
                self.move_live(vmid, &conf, &req, &peer_host, &prepared, &disks, p, log)
                    .await
            }
            _ => {
                self.move_offline(&req, &peer, &base, &peer_host, &prepared, &disks, log)
                    .await
            }
        };
        let Some(mut inner) = pending.0.take() else {
            return Err(mig("the migration's state is gone"));
        };
        if let Some(h) = inner.pinger.take() {
            h.abort();
        }
        if let Err(e) = moved {
            log.log(format!("ERROR: {e}"));
            // Was the switchover made after all (a commit whose answer was lost)?
            if !self.take_back(&mut inner, Some(log)).await {
                return Err(e);
            }
            log.log(format!(
                "WARNING: {e}; but node '{}' owns the VM now",
                req.target
            ));
        }
        // The VM is the target's now: what is left here goes.
        self.finish_source(vmid, &conf, &disks, running.as_ref(), Some(log))
            .await;
        let took = started.elapsed().as_secs();
        log.log(format!(
            "migration finished successfully (duration {:02}:{:02}:{:02})",
            took / 3600,
            took / 60 % 60,
            took % 60
        ));
        Ok(())
    }

    /// The local volumes that move with the VM; refuses what cannot move.
    async fn disks_to_move(
        &self,
        conf: &VmConfig,
        live: bool,
        req: &MigrateRequest,
    ) -> Result<Vec<NewDisk>, VmError> {
        let storage = self.storage();
        let is_shared = |v: &VolumeId| storage.pool(&v.storage).is_ok_and(|p| p.shared);
        let mut out = Vec::new();
        for (key, value) in cmdline::drives(&conf.main.props) {
            let Ok(d) = Drive::parse(key, &value, false) else {
                continue;
            };
            let Some(DriveFile::Volume(v)) = d.drive_file() else {
                if d.file.starts_with('/') {
                    return Err(VmError::Refused(format!(
                        "can't migrate {key}: it uses the host path '{}'",
                        d.file
                    )));
                }
                continue;
            };
            let volid = parse_volid(&v.to_string())?;
            if is_shared(&volid) || d.is_cloudinit() {
                continue;
            }
            if d.is_cdrom() {
                return Err(VmError::Refused(format!(
                    "can't migrate local CD-ROM {key} ({volid}): eject it first"
                )));
            }
            let format = crate::storage::volume_format(&volid)
                .unwrap_or(ImageFormat::Raw)
                .as_str()
                .to_string();
            out.push(NewDisk {
                key: key.to_string(),
                volid: volid.to_string(),
                target_storage: req.storage_map.target_of(&volid.storage),
                size: storage.volume_size(&volid).await?,
                format,
            });
        }
        for (k, v) in &conf.main.props {
            if !k.starts_with("unused") {
                continue;
            }
            if let Ok(volid) = parse_volid(v) {
                if !is_shared(&volid) {
                    return Err(VmError::Refused(format!(
                        "can't migrate unused local disk '{v}' ({k}): delete it or attach it first"
                    )));
                }
            }
        }
        if let Some(k) = local_devices(conf).first() {
            return Err(VmError::Refused(format!(
                "can't migrate VM which uses local devices: {k}"
            )));
        }
        if live && !out.is_empty() && !req.with_local_disks {
            return Err(VmError::Refused(
                "can't live migrate attached local disks without with-local-disks option".into(),
            ));
        }
        Ok(out)
    }

    /// RAM, device state and local disks of a running VM; ends with the commit.
    #[allow(clippy::too_many_arguments)]
    async fn move_live(
        &self,
        vmid: u32,
        conf: &VmConfig,
        req: &MigrateRequest,
        host: &str,
        prepared: &Prepared,
        disks: &[NewDisk],
        p: &mut PendingInner,
        log: &TaskContext,
    ) -> Result<(), VmError> {
        // The target must hear from us, and we must notice a target that went away.
        let (lost_tx, mut lost_rx) = tokio::sync::watch::channel(None::<String>);
        p.pinger = Some({
            let peer = p.peer.clone();
            let path = format!("{}/status", p.base);
            tokio::spawn(async move {
                let mut failures = 0;
                loop {
                    tokio::time::sleep(PING_EVERY).await;
                    match peer.call_json(&path, &json!({}), PING_EVERY * 2).await {
                        Ok(_) => failures = 0,
                        Err(e) => {
                            failures += 1;
                            if failures >= 3 {
                                let _ = lost_tx.send(Some(e));
                                return;
                            }
                        }
                    }
                }
            })
        });
        let Some(side) = p.side.as_mut() else {
            return Err(mig("the VM has no QEMU to migrate"));
        };
        let target = (vmid, &*p.peer, p.base.as_str());
        self.transfer(
            conf,
            req,
            host,
            prepared,
            disks,
            side,
            target,
            &mut lost_rx,
            log,
        )
        .await?;
        self.commit(&p.peer, &p.base, json!({ "resume": true }), log)
            .await
    }

    /// Takes back a migration that did not complete: the target drops what it made and
    /// the source's guest runs on. Returns true if the target owns the VM after all (the
    /// switchover was made; nothing is taken back).
    async fn take_back(&self, p: &mut PendingInner, log: Option<&TaskContext>) -> bool {
        self.abort_target(&p.peer, &p.base, &p.id, log).await;
        if self.store.owner_of(p.vmid).as_deref() == Some(p.target.as_str()) {
            return true;
        }
        if let Some(side) = p.side.as_mut() {
            side.undo(log).await;
            let status = side.owner.info().qmpstatus;
            if paused_by_migration(&status) && side.owner.is_alive() {
                match side.owner.resume().await {
                    Ok(()) => note(log, "VM resumed on the source"),
                    Err(r) => note(log, format!("ERROR: VM could not be resumed here: {r}")),
                }
            }
        }
        false
    }

    /// Hands the forwarded ports to the target (`vmid`, `peer`, migration `base` path): the
    /// target starts trying to bind them (on one host they are the source's until it lets
    /// go), then the source lets go, so that a port refuses connections for a moment only.
    async fn hand_over_forwards(
        &self,
        conf: &VmConfig,
        (vmid, peer, base): (u32, &Peer, &str),
        side: &mut SourceSide,
    ) -> Result<(), VmError> {
        let has_net0 = super::user_net0(&conf.main.props);
        let Some(fw) = has_net0.then(|| self.forwards.get(vmid)).flatten() else {
            return Ok(());
        };
        peer.call_json(&format!("{base}/forwards"), &json!({}), CALL_TIMEOUT)
            .await
            .map_err(|e| mig(format!("target could not take the port forwards: {e}")))?;
        for host_port in fw.values() {
            side.owner
                .hmp(&format!("hostfwd_remove net0 tcp:127.0.0.1:{host_port}"))
                .await?;
        }
        side.forwards_removed = Some(fw);
        Ok(())
    }

    /// Mirrors local disks, then migrates RAM and device state; the source's guest is
    /// paused at the end (QEMU's `postmigrate`), and its forwarded ports go to the target
    /// at once, before the figures are read and the mirrors finish: a client's connection
    /// made to the paused source dies with it, one made to the target waits for the guest
    /// to run there.
    #[allow(clippy::too_many_arguments)]
    async fn transfer(
        &self,
        conf: &VmConfig,
        req: &MigrateRequest,
        host: &str,
        prepared: &Prepared,
        disks: &[NewDisk],
        side: &mut SourceSide,
        target: (u32, &Peer, &str),
        lost: &mut tokio::sync::watch::Receiver<Option<String>>,
        log: &TaskContext,
    ) -> Result<(), VmError> {
        let owner = side.owner.clone();
        let mut events = owner.events();
        let speed = req.bwlimit.map(|k| k * 1024);
        // Storage first: every local disk is mirrored into the target's new volume.
        if !disks.is_empty() {
            let port = prepared
                .nbd_port
                .ok_or_else(|| mig("the target exports no disks"))?;
            let nodes = super::snapshot::volume_disks(&conf.main.props)?;
            for d in disks {
                let Some((_, _, node)) = nodes.iter().find(|(k, _, _)| k.to_string() == d.key)
                else {
                    return Err(mig(format!("drive {} has no block node", d.key)));
                };
                let target = format!("mig-nbd-{}", d.key);
                owner
                    .raw(
                        "blockdev-add",
                        Some(json!({
                            "driver": "nbd", "node-name": target,
                            "server": { "type": "inet", "host": host, "port": port.to_string() },
                            "export": d.key,
                        })),
                    )
                    .await?;
                side.nodes.push(target.clone());
                let job = format!("mirror-{}", d.key);
                let mut args = json!({
                    "job-id": job, "device": node, "target": target, "sync": "full",
                });
                if let Some(s) = speed {
                    args["speed"] = json!(s);
                }
                owner.raw("blockdev-mirror", Some(args)).await?;
                side.jobs.push(job);
                log.log(format!("{}: start mirror to target", d.key));
            }
            self.wait_mirrors_ready(&owner, &side.jobs, lost, log)
                .await?;
        }

        let downtime = conf
            .get("migrate_downtime")
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(DEFAULT_DOWNTIME);
        // `migrate_speed` is MB/s, `bwlimit` KiB/s; without either, no cap worth the name.
        let bandwidth = speed
            .or_else(|| {
                conf.get("migrate_speed")
                    .and_then(|v| v.parse::<u64>().ok())
                    .filter(|v| *v > 0)
                    .map(|mb| mb * 1024 * 1024)
            })
            .unwrap_or(16 << 30);
        let max_downtime = (downtime * 1000.0).round().clamp(1.0, 2_000_000.0) as u64;
        let mut limit = max_downtime.min(FIRST_DOWNTIME_MS);
        enable_caps(&owner, &["events", "auto-converge"]).await?;
        owner
            .raw(
                "migrate-set-parameters",
                Some(json!({ "downtime-limit": limit, "max-bandwidth": bandwidth })),
            )
            .await?;
        log.log(format!(
            "migration parameters: downtime limit {limit} ms (at most {max_downtime} ms before it is raised), bandwidth {}/s",
            human_bytes(bandwidth as f64)
        ));
        let (mut least_remaining, mut stalled) = (u64::MAX, 0u32);
        let port = prepared
            .migrate_port
            .ok_or_else(|| mig("the target gave no migration port"))?;
        let uri = format!("tcp:{host}:{port}");
        // NICs on a bridge: the guest's frames reach the target's tap too from here on (see
        // `vm::bridge`), so none is lost in the switchover.
        let taps = super::bridge::taps_of(owner.pid);
        for (id, tap) in &taps {
            let mac = conf
                .get(id)
                .and_then(|v| hemiron_pve::views::NetDevice::parse(v).ok())
                .and_then(|n| n.macaddr)
                .map(|m| m.to_string());
            let Some(mac) = mac else { continue };
            match super::bridge::flood(tap, &mac).await {
                Ok(()) => {
                    side.flooded.push(tap.clone());
                    log.log(format!(
                        "{id}: frames for {mac} flooded to the bridge until the switchover"
                    ));
                }
                Err(e) => log.log(format!("{id}: WARNING: {e}")),
            }
        }
        log.log(format!("start migrate command to {uri}"));
        owner.raw("migrate", Some(json!({ "uri": uri }))).await?;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        let status = loop {
            tokio::select! {
                ev = events.recv() => {
                    if let Ok(ev) = ev {
                        if ev.name == "MIGRATION" {
                            let s = ev.data["status"].as_str().unwrap_or_default().to_string();
                            if matches!(s.as_str(), "completed" | "failed" | "cancelled") {
                                break s;
                            }
                        }
                        if ev.name == "BLOCK_JOB_ERROR" || (ev.name == "BLOCK_JOB_COMPLETED" && ev.data.get("error").is_some()) {
                            return Err(mig(format!("mirror failed: {}", ev.data)));
                        }
                    }
                }
                _ = tick.tick() => {
                    let info = owner.raw("query-migrate", None).await?;
                    let s = info["status"].as_str().unwrap_or_default().to_string();
                    if matches!(s.as_str(), "completed" | "failed" | "cancelled") {
                        break s;
                    }
                    let ram = &info["ram"];
                    log.log(format!(
                        "migration {s}, transferred {} of {} VM-state, {}/s",
                        human_bytes(ram["transferred"].as_f64().unwrap_or(0.0)),
                        human_bytes(ram["total"].as_f64().unwrap_or(0.0)),
                        human_bytes(ram["mbps"].as_f64().unwrap_or(0.0) * 1e6 / 8.0),
                    ));
                    // A guest that dirties memory as fast as it moves: allow a longer pause.
                    let remaining = ram["remaining"].as_u64().unwrap_or(0);
                    if remaining < least_remaining {
                        least_remaining = remaining;
                        stalled = 0;
                    } else {
                        stalled += 1;
                    }
                    if stalled >= STALLED_POLLS && limit < 2_000_000 {
                        limit = (limit * 2).min(2_000_000);
                        stalled = 0;
                        owner
                            .raw("migrate-set-parameters", Some(json!({ "downtime-limit": limit })))
                            .await?;
                        log.log(format!("migration does not converge: downtime limit raised to {limit} ms"));
                    }
                }
                _ = lost.changed() => {
                    let why = lost.borrow().clone().unwrap_or_default();
                    return Err(mig(format!("lost the target node: {why}")));
                }
            }
        };
        if status != "completed" {
            let info = owner.raw("query-migrate", None).await.unwrap_or_default();
            return Err(mig(format!(
                "migration status: {status}{}",
                info["error-desc"]
                    .as_str()
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default()
            )));
        }
        self.hand_over_forwards(conf, target, side).await?;
        // The first `completed` answer may come before QEMU filled in the figures.
        let mut info = owner.raw("query-migrate", None).await?;
        for _ in 0..20 {
            if info["downtime"].as_u64().unwrap_or(0) > 0
                && info["total-time"].as_u64().unwrap_or(0) > 0
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            info = owner.raw("query-migrate", None).await?;
        }
        let total_ms = info["total-time"].as_u64().unwrap_or(0);
        let transferred = info["ram"]["transferred"].as_f64().unwrap_or(0.0);
        log.log(format!(
            "migration completed, transferred {} VM-state",
            human_bytes(transferred)
        ));
        let per_sec = if total_ms > 0 {
            transferred * 1000.0 / total_ms as f64
        } else {
            0.0
        };
        log.log(format!(
            "average migration speed: {}/s - downtime {} ms",
            human_bytes(per_sec),
            info["downtime"].as_u64().unwrap_or(0)
        ));
        // The guest is paused: a cancelled ready mirror copies what is left and stops.
        for job in std::mem::take(&mut side.jobs) {
            owner
                .raw("block-job-cancel", Some(json!({ "device": job })))
                .await?;
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let jobs = owner.raw("query-block-jobs", None).await?;
                if !jobs
                    .as_array()
                    .is_some_and(|a| a.iter().any(|j| j["device"] == job.as_str()))
                {
                    break;
                }
                if Instant::now() > deadline {
                    side.jobs.push(job);
                    return Err(mig("a mirror did not finish"));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            while let Ok(ev) = events.try_recv() {
                if ev.name == "BLOCK_JOB_COMPLETED" && ev.data.get("error").is_some() {
                    return Err(mig(format!("mirror failed: {}", ev.data)));
                }
            }
        }
        Ok(())
    }

    async fn wait_mirrors_ready(
        &self,
        owner: &OwnerHandle,
        jobs: &[String],
        lost: &mut tokio::sync::watch::Receiver<Option<String>>,
        log: &TaskContext,
    ) -> Result<(), VmError> {
        let mut last_log = Instant::now();
        loop {
            if lost.has_changed().unwrap_or(false) {
                let why = lost.borrow().clone().unwrap_or_default();
                return Err(mig(format!("lost the target node: {why}")));
            }
            let list = owner.raw("query-block-jobs", None).await?;
            let list = list.as_array().cloned().unwrap_or_default();
            let mut all_ready = true;
            let mut lines = Vec::new();
            for job in jobs {
                let Some(j) = list.iter().find(|j| j["device"] == job.as_str()) else {
                    return Err(mig(format!("mirror job {job} ended early")));
                };
                let (len, off) = (
                    j["len"].as_f64().unwrap_or(0.0),
                    j["offset"].as_f64().unwrap_or(0.0),
                );
                let ready = j["ready"].as_bool().unwrap_or(false);
                all_ready &= ready;
                lines.push(format!(
                    "{job}: transferred {} of {} ({:.2}%){}",
                    human_bytes(off),
                    human_bytes(len),
                    if len > 0.0 { off * 100.0 / len } else { 100.0 },
                    if ready { ", ready" } else { "" }
                ));
            }
            if all_ready || last_log.elapsed() >= Duration::from_secs(1) {
                for l in lines {
                    log.log(l);
                }
                last_log = Instant::now();
            }
            if all_ready {
                log.log("all mirroring jobs are ready");
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Copies the local disks of a stopped VM into the target's `qemu-nbd` servers, then
    /// commits.
    #[allow(clippy::too_many_arguments)]
    async fn move_offline(
        &self,
        req: &MigrateRequest,
        peer: &Arc<Peer>,
        base: &str,
        host: &str,
        prepared: &Prepared,
        disks: &[NewDisk],
        log: &TaskContext,
    ) -> Result<(), VmError> {
        let copy = async {
            for d in disks {
                let port = prepared
                    .disk_ports
                    .get(&d.key)
                    .ok_or_else(|| mig(format!("the target serves no disk for {}", d.key)))?;
                let src = self.storage().existing_path(&parse_volid(&d.volid)?)?;
                log.log(format!("copying disk {} ({})", d.key, d.volid));
                let mut cmd = tokio::process::Command::new("qemu-img");
                cmd.args([
                    "convert",
                    "-n",
                    "--target-is-zero",
                    "-f",
                    &d.format,
                    "-O",
                    "raw",
                ]);
                if let Some(k) = req.bwlimit {
                    cmd.args(["-r", &format!("{}", k * 1024)]);
                }
                cmd.arg(&src)
                    .arg(format!("nbd://{host}:{port}/{}", d.key))
                    .kill_on_drop(true);
                let out = cmd.output().await.map_err(VmError::Runtime)?;
                if !out.status.success() {
                    return Err(mig(format!(
                        "copy of {} failed: {}",
                        d.key,
                        String::from_utf8_lossy(&out.stderr).trim()
                    )));
                }
            }
            self.commit(peer, base, json!({ "resume": false }), log)
                .await
        }
        .await;
        copy
    }

    async fn commit(
        &self,
        peer: &Arc<Peer>,
        base: &str,
        body: Value,
        log: &TaskContext,
    ) -> Result<(), VmError> {
        let answer = peer
            .call_json(&format!("{base}/commit"), &body, CALL_TIMEOUT)
            .await
            .map_err(|e| mig(format!("target could not take over: {e}")))?;
        if let Some(w) = answer["warning"].as_str() {
            log.log(format!("WARNING: {w}"));
        }
        log.log("VM handed over to the target node");
        Ok(())
    }

    /// Tells the target to drop the VM; retried while the target does not answer, because
    /// only its answer says it will never resume the guest.
    async fn abort_target(
        &self,
        peer: &Arc<Peer>,
        base: &str,
        id: &str,
        log: Option<&TaskContext>,
    ) {
        for attempt in 0..5 {
            match peer
                .call_json(
                    &format!("{base}/abort"),
                    &json!({ "id": id }),
                    Duration::from_secs(10),
                )
                .await
            {
                Ok(_) => {
                    note(log, "target cleaned up");
                    return;
                }
                Err(e) if e.contains("already") => {
                    note(log, format!("target did not abort: {e}"));
                    return;
                }
                Err(e) => {
                    if attempt == 4 {
                        note(
                            log,
                            format!("WARNING: target could not be told to clean up ({e}); it will give up by itself"),
                        );
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// After the switchover: the source's QEMU ends, its config, local volumes and
    /// forwards go.
    async fn finish_source(
        &self,
        vmid: u32,
        conf: &VmConfig,
        disks: &[NewDisk],
        running: Option<&super::Running>,
        log: Option<&TaskContext>,
    ) {
        if let Some(run) = running {
            if let Err(e) = Self::end_qemu(&run.owner, Duration::from_secs(10), None).await {
                note(log, format!("WARNING: the source's QEMU did not end: {e}"));
            }
        }
        if let Err(e) = self.store.remove_file(vmid) {
            note(log, format!("WARNING: old config not removed: {e}"));
        }
        let mut volumes: Vec<String> = disks.iter().map(|d| d.volid.clone()).collect();
        // A local cloud-init drive was made anew on the target.
        for (key, value) in cmdline::drives(&conf.main.props) {
            if let Ok(d) = Drive::parse(key, &value, false) {
                if d.is_cloudinit() {
                    if let Some(DriveFile::Volume(v)) = d.drive_file() {
                        if let Ok(v) = parse_volid(&v.to_string()) {
                            if !self.storage().pool(&v.storage).is_ok_and(|p| p.shared) {
                                volumes.push(v.to_string());
                            }
                        }
                    }
                }
            }
        }
        for vol in volumes {
            if let Ok(v) = parse_volid(&vol) {
                note(log, format!("removing local volume '{vol}'"));
                if let Err(e) = self.storage().free(&v) {
                    note(log, format!("WARNING: {vol} not removed: {e}"));
                }
            }
        }
        if let Err(e) = self.forwards.release(vmid) {
            warn!(vmid, error = %e, "forwards not released");
        }
    }

    // ---- target side ----

    /// `prepare` on the target.
    pub async fn incoming_prepare(
        &self,
        vmid: u32,
        req: Prepare,
        listen: IpAddr,
    ) -> Result<Prepared, VmError> {
        let _guard = self.lock(vmid).await?;
        if self.incoming.was_aborted(&req.id) {
            return Err(mig("the source gave this migration up already"));
        }
        if self.store.path(vmid).exists() {
            return Err(VmError::Exists(vmid));
        }
        if self.incoming.with(|m| m.contains_key(&vmid)) {
            return Err(VmError::Exists(vmid));
        }
        if !self.store.has_owner_records() {
            return Err(VmError::Refused(
                "this node has no shared storage for the VM's ownership record".into(),
            ));
        }
        match self.store.owner_of(vmid) {
            Some(n) if n == req.source => {}
            other => {
                return Err(VmError::Refused(format!(
                    "VM {vmid} is not recorded as node '{}''s (record: {})",
                    req.source,
                    other.unwrap_or_else(|| "none".into())
                )))
            }
        }
        if req.live {
            if req.accel != self.accel.as_str() {
                return Err(VmError::Refused(format!(
                    "the source runs VMs with {}, this node with {}",
                    req.accel,
                    self.accel.as_str()
                )));
            }
            let ours = self.qemu_version.get().cloned().unwrap_or_default();
            if version_tuple(&ours) < version_tuple(&req.qemu_version) {
                return Err(VmError::Refused(format!(
                    "this node's QEMU {ours} is older than the source's {}",
                    req.qemu_version
                )));
            }
        }
        let mut conf = config::parse(&req.config).map_err(|e| VmError::ParseConfig {
            vmid,
            msg: e.to_string(),
        })?;
        let mut state = Incoming {
            source: req.source.clone(),
            volumes: Vec::new(),
            forwards: false,
            live: req.live,
            nbd: false,
            servers: Vec::new(),
            renewed: Instant::now(),
            forwarding: None,
        };
        match self
            .prepare_inner(vmid, &req, &mut conf, &mut state, listen)
            .await
        {
            Ok(prepared) => {
                self.incoming.with(|m| m.insert(vmid, state));
                if let Some(me) = self.me.upgrade() {
                    tokio::spawn(async move { me.watch_incoming(vmid).await });
                }
                info!(vmid, source = %req.source, "incoming migration prepared");
                Ok(prepared)
            }
            Err(e) => {
                self.drop_incoming(vmid, state).await;
                Err(e)
            }
        }
    }

    async fn prepare_inner(
        &self,
        vmid: u32,
        req: &Prepare,
        conf: &mut VmConfig,
        state: &mut Incoming,
        listen: IpAddr,
    ) -> Result<Prepared, VmError> {
        let mut prepared = Prepared::default();
        for d in &req.disks {
            let old = parse_volid(&d.volid)?;
            self.storage().pool(&d.target_storage)?;
            let format = ImageFormat::parse(&d.format)?;
            let name = old
                .volname
                .rsplit('/')
                .next()
                .unwrap_or(&old.volname)
                .to_string();
            let wanted = VolumeId {
                storage: d.target_storage.clone(),
                volname: format!("{vmid}/{name}"),
            };
            let new = if self.storage().path(&wanted).is_ok_and(|p| !p.exists()) {
                self.storage()
                    .alloc_named(&d.target_storage, vmid, &name, d.size, format)
                    .await?
            } else {
                self.storage()
                    .alloc(&d.target_storage, vmid, d.size, format)
                    .await?
            };
            state.volumes.push(new.clone());
            rename_volume(&mut conf.main.props, &d.volid, &new.to_string());
            prepared.volumes.insert(d.volid.clone(), new.to_string());
        }
        self.store.create_any(vmid, conf)?;
        if let Some(fw) = &req.forwards {
            self.forwards.adopt(vmid, fw)?;
            state.forwards = true;
        }
        if !req.live {
            // A stopped VM's disks come through one `qemu-nbd` each.
            for d in &req.disks {
                let new = parse_volid(&prepared.volumes[&d.volid])?;
                let path = self.storage().existing_path(&new)?;
                let port = free_port(listen)?;
                let child = tokio::process::Command::new("qemu-nbd")
                    .args(["--format", &d.format, "--cache=none", "--bind"])
                    .arg(listen.to_string())
                    .args(["--port", &port.to_string(), "--export-name", &d.key])
                    .arg(&path)
                    .stdin(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .spawn()
                    .map_err(VmError::Runtime)?;
                state.servers.push(child);
                prepared.disk_ports.insert(d.key.clone(), port);
            }
            // Wait until they accept connections.
            for port in prepared.disk_ports.values() {
                let mut ok = false;
                for _ in 0..100 {
                    if tokio::net::TcpStream::connect((listen, *port))
                        .await
                        .is_ok()
                    {
                        ok = true;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if !ok {
                    return Err(mig(format!("qemu-nbd on port {port} did not start")));
                }
            }
            return Ok(prepared);
        }

        // The incoming QEMU: the hardware the source runs (its pending changes are not
        // applied there), no forwards yet, paused, waiting for the stream.
        let mut hw = conf.clone();
        hw.pending = None;
        if let Some(m) = &req.machine {
            hw.main.props.insert("machine".into(), m.clone());
        }
        let has_local_ci = cmdline::drives(&hw.main.props).into_iter().any(|(k, v)| {
            Drive::parse(k, &v, false).is_ok_and(|d| {
                d.is_cloudinit()
                    && matches!(d.drive_file(), Some(DriveFile::Volume(v))
                        if parse_volid(&v.to_string()).is_ok_and(|v| !self.storage().pool(&v.storage).is_ok_and(|p| p.shared)))
            })
        });
        if has_local_ci {
            let mut c = hw.clone();
            self.regenerate_cloudinit(vmid, &mut c).await?;
        }
        let mut cmd = self.command_with(vmid, &hw, None)?;
        if !cmd.overlays.is_empty() {
            return Err(VmError::Refused(
                "can't live migrate drives with snapshot=1".into(),
            ));
        }
        if !cmd.argv.iter().any(|a| a == "-S") {
            cmd.argv.push("-S".into());
        }
        cmd.argv
            .extend(["-incoming".to_string(), "defer".to_string()]);
        self.cleanup_runtime(vmid);
        std::fs::create_dir_all(self.run_dir()).map_err(VmError::Runtime)?;
        let running = self.launch_attached(vmid, &cmd.argv).await?;
        let pid = running.owner.pid;
        let owner = running.owner;
        if let Err(e) = super::lifecycle::plug_taps(&cmd.post.taps).await {
            let _ = owner.quit().await;
            return Err(e);
        }
        if let Some(list) = &cmd.post.affinity {
            limits::set_affinity(pid, list)
                .map_err(|e| VmError::Refused(crate::error_chain(&e)))?;
        }
        limits::set_cpu_limits(vmid, pid, cmd.post.cpulimit, cmd.post.cpuunits)
            .map_err(|e| VmError::Refused(crate::error_chain(&e)))?;
        enable_caps(&owner, &["events", "late-block-activate"]).await?;
        owner
            .raw(
                "migrate-incoming",
                Some(json!({ "uri": format!("tcp:{listen}:0") })),
            )
            .await?;
        let info = owner.raw("query-migrate", None).await?;
        let port = info["socket-address"][0]["port"]
            .as_str()
            .and_then(|p| p.parse::<u16>().ok())
            .ok_or_else(|| mig(format!("no listening port in {info}")))?;
        prepared.migrate_port = Some(port);
        if !req.disks.is_empty() {
            let nbd_port = free_port(listen)?;
            owner
                .raw(
                    "nbd-server-start",
                    Some(json!({ "addr": { "type": "inet", "data": {
                        "host": listen.to_string(), "port": nbd_port.to_string() } } })),
                )
                .await?;
            state.nbd = true;
            let nodes = super::snapshot::volume_disks(&conf.main.props)?;
            for d in &req.disks {
                let Some((_, _, node)) = nodes.iter().find(|(k, _, _)| k.to_string() == d.key)
                else {
                    return Err(mig(format!("drive {} has no block node", d.key)));
                };
                owner
                    .raw(
                        "block-export-add",
                        Some(json!({
                            "type": "nbd", "id": format!("mig-{}", d.key), "node-name": node,
                            "writable": true, "name": d.key,
                        })),
                    )
                    .await?;
            }
            prepared.nbd_port = Some(nbd_port);
        }
        Ok(prepared)
    }

    /// `status` on the target: the source is still there.
    pub fn incoming_renew(&self, vmid: u32) -> Result<Value, VmError> {
        self.incoming.with(|m| match m.get_mut(&vmid) {
            Some(i) => {
                i.renewed = Instant::now();
                let status = self
                    .running(vmid)
                    .map(|r| r.owner.info().qmpstatus)
                    .unwrap_or_else(|| "stopped".into());
                Ok(json!({ "status": status }))
            }
            None => Err(mig(format!("no incoming migration of VM {vmid} here"))),
        })
    }

    /// `forwards` on the target: starts binding the VM's forwarded ports, retrying while
    /// the source still holds them (both nodes on one host), for at most 10 s.
    pub async fn incoming_take_forwards(&self, vmid: u32) -> Result<(), VmError> {
        let _guard = self.lock(vmid).await?;
        let run = self
            .running(vmid)
            .ok_or_else(|| mig("the incoming QEMU is gone"))?;
        let fw = self.forwards.get(vmid);
        self.incoming.with(|m| match m.get_mut(&vmid) {
            Some(i) if i.forwards => {
                if let (None, Some(fw)) = (&i.forwarding, fw) {
                    i.forwarding = Some(tokio::spawn(bind_forwards(
                        run.owner.clone(),
                        fw,
                        Duration::from_secs(10),
                    )));
                }
                Ok(())
            }
            Some(_) => Ok(()),
            None => Err(mig(format!("no incoming migration of VM {vmid} here"))),
        })
    }

    /// `commit` on the target: the VM becomes this node's, then runs.
    pub async fn incoming_commit(&self, vmid: u32, resume: bool) -> Result<Value, VmError> {
        let _guard = self.lock(vmid).await?;
        let Some(mut state) = self.incoming.with(|m| m.remove(&vmid)) else {
            return Err(mig(format!("no incoming migration of VM {vmid} here")));
        };
        let result = async {
            // Disk servers of a stopped VM end first, so that everything is on disk.
            for mut child in state.servers.drain(..) {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
            if state.live {
                let run = self
                    .running(vmid)
                    .ok_or_else(|| mig("the incoming QEMU is gone"))?;
                if state.nbd {
                    run.owner.raw("nbd-server-stop", None).await?;
                }
                if state.forwards {
                    let bound = match state.forwarding.take() {
                        Some(task) => task.await.map_err(|e| e.to_string()).and_then(|r| r),
                        None => match self.forwards.get(vmid) {
                            Some(fw) => bind_forwards(run.owner.clone(), fw, Duration::ZERO).await,
                            None => Ok(()),
                        },
                    };
                    bound.map_err(mig)?;
                }
            }
            Ok::<_, VmError>(())
        }
        .await;
        if let Err(e) = result {
            self.drop_incoming(vmid, state).await;
            return Err(e);
        }
        // The switchover.
        if let Err(e) = self.store.set_owner(vmid, &self.node) {
            self.drop_incoming(vmid, state).await;
            return Err(e);
        }
        info!(vmid, source = %state.source, "VM migrated here");
        let mut warning = None;
        if state.live && resume {
            if let Some(run) = self.running(vmid) {
                if let Err(e) = run.owner.resume().await {
                    warning = Some(format!("VM {vmid} moved but did not resume: {e}"));
                }
            }
        }
        Ok(json!({ "warning": warning }))
    }

    /// `abort` on the target (also when the source went quiet): everything `prepare` made
    /// goes.
    pub async fn incoming_abort(&self, vmid: u32, id: Option<&str>) -> Result<(), VmError> {
        if let Some(id) = id {
            self.incoming.note_aborted(id);
        }
        let _guard = self.lock(vmid).await?;
        if self.store.exists(vmid) {
            return Err(mig(format!("VM {vmid} is already this node's")));
        }
        let Some(state) = self.incoming.with(|m| m.remove(&vmid)) else {
            return Ok(());
        };
        self.drop_incoming(vmid, state).await;
        Ok(())
    }

    async fn drop_incoming(&self, vmid: u32, mut state: Incoming) {
        if let Some(task) = state.forwarding.take() {
            task.abort();
        }
        for mut child in state.servers.drain(..) {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        if let Some(run) = self.running(vmid) {
            if let Err(e) = Self::end_qemu(&run.owner, Duration::from_secs(5), None).await {
                warn!(vmid, error = %e, "incoming QEMU did not end");
            }
        }
        if self.store.owner_of(vmid).as_deref() != Some(self.node.as_str()) {
            let _ = self.store.remove_file(vmid);
        }
        for v in state.volumes.drain(..) {
            let _ = self.storage().free(&v);
        }
        if state.forwards {
            let _ = self.forwards.release(vmid);
        }
        info!(vmid, "incoming migration dropped");
    }

    /// Gives up an incoming migration whose source went quiet.
    async fn watch_incoming(&self, vmid: u32) {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let expired = self.incoming.with(|m| match m.get(&vmid) {
                Some(i) => i.renewed.elapsed() > LEASE,
                None => false,
            });
            let gone = self.incoming.with(|m| !m.contains_key(&vmid));
            if gone {
                return;
            }
            if expired {
                warn!(vmid, "source of incoming migration went quiet; giving up");
                let _ = self.incoming_abort(vmid, None).await;
                return;
            }
        }
    }

    /// At agent start: configs of VMs another node's record claims are what an interrupted
    /// migration left here (an incoming one that never committed, or the source's copy of
    /// one that did): their QEMU, local volumes and forwards go.
    pub async fn clean_foreign(&self) {
        for (vmid, owner) in self.store.foreign() {
            warn!(vmid, owner = %owner, "removing the leftovers of a migration (the VM is node '{owner}''s)");
            let run = self.run_dir();
            if let Some(pid) = process::read_pidfile(&cmdline::pid_file(&run, vmid)) {
                if self.is_vm_process(vmid, pid) {
                    let _ = process::terminate(pid, Duration::from_secs(5)).await;
                }
            }
            self.cleanup_runtime(vmid);
            if let Ok(loaded) = self.store.load_any(vmid) {
                for vol in super::update::referenced_volumes(&loaded.conf) {
                    if let Ok(v) = parse_volid(&vol) {
                        let local = !self.storage().pool(&v.storage).is_ok_and(|p| p.shared);
                        let its_own = matches!(v.kind(), hemiron_pve::volume::VolumeKind::Image { vmid: o, .. } if o == vmid);
                        if local && its_own {
                            let _ = self.storage().free(&v);
                        }
                    }
                }
            }
            let _ = self.store.remove_file(vmid);
            let _ = self.forwards.release(vmid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_maps() {
        let m = StorageMap::parse(&["local:fast".into(), "big".into()]).unwrap();
        assert_eq!(m.target_of("local"), "fast");
        assert_eq!(m.target_of("other"), "big");
        let id = StorageMap::parse(&["1".into()]).unwrap();
        assert_eq!(id.target_of("local"), "local");
        assert!(StorageMap::parse(&["a".into(), "b".into()]).is_err());
        assert!(StorageMap::parse(&["a:b".into(), "a:c".into()]).is_err());
    }

    #[test]
    fn volumes_are_renamed_in_drive_lines() {
        let mut props = BTreeMap::new();
        props.insert(
            "scsi0".into(),
            "local:100/vm-100-disk-0.qcow2,size=1G".into(),
        );
        props.insert(
            "scsi1".into(),
            "local:100/vm-100-disk-0.qcow2x,size=1G".into(),
        );
        props.insert("unused0".into(), "local:100/vm-100-disk-0.qcow2".into());
        rename_volume(
            &mut props,
            "local:100/vm-100-disk-0.qcow2",
            "fast:100/vm-100-disk-0.qcow2",
        );
        assert_eq!(props["scsi0"], "fast:100/vm-100-disk-0.qcow2,size=1G");
        assert_eq!(props["scsi1"], "local:100/vm-100-disk-0.qcow2x,size=1G");
        assert_eq!(props["unused0"], "fast:100/vm-100-disk-0.qcow2");
    }

    #[test]
    fn sizes_read_as_proxmox_prints_them() {
        assert_eq!(human_bytes(512.0), "512 B");
        assert_eq!(human_bytes(1536.0 * 1024.0 * 1024.0), "1.5 GiB");
        assert!(version_tuple("7.2.22") > version_tuple("7.2.9"));
    }
}
