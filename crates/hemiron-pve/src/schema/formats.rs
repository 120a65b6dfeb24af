//! Named formats that PVE checks in code (`register_format` with a sub).
//!
//! Each check returns `Err` with the text PVE dies with, trailing newline
//! included, because that text ends up verbatim after `invalid format - ` in
//! the API's `errors` object.

use super::perl::full_match;
use crate::size::parse_size;
use crate::spec::limits;
use crate::text::split_list;

const IPV4_OCTET: &str = r"(?:25[0-5]|(?:2[0-4]|1[0-9]|[1-9])?[0-9])";
const IPV6_H16: &str = "(?:[0-9a-fA-F]{1,4})";

/// PVE's `$IPV4RE`.
pub(crate) fn ipv4_re() -> String {
    format!(r"(?:(?:{IPV4_OCTET}\.){{3}}{IPV4_OCTET})")
}

/// PVE's `$IPV6RE`.
pub(crate) fn ipv6_re() -> String {
    let h = IPV6_H16;
    let ls32 = format!("(?:(?:{}|{h}:{h}))", ipv4_re());
    [
        format!("(?:(?:(?:{h}:){{6}}){ls32})"),
        format!("(?:(?:::(?:{h}:){{5}}){ls32})"),
        format!("(?:(?:(?:{h})?::(?:{h}:){{4}}){ls32})"),
        format!("(?:(?:(?:(?:{h}:){{0,1}}{h})?::(?:{h}:){{3}}){ls32})"),
        format!("(?:(?:(?:(?:{h}:){{0,2}}{h})?::(?:{h}:){{2}}){ls32})"),
        format!("(?:(?:(?:(?:{h}:){{0,3}}{h})?::(?:{h}:){{1}}){ls32})"),
        format!("(?:(?:(?:(?:{h}:){{0,4}}{h})?::){ls32})"),
        format!("(?:(?:(?:(?:{h}:){{0,5}}{h})?::){h})"),
        format!("(?:(?:(?:(?:{h}:){{0,6}}{h})?::))"),
    ]
    .iter()
    .fold(String::from("(?:"), |mut acc, alt| {
        if acc.len() > 3 {
            acc.push('|');
        }
        acc.push_str(alt);
        acc
    }) + ")"
}

/// The items of a `-list` format: separated by commas, semicolons, white space or NUL.
fn list_items(value: &str) -> impl Iterator<Item = &str> {
    value
        .split(|c: char| c == ',' || c == ';' || c == '\0' || c.is_whitespace())
        .filter(|s| !s.is_empty())
}

const DNS_LABEL: &str = r"([a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?)";

/// A format PVE checks in code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamedFormat {
    /// `pve-vmid`: 100..999999999 written without leading zeros.
    PveVmid,
    /// `pve-vmid-list`: VM IDs separated by commas, semicolons or white space.
    PveVmidList,
    /// `email-or-username-list`: mail addresses or user names, separated likewise.
    EmailOrUsernameList,
    /// `pve-node`: a host name label.
    PveNode,
    /// `pve-storage-id`.
    PveStorageId,
    /// `pve-bridge-id`.
    PveBridgeId,
    /// `pve-configid`: `[a-z][a-z0-9_-]+`, case-insensitive.
    PveConfigid,
    /// `mac-addr`: a unicast MAC address.
    MacAddr,
    /// `ipv4`.
    Ipv4,
    /// `ipv6`.
    Ipv6,
    /// `ip`.
    Ip,
    /// `CIDR`.
    Cidr,
    /// `CIDRv4`.
    CidrV4,
    /// `CIDRv6`.
    CidrV6,
    /// `pve-ipv4-config`: `dhcp`, `manual` or an IPv4 CIDR.
    PveIpv4Config,
    /// `pve-ipv6-config`: `auto`, `dhcp`, `manual` or an IPv6 CIDR.
    PveIpv6Config,
    /// `dns-name`.
    DnsName,
    /// `address`: an IP address or DNS name.
    Address,
    /// `disk-size`.
    DiskSize,
    /// `urlencoded`.
    Urlencoded,
    /// `pve-tag`.
    PveTag,
    /// `pve-startup-order`.
    PveStartupOrder,
    /// `pve-cpuset`.
    PveCpuset,
    /// `pve-hotplug-features`.
    PveHotplugFeatures,
    /// `pve-qm-bootdisk`: a drive name (not `unused<n>`).
    PveQmBootdisk,
    /// `pve-qm-bootdev`: a drive (but not efidisk/tpmstate), `net<n>`, `usb<n>` or `hostpci<n>`.
    PveQmBootdev,
    /// `pve-volume-id`: `<storage>:<volname>`.
    PveVolumeId,
    /// `pve-volume-id-or-qm-path`: a volume ID, an absolute path, `none` or `cdrom`.
    PveVolumeIdOrQmPath,
    /// `pve-volume-id-or-absolute-path`.
    PveVolumeIdOrAbsolutePath,
    /// `pve-poolid`.
    PvePoolid,
    /// `pve-phys-bits`: 8..64 or `host`.
    PvePhysBits,
    /// `pve-realm`.
    PveRealm,
    /// `pve-priv`: a privilege name.
    PvePriv,
    /// `storage-pair`: `1`, `<storage>` or `<source>:<target>`.
    StoragePair,
    /// `pve-task-status-type`.
    PveTaskStatusType,
    /// `pve-storage-content`.
    PveStorageContent,
}

impl NamedFormat {
    /// The registered name.
    pub fn name(self) -> &'static str {
        use NamedFormat::*;
        match self {
            PveVmid => "pve-vmid",
            PveVmidList => "pve-vmid-list",
            EmailOrUsernameList => "email-or-username-list",
            PveNode => "pve-node",
            PveStorageId => "pve-storage-id",
            PveBridgeId => "pve-bridge-id",
            PveConfigid => "pve-configid",
            MacAddr => "mac-addr",
            Ipv4 => "ipv4",
            Ipv6 => "ipv6",
            Ip => "ip",
            Cidr => "CIDR",
            CidrV4 => "CIDRv4",
            CidrV6 => "CIDRv6",
            PveIpv4Config => "pve-ipv4-config",
            PveIpv6Config => "pve-ipv6-config",
            DnsName => "dns-name",
            Address => "address",
            DiskSize => "disk-size",
            Urlencoded => "urlencoded",
            PveTag => "pve-tag",
            PveStartupOrder => "pve-startup-order",
            PveCpuset => "pve-cpuset",
            PveHotplugFeatures => "pve-hotplug-features",
            PveQmBootdisk => "pve-qm-bootdisk",
            PveQmBootdev => "pve-qm-bootdev",
            PveVolumeId => "pve-volume-id",
            PveVolumeIdOrQmPath => "pve-volume-id-or-qm-path",
            PveVolumeIdOrAbsolutePath => "pve-volume-id-or-absolute-path",
            PvePoolid => "pve-poolid",
            PvePhysBits => "pve-phys-bits",
            PveRealm => "pve-realm",
            PvePriv => "pve-priv",
            StoragePair => "storage-pair",
            PveTaskStatusType => "pve-task-status-type",
            PveStorageContent => "pve-storage-content",
        }
    }

    /// Checks `value`; `Err` carries PVE's message.
    pub fn check(self, value: &str) -> Result<(), String> {
        use NamedFormat::*;
        let ok = |cond: bool, msg: String| if cond { Ok(()) } else { Err(msg) };
        match self {
            PveVmid => ok(
                full_match("[1-9][0-9]{2,8}", value),
                "value does not look like a valid VM ID\n".into(),
            ),
            PveVmidList => ok(
                list_items(value).all(|id| full_match("[1-9][0-9]{2,8}", id))
                    && list_items(value).next().is_some(),
                format!("value '{value}' does not look like a valid VM ID\n"),
            ),
            EmailOrUsernameList => ok(
                list_items(value).all(|item| {
                    full_match(
                        r"[\w+\-~]+(\.[\w+\-~]+)*@[a-zA-Z0-9\-]+(\.[a-zA-Z0-9\-]+)*",
                        item,
                    ) || full_match(r"[^\s:/]+", item)
                }),
                format!("value '{value}' does not look like a valid email address or user name\n"),
            ),
            PveNode => ok(
                full_match(r"[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?", value),
                "value does not look like a valid node name\n".into(),
            ),
            PveStorageId => ok(
                is_storage_id(value),
                format!("storage ID '{value}' contains illegal characters\n"),
            ),
            PveBridgeId => ok(
                full_match(r"[-_.\w\d]+", value),
                format!("invalid bridge ID '{value}'\n"),
            ),
            PveConfigid => ok(
                is_configid(value),
                format!("invalid configuration ID '{value}'\n"),
            ),
            MacAddr => ok(
                full_match("(?i)[a-f0-9][02468ace](?::[a-f0-9]{2}){5}", value),
                "value does not look like a valid unicast MAC address\n".into(),
            ),
            Ipv4 => ok(
                is_ipv4(value),
                "value does not look like a valid IPv4 address\n".into(),
            ),
            Ipv6 => ok(
                is_ipv6(value),
                "value does not look like a valid IPv6 address\n".into(),
            ),
            Ip => ok(
                is_ipv4(value) || is_ipv6(value),
                "value does not look like a valid IP address\n".into(),
            ),
            CidrV4 => ok(
                is_cidr_v4(value),
                "value does not look like a valid IPv4 CIDR network\n".into(),
            ),
            CidrV6 => ok(
                is_cidr_v6(value),
                "value does not look like a valid IPv6 CIDR network\n".into(),
            ),
            Cidr => ok(
                is_cidr_v4(value) || is_cidr_v6(value),
                "value does not look like a valid CIDR network\n".into(),
            ),
            PveIpv4Config => ok(
                full_match("dhcp|manual", value) || is_cidr_v4(value),
                "value does not look like a valid ipv4 network configuration\n".into(),
            ),
            PveIpv6Config => ok(
                full_match("auto|dhcp|manual", value) || is_cidr_v6(value),
                "value does not look like a valid ipv6 network configuration\n".into(),
            ),
            DnsName => ok(
                is_dns_name(value),
                "value does not look like a valid DNS name\n".into(),
            ),
            Address => ok(
                is_ipv4(value) || is_ipv6(value) || is_dns_name(value),
                format!("value does not look like a valid address: {value}\n"),
            ),
            DiskSize => ok(
                parse_size(value).is_some(),
                format!("value does not look like a valid disk size: {value}\n"),
            ),
            Urlencoded => ok(
                full_match(r"[-%a-zA-Z0-9_.!~*'()]*", value),
                format!("invalid urlencoded string: {value}\n"),
            ),
            PveTag => ok(
                full_match(r"(?i)[a-z0-9_][a-z0-9_\-+.]*", value),
                "invalid characters in tag\n".into(),
            ),
            PveStartupOrder => ok(
                crate::views::Startup::parse(value).is_ok(),
                "unable to parse startup options\n".into(),
            ),
            PveCpuset => ok(
                parse_cpuset(value).is_some(),
                "unable to parse cpuset option\n".into(),
            ),
            PveHotplugFeatures => check_hotplug(value),
            PveQmBootdisk => ok(
                limits::is_valid_drivename(value),
                format!("invalid boot disk '{value}'\n"),
            ),
            PveQmBootdev => ok(
                is_bootdev(value),
                format!("invalid boot device '{value}'\n"),
            ),
            PveVolumeId => ok(
                crate::volume::VolumeId::parse(value).is_ok(),
                format!("unable to parse volume ID '{value}'\n"),
            ),
            PveVolumeIdOrQmPath => {
                if value == "none" || value == "cdrom" {
                    return Ok(());
                }
                PveVolumeIdOrAbsolutePath.check(value)
            }
            PveVolumeIdOrAbsolutePath => {
                if value.starts_with('/') {
                    return Ok(());
                }
                PveVolumeId.check(value)
            }
            PvePoolid => ok(
                full_match(r"[A-Za-z0-9.\-_]+", value),
                format!("pool name '{value}' contains invalid characters\n"),
            ),
            PvePhysBits => {
                let bits_ok = full_match(r"host|\d{1,2}", value)
                    && value
                        .trim_end_matches('\n')
                        .parse::<u8>()
                        .map_or(true, |n| (8..=64).contains(&n));
                ok(
                    bits_ok,
                    "value must be an integer between 8 and 64 or 'host'\n".into(),
                )
            }
            PveRealm => ok(
                full_match(r"[A-Za-z][A-Za-z0-9.\-_]+", value),
                "value does not look like a valid realm\n".into(),
            ),
            // PVE checks against its list of known privileges; we only check
            // the shape of a privilege name.
            PvePriv => ok(
                full_match(r"[A-Z][A-Za-z]*(?:\.[A-Z][A-Za-z]*)*", value),
                format!("invalid privilege '{value}'\n"),
            ),
            StoragePair => check_storage_pair(value),
            PveTaskStatusType => ok(
                full_match("(?i)ok|error|warning|unknown", value),
                format!("invalid status '{value}'\n"),
            ),
            PveStorageContent => ok(
                matches!(
                    value,
                    "images"
                        | "rootdir"
                        | "vztmpl"
                        | "iso"
                        | "backup"
                        | "snippets"
                        | "none"
                        | "import"
                ),
                format!("invalid content type '{value}'\n"),
            ),
        }
    }
}

/// PVE's `parse_id` (storage IDs): `[a-z][a-z0-9\-\_\.]*[a-z0-9]`, case-insensitive.
pub(crate) fn is_storage_id(value: &str) -> bool {
    full_match(r"(?i)[a-z][a-z0-9\-_.]*[a-z0-9]", value)
}

/// `$CONFIGID_RE`.
pub(crate) fn is_configid(value: &str) -> bool {
    full_match("(?i)[a-z][a-z0-9_-]+", value)
}

pub(crate) fn is_ipv4(value: &str) -> bool {
    full_match(&ipv4_re(), value)
}

pub(crate) fn is_ipv6(value: &str) -> bool {
    full_match(&ipv6_re(), value)
}

fn cidr_prefix(value: &str, ip_re: &str) -> Option<u32> {
    let (ip, len) = value.trim_end_matches('\n').rsplit_once('/')?;
    if !full_match(ip_re, ip) || len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Perl compares numerically; absurdly long digit runs are just "big".
    Some(len.parse().unwrap_or(u32::MAX))
}

pub(crate) fn is_cidr_v4(value: &str) -> bool {
    cidr_prefix(value, &ipv4_re()).is_some_and(|n| n > 7 && n <= 32)
}

pub(crate) fn is_cidr_v6(value: &str) -> bool {
    cidr_prefix(value, &ipv6_re()).is_some_and(|n| n > 7 && n <= 128)
}

pub(crate) fn is_dns_name(value: &str) -> bool {
    full_match(&format!(r"({DNS_LABEL}\.)*{DNS_LABEL}"), value)
}

/// `PVE::CpuSet::parse_cpuset`: comma-separated ids and `a-b` ranges.
pub(crate) fn parse_cpuset(value: &str) -> Option<Vec<u32>> {
    // PVE::CpuSet's MAX_CPUID
    const MAX_CPUID: u32 = 8192;
    let mut ids = Vec::new();
    for part in value.split(',') {
        let p = part.trim();
        let (from, to) = match p.split_once('-') {
            Some((a, b)) => (a, b),
            None => (p, p),
        };
        let num = |s: &str| -> Option<u32> {
            (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok())?
        };
        let (from, to) = (num(from)?, num(to)?);
        if to < from || to >= MAX_CPUID {
            return None;
        }
        ids.extend(from..=to);
    }
    ids.sort_unstable();
    ids.dedup();
    Some(ids)
}

/// qemu-server's `parse_hotplug_features` (its `die` escapes the verifier).
fn check_hotplug(value: &str) -> Result<(), String> {
    if value == "0" || value == "1" {
        return Ok(());
    }
    for feature in split_list(value) {
        if !matches!(
            feature.as_str(),
            "network" | "disk" | "cpu" | "memory" | "usb" | "cloudinit"
        ) {
            return Err(format!("invalid hotplug feature '{feature}'\n"));
        }
    }
    Ok(())
}

/// qemu-server's `verify_bootdev`.
fn is_bootdev(dev: &str) -> bool {
    if limits::is_valid_drivename(dev)
        && !dev.starts_with("efidisk")
        && !dev.starts_with("tpmstate")
    {
        return true;
    }
    let indexed = |prefix: &str, count: u16| {
        dev.strip_prefix(prefix)
            .and_then(super::parse_index)
            .is_some_and(|i| i < u32::from(count))
    };
    indexed("net", limits::MAX_NETS)
        || indexed("usb", limits::MAX_USB_DEVICES)
        || indexed("hostpci", limits::MAX_HOSTPCI_DEVICES)
}

/// `verify_storagepair` for one list entry (`parse_idmap` with storage IDs).
fn check_storage_pair(entry: &str) -> Result<(), String> {
    if entry == "1" {
        return Ok(());
    }
    let invalid = |id: &str| {
        format!("entry '{entry}' contains invalid ID - storage ID '{id}' contains illegal characters\n\n")
    };
    if let Some((source, target)) = entry.split_once(':') {
        if source.is_empty() || target.is_empty() || target.contains(':') {
            return Err(invalid(entry));
        }
        for id in [source, target] {
            if !is_storage_id(id) {
                return Err(invalid(id));
            }
        }
        return Ok(());
    }
    if is_storage_id(entry) {
        Ok(())
    } else {
        Err(invalid(entry))
    }
}

#[cfg(test)]
mod tests {
    use super::NamedFormat::*;
    use super::*;

    #[test]
    fn ip_formats() {
        for ok in ["10.0.0.1", "255.255.255.255", "0.0.0.0"] {
            assert!(Ipv4.check(ok).is_ok(), "{ok}");
        }
        for bad in ["256.0.0.1", "01.2.3.4", "1.2.3", "1.2.3.4.5", "::1"] {
            assert!(Ipv4.check(bad).is_err(), "{bad}");
        }
        for ok in [
            "::1",
            "fe80::1",
            "2001:db8::",
            "::",
            "::ffff:1.2.3.4",
            "1:2:3:4:5:6:7:8",
        ] {
            assert!(Ipv6.check(ok).is_ok(), "{ok}");
        }
        for bad in ["1:2:3:4:5:6:7:8:9", ":::", "g::1", "1.2.3.4"] {
            assert!(Ipv6.check(bad).is_err(), "{bad}");
        }
        assert!(PveIpv4Config.check("10.0.0.5/24").is_ok());
        assert!(PveIpv4Config.check("dhcp").is_ok());
        assert_eq!(
            PveIpv4Config.check("10.0.0.5/7"),
            Err("value does not look like a valid ipv4 network configuration\n".into())
        );
        assert!(PveIpv6Config.check("auto").is_ok());
        assert!(PveIpv6Config.check("2001:db8::5/64").is_ok());
        assert!(Cidr.check("10.0.0.0/8").is_ok());
    }

    #[test]
    fn id_formats() {
        assert!(PveVmid.check("100").is_ok());
        assert!(PveVmid.check("999999999").is_ok());
        assert_eq!(
            PveVmid.check("099"),
            Err("value does not look like a valid VM ID\n".into())
        );
        assert!(PveNode.check("pve-1").is_ok());
        assert!(PveNode.check("-pve").is_err());
        assert!(PveStorageId.check("local-lvm").is_ok());
        assert_eq!(
            PveStorageId.check("1local"),
            Err("storage ID '1local' contains illegal characters\n".into())
        );
        assert!(DnsName.check("web-1.example.com").is_ok());
        assert!(DnsName.check("under_score").is_err());
        assert!(MacAddr.check("BC:24:11:aa:bb:cc").is_ok());
        assert!(MacAddr.check("01:24:11:aa:bb:cc").is_err());
        assert!(PveTag.check("prod+web").is_ok());
        assert!(PveTag.check("-x").is_err());
        assert!(Urlencoded.check("ssh-rsa%20AAAA").is_ok());
        assert!(Urlencoded.check("ssh-rsa AAAA").is_err());
    }

    #[test]
    fn qemu_formats() {
        assert!(PveHotplugFeatures.check("network,disk,usb").is_ok());
        assert!(PveHotplugFeatures.check("0").is_ok());
        assert_eq!(
            PveHotplugFeatures.check("network,gpu"),
            Err("invalid hotplug feature 'gpu'\n".into())
        );
        assert_eq!(parse_cpuset("0,5,8-11"), Some(vec![0, 5, 8, 9, 10, 11]));
        assert_eq!(parse_cpuset("3-1"), None);
        assert_eq!(parse_cpuset(""), None);
        assert!(PveQmBootdisk.check("scsi30").is_ok());
        assert!(PveQmBootdisk.check("scsi31").is_err());
        assert!(PveQmBootdev.check("net0").is_ok());
        assert!(PveQmBootdev.check("efidisk0").is_err());
        assert!(PveQmBootdev.check("hostpci15").is_ok());
        assert!(PveVolumeIdOrQmPath.check("none").is_ok());
        assert!(PveVolumeIdOrQmPath.check("/dev/sdb").is_ok());
        assert!(PveVolumeIdOrQmPath.check("local-lvm:32").is_ok());
        assert_eq!(
            PveVolumeIdOrQmPath.check("nostorage"),
            Err("unable to parse volume ID 'nostorage'\n".into())
        );
        assert!(PvePhysBits.check("host").is_ok());
        assert!(PvePhysBits.check("40").is_ok());
        assert!(PvePhysBits.check("7").is_err());
        assert!(StoragePair.check("local:local-lvm").is_ok());
        assert!(StoragePair.check("1").is_ok());
        assert!(StoragePair.check("a:b:c").is_err());
    }
}
