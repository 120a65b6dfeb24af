//! The owner of one running VM: the only holder of its QMP connection.
//!
//! Every action on a running VM's QEMU is a [`VmCommand`] sent to this task with a reply
//! channel, so no two code paths ever race on one QMP socket. The task also follows QEMU's
//! events, keeps the published [`RunInfo`] current, and notices within moments when QEMU goes
//! away (its QMP socket closes), whatever the cause: guest poweroff, crash, or kill.

use std::sync::Arc;
use std::time::Duration;

use hemiron_qmp::{cmd, QmpClient, QmpError, QmpEvent};
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::{debug, info, warn, Instrument};

use crate::qemu::process;

/// What the owner knows about its VM, published to readers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunInfo {
    /// QEMU's run state as `query-status` names it (`running`, `paused`, `prelaunch`…), or
    /// `stopped` once the process is gone.
    pub qmpstatus: String,
    pub alive: bool,
    /// The reason of the last SHUTDOWN event (`guest-shutdown`, `host-qmp-quit`, …).
    pub shutdown_reason: Option<String>,
}

/// Block device I/O counters summed over a VM's disks.
#[derive(Debug, Clone, Copy, Default)]
pub struct BlockTotals {
    pub rd_bytes: u64,
    pub wr_bytes: u64,
}

type Reply<T> = oneshot::Sender<Result<T, QmpError>>;

/// An action on a running VM.
#[derive(Debug)]
pub enum VmCommand {
    /// ACPI power button.
    Powerdown(Reply<()>),
    /// End QEMU at once (hard stop).
    Quit(Reply<()>),
    /// Pause the vCPUs.
    Pause(Reply<()>),
    /// Resume the vCPUs.
    Resume(Reply<()>),
    /// Hard reset.
    Reset(Reply<()>),
    /// Grow a block node to `size` bytes.
    BlockResize {
        node: String,
        size: u64,
        reply: Reply<()>,
    },
    /// Read I/O counters.
    BlockStats(Reply<BlockTotals>),
    /// Plug or unplug a NIC's link.
    SetLink {
        device: String,
        up: bool,
        reply: Reply<()>,
    },
    /// Set the balloon target in bytes.
    Balloon { bytes: u64, reply: Reply<()> },
    /// Any other QMP command, by name (for operations later issues add).
    Raw {
        name: String,
        args: Option<Value>,
        reply: Reply<Value>,
    },
    /// A human monitor command.
    Hmp { line: String, reply: Reply<String> },
}

/// A handle to talk to a VM's owner.
#[derive(Debug, Clone)]
pub struct OwnerHandle {
    tx: mpsc::Sender<VmCommand>,
    info: watch::Receiver<RunInfo>,
    events: broadcast::Sender<QmpEvent>,
    pub pid: u32,
}

impl OwnerHandle {
    pub fn info(&self) -> RunInfo {
        self.info.borrow().clone()
    }

    pub fn is_alive(&self) -> bool {
        self.info.borrow().alive
    }

    /// QEMU's events from now on (for operations that wait for one, e.g. `MIGRATION`).
    pub fn events(&self) -> broadcast::Receiver<QmpEvent> {
        self.events.subscribe()
    }

    /// Waits until the QEMU process is gone, or `timeout` passes; returns whether it is gone.
    pub async fn wait_exit(&self, timeout: Duration) -> bool {
        let mut rx = self.info.clone();
        tokio::time::timeout(timeout, rx.wait_for(|i| !i.alive))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> VmCommand) -> Result<T, QmpError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| QmpError::Disconnected)?;
        rx.await.unwrap_or(Err(QmpError::Disconnected))
    }

    pub async fn powerdown(&self) -> Result<(), QmpError> {
        self.call(VmCommand::Powerdown).await
    }
    pub async fn quit(&self) -> Result<(), QmpError> {
        self.call(VmCommand::Quit).await
    }
    pub async fn pause(&self) -> Result<(), QmpError> {
        self.call(VmCommand::Pause).await
    }
    pub async fn resume(&self) -> Result<(), QmpError> {
        self.call(VmCommand::Resume).await
    }
    pub async fn reset(&self) -> Result<(), QmpError> {
        self.call(VmCommand::Reset).await
    }
    pub async fn block_resize(&self, node: &str, size: u64) -> Result<(), QmpError> {
        let node = node.to_string();
        self.call(|reply| VmCommand::BlockResize { node, size, reply })
            .await
    }
    pub async fn block_stats(&self) -> Result<BlockTotals, QmpError> {
        self.call(VmCommand::BlockStats).await
    }
    pub async fn set_link(&self, device: &str, up: bool) -> Result<(), QmpError> {
        let device = device.to_string();
        self.call(|reply| VmCommand::SetLink { device, up, reply })
            .await
    }
    pub async fn balloon(&self, bytes: u64) -> Result<(), QmpError> {
        self.call(|reply| VmCommand::Balloon { bytes, reply }).await
    }
    pub async fn raw(&self, name: &str, args: Option<Value>) -> Result<Value, QmpError> {
        let name = name.to_string();
        self.call(|reply| VmCommand::Raw { name, args, reply })
            .await
    }
    pub async fn hmp(&self, line: &str) -> Result<String, QmpError> {
        let line = line.to_string();
        self.call(|reply| VmCommand::Hmp { line, reply }).await
    }
}

/// Called once when the VM's QEMU is gone, with the last run info.
pub type ExitHook = Box<dyn FnOnce(RunInfo) + Send + 'static>;

/// Connects to a running QEMU's QMP socket and starts its owner task.
pub async fn adopt(
    vmid: u32,
    pid: u32,
    qmp_path: &std::path::Path,
    on_exit: ExitHook,
) -> Result<OwnerHandle, QmpError> {
    let (client, events) = QmpClient::connect(qmp_path).await?;
    let status = client.execute(&cmd::query_status {}).await?;
    let qmpstatus = serde_json::to_value(status.status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "running".to_string());
    let (info_tx, info_rx) = watch::channel(RunInfo {
        qmpstatus,
        alive: true,
        shutdown_reason: None,
    });
    let (tx, rx) = mpsc::channel(32);
    let (events_tx, _) = broadcast::channel(64);
    let span = tracing::info_span!("vm_owner", vmid, pid);
    tokio::spawn(
        Owner {
            client,
            pid,
            info: info_tx,
            events: events_tx.clone(),
        }
        .run(rx, events, on_exit)
        .instrument(span),
    );
    Ok(OwnerHandle {
        tx,
        info: info_rx,
        events: events_tx,
        pid,
    })
}

struct Owner {
    client: Arc<QmpClient>,
    pid: u32,
    info: watch::Sender<RunInfo>,
    events: broadcast::Sender<QmpEvent>,
}

impl Owner {
    async fn run(
        self,
        mut commands: mpsc::Receiver<VmCommand>,
        mut events: mpsc::UnboundedReceiver<QmpEvent>,
        on_exit: ExitHook,
    ) {
        loop {
            tokio::select! {
                // Events first: a command must not be answered from a state the events
                // already contradict.
                biased;
                ev = events.recv() => match ev {
                    Some(ev) => self.on_event(ev).await,
                    None => break,
                },
                cmd = commands.recv() => match cmd {
                    Some(cmd) => self.handle(cmd).await,
                    // Every handle is gone: keep following the process regardless.
                    None => {
                        while let Some(ev) = events.recv().await {
                            self.on_event(ev).await;
                        }
                        break;
                    }
                },
            }
        }
        // QMP closed: QEMU is exiting. Wait for the process itself to be gone (QEMU closes
        // the socket just before it exits) so a following start never sees the old one.
        if !process::wait_gone(self.pid, Duration::from_secs(5)).await {
            warn!("QMP closed but QEMU is still running; killing it");
            let _ = process::terminate(self.pid, Duration::from_secs(2)).await;
        }
        let last = {
            let mut info = self.info.borrow().clone();
            info.alive = false;
            info.qmpstatus = "stopped".to_string();
            info
        };
        info!(reason = ?last.shutdown_reason, "QEMU exited");
        // The exit hook runs before readers see `alive = false`, so that whoever waits for
        // the exit finds the runtime files already cleaned up.
        on_exit(last.clone());
        let _ = self.info.send(last);
        // Fail commands that raced with the exit.
        commands.close();
        while let Ok(cmd) = commands.try_recv() {
            fail(cmd);
        }
    }

    async fn on_event(&self, ev: QmpEvent) {
        debug!(event = %ev.name, "QMP event");
        match ev.name.as_str() {
            "SHUTDOWN" => {
                let reason = ev
                    .data
                    .get("reason")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                self.info.send_modify(|i| i.shutdown_reason = reason);
            }
            "STOP" | "RESUME" | "SUSPEND" | "WAKEUP" | "RESET" | "GUEST_PANICKED" | "MIGRATION" => {
                self.refresh_status().await;
            }
            _ => {}
        }
        // Nobody listening is the usual case.
        let _ = self.events.send(ev);
    }

    async fn refresh_status(&self) {
        if let Ok(Some(status)) = self
            .client
            .execute_raw("query-status", None)
            .await
            .map(|v| v.get("status").and_then(Value::as_str).map(str::to_string))
        {
            self.info.send_modify(|i| i.qmpstatus = status);
        }
    }

    async fn handle(&self, cmd: VmCommand) {
        let c = &self.client;
        match cmd {
            VmCommand::Powerdown(r) => {
                let _ = r.send(c.execute_raw("system_powerdown", None).await.map(drop));
            }
            VmCommand::Quit(r) => {
                // QEMU may close the socket before replying to `quit`: that is success.
                let res = match c.execute_raw("quit", None).await {
                    Ok(_) | Err(QmpError::Disconnected) => Ok(()),
                    Err(e) => Err(e),
                };
                let _ = r.send(res);
            }
            VmCommand::Pause(r) => {
                let res = c.execute_raw("stop", None).await.map(drop);
                self.refresh_status().await;
                let _ = r.send(res);
            }
            VmCommand::Resume(r) => {
                let res = c.execute_raw("cont", None).await.map(drop);
                self.refresh_status().await;
                let _ = r.send(res);
            }
            VmCommand::Reset(r) => {
                let _ = r.send(c.execute_raw("system_reset", None).await.map(drop));
            }
            VmCommand::BlockResize { node, size, reply } => {
                let res = c
                    .execute_json(&cmd::block_resize {
                        device: None,
                        node_name: Some(node),
                        size: size as i64,
                    })
                    .await
                    .map(drop);
                let _ = reply.send(res);
            }
            VmCommand::BlockStats(r) => {
                let res = c.execute_raw("query-blockstats", None).await.map(|v| {
                    let mut totals = BlockTotals::default();
                    for dev in v.as_array().into_iter().flatten() {
                        // Only devices attached to the guest, not internal nodes.
                        if dev
                            .get("qdev")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .is_empty()
                            && dev
                                .get("device")
                                .and_then(Value::as_str)
                                .unwrap_or("")
                                .is_empty()
                        {
                            continue;
                        }
                        let stat = |k: &str| {
                            dev.pointer(&format!("/stats/{k}"))
                                .and_then(Value::as_u64)
                                .unwrap_or(0)
                        };
                        totals.rd_bytes += stat("rd_bytes");
                        totals.wr_bytes += stat("wr_bytes");
                    }
                    totals
                });
                let _ = r.send(res);
            }
            VmCommand::SetLink { device, up, reply } => {
                let res = c
                    .execute_raw(
                        "set_link",
                        Some(serde_json::json!({ "name": device, "up": up })),
                    )
                    .await
                    .map(drop);
                let _ = reply.send(res);
            }
            VmCommand::Balloon { bytes, reply } => {
                let res = c
                    .execute_raw("balloon", Some(serde_json::json!({ "value": bytes })))
                    .await
                    .map(drop);
                let _ = reply.send(res);
            }
            VmCommand::Raw { name, args, reply } => {
                let _ = reply.send(c.execute_raw(&name, args).await);
            }
            VmCommand::Hmp { line, reply } => {
                let _ = reply.send(c.hmp(&line).await);
            }
        }
    }
}

fn fail(cmd: VmCommand) {
    let e = QmpError::Disconnected;
    match cmd {
        VmCommand::Powerdown(r)
        | VmCommand::Quit(r)
        | VmCommand::Pause(r)
        | VmCommand::Resume(r)
        | VmCommand::Reset(r) => {
            let _ = r.send(Err(e));
        }
        VmCommand::BlockResize { reply, .. }
        | VmCommand::SetLink { reply, .. }
        | VmCommand::Balloon { reply, .. } => {
            let _ = reply.send(Err(e));
        }
        VmCommand::BlockStats(r) => {
            let _ = r.send(Err(e));
        }
        VmCommand::Raw { reply, .. } => {
            let _ = reply.send(Err(e));
        }
        VmCommand::Hmp { reply, .. } => {
            let _ = reply.send(Err(e));
        }
    }
}
