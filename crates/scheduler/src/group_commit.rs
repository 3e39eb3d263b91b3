//! The scheduler's group commit: the writes of every try it follows (starts, containers, log
//! lines, ends) queue here, and one writer stores whatever is waiting in one transaction
//! ([`Store::write_tries`]). A thousand tries that end at once cost a few statements instead
//! of a few thousand transactions; a lone try waits for nothing but its own write, since
//! the writer takes what has queued while the previous group was being written. A store that
//! takes concurrent writes well (PostgreSQL) gets two writers, so the database works on one
//! group while the scheduler prepares the next.

use std::sync::Arc;

use serde_json::Value;
use stevedore_store::{
    Fence, FencedWrite, LogLine, Result, Store, StoreError, TryFinish, TryKey, TryRecord, TryWrite,
    TryWritten,
};
use tokio::sync::{mpsc, oneshot};

/// At most this many writes in one group, and at most this many log lines: a group's
/// transaction stays short, so a takeover or an operator's write never waits long for it.
const MAX_WRITES: usize = 2000;
const MAX_LINES: usize = 20_000;

/// A handle on the writer; cheap to clone. The writer stops when the last handle is gone.
#[derive(Clone)]
pub struct GroupCommit {
    /// One queue per writer. A run's writes always go to the same writer, so two groups
    /// written at once never hold the same run's fence (on PostgreSQL a row share-locked by
    /// two transactions needs a multixact, which costs more than the lock).
    queues: Arc<[mpsc::UnboundedSender<Queued>]>,
}

/// What waits in a writer's queue.
enum Queued {
    Write(Pending),
    /// Answered once every write queued before it on this writer is written or failed.
    Barrier(oneshot::Sender<()>),
}

struct Pending {
    write: FencedWrite,
    reply: oneshot::Sender<Result<TryWritten>>,
}

impl GroupCommit {
    /// Starts the writers (on the current tokio runtime).
    pub fn start(store: Arc<dyn Store>) -> GroupCommit {
        let queues: Vec<_> = (0..store.write_concurrency().max(1))
            .map(|_| {
                let (queue, pending) = mpsc::unbounded_channel();
                tokio::spawn(write_groups(store.clone(), pending));
                queue
            })
            .collect();
        GroupCommit {
            queues: queues.into(),
        }
    }

    async fn write(&self, write: TryWrite, fence: Option<&Fence>) -> Result<TryWritten> {
        self.queue(write, fence).await
    }

    /// Queues `write` now, and returns what answers it: the write keeps its place in its
    /// writer's queue whether or not the answer is awaited, before any write queued later
    /// for the same run.
    fn queue(
        &self,
        write: TryWrite,
        fence: Option<&Fence>,
    ) -> impl std::future::Future<Output = Result<TryWritten>> + Send + 'static {
        let queue = match (fence, &write) {
            (Some(fence), _) => self.queue_of(&fence.run_id),
            (None, TryWrite::Start { key, .. }) => self.queue_of(&key.run_id),
            (None, TryWrite::Container { try_id, .. }) => self.queue_of(try_id),
            (None, TryWrite::Finish(finish)) => self.queue_of(&finish.try_id),
            (None, TryWrite::Logs(lines)) => self.queue_of(&lines.first().map(|l| l.try_id)),
        };
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            write: FencedWrite {
                write,
                fence: fence.cloned(),
            },
            reply,
        };
        let sent = queue.send(Queued::Write(pending)).map_err(|_| stopped());
        async move {
            sent?;
            answer.await.map_err(|_| stopped())?
        }
    }

    /// The writer whose queue takes what `key` names: a run's fenced writes always share one.
    fn queue_of(&self, key: &(impl std::hash::Hash + ?Sized)) -> &mpsc::UnboundedSender<Queued> {
        use std::hash::Hasher;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut hasher);
        &self.queues[hasher.finish() as usize % self.queues.len()]
    }

    /// Returns once every write queued so far for `run_id`'s fenced writes is written or has
    /// failed. Re-attaching to a try reads how many of its lines are stored: a write still
    /// on its way from the scheduler's own earlier follower of that try (given up while the
    /// store did not answer, the run then claimed again under the same fence) must land
    /// before that count is read, or its lines would be stored twice.
    pub async fn barrier(&self, run_id: &str) {
        let (reply, answer) = oneshot::channel();
        if self.queue_of(run_id).send(Queued::Barrier(reply)).is_ok() {
            let _ = answer.await;
        }
    }

    /// [`Store::start_try_fenced`], with the task's committed state as the start saw it.
    pub async fn start_try(
        &self,
        key: &TryKey,
        backend: &str,
        image_ref: &str,
        at: chrono::DateTime<chrono::Utc>,
        fence: Option<&Fence>,
    ) -> Result<(TryRecord, Option<Value>)> {
        let write = TryWrite::start(key, backend, image_ref, at);
        match self.write(write, fence).await? {
            TryWritten::Started {
                record,
                committed_state,
            } => Ok((record, committed_state)),
            TryWritten::Done => Err(StoreError::Corrupt(
                "a try's start came back without the try".to_owned(),
            )),
        }
    }

    /// [`Store::set_try_container_fenced`].
    pub async fn set_try_container(
        &self,
        try_id: i64,
        container_id: &str,
        image_digest: Option<&str>,
        log_seq: i64,
        fence: Option<&Fence>,
    ) -> Result<()> {
        self.queue_try_container(try_id, container_id, image_digest, log_seq, fence)
            .await
    }

    /// [`Store::set_try_container_fenced`], queued at once, its answer to be awaited later:
    /// the try goes on meanwhile, and its end, queued after it, is often written in the
    /// same group.
    pub fn queue_try_container(
        &self,
        try_id: i64,
        container_id: &str,
        image_digest: Option<&str>,
        log_seq: i64,
        fence: Option<&Fence>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send>> {
        let write = TryWrite::container(try_id, container_id, image_digest, log_seq);
        let answer = self.queue(write, fence);
        Box::pin(async move { answer.await.map(drop) })
    }

    /// [`Store::append_logs_fenced`].
    pub async fn append_logs(&self, lines: &[LogLine], fence: Option<&Fence>) -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        self.write(TryWrite::Logs(lines.to_vec()), fence)
            .await
            .map(drop)
    }

    /// [`Store::finish_try_fenced`].
    pub async fn finish_try(&self, finish: &TryFinish, fence: Option<&Fence>) -> Result<()> {
        self.write(TryWrite::Finish(finish.clone()), fence)
            .await
            .map(drop)
    }
}

/// The writer went away (its runtime is shutting down).
fn stopped() -> StoreError {
    StoreError::passing("the scheduler's store writer stopped")
}

/// Takes every write waiting (up to the limits), stores them in one group and answers each.
/// A write whose requester stopped waiting before it was taken (its try was given up: the
/// scheduler stopped following it) is not made: the next follower of the try reads what is
/// stored and goes on from there.
async fn write_groups(store: Arc<dyn Store>, mut pending: mpsc::UnboundedReceiver<Queued>) {
    while let Some(first) = pending.recv().await {
        let mut group = Vec::new();
        let mut barriers = Vec::new();
        let mut lines = 0;
        let mut next = Some(first);
        while let Some(queued) = next.take() {
            match queued {
                Queued::Write(write) if write.reply.is_closed() => {
                    tracing::debug!("a write nobody waits for any more is not made");
                }
                Queued::Write(write) => {
                    lines += lines_of(&write.write.write);
                    group.push(write);
                }
                Queued::Barrier(reply) => barriers.push(reply),
            }
            if group.len() >= MAX_WRITES || lines >= MAX_LINES {
                break;
            }
            next = pending.try_recv().ok();
        }
        if group.is_empty() {
            for barrier in barriers {
                let _ = barrier.send(());
            }
            continue;
        }
        let (writes, replies): (Vec<FencedWrite>, Vec<_>) =
            group.into_iter().map(|p| (p.write, p.reply)).unzip();
        let started = std::time::Instant::now();
        // In a task of its own, so a panic fails this group's writes, not the writer.
        let writing = store.clone();
        let results = match tokio::spawn(async move { writing.write_tries(&writes).await }).await {
            Ok(results) => results,
            Err(error) => {
                tracing::error!(error = %error, "writing a group of try writes panicked");
                replies
                    .iter()
                    .map(|_| Err(StoreError::Corrupt(format!("the write panicked: {error}"))))
                    .collect()
            }
        };
        tracing::debug!(
            writes = results.len(),
            lines,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "group written"
        );
        for (reply, result) in replies.into_iter().zip(results) {
            // A writer that stopped waiting (its try was given up) needs no answer.
            let _ = reply.send(result);
        }
        for barrier in barriers {
            let _ = barrier.send(());
        }
    }
}

fn lines_of(write: &TryWrite) -> usize {
    match write {
        TryWrite::Logs(lines) => lines.len(),
        _ => 1,
    }
}
