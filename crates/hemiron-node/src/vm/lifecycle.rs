//! Power operations: start, stop, shutdown, reboot, reset, suspend, resume; and what happens
//! when a VM's QEMU ends on its own (hooks, restart after a crash with `autostart`).

use std::path::PathBuf;
use std::time::Duration;

use tracing::{info, warn};

use super::update::{apply_pending, check_lock};
use super::{VmError, VmManager};
use crate::qemu::{cmdline, limits, process};
use crate::storage::parse_volid;
use crate::tasks::TaskContext;

/// Power actions on a running VM that need no waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    Reset,
    Pause,
    Resume,
}

/// Options of `status/start`.
#[derive(Debug, Default, Clone)]
pub struct StartOptions {
    pub skiplock: bool,
    /// A machine type that overrides the config's for this start.
    pub machine: Option<String>,
    /// Start with the vCPUs paused (QEMU `-S`), e.g. to load a snapshot's RAM first.
    pub paused: bool,
    /// Extra QEMU arguments for this start only.
    pub extra_args: Vec<String>,
}

/// Options of `status/stop` and `status/shutdown`.
#[derive(Debug, Clone)]
pub struct StopOptions {
    pub skiplock: bool,
    pub timeout: Duration,
    /// `forceStop`: stop hard when the guest ignores the power button.
    pub force_stop: bool,
}

impl VmManager {
    fn hookscript(&self, conf: &std::collections::BTreeMap<String, String>) -> Option<PathBuf> {
        let vol = conf.get("hookscript")?;
        let v = parse_volid(vol).ok()?;
        self.storage().path(&v).ok()
    }

    /// Runs the VM's hook script for `phase`; the `pre-start` phase may veto the start.
    async fn run_hook(
        &self,
        vmid: u32,
        script: &Option<PathBuf>,
        phase: &str,
        log: Option<&TaskContext>,
    ) -> Result<(), VmError> {
        let Some(script) = script else {
            return Ok(());
        };
        if let Some(l) = log {
            l.log(format!(
                "running hook script '{}' phase {phase}",
                script.display()
            ));
        }
        let out = tokio::time::timeout(
            Duration::from_secs(300),
            tokio::process::Command::new(script)
                .arg(vmid.to_string())
                .arg(phase)
                .stdin(std::process::Stdio::null())
                .output(),
        )
        .await
        .map_err(|_| VmError::Hook(format!("{phase} timed out")))?
        .map_err(|e| VmError::Hook(format!("{phase}: {e}")))?;
        if let Some(l) = log {
            l.log(String::from_utf8_lossy(&out.stdout));
            l.log(String::from_utf8_lossy(&out.stderr));
        }
        if !out.status.success() {
            return Err(VmError::Hook(format!(
                "hookscript error for {vmid} on {phase}: command '{} {vmid} {phase}' failed: {}",
                script.display(),
                out.status
            )));
        }
        Ok(())
    }

    /// `status/start`.
    pub async fn start(
        &self,
        vmid: u32,
        opts: StartOptions,
        log: &TaskContext,
    ) -> Result<(), VmError> {
        let _guard = self.lock(vmid).await?;
        self.start_locked(vmid, opts, log).await
    }

    /// Starts a VM; the caller holds its lock.
    pub async fn start_locked(
        &self,
        vmid: u32,
        opts: StartOptions,
        log: &TaskContext,
    ) -> Result<(), VmError> {
        let loaded = self.store.load(vmid)?;
        check_lock(&loaded.conf, opts.skiplock)?;
        if loaded.conf.get("template") == Some("1") {
            return Err(VmError::Template);
        }
        if self.running(vmid).is_some() {
            return Err(VmError::Running(vmid));
        }
        if let Some(pid) = self.stray_qemu(vmid) {
            return Err(VmError::Refused(format!(
                "VM {vmid} has a QEMU process ({pid}) the agent cannot control; stop it first"
            )));
        }
        let mut conf = loaded.conf;
        if conf.pending.is_some() {
            let to_free = apply_pending(&mut conf);
            self.store.write(vmid, &conf)?;
            self.free_unneeded(vmid, to_free, Some(log))?;
        }
        if self.regenerate_cloudinit(vmid, &mut conf).await? {
            self.store.write(vmid, &conf)?;
        }
        if let Some(m) = &opts.machine {
            conf.main.props.insert("machine".into(), m.clone());
        }
        let mut cmd = self.command_for(vmid, &conf)?;
        if opts.paused && !cmd.argv.iter().any(|a| a == "-S") {
            cmd.argv.push("-S".into());
        }
        cmd.argv.extend(opts.extra_args.iter().cloned());
        let hook = self.hookscript(&conf.main.props);
        self.run_hook(vmid, &hook, "pre-start", Some(log)).await?;

        // Leftovers of a QEMU that died without cleanup would make the new one fail.
        self.cleanup_runtime(vmid);
        std::fs::create_dir_all(self.run_dir()).map_err(VmError::Runtime)?;
        for (overlay, backing, fmt) in &cmd.overlays {
            let status = tokio::process::Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", fmt, "-b"])
                .arg(backing)
                .arg(overlay)
                .status()
                .await
                .map_err(VmError::Runtime)?;
            if !status.success() {
                return Err(VmError::Runtime(std::io::Error::other(format!(
                    "failed to create snapshot overlay {}",
                    overlay.display()
                ))));
            }
        }
        let running = match self.launch_attached(vmid, &cmd.argv).await {
            Ok(r) => r,
            Err(e) => {
                if let VmError::Launch(l) = &e {
                    log.log(l.to_string());
                }
                return Err(e);
            }
        };
        let pid = running.owner.pid;
        // With KVM, a guest that cannot run shows as internal-error right away.
        let status = running.owner.info().qmpstatus;
        if status == "internal-error" || status == "guest-panicked" {
            let _ = running.owner.quit().await;
            return Err(VmError::Refused(format!(
                "start failed: QEMU reports {status}"
            )));
        }
        let post = &cmd.post;
        if let Err(e) = plug_taps(&post.taps).await {
            let _ = running.owner.quit().await;
            return Err(e);
        }
        for dev in &post.links_down {
            running.owner.set_link(dev, false).await?;
        }
        if let Some(bytes) = post.balloon_target {
            running.owner.balloon(bytes).await?;
        }
        if let Some(list) = &post.affinity {
            if let Err(e) = limits::set_affinity(pid, list) {
                let _ = running.owner.quit().await;
                return Err(VmError::Refused(crate::error_chain(&e)));
            }
        }
        if let Err(e) = limits::set_cpu_limits(vmid, pid, post.cpulimit, post.cpuunits) {
            let _ = running.owner.quit().await;
            return Err(VmError::Refused(crate::error_chain(&e)));
        }
        self.run_hook(vmid, &hook, "post-start", Some(log)).await?;
        Ok(())
    }

    /// Runs a QEMU command line for VM `vmid` and takes it over; a QEMU that cannot be
    /// talked to is not left behind. (Its tap devices are plugged in by the caller:
    /// [`plug_taps`].)
    pub(super) async fn launch_attached(
        &self,
        vmid: u32,
        argv: &[String],
    ) -> Result<super::Running, VmError> {
        let pidfile = cmdline::pid_file(&self.run_dir(), vmid);
        let pid = match process::launch(argv, &pidfile).await {
            Ok(pid) => pid,
            Err(e) => {
                self.cleanup_runtime(vmid);
                return Err(VmError::Launch(e));
            }
        };
        info!(vmid, pid, "QEMU started");
        match self.attach(vmid, pid).await {
            Ok(r) => Ok(r),
            Err(e) => {
                let _ = process::terminate(pid, Duration::from_secs(2)).await;
                self.cleanup_runtime(vmid);
                Err(e)
            }
        }
    }

    /// Ends a VM's QEMU at once: `quit`, then signals if it lingers.
    pub(super) async fn end_qemu(
        owner: &super::owner::OwnerHandle,
        wait: Duration,
        log: Option<&TaskContext>,
    ) -> Result<(), VmError> {
        if owner.quit().await.is_err() || !owner.wait_exit(wait).await {
            warn!(pid = owner.pid, "QEMU did not quit; killing it");
            if let Some(l) = log {
                l.log("VM still running - terminating now with SIGTERM");
            }
            process::terminate(owner.pid, Duration::from_secs(5))
                .await
                .map_err(VmError::Signal)?;
            owner.wait_exit(Duration::from_secs(5)).await;
        }
        Ok(())
    }

    /// Checks before stopping a VM and its `pre-stop` hook; `None` if it is not running.
    async fn prepare_stop(
        &self,
        vmid: u32,
        skiplock: bool,
        log: &TaskContext,
    ) -> Result<Option<super::Running>, VmError> {
        let loaded = self.store.load(vmid)?;
        check_lock(&loaded.conf, skiplock)?;
        let Some(run) = self.running(vmid) else {
            log.log(format!("VM {vmid} is not running"));
            return Ok(None);
        };
        let hook = self.hookscript(&loaded.conf.main.props);
        self.run_hook(vmid, &hook, "pre-stop", Some(log)).await?;
        Ok(Some(run))
    }

    /// `status/stop`: ends QEMU at once (the guest gets no say).
    pub async fn stop(
        &self,
        vmid: u32,
        opts: StopOptions,
        log: &TaskContext,
    ) -> Result<(), VmError> {
        let _guard = self.lock(vmid).await?;
        self.stop_locked(vmid, opts, log).await
    }

    pub async fn stop_locked(
        &self,
        vmid: u32,
        opts: StopOptions,
        log: &TaskContext,
    ) -> Result<(), VmError> {
        let Some(run) = self.prepare_stop(vmid, opts.skiplock, log).await? else {
            return Ok(());
        };
        Self::end_qemu(&run.owner, opts.timeout, Some(log)).await
    }

    /// `status/shutdown`: the ACPI power button, then wait.
    pub async fn shutdown(
        &self,
        vmid: u32,
        opts: StopOptions,
        log: &TaskContext,
    ) -> Result<(), VmError> {
        let _guard = self.lock(vmid).await?;
        self.shutdown_locked(vmid, opts, log).await
    }

    pub async fn shutdown_locked(
        &self,
        vmid: u32,
        opts: StopOptions,
        log: &TaskContext,
    ) -> Result<(), VmError> {
        let Some(run) = self.prepare_stop(vmid, opts.skiplock, log).await? else {
            return Ok(());
        };
        // A paused guest cannot react to the power button.
        if run.owner.info().qmpstatus == "paused" {
            run.owner.resume().await?;
        }
        run.owner.powerdown().await?;
        if run.owner.wait_exit(opts.timeout).await {
            return Ok(());
        }
        if opts.force_stop {
            log.log("VM quit/powerdown failed - terminating now with SIGTERM");
            let _ = run.owner.quit().await;
            if !run.owner.wait_exit(Duration::from_secs(10)).await {
                process::terminate(run.owner.pid, Duration::from_secs(5))
                    .await
                    .map_err(VmError::Signal)?;
                run.owner.wait_exit(Duration::from_secs(5)).await;
            }
            return Ok(());
        }
        Err(VmError::ShutdownTimeout)
    }

    /// `status/reboot`: shutdown, then start, applying pending changes.
    pub async fn reboot(
        &self,
        vmid: u32,
        timeout: Duration,
        log: &TaskContext,
    ) -> Result<(), VmError> {
        let _guard = self.lock(vmid).await?;
        if self.running(vmid).is_none() {
            return Err(VmError::NotRunning(vmid));
        }
        self.shutdown_locked(
            vmid,
            StopOptions {
                skiplock: false,
                timeout,
                force_stop: false,
            },
            log,
        )
        .await?;
        self.start_locked(vmid, StartOptions::default(), log).await
    }

    /// `status/reset`, `status/suspend` (pause in RAM) and `status/resume`.
    pub async fn power(
        &self,
        vmid: u32,
        skiplock: bool,
        action: PowerAction,
    ) -> Result<(), VmError> {
        let _guard = self.lock(vmid).await?;
        let loaded = self.store.load(vmid)?;
        check_lock(&loaded.conf, skiplock)?;
        let run = self.running(vmid).ok_or(VmError::NotRunning(vmid))?;
        match action {
            PowerAction::Reset => run.owner.reset().await?,
            PowerAction::Pause => run.owner.pause().await?,
            PowerAction::Resume => run.owner.resume().await?,
        }
        Ok(())
    }

    /// After a VM's QEMU ended: the post-stop hook, and a restart if it crashed and the
    /// config asks for `autostart`.
    pub(super) async fn after_exit(&self, vmid: u32, info: super::owner::RunInfo) {
        limits::remove_cgroup(vmid);
        let Ok(loaded) = self.store.load(vmid) else {
            return;
        };
        let hook = self.hookscript(&loaded.conf.main.props);
        if let Err(e) = self.run_hook(vmid, &hook, "post-stop", None).await {
            warn!(vmid, error = %e, "post-stop hook failed");
        }
        // A clean end has a SHUTDOWN event; a crash or kill has none (or a guest panic).
        let crashed = matches!(info.shutdown_reason.as_deref(), None | Some("guest-panic"));
        if crashed && loaded.conf.get("autostart") == Some("1") {
            info!(vmid, "VM crashed and has autostart set; restarting it");
            if let Some(start) = self.autostart.get() {
                start(vmid);
            }
        }
    }
}

/// Plugs a started QEMU's tap devices into their Linux bridges and brings them up. QEMU made
/// the taps (they go when it exits); the guest sees its link only once this is done.
pub(super) async fn plug_taps(taps: &[(String, String)]) -> Result<(), VmError> {
    for (tap, bridge) in taps {
        for args in [
            [
                "link",
                "set",
                "dev",
                tap.as_str(),
                "master",
                bridge.as_str(),
            ]
            .as_slice(),
            ["link", "set", "dev", tap.as_str(), "up"].as_slice(),
        ] {
            let out = tokio::process::Command::new("ip")
                .args(args)
                .output()
                .await
                .map_err(VmError::Runtime)?;
            if !out.status.success() {
                return Err(VmError::Refused(format!(
                    "cannot plug {tap} into bridge {bridge}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
        info!(tap = %tap, bridge = %bridge, "tap plugged into its bridge");
    }
    Ok(())
}
