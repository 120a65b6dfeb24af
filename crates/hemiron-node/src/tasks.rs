//! Tasks: every state change runs as a task with a Proxmox UPID, a status and a log.
//!
//! Logs live in `DATA/tasks/<last hex digit of starttime>/<UPID>` as in Proxmox; the last
//! line (`TASK OK`, `TASK ERROR: …`) is the exit status. `DATA/tasks/active` lists running
//! tasks and `DATA/tasks/index` archives finished ones, so history survives restarts. A task
//! still listed as active when the agent starts was cut off by a crash: it is archived with
//! the status its log gives, which is `unexpected status` since it never got its last line.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use hemiron_pve::upid::Upid;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

use crate::fsutil;

/// Failure of the task registry itself (not of a task's work).
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("failed to create task log {path}")]
    CreateLog {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to update the task list {path}")]
    WriteList {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no such task")]
    NotFound,
    #[error("failed to read task log")]
    ReadLog(#[source] std::io::Error),
}

/// A task's work failed; the message becomes `TASK ERROR: <message>`.
#[derive(Debug, Clone)]
pub struct TaskFailure(pub String);

impl<E: std::error::Error + 'static> From<E> for TaskFailure {
    fn from(err: E) -> Self {
        TaskFailure(crate::error_chain(&err))
    }
}

impl TaskFailure {
    pub fn msg(msg: impl Into<String>) -> Self {
        TaskFailure(msg.into())
    }
}

/// The log of a running task.
#[derive(Debug, Clone)]
pub struct TaskLog {
    file: Arc<Mutex<File>>,
}

impl TaskLog {
    /// Appends one line (or several, split on newlines) to the task log.
    pub fn log(&self, text: impl AsRef<str>) {
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        for line in text.as_ref().lines() {
            // Lines that look like a final status would make a running task read as ended.
            let line = if line.starts_with("TASK ") {
                format!(" {line}")
            } else {
                line.to_string()
            };
            if let Err(err) = writeln!(file, "{line}") {
                warn!(error = %err, "failed to write task log line");
            }
        }
    }
}

/// What a task's work gets: its log and its cancellation signal.
#[derive(Debug, Clone)]
pub struct TaskContext {
    pub upid: Upid,
    pub log: TaskLog,
    pub cancel: CancellationToken,
}

impl TaskContext {
    pub fn log(&self, text: impl AsRef<str>) {
        self.log.log(text)
    }
}

#[derive(Debug)]
struct ActiveTask {
    upid: Upid,
    cancel: CancellationToken,
    done: watch::Receiver<bool>,
}

/// Status of a task as `GET /nodes/{node}/tasks/{upid}/status` reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TaskStatus {
    pub upid: String,
    pub node: String,
    pub pid: u32,
    pub pstart: u64,
    pub starttime: i64,
    #[serde(rename = "type")]
    pub task_type: String,
    pub id: String,
    pub user: String,
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exitstatus: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endtime: Option<i64>,
}

/// One archived task from the index.
#[derive(Debug, Clone)]
struct IndexEntry {
    upid: Upid,
    endtime: i64,
    status: String,
}

/// The node's task registry.
#[derive(Debug, Clone)]
pub struct TaskManager {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    node: String,
    dir: PathBuf,
    pid: u32,
    pstart: u64,
    last_starttime: AtomicI64,
    active: Mutex<HashMap<String, ActiveTask>>,
    /// Serialises writes of the active list and appends to the index.
    files: Mutex<()>,
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Start time of this process in clock ticks since boot (field 22 of /proc/self/stat), the
/// `pstart` Proxmox puts in UPIDs.
fn own_pstart() -> u64 {
    fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            let after = stat.rsplit_once(')')?.1;
            after.split_whitespace().nth(19)?.parse().ok()
        })
        .unwrap_or(0)
}

impl TaskManager {
    /// Opens the registry, archiving tasks that a previous agent left running.
    pub fn open(node: &str, dir: &Path) -> Result<Self, TaskError> {
        fs::create_dir_all(dir).map_err(|source| TaskError::WriteList {
            path: dir.to_path_buf(),
            source,
        })?;
        fsutil::remove_stale_temps(dir);
        let inner = Inner {
            node: node.to_string(),
            dir: dir.to_path_buf(),
            pid: std::process::id(),
            pstart: own_pstart(),
            last_starttime: AtomicI64::new(0),
            active: Mutex::new(HashMap::new()),
            files: Mutex::new(()),
        };
        let mgr = Self {
            inner: Arc::new(inner),
        };
        mgr.archive_interrupted()?;
        Ok(mgr)
    }

    pub fn node(&self) -> &str {
        &self.inner.node
    }

    fn active_file(&self) -> PathBuf {
        self.inner.dir.join("active")
    }

    fn index_file(&self) -> PathBuf {
        self.inner.dir.join("index")
    }

    fn log_path(&self, upid: &Upid) -> PathBuf {
        self.inner
            .dir
            .join(format!("{:X}", upid.starttime & 0xf))
            .join(upid.to_string())
    }

    fn archive_interrupted(&self) -> Result<(), TaskError> {
        let previous = fs::read_to_string(self.active_file()).unwrap_or_default();
        let archived: std::collections::HashSet<String> = self
            .read_index()
            .into_iter()
            .map(|e| e.upid.to_string())
            .collect();
        for line in previous.lines() {
            let Ok(upid) = line.trim().parse::<Upid>() else {
                continue;
            };
            if archived.contains(&upid.to_string()) {
                continue;
            }
            let path = self.log_path(&upid);
            let endtime = fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs() as i64)
                .unwrap_or_else(unix_now);
            let status = exit_status_of(&path);
            info!(upid = %upid, status = %status, "archiving task cut off by agent restart");
            self.append_index(&upid, endtime, &status)?;
        }
        self.write_active_list(&[])
    }

    fn write_active_list(&self, upids: &[String]) -> Result<(), TaskError> {
        let path = self.active_file();
        let mut body = upids.join("\n");
        if !body.is_empty() {
            body.push('\n');
        }
        fsutil::write_atomic(&path, body.as_bytes(), 0o644)
            .map_err(|source| TaskError::WriteList { path, source })
    }

    fn append_index(&self, upid: &Upid, endtime: i64, status: &str) -> Result<(), TaskError> {
        let path = self.index_file();
        let line = format!("{upid} {:08X} {}\n", endtime, status.replace('\n', " "));
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| TaskError::WriteList {
                path: path.clone(),
                source,
            })?;
        file.write_all(line.as_bytes())
            .and_then(|_| file.sync_data())
            .map_err(|source| TaskError::WriteList { path, source })
    }

    fn read_index(&self) -> Vec<IndexEntry> {
        let Ok(file) = File::open(self.index_file()) else {
            return Vec::new();
        };
        BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .filter_map(|line| {
                // A line torn by a crash fails to parse and is skipped.
                let mut parts = line.splitn(3, ' ');
                let upid = parts.next()?.parse::<Upid>().ok()?;
                let endtime = i64::from_str_radix(parts.next()?, 16).ok()?;
                let status = parts.next()?.to_string();
                Some(IndexEntry {
                    upid,
                    endtime,
                    status,
                })
            })
            .collect()
    }

    fn next_starttime(&self) -> i64 {
        // Strictly increasing start times keep UPIDs unique for tasks started in the same
        // second by this agent (Proxmox's UPIDs differ by worker pid instead).
        let now = unix_now();
        let mut last = self.inner.last_starttime.load(Ordering::SeqCst);
        loop {
            let next = now.max(last + 1);
            match self.inner.last_starttime.compare_exchange(
                last,
                next,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return next,
                Err(actual) => last = actual,
            }
        }
    }

    /// Starts `work` as a task and returns its UPID at once.
    pub fn spawn<F, Fut>(
        &self,
        task_type: &str,
        id: &str,
        user: &str,
        work: F,
    ) -> Result<Upid, TaskError>
    where
        F: FnOnce(TaskContext) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), TaskFailure>> + Send + 'static,
    {
        let upid = Upid {
            node: self.inner.node.clone(),
            pid: self.inner.pid,
            pstart: self.inner.pstart,
            starttime: self.next_starttime(),
            task_type: task_type.to_string(),
            id: id.to_string(),
            user: user.to_string(),
        };
        let path = self.log_path(&upid);
        let create = || -> std::io::Result<File> {
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir)?;
            }
            OpenOptions::new().create_new(true).append(true).open(&path)
        };
        let file = create().map_err(|source| TaskError::CreateLog {
            path: path.clone(),
            source,
        })?;
        let log = TaskLog {
            file: Arc::new(Mutex::new(file)),
        };
        let cancel = CancellationToken::new();
        let (done_tx, done_rx) = watch::channel(false);
        {
            let _files = self.inner.files.lock().unwrap_or_else(|p| p.into_inner());
            let mut active = self.inner.active.lock().unwrap_or_else(|p| p.into_inner());
            active.insert(
                upid.to_string(),
                ActiveTask {
                    upid: upid.clone(),
                    cancel: cancel.clone(),
                    done: done_rx,
                },
            );
            let list: Vec<String> = active.keys().cloned().collect();
            drop(active);
            self.write_active_list(&list)?;
        }
        let ctx = TaskContext {
            upid: upid.clone(),
            log: log.clone(),
            cancel: cancel.clone(),
        };
        let mgr = self.clone();
        let span = tracing::info_span!("task", upid = %upid);
        let task_upid = upid.clone();
        tokio::spawn(
            async move {
                info!("task started");
                let result = tokio::select! {
                    r = work(ctx) => r,
                    _ = cancel.cancelled() => Err(TaskFailure::msg("interrupted by signal")),
                };
                let status = match &result {
                    Ok(()) => "OK".to_string(),
                    Err(TaskFailure(msg)) => {
                        // The status must be one line (it is the last line of the log).
                        let msg = msg.replace('\n', " ");
                        if msg.trim().is_empty() {
                            "unknown error".to_string()
                        } else {
                            msg
                        }
                    }
                };
                {
                    let mut file = log.file.lock().unwrap_or_else(|p| p.into_inner());
                    let last = if status == "OK" {
                        "TASK OK".to_string()
                    } else {
                        format!("TASK ERROR: {status}")
                    };
                    if let Err(err) = writeln!(file, "{last}").and_then(|_| file.sync_data()) {
                        warn!(error = %err, "failed to finish task log");
                    }
                }
                mgr.finish(&task_upid, &status);
                let _ = done_tx.send(true);
                info!(status = %status, "task finished");
            }
            .instrument(span),
        );
        Ok(upid)
    }

    fn finish(&self, upid: &Upid, status: &str) {
        let _files = self.inner.files.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(err) = self.append_index(upid, unix_now(), status) {
            warn!(error = %err, "failed to archive task");
        }
        let mut active = self.inner.active.lock().unwrap_or_else(|p| p.into_inner());
        active.remove(&upid.to_string());
        let list: Vec<String> = active.keys().cloned().collect();
        drop(active);
        if let Err(err) = self.write_active_list(&list) {
            warn!(error = %err, "failed to update the active task list");
        }
    }

    /// Waits until the task has finished (or returns at once if it is not running).
    pub async fn wait(&self, upid: &str) {
        let rx = {
            let active = self.inner.active.lock().unwrap_or_else(|p| p.into_inner());
            active.get(upid).map(|t| t.done.clone())
        };
        if let Some(mut rx) = rx {
            let _ = rx.wait_for(|done| *done).await;
        }
    }

    /// Requests cancellation of a running task. Returns false if it is not running.
    pub fn stop(&self, upid: &str) -> bool {
        let active = self.inner.active.lock().unwrap_or_else(|p| p.into_inner());
        match active.get(upid) {
            Some(task) => {
                task.cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// Running tasks of `task_type` for object `id`.
    pub fn active_of(&self, task_type: &str, id: &str) -> Vec<String> {
        let active = self.inner.active.lock().unwrap_or_else(|p| p.into_inner());
        active
            .values()
            .filter(|t| t.upid.task_type == task_type && t.upid.id == id)
            .map(|t| t.upid.to_string())
            .collect()
    }

    /// The status of one task.
    pub fn status(&self, upid_str: &str) -> Result<TaskStatus, TaskError> {
        let upid: Upid = upid_str.parse().map_err(|_| TaskError::NotFound)?;
        if upid.node != self.inner.node {
            return Err(TaskError::NotFound);
        }
        let running = {
            let active = self.inner.active.lock().unwrap_or_else(|p| p.into_inner());
            active.contains_key(upid_str)
        };
        let path = self.log_path(&upid);
        if !path.exists() {
            return Err(TaskError::NotFound);
        }
        Ok(if running {
            status_of(&upid, None, None)
        } else {
            let endtime = fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs() as i64);
            status_of(&upid, Some(exit_status_of(&path)), endtime)
        })
    }

    /// Lines `start..start+limit` of a task's log (`n` counts from 1) and the line total.
    pub fn log_lines(
        &self,
        upid_str: &str,
        start: usize,
        limit: usize,
    ) -> Result<(Vec<(usize, String)>, usize), TaskError> {
        let upid: Upid = upid_str.parse().map_err(|_| TaskError::NotFound)?;
        if upid.node != self.inner.node {
            return Err(TaskError::NotFound);
        }
        let file = File::open(self.log_path(&upid)).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => TaskError::NotFound,
            _ => TaskError::ReadLog(e),
        })?;
        let mut lines = Vec::new();
        let mut total = 0;
        for line in BufReader::new(file).lines() {
            let line = line.map_err(TaskError::ReadLog)?;
            if total >= start && lines.len() < limit {
                lines.push((total + 1, line));
            }
            total += 1;
        }
        Ok((lines, total))
    }

    /// Running and archived tasks, newest first.
    pub fn list(&self, include_active: bool, include_archive: bool) -> Vec<TaskStatus> {
        let mut out = Vec::new();
        if include_active {
            let active = self.inner.active.lock().unwrap_or_else(|p| p.into_inner());
            out.extend(active.values().map(|t| status_of(&t.upid, None, None)));
        }
        if include_archive {
            out.extend(
                self.read_index()
                    .into_iter()
                    .map(|e| status_of(&e.upid, Some(e.status), Some(e.endtime))),
            );
        }
        out.sort_by(|a, b| b.starttime.cmp(&a.starttime).then(b.upid.cmp(&a.upid)));
        out.dedup_by(|a, b| a.upid == b.upid);
        out
    }
}

fn status_of(upid: &Upid, exit: Option<String>, endtime: Option<i64>) -> TaskStatus {
    TaskStatus {
        upid: upid.to_string(),
        node: upid.node.clone(),
        pid: upid.pid,
        pstart: upid.pstart,
        starttime: upid.starttime,
        task_type: upid.task_type.clone(),
        id: upid.id.clone(),
        user: upid.user.clone(),
        status: if exit.is_some() { "stopped" } else { "running" },
        exitstatus: exit,
        endtime,
    }
}

/// Reads the exit status from the last line of a finished task's log.
fn exit_status_of(path: &Path) -> String {
    let last = (|| -> std::io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        let from = len.saturating_sub(4096);
        file.seek(SeekFrom::Start(from))?;
        let mut tail = String::new();
        file.read_to_string(&mut tail)?;
        Ok(tail
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default()
            .to_string())
    })()
    .unwrap_or_default();
    hemiron_pve::upid::exit_status_from_last_line(&last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn task_lifecycle_and_restart_archive() {
        let dir = tempfile::tempdir().unwrap();
        let mgr = TaskManager::open("n1", dir.path()).unwrap();
        let upid = mgr
            .spawn("qmstart", "100", "root@pam", |ctx| async move {
                ctx.log("starting");
                Ok(())
            })
            .unwrap();
        let s = upid.to_string();
        assert!(s.ends_with(':') && s.split(':').count() == 9);
        mgr.wait(&s).await;
        let st = mgr.status(&s).unwrap();
        assert_eq!(st.status, "stopped");
        assert_eq!(st.exitstatus.as_deref(), Some("OK"));
        let (lines, total) = mgr.log_lines(&s, 0, 50).unwrap();
        assert_eq!(total, 2);
        assert_eq!(lines[0], (1, "starting".to_string()));

        let failing = mgr
            .spawn("qmstop", "100", "root@pam", |_| async move {
                Err(TaskFailure::msg("boom"))
            })
            .unwrap()
            .to_string();
        mgr.wait(&failing).await;
        assert_eq!(
            mgr.status(&failing).unwrap().exitstatus.as_deref(),
            Some("boom")
        );

        // A task that never finishes, then the agent "crashes".
        let hung = mgr
            .spawn("qmshutdown", "100", "root@pam", |ctx| async move {
                ctx.cancel.cancelled().await;
                std::future::pending::<()>().await;
                Ok(())
            })
            .unwrap()
            .to_string();
        assert_eq!(mgr.status(&hung).unwrap().status, "running");
        let mgr2 = TaskManager::open("n1", dir.path()).unwrap();
        let st = mgr2.status(&hung).unwrap();
        assert_eq!(st.status, "stopped");
        assert_eq!(st.exitstatus.as_deref(), Some("unexpected status"));
        let all = mgr2.list(true, true);
        assert_eq!(all.len(), 3);
        assert!(all[0].starttime >= all[1].starttime);
    }

    #[tokio::test]
    async fn stop_interrupts_task() {
        let dir = tempfile::tempdir().unwrap();
        let mgr = TaskManager::open("n1", dir.path()).unwrap();
        let upid = mgr
            .spawn("qmshutdown", "101", "root@pam", |_| async move {
                std::future::pending::<()>().await;
                Ok(())
            })
            .unwrap()
            .to_string();
        assert_eq!(mgr.active_of("qmshutdown", "101"), vec![upid.clone()]);
        assert!(mgr.stop(&upid));
        mgr.wait(&upid).await;
        assert_eq!(
            mgr.status(&upid).unwrap().exitstatus.as_deref(),
            Some("interrupted by signal")
        );
    }
}
