//! Kernel modules: which ones the guest ships, what each depends on, and the module index
//! files (`modules.dep`, `modules.alias`) that let the guest's busybox `modprobe` load them.
//!
//! Debian's kernel package ships no `modules.dep` (depmod runs at install time), so dependencies
//! and aliases come from each `.ko`'s `.modinfo` ELF section (`depends=`, `alias=`), and
//! `modules.builtin` tells which drivers need no module at all. The guest loads device drivers
//! (modules with `pci:`/`virtio:` aliases) only for devices that are present, as udev would:
//! under TCG every module costs boot time.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use object::{Object, ObjectSection};
use serde::{Deserialize, Serialize};

use crate::error::BuildError;

/// Modules the guest loads at boot, by module name (`-` spelled `_`). Their dependencies are
/// added automatically. A name that is neither in the package nor in `modules.builtin` fails
/// the build, so a kernel that drops a driver is noticed at build time, not at boot.
pub(crate) const GUEST_MODULES: &[&str] = &[
    // virtio transport and devices (Proxmox's defaults for disks, NICs, balloon, rng, console)
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "virtio_net",
    "virtio_balloon",
    "virtio_rng",
    "virtio_console",
    // SCSI disks and CD-ROMs; QEMU's `-device lsi` is an LSI 53c895a, driven by sym53c8xx
    "sym53c8xx",
    "sd_mod",
    "sr_mod",
    // IDE and SATA controllers (i440fx's PIIX IDE carries the cloud-init CD-ROM on ide2)
    "ata_piix",
    "ahci",
    // other NIC models Proxmox offers
    "e1000",
    "e1000e",
    "8139cp",
    "8139too",
    "vmxnet3",
    "pcnet32",
    // ACPI power button -> /dev/input/event*, which busybox acpid watches
    "button",
    "evdev",
    // the FAT boot partition (mounted by label for persistent state); Debian's FAT default
    // iocharset is "ascii", so mounting fails without nls_ascii
    "vfat",
    "nls_ascii",
    "nls_cp437",
    "nls_iso8859_1",
    "nls_utf8",
    // cloud-init NoCloud ISO
    "isofs",
    // data disks
    "ext4",
    // ext4 and jbd2 ask the crypto API for "crc32c" when metadata_csum is on (mke2fs's default);
    // that request would need modprobe plus an alias index, so load the generic driver up front.
    "crc32c_generic",
];

/// Shipped modules the guest does not load at boot: the kernel asks `/sbin/modprobe` for them
/// by alias when first needed (`fs-vfat` at mount, `nls_ascii` from vfat, `crypto-crc32c`
/// from ext4). Loading them up front cost about 0.25 s of every TCG boot.
pub(crate) const ON_DEMAND_MODULES: &[&str] = &[
    "vfat",
    "nls_ascii",
    "nls_cp437",
    "nls_iso8859_1",
    "nls_utf8",
    "isofs",
    "ext4",
    "crc32c_generic",
];

/// Parameters for some modules, by module name (written to `/etc/modprobe.d`).
pub(crate) const MODULE_PARAMS: &[(&str, &str)] = &[
    // After its SCSI bus reset the LSI driver waits `settle` seconds (default 3) for real
    // devices to recover; QEMU's emulated disks need no time, and 3 s is most of a TCG boot.
    ("sym53c8xx", "settle=0"),
];

/// What the build knows about one module of the kernel package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ModuleInfo {
    /// Path inside the package, without the leading `./`.
    pub path: String,
    /// Names of the modules this one needs loaded first.
    pub depends: Vec<String>,
    /// Device and subsystem aliases (`pci:v00008086d0000100Esv*…`, `fs-vfat`), glob patterns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Shipped compressed (`.ko.xz` and friends): busybox insmod can't load those.
    #[serde(default)]
    pub compressed: bool,
}

/// Every module of one kernel package plus its list of built-in drivers: enough to resolve any
/// load order without reading the package again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ModuleIndex {
    /// Module name -> info.
    pub modules: BTreeMap<String, ModuleInfo>,
    /// Names of drivers compiled into the kernel.
    pub builtin: BTreeSet<String>,
}

/// Why a module's `.modinfo` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ModinfoError {
    #[error("not a readable ELF object")]
    Elf(#[source] object::read::Error),
    #[error("no .modinfo section")]
    NoModinfo,
}

/// The module name the kernel uses: file names may spell `_` as `-` (`virtio-rng.ko`).
pub(crate) fn normalize_name(name: &str) -> String {
    name.replace('-', "_")
}

/// The module name of a path like `kernel/drivers/char/hw_random/virtio-rng.ko[.xz]`, and
/// whether the file is compressed; `None` for anything that isn't a module.
pub(crate) fn module_file_name(path: &str) -> Option<(String, bool)> {
    let file = path.rsplit('/').next()?;
    if let Some(stem) = file.strip_suffix(".ko") {
        return Some((normalize_name(stem), false));
    }
    let (stem, _) = file.split_once(".ko.")?;
    Some((normalize_name(stem), true))
}

/// The `key=value` strings of a module's `.modinfo` section, in order (keys such as `alias`
/// repeat).
pub(crate) fn modinfo_fields(elf: &[u8]) -> Result<Vec<(String, String)>, ModinfoError> {
    let file = object::File::parse(elf).map_err(ModinfoError::Elf)?;
    let section = file
        .section_by_name(".modinfo")
        .ok_or(ModinfoError::NoModinfo)?;
    let data = section.data().map_err(ModinfoError::Elf)?;
    Ok(parse_modinfo_strings(data))
}

/// Splits the NUL-separated `key=value` strings of a `.modinfo` section; entries are padded
/// with runs of NULs, which are skipped.
fn parse_modinfo_strings(data: &[u8]) -> Vec<(String, String)> {
    data.split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .filter_map(|s| {
            let s = String::from_utf8_lossy(s);
            let (k, v) = s.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// Name, dependencies and aliases of the uncompressed module at `path`. The name comes from
/// `name=`, else (kernels before 5.x lack it) from the file name.
pub(crate) fn module_info(path: &str, elf: &[u8]) -> Result<(String, ModuleInfo), ModinfoError> {
    let fields = modinfo_fields(elf)?;
    let file_name = module_file_name(path).map(|(n, _)| n).unwrap_or_default();
    let name = fields
        .iter()
        .find(|(k, _)| k == "name")
        .map(|(_, v)| normalize_name(v))
        .unwrap_or(file_name);
    let depends = fields
        .iter()
        .filter(|(k, _)| k == "depends")
        .flat_map(|(_, v)| v.split(','))
        .filter(|d| !d.is_empty())
        .map(normalize_name)
        .collect();
    let aliases = fields
        .iter()
        .filter(|(k, _)| k == "alias")
        .map(|(_, v)| v.clone())
        .collect();
    Ok((
        name,
        ModuleInfo {
            path: path.to_string(),
            depends,
            aliases,
            compressed: false,
        },
    ))
}

/// Names of the drivers listed in `modules.builtin` (one path per line).
pub(crate) fn parse_builtin(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| module_file_name(line.trim()))
        .map(|(name, _)| name)
        .collect()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mark {
    Visiting,
    Done,
}

/// The modules to load for `roots`, dependencies first; built-in drivers are left out.
/// Deterministic: a depth-first walk in the order of `roots` and of each `depends=` list.
pub(crate) fn load_order(roots: &[&str], index: &ModuleIndex) -> Result<Vec<String>, BuildError> {
    let mut marks: HashMap<String, Mark> = HashMap::new();
    let mut order = Vec::new();
    for root in roots {
        visit(&normalize_name(root), index, &mut marks, &mut order)?;
    }
    Ok(order)
}

fn visit(
    name: &str,
    index: &ModuleIndex,
    marks: &mut HashMap<String, Mark>,
    order: &mut Vec<String>,
) -> Result<(), BuildError> {
    match marks.get(name) {
        Some(Mark::Done) => return Ok(()),
        Some(Mark::Visiting) => {
            return Err(BuildError::ModuleDependencyCycle {
                module: name.to_string(),
            })
        }
        None => {}
    }
    let Some(info) = index.modules.get(name) else {
        if index.builtin.contains(name) {
            marks.insert(name.to_string(), Mark::Done);
            return Ok(());
        }
        return Err(BuildError::ModuleNotFound {
            module: name.to_string(),
        });
    };
    if info.compressed {
        return Err(BuildError::CompressedModule {
            module: name.to_string(),
            path: info.path.clone(),
        });
    }
    marks.insert(name.to_string(), Mark::Visiting);
    for dep in &info.depends {
        visit(dep, index, marks, order)?;
    }
    marks.insert(name.to_string(), Mark::Done);
    order.push(name.to_string());
    Ok(())
}

/// Whether `info` drives devices that bus enumeration finds (PCI, virtio): the guest loads
/// such a module only when a matching device is present.
fn is_device_driver(info: &ModuleInfo) -> bool {
    info.aliases
        .iter()
        .any(|a| a.starts_with("pci:") || a.starts_with("virtio:"))
}

/// The modules the guest loads whatever its hardware: the roots that are not device drivers
/// (file systems, SCSI disk and CD-ROM drivers, the power button…), in `roots` order.
pub(crate) fn always_loaded(roots: &[&str], index: &ModuleIndex) -> Vec<String> {
    roots
        .iter()
        .map(|r| normalize_name(r))
        .filter(|name| !ON_DEMAND_MODULES.contains(&name.as_str()))
        .filter(|name| {
            index
                .modules
                .get(name)
                .is_some_and(|info| !is_device_driver(info))
        })
        .collect()
}

/// `modules.dep` for the shipped modules, which the guest keeps flat as
/// `/lib/modules/<release>/<name>.ko`: each module, then all its dependencies, in the order
/// kmod's depmod writes them (the one to load first last).
pub(crate) fn modules_dep(order: &[String], index: &ModuleIndex) -> String {
    let mut out = String::new();
    for (i, name) in order.iter().enumerate() {
        // `order` is topological, so a module's dependencies all come before it.
        let mut closure: BTreeSet<&str> = BTreeSet::new();
        let mut stack = vec![name.as_str()];
        while let Some(m) = stack.pop() {
            for dep in index
                .modules
                .get(m)
                .map(|i| i.depends.as_slice())
                .unwrap_or(&[])
            {
                if closure.insert(dep) {
                    stack.push(dep);
                }
            }
        }
        out.push_str(&format!("{name}.ko:"));
        for dep in order[..i]
            .iter()
            .rev()
            .filter(|d| closure.contains(d.as_str()))
        {
            out.push_str(&format!(" {dep}.ko"));
        }
        out.push('\n');
    }
    out
}

/// `modules.alias` for the shipped modules: `alias <glob> <module>` lines.
pub(crate) fn modules_alias(order: &[String], index: &ModuleIndex) -> String {
    let mut out = String::new();
    for name in order {
        for alias in index
            .modules
            .get(name)
            .map(|i| i.aliases.as_slice())
            .unwrap_or(&[])
        {
            out.push_str(&format!("alias {alias} {name}\n"));
        }
    }
    out
}

/// `/etc/modprobe.d` lines for [`MODULE_PARAMS`].
pub(crate) fn modprobe_options() -> String {
    MODULE_PARAMS
        .iter()
        .map(|(module, params)| format!("options {module} {params}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal little-endian ELF64 relocatable object with a `.modinfo` section holding
    /// `modinfo`, in the layout `ld -r` produces for kernel modules.
    fn elf_with_modinfo(modinfo: &[u8]) -> Vec<u8> {
        let shstrtab = b"\0.modinfo\0.shstrtab\0";
        let modinfo_off = 64usize;
        let shstrtab_off = modinfo_off + modinfo.len();
        let shoff = (shstrtab_off + shstrtab.len() + 7) & !7;
        let mut elf = vec![0u8; shoff + 3 * 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2; // 64-bit
        elf[5] = 1; // little endian
        elf[6] = 1; // version
        elf[16..18].copy_from_slice(&1u16.to_le_bytes()); // ET_REL
        elf[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
        elf[20..24].copy_from_slice(&1u32.to_le_bytes());
        elf[40..48].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[52..54].copy_from_slice(&64u16.to_le_bytes()); // ehsize
        elf[58..60].copy_from_slice(&64u16.to_le_bytes()); // shentsize
        elf[60..62].copy_from_slice(&3u16.to_le_bytes()); // shnum
        elf[62..64].copy_from_slice(&2u16.to_le_bytes()); // shstrndx
        elf[modinfo_off..shstrtab_off].copy_from_slice(modinfo);
        elf[shstrtab_off..shstrtab_off + shstrtab.len()].copy_from_slice(shstrtab);
        let mut section = |i: usize, name: u32, ty: u32, off: usize, size: usize| {
            let h = shoff + i * 64;
            elf[h..h + 4].copy_from_slice(&name.to_le_bytes());
            elf[h + 4..h + 8].copy_from_slice(&ty.to_le_bytes());
            elf[h + 24..h + 32].copy_from_slice(&(off as u64).to_le_bytes());
            elf[h + 32..h + 40].copy_from_slice(&(size as u64).to_le_bytes());
            elf[h + 48..h + 56].copy_from_slice(&1u64.to_le_bytes());
        };
        section(1, 1, 1, modinfo_off, modinfo.len()); // .modinfo, PROGBITS
        section(2, 10, 3, shstrtab_off, shstrtab.len()); // .shstrtab, STRTAB
                                                         // A signed module carries its signature after the ELF data; parsing must not mind.
        elf.extend_from_slice(b"signature bytes~Module signature appended~\n");
        elf
    }

    #[test]
    fn parses_name_and_depends_from_elf() {
        let elf = elf_with_modinfo(
            b"alias=virtio:d00000001v*\0depends=virtio_ring,virtio,net_failover\0\0\0retpoline=Y\0intree=Y\0name=virtio_net\0vermagic=6.1.0 SMP\0",
        );
        let (name, info) = module_info("kernel/drivers/net/virtio_net.ko", &elf).unwrap();
        assert_eq!(name, "virtio_net");
        assert_eq!(info.depends, ["virtio_ring", "virtio", "net_failover"]);
        assert_eq!(info.aliases, ["virtio:d00000001v*"]);
        assert_eq!(info.path, "kernel/drivers/net/virtio_net.ko");
    }

    #[test]
    fn empty_depends_and_missing_name_use_file_name() {
        let elf = elf_with_modinfo(b"depends=\0license=GPL\0");
        let (name, info) =
            module_info("kernel/drivers/char/hw_random/virtio-rng.ko", &elf).unwrap();
        assert_eq!(name, "virtio_rng");
        assert!(info.depends.is_empty());
    }

    #[test]
    fn rejects_non_elf_and_missing_section() {
        assert!(matches!(
            modinfo_fields(b"not an elf at all"),
            Err(ModinfoError::Elf(_))
        ));
        let mut elf = elf_with_modinfo(b"name=x\0");
        // Rename the section so it's no longer found.
        let pos = elf.windows(8).position(|w| w == b".modinfo").unwrap();
        elf[pos + 1] = b'X';
        assert!(matches!(modinfo_fields(&elf), Err(ModinfoError::NoModinfo)));
    }

    #[test]
    fn module_file_names() {
        assert_eq!(
            module_file_name("./lib/modules/6.1/kernel/fs/fat/vfat.ko"),
            Some(("vfat".into(), false))
        );
        assert_eq!(
            module_file_name("kernel/drivers/char/hw_random/virtio-rng.ko.xz"),
            Some(("virtio_rng".into(), true))
        );
        assert_eq!(module_file_name("modules.builtin"), None);
        assert_eq!(module_file_name("kernel/foo.kobj"), None);
    }

    #[test]
    fn builtin_list() {
        let b = parse_builtin("kernel/fs/nls/nls_base.ko\nkernel/net/packet/af_packet.ko\n\n");
        assert!(b.contains("nls_base") && b.contains("af_packet"));
        assert_eq!(b.len(), 2);
    }

    fn index(mods: &[(&str, &[&str])], builtin: &[&str]) -> ModuleIndex {
        ModuleIndex {
            modules: mods
                .iter()
                .map(|(n, deps)| {
                    (
                        n.to_string(),
                        ModuleInfo {
                            path: format!("kernel/{n}.ko"),
                            depends: deps.iter().map(|d| d.to_string()).collect(),
                            aliases: Vec::new(),
                            compressed: false,
                        },
                    )
                })
                .collect(),
            builtin: builtin.iter().map(|b| b.to_string()).collect(),
        }
    }

    #[test]
    fn load_order_puts_dependencies_first_once() {
        let idx = index(
            &[
                ("virtio_ring", &[]),
                ("virtio", &["virtio_ring"]),
                ("virtio_pci_modern_dev", &[]),
                (
                    "virtio_pci",
                    &["virtio_ring", "virtio_pci_modern_dev", "virtio"],
                ),
                ("net_failover", &["failover"]),
                ("failover", &[]),
                ("virtio_net", &["virtio_ring", "virtio", "net_failover"]),
            ],
            &["af_packet"],
        );
        let order = load_order(&["virtio-pci", "virtio_net", "af_packet"], &idx).unwrap();
        assert_eq!(
            order,
            [
                "virtio_ring",
                "virtio_pci_modern_dev",
                "virtio",
                "virtio_pci",
                "failover",
                "net_failover",
                "virtio_net"
            ]
        );
        // Every module comes after all of its dependencies.
        for (i, m) in order.iter().enumerate() {
            for dep in &idx.modules[m].depends {
                assert!(order[..i].contains(dep), "{dep} must precede {m}");
            }
        }
    }

    #[test]
    fn load_order_errors() {
        let idx = index(&[("a", &["b"]), ("b", &["a"]), ("c", &["gone"])], &[]);
        assert!(matches!(
            load_order(&["a"], &idx),
            Err(BuildError::ModuleDependencyCycle { .. })
        ));
        assert!(matches!(
            load_order(&["c"], &idx),
            Err(BuildError::ModuleNotFound { module }) if module == "gone"
        ));
        assert!(matches!(
            load_order(&["nope"], &idx),
            Err(BuildError::ModuleNotFound { .. })
        ));
    }

    #[test]
    fn modules_dep_lists_transitive_dependencies_load_first_last() {
        let idx = index(
            &[
                ("virtio_ring", &[]),
                ("virtio", &["virtio_ring"]),
                ("failover", &[]),
                ("net_failover", &["failover"]),
                ("virtio_net", &["virtio_ring", "virtio", "net_failover"]),
            ],
            &[],
        );
        let order = load_order(&["virtio_net"], &idx).unwrap();
        assert_eq!(
            modules_dep(&order, &idx),
            "virtio_ring.ko:\n\
             virtio.ko: virtio_ring.ko\n\
             failover.ko:\n\
             net_failover.ko: failover.ko\n\
             virtio_net.ko: net_failover.ko failover.ko virtio.ko virtio_ring.ko\n"
        );
    }

    #[test]
    fn device_drivers_are_left_to_coldplug() {
        let mut idx = index(
            &[
                ("e1000", &[]),
                ("virtio_blk", &[]),
                ("vfat", &[]),
                ("sd_mod", &[]),
            ],
            &["af_packet"],
        );
        let alias = |idx: &mut ModuleIndex, m: &str, a: &str| {
            idx.modules.get_mut(m).unwrap().aliases.push(a.to_string());
        };
        alias(&mut idx, "e1000", "pci:v00008086d0000100Esv*sd*bc*sc*i*");
        alias(&mut idx, "virtio_blk", "virtio:d00000002v*");
        alias(&mut idx, "vfat", "fs-vfat");
        alias(&mut idx, "sd_mod", "scsi:t-0x00*");
        assert_eq!(
            always_loaded(
                &["e1000", "vfat", "virtio_blk", "sd_mod", "af_packet"],
                &idx
            ),
            ["sd_mod"],
            "device drivers wait for their device, file systems for their first mount"
        );
        let order = vec!["e1000".to_string(), "vfat".to_string()];
        assert_eq!(
            modules_alias(&order, &idx),
            "alias pci:v00008086d0000100Esv*sd*bc*sc*i* e1000\nalias fs-vfat vfat\n"
        );
    }

    #[test]
    fn modprobe_options_cover_params() {
        assert!(modprobe_options().contains("options sym53c8xx settle=0\n"));
    }
}
