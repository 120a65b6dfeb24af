//! Placement: which node gets a new VPS.
//!
//! A node is a candidate if it is online, not in maintenance, holds the template (a linked
//! clone lives beside its base), has room — reserved vCPUs within `cpus × overcommit` and
//! reserved memory within its memory, counting this VPS — and hosts no VPS of the same
//! anti-affinity group. Among candidates, `spread` takes the one with the most memory left
//! (then fewest vCPUs reserved), `pack` the one with the least that still fits, so that
//! large VPSes still find room elsewhere. Ties go to the node name, for determinism.

use std::str::FromStr;

use crate::store::fleet::NodeRow;

/// How to choose among nodes that fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    #[default]
    Spread,
    Pack,
}

impl FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "spread" => Ok(Policy::Spread),
            "pack" => Ok(Policy::Pack),
            _ => Err(format!("unknown placement policy {s:?} (spread, pack)")),
        }
    }
}

/// What a VPS needs.
#[derive(Debug, Clone, Copy)]
pub struct Need {
    pub vcpus: i64,
    pub memory_mib: i64,
}

/// A node that may host the VPS, and the template VM to clone there.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub node: NodeRow,
    pub template_vmid: i64,
}

/// Whether `node` can take `need` on top of what it has reserved.
pub fn fits(node: &NodeRow, need: Need, cpu_overcommit: i64) -> bool {
    node.status == "online"
        && !node.maintenance
        && node.reserved_vcpus + need.vcpus <= node.cpus * cpu_overcommit
        && node.reserved_memory_mib + need.memory_mib <= node.memory_mib
}

/// The candidates in order of preference (the caller reserves on the first that still fits
/// at commit time). `excluded`: (cluster id, node name) pairs of the anti-affinity group.
pub fn rank(
    candidates: Vec<Candidate>,
    need: Need,
    policy: Policy,
    cpu_overcommit: i64,
    excluded: &[(String, String)],
) -> Vec<Candidate> {
    let mut fit: Vec<Candidate> = candidates
        .into_iter()
        .filter(|c| fits(&c.node, need, cpu_overcommit))
        .filter(|c| {
            !excluded
                .iter()
                .any(|(cl, n)| *cl == c.node.cluster_id && *n == c.node.name)
        })
        .collect();
    let free = |n: &NodeRow| n.memory_mib - n.reserved_memory_mib;
    fit.sort_by(|a, b| {
        let order = match policy {
            Policy::Spread => free(&b.node)
                .cmp(&free(&a.node))
                .then(a.node.reserved_vcpus.cmp(&b.node.reserved_vcpus)),
            Policy::Pack => free(&a.node)
                .cmp(&free(&b.node))
                .then(b.node.reserved_vcpus.cmp(&a.node.reserved_vcpus)),
        };
        order.then_with(|| a.node.name.cmp(&b.node.name))
    });
    fit
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, mem: i64, reserved: i64) -> Candidate {
        Candidate {
            node: NodeRow {
                id: name.into(),
                cluster_id: "c".into(),
                name: name.into(),
                status: "online".into(),
                accel: Some("tcg".into()),
                cpus: 2,
                memory_mib: mem,
                reserved_vcpus: 0,
                reserved_memory_mib: reserved,
                reserved_disk_gib: 0,
                maintenance: false,
                updated_at: 0,
            },
            template_vmid: 9000,
        }
    }

    fn names(v: &[Candidate]) -> Vec<&str> {
        v.iter().map(|c| c.node.name.as_str()).collect()
    }

    const NEED: Need = Need {
        vcpus: 1,
        memory_mib: 512,
    };

    #[test]
    fn spread_prefers_free_memory_and_pack_the_tightest_fit() {
        let c = || {
            vec![
                node("a", 4096, 3000),
                node("b", 4096, 1000),
                node("c", 4096, 3700),
            ]
        };
        assert_eq!(names(&rank(c(), NEED, Policy::Spread, 4, &[])), ["b", "a"]);
        assert_eq!(names(&rank(c(), NEED, Policy::Pack, 4, &[])), ["a", "b"]);
    }

    #[test]
    fn full_offline_maintenance_and_anti_affinity_nodes_are_skipped() {
        let mut off = node("off", 8192, 0);
        off.node.status = "offline".into();
        let mut maint = node("maint", 8192, 0);
        maint.node.maintenance = true;
        let mut cpu_full = node("cpu", 8192, 0);
        cpu_full.node.reserved_vcpus = 8;
        let c = vec![
            off,
            maint,
            cpu_full,
            node("x", 8192, 0),
            node("y", 8192, 100),
        ];
        let ranked = rank(c, NEED, Policy::Spread, 4, &[("c".into(), "x".into())]);
        assert_eq!(names(&ranked), ["y"]);
    }
}
