//! Job workers: claim, run with a renewed lease, record the outcome.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tracing::Instrument;

use super::{backup, drain, migrate, vps_jobs, Claim, JobError};
use crate::service::Services;
use crate::store::{jobs, new_id, now_ms};

/// Jobs that failed transiently this many times fail for good.
const MAX_ATTEMPTS: i64 = 25;

/// Wakes idle workers when this server queues a job (others find it by polling).
#[derive(Debug, Clone, Default)]
pub struct Wakeup(Arc<Notify>);

impl Wakeup {
    pub fn notify(&self) {
        self.0.notify_waiters();
    }
}

/// Starts the workers; they run until the runtime stops.
pub fn spawn(svc: Services, wakeup: Wakeup) {
    let server = new_id();
    for n in 0..svc.settings.workers {
        let owner = format!("{server}/{n}");
        let svc = svc.clone();
        let wakeup = wakeup.clone();
        tokio::spawn(
            async move { work(svc, owner, wakeup).await }
                .instrument(tracing::info_span!("worker", n)),
        );
    }
}

async fn work(svc: Services, owner: String, wakeup: Wakeup) {
    let lease = svc.settings.job_lease;
    let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(30_000);
    loop {
        let now = now_ms();
        match jobs::claim(&svc.db, &owner, now, now + lease_ms).await {
            Ok(Some(job)) => {
                let span = tracing::info_span!("job", id = %job.id, kind = %job.kind, attempt = job.attempts);
                run(
                    &svc,
                    Claim {
                        job,
                        owner: owner.clone(),
                    },
                )
                .instrument(span)
                .await;
            }
            Ok(None) => {
                let notified = wakeup.0.notified();
                let _ = tokio::time::timeout(Duration::from_millis(500), notified).await;
            }
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), "claiming a job failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Runs one claimed job, renewing its lease meanwhile.
async fn run(svc: &Services, claim: Claim) {
    let (id, owner, fence, attempts) = (
        claim.job.id.clone(),
        claim.owner.clone(),
        claim.fence(),
        claim.job.attempts,
    );
    tracing::info!(step = %claim.job.step, "job running");
    let lease = svc.settings.job_lease;
    let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(30_000);
    let renewer = {
        let (svc, id, owner) = (svc.clone(), id.clone(), owner.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(lease / 3).await;
                match jobs::renew(&svc.db, &id, &owner, fence, now_ms() + lease_ms).await {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => {
                        tracing::warn!(error = %crate::error_chain(&e), "renewing the lease failed")
                    }
                }
            }
        })
    };
    let result = dispatch(svc, claim).await;
    renewer.abort();
    match result {
        Ok(()) => tracing::info!("job succeeded"),
        Err(JobError::LostLease) => tracing::warn!("job lease lost: another worker has it"),
        Err(JobError::Transient(e)) if attempts < MAX_ATTEMPTS => {
            let delay = 1000i64 << attempts.clamp(0, 6);
            tracing::warn!(error = %e, delay_ms = delay, "job failed transiently; retrying later");
            if let Err(e) =
                jobs::retry_later(&svc.db, &id, &owner, fence, &e, now_ms() + delay, now_ms()).await
            {
                tracing::warn!(error = %crate::error_chain(&e), "requeueing the job failed");
            }
        }
        Err(e) => tracing::error!(error = %e, "job failed"),
    }
}

async fn dispatch(svc: &Services, mut claim: Claim) -> Result<(), JobError> {
    let result = match claim.job.kind.as_str() {
        "vps.create" => vps_jobs::create(svc, &mut claim).await,
        "vps.start" | "vps.stop" | "vps.shutdown" | "vps.reboot" => {
            vps_jobs::power(svc, &mut claim).await
        }
        "vps.resize" => vps_jobs::resize(svc, &mut claim).await,
        "vps.delete" => vps_jobs::delete(svc, &mut claim).await,
        "vps.migrate" => migrate::run(svc, &mut claim).await,
        "node.drain" => drain::run(svc, &mut claim).await,
        "vps.backup" => backup::run(svc, &mut claim).await,
        "backup.delete" => backup::delete(svc, &mut claim).await,
        "vps.restore" => backup::restore(svc, &mut claim).await,
        other => Err(JobError::Permanent(format!("unknown job kind {other:?}"))),
    };
    let fail = match &result {
        Err(JobError::Permanent(e)) => Some(e.clone()),
        Err(JobError::Transient(e)) if claim.job.attempts >= MAX_ATTEMPTS => {
            Some(format!("gave up: {e}"))
        }
        _ => None,
    };
    if let Some(error) = fail {
        match claim.job.kind.as_str() {
            "vps.migrate" => migrate::fail(svc, &mut claim, &error).await?,
            "node.drain" => drain::fail(svc, &mut claim, &error).await?,
            "vps.backup" | "backup.delete" | "vps.restore" => {
                backup::fail(svc, &mut claim, &error).await?
            }
            _ => vps_jobs::fail(svc, &mut claim, &error).await?,
        }
    }
    result
}
