//! Host-side limits on a running QEMU: CPU affinity and cgroup CPU quota/weight.
//!
//! Proxmox applies `affinity` with `taskset` and `cpulimit`/`cpuunits` through the VM's
//! cgroup; here the same happens right after the start, on every thread of the process.
//! cgroup v2 (`cpu.max`, `cpu.weight`) is used where its cpu controller is available, v1
//! (`cpu.cfs_quota_us`, `cpu.shares`) otherwise.

use std::path::{Path, PathBuf};

/// Failure to apply a limit.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("invalid CPU list '{0}'")]
    BadCpuList(String),
    #[error("failed to set the CPU affinity of thread {tid}")]
    Affinity {
        tid: i32,
        #[source]
        source: std::io::Error,
    },
    #[error("no cgroup cpu controller is available on this host")]
    NoCgroup,
    #[error("failed to write {path}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Parses `0,5,8-11` into CPU numbers.
pub fn parse_cpu_list(list: &str) -> Result<Vec<usize>, LimitError> {
    let bad = || LimitError::BadCpuList(list.to_string());
    let mut cpus = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let a: usize = a.parse().map_err(|_| bad())?;
                let b: usize = b.parse().map_err(|_| bad())?;
                if a > b || b >= 4096 {
                    return Err(bad());
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().map_err(|_| bad())?),
        }
    }
    if cpus.is_empty() {
        return Err(bad());
    }
    Ok(cpus)
}

/// Pins every thread of `pid` to `list`.
pub fn set_affinity(pid: u32, list: &str) -> Result<(), LimitError> {
    let cpus = parse_cpu_list(list)?;
    let mut set = rustix::thread::CpuSet::new();
    for c in cpus {
        set.set(c);
    }
    let tids: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    for tid in tids {
        let Some(p) = rustix::process::Pid::from_raw(tid) else {
            continue;
        };
        rustix::thread::sched_setaffinity(Some(p), &set).map_err(|e| LimitError::Affinity {
            tid,
            source: e.into(),
        })?;
    }
    Ok(())
}

fn write(path: &Path, value: &str) -> Result<(), LimitError> {
    std::fs::write(path, value).map_err(|source| LimitError::Cgroup {
        path: path.to_path_buf(),
        source,
    })
}

/// Puts `pid` in a per-VM cgroup with a CPU limit (in CPUs) and weight.
pub fn set_cpu_limits(
    vmid: u32,
    pid: u32,
    cpulimit: Option<f64>,
    cpuunits: Option<u64>,
) -> Result<(), LimitError> {
    if cpulimit.is_none() && cpuunits.is_none() {
        return Ok(());
    }
    let v2_root = Path::new("/sys/fs/cgroup");
    let v2 = std::fs::read_to_string(v2_root.join("cgroup.controllers"))
        .map(|c| c.split_whitespace().any(|x| x == "cpu"))
        .unwrap_or(false);
    let v1_root = Path::new("/sys/fs/cgroup/cpu");
    let dir = if v2 {
        v2_root.join("hemiron.slice").join(format!("vm-{vmid}"))
    } else if v1_root.join("cpu.shares").exists() {
        v1_root.join("hemiron").join(format!("vm-{vmid}"))
    } else {
        return Err(LimitError::NoCgroup);
    };
    std::fs::create_dir_all(&dir).map_err(|source| LimitError::Cgroup {
        path: dir.clone(),
        source,
    })?;
    if v2 {
        if let Some(parent) = dir.parent() {
            // Child cgroups only get the cpu controller if the parent delegates it.
            let _ = std::fs::write(parent.join("cgroup.subtree_control"), "+cpu");
        }
        if let Some(limit) = cpulimit {
            write(
                &dir.join("cpu.max"),
                &format!("{} 100000", (limit * 100_000.0) as u64),
            )?;
        }
        if let Some(units) = cpuunits {
            write(&dir.join("cpu.weight"), &units.clamp(1, 10_000).to_string())?;
        }
    } else {
        if let Some(limit) = cpulimit {
            write(&dir.join("cpu.cfs_period_us"), "100000")?;
            write(
                &dir.join("cpu.cfs_quota_us"),
                &((limit * 100_000.0) as u64).to_string(),
            )?;
        }
        if let Some(units) = cpuunits {
            write(
                &dir.join("cpu.shares"),
                &units.clamp(2, 262_144).to_string(),
            )?;
        }
    }
    write(&dir.join("cgroup.procs"), &pid.to_string())
}

/// Removes a VM's cgroup after it stopped (it is empty then).
pub fn remove_cgroup(vmid: u32) {
    for dir in [
        PathBuf::from(format!("/sys/fs/cgroup/hemiron.slice/vm-{vmid}")),
        PathBuf::from(format!("/sys/fs/cgroup/cpu/hemiron/vm-{vmid}")),
    ] {
        let _ = std::fs::remove_dir(dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(
            parse_cpu_list("0,5,8-11").unwrap(),
            vec![0, 5, 8, 9, 10, 11]
        );
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("x").is_err());
        assert!(parse_cpu_list("").is_err());
    }
}
