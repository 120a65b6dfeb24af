//! Backups (`vzdump`) and restores (`POST /nodes/{node}/qemu` with `archive`).
//!
//! An archive is `STORAGE/dump/vzdump-qemu-<vmid>-<YYYY_MM_DD-HH_MM_SS>.tar`, a POSIX tar
//! holding, in this order:
//! - `index.json`: `{"format": "hemiron-vzdump-1", "vmid", "ctime", "compress", "disks":
//!   [{"key", "volid", "size", "file"}]}`;
//! - `qemu-server.conf`: the VM's config when the backup was taken (without pending changes
//!   and snapshots);
//! - `disk-<key>.qcow2` per disk: a full copy, its clusters compressed with zlib or zstd
//!   when `compress` asks for it.
//!
//! A running VM is copied without stopping it and at one instant: QEMU's `blockdev-backup`
//! for every disk starts in one transaction and copies a block out before the guest may
//! overwrite it (`mode=suspend` pauses the guest only while the jobs start; `mode=stop`
//! shuts it down, copies, and starts it again). Disk members are written in place, not
//! copied in (see [`super::archive`]), and are contiguous, so a restore reads a disk
//! straight out of the archive (QEMU's `raw` driver with an offset).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hemiron_pve::config::VmConfig;
use hemiron_pve::mac::MacAddr;
use hemiron_pve::prune::{Backup, Mark, PruneOptions};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::archive::ArchiveWriter;
use super::lifecycle::{StartOptions, StopOptions};
use super::template::wait_job;
use super::{VmError, VmManager};
use crate::storage::{parse_volid, BackupName, ConvertTarget, ImageFormat, VolumeId};
use crate::tasks::TaskContext;

const FORMAT: &str = "hemiron-vzdump-1";

/// How the disks' clusters are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compress {
    None,
    Zlib,
    Zstd,
}

impl Compress {
    /// vzdump's `compress`: `0`, `gzip` (zlib), `zstd`; `lzo` (also what `1` means to
    /// Proxmox) has no qcow2 form.
    pub fn parse(value: &str) -> Result<Compress, String> {
        match value {
            "0" => Ok(Compress::None),
            "gzip" => Ok(Compress::Zlib),
            "zstd" => Ok(Compress::Zstd),
            other => Err(format!(
                "compression '{other}' (lzo) is not supported here (use 0, gzip or zstd)"
            )),
        }
    }

    fn qcow2_type(self) -> Option<&'static str> {
        match self {
            Compress::None => None,
            Compress::Zlib => Some("zlib"),
            Compress::Zstd => Some("zstd"),
        }
    }
}

/// vzdump's `mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Snapshot,
    Suspend,
    Stop,
}

/// One VM's backup.
#[derive(Debug, Clone)]
pub struct BackupRequest {
    pub storage: String,
    pub mode: Mode,
    pub compress: Compress,
    /// KiB/s; `None` or 0: unlimited.
    pub bwlimit_kib: Option<u64>,
    pub notes_template: Option<String>,
    pub protected: bool,
    /// Prune this VM's backups on the storage afterwards with these options.
    pub prune: Option<PruneOptions>,
    /// The node's name, for the notes template.
    pub node: String,
    /// How long a stop-mode backup waits for the guest to shut down.
    pub stopwait: Duration,
}

#[derive(Debug, Serialize, Deserialize)]
struct Index {
    format: String,
    vmid: u32,
    ctime: i64,
    compress: Compress,
    disks: Vec<IndexDisk>,
}

#[derive(Debug, Serialize, Deserialize)]
struct IndexDisk {
    key: String,
    volid: String,
    size: u64,
    file: String,
}

/// Removes a directory when dropped (the backup's scratch space, whatever happens).
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `{{guestname}}`, `{{vmid}}`, `{{node}}` and `{{cluster}}` of a notes template.
fn render_notes(template: &str, name: &str, vmid: u32, node: &str) -> String {
    template
        .replace("{{guestname}}", name)
        .replace("{{vmid}}", &vmid.to_string())
        .replace("{{node}}", node)
        .replace("{{cluster}}", node)
        .replace("\\n", "\n")
}

/// A VM stopped for a stop-mode backup, started again (as a task of its own) if the backup
/// is dropped before it could do so itself.
struct StartAgain<'a> {
    vms: &'a VmManager,
    vmid: u32,
    armed: bool,
}

impl Drop for StartAgain<'_> {
    fn drop(&mut self) {
        if self.armed {
            if let Some(restart) = self.vms.autostart.get() {
                (restart.0)(self.vmid);
            }
        }
    }
}

/// Volumes a restore made, freed when dropped unless taken over by a written config.
struct MadeVolumes {
    storage: crate::storage::Storage,
    volumes: Vec<VolumeId>,
}

impl Drop for MadeVolumes {
    fn drop(&mut self) {
        for v in self.volumes.drain(..) {
            let _ = self.storage.free(&v);
        }
    }
}

/// What a live backup set up in QEMU: undone when it ends, and — when its task is stopped
/// and the backup's future dropped — undone by a task of its own (jobs cancelled, their
/// nodes removed, a guest paused for the start resumed).
struct QemuJobs {
    owner: super::owner::OwnerHandle,
    jobs: Vec<String>,
    nodes: Vec<String>,
    paused: bool,
    open: bool,
}

impl QemuJobs {
    async fn close(mut self, cancel: bool) {
        self.open = false;
        let (jobs, nodes) = (
            std::mem::take(&mut self.jobs),
            std::mem::take(&mut self.nodes),
        );
        undo_jobs(self.owner.clone(), jobs, nodes, self.paused, cancel).await;
    }
}

impl Drop for QemuJobs {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        let (jobs, nodes) = (
            std::mem::take(&mut self.jobs),
            std::mem::take(&mut self.nodes),
        );
        let (owner, paused) = (self.owner.clone(), self.paused);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(undo_jobs(owner, jobs, nodes, paused, true));
        }
    }
}

/// Cancels (when asked) and dismisses backup jobs, removes their target nodes, resumes a
/// guest they paused.
async fn undo_jobs(
    owner: super::owner::OwnerHandle,
    jobs: Vec<String>,
    nodes: Vec<String>,
    resume: bool,
    cancel: bool,
) {
    if resume {
        let _ = owner.resume().await;
    }
    if cancel {
        // Jobs still copying into files that are about to go: cancelled, and waited for.
        for job in &jobs {
            let _ = owner
                .raw(
                    "block-job-cancel",
                    Some(json!({ "device": job, "force": true })),
                )
                .await;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::time::Instant::now() < deadline {
            let listed = owner.raw("query-jobs", None).await.unwrap_or_default();
            let busy = listed.as_array().is_some_and(|a| {
                a.iter().any(|j| {
                    jobs.iter().any(|id| j["id"] == id.as_str())
                        && !matches!(j["status"].as_str(), Some("concluded" | "null"))
                })
            });
            if !busy {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for job in &jobs {
        let _ = owner.raw("job-dismiss", Some(json!({ "id": job }))).await;
    }
    for node in &nodes {
        let _ = owner
            .raw("blockdev-del", Some(json!({ "node-name": node })))
            .await;
    }
}

/// Opens a tar archive and finds where each member's bytes are.
fn members(path: &Path) -> Result<BTreeMap<String, (u64, u64)>, VmError> {
    let bad =
        |e: std::io::Error| VmError::Refused(format!("unreadable archive {}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(bad)?;
    let mut archive = tar::Archive::new(file);
    let mut out = BTreeMap::new();
    // Seeking past the disks instead of reading them: an archive of many gigabytes opens
    // in a few reads.
    for entry in archive.entries_with_seek().map_err(bad)? {
        let entry = entry.map_err(bad)?;
        let name = entry.path().map_err(bad)?.to_string_lossy().into_owned();
        out.insert(name, (entry.raw_file_position(), entry.size()));
    }
    Ok(out)
}

fn read_member(path: &Path, at: (u64, u64)) -> Result<Vec<u8>, VmError> {
    use std::io::{Read, Seek, SeekFrom};
    let bad =
        |e: std::io::Error| VmError::Refused(format!("unreadable archive {}: {e}", path.display()));
    let mut f = std::fs::File::open(path).map_err(bad)?;
    f.seek(SeekFrom::Start(at.0)).map_err(bad)?;
    let mut buf = Vec::new();
    f.take(at.1).read_to_end(&mut buf).map_err(bad)?;
    Ok(buf)
}

/// What a restore needs from an archive.
pub struct Archive {
    pub path: PathBuf,
    index: Index,
    pub conf: VmConfig,
    members: BTreeMap<String, (u64, u64)>,
}

impl Archive {
    pub fn open(path: &Path) -> Result<Archive, VmError> {
        let members = members(path)?;
        let get = |name: &str| {
            members.get(name).copied().ok_or_else(|| {
                VmError::Refused(format!("archive {} has no {name}", path.display()))
            })
        };
        let index: Index = serde_json::from_slice(&read_member(path, get("index.json")?)?)
            .map_err(|e| VmError::Refused(format!("archive index unreadable: {e}")))?;
        if index.format != FORMAT {
            return Err(VmError::Refused(format!(
                "archive format '{}' is not {FORMAT}",
                index.format
            )));
        }
        let text = String::from_utf8(read_member(path, get("qemu-server.conf")?)?)
            .map_err(|_| VmError::Refused("archive config is not text".into()))?;
        let conf = hemiron_pve::config::parse(&text)
            .map_err(|e| VmError::Refused(format!("archive config unreadable: {e}")))?;
        Ok(Archive {
            path: path.to_path_buf(),
            index,
            conf,
            members,
        })
    }

    /// A `json:` spec that lets QEMU read one disk straight out of the archive.
    fn disk_spec(&self, file: &str) -> Result<String, VmError> {
        let (offset, size) = self
            .members
            .get(file)
            .copied()
            .ok_or_else(|| VmError::Refused(format!("archive has no {file}")))?;
        // QEMU's raw driver takes whole sectors; tar pads every member to 512 bytes with
        // zeros, which the image does not read.
        let size = size.div_ceil(512) * 512;
        let spec = ArchiveWriter::qcow2_spec(&self.path, offset, Some(size));
        Ok(format!("json:{spec}"))
    }
}

impl VmManager {
    /// The `vzdump` task for one VM: writes the archive and returns its volume ID.
    pub async fn backup(
        &self,
        vmid: u32,
        req: &BackupRequest,
        log: &TaskContext,
    ) -> Result<String, VmError> {
        let dump = self.storage().dump_dir(&req.storage)?;
        std::fs::create_dir_all(&dump)
            .map_err(|e| VmError::Refused(format!("cannot use {}: {e}", dump.display())))?;
        let stopped_for_backup = req.mode == Mode::Stop && self.running(vmid).is_some();
        if stopped_for_backup {
            log.log("stopping the VM for a stop-mode backup");
            self.shutdown(
                vmid,
                StopOptions {
                    skiplock: false,
                    timeout: req.stopwait,
                    force_stop: true,
                },
                log,
            )
            .await?;
        }
        // Started again however the backup ends; if its task is stopped (this future
        // dropped), by a start task of its own.
        let mut start_again = StartAgain {
            vms: self,
            vmid,
            armed: stopped_for_backup,
        };
        let result = self.backup_locked(vmid, req, &dump, log).await;
        if stopped_for_backup {
            start_again.armed = false;
            log.log("starting the VM again");
            if let Err(e) = self.start(vmid, StartOptions::default(), log).await {
                log.log(format!("could not start the VM again: {e}"));
            }
        }
        let name = result?;
        if let Some(opts) = &req.prune {
            self.prune_backups(vmid, &req.storage, opts, log).await?;
        }
        Ok(format!("{}:backup/{name}", req.storage))
    }

    async fn backup_locked(
        &self,
        vmid: u32,
        req: &BackupRequest,
        dump: &Path,
        log: &TaskContext,
    ) -> Result<String, VmError> {
        let _guard = self.lock(vmid).await?;
        let loaded = self.store.load(vmid)?;
        super::update::check_lock(&loaded.conf, false)?;
        let mut saved = loaded.conf.clone();
        saved.pending = None;
        saved.snapshots.clear();
        saved.main.props.remove("parent");
        // Volume disks; the cloud-init drive is not among them (a restore makes it anew).
        let disks = super::snapshot::volume_disks(&saved.main.props)?;
        // Names have one-second resolution: a second backup within the same second takes
        // the next free one.
        let mut ctime = crate::tasks::unix_now();
        while dump.join(BackupName::format(vmid, ctime, "tar")).exists() {
            ctime += 1;
        }
        let name = BackupName::format(vmid, ctime, "tar");
        let scratch = Scratch(dump.join(format!(".{name}.tmp")));
        std::fs::create_dir_all(&scratch.0)
            .map_err(|e| VmError::Refused(format!("cannot make {}: {e}", scratch.0.display())))?;
        log.log(format!(
            "backing up VM {vmid} ({} disk(s)) to '{}:backup/{name}', mode {:?}, compression {:?}",
            disks.len(),
            req.storage,
            req.mode,
            req.compress
        ));
        let mut index = Index {
            format: FORMAT.into(),
            vmid,
            ctime,
            compress: req.compress,
            disks: Vec::new(),
        };
        for (key, volid, _) in &disks {
            let size = self.storage().volume_size(volid).await?;
            index.disks.push(IndexDisk {
                key: key.to_string(),
                volid: volid.to_string(),
                size,
                file: format!("disk-{key}.qcow2"),
            });
        }
        let rate = req.bwlimit_kib.filter(|r| *r > 0).map(|r| r * 1024);
        let conf_text = hemiron_pve::config::write(&saved)
            .map_err(|e| VmError::Refused(format!("config not written: {e}")))?;
        let index_json = serde_json::to_vec_pretty(&index)
            .map_err(|e| VmError::Refused(format!("index not written: {e}")))?;
        let unwritten = |e: std::io::Error| VmError::Refused(format!("archive not written: {e}"));
        let tmp = scratch.0.join("archive.tar");
        let mut archive = ArchiveWriter::create(&tmp, crate::tasks::unix_now().max(0) as u64)
            .map_err(unwritten)?;
        archive
            .add_data("index.json", &index_json)
            .map_err(unwritten)?;
        archive
            .add_data("qemu-server.conf", conf_text.as_bytes())
            .map_err(unwritten)?;
        let compression = req.compress.qcow2_type();
        match self.running(vmid) {
            Some(run) => {
                // The jobs run at once, so one disk at most grows in place at the end of
                // the archive; the others go to scratch files, copied in afterwards.
                let mut targets = Vec::new();
                let mut in_place = None;
                let mut others = Vec::new();
                for (n, d) in index.disks.iter().enumerate() {
                    if n == 0 {
                        let start = self.empty_qcow2(&scratch.0, d.size, compression).await?;
                        let member = archive.begin_in_place(&start).map_err(unwritten)?;
                        targets.push(ArchiveWriter::qcow2_spec(
                            archive.path(),
                            member.data_at,
                            None,
                        ));
                        in_place = Some(member);
                    } else {
                        let path = scratch.0.join(&d.file);
                        self.storage()
                            .create_qcow2(&path, d.size, compression)
                            .await?;
                        targets.push(json!({
                            "driver": "qcow2",
                            "file": { "driver": "file", "filename": path.to_string_lossy() },
                        }));
                        others.push((d.file.clone(), path));
                    }
                }
                // Suspend mode pauses a running guest while the jobs start (a guest paused
                // already stays paused).
                let suspend = req.mode == Mode::Suspend && run.owner.info().qmpstatus != "paused";
                self.live_backup(
                    &run.owner,
                    &disks,
                    &targets,
                    req.compress,
                    rate,
                    suspend,
                    log,
                )
                .await?;
                if let (Some(member), Some(d)) = (in_place, index.disks.first()) {
                    archive.end_in_place(member, &d.file).map_err(unwritten)?;
                }
                archive = tokio::task::spawn_blocking(move || {
                    for (name, path) in &others {
                        archive.add_file(name, path)?;
                    }
                    Ok::<_, std::io::Error>(archive)
                })
                .await
                .map_err(|e| VmError::Refused(format!("archive not written: {e}")))?
                .map_err(unwritten)?;
            }
            None => {
                // One disk after the other, each written by qemu-img straight into the
                // archive.
                for ((_, volid, _), d) in disks.iter().zip(&index.disks) {
                    let src = self.storage().existing_path(volid)?;
                    let format = crate::storage::volume_format(volid).unwrap_or(ImageFormat::Raw);
                    log.log(format!("copying {volid}"));
                    let start = self.empty_qcow2(&scratch.0, d.size, compression).await?;
                    let member = archive.begin_in_place(&start).map_err(unwritten)?;
                    let spec = ArchiveWriter::qcow2_spec(archive.path(), member.data_at, None);
                    self.storage()
                        .convert_to_qcow2(
                            &src.to_string_lossy(),
                            format,
                            ConvertTarget::Existing(&format!("json:{spec}")),
                            compression,
                            rate,
                        )
                        .await?;
                    archive.end_in_place(member, &d.file).map_err(unwritten)?;
                }
            }
        }
        tokio::task::spawn_blocking(move || archive.finish())
            .await
            .map_err(|e| VmError::Refused(format!("archive not written: {e}")))?
            .map_err(unwritten)?;
        let target = dump.join(&name);
        std::fs::rename(&tmp, &target)
            .map_err(|e| VmError::Refused(format!("archive not stored: {e}")))?;
        if let Ok(d) = std::fs::File::open(dump) {
            let _ = d.sync_all();
        }
        // Protection first: the prune that follows must see it.
        let sidecar = |ext: &str, data: &[u8]| {
            crate::fsutil::write_atomic(&crate::storage::backup_sidecar(&target, ext), data, 0o644)
                .map_err(|e| VmError::Refused(format!("{name}.{ext} not written: {e}")))
        };
        if req.protected {
            sidecar("protected", b"")?;
        }
        if let Some(t) = &req.notes_template {
            let guest = saved.get("name").unwrap_or_default().to_string();
            sidecar("notes", render_notes(t, &guest, vmid, &req.node).as_bytes())?;
        }
        let size = std::fs::metadata(&target).map(|m| m.len()).unwrap_or(0);
        log.log(format!("archive '{name}' written: {size} bytes"));
        Ok(name)
    }

    /// Copies a running VM's disks at one instant: every `blockdev-backup` starts in one
    /// QMP transaction.
    #[allow(clippy::too_many_arguments)]
    async fn live_backup(
        &self,
        owner: &super::owner::OwnerHandle,
        disks: &[(hemiron_pve::views::DriveKey, VolumeId, String)],
        targets: &[serde_json::Value],
        compress: Compress,
        rate: Option<u64>,
        suspend: bool,
        log: &TaskContext,
    ) -> Result<(), VmError> {
        let tag = rand::random::<u32>();
        let mut set_up = QemuJobs {
            owner: owner.clone(),
            jobs: Vec::new(),
            nodes: Vec::new(),
            paused: false,
            open: true,
        };
        let result = async {
            let mut actions = Vec::new();
            for (i, ((_, _, node), spec)) in disks.iter().zip(targets).enumerate() {
                let target = format!("backup-{tag}-{i}");
                let mut spec = spec.clone();
                spec["node-name"] = json!(target);
                owner.raw("blockdev-add", Some(spec)).await?;
                set_up.nodes.push(target.clone());
                let job = format!("{target}-job");
                let mut data = json!({
                    "job-id": job, "device": node, "target": target, "sync": "full",
                    "compress": compress != Compress::None, "auto-dismiss": false,
                });
                if let Some(r) = rate {
                    data["speed"] = json!(r);
                }
                actions.push(json!({ "type": "blockdev-backup", "data": data }));
                set_up.jobs.push(job);
            }
            if suspend {
                owner.pause().await?;
                set_up.paused = true;
            }
            let started = if actions.is_empty() {
                Ok(json!({}))
            } else {
                owner
                    .raw("transaction", Some(json!({ "actions": actions })))
                    .await
            };
            if suspend {
                set_up.paused = false;
                if let Err(e) = owner.resume().await {
                    log.log(format!("WARNING: the guest could not be resumed: {e}"));
                }
            }
            started?;
            // The backup's instant: what the guest writes from here on is not in it.
            log.log(format!(
                "backup jobs started for {} disk(s); the guest runs on",
                set_up.jobs.len()
            ));
            for job in &set_up.jobs {
                wait_job(owner, job, log).await?;
            }
            Ok::<(), VmError>(())
        }
        .await;
        set_up.close(result.is_err()).await;
        result
    }

    /// The bytes of an empty qcow2 image of `size` bytes: what an in-place member starts
    /// with.
    async fn empty_qcow2(
        &self,
        scratch: &Path,
        size: u64,
        compression: Option<&str>,
    ) -> Result<Vec<u8>, VmError> {
        let path = scratch.join(format!("empty-{}.qcow2", rand::random::<u32>()));
        self.storage()
            .create_qcow2(&path, size, compression)
            .await?;
        let bytes = std::fs::read(&path).map_err(VmError::Runtime)?;
        let _ = std::fs::remove_file(&path);
        Ok(bytes)
    }

    /// Prunes VM `vmid`'s backups on `storage` (protected ones stay).
    pub async fn prune_backups(
        &self,
        vmid: u32,
        storage: &str,
        opts: &PruneOptions,
        log: &TaskContext,
    ) -> Result<(), VmError> {
        let found = self
            .storage()
            .list(storage, Some("backup"), Some(vmid))
            .await?;
        let groups: Vec<Backup> = found
            .iter()
            .map(|e| Backup {
                ctime: e.ctime.unwrap_or(0),
                protected: e.protected.is_some(),
            })
            .collect();
        let marks = hemiron_pve::prune::mark(&groups, opts, time::UtcOffset::UTC);
        for (entry, mark) in found.iter().zip(marks) {
            if mark == Mark::Remove {
                log.log(format!("prune: removing backup '{}' ({opts})", entry.volid));
                self.storage().remove_backup(&parse_volid(&entry.volid)?)?;
            }
        }
        Ok(())
    }

    /// The `qmrestore` task: VM `vmid` made from `archive` (reserved here beforehand), or,
    /// with `replace`, the stopped VM of that id replaced — its old disks are freed only
    /// once the new config is written. Disks go to `storage`, or where they were when that
    /// storage exists here. A VM restored under another VMID (or with `unique`) gets new
    /// MAC addresses and SMBIOS UUID; the VM generation ID is always renewed.
    pub async fn restore(
        &self,
        vmid: u32,
        archive: &Archive,
        storage: Option<&str>,
        unique: bool,
        replace: bool,
        log: &TaskContext,
    ) -> Result<(), VmError> {
        let _guard = self.lock(vmid).await?;
        let old = if replace {
            if self.running(vmid).is_some() {
                return Err(VmError::Refused(format!(
                    "VM {vmid} is running; stop it before restoring over it"
                )));
            }
            Some(self.store.load(vmid)?.conf)
        } else {
            None
        };
        let from = archive.index.vmid;
        log.log(format!(
            "restoring VM {vmid} from '{}' (backup of VM {from} taken at {})",
            archive.path.display(),
            archive.index.ctime
        ));
        let mut conf = archive.conf.clone();
        // What the archive does not hold is not referenced: unused disks, the snapshot parent.
        conf.main
            .props
            .retain(|k, _| !k.starts_with("unused") && k != "parent" && k != "lock");
        // Volumes made so far go again unless the new config names them — also when the
        // task is stopped and this future dropped.
        let mut made = MadeVolumes {
            storage: self.storage().clone(),
            volumes: Vec::new(),
        };
        let result = async {
            for d in &archive.index.disks {
                let old_vol = parse_volid(&d.volid)?;
                let target = match storage {
                    Some(s) => s.to_string(),
                    None if self.storage().pool(&old_vol.storage).is_ok() => {
                        old_vol.storage.clone()
                    }
                    None => "local".to_string(),
                };
                let format = crate::storage::volume_format(&old_vol).unwrap_or(ImageFormat::Qcow2);
                let spec = archive.disk_spec(&d.file)?;
                // Only a plain image: no backing or external data file that would pull
                // other files of this host into the VM.
                let info = self.storage().info_json(&spec).await?;
                if info.get("backing-filename").is_some()
                    || info["format-specific"]["data"].get("data-file").is_some()
                    || info["format"] != "qcow2"
                {
                    return Err(VmError::Refused(format!(
                        "archive disk {} is not a plain qcow2 image",
                        d.file
                    )));
                }
                log.log(format!(
                    "restoring disk {} ({}) to storage '{target}'",
                    d.key, d.volid
                ));
                let new = self
                    .storage()
                    .import_spec(&target, vmid, &spec, format)
                    .await?;
                made.volumes.push(new.clone());
                if let Some(value) = conf.main.props.get(&d.key).cloned() {
                    conf.main
                        .props
                        .insert(d.key.clone(), value.replacen(&d.volid, &new.to_string(), 1));
                }
            }
            Ok::<(), VmError>(())
        }
        .await;
        result?;
        if from != vmid {
            // The cloud-init drive is made anew at start, as this VM's own volume.
            for value in conf.main.props.values_mut() {
                if value.contains(&format!("vm-{from}-cloudinit")) {
                    *value = value
                        .replace(
                            &format!("{from}/vm-{from}-cloudinit"),
                            &format!("{vmid}/vm-{vmid}-cloudinit"),
                        )
                        .replace(
                            &format!("vm-{from}-cloudinit"),
                            &format!("vm-{vmid}-cloudinit"),
                        );
                }
            }
        }
        renew_identity(&mut conf, unique || from != vmid);
        self.store.write(vmid, &conf)?;
        made.volumes.clear();
        if let Some(old) = old {
            let keep = super::update::referenced_volumes(&conf);
            let owned: Vec<String> = super::update::referenced_volumes(&old)
                .into_iter()
                .filter(|v| !keep.contains(v))
                .filter(|v| {
                    parse_volid(v).is_ok_and(|p| {
                        matches!(p.kind(), hemiron_pve::volume::VolumeKind::Image { vmid: o, .. } if o == vmid)
                    })
                })
                .collect();
            self.free_unneeded(vmid, owned, Some(log))?;
        }
        if conf.main.props.contains_key("net0") {
            self.forwards.ensure(vmid)?;
        }
        log.log(format!("VM {vmid} restored"));
        Ok(())
    }
}

/// A new VM generation ID (the guest learns it was restored), and with `copy` new MAC
/// addresses and SMBIOS UUID, for a copy that runs beside the original (cloud-init keys its
/// instance on the UUID).
fn renew_identity(conf: &mut VmConfig, copy: bool) {
    let keys: Vec<String> = conf.main.props.keys().cloned().collect();
    for key in keys {
        let Some(value) = conf.main.props.get(&key).cloned() else {
            continue;
        };
        if copy && key.starts_with("net") && key[3..].chars().all(|c| c.is_ascii_digit()) {
            let renewed: Vec<String> = value
                .split(',')
                .map(|part| match part.split_once('=') {
                    Some((model, mac)) if mac.parse::<MacAddr>().is_ok() => {
                        format!("{model}={}", MacAddr::random_proxmox())
                    }
                    _ => part.to_string(),
                })
                .collect();
            conf.main.props.insert(key, renewed.join(","));
        } else if copy && key == "smbios1" {
            let renewed: Vec<String> = value
                .split(',')
                .map(|part| {
                    if part.starts_with("uuid=") {
                        format!("uuid={}", uuid::Uuid::new_v4())
                    } else {
                        part.to_string()
                    }
                })
                .collect();
            conf.main.props.insert(key, renewed.join(","));
        } else if key == "vmgenid" {
            conf.main
                .props
                .insert(key, uuid::Uuid::new_v4().to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compress_options() {
        assert_eq!(Compress::parse("0"), Ok(Compress::None));
        assert_eq!(Compress::parse("gzip"), Ok(Compress::Zlib));
        assert!(Compress::parse("1").is_err());
        assert_eq!(Compress::parse("zstd"), Ok(Compress::Zstd));
        assert!(Compress::parse("lzo").is_err());
    }

    #[test]
    fn notes_templates() {
        assert_eq!(
            render_notes(
                "{{guestname}} ({{vmid}}) on {{node}}\\nnightly",
                "web",
                100,
                "n1"
            ),
            "web (100) on n1\nnightly"
        );
    }

    #[test]
    fn a_copy_gets_its_own_identity() {
        let mut conf = hemiron_pve::config::parse(
            "net0: virtio=BC:24:11:00:00:01,bridge=vmbr0\nsmbios1: uuid=6b5f0c4e-0000-4000-8000-000000000001\nvmgenid: 11111111-2222-3333-4444-555555555555\nname: a\n",
        )
        .unwrap();
        renew_identity(&mut conf, true);
        let net = conf.get("net0").unwrap();
        assert!(net.starts_with("virtio=") && net.ends_with(",bridge=vmbr0"));
        assert!(!net.contains("BC:24:11:00:00:01"));
        assert!(!conf.get("smbios1").unwrap().contains("000000000001"));
        assert_ne!(
            conf.get("vmgenid"),
            Some("11111111-2222-3333-4444-555555555555")
        );
        assert_eq!(conf.get("name"), Some("a"));
    }
}
