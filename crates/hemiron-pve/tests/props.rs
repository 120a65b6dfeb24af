//! Property tests: every VM-config property-string format round-trips
//! through print and parse, parsers never panic, config files and UPIDs
//! round-trip, and validation never panics.

// Test helpers outside #[test] functions may fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use hemiron_pve::config::{self, PendingSection, Section, VmConfig};
use hemiron_pve::schema::{
    parse_property_string, print_property_string, Format, NamedFormat, ParamSpec, ParamType,
    PropertyFormat, PropertyMap,
};
use hemiron_pve::size::format_size;
use hemiron_pve::spec::{qm, vm_config, ENDPOINTS};
use hemiron_pve::upid::Upid;
use hemiron_pve::views::{
    Agent, Boot, Cpu, Drive, DriveKey, IpConfig, Machine, Memory, NetDevice, Rng, Smbios1, Startup,
    Vga, Watchdog,
};
use proptest::prelude::*;
use proptest::strategy::BoxedStrategy;

/// Every property-string format a VM config property uses, with the key
/// of one property that uses it.
fn vm_formats() -> Vec<(&'static str, &'static PropertyFormat)> {
    let mut out: Vec<(&'static str, &'static PropertyFormat)> = Vec::new();
    for spec in vm_config::CONFIG_COMMON
        .iter()
        .chain(vm_config::CONFIG_DRIVES)
        .chain(vm_config::CONFIG_DRIVES_FILE)
        .chain(vm_config::SNAPSHOT_PROPS)
    {
        if let Some(Format::Property(f)) = spec.format {
            if !out.iter().any(|(_, g)| std::ptr::eq(*g, f)) {
                out.push((spec.name, f));
            }
        }
    }
    out
}

fn safe_text() -> BoxedStrategy<String> {
    "[a-zA-Z0-9_.-]{1,12}".boxed()
}

fn volume() -> BoxedStrategy<String> {
    prop_oneof![
        (100u32..1000, 0u32..10).prop_map(|(v, n)| format!("local:{v}/vm-{v}-disk-{n}.qcow2")),
        (100u32..1000, 0u32..10).prop_map(|(v, n)| format!("local-lvm:vm-{v}-disk-{n}")),
        "[a-z]{1,5}[0-9]:iso/[a-z]{1,8}\\.iso".prop_map(|s| s),
    ]
    .boxed()
}

/// A valid value for a named format.
fn named_value(f: NamedFormat) -> Option<BoxedStrategy<String>> {
    use NamedFormat::*;
    Some(match f {
        PveVolumeId => volume(),
        PveVolumeIdOrQmPath => prop_oneof![
            volume(),
            Just("none".to_string()),
            Just("cdrom".to_string()),
            Just("/dev/sdb".to_string()),
            (1u32..100).prop_map(|n| format!("local-lvm:{n}")),
        ]
        .boxed(),
        PveVolumeIdOrAbsolutePath => {
            prop_oneof![volume(), Just("/srv/images/a.qcow2".to_string())].boxed()
        }
        MacAddr => any::<[u8; 6]>()
            .prop_map(|mut b| {
                b[0] &= 0xfe;
                hemiron_pve::mac::MacAddr(b).to_string()
            })
            .boxed(),
        PveBridgeId => "vmbr[0-9]{1,2}".boxed(),
        DiskSize => prop_oneof![
            any::<u32>().prop_map(|b| format_size(u64::from(b))),
            (1u64..4096).prop_map(|g| format_size(g << 30))
        ]
        .boxed(),
        Urlencoded => "[-%a-zA-Z0-9_.!~*'()]{1,20}".boxed(),
        PveConfigid => "[a-z][a-z0-9_-]{1,10}".boxed(),
        Ipv4 => any::<[u8; 4]>()
            .prop_map(|b| std::net::Ipv4Addr::from(b).to_string())
            .boxed(),
        Ipv6 => any::<[u16; 8]>()
            .prop_map(|b| std::net::Ipv6Addr::from(b).to_string())
            .boxed(),
        PveIpv4Config => prop_oneof![
            Just("dhcp".to_string()),
            (any::<[u8; 4]>(), 8u8..=32)
                .prop_map(|(b, p)| format!("{}/{p}", std::net::Ipv4Addr::from(b))),
        ]
        .boxed(),
        PveIpv6Config => prop_oneof![
            Just("auto".to_string()),
            Just("dhcp".to_string()),
            (any::<[u16; 8]>(), 8u8..=128)
                .prop_map(|(b, p)| format!("{}/{p}", std::net::Ipv6Addr::from(b))),
        ]
        .boxed(),
        PvePhysBits => prop_oneof![
            Just("host".to_string()),
            (8u8..=64).prop_map(|n| n.to_string())
        ]
        .boxed(),
        _ => return None,
    })
}

fn key_value(key: &ParamSpec) -> Option<BoxedStrategy<String>> {
    // Keys whose validity depends on more than their own spec.
    match key.name {
        "cputype" => {
            return Some(
                prop_oneof![
                    proptest::sample::select(qm::CPU_MODELS).prop_map(str::to_string),
                    proptest::sample::select(qm::BUILTIN_CPU_MODELS).prop_map(str::to_string),
                    "custom-[a-z]{1,6}",
                ]
                .boxed(),
            )
        }
        "flags" => {
            return Some(
                proptest::collection::vec(
                    (any::<bool>(), proptest::sample::select(qm::VM_CPU_FLAGS)),
                    1..4,
                )
                .prop_map(|fs| {
                    fs.iter()
                        .map(|(on, f)| format!("{}{f}", if *on { '+' } else { '-' }))
                        .collect::<Vec<_>>()
                        .join(";")
                })
                .boxed(),
            )
        }
        "reported-model" => return None,
        "vendor-id" | "device-id" | "sub-vendor-id" | "sub-device-id" => {
            return Some("0x[0-9a-f]{4}".boxed())
        }
        "wwn" => return Some("0x[0-9a-fA-F]{16}".boxed()),
        "order" => {
            return Some(
                proptest::collection::vec(
                    prop_oneof!["scsi[0-9]", "net[0-9]", "ide[0-3]", "virtio1[0-5]"],
                    1..4,
                )
                .prop_map(|v| v.join(";"))
                .boxed(),
            )
        }
        _ => {}
    }
    if let Some(values) = key.enum_values {
        return Some(
            proptest::sample::select(values)
                .prop_map(str::to_string)
                .boxed(),
        );
    }
    match key.ty {
        ParamType::Boolean => {
            return Some(prop_oneof![Just("1".to_string()), Just("0".to_string())].boxed())
        }
        ParamType::Integer => {
            let lo = key.minimum.map_or(0, |m| m as i64);
            let hi = key.maximum.map_or(lo + 100_000, |m| m as i64);
            return Some((lo..=hi).prop_map(|n| n.to_string()).boxed());
        }
        ParamType::Number => {
            let lo = key.minimum.unwrap_or(0.0);
            let hi = key.maximum.unwrap_or(lo + 10_000.0);
            return Some((lo..=hi).prop_map(|n| n.to_string()).boxed());
        }
        ParamType::String | ParamType::Array => {}
    }
    match key.format {
        Some(Format::Named(f)) => return named_value(f),
        Some(_) => return None,
        None => {}
    }
    if let Some(pattern) = key.pattern {
        // Only plain spaces for `\s`: other whitespace is either trimmed from
        // config lines or refused there as a line feed.
        let re = proptest::string::string_regex(&pattern.replace(r"\s", " ")).ok()?;
        return Some(
            re.prop_filter("printable value", |v| {
                !v.is_empty() && !v.contains([',', '\n', '\r'])
            })
            .boxed(),
        );
    }
    Some(safe_text())
}

/// A valid property map for `fmt`: required keys always, others sometimes.
fn map_strategy(fmt: &'static PropertyFormat) -> BoxedStrategy<PropertyMap> {
    let mut entries: Vec<BoxedStrategy<Option<(String, String)>>> = Vec::new();
    for key in fmt.all_keys() {
        let Some(values) = key_value(key) else {
            continue;
        };
        let name = key.name.to_string();
        let default_key = key.default_key;
        let max_len = key.max_length;
        let values = values
            .prop_filter("bare default-key values cannot contain '='", move |v| {
                !default_key || (!v.contains('=') && !v.trim().is_empty())
            })
            // config lines are trimmed, so edge whitespace cannot survive a file
            .prop_filter("no edge whitespace", |v| v.trim() == v && !v.is_empty())
            .prop_filter("maxLength", move |v| {
                max_len.is_none_or(|m| v.chars().count() <= m)
            })
            .boxed();
        // cputype is optional in the schema but required by the validator
        let required = !key.optional || key.name == "cputype";
        if required {
            entries.push(values.prop_map(move |v| Some((name.clone(), v))).boxed());
        } else {
            entries.push(
                proptest::option::of(values)
                    .prop_map(move |v| v.map(|v| (name.clone(), v)))
                    .boxed(),
            );
        }
    }
    entries
        .prop_map(move |pairs| {
            let mut map: PropertyMap = pairs.into_iter().flatten().collect();
            // drop keys whose `requires` is missing
            let missing: Vec<String> = map
                .keys()
                .filter(|k| {
                    fmt.key(k)
                        .and_then(|s| s.requires)
                        .is_some_and(|r| !map.contains_key(r))
                })
                .cloned()
                .collect();
            for k in missing {
                map.remove(&k);
            }
            map
        })
        .boxed()
}

fn format_and_map() -> impl Strategy<Value = (&'static str, &'static PropertyFormat, PropertyMap)> {
    let formats = vm_formats();
    (0..formats.len()).prop_flat_map(move |i| {
        let (name, fmt) = formats[i];
        map_strategy(fmt).prop_map(move |m| (name, fmt, m))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn property_strings_round_trip((name, fmt, map) in format_and_map()) {
        let text = print_property_string(fmt, &map)
            .map_err(|e| TestCaseError::fail(format!("{name}: print {map:?}: {e}")))?;
        let back = parse_property_string(fmt, &text)
            .map_err(|e| TestCaseError::fail(format!("{name}: parse {text:?}: {e}")))?;
        prop_assert_eq!(back, map, "{}: {}", name, text);
    }

    #[test]
    fn property_string_parse_never_panics(i in 0usize..64, data in ".{0,80}") {
        let formats = vm_formats();
        let (_, fmt) = formats[i % formats.len()];
        let _ = parse_property_string(fmt, &data);
    }

    #[test]
    fn property_string_parse_never_panics_on_near_misses(
        (_, fmt, map) in format_and_map(),
        junk in "[=,a-z0-9 \n]{0,12}",
        pos in any::<prop::sample::Index>(),
    ) {
        let text = print_property_string(fmt, &map).unwrap_or_default();
        let cut = pos.index(text.len() + 1);
        let cut = (0..=cut).rev().find(|c| text.is_char_boundary(*c)).unwrap_or(0);
        let mangled = format!("{}{junk}{}", &text[..cut], &text[cut..]);
        let _ = parse_property_string(fmt, &mangled);
    }

    #[test]
    fn typed_views_round_trip((name, fmt, map) in format_and_map()) {
        let Ok(text) = print_property_string(fmt, &map) else { return Ok(()) };
        macro_rules! check {
            ($ty:ty) => {{
                let v = <$ty>::parse(&text).map_err(|e| TestCaseError::fail(format!("{name}: {text}: {e}")))?;
                let again = <$ty>::parse(&v.to_string())
                    .map_err(|e| TestCaseError::fail(format!("{name}: {v}: {e}")))?;
                prop_assert_eq!(again, v);
            }};
        }
        match name {
            "net[n]" => check!(NetDevice),
            "memory" => check!(Memory),
            "boot" => check!(Boot),
            "cpu" => check!(Cpu),
            "smbios1" => check!(Smbios1),
            "agent" => check!(Agent),
            "vga" => check!(Vga),
            "ipconfig[n]" => check!(IpConfig),
            "machine" | "runningmachine" => check!(Machine),
            "rng0" => check!(Rng),
            "watchdog" => check!(Watchdog),
            "ide[n]" | "sata[n]" | "scsi[n]" | "virtio[n]" | "efidisk0" | "tpmstate0" => {
                let key: DriveKey = name.replace("[n]", "0").parse().map_err(|e| TestCaseError::fail(format!("{e}")))?;
                let with_alloc = fmt.key("import-from").is_some();
                // parse_drive's extra rules reject some schema-valid strings
                if let Ok(d) = Drive::parse(key, &text, with_alloc) {
                    let again = Drive::parse(key, &d.to_string(), with_alloc)
                        .map_err(|e| TestCaseError::fail(format!("{name}: {d}: {e}")))?;
                    prop_assert_eq!(again, d);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn startup_round_trips(order in proptest::option::of(0u64..1000), up in proptest::option::of(0u64..1000), down in proptest::option::of(0u64..1000)) {
        let s = Startup { order, up, down };
        let text = s.to_string();
        if text.is_empty() {
            prop_assert!(Startup::parse(&text).is_err());
        } else {
            prop_assert_eq!(Startup::parse(&text).ok(), Some(s));
        }
    }

    #[test]
    fn upid_round_trips(
        node in "[a-zA-Z0-9]([a-zA-Z0-9-]{0,10}[a-zA-Z0-9])?",
        pid in any::<u32>(),
        pstart in 0u64..0x10_0000_0000,
        starttime in 0i64..=0xFFFF_FFFF,
        task_type in "[a-z]{1,10}",
        id in "[a-zA-Z0-9@!._-]{0,8}",
        user in "[a-z]{1,6}@(pam|pve)(![a-z]{1,5})?",
    ) {
        let upid = Upid { node, pid, pstart, starttime, task_type, id, user };
        let text = upid.to_string();
        prop_assert_eq!(text.split(':').count(), 9);
        prop_assert_eq!(text.parse::<Upid>().ok(), Some(upid));
    }

    #[test]
    fn upid_parse_never_panics(s in ".{0,100}") {
        let _ = s.parse::<Upid>();
        let _ = hemiron_pve::upid::exit_status_from_last_line(&s);
    }

    #[test]
    fn validation_never_panics(
        ep in 0usize..64,
        pairs in proptest::collection::vec((any::<prop::sample::Index>(), ".{0,40}", any::<bool>()), 0..12),
    ) {
        let ep = &ENDPOINTS[ep % ENDPOINTS.len()];
        let names: Vec<&str> = ep.param_specs().map(|p| p.name).collect();
        let input: Vec<(String, String)> = pairs
            .into_iter()
            .map(|(i, v, known)| {
                let key = if known && !names.is_empty() {
                    names[i.index(names.len())].replace("[n]", &i.index(40).to_string())
                } else {
                    v.chars().take(8).collect()
                };
                (key, v)
            })
            .collect();
        let _ = ep.validate(&input);
    }

    #[test]
    fn config_files_round_trip(conf in vm_config_strategy()) {
        let text = config::print(&conf);
        let parsed = config::parse(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(config::print(&parsed), text);
    }

    #[test]
    fn config_parse_never_panics(raw in ".{0,400}") {
        let _ = config::parse(&raw);
        let _ = config::parse_lenient(&raw);
    }

    #[test]
    fn config_parse_never_panics_on_config_like_text(lines in proptest::collection::vec(config_line(), 0..30)) {
        let raw = lines.join("\n");
        let _ = config::parse(&raw);
        let (conf, _) = config::parse_lenient(&raw);
        let _ = config::write(&conf);
        let _ = config::digest(raw.as_bytes());
    }
}

fn config_line() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("[PENDING]".to_string()),
        Just("[special:cloudinit]".to_string()),
        "\\[[a-z0-9:_ -]{0,8}\\]",
        "#.{0,20}",
        Just("delete: !net0,tags".to_string()),
        Just("snapstate: prepare".to_string()),
        "(memory|cores|name|net0|scsi0|onboot|description|args|cdrom|ide2|unused0|parent|foo): .{0,30}",
        ".{0,30}",
    ]
}

/// Values that pass qemu-server's check_type for a few keys.
fn prop_entry() -> impl Strategy<Value = (String, String)> {
    prop_oneof![
        (16u32..65536).prop_map(|m| ("memory".to_string(), m.to_string())),
        (1u32..64).prop_map(|c| ("cores".to_string(), c.to_string())),
        "[a-z][a-z0-9-]{0,10}[a-z0-9]".prop_map(|n| ("name".to_string(), n)),
        any::<bool>().prop_map(|b| ("onboot".to_string(), if b { "1" } else { "0" }.to_string())),
        (0u8..4, map_strategy(&hemiron_pve::spec::device::NET_FORMAT)).prop_filter_map(
            "printable",
            |(i, m)| {
                print_property_string(&hemiron_pve::spec::device::NET_FORMAT, &m)
                    .ok()
                    .map(|s| (format!("net{i}"), s))
            }
        ),
        (
            0u8..4,
            map_strategy(&hemiron_pve::spec::drive::SCSI_CONF_FORMAT)
        )
            .prop_filter_map("printable", |(i, m)| {
                print_property_string(&hemiron_pve::spec::drive::SCSI_CONF_FORMAT, &m)
                    .ok()
                    .map(|s| (format!("scsi{i}"), s))
            }),
        "-[a-z]{1,8}( [a-z0-9=,]{1,10})?".prop_map(|a| ("args".to_string(), a)),
        Just((
            "ide2".to_string(),
            "local-lvm:vm-100-cloudinit,media=cdrom".to_string()
        )),
    ]
}

fn description() -> impl Strategy<Value = Option<String>> {
    // No '%' (PVE does not escape it) and no trailing whitespace (PVE trims it).
    proptest::option::of("[^%]{1,40}".prop_map(|d| d.trim_end().to_string()))
}

fn section() -> impl Strategy<Value = Section> {
    (
        description(),
        proptest::collection::btree_map(Just(()), Just(()), 0..1),
        proptest::collection::vec(prop_entry(), 0..8),
    )
        .prop_map(|(description, _, entries)| Section {
            description,
            props: entries.into_iter().collect(),
        })
}

fn vm_config_strategy() -> impl Strategy<Value = VmConfig> {
    (
        section(),
        proptest::option::of((
            section(),
            proptest::collection::btree_map("[a-z][a-z0-9_-]{1,8}", any::<bool>(), 0..4),
        )),
        proptest::collection::btree_map("snap[a-z0-9_-]{1,6}", section(), 0..3),
        proptest::option::of(section()),
    )
        .prop_map(|(main, pending, snapshots, cloudinit)| {
            let mut special = BTreeMap::new();
            if let Some(ci) = cloudinit {
                special.insert("cloudinit".to_string(), ci);
            }
            VmConfig {
                main,
                pending: pending.map(|(section, delete)| PendingSection { section, delete }),
                snapshots,
                special,
            }
        })
}
