//! A client for the QEMU Machine Protocol (QMP) over a unix socket.
//!
//! Commands are typed with the structs `qapi-qmp` generates from QEMU's schema, but the
//! transport here is deliberately lenient: replies are matched to commands by `id`, events are
//! passed on as JSON, and a message that the generated types would not accept (QEMU 7.2 sends
//! some shapes that differ from the newer schema those types come from) never ends the
//! connection. Callers that need a version-specific shape decode the JSON themselves.
//!
//! One reader task owns the socket's read half: it answers waiting commands and forwards
//! events, so a command never waits behind an unread event and events are never lost while a
//! command is pending. When QEMU goes away the event channel closes, which is how the VM's
//! owner learns that the process ended.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, trace, warn};

pub use qapi_qmp as cmd;
pub use qapi_spec::Command;

/// Failure of a QMP exchange.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("failed to connect to QMP socket {path}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP greeting missing or malformed")]
    Greeting,
    #[error("failed to send QMP command {command}")]
    Send {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP connection closed")]
    Disconnected,
    /// QEMU refused the command; `desc` is QEMU's own message.
    #[error("{desc}")]
    Command { class: String, desc: String },
    #[error("unexpected reply to QMP command {command}")]
    Decode {
        command: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("failed to encode QMP command {command}")]
    Encode {
        command: String,
        #[source]
        source: serde_json::Error,
    },
}

/// An asynchronous QMP event.
#[derive(Debug, Clone)]
pub struct QmpEvent {
    pub name: String,
    pub data: Value,
    /// Seconds and microseconds since the epoch, as QEMU stamped it.
    pub timestamp: (i64, i64),
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, QmpError>>>>>;

/// A connected QMP session in command mode.
#[derive(Debug)]
pub struct QmpClient {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Pending,
    next_id: AtomicU64,
    greeting: Value,
}

impl QmpClient {
    /// Connects, reads the greeting and leaves capabilities negotiation mode. Returns the
    /// client and the stream of events, which ends when the connection closes.
    pub async fn connect(
        path: &Path,
    ) -> Result<(Arc<QmpClient>, mpsc::UnboundedReceiver<QmpEvent>), QmpError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| QmpError::Connect {
                path: path.display().to_string(),
                source,
            })?;
        let (read, write) = stream.into_split();
        let mut reader = BufReader::new(read);
        let mut line = String::new();
        let n = reader
            .read_line(&mut line)
            .await
            .map_err(|_| QmpError::Greeting)?;
        let greeting: Value = serde_json::from_str(&line).map_err(|_| QmpError::Greeting)?;
        if n == 0 || greeting.get("QMP").is_none() {
            return Err(QmpError::Greeting);
        }
        let pending: Pending = Arc::default();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        tokio::spawn(read_loop(reader, pending.clone(), events_tx));
        let client = Arc::new(QmpClient {
            writer: tokio::sync::Mutex::new(write),
            pending,
            next_id: AtomicU64::new(1),
            greeting,
        });
        client.execute_raw("qmp_capabilities", None).await?;
        Ok((client, events_rx))
    }

    /// The greeting QEMU sent (holds its version).
    pub fn greeting(&self) -> &Value {
        &self.greeting
    }

    /// QEMU's version as (major, minor, micro), from the greeting.
    pub fn qemu_version(&self) -> Option<(u64, u64, u64)> {
        let v = self.greeting.pointer("/QMP/version/qemu")?;
        Some((
            v.get("major")?.as_u64()?,
            v.get("minor")?.as_u64()?,
            v.get("micro")?.as_u64()?,
        ))
    }

    /// Runs a command given by name with JSON arguments and returns the JSON reply.
    pub async fn execute_raw(&self, name: &str, args: Option<Value>) -> Result<Value, QmpError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = serde_json::json!({ "execute": name, "id": id });
        if let Some(args) = args {
            if !args.as_object().is_some_and(|o| o.is_empty()) {
                msg["arguments"] = args;
            }
        }
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
        let mut bytes = msg.to_string().into_bytes();
        bytes.push(b'\n');
        trace!(command = name, "QMP send");
        let sent = {
            let mut writer = self.writer.lock().await;
            writer.write_all(&bytes).await
        };
        if let Err(source) = sent {
            self.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            return Err(QmpError::Send {
                command: name.to_string(),
                source,
            });
        }
        rx.await.unwrap_or(Err(QmpError::Disconnected))
    }

    /// Runs a typed command from `qapi-qmp` and decodes its reply.
    pub async fn execute<C>(&self, command: &C) -> Result<C::Ok, QmpError>
    where
        C: Command + Serialize,
        C::Ok: DeserializeOwned,
    {
        let args = serde_json::to_value(command).map_err(|source| QmpError::Encode {
            command: C::NAME.to_string(),
            source,
        })?;
        let reply = self.execute_raw(C::NAME, Some(args)).await?;
        serde_json::from_value(reply).map_err(|source| QmpError::Decode {
            command: C::NAME.to_string(),
            source,
        })
    }

    /// Runs a typed command whose reply shape differs between QEMU versions, returning JSON.
    pub async fn execute_json<C>(&self, command: &C) -> Result<Value, QmpError>
    where
        C: Command + Serialize,
    {
        let args = serde_json::to_value(command).map_err(|source| QmpError::Encode {
            command: C::NAME.to_string(),
            source,
        })?;
        self.execute_raw(C::NAME, Some(args)).await
    }

    /// Runs a human monitor (HMP) command line; some commands exist only there.
    pub async fn hmp(&self, command_line: &str) -> Result<String, QmpError> {
        self.execute(&cmd::human_monitor_command {
            command_line: command_line.to_string(),
            cpu_index: None,
        })
        .await
    }
}

async fn read_loop(
    mut reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    pending: Pending,
    events: mpsc::UnboundedSender<QmpEvent>,
) {
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line).await {
            Ok(0) => break,
            Ok(_) => {}
            Err(err) => {
                debug!(error = %err, "QMP read failed");
                break;
            }
        }
        let msg: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(err) => {
                warn!(error = %err, "ignoring unparseable QMP message");
                continue;
            }
        };
        if let Some(name) = msg.get("event").and_then(Value::as_str) {
            let timestamp = (
                msg.pointer("/timestamp/seconds")
                    .and_then(Value::as_i64)
                    .unwrap_or(0),
                msg.pointer("/timestamp/microseconds")
                    .and_then(Value::as_i64)
                    .unwrap_or(0),
            );
            trace!(event = name, "QMP event");
            // The receiver may be gone (nobody listens); replies still matter.
            let _ = events.send(QmpEvent {
                name: name.to_string(),
                data: msg.get("data").cloned().unwrap_or(Value::Null),
                timestamp,
            });
            continue;
        }
        let Some(id) = msg.get("id").and_then(Value::as_u64) else {
            warn!("ignoring QMP reply without id");
            continue;
        };
        let waiter = pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        let Some(waiter) = waiter else {
            continue;
        };
        let result = if let Some(ret) = msg.get("return") {
            Ok(ret.clone())
        } else if let Some(err) = msg.get("error") {
            Err(QmpError::Command {
                class: err
                    .get("class")
                    .and_then(Value::as_str)
                    .unwrap_or("GenericError")
                    .to_string(),
                desc: err
                    .get("desc")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown QMP error")
                    .to_string(),
            })
        } else {
            Ok(Value::Null)
        };
        let _ = waiter.send(result);
    }
    // Fail everything still waiting: the peer is gone.
    let waiters: Vec<_> = pending
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .drain()
        .collect();
    for (_, w) in waiters {
        let _ = w.send(Err(QmpError::Disconnected));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::UnixListener;

    /// A scripted QMP peer: answers every command with `{"return":{}}` and emits an event
    /// QEMU 7.2 sends in a shape newer schemas don't have, before each reply.
    async fn fake_qemu(listener: UnixListener) {
        let (mut sock, _) = listener.accept().await.unwrap();
        sock.write_all(b"{\"QMP\":{\"version\":{\"qemu\":{\"major\":7,\"minor\":2,\"micro\":22},\"package\":\"\"},\"capabilities\":[\"oob\"]}}\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let mut acc = String::new();
        loop {
            let n = sock.read(&mut buf).await.unwrap();
            if n == 0 {
                return;
            }
            acc.push_str(std::str::from_utf8(&buf[..n]).unwrap());
            while let Some(pos) = acc.find('\n') {
                let line: String = acc.drain(..=pos).collect();
                let v: Value = serde_json::from_str(&line).unwrap();
                let id = v["id"].clone();
                sock.write_all(b"{\"event\":\"ODD_EVENT\",\"data\":{\"x\":1},\"timestamp\":{\"seconds\":1,\"microseconds\":2}}\n").await.unwrap();
                if v["execute"] == "quit" {
                    return;
                }
                let reply = if v["execute"] == "bogus" {
                    serde_json::json!({"error":{"class":"CommandNotFound","desc":"The command bogus has not been found"},"id":id})
                } else if v["execute"] == "query-status" {
                    serde_json::json!({"return":{"status":"running","singlestep":false,"running":true},"id":id})
                } else {
                    serde_json::json!({"return":{},"id":id})
                };
                sock.write_all(format!("{reply}\n").as_bytes())
                    .await
                    .unwrap();
            }
        }
    }

    #[tokio::test]
    async fn commands_events_and_disconnect() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(fake_qemu(listener));
        let (client, mut events) = QmpClient::connect(&path).await.unwrap();
        assert_eq!(client.qemu_version(), Some((7, 2, 22)));
        let status = client.execute(&cmd::query_status {}).await.unwrap();
        assert!(status.running);
        let err = client.execute_raw("bogus", None).await.unwrap_err();
        assert_eq!(err.to_string(), "The command bogus has not been found");
        let ev = events.recv().await.unwrap();
        assert_eq!(ev.name, "ODD_EVENT");
        assert_eq!(ev.timestamp, (1, 2));
        let quit = client.execute_raw("quit", None).await;
        assert!(matches!(quit, Err(QmpError::Disconnected)));
        // The event stream ends once the peer is gone.
        while events.recv().await.is_some() {}
    }
}
