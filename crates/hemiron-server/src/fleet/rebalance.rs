//! Rebalancing a cluster as Proxmox's static CRS mode scores nodes.
//!
//! Each node's load is what its VPSes are configured with: vCPUs over its CPUs, memory over
//! its memory. A node is scored for a VPS "as if it already ran there": the cluster state
//! after the move is described by four criteria — the average (root mean square) and the
//! highest CPU load, the average and the highest memory load, each plus 1.0 so that tiny
//! differences are not magnified — and TOPSIS ranks the candidate states with weights −1,
//! −2, −5 and −10 (negative: lower is better; memory counts most, as in Proxmox's
//! `proxmox-resource-scheduling`).
//!
//! The cluster's imbalance is the coefficient of variation of the nodes' loads (load: the
//! mean of CPU and memory load), divided by √(n−1) so that it lies in [0, 1]. A plan moves
//! VPSes only while the imbalance is above [`THRESHOLD`], one at a time, each move the one
//! that lowers it most, and only if it lowers it by at least [`MARGIN`]; moves keep nodes
//! within their capacity and VPSes of one anti-affinity group on different nodes.

use std::collections::BTreeMap;

/// Imbalance above which a cluster is rebalanced (Proxmox's default threshold).
pub const THRESHOLD: f64 = 0.3;
/// The least improvement of the imbalance a move must bring (Proxmox's default margin).
pub const MARGIN: f64 = 0.1;
/// Weights of (average CPU, highest CPU, average memory, highest memory).
pub const WEIGHTS: [f64; 4] = [-1.0, -2.0, -5.0, -10.0];

/// A node as the scheduler sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeCap {
    pub name: String,
    pub cpus: f64,
    pub memory_mib: f64,
    /// Online and not in maintenance: may receive VPSes.
    pub usable: bool,
    /// vCPUs a node may hold per CPU.
    pub overcommit: f64,
}

/// A VPS as the scheduler sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Guest {
    pub id: String,
    pub node: String,
    pub vcpus: f64,
    pub memory_mib: f64,
    /// Anti-affinity group (tenant-qualified): members stay on different nodes.
    pub group: Option<String>,
}

/// One planned move.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Move {
    pub guest: String,
    pub from: String,
    pub to: String,
    /// The cluster's imbalance once this move (and those before it) is made.
    pub imbalance_after: f64,
}

/// Per node (in `nodes` order): (CPU load, memory load) as fractions.
fn loads(nodes: &[NodeCap], guests: &[Guest]) -> Vec<(f64, f64)> {
    nodes
        .iter()
        .map(|n| {
            let (c, m) = guests
                .iter()
                .filter(|g| g.node == n.name)
                .fold((0.0, 0.0), |(c, m), g| (c + g.vcpus, m + g.memory_mib));
            (
                if n.cpus > 0.0 { c / n.cpus } else { 0.0 },
                if n.memory_mib > 0.0 {
                    m / n.memory_mib
                } else {
                    0.0
                },
            )
        })
        .collect()
}

/// The four criteria of a cluster state.
fn criteria(loads: &[(f64, f64)]) -> [f64; 4] {
    let n = loads.len().max(1) as f64;
    let rms = |f: &dyn Fn(&(f64, f64)) -> f64| {
        (loads.iter().map(|l| f(l).powi(2)).sum::<f64>() / n).sqrt()
    };
    let max = |f: &dyn Fn(&(f64, f64)) -> f64| loads.iter().map(f).fold(0.0, f64::max);
    [
        1.0 + rms(&|l| l.0),
        1.0 + max(&|l| l.0),
        1.0 + rms(&|l| l.1),
        1.0 + max(&|l| l.1),
    ]
}

/// TOPSIS: scores each alternative (a row of criteria) in [0, 1], higher is better.
/// Negative weights mark criteria to minimise.
pub fn topsis(alternatives: &[[f64; 4]], weights: &[f64; 4]) -> Vec<f64> {
    if alternatives.is_empty() {
        return Vec::new();
    }
    let total: f64 = weights.iter().map(|w| w.abs()).sum();
    let mut norm = [0.0f64; 4];
    for (j, n) in norm.iter_mut().enumerate() {
        *n = alternatives.iter().map(|a| a[j] * a[j]).sum::<f64>().sqrt();
    }
    let weighted: Vec<[f64; 4]> = alternatives
        .iter()
        .map(|a| {
            let mut v = [0.0; 4];
            for j in 0..4 {
                let x = if norm[j] > 0.0 { a[j] / norm[j] } else { 0.0 };
                v[j] = x * weights[j].abs() / total;
            }
            v
        })
        .collect();
    let mut best = [0.0f64; 4];
    let mut worst = [0.0f64; 4];
    for j in 0..4 {
        let col = weighted.iter().map(|v| v[j]);
        let (lo, hi) = col.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
            (lo.min(x), hi.max(x))
        });
        (best[j], worst[j]) = if weights[j] < 0.0 { (lo, hi) } else { (hi, lo) };
    }
    weighted
        .iter()
        .map(|v| {
            let d = |ideal: &[f64; 4]| {
                v.iter()
                    .zip(ideal)
                    .map(|(x, i)| (x - i).powi(2))
                    .sum::<f64>()
                    .sqrt()
            };
            let (to_best, to_worst) = (d(&best), d(&worst));
            if to_best + to_worst == 0.0 {
                // Every alternative is the same.
                1.0
            } else {
                to_worst / (to_best + to_worst)
            }
        })
        .collect()
}

/// The cluster's imbalance in [0, 1] (0: every node equally loaded).
pub fn imbalance(nodes: &[NodeCap], guests: &[Guest]) -> f64 {
    let l: Vec<f64> = loads(nodes, guests)
        .iter()
        .map(|(c, m)| (c + m) / 2.0)
        .collect();
    let n = l.len();
    if n < 2 {
        return 0.0;
    }
    let mean = l.iter().sum::<f64>() / n as f64;
    if mean <= 0.0 {
        return 0.0;
    }
    let sd = (l.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
    (sd / mean / ((n - 1) as f64).sqrt()).clamp(0.0, 1.0)
}

/// Whether `guest` may go to `node`: usable, room left, no member of its group there.
fn may_go(guests: &[Guest], guest: &Guest, node: &NodeCap) -> bool {
    if !node.usable || node.name == guest.node {
        return false;
    }
    let here = guests
        .iter()
        .filter(|g| g.node == node.name && g.id != guest.id);
    let (c, m) = here
        .clone()
        .fold((0.0, 0.0), |(c, m), g| (c + g.vcpus, m + g.memory_mib));
    let group_clash = guest
        .group
        .as_ref()
        .is_some_and(|grp| here.clone().any(|g| g.group.as_ref() == Some(grp)));
    c + guest.vcpus <= node.cpus * node.overcommit
        && m + guest.memory_mib <= node.memory_mib
        && !group_clash
}

/// Nodes `guest` may go to, each with its TOPSIS score (the cluster as if the guest ran
/// there), best first.
pub fn score_nodes(nodes: &[NodeCap], guests: &[Guest], guest: &Guest) -> Vec<(String, f64)> {
    let candidates: Vec<&NodeCap> = nodes.iter().filter(|n| may_go(guests, guest, n)).collect();
    let states: Vec<[f64; 4]> = candidates
        .iter()
        .map(|n| criteria(&loads(nodes, &moved(guests, &guest.id, &n.name))))
        .collect();
    let scores = topsis(&states, &WEIGHTS);
    let mut out: Vec<(String, f64)> = candidates
        .iter()
        .zip(scores)
        .map(|(n, s)| (n.name.clone(), s))
        .collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out
}

fn moved(guests: &[Guest], id: &str, to: &str) -> Vec<Guest> {
    guests
        .iter()
        .map(|g| {
            let mut g = g.clone();
            if g.id == id {
                g.node = to.to_string();
            }
            g
        })
        .collect()
}

/// The moves that rebalance the cluster (at most `max_moves`), and its imbalance before.
pub fn plan(nodes: &[NodeCap], guests: &[Guest], max_moves: usize) -> (f64, Vec<Move>) {
    let before = imbalance(nodes, guests);
    let mut current: Vec<Guest> = guests.to_vec();
    let mut moves = Vec::new();
    let mut moved_already: BTreeMap<String, ()> = BTreeMap::new();
    while moves.len() < max_moves {
        let now = imbalance(nodes, &current);
        if now <= THRESHOLD {
            break;
        }
        let mut best: Option<(String, String, f64)> = None;
        for g in current
            .iter()
            .filter(|g| !moved_already.contains_key(&g.id))
        {
            let Some((to, _)) = score_nodes(nodes, &current, g).into_iter().next() else {
                continue;
            };
            let after = imbalance(nodes, &moved(&current, &g.id, &to));
            if now - after >= MARGIN && best.as_ref().is_none_or(|b| after < b.2) {
                best = Some((g.id.clone(), to, after));
            }
        }
        let Some((id, to, after)) = best else {
            break;
        };
        let from = current
            .iter()
            .find(|g| g.id == id)
            .map(|g| g.node.clone())
            .unwrap_or_default();
        current = moved(&current, &id, &to);
        moved_already.insert(id.clone(), ());
        moves.push(Move {
            guest: id,
            from,
            to,
            imbalance_after: after,
        });
    }
    (before, moves)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node(name: &str, cpus: f64, mem: f64) -> NodeCap {
        NodeCap {
            name: name.into(),
            cpus,
            memory_mib: mem,
            usable: true,
            overcommit: 4.0,
        }
    }

    fn guest(id: &str, node: &str, vcpus: f64, mem: f64) -> Guest {
        Guest {
            id: id.into(),
            node: node.into(),
            vcpus,
            memory_mib: mem,
            group: None,
        }
    }

    #[test]
    fn topsis_prefers_the_alternative_nearest_the_ideal() {
        // Lower is better in every criterion: the first is best in all, the last worst.
        let s = topsis(
            &[
                [1.0, 1.0, 1.0, 1.0],
                [1.5, 1.5, 1.5, 1.5],
                [2.0, 2.0, 2.0, 2.0],
            ],
            &WEIGHTS,
        );
        assert_eq!(s[0], 1.0);
        assert_eq!(s[2], 0.0);
        assert!(s[1] > 0.0 && s[1] < 1.0);
        // Memory weighs more than CPU: less memory load wins over less CPU load.
        let s = topsis(&[[1.0, 1.0, 1.5, 1.5], [1.5, 1.5, 1.0, 1.0]], &WEIGHTS);
        assert!(s[1] > s[0], "{s:?}");
        assert_eq!(topsis(&[[1.2, 1.2, 1.2, 1.2]; 2], &WEIGHTS), vec![1.0, 1.0]);
    }

    #[test]
    fn imbalance_is_zero_when_even_and_one_when_all_on_one_node() {
        let nodes = [node("a", 4.0, 4096.0), node("b", 4.0, 4096.0)];
        let even = [guest("1", "a", 1.0, 512.0), guest("2", "b", 1.0, 512.0)];
        assert_eq!(imbalance(&nodes, &even), 0.0);
        let lopsided = [guest("1", "a", 1.0, 512.0), guest("2", "a", 1.0, 512.0)];
        assert!((imbalance(&nodes, &lopsided) - 1.0).abs() < 1e-9);
        assert_eq!(imbalance(&nodes, &[]), 0.0);
    }

    #[test]
    fn nodes_are_scored_by_memory_first() {
        // b has spare CPU but little memory; c the reverse: c wins.
        let nodes = [
            node("a", 4.0, 4096.0),
            node("b", 8.0, 2048.0),
            node("c", 2.0, 8192.0),
        ];
        let guests = [
            guest("1", "a", 1.0, 1024.0),
            guest("2", "b", 1.0, 1024.0),
            guest("3", "c", 1.0, 1024.0),
        ];
        let s = score_nodes(&nodes, &guests, &guests[0]);
        assert_eq!(s[0].0, "c", "{s:?}");
    }

    #[test]
    fn a_lopsided_cluster_is_evened_out_and_an_even_one_left_alone() {
        let nodes = [node("a", 4.0, 4096.0), node("b", 4.0, 4096.0)];
        let guests: Vec<Guest> = (0..4)
            .map(|i| guest(&i.to_string(), "a", 1.0, 512.0))
            .collect();
        let (before, moves) = plan(&nodes, &guests, 10);
        assert!((before - 1.0).abs() < 1e-9);
        assert_eq!(moves.len(), 2, "{moves:?}");
        assert!(moves.iter().all(|m| m.from == "a" && m.to == "b"));
        assert_eq!(moves[1].imbalance_after, 0.0);
        // Below the threshold: nothing moves.
        let mut even = guests.clone();
        even[0].node = "b".into();
        even[1].node = "b".into();
        assert!(plan(&nodes, &even, 10).1.is_empty());
        // 3 on a, 1 on b: imbalance 0.5; one move evens it out.
        let mut three = guests.clone();
        three[0].node = "b".into();
        let (before, moves) = plan(&nodes, &three, 10);
        assert!((before - 0.5).abs() < 1e-9);
        assert_eq!(moves.len(), 1, "{moves:?}");
        // 2 on a, 1 on b: imbalance 1/3, above the threshold, but a move only mirrors it:
        // no improvement, no move.
        let two = &three[..3];
        let (before, moves) = plan(&nodes, two, 10);
        assert!((before - 1.0 / 3.0).abs() < 1e-9, "{before}");
        assert!(moves.is_empty(), "{moves:?}");
    }

    #[test]
    fn moves_keep_anti_affinity_capacity_and_maintenance() {
        let mut nodes = vec![
            node("a", 4.0, 4096.0),
            node("b", 4.0, 4096.0),
            node("c", 4.0, 1024.0),
        ];
        nodes[1].usable = false;
        let mut guests: Vec<Guest> = (0..4)
            .map(|i| guest(&i.to_string(), "a", 1.0, 512.0))
            .collect();
        guests[0].group = Some("t/web".into());
        guests[1].group = Some("t/web".into());
        let (_, moves) = plan(&nodes, &guests, 10);
        for m in &moves {
            assert_eq!(m.to, "c", "b is in maintenance: {moves:?}");
        }
        // c holds at most 1024 MiB: two guests.
        assert!(moves.len() <= 2);
        let web_on_c = moves
            .iter()
            .filter(|m| m.guest == "0" || m.guest == "1")
            .count();
        assert!(web_on_c <= 1, "{moves:?}");
    }

    proptest! {
        #[test]
        fn plans_only_improve_and_respect_limits(
            mems in proptest::collection::vec(1u32..8, 1..12),
            on in proptest::collection::vec(0usize..3, 12),
        ) {
            let nodes = [node("a", 4.0, 8192.0), node("b", 2.0, 4096.0), node("c", 8.0, 8192.0)];
            let names = ["a", "b", "c"];
            let guests: Vec<Guest> = mems.iter().enumerate()
                .map(|(i, m)| guest(&i.to_string(), names[on[i]], 1.0, f64::from(*m) * 256.0))
                .collect();
            let (before, moves) = plan(&nodes, &guests, 20);
            prop_assert!((0.0..=1.0).contains(&before));
            let mut last = before;
            let mut current = guests.clone();
            for m in &moves {
                prop_assert!(last - m.imbalance_after >= MARGIN - 1e-9);
                last = m.imbalance_after;
                current = moved(&current, &m.guest, &m.to);
            }
            for n in &nodes {
                let mem: f64 = current.iter().filter(|g| g.node == n.name).map(|g| g.memory_mib).sum();
                let moved_in = moves.iter().any(|m| m.to == n.name);
                prop_assert!(!moved_in || mem <= n.memory_mib);
            }
            let s = topsis(&[criteria(&loads(&nodes, &guests))], &WEIGHTS);
            prop_assert!(s.iter().all(|x| (0.0..=1.0).contains(x)));
        }
    }
}
