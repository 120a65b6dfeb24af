//! Volume IDs (`local:100/vm-100-disk-0.qcow2`, `local:iso/debian.iso`),
//! absolute paths, and the disk allocation syntax the create/config API
//! accepts in drive strings (`local-lvm:32`, `local-lvm:0,import-from=...`,
//! `local-lvm:cloudinit`).

use std::fmt;
use std::str::FromStr;

use crate::schema::full_match;

/// `<storage>:<volname>`, parsed like `PVE::Storage::parse_volume_id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VolumeId {
    /// The storage ID.
    pub storage: String,
    /// The storage-specific volume name.
    pub volname: String,
}

/// Text that is not a volume ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unable to parse volume ID '{0}'")]
pub struct ParseVolumeError(pub String);

impl VolumeId {
    /// Parses `<storage>:<volname>` (storage IDs are
    /// `[a-z][a-z0-9-_.]*[a-z0-9]`, case-insensitive; the name is any
    /// non-empty single line).
    pub fn parse(value: &str) -> Result<VolumeId, ParseVolumeError> {
        let err = || ParseVolumeError(value.to_string());
        let (storage, volname) = value.split_once(':').ok_or_else(err)?;
        let volname = volname.strip_suffix('\n').unwrap_or(volname);
        if crate::schema::NamedFormat::PveStorageId
            .check(storage)
            .is_err()
            || storage.ends_with('\n')
            || volname.is_empty()
            || volname.contains('\n')
        {
            return Err(err());
        }
        Ok(VolumeId {
            storage: storage.to_string(),
            volname: volname.to_string(),
        })
    }

    /// What the volume name says about the content, following the naming
    /// conventions of PVE's storage plugins.
    pub fn kind(&self) -> VolumeKind {
        classify_volname(&self.volname)
    }
}

impl FromStr for VolumeId {
    type Err = ParseVolumeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        VolumeId::parse(s)
    }
}

impl fmt::Display for VolumeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.storage, self.volname)
    }
}

/// The content a volume name denotes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeKind {
    /// A VM/CT image: `100/vm-100-disk-0.qcow2` (directory storages, with
    /// the owning VMID as directory), or `vm-100-disk-0` (block storages).
    Image {
        /// The owning VMID.
        vmid: u32,
        /// The file or volume name (`vm-100-disk-0.qcow2`).
        name: String,
        /// The image format taken from the extension, if any.
        format: Option<String>,
        /// Whether it is a template base image (`base-...`).
        is_base: bool,
    },
    /// `iso/<name>.iso|.img`.
    Iso(String),
    /// `vztmpl/<name>`.
    Vztmpl(String),
    /// `backup/<name>`.
    Backup(String),
    /// `snippets/<name>` (cloud-init custom files, hook scripts).
    Snippets(String),
    /// `import/<name>`.
    Import(String),
    /// Anything else; only the storage plugin knows.
    Other,
}

fn classify_volname(volname: &str) -> VolumeKind {
    let rest = |prefix: &str| {
        volname
            .strip_prefix(prefix)
            .filter(|n| !n.is_empty() && !n.contains('/'))
            .map(str::to_string)
    };
    if let Some(name) = rest("iso/") {
        if full_match(r"(?i).+\.(?:iso|img)", &name) {
            return VolumeKind::Iso(name);
        }
        return VolumeKind::Other;
    }
    if let Some(name) = rest("vztmpl/") {
        return VolumeKind::Vztmpl(name);
    }
    if let Some(name) = rest("backup/") {
        return VolumeKind::Backup(name);
    }
    if let Some(name) = rest("snippets/") {
        return VolumeKind::Snippets(name);
    }
    if let Some(name) = rest("import/") {
        return VolumeKind::Import(name);
    }
    // `<vmid>/<name>` (dir plugins) or `<basevmid>/<basename>/<vmid>/<name>` (linked clones)
    let segments: Vec<&str> = volname.split('/').collect();
    let file = match segments.as_slice() {
        [vmid, name] | [_, _, vmid, name] if is_digits(vmid) => Some((*vmid, *name)),
        [name] => Some(("", *name)),
        _ => None,
    };
    let Some((dir_vmid, name)) = file else {
        return VolumeKind::Other;
    };
    // `(base-|vm-)<vmid>-<rest>[.<format>]`
    let Some(caps) = image_name(name) else {
        return VolumeKind::Other;
    };
    let (is_base, owner, format) = caps;
    let vmid = if dir_vmid.is_empty() {
        owner
    } else {
        dir_vmid.parse().ok()
    };
    match vmid {
        Some(vmid) => VolumeKind::Image {
            vmid,
            name: name.to_string(),
            format,
            is_base,
        },
        None => VolumeKind::Other,
    }
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Splits `vm-100-disk-0.qcow2` into (is_base, Some(100), Some("qcow2")).
fn image_name(name: &str) -> Option<(bool, Option<u32>, Option<String>)> {
    if name.is_empty() || name.contains(char::is_whitespace) {
        return None;
    }
    let (stem, format) = match name.rsplit_once('.') {
        Some((stem, ext)) if matches!(ext, "raw" | "qcow2" | "vmdk" | "subvol") => {
            (stem, Some(ext.to_string()))
        }
        _ => (name, None),
    };
    let is_base = stem.starts_with("base-");
    let owner = stem
        .strip_prefix("base-")
        .or_else(|| stem.strip_prefix("vm-"))
        .and_then(|r| r.split('-').next())
        .and_then(|v| v.parse().ok());
    if owner.is_none() && format.is_none() {
        return None;
    }
    Some((is_base, owner, format))
}

/// What a drive's `file` refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriveFile {
    /// `none`: an empty CD-ROM drive.
    None,
    /// `cdrom`: the host's physical CD-ROM.
    Cdrom,
    /// An absolute host path (`/dev/sdb`).
    Path(String),
    /// A storage volume.
    Volume(VolumeId),
}

impl DriveFile {
    /// Classifies a drive's `file` value (already validated against the
    /// `pve-volume-id-or-qm-path` format).
    pub fn parse(file: &str) -> Result<DriveFile, ParseVolumeError> {
        match file {
            "none" => Ok(DriveFile::None),
            "cdrom" => Ok(DriveFile::Cdrom),
            p if p.starts_with('/') => Ok(DriveFile::Path(p.to_string())),
            v => VolumeId::parse(v).map(DriveFile::Volume),
        }
    }
}

/// A request to allocate a new volume, written where a drive's volume goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Allocation {
    /// `[<storage>:]<size in GiB>` (qemu-server's `$NEW_DISK_RE`). Size 0
    /// combined with `import-from` means "import, size from the source". A
    /// missing storage means the request's `storage` parameter.
    Disk {
        /// The storage, if given.
        storage: Option<String>,
        /// The size in GiB (may be fractional).
        size_gib: f64,
    },
    /// `<storage>:cloudinit`: create the cloud-init drive.
    Cloudinit {
        /// The storage to create it on.
        storage: String,
    },
}

impl Allocation {
    /// Recognises the allocation syntax in a drive's `file` value, as the
    /// create and config-update API calls do before treating the value as
    /// an existing volume.
    pub fn parse(file: &str) -> Option<Allocation> {
        if full_match(r"(([^/:\s]+):)?(\d+(\.\d+)?)", file) {
            let file = file.trim_end_matches('\n');
            let (storage, size) = match file.rsplit_once(':') {
                Some((s, size)) => (Some(s.to_string()), size),
                None => (None, file),
            };
            let size_gib = size.parse().ok()?;
            return Some(Allocation::Disk { storage, size_gib });
        }
        if full_match(r"([^/:\s]+):cloudinit", file) {
            let storage = file.trim_end_matches('\n').strip_suffix(":cloudinit")?;
            return Some(Allocation::Cloudinit {
                storage: storage.to_string(),
            });
        }
        None
    }

    /// The size in bytes (`Disk` only), as qemu-server computes it: GiB → KiB → bytes.
    pub fn size_bytes(&self) -> Option<u64> {
        match self {
            Allocation::Disk { size_gib, .. } => {
                let kib = (size_gib * 1024.0 * 1024.0).trunc();
                (kib.is_finite() && kib >= 0.0).then(|| kib as u64 * 1024)
            }
            Allocation::Cloudinit { .. } => None,
        }
    }
}

/// qemu-server's `drive_is_cloudinit`: the file names a cloud-init volume.
pub fn is_cloudinit_volume(file: &str) -> bool {
    full_match(
        r".*[:/](?:vm-\d+-)?cloudinit(?:\.(?:raw|qcow|qcow2|qed|vmdk|cloop))?",
        file,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_ids() {
        let v = VolumeId::parse("local:100/vm-100-disk-0.qcow2").unwrap();
        assert_eq!(v.storage, "local");
        assert_eq!(
            v.kind(),
            VolumeKind::Image {
                vmid: 100,
                name: "vm-100-disk-0.qcow2".into(),
                format: Some("qcow2".into()),
                is_base: false
            }
        );
        assert_eq!(v.to_string(), "local:100/vm-100-disk-0.qcow2");
        assert_eq!(
            VolumeId::parse("local-lvm:vm-101-disk-1").unwrap().kind(),
            VolumeKind::Image {
                vmid: 101,
                name: "vm-101-disk-1".into(),
                format: None,
                is_base: false
            }
        );
        assert_eq!(
            VolumeId::parse("local:iso/debian-12.iso").unwrap().kind(),
            VolumeKind::Iso("debian-12.iso".into())
        );
        assert_eq!(
            VolumeId::parse("local:snippets/user.yaml").unwrap().kind(),
            VolumeKind::Snippets("user.yaml".into())
        );
        assert!(matches!(
            VolumeId::parse("local:100/base-100-disk-0.raw/101/vm-101-disk-0.qcow2")
                .unwrap()
                .kind(),
            VolumeKind::Image { vmid: 101, .. }
        ));
        for bad in ["local", ":x", "l:x", "1abc:x", "local:", "local:a\nb"] {
            assert!(VolumeId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn drive_files_and_allocations() {
        assert_eq!(DriveFile::parse("none"), Ok(DriveFile::None));
        assert_eq!(
            DriveFile::parse("/dev/sdb"),
            Ok(DriveFile::Path("/dev/sdb".into()))
        );
        assert_eq!(
            Allocation::parse("local-lvm:32"),
            Some(Allocation::Disk {
                storage: Some("local-lvm".into()),
                size_gib: 32.0
            })
        );
        assert_eq!(
            Allocation::parse("0.5"),
            Some(Allocation::Disk {
                storage: None,
                size_gib: 0.5
            })
        );
        assert_eq!(
            Allocation::parse("local-lvm:32").and_then(|a| a.size_bytes()),
            Some(32 << 30)
        );
        assert_eq!(
            Allocation::parse("local-lvm:cloudinit"),
            Some(Allocation::Cloudinit {
                storage: "local-lvm".into()
            })
        );
        assert_eq!(Allocation::parse("local:100/vm-100-disk-0.qcow2"), None);
        assert!(is_cloudinit_volume("local-lvm:vm-100-cloudinit"));
        assert!(is_cloudinit_volume("local:100/vm-100-cloudinit.qcow2"));
        assert!(!is_cloudinit_volume("local:100/vm-100-disk-0.qcow2"));
    }
}
