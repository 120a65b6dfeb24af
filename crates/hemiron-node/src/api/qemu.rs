//! `/nodes/{node}/qemu…`: VM lifecycle, config and status.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use hemiron_pve::{ValidatedParams, Value};
use serde_json::json;

use super::{check_node, ApiError, ApiResult, Call, Data};
use crate::vm::create::{check_create_control, CREATE_CONTROL_PARAMS};
use crate::vm::lifecycle::{PowerAction, StartOptions, StopOptions};
use crate::vm::update::{effective_props, UpdateRequest};
use crate::vm::VmError;
use crate::Node;

impl From<VmError> for ApiError {
    fn from(e: VmError) -> Self {
        match e {
            VmError::Params(errors) => ApiError::Params(errors),
            other => ApiError::from_err(&other),
        }
    }
}

impl From<crate::tasks::TaskError> for ApiError {
    fn from(e: crate::tasks::TaskError) -> Self {
        ApiError::from_err(&e)
    }
}

/// A parameter's value as it is written into a config file.
fn config_value(v: &Value) -> String {
    match v {
        Value::Bool(b) => if *b { "1" } else { "0" }.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Num(n) => n.to_string(),
        Value::Str(s) => s.clone(),
    }
}

/// A config value as Proxmox returns it: numbers and booleans typed by the schema.
pub(super) fn typed_value(key: &str, value: &str) -> serde_json::Value {
    use hemiron_pve::schema::ParamType;
    match hemiron_pve::spec::config_file_spec(key).map(|s| s.ty) {
        Some(ParamType::Integer | ParamType::Boolean) => value
            .parse::<i64>()
            .map(serde_json::Value::from)
            .unwrap_or_else(|_| json!(value)),
        Some(ParamType::Number) => value
            .parse::<f64>()
            .map(serde_json::Value::from)
            .unwrap_or_else(|_| json!(value)),
        _ => json!(value),
    }
}

pub(super) fn vmid_of(p: &ValidatedParams) -> Result<u32, ApiError> {
    p.int("vmid")
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| ApiError::param("vmid", "invalid VMID"))
}

/// Checks the node and that the VM exists; returns its VMID.
pub(super) fn target(node: &Node, p: &ValidatedParams) -> Result<u32, ApiError> {
    check_node(node, p.str("node").unwrap_or_default())?;
    let vmid = vmid_of(p)?;
    if !node.vms.exists(vmid) {
        return Err(VmError::NoConfig {
            node: node.name.clone(),
            vmid,
        }
        .into());
    }
    Ok(vmid)
}

/// The config-changing part of a create or update call.
fn update_request(p: &ValidatedParams, skip: &[&str]) -> UpdateRequest {
    let mut req = UpdateRequest::default();
    for (k, v) in p.iter() {
        match k {
            "delete" => {
                req.delete = hemiron_pve::text::split_list(&config_value(v));
            }
            "revert" => {
                req.revert = hemiron_pve::text::split_list(&config_value(v));
            }
            "digest" => req.digest = Some(config_value(v)),
            "force" => req.force = v.as_bool().unwrap_or(false),
            "skiplock" => req.skiplock = v.as_bool().unwrap_or(false),
            "background_delay" => {}
            "sshkeys" => {
                // Proxmox takes the keys URL-encoded and stores them so.
                req.set.insert(k.to_string(), config_value(v));
            }
            k if skip.contains(&k) => {}
            // Legacy aliases Proxmox rewrites: `cdrom` is `ide2` as a CD-ROM, `smp` is `sockets`.
            "cdrom" => {
                let value = config_value(v);
                let value = if value.contains("media=") {
                    value
                } else {
                    format!("{value},media=cdrom")
                };
                req.set.insert("ide2".to_string(), value);
            }
            "smp" => {
                req.set.insert("sockets".to_string(), config_value(v));
            }
            k => {
                req.set.insert(k.to_string(), config_value(v));
            }
        }
    }
    req
}

pub(super) fn user(call: &Call) -> String {
    call.principal.display_name().to_string()
}

pub async fn list(State(node): State<Arc<Node>>, call: Call) -> ApiResult {
    check_node(&node, call.params.str("node").unwrap_or_default())?;
    let list: Vec<_> = node
        .vms
        .list_status()
        .await
        .iter()
        .map(|s| s.to_json())
        .collect();
    Data::new(list)
}

pub async fn create(State(node): State<Arc<Node>>, call: Call) -> ApiResult {
    let p = &call.params;
    check_node(&node, p.str("node").unwrap_or_default())?;
    let vmid = vmid_of(p)?;
    check_create_control(p)?;
    let start = p.bool("start").unwrap_or(false);
    if let Some(archive) = p.str("archive") {
        return super::backup::restore(&node, &call, vmid, archive.to_string(), start).await;
    }
    let req = update_request(p, CREATE_CONTROL_PARAMS);
    node.vms.reserve(vmid, &req)?;
    if let Err(e) = super::cluster::check_vmid_free_elsewhere(&node, vmid, "vmid").await {
        let _ = node.vms.store.remove(vmid);
        return Err(e);
    }
    let vms = node.vms.clone();
    let upid = node.tasks.spawn(
        "qmcreate",
        &vmid.to_string(),
        &user(&call),
        move |ctx| async move {
            vms.create(vmid, req, start, &ctx).await?;
            Ok(())
        },
    );
    match upid {
        Ok(u) => Data::new(u.to_string()),
        Err(e) => {
            let _ = node.vms.store.remove(vmid);
            Err(e.into())
        }
    }
}

pub async fn index(State(node): State<Arc<Node>>, call: Call) -> ApiResult {
    target(&node, &call.params)?;
    let dirs = [
        "config",
        "pending",
        "status",
        "resize",
        "snapshot",
        "clone",
        "template",
        "cloudinit",
    ];
    Data::new(
        dirs.iter()
            .map(|d| json!({ "subdir": d }))
            .collect::<Vec<_>>(),
    )
}

pub async fn destroy(State(node): State<Arc<Node>>, call: Call) -> ApiResult {
    let p = &call.params;
    let vmid = target(&node, p)?;
    let skiplock = p.bool("skiplock").unwrap_or(false);
    let unreferenced = p.bool("destroy-unreferenced-disks").unwrap_or(false);
    node.vms.check_destroy(vmid, skiplock).await?;
    let vms = node.vms.clone();
    let upid = node.tasks.spawn(
        "qmdestroy",
        &vmid.to_string(),
        &user(&call),
        move |ctx| async move {
            vms.destroy(vmid, skiplock, unreferenced, &ctx).await?;
            Ok(())
        },
    )?;
    Data::new(upid.to_string())
}

pub async fn config_get(State(node): State<Arc<Node>>, call: Call) -> ApiResult {
    let p = &call.params;
    let vmid = target(&node, p)?;
    let loaded = node.vms.store.load(vmid)?;
    let (props, description) = if let Some(snap) = p.str("snapshot") {
        let s = loaded
            .conf
            .snapshots
            .get(snap)
            .ok_or_else(|| ApiError::runtime(format!("snapshot '{snap}' does not exist")))?;
        (s.props.clone(), s.description.clone())
    } else if p.bool("current").unwrap_or(false) {
        (
            loaded.conf.main.props.clone(),
            loaded.conf.main.description.clone(),
        )
    } else {
        let desc = loaded
            .conf
            .pending
            .as_ref()
            .and_then(|pd| pd.section.description.clone())
            .or_else(|| loaded.conf.main.description.clone());
        (effective_props(&loaded.conf), desc)
    };
    let mut out = serde_json::Map::new();
    for (k, v) in &props {
        // Proxmox never shows the (hashed) cloud-init password.
        let value = if k == "cipassword" {
            json!("**********")
        } else {
            typed_value(k, v)
        };
        out.insert(k.clone(), value);
    }
    if let Some(d) = description {
        out.insert("description".into(), json!(d));
    }
    out.insert("digest".into(), json!(loaded.digest));
    Data::new(out)
}

pub async fn config_put(State(node): State<Arc<Node>>, call: Call) -> ApiResult {
    let p = &call.params;
    let vmid = target(&node, p)?;
    let req = update_request(p, &["node", "vmid"]);
    node.vms.update_config(vmid, req, None).await?;
    Ok(Data::null())
}

pub async fn config_post(State(node): State<Arc<Node>>, call: Call) -> ApiResult {
    let p = &call.params;
    let vmid = target(&node, p)?;
    let req = update_request(p, &["node", "vmid"]);
    crate::vm::update::check_request(&req)?;
    let delay = p.int("background_delay");
    let vms = node.vms.clone();
    let upid = node.tasks.spawn(
        "qmconfig",
        &vmid.to_string(),
        &user(&call),
        move |ctx| async move {
            vms.update_config(vmid, req, Some(&ctx)).await?;
            Ok(())
        },
    )?;
    let upid_s = upid.to_string();
    if let Some(secs) = delay {
        // Proxmox answers `null` if the task finished OK within the delay.
        let done = tokio::time::timeout(
            Duration::from_secs(secs.clamp(1, 30) as u64),
            node.tasks.wait(&upid_s),
        )
        .await
        .is_ok();
        if done
            && node
                .tasks
                .status(&upid_s)
                .is_ok_and(|s| s.exitstatus.as_deref() == Some("OK"))
        {
            return Ok(Data::null());
        }
    }
    Data::new(upid_s)
}

pub async fn pending(State(node): State<Arc<Node>>, call: Call) -> ApiResult {
    let vmid = target(&node, &call.params)?;
    let loaded = node.vms.store.load(vmid)?;
    let conf = &loaded.conf;
    let pending = conf.pending.clone().unwrap_or_default();
    let mut keys: Vec<String> = conf.main.props.keys().cloned().collect();
    keys.extend(pending.section.props.keys().cloned());
    keys.extend(pending.delete.keys().cloned());
    keys.sort();
    keys.dedup();
    let mut out = Vec::new();
    for key in keys {
        let mut e = serde_json::Map::new();
        e.insert("key".into(), json!(key));
        let shown = |v: &String| {
            if key == "cipassword" {
                json!("**********")
            } else {
                typed_value(&key, v)
            }
        };
        if let Some(v) = conf.main.props.get(&key) {
            e.insert("value".into(), shown(v));
        }
        if let Some(v) = pending.section.props.get(&key) {
            e.insert("pending".into(), shown(v));
        }
        if let Some(force) = pending.delete.get(&key) {
            e.insert("delete".into(), json!(if *force { 2 } else { 1 }));
        }
        out.push(serde_json::Value::Object(e));
    }
    if let Some(d) = &conf.main.description {
        let mut e = json!({ "key": "description", "value": d });
        if let Some(pd) = &pending.section.description {
            e["pending"] = json!(pd);
        }
        out.push(e);
    }
    Data::new(out)
}

pub async fn status_index(State(node): State<Arc<Node>>, call: Call) -> ApiResult {
    target(&node, &call.params)?;
    Data::new(json!([
        { "subdir": "current" },
        { "subdir": "start" },
        { "subdir": "stop" },
        { "subdir": "reset" },
        { "subdir": "shutdown" },
        { "subdir": "suspend" },
        { "subdir": "reboot" },
        { "subdir": "resume" },
    ]))
}

pub async fn status_current(State(node): State<Arc<Node>>, call: Call) -> ApiResult {
    let vmid = target(&node, &call.params)?;
    let st = node
        .vms
        .vm_status(vmid)
        .await
        .ok_or_else(|| ApiError::runtime(format!("VM {vmid} vanished")))?;
    Data::new(st.to_current_json())
}

fn timeout_of(p: &ValidatedParams, default: u64) -> Duration {
    Duration::from_secs(p.int("timeout").map(|t| t.max(0) as u64).unwrap_or(default))
}

/// Runs a power operation as a task and returns its UPID.
pub(super) fn power_task<F, Fut>(
    node: &Arc<Node>,
    call: &Call,
    task_type: &str,
    vmid: u32,
    work: F,
) -> ApiResult
where
    F: FnOnce(Arc<crate::vm::VmManager>, crate::tasks::TaskContext) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), VmError>> + Send + 'static,
{
    let vms = node.vms.clone();
    let upid = node.tasks.spawn(
        task_type,
        &vmid.to_string(),
        &user(call),
        move |ctx| async move {
            work(vms, ctx).await?;
            Ok(())
        },
    )?;
    Data::new(upid.to_string())
}

pub async fn start(State(node): State<Arc<Node>>, call: Call) -> ApiResult {
    let p = &call.params;
    let vmid = target(&node, p)?;
    if p.contains("migratedfrom") || p.contains("stateuri") || p.contains("targetstorage") {
        return Err(ApiError::param(
            "migratedfrom",
            "incoming migrations are not supported by this node yet",
        ));
    }
    let opts = StartOptions {
        skiplock: p.bool("skiplock").unwrap_or(false),
        machine: p.str("machine").map(str::to_string),
        ..StartOptions::default()
    };
    power_task(&node, &call, "qmstart", vmid, move |vms, ctx| async move {
        vms.start(vmid, opts, &ctx).await
    })
}

pub async fn stop(State(node): State<Arc<Node>>, call: Call) -> ApiResult {
    let p = &call.params;
    let vmid = target(&node, p)?;
    if p.bool("overrule-shutdown").unwrap_or(false) {
        for upid in node.tasks.active_of("qmshutdown", &vmid.to_string()) {
            node.tasks.stop(&upid);
            node.tasks.wait(&upid).await;
        }
    }
    let opts = StopOptions {
        skiplock: p.bool("skiplock").unwrap_or(false),
        timeout: timeout_of(p, 60),
        force_stop: true,
    };
    power_task(&node, &call, "qmstop", vmid, move |vms, ctx| async move {
        vms.stop(vmid, opts, &ctx).await
    })
}

pub async fn shutdown(State(node): State<Arc<Node>>, call: Call) -> ApiResult {
    let p = &call.params;
    let vmid = target(&node, p)?;
    let opts = StopOptions {
        skiplock: p.bool("skiplock").unwrap_or(false),
        timeout: timeout_of(p, 60),
        force_stop: p.bool("forceStop").unwrap_or(false),
    };
    power_task(
        &node,
        &call,
        "qmshutdown",
        vmid,
        move |vms, ctx| async move { vms.shutdown(vmid, opts, &ctx).await },
    )
}

pub async fn reboot(State(node): State<Arc<Node>>, call: Call) -> ApiResult {
    let p = &call.params;
    let vmid = target(&node, p)?;
    let timeout = timeout_of(p, 60);
    power_task(&node, &call, "qmreboot", vmid, move |vms, ctx| async move {
        vms.reboot(vmid, timeout, &ctx).await
    })
}

pub async fn reset(State(node): State<Arc<Node>>, call: Call) -> ApiResult {
    let p = &call.params;
    let vmid = target(&node, p)?;
    let skiplock = p.bool("skiplock").unwrap_or(false);
    power_task(&node, &call, "qmreset", vmid, move |vms, _| async move {
        vms.power(vmid, skiplock, PowerAction::Reset).await
    })
}

pub async fn suspend(State(node): State<Arc<Node>>, call: Call) -> ApiResult {
    let p = &call.params;
    let vmid = target(&node, p)?;
    if p.bool("todisk").unwrap_or(false) || p.contains("statestorage") {
        return Err(ApiError::param(
            "todisk",
            "hibernation (suspend to disk) is not supported by this node yet",
        ));
    }
    let skiplock = p.bool("skiplock").unwrap_or(false);
    power_task(&node, &call, "qmpause", vmid, move |vms, _| async move {
        vms.power(vmid, skiplock, PowerAction::Pause).await
    })
}

pub async fn resume(State(node): State<Arc<Node>>, call: Call) -> ApiResult {
    let p = &call.params;
    let vmid = target(&node, p)?;
    let skiplock = p.bool("skiplock").unwrap_or(false);
    power_task(&node, &call, "qmresume", vmid, move |vms, _| async move {
        vms.power(vmid, skiplock, PowerAction::Resume).await
    })
}

pub async fn resize(State(node): State<Arc<Node>>, call: Call) -> ApiResult {
    let p = &call.params;
    let vmid = target(&node, p)?;
    let disk = p.str("disk").unwrap_or_default().to_string();
    let size = p.str("size").unwrap_or_default().to_string();
    // Check the size syntax now so a typo is a 400, not a failed task.
    size.parse::<hemiron_pve::size::ResizeSpec>()
        .map_err(|e| ApiError::param("size", e.0))?;
    let digest = p.str("digest").map(str::to_string);
    let skiplock = p.bool("skiplock").unwrap_or(false);
    power_task(&node, &call, "resize", vmid, move |vms, ctx| async move {
        vms.resize(vmid, &disk, &size, digest.as_deref(), skiplock, &ctx)
            .await
    })
}
