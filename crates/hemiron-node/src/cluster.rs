//! Node clusters with Proxmox's semantics, without corosync.
//!
//! `--cluster-config FILE` names every node of the cluster, this one included (found by its
//! name): its API URL, the certificate fingerprint to pin (Proxmox nodes run self-signed
//! certificates) and the API token the other nodes call it with. Every node gets the same
//! file. Any node then answers `/nodes`, `/cluster/resources` and `/cluster/nextid` for the
//! whole cluster, asking each peer for its own part, and hands `/nodes/{other}/…` to that
//! node (Proxmox's `proxyto`), so one endpoint drives the cluster.
//!
//! The file is read again when it changes (a node joins without restarts); a file that no
//! longer parses keeps the running cluster and says why in the log.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use hemiron_pve_client::{ClientConfig, Credentials, Forward, Forwarded, Method, PveClient};
use serde::Deserialize;

/// Request header asking a node for its own part only (how peers are asked, so that no
/// node asks its peers again).
pub const SCOPE_HEADER: &str = "x-hemiron-cluster-scope";
/// Request header naming the node that forwarded a call (a forwarded call is never
/// forwarded again).
pub const FORWARDED_BY_HEADER: &str = "x-hemiron-forwarded-by";

/// How long a peer may take to give its part of a cluster-wide answer.
const PEER_TIMEOUT: Duration = Duration::from_secs(5);

/// A cluster file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot read the cluster file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid cluster file {}: {}", path.display(), problems.join("; "))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default, rename = "node")]
    nodes: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    /// `https://host:8006` (or `http://` for loopback tests).
    url: String,
    /// SHA-256 of the node's certificate (`AA:BB:…`); needed for `https://` URLs.
    fingerprint: Option<String>,
    /// `USER@REALM!NAME=SECRET`: the API token the other nodes use to call this one.
    token: String,
}

/// Another node of the cluster.
#[derive(Debug)]
pub struct Peer {
    pub name: String,
    pub url: String,
    client: PveClient,
    /// The VMIDs the peer had when last asked: used while it is unreachable, so that an
    /// unreachable node's VMIDs are not handed out again.
    known_vmids: Mutex<Option<BTreeSet<u32>>>,
}

impl Peer {
    /// Passes a call on to this node.
    pub async fn forward(&self, request: Forward<'_>) -> Result<Forwarded, String> {
        self.client
            .forward(request)
            .await
            .map_err(|e| crate::error_chain(&e))
    }

    /// A call answered for this node alone: the answer's `data`, or why there is none.
    async fn ask(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        timeout: Duration,
    ) -> Result<serde_json::Value, String> {
        let request = Forward {
            method,
            path_and_query: path,
            content_type: body.map(|_| "application/json"),
            body: match body {
                Some(b) => serde_json::to_vec(b).map_err(|e| e.to_string())?,
                None => Vec::new(),
            },
            headers: &[(SCOPE_HEADER, "local")],
        };
        let answer = tokio::time::timeout(timeout, self.forward(request))
            .await
            .map_err(|_| format!("no answer in {} s", timeout.as_secs()))??;
        let parsed: serde_json::Value = serde_json::from_slice(&answer.body)
            .map_err(|e| format!("unreadable answer ({}): {e}", answer.status))?;
        if answer.status != 200 {
            return Err(format!(
                "{}: {}",
                answer.status,
                parsed["message"].as_str().unwrap_or("error").trim_end()
            ));
        }
        Ok(parsed["data"].clone())
    }

    /// This node's own part of a cluster-wide GET (`path` below `/api2/json`): its `data`.
    pub async fn own_part(&self, path: &str) -> Result<serde_json::Value, String> {
        self.ask(Method::GET, path, None, PEER_TIMEOUT).await
    }

    /// A JSON call between Hemiron nodes (a migration's handshake): the answer's `data`, or
    /// the peer's error message.
    pub async fn call_json(
        &self,
        path: &str,
        body: &serde_json::Value,
        timeout: Duration,
    ) -> Result<serde_json::Value, String> {
        self.ask(Method::POST, path, Some(body), timeout)
            .await
            .map_err(|e| format!("node '{}': {e}", self.name))
    }

    /// The peer's VMIDs: asked now, or as last known if it cannot answer.
    pub async fn vmids(&self) -> Result<BTreeSet<u32>, String> {
        match self.own_part("/cluster/resources?type=vm").await {
            Ok(list) => {
                let ids: BTreeSet<u32> = list
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|e| e["vmid"].as_u64())
                            .filter_map(|v| u32::try_from(v).ok())
                            .collect()
                    })
                    .unwrap_or_default();
                if let Ok(mut k) = self.known_vmids.lock() {
                    *k = Some(ids.clone());
                }
                Ok(ids)
            }
            Err(e) => match self.known_vmids.lock().ok().and_then(|k| k.clone()) {
                Some(ids) => {
                    tracing::warn!(peer = %self.name, error = %e, "node unreachable; using its last known VMIDs");
                    Ok(ids)
                }
                None => Err(format!(
                    "node '{}' is unreachable and its VMIDs are unknown: {e}",
                    self.name
                )),
            },
        }
    }
}

/// The cluster as the file describes it.
#[derive(Debug)]
pub struct Members {
    pub peers: Vec<Arc<Peer>>,
}

/// The cluster this node belongs to, following its file.
#[derive(Debug)]
pub struct Cluster {
    local: String,
    path: PathBuf,
    current: Mutex<(Option<Stamp>, Arc<Members>)>,
}

/// What tells a changed file: its inode too, since file times move in clock ticks (several
/// milliseconds) and a file replaced by rename within one keeps its time and may keep its
/// length.
type Stamp = (u64, SystemTime, i64, i64, u64);

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((
        m.ino(),
        m.modified().ok()?,
        m.ctime(),
        m.ctime_nsec(),
        m.len(),
    ))
}

impl Cluster {
    /// Reads the cluster file for node `local`.
    pub fn open(path: &Path, local: &str) -> Result<Cluster, ClusterError> {
        let stamp = stamp(path);
        let members = load(path, local)?;
        Ok(Cluster {
            local: local.to_string(),
            path: path.to_path_buf(),
            current: Mutex::new((stamp, Arc::new(members))),
        })
    }

    /// The members now (the file is read again if it changed since).
    pub fn members(&self) -> Arc<Members> {
        let Ok(mut current) = self.current.lock() else {
            return Arc::new(Members { peers: Vec::new() });
        };
        let now = stamp(&self.path);
        if now != current.0 {
            current.0 = now;
            match load(&self.path, &self.local) {
                Ok(members) => {
                    tracing::info!(peers = members.peers.len(), "cluster file reloaded");
                    current.1 = Arc::new(members);
                }
                Err(e) => {
                    tracing::error!(error = %e, "cluster file not reloaded; keeping the cluster as it was")
                }
            }
        }
        current.1.clone()
    }

    pub fn peer(&self, name: &str) -> Option<Arc<Peer>> {
        self.members()
            .peers
            .iter()
            .find(|p| p.name == name)
            .cloned()
    }

    /// Every peer's own part of a cluster-wide GET, asked at once.
    pub async fn parts(&self, path: &str) -> Vec<(Arc<Peer>, Result<serde_json::Value, String>)> {
        let peers = self.members().peers.clone();
        let asks = peers.iter().map(|p| p.own_part(path));
        let answers = futures::future::join_all(asks).await;
        peers.into_iter().zip(answers).collect()
    }

    /// The VMIDs of every other node, with the node that has each.
    pub async fn vmids_elsewhere(&self) -> Result<BTreeMap<u32, String>, String> {
        let peers = self.members().peers.clone();
        let answers = futures::future::join_all(peers.iter().map(|p| p.vmids())).await;
        let mut out = BTreeMap::new();
        for (peer, ids) in peers.iter().zip(answers) {
            for id in ids? {
                out.insert(id, peer.name.clone());
            }
        }
        Ok(out)
    }
}

fn load(path: &Path, local: &str) -> Result<Members, ClusterError> {
    let text = std::fs::read_to_string(path).map_err(|source| ClusterError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, local).map_err(|problems| ClusterError::Invalid {
        path: path.to_path_buf(),
        problems,
    })
}

/// Checks a cluster file and builds a client per peer; every problem is reported.
fn parse(text: &str, local: &str) -> Result<Members, Vec<String>> {
    let file: File = toml::from_str(text).map_err(|e| vec![e.message().to_string()])?;
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    let mut peers = Vec::new();
    for (i, e) in file.nodes.iter().enumerate() {
        let at = format!("node {} ('{}')", i + 1, e.name);
        if !crate::valid_node_name(&e.name) {
            problems.push(format!("{at}: invalid node name"));
        }
        if !seen.insert(e.name.clone()) {
            problems.push(format!("{at}: the name appears twice"));
        }
        let https = e.url.starts_with("https://");
        if !(https || e.url.starts_with("http://")) {
            problems.push(format!("{at}: url must start with https:// or http://"));
        }
        match &e.fingerprint {
            Some(fp) if hemiron_pve_client::tls::normalize_fingerprint(fp).is_none() => {
                problems.push(format!("{at}: fingerprint is not a SHA-256 fingerprint"));
            }
            None if https => {
                problems.push(format!("{at}: an https:// node needs its fingerprint"));
            }
            _ => {}
        }
        let credentials = e
            .token
            .rsplit_once('=')
            .filter(|(id, secret)| id.contains('@') && id.contains('!') && !secret.is_empty())
            .map(|(id, secret)| Credentials::Token {
                tokenid: id.to_string(),
                secret: secret.to_string(),
            });
        let Some(credentials) = credentials else {
            problems.push(format!("{at}: token must be USER@REALM!NAME=SECRET"));
            continue;
        };
        if e.name == local {
            continue;
        }
        match PveClient::new(ClientConfig {
            endpoint: e.url.clone(),
            credentials,
            fingerprint: e.fingerprint.clone(),
            timeout: Duration::from_secs(120),
        }) {
            Ok(client) => peers.push(Arc::new(Peer {
                name: e.name.clone(),
                url: e.url.clone(),
                client,
                known_vmids: Mutex::new(None),
            })),
            Err(err) => problems.push(format!("{at}: {}", crate::error_chain(&err))),
        }
    }
    if !seen.contains(local) {
        problems.push(format!("this node ('{local}') is not in the file"));
    }
    if problems.is_empty() {
        Ok(Members { peers })
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FP: &str = "AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99";

    #[test]
    fn a_good_file_gives_the_other_nodes() {
        let text = format!(
            "[[node]]\nname = \"n1\"\nurl = \"http://127.0.0.1:8006\"\ntoken = \"root@pam!c=s1\"\n\
             [[node]]\nname = \"n2\"\nurl = \"https://127.0.0.1:8007\"\nfingerprint = \"{FP}\"\ntoken = \"root@pam!c=s2\"\n"
        );
        let m = parse(&text, "n1").unwrap();
        assert_eq!(m.peers.len(), 1);
        assert_eq!(m.peers[0].name, "n2");
    }

    #[test]
    fn every_problem_is_reported() {
        let text = "[[node]]\nname = \"n1\"\nurl = \"ftp://x\"\ntoken = \"nope\"\n\
                    [[node]]\nname = \"n1\"\nurl = \"https://127.0.0.1:1\"\ntoken = \"root@pam!c=s\"\n\
                    [[node]]\nname = \"-bad\"\nurl = \"http://127.0.0.1:2\"\nfingerprint = \"zz\"\ntoken = \"root@pam!c=s\"\n";
        let problems = parse(text, "n9").err().unwrap();
        let all = problems.join("\n");
        for needle in [
            "url must start",
            "token must be",
            "appears twice",
            "needs its fingerprint",
            "invalid node name",
            "not a SHA-256",
            "this node ('n9') is not in the file",
        ] {
            assert!(all.contains(needle), "{needle} missing from {all}");
        }
        assert!(parse("[[node]]\nname = 1\n", "n1").is_err());
        assert!(parse(
            "[[node]]\nname = \"n1\"\nurl = \"http://x\"\ntoken = \"a@b!c=d\"\nport = 1\n",
            "n1"
        )
        .is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_files_never_panic(text in ".{0,400}") {
            let _ = parse(&text, "n1");
        }
    }
}
