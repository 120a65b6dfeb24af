//! Test harness: starts the real `hemiron` binary, talks to it over loopback HTTP, checks
//! every answer against the Proxmox VE schema, and cleans up every process it started.
#![allow(dead_code)]

pub mod cluster;
pub mod control;
pub mod proxy;
pub mod rows;
pub mod schema;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The binary under test.
pub fn hemiron() -> &'static str {
    env!("CARGO_BIN_EXE_hemiron")
}

/// Polls `cond` every 50 ms until it returns `Some`, or panics after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn target_dir() -> PathBuf {
    if let Ok(d) = std::env::var("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    // The test binary lives in <target>/debug/deps.
    let exe = std::env::current_exe().expect("test exe path");
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"))
}

/// The guest image with test hooks, built once and shared by every test process.
pub fn guest_image() -> PathBuf {
    let dir = match std::env::var("HEMIRON_TEST_IMAGE_DIR") {
        Ok(d) => PathBuf::from(d),
        Err(_) => target_dir().join("guest-image-hooks"),
    };
    let image = dir.join("hemiron-guest.qcow2");
    std::fs::create_dir_all(&dir).expect("image dir");
    // Tests run as parallel processes: one builds, the others wait on the lock.
    let lock = std::fs::File::create(dir.join(".build.lock")).expect("lock file");
    fs4::fs_std::FileExt::lock_exclusive(&lock).expect("lock");
    if !image.exists() {
        let status = Command::new(hemiron())
            .args(["image", "build", "--test-hooks", "--out"])
            .arg(&dir)
            .status()
            .expect("run image build");
        assert!(status.success(), "guest image build failed");
    }
    image
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub reason: String,
    pub body: Value,
}

impl Resp {
    pub fn data(&self) -> &Value {
        &self.body["data"]
    }
    #[track_caller]
    pub fn ok(self) -> Value {
        assert!(
            (200..300).contains(&self.status),
            "expected success, got {} {}: {}",
            self.status,
            self.reason,
            self.body
        );
        self.body["data"].clone()
    }
}

/// A client of one agent's API.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub auth: Option<(String, String)>,
    client: reqwest::blocking::Client,
}

impl Api {
    pub fn new(base: &str, auth: Option<(String, String)>) -> Self {
        let client = reqwest::blocking::Client::builder()
            .danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(120))
            .build()
            .expect("http client");
        Self {
            base: base.to_string(),
            auth,
            client,
        }
    }

    pub fn call(&self, method: &str, path: &str, params: &[(&str, &str)]) -> Resp {
        let url = format!("{}{}", self.base, path);
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.client.request(m.clone(), &url);
        if let Some((k, v)) = &self.auth {
            req = req.header(k.as_str(), v.as_str());
        }
        req = if method == "GET" || method == "DELETE" {
            req.query(params)
        } else {
            req.form(params)
        };
        let resp = req
            .send()
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let reason = resp
            .status()
            .canonical_reason()
            .map(str::to_string)
            .unwrap_or_default();
        let text = resp.text().unwrap_or_default();
        let body: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{method} {path}: body is not JSON: {text}"));
        if (200..300).contains(&status) {
            schema::check_response(method, path, &body["data"]);
        }
        Resp {
            status,
            reason,
            body,
        }
    }

    /// The raw reason phrase of an answer (reqwest only exposes canonical ones).
    pub fn reason_phrase(
        &self,
        method: &str,
        path: &str,
        params: &[(&str, &str)],
    ) -> (u16, String) {
        let url = format!("{}{}", self.base, path);
        let mut args = vec![
            "-s".to_string(),
            "-k".into(),
            "-o".into(),
            "/dev/null".into(),
        ];
        args.extend(["-D".into(), "-".into(), "-X".into(), method.into()]);
        if let Some((k, v)) = &self.auth {
            args.extend(["-H".into(), format!("{k}: {v}")]);
        }
        let mut full = url;
        if method == "GET" || method == "DELETE" {
            let q: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
            if !q.is_empty() {
                full = format!("{full}?{}", q.join("&"));
            }
        } else {
            for (k, v) in params {
                args.extend(["--data-urlencode".into(), format!("{k}={v}")]);
            }
        }
        args.push(full);
        let out = Command::new("curl").args(&args).output().expect("curl");
        let head = String::from_utf8_lossy(&out.stdout).to_string();
        let line = head.lines().next().unwrap_or_default().to_string();
        let mut parts = line.splitn(3, ' ');
        parts.next();
        let code = parts.next().and_then(|c| c.parse().ok()).unwrap_or(0);
        (code, parts.next().unwrap_or_default().trim().to_string())
    }

    /// A PUT whose transport errors are returned, not panicked on (the agent may be dying).
    pub fn try_put(&self, path: &str, params: &[(&str, &str)]) -> Result<u16, String> {
        let mut req = self
            .client
            .put(format!("{}{}", self.base, path))
            .form(params);
        if let Some((k, v)) = &self.auth {
            req = req.header(k.as_str(), v.as_str());
        }
        req.send()
            .map(|r| r.status().as_u16())
            .map_err(|e| e.to_string())
    }

    pub fn get(&self, path: &str, params: &[(&str, &str)]) -> Resp {
        self.call("GET", path, params)
    }
    pub fn post(&self, path: &str, params: &[(&str, &str)]) -> Resp {
        self.call("POST", path, params)
    }
    pub fn put(&self, path: &str, params: &[(&str, &str)]) -> Resp {
        self.call("PUT", path, params)
    }
    pub fn delete(&self, path: &str, params: &[(&str, &str)]) -> Resp {
        self.call("DELETE", path, params)
    }

    /// Waits for a task to end and returns its status object.
    pub fn wait_task(&self, node: &str, upid: &str, timeout: Duration) -> Value {
        let path = format!("/nodes/{node}/tasks/{upid}/status");
        wait_for(&format!("task {upid}"), timeout, || {
            let st = self.get(&path, &[]).ok();
            (st["status"] == "stopped").then_some(st)
        })
    }

    /// Runs a task-returning call and asserts it ends OK.
    #[track_caller]
    pub fn task_ok(&self, node: &str, method: &str, path: &str, params: &[(&str, &str)]) -> Value {
        let upid = self.call(method, path, params).ok();
        let upid = upid.as_str().expect("UPID").to_string();
        let st = self.wait_task(node, &upid, Duration::from_secs(180));
        if st["exitstatus"] != "OK" {
            let log = self.get(
                &format!("/nodes/{node}/tasks/{upid}/log"),
                &[("limit", "1000")],
            );
            panic!(
                "task {upid} failed: {} — log: {}",
                st["exitstatus"], log.body
            );
        }
        st
    }
}

/// A running `hemiron node` with its own data dir.
pub struct Agent {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub name: String,
    pub url: String,
    pub token: String,
    pub http: bool,
    pub extra_args: Vec<String>,
}

impl Agent {
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts an agent over plain HTTP with a fresh data dir and an API token.
    pub fn start() -> Agent {
        Self::start_with(true, &[])
    }

    pub fn start_with(http: bool, extra: &[&str]) -> Agent {
        Self::start_named("n1", http, extra)
    }

    /// An agent with node name `name`.
    pub fn start_named(name: &str, http: bool, extra: &[&str]) -> Agent {
        let dir = tempfile::Builder::new()
            .prefix("hn")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let mut agent = Agent {
            child: None,
            dir,
            name: name.into(),
            url: String::new(),
            token: String::new(),
            http,
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
        };
        agent.token = agent.add_token("root@pam!test");
        agent.launch();
        agent
    }

    /// `hemiron node user add` with the password on stdin.
    pub fn add_user(&self, userid: &str, password: &str) {
        use std::io::Write;
        let mut child = Command::new(hemiron())
            .args(["node", "user", "add", "--data-dir"])
            .arg(self.data_dir())
            .arg(userid)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("user add");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(format!("{password}\n").as_bytes())
            .expect("write password");
        assert!(child.wait().expect("user add").success(), "user add failed");
    }

    pub fn add_token(&self, tokenid: &str) -> String {
        let out = Command::new(hemiron())
            .args(["node", "token", "add", "--data-dir"])
            .arg(self.data_dir())
            .arg(tokenid)
            .output()
            .expect("token add");
        assert!(
            out.status.success(),
            "token add failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        stdout
            .lines()
            .last()
            .expect("secret line")
            .trim()
            .to_string()
    }

    /// Starts the agent process on the existing data dir and waits until it listens.
    pub fn launch(&mut self) {
        let addr_file = self.data_dir().join("node.addr");
        let _ = std::fs::remove_file(&addr_file);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .expect("agent log");
        let mut cmd = Command::new(hemiron());
        cmd.args([
            "node",
            "--listen",
            "127.0.0.1:0",
            "--name",
            &self.name,
            "--data-dir",
        ])
        .arg(self.data_dir())
        .args(&self.extra_args)
        .env("HEMIRON_LOG", "info,hemiron_node=debug")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
        if self.http {
            cmd.arg("--http");
        }
        self.child = Some(cmd.spawn().expect("spawn agent"));
        self.url = wait_for("agent to listen", Duration::from_secs(60), || {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("agent exited early with {status}: {}", self.log());
                }
            }
            std::fs::read_to_string(&addr_file)
                .ok()
                .filter(|s| !s.is_empty())
        });
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    pub fn api(&self) -> Api {
        Api::new(
            &self.url,
            Some((
                "Authorization".into(),
                format!("PVEAPIToken=root@pam!test={}", self.token),
            )),
        )
    }

    /// `kill -9` of the agent (VMs keep running).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Pids of QEMU processes this agent's VMs run in.
    pub fn qemu_pids(&self) -> Vec<u32> {
        let run = self.data_dir().join("run");
        std::fs::read_dir(run)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".pid"))
                    .filter_map(|e| std::fs::read_to_string(e.path()).ok()?.trim().parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn node(&self) -> &str {
        &self.name
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
        for pid in self.qemu_pids() {
            // SAFETY-free: a plain signal through the `kill` command.
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        if std::thread::panicking() {
            eprintln!("--- agent log ---\n{}", self.log());
        }
    }
}

/// Replaces a file in one rename (agents read their cluster file again when it changes).
pub fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// Creates a VM from the guest image and returns its vmid.
pub fn create_vm(api: &Api, node: &str, vmid: u32, extra: &[(&str, &str)]) {
    let image = guest_image();
    let disk = format!("local:0,import-from={}", image.display());
    let vmid_s = vmid.to_string();
    let mut params: Vec<(&str, &str)> = vec![("vmid", &vmid_s)];
    for (k, v) in [("memory", "128"), ("net0", "virtio,bridge=vmbr0")] {
        if !extra.iter().any(|(e, _)| *e == k) {
            params.push((k, v));
        }
    }
    // The boot disk, unless the test brings its own (a CD-ROM on ide2 does not count).
    if !extra
        .iter()
        .any(|(k, _)| k.starts_with("scsi") || k.starts_with("virtio") || k.starts_with("sata"))
    {
        params.push(("scsi0", &disk));
    }
    params.extend_from_slice(extra);
    api.task_ok(node, "POST", &format!("/nodes/{node}/qemu"), &params);
}

/// The loopback address forwarded to a VM's guest port.
pub fn forward(api: &Api, node: &str, vmid: u32, port: u16) -> String {
    let st = api
        .get(&format!("/nodes/{node}/qemu/{vmid}/status/current"), &[])
        .ok();
    st["hemiron-forwards"][port.to_string()]
        .as_str()
        .expect("forward")
        .to_string()
}

/// A plain GET to the guest; `None` while it does not answer.
pub fn guest_get(addr: &str, path: &str) -> Option<String> {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .ok()?;
    let resp = client.get(format!("http://{addr}{path}")).send().ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.text().ok().filter(|t| !t.is_empty())
}

/// Runs a shell command in the guest through the test hook and returns its output.
pub fn guest_run(addr: &str, cmd: &str) -> Option<String> {
    let q: String = cmd
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    guest_get(addr, &format!("/cgi-bin/run?{q}"))
}

/// Waits until the guest answers its page on port 80.
pub fn wait_guest(addr: &str) -> String {
    wait_for("guest HTTP", Duration::from_secs(120), || {
        guest_get(addr, "/")
    })
}

/// Runs `ssh OPTIONS -i KEY TARGET CMD` without host-key checks or prompts; `None` if the
/// login or the command fails.
pub fn ssh(options: &[&str], key: &std::path::Path, target: &str, cmd: &str) -> Option<String> {
    let out = Command::new("ssh")
        .args(options)
        .arg("-i")
        .arg(key)
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "LogLevel=ERROR",
        ])
        .arg(target)
        .arg(cmd)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `ssh … hostname` through a VPS's `ssh -p PORT USER@127.0.0.1` command line; `None` until the
/// login works.
pub fn ssh_hostname(ssh_command: &str, key: &std::path::Path) -> Option<String> {
    let mut args: Vec<&str> = ssh_command.split_whitespace().skip(1).collect();
    let target = args.pop()?;
    ssh(&args, key, target, "hostname")
}

/// Writes `marker` into one 512-byte sector of the guest's `/dev/vda`, past its cache.
pub fn write_disk_marker(web: &str, sector: u32, marker: &str) {
    write_disk_marker_on(web, "/dev/vda", sector, marker);
}

/// [`write_disk_marker`] on another of the guest's disks (`/dev/sda` for a SCSI one).
pub fn write_disk_marker_on(web: &str, device: &str, sector: u32, marker: &str) {
    let out = guest_run(
        web,
        &format!(
            "printf '{marker}' | dd of={device} bs=512 seek={sector} count=1 conv=sync oflag=direct 2>&1; sync"
        ),
    )
    .expect("guest answers");
    assert!(out.contains("1+0 records out"), "{out}");
}

/// What one sector of the guest's `/dev/vda` holds, NULs left out.
pub fn read_disk_marker(web: &str, sector: u32) -> String {
    read_disk_marker_on(web, "/dev/vda", sector)
}

/// [`read_disk_marker`] on another of the guest's disks.
pub fn read_disk_marker_on(web: &str, device: &str, sector: u32) -> String {
    guest_run(
        web,
        &format!(
            "dd if={device} bs=512 skip={sector} count=1 iflag=direct 2>/dev/null | tr -d '\\000'"
        ),
    )
    .expect("guest answers")
    .trim()
    .to_string()
}

/// Fills `len` bytes at `offset` of a qcow2 file (its VM stopped) with `pattern`.
pub fn write_pattern(path: &Path, pattern: u8, offset: &str, len: &str) {
    let out = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c"])
        .arg(format!("write -P {pattern} {offset} {len}"))
        .arg(path)
        .output()
        .expect("qemu-io");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether `len` bytes at `offset` of a qcow2 file all hold `pattern`.
pub fn has_pattern(path: &Path, pattern: u8, offset: &str, len: &str) -> bool {
    let out = Command::new("qemu-io")
        .args(["-r", "-f", "qcow2", "-c"])
        .arg(format!("read -P {pattern} {offset} {len}"))
        .arg(path)
        .output()
        .expect("qemu-io");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    out.status.success() && !text.contains("Pattern verification failed")
}
