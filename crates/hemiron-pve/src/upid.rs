//! UPIDs ("unique process IDs") name PVE tasks, and a task's exit status is
//! read from the last line of its log (`PVE::UPID`).
//!
//! Clients depend on the exact shape: proxmoxer asserts nine `:`-separated
//! fields (so the trailing colon matters) and Ansible takes the node from
//! field 1.

use std::fmt;
use std::str::FromStr;

use crate::schema::full_match;

/// A task identifier:
/// `UPID:<node>:<pid %08X>:<pstart %08X>:<starttime %08X>:<type>:<id>:<user>:`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Upid {
    /// The node the task runs on.
    pub node: String,
    /// The worker's process ID.
    pub pid: u32,
    /// The worker's start time in clock ticks since boot (may exceed 32 bits).
    pub pstart: u64,
    /// The task's start time, seconds since the epoch.
    pub starttime: i64,
    /// The task type (`qmstart`, `qmcreate`, ...).
    pub task_type: String,
    /// The object the task works on (a VMID, or empty).
    pub id: String,
    /// The user or API token that started it (`root@pam`, `root@pam!tok`).
    pub user: String,
}

impl Upid {
    /// The subdirectory PVE keeps the task's log in: the last hex digit of
    /// the start time (`/var/log/pve/tasks/<digit>/<UPID>`).
    pub fn log_subdir(&self) -> String {
        format!("{:X}", self.starttime & 0xf)
    }
}

impl fmt::Display for Upid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "UPID:{}:{:08X}:{:08X}:{:08X}:{}:{}:{}:",
            self.node, self.pid, self.pstart, self.starttime, self.task_type, self.id, self.user
        )
    }
}

/// Text that is not a UPID (PVE: "unable to parse worker upid").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unable to parse worker upid '{0}'")]
pub struct ParseUpidError(pub String);

impl FromStr for Upid {
    type Err = ParseUpidError;

    /// Parses with PVE's decode regex: node name, 8 hex digits of pid, 8 or 9
    /// of pstart, 8 of starttime, then type, id (may be empty) and user,
    /// none containing `:`, `/` or whitespace, and the trailing colon.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseUpidError(s.to_string());
        let re = r"UPID:([a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?):([0-9A-Fa-f]{8}):([0-9A-Fa-f]{8,9}):([0-9A-Fa-f]{8}):([^:\s/]+):([^:\s/]*):([^:\s/]+):";
        if !full_match(re, s) {
            return Err(err());
        }
        let body = s.trim_end_matches('\n');
        let f: Vec<&str> = body.split(':').collect();
        // UPID, node, pid, pstart, starttime, type, id, user, "" (trailing colon)
        let [_, node, pid, pstart, starttime, task_type, id, user, _] = f.as_slice() else {
            return Err(err());
        };
        Ok(Upid {
            node: (*node).to_string(),
            pid: u32::from_str_radix(pid, 16).map_err(|_| err())?,
            pstart: u64::from_str_radix(pstart, 16).map_err(|_| err())?,
            starttime: i64::from_str_radix(starttime, 16).map_err(|_| err())?,
            task_type: (*task_type).to_string(),
            id: (*id).to_string(),
            user: (*user).to_string(),
        })
    }
}

/// A finished task's exit status, from its log's last line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitStatus {
    /// `TASK OK`.
    Ok,
    /// `TASK WARNINGS: <n>`: succeeded with warnings.
    Warnings(u64),
    /// `TASK ERROR: <message>`.
    Error(String),
    /// Anything else (e.g. the worker was killed).
    Unexpected,
}

impl ExitStatus {
    /// Reads PVE's task-end marker from a log's last line.
    pub fn from_last_line(line: &str) -> ExitStatus {
        let line = line.strip_suffix('\n').unwrap_or(line);
        if line == "TASK OK" {
            return ExitStatus::Ok;
        }
        if let Some(msg) = line.strip_prefix("TASK ERROR: ") {
            if !msg.is_empty() && !msg.contains('\n') {
                return ExitStatus::Error(msg.to_string());
            }
        }
        if let Some(n) = line.strip_prefix("TASK WARNINGS: ") {
            if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) {
                return ExitStatus::Warnings(n.parse().unwrap_or(u64::MAX));
            }
        }
        ExitStatus::Unexpected
    }

    /// Whether PVE counts this as an error (anything but OK and warnings).
    pub fn is_error(&self) -> bool {
        matches!(self, ExitStatus::Error(_) | ExitStatus::Unexpected)
    }

    /// The line that ends a task log with this status.
    pub fn log_line(&self) -> String {
        match self {
            ExitStatus::Ok => "TASK OK".to_string(),
            ExitStatus::Warnings(n) => format!("TASK WARNINGS: {n}"),
            ExitStatus::Error(msg) => format!("TASK ERROR: {msg}"),
            ExitStatus::Unexpected => String::new(),
        }
    }
}

impl fmt::Display for ExitStatus {
    /// The `exitstatus` the task status API reports: `OK`, `WARNINGS: n`,
    /// the error message, or `unexpected status`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Ok => f.write_str("OK"),
            ExitStatus::Warnings(n) => write!(f, "WARNINGS: {n}"),
            ExitStatus::Error(msg) => f.write_str(msg),
            ExitStatus::Unexpected => f.write_str("unexpected status"),
        }
    }
}

/// `PVE::UPID::read_status` on an already extracted last line: the
/// `exitstatus` string (`OK`, `WARNINGS: n`, the error text, or
/// `unexpected status`).
pub fn exit_status_from_last_line(line: &str) -> String {
    ExitStatus::from_last_line(line).to_string()
}

/// `PVE::UPID::status_is_error`: everything but `OK` and `WARNINGS: <n>`.
pub fn status_is_error(status: &str) -> bool {
    !(status == "OK" || full_match(r"WARNINGS: \d+", status))
}

/// `PVE::UPID::normalize_status_type`: `ok`, `warning`, `error` or `unknown`
/// (as the task list's `statusfilter` uses them).
pub fn normalize_status_type(status: &str) -> &'static str {
    if status.is_empty() || status == "0" || status == "unexpected status" {
        "unknown"
    } else if status == "OK" {
        "ok"
    } else if full_match(r"WARNINGS: \d+", status) {
        "warning"
    } else {
        "error"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_shape() {
        let upid = Upid {
            node: "node1".into(),
            pid: 0xFF1FD,
            pstart: 0x10F9374C,
            starttime: 0x630D702C,
            task_type: "vzdump".into(),
            id: "110".into(),
            user: "root@pam".into(),
        };
        let text = upid.to_string();
        assert_eq!(
            text,
            "UPID:node1:000FF1FD:10F9374C:630D702C:vzdump:110:root@pam:"
        );
        assert_eq!(text.split(':').count(), 9);
        assert_eq!(text.parse::<Upid>(), Ok(upid.clone()));
        assert_eq!(upid.log_subdir(), "C");
    }

    #[test]
    fn decode_edge_cases() {
        let long = "UPID:n:00000001:1234ABCDE:630d702c:imgcopy::root@pam!tok:";
        let u: Upid = long.parse().unwrap();
        assert_eq!(u.pstart, 0x1234ABCDE);
        assert_eq!(u.id, "");
        assert_eq!(u.user, "root@pam!tok");
        for bad in [
            "UPID:n:1:2:3:a:b:c:",
            "UPID:n:00000001:00000002:00000003:a:b:c",
            "UPID:-n:00000001:00000002:00000003:a:b:c:",
            "UPID:n:00000001:00000002:00000003:a b:b:c:",
            "UPID:n:00000001:00000002:00000003::b:c:",
            "XUPID:n:00000001:00000002:00000003:a:b:c:",
        ] {
            assert!(bad.parse::<Upid>().is_err(), "{bad}");
        }
    }

    #[test]
    fn exit_statuses() {
        assert_eq!(exit_status_from_last_line("TASK OK"), "OK");
        assert_eq!(
            exit_status_from_last_line("TASK WARNINGS: 3"),
            "WARNINGS: 3"
        );
        assert_eq!(
            exit_status_from_last_line("TASK ERROR: disk full"),
            "disk full"
        );
        assert_eq!(exit_status_from_last_line("starting"), "unexpected status");
        assert_eq!(
            exit_status_from_last_line("TASK ERROR: "),
            "unexpected status"
        );
        assert!(!status_is_error("OK"));
        assert!(!status_is_error("WARNINGS: 2"));
        assert!(status_is_error("disk full"));
        assert!(status_is_error("unexpected status"));
        assert_eq!(normalize_status_type("WARNINGS: 1"), "warning");
        assert_eq!(normalize_status_type("boom"), "error");
        assert!(ExitStatus::from_last_line("TASK ERROR: x").is_error());
        assert_eq!(ExitStatus::Warnings(2).log_line(), "TASK WARNINGS: 2");
    }
}
