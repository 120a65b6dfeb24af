//! The build host: finding the Debian-packaged tools the build runs, and running them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tracing::debug;

use crate::error::{BuildError, CommandError};

/// Where syslinux-common ships the MBR boot code.
const MBR_BIN: &str = "/usr/lib/syslinux/mbr/mbr.bin";

/// Absolute paths of every host tool the build needs, found once up front so that a missing
/// package is reported before any slow step, and all missing packages at once.
#[derive(Debug, Clone)]
pub(crate) struct HostTools {
    pub apt_get: PathBuf,
    pub apt_cache: PathBuf,
    pub dpkg_deb: PathBuf,
    pub mkfs_vfat: PathBuf,
    pub mcopy: PathBuf,
    pub syslinux: PathBuf,
    pub qemu_img: PathBuf,
    pub mbr_bin: PathBuf,
}

impl HostTools {
    /// Finds every tool, or names the Debian packages to install.
    pub(crate) fn find() -> Result<Self, BuildError> {
        let mut missing: Vec<(&str, &str)> = Vec::new();
        let mut find = |tool: &'static str, package: &'static str| {
            find_program(tool).unwrap_or_else(|| {
                missing.push((tool, package));
                PathBuf::new()
            })
        };
        let apt_get = find("apt-get", "apt");
        let apt_cache = find("apt-cache", "apt");
        let dpkg_deb = find("dpkg-deb", "dpkg");
        let mkfs_vfat = find("mkfs.vfat", "dosfstools");
        let mcopy = find("mcopy", "mtools");
        let syslinux = find("syslinux", "syslinux");
        let qemu_img = find("qemu-img", "qemu-utils");
        let mbr_bin = PathBuf::from(MBR_BIN);
        if !mbr_bin.is_file() {
            missing.push((MBR_BIN, "syslinux-common"));
        }
        if !missing.is_empty() {
            let tools = missing
                .iter()
                .map(|(tool, package)| format!("{tool} (package {package})"))
                .collect::<Vec<_>>()
                .join(", ");
            let mut packages: Vec<String> = missing.iter().map(|(_, p)| p.to_string()).collect();
            packages.sort();
            packages.dedup();
            return Err(BuildError::MissingHostTools { tools, packages });
        }
        Ok(Self {
            apt_get,
            apt_cache,
            dpkg_deb,
            mkfs_vfat,
            mcopy,
            syslinux,
            qemu_img,
            mbr_bin,
        })
    }
}

/// Looks `name` up in `$PATH`, then in the sbin directories, which a non-root user's `$PATH`
/// often lacks although `mkfs.vfat` lives there and runs fine unprivileged.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Runs `cmd` to completion and returns its output, or a [`CommandError`] carrying the
/// command's stderr when it exits unsuccessfully.
pub(crate) fn run(cmd: &mut Command) -> Result<Output, CommandError> {
    let program = program_name(cmd);
    debug!(command = ?cmd, "running host command");
    let output = cmd.output().map_err(|source| CommandError::Spawn {
        program: program.clone(),
        source,
    })?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(failed(program, output.status, &output.stderr))
    }
}

/// Builds the error for a command that exited unsuccessfully.
pub(crate) fn failed(
    program: String,
    status: std::process::ExitStatus,
    stderr: &[u8],
) -> CommandError {
    CommandError::Failed {
        program,
        status,
        stderr: String::from_utf8_lossy(stderr).trim().to_string(),
    }
}

/// The program's file name, for error messages.
pub(crate) fn program_name(cmd: &Command) -> String {
    Path::new(cmd.get_program())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| cmd.get_program().to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_reports_stderr_of_failed_command() {
        let err = run(Command::new("sh").args(["-c", "echo boom >&2; exit 3"])).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("sh "), "{msg}");
        assert!(msg.contains("boom"), "{msg}");
        assert!(msg.contains('3'), "{msg}");
    }

    #[test]
    fn find_program_finds_sh() {
        assert!(find_program("sh").is_some());
        assert!(find_program("definitely-not-a-program-hemiron").is_none());
    }
}
