//! The Hemiron node agent: real QEMU virtual machines behind a Proxmox VE–compatible API.
//!
//! `run` starts the agent: it takes the data dir's lock, chooses the accelerator, re-adopts
//! VMs whose QEMU survived a restart, and serves `/api2/json/...` until SIGINT or SIGTERM.
//! VMs keep running when the agent stops.

#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod cluster;
pub mod fsutil;
pub mod hoststats;
pub mod paths;
pub mod qemu;
pub mod storage;
pub mod tasks;
pub mod tls;
pub mod vm;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use qemu::accel::{Accel, AccelChoice};

use auth::Authenticator;
use paths::DataDir;
use storage::Storage;
use tasks::TaskManager;
use vm::forwards::Forwards;
use vm::{MachineDefaults, VmManager};

/// The short git revision Proxmox reports as `repoid` (hex, as its schema requires).
pub const REPOID: &str = match option_env!("HEMIRON_REPOID") {
    Some(r) => r,
    None => "00000000",
};

/// Joins an error and its sources into one line: `outer: inner: innermost`.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}

/// How to run the agent (from the command line).
#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub name: String,
    pub http: bool,
    pub accel: AccelChoice,
    pub shared_storage: Option<PathBuf>,
    /// The cluster file naming every node of the cluster ([`cluster`]).
    pub cluster_config: Option<PathBuf>,
}

/// Settings of the last agent start, for CLI tools that read the data dir.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    pub name: String,
    pub accel: Accel,
    pub shared_storage: Option<PathBuf>,
    pub machine_pc: String,
    pub machine_q35: String,
    pub qemu_version: String,
}

/// Failure to start the agent.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("invalid node name '{0}'")]
    BadName(String),
    #[error("failed to create the data directory {path}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another agent is running on data dir {0}")]
    AlreadyRunning(PathBuf),
    #[error("QEMU is not usable")]
    Qemu(#[source] std::io::Error),
    #[error("failed to set up authentication")]
    Auth(#[from] auth::AuthOpenError),
    #[error("failed to set up TLS")]
    Tls(#[from] tls::TlsError),
    #[error("failed to open the task registry")]
    Tasks(#[from] tasks::TaskError),
    #[error("failed to set up storage")]
    Storage(#[from] storage::StorageError),
    #[error("failed to open the port forward table")]
    Forwards(#[from] vm::forwards::ForwardError),
    #[error("failed to listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("node settings in {0} are missing; start the agent once first")]
    NoSettings(PathBuf),
    #[error("VM command line")]
    Vm(#[from] vm::VmError),
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
}

/// Everything the API handlers share.
#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub data_dir: DataDir,
    pub auth: Authenticator,
    pub tasks: TaskManager,
    pub vms: Arc<VmManager>,
    pub accel: Accel,
    pub accel_reason: String,
    pub fingerprint: Option<String>,
    pub host: hoststats::HostStats,
    /// The cluster this node belongs to; `None`: it is its own cluster.
    pub cluster: Option<cluster::Cluster>,
    /// The address the API listens on; incoming migrations listen on its IP.
    pub listen: std::net::SocketAddr,
}

/// The host name's first label, the default node name as in Proxmox.
pub fn default_node_name() -> String {
    let uname = rustix::system::uname();
    let host = uname.nodename().to_string_lossy();
    host.split('.').next().unwrap_or("localhost").to_string()
}

/// What the installed QEMU is: version and the versioned machine types of `pc` and `q35`.
async fn probe_qemu() -> Result<(String, MachineDefaults), NodeError> {
    let bin = qemu::process::qemu_binary();
    let run = |args: &'static [&'static str]| {
        let bin = bin.clone();
        async move {
            let out = tokio::process::Command::new(&bin)
                .args(args)
                .output()
                .await
                .map_err(NodeError::Qemu)?;
            Ok::<String, NodeError>(String::from_utf8_lossy(&out.stdout).into_owned())
        }
    };
    let version_text = run(&["--version"]).await?;
    let version = version_text
        .split_whitespace()
        .skip_while(|w| *w != "version")
        .nth(1)
        .unwrap_or("0.0.0")
        .to_string();
    let machines = run(&["-machine", "help"]).await?;
    let alias_of = |name: &str, fallback: &str| {
        machines
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .and_then(|l| l.split("(alias of ").nth(1))
            .map(|s| s.trim_end_matches(')').to_string())
            .unwrap_or_else(|| fallback.to_string())
    };
    Ok((
        version,
        MachineDefaults {
            pc: alias_of("pc", "pc"),
            q35: alias_of("q35", "q35"),
        },
    ))
}

/// A node name as Proxmox allows it (a DNS label).
pub(crate) fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn check_node_name(name: &str) -> Result<(), NodeError> {
    if valid_node_name(name) {
        Ok(())
    } else {
        Err(NodeError::BadName(name.to_string()))
    }
}

/// Starts a VM as a `qmstart` task of `root@pam` (host boot, restart after a crash).
fn spawn_start(
    tasks: &TaskManager,
    vms: Arc<VmManager>,
    vmid: u32,
) -> Result<hemiron_pve::upid::Upid, tasks::TaskError> {
    tasks.spawn(
        "qmstart",
        &vmid.to_string(),
        auth::ROOT_USER,
        move |ctx| async move {
            vms.start(vmid, vm::lifecycle::StartOptions::default(), &ctx)
                .await?;
            Ok(())
        },
    )
}

/// Starts VMs with `onboot=1`, in `startup` order, when the agent is the first one since the
/// host booted (so an agent restart does not start VMs an operator stopped).
async fn start_onboot_vms(node: &Arc<Node>) {
    let marker = node.data_dir.root().join("last-boot-id");
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let previous = std::fs::read_to_string(&marker).unwrap_or_default();
    if boot_id.trim() == previous.trim() {
        return;
    }
    let _ = fsutil::write_atomic(&marker, boot_id.as_bytes(), 0o644);
    let mut candidates = Vec::new();
    for vmid in node.vms.vmids() {
        let Ok(loaded) = node.vms.store.load(vmid) else {
            continue;
        };
        if loaded.conf.get("onboot") != Some("1") || node.vms.running(vmid).is_some() {
            continue;
        }
        let startup = loaded
            .conf
            .get("startup")
            .and_then(|s| hemiron_pve::views::Startup::parse(s).ok())
            .unwrap_or_default();
        candidates.push((
            startup.order.unwrap_or(u64::MAX),
            vmid,
            startup.up.unwrap_or(0),
        ));
    }
    candidates.sort();
    for (_, vmid, up) in candidates {
        info!(vmid, "starting VM at host boot (onboot)");
        match spawn_start(&node.tasks, node.vms.clone(), vmid) {
            Ok(upid) => node.tasks.wait(&upid.to_string()).await,
            Err(e) => warn!(vmid, error = %e, "failed to start onboot VM"),
        }
        if up > 0 {
            tokio::time::sleep(std::time::Duration::from_secs(up)).await;
        }
    }
}

/// Runs the agent until SIGINT or SIGTERM.
pub async fn run(opts: NodeOptions) -> Result<(), NodeError> {
    check_node_name(&opts.name)?;
    let cluster = opts
        .cluster_config
        .as_deref()
        .map(|path| cluster::Cluster::open(path, &opts.name))
        .transpose()?;
    let data = DataDir::new(&opts.data_dir);
    data.create_all().map_err(|source| NodeError::DataDir {
        path: opts.data_dir.clone(),
        source,
    })?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(data.lock_file())
        .map_err(|source| NodeError::DataDir {
            path: data.lock_file(),
            source,
        })?;
    {
        use fs4::fs_std::FileExt;
        if !lock.try_lock_exclusive().unwrap_or(false) {
            return Err(NodeError::AlreadyRunning(opts.data_dir.clone()));
        }
    }
    let _ = std::fs::remove_file(data.addr_file());
    let (qemu_version, machines) = probe_qemu().await?;
    let (accel, accel_reason) = qemu::accel::choose(opts.accel, &data.run_dir()).await;
    info!(accel = accel.as_str(), reason = %accel_reason, qemu = %qemu_version, "accelerator chosen");
    let settings = Settings {
        name: opts.name.clone(),
        accel,
        shared_storage: opts.shared_storage.clone(),
        machine_pc: machines.pc.clone(),
        machine_q35: machines.q35.clone(),
        qemu_version: qemu_version.clone(),
    };
    let settings_json = serde_json::to_vec_pretty(&settings).unwrap_or_default();
    fsutil::write_atomic(&data.settings_file(), &settings_json, 0o644).map_err(|source| {
        NodeError::Write {
            path: data.settings_file(),
            source,
        }
    })?;
    let auth = Authenticator::open(&data.auth_dir())?;
    let cert = if opts.http {
        None
    } else {
        Some(tls::load_or_create(&data.tls_dir(), &opts.name)?)
    };
    let tasks = TaskManager::open(&opts.name, &data.tasks_dir())?;
    let storage = Storage::new(data.local_storage(), opts.shared_storage.clone());
    storage.create_dirs()?;
    let forwards = Forwards::open(data.forwards_file())?;
    let vms = VmManager::new(&opts.name, data.clone(), storage, forwards, accel, machines);
    let _ = vms.qemu_version.set(qemu_version);
    {
        let tasks = tasks.clone();
        let weak = Arc::downgrade(&vms);
        let _ = vms.autostart.set(vm::Restarter(Box::new(move |vmid| {
            let Some(vms) = weak.upgrade() else {
                return;
            };
            if let Err(e) = spawn_start(&tasks, vms, vmid) {
                warn!(vmid, error = %e, "failed to restart crashed VM");
            }
        })));
    }
    vms.adopt_all().await;
    let node = Arc::new(Node {
        name: opts.name.clone(),
        data_dir: data.clone(),
        auth,
        tasks,
        vms,
        accel,
        accel_reason,
        fingerprint: cert.as_ref().map(|c| c.fingerprint.clone()),
        host: hoststats::HostStats::new(),
        cluster,
        listen: opts.listen,
    });
    let tls_config = cert.as_ref().map(tls::server_config).transpose()?;
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|source| NodeError::Listen {
            addr: opts.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| NodeError::Listen {
        addr: opts.listen,
        source,
    })?;
    let scheme = if opts.http { "http" } else { "https" };
    let url = format!("{scheme}://{addr}/api2/json");
    fsutil::write_atomic(&data.addr_file(), url.as_bytes(), 0o644).map_err(|source| {
        NodeError::Write {
            path: data.addr_file(),
            source,
        }
    })?;
    info!(%url, node = %opts.name, fingerprint = ?node.fingerprint, "node agent listening");
    println!("hemiron node {} listening on {url}", opts.name);
    if let Some(fp) = &node.fingerprint {
        println!("certificate fingerprint (SHA-256): {fp}");
    }

    let shutdown = CancellationToken::new();
    let server = tokio::spawn(api::server::serve(
        listener,
        api::router(node.clone()),
        tls_config,
        shutdown.clone(),
    ));
    {
        let node = node.clone();
        tokio::spawn(async move { start_onboot_vms(&node).await });
    }
    wait_for_signal().await;
    info!("shutting down (running VMs keep running)");
    shutdown.cancel();
    let _ = server.await;
    let _ = std::fs::remove_file(data.addr_file());
    drop(lock);
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The QEMU command line of a VM, as a start on this node would run it (`qm showcmd`).
pub async fn showcmd(data_dir: &Path, vmid: u32) -> Result<Vec<String>, NodeError> {
    let data = DataDir::new(data_dir);
    let raw = std::fs::read(data.settings_file())
        .map_err(|_| NodeError::NoSettings(data.settings_file()))?;
    let settings: Settings =
        serde_json::from_slice(&raw).map_err(|_| NodeError::NoSettings(data.settings_file()))?;
    let storage = Storage::new(data.local_storage(), settings.shared_storage.clone());
    let forwards = Forwards::open(data.forwards_file())?;
    let vms = VmManager::new(
        &settings.name,
        data,
        storage,
        forwards,
        settings.accel,
        MachineDefaults {
            pc: settings.machine_pc,
            q35: settings.machine_q35,
        },
    );
    let loaded = vms.store.load(vmid)?;
    Ok(vms.command_for(vmid, &loaded.conf)?.argv)
}
