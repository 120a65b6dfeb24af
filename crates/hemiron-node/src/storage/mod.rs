//! Directory storage pools holding qcow2 (or raw) volumes, named as Proxmox's `dir` storage.
//!
//! A pool `local` always exists under the data dir; `--shared-storage PATH` adds `shared`,
//! marked shared (the same path on every node, standing in for NFS or Ceph). Volume IDs read
//! `STORAGE:VMID/vm-VMID-disk-N.qcow2` for images, `STORAGE:iso/NAME` for ISO images,
//! `STORAGE:snippets/NAME`, `STORAGE:import/NAME` and `STORAGE:backup/NAME`, and map to
//! `POOL/images/VMID/…`, `POOL/template/iso/…`, `POOL/snippets/…`, `POOL/import/…` and
//! `POOL/dump/…` as in Proxmox. Disk images are made and copied with `qemu-img`.

use std::path::{Path, PathBuf};

mod image;

pub use image::{image_info, ConvertTarget, SnapshotOp};
use serde::Serialize;

/// Failure of a storage operation.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage '{0}' does not exist")]
    UnknownStorage(String),
    #[error("unable to parse volume ID '{0}'")]
    BadVolumeId(String),
    #[error("volume '{0}' does not exist")]
    VolumeNotFound(String),
    #[error("storage '{storage}' does not support content type '{content}'")]
    ContentNotSupported { storage: String, content: String },
    #[error("unsupported format '{0}' (only qcow2 and raw are supported)")]
    UnsupportedFormat(String),
    #[error("import source '{0}' does not exist or is not a file")]
    ImportSourceMissing(String),
    #[error("failed to create directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to remove volume file {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to run qemu-img {action}")]
    SpawnQemuImg {
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("qemu-img {action} failed: {stderr}")]
    QemuImg {
        action: &'static str,
        stderr: String,
    },
    #[error("qemu-img {action} gave unreadable output")]
    QemuImgOutput {
        action: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("failed to read storage {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("shrinking disks is not supported")]
    Shrink,
    #[error("volume '{0}' is not a base image of a template")]
    NotBase(String),
    #[error("volume '{0}' is already a base image")]
    AlreadyBase(String),
    #[error("linked clones must be on the storage of their base ('{0}')")]
    LinkedElsewhere(String),
    #[error("base volume '{base}' is still in use by linked clones: {clones}")]
    BaseInUse { base: String, clones: String },
    #[error("failed to rename {path}")]
    Rename {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Image formats a volume may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Qcow2,
    Raw,
}

impl ImageFormat {
    pub fn parse(s: &str) -> Result<Self, StorageError> {
        match s {
            "qcow2" => Ok(Self::Qcow2),
            "raw" => Ok(Self::Raw),
            other => Err(StorageError::UnsupportedFormat(other.to_string())),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Qcow2 => "qcow2",
            Self::Raw => "raw",
        }
    }
}

/// One directory pool.
#[derive(Debug, Clone)]
pub struct Pool {
    pub id: String,
    pub path: PathBuf,
    pub shared: bool,
}

/// Content types a dir pool holds, as Proxmox names them.
pub const POOL_CONTENT: &[&str] = &["images", "iso", "backup", "snippets", "import"];

pub use hemiron_pve::volume::{VolumeId, VolumeKind};

/// The image format implied by a volume's file extension.
pub fn volume_format(volid: &VolumeId) -> Option<ImageFormat> {
    match volid.kind() {
        VolumeKind::Image { format, .. } => {
            format.as_deref().and_then(|f| ImageFormat::parse(f).ok())
        }
        _ => None,
    }
}

/// Parses a volume ID, refusing names that would escape the pool directory.
pub fn parse_volid(volid: &str) -> Result<VolumeId, StorageError> {
    let bad = || StorageError::BadVolumeId(volid.to_string());
    let v = VolumeId::parse(volid).map_err(|_| bad())?;
    let name_ok = !v.volname.starts_with('/')
        && v.volname
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if !name_ok {
        return Err(bad());
    }
    Ok(v)
}

/// Entry of `GET /nodes/{node}/storage/{storage}/content`.
#[derive(Debug, Clone, Serialize)]
pub struct ContentEntry {
    pub volid: String,
    pub content: String,
    pub format: String,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vmid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ctime: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// A backup's notes (`ARCHIVE.notes`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
    /// A backup that pruning never removes (`ARCHIVE.protected` exists).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protected: Option<u8>,
}

/// A backup archive's companion file, `ARCHIVE.notes` or `ARCHIVE.protected`, as Proxmox
/// keeps them.
pub fn backup_sidecar(archive: &Path, ext: &str) -> PathBuf {
    let mut p = archive.as_os_str().to_owned();
    p.push(format!(".{ext}"));
    PathBuf::from(p)
}

/// A backup archive's name: `vzdump-qemu-<vmid>-<YYYY_MM_DD-HH_MM_SS>.<ext>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupName {
    pub vmid: u32,
    /// Creation time (UTC), Unix seconds.
    pub ctime: i64,
}

impl BackupName {
    /// The name for a new archive of `vmid` made at `ctime`.
    pub fn format(vmid: u32, ctime: i64, ext: &str) -> String {
        let t = time::OffsetDateTime::from_unix_timestamp(ctime)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        format!(
            "vzdump-qemu-{vmid}-{:04}_{:02}_{:02}-{:02}_{:02}_{:02}.{ext}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        )
    }

    /// Reads an archive name; `None` for anything else (sidecar files included).
    pub fn parse(name: &str) -> Option<BackupName> {
        let rest = name.strip_prefix("vzdump-qemu-")?;
        let (vmid, rest) = rest.split_once('-')?;
        let vmid: u32 = vmid.parse().ok()?;
        let stamp = rest.get(..19)?;
        let ext = rest.get(19..)?;
        // Archives only (Proxmox's names for them), not their `.log`, `.notes` or
        // `.protected` companions.
        const ARCHIVES: [&str; 8] = [
            ".tar", ".tar.gz", ".tar.lzo", ".tar.zst", ".vma", ".vma.gz", ".vma.lzo", ".vma.zst",
        ];
        if !ARCHIVES.contains(&ext) {
            return None;
        }
        let num = |a: usize, b: usize| stamp.get(a..b)?.parse::<u16>().ok();
        let sep = |i: usize| stamp.as_bytes().get(i).copied();
        if sep(4) != Some(b'_') || sep(7) != Some(b'_') || sep(10) != Some(b'-') {
            return None;
        }
        let date = time::Date::from_calendar_date(
            i32::from(num(0, 4)?),
            time::Month::try_from(u8::try_from(num(5, 7)?).ok()?).ok()?,
            u8::try_from(num(8, 10)?).ok()?,
        )
        .ok()?;
        let clock = time::Time::from_hms(
            u8::try_from(num(11, 13)?).ok()?,
            u8::try_from(num(14, 16)?).ok()?,
            u8::try_from(num(17, 19)?).ok()?,
        )
        .ok()?;
        Some(BackupName {
            vmid,
            ctime: date.with_time(clock).assume_utc().unix_timestamp(),
        })
    }
}

/// Space of a pool's file system.
#[derive(Debug, Clone, Copy)]
pub struct PoolUsage {
    pub total: u64,
    pub used: u64,
    pub avail: u64,
}

/// The node's pools.
#[derive(Debug, Clone)]
pub struct Storage {
    pools: Vec<Pool>,
}

impl Storage {
    pub fn new(local: PathBuf, shared: Option<PathBuf>) -> Self {
        let mut pools = vec![Pool {
            id: "local".into(),
            path: local,
            shared: false,
        }];
        if let Some(path) = shared {
            pools.push(Pool {
                id: "shared".into(),
                path,
                shared: true,
            });
        }
        Self { pools }
    }

    pub fn pools(&self) -> &[Pool] {
        &self.pools
    }

    pub fn pool(&self, id: &str) -> Result<&Pool, StorageError> {
        self.pools
            .iter()
            .find(|p| p.id == id)
            .ok_or_else(|| StorageError::UnknownStorage(id.to_string()))
    }

    /// Creates each pool's directories.
    pub fn create_dirs(&self) -> Result<(), StorageError> {
        for pool in &self.pools {
            for sub in ["images", "template/iso", "dump", "snippets", "import"] {
                let dir = pool.path.join(sub);
                std::fs::create_dir_all(&dir)
                    .map_err(|source| StorageError::CreateDir { path: dir, source })?;
            }
        }
        Ok(())
    }

    /// The file behind a volume ID.
    pub fn path(&self, volid: &VolumeId) -> Result<PathBuf, StorageError> {
        let pool = self.pool(&volid.storage)?;
        let rel = &volid.volname;
        if rel.starts_with('/')
            || rel
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(StorageError::BadVolumeId(volid.to_string()));
        }
        Ok(match volid.kind() {
            VolumeKind::Iso(name) => pool.path.join("template/iso").join(name),
            VolumeKind::Backup(name) => pool.path.join("dump").join(name),
            VolumeKind::Snippets(name) => pool.path.join("snippets").join(name),
            VolumeKind::Import(name) => pool.path.join("import").join(name),
            VolumeKind::Image { vmid, name, .. } => {
                pool.path.join("images").join(vmid.to_string()).join(name)
            }
            _ => return Err(StorageError::BadVolumeId(volid.to_string())),
        })
    }

    /// The file behind a volume ID, which must exist.
    pub fn existing_path(&self, volid: &VolumeId) -> Result<PathBuf, StorageError> {
        let path = self.path(volid)?;
        if !path.exists() {
            return Err(StorageError::VolumeNotFound(volid.to_string()));
        }
        Ok(path)
    }

    /// Deletes a volume's file.
    pub fn free(&self, volid: &VolumeId) -> Result<(), StorageError> {
        let path = self.path(volid)?;
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(StorageError::Remove { path, source }),
        }
        if let Some(dir) = path.parent() {
            // Leave no empty per-VM image directory behind; fails harmlessly if not empty.
            let _ = std::fs::remove_dir(dir);
        }
        Ok(())
    }

    /// Removes a backup archive with its notes and protection mark.
    pub fn remove_backup(&self, volid: &VolumeId) -> Result<(), StorageError> {
        let path = self.path(volid)?;
        if let Err(source) = std::fs::remove_file(&path) {
            if source.kind() != std::io::ErrorKind::NotFound {
                return Err(StorageError::Remove { path, source });
            }
        }
        for ext in ["notes", "protected"] {
            let _ = std::fs::remove_file(backup_sidecar(&path, ext));
        }
        Ok(())
    }

    /// Where a pool keeps its backup archives.
    pub fn dump_dir(&self, storage: &str) -> Result<PathBuf, StorageError> {
        Ok(self.pool(storage)?.path.join("dump"))
    }

    /// Space on a pool's file system.
    pub fn usage(&self, storage: &str) -> Result<PoolUsage, StorageError> {
        let pool = self.pool(storage)?;
        let st = rustix::fs::statvfs(&pool.path).map_err(|e| StorageError::Read {
            path: pool.path.clone(),
            source: e.into(),
        })?;
        let total = st.f_blocks * st.f_frsize;
        let avail = st.f_bavail * st.f_frsize;
        let free = st.f_bfree * st.f_frsize;
        Ok(PoolUsage {
            total,
            used: total.saturating_sub(free),
            avail,
        })
    }

    /// Lists a pool's volumes, optionally of one content type and one VM.
    pub async fn list(
        &self,
        storage: &str,
        content: Option<&str>,
        vmid: Option<u32>,
    ) -> Result<Vec<ContentEntry>, StorageError> {
        let pool = self.pool(storage)?.clone();
        if let Some(c) = content {
            if !POOL_CONTENT.contains(&c) {
                return Err(StorageError::ContentNotSupported {
                    storage: storage.to_string(),
                    content: c.to_string(),
                });
            }
        }
        let wants = |c: &str| content.is_none_or(|want| want == c);
        let mut out = Vec::new();
        if wants("images") {
            let images = pool.path.join("images");
            for vm_dir in read_dir_sorted(&images)? {
                let Some(owner) = vm_dir
                    .file_name()
                    .and_then(|n| n.to_str()?.parse::<u32>().ok())
                else {
                    continue;
                };
                if vmid.is_some_and(|v| v != owner) {
                    continue;
                }
                for file in read_dir_sorted(&vm_dir)? {
                    let Some(name) = file.file_name().and_then(|n| n.to_str()) else {
                        continue;
                    };
                    if name.starts_with('.') {
                        continue;
                    }
                    let volid = VolumeId {
                        storage: storage.to_string(),
                        volname: format!("{owner}/{name}"),
                    };
                    let Some(format) = volume_format(&volid) else {
                        continue;
                    };
                    let info = image_info(&file).await.ok();
                    // A linked clone's volume ID names its base, as Proxmox's dir storage does.
                    let parent = info
                        .as_ref()
                        .and_then(|i| i.backing_filename.as_deref())
                        .and_then(base_of_backing);
                    let volid = match &parent {
                        Some(base) => VolumeId {
                            storage: storage.to_string(),
                            volname: format!("{base}/{owner}/{name}"),
                        },
                        None => volid,
                    };
                    out.push(ContentEntry {
                        volid: volid.to_string(),
                        content: "images".into(),
                        format: format.as_str().into(),
                        size: info.as_ref().map(|i| i.virtual_size).unwrap_or(0),
                        used: info.as_ref().and_then(|i| i.actual_size),
                        vmid: Some(owner),
                        ctime: ctime(&file),
                        parent: parent.map(|b| format!("{storage}:{b}")),
                        notes: None,
                        protected: None,
                    });
                }
            }
        }
        if wants("backup") {
            for file in read_dir_sorted(&pool.path.join("dump"))? {
                let Some(name) = file.file_name().and_then(|n| n.to_str()) else {
                    continue;
                };
                let Some(parsed) = BackupName::parse(name) else {
                    continue;
                };
                if vmid.is_some_and(|v| v != parsed.vmid) || !file.is_file() {
                    continue;
                }
                out.push(ContentEntry {
                    volid: format!("{storage}:backup/{name}"),
                    content: "backup".into(),
                    format: name.split_once('.').map(|(_, e)| e).unwrap_or("").into(),
                    size: std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0),
                    used: None,
                    vmid: Some(parsed.vmid),
                    ctime: Some(parsed.ctime),
                    parent: None,
                    notes: std::fs::read_to_string(backup_sidecar(&file, "notes")).ok(),
                    protected: backup_sidecar(&file, "protected").exists().then_some(1),
                });
            }
        }
        if vmid.is_none() {
            let flat: [(&str, PathBuf, &str); 3] = [
                ("iso", pool.path.join("template/iso"), "iso/"),
                ("snippets", pool.path.join("snippets"), "snippets/"),
                ("import", pool.path.join("import"), "import/"),
            ];
            for (kind, dir, prefix) in flat {
                if !wants(kind) {
                    continue;
                }
                for file in read_dir_sorted(&dir)? {
                    let Some(name) = file.file_name().and_then(|n| n.to_str()) else {
                        continue;
                    };
                    if name.starts_with('.') || !file.is_file() {
                        continue;
                    }
                    let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
                    let format = Path::new(name)
                        .extension()
                        .map(|e| e.to_string_lossy().into_owned())
                        .unwrap_or_else(|| "raw".into());
                    out.push(ContentEntry {
                        volid: format!("{storage}:{prefix}{name}"),
                        content: kind.into(),
                        format,
                        size,
                        used: None,
                        vmid: None,
                        ctime: ctime(&file),
                        parent: None,
                        notes: None,
                        protected: None,
                    });
                }
            }
        }
        Ok(out)
    }
}

/// `../100/base-100-disk-0.qcow2` (how linked clones point at their base) → its volume
/// name `100/base-100-disk-0.qcow2`.
fn base_of_backing(backing: &str) -> Option<String> {
    let rel = backing.strip_prefix("../")?;
    let (vmid, name) = rel.split_once('/')?;
    (vmid.parse::<u32>().is_ok() && name.starts_with("base-") && !name.contains('/'))
        .then(|| format!("{vmid}/{name}"))
}

fn ctime(path: &Path) -> Option<i64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ctime())
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>, StorageError> {
    match std::fs::read_dir(dir) {
        Ok(rd) => {
            let mut v: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
            v.sort();
            Ok(v)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(StorageError::Read {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_names() {
        let ctime = 1_796_519_515; // 2026-12-06 01:11:55 UTC
        let name = BackupName::format(100, ctime, "tar");
        assert_eq!(name, "vzdump-qemu-100-2026_12_06-01_11_55.tar");
        assert_eq!(
            BackupName::parse(&name),
            Some(BackupName { vmid: 100, ctime })
        );
        assert_eq!(
            BackupName::parse("vzdump-qemu-7-2020_02_29-23_59_59.vma.zst").map(|b| b.vmid),
            Some(7)
        );
        for other in [
            "vzdump-qemu-100-2026_12_06-01_11_55.tar.notes",
            "vzdump-qemu-100-2026_12_06-01_11_55.tar.protected",
            "vzdump-qemu-100-2026_02_30-01_11_55.tar",
            "vzdump-lxc-100-2026_12_06-01_11_55.tar",
            "vzdump-qemu-x-2026_12_06-01_11_55.tar",
            "vzdump-qemu-100-2026_12_06-01_11_55",
            "vzdump-qemu-100-2026_12_06-01_11_55.log",
        ] {
            assert_eq!(BackupName::parse(other), None, "{other}");
        }
    }

    proptest::proptest! {
        #[test]
        fn backup_names_round_trip_and_never_panic(vmid in 100u32..1_000_000, ctime in 0i64..4_000_000_000, junk in ".{0,60}") {
            let name = BackupName::format(vmid, ctime, "tar");
            proptest::prop_assert_eq!(BackupName::parse(&name), Some(BackupName { vmid, ctime }));
            let _ = BackupName::parse(&junk);
            let _ = BackupName::parse(&format!("vzdump-qemu-{junk}"));
        }
    }

    #[test]
    fn volume_ids() {
        let v = parse_volid("local:100/vm-100-disk-0.qcow2").unwrap();
        assert_eq!(volume_format(&v), Some(ImageFormat::Qcow2));
        let st = Storage::new(PathBuf::from("/p"), None);
        assert_eq!(
            st.path(&v).unwrap(),
            PathBuf::from("/p/images/100/vm-100-disk-0.qcow2")
        );
        let iso = parse_volid("local:iso/x.iso").unwrap();
        assert_eq!(
            st.path(&iso).unwrap(),
            PathBuf::from("/p/template/iso/x.iso")
        );
        for bad in [
            "local",
            ":x",
            "local:../etc/passwd",
            "local:/abs",
            "lo cal:x",
            "local:a//b",
        ] {
            assert!(parse_volid(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn alloc_import_list_free() {
        let dir = tempfile::tempdir().unwrap();
        let st = Storage::new(dir.path().join("local"), None);
        st.create_dirs().unwrap();
        let v0 = st
            .alloc("local", 100, 1 << 20, ImageFormat::Qcow2)
            .await
            .unwrap();
        assert_eq!(v0.to_string(), "local:100/vm-100-disk-0.qcow2");
        let src = st.path(&v0).unwrap();
        let v1 = st
            .import("local", 100, &src, ImageFormat::Qcow2)
            .await
            .unwrap();
        assert_eq!(v1.to_string(), "local:100/vm-100-disk-1.qcow2");
        assert_eq!(st.volume_size(&v1).await.unwrap(), 1 << 20);
        st.resize_offline(&v1, 2 << 20).await.unwrap();
        assert!(matches!(
            st.resize_offline(&v1, 1 << 20).await,
            Err(StorageError::Shrink)
        ));
        let list = st.list("local", Some("images"), None).await.unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[1].size, 2 << 20);
        st.free(&v0).unwrap();
        st.free(&v1).unwrap();
        assert!(st.list("local", None, None).await.unwrap().is_empty());
        assert!(!dir.path().join("local/images/100").exists());
    }

    #[tokio::test]
    async fn template_clones_and_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let st = Storage::new(dir.path().join("local"), None);
        st.create_dirs().unwrap();
        let v = st
            .alloc("local", 100, 1 << 20, ImageFormat::Qcow2)
            .await
            .unwrap();
        let base = st.make_base(&v).unwrap();
        assert_eq!(base.to_string(), "local:100/base-100-disk-0.qcow2");
        assert!(st.make_base(&base).is_err());
        let linked = st.clone_linked(&base, 101).await.unwrap();
        assert_eq!(
            linked.to_string(),
            "local:100/base-100-disk-0.qcow2/101/vm-101-disk-0.qcow2"
        );
        assert!(st
            .path(&linked)
            .unwrap()
            .ends_with("images/101/vm-101-disk-0.qcow2"));
        let listed = st.list("local", Some("images"), Some(101)).await.unwrap();
        assert_eq!(listed[0].volid, linked.to_string());
        assert_eq!(
            listed[0].parent.as_deref(),
            Some("local:100/base-100-disk-0.qcow2")
        );
        assert_eq!(
            st.linked_clones_of(&base).await.unwrap(),
            vec![linked.to_string()]
        );
        let full = st
            .copy_full(
                &st.path(&base).unwrap(),
                "local",
                102,
                ImageFormat::Qcow2,
                None,
                None,
            )
            .await
            .unwrap();
        assert_eq!(full.to_string(), "local:102/vm-102-disk-0.qcow2");
        assert_eq!(st.volume_size(&full).await.unwrap(), 1 << 20);

        st.snapshot_offline(&linked, SnapshotOp::Create, "s1")
            .await
            .unwrap();
        assert_eq!(
            st.snapshot_names(&linked).await.unwrap(),
            vec!["s1".to_string()]
        );
        st.snapshot_offline(&linked, SnapshotOp::Apply, "s1")
            .await
            .unwrap();
        st.snapshot_offline(&linked, SnapshotOp::Delete, "s1")
            .await
            .unwrap();
        assert!(st.snapshot_names(&linked).await.unwrap().is_empty());
    }
}
