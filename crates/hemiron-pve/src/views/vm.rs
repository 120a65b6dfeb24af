//! VM-level views: memory, boot order, CPU, SMBIOS, machine type and
//! startup order.

use std::fmt;

use super::{view_text, Reader, ViewError, Writer};
use crate::schema::{parse_property_string, PropertyMap};
use crate::spec::qm;
use crate::text::split_list;

/// `memory`: `[current=]<MiB>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// RAM in MiB (the maximum when ballooning).
    pub current: u64,
}

impl Default for Memory {
    /// qemu-server's default when `memory` is unset: 512 MiB.
    fn default() -> Memory {
        Memory { current: 512 }
    }
}

impl Memory {
    /// Parses a `memory` value.
    pub fn parse(value: &str) -> Result<Memory, ViewError> {
        let map = parse_property_string(&qm::MEMORY_FORMAT, value)?;
        let current = Reader(&map).int("current")?.unwrap_or(512);
        Ok(Memory { current })
    }

    /// The property map.
    pub fn to_map(&self) -> PropertyMap {
        let mut w = Writer::default();
        w.put("current", Some(self.current));
        w.0
    }
}
view_text!(Memory, qm::MEMORY_FORMAT);

/// `boot`: `order=scsi0;net0` (or the deprecated `legacy` letters).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Boot {
    /// Deprecated `[acdn]{1,4}` (floppy, disk, CD-ROM, network).
    pub legacy: Option<String>,
    /// Devices to boot from, in order; `None` if `order` is not given.
    pub order: Option<Vec<String>>,
}

impl Boot {
    /// Parses a `boot` value.
    pub fn parse(value: &str) -> Result<Boot, ViewError> {
        let map = parse_property_string(&qm::BOOT_FORMAT, value)?;
        let r = Reader(&map);
        Ok(Boot {
            legacy: r.string("legacy"),
            order: r.string("order").map(|o| split_list(&o)),
        })
    }

    /// A boot order like qemu-server's `print_bootorder` builds.
    pub fn order(devices: &[&str]) -> Boot {
        Boot {
            legacy: None,
            order: Some(devices.iter().map(|d| d.to_string()).collect()),
        }
    }

    /// The property map.
    pub fn to_map(&self) -> PropertyMap {
        let mut w = Writer::default();
        w.put("legacy", self.legacy.as_ref())
            .put("order", self.order.as_ref().map(|o| o.join(";")));
        w.0
    }
}
view_text!(Boot, qm::BOOT_FORMAT);

/// One `+FLAG`/`-FLAG` of `cpu`'s `flags`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuFlag {
    /// `+` (enable) or `-` (disable).
    pub enable: bool,
    /// The flag name (`aes`, `nested-virt`, ...).
    pub name: String,
}

impl fmt::Display for CpuFlag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", if self.enable { '+' } else { '-' }, self.name)
    }
}

/// `cpu`: `[[cputype=]<type>][,flags=+a;-b][,hidden=1]...`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cpu {
    /// The model (`host`, `x86-64-v2-AES`, `custom-<name>`); PVE's default is `kvm64`.
    pub cputype: Option<String>,
    /// Extra flags (empty: none given).
    pub flags: Vec<CpuFlag>,
    /// `guest-phys-bits` (32..64).
    pub guest_phys_bits: Option<u8>,
    /// Hide the KVM signature.
    pub hidden: Option<bool>,
    /// The Hyper-V vendor ID.
    pub hv_vendor_id: Option<String>,
    /// `phys-bits`: `8`..`64` or `host`.
    pub phys_bits: Option<String>,
}

impl Cpu {
    /// Parses a `cpu` value (including `validate_vm_cpu_conf`'s checks).
    pub fn parse(value: &str) -> Result<Cpu, ViewError> {
        let map = parse_property_string(&qm::CPU_FORMAT, value)?;
        let r = Reader(&map);
        let flags = r
            .string("flags")
            .map(|f| {
                f.split(';')
                    .filter(|s| !s.is_empty())
                    .map(|s| CpuFlag {
                        enable: s.starts_with('+'),
                        name: s.get(1..).unwrap_or_default().to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Cpu {
            cputype: r.string("cputype"),
            flags,
            guest_phys_bits: r.int("guest-phys-bits")?,
            hidden: r.boolean("hidden"),
            hv_vendor_id: r.string("hv-vendor-id"),
            phys_bits: r.string("phys-bits"),
        })
    }

    /// The property map.
    pub fn to_map(&self) -> PropertyMap {
        let flags = (!self.flags.is_empty()).then(|| {
            self.flags
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(";")
        });
        let mut w = Writer::default();
        w.put("cputype", self.cputype.as_ref())
            .put("flags", flags)
            .put("guest-phys-bits", self.guest_phys_bits)
            .flag("hidden", self.hidden)
            .put("hv-vendor-id", self.hv_vendor_id.as_ref())
            .put("phys-bits", self.phys_bits.as_ref());
        w.0
    }
}
view_text!(Cpu, qm::CPU_FORMAT);

/// `smbios1`: SMBIOS type 1 fields (text fields as stored; base64 when
/// `base64=1`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Smbios1 {
    /// Whether the text fields are base64-encoded.
    pub base64: Option<bool>,
    /// `family`
    pub family: Option<String>,
    /// `manufacturer`
    pub manufacturer: Option<String>,
    /// `product`
    pub product: Option<String>,
    /// `serial`
    pub serial: Option<String>,
    /// `sku`
    pub sku: Option<String>,
    /// `uuid`
    pub uuid: Option<String>,
    /// `version`
    pub version: Option<String>,
}

impl Smbios1 {
    /// Parses an `smbios1` value.
    pub fn parse(value: &str) -> Result<Smbios1, ViewError> {
        let map = parse_property_string(&qm::SMBIOS1_FORMAT, value)?;
        let r = Reader(&map);
        Ok(Smbios1 {
            base64: r.boolean("base64"),
            family: r.string("family"),
            manufacturer: r.string("manufacturer"),
            product: r.string("product"),
            serial: r.string("serial"),
            sku: r.string("sku"),
            uuid: r.string("uuid"),
            version: r.string("version"),
        })
    }

    /// The property map.
    pub fn to_map(&self) -> PropertyMap {
        let mut w = Writer::default();
        w.flag("base64", self.base64)
            .put("family", self.family.as_ref())
            .put("manufacturer", self.manufacturer.as_ref())
            .put("product", self.product.as_ref())
            .put("serial", self.serial.as_ref())
            .put("sku", self.sku.as_ref())
            .put("uuid", self.uuid.as_ref())
            .put("version", self.version.as_ref());
        w.0
    }
}
view_text!(Smbios1, qm::SMBIOS1_FORMAT);

/// `startup`: `[[order=]<n>][,up=<secs>][,down=<secs>]`.
///
/// PVE checks this one in code (`pve_parse_startup_order`), not as a
/// property string: later parts override earlier ones, and an empty value
/// or `0` is invalid.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Startup {
    /// Start order (lower first; shutdown in reverse).
    pub order: Option<u64>,
    /// Seconds to wait after starting this guest.
    pub up: Option<u64>,
    /// Seconds to wait after stopping this guest.
    pub down: Option<u64>,
}

impl Startup {
    /// Parses like `pve_parse_startup_order`.
    pub fn parse(value: &str) -> Result<Startup, ViewError> {
        let err = || ViewError::CheckSemantics("unable to parse startup options".to_string());
        if value.is_empty() || value == "0" {
            return Err(err());
        }
        let number = |s: &str| -> Result<u64, ViewError> {
            let s = s.strip_suffix('\n').unwrap_or(s);
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err());
            }
            s.parse().map_err(|_| err())
        };
        let mut res = Startup::default();
        for part in value.split(',') {
            if part.trim().is_empty() {
                continue;
            }
            if let Some(n) = part.strip_prefix("up=") {
                res.up = Some(number(n)?);
            } else if let Some(n) = part.strip_prefix("down=") {
                res.down = Some(number(n)?);
            } else {
                res.order = Some(number(part.strip_prefix("order=").unwrap_or(part))?);
            }
        }
        Ok(res)
    }
}

impl std::str::FromStr for Startup {
    type Err = ViewError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Startup::parse(s)
    }
}

impl fmt::Display for Startup {
    /// `order=<n>,up=<n>,down=<n>`, leaving out what is unset.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = [("order", self.order), ("up", self.up), ("down", self.down)]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| format!("{k}={v}")))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// `machine`: `[[type=]<machine type>][,viommu=...][,aw-bits=...]...`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Machine {
    /// `pc`, `q35`, `pc-i440fx-9.2+pve1`, `virt`, ...
    pub machine_type: Option<String>,
    /// `aw-bits` (IOMMU address width).
    pub aw_bits: Option<f64>,
    /// `enable-s3`
    pub enable_s3: Option<bool>,
    /// `enable-s4`
    pub enable_s4: Option<bool>,
    /// `viommu`: `intel` or `virtio`.
    pub viommu: Option<String>,
}

impl Machine {
    /// Parses a `machine` value.
    pub fn parse(value: &str) -> Result<Machine, ViewError> {
        let map = parse_property_string(&qm::MACHINE_FORMAT, value)?;
        let r = Reader(&map);
        Ok(Machine {
            machine_type: r.string("type"),
            aw_bits: r.num("aw-bits"),
            enable_s3: r.boolean("enable-s3"),
            enable_s4: r.boolean("enable-s4"),
            viommu: r.string("viommu"),
        })
    }

    /// The property map.
    pub fn to_map(&self) -> PropertyMap {
        let mut w = Writer::default();
        w.put("type", self.machine_type.as_ref())
            .put("aw-bits", self.aw_bits)
            .flag("enable-s3", self.enable_s3)
            .flag("enable-s4", self.enable_s4)
            .put("viommu", self.viommu.as_ref());
        w.0
    }
}
view_text!(Machine, qm::MACHINE_FORMAT);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_forms() {
        assert_eq!(Memory::parse("current=2048").unwrap().to_string(), "2048");
        assert_eq!(Memory::default().current, 512);
        assert_eq!(
            Boot::order(&["scsi0", "net0"]).to_string(),
            "order=scsi0;net0"
        );
        let b = Boot::parse("order=scsi0;ide2;net0").unwrap();
        assert_eq!(
            b.order.as_deref(),
            Some(&["scsi0".to_string(), "ide2".into(), "net0".into()][..])
        );
        assert_eq!(Boot::parse("cdn").unwrap().legacy.as_deref(), Some("cdn"));
        let c = Cpu::parse("flags=+aes;-pcid,cputype=host,hidden=1").unwrap();
        assert_eq!(c.to_string(), "host,flags=+aes;-pcid,hidden=1");
        assert_eq!(
            Startup::parse("2,up=30").unwrap().to_string(),
            "order=2,up=30"
        );
        assert_eq!(
            Machine::parse("q35,viommu=virtio").unwrap().to_string(),
            "q35,viommu=virtio"
        );
        assert_eq!(
            Smbios1::parse("uuid=7b3d8f2a-1c4e-4b6a-9f2d-3e5c7a9b1d0f")
                .unwrap()
                .to_string(),
            "uuid=7b3d8f2a-1c4e-4b6a-9f2d-3e5c7a9b1d0f"
        );
    }

    #[test]
    fn pve_rules() {
        assert_eq!(
            Cpu::parse("flags=+aes").unwrap_err().to_string(),
            "CPU is missing cputype\n"
        );
        assert_eq!(
            Cpu::parse("Skylake").unwrap_err().to_string(),
            "Built-in cputype 'Skylake' is not defined (missing 'custom-' prefix?)\n"
        );
        assert!(Cpu::parse("host,flags=+avx512f")
            .unwrap_err()
            .to_string()
            .starts_with("VM-specific CPU flags"));
        assert!(Cpu::parse("custom-mine,flags=+aes").is_ok());
        for bad in ["", "0", "up=x", "order=1,foo=2"] {
            assert!(Startup::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Startup::parse("order=1,order=3").unwrap().order, Some(3));
    }
}
