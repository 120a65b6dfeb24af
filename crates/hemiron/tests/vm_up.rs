#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `hemiron up` as a user runs it: it prints the API address and, once the template is made,
//! a `hemiron vps create …` line; pasted as is, that line gives a running VPS one can SSH into.
//! Re-running on the same data directory is safe. Named `vm_*`: it boots a VM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::hemiron;

struct Up {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Up {
    fn start(data: &std::path::Path) -> Up {
        let mut child = Command::new(hemiron())
            .args([
                "up",
                "--listen",
                "127.0.0.1:0",
                "--node-listen",
                "127.0.0.1:0",
                "--proxy-listen",
                "127.0.0.1:0",
                "--proxy-admin",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(data)
            .env("HEMIRON_ADMIN_PASSWORD", "admin-password-for-up")
            .env("HEMIRON_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                eprintln!("up> {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Up {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// The first line (from now) containing `what`.
    fn wait_line(&mut self, what: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(what) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "no line with {what:?} within {timeout:?}; saw:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "hemiron up exited with {status}");
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        panic!("hemiron up did not stop on SIGTERM");
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn kill_vms(data: &std::path::Path) {
    if let Ok(rd) = std::fs::read_dir(data.join("node/run")) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().ends_with(".pid") {
                if let Ok(pid) = std::fs::read_to_string(e.path()) {
                    let _ = Command::new("kill").args(["-9", pid.trim()]).status();
                }
            }
        }
    }
}

struct KillVms(std::path::PathBuf);

impl Drop for KillVms {
    fn drop(&mut self) {
        kill_vms(&self.0);
    }
}

#[test]
fn vm_up_prints_a_create_line_that_gives_a_vps_to_ssh_into() {
    let dir = tempfile::Builder::new()
        .prefix("hup")
        .tempdir_in("/tmp")
        .unwrap();
    let data = dir.path().join("data");
    let _cleanup = KillVms(data.clone());
    let mut up = Up::start(&data);
    let api_line = up.wait_line("API:", Duration::from_secs(60));
    let url = api_line.split_whitespace().nth(1).unwrap().to_string();
    // The OpenAPI document answers at once (the template is made in the background).
    let doc = reqwest::blocking::get(format!("{url}/openapi.json")).unwrap();
    assert_eq!(doc.status(), 200);
    // The deploy proxy runs too: its data address answers (no app yet: 404), and its admin
    // port too.
    let proxy_line = up.wait_line("proxy:", Duration::from_secs(5));
    let proxy_url = proxy_line.split_whitespace().nth(1).unwrap().to_string();
    let r = reqwest::blocking::get(format!("{proxy_url}/")).unwrap();
    assert_eq!(r.status(), 404);
    let admin = proxy_line
        .split("admin ")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap();
    let r = reqwest::blocking::get(format!("{admin}/healthz")).unwrap();
    assert_eq!(r.status(), 200);

    up.wait_line("Create a VPS", Duration::from_secs(300));
    let create = up.wait_line("vps create", Duration::from_secs(5));
    let out = Command::new("sh")
        .arg("-c")
        .arg(create.trim())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{create}\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ssh = stdout
        .lines()
        .find_map(|l| l.strip_prefix("ssh: "))
        .unwrap_or_else(|| panic!("no ssh line in:\n{stdout}"))
        .to_string();
    let key = data.join("ssh/id_ed25519");
    let host = common::wait_for("ssh into the VPS", Duration::from_secs(120), || {
        common::ssh_hostname(&ssh, &key)
    });
    assert_eq!(host, "demo");
    up.stop();

    // Again on the same data: the same admin, cluster, template and VPS.
    let mut again = Up::start(&data);
    again.wait_line("API:", Duration::from_secs(60));
    again.wait_line("Create a VPS", Duration::from_secs(60));
    let cli = data.join("cli.json");
    let list = Command::new(hemiron())
        .args(["vps", "list", "--json"])
        .env("HEMIRON_CLI_CONFIG", &cli)
        .output()
        .unwrap();
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["name"], "demo");
    assert!(
        !again.seen.iter().any(|l| l.contains("created user admin")),
        "admin made twice"
    );
    again.stop();
}
