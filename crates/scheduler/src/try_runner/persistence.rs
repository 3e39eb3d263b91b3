//! Persistence: store writes tried again on a passing error, so the records of work
//! already done are not lost.

#[allow(unused_imports)]
use super::*;

/// Runs a store write again on a passing error (a busy database, a dropped connection, a
/// restarting server) for up to two minutes: the records of work already done must not be
/// lost. A fenced write (the run was taken over) or a missing row is not tried again.
pub async fn persist<T, F, Fut>(what: &str, mut write: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = stevedore_store::Result<T>>,
{
    let mut delay = Duration::from_millis(100);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        match write().await {
            Ok(value) => return Ok(value),
            Err(error @ (StoreError::Fenced(_) | StoreError::NotFound(_))) => {
                return Err(error.into())
            }
            Err(error) if tokio::time::Instant::now() < deadline => {
                warn!(what, error = %error, retry_in_ms = delay.as_millis() as u64, "store write failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// Records how a try ended (see [`persist`]).
pub async fn record_finish(
    writes: &GroupCommit,
    finish: &TryFinish,
    fence: Option<&Fence>,
) -> anyhow::Result<()> {
    persist("recording the try's end", || {
        writes.finish_try(finish, fence)
    })
    .await
}

pub(super) async fn append(
    writes: &GroupCommit,
    batch: &[LogLine],
    fence: Option<&Fence>,
) -> anyhow::Result<()> {
    persist("storing log lines", || writes.append_logs(batch, fence)).await
}
