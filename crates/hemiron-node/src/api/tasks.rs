//! `/nodes/{node}/tasks…`: task lists, status, logs and stopping.

use std::sync::Arc;

use axum::extract::State;
use serde_json::json;

use super::{check_node, ApiError, ApiResult, Call, Data};
use crate::tasks::TaskError;
use crate::Node;

fn task_error(e: TaskError) -> ApiError {
    match e {
        TaskError::NotFound => ApiError::runtime("no such task"),
        other => ApiError::from_err(&other),
    }
}

pub async fn list(State(node): State<Arc<Node>>, call: Call) -> ApiResult {
    let p = &call.params;
    check_node(&node, p.str("node").unwrap_or_default())?;
    let source = p.str("source").unwrap_or("archive");
    let (active, archive) = match source {
        "active" => (true, false),
        "all" => (true, true),
        _ => (false, true),
    };
    let start = p.int("start").unwrap_or(0).max(0) as usize;
    let limit = p.int("limit").unwrap_or(50).max(0) as usize;
    let vmid = p.int("vmid").map(|v| v.to_string());
    let typefilter = p.str("typefilter");
    let userfilter = p.str("userfilter");
    let since = p.int("since");
    let until = p.int("until");
    let only_errors = p.bool("errors").unwrap_or(false);
    let statusfilter: Option<Vec<String>> = p
        .str("statusfilter")
        .map(|s| hemiron_pve::text::split_list(s).into_iter().collect());
    let matches = |t: &crate::tasks::TaskStatus| {
        let exit = t.exitstatus.as_deref();
        let class = match exit {
            None => "running",
            Some("OK") => "ok",
            Some(s) if s.starts_with("WARNINGS") => "warning",
            Some("unexpected status") => "unknown",
            Some(_) => "error",
        };
        vmid.as_ref().is_none_or(|v| &t.id == v)
            && typefilter.is_none_or(|f| t.task_type.contains(f))
            && userfilter.is_none_or(|f| t.user.contains(f))
            && since.is_none_or(|s| t.starttime >= s)
            && until.is_none_or(|u| t.starttime <= u)
            && (!only_errors || class == "error" || class == "unknown")
            && statusfilter
                .as_ref()
                .is_none_or(|f| f.iter().any(|s| s == class))
    };
    let all: Vec<_> = node
        .tasks
        .list(active, archive)
        .into_iter()
        .filter(matches)
        .collect();
    let total = all.len() as u64;
    let page: Vec<_> = all
        .into_iter()
        .skip(start)
        .take(limit)
        .map(|t| {
            let mut v = json!({
                "upid": t.upid,
                "node": t.node,
                "pid": t.pid,
                "pstart": t.pstart,
                "starttime": t.starttime,
                "type": t.task_type,
                "id": t.id,
                "user": t.user,
            });
            if let Some(end) = t.endtime {
                v["endtime"] = json!(end);
            }
            if let Some(exit) = t.exitstatus {
                v["status"] = json!(exit);
            }
            v
        })
        .collect();
    Ok(Data::new(page)?.with_total(total))
}

pub async fn index(State(node): State<Arc<Node>>, call: Call) -> ApiResult {
    check_node(&node, call.params.str("node").unwrap_or_default())?;
    Data::new(json!([{ "name": "log" }, { "name": "status" }]))
}

pub async fn status(State(node): State<Arc<Node>>, call: Call) -> ApiResult {
    check_node(&node, call.params.str("node").unwrap_or_default())?;
    let upid = call.params.str("upid").unwrap_or_default();
    Data::new(node.tasks.status(upid).map_err(task_error)?)
}

pub async fn log(State(node): State<Arc<Node>>, call: Call) -> ApiResult {
    let p = &call.params;
    check_node(&node, p.str("node").unwrap_or_default())?;
    let upid = p.str("upid").unwrap_or_default();
    let start = p.int("start").unwrap_or(0).max(0) as usize;
    let limit = p.int("limit").unwrap_or(50).max(0) as usize;
    let (lines, total) = node
        .tasks
        .log_lines(upid, start, limit)
        .map_err(task_error)?;
    let lines: Vec<_> = lines
        .into_iter()
        .map(|(n, t)| json!({ "n": n, "t": t }))
        .collect();
    Ok(Data::new(lines)?.with_total(total as u64))
}

pub async fn stop(State(node): State<Arc<Node>>, call: Call) -> ApiResult {
    check_node(&node, call.params.str("node").unwrap_or_default())?;
    let upid = call.params.str("upid").unwrap_or_default();
    node.tasks.status(upid).map_err(task_error)?;
    node.tasks.stop(upid);
    Ok(Data::null())
}
