//! Disk images on a pool: creating, importing, resizing, templates (base images), linked and
//! full clones, and internal snapshots — all through `qemu-img`.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;
use tracing::debug;

use super::{volume_format, ImageFormat, Storage, StorageError, VolumeId, VolumeKind};

pub(super) async fn qemu_img(action: &'static str, args: &[&str]) -> Result<Vec<u8>, StorageError> {
    debug!(action, ?args, "qemu-img");
    // A call given up on (its task stopped) stops its qemu-img too.
    let out = Command::new("qemu-img")
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| StorageError::SpawnQemuImg { action, source })?;
    if !out.status.success() {
        return Err(StorageError::QemuImg {
            action,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out.stdout)
}

/// A file removed when dropped, unless taken out.
struct RemoveOnDrop(Option<std::path::PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[derive(serde::Deserialize)]
pub struct QemuImgInfo {
    #[serde(rename = "virtual-size")]
    pub virtual_size: u64,
    #[serde(rename = "actual-size", default)]
    pub actual_size: Option<u64>,
    #[serde(rename = "backing-filename", default)]
    pub backing_filename: Option<String>,
    #[serde(default)]
    pub snapshots: Vec<SnapshotInfo>,
}

#[derive(serde::Deserialize)]
pub struct SnapshotInfo {
    pub name: String,
}

impl Storage {
    fn image_dir(&self, storage: &str, vmid: u32) -> Result<PathBuf, StorageError> {
        Ok(self
            .pool(storage)?
            .path
            .join("images")
            .join(vmid.to_string()))
    }

    /// The next free `vm-VMID-disk-N` name on a pool.
    fn next_disk_name(
        &self,
        storage: &str,
        vmid: u32,
        format: ImageFormat,
    ) -> Result<String, StorageError> {
        let dir = self.image_dir(storage, vmid)?;
        let taken: Vec<String> = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let n = (0..)
            .find(|n| {
                let stem = format!("vm-{vmid}-disk-{n}.");
                let base = format!("base-{vmid}-disk-{n}.");
                !taken
                    .iter()
                    .any(|t| t.starts_with(&stem) || t.starts_with(&base))
            })
            .unwrap_or(0);
        Ok(format!("vm-{vmid}-disk-{n}.{}", format.as_str()))
    }

    /// The directory and file name of the next new volume of `vmid` on a pool.
    fn new_volume_name(
        &self,
        storage: &str,
        vmid: u32,
        format: ImageFormat,
    ) -> Result<(PathBuf, String), StorageError> {
        let dir = self.image_dir(storage, vmid)?;
        std::fs::create_dir_all(&dir).map_err(|source| StorageError::CreateDir {
            path: dir.clone(),
            source,
        })?;
        let name = self.next_disk_name(storage, vmid, format)?;
        Ok((dir, name))
    }

    /// Allocates a new empty volume of `size` bytes for `vmid`.
    pub async fn alloc(
        &self,
        storage: &str,
        vmid: u32,
        size: u64,
        format: ImageFormat,
    ) -> Result<VolumeId, StorageError> {
        let (dir, name) = self.new_volume_name(storage, vmid, format)?;
        let path = dir.join(&name);
        let path_str = path.to_string_lossy().into_owned();
        let size_str = size.to_string();
        qemu_img(
            "create",
            &["create", "-q", "-f", format.as_str(), &path_str, &size_str],
        )
        .await?;
        Ok(VolumeId {
            storage: storage.to_string(),
            volname: format!("{vmid}/{name}"),
        })
    }

    /// Allocates a volume with a given file name (e.g. `vm-100-state-snap1.qcow2`).
    pub async fn alloc_named(
        &self,
        storage: &str,
        vmid: u32,
        name: &str,
        size: u64,
        format: ImageFormat,
    ) -> Result<VolumeId, StorageError> {
        let volid = VolumeId {
            storage: storage.to_string(),
            volname: format!("{vmid}/{name}"),
        };
        let path = self.path(&volid)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| StorageError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let path_str = path.to_string_lossy().into_owned();
        let size_str = size.to_string();
        qemu_img(
            "create",
            &["create", "-q", "-f", format.as_str(), &path_str, &size_str],
        )
        .await?;
        Ok(volid)
    }

    /// Creates a new volume for `vmid` holding a copy of `source` (a file path).
    pub async fn import(
        &self,
        storage: &str,
        vmid: u32,
        source: &Path,
        format: ImageFormat,
    ) -> Result<VolumeId, StorageError> {
        if !source.is_file() {
            return Err(StorageError::ImportSourceMissing(
                source.display().to_string(),
            ));
        }
        self.import_spec(storage, vmid, &source.to_string_lossy(), format)
            .await
    }

    /// [`Storage::import`] from what QEMU can open: a path, or a `json:` block-device spec
    /// (a disk inside a backup archive).
    pub async fn import_spec(
        &self,
        storage: &str,
        vmid: u32,
        source: &str,
        format: ImageFormat,
    ) -> Result<VolumeId, StorageError> {
        let (dir, name) = self.new_volume_name(storage, vmid, format)?;
        let path = dir.join(&name);
        // Convert into a temporary name so that a failed import leaves no half volume.
        let tmp = dir.join(format!(".{name}.importing"));
        let src = source.to_string();
        let tmp_str = tmp.to_string_lossy().into_owned();
        // Removed however this ends unless renamed into place (also when the caller's task
        // is stopped and this future dropped).
        let mut leftover = RemoveOnDrop(Some(tmp.clone()));
        qemu_img(
            "convert",
            &["convert", "-U", "-O", format.as_str(), &src, &tmp_str],
        )
        .await?;
        std::fs::rename(&tmp, &path).map_err(|source| StorageError::CreateDir {
            path: path.clone(),
            source,
        })?;
        leftover.0 = None;
        Ok(VolumeId {
            storage: storage.to_string(),
            volname: format!("{vmid}/{name}"),
        })
    }

    /// Copies `source` (a path or a `json:` spec) into a qcow2 image `target`, its
    /// clusters compressed with `compression` (`zlib`, `zstd`) when given, reading at most
    /// `rate` bytes a second when given.
    pub async fn convert_to_qcow2(
        &self,
        source: &str,
        source_format: ImageFormat,
        target: ConvertTarget<'_>,
        compression: Option<&str>,
        rate: Option<u64>,
    ) -> Result<(), StorageError> {
        // The source's format is given, never probed: a guest may write any header into a
        // raw disk.
        let mut args = vec![
            "convert".to_string(),
            "-U".into(),
            "-f".into(),
            source_format.as_str().into(),
            "-O".into(),
            "qcow2".into(),
        ];
        if let Some(r) = rate {
            args.extend(["-r".into(), r.to_string()]);
        }
        let target = match target {
            ConvertTarget::NewFile(p) => {
                if let Some(c) = compression {
                    args.extend(["-c".into(), "-o".into(), format!("compression_type={c}")]);
                }
                p.to_string_lossy().into_owned()
            }
            ConvertTarget::Existing(spec) => {
                // An empty image made beforehand (its header names the compression type):
                // nothing to create, and zeros need no writing.
                if compression.is_some() {
                    args.push("-c".into());
                }
                args.extend(["-n".into(), "--target-is-zero".into()]);
                spec.to_string()
            }
        };
        args.extend([source.to_string(), target]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        qemu_img("convert", &args).await.map(|_| ())
    }

    /// `qemu-img info` of what QEMU can open (a path or a `json:` spec), as QEMU reports it.
    pub async fn info_json(&self, source: &str) -> Result<serde_json::Value, StorageError> {
        let out = qemu_img("info", &["info", "-U", "--output=json", source]).await?;
        serde_json::from_slice(&out).map_err(|e| {
            StorageError::ImportSourceMissing(format!(
                "{source} (unreadable image information: {e})"
            ))
        })
    }

    /// A new, empty qcow2 file of `size` bytes whose compressed clusters use
    /// `compression` (`zlib`, `zstd`).
    pub async fn create_qcow2(
        &self,
        target: &Path,
        size: u64,
        compression: Option<&str>,
    ) -> Result<(), StorageError> {
        let target = target.to_string_lossy().into_owned();
        let size = size.to_string();
        let opt = format!("compression_type={}", compression.unwrap_or("zlib"));
        qemu_img(
            "create",
            &["create", "-q", "-f", "qcow2", "-o", &opt, &target, &size],
        )
        .await
        .map(|_| ())
    }

    /// Virtual size of a volume in bytes.
    pub async fn volume_size(&self, volid: &VolumeId) -> Result<u64, StorageError> {
        let path = self.existing_path(volid)?;
        Ok(image_info(&path).await?.virtual_size)
    }

    /// Grows a volume that no running VM uses.
    pub async fn resize_offline(
        &self,
        volid: &VolumeId,
        new_size: u64,
    ) -> Result<(), StorageError> {
        let path = self.existing_path(volid)?;
        let current = image_info(&path).await?.virtual_size;
        if new_size < current {
            return Err(StorageError::Shrink);
        }
        let path_str = path.to_string_lossy().into_owned();
        let size = new_size.to_string();
        let mut args = vec!["resize", "-q"];
        if let Some(fmt) = volume_format(volid) {
            args.extend(["-f", fmt.as_str()]);
        }
        args.extend([path_str.as_str(), size.as_str()]);
        qemu_img("resize", &args).await?;
        Ok(())
    }

    /// Turns a VM's volume into a template's read-only base image (`vm-N-disk-K` →
    /// `base-N-disk-K`), as `qm template` does.
    pub fn make_base(&self, volid: &VolumeId) -> Result<VolumeId, StorageError> {
        use std::os::unix::fs::PermissionsExt;
        let VolumeKind::Image {
            vmid,
            name,
            is_base,
            ..
        } = volid.kind()
        else {
            return Err(StorageError::BadVolumeId(volid.to_string()));
        };
        if is_base {
            return Err(StorageError::AlreadyBase(volid.to_string()));
        }
        let Some(rest) = name.strip_prefix("vm-") else {
            return Err(StorageError::BadVolumeId(volid.to_string()));
        };
        // Only a VM's own, unlinked image can become a base.
        if volid.volname != format!("{vmid}/{name}") {
            return Err(StorageError::BadVolumeId(volid.to_string()));
        }
        let from = self.existing_path(volid)?;
        let base = VolumeId {
            storage: volid.storage.clone(),
            volname: format!("{vmid}/base-{rest}"),
        };
        let to = self.path(&base)?;
        std::fs::rename(&from, &to).map_err(|source| StorageError::Rename {
            path: from.clone(),
            source,
        })?;
        // Read-only: a base is shared by every linked clone and must never change.
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o444)).map_err(
            |source| StorageError::Rename {
                path: to.clone(),
                source,
            },
        )?;
        Ok(base)
    }

    /// Creates a linked clone of a base image for `newid`: a qcow2 whose backing file is the
    /// base (relative path, as Proxmox writes it). Returns the clone's volume ID
    /// `STORAGE:B/base-B-disk-K.qcow2/NEWID/vm-NEWID-disk-M.qcow2`.
    pub async fn clone_linked(
        &self,
        base: &VolumeId,
        newid: u32,
    ) -> Result<VolumeId, StorageError> {
        let VolumeKind::Image {
            vmid: base_vmid,
            name: base_name,
            is_base: true,
            ..
        } = base.kind()
        else {
            return Err(StorageError::NotBase(base.to_string()));
        };
        self.existing_path(base)?;
        let (dir, name) = self.new_volume_name(&base.storage, newid, ImageFormat::Qcow2)?;
        let path = dir.join(&name);
        let backing = format!("../{base_vmid}/{base_name}");
        let path_str = path.to_string_lossy().into_owned();
        // qemu-img resolves a relative backing file against the new image's directory.
        qemu_img(
            "create",
            &[
                "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", &backing, &path_str,
            ],
        )
        .await?;
        Ok(VolumeId {
            storage: base.storage.clone(),
            volname: format!("{base_vmid}/{base_name}/{newid}/{name}"),
        })
    }

    /// Copies an image (flattening any backing chain) into a new volume of `newid`: a full
    /// clone. With `snapshot`, the copy is of that internal snapshot.
    pub async fn copy_full(
        &self,
        source: &Path,
        storage: &str,
        newid: u32,
        format: ImageFormat,
        snapshot: Option<&str>,
        rate_kib: Option<u64>,
    ) -> Result<VolumeId, StorageError> {
        let (dir, name) = self.new_volume_name(storage, newid, format)?;
        let path = dir.join(&name);
        let tmp = dir.join(format!(".{name}.copying"));
        let src = source.to_string_lossy().into_owned();
        let tmp_str = tmp.to_string_lossy().into_owned();
        let snap_arg = snapshot.map(|s| format!("snapshot.name={s}"));
        let rate_arg = rate_kib.filter(|r| *r > 0).map(|r| format!("{r}K"));
        let mut args = vec!["convert", "-U", "-O", format.as_str()];
        if let Some(s) = &snap_arg {
            args.extend(["-l", s.as_str()]);
        }
        if let Some(r) = &rate_arg {
            args.extend(["-r", r.as_str()]);
        }
        args.extend([src.as_str(), tmp_str.as_str()]);
        let result = qemu_img("convert", &args).await.and_then(|_| {
            std::fs::rename(&tmp, &path).map_err(|source| StorageError::Rename {
                path: tmp.clone(),
                source,
            })
        });
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result?;
        Ok(VolumeId {
            storage: storage.to_string(),
            volname: format!("{newid}/{name}"),
        })
    }

    /// Linked clones (on any pool) whose backing file is `base`.
    pub async fn linked_clones_of(&self, base: &VolumeId) -> Result<Vec<String>, StorageError> {
        let prefix = format!("{}/", base.volname);
        let entries = self.list(&base.storage, Some("images"), None).await?;
        Ok(entries
            .into_iter()
            .filter(|e| {
                e.volid
                    .split_once(':')
                    .is_some_and(|(_, v)| v.starts_with(&prefix))
            })
            .map(|e| e.volid)
            .collect())
    }

    /// Internal snapshot operations on a volume no running VM uses.
    pub async fn snapshot_offline(
        &self,
        volid: &VolumeId,
        op: SnapshotOp,
        name: &str,
    ) -> Result<(), StorageError> {
        let path = self.existing_path(volid)?;
        let (action, flag) = match op {
            SnapshotOp::Create => ("snapshot create", "-c"),
            SnapshotOp::Apply => ("snapshot apply", "-a"),
            SnapshotOp::Delete => ("snapshot delete", "-d"),
        };
        // Opened with discards passed down, so clusters a deleted snapshot frees are
        // punched out of the file, not just marked free inside it.
        let opts = format!(
            "driver=qcow2,discard=unmap,file.driver=file,file.discard=unmap,file.filename={}",
            path.to_string_lossy().replace(',', ",,")
        );
        qemu_img(
            action,
            &["snapshot", "-q", "--image-opts", flag, name, &opts],
        )
        .await?;
        Ok(())
    }

    /// Names of a volume's internal snapshots.
    pub async fn snapshot_names(&self, volid: &VolumeId) -> Result<Vec<String>, StorageError> {
        let path = self.existing_path(volid)?;
        let info = image_info(&path).await?;
        Ok(info.snapshots.into_iter().map(|s| s.name).collect())
    }
}

/// What to do with an internal snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotOp {
    Create,
    Apply,
    Delete,
}

/// Where `convert_to_qcow2` writes.
#[derive(Debug, Clone, Copy)]
pub enum ConvertTarget<'a> {
    /// A file it creates.
    NewFile(&'a Path),
    /// An empty qcow2 image that exists already (a path or a `json:` spec).
    Existing(&'a str),
}

/// `qemu-img info` of an image, readable while a VM uses it (`-U`).
pub async fn image_info(path: &Path) -> Result<QemuImgInfo, StorageError> {
    let p = path.to_string_lossy().into_owned();
    let out = qemu_img("info", &["info", "-U", "--output=json", &p]).await?;
    serde_json::from_slice(&out).map_err(|source| StorageError::QemuImgOutput {
        action: "info",
        source,
    })
}
