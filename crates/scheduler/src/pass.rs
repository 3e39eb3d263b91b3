//! The pass: claim runs, create due runs, start queued runs, advance each run held (retries
//! due, trigger rules, the outcome), pick what the pools and limits allow, and launch it.
//! The rules themselves are the domain's (`stevedore_domain::run`, `limits`); this is the
//! half that reads and writes the store.

#[allow(unused_imports)]
use super::*;

/// What `depends_on_past` says of a task instance.
enum Past {
    Allows,
    /// The previous run's task instance has not finished yet.
    NotYet,
    /// It finished without success: only an operator can change that.
    Never,
}

/// What a pass decides for the runs it holds, gathered to be written at once.
#[derive(Default)]
struct Plan {
    /// Task instances ready to start, for the pools and limits to pick from.
    candidates: Vec<Candidate>,
    /// The latest try number of each candidate, so a launch needs no re-read.
    last_tries: HashMap<(String, String), u32>,
    /// Each planned run with its job version.
    jobs_of_runs: HashMap<String, (Arc<Job>, RunRecord)>,
    task_changes: Vec<(String, String, TaskState)>,
    run_changes: Vec<(String, RunState)>,
    /// The events of the runs that end, written with their ends.
    run_notifications: Vec<NewNotification>,
    /// Task instances that begin or stop waiting for a backend that does not answer.
    waiting_changes: Vec<(String, String, Option<Waiting>)>,
    /// Task instances that waited for their backend too long.
    give_ups: Vec<GiveUp>,
    /// The runs that end, for their spans once their ends are written.
    ended_runs: Vec<(RunRecord, RunState)>,
}

/// What a pass decided for one run (see [`Scheduler::advance_run`]).
struct Advanced {
    /// The job version the run follows.
    job: Arc<Job>,
    /// Its task instances ready to start.
    ready: Vec<Candidate>,
    /// The latest try number of each task instance ready to start.
    tries: Vec<(String, u32)>,
    /// Task instances whose state changes: retries due, trigger rules decided.
    changes: Vec<(String, String, TaskState)>,
    /// How the run ended, once it has, and why when it failed.
    outcome: Option<(RunState, Option<String>)>,
    /// Task instances that begin or stop waiting for their backend.
    waiting: Vec<(String, Option<Waiting>)>,
    /// Task instances that waited for their backend too long.
    give_ups: Vec<GiveUp>,
}

impl Scheduler {
    /// One pass: due runs, queued runs started, task instances decided and launched,
    /// finished runs closed.
    pub(crate) async fn schedule_once(self: &Arc<Self>) -> anyhow::Result<()> {
        let now = self.now();
        // What this scheduler follows, before anything is read: a try that ends after this
        // is still counted as followed, never as left behind by another scheduler.
        let followed: HashSet<TryKey> = self.followed.keys();
        let following = FollowedCounts::of(&followed);
        let live_after = if self.config.exclusive {
            // No other scheduler can be alive: take every run over at once.
            now + chrono::TimeDelta::days(365)
        } else {
            now - chrono::TimeDelta::from_std(self.config.lease).unwrap_or(chrono::TimeDelta::MAX)
        };
        let held: HashMap<String, Fence> = self
            .store
            .claim_runs(&self.id, live_after)
            .await?
            .into_iter()
            .map(|fence| (fence.run_id.clone(), fence))
            .collect();
        let newly_held = self.lease.hold(&held);
        let records = self.store.list_jobs().await?;
        let mut max_runs = HashMap::new();
        let current_versions: HashMap<&str, &str> = records
            .iter()
            .map(|r| (r.job_id.as_str(), r.current_version.as_str()))
            .collect();
        for record in &records {
            let Ok(job) = self
                .job_version(&record.job_id, &record.current_version)
                .await
            else {
                continue;
            };
            max_runs.insert(job.id.clone(), job.max_active_runs);
            // A scheduled run is unique per job and logical date: schedulers creating the
            // same one at once make it once.
            if !record.paused {
                runs::create_due_runs(self.store.as_ref(), &job, now, 100).await?;
                if let Some(run) = runs::trigger_by_assets(self.store.as_ref(), &job, now).await? {
                    info!(run_id = %run.run_id, job_id = %job.id, "run triggered by its assets");
                }
                // Every batch of posted events that is due, a bounded number per pass.
                for _ in 0..100 {
                    match runs::trigger_by_events(self.store.as_ref(), &job, now).await? {
                        Some(run) => {
                            info!(run_id = %run.run_id, job_id = %job.id, events = %run.params["event_count"], "run made for a batch of events");
                        }
                        None => break,
                    }
                }
            }
        }

        // The runs this scheduler holds, oldest first so queued runs start in order, and
        // their task instances in one read.
        let active: Vec<RunRecord> = self
            .store
            .held_runs(&self.id)
            .await?
            .into_iter()
            .filter(|run| held.contains_key(&run.run_id))
            .collect();
        let mut instances_of: HashMap<String, Vec<stevedore_store::TaskInstanceRecord>> =
            HashMap::new();
        for ti in self.store.held_task_instances(&self.id).await? {
            instances_of.entry(ti.run_id.clone()).or_default().push(ti);
        }
        let mut plan = Plan::default();
        // What this scheduler's own runs take of the pools and of `max_active_tasks`.
        let mut own = Capacity::default();
        let mut running_per_job: HashMap<String, u32> = HashMap::new();
        let mut queued_runs = Vec::new();
        for run in active {
            if run.cancel_requested {
                if let Err(error) = self.stop_run(&run, StopReason::Cancelled).await {
                    error!(run_id = %run.run_id, error = %error, "cannot cancel run");
                }
                continue;
            }
            match self.check_run_clocks(&run, now).await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(error) => {
                    error!(run_id = %run.run_id, error = %error, "cannot check the run's deadline and timeout")
                }
            }
            if run.state == RunState::Queued {
                queued_runs.push(run);
                continue;
            }
            *running_per_job.entry(run.job_id.clone()).or_default() += 1;
            let instances = instances_of.remove(&run.run_id).unwrap_or_default();
            self.plan_run(&mut plan, run, instances, &following, &mut own)
                .await;
        }
        // What takes no shared slot is written before taking the turn.
        self.write_changes(&mut plan, now).await?;
        if self.adoption_due(newly_held) {
            self.adopt_left_tries(&held, &followed, &plan.jobs_of_runs)
                .await?;
        }

        // Schedulers take turns from reading what the others' runs take of the shared limits
        // to queueing what they picked, so two never fill the same free slot.
        let turn = self.store.lock_scheduling().await?;
        let elsewhere = self.store.active_elsewhere(&self.id).await?;
        for (job_id, count) in &elsewhere.running_runs {
            *running_per_job.entry(job_id.clone()).or_default() += *count as u32;
        }
        let mut capacity = Capacity {
            pools: HashMap::new(),
            jobs: own.jobs,
        };
        for pool in self.store.list_pools().await? {
            capacity.pools.insert(pool.name, pool.slots);
        }
        for (pool, taken) in own.pools {
            *capacity.pools.entry(pool).or_insert(0) += taken;
        }
        for (job_id, version, task_id, count) in &elsewhere.task_instances {
            if let Ok(job) = self.job_version(job_id, version).await {
                count_active(&job, task_id, *count, &mut capacity);
            }
        }
        // Queued runs start while their job is under `max_active_runs`, counting every
        // scheduler's running runs.
        for mut run in queued_runs {
            let limit = max_runs.get(&run.job_id).copied().unwrap_or(16);
            let running = running_per_job.entry(run.job_id.clone()).or_default();
            if *running >= limit {
                continue;
            }
            *running += 1;
            let mut instances = instances_of.remove(&run.run_id).unwrap_or_default();
            // A run that had not started yet follows the job file as it is now.
            if let Some(current) = current_versions.get(run.job_id.as_str()) {
                if *current != run.job_version {
                    if let Err(error) = self.move_to_current_version(&mut run, current).await {
                        warn!(run_id = %run.run_id, error = %error, "cannot move the run to the job's current version");
                    }
                    // Its task instances changed with the version: read them again.
                    instances = self.store.task_instances(&run.run_id).await?;
                }
            }
            plan.run_changes
                .push((run.run_id.clone(), RunState::Running));
            info!(run_id = %run.run_id, job_id = %run.job_id, "run started");
            run.state = RunState::Running;
            self.plan_run(&mut plan, run, instances, &following, &mut capacity)
                .await;
        }
        self.write_changes(&mut plan, now).await?;
        let (picked, waiting) = limits::select(plan.candidates, &mut capacity);
        for (candidate, reason) in waiting {
            if let Held::PoolMissing(pool) = reason {
                warn!(run_id = %candidate.run_id, task_id = %candidate.task_id, pool, "task instance waits: its pool does not exist (`stevedore pools set`)");
            }
        }
        // Every task instance picked is queued in one write, then launched.
        let queued: Vec<(String, String, TaskState)> = picked
            .iter()
            .filter(|c| held.contains_key(&c.run_id))
            .map(|c| (c.run_id.clone(), c.task_id.clone(), TaskState::Queued))
            .collect();
        self.store.set_task_states(&queued, now).await?;
        turn.release().await?;
        // The items of the mapped instances about to start, one read per run.
        let mut mapped: HashMap<&str, Vec<String>> = HashMap::new();
        for candidate in &picked {
            if mapping::split_key(&candidate.task_id).1.is_some() {
                mapped
                    .entry(candidate.run_id.as_str())
                    .or_default()
                    .push(candidate.task_id.clone());
            }
        }
        let mut items: HashMap<(String, String), serde_json::Value> = HashMap::new();
        for (run_id, keys) in mapped {
            for (key, item) in self.store.map_items(run_id, &keys).await? {
                items.insert((run_id.to_owned(), key), item);
            }
        }
        for candidate in picked {
            let Some((job, run)) = plan.jobs_of_runs.get(&candidate.run_id) else {
                continue;
            };
            let Some(mut task) = job.instance(&candidate.task_id) else {
                continue;
            };
            task.map_item = items.remove(&(candidate.run_id.clone(), candidate.task_id.clone()));
            let try_number = plan
                .last_tries
                .get(&(candidate.run_id.clone(), candidate.task_id.clone()))
                .copied()
                .unwrap_or(0)
                + 1;
            let Some(fence) = held.get(&run.run_id) else {
                continue;
            };
            self.spawn_try(
                job.clone(),
                run.clone(),
                task,
                fence.clone(),
                TryStart::New(try_number),
            );
        }
        Ok(())
    }

    /// Writes the task instance and run states `plan` changed so far, and forgets them: task
    /// instances first, as a run's end is recorded after the states that decided it.
    async fn write_changes(
        &self,
        plan: &mut Plan,
        now: chrono::DateTime<Utc>,
    ) -> anyhow::Result<()> {
        self.store.set_task_states(&plan.task_changes, now).await?;
        let ended_at = self.now();
        self.store
            .set_run_states_notifying(&plan.run_changes, &plan.run_notifications, ended_at)
            .await?;
        if let Some(traces) = &self.traces {
            for (run, outcome) in plan.ended_runs.drain(..) {
                traces.run(&crate::traces::RunSpan {
                    job_id: &run.job_id,
                    run_id: &run.run_id,
                    trigger: run.trigger.as_str(),
                    logical_date: run.logical_date,
                    state: outcome.as_str(),
                    started_at: run.started_at.unwrap_or(run.queued_at),
                    ended_at,
                });
            }
        }
        if !plan.run_notifications.is_empty() {
            self.notifications_waiting.notify_one();
        }
        self.store.set_waiting(&plan.waiting_changes).await?;
        for give_up in plan.give_ups.drain(..) {
            if self.store.give_up_waiting(&give_up).await? {
                warn!(run_id = %give_up.key.run_id, task_id = %give_up.key.task_id, try_number = give_up.key.try_number, reason = %give_up.reason, state = %give_up.task_state, "task instance waited too long for its backend");
            }
        }
        plan.task_changes.clear();
        plan.run_changes.clear();
        plan.run_notifications.clear();
        plan.waiting_changes.clear();
        Ok(())
    }

    /// Moves one running run forward ([`Scheduler::advance_run`]) and adds what it decided to
    /// `plan`.
    async fn plan_run(
        &self,
        plan: &mut Plan,
        run: RunRecord,
        instances: Vec<stevedore_store::TaskInstanceRecord>,
        following: &FollowedCounts,
        capacity: &mut Capacity,
    ) {
        match self.advance_run(&run, instances, following, capacity).await {
            Ok(advanced) => {
                for (task_id, try_number) in advanced.tries {
                    plan.last_tries
                        .insert((run.run_id.clone(), task_id), try_number);
                }
                plan.candidates.extend(advanced.ready);
                plan.task_changes.extend(advanced.changes);
                plan.waiting_changes.extend(
                    advanced
                        .waiting
                        .into_iter()
                        .map(|(task_id, waiting)| (run.run_id.clone(), task_id, waiting)),
                );
                plan.give_ups.extend(advanced.give_ups);
                if let Some((outcome, reason)) = advanced.outcome {
                    info!(run_id = %run.run_id, job_id = %run.job_id, state = %outcome, "run finished");
                    plan.run_changes.push((run.run_id.clone(), outcome));
                    if self.traces.is_some() {
                        plan.ended_runs.push((run.clone(), outcome));
                    }
                    match self
                        .run_end_notifications(&advanced.job, &run, outcome, reason)
                        .await
                    {
                        Ok(notifications) => plan.run_notifications.extend(notifications),
                        Err(error) => {
                            error!(run_id = %run.run_id, error = %error, "cannot read the job's earlier runs: the run's end is told of without recovery or repeated_failure")
                        }
                    }
                }
                plan.jobs_of_runs
                    .insert(run.run_id.clone(), (advanced.job, run));
            }
            Err(error) => error!(run_id = %run.run_id, error = %error, "cannot advance run"),
        }
    }

    /// Moves one running run forward: due retries and reschedules back to `scheduled`,
    /// waiting task instances decided by their trigger rules, the run closed when its
    /// outcome is known. Returns the run's job version, its task instances ready to start
    /// and each task instance's latest try number; counts the run's active task instances
    /// against `capacity`.
    async fn advance_run(
        &self,
        run: &RunRecord,
        instances: Vec<stevedore_store::TaskInstanceRecord>,
        following: &FollowedCounts,
        capacity: &mut Capacity,
    ) -> anyhow::Result<Advanced> {
        let job = self.job_version(&run.job_id, &run.job_version).await?;
        let now = self.now();
        let mut states: HashMap<String, TaskState> = instances
            .iter()
            .map(|ti| (ti.task_id.clone(), ti.state))
            .collect();

        // A task instance an operator marked while its try ran: stop the try.
        let marked: Vec<(KillSender, TaskState)> = instances
            .iter()
            .filter(|ti| ti.state.is_finished())
            .filter_map(|ti| {
                let key = following
                    .task_instances
                    .get(&(ti.run_id.clone(), ti.task_id.clone()))?;
                Some((self.followed.kill_switch(key)?, ti.state))
            })
            .collect();
        for (kill, state) in marked {
            let _ = kill.send(Some(StopReason::Marked(state)));
        }

        let mut changes: Vec<(String, String, TaskState)> = Vec::new();
        for ti in &instances {
            // Queued by a scheduler that stopped (or lost the run) before its try started:
            // nothing runs it, so it is scheduled again rather than stuck in `queued`.
            let left_queued = ti.state == TaskState::Queued
                && !following
                    .task_instances
                    .contains_key(&(ti.run_id.clone(), ti.task_id.clone()));
            if left_queued {
                warn!(run_id = %run.run_id, task_id = %ti.task_id, "task instance was left queued by a stopped scheduler; scheduling it again");
                changes.push((run.run_id.clone(), ti.task_id.clone(), TaskState::Scheduled));
                states.insert(ti.task_id.clone(), TaskState::Scheduled);
                continue;
            }
            let waiting = matches!(ti.state, TaskState::UpForRetry | TaskState::UpForReschedule);
            if waiting && ti.next_try_at.is_none_or(|at| at <= now) {
                changes.push((run.run_id.clone(), ti.task_id.clone(), TaskState::Scheduled));
                states.insert(ti.task_id.clone(), TaskState::Scheduled);
            }
        }
        // Trigger rules decided, and mapped tasks they let run expanded, until nothing more
        // changes (an empty or broken list ends its task, which may decide others).
        // When each finished task instance ended: rules are decided in that order, as
        // Airflow's eager evaluation would have decided them (the first of a skip and a
        // failure to end decides an `all_success` task), however late this pass sees them.
        let mut ended: HashMap<String, DateTime<Utc>> = instances
            .iter()
            .filter(|ti| ti.state.is_finished())
            .filter_map(|ti| Some((ti.task_id.clone(), ti.ended_at?)))
            .collect();
        loop {
            for (task_id, state) in resolve_waiting_in_order(&job, &mut states, &mut ended) {
                changes.push((run.run_id.clone(), task_id, state));
            }
            let expanding: Vec<Task> = mapping::to_expand(&job, &states)
                .into_iter()
                .cloned()
                .collect();
            if expanding.is_empty() {
                break;
            }
            let outputs = self.outputs_for_mapping(run, &expanding, &states).await?;
            for task in expanding {
                let ended = self
                    .expand(&job, run, &task, &outputs, &instances, &mut states, now)
                    .await?;
                // What the store now holds of the unexpanded instance wins over the change
                // that scheduled it.
                changes.retain(|(_, key, _)| *key != task.id);
                if let Some(state) = ended {
                    changes.push((run.run_id.clone(), task.id.clone(), state));
                }
            }
        }

        let job_free = capacity
            .jobs
            .entry(job.id.clone())
            .or_insert(i64::from(job.max_active_tasks));
        let weights = self.jobs.weights(&job);
        let mut ready = Vec::new();
        let mut blocked_for_good = 0;
        let mut waiting = Vec::new();
        let mut give_ups = Vec::new();
        for (key, state) in &states {
            let Some(task) = job.task_of(key) else {
                continue;
            };
            if state.is_active() {
                *job_free -= 1;
                *capacity.pools.entry(task.pool.clone()).or_insert(0) -= i64::from(task.pool_slots);
            }
        }
        // `scheduled` task instances, within each mapped task's `max_active`.
        for key in mapping::startable(&job, &states) {
            let Some(task) = job.instance(&key) else {
                continue;
            };
            if task.depends_on_past {
                match self.past_allows(run, &key).await? {
                    Past::Allows => {}
                    Past::NotYet => continue,
                    Past::Never => {
                        blocked_for_good += 1;
                        continue;
                    }
                }
            }
            // A configured backend that is not ready holds its tries; one that is not
            // configured at all fails them (with a reason saying so) in the try runner.
            let backend = task.backend.as_str();
            let record = instances.iter().find(|ti| ti.task_id == key);
            let waited = record.and_then(|ti| ti.waiting.clone());
            if self.backends.contains_key(backend) && !self.is_ready(backend) {
                let reason = self.health.why_not_ready(backend);
                match waited {
                    Some(since) if self.waited_too_long(since.since, now) => {
                        if let Some(ti) = record {
                            give_ups.push(self.give_up(&job, &task, run, ti, &since, now).await?);
                        }
                    }
                    Some(since) if since.reason == reason => {}
                    _ => waiting.push((key.clone(), Some(Waiting { since: now, reason }))),
                }
                continue;
            }
            if waited.is_some() {
                waiting.push((key.clone(), None));
            }
            ready.push(Candidate {
                run_id: run.run_id.clone(),
                task_id: key.clone(),
                job_id: job.id.clone(),
                pool: task.pool.clone(),
                pool_slots: i64::from(task.pool_slots),
                weight: weights.get(task.task_id()).copied().unwrap_or(0),
                logical_date: run.logical_date,
            });
        }

        // A deadlock: everything left waits on a previous run's task that ended without
        // success; nothing can change that but an operator. The run fails, as in Airflow.
        let unfinished = states.values().filter(|s| !s.is_finished()).count();
        let outcome = if blocked_for_good > 0 && blocked_for_good == unfinished {
            warn!(run_id = %run.run_id, job_id = %run.job_id, "deadlock: depends_on_past can never be met; failing the run");
            Some((
                RunState::Failed,
                Some(
                    "depends_on_past can never be met: a previous run's task ended without success"
                        .to_owned(),
                ),
            ))
        } else {
            run_outcome(&job, &states).map(|outcome| (outcome, failure_of(&job, &states, outcome)))
        };
        // A run ends once this scheduler has finished with each of its tries, their
        // containers removed included: the next pass, which the last of them wakes.
        let still_following = || following.runs.contains(&run.run_id);
        let outcome = outcome.filter(|_| !still_following());
        // The latest try number of the task instances about to start, so a launch needs no
        // re-read.
        let tries = ready
            .iter()
            .filter_map(|candidate| {
                instances
                    .iter()
                    .find(|ti| ti.task_id == candidate.task_id)
                    .map(|ti| (ti.task_id.clone(), ti.try_number))
            })
            .collect();
        Ok(Advanced {
            job,
            ready,
            tries,
            changes,
            outcome,
            waiting,
            give_ups,
        })
    }

    /// `depends_on_past`: the same task in the job's previous run (by logical date) must
    /// have succeeded or been skipped; the first run, or a task new in it, may run.
    async fn past_allows(&self, run: &RunRecord, task_id: &str) -> anyhow::Result<Past> {
        let Some(previous) = self
            .store
            .previous_run(&run.job_id, run.logical_date)
            .await?
        else {
            return Ok(Past::Allows);
        };
        let instances = self.store.task_instances(&previous.run_id).await?;
        Ok(match instances.iter().find(|ti| ti.task_id == task_id) {
            None => Past::Allows,
            Some(ti) if matches!(ti.state, TaskState::Success | TaskState::Skipped) => Past::Allows,
            Some(ti) if ti.state.is_finished() => Past::Never,
            Some(_) => Past::NotYet,
        })
    }

    /// Moves a run that has not started to the job's current version: tasks removed from
    /// the file leave the run, tasks added join it.
    pub(crate) async fn move_to_current_version(
        &self,
        run: &mut RunRecord,
        current: &str,
    ) -> anyhow::Result<()> {
        let old = self.job_version(&run.job_id, &run.job_version).await?;
        let new = self.job_version(&run.job_id, current).await?;
        let removed: Vec<String> = old
            .tasks
            .iter()
            .filter(|t| new.task(&t.id).is_none())
            .map(|t| t.id.clone())
            .collect();
        let added: Vec<String> = new
            .tasks
            .iter()
            .filter(|t| old.task(&t.id).is_none())
            .map(|t| t.id.clone())
            .collect();
        self.store
            .move_to_version(&run.run_id, current, &removed, &added)
            .await?;
        info!(run_id = %run.run_id, version = current, removed = ?removed, added = ?added, "run follows the job's current version");
        run.job_version = current.to_owned();
        Ok(())
    }

    /// Stops a run: its running tries are killed (and end `failed`, without a retry), its
    /// task instances that had not started are `skipped`, and the run is `failed` — as
    /// Airflow's "mark run failed" (an operator's cancel) and `dagrun_timeout` do. A
    /// timeout makes the run's `failure` event; a cancel, an operator's own act, none.
    async fn stop_run(&self, run: &RunRecord, why: StopReason) -> anyhow::Result<()> {
        let now = self.now();
        let switches: Vec<KillSender> = self
            .followed
            .kill_switches(|key, _| key.run_id == run.run_id);
        for kill in &switches {
            let _ = kill.send(Some(why.clone()));
        }
        for ti in self.store.task_instances(&run.run_id).await? {
            if !ti.state.is_finished() && !ti.state.is_active() {
                self.store
                    .set_task_state(&run.run_id, &ti.task_id, TaskState::Skipped, now)
                    .await?;
            }
        }
        let notifications = if why == StopReason::RunTimeout {
            let job = self.job_version(&run.job_id, &run.job_version).await?;
            let reason = format!(
                "run timeout: not ended {} after it started",
                alerts::humantime(job.run_timeout.unwrap_or_default())
            );
            self.run_end_notifications(&job, run, RunState::Failed, Some(reason))
                .await?
        } else {
            Vec::new()
        };
        self.store
            .set_run_states_notifying(
                &[(run.run_id.clone(), RunState::Failed)],
                &notifications,
                now,
            )
            .await?;
        // An operator's cancel and a run timeout end the run here, not in a pass's plan:
        // its span too.
        if let Some(traces) = &self.traces {
            traces.run(&crate::traces::RunSpan {
                job_id: &run.job_id,
                run_id: &run.run_id,
                trigger: run.trigger.as_str(),
                logical_date: run.logical_date,
                state: RunState::Failed.as_str(),
                started_at: run.started_at.unwrap_or(run.queued_at),
                ended_at: now,
            });
        }
        info!(run_id = %run.run_id, job_id = %run.job_id, killed = switches.len(), reason = %why.as_failure().to_text(), "run stopped");
        Ok(())
    }

    /// Checks a held run against its job's `deadline` (a `deadline_missed` event, once) and
    /// `run_timeout` (the run is stopped): a comparison with times the run already carries,
    /// and a write only when one has passed. `true` when the run was stopped.
    async fn check_run_clocks(&self, run: &RunRecord, now: DateTime<Utc>) -> anyhow::Result<bool> {
        let job = self.job_version(&run.job_id, &run.job_version).await?;
        if job.deadline.is_none() && job.run_timeout.is_none() {
            return Ok(false);
        }
        if run.deadline_missed_at.is_none() {
            if let Some(deadline) = alerts::deadline_of(&job, run).filter(|d| *d <= now) {
                let notifications = alerts::for_deadline(&job, run, deadline, now);
                if self
                    .store
                    .mark_deadline_missed(&run.run_id, &notifications, now)
                    .await?
                {
                    warn!(run_id = %run.run_id, job_id = %run.job_id, deadline = %deadline, "run missed its deadline");
                }
            }
        }
        if run.state == RunState::Running
            && alerts::timeout_of(&job, run).is_some_and(|at| at <= now)
        {
            warn!(run_id = %run.run_id, job_id = %run.job_id, "run timeout: failing the run");
            self.stop_run(run, StopReason::RunTimeout).await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// The events a run's end makes, with the job's earlier runs read only when they can
    /// matter: a success heard as `recovery`, a failure heard as `repeated_failure`.
    async fn run_end_notifications(
        &self,
        job: &Job,
        run: &RunRecord,
        outcome: RunState,
        reason: Option<String>,
    ) -> anyhow::Result<Vec<NewNotification>> {
        use stevedore_domain::notify::{anyone_hears, NotifyEvent};
        if job.notify.is_empty() {
            return Ok(Vec::new());
        }
        let needed = match outcome {
            RunState::Success if anyone_hears(job, NotifyEvent::Recovery) => 2,
            RunState::Failed if anyone_hears(job, NotifyEvent::RepeatedFailure) => {
                job.repeated_failure_after + 1
            }
            _ => 0,
        };
        let earlier: Vec<RunState> = if needed > 0 {
            self.store
                .job_outcomes(&job.id, needed)
                .await?
                .into_iter()
                .filter(|(run_id, _)| *run_id != run.run_id)
                .map(|(_, state)| state)
                .collect()
        } else {
            Vec::new()
        };
        Ok(alerts::for_run_end(
            job,
            alerts::RunRef::from(run),
            outcome,
            reason,
            &earlier,
            self.now(),
        ))
    }

    /// Whether a task instance waiting for its backend since `since` has waited past
    /// `backend_unavailable_timeout`.
    fn waited_too_long(&self, since: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        chrono::TimeDelta::from_std(self.config.backend_unavailable_timeout)
            .is_ok_and(|limit| now - since >= limit)
    }

    /// A task instance that waited for its backend too long: a failed try with the backend's
    /// answer, retried per policy, and its `stuck` event (with its `retry` or `failure`).
    async fn give_up(
        &self,
        job: &Job,
        task: &Task,
        run: &RunRecord,
        ti: &stevedore_store::TaskInstanceRecord,
        waited: &Waiting,
        now: DateTime<Utc>,
    ) -> anyhow::Result<GiveUp> {
        use stevedore_domain::attempt::{self, Ending, TryIdentity};
        let try_number = ti.try_number + 1;
        let history =
            try_runner::task_history(self.store.as_ref(), &run.run_id, &task.id, None).await?;
        let reason = format!(
            "{} (waited {} for the {} backend)",
            waited.reason,
            alerts::humantime(self.config.backend_unavailable_timeout),
            task.backend.as_str()
        );
        let settled = attempt::settle(
            &Ending {
                exit_code: None,
                failure: Some(FailureReason::Backend(reason)),
            },
            &history,
            task,
            TryIdentity {
                job_id: &job.id,
                logical_date: run.logical_date,
            },
            now,
        );
        let reason = settled.failure_reason.unwrap_or_default();
        let run_ref = || alerts::RunRef::from(run);
        let mut notifications = alerts::for_task(
            job,
            task,
            run_ref(),
            stevedore_domain::notify::NotifyEvent::Stuck,
            None,
            try_number,
            settled.task_state,
            Some(&reason),
            now,
        );
        if let Some(event) = alerts::task_event(settled.task_state) {
            notifications.extend(alerts::for_task(
                job,
                task,
                run_ref(),
                event,
                None,
                try_number,
                settled.task_state,
                Some(&reason),
                now,
            ));
        }
        Ok(give_up(
            run,
            task,
            try_number,
            reason,
            (settled.task_state, settled.next_try_at),
            now,
            notifications,
        ))
    }
}

/// A try of `task` given up before it started (recorded failed with `reason`; its task
/// instance moves to `state`, retried at the time with it, if any): a backend that never
/// answered, a mapped task whose list is broken.
pub(crate) fn give_up(
    run: &RunRecord,
    task: &Task,
    try_number: u32,
    reason: String,
    (task_state, next_try_at): (TaskState, Option<DateTime<Utc>>),
    at: DateTime<Utc>,
    notifications: Vec<NewNotification>,
) -> GiveUp {
    GiveUp {
        key: TryKey {
            run_id: run.run_id.clone(),
            task_id: task.id.clone(),
            try_number,
        },
        backend: task.backend.as_str().to_owned(),
        image_ref: task.image.clone(),
        reason,
        task_state,
        next_try_at,
        at,
        notifications,
    }
}

/// Why a run failed, for its `failure` event: the task instances that failed.
fn failure_of(job: &Job, states: &HashMap<String, TaskState>, outcome: RunState) -> Option<String> {
    if outcome != RunState::Failed {
        return None;
    }
    let mut failed: Vec<&String> = states
        .iter()
        .filter(|(key, state)| **state == TaskState::Failed && job.task_of(key).is_some())
        .map(|(key, _)| key)
        .collect();
    // In the job file's order, then by map index.
    let position = |key: &str| {
        let (task_id, index) = mapping::split_key(key);
        let at = job.tasks.iter().position(|t| t.id == task_id);
        (at, index)
    };
    failed.sort_by_key(|key| position(key));
    let failed: Vec<String> = failed.iter().map(|key| format!("`{key}`")).collect();
    Some(match failed.len() {
        0 => "a task it ends with did not succeed (upstream_failed)".to_owned(),
        1 => format!("task {} failed", failed[0]),
        _ => format!("tasks {} failed", failed.join(", ")),
    })
}

/// Counts `count` active task instances of `task_id` in another scheduler's runs of `job`
/// against `capacity`.
fn count_active(job: &Job, task_id: &str, count: i64, capacity: &mut Capacity) {
    let Some(task) = job.task_of(task_id) else {
        return;
    };
    *capacity
        .jobs
        .entry(job.id.clone())
        .or_insert(i64::from(job.max_active_tasks)) -= count;
    *capacity.pools.entry(task.pool.clone()).or_insert(0) -= count * i64::from(task.pool_slots);
}
