//! The builder's error type. Variants are named for the operation that failed; messages don't
//! repeat their `#[source]`, so printing the chain once (as the binary does) reads cleanly.

use std::path::PathBuf;
use std::process::ExitStatus;

/// Why building the guest image failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Host tools the build runs are not installed; `packages` are the Debian packages that
    /// provide them.
    #[error("missing host tools: {tools}; install them with `apt-get install {}`", packages.join(" "))]
    MissingHostTools {
        tools: String,
        packages: Vec<String>,
    },

    /// apt does not know a package at all, which on Debian means the package lists were never
    /// downloaded on this machine.
    #[error("apt knows no package {package}; the apt lists are probably missing: run `apt-get update` first")]
    AptListsMissing { package: String },

    #[error("resolving the kernel package behind linux-image-amd64")]
    ResolveKernelPackage {
        #[source]
        source: CommandError,
    },

    #[error("`apt-cache depends linux-image-amd64` named no linux-image-<abi>-amd64 package")]
    NoKernelDependency,

    #[error("querying apt for package {package}")]
    QueryPackage {
        package: String,
        #[source]
        source: CommandError,
    },

    #[error("apt's record for package {package} has no {field} field")]
    PackageRecordField {
        package: String,
        field: &'static str,
    },

    #[error("downloading package {package}")]
    DownloadPackage {
        package: String,
        #[source]
        source: CommandError,
    },

    #[error("apt-get download of {package} succeeded but {path} is missing")]
    DownloadedFileMissing { package: String, path: PathBuf },

    #[error("extracting package {package}")]
    ExtractPackage {
        package: String,
        #[source]
        source: CommandError,
    },

    #[error("reading the file tree of package {package}")]
    ReadPackageArchive {
        package: String,
        #[source]
        source: std::io::Error,
    },

    #[error("package {package} contains no {what}")]
    PackageFileMissing { package: String, what: String },

    #[error("reading the .modinfo section of kernel module {path}")]
    ParseModule {
        path: String,
        #[source]
        source: crate::modules::ModinfoError,
    },

    #[error("kernel module {module} is neither in the kernel package nor built in")]
    ModuleNotFound { module: String },

    #[error("kernel module {module} is part of a dependency cycle")]
    ModuleDependencyCycle { module: String },

    #[error("kernel module {module} is shipped compressed ({path}), which the guest's insmod cannot load")]
    CompressedModule { module: String, path: String },

    #[error("creating directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("reading cache file {path}")]
    ReadCache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("parsing cache file {path}")]
    ParseCache {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("serializing the kernel module index")]
    SerializeModuleIndex {
        #[source]
        source: serde_json::Error,
    },

    #[error("serializing the list of a package's libraries and programs")]
    SerializeCacheIndex {
        #[source]
        source: serde_json::Error,
    },

    #[error("reading the dynamic section of {path} from package {package}")]
    ParseElf {
        package: String,
        path: String,
        #[source]
        source: crate::elf::ElfError,
    },

    #[error("shared library {library}, needed by {needed_by}, is in neither that package nor its dependencies")]
    SharedLibraryNotFound { library: String, needed_by: String },

    #[error("dynamic loader {loader}, needed by {needed_by}, is in neither that package nor its dependencies")]
    LoaderNotFound { loader: String, needed_by: String },

    #[error("writing cache file {path}")]
    WriteCache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("listing the applets of the busybox binary")]
    ListBusyboxApplets {
        #[source]
        source: CommandError,
    },

    #[error("the busybox binary lacks applets the guest's scripts use: {applets}")]
    MissingApplets { applets: String },

    #[error("writing the initramfs {path}")]
    WriteInitramfs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("creating the FAT boot filesystem")]
    MakeFilesystem {
        #[source]
        source: CommandError,
    },

    #[error("copying boot files into the FAT filesystem")]
    CopyBootFiles {
        #[source]
        source: CommandError,
    },

    #[error("reading the syslinux MBR boot code {path}")]
    ReadMbrCode {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("writing the raw disk image {path}")]
    WriteDiskImage {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("installing the syslinux boot loader")]
    InstallBootloader {
        #[source]
        source: CommandError,
    },

    #[error("converting the raw disk image to qcow2")]
    ConvertImage {
        #[source]
        source: CommandError,
    },

    #[error("reading boot file {path}")]
    ReadBootFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("hashing the disk image {path}")]
    HashImage {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("reading the image manifest {path}")]
    ReadManifest {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("parsing the image manifest {path}")]
    ParseManifest {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("writing output file {path}")]
    WriteOutput {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("serializing the image manifest")]
    SerializeManifest {
        #[source]
        source: serde_json::Error,
    },
}

/// An external command that could not be run or that failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("could not start {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{program} {status}: {stderr}")]
    Failed {
        program: String,
        status: ExitStatus,
        /// The command's stderr, trimmed; this is usually the only useful diagnostic.
        stderr: String,
    },
}
