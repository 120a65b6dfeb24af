//! The guest's SSH server: `dropbear` and `dropbearkey` from Debian's `dropbear-bin`, with the
//! shared libraries and the dynamic loader they need, found by [`crate::sharedlibs`] through
//! apt's package records and the packages' contents.
//!
//! They make up a file tree of their own, `sshd.gz` (an initramfs-format archive, ~2 MB) on
//! the boot partition beside the initramfs, which the guest's `/etc/init.d/sshd` unpacks into
//! its root file system after the boot: in the initramfs, the bootloader would read and the
//! kernel unpack those bytes before anything else runs, ~0.2 s of every TCG boot.
//!
//! Resolving asks apt about one level of dependencies at a time (each `apt-cache` run costs
//! ~0.5 s), so the result is cached in `sshd/closure.json` with the exact package versions it
//! was made from. The next build asks apt for those packages' candidate versions in the same
//! run that asks about the kernel and busybox, and reuses the closure while they are the same.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use crate::apt::{self, Package, Records};
use crate::debs::{self, Cache, ExtractedTree};
use crate::elf::{self, DynamicInfo};
use crate::error::BuildError;
use crate::host::HostTools;
use crate::initramfs::Tree;
use crate::sharedlibs::{self, Closure, PackageTree, Packages};

/// The programs the guest runs, as paths in [`apt::DROPBEAR_PACKAGE`].
pub(crate) const PROGRAMS: &[&str] = &["usr/sbin/dropbear", "usr/bin/dropbearkey"];

/// Bumped when the cached closure's meaning changes.
const CLOSURE_FORMAT: u32 = 1;

/// `sshd/closure.json`.
#[derive(Debug, Serialize, Deserialize)]
struct CachedClosure {
    format: u32,
    /// Every package the closure takes files from, at the version used; the root first.
    packages: Vec<Package>,
    closure: Closure,
}

/// What SSH adds to the guest's root file system.
#[derive(Debug, Default)]
pub(crate) struct SshFiles {
    /// (guest path, mode, contents).
    pub files: Vec<(String, u32, Vec<u8>)>,
    /// (guest path, absolute target).
    pub symlinks: Vec<(String, String)>,
    /// The packages the files come from, `dropbear-bin` first.
    pub packages: Vec<Package>,
}

impl SshFiles {
    /// The files as a tree to unpack over the guest's root file system.
    pub(crate) fn tree(&self) -> Tree {
        let mut tree = Tree::default();
        for (path, mode, contents) in &self.files {
            tree.file(path, *mode, contents.clone());
        }
        for (path, target) in &self.symlinks {
            tree.symlink(path, target);
        }
        tree
    }
}

fn closure_path(cache_dir: &Path) -> PathBuf {
    cache_dir.join("sshd").join("closure.json")
}

fn read_cached(cache_dir: &Path) -> Option<CachedClosure> {
    let text = std::fs::read(closure_path(cache_dir)).ok()?;
    serde_json::from_slice::<CachedClosure>(&text)
        .ok()
        .filter(|c| c.format == CLOSURE_FORMAT)
}

/// The packages of the last closure built with this cache, to ask apt about together with
/// the image's other packages.
pub(crate) fn cached_package_names(cache_dir: &Path) -> Vec<String> {
    read_cached(cache_dir)
        .map(|c| c.packages.into_iter().map(|p| p.name).collect())
        .unwrap_or_default()
}

/// Gathers dropbear and everything it needs. `records` holds apt's answers about `asked`.
pub(crate) fn files(
    cache: &Cache<'_>,
    records: Records,
    asked: &[&str],
) -> Result<SshFiles, BuildError> {
    let root = records.package(apt::DROPBEAR_PACKAGE)?;
    let still_current = |c: &CachedClosure| {
        c.packages.first() == Some(&root)
            && c.packages
                .iter()
                .all(|p| matches!(records.find(&p.name), Ok(Some(now)) if &now == p))
    };
    let (packages, closure) = match read_cached(cache.dir) {
        Some(cached) if still_current(&cached) => {
            debug!("reusing the cached shared-library closure of dropbear");
            (cached.packages, cached.closure)
        }
        _ => {
            let fresh = resolve_and_cache(cache, records, asked)?;
            (fresh.packages, fresh.closure)
        }
    };

    let mut trees: HashMap<&str, ExtractedTree> = HashMap::new();
    for package in &packages {
        trees.insert(&package.name, cache.package_tree(package)?);
    }
    let mut out = SshFiles::default();
    for (guest, source) in &closure.files {
        let tree =
            trees
                .get(source.package.as_str())
                .ok_or_else(|| BuildError::PackageFileMissing {
                    package: source.package.clone(),
                    what: source.path.clone(),
                })?;
        let path = tree.file(&source.path);
        let data = std::fs::read(&path).map_err(|source| BuildError::ReadCache { path, source })?;
        out.files.push((guest.clone(), source.mode, data));
    }
    out.symlinks = closure.symlinks.into_iter().collect();
    out.packages = packages;
    Ok(out)
}

/// Resolves the closure afresh (see [`AptPackages`]) and caches it for the next build.
fn resolve_and_cache(
    cache: &Cache<'_>,
    records: Records,
    asked: &[&str],
) -> Result<CachedClosure, BuildError> {
    let mut source = AptPackages {
        tools: cache.tools,
        cache,
        records,
        asked: asked.iter().map(|s| s.to_string()).collect(),
        pending: BTreeSet::new(),
        trees: HashMap::new(),
    };
    let closure = sharedlibs::resolve(&mut source, apt::DROPBEAR_PACKAGE, PROGRAMS)?;
    let packages = closure
        .packages
        .iter()
        .map(|name| source.records.package(name))
        .collect::<Result<Vec<_>, _>>()?;
    info!(
        packages = %packages.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(" "),
        files = closure.files.len(),
        "resolved the shared libraries of dropbear"
    );
    let cached = CachedClosure {
        format: CLOSURE_FORMAT,
        packages,
        closure,
    };
    let json = serde_json::to_vec_pretty(&cached)
        .map_err(|source| BuildError::SerializeCacheIndex { source })?;
    let path = closure_path(cache.dir);
    std::fs::create_dir_all(cache.dir.join("sshd")).map_err(|source| BuildError::CreateDir {
        path: cache.dir.join("sshd"),
        source,
    })?;
    debs::write_file(&path, &json, 0o644)?;
    Ok(cached)
}

/// [`Packages`] from apt and the package cache. Records are fetched lazily, a level of
/// dependencies per `apt-cache` run; packages are downloaded only when a search reaches them.
struct AptPackages<'a> {
    tools: &'a HostTools,
    cache: &'a Cache<'a>,
    records: Records,
    /// Names apt was asked about (whether or not it knew them).
    asked: HashSet<String>,
    /// Dependencies seen but not yet asked about: asked with the next name that's needed.
    pending: BTreeSet<String>,
    trees: HashMap<String, ExtractedTree>,
}

impl AptPackages<'_> {
    fn package(&mut self, name: &str) -> Result<Option<Package>, BuildError> {
        if !self.asked.contains(name) {
            let mut names: Vec<String> = self
                .pending
                .iter()
                .filter(|n| !self.asked.contains(*n))
                .cloned()
                .collect();
            if !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
            self.ask(&names)?;
            self.pending.clear();
        }
        self.records.find(name)
    }

    /// Asks apt about `names` in one run; if it knows one of them not at all, asks about each
    /// alone, so that one odd name doesn't hide the others.
    fn ask(&mut self, names: &[String]) -> Result<(), BuildError> {
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        match apt::show(self.tools, &refs) {
            Ok(records) => self.records.extend(records),
            Err(BuildError::AptListsMissing { .. }) if names.len() > 1 => {
                for name in names {
                    match apt::show(self.tools, &[name]) {
                        Ok(records) => self.records.extend(records),
                        Err(BuildError::AptListsMissing { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            Err(BuildError::AptListsMissing { .. }) => {}
            Err(e) => return Err(e),
        }
        self.asked.extend(names.iter().cloned());
        Ok(())
    }

    fn extracted(&mut self, name: &str) -> Result<Option<&ExtractedTree>, BuildError> {
        if !self.trees.contains_key(name) {
            let Some(package) = self.package(name)? else {
                return Ok(None);
            };
            let tree = self.cache.package_tree(&package)?;
            self.trees.insert(name.to_string(), tree);
        }
        Ok(self.trees.get(name))
    }
}

impl Packages for AptPackages<'_> {
    fn depends(&mut self, package: &str) -> Result<Vec<String>, BuildError> {
        if self.package(package)?.is_none() {
            return Ok(Vec::new());
        }
        let deps = self.records.depends(package);
        let unasked: Vec<String> = deps
            .iter()
            .filter(|d| !self.asked.contains(*d))
            .cloned()
            .collect();
        self.pending.extend(unasked);
        Ok(deps)
    }

    fn tree(&mut self, package: &str) -> Result<Option<PackageTree>, BuildError> {
        Ok(self.extracted(package)?.map(|t| t.tree.clone()))
    }

    fn dynamic_info(&mut self, package: &str, path: &str) -> Result<DynamicInfo, BuildError> {
        let file = self
            .extracted(package)?
            .map(|t| t.file(path))
            .ok_or_else(|| BuildError::PackageFileMissing {
                package: package.to_string(),
                what: path.to_string(),
            })?;
        let data = std::fs::read(&file).map_err(|source| BuildError::ReadCache {
            path: file.clone(),
            source,
        })?;
        elf::dynamic_info(&data).map_err(|source| BuildError::ParseElf {
            package: package.to_string(),
            path: path.to_string(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::initramfs::Node;

    #[test]
    fn tree_holds_programs_libraries_and_the_loader_link() {
        let files = SshFiles {
            files: vec![
                ("usr/sbin/dropbear".into(), 0o755, b"ELF".to_vec()),
                (
                    "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2".into(),
                    0o755,
                    b"ELF".to_vec(),
                ),
            ],
            symlinks: vec![(
                "lib64/ld-linux-x86-64.so.2".into(),
                "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2".into(),
            )],
            packages: Vec::new(),
        };
        let t = files.tree();
        assert!(matches!(
            t.get("usr/sbin/dropbear"),
            Some(Node::File { mode: 0o755, .. })
        ));
        assert!(matches!(
            t.get("lib64/ld-linux-x86-64.so.2"),
            Some(Node::Symlink { target }) if target == "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
        ));
        assert!(matches!(t.get("usr/sbin"), Some(Node::Dir { mode: 0o755 })));
    }
}
