//! What a VM is doing: the fields of `GET /nodes/{node}/qemu` entries and `status/current`.

use std::time::Instant;

use serde_json::{json, Value};

use super::update::effective_props;
use super::VmManager;
use crate::qemu::process;
use crate::vm::forwards;

/// The previous CPU reading of a VM, to turn tick counters into a usage fraction.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    at: Instant,
    ticks: u64,
    usage: f64,
}

/// One VM's status.
#[derive(Debug, Clone)]
pub struct VmStatus {
    pub vmid: u32,
    pub name: String,
    pub running: bool,
    pub qmpstatus: String,
    pub pid: Option<u32>,
    pub uptime: u64,
    pub cpus: u64,
    pub cpu: f64,
    pub maxmem: u64,
    pub mem: u64,
    pub memhost: u64,
    pub maxdisk: u64,
    pub diskread: u64,
    pub diskwrite: u64,
    pub netin: u64,
    pub netout: u64,
    pub lock: Option<String>,
    pub tags: Option<String>,
    pub template: bool,
    pub forwards: Option<forwards::VmForwards>,
    pub running_machine: Option<String>,
    pub running_qemu: Option<String>,
    pub agent: bool,
    pub serial: bool,
}

impl VmStatus {
    /// The fields Proxmox lists for a VM, plus `hemiron-forwards`.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "vmid": self.vmid,
            "name": self.name,
            "status": if self.running { "running" } else { "stopped" },
            "uptime": self.uptime,
            "cpus": self.cpus,
            "cpu": self.cpu,
            "maxmem": self.maxmem,
            "mem": self.mem,
            "maxdisk": self.maxdisk,
            "disk": 0,
            "diskread": self.diskread,
            "diskwrite": self.diskwrite,
            "netin": self.netin,
            "netout": self.netout,
            "template": u8::from(self.template),
        });
        if self.running {
            v["qmpstatus"] = json!(self.qmpstatus);
            v["memhost"] = json!(self.memhost);
        }
        if let Some(pid) = self.pid {
            v["pid"] = json!(pid);
        }
        if let Some(lock) = &self.lock {
            v["lock"] = json!(lock);
        }
        if let Some(tags) = &self.tags {
            v["tags"] = json!(tags);
        }
        if let Some(f) = &self.forwards {
            v["hemiron-forwards"] = forwards::to_json(f);
        }
        v
    }

    /// `status/current`: the list fields plus what Proxmox adds for one VM.
    pub fn to_current_json(&self) -> Value {
        let mut v = self.to_json();
        v["qmpstatus"] = json!(if self.running {
            self.qmpstatus.as_str()
        } else {
            "stopped"
        });
        v["ha"] = json!({ "managed": 0 });
        if self.agent {
            v["agent"] = json!(1);
        }
        if self.serial {
            v["serial"] = json!(1);
        }
        if let Some(m) = &self.running_machine {
            v["running-machine"] = json!(m);
        }
        if let Some(q) = &self.running_qemu {
            v["running-qemu"] = json!(q);
        }
        v
    }
}

impl VmManager {
    fn cpu_usage(&self, vmid: u32, ticks: u64, cpus: u64) -> f64 {
        let mut samples = self.cpu_samples.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let prev = samples.get(&vmid).copied();
        match prev {
            Some(p) if now.duration_since(p.at).as_secs_f64() < 1.0 => p.usage,
            Some(p) => {
                let secs = now.duration_since(p.at).as_secs_f64();
                let used = ticks.saturating_sub(p.ticks) as f64 / process::CLOCK_TICKS as f64;
                // A fraction of the VM's CPUs, as Proxmox reports it.
                let usage = (used / secs / cpus.max(1) as f64).clamp(0.0, 1.0);
                samples.insert(
                    vmid,
                    CpuSample {
                        at: now,
                        ticks,
                        usage,
                    },
                );
                usage
            }
            None => {
                samples.insert(
                    vmid,
                    CpuSample {
                        at: now,
                        ticks,
                        usage: 0.0,
                    },
                );
                0.0
            }
        }
    }

    /// The status of one VM; `None` if it has no config.
    pub async fn vm_status(&self, vmid: u32) -> Option<VmStatus> {
        let loaded = self.store.load(vmid).ok()?;
        let props = effective_props(&loaded.conf);
        let main = &loaded.conf.main.props;
        let sockets: u64 = main
            .get("sockets")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        let cores: u64 = main.get("cores").and_then(|v| v.parse().ok()).unwrap_or(1);
        let cpus = main
            .get("vcpus")
            .and_then(|v| v.parse().ok())
            .filter(|v| *v > 0)
            .unwrap_or(sockets * cores);
        let memory_mib = main
            .get("memory")
            .and_then(|v| hemiron_pve::views::Memory::parse(v).ok())
            .map(|m| m.current)
            .unwrap_or(512);
        let maxmem = memory_mib * 1024 * 1024;
        let maxdisk = self.boot_disk_size(&props);
        let running = self.running(vmid);
        let mut st = VmStatus {
            vmid,
            name: main
                .get("name")
                .cloned()
                .unwrap_or_else(|| format!("VM {vmid}")),
            running: running.is_some(),
            qmpstatus: "stopped".into(),
            pid: None,
            uptime: 0,
            cpus,
            cpu: 0.0,
            maxmem,
            mem: 0,
            memhost: 0,
            maxdisk,
            diskread: 0,
            diskwrite: 0,
            netin: 0,
            netout: 0,
            lock: main.get("lock").cloned(),
            tags: main.get("tags").cloned(),
            template: main.get("template").is_some_and(|t| t == "1"),
            forwards: super::user_net0(main)
                .then(|| self.forwards.get(vmid))
                .flatten(),
            running_machine: None,
            running_qemu: None,
            agent: main
                .get("agent")
                .and_then(|a| hemiron_pve::views::Agent::parse(a).ok())
                .is_some_and(|a| a.enabled),
            serial: main.contains_key("serial0"),
        };
        if let Some(run) = running {
            let pid = run.owner.pid;
            st.pid = Some(pid);
            st.qmpstatus = run.owner.info().qmpstatus;
            st.uptime = process::process_uptime(pid).unwrap_or(0);
            if let Some(ps) = process::proc_stats(pid) {
                st.cpu = self.cpu_usage(vmid, ps.cpu_ticks, cpus);
                st.memhost = ps.rss;
                st.mem = ps.rss.min(maxmem);
            }
            if let Ok(io) = run.owner.block_stats().await {
                st.diskread = io.rd_bytes;
                st.diskwrite = io.wr_bytes;
            }
            let net = crate::vm::netstats::read(&self.run_dir(), vmid);
            st.netin = net.rx_bytes;
            st.netout = net.tx_bytes;
            st.running_machine = Some(run.machine.clone());
            st.running_qemu = Some(run.qemu_version.clone());
        }
        Some(st)
    }

    /// Size of the disk the VM boots from (what Proxmox reports as `maxdisk`).
    fn boot_disk_size(&self, props: &std::collections::BTreeMap<String, String>) -> u64 {
        let order_first = props
            .get("boot")
            .and_then(|b| hemiron_pve::views::Boot::parse(b).ok())
            .and_then(|b| b.order)
            .and_then(|o| o.into_iter().find(|d| !d.starts_with("net")));
        let key = order_first.or_else(|| {
            crate::qemu::cmdline::drives(props)
                .into_iter()
                .find(|(_, v)| !v.contains("media=cdrom"))
                .map(|(k, _)| k.to_string())
        });
        key.and_then(|k| props.get(&k).map(|v| (k, v.clone())))
            .and_then(|(k, v)| {
                let dk: hemiron_pve::views::DriveKey = k.parse().ok()?;
                hemiron_pve::views::Drive::parse(dk, &v, false).ok()?.size
            })
            .unwrap_or(0)
    }

    /// Status of every VM.
    pub async fn list_status(&self) -> Vec<VmStatus> {
        let mut out = Vec::new();
        for vmid in self.store.list() {
            if let Some(s) = self.vm_status(vmid).await {
                out.push(s);
            }
        }
        out
    }
}
