//! Every VM config property (qemu-server's `$confdesc` plus its cloud-init
//! part), as the create/update API calls accept them and as the config file
//! stores them.

use super::device::{
    HOSTPCI_FORMAT, IPCONFIG_FORMAT, NET_FORMAT, NUMA_FORMAT, USB_FORMAT, VIRTIOFS_FORMAT,
};
use super::drive::{
    EFIDISK_CONF_FORMAT, EFIDISK_FORMAT, IDE_CONF_FORMAT, IDE_FORMAT, SATA_CONF_FORMAT,
    SATA_FORMAT, SCSI_CONF_FORMAT, SCSI_FORMAT, TPMSTATE_CONF_FORMAT, TPMSTATE_FORMAT,
    UNUSED_FORMAT, VIRTIO_CONF_FORMAT, VIRTIO_FORMAT,
};
use super::limits::*;
use super::qm::{
    AGENT_FORMAT, AUDIO_FORMAT, BOOT_FORMAT, CICUSTOM_FORMAT, CPU_FORMAT, IVSHMEM_FORMAT,
    MACHINE_FORMAT, MEMORY_FORMAT, META_FORMAT, RNG_FORMAT, SEV_FORMAT, SMBIOS1_FORMAT,
    SPICE_FORMAT, TDX_FORMAT, VGA_FORMAT, WATCHDOG_FORMAT,
};
use crate::schema::{NamedFormat as F, ParamSpec as P};

/// `kvmkeymaplist`.
pub const KEYBOARD_LAYOUTS: &[&str] = &[
    "de", "de-ch", "da", "en-gb", "en-us", "es", "fi", "fr", "fr-be", "fr-ca", "fr-ch", "hu", "is",
    "it", "ja", "lt", "mk", "nl", "no", "pl", "pt", "pt-br", "sv", "sl", "tr",
];

/// Config lock reasons.
pub const LOCKS: &[&str] = &[
    "backup",
    "clone",
    "create",
    "migrate",
    "rollback",
    "snapshot",
    "snapshot-delete",
    "suspending",
    "suspended",
];

/// Guest OS types.
pub const OS_TYPES: &[&str] = &[
    "other", "wxp", "w2k", "w2k3", "w2k8", "wvista", "win7", "win8", "win10", "win11", "l24",
    "l26", "solaris",
];

/// SCSI controller models.
pub const SCSI_HW: &[&str] = &[
    "lsi",
    "lsi53c810",
    "virtio-scsi-pci",
    "virtio-scsi-single",
    "megasas",
    "pvscsi",
];

/// All config properties except the disks whose format differs between
/// API (with `import-from`) and config file.
pub static CONFIG_COMMON: &[P] = &[
    P::boolean("acpi").optional().default_bool(true),
    P::string("affinity").optional().named(F::PveCpuset),
    P::string("agent").optional().prop(&AGENT_FORMAT),
    P::boolean("allow-ksm").optional().default_bool(true),
    P::string("amd-sev").optional().prop(&SEV_FORMAT),
    P::string("arch").optional().enums(&["x86_64", "aarch64"]),
    P::string("args").optional(),
    P::string("audio0").optional().prop(&AUDIO_FORMAT),
    P::boolean("autostart").optional().default_bool(false),
    P::integer("balloon").optional().min(0),
    P::string("bios")
        .optional()
        .default_str("seabios")
        .enums(&["seabios", "ovmf"]),
    P::string("boot").optional().prop(&BOOT_FORMAT),
    P::string("bootdisk")
        .optional()
        .named(F::PveQmBootdisk)
        .pattern(r"(ide|sata|scsi|virtio)\d+"),
    // An alias for ide2, stored as ide2.
    P::string("cdrom").optional().prop(&IDE_CONF_FORMAT),
    P::string("cicustom").optional().prop(&CICUSTOM_FORMAT),
    P::string("cipassword").optional(),
    P::string("citype")
        .optional()
        .enums(&["configdrive2", "nocloud", "opennebula"]),
    P::boolean("ciupgrade").optional().default_bool(true),
    P::string("ciuser").optional(),
    P::integer("cores").optional().min(1).default_int(1),
    P::string("cpu").optional().prop(&CPU_FORMAT),
    P::number("cpulimit")
        .optional()
        .min(0)
        .max(128)
        .default_int(0),
    P::integer("cpuunits")
        .optional()
        .min(1)
        .max(262144)
        .default_str("cgroup v1: 1024, cgroup v2: 100"),
    P::string("description").optional().max_len(8192),
    P::boolean("freeze").optional(),
    P::string("hookscript").optional().named(F::PveVolumeId),
    P::string("hostpci[n]")
        .optional()
        .prop(&HOSTPCI_FORMAT)
        .indexed(MAX_HOSTPCI_DEVICES),
    P::string("hotplug")
        .optional()
        .named(F::PveHotplugFeatures)
        .default_str("network,disk,usb"),
    P::string("hugepages")
        .optional()
        .enums(&["any", "2", "1024"]),
    P::string("intel-tdx").optional().prop(&TDX_FORMAT),
    P::string("ipconfig[n]")
        .optional()
        .prop(&IPCONFIG_FORMAT)
        .indexed(MAX_NETS),
    P::string("ivshmem").optional().prop(&IVSHMEM_FORMAT),
    P::boolean("keephugepages").optional().default_bool(false),
    // PVE declares `default => undef`.
    P::string("keyboard").optional().enums(KEYBOARD_LAYOUTS),
    P::boolean("kvm").optional().default_bool(true),
    P::boolean("localtime").optional(),
    P::string("lock").optional().enums(LOCKS),
    P::string("machine").optional().prop(&MACHINE_FORMAT),
    P::string("memory").optional().prop(&MEMORY_FORMAT),
    P::number("migrate_downtime")
        .optional()
        .min(0)
        .default_num(0.1),
    P::integer("migrate_speed").optional().min(0).default_int(0),
    P::string("name").optional().named(F::DnsName),
    P::string("nameserver").optional().list(F::Address),
    P::string("net[n]")
        .optional()
        .prop(&NET_FORMAT)
        .indexed(MAX_NETS),
    P::boolean("numa").optional().default_bool(false),
    P::string("numa[n]")
        .optional()
        .prop(&NUMA_FORMAT)
        .indexed(MAX_NUMA),
    P::boolean("onboot").optional().default_bool(false),
    P::string("ostype")
        .optional()
        .default_str("other")
        .enums(OS_TYPES),
    // Not grouped in PVE: the alternation splits the anchors (see perl.rs).
    P::string("parallel[n]")
        .optional()
        .pattern(r"/dev/parport\d+|/dev/usb/lp\d+")
        .indexed(MAX_PARALLEL_PORTS),
    P::boolean("protection").optional().default_bool(false),
    P::boolean("reboot").optional().default_bool(true),
    P::string("rng0").optional().prop(&RNG_FORMAT),
    P::string("scsihw")
        .optional()
        .default_str("lsi")
        .enums(SCSI_HW),
    P::string("searchdomain").optional(),
    P::string("serial[n]")
        .optional()
        .pattern("(/dev/.+|socket)")
        .indexed(MAX_SERIAL_PORTS),
    P::integer("shares")
        .optional()
        .min(0)
        .max(50000)
        .default_int(1000),
    P::string("smbios1")
        .optional()
        .prop(&SMBIOS1_FORMAT)
        .max_len(512),
    P::integer("smp").optional().min(1).default_int(1),
    P::integer("sockets").optional().min(1).default_int(1),
    P::string("spice_enhancements")
        .optional()
        .prop(&SPICE_FORMAT),
    P::string("sshkeys").optional().named(F::Urlencoded),
    P::string("startdate")
        .optional()
        .pattern(r"(now|\d{4}-\d{1,2}-\d{1,2}(T\d{1,2}:\d{1,2}:\d{1,2})?)")
        .default_str("now"),
    P::string("startup").optional().named(F::PveStartupOrder),
    P::boolean("tablet").optional().default_bool(true),
    P::string("tags").optional().list(F::PveTag),
    P::boolean("tdf").optional().default_bool(false),
    P::boolean("template").optional().default_bool(false),
    P::string("unused[n]")
        .optional()
        .prop(&UNUSED_FORMAT)
        .indexed(MAX_UNUSED_DISKS),
    P::string("usb[n]")
        .optional()
        .prop(&USB_FORMAT)
        .indexed(MAX_USB_DEVICES),
    P::integer("vcpus").optional().min(1).default_int(0),
    P::string("vga").optional().prop(&VGA_FORMAT),
    P::string("virtiofs[n]")
        .optional()
        .prop(&VIRTIOFS_FORMAT)
        .indexed(MAX_VIRTIOFS),
    P::string("vmgenid")
        .optional()
        .pattern("(?:[a-fA-F0-9]{8}(?:-[a-fA-F0-9]{4}){3}-[a-fA-F0-9]{12}|[01])")
        .default_str("1 (autogenerated)"),
    P::string("vmstatestorage")
        .optional()
        .named(F::PveStorageId),
    P::string("watchdog").optional().prop(&WATCHDOG_FORMAT),
];

/// The disks as the create/update API accepts them (with `import-from`).
pub static CONFIG_DRIVES: &[P] = &[
    P::string("efidisk0").optional().prop(&EFIDISK_FORMAT),
    P::string("ide[n]")
        .optional()
        .prop(&IDE_FORMAT)
        .indexed(MAX_IDE_DISKS),
    P::string("sata[n]")
        .optional()
        .prop(&SATA_FORMAT)
        .indexed(MAX_SATA_DISKS),
    P::string("scsi[n]")
        .optional()
        .prop(&SCSI_FORMAT)
        .indexed(MAX_SCSI_DISKS),
    P::string("tpmstate0").optional().prop(&TPMSTATE_FORMAT),
    P::string("virtio[n]")
        .optional()
        .prop(&VIRTIO_FORMAT)
        .indexed(MAX_VIRTIO_DISKS),
];

/// The disks as the config file stores them.
pub static CONFIG_DRIVES_FILE: &[P] = &[
    P::string("efidisk0").optional().prop(&EFIDISK_CONF_FORMAT),
    P::string("ide[n]")
        .optional()
        .prop(&IDE_CONF_FORMAT)
        .indexed(MAX_IDE_DISKS),
    P::string("sata[n]")
        .optional()
        .prop(&SATA_CONF_FORMAT)
        .indexed(MAX_SATA_DISKS),
    P::string("scsi[n]")
        .optional()
        .prop(&SCSI_CONF_FORMAT)
        .indexed(MAX_SCSI_DISKS),
    P::string("tpmstate0")
        .optional()
        .prop(&TPMSTATE_CONF_FORMAT),
    P::string("virtio[n]")
        .optional()
        .prop(&VIRTIO_CONF_FORMAT)
        .indexed(MAX_VIRTIO_DISKS),
];

/// Properties qemu-server writes itself for snapshots and running VMs;
/// the API does not accept them (`json_config_properties` skips them).
pub static SNAPSHOT_PROPS: &[P] = &[
    P::string("meta").optional().prop(&META_FORMAT),
    P::string("parent")
        .optional()
        .named(F::PveConfigid)
        .max_len(40),
    P::string("runningcpu")
        .optional()
        .pattern(r"^((?:[+-]?[\w\-._=]+,?)+)$"),
    P::string("runningmachine").optional().prop(&MACHINE_FORMAT),
    P::string("running-nets-host-mtu")
        .optional()
        .pattern(r"net\d+=\d+(,net\d+=\d+)*"),
    P::integer("snaptime").optional().min(0),
    P::string("vmstate").optional().named(F::PveVolumeId),
];

/// The spec a config-file key is checked against (`$confdesc`), e.g.
/// `net3` → `net[n]`.
pub fn config_file_spec(key: &str) -> Option<&'static P> {
    [CONFIG_COMMON, CONFIG_DRIVES_FILE, SNAPSHOT_PROPS]
        .into_iter()
        .flatten()
        .find(|s| s.matches_key(key))
}

/// The spec an API config key is checked against (with `import-from` on disks).
pub fn config_api_spec(key: &str) -> Option<&'static P> {
    [CONFIG_COMMON, CONFIG_DRIVES]
        .into_iter()
        .flatten()
        .find(|s| s.matches_key(key))
}
