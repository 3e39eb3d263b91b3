//! The followed tries: each try this scheduler follows, with its kill switch and its task,
//! started ([`Scheduler::spawn_try`]) and given up ([`Scheduler::stop_following_tries`]).

#[allow(unused_imports)]
use super::*;

/// A try this scheduler follows: its kill switch once it has one, and its task, to stop
/// following it without killing it.
pub(crate) struct Tracked {
    kill: Option<KillSender>,
    task: Option<tokio::task::AbortHandle>,
    backend: &'static str,
}

/// The tries this scheduler follows, behind one lock.
#[derive(Default)]
pub(crate) struct FollowedTries {
    tries: Mutex<HashMap<TryKey, Tracked>>,
}

impl FollowedTries {
    /// The keys of the tries followed now.
    pub(crate) fn keys(&self) -> HashSet<TryKey> {
        self.tries
            .lock()
            .expect("poisoned")
            .keys()
            .cloned()
            .collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.tries.lock().expect("poisoned").len()
    }

    fn is_empty(&self) -> bool {
        self.tries.lock().expect("poisoned").is_empty()
    }

    fn register(&self, key: TryKey, backend: &'static str) {
        self.tries.lock().expect("poisoned").insert(
            key,
            Tracked {
                kill: None,
                task: None,
                backend,
            },
        );
    }

    fn set_kill(&self, key: &TryKey, kill: KillSender) {
        if let Some(tracked) = self.tries.lock().expect("poisoned").get_mut(key) {
            tracked.kill = Some(kill);
        }
    }

    fn set_task(&self, key: &TryKey, task: tokio::task::AbortHandle) {
        if let Some(tracked) = self.tries.lock().expect("poisoned").get_mut(key) {
            tracked.task = Some(task);
        }
    }

    fn forget(&self, key: &TryKey) {
        self.tries.lock().expect("poisoned").remove(key);
    }

    /// The kill switch of each followed try `pick` chooses.
    pub(crate) fn kill_switches(
        &self,
        mut pick: impl FnMut(&TryKey, &Tracked) -> bool,
    ) -> Vec<KillSender> {
        self.tries
            .lock()
            .expect("poisoned")
            .iter()
            .filter(|(key, tracked)| pick(key, tracked))
            .filter_map(|(_, tracked)| tracked.kill.clone())
            .collect()
    }

    /// The kill switch of the followed try `key`, once it has one.
    pub(crate) fn kill_switch(&self, key: &TryKey) -> Option<KillSender> {
        self.tries.lock().expect("poisoned").get(key)?.kill.clone()
    }

    /// Stops following every try (their containers run on).
    pub(crate) fn abort_all(&self) {
        let tracked: Vec<Tracked> = self
            .tries
            .lock()
            .expect("poisoned")
            .drain()
            .map(|(_, tracked)| tracked)
            .collect();
        for tracked in tracked {
            if let Some(task) = tracked.task {
                task.abort();
            }
        }
    }
}

/// The runs and task instances with a try this scheduler follows, for lookups in a pass.
pub(crate) struct FollowedCounts {
    pub(crate) runs: HashSet<String>,
    /// The followed try of each task instance.
    pub(crate) task_instances: HashMap<(String, String), TryKey>,
}

impl FollowedCounts {
    pub(crate) fn of(followed: &HashSet<TryKey>) -> FollowedCounts {
        FollowedCounts {
            runs: followed.iter().map(|key| key.run_id.clone()).collect(),
            task_instances: followed
                .iter()
                .map(|key| ((key.run_id.clone(), key.task_id.clone()), key.clone()))
                .collect(),
        }
    }
}

/// How a followed try begins.
pub(crate) enum TryStart {
    /// Launch try number N.
    New(u32),
    /// Re-attach to a try a stopped scheduler left running.
    Adopt(TryRecord),
}

impl Scheduler {
    /// Follows one try in its own task: a new one, or one a stopped scheduler left running.
    /// It is registered as followed before this returns, so no pass takes it for left.
    pub(crate) fn spawn_try(
        self: &Arc<Self>,
        job: Arc<Job>,
        run: RunRecord,
        task: stevedore_domain::job::Task,
        fence: Fence,
        start: TryStart,
    ) {
        let key = TryKey {
            run_id: run.run_id.clone(),
            task_id: task.id.clone(),
            try_number: match &start {
                TryStart::New(number) => *number,
                TryStart::Adopt(record) => record.try_number,
            },
        };
        let backend_name: &'static str = self
            .backends
            .get_key_value(task.backend.as_str())
            .map(|(name, _)| *name)
            .unwrap_or(task.backend.as_str());
        self.followed.register(key.clone(), backend_name);
        let scheduler = self.clone();
        let spawned_key = key.clone();
        let handle = tokio::spawn(async move {
            let key = spawned_key;
            let runner = TryRunner {
                store: scheduler.store.clone(),
                writes: scheduler.writes.clone(),
                backend: scheduler.backends.get(backend_name).cloned(),
                backend_name,
                secret_key: scheduler.config.secret_key.clone(),
                fence: Some(fence),
                labels: scheduler.config.container_labels.clone(),
                limits: scheduler.config.limits,
                defaults: scheduler.config.try_defaults.clone(),
                clock: scheduler.config.clock.clone(),
                artifacts: scheduler.config.artifacts.clone(),
                traces: scheduler.traces.clone(),
            };
            let registry = scheduler.clone();
            let registered_key = key.clone();
            let on_started = move |kill| registry.followed.set_kill(&registered_key, kill);
            let adopted = matches!(start, TryStart::Adopt(_));
            let result = match start {
                TryStart::New(try_number) => {
                    runner.run(job, run, task, try_number, on_started).await
                }
                TryStart::Adopt(record) => runner.adopt(job, run, task, record, on_started).await,
            };
            scheduler.followed.forget(&key);
            // Its end may have made events: the notifier looks at once.
            scheduler.notifications_waiting.notify_one();
            match result {
                Ok(TryEnd::Finished(_)) => {}
                Ok(TryEnd::Fenced(message)) => {
                    warn!(run_id = %key.run_id, task_id = %key.task_id, try_number = key.try_number, reason = %message, "another scheduler took the run over; this one stops following the try");
                    scheduler.lease.release(&key.run_id);
                }
                Ok(TryEnd::BackendUnavailable(message)) if adopted => {
                    // Its host does not answer (others may): a later pass looks again.
                    warn!(backend = backend_name, error = %message, "cannot re-attach to the try yet");
                }
                Ok(TryEnd::BackendUnavailable(message)) => {
                    warn!(backend = backend_name, error = %message, "backend became unavailable");
                    scheduler.health.mark_unavailable(backend_name, &message);
                }
                Err(error) if adopted => {
                    error!(run_id = %key.run_id, task_id = %key.task_id, error = %error, "a left try could not be followed; a later pass tries again");
                }
                Err(error) => {
                    error!(run_id = %key.run_id, task_id = %key.task_id, error = %error, "try could not be recorded");
                    // If it failed before the try existed, the task instance is still
                    // `queued`: put it back so a later pass tries again.
                    let store = scheduler.store.clone();
                    if let Ok(instances) = store.task_instances(&key.run_id).await {
                        if instances
                            .iter()
                            .any(|ti| ti.task_id == key.task_id && ti.state == TaskState::Queued)
                        {
                            let _ = store
                                .set_task_state(
                                    &key.run_id,
                                    &key.task_id,
                                    TaskState::Scheduled,
                                    scheduler.now(),
                                )
                                .await;
                        }
                    }
                }
            }
            let _ = scheduler.wake_tx.send(Wake::TryEnded);
        });
        self.followed.set_task(&key, handle.abort_handle());
    }

    /// On a clean stop: running tries get the grace period to end by themselves. Then the
    /// scheduler stops following them; their containers run on, and the scheduler that
    /// takes their runs over re-attaches to them. Tries of a backend that cannot re-attach
    /// (`process`) are killed instead, and tried again by the next scheduler.
    pub(crate) async fn stop_following_tries(&self) {
        let deadline = tokio::time::Instant::now() + self.config.shutdown_grace;
        while tokio::time::Instant::now() < deadline && !self.followed.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let switches: Vec<KillSender> = self.followed.kill_switches(|_, tracked| {
            !self
                .backends
                .get(tracked.backend)
                .is_some_and(|backend| backend.can_adopt())
        });
        if !switches.is_empty() {
            info!(
                tries = switches.len(),
                "stopping tries that no other scheduler could re-attach to"
            );
        }
        for kill in &switches {
            let _ = kill.send(Some(StopReason::SchedulerStopped));
        }
        // Wait (bounded) for the killed tries to record their end.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::time::Instant::now() < deadline
            && !self
                .followed
                .kill_switches(|_, _| true)
                .iter()
                .all(|kill| !switches.iter().any(|s| s.same_channel(kill)))
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let left = self.followed.len();
        if left > 0 {
            info!(
                tries = left,
                "leaving running tries to the scheduler that takes their runs over"
            );
        }
        self.drop_work();
    }
}
