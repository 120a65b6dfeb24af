//! Layout of a node's data directory.
//!
//! ```text
//! DATA/node.json            settings of the last agent start, read by CLI tools (showcmd)
//! DATA/node.lock            held (flock) by the running agent: one agent per data dir
//! DATA/node.addr            the URL the agent listens on, written once it is bound
//! DATA/auth/                users, API tokens (hashes only) and the ticket signing key
//! DATA/tls/                 the self-signed certificate made on first start
//! DATA/qemu-server/N.conf   one Proxmox-format config per VM: the VM's source of truth
//! DATA/run/                 runtime files of running VMs (pid, QMP socket, VNC socket…)
//! DATA/tasks/               task logs, the active list and the archive index
//! DATA/storage/local/       the default directory storage pool
//! DATA/forwards.json        loopback ports forwarded to each VM's guest ports
//! ```

use std::path::{Path, PathBuf};

/// Paths inside one node data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn settings_file(&self) -> PathBuf {
        self.root.join("node.json")
    }

    pub fn lock_file(&self) -> PathBuf {
        self.root.join("node.lock")
    }

    pub fn addr_file(&self) -> PathBuf {
        self.root.join("node.addr")
    }

    pub fn auth_dir(&self) -> PathBuf {
        self.root.join("auth")
    }

    pub fn tls_dir(&self) -> PathBuf {
        self.root.join("tls")
    }

    pub fn config_dir(&self) -> PathBuf {
        self.root.join("qemu-server")
    }

    pub fn config_file(&self, vmid: u32) -> PathBuf {
        self.config_dir().join(format!("{vmid}.conf"))
    }

    pub fn run_dir(&self) -> PathBuf {
        self.root.join("run")
    }

    pub fn tasks_dir(&self) -> PathBuf {
        self.root.join("tasks")
    }

    pub fn local_storage(&self) -> PathBuf {
        self.root.join("storage").join("local")
    }

    pub fn forwards_file(&self) -> PathBuf {
        self.root.join("forwards.json")
    }

    /// Creates the directories an agent needs.
    pub fn create_all(&self) -> std::io::Result<()> {
        for dir in [
            self.root.clone(),
            self.auth_dir(),
            self.tls_dir(),
            self.config_dir(),
            self.run_dir(),
            self.tasks_dir(),
            self.local_storage(),
        ] {
            std::fs::create_dir_all(&dir)?;
        }
        Ok(())
    }
}
