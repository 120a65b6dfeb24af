//! Two node agents forming a cluster on one machine: own data dirs, one shared storage
//! directory, one cluster file.

use std::path::Path;
use std::time::Duration;

use super::{wait_for, Agent, Api};

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub shared: std::path::PathBuf,
    pub n1: Agent,
    pub n2: Agent,
}

fn entry(a: &Agent) -> String {
    format!(
        "[[node]]\nname = \"{}\"\nurl = \"{}\"\ntoken = \"root@pam!test={}\"\n",
        a.name,
        a.url.trim_end_matches("/api2/json"),
        a.token
    )
}

fn write(path: &Path, text: &str) {
    super::replace_file(path, text);
}

pub fn cluster() -> Cluster {
    let dir = tempfile::Builder::new()
        .prefix("hmig")
        .tempdir_in("/tmp")
        .unwrap();
    let file = dir.path().join("cluster.toml");
    let shared = dir.path().join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    write(
        &file,
        "[[node]]\nname = \"n1\"\nurl = \"http://127.0.0.1:9\"\ntoken = \"root@pam!test=x\"\n\
         [[node]]\nname = \"n2\"\nurl = \"http://127.0.0.1:9\"\ntoken = \"root@pam!test=x\"\n",
    );
    let args = [
        "--cluster-config",
        file.to_str().unwrap(),
        "--shared-storage",
        shared.to_str().unwrap(),
    ];
    let n1 = Agent::start_named("n1", true, &args);
    let n2 = Agent::start_named("n2", true, &args);
    write(&file, &(entry(&n1) + &entry(&n2)));
    // Both see each other once the file is read again.
    wait_for("cluster to form", Duration::from_secs(30), || {
        let nodes = n1.api().get("/nodes", &[]).ok();
        let online = nodes
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["status"] == "online")
            .count();
        (online == 2).then_some(())
    });
    Cluster {
        dir,
        shared,
        n1,
        n2,
    }
}

/// VMIDs a node lists.
pub fn listed(api: &Api, node: &str) -> Vec<u64> {
    api.get(&format!("/nodes/{node}/qemu"), &[])
        .ok()
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["vmid"].as_u64())
        .collect()
}

pub fn task_log(api: &Api, node: &str, upid: &str) -> String {
    let log = api
        .get(
            &format!("/nodes/{node}/tasks/{upid}/log"),
            &[("limit", "5000")],
        )
        .ok();
    log.as_array()
        .unwrap()
        .iter()
        .map(|l| l["t"].as_str().unwrap_or_default().to_string() + "\n")
        .collect()
}
