//! Builds the tiny guest disk image that Hemiron's VM tests boot: Debian's kernel plus a
//! busybox userland in an initramfs, on a FAT partition booted by syslinux, as qcow2.
//!
//! Everything comes from Debian packages: the kernel behind `linux-image-amd64`,
//! `busybox-static`, `dropbear-bin` and the libraries it links (fetched with `apt-get
//! download` into a cache), and the build host's `syslinux`, `syslinux-common`, `mtools`,
//! `dosfstools` and `qemu-utils`. The build needs no root. At boot the guest loads its
//! drivers, applies a cloud-init NoCloud seed if one is attached (hostname, user, SSH keys,
//! network), takes DHCP on every other NIC, serves its hostname over HTTP on port 80, powers
//! off on the ACPI power button, prints `HEMIRON-GUEST-READY hostname=… ip=… uptime=…` on
//! the serial console, and runs an SSH server on port 22, set up beside the boot (unpacked
//! from `sshd.gz` on the boot partition, with host keys made per VM and kept there).
//!
//! Steps, each in its own module: `apt` resolves and downloads packages, `debs` extracts
//! what is needed (cached per package version), `modules` resolves module dependencies and
//! aliases, `sshd` gathers dropbear with the shared libraries `sharedlibs` finds for it (from
//! the ELF facts `elf` reads), `rootfs` lays out the guest's files, `initramfs` serializes
//! them, `disk` makes the bootable image, `manifest` describes the result.

#![forbid(unsafe_code)]

mod apt;
mod debs;
mod disk;
mod elf;
mod error;
mod host;
mod initramfs;
mod manifest;
mod modules;
mod rootfs;
mod sharedlibs;
mod sshd;

use std::path::{Path, PathBuf};
use std::time::Instant;

use tracing::info;

pub use disk::BOOT_LABEL;
pub use elf::ElfError;
pub use error::{BuildError, CommandError};
pub use manifest::Manifest;
pub use modules::ModinfoError;
pub use rootfs::{DEFAULT_HOSTNAME, TEST_HOOKS_MARKER};

/// The bootable disk image in the output directory.
pub const DISK_FILE: &str = "hemiron-guest.qcow2";
/// The kernel, also inside the disk image; for `-kernel` boots.
pub const KERNEL_FILE: &str = "vmlinuz";
/// The initramfs (the guest's root file system), also inside the disk image.
pub const INITRD_FILE: &str = "initrd.gz";
/// The SSH server and its libraries, in the initramfs format, also on the disk image's boot
/// partition, where the guest unpacks it from after booting.
pub const SSHD_FILE: &str = "sshd.gz";
/// The [`Manifest`], written last.
pub const MANIFEST_FILE: &str = "manifest.json";

/// What to build and where.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Receives the disk image, the kernel, the initramfs and the manifest.
    pub out_dir: PathBuf,
    /// Downloaded packages and extraction results, reused across builds
    /// (see [`default_cache_dir`]).
    pub cache_dir: PathBuf,
    /// Adds `/cgi-bin/run?<url-encoded command>`, which runs any shell command as root.
    /// For tests only.
    pub test_hooks: bool,
}

/// The result of a build.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// `out_dir/hemiron-guest.qcow2`: boots from any of Proxmox's disk controllers.
    pub disk: PathBuf,
    /// `out_dir/vmlinuz` and `out_dir/initrd.gz`, for direct `-kernel`/`-initrd` boots (which
    /// have no SSH server: the guest finds it on the disk's boot partition).
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// `out_dir/sshd.gz`, as on the boot partition.
    pub sshd: PathBuf,
    /// `out_dir/manifest.json`, holding [`BuiltImage::manifest`].
    pub manifest_path: PathBuf,
    /// The real kernel package, e.g. `linux-image-6.1.0-56-amd64`.
    pub kernel_package: String,
    /// That package's Debian version, e.g. `6.1.192-2`.
    pub kernel_version: String,
    /// `uname -r` in the guest, e.g. `6.1.0-56-amd64`.
    pub kernel_release: String,
    /// The `busybox-static` package version.
    pub busybox_version: String,
    /// The `dropbear-bin` package version.
    pub dropbear_version: String,
    /// Modules the image ships, dependencies first. Device drivers among them load only when
    /// their device is present.
    pub modules: Vec<String>,
    pub manifest: Manifest,
}

/// `$XDG_CACHE_HOME/hemiron`, else `~/.cache/hemiron`, else a directory under the system's
/// temporary directory.
pub fn default_cache_dir() -> PathBuf {
    let non_empty = |var| {
        std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(xdg) = non_empty("XDG_CACHE_HOME") {
        return xdg.join("hemiron");
    }
    if let Some(home) = non_empty("HOME") {
        return home.join(".cache").join("hemiron");
    }
    std::env::temp_dir().join("hemiron-cache")
}

/// Builds the guest image into `opts.out_dir`. Output files are replaced atomically, so a
/// failed build leaves any previous image intact and never a partial one.
pub fn build(opts: &BuildOptions) -> Result<BuiltImage, BuildError> {
    let started = Instant::now();
    let tools = host::HostTools::find()?;
    let cache = debs::Cache {
        tools: &tools,
        dir: &opts.cache_dir,
    };

    let kernel_name = apt::resolve_kernel_package(&tools)?;
    // One apt-cache run for everything known up front, including the libraries dropbear
    // needed last time (see the sshd module).
    let previous_ssh = sshd::cached_package_names(&opts.cache_dir);
    let mut asked = vec![
        kernel_name.as_str(),
        apt::BUSYBOX_PACKAGE,
        apt::DROPBEAR_PACKAGE,
    ];
    for name in &previous_ssh {
        if !asked.contains(&name.as_str()) {
            asked.push(name);
        }
    }
    let records = apt::show(&tools, &asked)?;
    let kernel_package = records.package(&kernel_name)?;
    let busybox_package = records.package(apt::BUSYBOX_PACKAGE)?;
    info!(
        kernel = %kernel_package.name,
        kernel_version = %kernel_package.version,
        busybox_version = %busybox_package.version,
        "building guest image"
    );
    let ssh = sshd::files(&cache, records, &asked)?;
    let dropbear_version = ssh
        .packages
        .first()
        .map(|p| p.version.clone())
        .unwrap_or_default();

    let kernel = cache.kernel(&kernel_package)?;
    let module_order = modules::load_order(modules::GUEST_MODULES, &kernel.index)?;
    cache.ensure_modules(&kernel_package, &kernel, &module_order)?;
    let busybox = cache.busybox(&busybox_package)?;

    let tree = rootfs::build_tree(rootfs::RootfsInputs {
        busybox: &read_cached(&busybox)?,
        applets: &rootfs::busybox_applets(&busybox)?,
        kernel_release: &kernel.release,
        modules: module_order
            .iter()
            .map(|name| Ok((name.clone(), read_cached(&kernel.module_path(name))?)))
            .collect::<Result<_, BuildError>>()?,
        always_loaded: modules::always_loaded(modules::GUEST_MODULES, &kernel.index),
        modules_dep: modules::modules_dep(&module_order, &kernel.index),
        modules_alias: modules::modules_alias(&module_order, &kernel.index),
        test_hooks: opts.test_hooks,
    })?;

    create_dir(&opts.out_dir)?;
    // Scratch space inside out_dir, so finished files are renamed (not copied) into place.
    let work = tempfile::Builder::new()
        .prefix(".build-")
        .tempdir_in(&opts.out_dir)
        .map_err(|source| BuildError::CreateDir {
            path: opts.out_dir.clone(),
            source,
        })?;
    let initrd = work.path().join(INITRD_FILE);
    write_initramfs(&tree, &initrd)?;
    let sshd = work.path().join(SSHD_FILE);
    write_initramfs(&ssh.tree(), &sshd)?;
    let vmlinuz = work.path().join(KERNEL_FILE);
    std::fs::copy(&kernel.vmlinuz, &vmlinuz).map_err(|source| BuildError::WriteOutput {
        path: vmlinuz.clone(),
        source,
    })?;

    let raw = disk::build_raw_disk(&tools, work.path(), &[&vmlinuz, &initrd, &sshd])?;
    let qcow2 = work.path().join(DISK_FILE);
    disk::convert_to_qcow2(&tools, &raw, &qcow2)?;

    let manifest = Manifest {
        kernel_package: kernel_package.name.clone(),
        kernel_version: kernel_package.version.clone(),
        kernel_release: kernel.release.clone(),
        busybox_version: busybox_package.version.clone(),
        dropbear_version: dropbear_version.clone(),
        ssh_packages: ssh
            .packages
            .iter()
            .map(|p| format!("{} {}", p.name, p.version))
            .collect(),
        test_hooks: opts.test_hooks,
        modules: module_order.clone(),
        disk_sha256: manifest::sha256_file(&qcow2)?,
        disk_bytes: file_len(&qcow2)?,
        initrd_bytes: file_len(&initrd)?,
        sshd_bytes: file_len(&sshd)?,
        kernel_bytes: file_len(&vmlinuz)?,
        built_at: manifest::rfc3339_now(),
        build_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    };
    let manifest_tmp = work.path().join(MANIFEST_FILE);
    manifest.write(&manifest_tmp)?;

    // The manifest goes last: whoever sees it may assume the files it describes are there.
    let out = |name: &str| opts.out_dir.join(name);
    for name in [
        KERNEL_FILE,
        INITRD_FILE,
        SSHD_FILE,
        DISK_FILE,
        MANIFEST_FILE,
    ] {
        publish(&work.path().join(name), &out(name))?;
    }
    info!(
        disk = %out(DISK_FILE).display(),
        disk_bytes = manifest.disk_bytes,
        initrd_bytes = manifest.initrd_bytes,
        modules = module_order.len(),
        millis = manifest.build_ms,
        "guest image built"
    );
    Ok(BuiltImage {
        disk: out(DISK_FILE),
        kernel: out(KERNEL_FILE),
        initrd: out(INITRD_FILE),
        sshd: out(SSHD_FILE),
        manifest_path: out(MANIFEST_FILE),
        kernel_package: kernel_package.name,
        kernel_version: kernel_package.version,
        kernel_release: kernel.release,
        busybox_version: busybox_package.version,
        dropbear_version,
        modules: module_order,
        manifest,
    })
}

fn write_initramfs(tree: &initramfs::Tree, path: &Path) -> Result<(), BuildError> {
    let err = |source| BuildError::WriteInitramfs {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::create(path).map_err(err)?;
    tree.write_initramfs(std::io::BufWriter::new(file))
        .map_err(err)
}

fn read_cached(path: &Path) -> Result<Vec<u8>, BuildError> {
    std::fs::read(path).map_err(|source| BuildError::ReadCache {
        path: path.to_path_buf(),
        source,
    })
}

fn create_dir(path: &Path) -> Result<(), BuildError> {
    std::fs::create_dir_all(path).map_err(|source| BuildError::CreateDir {
        path: path.to_path_buf(),
        source,
    })
}

fn file_len(path: &Path) -> Result<u64, BuildError> {
    std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|source| BuildError::WriteOutput {
            path: path.to_path_buf(),
            source,
        })
}

fn publish(from: &Path, to: &Path) -> Result<(), BuildError> {
    std::fs::rename(from, to).map_err(|source| BuildError::WriteOutput {
        path: to.to_path_buf(),
        source,
    })
}
