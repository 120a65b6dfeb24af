//! `manifest.json`: what an image was built from and how to check it, so tests and the node
//! agent can tell which image they boot without unpacking it.

use std::io::Read;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::BuildError;

/// Description of a built image, stored as `manifest.json` beside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The real kernel package, e.g. `linux-image-6.1.0-56-amd64`.
    pub kernel_package: String,
    /// Its Debian version, e.g. `6.1.192-2`.
    pub kernel_version: String,
    /// `uname -r` in the guest.
    pub kernel_release: String,
    /// The `busybox-static` package version.
    pub busybox_version: String,
    /// The `dropbear-bin` package version (the SSH server).
    pub dropbear_version: String,
    /// `name version` of every package the SSH server's files come from: `dropbear-bin`,
    /// then the libraries it links.
    pub ssh_packages: Vec<String>,
    /// Whether the image answers `/cgi-bin/run` (tests only).
    pub test_hooks: bool,
    /// Kernel modules the image ships, dependencies first (device drivers load only when
    /// their device is present).
    pub modules: Vec<String>,
    /// SHA-256 of the qcow2 file, lowercase hex.
    pub disk_sha256: String,
    pub disk_bytes: u64,
    pub initrd_bytes: u64,
    /// Size of `sshd.gz`, the SSH server the guest unpacks from its boot partition.
    pub sshd_bytes: u64,
    pub kernel_bytes: u64,
    /// When the build finished, RFC 3339 in UTC.
    pub built_at: String,
    /// How long the build took, in milliseconds.
    pub build_ms: u64,
}

impl Manifest {
    /// Reads a manifest written by [`crate::build`].
    pub fn read(path: &Path) -> Result<Self, BuildError> {
        let bytes = std::fs::read(path).map_err(|source| BuildError::ReadManifest {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|source| BuildError::ParseManifest {
            path: path.to_path_buf(),
            source,
        })
    }

    pub(crate) fn write(&self, path: &Path) -> Result<(), BuildError> {
        let mut json = serde_json::to_vec_pretty(self)
            .map_err(|source| BuildError::SerializeManifest { source })?;
        json.push(b'\n');
        std::fs::write(path, json).map_err(|source| BuildError::WriteOutput {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// SHA-256 of a file's contents, lowercase hex.
pub(crate) fn sha256_file(path: &Path) -> Result<String, BuildError> {
    let err = |source| BuildError::HashImage {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(err)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The current time as RFC 3339 UTC with second precision.
pub(crate) fn rfc3339_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    rfc3339(secs)
}

/// Formats Unix time `secs` as `YYYY-MM-DDTHH:MM:SSZ` (civil-from-days, proleptic Gregorian).
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_798_761_599), "2026-12-31T23:59:59Z");
    }

    #[test]
    fn sha256_of_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(
            sha256_file(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
