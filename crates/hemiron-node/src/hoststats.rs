//! What the host offers and uses: CPUs, memory, load and CPU usage, for `/nodes` and
//! `/nodes/{node}/status`.

use std::sync::Mutex;
use std::time::Instant;

/// Totals of /proc/stat's `cpu` line: (busy, total) jiffies.
fn cpu_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let vals: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = vals.iter().sum();
    // idle + iowait are not busy.
    let idle = vals.get(3).copied().unwrap_or(0) + vals.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// CPU usage sampled between calls.
#[derive(Debug)]
pub struct HostStats {
    last: Mutex<Option<(Instant, u64, u64, f64)>>,
}

/// Memory figures in bytes from /proc/meminfo.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    pub total: u64,
    pub free: u64,
    pub available: u64,
    pub used: u64,
    pub swap_total: u64,
    pub swap_free: u64,
}

/// The host CPU.
#[derive(Debug, Clone, Default)]
pub struct CpuInfo {
    pub model: String,
    pub cpus: u64,
    pub sockets: u64,
    pub cores: u64,
    pub mhz: String,
    pub flags: String,
}

impl Default for HostStats {
    fn default() -> Self {
        Self::new()
    }
}

impl HostStats {
    pub fn new() -> Self {
        Self {
            last: Mutex::new(None),
        }
    }

    /// CPU usage as a fraction of all CPUs since the previous sample (at least 1 s apart).
    pub fn cpu_usage(&self) -> f64 {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let Some((busy, total)) = cpu_jiffies() else {
            return 0.0;
        };
        let now = Instant::now();
        match *last {
            Some((at, _, _, usage)) if now.duration_since(at).as_secs_f64() < 1.0 => usage,
            Some((_, pbusy, ptotal, _)) => {
                let dt = total.saturating_sub(ptotal);
                let usage = if dt == 0 {
                    0.0
                } else {
                    busy.saturating_sub(pbusy) as f64 / dt as f64
                };
                *last = Some((now, busy, total, usage));
                usage
            }
            None => {
                let usage = if total == 0 {
                    0.0
                } else {
                    busy as f64 / total as f64
                };
                *last = Some((now, busy, total, usage));
                usage
            }
        }
    }
}

pub fn memory() -> Memory {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let get = |key: &str| -> u64 {
        info.lines()
            .find(|l| l.starts_with(key) && l[key.len()..].starts_with(':'))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    let total = get("MemTotal");
    let available = get("MemAvailable");
    Memory {
        total,
        free: get("MemFree"),
        available,
        used: total.saturating_sub(available),
        swap_total: get("SwapTotal"),
        swap_free: get("SwapFree"),
    }
}

pub fn cpu_info() -> CpuInfo {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |key: &str| {
        info.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    let cpus = info.lines().filter(|l| l.starts_with("processor")).count() as u64;
    let mut sockets: Vec<&str> = info
        .lines()
        .filter(|l| l.starts_with("physical id"))
        .filter_map(|l| l.split_once(':').map(|(_, v)| v.trim()))
        .collect();
    sockets.sort_unstable();
    sockets.dedup();
    let sockets = sockets.len().max(1) as u64;
    let cores_per_socket: u64 = field("cpu cores").parse().unwrap_or(cpus.max(1) / sockets);
    CpuInfo {
        model: field("model name"),
        cpus: cpus.max(1),
        sockets,
        cores: (cores_per_socket * sockets).max(1),
        mhz: field("cpu MHz"),
        flags: field("flags"),
    }
}

pub fn loadavg() -> Vec<String> {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .map(str::to_string)
        .collect()
}

pub fn uptime() -> u64 {
    crate::qemu::process::host_uptime().unwrap_or(0.0) as u64
}

/// `uname` fields.
pub fn kernel() -> (String, String, String, String) {
    let u = rustix::system::uname();
    (
        u.sysname().to_string_lossy().into_owned(),
        u.release().to_string_lossy().into_owned(),
        u.version().to_string_lossy().into_owned(),
        u.machine().to_string_lossy().into_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_figures_are_sane() {
        let m = memory();
        assert!(m.total > 0 && m.available <= m.total);
        let c = cpu_info();
        assert!(c.cpus >= 1);
        assert_eq!(loadavg().len(), 3);
        let s = HostStats::new();
        let u = s.cpu_usage();
        assert!((0.0..=1.0).contains(&u));
    }
}
