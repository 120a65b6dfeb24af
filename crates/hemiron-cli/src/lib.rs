//! `hemiron login`, `hemiron vps …`, `hemiron tenant …`, `hemiron user …`, `hemiron token …`:
//! the command-line client of the control plane's API. Tables by default, `--json` for
//! scripts, a progress indicator while a job runs, and exit codes scripts can use (see
//! [`CliError::exit_code`]).

#![forbid(unsafe_code)]

pub mod client;
pub mod config;
pub mod rollout;
pub mod table;

use std::io::IsTerminal;
use std::time::Duration;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};

use client::Api;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Config(String),
    #[error("cannot reach the server: {0}")]
    Connect(String),
    #[error("{detail} (HTTP {status})")]
    Api {
        status: u16,
        kind: String,
        detail: String,
    },
    #[error("job {id} failed: {error}")]
    JobFailed { id: String, error: String },
    #[error("{0}")]
    Usage(String),
}

impl CliError {
    /// 1 other, 3 not authenticated or not allowed, 4 not found, 5 refused (conflict, stale,
    /// invalid), 6 job failed, 7 cannot reach the server or no credentials.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Api { status, .. } => match status {
                401 | 403 => 3,
                404 => 4,
                409 | 412 | 422 | 428 | 429 => 5,
                _ => 1,
            },
            CliError::JobFailed { .. } => 6,
            CliError::Connect(_) | CliError::Config(_) => 7,
            CliError::Usage(_) => 2,
        }
    }
}

/// Options of every client command.
#[derive(Debug, Args)]
pub struct Global {
    /// Server URL (default: from `hemiron login`).
    #[arg(long, global = true, env = "HEMIRON_SERVER")]
    pub server: Option<String>,
    /// API token (default: from `hemiron login`).
    #[arg(long, global = true, env = "HEMIRON_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Server URL, e.g. http://127.0.0.1:8080.
    #[arg(long, env = "HEMIRON_SERVER")]
    pub server: String,
    #[arg(long)]
    pub username: String,
    /// A TOTP code (or recovery code) for accounts with MFA.
    #[arg(long)]
    pub totp: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum VpsCommand {
    /// Create a VPS and wait until it runs; prints how to SSH in.
    Create {
        name: String,
        #[arg(long)]
        plan: String,
        #[arg(long)]
        template: String,
        /// An OpenSSH public key (repeatable).
        #[arg(long = "ssh-key")]
        ssh_keys: Vec<String>,
        /// A file of OpenSSH public keys, one per line (repeatable).
        #[arg(long = "ssh-key-file")]
        ssh_key_files: Vec<std::path::PathBuf>,
        /// Login user (default hemiron).
        #[arg(long)]
        user: Option<String>,
        /// Tenant id or name (platform users).
        #[arg(long)]
        tenant: Option<String>,
        /// A full copy instead of a linked clone.
        #[arg(long)]
        full: bool,
        /// Keep VPSes of this group on different nodes.
        #[arg(long)]
        anti_affinity: Option<String>,
        /// Return once the job is queued.
        #[arg(long)]
        no_wait: bool,
    },
    /// List VPSes.
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// A VPS's details and its ssh command line.
    Show { vps: String },
    Start {
        vps: String,
        #[arg(long)]
        no_wait: bool,
    },
    Stop {
        vps: String,
        #[arg(long)]
        no_wait: bool,
    },
    Shutdown {
        vps: String,
        #[arg(long)]
        no_wait: bool,
    },
    Reboot {
        vps: String,
        #[arg(long)]
        no_wait: bool,
    },
    Delete {
        vps: String,
        #[arg(long)]
        no_wait: bool,
    },
    /// Move a VPS to another node of its cluster (live if it runs), with a progress bar.
    Migrate {
        vps: String,
        /// The node to move to; the best one when left out.
        #[arg(long)]
        to: Option<String>,
        #[arg(long)]
        no_wait: bool,
    },
    /// Back a VPS up now (it keeps running in the default `snapshot` mode).
    Backup {
        vps: String,
        /// snapshot, suspend or stop.
        #[arg(long)]
        mode: Option<String>,
        /// One line kept with the backup.
        #[arg(long)]
        notes: Option<String>,
        #[arg(long)]
        no_wait: bool,
    },
    /// A VPS's backups, newest first.
    Backups { vps: String },
    /// Restore a VPS from one of its backups (its data as it was; it runs again if it ran).
    Restore {
        vps: String,
        backup: String,
        #[arg(long)]
        no_wait: bool,
    },
    /// Delete one of a VPS's backups.
    DeleteBackup {
        vps: String,
        backup: String,
        #[arg(long)]
        no_wait: bool,
    },
    /// A VPS's backup schedules.
    Schedule {
        #[command(subcommand)]
        command: ScheduleCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// The VPS's schedules and their next runs.
    List {
        vps: String,
    },
    /// Back the VPS up on a cron pattern, keeping what the retention says.
    Add {
        vps: String,
        /// Five-field cron pattern, e.g. "0 3 * * *" (or @daily, @weekly…).
        #[arg(long)]
        cron: String,
        /// IANA time zone the pattern is read in (default UTC).
        #[arg(long)]
        timezone: Option<String>,
        /// snapshot, suspend or stop.
        #[arg(long)]
        mode: Option<String>,
        #[arg(long)]
        keep_last: Option<i64>,
        #[arg(long)]
        keep_daily: Option<i64>,
        #[arg(long)]
        keep_weekly: Option<i64>,
        #[arg(long)]
        keep_monthly: Option<i64>,
    },
    /// Stop running a schedule (its backups stay).
    Pause {
        vps: String,
        schedule: String,
    },
    Resume {
        vps: String,
        schedule: String,
    },
    /// Delete a schedule (its backups stay until deleted).
    Delete {
        vps: String,
        schedule: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    List,
    Create {
        name: String,
        #[arg(long)]
        vcpus: i64,
        #[arg(long)]
        memory_mib: i64,
        #[arg(long)]
        disk_gib: i64,
        #[arg(long)]
        vms: i64,
    },
    Show {
        tenant: String,
    },
    Delete {
        tenant: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Create a user; the password is read from stdin.
    Create {
        username: String,
        /// admin, operator, owner, member or viewer.
        #[arg(long)]
        role: String,
        #[arg(long)]
        tenant: Option<String>,
    },
    Delete {
        user: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    List,
    /// Create a token; prints the secret (shown only once).
    Create {
        name: String,
        /// e.g. `read:vps write:vps` (default: everything your role allows).
        #[arg(long)]
        scopes: Option<String>,
        #[arg(long)]
        days: Option<i64>,
    },
    Revoke {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// The nodes: state, maintenance, reserved capacity.
    List,
    /// Put a node in maintenance and move every VPS off it; waits until it is empty.
    Drain {
        node: String,
        #[arg(long)]
        no_wait: bool,
    },
    /// Take a node out of maintenance (stops a drain under way).
    Undrain { node: String },
    /// Even out the clusters' load by moving VPSes; `--dry-run` prints the plan only.
    Rebalance {
        #[arg(long)]
        dry_run: bool,
        /// Only this cluster (id or name).
        #[arg(long)]
        cluster: Option<String>,
    },
}

/// The client commands.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Log in and keep an API token for the other commands.
    Login(LoginArgs),
    /// Manage VPSes.
    Vps {
        #[command(subcommand)]
        command: VpsCommand,
    },
    /// Nodes: maintenance, drain, rebalancing.
    Host {
        #[command(subcommand)]
        command: HostCommand,
    },
    /// Manage tenants.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Manage users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Manage your API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Roll out a version through the deploy proxy (its admin API).
    Rollout {
        #[command(flatten)]
        admin: rollout::ProxyAdmin,
        #[command(subcommand)]
        command: rollout::RolloutCommand,
    },
    /// Put an app back on its previous stable version (or abort its rollout) at once.
    Rollback {
        app: String,
        #[command(flatten)]
        admin: rollout::ProxyAdmin,
    },
}

fn api(g: &Global) -> Result<Api, CliError> {
    let saved = config::load();
    let server = g
        .server
        .clone()
        .or_else(|| saved.as_ref().map(|s| s.server.clone()))
        .ok_or_else(|| {
            CliError::Config(
                "no server: run `hemiron login --server URL --username NAME` or pass --server"
                    .into(),
            )
        })?;
    let token = g.token.clone().or_else(|| saved.map(|s| s.token));
    Api::new(&server, token)
}

fn read_secret(what: &str) -> Result<String, CliError> {
    if std::io::stdin().is_terminal() {
        eprint!("{what}: ");
    }
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| CliError::Usage(format!("cannot read the {what}: {e}")))?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

fn print(g: &Global, value: &Value, table: impl FnOnce(&Value) -> String) {
    if g.json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
    } else {
        print!("{}", table(value));
    }
}

fn s(v: &Value, k: &str) -> String {
    match &v[k] {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Runs a client command.
pub async fn run(g: Global, cmd: ClientCommand) -> Result<(), CliError> {
    match cmd {
        ClientCommand::Login(a) => login(&g, a).await,
        ClientCommand::Vps { command } => vps(&g, command).await,
        ClientCommand::Host { command } => host(&g, command).await,
        ClientCommand::Tenant { command } => tenant(&g, command).await,
        ClientCommand::User { command } => user(&g, command).await,
        ClientCommand::Token { command } => token(&g, command).await,
        ClientCommand::Rollout { admin, command } => rollout::rollout(&g, &admin, command).await,
        ClientCommand::Rollback { app, admin } => rollout::rollback(&g, &admin, &app).await,
    }
}

async fn login(g: &Global, a: LoginArgs) -> Result<(), CliError> {
    let password = read_secret("password")?;
    let anon = Api::new(&a.server, None)?;
    let mut body = json!({"username": a.username, "password": password});
    if let Some(t) = &a.totp {
        body["totp"] = json!(t);
    }
    let session = anon.post("/auth/login", &body).await?;
    let session_token = session["token"].as_str().unwrap_or_default().to_string();
    let with_session = Api::new(&a.server, Some(session_token))?;
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "cli".into());
    let t = with_session
        .post("/tokens", &json!({"name": format!("cli on {host}")}))
        .await?;
    let _ = with_session.post("/auth/logout", &json!({})).await;
    let path = config::save(&config::Saved {
        server: a.server.clone(),
        token: t["secret"].as_str().unwrap_or_default().to_string(),
    })?;
    if g.json {
        println!(
            "{}",
            json!({"server": a.server, "config": path, "token_id": t["id"]})
        );
    } else {
        println!(
            "logged in to {} as {}; token kept in {}",
            a.server,
            a.username,
            path.display()
        );
    }
    Ok(())
}

/// The items of a page.
fn items(page: &Value) -> impl Iterator<Item = &Value> {
    page["items"].as_array().into_iter().flatten()
}

fn not_found(what: &str, r: &str) -> CliError {
    CliError::Api {
        status: 404,
        kind: "/problems/not-found".into(),
        detail: format!("no {what} {r:?}"),
    }
}

/// The id of the item of `path`'s first page whose id or `name_field` is `r`.
async fn id_by_name(
    api: &Api,
    path: &str,
    name_field: &str,
    what: &str,
    r: &str,
) -> Result<String, CliError> {
    let page = api.get(path).await?;
    let id = items(&page)
        .find(|x| x["id"] == r || x[name_field] == r)
        .and_then(|x| x["id"].as_str().map(str::to_string));
    id.ok_or_else(|| not_found(what, r))
}

/// A tenant's id from its id or name.
async fn tenant_id(api: &Api, r: &str) -> Result<String, CliError> {
    id_by_name(api, "/tenants?limit=500", "name", "tenant", r).await
}

/// A VPS's id from its id or name (names must be unique among the VPSes you see).
async fn vps_id(api: &Api, r: &str) -> Result<String, CliError> {
    let mut cursor: Option<String> = None;
    let mut found = Vec::new();
    loop {
        let path = match &cursor {
            Some(c) => format!("/vps?limit=500&cursor={c}"),
            None => "/vps?limit=500".into(),
        };
        let page = api.get(&path).await?;
        for v in items(&page) {
            if v["id"] == r || v["name"] == r {
                found.push(v["id"].as_str().unwrap_or_default().to_string());
            }
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(not_found("VPS", r)),
        _ => Err(CliError::Usage(format!(
            "{r:?} names several VPSes: use an id"
        ))),
    }
}

/// Follows a job with a spinner until it ends.
async fn follow(g: &Global, api: &Api, job: &Value) -> Result<Value, CliError> {
    follow_job(g, api, job, false).await
}

/// Follows a job until it ends: a spinner, or (`transfer`) a bar of the transfer its
/// progress reports.
async fn follow_job(g: &Global, api: &Api, job: &Value, transfer: bool) -> Result<Value, CliError> {
    let id = job["id"].as_str().unwrap_or_default().to_string();
    let bar = if g.json || !std::io::stderr().is_terminal() {
        indicatif::ProgressBar::hidden()
    } else if transfer {
        let bar = indicatif::ProgressBar::new(1000);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} [{bar:30}] {percent:>3}% {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar
    } else {
        indicatif::ProgressBar::new_spinner()
    };
    bar.enable_steady_tick(Duration::from_millis(120));
    loop {
        let j = api.get(&format!("/jobs/{id}")).await?;
        let progress = s(&j, "progress");
        if let Some(f) = transfer_fraction(&progress) {
            bar.set_position((f * 1000.0) as u64);
        }
        bar.set_message(format!(
            "{} {}: {} {}",
            s(&j, "kind"),
            s(&j, "state"),
            s(&j, "step"),
            progress
        ));
        match j["state"].as_str() {
            Some("succeeded") => {
                bar.finish_and_clear();
                return Ok(j);
            }
            Some("failed" | "needs-attention") => {
                bar.finish_and_clear();
                return Err(CliError::JobFailed {
                    id,
                    error: format!("{}: {}", s(&j, "state"), s(&j, "error")),
                });
            }
            _ => tokio::time::sleep(Duration::from_millis(if transfer { 300 } else { 500 })).await,
        }
    }
}

/// How far a transfer is, from a progress line such as `migration active, transferred
/// 90.0 MiB of 256.0 MiB VM-state, 344.7 MiB/s` or `mirror-scsi0: transferred 1.0 GiB of
/// 2.0 GiB (50.00%)`: a fraction in 0..=1.
pub fn transfer_fraction(line: &str) -> Option<f64> {
    let rest = &line[line.find("transferred ")? + "transferred ".len()..];
    let (done, rest) = rest.split_once(" of ")?;
    let total: String = rest
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    let bytes = |text: &str| -> Option<f64> {
        let mut parts = text.split_whitespace();
        let n: f64 = parts.next()?.parse().ok()?;
        let unit = parts.next()?.trim_end_matches(',');
        let scale = match unit {
            "B" => 1.0,
            "KiB" => 1024.0,
            "MiB" => 1024.0 * 1024.0,
            "GiB" => 1024.0 * 1024.0 * 1024.0,
            "TiB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
            _ => return None,
        };
        Some(n * scale)
    };
    let (d, t) = (bytes(done)?, bytes(&total)?);
    (t > 0.0 && d.is_finite()).then(|| (d / t).clamp(0.0, 1.0))
}

fn vps_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = items(v)
        .map(|x| {
            vec![
                s(x, "id"),
                s(x, "name"),
                s(x, "state"),
                s(x, "power"),
                s(x, "node"),
                s(x, "ssh_address"),
            ]
        })
        .collect();
    table::render(&["ID", "NAME", "STATE", "POWER", "NODE", "SSH"], &rows)
}

fn vps_detail(v: &Value) -> String {
    let mut out = String::new();
    for k in [
        "id",
        "name",
        "tenant_id",
        "state",
        "power",
        "vcpus",
        "memory_mib",
        "disk_gib",
        "template",
        "cluster_id",
        "node",
        "vmid",
        "username",
        "ssh_address",
        "web_address",
        "last_error",
    ] {
        out.push_str(&format!("{k:<12} {}\n", s(v, k)));
    }
    if let Some(cmd) = v["ssh_command"].as_str() {
        out.push_str(&format!("\nssh: {cmd}\n"));
    }
    out
}

async fn vps(g: &Global, cmd: VpsCommand) -> Result<(), CliError> {
    let api = api(g)?;
    match cmd {
        VpsCommand::Create {
            name,
            plan,
            template,
            mut ssh_keys,
            ssh_key_files,
            user,
            tenant,
            full,
            anti_affinity,
            no_wait,
        } => {
            for f in ssh_key_files {
                let text = std::fs::read_to_string(&f)
                    .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", f.display())))?;
                ssh_keys.extend(
                    text.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty() && !l.starts_with('#'))
                        .map(str::to_string),
                );
            }
            let mut body =
                json!({"name": name, "plan": plan, "template": template, "ssh_keys": ssh_keys});
            if full {
                body["clone"] = json!("full");
            }
            if let Some(u) = user {
                body["username"] = json!(u);
            }
            if let Some(a) = anti_affinity {
                body["anti_affinity"] = json!(a);
            }
            if let Some(t) = tenant {
                body["tenant_id"] = json!(tenant_id(&api, &t).await?);
            }
            let created = api.post("/vps", &body).await?;
            if !no_wait {
                follow(g, &api, &created["job"]).await?;
                let v = api.get(&format!("/vps/{}", s(&created, "id"))).await?;
                print(g, &v, vps_detail);
            } else {
                print(g, &created, vps_detail);
            }
            Ok(())
        }
        VpsCommand::List { tenant } => {
            let path = match tenant {
                Some(t) => format!("/vps?limit=500&tenant_id={}", tenant_id(&api, &t).await?),
                None => "/vps?limit=500".into(),
            };
            let v = api.get(&path).await?;
            print(g, &v, vps_table);
            Ok(())
        }
        VpsCommand::Show { vps } => {
            let id = vps_id(&api, &vps).await?;
            let v = api.get(&format!("/vps/{id}")).await?;
            print(g, &v, vps_detail);
            Ok(())
        }
        VpsCommand::Start { vps, no_wait } => power(g, &api, &vps, "start", no_wait).await,
        VpsCommand::Stop { vps, no_wait } => power(g, &api, &vps, "stop", no_wait).await,
        VpsCommand::Shutdown { vps, no_wait } => power(g, &api, &vps, "shutdown", no_wait).await,
        VpsCommand::Reboot { vps, no_wait } => power(g, &api, &vps, "reboot", no_wait).await,
        VpsCommand::Migrate { vps, to, no_wait } => {
            let id = vps_id(&api, &vps).await?;
            let job = api
                .post(&format!("/vps/{id}/migrate"), &json!({ "node": to }))
                .await?;
            let j = if no_wait {
                job
            } else {
                follow_job(g, &api, &job, true).await?
            };
            let now = api.get(&format!("/vps/{id}")).await?;
            print(g, &j, |j| {
                format!(
                    "{} {}: VPS {} is on node {}\n",
                    s(j, "kind"),
                    s(j, "state"),
                    s(&now, "name"),
                    s(&now, "node")
                )
            });
            Ok(())
        }
        VpsCommand::Backup {
            vps,
            mode,
            notes,
            no_wait,
        } => {
            let id = vps_id(&api, &vps).await?;
            let started = api
                .post(
                    &format!("/vps/{id}/backups"),
                    &json!({"mode": mode, "notes": notes}),
                )
                .await?;
            if !no_wait {
                follow(g, &api, &started["job"]).await?;
            }
            let b = api
                .get(&format!(
                    "/vps/{id}/backups/{}",
                    s(&started["backup"], "id")
                ))
                .await?;
            print(g, &b, backup_detail);
            Ok(())
        }
        VpsCommand::Backups { vps } => {
            let id = vps_id(&api, &vps).await?;
            let v = api.get(&format!("/vps/{id}/backups")).await?;
            print(g, &v, backup_table);
            Ok(())
        }
        VpsCommand::Restore {
            vps,
            backup,
            no_wait,
        } => {
            let id = vps_id(&api, &vps).await?;
            let job = api
                .post(&format!("/vps/{id}/backups/{backup}/restore"), &json!({}))
                .await?;
            finish_job(g, &api, job, no_wait).await
        }
        VpsCommand::DeleteBackup {
            vps,
            backup,
            no_wait,
        } => {
            let id = vps_id(&api, &vps).await?;
            let job = api
                .delete_current(&format!("/vps/{id}/backups/{backup}"))
                .await?;
            finish_job(g, &api, job, no_wait).await
        }
        VpsCommand::Schedule { command } => schedule(g, &api, command).await,
        VpsCommand::Delete { vps, no_wait } => {
            let id = vps_id(&api, &vps).await?;
            let job = api.delete_current(&format!("/vps/{id}")).await?;
            finish_job(g, &api, job, no_wait).await
        }
    }
}

async fn schedule(g: &Global, api: &Api, cmd: ScheduleCommand) -> Result<(), CliError> {
    match cmd {
        ScheduleCommand::List { vps } => {
            let id = vps_id(api, &vps).await?;
            let v = api.get(&format!("/vps/{id}/backup-schedules")).await?;
            print(g, &v, schedule_table);
        }
        ScheduleCommand::Add {
            vps,
            cron,
            timezone,
            mode,
            keep_last,
            keep_daily,
            keep_weekly,
            keep_monthly,
        } => {
            let id = vps_id(api, &vps).await?;
            let v = api
                .post(
                    &format!("/vps/{id}/backup-schedules"),
                    &json!({"cron": cron, "timezone": timezone, "mode": mode,
                            "keep_last": keep_last, "keep_daily": keep_daily,
                            "keep_weekly": keep_weekly, "keep_monthly": keep_monthly}),
                )
                .await?;
            print(g, &json!([v]), schedule_table);
        }
        ScheduleCommand::Pause { vps, schedule } => {
            set_enabled(g, api, &vps, &schedule, false).await?;
        }
        ScheduleCommand::Resume { vps, schedule } => {
            set_enabled(g, api, &vps, &schedule, true).await?;
        }
        ScheduleCommand::Delete { vps, schedule } => {
            let id = vps_id(api, &vps).await?;
            api.delete_current(&format!("/vps/{id}/backup-schedules/{schedule}"))
                .await?;
            print(g, &json!({"deleted": schedule}), |_| "deleted\n".into());
        }
    }
    Ok(())
}

async fn set_enabled(
    g: &Global,
    api: &Api,
    vps: &str,
    schedule: &str,
    enabled: bool,
) -> Result<(), CliError> {
    let id = vps_id(api, vps).await?;
    let v = api
        .patch_current(
            &format!("/vps/{id}/backup-schedules/{schedule}"),
            &json!({ "enabled": enabled }),
        )
        .await?;
    print(g, &json!([v]), schedule_table);
    Ok(())
}

fn backup_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| {
            vec![
                s(b, "id"),
                s(b, "taken_at"),
                s(b, "state"),
                s(b, "mode"),
                b["size_bytes"]
                    .as_i64()
                    .map(|n| format!("{:.1} MiB", n as f64 / 1048576.0))
                    .unwrap_or_default(),
                if b["schedule_id"].is_string() {
                    "scheduled".into()
                } else {
                    "manual".into()
                },
                s(b, "volid"),
            ]
        })
        .collect();
    table::render(
        &["ID", "TAKEN", "STATE", "MODE", "SIZE", "BY", "ARCHIVE"],
        &rows,
    )
}

fn backup_detail(b: &Value) -> String {
    let mut out = String::new();
    for k in [
        "id",
        "state",
        "taken_at",
        "mode",
        "node",
        "storage",
        "volid",
        "size_bytes",
        "notes",
        "error",
    ] {
        if !b[k].is_null() {
            out.push_str(&format!("{k:<12} {}\n", s(b, k)));
        }
    }
    out
}

fn schedule_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|x| {
            let keep: Vec<String> = ["last", "daily", "weekly", "monthly"]
                .iter()
                .filter_map(|k| {
                    let n = x[format!("keep_{k}")].as_i64().unwrap_or(0);
                    (n > 0).then(|| format!("{k}={n}"))
                })
                .collect();
            vec![
                s(x, "id"),
                format!("{} ({})", s(x, "cron"), s(x, "timezone")),
                s(x, "description"),
                keep.join(","),
                if x["enabled"] == true {
                    s(x, "next_run_at")
                } else {
                    "paused".into()
                },
            ]
        })
        .collect();
    table::render(&["ID", "CRON", "WHEN", "KEEP", "NEXT RUN"], &rows)
}

async fn power(
    g: &Global,
    api: &Api,
    vps: &str,
    action: &str,
    no_wait: bool,
) -> Result<(), CliError> {
    let id = vps_id(api, vps).await?;
    let job = api.post(&format!("/vps/{id}/{action}"), &json!({})).await?;
    finish_job(g, api, job, no_wait).await
}

/// Follows a queued job to its end (unless `no_wait`) and prints its kind and state.
async fn finish_job(g: &Global, api: &Api, job: Value, no_wait: bool) -> Result<(), CliError> {
    let j = if no_wait {
        job
    } else {
        follow(g, api, &job).await?
    };
    print(g, &j, |j| format!("{} {}\n", s(j, "kind"), s(j, "state")));
    Ok(())
}

/// A node's id from its name (or id).
async fn node_id(api: &Api, r: &str) -> Result<String, CliError> {
    let nodes = api.get("/nodes").await?;
    let found: Vec<&Value> = nodes
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["id"] == r || n["name"] == r)
        .collect();
    match found.as_slice() {
        [one] => Ok(s(one, "id")),
        [] => Err(not_found("node", r)),
        _ => Err(CliError::Usage(format!(
            "{r:?} names nodes of several clusters: use an id"
        ))),
    }
}

fn nodes_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            vec![
                s(n, "name"),
                s(n, "status"),
                if n["maintenance"].as_bool() == Some(true) {
                    "maintenance".into()
                } else {
                    "-".into()
                },
                format!("{}/{}", s(n, "reserved_vcpus"), s(n, "cpus")),
                format!("{}/{}", s(n, "reserved_memory_mib"), s(n, "memory_mib")),
                s(n, "cluster_id"),
            ]
        })
        .collect();
    table::render(
        &["NODE", "STATUS", "MODE", "VCPUS", "MEMORY MIB", "CLUSTER"],
        &rows,
    )
}

async fn host(g: &Global, cmd: HostCommand) -> Result<(), CliError> {
    let api = api(g)?;
    match cmd {
        HostCommand::List => {
            let nodes = api.get("/nodes").await?;
            print(g, &nodes, nodes_table);
            Ok(())
        }
        HostCommand::Drain { node, no_wait } => {
            let id = node_id(&api, &node).await?;
            let job = api.post(&format!("/nodes/{id}/drain"), &json!({})).await?;
            let j = if no_wait {
                job
            } else {
                follow(g, &api, &job).await?
            };
            print(g, &j, |j| {
                format!("node {node}: {} {}\n", s(j, "kind"), s(j, "state"))
            });
            Ok(())
        }
        HostCommand::Undrain { node } => {
            let id = node_id(&api, &node).await?;
            let n = api
                .post(
                    &format!("/nodes/{id}/maintenance"),
                    &json!({ "maintenance": false }),
                )
                .await?;
            print(g, &n, |n| format!("node {} in service\n", s(n, "name")));
            Ok(())
        }
        HostCommand::Rebalance { dry_run, cluster } => {
            let plans = api
                .post(
                    "/rebalance",
                    &json!({ "dry_run": dry_run, "cluster": cluster }),
                )
                .await?;
            print(g, &plans, |p| {
                let mut out = String::new();
                for c in p.as_array().into_iter().flatten() {
                    let moves = c["moves"].as_array().cloned().unwrap_or_default();
                    out.push_str(&format!(
                        "cluster {}: imbalance {:.3}{}\n",
                        s(c, "cluster"),
                        c["imbalance"].as_f64().unwrap_or(0.0),
                        if moves.is_empty() {
                            " (no move needed or possible)"
                        } else {
                            ""
                        }
                    ));
                    for m in moves {
                        out.push_str(&format!(
                            "  {} {} -> {} (imbalance then {:.3}){}\n",
                            s(&m, "vps_name"),
                            s(&m, "from"),
                            s(&m, "to"),
                            m["imbalance_after"].as_f64().unwrap_or(0.0),
                            if dry_run { "" } else { " queued" }
                        ));
                    }
                }
                out
            });
            Ok(())
        }
    }
}

async fn tenant(g: &Global, cmd: TenantCommand) -> Result<(), CliError> {
    let api = api(g)?;
    match cmd {
        TenantCommand::List => {
            let v = api.get("/tenants?limit=500").await?;
            print(g, &v, |v| {
                let rows: Vec<Vec<String>> = items(v)
                    .map(|t| {
                        let q = &t["quota"];
                        let u = &t["used"];
                        vec![
                            s(t, "id"),
                            s(t, "name"),
                            format!("{}/{}", s(u, "vms"), s(q, "vms")),
                            format!("{}/{}", s(u, "vcpus"), s(q, "vcpus")),
                            format!("{}/{}", s(u, "memory_mib"), s(q, "memory_mib")),
                            format!("{}/{}", s(u, "disk_gib"), s(q, "disk_gib")),
                        ]
                    })
                    .collect();
                table::render(
                    &["ID", "NAME", "VMS", "VCPUS", "MEMORY MIB", "DISK GIB"],
                    &rows,
                )
            });
            Ok(())
        }
        TenantCommand::Create {
            name,
            vcpus,
            memory_mib,
            disk_gib,
            vms,
        } => {
            let t = api
                .post("/tenants", &json!({"name": name, "quota": {"vcpus": vcpus, "memory_mib": memory_mib, "disk_gib": disk_gib, "vms": vms}}))
                .await?;
            print(g, &t, |t| format!("{} {}\n", s(t, "id"), s(t, "name")));
            Ok(())
        }
        TenantCommand::Show { tenant } => {
            let id = tenant_id(&api, &tenant).await?;
            let t = api.get(&format!("/tenants/{id}")).await?;
            print(g, &t, |t| {
                serde_json::to_string_pretty(t).unwrap_or_default() + "\n"
            });
            Ok(())
        }
        TenantCommand::Delete { tenant } => {
            let id = tenant_id(&api, &tenant).await?;
            api.delete_current(&format!("/tenants/{id}")).await?;
            Ok(())
        }
    }
}

async fn user(g: &Global, cmd: UserCommand) -> Result<(), CliError> {
    let api = api(g)?;
    match cmd {
        UserCommand::List { tenant } => {
            let path = match tenant {
                Some(t) => format!("/users?limit=500&tenant_id={}", tenant_id(&api, &t).await?),
                None => "/users?limit=500".into(),
            };
            let v = api.get(&path).await?;
            print(g, &v, |v| {
                let rows: Vec<Vec<String>> = items(v)
                    .map(|u| {
                        vec![
                            s(u, "id"),
                            s(u, "username"),
                            s(u, "role"),
                            s(u, "tenant_id"),
                            s(u, "mfa_enabled"),
                            s(u, "disabled"),
                        ]
                    })
                    .collect();
                table::render(
                    &["ID", "USERNAME", "ROLE", "TENANT", "MFA", "DISABLED"],
                    &rows,
                )
            });
            Ok(())
        }
        UserCommand::Create {
            username,
            role,
            tenant,
        } => {
            let password = read_secret("password")?;
            let mut body = json!({"username": username, "password": password, "role": role});
            if let Some(t) = tenant {
                body["tenant_id"] = json!(tenant_id(&api, &t).await?);
            }
            let u = api.post("/users", &body).await?;
            print(g, &u, |u| format!("{} {}\n", s(u, "id"), s(u, "username")));
            Ok(())
        }
        UserCommand::Delete { user } => {
            let id = id_by_name(&api, "/users?limit=500", "username", "user", &user).await?;
            api.delete_current(&format!("/users/{id}")).await?;
            Ok(())
        }
    }
}

async fn token(g: &Global, cmd: TokenCommand) -> Result<(), CliError> {
    let api = api(g)?;
    match cmd {
        TokenCommand::List => {
            let v = api.get("/tokens?limit=500").await?;
            print(g, &v, |v| {
                let rows: Vec<Vec<String>> = items(v)
                    .map(|t| {
                        vec![
                            s(t, "id"),
                            s(t, "name"),
                            s(t, "username"),
                            s(t, "scopes"),
                            s(t, "expires_at"),
                            s(t, "revoked_at"),
                        ]
                    })
                    .collect();
                table::render(
                    &["ID", "NAME", "USER", "SCOPES", "EXPIRES", "REVOKED"],
                    &rows,
                )
            });
            Ok(())
        }
        TokenCommand::Create { name, scopes, days } => {
            let mut body = json!({"name": name});
            if let Some(sc) = scopes {
                body["scopes"] = json!(sc);
            }
            if let Some(d) = days {
                body["expires_in_days"] = json!(d);
            }
            let t = api.post("/tokens", &body).await?;
            print(g, &t, |t| format!("{}\n", s(t, "secret")));
            Ok(())
        }
        TokenCommand::Revoke { id } => {
            api.send(Method::GET, &format!("/tokens/{id}"), None, None)
                .await?;
            api.delete_current(&format!("/tokens/{id}")).await?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn transfer_fractions_of_node_progress_lines() {
        let f = transfer_fraction(
            "migration active, transferred 64.0 MiB of 256.0 MiB VM-state, 344.7 MiB/s",
        );
        assert_eq!(f, Some(0.25));
        let f = transfer_fraction("mirror-scsi0: transferred 1.0 GiB of 2.0 GiB (50.00%)");
        assert_eq!(f, Some(0.5));
        assert_eq!(transfer_fraction("start migrate command"), None);
        assert_eq!(transfer_fraction("transferred 1 MiB of 0 B"), None);
    }

    proptest! {
        #[test]
        fn any_line_gives_a_fraction_or_nothing(line in "\\PC{0,120}") {
            if let Some(f) = transfer_fraction(&line) {
                prop_assert!((0.0..=1.0).contains(&f));
            }
        }
    }
}
