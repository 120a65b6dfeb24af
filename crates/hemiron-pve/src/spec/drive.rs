//! Drive property-string formats (qemu-server `Drive.pm`): `ide[n]`,
//! `sata[n]`, `scsi[n]`, `virtio[n]`, `efidisk0`, `tpmstate0`, `unused[n]`.
//!
//! Each bus exists twice: the API's create/update calls accept
//! `import-from` (qemu-server's `drivedesc_hash_with_alloc`), the config
//! file does not (`drivedesc_hash`). [`ALL_DRIVE_FORMAT`] is the union
//! qemu-server's `print_drive` prints with.

use crate::schema::{KeyAlias, NamedFormat as F, ParamSpec as P, PropertyFormat};

/// `pve-qm-image-format`.
pub const IMAGE_FORMATS: &[&str] = &["raw", "qcow", "qed", "qcow2", "vmdk", "cloop"];

/// `file`, `format` and `size`, shared by all disk formats.
pub static DISK_FILE: &[P] = &[
    P::string("file")
        .named(F::PveVolumeIdOrQmPath)
        .default_key(),
    P::string("format").optional().enums(IMAGE_FORMATS),
    P::string("size").optional().named(F::DiskSize),
];

/// The remaining keys every bus has (`%drivedesc_base`).
pub static DRIVE_BASE: &[P] = &[
    P::string("aio")
        .optional()
        .enums(&["native", "threads", "io_uring"]),
    P::boolean("backup").optional(),
    P::integer("bps").optional(),
    P::integer("bps_max_length").optional().min(1),
    P::integer("bps_rd").optional(),
    P::integer("bps_rd_max_length").optional().min(1),
    P::integer("bps_wr").optional(),
    P::integer("bps_wr_max_length").optional().min(1),
    P::string("cache").optional().enums(&[
        "none",
        "writethrough",
        "writeback",
        "unsafe",
        "directsync",
    ]),
    P::boolean("detect_zeroes").optional(),
    P::string("discard").optional().enums(&["ignore", "on"]),
    P::integer("iops").optional(),
    P::integer("iops_max").optional(),
    P::integer("iops_max_length").optional().min(1),
    P::integer("iops_rd").optional(),
    P::integer("iops_rd_max").optional(),
    P::integer("iops_rd_max_length").optional().min(1),
    P::integer("iops_wr").optional(),
    P::integer("iops_wr_max").optional(),
    P::integer("iops_wr_max_length").optional().min(1),
    P::number("mbps").optional(),
    P::number("mbps_max").optional(),
    P::number("mbps_rd").optional(),
    P::number("mbps_rd_max").optional(),
    P::number("mbps_wr").optional(),
    P::number("mbps_wr_max").optional(),
    P::string("media")
        .optional()
        .default_str("disk")
        .enums(&["cdrom", "disk"]),
    P::boolean("replicate").optional().default_bool(true),
    P::string("rerror")
        .optional()
        .enums(&["ignore", "report", "stop"]),
    // *3 since it's %xx url encoded
    P::string("serial")
        .optional()
        .named(F::Urlencoded)
        .max_len(60),
    P::boolean("shared").optional().default_bool(false),
    P::boolean("snapshot").optional(),
    P::string("werror")
        .optional()
        .enums(&["enospc", "ignore", "report", "stop"]),
];

/// `model` (IDE only).
pub static MODEL: &[P] = &[P::string("model")
    .optional()
    .named(F::Urlencoded)
    .max_len(120)];
/// `ssd` (IDE, SATA, SCSI).
pub static SSD: &[P] = &[P::boolean("ssd").optional()];
/// `wwn` (IDE, SATA, SCSI).
pub static WWN: &[P] = &[P::string("wwn")
    .optional()
    .pattern("(?:^(0x)[0-9a-fA-F]{16})")];
/// `iothread` (SCSI, VirtIO).
pub static IOTHREAD: &[P] = &[P::boolean("iothread").optional()];
/// `ro` (SCSI, VirtIO).
pub static READONLY: &[P] = &[P::boolean("ro").optional()];
/// SCSI-only keys.
pub static SCSI_EXTRA: &[P] = &[
    // PVE writes `{,16}`, which Perl ≥ 5.34 reads as `{0,16}`.
    P::string("product")
        .optional()
        .pattern(r"[A-Za-z0-9\-_\s]{0,16}"),
    P::integer("queues").optional().min(2),
    P::boolean("scsiblock").optional().default_bool(false),
    P::string("vendor")
        .optional()
        .pattern(r"[A-Za-z0-9\-_\s]{0,8}"),
];
/// `import-from`, only where a disk can be allocated.
pub static IMPORT_FROM: &[P] = &[P::string("import-from")
    .optional()
    .named(F::PveVolumeIdOrAbsolutePath)];
/// EFI vars disk keys.
pub static EFI_EXTRA: &[P] = &[
    P::string("efitype")
        .optional()
        .default_str("2m")
        .enums(&["2m", "4m"]),
    P::string("ms-cert")
        .optional()
        .default_str("2011")
        .enums(&["2011", "2023", "2023w", "2023k"]),
    P::boolean("pre-enrolled-keys")
        .optional()
        .default_bool(false),
];
/// TPM state disk: `file`, `format` (restricted), `size`.
pub static TPM_FILE: &[P] = &[
    P::string("file")
        .named(F::PveVolumeIdOrQmPath)
        .default_key(),
    P::string("format")
        .optional()
        .enums(&["raw", "qcow2", "vmdk"]),
    P::string("size").optional().named(F::DiskSize),
];
/// TPM interface version.
pub static TPM_VERSION: &[P] = &[P::string("version")
    .optional()
    .default_str("v1.2")
    .enums(&["v1.2", "v2.0"])];

/// `volume` and the legacy `*_length` throttle names.
pub static DRIVE_ALIASES: &[KeyAlias] = &[
    KeyAlias {
        name: "volume",
        alias: "file",
        key_alias: None,
    },
    KeyAlias {
        name: "bps_rd_length",
        alias: "bps_rd_max_length",
        key_alias: None,
    },
    KeyAlias {
        name: "bps_wr_length",
        alias: "bps_wr_max_length",
        key_alias: None,
    },
    KeyAlias {
        name: "iops_rd_length",
        alias: "iops_rd_max_length",
        key_alias: None,
    },
    KeyAlias {
        name: "iops_wr_length",
        alias: "iops_wr_max_length",
        key_alias: None,
    },
];
/// Just `volume`.
pub static VOLUME_ALIAS: &[KeyAlias] = &[KeyAlias {
    name: "volume",
    alias: "file",
    key_alias: None,
}];

const fn drive_fmt(
    name: Option<&'static str>,
    keys: &'static [&'static [P]],
    aliases: &'static [KeyAlias],
) -> PropertyFormat {
    PropertyFormat {
        name,
        keys,
        aliases,
        validator: None,
    }
}

/// `ide[n]` with `import-from` (API).
pub static IDE_FORMAT: PropertyFormat = drive_fmt(
    None,
    &[DISK_FILE, DRIVE_BASE, MODEL, SSD, WWN, IMPORT_FROM],
    DRIVE_ALIASES,
);
/// `ide[n]` as stored; registered as `pve-qm-ide` (the `cdrom` option uses it).
pub static IDE_CONF_FORMAT: PropertyFormat = drive_fmt(
    Some("pve-qm-ide"),
    &[DISK_FILE, DRIVE_BASE, MODEL, SSD, WWN],
    DRIVE_ALIASES,
);
/// `sata[n]` with `import-from`.
pub static SATA_FORMAT: PropertyFormat = drive_fmt(
    None,
    &[DISK_FILE, DRIVE_BASE, SSD, WWN, IMPORT_FROM],
    DRIVE_ALIASES,
);
/// `sata[n]` as stored.
pub static SATA_CONF_FORMAT: PropertyFormat =
    drive_fmt(None, &[DISK_FILE, DRIVE_BASE, SSD, WWN], DRIVE_ALIASES);
/// `scsi[n]` with `import-from`.
pub static SCSI_FORMAT: PropertyFormat = drive_fmt(
    None,
    &[
        DISK_FILE,
        DRIVE_BASE,
        IOTHREAD,
        SCSI_EXTRA,
        READONLY,
        SSD,
        WWN,
        IMPORT_FROM,
    ],
    DRIVE_ALIASES,
);
/// `scsi[n]` as stored.
pub static SCSI_CONF_FORMAT: PropertyFormat = drive_fmt(
    None,
    &[
        DISK_FILE, DRIVE_BASE, IOTHREAD, SCSI_EXTRA, READONLY, SSD, WWN,
    ],
    DRIVE_ALIASES,
);
/// `virtio[n]` with `import-from`.
pub static VIRTIO_FORMAT: PropertyFormat = drive_fmt(
    None,
    &[DISK_FILE, DRIVE_BASE, IOTHREAD, READONLY, IMPORT_FROM],
    DRIVE_ALIASES,
);
/// `virtio[n]` as stored.
pub static VIRTIO_CONF_FORMAT: PropertyFormat = drive_fmt(
    None,
    &[DISK_FILE, DRIVE_BASE, IOTHREAD, READONLY],
    DRIVE_ALIASES,
);
/// `efidisk0` with `import-from`.
pub static EFIDISK_FORMAT: PropertyFormat =
    drive_fmt(None, &[DISK_FILE, EFI_EXTRA, IMPORT_FROM], VOLUME_ALIAS);
/// `efidisk0` as stored.
pub static EFIDISK_CONF_FORMAT: PropertyFormat =
    drive_fmt(None, &[DISK_FILE, EFI_EXTRA], VOLUME_ALIAS);
/// `tpmstate0` with `import-from`.
pub static TPMSTATE_FORMAT: PropertyFormat =
    drive_fmt(None, &[TPM_FILE, TPM_VERSION, IMPORT_FROM], VOLUME_ALIAS);
/// `tpmstate0` as stored.
pub static TPMSTATE_CONF_FORMAT: PropertyFormat =
    drive_fmt(None, &[TPM_FILE, TPM_VERSION], VOLUME_ALIAS);
/// `unused[n]`: a volume only.
pub static UNUSED_FORMAT: PropertyFormat = drive_fmt(
    None,
    &[&[P::string("file").named(F::PveVolumeId).default_key()]],
    VOLUME_ALIAS,
);
/// The union of all drive keys (qemu-server's `$alldrive_fmt_with_alloc`),
/// used to print any drive.
pub static ALL_DRIVE_FORMAT: PropertyFormat = drive_fmt(
    None,
    &[
        DISK_FILE,
        DRIVE_BASE,
        IOTHREAD,
        MODEL,
        SCSI_EXTRA,
        READONLY,
        SSD,
        WWN,
        TPM_VERSION,
        EFI_EXTRA,
        IMPORT_FROM,
    ],
    DRIVE_ALIASES,
);
