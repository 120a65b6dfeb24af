//! `hemiron rollout …` and `hemiron rollback`: the deploy proxy's admin API from the shell.

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::client::Api;
use crate::{print, table, CliError, Global};

/// Which proxy to talk to.
#[derive(Debug, Args)]
pub struct ProxyAdmin {
    /// The proxy's admin URL.
    #[arg(
        long,
        global = true,
        env = "HEMIRON_PROXY_ADMIN",
        default_value = "http://127.0.0.1:9901"
    )]
    pub admin: String,
    /// A file holding the admin token (default: `--token`, or HEMIRON_PROXY_TOKEN).
    #[arg(long, global = true)]
    pub token_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Start a rollout of VERSION: canary steps (default 10:2m,25:2m,50:5m,100) or blue/green.
    Start {
        app: String,
        version: String,
        /// Steps as PERCENT[:DURATION],…; a step without duration waits for `promote`.
        #[arg(long, conflicts_with = "blue_green")]
        canary: Option<String>,
        /// Switch all traffic at once.
        #[arg(long)]
        blue_green: bool,
    },
    /// Weights, verdicts and live numbers (every app without APP).
    Status { app: Option<String> },
    /// Go to the next step now.
    Promote { app: String },
    /// Stop the step clock (traffic stays as it is).
    Pause { app: String },
    /// Restart the step clock.
    Resume { app: String },
    /// End the rollout with all traffic on the stable version.
    Abort { app: String },
}

fn admin_api(g: &Global, p: &ProxyAdmin) -> Result<Api, CliError> {
    let token = match &p.token_file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .map_err(|e| CliError::Config(format!("cannot read {}: {e}", f.display())))?
                .trim()
                .to_string(),
        ),
        None => g
            .token
            .clone()
            .or_else(|| std::env::var("HEMIRON_PROXY_TOKEN").ok()),
    };
    if token.is_none() {
        return Err(CliError::Config(
            "no admin token: pass --token, --token-file or set HEMIRON_PROXY_TOKEN".into(),
        ));
    }
    Api::new(&p.admin, token)
}

pub async fn rollout(g: &Global, p: &ProxyAdmin, cmd: RolloutCommand) -> Result<(), CliError> {
    let api = admin_api(g, p)?;
    let (value, _) = match cmd {
        RolloutCommand::Start {
            app,
            version,
            canary,
            blue_green,
        } => {
            let mut body = json!({ "version": version });
            if blue_green {
                body["blue_green"] = json!(true);
            }
            if let Some(c) = canary {
                body["canary"] = json!(c);
            }
            (api.post(&format!("/apps/{app}/rollout"), &body).await?, ())
        }
        RolloutCommand::Status { app: None } => {
            let all = api.get("/apps").await?;
            print(g, &all, |v| {
                v["apps"]
                    .as_array()
                    .map(|apps| apps.iter().map(status_text).collect::<Vec<_>>().join("\n"))
                    .unwrap_or_default()
            });
            return Ok(());
        }
        RolloutCommand::Status { app: Some(app) } => (api.get(&format!("/apps/{app}")).await?, ()),
        RolloutCommand::Promote { app } => (action(&api, &app, "promote").await?, ()),
        RolloutCommand::Pause { app } => (action(&api, &app, "pause").await?, ()),
        RolloutCommand::Resume { app } => (action(&api, &app, "resume").await?, ()),
        RolloutCommand::Abort { app } => (action(&api, &app, "abort").await?, ()),
    };
    print(g, &value, status_text);
    Ok(())
}

pub async fn rollback(g: &Global, p: &ProxyAdmin, app: &str) -> Result<(), CliError> {
    let api = admin_api(g, p)?;
    let value = action(&api, app, "rollback").await?;
    print(g, &value, status_text);
    Ok(())
}

async fn action(api: &Api, app: &str, what: &str) -> Result<Value, CliError> {
    api.post(&format!("/apps/{app}/{what}"), &json!({})).await
}

fn pct(v: &Value) -> String {
    let p = v.as_f64().unwrap_or(0.0);
    if p.fract() == 0.0 {
        format!("{p:.0}%")
    } else {
        format!("{p:.2}%")
    }
}

/// An app's status for the terminal.
pub fn status_text(v: &Value) -> String {
    let s = |x: &Value| x.as_str().unwrap_or("-").to_string();
    let mut out = format!("app {}: stable {}", s(&v["app"]), s(&v["stable"]));
    let r = &v["rollout"];
    if r.is_object() {
        out.push_str(&format!(
            ", {} of {} at {}",
            s(&r["strategy"]),
            s(&r["version"]),
            pct(&r["step_weight_percent"])
        ));
        let steps = r["steps"].as_array().map_or(0, Vec::len);
        if steps > 0 {
            out.push_str(&format!(
                " (step {}/{steps}",
                r["step"].as_u64().unwrap_or(0) + 1
            ));
            if r["analysis"].as_bool() == Some(true) {
                out.push_str(&format!(
                    ", {}/{} passing intervals",
                    r["passing_intervals"], r["passes_needed"]
                ));
            }
            if r["waiting_for_promote"].as_bool() == Some(true) {
                out.push_str(", waiting for promote");
            }
            out.push(')');
        }
        if r["paused"].as_bool() == Some(true) {
            out.push_str(" [paused]");
        }
        out.push_str(&format!(
            "\ncompared with: {} ({})",
            s(&r["baseline"]["version"]),
            s(&r["baseline"]["kind"])
        ));
    } else if let Some(o) = v["last_outcome"].as_str() {
        out.push_str(&format!(" (last rollout: {o})"));
    }
    out.push('\n');
    let rows: Vec<Vec<String>> = v["versions"]
        .as_array()
        .map(|vs| {
            vs.iter()
                .map(|x| {
                    let q = &x["requests"];
                    vec![
                        s(&x["version"]),
                        pct(&x["weight_percent"]),
                        if x["serving"].as_bool() == Some(true) {
                            "yes"
                        } else {
                            "no"
                        }
                        .into(),
                        if x["healthy"].as_bool() == Some(true) {
                            "yes"
                        } else {
                            "no"
                        }
                        .into(),
                        q["2xx"].to_string(),
                        q["4xx"].to_string(),
                        q["5xx"].to_string(),
                        q["failed"].to_string(),
                        q["inflight"].to_string(),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    out.push_str(&table::render(
        &[
            "VERSION", "WEIGHT", "SERVING", "HEALTHY", "2XX", "4XX", "5XX", "FAILED", "INFLIGHT",
        ],
        &rows,
    ));
    let l = &v["last_interval"];
    if l.is_object() {
        out.push_str(&format!(
            "last interval: {}: canary {:.2}% errors, median {:.2} ms; baseline {:.2}% errors, median {:.2} ms; p(errors) {:.2e}, p(latency) {:.2e} (alpha {}, +{} points, +{}%)\n",
            s(&l["verdict"]),
            l["canary_error_percent"].as_f64().unwrap_or(0.0),
            l["canary_median_ms"].as_f64().unwrap_or(0.0),
            l["baseline_error_percent"].as_f64().unwrap_or(0.0),
            l["baseline_median_ms"].as_f64().unwrap_or(0.0),
            l["errors_p"].as_f64().unwrap_or(1.0),
            l["latency_p"].as_f64().unwrap_or(1.0),
            // As numbers: a JSON value prints 1 as "1.0".
            l["alpha"].as_f64().unwrap_or(0.0),
            l["error_points_threshold"].as_f64().unwrap_or(0.0),
            l["latency_shift_threshold_percent"].as_f64().unwrap_or(0.0),
        ));
    }
    if let Some(events) = v["events"].as_array() {
        for e in events.iter().take(5) {
            out.push_str(&format!("  - {}\n", s(&e["what"])));
        }
    }
    out
}
