//! QEMU processes: launching them detached from the agent, finding them again after an agent
//! restart, and ending them.
//!
//! QEMU runs with `-daemonize`, so it is re-parented away from the agent and outlives it. The
//! launching parent exits only once the daemon finished initialising, so a configuration
//! error (bad device, missing file, KVM refusing a CPU model) comes back as the parent's exit
//! status and stderr, which go into the start task's log. A pid file and the QMP socket let a
//! restarted agent re-adopt running VMs.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::Command;
use tracing::debug;

/// Failure to launch or signal a QEMU process.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("failed to run {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// QEMU refused to start; `stderr` is what it printed.
    #[error("QEMU exited with {status}: {stderr}")]
    QemuFailed { status: String, stderr: String },
    #[error("QEMU started but its pid file {0} is missing or unreadable")]
    PidFile(PathBuf),
    #[error("failed to signal process {pid}")]
    Signal {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
}

/// The QEMU binary: `HEMIRON_QEMU` overrides the Debian default.
pub fn qemu_binary() -> String {
    std::env::var("HEMIRON_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".to_string())
}

/// Runs a QEMU command line that daemonizes, and returns the daemon's pid.
pub async fn launch(argv: &[String], pidfile: &Path) -> Result<u32, ProcessError> {
    let Some((program, args)) = argv.split_first() else {
        return Err(ProcessError::Spawn {
            program: String::new(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty command line"),
        });
    };
    let _ = std::fs::remove_file(pidfile);
    debug!(%program, "launching QEMU");
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .map_err(|source| ProcessError::Spawn {
            program: program.clone(),
            source,
        })?;
    if !out.status.success() {
        let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if stderr.is_empty() {
            stderr = String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        return Err(ProcessError::QemuFailed {
            status: out.status.to_string(),
            stderr,
        });
    }
    read_pidfile(pidfile).ok_or_else(|| ProcessError::PidFile(pidfile.to_path_buf()))
}

/// Reads a pid file.
pub fn read_pidfile(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// State letter of a process from `/proc/PID/stat` (`R`, `S`, `Z`…), if it exists.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Whether `pid` is a live (not zombie) process whose command line contains `marker` as
/// one argument, which guards against a recycled pid.
pub fn is_our_process(pid: u32, marker: &str) -> bool {
    if !matches!(proc_state(pid), Some(s) if s != 'Z' && s != 'X') {
        return false;
    }
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| raw.split(|b| *b == 0).any(|arg| arg == marker.as_bytes()))
        .unwrap_or(false)
}

/// Whether a process is gone (or only a zombie waiting to be reaped by init).
pub fn is_gone(pid: u32) -> bool {
    !matches!(proc_state(pid), Some(s) if s != 'Z' && s != 'X')
}

/// Sends a signal to a process; a process that is already gone is not an error.
pub fn signal(pid: u32, sig: rustix::process::Signal) -> Result<(), ProcessError> {
    let Some(p) = rustix::process::Pid::from_raw(pid as i32) else {
        return Ok(());
    };
    match rustix::process::kill_process(p, sig) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::SRCH) => Ok(()),
        Err(e) => Err(ProcessError::Signal {
            pid,
            source: e.into(),
        }),
    }
}

/// Polls until the process is gone or `timeout` passed; returns whether it is gone.
pub async fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if is_gone(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Ends a process: SIGTERM, then SIGKILL if it is still there after `grace`.
pub async fn terminate(pid: u32, grace: Duration) -> Result<(), ProcessError> {
    signal(pid, rustix::process::Signal::TERM)?;
    if wait_gone(pid, grace).await {
        return Ok(());
    }
    signal(pid, rustix::process::Signal::KILL)?;
    wait_gone(pid, Duration::from_secs(5)).await;
    Ok(())
}

/// Resource use of a process read from /proc.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcStats {
    /// utime + stime in clock ticks.
    pub cpu_ticks: u64,
    /// Start time in clock ticks after boot.
    pub start_ticks: u64,
    /// Resident set size in bytes.
    pub rss: u64,
}

/// Clock ticks per second (USER_HZ), which Linux fixes at 100 for /proc on x86.
pub const CLOCK_TICKS: u64 = 100;

pub fn proc_stats(pid: u32) -> Option<ProcStats> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // Fields after the command name, 0-based: state=0, utime=11, stime=12, starttime=19,
    // rss (pages)=21.
    let num = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    let page = rustix::param::page_size() as u64;
    Some(ProcStats {
        cpu_ticks: num(11)? + num(12)?,
        start_ticks: num(19)?,
        rss: num(21)? * page,
    })
}

/// Seconds since boot, from /proc/uptime.
pub fn host_uptime() -> Option<f64> {
    std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Seconds a process has been running.
pub fn process_uptime(pid: u32) -> Option<u64> {
    let stats = proc_stats(pid)?;
    let up = host_uptime()?;
    let started = stats.start_ticks as f64 / CLOCK_TICKS as f64;
    Some((up - started).max(0.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_found_and_stats_read() {
        let pid = std::process::id();
        assert!(!is_gone(pid));
        let stats = proc_stats(pid).unwrap();
        assert!(stats.rss > 0);
        assert!(process_uptime(pid).is_some());
        assert!(!is_our_process(pid, "--surely-not-an-argument-of-the-test"));
    }

    #[tokio::test]
    async fn launch_reports_failure_output() {
        let dir = tempfile::tempdir().unwrap();
        let argv = vec![
            "sh".to_string(),
            "-c".to_string(),
            "echo 'qemu: bad device' >&2; exit 1".to_string(),
        ];
        let err = launch(&argv, &dir.path().join("x.pid")).await.unwrap_err();
        assert!(err.to_string().contains("bad device"), "{err}");
    }
}
