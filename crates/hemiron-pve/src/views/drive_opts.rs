//! Drive keys (`scsi0`), the enum-valued drive options and the throttle
//! limits, shared by [`super::Drive`].

use std::fmt;
use std::str::FromStr;

use super::ViewError;
use crate::schema::PropertyFormat;
use crate::spec::drive as fmts;
use crate::spec::limits;

/// The bus (qemu-server's "interface") a drive hangs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DriveBus {
    /// `ide0`..`ide3`
    Ide,
    /// `sata0`..`sata5`
    Sata,
    /// `scsi0`..`scsi30`
    Scsi,
    /// `virtio0`..`virtio15`
    Virtio,
    /// `efidisk0`
    Efidisk,
    /// `tpmstate0`
    Tpmstate,
}

impl DriveBus {
    /// The key prefix.
    pub fn as_str(self) -> &'static str {
        match self {
            DriveBus::Ide => "ide",
            DriveBus::Sata => "sata",
            DriveBus::Scsi => "scsi",
            DriveBus::Virtio => "virtio",
            DriveBus::Efidisk => "efidisk",
            DriveBus::Tpmstate => "tpmstate",
        }
    }

    /// How many drives the bus takes.
    pub fn max_index(self) -> u32 {
        u32::from(match self {
            DriveBus::Ide => limits::MAX_IDE_DISKS,
            DriveBus::Sata => limits::MAX_SATA_DISKS,
            DriveBus::Scsi => limits::MAX_SCSI_DISKS,
            DriveBus::Virtio => limits::MAX_VIRTIO_DISKS,
            DriveBus::Efidisk | DriveBus::Tpmstate => 1,
        })
    }

    /// The format the API accepts (`with_alloc`: `import-from` allowed) or
    /// the config file stores.
    pub fn format(self, with_alloc: bool) -> &'static PropertyFormat {
        match (self, with_alloc) {
            (DriveBus::Ide, true) => &fmts::IDE_FORMAT,
            (DriveBus::Ide, false) => &fmts::IDE_CONF_FORMAT,
            (DriveBus::Sata, true) => &fmts::SATA_FORMAT,
            (DriveBus::Sata, false) => &fmts::SATA_CONF_FORMAT,
            (DriveBus::Scsi, true) => &fmts::SCSI_FORMAT,
            (DriveBus::Scsi, false) => &fmts::SCSI_CONF_FORMAT,
            (DriveBus::Virtio, true) => &fmts::VIRTIO_FORMAT,
            (DriveBus::Virtio, false) => &fmts::VIRTIO_CONF_FORMAT,
            (DriveBus::Efidisk, true) => &fmts::EFIDISK_FORMAT,
            (DriveBus::Efidisk, false) => &fmts::EFIDISK_CONF_FORMAT,
            (DriveBus::Tpmstate, true) => &fmts::TPMSTATE_FORMAT,
            (DriveBus::Tpmstate, false) => &fmts::TPMSTATE_CONF_FORMAT,
        }
    }
}

/// A drive's config key: bus and index (`scsi0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DriveKey {
    /// The bus.
    pub bus: DriveBus,
    /// The index on the bus.
    pub index: u32,
}

impl FromStr for DriveKey {
    type Err = ViewError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ViewError::CheckSemantics(format!("invalid drive key: {s}"));
        if !limits::is_valid_drivename(s) {
            return Err(err());
        }
        let split = s.find(|c: char| c.is_ascii_digit()).ok_or_else(err)?;
        let (prefix, digits) = s.split_at(split);
        let bus = [
            DriveBus::Ide,
            DriveBus::Sata,
            DriveBus::Scsi,
            DriveBus::Virtio,
            DriveBus::Efidisk,
            DriveBus::Tpmstate,
        ]
        .into_iter()
        .find(|b| b.as_str() == prefix)
        .ok_or_else(err)?;
        Ok(DriveKey {
            bus,
            index: digits.parse().map_err(|_| err())?,
        })
    }
}

impl fmt::Display for DriveKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.bus.as_str(), self.index)
    }
}

macro_rules! str_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            /// The name in config strings.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl FromStr for $name {
            type Err = ViewError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(ViewError::ConvertValue { key: stringify!($name).into(), value: s.into() }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

str_enum!(
    /// `media`
    Media { /// A hard disk (the default).
        Disk = "disk", /// A CD-ROM.
        Cdrom = "cdrom" }
);
str_enum!(
    /// `cache`
    CacheMode { /// `none`
        None = "none", /// `writethrough`
        Writethrough = "writethrough", /// `writeback`
        Writeback = "writeback", /// `unsafe`
        Unsafe = "unsafe", /// `directsync`
        Directsync = "directsync" }
);
str_enum!(
    /// `aio`
    Aio { /// `native`
        Native = "native", /// `threads`
        Threads = "threads", /// `io_uring`
        IoUring = "io_uring" }
);
str_enum!(
    /// `discard`
    Discard { /// `ignore`
        Ignore = "ignore", /// `on`
        On = "on" }
);

/// I/O throttling limits of a drive (all optional).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DriveThrottle {
    /// `bps`: r/w bytes per second.
    pub bps: Option<u64>,
    /// `bps_rd`
    pub bps_rd: Option<u64>,
    /// `bps_wr`
    pub bps_wr: Option<u64>,
    /// `bps_max_length`: burst length in seconds.
    pub bps_max_length: Option<u64>,
    /// `bps_rd_max_length`
    pub bps_rd_max_length: Option<u64>,
    /// `bps_wr_max_length`
    pub bps_wr_max_length: Option<u64>,
    /// `iops`
    pub iops: Option<u64>,
    /// `iops_rd`
    pub iops_rd: Option<u64>,
    /// `iops_wr`
    pub iops_wr: Option<u64>,
    /// `iops_max`: unthrottled burst pool.
    pub iops_max: Option<u64>,
    /// `iops_rd_max`
    pub iops_rd_max: Option<u64>,
    /// `iops_wr_max`
    pub iops_wr_max: Option<u64>,
    /// `iops_max_length`
    pub iops_max_length: Option<u64>,
    /// `iops_rd_max_length`
    pub iops_rd_max_length: Option<u64>,
    /// `iops_wr_max_length`
    pub iops_wr_max_length: Option<u64>,
    /// `mbps`: r/w MB per second.
    pub mbps: Option<f64>,
    /// `mbps_rd`
    pub mbps_rd: Option<f64>,
    /// `mbps_wr`
    pub mbps_wr: Option<f64>,
    /// `mbps_max`
    pub mbps_max: Option<f64>,
    /// `mbps_rd_max`
    pub mbps_rd_max: Option<f64>,
    /// `mbps_wr_max`
    pub mbps_wr_max: Option<f64>,
}

pub(crate) const THROTTLE_INTS: [&str; 15] = [
    "bps",
    "bps_rd",
    "bps_wr",
    "bps_max_length",
    "bps_rd_max_length",
    "bps_wr_max_length",
    "iops",
    "iops_rd",
    "iops_wr",
    "iops_max",
    "iops_rd_max",
    "iops_wr_max",
    "iops_max_length",
    "iops_rd_max_length",
    "iops_wr_max_length",
];
pub(crate) const THROTTLE_NUMS: [&str; 6] = [
    "mbps",
    "mbps_rd",
    "mbps_wr",
    "mbps_max",
    "mbps_rd_max",
    "mbps_wr_max",
];

impl DriveThrottle {
    pub(crate) fn ints_mut(&mut self) -> [&mut Option<u64>; 15] {
        [
            &mut self.bps,
            &mut self.bps_rd,
            &mut self.bps_wr,
            &mut self.bps_max_length,
            &mut self.bps_rd_max_length,
            &mut self.bps_wr_max_length,
            &mut self.iops,
            &mut self.iops_rd,
            &mut self.iops_wr,
            &mut self.iops_max,
            &mut self.iops_rd_max,
            &mut self.iops_wr_max,
            &mut self.iops_max_length,
            &mut self.iops_rd_max_length,
            &mut self.iops_wr_max_length,
        ]
    }

    pub(crate) fn nums_mut(&mut self) -> [&mut Option<f64>; 6] {
        [
            &mut self.mbps,
            &mut self.mbps_rd,
            &mut self.mbps_wr,
            &mut self.mbps_max,
            &mut self.mbps_rd_max,
            &mut self.mbps_wr_max,
        ]
    }
}
