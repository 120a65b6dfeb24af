//! The `hemiron` binary: parses the command line, sets up logging and the runtime, and runs
//! the chosen role. Everything else lives in the library crates.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

mod up;

// The control plane answers many small requests from several threads (async workers, SQLite
// connection threads); mimalloc spends far less time in allocation locks than glibc's malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "hemiron", version, about = "Self-hosted VPS fleet platform")]
struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info,hemiron_node=debug`.
    #[arg(long, global = true, env = "HEMIRON_LOG", default_value = "info")]
    log: String,
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(flatten)]
    client: hemiron_cli::Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the node agent, or manage a node's data directory.
    Node(NodeCommand),
    /// Run everything on this machine: a node agent, the control plane, a template.
    Up(up::UpArgs),
    /// Run the control plane (multi-tenant API over clusters of nodes).
    Server(ServerArgs),
    /// Run the deploy proxy (versions, canary rollouts, instant rollback).
    Proxy(ProxyArgs),
    #[command(flatten)]
    Client(hemiron_cli::ClientCommand),
    /// Build guest images.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
struct NodeCommand {
    #[command(subcommand)]
    command: Option<NodeSubcommand>,
    #[command(flatten)]
    serve: NodeServeArgs,
}

#[derive(Debug, Args)]
struct NodeServeArgs {
    /// Directory holding the node's state (configs, disks, tasks, credentials).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address to serve the Proxmox VE API on.
    #[arg(long, default_value = "127.0.0.1:8006")]
    listen: SocketAddr,
    /// Node name, as it appears in `/nodes/{node}`.
    #[arg(long)]
    name: Option<String>,
    /// Serve plain HTTP instead of HTTPS (for loopback tests).
    #[arg(long)]
    http: bool,
    /// Accelerator for VMs: auto probes KVM and falls back to TCG.
    #[arg(long, default_value = "auto")]
    accel: hemiron_node::AccelChoice,
    /// Directory of a storage pool shared between nodes (exposed as storage `shared`).
    #[arg(long)]
    shared_storage: Option<PathBuf>,
    /// Cluster file naming every node of the cluster (name, API URL, certificate
    /// fingerprint, API token); read again when it changes.
    #[arg(long)]
    cluster_config: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ServerArgs {
    /// Directory holding the server's state (the SQLite database unless --database is given).
    #[arg(long)]
    data_dir: PathBuf,
    /// Address to serve the API on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Database URL: `postgres://USER:PASSWORD@HOST:PORT/DB` or `sqlite://PATH`
    /// (default: DATA_DIR/hemiron.db).
    #[arg(long, env = "HEMIRON_DATABASE", hide_env_values = true)]
    database: Option<String>,
    /// Password of the first `admin` user, made when the database has no user (otherwise a
    /// password is generated and printed once).
    #[arg(long, env = "HEMIRON_ADMIN_PASSWORD", hide_env_values = true)]
    admin_password: Option<String>,
    /// How often to compare the database with what the clusters report (e.g. 30s, 2m).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    reconcile_interval: std::time::Duration,
    /// How new VPSes are spread over nodes: spread (most free memory first) or pack.
    #[arg(long, default_value = "spread")]
    placement: hemiron_server::fleet::placement::Policy,
    /// vCPUs that may be reserved per physical CPU of a node.
    #[arg(long, default_value_t = 4)]
    cpu_overcommit: i64,
    /// Job workers in this server (0: serve the API only and leave jobs to other servers).
    /// Jobs mostly wait on their cluster; a node drain holds one while its migrations run.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Serve HTTPS with a self-signed certificate made in DATA_DIR/tls on first start.
    #[arg(long)]
    tls: bool,
    /// How long a worker's claim on a job lasts without renewal (renewed every third of it);
    /// a job whose server died is taken over after this.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    job_lease: std::time::Duration,
}

#[derive(Debug, Args)]
struct ProxyArgs {
    /// The configuration file (TOML: listeners, certificates, apps and their versions).
    #[arg(long)]
    config: PathBuf,
    /// Directory for the rollout state, the session-cookie key and the admin token.
    #[arg(long)]
    state_dir: PathBuf,
    /// Address of the admin API and /metrics (keep it on loopback).
    #[arg(long, default_value = "127.0.0.1:9901")]
    admin: SocketAddr,
    /// File holding the admin bearer token (default: STATE_DIR/admin.token, made once).
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum NodeSubcommand {
    /// Manage API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Manage users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Print the QEMU command line of a VM (like `qm showcmd`).
    Showcmd {
        #[arg(long)]
        data_dir: PathBuf,
        vmid: u32,
        /// One argument per line instead of one shell-quoted line.
        #[arg(long)]
        pretty: bool,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create an API token; prints the secret alone on the last line.
    Add {
        #[arg(long)]
        data_dir: PathBuf,
        /// Token id, `USER@REALM!NAME`.
        tokenid: String,
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Remove an API token.
    Remove {
        #[arg(long)]
        data_dir: PathBuf,
        tokenid: String,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create a user or set its password; the password is read from stdin.
    Add {
        #[arg(long)]
        data_dir: PathBuf,
        /// User id, `NAME@REALM` (realm pam or pve).
        userid: String,
    },
}

#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// Build the guest disk image `DIR/hemiron-guest.qcow2` from Debian packages.
    Build {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Include test-only hooks (command execution over HTTP). Never for real use.
        #[arg(long)]
        test_hooks: bool,
        /// Where downloaded .debs and extracted files are cached.
        #[arg(long)]
        cache_dir: Option<PathBuf>,
    },
}

fn init_logging(filter: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Prints an error with its whole chain of causes.
fn report(err: &anyhow::Error) {
    eprintln!("error: {err}");
    for cause in err.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Client(cmd) = cli.command {
        // Client commands log only warnings: their output is for people and scripts.
        init_logging("warn", cli.log_json);
        let result = runtime()
            .map_err(|e| hemiron_cli::CliError::Config(e.to_string()))
            .and_then(|rt| rt.block_on(hemiron_cli::run(cli.client, cmd)));
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(e.exit_code())
            }
        };
    }
    init_logging(&cli.log, cli.log_json);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            report(&err);
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// One worker: a current-thread runtime (no cross-thread wake-ups on the request path);
/// more: a work-stealing one; 0: one worker per CPU.
fn proxy_runtime(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let rt = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if workers > 1 {
            b.worker_threads(workers);
        }
        b.enable_all().build()?
    };
    Ok(rt)
}

fn run(command: Command) -> anyhow::Result<()> {
    use anyhow::Context;
    match command {
        Command::Image {
            command:
                ImageCommand::Build {
                    out,
                    test_hooks,
                    cache_dir,
                },
        } => {
            let opts = hemiron_guest::BuildOptions {
                out_dir: out,
                cache_dir: cache_dir.unwrap_or_else(hemiron_guest::default_cache_dir),
                test_hooks,
            };
            let built = hemiron_guest::build(&opts).context("guest image build failed")?;
            println!("{}", built.disk.display());
            Ok(())
        }
        Command::Node(NodeCommand {
            command: Some(sub), ..
        }) => run_node_subcommand(sub),
        Command::Client(_) => Ok(()),
        Command::Proxy(args) => {
            let admin_token = match &args.admin_token_file {
                Some(f) => Some(
                    std::fs::read_to_string(f)
                        .with_context(|| format!("cannot read {}", f.display()))?,
                ),
                None => None,
            };
            // The worker count is the configuration's: read it before building the runtime.
            let config = hemiron_proxy::config::load(&args.config)?;
            let rt = proxy_runtime(config.proxy.workers)?;
            let opts = hemiron_proxy::ProxyOptions {
                config: args.config,
                state_dir: args.state_dir,
                admin: args.admin,
                admin_token,
            };
            rt.block_on(hemiron_proxy::run(opts, shutdown_signal()))?;
            Ok(())
        }
        Command::Up(args) => {
            let rt = runtime()?;
            up::run(args, &rt, shutdown_signal())
        }
        Command::Server(args) => {
            let tls = if args.tls {
                Some(up::server_tls(&args.data_dir.join("tls"))?)
            } else {
                None
            };
            let opts = hemiron_server::server::ServerOptions {
                tls,
                data_dir: args.data_dir,
                listen: args.listen,
                database: args.database,
                admin_password: args.admin_password,
                settings: hemiron_server::service::Settings {
                    reconcile_interval: args.reconcile_interval,
                    placement: args.placement,
                    cpu_overcommit: args.cpu_overcommit,
                    workers: args.workers,
                    job_lease: args.job_lease,
                    clock: hemiron_server::backups::clock::Clock::from_env()?,
                    ..Default::default()
                },
            };
            runtime()?.block_on(hemiron_server::server::run(opts, shutdown_signal()))?;
            Ok(())
        }
        Command::Node(NodeCommand {
            command: None,
            serve,
        }) => {
            let data_dir = serve
                .data_dir
                .context("--data-dir is required to run the node agent")?;
            let name = match serve.name {
                Some(n) => n,
                None => hemiron_node::default_node_name(),
            };
            let opts = hemiron_node::NodeOptions {
                data_dir,
                listen: serve.listen,
                name,
                http: serve.http,
                accel: serve.accel,
                shared_storage: serve.shared_storage,
                cluster_config: serve.cluster_config,
            };
            runtime()?.block_on(hemiron_node::run(opts))?;
            Ok(())
        }
    }
}

fn run_node_subcommand(sub: NodeSubcommand) -> anyhow::Result<()> {
    use anyhow::Context;
    match sub {
        NodeSubcommand::Token {
            command:
                TokenCommand::Add {
                    data_dir,
                    tokenid,
                    comment,
                },
        } => {
            let store = hemiron_node::auth::CredentialStore::new(&data_dir.join("auth"));
            let secret = store
                .add_token(&tokenid, &comment)
                .with_context(|| format!("failed to add token {tokenid}"))?;
            println!("full-tokenid: {tokenid}");
            println!("{secret}");
            Ok(())
        }
        NodeSubcommand::Token {
            command: TokenCommand::Remove { data_dir, tokenid },
        } => {
            let store = hemiron_node::auth::CredentialStore::new(&data_dir.join("auth"));
            if !store.remove_token(&tokenid)? {
                anyhow::bail!("token {tokenid} does not exist");
            }
            Ok(())
        }
        NodeSubcommand::User {
            command: UserCommand::Add { data_dir, userid },
        } => {
            let mut input = String::new();
            std::io::stdin()
                .read_to_string(&mut input)
                .context("failed to read the password from stdin")?;
            // One password per line of input; a trailing newline is not part of it.
            let password = input.lines().next().unwrap_or_default();
            let store = hemiron_node::auth::CredentialStore::new(&data_dir.join("auth"));
            store
                .set_user_password(&userid, password)
                .with_context(|| format!("failed to set the password of {userid}"))?;
            println!("user {userid} updated");
            Ok(())
        }
        NodeSubcommand::Showcmd {
            data_dir,
            vmid,
            pretty,
        } => {
            let argv = runtime()?
                .block_on(hemiron_node::showcmd(&data_dir, vmid))
                .with_context(|| format!("failed to build the command line of VM {vmid}"))?;
            if pretty {
                println!("{}", argv.join(" \\\n  "));
            } else {
                println!("{}", shell_join(&argv));
            }
            Ok(())
        }
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Quotes arguments for a POSIX shell, so the printed line can be run as is.
fn shell_join(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            let safe = !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
            if safe {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
