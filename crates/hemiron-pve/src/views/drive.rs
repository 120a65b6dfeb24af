//! Drives: `ide[n]`, `sata[n]`, `scsi[n]`, `virtio[n]`, `efidisk0`, `tpmstate0`.

use std::fmt;

use super::drive_opts::{THROTTLE_INTS, THROTTLE_NUMS};
use super::{Aio, CacheMode, Discard, DriveBus, DriveKey, DriveThrottle, Media};
use super::{Reader, ViewError, Writer};
use crate::schema::{parse_property_string, print_unchecked, PropertyMap};
use crate::size::parse_size;
use crate::spec::drive as fmts;
use crate::volume::{is_cloudinit_volume, Allocation, DriveFile};

/// A parsed drive (qemu-server's `parse_drive` result, minus `interface`
/// and `index`, which live in [`DriveKey`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Drive {
    /// The volume: a volume ID, an absolute path, `none`, `cdrom`, or in API
    /// requests the allocation syntax (see [`Drive::allocation`]).
    pub file: String,
    /// `media`
    pub media: Option<Media>,
    /// `cache`
    pub cache: Option<CacheMode>,
    /// `aio`
    pub aio: Option<Aio>,
    /// `discard`
    pub discard: Option<Discard>,
    /// `format` (image format).
    pub format: Option<String>,
    /// `size` in bytes (printed as `32G`).
    pub size: Option<u64>,
    /// `iothread`
    pub iothread: Option<bool>,
    /// `ssd`
    pub ssd: Option<bool>,
    /// `ro`
    pub ro: Option<bool>,
    /// `backup`
    pub backup: Option<bool>,
    /// `replicate`
    pub replicate: Option<bool>,
    /// `shared`
    pub shared: Option<bool>,
    /// `snapshot`
    pub snapshot: Option<bool>,
    /// `detect_zeroes`
    pub detect_zeroes: Option<bool>,
    /// `scsiblock`
    pub scsiblock: Option<bool>,
    /// `serial` (URL-encoded).
    pub serial: Option<String>,
    /// `model` (URL-encoded, IDE).
    pub model: Option<String>,
    /// `product` (SCSI).
    pub product: Option<String>,
    /// `vendor` (SCSI).
    pub vendor: Option<String>,
    /// `wwn`
    pub wwn: Option<String>,
    /// `queues` (SCSI).
    pub queues: Option<u32>,
    /// `rerror`
    pub rerror: Option<String>,
    /// `werror`
    pub werror: Option<String>,
    /// `import-from` (API only).
    pub import_from: Option<String>,
    /// `efitype` (efidisk0).
    pub efitype: Option<String>,
    /// `pre-enrolled-keys` (efidisk0).
    pub pre_enrolled_keys: Option<bool>,
    /// `ms-cert` (efidisk0).
    pub ms_cert: Option<String>,
    /// `version` (tpmstate0).
    pub version: Option<String>,
    /// Throttling.
    pub throttle: DriveThrottle,
}

/// `parse_drive`'s requirements between throttle options.
const REQUIREMENTS: [(&str, &str); 9] = [
    ("mbps_max", "mbps"),
    ("mbps_rd_max", "mbps_rd"),
    ("mbps_wr_max", "mbps_wr"),
    ("bps_max_length", "mbps_max"),
    ("bps_rd_max_length", "mbps_rd_max"),
    ("bps_wr_max_length", "mbps_wr_max"),
    ("iops_max_length", "iops_max"),
    ("iops_rd_max_length", "iops_rd_max"),
    ("iops_wr_max_length", "iops_wr_max"),
];

/// Mutually exclusive throttle options.
const EXCLUSIVE: [(&str, &str); 4] = [
    ("mbps_rd", "mbps"),
    ("mbps_wr", "mbps"),
    ("iops_rd", "iops"),
    ("iops_wr", "iops"),
];

/// Perl truthiness of an option: present and neither `""` nor `"0"`.
fn perl_true(map: &PropertyMap, key: &str) -> bool {
    map.get(key).is_some_and(|v| !v.is_empty() && v != "0")
}

impl Drive {
    /// A drive on `file` with nothing else set.
    pub fn new(file: impl Into<String>) -> Drive {
        Drive {
            file: file.into(),
            ..Drive::default()
        }
    }

    /// Parses a drive value for `key` like qemu-server's `parse_drive`:
    /// the bus's schema (`with_alloc`: the API form, which allows
    /// `import-from`), then its extra rules: throttle options that need
    /// another (`mbps_max` needs `mbps`), exclusive pairs (`mbps` with
    /// `mbps_rd`), CD-ROMs without `snapshot`/`format` and not on VirtIO,
    /// and `size` converted to bytes.
    ///
    /// Unlike qemu-server, `bps`/`bps_rd`/`bps_wr` are kept as given;
    /// qemu-server converts them to `mbps*` here (with a bug that turns
    /// every value into `0.000`).
    pub fn parse(key: DriveKey, value: &str, with_alloc: bool) -> Result<Drive, ViewError> {
        let map = parse_property_string(key.bus.format(with_alloc), value)?;
        for (option, requires) in REQUIREMENTS {
            if perl_true(&map, option) && !perl_true(&map, requires) {
                return Err(ViewError::CheckSemantics(format!(
                    "{option} requires {requires}"
                )));
            }
        }
        for (a, b) in EXCLUSIVE {
            if perl_true(&map, a) && perl_true(&map, b) {
                return Err(ViewError::CheckSemantics(format!(
                    "{a} and {b} are mutually exclusive"
                )));
            }
        }
        if map.get("media").is_some_and(|m| m == "cdrom") {
            for k in ["snapshot", "format"] {
                if perl_true(&map, k) {
                    return Err(ViewError::CheckSemantics(format!(
                        "a CD-ROM drive cannot have '{k}'"
                    )));
                }
            }
            if key.bus == DriveBus::Virtio {
                return Err(ViewError::CheckSemantics(
                    "VirtIO drives cannot be CD-ROMs".into(),
                ));
            }
        }
        Drive::from_map(&map)
    }

    fn from_map(map: &PropertyMap) -> Result<Drive, ViewError> {
        let r = Reader(map);
        let size = match map.get("size") {
            Some(text) => Some(parse_size(text).ok_or_else(|| ViewError::ConvertValue {
                key: "size".into(),
                value: text.clone(),
            })?),
            None => None,
        };
        let mut throttle = DriveThrottle::default();
        for (slot, key) in throttle.ints_mut().into_iter().zip(THROTTLE_INTS) {
            *slot = r.int(key)?;
        }
        for (slot, key) in throttle.nums_mut().into_iter().zip(THROTTLE_NUMS) {
            *slot = r.num(key);
        }
        Ok(Drive {
            file: r.string("file").unwrap_or_default(),
            media: r.parsed("media")?,
            cache: r.parsed("cache")?,
            aio: r.parsed("aio")?,
            discard: r.parsed("discard")?,
            format: r.string("format"),
            size,
            iothread: r.boolean("iothread"),
            ssd: r.boolean("ssd"),
            ro: r.boolean("ro"),
            backup: r.boolean("backup"),
            replicate: r.boolean("replicate"),
            shared: r.boolean("shared"),
            snapshot: r.boolean("snapshot"),
            detect_zeroes: r.boolean("detect_zeroes"),
            scsiblock: r.boolean("scsiblock"),
            serial: r.string("serial"),
            model: r.string("model"),
            product: r.string("product"),
            vendor: r.string("vendor"),
            wwn: r.string("wwn"),
            queues: r.int("queues")?,
            rerror: r.string("rerror"),
            werror: r.string("werror"),
            import_from: r.string("import-from"),
            efitype: r.string("efitype"),
            pre_enrolled_keys: r.boolean("pre-enrolled-keys"),
            ms_cert: r.string("ms-cert"),
            version: r.string("version"),
            throttle,
        })
    }

    /// The property map `print_drive` prints.
    pub fn to_map(&self) -> PropertyMap {
        let mut w = Writer::default();
        w.put("file", Some(&self.file))
            .put("media", self.media)
            .put("cache", self.cache)
            .put("aio", self.aio)
            .put("discard", self.discard)
            .put("format", self.format.as_ref())
            // bytes; the printer turns them into 32G
            .put("size", self.size)
            .flag("iothread", self.iothread)
            .flag("ssd", self.ssd)
            .flag("ro", self.ro)
            .flag("backup", self.backup)
            .flag("replicate", self.replicate)
            .flag("shared", self.shared)
            .flag("snapshot", self.snapshot)
            .flag("detect_zeroes", self.detect_zeroes)
            .flag("scsiblock", self.scsiblock)
            .put("serial", self.serial.as_ref())
            .put("model", self.model.as_ref())
            .put("product", self.product.as_ref())
            .put("vendor", self.vendor.as_ref())
            .put("wwn", self.wwn.as_ref())
            .put("queues", self.queues)
            .put("rerror", self.rerror.as_ref())
            .put("werror", self.werror.as_ref())
            .put("import-from", self.import_from.as_ref())
            .put("efitype", self.efitype.as_ref())
            .flag("pre-enrolled-keys", self.pre_enrolled_keys)
            .put("ms-cert", self.ms_cert.as_ref())
            .put("version", self.version.as_ref());
        let mut t = self.throttle.clone();
        for (slot, key) in t.ints_mut().into_iter().zip(THROTTLE_INTS) {
            w.put(key, *slot);
        }
        for (slot, key) in t.nums_mut().into_iter().zip(THROTTLE_NUMS) {
            w.put(key, *slot);
        }
        w.0
    }

    /// Whether this is a CD-ROM drive (`media=cdrom`).
    pub fn is_cdrom(&self) -> bool {
        self.media == Some(Media::Cdrom)
    }

    /// Whether the drive is the cloud-init drive.
    pub fn is_cloudinit(&self) -> bool {
        is_cloudinit_volume(&self.file)
    }

    /// What `file` refers to (volume, path, `none`, `cdrom`).
    pub fn drive_file(&self) -> Option<DriveFile> {
        DriveFile::parse(&self.file).ok()
    }

    /// The allocation request in `file` (`local-lvm:32`,
    /// `local-lvm:0` with `import-from`, `local-lvm:cloudinit`), if any.
    pub fn allocation(&self) -> Option<Allocation> {
        Allocation::parse(&self.file)
    }
}

impl fmt::Display for Drive {
    /// qemu-server's `print_drive`: `file` first, then the other keys sorted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&print_unchecked(&fmts::ALL_DRIVE_FORMAT, &self.to_map()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> DriveKey {
        s.parse().unwrap()
    }

    #[test]
    fn print_drive_canonical() {
        let d = Drive::parse(
            key("scsi0"),
            "size=32G,cache=writeback,file=local:100/vm-100-disk-0.qcow2,iothread=on",
            false,
        )
        .unwrap();
        assert_eq!(d.size, Some(32 << 30));
        assert_eq!(d.cache, Some(CacheMode::Writeback));
        assert_eq!(
            d.to_string(),
            "local:100/vm-100-disk-0.qcow2,cache=writeback,iothread=1,size=32G"
        );
        let cd = Drive::parse(key("ide2"), "local:iso/debian.iso,media=cdrom", false).unwrap();
        assert!(cd.is_cdrom());
        assert_eq!(cd.to_string(), "local:iso/debian.iso,media=cdrom");
        let ci = Drive::parse(key("ide2"), "local-lvm:cloudinit,media=cdrom", true).unwrap();
        assert!(ci.is_cloudinit());
    }

    #[test]
    fn allocation_and_import() {
        let d = Drive::parse(
            key("scsi0"),
            "local-lvm:0,import-from=local:import/debian.qcow2,discard=on",
            true,
        )
        .unwrap();
        assert_eq!(
            d.allocation(),
            Some(Allocation::Disk {
                storage: Some("local-lvm".into()),
                size_gib: 0.0
            })
        );
        assert_eq!(d.import_from.as_deref(), Some("local:import/debian.qcow2"));
        // not in the config-file schema
        assert!(Drive::parse(key("scsi0"), "local-lvm:0,import-from=/tmp/x", false).is_err());
    }

    #[test]
    fn parse_drive_rules() {
        let err = |k: &str, v: &str| Drive::parse(key(k), v, false).unwrap_err().to_string();
        assert_eq!(
            err("scsi0", "local:1/x.raw,mbps_max=5"),
            "mbps_max requires mbps"
        );
        assert!(err("scsi0", "local:1/x.raw,mbps=1,mbps_rd=2").contains("mutually exclusive"));
        assert!(err("virtio0", "local:iso/x.iso,media=cdrom").contains("VirtIO"));
        assert!(err("ide0", "local:1/x.raw,ssd=1,iothread=1").contains("invalid key"));
        assert!(Drive::parse(
            key("scsi0"),
            "local:1/x.raw,bps_rd_length=2,mbps_rd=1,mbps_rd_max=2",
            false
        )
        .is_ok());
        assert!("scsi31".parse::<DriveKey>().is_err());
        assert_eq!(key("efidisk0").bus, DriveBus::Efidisk);
    }
}
