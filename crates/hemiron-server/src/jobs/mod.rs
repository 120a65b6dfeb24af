//! Durable jobs: long operations (create, power, resize, delete) run by workers that claim
//! them from the store with a lease and a fence (see `store::jobs`).
//!
//! A job advances through named steps; each step is written to the job (with whatever it
//! made, e.g. the VM id it took) before the next begins, and every step can be run again
//! after a crash without doing its work twice: it first looks at what the cluster already
//! has. A worker that loses its lease (it stalled, another server took the job over) stops
//! at its next write. Transient failures (the cluster unreachable) put the job back in the
//! queue with a growing delay; permanent ones undo what the job made and mark it failed.

pub mod backup;
pub mod drain;
pub mod migrate;
pub mod runner;
pub mod vps_jobs;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::service::Services;
use crate::store::jobs::{self, JobRow};
use crate::store::{now_ms, StoreError, Tx};

/// How a job step failed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Worth retrying later (the cluster did not answer, a lock was held).
    #[error("{0}")]
    Transient(String),
    /// Retrying will not help: undo and fail.
    #[error("{0}")]
    Permanent(String),
    /// Another worker owns the job now; this one must stop touching it.
    #[error("the job's lease passed to another worker")]
    LostLease,
    #[error("store failure")]
    Store(#[from] StoreError),
}

impl From<hemiron_pve_client::PveError> for JobError {
    fn from(e: hemiron_pve_client::PveError) -> JobError {
        let text = crate::error_chain(&e);
        match &e {
            hemiron_pve_client::PveError::Api { status, .. } if (400..500).contains(status) => {
                JobError::Permanent(text)
            }
            hemiron_pve_client::PveError::TaskFailed { .. } => JobError::Permanent(text),
            _ => JobError::Transient(text),
        }
    }
}

/// A worker's claim on a job.
#[derive(Debug)]
pub struct Claim {
    pub job: JobRow,
    pub owner: String,
}

impl Claim {
    pub fn fence(&self) -> i64 {
        self.job.fence
    }

    pub fn payload<P: DeserializeOwned>(&self) -> Result<P, JobError> {
        serde_json::from_str(&self.job.payload)
            .map_err(|e| JobError::Permanent(format!("bad job payload: {e}")))
    }

    pub fn checkpoint_data<C: DeserializeOwned + Default>(&self) -> C {
        serde_json::from_str(&self.job.checkpoint).unwrap_or_default()
    }

    /// Records that the job reached `step` with `data`, in its own transaction.
    pub async fn reach<C: Serialize>(
        &mut self,
        svc: &Services,
        step: &str,
        data: &C,
    ) -> Result<(), JobError> {
        let mut tx = svc.db.begin().await?;
        self.reach_in(&mut tx, step, data).await?;
        tx.commit().await?;
        crash_point(&format!("{}:{step}", self.job.kind));
        Ok(())
    }

    /// The same, inside the caller's transaction.
    pub async fn reach_in<C: Serialize>(
        &mut self,
        tx: &mut Tx,
        step: &str,
        data: &C,
    ) -> Result<(), JobError> {
        let text = serde_json::to_string(data).unwrap_or_else(|_| "{}".into());
        if !jobs::checkpoint(
            tx,
            &self.job.id,
            &self.owner,
            self.job.fence,
            step,
            &text,
            now_ms(),
        )
        .await?
        {
            return Err(JobError::LostLease);
        }
        self.job.step = step.to_string();
        self.job.checkpoint = text;
        Ok(())
    }

    /// Ends the job inside the caller's transaction (with the changes that complete it).
    pub async fn finish_in(&self, tx: &mut Tx, error: Option<&str>) -> Result<(), JobError> {
        let state = if error.is_some() {
            "failed"
        } else {
            "succeeded"
        };
        self.finish_state_in(tx, state, error).await
    }

    /// Ends the job in `state` (`succeeded`, `failed`, `needs-attention`).
    pub async fn finish_state_in(
        &self,
        tx: &mut Tx,
        state: &str,
        error: Option<&str>,
    ) -> Result<(), JobError> {
        if !jobs::finish(
            tx,
            &self.job.id,
            &self.owner,
            self.job.fence,
            state,
            error,
            now_ms(),
        )
        .await?
        {
            return Err(JobError::LostLease);
        }
        Ok(())
    }
}

/// Test hooks at job step boundaries (`KIND:STEP`, e.g. `vps.create:configure`):
/// `HEMIRON_TEST_CRASH_AT` makes the process die there (as `kill -9` would), right after the
/// step is recorded; `HEMIRON_TEST_STALL_AT` makes the worker hang there for good, holding
/// its job, so that a test can kill the server while it holds work. The crash tests use them.
pub fn crash_point(at: &str) {
    static HOOKS: std::sync::OnceLock<(Option<String>, Option<String>)> =
        std::sync::OnceLock::new();
    let (crash, stall) = HOOKS.get_or_init(|| {
        (
            std::env::var("HEMIRON_TEST_CRASH_AT").ok(),
            std::env::var("HEMIRON_TEST_STALL_AT").ok(),
        )
    });
    if crash.as_deref() == Some(at) {
        tracing::error!(at, "HEMIRON_TEST_CRASH_AT reached: aborting");
        std::process::abort();
    }
    if stall.as_deref() == Some(at) {
        tracing::error!(at, "HEMIRON_TEST_STALL_AT reached: this worker stops here");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}
