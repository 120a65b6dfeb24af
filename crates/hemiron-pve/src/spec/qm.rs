//! VM-level property-string formats: `cpu`, `memory`, `boot`, `agent`,
//! `vga`, `machine`, `smbios1`, `rng0`, `watchdog`, `cicustom`, `audio0`,
//! `spice_enhancements`, `ivshmem`, `amd-sev`, `intel-tdx`, `meta`.

use crate::schema::{KeyAlias, NamedFormat as F, ParamSpec as P, PropertyFormat, PropertyMap};

/// `agent`.
pub static AGENT_FORMAT: PropertyFormat = PropertyFormat {
    name: None,
    keys: &[&[
        P::boolean("enabled").default_key().default_bool(false),
        P::boolean("freeze-fs").optional().default_bool(true),
        P::boolean("fstrim_cloned_disks")
            .optional()
            .default_bool(false),
        P::string("type")
            .optional()
            .default_str("virtio")
            .enums(&["virtio", "isa"]),
    ]],
    // The deprecated names of freeze-fs.
    aliases: &[
        KeyAlias {
            name: "freeze-fs-on-backup",
            alias: "freeze-fs",
            key_alias: None,
        },
        KeyAlias {
            name: "guest-fsfreeze",
            alias: "freeze-fs",
            key_alias: None,
        },
    ],
    validator: None,
};

/// `audio0`.
pub static AUDIO_FORMAT: PropertyFormat = PropertyFormat {
    name: None,
    keys: &[&[
        P::string("device").enums(&["ich9-intel-hda", "intel-hda", "AC97"]),
        P::string("driver")
            .optional()
            .default_str("spice")
            .enums(&["spice", "none"]),
    ]],
    aliases: &[],
    validator: None,
};

/// `boot`, registered as `pve-qm-boot`.
pub static BOOT_FORMAT: PropertyFormat = PropertyFormat {
    name: Some("pve-qm-boot"),
    keys: &[&[
        // Deprecated; also the fallback when `boot` is not set at all.
        P::string("legacy")
            .optional()
            .default_key()
            .pattern("[acdn]{1,4}")
            .default_str("cdn"),
        P::string("order").optional().list(F::PveQmBootdev),
    ]],
    aliases: &[],
    validator: None,
};

/// `cicustom`, registered as `pve-qm-cicustom`.
pub static CICUSTOM_FORMAT: PropertyFormat = PropertyFormat {
    name: Some("pve-qm-cicustom"),
    keys: &[&[
        P::string("meta").optional().named(F::PveVolumeId),
        P::string("network").optional().named(F::PveVolumeId),
        P::string("user").optional().named(F::PveVolumeId),
        P::string("vendor").optional().named(F::PveVolumeId),
    ]],
    aliases: &[],
    validator: None,
};

/// Built-in CPU models (`$cpu_vendor_list`), sorted case-insensitively as
/// the `reported-model` enum lists them.
pub const CPU_MODELS: &[&str] = &[
    "486",
    "athlon",
    "Broadwell",
    "Broadwell-IBRS",
    "Broadwell-noTSX",
    "Broadwell-noTSX-IBRS",
    "Cascadelake-Server",
    "Cascadelake-Server-noTSX",
    "Cascadelake-Server-v2",
    "Cascadelake-Server-v4",
    "Cascadelake-Server-v5",
    "ClearwaterForest",
    "Conroe",
    "Cooperlake",
    "Cooperlake-v2",
    "core2duo",
    "coreduo",
    "EPYC",
    "EPYC-Genoa",
    "EPYC-Genoa-v2",
    "EPYC-IBPB",
    "EPYC-Milan",
    "EPYC-Milan-v2",
    "EPYC-Milan-v3",
    "EPYC-Rome",
    "EPYC-Rome-v2",
    "EPYC-Rome-v3",
    "EPYC-Rome-v4",
    "EPYC-Rome-v5",
    "EPYC-Turin",
    "EPYC-v3",
    "EPYC-v4",
    "EPYC-v5",
    "GraniteRapids",
    "GraniteRapids-v2",
    "GraniteRapids-v3",
    "Haswell",
    "Haswell-IBRS",
    "Haswell-noTSX",
    "Haswell-noTSX-IBRS",
    "host",
    "Icelake-Client",
    "Icelake-Client-noTSX",
    "Icelake-Server",
    "Icelake-Server-noTSX",
    "Icelake-Server-v3",
    "Icelake-Server-v4",
    "Icelake-Server-v5",
    "Icelake-Server-v6",
    "Icelake-Server-v7",
    "IvyBridge",
    "IvyBridge-IBRS",
    "KnightsMill",
    "kvm32",
    "kvm64",
    "max",
    "Nehalem",
    "Nehalem-IBRS",
    "Opteron_G1",
    "Opteron_G2",
    "Opteron_G3",
    "Opteron_G4",
    "Opteron_G5",
    "Penryn",
    "pentium",
    "pentium2",
    "pentium3",
    "phenom",
    "qemu32",
    "qemu64",
    "SandyBridge",
    "SandyBridge-IBRS",
    "SapphireRapids",
    "SapphireRapids-v2",
    "SapphireRapids-v3",
    "SapphireRapids-v4",
    "SierraForest",
    "SierraForest-v2",
    "SierraForest-v3",
    "Skylake-Client",
    "Skylake-Client-IBRS",
    "Skylake-Client-noTSX-IBRS",
    "Skylake-Client-v4",
    "Skylake-Server",
    "Skylake-Server-IBRS",
    "Skylake-Server-noTSX-IBRS",
    "Skylake-Server-v4",
    "Skylake-Server-v5",
    "Westmere",
    "Westmere-IBRS",
];

/// The x86-64 micro-architecture levels qemu-server defines on top of QEMU's models.
pub const BUILTIN_CPU_MODELS: &[&str] = &["x86-64-v2", "x86-64-v2-AES", "x86-64-v3", "x86-64-v4"];

/// The only flags a VM config may set (custom models may set any).
pub const VM_CPU_FLAGS: &[&str] = &[
    "nested-virt",
    "md-clear",
    "pcid",
    "spec-ctrl",
    "ssbd",
    "ibpb",
    "virt-ssbd",
    "amd-ssbd",
    "amd-no-ssb",
    "pdpe1gb",
    "hv-tlbflush",
    "hv-evmcs",
    "aes",
];

/// `cpu`, registered as `pve-vm-cpu-conf` with `validate_vm_cpu_conf`.
pub static CPU_FORMAT: PropertyFormat = PropertyFormat {
    name: Some("pve-vm-cpu-conf"),
    keys: &[&[
        P::string("cputype")
            .optional()
            .default_key()
            .default_str("kvm64"),
        P::string("flags")
            .optional()
            .pattern(r"(?:(?:([+-])([a-zA-Z0-9\-_.]+))(;(?:([+-])([a-zA-Z0-9\-_.]+)))*)"),
        P::integer("guest-phys-bits").optional().min(32).max(64),
        P::boolean("hidden").optional().default_bool(false),
        P::string("hv-vendor-id")
            .optional()
            .pattern("(?:[a-zA-Z0-9]{1,12})"),
        P::string("phys-bits").optional().named(F::PvePhysBits),
        P::string("reported-model")
            .optional()
            .default_str("kvm64")
            .enums(CPU_MODELS),
    ]],
    aliases: &[],
    validator: Some(validate_vm_cpu_conf),
};

/// qemu-server's `validate_vm_cpu_conf`. Custom models (`custom-<name>`)
/// are accepted without looking them up: their definitions live in the
/// cluster's `cpu-models.conf`, which this crate does not read.
fn validate_vm_cpu_conf(cpu: &PropertyMap) -> Result<(), String> {
    let cputype = cpu.get("cputype").map(String::as_str).unwrap_or("");
    if cputype.is_empty() || cputype == "0" {
        return Err("CPU is missing cputype\n".to_string());
    }
    if !cputype.starts_with("custom-")
        && !CPU_MODELS.contains(&cputype)
        && !BUILTIN_CPU_MODELS.contains(&cputype)
    {
        return Err(format!(
            "Built-in cputype '{cputype}' is not defined (missing 'custom-' prefix?)\n"
        ));
    }
    if let Some(flags) = cpu
        .get("flags")
        .filter(|f| !f.is_empty() && f.as_str() != "0")
    {
        let supported = flags.split(';').all(|flag| {
            flag.strip_prefix(['+', '-'])
                .is_some_and(|name| VM_CPU_FLAGS.contains(&name))
        });
        if !supported {
            return Err(format!(
                "VM-specific CPU flags must be a subset of: {}\n",
                VM_CPU_FLAGS.join(", ")
            ));
        }
    }
    if cpu.contains_key("reported-model") {
        return Err(
            "Property 'reported-model' not allowed in VM-specific CPU config.\n".to_string(),
        );
    }
    Ok(())
}

/// `ivshmem`.
pub static IVSHMEM_FORMAT: PropertyFormat = PropertyFormat {
    name: None,
    keys: &[&[
        P::string("name").optional().pattern(r"[a-zA-Z0-9\-]+"),
        P::integer("size").min(1),
    ]],
    aliases: &[],
    validator: None,
};

/// `machine` (and `runningmachine`).
pub static MACHINE_FORMAT: PropertyFormat = PropertyFormat {
    name: None,
    keys: &[&[
        P::string("type").optional().default_key().max_len(40).pattern(
            r"(pc|pc(-i440fx)?-\d+(\.\d+)+(\+pve\d+)?(\.pxe)?|q35|pc-q35-\d+(\.\d+)+(\+pve\d+)?(\.pxe)?|virt(?:-\d+(\.\d+)+)?(\+pve\d+)?)",
        ),
        P::number("aw-bits").optional().min(32).max(64),
        P::boolean("enable-s3").optional(),
        P::boolean("enable-s4").optional(),
        P::string("viommu").optional().enums(&["intel", "virtio"]),
    ]],
    aliases: &[],
    validator: None,
};

/// `memory`.
pub static MEMORY_FORMAT: PropertyFormat = PropertyFormat {
    name: None,
    keys: &[&[P::integer("current").default_key().min(16).default_int(512)]],
    aliases: &[],
    validator: None,
};

/// `meta` (written by qemu-server itself, config file only).
pub static META_FORMAT: PropertyFormat = PropertyFormat {
    name: None,
    keys: &[&[
        P::string("creation-qemu")
            .optional()
            .pattern(r"\d+(\.\d+)+"),
        P::integer("ctime").optional().min(0),
    ]],
    aliases: &[],
    validator: None,
};

/// `rng0`, registered as `pve-qm-rng`.
pub static RNG_FORMAT: PropertyFormat = PropertyFormat {
    name: Some("pve-qm-rng"),
    keys: &[&[
        P::string("source")
            .default_key()
            .enums(&["/dev/urandom", "/dev/random", "/dev/hwrng"]),
        P::integer("max_bytes").optional().default_int(1024),
        P::integer("period").optional().default_int(1000),
    ]],
    aliases: &[],
    validator: None,
};

/// `amd-sev`, registered as `pve-qemu-sev-fmt`.
pub static SEV_FORMAT: PropertyFormat = PropertyFormat {
    name: Some("pve-qemu-sev-fmt"),
    keys: &[&[
        P::string("type")
            .default_key()
            .enums(&["std", "es", "snp"])
            .max_len(3),
        P::boolean("allow-smt").optional().default_bool(true),
        P::boolean("kernel-hashes").optional().default_bool(false),
        P::boolean("no-debug").optional().default_bool(false),
        P::boolean("no-key-sharing").optional().default_bool(false),
    ]],
    aliases: &[],
    validator: None,
};

const BASE64: &str = "[A-Za-z0-9+/]+={0,2}";

/// `smbios1`, registered as `pve-qm-smbios1`.
pub static SMBIOS1_FORMAT: PropertyFormat = PropertyFormat {
    name: Some("pve-qm-smbios1"),
    keys: &[&[
        P::boolean("base64").optional(),
        P::string("family").optional().pattern(BASE64),
        P::string("manufacturer").optional().pattern(BASE64),
        P::string("product").optional().pattern(BASE64),
        P::string("serial").optional().pattern(BASE64),
        P::string("sku").optional().pattern(BASE64),
        P::string("uuid")
            .optional()
            .pattern("[a-fA-F0-9]{8}(?:-[a-fA-F0-9]{4}){3}-[a-fA-F0-9]{12}"),
        P::string("version").optional().pattern(BASE64),
    ]],
    aliases: &[],
    validator: None,
};

/// `spice_enhancements`.
pub static SPICE_FORMAT: PropertyFormat = PropertyFormat {
    name: None,
    keys: &[&[
        // PVE writes this default as the string '0'.
        P::boolean("foldersharing").optional().default_str("0"),
        P::string("videostreaming")
            .optional()
            .default_str("off")
            .enums(&["off", "all", "filter"]),
    ]],
    aliases: &[],
    validator: None,
};

/// `intel-tdx`, registered as `pve-qemu-tdx-fmt`.
pub static TDX_FORMAT: PropertyFormat = PropertyFormat {
    name: Some("pve-qemu-tdx-fmt"),
    keys: &[&[
        P::string("type").default_key().enums(&["tdx"]),
        P::boolean("attestation").default_bool(true),
        P::integer("vsock-cid").optional().min(2).default_int(2),
        P::integer("vsock-port").optional().min(0).default_int(4050),
    ]],
    aliases: &[],
    validator: None,
};

/// VGA types.
pub const VGA_TYPES: &[&str] = &[
    "cirrus",
    "qxl",
    "qxl2",
    "qxl3",
    "qxl4",
    "none",
    "serial0",
    "serial1",
    "serial2",
    "serial3",
    "std",
    "virtio",
    "virtio-gl",
    "vmware",
];

/// `vga`.
pub static VGA_FORMAT: PropertyFormat = PropertyFormat {
    name: None,
    keys: &[&[
        P::string("type")
            .optional()
            .default_key()
            .default_str("std")
            .enums(VGA_TYPES),
        P::string("clipboard").optional().enums(&["vnc"]),
        P::integer("memory").optional().min(4).max(512),
    ]],
    aliases: &[],
    validator: None,
};

/// `watchdog`, registered as `pve-qm-watchdog`.
pub static WATCHDOG_FORMAT: PropertyFormat = PropertyFormat {
    name: Some("pve-qm-watchdog"),
    keys: &[&[
        P::string("model")
            .optional()
            .default_key()
            .default_str("i6300esb")
            .enums(&["i6300esb", "ib700"]),
        P::string("action")
            .optional()
            .enums(&["reset", "shutdown", "poweroff", "pause", "debug", "none"]),
    ]],
    aliases: &[],
    validator: None,
};
