//! Device property-string formats: `net[n]`, `ipconfig[n]`, `usb[n]`,
//! `hostpci[n]`, `numa[n]`, `virtiofs[n]` (qemu-server `Network.pm`,
//! `USB.pm`, `PCI.pm`, `Memory.pm`, `Virtiofs.pm`).

use crate::schema::{KeyAlias, NamedFormat as F, ParamSpec as P, PropertyFormat};

/// NIC models (`$nic_model_list`).
pub const NIC_MODELS: &[&str] = &[
    "e1000",
    "e1000-82540em",
    "e1000-82544gc",
    "e1000-82545em",
    "e1000e",
    "i82551",
    "i82557b",
    "i82559er",
    "ne2k_isa",
    "ne2k_pci",
    "pcnet",
    "rtl8139",
    "virtio",
    "vmxnet3",
];

const fn model_alias(name: &'static str) -> KeyAlias {
    KeyAlias {
        name,
        alias: "macaddr",
        key_alias: Some("model"),
    }
}

/// `<model>=<macaddr>`: `virtio=BC:24:11:...` sets model and MAC at once.
pub static NET_ALIASES: &[KeyAlias] = &[
    model_alias("e1000"),
    model_alias("e1000-82540em"),
    model_alias("e1000-82544gc"),
    model_alias("e1000-82545em"),
    model_alias("e1000e"),
    model_alias("i82551"),
    model_alias("i82557b"),
    model_alias("i82559er"),
    model_alias("ne2k_isa"),
    model_alias("ne2k_pci"),
    model_alias("pcnet"),
    model_alias("rtl8139"),
    model_alias("virtio"),
    model_alias("vmxnet3"),
];

/// VLAN id lists (`trunks`) and NUMA id sets.
const ID_RANGES: &str = r"(?:\d+(?:-\d+)?(?:;\d+(?:-\d+)?)*)";

/// `net[n]`.
pub static NET_FORMAT: PropertyFormat = PropertyFormat {
    name: None,
    keys: &[&[
        P::string("model").default_key().enums(NIC_MODELS),
        P::string("bridge").optional().named(F::PveBridgeId),
        P::boolean("firewall").optional(),
        P::boolean("link_down").optional(),
        P::string("macaddr").optional().named(F::MacAddr),
        P::integer("mtu").optional().min(1).max(65520),
        P::integer("queues").optional().min(0).max(64),
        P::number("rate").optional().min(0),
        P::integer("tag").optional().min(1).max(4094),
        P::string("trunks").optional().pattern(ID_RANGES),
    ]],
    aliases: NET_ALIASES,
    validator: None,
};

/// `ipconfig[n]`, registered as `pve-qm-ipconfig`.
pub static IPCONFIG_FORMAT: PropertyFormat = PropertyFormat {
    name: Some("pve-qm-ipconfig"),
    keys: &[&[
        P::string("gw").optional().named(F::Ipv4).requires("ip"),
        P::string("gw6").optional().named(F::Ipv6).requires("ip6"),
        P::string("ip")
            .optional()
            .named(F::PveIpv4Config)
            .default_str("dhcp"),
        P::string("ip6")
            .optional()
            .named(F::PveIpv6Config)
            .default_str("dhcp"),
    ]],
    aliases: &[],
    validator: None,
};

/// `usb[n]`.
pub static USB_FORMAT: PropertyFormat = PropertyFormat {
    name: None,
    keys: &[&[
        P::string("host").optional().default_key().pattern(
            r"(?:(?:(?:(?:(0x)?([0-9A-Fa-f]{4}):(0x)?([0-9A-Fa-f]{4})))|(?:(?:(\d+)\-(\d+(\.\d+)*)))|[Ss][Pp][Ii][Cc][Ee]))",
        ),
        P::string("mapping").optional().named(F::PveConfigid),
        P::boolean("usb3").optional().default_bool(false),
    ]],
    aliases: &[],
    validator: None,
};

/// `$PCIRE`: one host PCI address.
macro_rules! pci_id {
    () => {
        r"(?:[a-f0-9]{4,}:)?[a-f0-9]{2}:[a-f0-9]{2}(?:\.[a-f0-9])?"
    };
}
const HEX_ID: &str = r"(?:^0x[0-9a-fA-F]{4}$)";

/// `hostpci[n]`, registered as `pve-qm-hostpci`.
pub static HOSTPCI_FORMAT: PropertyFormat = PropertyFormat {
    name: Some("pve-qm-hostpci"),
    keys: &[&[
        P::string("host").optional().default_key().pattern(concat!(
            "(?:(?:",
            pci_id!(),
            ")(;(?:",
            pci_id!(),
            "))*)"
        )),
        P::string("device-id").optional().pattern(HEX_ID),
        P::string("driver").optional().enums(&["vfio", "keep"]),
        P::boolean("legacy-igd").optional().default_bool(false),
        P::string("mapping").optional().named(F::PveConfigid),
        P::string("mdev").optional().pattern(r"[^/\.:]+"),
        P::boolean("pcie").optional().default_bool(false),
        P::boolean("rombar").optional().default_bool(true),
        P::string("romfile").optional().pattern("[^,;]+"),
        P::string("sub-device-id").optional().pattern(HEX_ID),
        P::string("sub-vendor-id").optional().pattern(HEX_ID),
        P::string("vendor-id").optional().pattern(HEX_ID),
        P::boolean("x-vga").optional().default_bool(false),
    ]],
    aliases: &[],
    validator: None,
};

/// `numa[n]`.
pub static NUMA_FORMAT: PropertyFormat = PropertyFormat {
    name: None,
    keys: &[&[
        P::string("cpus").pattern(ID_RANGES),
        P::string("hostnodes").optional().pattern(ID_RANGES),
        P::number("memory").optional(),
        P::string("policy")
            .optional()
            .enums(&["preferred", "bind", "interleave"]),
    ]],
    aliases: &[],
    validator: None,
};

/// `virtiofs[n]`.
pub static VIRTIOFS_FORMAT: PropertyFormat = PropertyFormat {
    name: None,
    keys: &[&[
        P::string("dirid").default_key().named(F::PveConfigid),
        P::string("cache")
            .optional()
            .default_str("auto")
            .enums(&["auto", "always", "metadata", "never"]),
        P::boolean("direct-io").optional().default_bool(false),
        P::boolean("expose-acl").optional().default_bool(false),
        P::boolean("expose-xattr").optional().default_bool(false),
    ]],
    aliases: &[],
    validator: None,
};
