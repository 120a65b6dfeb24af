//! Reading Debian packages: streams `dpkg-deb --fsys-tarfile` and keeps only the files the
//! image needs, cached under the exact package version so that a rebuild never reads a .deb.
//!
//! The kernel package holds ~390 MB of modules, so nothing is unpacked wholesale. The first
//! pass reads every module's `.modinfo` into an index (and keeps the modules the guest is
//! known to want); a second pass runs only if dependencies turned up that the first pass had
//! already streamed past.
//!
//! Cache layout under `<cache_dir>`:
//! - `kernel/<package>_<version>_<arch>/` — `vmlinuz`, `index.json`, `ko/<module>.ko`
//! - `busybox/<package>_<version>_<arch>/busybox`
//! - `files/<package>_<version>_<arch>/` — `tree.json` and `root/<path>`: the shared objects
//!   and programs of a package whose programs the guest runs, or of a library they need
//! - `sshd/closure.json` — which of those files the SSH server needs (see the `sshd` module)

use std::collections::{BTreeSet, HashSet};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use crate::apt::{self, Package};
use crate::error::BuildError;
use crate::host::{self, HostTools};
use crate::modules::{self, ModuleIndex};
use crate::sharedlibs::PackageTree;

/// The kernel's files in the cache.
#[derive(Debug, Clone)]
pub(crate) struct KernelFiles {
    /// `uname -r` of the kernel, e.g. `6.1.0-56-amd64`.
    pub release: String,
    pub vmlinuz: PathBuf,
    pub index: ModuleIndex,
    dir: PathBuf,
}

impl KernelFiles {
    /// Where module `name` is (or will be) cached.
    pub(crate) fn module_path(&self, name: &str) -> PathBuf {
        self.dir.join("ko").join(format!("{name}.ko"))
    }
}

/// `index.json`: written last into a kernel cache directory, so its presence marks the
/// directory complete.
#[derive(Debug, Serialize, Deserialize)]
struct KernelIndexFile {
    /// [`INDEX_FORMAT`] of the builder that wrote it; another value means re-index.
    #[serde(default)]
    format: u32,
    release: String,
    #[serde(flatten)]
    modules: ModuleIndex,
}

/// Bumped whenever the cached index gains information (as when aliases were added), so that
/// older cache entries are rebuilt rather than misread.
const INDEX_FORMAT: u32 = 2;

/// Cache paths and apt access shared by the extraction steps.
pub(crate) struct Cache<'a> {
    pub tools: &'a HostTools,
    pub dir: &'a Path,
}

impl Cache<'_> {
    fn debs_dir(&self) -> PathBuf {
        self.dir.join("debs")
    }

    /// The kernel image and module index of `package`, extracting them on first use.
    pub(crate) fn kernel(&self, package: &Package) -> Result<KernelFiles, BuildError> {
        let dir = self.dir.join("kernel").join(package.cache_key());
        let index_path = dir.join("index.json");
        let file = match read_index(&index_path)? {
            Some(file) if file.format == INDEX_FORMAT => file,
            _ => {
                self.index_kernel(package, &dir)?;
                read_index(&index_path)?.ok_or_else(|| BuildError::ReadCache {
                    path: index_path.clone(),
                    source: io::ErrorKind::NotFound.into(),
                })?
            }
        };
        Ok(KernelFiles {
            release: file.release,
            vmlinuz: dir.join("vmlinuz"),
            index: file.modules,
            dir,
        })
    }

    /// First pass over the kernel package: vmlinuz, modules.builtin, every module's
    /// dependencies, and the modules the guest is known to want. Built in a staging directory
    /// renamed into place, so an interrupted build leaves no half cache entry.
    fn index_kernel(&self, package: &Package, dir: &Path) -> Result<(), BuildError> {
        let deb = apt::ensure_downloaded(self.tools, package, &self.debs_dir())?;
        let parent = dir.parent().unwrap_or(self.dir);
        let staging = staging_dir(parent)?;
        let ko_dir = staging.path().join("ko");
        create_dir(&ko_dir)?;
        info!(package = %package.name, version = %package.version, "indexing kernel modules");

        let mut release = None;
        let mut builtin = None;
        let mut index = ModuleIndex::default();
        // Modules worth keeping from this pass: the guest's list plus the dependencies of
        // every module kept so far.
        let mut wanted: HashSet<String> = modules::GUEST_MODULES
            .iter()
            .map(|m| modules::normalize_name(m))
            .collect();
        stream_files(self.tools, package, &deb, |path, entry| {
            if let Some(r) = path.strip_prefix("boot/vmlinuz-") {
                release = Some(r.to_string());
                write_stream(&staging.path().join("vmlinuz"), entry, 0o644)?;
            } else if path.starts_with("lib/modules/") && path.ends_with("/modules.builtin") {
                let mut text = String::new();
                entry
                    .read_to_string(&mut text)
                    .map_err(|source| read_error(package, source))?;
                builtin = Some(modules::parse_builtin(&text));
            } else if let Some((name, compressed)) = modules::module_file_name(path) {
                if !path.starts_with("lib/modules/") {
                    return Ok(Flow::Continue);
                }
                if compressed {
                    index.modules.insert(
                        name,
                        modules::ModuleInfo {
                            path: path.to_string(),
                            depends: Vec::new(),
                            aliases: Vec::new(),
                            compressed: true,
                        },
                    );
                    return Ok(Flow::Continue);
                }
                let mut bytes = Vec::new();
                entry
                    .read_to_end(&mut bytes)
                    .map_err(|source| read_error(package, source))?;
                let (name, info) = modules::module_info(path, &bytes).map_err(|source| {
                    BuildError::ParseModule {
                        path: path.to_string(),
                        source,
                    }
                })?;
                if wanted.contains(&name) {
                    wanted.extend(info.depends.iter().cloned());
                    write_file(&ko_dir.join(format!("{name}.ko")), &bytes, 0o644)?;
                }
                index.modules.insert(name, info);
            }
            Ok(Flow::Continue)
        })?;

        let release = release.ok_or_else(|| missing(package, "boot/vmlinuz-*"))?;
        index.builtin = builtin.ok_or_else(|| missing(package, "modules.builtin"))?;
        debug!(
            release = %release,
            modules = index.modules.len(),
            builtin = index.builtin.len(),
            "kernel package indexed"
        );
        let file = KernelIndexFile {
            format: INDEX_FORMAT,
            release,
            modules: index,
        };
        let json = serde_json::to_vec(&file)
            .map_err(|source| BuildError::SerializeModuleIndex { source })?;
        write_file(&staging.path().join("index.json"), &json, 0o644)?;
        publish_dir(
            staging,
            dir,
            |dir| matches!(read_index(&dir.join("index.json")), Ok(Some(f)) if f.format == INDEX_FORMAT),
        )
    }

    /// Makes sure every module in `names` is in the kernel's cache directory, reading the
    /// package a second time only for those the first pass did not keep.
    pub(crate) fn ensure_modules(
        &self,
        package: &Package,
        kernel: &KernelFiles,
        names: &[String],
    ) -> Result<(), BuildError> {
        let mut todo: BTreeSet<(String, String)> = names
            .iter()
            .filter(|name| !kernel.module_path(name).is_file())
            .filter_map(|name| {
                let info = kernel.index.modules.get(name)?;
                Some((info.path.clone(), name.clone()))
            })
            .collect();
        if todo.is_empty() {
            return Ok(());
        }
        info!(count = todo.len(), "extracting further kernel modules");
        let deb = apt::ensure_downloaded(self.tools, package, &self.debs_dir())?;
        create_dir(&kernel.dir.join("ko"))?;
        stream_files(self.tools, package, &deb, |path, entry| {
            let Some(name) = todo.iter().find(|(p, _)| p == path).map(|(_, n)| n.clone()) else {
                return Ok(Flow::Continue);
            };
            write_stream(&kernel.module_path(&name), entry, 0o644)?;
            todo.retain(|(_, n)| *n != name);
            Ok(if todo.is_empty() {
                Flow::Stop
            } else {
                Flow::Continue
            })
        })?;
        match todo.into_iter().next() {
            Some((path, _)) => Err(missing(package, &path)),
            None => Ok(()),
        }
    }

    /// The static busybox binary of `package`, extracted on first use.
    pub(crate) fn busybox(&self, package: &Package) -> Result<PathBuf, BuildError> {
        let dir = self.dir.join("busybox").join(package.cache_key());
        let binary = dir.join("busybox");
        if binary.is_file() {
            return Ok(binary);
        }
        let deb = apt::ensure_downloaded(self.tools, package, &self.debs_dir())?;
        create_dir(&dir)?;
        let mut found = false;
        stream_files(self.tools, package, &deb, |path, entry| {
            if path != "bin/busybox" {
                return Ok(Flow::Continue);
            }
            write_stream(&binary, entry, 0o755)?;
            found = true;
            Ok(Flow::Stop)
        })?;
        if !found {
            return Err(missing(package, "bin/busybox"));
        }
        Ok(binary)
    }
}

/// The shared objects and programs of one package, extracted into the cache.
#[derive(Debug, Clone)]
pub(crate) struct ExtractedTree {
    pub tree: PackageTree,
    /// Holds the tree's regular files at their package paths.
    root: PathBuf,
}

impl ExtractedTree {
    /// Where regular file `path` of the package is in the cache.
    pub(crate) fn file(&self, path: &str) -> PathBuf {
        self.root.join(path)
    }
}

impl Cache<'_> {
    /// The shared objects and programs of `package` (see [`PackageTree::wants`]), extracted
    /// on first use into `files/<package key>/`: the files under `root/`, then `tree.json`
    /// listing them, written last.
    pub(crate) fn package_tree(&self, package: &Package) -> Result<ExtractedTree, BuildError> {
        let dir = self.dir.join("files").join(package.cache_key());
        let index = dir.join("tree.json");
        let tree = match read_tree(&index)? {
            Some(tree) => tree,
            None => {
                self.extract_tree(package, &dir)?;
                read_tree(&index)?.ok_or_else(|| BuildError::ReadCache {
                    path: index.clone(),
                    source: io::ErrorKind::NotFound.into(),
                })?
            }
        };
        Ok(ExtractedTree {
            tree,
            root: dir.join("root"),
        })
    }

    fn extract_tree(&self, package: &Package, dir: &Path) -> Result<(), BuildError> {
        let deb = apt::ensure_downloaded(self.tools, package, &self.debs_dir())?;
        let parent = dir.parent().unwrap_or(self.dir);
        let staging = staging_dir(parent)?;
        let root = staging.path().join("root");
        debug!(package = %package.name, version = %package.version, "extracting libraries and programs");
        let mut tree = PackageTree::default();
        stream_entries(self.tools, package, &deb, |path, entry| {
            if !PackageTree::wants(path) {
                return Ok(Flow::Continue);
            }
            match entry {
                Entry::File { mode, contents } => {
                    let target = root.join(path);
                    create_dir(target.parent().unwrap_or(&root))?;
                    write_stream(&target, contents, mode)?;
                    tree.files.insert(path.to_string(), mode);
                }
                Entry::Symlink { target } => {
                    tree.symlinks.insert(path.to_string(), target);
                }
            }
            Ok(Flow::Continue)
        })?;
        let json = serde_json::to_vec(&tree)
            .map_err(|source| BuildError::SerializeCacheIndex { source })?;
        write_file(&staging.path().join("tree.json"), &json, 0o644)?;
        publish_dir(staging, dir, |dir| {
            matches!(read_tree(&dir.join("tree.json")), Ok(Some(_)))
        })
    }
}

/// A package tree's index, or `None` if there is none yet.
fn read_tree(path: &Path) -> Result<Option<PackageTree>, BuildError> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(BuildError::ReadCache {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|source| BuildError::ParseCache {
            path: path.to_path_buf(),
            source,
        })
}

/// The kernel cache's index, or `None` if there is none yet.
fn read_index(path: &Path) -> Result<Option<KernelIndexFile>, BuildError> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(BuildError::ReadCache {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|source| BuildError::ParseCache {
            path: path.to_path_buf(),
            source,
        })
}

/// Whether [`stream_entries`] should read on.
pub(crate) enum Flow {
    Continue,
    Stop,
}

/// One entry of a package's data archive that the build may keep.
pub(crate) enum Entry<'a> {
    File {
        /// Permission bits.
        mode: u32,
        contents: &'a mut dyn Read,
    },
    Symlink {
        target: String,
    },
}

/// Calls `f` with the path (without the leading `./`) and contents of every regular file in
/// the package's data archive, in archive order, until `f` says stop.
fn stream_files(
    tools: &HostTools,
    package: &Package,
    deb: &Path,
    mut f: impl FnMut(&str, &mut dyn Read) -> Result<Flow, BuildError>,
) -> Result<(), BuildError> {
    stream_entries(tools, package, deb, |path, entry| match entry {
        Entry::File { contents, .. } => f(path, contents),
        Entry::Symlink { .. } => Ok(Flow::Continue),
    })
}

/// Calls `f` with the path (without the leading `./`) of every regular file and symbolic link
/// in the package's data archive, in archive order, until `f` says stop.
fn stream_entries(
    tools: &HostTools,
    package: &Package,
    deb: &Path,
    mut f: impl FnMut(&str, Entry<'_>) -> Result<Flow, BuildError>,
) -> Result<(), BuildError> {
    let mut cmd = Command::new(&tools.dpkg_deb);
    cmd.arg("--fsys-tarfile")
        .arg(deb)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    debug!(command = ?cmd, "streaming package contents");
    let program = host::program_name(&cmd);
    let extract_error = |source| BuildError::ExtractPackage {
        package: package.name.clone(),
        source,
    };
    let mut child = cmd.spawn().map_err(|source| {
        extract_error(crate::error::CommandError::Spawn {
            program: program.clone(),
            source,
        })
    })?;
    // Drain stderr on its own thread so a chatty dpkg-deb can never block on a full pipe.
    let stderr_reader = child.stderr.take().map(|mut stderr| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = stderr.read_to_end(&mut buf);
            buf
        })
    });
    let result = match child.stdout.take() {
        Some(stdout) => walk_archive(package, stdout, &mut f),
        None => Ok(Flow::Continue),
    };
    // When we stop reading on purpose, dpkg-deb must not linger; when the archive was
    // unreadable, let it finish so that its own complaint can be reported.
    let stopped_early = !matches!(
        result,
        Ok(Flow::Continue) | Err(BuildError::ReadPackageArchive { .. })
    );
    if stopped_early {
        let _ = child.kill();
    }
    let status = child.wait();
    let stderr = stderr_reader
        .and_then(|t| t.join().ok())
        .unwrap_or_default();
    let dpkg_failed = |status: &io::Result<std::process::ExitStatus>| match status {
        Ok(status) if !status.success() => Some(extract_error(host::failed(
            program.clone(),
            *status,
            &stderr,
        ))),
        Ok(_) => None,
        Err(e) => Some(extract_error(crate::error::CommandError::Spawn {
            program: program.clone(),
            source: io::Error::new(e.kind(), e.to_string()),
        })),
    };
    match result {
        Ok(Flow::Stop) => Ok(()),
        Ok(Flow::Continue) => dpkg_failed(&status).map_or(Ok(()), Err),
        // A truncated or corrupt .deb: dpkg-deb's message explains it better than tar's.
        Err(e @ BuildError::ReadPackageArchive { .. }) => match dpkg_failed(&status) {
            Some(dpkg) if !stderr.is_empty() => Err(dpkg),
            _ => Err(e),
        },
        Err(other) => Err(other),
    }
}

fn walk_archive(
    package: &Package,
    reader: impl Read,
    f: &mut impl FnMut(&str, Entry<'_>) -> Result<Flow, BuildError>,
) -> Result<Flow, BuildError> {
    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries()
        .map_err(|source| read_error(package, source))?;
    for entry in entries {
        let mut entry = entry.map_err(|source| read_error(package, source))?;
        let kind = entry.header().entry_type();
        if !kind.is_file() && !kind.is_symlink() {
            continue;
        }
        let path = entry
            .path()
            .map_err(|source| read_error(package, source))?
            .to_string_lossy()
            .into_owned();
        let path = path.trim_start_matches("./");
        let flow = if kind.is_symlink() {
            let target = entry
                .link_name()
                .map_err(|source| read_error(package, source))?
                .map(|t| t.to_string_lossy().into_owned())
                .unwrap_or_default();
            f(path, Entry::Symlink { target })?
        } else {
            let mode = entry
                .header()
                .mode()
                .map_err(|source| read_error(package, source))?
                & 0o7777;
            f(
                path,
                Entry::File {
                    mode,
                    contents: &mut entry,
                },
            )?
        };
        if let Flow::Stop = flow {
            return Ok(Flow::Stop);
        }
    }
    Ok(Flow::Continue)
}

fn read_error(package: &Package, source: io::Error) -> BuildError {
    BuildError::ReadPackageArchive {
        package: package.name.clone(),
        source,
    }
}

fn missing(package: &Package, what: &str) -> BuildError {
    BuildError::PackageFileMissing {
        package: package.name.clone(),
        what: what.to_string(),
    }
}

fn create_dir(path: &Path) -> Result<(), BuildError> {
    std::fs::create_dir_all(path).map_err(|source| BuildError::CreateDir {
        path: path.to_path_buf(),
        source,
    })
}

fn staging_dir(parent: &Path) -> Result<tempfile::TempDir, BuildError> {
    create_dir(parent)?;
    tempfile::Builder::new()
        .prefix(".staging-")
        .tempdir_in(parent)
        .map_err(|source| BuildError::CreateDir {
            path: parent.to_path_buf(),
            source,
        })
}

/// Renames a finished staging directory into place, moving an outdated one out of the way
/// first. Losing a race to a concurrent build is fine: its result is the same (`complete`
/// tells whether the directory that won is a finished one).
fn publish_dir(
    staging: tempfile::TempDir,
    dir: &Path,
    complete: impl Fn(&Path) -> bool,
) -> Result<(), BuildError> {
    if dir.exists() {
        let parent = dir.parent().unwrap_or(Path::new("."));
        if let Ok(old) = tempfile::Builder::new().prefix(".old-").tempdir_in(parent) {
            // Renaming onto the empty temporary directory replaces it. If that fails, a
            // concurrent build moved the outdated entry already.
            let _ = std::fs::rename(dir, old.path());
        }
    }
    let staged = staging.keep();
    match std::fs::rename(&staged, dir) {
        Ok(()) => Ok(()),
        Err(_) if complete(dir) => {
            let _ = std::fs::remove_dir_all(&staged);
            Ok(())
        }
        Err(source) => {
            let _ = std::fs::remove_dir_all(&staged);
            Err(BuildError::WriteCache {
                path: dir.to_path_buf(),
                source,
            })
        }
    }
}

/// Writes `path` through a temporary file in the same directory and a rename, so readers only
/// ever see complete files.
pub(crate) fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), BuildError> {
    write_stream(path, &mut &data[..], mode)
}

fn write_stream(path: &Path, reader: &mut dyn Read, mode: u32) -> Result<(), BuildError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| BuildError::WriteCache {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
    io::copy(reader, &mut tmp).map_err(err)?;
    tmp.flush().map_err(err)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}
