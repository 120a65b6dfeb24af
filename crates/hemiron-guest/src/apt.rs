//! apt on the build host: which Debian packages the image is made of (the kernel behind the
//! `linux-image-amd64` metapackage, `busybox-static`, `dropbear-bin` and the libraries it
//! links), and downloading them into the cache.

use std::path::{Path, PathBuf};
use std::process::Command;

use tracing::{debug, info};

use crate::error::{BuildError, CommandError};
use crate::host::{self, HostTools};

/// The metapackage that always depends on the current Debian kernel; resolving through it keeps
/// the ABI (`6.1.0-56`) out of our code.
pub(crate) const KERNEL_METAPACKAGE: &str = "linux-image-amd64";

/// The guest's whole userland, but for SSH.
pub(crate) const BUSYBOX_PACKAGE: &str = "busybox-static";

/// The SSH server (`dropbear`) and its key generator (`dropbearkey`), dynamically linked.
pub(crate) const DROPBEAR_PACKAGE: &str = "dropbear-bin";

/// One exact version of a Debian package, as apt would download it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Package {
    pub name: String,
    pub version: String,
    pub architecture: String,
}

impl Package {
    /// The name `apt-get download` gives the file: the epoch's colon is escaped as `%3a`.
    pub(crate) fn deb_file_name(&self) -> String {
        format!("{}.deb", self.cache_key())
    }

    /// A file-name-safe key naming exactly this package version, for cache entries derived from
    /// it.
    pub(crate) fn cache_key(&self) -> String {
        format!(
            "{}_{}_{}",
            self.name,
            self.version.replace(':', "%3a"),
            self.architecture
        )
    }
}

/// Finds the real kernel package (`linux-image-<abi>-amd64`) that the metapackage depends on.
pub(crate) fn resolve_kernel_package(tools: &HostTools) -> Result<String, BuildError> {
    let mut cmd = Command::new(&tools.apt_cache);
    cmd.args(["depends", KERNEL_METAPACKAGE]);
    let output = host::run(&mut cmd).map_err(|source| {
        if names_unknown_package(&source) {
            BuildError::AptListsMissing {
                package: KERNEL_METAPACKAGE.to_string(),
            }
        } else {
            BuildError::ResolveKernelPackage { source }
        }
    })?;
    let package = kernel_dependency(&String::from_utf8_lossy(&output.stdout))
        .ok_or(BuildError::NoKernelDependency)?;
    debug!(package = %package, "resolved kernel package");
    Ok(package)
}

/// Picks the kernel out of `apt-cache depends linux-image-amd64` output, whose lines look like
/// `  Depends: linux-image-6.1.0-56-amd64`.
fn kernel_dependency(depends_output: &str) -> Option<String> {
    depends_output.lines().find_map(|line| {
        let dep = line
            .trim()
            .trim_start_matches('|')
            .strip_prefix("Depends:")?
            .trim();
        let is_kernel = dep.starts_with("linux-image-")
            && dep.ends_with("-amd64")
            && dep != KERNEL_METAPACKAGE
            && !dep.contains('<');
        is_kernel.then(|| dep.to_string())
    })
}

/// apt's records of the versions it would install (the candidates) of some packages.
#[derive(Debug)]
pub(crate) struct Records(String);

/// Reads the candidate records of `names` in one `apt-cache` run: each run re-reads the
/// package lists, which takes ~0.5 s where apt's binary cache is disabled (as in Debian's
/// container images).
pub(crate) fn show(tools: &HostTools, names: &[&str]) -> Result<Records, BuildError> {
    let mut cmd = Command::new(&tools.apt_cache);
    cmd.args(["show", "--no-all-versions"]).args(names);
    let output = host::run(&mut cmd).map_err(|source| {
        if names_unknown_package(&source) {
            BuildError::AptListsMissing {
                package: names.join(" "),
            }
        } else {
            BuildError::QueryPackage {
                package: names.join(" "),
                source,
            }
        }
    })?;
    Ok(Records(
        String::from_utf8_lossy(&output.stdout).into_owned(),
    ))
}

impl Records {
    /// The candidate version of package `name`.
    pub(crate) fn package(&self, name: &str) -> Result<Package, BuildError> {
        self.find(name)?.ok_or_else(|| BuildError::AptListsMissing {
            package: name.to_string(),
        })
    }

    /// The candidate version of package `name`, or `None` if apt has no record of it (as for
    /// a virtual package).
    pub(crate) fn find(&self, name: &str) -> Result<Option<Package>, BuildError> {
        let Some(record) = self.record(name) else {
            return Ok(None);
        };
        let field = |field: &'static str| {
            record_field(record, field).ok_or_else(|| BuildError::PackageRecordField {
                package: name.to_string(),
                field,
            })
        };
        Ok(Some(Package {
            name: name.to_string(),
            version: field("Version")?,
            architecture: field("Architecture")?,
        }))
    }

    /// The packages `name` needs installed: `Pre-Depends`, then `Depends`, the first
    /// alternative of each, without version constraints or architecture qualifiers. Empty if
    /// apt has no record of `name`.
    pub(crate) fn depends(&self, name: &str) -> Vec<String> {
        let Some(record) = self.record(name) else {
            return Vec::new();
        };
        ["Pre-Depends", "Depends"]
            .iter()
            .filter_map(|field| record_field(record, field))
            .flat_map(|list| {
                list.split(',')
                    .filter_map(|dep| {
                        let first = dep.split('|').next()?.trim();
                        let name = first.split([' ', '(']).next()?;
                        let name = name.split(':').next()?;
                        (!name.is_empty()).then(|| name.to_string())
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Adds the records of another query.
    pub(crate) fn extend(&mut self, other: Records) {
        let kept = self.0.trim_end_matches('\n').len();
        self.0.truncate(kept);
        self.0.push_str("\n\n");
        self.0.push_str(&other.0);
    }

    // apt-cache says nothing about a name it doesn't know when it knows the others.
    fn record(&self, name: &str) -> Option<&str> {
        self.0
            .split("\n\n")
            .map(|r| r.trim_start_matches('\n'))
            .find(|r| record_field(r, "Package").as_deref() == Some(name))
    }
}

/// The value of `field` in an apt package record (one stanza).
fn record_field(record: &str, field: &str) -> Option<String> {
    record
        .lines()
        .take_while(|line| !line.is_empty())
        .find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key == field).then(|| value.trim().to_string())
        })
}

/// apt says "No packages found" / "Unable to locate package" both for names that don't exist
/// and, far more commonly on a fresh machine, when no package lists were ever downloaded.
fn names_unknown_package(err: &CommandError) -> bool {
    match err {
        CommandError::Failed { stderr, .. } => {
            stderr.contains("No packages found") || stderr.contains("Unable to locate package")
        }
        CommandError::Spawn { .. } => false,
    }
}

/// Returns the path of `package`'s .deb in `debs_dir`, downloading it with `apt-get download`
/// unless that exact version is already there.
pub(crate) fn ensure_downloaded(
    tools: &HostTools,
    package: &Package,
    debs_dir: &Path,
) -> Result<PathBuf, BuildError> {
    let target = debs_dir.join(package.deb_file_name());
    if target.is_file() {
        debug!(deb = %target.display(), "package already in cache");
        return Ok(target);
    }
    std::fs::create_dir_all(debs_dir).map_err(|source| BuildError::CreateDir {
        path: debs_dir.to_path_buf(),
        source,
    })?;
    // Download into a private directory and rename, so a concurrent or interrupted build never
    // sees a partial .deb under the final name.
    let staging = tempfile::Builder::new()
        .prefix(".download-")
        .tempdir_in(debs_dir)
        .map_err(|source| BuildError::CreateDir {
            path: debs_dir.to_path_buf(),
            source,
        })?;
    info!(package = %package.name, version = %package.version, "downloading package");
    let mut cmd = Command::new(&tools.apt_get);
    cmd.arg("download")
        .arg(format!("{}={}", package.name, package.version))
        .current_dir(staging.path());
    host::run(&mut cmd).map_err(|source| BuildError::DownloadPackage {
        package: package.name.clone(),
        source,
    })?;
    let downloaded = staging.path().join(package.deb_file_name());
    if !downloaded.is_file() {
        return Err(BuildError::DownloadedFileMissing {
            package: package.name.clone(),
            path: downloaded,
        });
    }
    std::fs::rename(&downloaded, &target).map_err(|source| BuildError::WriteCache {
        path: target.clone(),
        source,
    })?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_dependency_skips_metapackage_and_virtuals() {
        let out = "linux-image-amd64\n  Depends: <linux-image-virtual>\n  Depends: linux-image-6.1.0-56-amd64\n  Recommends: firmware\n";
        assert_eq!(
            kernel_dependency(out).as_deref(),
            Some("linux-image-6.1.0-56-amd64")
        );
        assert_eq!(kernel_dependency("linux-image-amd64\n"), None);
        assert_eq!(
            kernel_dependency(" |Depends: linux-image-6.12.9-amd64\n").as_deref(),
            Some("linux-image-6.12.9-amd64")
        );
    }

    #[test]
    fn record_field_reads_one_stanza() {
        let rec = "Package: busybox-static\nVersion: 1:1.35.0-4+b1\nArchitecture: amd64\n\nPackage: busybox-static\nVersion: 1:1.30\n";
        assert_eq!(
            record_field(rec, "Version").as_deref(),
            Some("1:1.35.0-4+b1")
        );
        assert_eq!(record_field(rec, "Architecture").as_deref(), Some("amd64"));
        assert_eq!(record_field(rec, "Filename"), None);
    }

    #[test]
    fn records_find_each_package() {
        let records = Records(
            "Package: linux-image-6.1.0-56-amd64\nVersion: 6.1.192-2\nArchitecture: amd64\n\nPackage: busybox-static\nVersion: 1:1.35.0-4\nArchitecture: amd64\n".into(),
        );
        let busybox = records.package("busybox-static").unwrap();
        assert_eq!(busybox.version, "1:1.35.0-4");
        assert_eq!(
            records
                .package("linux-image-6.1.0-56-amd64")
                .unwrap()
                .version,
            "6.1.192-2"
        );
        assert!(matches!(
            records.package("gone"),
            Err(BuildError::AptListsMissing { package }) if package == "gone"
        ));
    }

    #[test]
    fn depends_takes_first_alternatives_without_versions() {
        let records = Records(
            "Package: dropbear-bin\nVersion: 2022.83-1\nArchitecture: amd64\nPre-Depends: init-system-helpers (>= 1.54~)\nDepends: libc6 (>= 2.34), libcrypt1 (>= 1:4.1.0), libz1 | zlib1g:any (>= 1:1.1.4),libtommath1\nSuggests: openssh-client\n\nPackage: libc6\nVersion: 2.36\nArchitecture: amd64\n".into(),
        );
        assert_eq!(
            records.depends("dropbear-bin"),
            [
                "init-system-helpers",
                "libc6",
                "libcrypt1",
                "libz1",
                "libtommath1"
            ]
        );
        assert!(records.depends("libc6").is_empty());
        assert!(records.depends("absent").is_empty());
        assert!(records.find("absent").unwrap().is_none());
        let mut more = records;
        more.extend(Records(
            "Package: zlib1g\nVersion: 1:1.2.13\nArchitecture: amd64\n".into(),
        ));
        assert_eq!(more.package("zlib1g").unwrap().version, "1:1.2.13");
        assert_eq!(more.package("libc6").unwrap().version, "2.36");
    }

    #[test]
    fn deb_file_name_escapes_epoch_like_apt() {
        let p = Package {
            name: "busybox-static".into(),
            version: "1:1.35.0-4+deb12u1+b1".into(),
            architecture: "amd64".into(),
        };
        assert_eq!(
            p.deb_file_name(),
            "busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb"
        );
    }
}
