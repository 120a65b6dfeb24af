//! CPU model and topology, memory, NUMA nodes.

use std::collections::BTreeMap;

use hemiron_pve::views::{Cpu, Memory};

use super::Builder;

/// PVE's `x86-64-vN` models are qemu64 plus feature flags (qemu64 already has cx16,
/// lahf_lm and pni).
pub fn cpu_model(cputype: &str) -> (String, &'static str) {
    const V2: &str = "+popcnt,+sse4.1,+sse4.2,+ssse3";
    const V2_AES: &str = "+aes,+popcnt,+sse4.1,+sse4.2,+ssse3";
    const V3: &str =
        "+aes,+popcnt,+sse4.1,+sse4.2,+ssse3,+avx,+avx2,+bmi1,+bmi2,+f16c,+fma,+movbe,+xsave";
    const V4: &str = "+aes,+popcnt,+sse4.1,+sse4.2,+ssse3,+avx,+avx2,+bmi1,+bmi2,+f16c,+fma,+movbe,+xsave,+avx512f,+avx512bw,+avx512cd,+avx512dq,+avx512vl";
    match cputype {
        "x86-64-v2" => ("qemu64".into(), V2),
        "x86-64-v2-AES" => ("qemu64".into(), V2_AES),
        "x86-64-v3" => ("qemu64".into(), V3),
        "x86-64-v4" => ("qemu64".into(), V4),
        other => (other.to_string(), ""),
    }
}

impl Builder<'_> {
    fn cpu_arg(&mut self) -> String {
        let cpu = self.view("cpu", Cpu::parse).unwrap_or_default();
        // Proxmox's default when `cpu` is unset: kvm64 with KVM, qemu64 without.
        let default = if self.kvm { "kvm64" } else { "qemu64" };
        let cputype = cpu.cputype.clone().unwrap_or_else(|| default.to_string());
        let (model, model_flags) = cpu_model(&cputype);
        let mut arg = model.clone();
        if !model_flags.is_empty() {
            arg.push(',');
            arg.push_str(model_flags);
        }
        for f in &cpu.flags {
            arg.push_str(&format!(",{}{}", if f.enable { '+' } else { '-' }, f.name));
        }
        if cpu.hidden == Some(true) {
            arg.push_str(",kvm=off");
        }
        if let Some(v) = &cpu.hv_vendor_id {
            arg.push_str(&format!(",hv_vendor_id={v}"));
        }
        match cpu.phys_bits.as_deref() {
            Some("host") => arg.push_str(",host-phys-bits=true"),
            Some(n) => arg.push_str(&format!(",phys-bits={n}")),
            None => {}
        }
        if let Some(n) = cpu.guest_phys_bits {
            arg.push_str(&format!(",guest-phys-bits={n}"));
        }
        // Under KVM a model the host cannot provide must fail the start, not run a guest
        // that then dies on a missing instruction (Proxmox passes `enforce` too).
        if self.kvm && model != "host" && model != "max" {
            arg.push_str(",enforce");
        }
        arg
    }

    pub(super) fn cpu_memory(&mut self) {
        let num = |b: &Self, k: &str| -> u64 { b.get(k).and_then(|v| v.parse().ok()).unwrap_or(1) };
        let sockets = num(self, "sockets");
        let cores = num(self, "cores");
        let maxcpus = sockets * cores;
        let vcpus = self
            .get("vcpus")
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|v| *v > 0)
            .unwrap_or(maxcpus);
        if vcpus > maxcpus {
            self.error("vcpus", format!("maximum allowed vcpus is {maxcpus}"));
        }
        self.push(&[
            "-smp",
            &format!("{vcpus},sockets={sockets},cores={cores},maxcpus={maxcpus}"),
        ]);
        let cpu = self.cpu_arg();
        self.push(&["-cpu", &cpu]);
        let memory_mib = self
            .view("memory", Memory::parse)
            .map(|m| m.current)
            .unwrap_or(512);
        self.push(&["-m", &memory_mib.to_string()]);
        if let Some(b) = self
            .get("balloon")
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|b| *b > 0 && *b < memory_mib)
        {
            self.post.balloon_target = Some(b * 1024 * 1024);
        }
        self.numa(sockets, cores, memory_mib);
    }

    fn numa(&mut self, sockets: u64, cores: u64, memory_mib: u64) {
        let mut nodes: Vec<(u32, String)> = self
            .conf
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("numa")?.parse::<u32>().ok()?, v.clone())))
            .collect();
        nodes.sort_by_key(|(i, _)| *i);
        if !self.flag("numa", false) && nodes.is_empty() {
            return;
        }
        if nodes.is_empty() {
            // One node per socket with an equal share of memory, as Proxmox does.
            let per = memory_mib / sockets.max(1);
            for s in 0..sockets {
                let first = s * cores;
                let last = first + cores - 1;
                self.push(&[
                    "-object",
                    &format!("memory-backend-ram,id=ram-node{s},size={per}M"),
                    "-numa",
                    &format!("node,nodeid={s},cpus={first}-{last},memdev=ram-node{s}"),
                ]);
            }
            return;
        }
        for (i, v) in &nodes {
            let map: BTreeMap<&str, &str> =
                v.split(',').filter_map(|kv| kv.split_once('=')).collect();
            let size = map.get("memory").copied().unwrap_or("0");
            let mut backend = format!("memory-backend-ram,id=ram-node{i},size={size}M");
            if let Some(h) = map.get("hostnodes") {
                backend.push_str(&format!(",host-nodes={}", h.replace(';', ",host-nodes=")));
                backend.push_str(&format!(
                    ",policy={}",
                    map.get("policy").copied().unwrap_or("bind")
                ));
            }
            let mut node = format!("node,nodeid={i},memdev=ram-node{i}");
            if let Some(c) = map.get("cpus") {
                for range in c.split(';') {
                    node.push_str(&format!(",cpus={range}"));
                }
            }
            self.push(&["-object", &backend, "-numa", &node]);
        }
    }
}
