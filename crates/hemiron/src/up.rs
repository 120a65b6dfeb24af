//! `hemiron up`: everything on one machine. A node agent (a child process, on its own
//! loopback HTTPS port) and the control plane (in this process, SQLite in the data dir); the
//! control plane reaches the node only through the Proxmox API client, pinned to the node's
//! certificate fingerprint. On first run it registers the node as cluster `local`, makes a
//! plan, a tenant, an admin API token for the CLI and an SSH key, and — in the background —
//! turns the guest image into the template `hemiron-guest`. Re-running on the same data dir
//! reuses all of it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hemiron_server::authz::{Principal, Role, Scopes, Via};
use hemiron_server::fleet::clusters::{self, NewCluster};
use hemiron_server::service::{Caller, Services};
use hemiron_server::store::{self, fleet, identity, tenancy};

/// Template name `hemiron up` makes from the guest image.
pub const TEMPLATE: &str = "hemiron-guest";
const CLUSTER: &str = "local";
const TOKEN_ID: &str = "root@pam!hemiron-up";

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Where everything is kept (default: $XDG_DATA_HOME/hemiron or ~/.local/share/hemiron).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The control plane's address (plain HTTP unless --tls).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The local node agent's HTTPS address.
    #[arg(long, default_value = "127.0.0.1:8006")]
    pub node_listen: SocketAddr,
    /// Serve the control plane over HTTPS (a self-signed certificate in the data dir).
    #[arg(long)]
    pub tls: bool,
    /// Password of the first `admin` user (else one is generated and printed once).
    #[arg(long, env = "HEMIRON_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,
    /// Accelerator for VMs.
    #[arg(long, default_value = "auto")]
    pub accel: hemiron_node::AccelChoice,
    /// The deploy proxy's address, written into its configuration file when that file is
    /// made (DATA/proxy/proxy.toml; later, the file decides).
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub proxy_listen: SocketAddr,
    /// The deploy proxy's admin API and /metrics.
    #[arg(long, default_value = "127.0.0.1:9901")]
    pub proxy_admin: SocketAddr,
}

/// The deploy proxy's configuration, made on first run: a listener and, commented out, an
/// example app to copy.
fn proxy_config(dir: &Path, listen: SocketAddr) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("proxy.toml");
    if !path.exists() {
        let text = format!(
            "# The deploy proxy of `hemiron up`. Declare apps and their versions here: the proxy\n\
             # reloads this file when it changes. Then `hemiron rollout start APP VERSION`.\n\
             [proxy]\naccess_log = \"off\"\n\n[[listeners]]\naddress = \"{listen}\"\n\n\
             # [apps.myapp]\n# hosts = [\"myapp.localhost\"]\n# stable = \"v1\"\n\
             # [apps.myapp.versions.v1]\n# endpoints = [\"127.0.0.1:3000\"]\n\
             # [apps.myapp.versions.v2]\n# endpoints = [\"127.0.0.1:3001\"]\n"
        );
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(path)
}

fn default_data_dir() -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("hemiron")
}

/// The node agent child; stopped (SIGTERM, then SIGKILL) when dropped. VMs outlive it.
struct NodeChild(Child);

impl Drop for NodeChild {
    fn drop(&mut self) {
        let pid = self.0.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().context("no parent directory")?;
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o600))?;
    tmp.write_all(text.as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)?;
    Ok(())
}

/// The node's API token for the control plane: kept in `DATA/up/node-token`, made anew if
/// the file or the token is gone.
fn node_token(data: &Path, node_dir: &Path) -> anyhow::Result<String> {
    let file = data.join("up").join("node-token");
    let creds = hemiron_node::auth::CredentialStore::new(&node_dir.join("auth"));
    if let Ok(secret) = std::fs::read_to_string(&file) {
        let secret = secret.trim().to_string();
        let known = creds
            .load()
            .ok()
            .and_then(|c| c.tokens.get(TOKEN_ID).cloned());
        if known.is_some_and(|t| {
            t.secret_sha256 == hemiron_node::auth::store::hash_token_secret(&secret)
        }) {
            return Ok(secret);
        }
    }
    let _ = creds.remove_token(TOKEN_ID);
    let secret = creds
        .add_token(TOKEN_ID, "the control plane of hemiron up")
        .context("cannot make the node's API token")?;
    write_private(&file, &secret)?;
    Ok(secret)
}

fn start_node(
    args: &UpArgs,
    data: &Path,
    node_dir: &Path,
    name: &str,
) -> anyhow::Result<(NodeChild, String)> {
    let log_path = data.join("logs").join("node.log");
    std::fs::create_dir_all(log_path.parent().context("log dir")?)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?;
    let addr_file = node_dir.join("node.addr");
    let _ = std::fs::remove_file(&addr_file);
    let exe = std::env::current_exe().context("cannot find the hemiron binary")?;
    let accel = match args.accel {
        hemiron_node::AccelChoice::Auto => "auto",
        hemiron_node::AccelChoice::Kvm => "kvm",
        hemiron_node::AccelChoice::Tcg => "tcg",
    };
    let child = Command::new(exe)
        .args(["node", "--name", name, "--accel", accel, "--listen"])
        .arg(args.node_listen.to_string())
        .arg("--data-dir")
        .arg(node_dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start the node agent")?;
    let mut child = NodeChild(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = child.0.try_wait() {
            bail!(
                "the node agent exited ({status}); see {}",
                log_path.display()
            );
        }
        if let Ok(url) = std::fs::read_to_string(&addr_file) {
            if !url.trim().is_empty() {
                return Ok((child, url.trim().to_string()));
            }
        }
        if Instant::now() > deadline {
            bail!(
                "the node agent did not start within 60 s; see {}",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The admin user acting (the set-up steps run as them, so they are audited as theirs).
async fn as_admin(svc: &Services) -> anyhow::Result<Caller> {
    let u = identity::user_by_name(&svc.db, hemiron_server::server::ADMIN)
        .await?
        .context("the admin user is missing")?;
    Ok(Caller {
        principal: Some(Principal {
            user_id: u.id,
            username: u.username,
            role: Role::Admin,
            tenant_id: None,
            scopes: Scopes::all(),
            via: Via::Token {
                id: "hemiron-up".into(),
            },
        }),
        client: "hemiron up".into(),
    })
}

/// Registers (or updates) the local node as cluster `local`.
async fn register_cluster(
    svc: &Services,
    caller: &Caller,
    url: &str,
    token: &str,
    fingerprint: &str,
) -> anyhow::Result<()> {
    match fleet::cluster(&svc.db, CLUSTER).await? {
        Some(mut c) => {
            if c.endpoint != url
                || c.token_secret != token
                || c.fingerprint.as_deref() != Some(fingerprint)
            {
                c.endpoint = url.to_string();
                c.token_id = TOKEN_ID.to_string();
                c.token_secret = token.to_string();
                c.fingerprint = Some(fingerprint.to_string());
                c.updated_at = store::now_ms();
                let mut tx = svc.db.begin().await?;
                fleet::update_cluster(&mut tx, &c).await?;
                tx.commit().await?;
            }
            if let Some(c) = fleet::cluster(&svc.db, CLUSTER).await? {
                clusters::refresh(svc, &c).await;
            }
        }
        None => {
            clusters::create(
                svc,
                caller,
                NewCluster {
                    name: CLUSTER.into(),
                    endpoint: url.to_string(),
                    token_id: TOKEN_ID.into(),
                    token_secret: token.to_string(),
                    fingerprint: Some(fingerprint.to_string()),
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!(hemiron_server::error_chain(&e)))?;
        }
    }
    Ok(())
}

/// A plan and a tenant to start with.
async fn defaults(svc: &Services, caller: &Caller) -> anyhow::Result<()> {
    use hemiron_server::tenancy as t;
    if tenancy::plan(&svc.db, "small").await?.is_none() {
        let size = t::Size {
            vcpus: 1,
            memory_mib: 256,
            disk_gib: 2,
        };
        t::create_plan(svc, caller, "small", size, None)
            .await
            .map_err(|e| anyhow::anyhow!(hemiron_server::error_chain(&e)))?;
    }
    let tenants = tenancy::list_tenants(&svc.db, None, None, 500).await?;
    if !tenants.iter().any(|x| x.name == "default") {
        let quotas = t::Quotas {
            vcpus: 8,
            memory_mib: 4096,
            disk_gib: 100,
            vms: 10,
        };
        t::create_tenant(svc, caller, "default", quotas)
            .await
            .map_err(|e| anyhow::anyhow!(hemiron_server::error_chain(&e)))?;
    }
    Ok(())
}

/// The CLI config for `hemiron vps …` as admin: `DATA/cli.json`, with a token made once.
async fn cli_config(
    svc: &Services,
    caller: &Caller,
    data: &Path,
    server_url: &str,
) -> anyhow::Result<PathBuf> {
    let path = data.join("cli.json");
    if let Ok(text) = std::fs::read_to_string(&path) {
        if let Ok(saved) = serde_json::from_str::<hemiron_cli::config::Saved>(&text) {
            let live = hemiron_server::identity::auth::authenticate(svc, &saved.token)
                .await
                .ok()
                .flatten()
                .is_some();
            if saved.server == server_url && live {
                return Ok(path);
            }
        }
    }
    let t =
        hemiron_server::identity::tokens::create(svc, caller, "hemiron up CLI", None, Some(366))
            .await
            .map_err(|e| anyhow::anyhow!(hemiron_server::error_chain(&e)))?;
    let saved = hemiron_cli::config::Saved {
        server: server_url.to_string(),
        token: t.secret,
    };
    write_private(&path, &serde_json::to_string_pretty(&saved)?)?;
    Ok(path)
}

/// An SSH key pair for the first VPS (`DATA/ssh/id_ed25519`), made with ssh-keygen.
fn ssh_key(data: &Path) -> Option<PathBuf> {
    let key = data.join("ssh").join("id_ed25519");
    if !key.exists() {
        std::fs::create_dir_all(key.parent()?).ok()?;
        let ok = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "hemiron-up", "-f"])
            .arg(&key)
            .stdin(Stdio::null())
            .status()
            .ok()?
            .success();
        if !ok {
            return None;
        }
    }
    Some(key)
}

/// Builds the guest image and makes it the template `hemiron-guest` on the node, unless the
/// cluster already has it.
async fn ensure_template(svc: Services, data: PathBuf, node: String) -> anyhow::Result<()> {
    let has = |svc: &Services| {
        let db = svc.db.clone();
        async move {
            Ok::<bool, anyhow::Error>(
                fleet::templates(&db)
                    .await?
                    .iter()
                    .any(|t| t.name == TEMPLATE),
            )
        }
    };
    if has(&svc).await? {
        return Ok(());
    }
    println!("hemiron up: building the guest image and template {TEMPLATE:?} in the background…");
    let out = data.join("image");
    let opts = hemiron_guest::BuildOptions {
        out_dir: out.clone(),
        cache_dir: hemiron_guest::default_cache_dir(),
        test_hooks: false,
    };
    let built = tokio::task::spawn_blocking(move || hemiron_guest::build(&opts))
        .await?
        .context("guest image build failed")?;
    let cluster = fleet::cluster(&svc.db, CLUSTER)
        .await?
        .context("no local cluster")?;
    let client = svc.clients.get(&cluster)?;
    let vmid = client.next_id().await?;
    let params = [
        ("vmid", vmid.to_string()),
        ("name", TEMPLATE.to_string()),
        ("memory", "256".to_string()),
        ("net0", "virtio,bridge=vmbr0".to_string()),
        (
            "scsi0",
            format!("local:0,import-from={}", built.disk.display()),
        ),
        ("ide2", "local:cloudinit".to_string()),
        ("ostype", "l26".to_string()),
    ];
    let upid = client.create_vm(&node, &params).await?;
    let status = client.wait_task(&upid, Duration::from_secs(600)).await?;
    if !status.succeeded() {
        bail!("creating the template VM failed: {:?}", status.exitstatus);
    }
    let upid = client.make_template(&node, vmid).await?;
    let status = client.wait_task(&upid, Duration::from_secs(600)).await?;
    if !status.succeeded() {
        bail!("making the template failed: {:?}", status.exitstatus);
    }
    clusters::refresh(&svc, &cluster).await;
    println!("hemiron up: template {TEMPLATE:?} ready (VM {vmid} on {node})");
    Ok(())
}

/// The control plane's TLS configuration: a self-signed certificate kept in `dir` (made on
/// first use), its fingerprint printed so that clients can pin it.
pub fn server_tls(dir: &Path) -> anyhow::Result<std::sync::Arc<rustls::ServerConfig>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let cert = hemiron_node::tls::load_or_create(dir, "localhost")
        .context("cannot make the server certificate")?;
    println!(
        "hemiron server: TLS certificate fingerprint {}",
        cert.fingerprint
    );
    Ok(hemiron_node::tls::server_config(&cert)?)
}

/// Runs everything until SIGINT/SIGTERM.
pub fn run(
    args: UpArgs,
    rt: &tokio::runtime::Runtime,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let data = args.data_dir.clone().unwrap_or_else(default_data_dir);
    std::fs::create_dir_all(&data).with_context(|| format!("cannot create {}", data.display()))?;
    let node_dir = data.join("node");
    let server_dir = data.join("server");
    std::fs::create_dir_all(&node_dir)?;
    let name = hemiron_node::default_node_name();
    let token = node_token(&data, &node_dir)?;
    std::fs::create_dir_all(node_dir.join("tls"))?;
    let cert = hemiron_node::tls::load_or_create(&node_dir.join("tls"), &name)
        .context("cannot make the node's certificate")?;
    let (node_child, node_url) = start_node(&args, &data, &node_dir, &name)?;
    let tls = if args.tls {
        Some(server_tls(&data.join("server").join("tls"))?)
    } else {
        None
    };
    let proxy_dir = data.join("proxy");
    let proxy_opts = hemiron_proxy::ProxyOptions {
        config: proxy_config(&proxy_dir, args.proxy_listen)?,
        state_dir: proxy_dir.join("state"),
        admin: args.proxy_admin,
        admin_token: None,
    };
    rt.block_on(async move {
        let proxy = hemiron_proxy::start(proxy_opts.clone())
            .await
            .with_context(|| format!("the deploy proxy ({}) did not start", proxy_opts.config.display()))?;
        let opts = hemiron_server::server::ServerOptions {
            data_dir: server_dir,
            listen: args.listen,
            database: None,
            admin_password: args.admin_password.clone(),
            settings: Default::default(),
            tls,
        };
        let running = hemiron_server::server::start(opts, shutdown).await?;
        let svc = running.svc.clone();
        let caller = as_admin(&svc).await?;
        register_cluster(&svc, &caller, &node_url, &token, &cert.fingerprint).await?;
        defaults(&svc, &caller).await?;
        let cli = cli_config(&svc, &caller, &data, &running.url).await?;
        let key = ssh_key(&data);
        let key_arg = match &key {
            Some(k) => format!("--ssh-key-file {}.pub", k.display()),
            None => "--ssh-key-file ~/.ssh/id_ed25519.pub".to_string(),
        };
        let exe = std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "hemiron".into());
        let create = format!(
            "HEMIRON_CLI_CONFIG={} {exe} vps create demo --tenant default --plan small --template {TEMPLATE} {key_arg}",
            cli.display()
        );
        let ssh_hint = key
            .as_ref()
            .map(|k| format!("  then run the `ssh -p PORT hemiron@127.0.0.1` line it prints, adding -i {}", k.display()))
            .unwrap_or_default();
        println!();
        println!("Hemiron is up.");
        println!("  API:      {}/api/v1  (docs {}/api/v1/docs, OpenAPI {}/api/v1/openapi.json)", running.url, running.url, running.url);
        println!("  node:     {}  (cluster {CLUSTER:?}, fingerprint {})", node_url.trim_end_matches("/api2/json"), cert.fingerprint);
        println!("  log in:   user admin (its password was printed when it was made, or HEMIRON_ADMIN_PASSWORD)");
        for (_, addr, tls) in &proxy.listeners {
            println!(
                "  proxy:    {}://{addr}  (admin http://{}, token in {}; apps in {})",
                if *tls { "https" } else { "http" },
                proxy.admin,
                proxy
                    .token_file
                    .as_ref()
                    .map_or_else(|| "-".into(), |f| f.display().to_string()),
                proxy_opts.config.display()
            );
        }
        println!("  data:     {}", data.display());
        println!();
        let template_task = {
            let (svc, data, name) = (svc.clone(), data.clone(), name.clone());
            tokio::spawn(async move {
                match ensure_template(svc, data, name).await {
                    Ok(()) => {
                        println!("Create a VPS and SSH into it:");
                        println!("  {create}");
                        println!("{ssh_hint}");
                    }
                    Err(e) => eprintln!("hemiron up: the template could not be made: {e:#}"),
                }
            })
        };
        let result = running.wait().await;
        template_task.abort();
        proxy.shutdown().await;
        result.map_err(anyhow::Error::from)
    })?;
    drop(node_child);
    Ok(())
}
