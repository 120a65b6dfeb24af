//! Helpers for the integration tests: getting a built image, booting it under QEMU (killed in
//! `Drop`, even on panic), a blocking HTTP GET, a minimal QMP client, and polling.

#![allow(dead_code)] // each test binary uses a different subset

pub mod seed;
pub mod ssh;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use hemiron_guest::{BuildOptions, Manifest};

/// How often conditions are polled.
pub const POLL: Duration = Duration::from_millis(75);

/// A built image: its output directory and manifest.
pub struct Image {
    pub dir: PathBuf,
    pub disk: PathBuf,
    pub manifest: Manifest,
}

/// The image with or without test hooks. Uses `$HEMIRON_GUEST_IMAGE_DIR` when it holds an
/// image of the right kind; otherwise builds one (~1.5 s once the package cache is warm) into
/// a directory under the target dir, once per nextest run.
pub fn image(test_hooks: bool) -> Image {
    if let Some(dir) = std::env::var_os("HEMIRON_GUEST_IMAGE_DIR").map(PathBuf::from) {
        if let Some(image) = existing_image(&dir, test_hooks) {
            return image;
        }
    }
    let kind = if test_hooks { "hooks" } else { "default" };
    let dir = target_tmp().join("hemiron-guest-image").join(kind);
    // nextest runs every test in its own process; build once per run, not once per test.
    // Two tests that race here both build, which is harmless: outputs are renamed into place.
    let run_id = std::env::var("NEXTEST_RUN_ID").ok();
    let marker = dir.join(".built-in-run");
    if let Some(run_id) = &run_id {
        if std::fs::read_to_string(&marker).ok().as_deref() == Some(run_id.as_str()) {
            if let Some(image) = existing_image(&dir, test_hooks) {
                return image;
            }
        }
    }
    let image = build_into(&dir, test_hooks);
    if let Some(run_id) = run_id {
        let _ = std::fs::write(&marker, run_id);
    }
    image
}

/// The image in `dir`, if there is one of the right kind.
fn existing_image(dir: &Path, test_hooks: bool) -> Option<Image> {
    let manifest = Manifest::read(&dir.join(hemiron_guest::MANIFEST_FILE)).ok()?;
    let disk = dir.join(hemiron_guest::DISK_FILE);
    (manifest.test_hooks == test_hooks && disk.is_file()).then(|| Image {
        dir: dir.to_path_buf(),
        disk,
        manifest,
    })
}

/// Builds an image into `dir`, panicking with the whole error chain on failure.
pub fn build_into(dir: &Path, test_hooks: bool) -> Image {
    let opts = BuildOptions {
        out_dir: dir.to_path_buf(),
        cache_dir: hemiron_guest::default_cache_dir(),
        test_hooks,
    };
    match hemiron_guest::build(&opts) {
        Ok(built) => Image {
            dir: dir.to_path_buf(),
            disk: built.disk,
            manifest: built.manifest,
        },
        Err(err) => panic!("building the guest image failed: {}", chain(&err)),
    }
}

pub fn target_tmp() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// An error and all its sources on one line.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The disk controllers a Proxmox VM's boot disk can sit on, with Proxmox's device lines.
#[derive(Debug, Clone, Copy)]
pub enum Controller {
    /// `scsi0` on the default LSI 53c895a.
    Lsi,
    /// `scsi0` on virtio-scsi-pci.
    VirtioScsi,
    /// `virtio0`: virtio-blk-pci.
    VirtioBlk,
}

impl Controller {
    /// The guest's name for the boot disk.
    pub fn guest_disk(self) -> &'static str {
        match self {
            Controller::Lsi | Controller::VirtioScsi => "sda",
            Controller::VirtioBlk => "vda",
        }
    }

    fn args(self, overlay: &Path) -> Vec<String> {
        let node = match self {
            Controller::Lsi | Controller::VirtioScsi => "drive-scsi0",
            Controller::VirtioBlk => "drive-virtio0",
        };
        let mut args = vec![
            "-blockdev".into(),
            format!("driver=file,filename={},node-name=f0", overlay.display()),
            "-blockdev".into(),
            format!("driver=qcow2,file=f0,node-name={node}"),
        ];
        let devices: &[&str] = match self {
            Controller::Lsi => &[
                "lsi,id=scsihw0,bus=pci.0,addr=0x5",
                "scsi-hd,bus=scsihw0.0,scsi-id=0,drive=drive-scsi0,id=scsi0,bootindex=100",
            ],
            Controller::VirtioScsi => &[
                "virtio-scsi-pci,id=scsihw0,bus=pci.0,addr=0x5",
                "scsi-hd,bus=scsihw0.0,channel=0,scsi-id=0,lun=0,drive=drive-scsi0,id=scsi0,bootindex=100",
            ],
            Controller::VirtioBlk => &[
                "virtio-blk-pci,drive=drive-virtio0,id=virtio0,bus=pci.0,addr=0xa,bootindex=100",
            ],
        };
        for d in devices {
            args.push("-device".into());
            args.push(d.to_string());
        }
        args
    }
}

/// How a test VM is set up beyond its boot disk and first NIC (virtio-net, MAC
/// [`NIC0_MAC`], QEMU user networking).
#[derive(Debug, Default, Clone)]
pub struct VmOptions {
    /// Extra QEMU arguments (more devices).
    pub extra: Vec<String>,
    /// Also forward a free host port to the guest's SSH port 22 ([`Vm::ssh_port`]).
    pub ssh: bool,
    /// The guest address the forwards go to, when the guest does not take 10.0.2.15 by DHCP.
    pub guest_ip: Option<String>,
    /// Boot from this disk (see [`overlay`]) rather than a fresh overlay: it keeps what the
    /// guest wrote, for another boot of the same VM (or, copied, of a clone).
    pub disk: Option<PathBuf>,
}

/// Creates `path`, a qcow2 overlay on the image: a VM disk of its own.
pub fn overlay(image: &Image, path: &Path) {
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&image.disk)
        .arg(path)
        .output()
        .expect("qemu-img (package qemu-utils) runs");
    assert!(
        out.status.success(),
        "qemu-img create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The MAC address of every test VM's first NIC.
pub const NIC0_MAC: &str = "bc:24:11:00:00:01";

/// A running QEMU, killed when dropped.
pub struct Vm {
    child: Child,
    pub port: u16,
    /// The host port forwarded to the guest's port 22, if asked for.
    pub ssh_port: Option<u16>,
    pub started: Instant,
    dir: tempfile::TempDir,
}

impl Vm {
    /// Boots `image` (through a fresh overlay, never the image itself) from `controller`, with
    /// the guest's port 80 forwarded to a free port on 127.0.0.1.
    pub fn start(image: &Image, controller: Controller) -> Vm {
        Vm::start_with(image, controller, &[])
    }

    /// [`Vm::start`] with extra QEMU arguments (more devices).
    pub fn start_with(image: &Image, controller: Controller, extra: &[String]) -> Vm {
        Vm::start_opts(
            image,
            controller,
            &VmOptions {
                extra: extra.to_vec(),
                ..VmOptions::default()
            },
        )
    }

    /// [`Vm::start`] as `options` say.
    pub fn start_opts(image: &Image, controller: Controller, options: &VmOptions) -> Vm {
        let qemu = "qemu-system-x86_64";
        assert!(
            Command::new(qemu).arg("--version").output().is_ok(),
            "{qemu} is not installed: `apt-get install --no-install-recommends qemu-system-x86` (the VM tests need it)"
        );
        let dir = tempfile::Builder::new()
            .prefix("hemiron-guest-vm-")
            .tempdir()
            .expect("temp dir");
        let overlay = match &options.disk {
            Some(disk) => disk.clone(),
            None => {
                let fresh = dir.path().join("overlay.qcow2");
                overlay(image, &fresh);
                fresh
            }
        };

        let port = free_port();
        let ssh_port = options.ssh.then(free_port);
        let guest = options.guest_ip.as_deref().unwrap_or("");
        let mut netdev = format!("user,id=net0,hostfwd=tcp:127.0.0.1:{port}-{guest}:80");
        if let Some(ssh) = ssh_port {
            netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{ssh}-{guest}:22"));
        }
        let mut cmd = Command::new(qemu);
        cmd.args([
            "-name",
            "hemiron-guest-test",
            "-machine",
            "pc",
            "-accel",
            "tcg",
            "-cpu",
            "qemu64",
        ])
        .args(["-m", "128", "-smp", "1", "-nodefaults", "-no-user-config"])
        .args(["-display", "none", "-vga", "none"])
        .arg("-serial")
        .arg(format!("file:{}", dir.path().join("serial.log").display()))
        .arg("-qmp")
        .arg(format!(
            "unix:{},server=on,wait=off",
            dir.path().join("qmp.sock").display()
        ))
        .arg("-netdev")
        .arg(netdev)
        .arg("-device")
        .arg(format!(
            "virtio-net-pci,netdev=net0,mac={NIC0_MAC},id=net0dev"
        ))
        .args(controller.args(&overlay))
        .args(&options.extra)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.path().join("qemu.out")).expect("qemu.out"))
        .stderr(std::fs::File::create(dir.path().join("qemu.err")).expect("qemu.err"));
        let started = Instant::now();
        let child = cmd.spawn().expect("spawn qemu-system-x86_64");
        Vm {
            child,
            port,
            ssh_port,
            started,
            dir,
        }
    }

    /// A private directory that lives as long as the VM.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn serial_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serial.log")).unwrap_or_default()
    }

    /// The serial console and QEMU's own output, for failure messages.
    pub fn diagnostics(&self) -> String {
        let err = std::fs::read_to_string(self.dir.path().join("qemu.err")).unwrap_or_default();
        format!(
            "--- qemu stderr ---\n{err}\n--- serial console ---\n{}",
            self.serial_log()
        )
    }

    /// Polls `GET path` until `check` accepts the answer or `timeout` passes.
    ///
    /// QEMU accepts on the forwarded port before the guest can answer, and such a request
    /// hangs rather than fails; a fresh attempt starts every [`POLL`] while earlier ones are
    /// still waiting (each for up to 2 s), so the first answer is seen within one poll
    /// interval however slow the guest is.
    pub fn wait_http(
        &mut self,
        path: &str,
        timeout: Duration,
        check: impl Fn(u16, &str) -> bool,
    ) -> (u16, String) {
        let deadline = Instant::now() + timeout;
        let (tx, rx) = std::sync::mpsc::channel();
        let mut last = String::from("no answer yet");
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "QEMU exited ({status}) before {path} answered\n{}",
                    self.diagnostics()
                );
            }
            let (tx, port, attempt_path) = (tx.clone(), self.port, path.to_string());
            std::thread::spawn(move || {
                // The receiver is gone once an earlier attempt succeeded; nothing to report.
                let _ = tx.send(http_get_within(port, &attempt_path, Duration::from_secs(2)));
            });
            let first = rx.recv_timeout(POLL).ok();
            for answer in first.into_iter().chain(rx.try_iter()) {
                match answer {
                    Ok((status, body)) if check(status, &body) => return (status, body),
                    Ok((status, body)) => last = format!("{status}: {body}"),
                    Err(e) => last = e.to_string(),
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "GET {path} not as expected within {timeout:?}; last: {last}\n{}",
                    self.diagnostics()
                );
            }
        }
    }

    /// Polls the serial log until a line satisfies `check`.
    pub fn wait_serial_line(&self, timeout: Duration, check: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.serial_log().lines().find(|l| check(l)) {
                return line.trim().to_string();
            }
            if Instant::now() >= deadline {
                panic!(
                    "expected serial line not seen within {timeout:?}\n{}",
                    self.diagnostics()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    pub fn qmp(&self) -> Qmp {
        Qmp::connect(&self.dir.path().join("qmp.sock"), Duration::from_secs(10))
    }

    /// Polls until QEMU exits, returning its status, or `None` after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` until it returns `Some`, panicking with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = f() {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(POLL);
    }
}

/// Polls `f` until it returns `Some`, or returns `None` after `timeout`.
pub fn try_wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = f() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// Entries of a gzip-compressed newc cpio archive: path -> (mode, data).
pub fn read_initramfs(path: &Path) -> BTreeMap<String, (u32, Vec<u8>)> {
    let mut cpio = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut cpio)
        .unwrap();
    let mut entries = BTreeMap::new();
    let mut pos = 0;
    loop {
        let h = &cpio[pos..pos + 110];
        assert_eq!(&h[..6], b"070701");
        let field = |i: usize| {
            u32::from_str_radix(std::str::from_utf8(&h[6 + i * 8..14 + i * 8]).unwrap(), 16)
                .unwrap()
        };
        let (mode, size, name_size) = (field(1), field(6) as usize, field(11) as usize);
        let name = String::from_utf8(cpio[pos + 110..pos + 110 + name_size - 1].to_vec()).unwrap();
        let data_start = (pos + 110 + name_size + 3) & !3;
        pos = (data_start + size + 3) & !3;
        if name == "TRAILER!!!" {
            return entries;
        }
        entries.insert(name, (mode, cpio[data_start..data_start + size].to_vec()));
    }
}

/// Writes the initramfs entries whose path `keep` accepts under `dir`: regular files with
/// their modes, symbolic links as links (absolute targets left as they are).
pub fn unpack(entries: &BTreeMap<String, (u32, Vec<u8>)>, dir: &Path, keep: impl Fn(&str) -> bool) {
    use std::os::unix::fs::PermissionsExt;
    for (path, (mode, data)) in entries {
        if !keep(path) {
            continue;
        }
        let target = dir.join(path);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        match mode & 0o170000 {
            0o100000 => {
                std::fs::write(&target, data).unwrap();
                std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode & 0o7777))
                    .unwrap();
            }
            0o120000 => {
                std::os::unix::fs::symlink(String::from_utf8(data.clone()).unwrap(), &target)
                    .unwrap();
            }
            _ => {}
        }
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// A blocking HTTP/1.0 GET to 127.0.0.1:`port`; returns status and body.
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    http_get_within(port, path, Duration::from_secs(20))
}

/// [`http_get`], giving up after `timeout` without an answer.
pub fn http_get_within(port: u16, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no HTTP header end in {text:?}")))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    Ok((status, body.to_string()))
}

/// Percent-encodes `s` for a query string, spaces as `+` (as browsers do in forms).
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b' ' => "+".to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A minimal blocking QMP client: JSON lines over the unix socket; events that arrive while
/// waiting for a reply are set aside.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    pub events: Vec<serde_json::Value>,
}

impl Qmp {
    fn connect(path: &Path, timeout: Duration) -> Qmp {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => {
                    panic!("QMP connect {}: {e}", path.display())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        let writer = stream.try_clone().expect("clone QMP stream");
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
            events: Vec::new(),
        };
        let greeting = qmp.read_message();
        assert!(greeting.get("QMP").is_some(), "QMP greeting: {greeting}");
        qmp.execute("qmp_capabilities", serde_json::json!({}));
        qmp
    }

    fn read_message(&mut self) -> serde_json::Value {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("read QMP");
        assert!(n > 0, "QMP connection closed");
        serde_json::from_str(&line).expect("QMP sends JSON")
    }

    /// Runs a command and returns its `return` value; panics on a QMP error.
    pub fn execute(&mut self, command: &str, arguments: serde_json::Value) -> serde_json::Value {
        let msg = serde_json::json!({"execute": command, "arguments": arguments});
        writeln!(self.writer, "{msg}").expect("write QMP");
        loop {
            let reply = self.read_message();
            if let Some(ret) = reply.get("return") {
                return ret.clone();
            }
            if let Some(err) = reply.get("error") {
                panic!("QMP {command} failed: {err}");
            }
            self.events.push(reply);
        }
    }
}
