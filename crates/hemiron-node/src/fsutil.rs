//! Crash-safe file writes.
//!
//! Every state file the agent owns (VM configs, credentials, task indexes) is replaced
//! atomically: the new content goes to a temporary file in the same directory, is fsynced,
//! renamed over the old file, and the directory is fsynced. A crash at any point leaves either
//! the complete old file or the complete new one, never a torn or empty file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Writes `data` to a new temporary file in `dir` and fsyncs it. Its unique name starts with
/// a dot and contains `.tmp.`, so a leftover from a crash is recognisable and ignored.
fn write_temp(dir: &Path, stem: &str, data: &[u8], mode: u32) -> io::Result<PathBuf> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = dir.join(format!(
        ".{stem}.tmp.{}.{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(data)?;
        file.sync_all()
    })();
    match written {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn parent_and_name(path: &Path) -> io::Result<(&Path, String)> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no parent"))?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    Ok((dir, name.to_string_lossy().into_owned()))
}

/// Writes `data` to `path` atomically with the given permission bits.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let (dir, name) = parent_and_name(path)?;
    let tmp = write_temp(dir, &name, data, mode)?;
    let result = fs::rename(&tmp, path).and_then(|_| sync_dir(dir));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Fsyncs a directory so that a rename or unlink inside it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `path` with `data` only if it does not exist yet, atomically: the file appears
/// complete or not at all. Returns `AlreadyExists` if another writer got there first.
pub fn create_exclusive(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let (dir, name) = parent_and_name(path)?;
    let tmp = write_temp(dir, &name, data, mode)?;
    // link(2) fails if the target exists: that is the exclusivity check.
    let result = fs::hard_link(&tmp, path).and_then(|_| sync_dir(dir));
    let _ = fs::remove_file(&tmp);
    result
}

/// Removes leftover temporary files from interrupted atomic writes in `dir`.
pub fn remove_stale_temps(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.contains(".tmp.") {
            let _ = fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.conf");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temp file left behind");
    }

    #[test]
    fn exclusive_create_refuses_existing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("100.conf");
        create_exclusive(&p, b"x", 0o640).unwrap();
        let err = create_exclusive(&p, b"y", 0o640).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&p).unwrap(), b"x");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
