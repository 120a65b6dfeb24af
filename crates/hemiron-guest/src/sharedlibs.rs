//! The shared-library closure of dynamically linked programs taken from Debian packages:
//! which files, from which packages, the guest needs so that the programs run.
//!
//! Nothing is hard-coded but the loader's search directories. Each ELF file's `DT_NEEDED`
//! sonames and interpreter are looked up first in the file's own package, then breadth-first
//! through that package's `Depends` (the package metadata says where a library may come from;
//! the ELF file says which ones are needed), and every file found is examined in turn. The
//! guest has no `ld.so.cache`, so each library is shipped under its soname in one of the
//! loader's default directories, where the package put it.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::elf::DynamicInfo;
use crate::error::BuildError;

/// Where the dynamic loader of Debian amd64 finds libraries without an `ld.so.cache` (its
/// built-in system directories), without the leading slash, in search order.
pub(crate) const LIBRARY_DIRS: &[&str] = &[
    "lib/x86_64-linux-gnu",
    "usr/lib/x86_64-linux-gnu",
    "lib",
    "usr/lib",
];

/// Where programs ask for the loader (`/lib64/ld-linux-x86-64.so.2`), besides the above.
const LOADER_DIRS: &[&str] = &["lib64"];

/// Directories whose programs a package tree keeps.
pub(crate) const PROGRAM_DIRS: &[&str] = &["bin", "sbin", "usr/bin", "usr/sbin"];

/// How far from the needing package a library is looked for: its dependencies' dependencies'
/// dependencies. Bounds the packages downloaded when a library can't be found at all.
const MAX_DEPTH: usize = 3;

/// Symbolic links followed in a row before giving up (a loop).
const MAX_LINKS: usize = 16;

/// The entries of a package that can matter to a program's closure: shared objects and
/// programs (regular files with their modes, and symbolic links).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PackageTree {
    /// Path in the package (no leading slash) -> permission bits.
    pub files: BTreeMap<String, u32>,
    /// Path in the package -> link target as stored in the package.
    pub symlinks: BTreeMap<String, String>,
}

impl PackageTree {
    /// Whether a package path belongs in the tree: a direct child of a library or loader
    /// directory whose name holds `.so`, or of a program directory.
    pub(crate) fn wants(path: &str) -> bool {
        let Some((dir, name)) = path.rsplit_once('/') else {
            return false;
        };
        let library = LIBRARY_DIRS.contains(&dir) || LOADER_DIRS.contains(&dir);
        (library && name.contains(".so")) || PROGRAM_DIRS.contains(&dir)
    }

    /// The regular file `path` leads to, following this package's symbolic links.
    pub(crate) fn resolve(&self, path: &str) -> Option<String> {
        let mut path = normalize(path)?;
        for _ in 0..MAX_LINKS {
            if self.files.contains_key(&path) {
                return Some(path);
            }
            let target = self.symlinks.get(&path)?;
            path = if let Some(absolute) = target.strip_prefix('/') {
                normalize(absolute)?
            } else {
                let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
                normalize(&format!("{dir}/{target}"))?
            };
        }
        None
    }
}

/// `path` without `.` and `..` components or a leading slash; `None` if it climbs above `/`.
fn normalize(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

/// Package metadata and contents, as the resolver needs them.
pub(crate) trait Packages {
    /// What `package` depends on (`Pre-Depends`, then `Depends`; first alternatives), by
    /// name. Empty for a name no package has (a virtual package).
    fn depends(&mut self, package: &str) -> Result<Vec<String>, BuildError>;
    /// The shared objects and programs of `package`, or `None` if no package has that name.
    fn tree(&mut self, package: &str) -> Result<Option<PackageTree>, BuildError>;
    /// The run-time needs of regular file `path` of `package`.
    fn dynamic_info(&mut self, package: &str, path: &str) -> Result<DynamicInfo, BuildError>;
}

/// Where one shipped file comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Source {
    pub package: String,
    /// The regular file's path in the package.
    pub path: String,
    pub mode: u32,
}

/// Everything the programs need, to be laid out in the guest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Closure {
    /// Guest path (no leading slash) -> the file to put there.
    pub files: BTreeMap<String, Source>,
    /// Guest path -> absolute link target (the loader, where its package links it).
    pub symlinks: BTreeMap<String, String>,
    /// The packages files come from, in the order first used.
    pub packages: Vec<String>,
}

/// Resolves the closure of `programs` (paths in package `root`).
pub(crate) fn resolve(
    packages: &mut dyn Packages,
    root: &str,
    programs: &[&str],
) -> Result<Closure, BuildError> {
    let mut r = Resolver {
        packages,
        trees: HashMap::new(),
        depends: HashMap::new(),
        closure: Closure::default(),
        examine: VecDeque::new(),
        examined: HashSet::new(),
    };
    let root_tree = r
        .tree(root)?
        .ok_or_else(|| BuildError::PackageFileMissing {
            package: root.to_string(),
            what: "any program or library".to_string(),
        })?;
    for program in programs {
        let real = root_tree
            .resolve(program)
            .ok_or_else(|| BuildError::PackageFileMissing {
                package: root.to_string(),
                what: (*program).to_string(),
            })?;
        r.ship(program, root, &real, &root_tree);
    }
    let mut found_sonames: HashSet<String> = HashSet::new();
    while let Some((package, path)) = r.examine.pop_front() {
        let info = r.packages.dynamic_info(&package, &path)?;
        if let Some(interp) = &info.interpreter {
            let wanted = normalize(interp).unwrap_or_default();
            if !r.closure.files.contains_key(&wanted) && !r.closure.symlinks.contains_key(&wanted) {
                let (owner, tree, real) = r
                    .find(&package, |tree| tree.resolve(&wanted))?
                    .ok_or_else(|| BuildError::LoaderNotFound {
                        loader: interp.clone(),
                        needed_by: format!("{package}:/{path}"),
                    })?;
                // Keep the package's layout: the loader's file where it really is, a link
                // where programs ask for it if that differs.
                r.ship(&real, &owner, &real, &tree);
                if real != wanted {
                    r.closure.symlinks.insert(wanted, format!("/{real}"));
                }
            }
        }
        for soname in &info.needed {
            if !found_sonames.insert(soname.clone()) {
                continue;
            }
            let (owner, tree, (guest, real)) = r
                .find(&package, |tree| {
                    LIBRARY_DIRS.iter().find_map(|dir| {
                        let guest = format!("{dir}/{soname}");
                        tree.resolve(&guest).map(|real| (guest, real))
                    })
                })?
                .ok_or_else(|| BuildError::SharedLibraryNotFound {
                    library: soname.clone(),
                    needed_by: format!("{package}:/{path}"),
                })?;
            r.ship(&guest, &owner, &real, &tree);
        }
    }
    Ok(r.closure)
}

struct Resolver<'a> {
    packages: &'a mut dyn Packages,
    trees: HashMap<String, Option<PackageTree>>,
    depends: HashMap<String, Vec<String>>,
    closure: Closure,
    /// Shipped files whose own needs are still to be read.
    examine: VecDeque<(String, String)>,
    /// (package, path) of every file queued for examination so far.
    examined: HashSet<(String, String)>,
}

impl Resolver<'_> {
    fn tree(&mut self, package: &str) -> Result<Option<PackageTree>, BuildError> {
        if let Some(tree) = self.trees.get(package) {
            return Ok(tree.clone());
        }
        let tree = self.packages.tree(package)?;
        self.trees.insert(package.to_string(), tree.clone());
        Ok(tree)
    }

    fn depends(&mut self, package: &str) -> Result<Vec<String>, BuildError> {
        if let Some(deps) = self.depends.get(package) {
            return Ok(deps.clone());
        }
        let deps = self.packages.depends(package)?;
        self.depends.insert(package.to_string(), deps.clone());
        Ok(deps)
    }

    /// Looks for something with `pick`, first in `start`, then breadth-first through its
    /// dependencies; returns the package, its tree and what `pick` found.
    fn find<T>(
        &mut self,
        start: &str,
        pick: impl Fn(&PackageTree) -> Option<T>,
    ) -> Result<Option<(String, PackageTree, T)>, BuildError> {
        let mut seen: HashSet<String> = HashSet::from([start.to_string()]);
        let mut queue: VecDeque<(String, usize)> = VecDeque::from([(start.to_string(), 0)]);
        while let Some((package, depth)) = queue.pop_front() {
            if let Some(tree) = self.tree(&package)? {
                if let Some(found) = pick(&tree) {
                    return Ok(Some((package, tree, found)));
                }
            }
            if depth < MAX_DEPTH {
                for dep in self.depends(&package)? {
                    if seen.insert(dep.clone()) {
                        queue.push_back((dep, depth + 1));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Ships regular file `real` of `package` at `guest`, and queues it for examination the
    /// first time the file is shipped.
    fn ship(&mut self, guest: &str, package: &str, real: &str, tree: &PackageTree) {
        if self.closure.files.contains_key(guest) {
            return;
        }
        let mode = tree.files.get(real).copied().unwrap_or(0o644);
        self.closure.files.insert(
            guest.to_string(),
            Source {
                package: package.to_string(),
                path: real.to_string(),
                mode,
            },
        );
        if !self.closure.packages.iter().any(|p| p == package) {
            self.closure.packages.push(package.to_string());
        }
        if self
            .examined
            .insert((package.to_string(), real.to_string()))
        {
            self.examine
                .push_back((package.to_string(), real.to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Packages in memory: (name, depends, files, symlinks), and each file's needs.
    #[derive(Default)]
    struct Fake {
        packages: BTreeMap<String, (Vec<String>, PackageTree)>,
        needs: HashMap<(String, String), DynamicInfo>,
        trees_read: Vec<String>,
    }

    impl Fake {
        fn package(
            &mut self,
            name: &str,
            depends: &[&str],
            files: &[&str],
            links: &[(&str, &str)],
        ) {
            let tree = PackageTree {
                files: files.iter().map(|f| (f.to_string(), 0o644)).collect(),
                symlinks: links
                    .iter()
                    .map(|(l, t)| (l.to_string(), t.to_string()))
                    .collect(),
            };
            self.packages.insert(
                name.to_string(),
                (depends.iter().map(|d| d.to_string()).collect(), tree),
            );
        }

        fn needs(&mut self, package: &str, path: &str, needed: &[&str], interp: Option<&str>) {
            self.needs.insert(
                (package.to_string(), path.to_string()),
                DynamicInfo {
                    needed: needed.iter().map(|n| n.to_string()).collect(),
                    interpreter: interp.map(str::to_string),
                },
            );
        }
    }

    impl Packages for Fake {
        fn depends(&mut self, package: &str) -> Result<Vec<String>, BuildError> {
            Ok(self
                .packages
                .get(package)
                .map(|(d, _)| d.clone())
                .unwrap_or_default())
        }
        fn tree(&mut self, package: &str) -> Result<Option<PackageTree>, BuildError> {
            self.trees_read.push(package.to_string());
            Ok(self.packages.get(package).map(|(_, t)| t.clone()))
        }
        fn dynamic_info(&mut self, package: &str, path: &str) -> Result<DynamicInfo, BuildError> {
            Ok(self
                .needs
                .get(&(package.to_string(), path.to_string()))
                .cloned()
                .unwrap_or_default())
        }
    }

    /// dropbear-bin as in Debian 12: libraries behind soname links, the loader linked from
    /// /lib64, libgmp reachable only through libtomcrypt1's dependencies.
    fn debian() -> Fake {
        let mut f = Fake::default();
        f.package(
            "dropbear-bin",
            &["libc6", "libtomcrypt1", "zlib1g", "libz1-virtual"],
            &[
                "usr/sbin/dropbear",
                "usr/bin/dropbearkey",
                "usr/bin/dbclient",
            ],
            &[],
        );
        f.needs(
            "dropbear-bin",
            "usr/sbin/dropbear",
            &["libtomcrypt.so.1", "libz.so.1", "libc.so.6"],
            Some("/lib64/ld-linux-x86-64.so.2"),
        );
        f.needs(
            "dropbear-bin",
            "usr/bin/dropbearkey",
            &["libtomcrypt.so.1", "libc.so.6"],
            Some("/lib64/ld-linux-x86-64.so.2"),
        );
        f.package(
            "libc6",
            &["libgcc-s1"],
            &[
                "lib/x86_64-linux-gnu/libc.so.6",
                "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
                "lib/x86_64-linux-gnu/libm.so.6",
            ],
            &[(
                "lib64/ld-linux-x86-64.so.2",
                "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
            )],
        );
        f.needs(
            "libc6",
            "lib/x86_64-linux-gnu/libc.so.6",
            &["ld-linux-x86-64.so.2"],
            None,
        );
        f.package("libgcc-s1", &["gcc-12-base", "libc6"], &[], &[]);
        f.package(
            "libtomcrypt1",
            &["libc6", "libgmp10", "libtommath1"],
            &["usr/lib/x86_64-linux-gnu/libtomcrypt.so.1.0.1"],
            &[(
                "usr/lib/x86_64-linux-gnu/libtomcrypt.so.1",
                "libtomcrypt.so.1.0.1",
            )],
        );
        f.needs(
            "libtomcrypt1",
            "usr/lib/x86_64-linux-gnu/libtomcrypt.so.1.0.1",
            &["libgmp.so.10", "libc.so.6"],
            None,
        );
        f.package(
            "libgmp10",
            &["libc6"],
            &["usr/lib/x86_64-linux-gnu/libgmp.so.10.4.1"],
            &[(
                "usr/lib/x86_64-linux-gnu/libgmp.so.10",
                "./libgmp.so.10.4.1",
            )],
        );
        f.package(
            "zlib1g",
            &["libc6"],
            &["lib/x86_64-linux-gnu/libz.so.1.2.13"],
            &[("lib/x86_64-linux-gnu/libz.so.1", "libz.so.1.2.13")],
        );
        f
    }

    #[test]
    fn resolves_programs_libraries_and_loader() {
        let mut f = debian();
        let c = resolve(
            &mut f,
            "dropbear-bin",
            &["usr/sbin/dropbear", "usr/bin/dropbearkey"],
        )
        .unwrap();
        let files: Vec<(&str, &str, &str)> = c
            .files
            .iter()
            .map(|(g, s)| (g.as_str(), s.package.as_str(), s.path.as_str()))
            .collect();
        assert_eq!(
            files,
            [
                (
                    "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
                    "libc6",
                    "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
                ),
                (
                    "lib/x86_64-linux-gnu/libc.so.6",
                    "libc6",
                    "lib/x86_64-linux-gnu/libc.so.6"
                ),
                (
                    "lib/x86_64-linux-gnu/libz.so.1",
                    "zlib1g",
                    "lib/x86_64-linux-gnu/libz.so.1.2.13"
                ),
                ("usr/bin/dropbearkey", "dropbear-bin", "usr/bin/dropbearkey"),
                (
                    "usr/lib/x86_64-linux-gnu/libgmp.so.10",
                    "libgmp10",
                    "usr/lib/x86_64-linux-gnu/libgmp.so.10.4.1"
                ),
                (
                    "usr/lib/x86_64-linux-gnu/libtomcrypt.so.1",
                    "libtomcrypt1",
                    "usr/lib/x86_64-linux-gnu/libtomcrypt.so.1.0.1"
                ),
                ("usr/sbin/dropbear", "dropbear-bin", "usr/sbin/dropbear"),
            ]
        );
        assert_eq!(
            c.symlinks,
            BTreeMap::from([(
                "lib64/ld-linux-x86-64.so.2".to_string(),
                "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2".to_string()
            )])
        );
        assert_eq!(
            c.packages,
            [
                "dropbear-bin",
                "libc6",
                "libtomcrypt1",
                "zlib1g",
                "libgmp10"
            ]
        );
        // Packages are only read when a search reaches them: libgcc-s1 and gcc-12-base never
        // are, since everything is found before.
        assert!(
            !f.trees_read.iter().any(|p| p == "gcc-12-base"),
            "{:?}",
            f.trees_read
        );
        // The unused libm and dbclient stay out.
        assert!(!c.files.contains_key("lib/x86_64-linux-gnu/libm.so.6"));
        assert!(!c.files.contains_key("usr/bin/dbclient"));
    }

    #[test]
    fn missing_library_names_who_needs_it() {
        let mut f = debian();
        f.needs(
            "dropbear-bin",
            "usr/sbin/dropbear",
            &["libnothere.so.3"],
            None,
        );
        let err = resolve(&mut f, "dropbear-bin", &["usr/sbin/dropbear"]).unwrap_err();
        assert!(
            matches!(&err, BuildError::SharedLibraryNotFound { library, needed_by }
                if library == "libnothere.so.3" && needed_by == "dropbear-bin:/usr/sbin/dropbear"),
            "{err}"
        );
    }

    #[test]
    fn missing_program_and_loader_are_errors() {
        let mut f = debian();
        assert!(matches!(
            resolve(&mut f, "dropbear-bin", &["usr/sbin/sshd"]),
            Err(BuildError::PackageFileMissing { what, .. }) if what == "usr/sbin/sshd"
        ));
        assert!(matches!(
            resolve(&mut f, "no-such-package", &["usr/sbin/dropbear"]),
            Err(BuildError::PackageFileMissing { .. })
        ));
        f.needs(
            "dropbear-bin",
            "usr/sbin/dropbear",
            &[],
            Some("/lib/ld-musl-x86_64.so.1"),
        );
        assert!(matches!(
            resolve(&mut f, "dropbear-bin", &["usr/sbin/dropbear"]),
            Err(BuildError::LoaderNotFound { loader, .. }) if loader == "/lib/ld-musl-x86_64.so.1"
        ));
    }

    #[test]
    fn a_library_outside_the_search_depth_is_not_found() {
        let mut f = Fake::default();
        f.package("a", &["b"], &["usr/bin/a"], &[]);
        f.needs("a", "usr/bin/a", &["libe.so.1"], None);
        f.package("b", &["c"], &[], &[]);
        f.package("c", &["d"], &[], &[]);
        f.package("d", &["e"], &[], &[]);
        f.package("e", &[], &["usr/lib/libe.so.1"], &[]);
        assert!(matches!(
            resolve(&mut f, "a", &["usr/bin/a"]),
            Err(BuildError::SharedLibraryNotFound { .. })
        ));
        assert!(!f.trees_read.iter().any(|p| p == "e"));
        // One level closer, it is.
        f.package("c", &["e"], &[], &[]);
        let c = resolve(&mut f, "a", &["usr/bin/a"]).unwrap();
        assert_eq!(c.files["usr/lib/libe.so.1"].package, "e");
    }

    #[test]
    fn symlinks_resolve_within_the_package() {
        let tree = PackageTree {
            files: BTreeMap::from([("lib/x/libz.so.1.2".to_string(), 0o644)]),
            symlinks: BTreeMap::from([
                ("lib/x/libz.so.1".to_string(), "libz.so.1.2".to_string()),
                (
                    "lib64/libz.so".to_string(),
                    "../lib/x/./libz.so.1".to_string(),
                ),
                ("lib/loop".to_string(), "loop".to_string()),
                ("lib/up".to_string(), "../../../etc/passwd".to_string()),
            ]),
        };
        assert_eq!(
            tree.resolve("lib/x/libz.so.1").as_deref(),
            Some("lib/x/libz.so.1.2")
        );
        assert_eq!(
            tree.resolve("/lib64/libz.so").as_deref(),
            Some("lib/x/libz.so.1.2")
        );
        assert_eq!(tree.resolve("lib/loop"), None);
        assert_eq!(tree.resolve("lib/up"), None);
        assert_eq!(tree.resolve("lib/x/nothing"), None);
    }

    #[test]
    fn tree_keeps_libraries_and_programs_only() {
        for (path, wanted) in [
            ("lib/x86_64-linux-gnu/libc.so.6", true),
            ("usr/lib/x86_64-linux-gnu/libz.so.1.2.13", true),
            ("usr/sbin/dropbear", true),
            ("usr/bin/dropbearkey", true),
            ("lib64/ld-linux-x86-64.so.2", true),
            ("usr/lib/x86_64-linux-gnu/gconv/UTF-16.so", false),
            ("usr/share/doc/libc6/copyright", false),
            ("lib/x86_64-linux-gnu/libc.a", false),
            ("etc/ld.so.conf.d/x86_64-linux-gnu.conf", false),
            ("libc.so.6", false),
        ] {
            assert_eq!(PackageTree::wants(path), wanted, "{path}");
        }
    }
}
