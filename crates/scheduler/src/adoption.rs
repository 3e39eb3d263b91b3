//! Adoption: tries the store says are running in the runs this scheduler holds, but that no
//! scheduler follows (theirs stopped or lost its claim), re-attached to. "Adopt" means only
//! this in the scheduler; a queued run moving to its job's current version is
//! [`Scheduler::move_to_current_version`].

#[allow(unused_imports)]
use super::*;

/// How often a pass looks for left tries when nothing else calls for it.
const ADOPTION_RECHECK: Duration = Duration::from_secs(2);

/// When the store's running tries were last compared with the tries followed.
#[derive(Default)]
pub(crate) struct AdoptionCheck {
    checked: Mutex<Option<tokio::time::Instant>>,
}

impl Scheduler {
    /// Whether this pass should look for tries left behind (see
    /// [`Scheduler::adopt_left_tries`]): when it holds runs it did not hold in the last pass
    /// (at start, after a takeover or after giving its work up), when a backend has turned
    /// ready, and every few seconds for the adoptions that failed and wait to be tried again.
    /// Reading every running try in every pass would cost a busy scheduler most of its time.
    pub(crate) fn adoption_due(&self, newly_held: bool) -> bool {
        let now = tokio::time::Instant::now();
        let mut checked = self.adoption.checked.lock().expect("poisoned");
        let turned_ready = self.health.take_turned_ready();
        let stale = checked.is_none_or(|at| now.duration_since(at) >= ADOPTION_RECHECK);
        if newly_held || turned_ready || stale {
            *checked = Some(now);
            return true;
        }
        false
    }

    /// Tries of the runs this scheduler holds that the store says are running but no
    /// scheduler follows (their scheduler stopped or lost its claim): re-attached to.
    pub(crate) async fn adopt_left_tries(
        self: &Arc<Self>,
        held: &HashMap<String, Fence>,
        followed: &HashSet<TryKey>,
        jobs_of_runs: &HashMap<String, (Arc<Job>, RunRecord)>,
    ) -> anyhow::Result<()> {
        let left: Vec<TryRecord> = self
            .store
            .running_tries()
            .await?
            .into_iter()
            .filter(|t| held.contains_key(&t.run_id))
            .filter(|t| {
                !followed.contains(&TryKey {
                    run_id: t.run_id.clone(),
                    task_id: t.task_id.clone(),
                    try_number: t.try_number,
                })
            })
            .collect();
        for record in left {
            // A configured backend that is not ready: adopt once it is.
            if self.backends.contains_key(record.backend.as_str())
                && !self.is_ready(&record.backend)
            {
                continue;
            }
            let (job, run) = match jobs_of_runs.get(&record.run_id) {
                Some((job, run)) => (job.clone(), run.clone()),
                None => {
                    let run = self.store.get_run(&record.run_id).await?;
                    (self.job_version(&run.job_id, &run.job_version).await?, run)
                }
            };
            let Some(task) = job.instance(&record.task_id) else {
                continue;
            };
            let fence = held[&record.run_id].clone();
            self.spawn_try(job, run, task, fence, TryStart::Adopt(record));
        }
        Ok(())
    }
}
