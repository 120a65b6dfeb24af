//! Failures of VM operations, with Proxmox's wording where clients know it.

use std::collections::BTreeMap;

use crate::qemu::cmdline::CmdlineError;
use crate::qemu::process::ProcessError;
use crate::storage::StorageError;
use crate::vm::forwards::ForwardError;

/// A VM operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("Configuration file 'nodes/{node}/qemu-server/{vmid}.conf' does not exist")]
    NoConfig { node: String, vmid: u32 },
    #[error("VM {0} already exists")]
    Exists(u32),
    #[error("VM is locked ({0})")]
    Locked(String),
    #[error("can't lock file 'lock-{0}.conf' - got timeout")]
    LockTimeout(u32),
    #[error("VM {0} already running")]
    Running(u32),
    #[error("VM {0} not running")]
    NotRunning(u32),
    #[error("you can't start a vm if it's a template")]
    Template,
    #[error("checksum mismatch (file change by other user?)")]
    DigestMismatch,
    #[error("can't remove VM {0} - protection mode enabled")]
    Protected(u32),
    #[error("VM {0} is running - destroy failed")]
    RunningDestroy(u32),
    #[error("VM quit/powerdown failed - got timeout")]
    ShutdownTimeout,
    #[error("parameter verification failed")]
    Params(BTreeMap<String, String>),
    #[error("{0}")]
    Refused(String),
    #[error("unable to read config of VM {vmid}")]
    ReadConfig {
        vmid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("unable to parse config of VM {vmid}: {msg}")]
    ParseConfig { vmid: u32, msg: String },
    #[error("unable to write config of VM {vmid}")]
    WriteConfig {
        vmid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config of VM {vmid}: {msg}")]
    InvalidConfig { vmid: u32, msg: String },
    #[error("storage operation failed")]
    Storage(#[from] StorageError),
    #[error("start failed")]
    Launch(#[source] ProcessError),
    #[error("failed to stop QEMU")]
    Signal(#[source] ProcessError),
    #[error("invalid VM configuration")]
    Cmdline(#[from] CmdlineError),
    #[error("QMP command failed")]
    Qmp(#[from] hemiron_qmp::QmpError),
    #[error("port forwarding")]
    Forward(#[from] ForwardError),
    #[error("migration aborted: {0}")]
    Migration(String),
    #[error("hook script failed: {0}")]
    Hook(String),
    #[error("failed to prepare runtime files")]
    Runtime(#[source] std::io::Error),
}

impl VmError {
    pub fn param(name: &str, msg: impl Into<String>) -> Self {
        let mut m = BTreeMap::new();
        m.insert(name.to_string(), msg.into());
        VmError::Params(m)
    }
}
