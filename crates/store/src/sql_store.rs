//! The `Store` implementation both SQL stores share, written once: the statements use
//! SQLite's `?` placeholders, and each store's [`Dialect`] turns them into its own (`$1` for
//! PostgreSQL) and says the little else that differs.
//!
//! Why one file of some 1,600 lines: it is the one `impl Store` both SQL stores expand (the
//! `sql_store!` macro), and `#[async_trait]` must see every method of a trait impl in one
//! block, so the impl cannot be divided among macros in several files without a second,
//! delegating copy of every method. It reads in sections: jobs, runs, task instances, tries
//! and their grouped writes, schedulers and claims, logs, outputs and state, operator
//! actions, connections, tokens and sessions, pools.

use sqlx::query::{Query, QueryAs, QueryScalar};
use sqlx::{AssertSqlSafe, Database, FromRow};

/// What one SQL database needs of the shared statements.
pub(crate) trait Dialect {
    type DB: Database;
    /// The column that keeps a run's task instances in the job file's order.
    const TASK_ORDER: &'static str;
    /// Appended to a `SELECT` of a run's fence, so a takeover waits for the write it guards.
    const SHARE_LOCK: &'static str;
    /// Appended to the `SELECT` of runs to claim, so schedulers claiming at once skip each
    /// other's rows instead of waiting.
    const SKIP_LOCKED: &'static str;
    /// Appended to a `SELECT` of rows the transaction is about to change, so a second
    /// writer waits for the first (SQLite's writers take turns anyway).
    const ROW_LOCK: &'static str;
    /// Appended to `runs r` where every ended run is read in the order of `runs_ended`
    /// (their end, then their id): SQLite's planner, without statistics, would take the
    /// `runs_state` index and sort every ended run for a batch of 100.
    const BY_END: &'static str;
    /// See [`Store::write_concurrency`].
    const WRITE_CONCURRENCY: usize;
    /// A statement written with `?` and `?N` placeholders, in this database's syntax.
    fn sql(text: &str) -> String;
}

/// `sqlx::query` and friends for a statement in the shared syntax.
pub(crate) mod sql {
    use super::*;

    pub fn query<'a, D: Dialect>(text: &str) -> Query<'a, D::DB, <D::DB as Database>::Arguments> {
        sqlx::query(AssertSqlSafe(D::sql(text)))
    }

    pub fn query_as<'a, D: Dialect, O>(
        text: &str,
    ) -> QueryAs<'a, D::DB, O, <D::DB as Database>::Arguments>
    where
        O: for<'r> FromRow<'r, <D::DB as Database>::Row>,
    {
        sqlx::query_as(AssertSqlSafe(D::sql(text)))
    }

    pub fn query_scalar<'a, D: Dialect, O>(
        text: &str,
    ) -> QueryScalar<'a, D::DB, O, <D::DB as Database>::Arguments>
    where
        (O,): for<'r> FromRow<'r, <D::DB as Database>::Row>,
    {
        sqlx::query_scalar(AssertSqlSafe(D::sql(text)))
    }
}

/// Rows per statement of a bulk write (a few values each: well under SQLite's 32766 and
/// PostgreSQL's 65535 parameters).
pub(crate) const BULK_ROWS: usize = 500;

/// `columns` (`a, b`) each with `table.` before it.
pub(crate) fn prefixed(table: &str, columns: &str) -> String {
    columns
        .split(',')
        .map(|column| format!("{table}.{}", column.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Appends `(?, ?, …)` with `values` bound, for `IN` lists of a bulk statement.
pub(crate) fn push_bound_list<'t, DB, T>(
    query: &mut sqlx::QueryBuilder<DB>,
    values: impl IntoIterator<Item = T>,
) where
    DB: Database,
    T: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    query.push("(");
    let mut list = query.separated(", ");
    for value in values {
        list.push_bind(value);
    }
    list.push_unseparated(")");
}

/// `?` and `?N` placeholders as PostgreSQL's `$N` (a bare `?` takes the next number).
pub(crate) fn numbered_placeholders(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    let mut next = 0;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '?' {
            out.push(c);
            continue;
        }
        let mut digits = String::new();
        while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
            digits.push(*d);
            chars.next();
        }
        if digits.is_empty() {
            next += 1;
            digits = next.to_string();
        }
        out.push('$');
        out.push_str(&digits);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn placeholders_are_numbered_for_postgresql() {
        assert_eq!(
            super::numbered_placeholders("UPDATE t SET a = ?, b = ? WHERE c = ?"),
            "UPDATE t SET a = $1, b = $2 WHERE c = $3"
        );
        assert_eq!(
            super::numbered_placeholders("VALUES (?1, ?2, ?3, ?5, ?4)"),
            "VALUES ($1, $2, $3, $5, $4)"
        );
    }
}

/// Expands to `impl Store for $store`, with `$dialect` (a [`Dialect`]) for the SQL.
macro_rules! sql_store {
    ($store:ty, $dialect:ty) => {
impl $store {
    /// Records a job's version (its source), once.
    async fn insert_job_version(
        tx: &mut sqlx::Transaction<'static, <$dialect as Dialect>::DB>,
        job_id: &str,
        version: &str,
        source: &str,
        now: &str,
    ) -> Result<()> {
        sql::query::<$dialect>(
            "INSERT INTO job_versions (job_id, version, source, created_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (job_id, version) DO NOTHING",
        )
        .bind(job_id)
        .bind(version)
        .bind(source)
        .bind(now)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

impl $store {
    /// Inserts a queued run and its task instances, in the caller's transaction.
    async fn insert_run(
        tx: &mut sqlx::Transaction<'static, <$dialect as Dialect>::DB>,
        run: NewRun,
    ) -> Result<RunRecord> {
        let record = RunRecord {
            run_id: new_run_id(),
            job_id: run.job_id,
            job_version: run.job_version,
            trigger: run.trigger,
            logical_date: run.logical_date,
            data_interval: run.data_interval,
            params: run.params,
            state: RunState::Queued,
            queued_at: Utc::now(),
            started_at: None,
            ended_at: None,
            cancel_requested: false,
            deadline_missed_at: None,
            full_refresh: run.full_refresh,
        };
        let full_refresh = (!record.full_refresh.is_empty())
            .then(|| serde_json::to_string(&record.full_refresh).unwrap_or_default());
        let inserted = sql::query::<$dialect>(&(format!(
            "INSERT INTO runs ({RUN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, FALSE, NULL, ?)"
        )))
        .bind(&record.run_id)
        .bind(&record.job_id)
        .bind(&record.job_version)
        .bind(record.trigger.as_str())
        .bind(ts(record.logical_date))
        .bind(ts(record.data_interval.start))
        .bind(ts(record.data_interval.end))
        .bind(record.params.to_string())
        .bind(record.state.as_str())
        .bind(ts(record.queued_at))
        .bind(full_refresh)
        .execute(&mut **tx)
        .await;
        match inserted {
            Err(sqlx::Error::Database(error)) if error.is_unique_violation() => {
                return Err(StoreError::Conflict(format!(
                    "job `{}` already has a run for logical date {}",
                    record.job_id,
                    ts(record.logical_date)
                )));
            }
            other => {
                other?;
            }
        }
        // In the job file's order: the order the task instances list in.
        for chunk in run.task_ids.chunks(BULK_ROWS) {
            let mut query = QueryBuilder::<<$dialect as Dialect>::DB>::new(
                "INSERT INTO task_instances (run_id, task_id, state) ",
            );
            query.push_values(chunk, |mut row, task_id| {
                row.push_bind(record.run_id.as_str())
                    .push_bind(task_id.as_str())
                    .push_bind("none");
            });
            query.build().execute(&mut **tx).await?;
        }
        Ok(record)
    }

    /// Clears an expanded mapped task as a whole: its instances become `removed` and its
    /// unexpanded instance returns, `none`, so the scheduler expands it again (reusing the
    /// instances, whose tries keep counting). `false` when `task_id` has no instances.
    async fn clear_expanded(
        tx: &mut sqlx::Transaction<'_, <$dialect as Dialect>::DB>,
        run_id: &str,
        task_id: &str,
    ) -> Result<bool> {
        let prefix = format!("{task_id}[");
        let states: Vec<String> = sql::query_scalar::<$dialect, _>(
            "SELECT state FROM task_instances WHERE run_id = ? AND substr(task_id, 1, ?) = ?",
        )
        .bind(run_id)
        .bind(prefix.len() as i32)
        .bind(&prefix)
        .fetch_all(&mut **tx)
        .await?;
        if states.is_empty() {
            return Ok(false);
        }
        if states.iter().any(|s| s == "queued" || s == "running") {
            return Err(StoreError::Conflict(format!(
                "task `{task_id}` has instances running in run {run_id}; wait for them or cancel the run"
            )));
        }
        sql::query::<$dialect>(
            "UPDATE task_instances SET state = 'removed', next_try_at = NULL, \
             waiting_since = NULL, waiting_reason = NULL \
             WHERE run_id = ? AND substr(task_id, 1, ?) = ?",
        )
        .bind(run_id)
        .bind(prefix.len() as i32)
        .bind(&prefix)
        .execute(&mut **tx)
        .await?;
        // Tries of the unexpanded instance (a `for_each` that once failed) keep counting.
        let tries: i64 = sql::query_scalar::<$dialect, _>(
            "SELECT COALESCE(MAX(try_number), 0) FROM tries WHERE run_id = ? AND task_id = ?",
        )
        .bind(run_id)
        .bind(task_id)
        .fetch_one(&mut **tx)
        .await?;
        sql::query::<$dialect>(
            "INSERT INTO task_instances (run_id, task_id, state, try_number, retry_base) \
             VALUES (?, ?, 'none', ?, ?)",
        )
        .bind(run_id)
        .bind(task_id)
        .bind(tries)
        .bind(tries)
        .execute(&mut **tx)
        .await?;
        Ok(true)
    }

    /// [`Store::give_up_waiting`] (`waiting` true) and [`Store::fail_before_start`].
    async fn fail_scheduled(&self, give_up: &GiveUp, waiting: bool) -> Result<bool> {
        let mut tx = self.write_transaction().await?;
        let key = &give_up.key;
        let at = ts(give_up.at);
        let done = sql::query::<$dialect>(if waiting {
            "UPDATE task_instances SET state = ?, try_number = ?, next_try_at = ?, \
             ended_at = ?, waiting_since = NULL, waiting_reason = NULL \
             WHERE run_id = ? AND task_id = ? AND waiting_since IS NOT NULL AND state = 'scheduled'"
        } else {
            "UPDATE task_instances SET state = ?, try_number = ?, next_try_at = ?, \
             ended_at = ?, waiting_since = NULL, waiting_reason = NULL \
             WHERE run_id = ? AND task_id = ? AND state IN ('none', 'scheduled')"
        })
        .bind(give_up.task_state.as_str())
        .bind(i64::from(key.try_number))
        .bind(give_up.next_try_at.map(ts))
        .bind(give_up.task_state.is_finished().then(|| at.clone()))
        .bind(&key.run_id)
        .bind(&key.task_id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        sql::query::<$dialect>(
            "INSERT INTO tries (run_id, task_id, try_number, backend, image_ref, state, started_at, \
             ended_at, failure_reason) VALUES (?, ?, ?, ?, ?, 'failed', ?, ?, ?)",
        )
        .bind(&key.run_id)
        .bind(&key.task_id)
        .bind(i64::from(key.try_number))
        .bind(&give_up.backend)
        .bind(&give_up.image_ref)
        .bind(&at)
        .bind(&at)
        .bind(&give_up.reason)
        .execute(&mut *tx)
        .await?;
        let notifications: Vec<&NewNotification> = give_up.notifications.iter().collect();
        Self::insert_notifications(&mut tx, &notifications).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Writes notifications into the outbox; one whose id is there already (the same
    /// event written again) is kept once.
    /// Adds observations `(job, seconds)` to the jobs' histograms `name` (see
    /// `job_histograms`), one statement per job and bucket.
    async fn observe(
        tx: &mut sqlx::Transaction<'static, <$dialect as Dialect>::DB>,
        name: &str,
        observations: &[(String, f64)],
    ) -> Result<()> {
        use std::collections::BTreeMap;
        let mut buckets: BTreeMap<(&str, i64), i64> = BTreeMap::new();
        let mut sums: BTreeMap<&str, (i64, f64)> = BTreeMap::new();
        for (job_id, seconds) in observations {
            *buckets.entry((job_id.as_str(), bucket_of(*seconds))).or_default() += 1;
            let sum = sums.entry(job_id.as_str()).or_default();
            sum.0 += 1;
            sum.1 += seconds;
        }
        for ((job_id, bucket), count) in buckets {
            sql::query::<$dialect>(
                "INSERT INTO job_histograms (job_id, name, bucket, count) VALUES (?, ?, ?, ?) \
                 ON CONFLICT (job_id, name, bucket) DO UPDATE SET count = job_histograms.count + excluded.count",
            )
            .bind(job_id)
            .bind(name)
            .bind(bucket)
            .bind(count)
            .execute(&mut **tx)
            .await?;
        }
        for (job_id, (count, sum)) in sums {
            sql::query::<$dialect>(
                "INSERT INTO job_histogram_sums (job_id, name, count, sum) VALUES (?, ?, ?, ?) \
                 ON CONFLICT (job_id, name) DO UPDATE SET count = job_histogram_sums.count + excluded.count, \
                 sum = job_histogram_sums.sum + excluded.sum",
            )
            .bind(job_id)
            .bind(name)
            .bind(count)
            .bind(sum)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }

    async fn insert_notifications(
        tx: &mut sqlx::Transaction<'static, <$dialect as Dialect>::DB>,
        notifications: &[&NewNotification],
    ) -> Result<()> {
        type Db = <$dialect as Dialect>::DB;
        for chunk in notifications.chunks(BULK_ROWS / 2) {
            let mut query = QueryBuilder::<Db>::new(
                "INSERT INTO notifications (id, event, job_id, job_version, run_id, task_id, try_number, \
                 connection, state, reason, logical_date, occurred_at, next_attempt_at) ",
            );
            query.push_values(chunk, |mut row, n| {
                let occurred_at = ts(n.occurred_at);
                row.push_bind(n.id.clone())
                    .push_bind(n.event.as_str())
                    .push_bind(n.job_id.clone())
                    .push_bind(n.job_version.clone())
                    .push_bind(n.run_id.clone())
                    .push_bind(n.task_id.clone())
                    .push_bind(n.try_number.map(i64::from))
                    .push_bind(n.connection.clone())
                    .push_bind(n.state.clone())
                    .push_bind(n.reason.clone())
                    .push_bind(ts(n.logical_date))
                    .push_bind(occurred_at.clone())
                    .push_bind(occurred_at);
            });
            query.push(" ON CONFLICT (id) DO NOTHING");
            query.build().execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// Every write of `writes` in one transaction (see [`Store::write_tries`]); `Err` when the
    /// transaction as a whole failed (nothing of it is kept then).
    async fn write_tries_together(&self, writes: &[FencedWrite]) -> Result<Vec<Result<TryWritten>>> {
        let mut tx = self.write_transaction().await?;
        match Self::write_tries_in(&mut tx, writes).await {
            Ok(results) => {
                tx.commit().await?;
                Ok(results)
            }
            Err(error) => {
                // Roll back now: a dropped transaction would keep its row locks until its
                // connection is next used, and claims skip locked rows.
                let _ = tx.rollback().await;
                Err(error)
            }
        }
    }

    /// The grouped writes in one transaction, in five steps: fences checked, then starts,
    /// containers, log lines and ends written, each step leaving out the writes an earlier
    /// one failed (their errors are their results).
    async fn write_tries_in(
        tx: &mut sqlx::Transaction<'static, <$dialect as Dialect>::DB>,
        writes: &[FencedWrite],
    ) -> Result<Vec<Result<TryWritten>>> {
        let mut results: Vec<Option<Result<TryWritten>>> = writes.iter().map(|_| None).collect();
        Self::check_fences(tx, writes, &mut results).await?;
        Self::write_starts(tx, writes, &mut results).await?;
        Self::write_containers(tx, writes, &results).await?;
        Self::write_log_lines(tx, writes, &results).await?;
        Self::write_finishes(tx, writes, &mut results).await?;
        Ok(results
            .into_iter()
            .map(|result| result.unwrap_or(Ok(TryWritten::Done)))
            .collect())
    }

    /// The fences: one read of every fenced run's token; the rows stay share-locked until the
    /// transaction ends, so a takeover waits for the writes it fences. A write whose fence
    /// no longer holds gets its error in `results` and is left out of what follows.
    async fn check_fences(
        tx: &mut sqlx::Transaction<'static, <$dialect as Dialect>::DB>,
        writes: &[FencedWrite],
        results: &mut [Option<Result<TryWritten>>],
    ) -> Result<()> {
        type Db = <$dialect as Dialect>::DB;
        use std::collections::HashMap;
        let mut fenced_runs: Vec<&str> = writes
            .iter()
            .filter_map(|w| w.fence.as_ref().map(|f| f.run_id.as_str()))
            .collect();
        fenced_runs.sort_unstable();
        fenced_runs.dedup();
        let mut tokens: HashMap<String, i64> = HashMap::new();
        for chunk in fenced_runs.chunks(BULK_ROWS) {
            let mut query = QueryBuilder::<Db>::new("SELECT run_id, fence FROM runs WHERE run_id IN ");
            push_bound_list(&mut query, chunk.iter().copied());
            query.push(" ORDER BY run_id");
            query.push(<$dialect as Dialect>::SHARE_LOCK);
            let rows: Vec<(String, i64)> = query.build_query_as().fetch_all(&mut **tx).await?;
            tokens.extend(rows);
        }
        for (index, write) in writes.iter().enumerate() {
            let Some(fence) = &write.fence else { continue };
            match tokens.get(&fence.run_id) {
                Some(token) if *token == fence.token => {}
                None => {
                    results[index] = Some(Err(StoreError::NotFound(format!("run {}", fence.run_id))))
                }
                Some(token) => {
                    results[index] = Some(Err(StoreError::Fenced(format!(
                        "run {} was taken over by another scheduler (its claim is at fencing token {token}; this scheduler held {})",
                        fence.run_id, fence.token
                    ))))
                }
            }
        }
        Ok(())
    }

    /// The starts: the tries, their task instances `running`, earlier tries' outputs
    /// cleared, and each task's committed state read.
    async fn write_starts(
        tx: &mut sqlx::Transaction<'static, <$dialect as Dialect>::DB>,
        writes: &[FencedWrite],
        results: &mut [Option<Result<TryWritten>>],
    ) -> Result<()> {
        type Db = <$dialect as Dialect>::DB;
        use std::collections::HashMap;
        let starts: Vec<(usize, &TryKey, &str, &str, String)> = writes
            .iter()
            .enumerate()
            .filter(|(index, _)| results[*index].is_none())
            .filter_map(|(index, w)| match &w.write {
                TryWrite::Start { key, backend, image_ref, at } => {
                    Some((index, key, backend.as_str(), image_ref.as_str(), ts(*at)))
                }
                _ => None,
            })
            .collect();
        for chunk in starts.chunks(BULK_ROWS) {
            let mut query = QueryBuilder::<Db>::new(
                "INSERT INTO tries (run_id, task_id, try_number, backend, image_ref, state, started_at) ",
            );
            query.push_values(chunk, |mut row, (_, key, backend, image_ref, at)| {
                row.push_bind(key.run_id.as_str())
                    .push_bind(key.task_id.as_str())
                    .push_bind(i64::from(key.try_number))
                    .push_bind(*backend)
                    .push_bind(*image_ref)
                    .push_bind("running")
                    .push_bind(at.as_str());
            });
            query.push(
                " ON CONFLICT (run_id, task_id, try_number) DO NOTHING \
                 RETURNING try_id, run_id, task_id, try_number",
            );
            let rows: Vec<(i64, String, String, i64)> =
                query.build_query_as().fetch_all(&mut **tx).await?;
            let mut ids: HashMap<(String, String, i64), i64> = rows
                .into_iter()
                .map(|(try_id, run_id, task_id, number)| ((run_id, task_id, number), try_id))
                .collect();
            let mut inserted = Vec::with_capacity(chunk.len());
            for (index, key, backend, image_ref, at) in chunk {
                match ids.remove(&(key.run_id.clone(), key.task_id.clone(), i64::from(key.try_number))) {
                    Some(try_id) => inserted.push((*index, *key, *backend, *image_ref, at.as_str(), try_id)),
                    None => {
                        results[*index] = Some(Err(StoreError::Conflict(format!(
                            "try {} of task `{}` in run {} already exists",
                            key.try_number, key.task_id, key.run_id
                        ))))
                    }
                }
            }
            if inserted.is_empty() {
                continue;
            }
            // How long each waited from ready to started.
            let mut query = QueryBuilder::<Db>::new(
                "SELECT r.job_id, ti.run_id, ti.task_id, ti.ready_at FROM task_instances ti JOIN runs r ON r.run_id = ti.run_id \
                 WHERE ti.ready_at IS NOT NULL AND (ti.run_id, ti.task_id) IN (",
            );
            query.push_values(&inserted, |mut row, (_, key, ..)| {
                row.push_bind(key.run_id.as_str()).push_bind(key.task_id.as_str());
            });
            query.push(")");
            let ready: Vec<(String, String, String, String)> =
                query.build_query_as().fetch_all(&mut **tx).await?;
            let mut waits = Vec::with_capacity(ready.len());
            for (job_id, run_id, task_id, ready_at) in ready {
                if let Some((.., at, _)) = inserted
                    .iter()
                    .find(|(_, key, ..)| key.run_id == run_id && key.task_id == task_id)
                {
                    let wait = (parse_ts(at)? - parse_ts(&ready_at)?).num_milliseconds() as f64 / 1000.0;
                    waits.push((job_id, wait.max(0.0)));
                }
            }
            Self::observe(tx, "queue_wait_seconds", &waits).await?;
            let mut query = QueryBuilder::<Db>::new("WITH v (run_id, task_id, try_number, at) AS (");
            query.push_values(&inserted, |mut row, (_, key, _, _, at, _)| {
                row.push_bind(key.run_id.as_str())
                    .push_bind(key.task_id.as_str())
                    .push_bind(i64::from(key.try_number))
                    .push_bind(*at);
            });
            query.push(
                ") UPDATE task_instances SET state = 'running', try_number = v.try_number, ready_at = NULL, \
                 next_try_at = NULL, started_at = COALESCE(task_instances.started_at, v.at), ended_at = NULL, \
                 waiting_since = NULL, waiting_reason = NULL \
                 FROM v WHERE task_instances.run_id = v.run_id AND task_instances.task_id = v.task_id",
            );
            query.build().execute(&mut **tx).await?;
            let mut query = QueryBuilder::<Db>::new("DELETE FROM outputs WHERE (run_id, task_id) IN (");
            query.push_values(&inserted, |mut row, (_, key, ..)| {
                row.push_bind(key.run_id.as_str()).push_bind(key.task_id.as_str());
            });
            query.push(")");
            query.build().execute(&mut **tx).await?;
            let mut query = QueryBuilder::<Db>::new(
                "SELECT r.run_id, s.task_id, s.value, r.full_refresh FROM task_state s JOIN runs r ON r.job_id = s.job_id \
                 WHERE (r.run_id, s.task_id) IN (",
            );
            query.push_values(&inserted, |mut row, (_, key, ..)| {
                row.push_bind(key.run_id.as_str()).push_bind(key.task_id.as_str());
            });
            query.push(")");
            let states: Vec<(String, String, String, Option<String>)> =
                query.build_query_as().fetch_all(&mut **tx).await?;
            // A task the run refreshes fully starts without its committed state.
            let mut states: HashMap<(String, String), String> = states
                .into_iter()
                .filter(|(_, task_id, _, full_refresh)| {
                    !full_refresh.as_deref().is_some_and(|list| {
                        serde_json::from_str::<Vec<String>>(list)
                            .is_ok_and(|tasks| tasks.iter().any(|t| t == task_id))
                    })
                })
                .map(|(run_id, task_id, value, _)| ((run_id, task_id), value))
                .collect();
            for (index, key, backend, image_ref, at, try_id) in inserted {
                let committed_state = states
                    .remove(&(key.run_id.clone(), key.task_id.clone()))
                    .as_deref()
                    .map(parse_json)
                    .transpose()?;
                results[index] = Some(Ok(TryWritten::Started {
                    record: TryRecord {
                        try_id,
                        run_id: key.run_id.clone(),
                        task_id: key.task_id.clone(),
                        try_number: key.try_number,
                        backend: backend.to_owned(),
                        container_id: None,
                        image_ref: image_ref.to_owned(),
                        image_digest: None,
                        state: TryState::Running,
                        started_at: parse_ts(at)?,
                        ended_at: None,
                        exit_code: None,
                        failure_reason: None,
                    },
                    committed_state,
                }));
            }
        }
        Ok(())
    }

    /// The containers the tries run in.
    async fn write_containers(
        tx: &mut sqlx::Transaction<'static, <$dialect as Dialect>::DB>,
        writes: &[FencedWrite],
        results: &[Option<Result<TryWritten>>],
    ) -> Result<()> {
        type Db = <$dialect as Dialect>::DB;
        let containers: Vec<(i64, &str, Option<&str>, i64)> = writes
            .iter()
            .enumerate()
            .filter(|(index, _)| results[*index].is_none())
            .filter_map(|(_, w)| match &w.write {
                TryWrite::Container { try_id, container_id, image_digest, log_seq } => {
                    Some((*try_id, container_id.as_str(), image_digest.as_deref(), *log_seq))
                }
                _ => None,
            })
            .collect();
        for chunk in containers.chunks(BULK_ROWS) {
            let mut query =
                QueryBuilder::<Db>::new("WITH v (try_id, container_id, image_digest, log_seq) AS (");
            query.push_values(chunk, |mut row, (try_id, container_id, image_digest, log_seq)| {
                row.push_bind(*try_id)
                    .push_bind(*container_id)
                    .push_bind(*image_digest)
                    .push_bind(*log_seq);
            });
            query.push(
                ") UPDATE tries SET container_id = v.container_id, \
                 image_digest = COALESCE(v.image_digest, tries.image_digest), \
                 container_seq = COALESCE(tries.container_seq, v.log_seq) \
                 FROM v WHERE tries.try_id = v.try_id",
            );
            query.build().execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// The log lines.
    async fn write_log_lines(
        tx: &mut sqlx::Transaction<'static, <$dialect as Dialect>::DB>,
        writes: &[FencedWrite],
        results: &[Option<Result<TryWritten>>],
    ) -> Result<()> {
        type Db = <$dialect as Dialect>::DB;
        let lines: Vec<&LogLine> = writes
            .iter()
            .enumerate()
            .filter(|(index, _)| results[*index].is_none())
            .filter_map(|(_, w)| match &w.write {
                TryWrite::Logs(lines) => Some(lines),
                _ => None,
            })
            .flatten()
            .collect();
        for chunk in lines.chunks(LOG_BATCH_ROWS) {
            let mut query = QueryBuilder::<Db>::new(
                "INSERT INTO log_lines (try_id, seq, stream, ts, text) ",
            );
            query.push_values(chunk, |mut row, line| {
                row.push_bind(line.try_id)
                    .push_bind(line.seq)
                    .push_bind(line.stream.code())
                    .push_bind(line.timestamp.timestamp_micros())
                    .push_bind(line.text.as_str());
            });
            query.build().persistent(true).execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// The ends: the tries, their task instances, and the state a successful try published,
    /// which waits for its run's outcome.
    async fn write_finishes(
        tx: &mut sqlx::Transaction<'static, <$dialect as Dialect>::DB>,
        writes: &[FencedWrite],
        results: &mut [Option<Result<TryWritten>>],
    ) -> Result<()> {
        type Db = <$dialect as Dialect>::DB;
        use std::collections::HashMap;
        let finishes: Vec<(usize, &TryFinish)> = writes
            .iter()
            .enumerate()
            .filter(|(index, _)| results[*index].is_none())
            .filter_map(|(index, w)| match &w.write {
                TryWrite::Finish(finish) => Some((index, finish)),
                _ => None,
            })
            .collect();
        for chunk in finishes.chunks(BULK_ROWS) {
            let mut query =
                QueryBuilder::<Db>::new("SELECT t.try_id, t.run_id, t.task_id, t.pending_state, t.started_at, r.job_id, t.state FROM tries t JOIN runs r ON r.run_id = t.run_id WHERE t.try_id IN ");
            push_bound_list(&mut query, chunk.iter().map(|(_, finish)| finish.try_id));
            let rows: Vec<(i64, String, String, Option<String>, String, String, String)> =
                query.build_query_as().fetch_all(&mut **tx).await?;
            let mut found: HashMap<i64, (String, String, Option<String>)> = HashMap::new();
            let mut durations: Vec<(String, f64)> = Vec::new();
            for (try_id, run_id, task_id, pending, started_at, job_id, state) in rows {
                // A try's duration, observed once: when it ends the first time.
                if state == "running" {
                    if let Some(finish) = chunk.iter().find(|(_, f)| f.try_id == try_id) {
                        let seconds = (finish.1.ended_at - parse_ts(&started_at)?).num_milliseconds() as f64 / 1000.0;
                        durations.push((job_id, seconds.max(0.0)));
                    }
                }
                found.insert(try_id, (run_id, task_id, pending));
            }
            Self::observe(tx, "try_duration_seconds", &durations).await?;
            let mut ending = Vec::with_capacity(chunk.len());
            for (index, finish) in chunk {
                match found.remove(&finish.try_id) {
                    Some((run_id, task_id, pending)) => ending.push((*index, *finish, run_id, task_id, pending)),
                    None => {
                        results[*index] =
                            Some(Err(StoreError::NotFound(format!("try {}", finish.try_id))))
                    }
                }
            }
            if ending.is_empty() {
                continue;
            }
            let mut query = QueryBuilder::<Db>::new(
                "WITH v (try_id, state, ended_at, exit_code, failure_reason) AS (",
            );
            query.push_values(&ending, |mut row, (_, finish, ..)| {
                row.push_bind(finish.try_id)
                    .push_bind(finish.state.as_str())
                    .push_bind(ts(finish.ended_at))
                    .push_bind(finish.exit_code)
                    .push_bind(finish.failure_reason.as_deref());
            });
            query.push(
                ") UPDATE tries SET state = v.state, ended_at = v.ended_at, exit_code = v.exit_code, \
                 failure_reason = v.failure_reason, pending_state = NULL FROM v WHERE tries.try_id = v.try_id",
            );
            query.build().execute(&mut **tx).await?;
            let mut query = QueryBuilder::<Db>::new(
                "WITH v (run_id, task_id, state, next_try_at, ended_at) AS (",
            );
            query.push_values(&ending, |mut row, (_, finish, run_id, task_id, _)| {
                row.push_bind(run_id.as_str())
                    .push_bind(task_id.as_str())
                    .push_bind(finish.task_state.as_str())
                    .push_bind(finish.next_try_at.map(ts))
                    .push_bind(finish.task_state.is_finished().then(|| ts(finish.ended_at)));
            });
            query.push(
                ") UPDATE task_instances SET state = v.state, next_try_at = v.next_try_at, \
                 ended_at = v.ended_at, waiting_since = NULL, waiting_reason = NULL FROM v \
                 WHERE task_instances.run_id = v.run_id AND task_instances.task_id = v.task_id",
            );
            query.build().execute(&mut **tx).await?;
            let notifications: Vec<&NewNotification> = ending
                .iter()
                .flat_map(|(_, finish, ..)| finish.notifications.iter())
                .collect();
            Self::insert_notifications(tx, &notifications).await?;
            // The assets a successful try's task produces: one update each.
            for (_, finish, run_id, task_id, _) in &ending {
                if finish.state != TryState::Success {
                    continue;
                }
                for asset in &finish.produces {
                    sql::query::<$dialect>(
                        "INSERT INTO asset_events (asset, job_id, run_id, task_id, created_at) \
                         SELECT ?, job_id, run_id, ?, ? FROM runs WHERE run_id = ?",
                    )
                    .bind(asset)
                    .bind(task_id.as_str())
                    .bind(ts(finish.ended_at))
                    .bind(run_id.as_str())
                    .execute(&mut **tx)
                    .await?;
                }
            }
            // The try's metrics: kept per try, and per task the last value and the total
            // of successful tries.
            for (_, finish, run_id, task_id, _) in &ending {
                for (name, value) in &finish.metrics {
                    sql::query::<$dialect>(
                        "INSERT INTO try_metrics (try_id, run_id, task_id, name, value) VALUES (?, ?, ?, ?, ?) \
                         ON CONFLICT (try_id, name) DO UPDATE SET value = excluded.value",
                    )
                    .bind(finish.try_id)
                    .bind(run_id.as_str())
                    .bind(task_id.as_str())
                    .bind(name.as_str())
                    .bind(*value)
                    .execute(&mut **tx)
                    .await?;
                    let counted = if finish.state == TryState::Success { *value } else { 0.0 };
                    sql::query::<$dialect>(
                        "INSERT INTO task_metrics (job_id, task_id, name, last_value, total, updated_at) \
                         SELECT job_id, ?, ?, ?, ?, ? FROM runs WHERE run_id = ? \
                         ON CONFLICT (job_id, task_id, name) DO UPDATE SET last_value = excluded.last_value, \
                         total = task_metrics.total + excluded.total, updated_at = excluded.updated_at",
                    )
                    .bind(task_id.as_str())
                    .bind(name.as_str())
                    .bind(*value)
                    .bind(counted)
                    .bind(ts(finish.ended_at))
                    .bind(run_id.as_str())
                    .execute(&mut **tx)
                    .await?;
                }
            }
            let published: Vec<(&str, &str, &str)> = ending
                .iter()
                .filter(|(_, finish, ..)| finish.state == TryState::Success)
                .filter_map(|(_, _, run_id, task_id, pending)| {
                    pending.as_deref().map(|value| (run_id.as_str(), task_id.as_str(), value))
                })
                .collect();
            if !published.is_empty() {
                let mut query =
                    QueryBuilder::<Db>::new("INSERT INTO run_pending_state (run_id, task_id, value) ");
                query.push_values(&published, |mut row, (run_id, task_id, value)| {
                    row.push_bind(*run_id).push_bind(*task_id).push_bind(*value);
                });
                query.push(
                    " ON CONFLICT (run_id, task_id) DO UPDATE SET value = excluded.value",
                );
                query.build().execute(&mut **tx).await?;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Store for $store {
    async fn upsert_job(
        &self,
        job_id: &str,
        version: &str,
        file_path: &str,
        source: &str,
    ) -> Result<()> {
        let now = ts(Utc::now());
        let mut tx = self.write_transaction().await?;
        Self::insert_job_version(&mut tx, job_id, version, source, &now).await?;
        sql::query::<$dialect>(
            "INSERT INTO jobs (job_id, current_version, file_path, paused, updated_at) VALUES (?, ?, ?, FALSE, ?) \
             ON CONFLICT (job_id) DO UPDATE SET current_version = excluded.current_version, \
             file_path = excluded.file_path, updated_at = excluded.updated_at \
             WHERE jobs.current_version <> excluded.current_version OR jobs.file_path <> excluded.file_path",
        )
        .bind(job_id)
        .bind(version)
        .bind(file_path)
        .bind(&now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn record_job_paused(
        &self,
        job_id: &str,
        version: &str,
        file_path: &str,
        source: &str,
        paused: bool,
    ) -> Result<()> {
        let now = ts(Utc::now());
        let mut tx = self.write_transaction().await?;
        Self::insert_job_version(&mut tx, job_id, version, source, &now).await?;
        sql::query::<$dialect>(
            "INSERT INTO jobs (job_id, current_version, file_path, paused, updated_at) VALUES (?1, ?2, ?3, ?5, ?4) \
             ON CONFLICT (job_id) DO UPDATE SET paused = excluded.paused",
        )
        .bind(job_id)
        .bind(version)
        .bind(file_path)
        .bind(&now)
        .bind(paused)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_jobs(&self) -> Result<Vec<JobRecord>> {
        sql::query_as::<$dialect, JobRow>(
            "SELECT job_id, current_version, file_path, paused, updated_at FROM jobs ORDER BY job_id",
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(JobRow::into_record)
        .collect()
    }

    async fn job_source(&self, job_id: &str, version: &str) -> Result<String> {
        sql::query_scalar::<$dialect, _>("SELECT source FROM job_versions WHERE job_id = ? AND version = ?")
            .bind(job_id)
            .bind(version)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("job `{job_id}` version {version}")))
    }

    async fn set_paused(&self, job_id: &str, paused: bool) -> Result<()> {
        let done = sql::query::<$dialect>("UPDATE jobs SET paused = ? WHERE job_id = ?")
            .bind(paused)
            .bind(job_id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("job `{job_id}`")));
        }
        Ok(())
    }

    async fn create_run(&self, run: NewRun) -> Result<RunRecord> {
        let mut tx = self.write_transaction().await?;
        let record = Self::insert_run(&mut tx, run).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn trigger_asset_run(
        &self,
        trigger: &stevedore_domain::assets::AssetTrigger,
        mut run: NewRun,
    ) -> Result<Option<RunRecord>> {
        let mut tx = self.write_transaction().await?;
        let mut pending: std::collections::HashMap<&str, (i64, Vec<AssetEventRecord>)> =
            std::collections::HashMap::new();
        for asset in &trigger.assets {
            let consumed: Option<i64> = sql::query_scalar::<$dialect, _>(
                "SELECT consumed_seq FROM asset_consumers WHERE job_id = ? AND asset = ?",
            )
            .bind(&run.job_id)
            .bind(asset)
            .fetch_optional(&mut *tx)
            .await?;
            let consumed = match consumed {
                Some(seq) => seq,
                None => {
                    // A job new to an asset reads its updates from now on.
                    let latest: i64 = sql::query_scalar::<$dialect, _>(
                        "SELECT COALESCE(MAX(seq), 0) FROM asset_events WHERE asset = ?",
                    )
                    .bind(asset)
                    .fetch_one(&mut *tx)
                    .await?;
                    sql::query::<$dialect>(
                        "INSERT INTO asset_consumers (job_id, asset, consumed_seq) VALUES (?, ?, ?) \
                         ON CONFLICT DO NOTHING",
                    )
                    .bind(&run.job_id)
                    .bind(asset)
                    .bind(latest)
                    .execute(&mut *tx)
                    .await?;
                    latest
                }
            };
            let events: Vec<AssetEventRecord> = sql::query_as::<$dialect, AssetEventRow>(
                "SELECT seq, asset, job_id, run_id, task_id, created_at FROM asset_events \
                 WHERE asset = ? AND seq > ? ORDER BY seq LIMIT 1000",
            )
            .bind(asset)
            .bind(consumed)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(AssetEventRow::into_record)
            .collect::<Result<_>>()?;
            pending.insert(asset.as_str(), (consumed, events));
        }
        if !trigger.is_due(|asset| pending.get(asset).is_some_and(|(_, e)| !e.is_empty())) {
            tx.commit().await?;
            return Ok(None);
        }
        let mut triggering: Vec<&AssetEventRecord> =
            pending.values().flat_map(|(_, events)| events.iter()).collect();
        triggering.sort_by_key(|event| event.seq);
        let listed: Vec<Value> = triggering
            .iter()
            .map(|event| {
                serde_json::json!({
                    "asset": event.asset,
                    "job_id": event.job_id,
                    "run_id": event.run_id,
                    "task_id": event.task_id,
                    "at": ts(event.created_at),
                })
            })
            .collect();
        if let Value::Object(params) = &mut run.params {
            params.insert("triggering_asset_events".to_owned(), Value::Array(listed));
        }
        // Every asset's updates so far are this run's; two schedulers racing here make one.
        for (asset, (consumed, events)) in &pending {
            let Some(last) = events.last() else { continue };
            let moved = sql::query::<$dialect>(
                "UPDATE asset_consumers SET consumed_seq = ? WHERE job_id = ? AND asset = ? \
                 AND consumed_seq = ?",
            )
            .bind(last.seq)
            .bind(&run.job_id)
            .bind(*asset)
            .bind(*consumed)
            .execute(&mut *tx)
            .await?;
            if moved.rows_affected() == 0 {
                return Ok(None);
            }
        }
        let record = Self::insert_run(&mut tx, run).await?;
        tx.commit().await?;
        Ok(Some(record))
    }

    async fn accept_events(
        &self,
        job_id: &str,
        events: &[String],
        at: DateTime<Utc>,
    ) -> Result<u64> {
        type Db = <$dialect as Dialect>::DB;
        let at = ts(at);
        let mut tx = self.write_transaction().await?;
        for chunk in events.chunks(BULK_ROWS) {
            let mut query =
                QueryBuilder::<Db>::new("INSERT INTO job_events (job_id, body, received_at) ");
            query.push_values(chunk, |mut row, body| {
                row.push_bind(job_id)
                    .push_bind(body.as_str())
                    .push_bind(at.as_str());
            });
            query.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(events.len() as u64)
    }

    async fn batch_events(
        &self,
        max_batch: u32,
        due_before: DateTime<Utc>,
        mut run: NewRun,
    ) -> Result<Option<RunRecord>> {
        type Db = <$dialect as Dialect>::DB;
        let mut tx = self.write_transaction().await?;
        let waiting: Vec<(i64, String)> = sql::query_as::<$dialect, _>(
            "SELECT seq, received_at FROM job_events WHERE job_id = ? AND run_id IS NULL \
             ORDER BY seq LIMIT ?",
        )
        .bind(&run.job_id)
        .bind(i64::from(max_batch))
        .fetch_all(&mut *tx)
        .await?;
        let Some((_, oldest)) = waiting.first() else {
            return Ok(None);
        };
        if waiting.len() < max_batch as usize && *oldest > ts(due_before) {
            return Ok(None);
        }
        if let Value::Object(params) = &mut run.params {
            params.insert("event_count".to_owned(), Value::from(waiting.len()));
        }
        let record = Self::insert_run(&mut tx, run).await?;
        let mut given = 0;
        for chunk in waiting.chunks(BULK_ROWS) {
            let mut query = QueryBuilder::<Db>::new("UPDATE job_events SET run_id = ");
            query
                .push_bind(record.run_id.as_str())
                .push(" WHERE run_id IS NULL AND seq IN ");
            push_bound_list(&mut query, chunk.iter().map(|(seq, _)| *seq));
            given += query.build().execute(&mut *tx).await?.rows_affected();
        }
        if given != waiting.len() as u64 {
            // Another scheduler gave them to its run first: this one is not made.
            return Ok(None);
        }
        tx.commit().await?;
        Ok(Some(record))
    }

    async fn run_events(&self, run_id: &str) -> Result<Vec<String>> {
        Ok(sql::query_scalar::<$dialect, String>(
            "SELECT body FROM job_events WHERE run_id = ? ORDER BY seq",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn waiting_events(&self, job_id: &str) -> Result<u64> {
        let count: i64 = sql::query_scalar::<$dialect, _>(
            "SELECT COUNT(*) FROM job_events WHERE job_id = ? AND run_id IS NULL",
        )
        .bind(job_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(count as u64)
    }

    async fn set_webhook_token(&self, job_id: &str, hash: &str, at: DateTime<Utc>) -> Result<()> {
        sql::query::<$dialect>(
            "INSERT INTO webhook_tokens (job_id, token_hash, created_at) VALUES (?, ?, ?) \
             ON CONFLICT (job_id) DO UPDATE SET token_hash = excluded.token_hash, \
             created_at = excluded.created_at",
        )
        .bind(job_id)
        .bind(hash)
        .bind(ts(at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn webhook_token(&self, job_id: &str) -> Result<Option<String>> {
        Ok(sql::query_scalar::<$dialect, String>(
            "SELECT token_hash FROM webhook_tokens WHERE job_id = ?",
        )
        .bind(job_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn asset_events(
        &self,
        asset: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AssetEventRecord>> {
        let rows: Vec<AssetEventRow> = match asset {
            Some(asset) => {
                sql::query_as::<$dialect, AssetEventRow>(
                    "SELECT seq, asset, job_id, run_id, task_id, created_at FROM asset_events \
                     WHERE asset = ? ORDER BY seq DESC LIMIT ?",
                )
                .bind(asset)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sql::query_as::<$dialect, AssetEventRow>(
                    "SELECT seq, asset, job_id, run_id, task_id, created_at FROM asset_events \
                     WHERE seq IN (SELECT MAX(seq) FROM asset_events GROUP BY asset) \
                     ORDER BY asset LIMIT ?",
                )
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.into_iter().map(AssetEventRow::into_record).collect()
    }

    async fn get_run(&self, run_id: &str) -> Result<RunRecord> {
        sql::query_as::<$dialect, RunRow>(&(format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE run_id = ?"
        )))
        .bind(run_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("run `{run_id}`")))?
        .into_record()
    }

    async fn find_run(&self, id_or_prefix: &str) -> Result<RunRecord> {
        let pattern = format!("{}%", id_or_prefix.replace(['%', '_'], ""));
        let rows = sql::query_as::<$dialect, RunRow>(&(format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE run_id LIKE ? ORDER BY run_id LIMIT 2"
        )))
        .bind(pattern)
        .fetch_all(&self.pool)
        .await?;
        let mut rows = rows.into_iter();
        match (rows.next(), rows.next()) {
            (Some(row), None) => row.into_record(),
            (None, _) => Err(StoreError::NotFound(format!("run `{id_or_prefix}`"))),
            (Some(_), Some(_)) => Err(StoreError::Ambiguous(format!(
                "`{id_or_prefix}` matches several runs; give more of the run id"
            ))),
        }
    }

    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>> {
        let mut query =
            QueryBuilder::<<$dialect as Dialect>::DB>::new(format!("SELECT {RUN_COLUMNS} FROM runs WHERE 1 = 1"));
        if let Some(job_id) = &filter.job_id {
            query.push(" AND job_id = ").push_bind(job_id.clone());
        }
        if !filter.states.is_empty() {
            query.push(" AND state IN ");
            push_bound_list(&mut query, filter.states.iter().map(|state| state.as_str()));
        }
        if let Some(run_id) = &filter.before {
            query.push(" AND run_id < ").push_bind(run_id.clone());
        }
        // Run ids are UUIDv7: newest first by id is newest first by creation.
        query.push(" ORDER BY run_id DESC");
        if let Some(limit) = filter.limit {
            query.push(" LIMIT ").push_bind(i64::from(limit));
        }
        query
            .build_query_as::<RunRow>()
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(RunRow::into_record)
            .collect()
    }

    async fn state_counts(&self) -> Result<StateCounts> {
        let runs: Vec<(String, i64)> =
            sql::query_as::<$dialect, _>("SELECT state, count(*) FROM runs GROUP BY state ORDER BY state")
                .fetch_all(&self.pool)
                .await?;
        let instances: Vec<(String, i64)> = sql::query_as::<$dialect, _>(
            "SELECT state, count(*) FROM task_instances GROUP BY state ORDER BY state",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(StateCounts {
            runs: runs
                .into_iter()
                .map(|(state, n)| Ok((state.parse().map_err(StoreError::Corrupt)?, n)))
                .collect::<Result<_>>()?,
            task_instances: instances
                .into_iter()
                .map(|(state, n)| Ok((state.parse().map_err(StoreError::Corrupt)?, n)))
                .collect::<Result<_>>()?,
        })
    }

    async fn set_run_states_notifying(
        &self,
        changes: &[(String, RunState)],
        notifications: &[NewNotification],
        at: DateTime<Utc>,
    ) -> Result<()> {
        type Db = <$dialect as Dialect>::DB;
        if changes.is_empty() {
            return Ok(());
        }
        let at = ts(at);
        let mut tx = self.write_transaction().await?;
        // The runs this write ends (not ended already): only their events are kept. Their
        // rows stay locked until the transaction ends, so two writers cannot both end one.
        let mut ended_now: Vec<String> = Vec::new();
        if !notifications.is_empty() {
            let ending: Vec<&str> = changes
                .iter()
                .filter(|(_, state)| state.is_finished())
                .map(|(run_id, _)| run_id.as_str())
                .collect();
            for chunk in ending.chunks(BULK_ROWS) {
                let mut query = QueryBuilder::<Db>::new(
                    "SELECT run_id FROM runs WHERE state NOT IN ('success', 'failed') AND run_id IN ",
                );
                push_bound_list(&mut query, chunk.iter().copied());
                query.push(<$dialect>::ROW_LOCK);
                let rows: Vec<(String,)> = query.build_query_as().fetch_all(&mut *tx).await?;
                ended_now.extend(rows.into_iter().map(|(run_id,)| run_id));
            }
        }
        for state in [RunState::Queued, RunState::Running, RunState::Success, RunState::Failed] {
            let run_ids: Vec<&str> = changes
                .iter()
                .filter(|(_, s)| *s == state)
                .map(|(run_id, _)| run_id.as_str())
                .collect();
            for chunk in run_ids.chunks(BULK_ROWS) {
                if state.is_finished() {
                    // How late a scheduled run ending now ended: from its interval's end.
                    let mut query = QueryBuilder::<Db>::new(
                        "SELECT job_id, data_interval_end FROM runs WHERE run_trigger = 'scheduled' \
                         AND state NOT IN ('success', 'failed') AND run_id IN ",
                    );
                    push_bound_list(&mut query, chunk.iter().copied());
                    let ending: Vec<(String, String)> =
                        query.build_query_as().fetch_all(&mut *tx).await?;
                    let ended_at = parse_ts(&at)?;
                    let mut lags = Vec::with_capacity(ending.len());
                    for (job_id, interval_end) in ending {
                        let lag = (ended_at - parse_ts(&interval_end)?).num_milliseconds() as f64 / 1000.0;
                        lags.push((job_id, lag.max(0.0)));
                    }
                    Self::observe(&mut tx, "run_lag_seconds", &lags).await?;
                }
                if state == RunState::Success {
                    // A run that succeeds now (not before) updates its job's asset `job:ID`,
                    // which `schedule: {after: [ID]}` waits for.
                    let mut query = QueryBuilder::<Db>::new(
                        "INSERT INTO asset_events (asset, job_id, run_id, task_id, created_at) \
                         SELECT 'job:' || job_id, job_id, run_id, NULL, ",
                    );
                    query
                        .push_bind(at.as_str())
                        .push(" FROM runs WHERE state NOT IN ('success', 'failed') AND run_id IN ");
                    push_bound_list(&mut query, chunk.iter().copied());
                    query.build().execute(&mut *tx).await?;
                }
                let mut query = QueryBuilder::<Db>::new("UPDATE runs SET state = ");
                query.push_bind(state.as_str());
                match state {
                    RunState::Queued => query.push(", ended_at = NULL"),
                    RunState::Running => query
                        .push(", started_at = COALESCE(started_at, ")
                        .push_bind(at.as_str())
                        .push("), ended_at = NULL"),
                    RunState::Success | RunState::Failed => {
                        query.push(", ended_at = ").push_bind(at.as_str())
                    }
                };
                query.push(" WHERE run_id IN ");
                push_bound_list(&mut query, chunk.iter().copied());
                query.build().execute(&mut *tx).await?;
                if !state.is_finished() {
                    continue;
                }
                // The run's tries' state becomes the jobs' state only if the run succeeded,
                // run by run in the order given (two runs of one job may both hold some).
                let mut query = QueryBuilder::<Db>::new(
                    "SELECT DISTINCT run_id FROM run_pending_state WHERE run_id IN ",
                );
                push_bound_list(&mut query, chunk.iter().copied());
                let pending: Vec<(String,)> = query.build_query_as().fetch_all(&mut *tx).await?;
                for run_id in chunk.iter().filter(|id| pending.iter().any(|(p,)| p == *id)) {
                    if state == RunState::Success {
                        sql::query::<$dialect>(
                            "INSERT INTO task_state (job_id, task_id, value, run_id, updated_at) \
                             SELECT runs.job_id, p.task_id, p.value, p.run_id, ? FROM run_pending_state p \
                             JOIN runs ON runs.run_id = p.run_id WHERE p.run_id = ? \
                             ON CONFLICT (job_id, task_id) DO UPDATE SET value = excluded.value, \
                             run_id = excluded.run_id, updated_at = excluded.updated_at",
                        )
                        .bind(at.as_str())
                        .bind(*run_id)
                        .execute(&mut *tx)
                        .await?;
                        sql::query::<$dialect>(
                            "INSERT INTO task_state_history (job_id, task_id, value, run_id, action, actor, committed_at) \
                             SELECT runs.job_id, p.task_id, p.value, p.run_id, 'run', NULL, ? FROM run_pending_state p \
                             JOIN runs ON runs.run_id = p.run_id WHERE p.run_id = ? ORDER BY p.task_id",
                        )
                        .bind(at.as_str())
                        .bind(*run_id)
                        .execute(&mut *tx)
                        .await?;
                    }
                    sql::query::<$dialect>("DELETE FROM run_pending_state WHERE run_id = ?")
                        .bind(*run_id)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        let kept: Vec<&NewNotification> = notifications
            .iter()
            .filter(|n| ended_now.contains(&n.run_id))
            .collect();
        Self::insert_notifications(&mut tx, &kept).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn mark_deadline_missed(
        &self,
        run_id: &str,
        notifications: &[NewNotification],
        at: DateTime<Utc>,
    ) -> Result<bool> {
        let mut tx = self.write_transaction().await?;
        let done = sql::query::<$dialect>(
            "UPDATE runs SET deadline_missed_at = ? WHERE run_id = ? AND deadline_missed_at IS NULL \
             AND state IN ('queued', 'running')",
        )
        .bind(ts(at))
        .bind(run_id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        let notifications: Vec<&NewNotification> = notifications.iter().collect();
        Self::insert_notifications(&mut tx, &notifications).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn job_outcomes(&self, job_id: &str, limit: u32) -> Result<Vec<(String, RunState)>> {
        let rows: Vec<(String, String)> = sql::query_as::<$dialect, _>(
            "SELECT run_id, state FROM runs WHERE job_id = ? AND state IN ('success', 'failed') \
             ORDER BY ended_at DESC, run_id DESC LIMIT ?",
        )
        .bind(job_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(run_id, state)| Ok((run_id, parse_enum::<RunState>(&state)?)))
            .collect()
    }

    async fn previous_run(
        &self,
        job_id: &str,
        logical_date: DateTime<Utc>,
    ) -> Result<Option<RunRecord>> {
        sql::query_as::<$dialect, RunRow>(&(format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE job_id = ? AND logical_date < ? \
             ORDER BY logical_date DESC, queued_at DESC LIMIT 1"
        )))
        .bind(job_id)
        .bind(ts(logical_date))
        .fetch_optional(&self.pool)
        .await?
        .map(RunRow::into_record)
        .transpose()
    }

    async fn move_to_version(
        &self,
        run_id: &str,
        version: &str,
        removed: &[String],
        added: &[String],
    ) -> Result<()> {
        let mut tx = self.write_transaction().await?;
        sql::query::<$dialect>("UPDATE runs SET job_version = ? WHERE run_id = ?")
            .bind(version)
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
        for task_id in removed {
            sql::query::<$dialect>("UPDATE task_instances SET state = 'removed' WHERE run_id = ? AND task_id = ? AND state = 'none'")
                .bind(run_id)
                .bind(task_id)
                .execute(&mut *tx)
                .await?;
        }
        for task_id in added {
            sql::query::<$dialect>("INSERT INTO task_instances (run_id, task_id, state) VALUES (?, ?, 'none') ON CONFLICT DO NOTHING")
                .bind(run_id)
                .bind(task_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn runs_marker(&self) -> Result<Option<String>> {
        Ok(sql::query_scalar::<$dialect, _>("SELECT MAX(run_id) FROM runs")
            .fetch_one(&self.pool)
            .await?)
    }

    async fn last_scheduled_interval(&self, job_id: &str) -> Result<Option<DataInterval>> {
        let row: Option<(String, String)> = sql::query_as::<$dialect, _>(
            "SELECT data_interval_start, data_interval_end FROM runs \
             WHERE job_id = ? AND run_trigger = 'scheduled' ORDER BY logical_date DESC LIMIT 1",
        )
        .bind(job_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|(start, end)| {
            Ok(DataInterval {
                start: parse_ts(&start)?,
                end: parse_ts(&end)?,
            })
        })
        .transpose()
    }

    async fn task_instances(&self, run_id: &str) -> Result<Vec<TaskInstanceRecord>> {
        sql::query_as::<$dialect, TaskInstanceRow>(&format!(
            "SELECT {TASK_INSTANCE_COLUMNS} FROM task_instances WHERE run_id = ? ORDER BY {}",
            <$dialect>::TASK_ORDER
        ))
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(TaskInstanceRow::into_record)
        .collect()
    }

    async fn held_runs(&self, owner: &str) -> Result<Vec<RunRecord>> {
        sql::query_as::<$dialect, RunRow>(&format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE owner = ? AND state IN ('queued', 'running') ORDER BY run_id"
        ))
        .bind(owner)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(RunRow::into_record)
        .collect()
    }

    async fn held_task_instances(&self, owner: &str) -> Result<Vec<TaskInstanceRecord>> {
        sql::query_as::<$dialect, TaskInstanceRow>(&format!(
            "SELECT {} FROM task_instances ti JOIN runs r ON r.run_id = ti.run_id \
             WHERE r.owner = ? AND r.state IN ('queued', 'running') ORDER BY ti.run_id, ti.{}",
            prefixed("ti", TASK_INSTANCE_COLUMNS),
            <$dialect>::TASK_ORDER
        ))
        .bind(owner)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(TaskInstanceRow::into_record)
        .collect()
    }

    async fn active_elsewhere(&self, owner: &str) -> Result<ActiveElsewhere> {
        let task_instances: Vec<(String, String, String, i64)> = sql::query_as::<$dialect, _>(
            "SELECT r.job_id, r.job_version, ti.task_id, count(*) FROM task_instances ti \
             JOIN runs r ON r.run_id = ti.run_id \
             WHERE r.state IN ('queued', 'running') AND (r.owner IS NULL OR r.owner <> ?) \
             AND ti.state IN ('queued', 'running') \
             GROUP BY r.job_id, r.job_version, ti.task_id ORDER BY r.job_id, r.job_version, ti.task_id",
        )
        .bind(owner)
        .fetch_all(&self.pool)
        .await?;
        let running_runs: Vec<(String, i64)> = sql::query_as::<$dialect, _>(
            "SELECT job_id, count(*) FROM runs WHERE state = 'running' AND (owner IS NULL OR owner <> ?) \
             GROUP BY job_id ORDER BY job_id",
        )
        .bind(owner)
        .fetch_all(&self.pool)
        .await?;
        Ok(ActiveElsewhere {
            task_instances,
            running_runs,
        })
    }

    async fn set_task_state(
        &self,
        run_id: &str,
        task_id: &str,
        state: TaskState,
        at: DateTime<Utc>,
    ) -> Result<()> {
        self.set_task_states(&[(run_id.to_owned(), task_id.to_owned(), state)], at)
            .await
    }

    async fn set_task_states(
        &self,
        changes: &[(String, String, TaskState)],
        at: DateTime<Utc>,
    ) -> Result<()> {
        type Db = <$dialect as Dialect>::DB;
        if changes.is_empty() {
            return Ok(());
        }
        // The last change of a task instance is the one that holds.
        let mut seen = std::collections::HashSet::new();
        let mut last: Vec<&(String, String, TaskState)> = changes
            .iter()
            .rev()
            .filter(|(run_id, task_id, _)| seen.insert((run_id.as_str(), task_id.as_str())))
            .collect();
        last.reverse();
        let ended = ts(at);
        let mut tx = self.write_transaction().await?;
        let mut states: Vec<TaskState> = last.iter().map(|(_, _, state)| *state).collect();
        states.sort_by_key(|state| state.as_str());
        states.dedup();
        for state in states {
            let of_state: Vec<(&str, &str)> = last
                .iter()
                .filter(|(_, _, s)| *s == state)
                .map(|(run_id, task_id, _)| (run_id.as_str(), task_id.as_str()))
                .collect();
            for chunk in of_state.chunks(BULK_ROWS) {
                let mut query = QueryBuilder::<Db>::new("UPDATE task_instances SET state = ");
                query.push_bind(state.as_str());
                if state.is_finished() {
                    query.push(", ended_at = ").push_bind(ended.as_str());
                }
                // Ready since now, unless it was already (scheduled and queued in one
                // write keep only the last change; the start clears it).
                if matches!(state, TaskState::Scheduled | TaskState::Queued) {
                    query
                        .push(", ready_at = COALESCE(ready_at, ")
                        .push_bind(ended.as_str())
                        .push(")");
                }
                if !matches!(state, TaskState::UpForRetry | TaskState::UpForReschedule) {
                    query.push(", next_try_at = NULL");
                }
                query.push(" WHERE (run_id, task_id) IN (");
                query.push_values(chunk, |mut row, (run_id, task_id)| {
                    row.push_bind(*run_id).push_bind(*task_id);
                });
                query.push(")");
                query.build().execute(&mut *tx).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn tries(&self, run_id: &str, task_id: &str) -> Result<Vec<TryRecord>> {
        sql::query_as::<$dialect, TryRow>(&(format!(
            "SELECT {TRY_COLUMNS} FROM tries WHERE run_id = ? AND task_id = ? ORDER BY try_number"
        )))
        .bind(run_id)
        .bind(task_id)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(TryRow::into_record)
        .collect()
    }

    async fn running_tries(&self) -> Result<Vec<TryRecord>> {
        // Through the active runs' task instances: the tries table keeps every try ever made.
        let columns = prefixed("t", TRY_COLUMNS);
        sql::query_as::<$dialect, TryRow>(&(format!(
            "SELECT {columns} FROM runs r JOIN task_instances ti ON ti.run_id = r.run_id \
             JOIN tries t ON t.run_id = ti.run_id AND t.task_id = ti.task_id AND t.try_number = ti.try_number \
             WHERE r.state IN ('queued', 'running') AND t.state = 'running'"
        )))
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(TryRow::into_record)
        .collect()
    }

    fn write_concurrency(&self) -> usize {
        <$dialect as Dialect>::WRITE_CONCURRENCY
    }

    async fn write_tries(&self, writes: &[FencedWrite]) -> Vec<Result<TryWritten>> {
        if writes.is_empty() {
            return Vec::new();
        }
        let error = match self.write_tries_together(writes).await {
            Ok(results) => return results,
            Err(error) => error,
        };
        if writes.len() == 1 {
            return vec![Err(error)];
        }
        if error.is_transient() {
            // The database is away: every write gets the same passing error (and is tried
            // again by its writer), rather than a wait for the database per write.
            return writes.iter().map(|_| Err(error.again())).collect();
        }
        // One write spoiled the transaction (a log line stored twice, say): each alone, so
        // only that one fails.
        tracing::debug!(writes = writes.len(), error = %error, "a group of try writes failed; writing each alone");
        let mut results = Vec::with_capacity(writes.len());
        for write in writes {
            results.push(match self.write_tries_together(std::slice::from_ref(write)).await {
                Ok(mut one) => one.pop().unwrap_or(Ok(TryWritten::Done)),
                Err(error) => Err(error),
            });
        }
        results
    }

    async fn stored_lines(&self, try_id: i64) -> Result<StoredLines> {
        let counts: Vec<(i64, i64)> = sql::query_as::<$dialect, _>(
            "SELECT stream, count(*) FROM log_lines WHERE try_id = ? AND seq >= \
             (SELECT container_seq FROM tries WHERE try_id = ?) GROUP BY stream",
        )
        .bind(try_id)
        .bind(try_id)
        .fetch_all(&self.pool)
        .await?;
        let mut stored = StoredLines {
            next_seq: self.last_log_seq(try_id).await?.map_or(0, |seq| seq + 1),
            ..Default::default()
        };
        for (stream, count) in counts {
            match LogStream::from_code(stream) {
                Some(LogStream::Stderr) => stored.stderr += count as u64,
                Some(_) => stored.stdout += count as u64,
                None => return Err(StoreError::Corrupt(format!("log stream {stream}"))),
            }
        }
        Ok(stored)
    }

    async fn register_scheduler(
        &self,
        id: &str,
        host: &str,
        pid: u32,
        at: DateTime<Utc>,
    ) -> Result<()> {
        sql::query::<$dialect>(
            "INSERT INTO schedulers (id, host, pid, started_at, heartbeat_at) VALUES (?, ?, ?, ?, ?4) \
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
        )
        .bind(id)
        .bind(host)
        .bind(i64::from(pid))
        .bind(ts(at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn heartbeat(&self, id: &str, at: DateTime<Utc>) -> Result<()> {
        let done = sql::query::<$dialect>("UPDATE schedulers SET heartbeat_at = ? WHERE id = ?")
            .bind(ts(at))
            .bind(id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("scheduler {id}")));
        }
        Ok(())
    }

    async fn claim_runs(&self, id: &str, live_after: DateTime<Utc>) -> Result<Vec<Fence>> {
        let live_after = ts(live_after);
        let mut tx = self.write_transaction().await?;
        let (live, active, mine): (i64, i64, i64) = sql::query_as::<$dialect, _>(
            "SELECT (SELECT count(*) FROM schedulers WHERE heartbeat_at >= ?1 OR id = ?2), \
             (SELECT count(*) FROM runs WHERE state IN ('queued', 'running')), \
             (SELECT count(*) FROM runs WHERE state IN ('queued', 'running') AND owner = ?2)",
        )
        .bind(&live_after)
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        // A fair share: each live scheduler takes about as many active runs as the others.
        let share = (active + live.max(1) - 1) / live.max(1) - mine;
        if share > 0 {
            let claimable: Vec<String> = sql::query_scalar::<$dialect, _>(&format!(
                "SELECT run_id FROM runs WHERE state IN ('queued', 'running') \
                 AND (owner IS NULL OR (owner <> ?1 AND owner NOT IN \
                 (SELECT id FROM schedulers WHERE heartbeat_at >= ?2))) \
                 ORDER BY run_id LIMIT ?3{}",
                <$dialect as Dialect>::SKIP_LOCKED
            ))
            .bind(id)
            .bind(&live_after)
            .bind(share)
            .fetch_all(&mut *tx)
            .await?;
            for chunk in claimable.chunks(BULK_ROWS) {
                let mut query = QueryBuilder::<<$dialect as Dialect>::DB>::new("UPDATE runs SET owner = ");
                query.push_bind(id).push(", fence = fence + 1 WHERE run_id IN ");
                push_bound_list(&mut query, chunk.iter().map(String::as_str));
                query.build().execute(&mut *tx).await?;
            }
        }
        let held: Vec<(String, i64)> = sql::query_as::<$dialect, _>(
            "SELECT run_id, fence FROM runs WHERE owner = ? AND state IN ('queued', 'running') ORDER BY run_id",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(held
            .into_iter()
            .map(|(run_id, token)| Fence { run_id, token })
            .collect())
    }

    async fn lock_scheduling(&self) -> Result<SchedulingLock> {
        self.scheduling_lock().await
    }

    async fn deregister_scheduler(&self, id: &str) -> Result<()> {
        let mut tx = self.write_transaction().await?;
        sql::query::<$dialect>("UPDATE runs SET owner = NULL, fence = fence + 1 WHERE owner = ? AND state IN ('queued', 'running')")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sql::query::<$dialect>("DELETE FROM schedulers WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_schedulers(&self) -> Result<Vec<SchedulerRecord>> {
        let rows: Vec<(String, String, i64, String, String, i64)> = sql::query_as::<$dialect, _>(
            "SELECT s.id, s.host, s.pid, s.started_at, s.heartbeat_at, \
             (SELECT count(*) FROM runs r WHERE r.owner = s.id AND r.state IN ('queued', 'running')) \
             FROM schedulers s ORDER BY s.heartbeat_at DESC",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(id, host, pid, started_at, heartbeat_at, runs)| {
                Ok(SchedulerRecord {
                    id,
                    host,
                    pid,
                    started_at: parse_ts(&started_at)?,
                    heartbeat_at: parse_ts(&heartbeat_at)?,
                    runs,
                })
            })
            .collect()
    }

    async fn last_log_seq(&self, try_id: i64) -> Result<Option<i64>> {
        Ok(
            sql::query_scalar::<$dialect, _>("SELECT max(seq) FROM log_lines WHERE try_id = ?")
                .bind(try_id)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn log_page(&self, try_id: i64, after: Option<i64>, limit: u32) -> Result<LogPage> {
        use futures_util::TryStreamExt;
        // Rows are read one at a time and reading stops at the page's byte budget, so a
        // page of huge lines is never loaded whole.
        let query = format!(
            "SELECT try_id, seq, stream, ts, substr(text, 1, {MAX_LINE_READ}) AS text FROM log_lines WHERE try_id = ? AND seq > ? ORDER BY seq LIMIT ?"
        );
        let mut rows = sql::query_as::<$dialect, LogRow>(&query)
            .bind(try_id)
            .bind(after.unwrap_or(-1))
            .bind(i64::from(limit))
            .fetch(&self.pool);
        let mut page = LogPage::default();
        let mut bytes = 0usize;
        while let Some(row) = rows.try_next().await? {
            let line = row.into_line()?;
            bytes += line.text.len();
            page.lines.push(line);
            if bytes >= LOG_PAGE_BYTES {
                page.cut = page.lines.len() < limit as usize;
                break;
            }
        }
        Ok(page)
    }

    async fn put_output(
        &self,
        run_id: &str,
        task_id: &str,
        key: &str,
        value: &Value,
    ) -> Result<()> {
        sql::query::<$dialect>(
            "INSERT INTO outputs (run_id, task_id, key, value) VALUES (?, ?, ?, ?) \
             ON CONFLICT (run_id, task_id, key) DO UPDATE SET value = excluded.value",
        )
        .bind(run_id)
        .bind(task_id)
        .bind(key)
        .bind(value.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn outputs(&self, run_id: &str) -> Result<Vec<(String, String, Value)>> {
        let rows: Vec<(String, String, String)> = sql::query_as::<$dialect, _>(
            "SELECT task_id, key, value FROM outputs WHERE run_id = ? ORDER BY task_id, key",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(task, key, value)| Ok((task, key, parse_json(&value)?)))
            .collect()
    }

    async fn task_outputs(
        &self,
        run_id: &str,
        task_id: &str,
    ) -> Result<Vec<(String, String, Value)>> {
        let prefix = format!("{task_id}[");
        let rows: Vec<(String, String, String)> = sql::query_as::<$dialect, _>(
            "SELECT task_id, key, value FROM outputs WHERE run_id = ? \
             AND (task_id = ? OR substr(task_id, 1, ?) = ?) ORDER BY task_id, key",
        )
        .bind(run_id)
        .bind(task_id)
        .bind(prefix.len() as i32)
        .bind(&prefix)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(task, key, value)| Ok((task, key, parse_json(&value)?)))
            .collect()
    }

    async fn record_artifacts(&self, try_id: i64, files: &[CapturedFile]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for file in files {
            let size = i64::try_from(file.size).map_err(|_| {
                StoreError::Conflict(format!("artifact {}: size {} is too large", file.path, file.size))
            })?;
            let written = sql::query::<$dialect>(
                "INSERT INTO artifacts (try_id, run_id, task_id, path, size, sha256, mtime) \
                 SELECT try_id, run_id, task_id, ?, ?, ?, ? FROM tries WHERE try_id = ? \
                 ON CONFLICT (try_id, path) DO UPDATE SET size = excluded.size, sha256 = excluded.sha256, mtime = excluded.mtime",
            )
            .bind(&file.path)
            .bind(size)
            .bind(&file.sha256)
            .bind(file.modified)
            .bind(try_id)
            .execute(&mut *tx)
            .await?;
            if written.rows_affected() == 0 {
                return Err(StoreError::NotFound(format!("try {try_id}")));
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn task_metrics(&self) -> Result<Vec<TaskMetric>> {
        let rows: Vec<(String, String, String, f64, f64)> = sql::query_as::<$dialect, _>(
            "SELECT job_id, task_id, name, last_value, total FROM task_metrics ORDER BY job_id, task_id, name",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(job_id, task_id, name, last_value, total)| TaskMetric {
                job_id,
                task_id,
                name,
                last_value,
                total,
            })
            .collect())
    }

    async fn job_histograms(&self) -> Result<Vec<JobHistogram>> {
        let sums: Vec<(String, String, i64, f64)> = sql::query_as::<$dialect, _>(
            "SELECT job_id, name, count, sum FROM job_histogram_sums ORDER BY job_id, name",
        )
        .fetch_all(&self.pool)
        .await?;
        let buckets: Vec<(String, String, i64, i64)> = sql::query_as::<$dialect, _>(
            "SELECT job_id, name, bucket, count FROM job_histograms",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(sums
            .into_iter()
            .map(|(job_id, name, count, sum)| {
                let mut counts = vec![0u64; HISTOGRAM_BUCKETS.len() + 1];
                for (_, _, bucket, n) in buckets
                    .iter()
                    .filter(|(j, m, ..)| *j == job_id && *m == name)
                {
                    if let Some(slot) = counts.get_mut(*bucket as usize) {
                        *slot += *n as u64;
                    }
                }
                JobHistogram {
                    job_id,
                    name,
                    buckets: counts,
                    count: count as u64,
                    sum,
                }
            })
            .collect())
    }

    async fn run_metrics(&self, run_id: &str) -> Result<Vec<RunMetric>> {
        let rows: Vec<(String, i64, String, f64)> = sql::query_as::<$dialect, _>(
            "SELECT task_id, try_id, name, value FROM try_metrics WHERE run_id = ? ORDER BY task_id, try_id, name",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(task_id, try_id, name, value)| RunMetric {
                task_id,
                try_id,
                name,
                value,
            })
            .collect())
    }

    async fn runs_to_clean(&self, filter: &CleanFilter, limit: u32) -> Result<Vec<RunToClean>> {
        // Ended runs oldest first, read in that order from the (end, id) index from where
        // the previous batch stopped, so a batch reads about a batch of rows however many
        // runs the store holds (sorting every ended run took 0.3 s a batch at 110,000
        // runs; a window ranking them all, seconds); never a job's latest scheduled run
        // (the partial index on job and logical date answers that).
        // One job's runs come from its (job, end) index instead.
        let by_end = if filter.job_id.is_some() { "" } else { <$dialect>::BY_END };
        let mut text = format!(
            "SELECT r.run_id, r.job_id, r.ended_at FROM runs r{by_end} \
             WHERE r.state IN ('success', 'failed') AND r.ended_at IS NOT NULL"
        );
        if filter.job_id.is_some() {
            text.push_str(" AND r.job_id = ?");
        }
        if !filter.except_jobs.is_empty() {
            text.push_str(" AND r.job_id NOT IN (");
            text.push_str(&vec!["?"; filter.except_jobs.len()].join(", "));
            text.push(')');
        }
        if filter.ended_before.is_some() {
            text.push_str(" AND r.ended_at < ?");
        }
        if filter.after.is_some() {
            // Where the previous batch stopped: a range of the (end, id) index.
            text.push_str(" AND (r.ended_at, r.run_id) > (?, ?)");
        }
        // Keeping none is no condition.
        let keep_last = filter.keep_last.filter(|keep| *keep > 0);
        if keep_last.is_some() {
            // Older than the job's Nth newest ended run (none when it has N or fewer): a
            // walk of N entries of its (job, end) index. A run ending at the same moment
            // as the Nth newest is kept with it.
            text.push_str(
                " AND r.ended_at < COALESCE((SELECT m.ended_at FROM runs m \
                 WHERE m.job_id = r.job_id AND m.state IN ('success', 'failed') AND m.ended_at IS NOT NULL \
                 ORDER BY m.ended_at DESC LIMIT 1 OFFSET ?), '')",
            );
        }
        text.push_str(
            " AND NOT (r.run_trigger = 'scheduled' AND NOT EXISTS (\
             SELECT 1 FROM runs n WHERE n.job_id = r.job_id AND n.run_trigger <> 'manual' \
             AND n.run_trigger = 'scheduled' AND n.logical_date > r.logical_date))",
        );
        text.push_str(" ORDER BY r.ended_at, r.run_id LIMIT ?");
        let mut query = sql::query_as::<$dialect, (String, String, String)>(&text);
        if let Some(job_id) = &filter.job_id {
            query = query.bind(job_id.clone());
        }
        for job_id in &filter.except_jobs {
            query = query.bind(job_id.clone());
        }
        if let Some(before) = filter.ended_before {
            query = query.bind(ts(before));
        }
        if let Some(after) = &filter.after {
            query = query.bind(ts(after.ended_at)).bind(after.run_id.clone());
        }
        if let Some(keep) = keep_last {
            // OFFSET counts from 0: the Nth newest is at N - 1.
            query = query.bind(i64::from(keep) - 1);
        }
        query
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(|(run_id, job_id, ended_at)| {
                Ok(RunToClean {
                    run_id,
                    job_id,
                    ended_at: parse_ts(&ended_at)?,
                })
            })
            .collect()
    }

    async fn delete_runs(&self, run_ids: &[String]) -> Result<Cleaned> {
        let mut cleaned = Cleaned::default();
        let mut ended_runs = Vec::with_capacity(run_ids.len());
        for run_id in run_ids {
            // Only an ended run; its log lines first, a batch at a time, so no statement
            // holds the store long however much the run printed (a read first: an archived
            // run has none, and asks nothing of the writer).
            let ended: Option<(String,)> = sql::query_as::<$dialect, _>(
                "SELECT run_id FROM runs WHERE run_id = ? AND state IN ('success', 'failed') AND ended_at IS NOT NULL",
            )
            .bind(run_id)
            .fetch_optional(&self.pool)
            .await?;
            if ended.is_none() {
                continue;
            }
            ended_runs.push(run_id);
            let (has_lines,): (bool,) = sql::query_as::<$dialect, (bool,)>(
                "SELECT EXISTS (SELECT 1 FROM log_lines l JOIN tries t ON t.try_id = l.try_id WHERE t.run_id = ?)",
            )
            .bind(run_id)
            .fetch_one(&self.pool)
            .await?;
            while has_lines {
                let deleted = sql::query::<$dialect>(
                    "DELETE FROM log_lines WHERE (try_id, seq) IN (SELECT l.try_id, l.seq FROM log_lines l \
                     JOIN tries t ON t.try_id = l.try_id WHERE t.run_id = ? LIMIT 10000)",
                )
                .bind(run_id)
                .execute(&self.pool)
                .await?
                .rows_affected();
                cleaned.log_lines += deleted;
                if deleted == 0 {
                    break;
                }
            }
        }
        if ended_runs.is_empty() {
            return Ok(cleaned);
        }
        // The runs' rows in one transaction, which takes the write lock at once: one that
        // read first would fail on SQLite when the scheduler wrote in between (`database is
        // locked`, not waited for). Callers pass a few runs at a time (`db clean`: 10).
        let mut tx = self.write_transaction().await?;
        for run_id in ended_runs {
            // Still ended, in the transaction that deletes it (a cleared run runs again).
            let still: Option<(String,)> = sql::query_as::<$dialect, _>(&format!(
                "SELECT run_id FROM runs WHERE run_id = ? AND state IN ('success', 'failed') AND ended_at IS NOT NULL{}",
                <$dialect>::ROW_LOCK
            ))
            .bind(run_id)
            .fetch_optional(&mut *tx)
            .await?;
            if still.is_none() {
                continue;
            }
            sql::query::<$dialect>(
                "DELETE FROM notification_attempts WHERE notification_seq IN (SELECT seq FROM notifications WHERE run_id = ?)",
            )
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
            cleaned.notifications += sql::query::<$dialect>("DELETE FROM notifications WHERE run_id = ?")
                .bind(run_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            // A task's newest state history row stays: it says where its state came from.
            sql::query::<$dialect>(
                "DELETE FROM task_state_history WHERE run_id = ? AND seq < \
                 (SELECT max(h.seq) FROM task_state_history h WHERE h.job_id = task_state_history.job_id \
                  AND h.task_id = task_state_history.task_id)",
            )
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
            for table in [
                "artifacts",
                "try_metrics",
                "log_archives",
                "outputs",
                "run_pending_state",
                "job_events",
            ] {
                sql::query::<$dialect>(&format!("DELETE FROM {table} WHERE run_id = ?"))
                    .bind(run_id)
                    .execute(&mut *tx)
                    .await?;
            }
            cleaned.tries += sql::query::<$dialect>("DELETE FROM tries WHERE run_id = ?")
                .bind(run_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            cleaned.task_instances +=
                sql::query::<$dialect>("DELETE FROM task_instances WHERE run_id = ?")
                    .bind(run_id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            cleaned.runs += sql::query::<$dialect>("DELETE FROM runs WHERE run_id = ?")
                .bind(run_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        Ok(cleaned)
    }

    async fn delete_unused_job_versions(&self) -> Result<u64> {
        Ok(sql::query::<$dialect>(
            "DELETE FROM job_versions WHERE NOT EXISTS (SELECT 1 FROM runs r WHERE r.job_id = job_versions.job_id \
             AND r.job_version = job_versions.version) AND NOT EXISTS (SELECT 1 FROM jobs j \
             WHERE j.job_id = job_versions.job_id AND j.current_version = job_versions.version)",
        )
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    async fn size_bytes(&self) -> Result<u64> {
        self.database_bytes().await
    }

    async fn reclaim_space(&self) -> Result<bool> {
        self.give_space_back().await
    }

    async fn run_objects(&self, run_ids: &[String]) -> Result<RunObjects> {
        let mut objects = RunObjects::default();
        // At most 500 runs a statement (bound parameters are limited).
        for chunk in run_ids.chunks(500) {
            let list = vec!["?"; chunk.len()].join(", ");
            let text = format!("SELECT DISTINCT run_id FROM artifacts WHERE run_id IN ({list}) ORDER BY run_id");
            let mut query = sql::query_as::<$dialect, (String,)>(&text);
            for run_id in chunk {
                query = query.bind(run_id);
            }
            objects
                .with_files
                .extend(query.fetch_all(&self.pool).await?.into_iter().map(|(run_id,)| run_id));
            let text = format!(
                "SELECT run_id, try_id, sha256 FROM log_archives WHERE run_id IN ({list}) ORDER BY try_id"
            );
            let mut query = sql::query_as::<$dialect, (String, i64, String)>(&text);
            for run_id in chunk {
                query = query.bind(run_id);
            }
            objects.archived_logs.extend(query.fetch_all(&self.pool).await?);
        }
        Ok(objects)
    }

    async fn log_totals(&self) -> Result<LogTotals> {
        // Two index seeks a try that still has rows (the tries_logs index finds them).
        let (rows,): (i64,) = sql::query_as::<$dialect, (i64,)>(
            "SELECT CAST(COALESCE(SUM( \
                 (SELECT MAX(seq) FROM log_lines l WHERE l.try_id = t.try_id) \
               - (SELECT MIN(seq) FROM log_lines l WHERE l.try_id = t.try_id) + 1), 0) AS BIGINT) \
             FROM tries t WHERE t.logs IN ('rows', 'deleting')",
        )
        .fetch_one(&self.pool)
        .await?;
        let (archived_lines, archived_bytes): (i64, i64) = sql::query_as::<$dialect, (i64, i64)>(
            "SELECT CAST(COALESCE(SUM(lines), 0) AS BIGINT), CAST(COALESCE(SUM(size), 0) AS BIGINT) \
             FROM log_archives",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(LogTotals {
            rows: rows.max(0) as u64,
            archived_lines: archived_lines.max(0) as u64,
            archived_bytes: archived_bytes.max(0) as u64,
        })
    }

    async fn logs_to_archive(
        &self,
        ended_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<LogToArchive>> {
        let mut found: Vec<LogToArchive> = sql::query_as::<$dialect, (i64, String)>(
            "SELECT try_id, run_id FROM tries WHERE logs = 'deleting' ORDER BY ended_at LIMIT ?",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|(try_id, run_id)| LogToArchive { try_id, run_id, archived: true })
        .collect();
        let left = i64::from(limit) - found.len() as i64;
        if left > 0 {
            found.extend(
                sql::query_as::<$dialect, (i64, String)>(
                    "SELECT try_id, run_id FROM tries WHERE logs = 'rows' AND ended_at IS NOT NULL \
                     AND ended_at < ? AND state <> 'running' ORDER BY ended_at LIMIT ?",
                )
                .bind(ts(ended_before))
                .bind(left)
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .map(|(try_id, run_id)| LogToArchive { try_id, run_id, archived: false }),
            );
        }
        Ok(found)
    }

    async fn record_log_archive(&self, archive: &LogArchiveRecord) -> Result<()> {
        let number = |value: u64, what: &str| {
            i64::try_from(value).map_err(|_| {
                StoreError::Conflict(format!("archived log of try {}: {what} {value} is too large", archive.try_id))
            })
        };
        let frames = serde_json::to_string(&archive.frames)
            .map_err(|e| StoreError::Corrupt(format!("frames of an archived log: {e}")))?;
        let mut tx = self.pool.begin().await?;
        sql::query::<$dialect>(
            "INSERT INTO log_archives (try_id, run_id, size, sha256, lines, raw_bytes, frames, archived_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (try_id) DO UPDATE SET size = excluded.size, sha256 = excluded.sha256, \
             lines = excluded.lines, raw_bytes = excluded.raw_bytes, frames = excluded.frames, \
             archived_at = excluded.archived_at",
        )
        .bind(archive.try_id)
        .bind(&archive.run_id)
        .bind(number(archive.size, "size")?)
        .bind(&archive.sha256)
        .bind(number(archive.lines, "line count")?)
        .bind(number(archive.raw_bytes, "size")?)
        .bind(frames)
        .bind(ts(archive.archived_at))
        .execute(&mut *tx)
        .await?;
        let marked = sql::query::<$dialect>(
            "UPDATE tries SET logs = 'deleting' WHERE try_id = ? AND logs = 'rows'",
        )
        .bind(archive.try_id)
        .execute(&mut *tx)
        .await?;
        if marked.rows_affected() == 0 {
            // Already archived (by another scheduler): its record stands as written.
            return Ok(());
        }
        tx.commit().await?;
        Ok(())
    }

    async fn delete_archived_rows(&self, try_id: i64, batch: u32) -> Result<bool> {
        // The lowest `batch` seqs, by the primary key: a batch never scans the rest.
        let deleted = sql::query::<$dialect>(
            "DELETE FROM log_lines WHERE try_id = ? AND seq < \
             (SELECT coalesce(max(seq), -1) + 1 FROM \
              (SELECT seq FROM log_lines WHERE try_id = ? ORDER BY seq LIMIT ?) AS first)",
        )
        .bind(try_id)
        .bind(try_id)
        .bind(i64::from(batch))
        .execute(&self.pool)
        .await?;
        if deleted.rows_affected() > 0 {
            return Ok(false);
        }
        sql::query::<$dialect>("UPDATE tries SET logs = 'archived' WHERE try_id = ?")
            .bind(try_id)
            .execute(&self.pool)
            .await?;
        Ok(true)
    }

    async fn log_archive(&self, try_id: i64) -> Result<Option<LogArchiveRecord>> {
        let row: Option<(i64, String, i64, String, i64, i64, String, String)> =
            sql::query_as::<$dialect, _>(
                "SELECT try_id, run_id, size, sha256, lines, raw_bytes, frames, archived_at \
                 FROM log_archives WHERE try_id = ?",
            )
            .bind(try_id)
            .fetch_optional(&self.pool)
            .await?;
        let Some((try_id, run_id, size, sha256, lines, raw_bytes, frames, archived_at)) = row
        else {
            return Ok(None);
        };
        let frames: Vec<LogFrame> = serde_json::from_str(&frames)
            .map_err(|e| StoreError::Corrupt(format!("frames of try {try_id}'s archived log: {e}")))?;
        Ok(Some(LogArchiveRecord {
            try_id,
            run_id,
            size: size as u64,
            sha256,
            lines: lines as u64,
            raw_bytes: raw_bytes as u64,
            frames,
            archived_at: parse_ts(&archived_at)?,
        }))
    }

    async fn run_artifacts(&self, run_id: &str) -> Result<Vec<ArtifactRecord>> {
        let rows: Vec<ArtifactRow> = sql::query_as::<$dialect, _>(
            "SELECT a.try_id, a.run_id, a.task_id, t.try_number, a.path, a.size, a.sha256, a.mtime \
             FROM artifacts a JOIN tries t ON t.try_id = a.try_id \
             WHERE a.run_id = ? ORDER BY a.task_id, t.try_number, a.path",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(ArtifactRow::into_record).collect())
    }

    async fn runs_with_artifacts_ended_before(
        &self,
        ended_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sql::query_as::<$dialect, _>(
            "SELECT r.run_id FROM runs r WHERE r.ended_at IS NOT NULL AND r.ended_at < ? \
             AND EXISTS (SELECT 1 FROM artifacts a WHERE a.run_id = r.run_id) \
             ORDER BY r.ended_at LIMIT ?",
        )
        .bind(ts(ended_before))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(run_id,)| run_id).collect())
    }

    async fn delete_run_artifacts(&self, run_id: &str) -> Result<u64> {
        let done = sql::query::<$dialect>("DELETE FROM artifacts WHERE run_id = ?")
            .bind(run_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn set_pending_state(&self, try_id: i64, value: &Value) -> Result<()> {
        sql::query::<$dialect>("UPDATE tries SET pending_state = ? WHERE try_id = ?")
            .bind(value.to_string())
            .bind(try_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn request_cancel(&self, run_id: &str) -> Result<()> {
        let done = sql::query::<$dialect>("UPDATE runs SET cancel_requested = TRUE WHERE run_id = ? AND state IN ('queued', 'running')")
            .bind(run_id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!(
                "run {run_id} has already finished"
            )));
        }
        Ok(())
    }

    async fn clear_task_instances(&self, run_id: &str, task_ids: &[String]) -> Result<()> {
        let mut tx = self.write_transaction().await?;
        for task_id in task_ids {
            let state: Option<String> = sql::query_scalar::<$dialect, _>(
                "SELECT state FROM task_instances WHERE run_id = ? AND task_id = ?",
            )
            .bind(run_id)
            .bind(task_id)
            .fetch_optional(&mut *tx)
            .await?;
            if state.is_none() && Self::clear_expanded(&mut tx, run_id, task_id).await? {
                continue;
            }
            match state.as_deref() {
                None => {
                    return Err(StoreError::NotFound(format!(
                        "task `{task_id}` in run {run_id}"
                    )))
                }
                Some("queued" | "running") => {
                    return Err(StoreError::Conflict(format!(
                        "task `{task_id}` is running in run {run_id}; wait for it or cancel the run"
                    )))
                }
                Some(_) => {}
            }
            sql::query::<$dialect>(
                "UPDATE task_instances SET state = 'none', next_try_at = NULL, ended_at = NULL, \
                 waiting_since = NULL, waiting_reason = NULL, \
                 retry_base = try_number WHERE run_id = ? AND task_id = ?",
            )
            .bind(run_id)
            .bind(task_id)
            .execute(&mut *tx)
            .await?;
        }
        // A finished run runs again (Airflow puts it back to queued).
        sql::query::<$dialect>(
            "UPDATE runs SET state = 'queued', ended_at = NULL, cancel_requested = FALSE \
             WHERE run_id = ? AND state IN ('success', 'failed')",
        )
        .bind(run_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn put_connection(&self, connection: &ConnectionRecord) -> Result<()> {
        let keys = serde_json::to_string(&connection.keys)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        sql::query::<$dialect>(
            "INSERT INTO connections (name, description, keys, sealed, updated_at) VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (name) DO UPDATE SET description = excluded.description, keys = excluded.keys, \
             sealed = excluded.sealed, updated_at = excluded.updated_at",
        )
        .bind(&connection.name)
        .bind(&connection.description)
        .bind(keys)
        .bind(&connection.sealed)
        .bind(ts(Utc::now()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn get_connection(&self, name: &str) -> Result<ConnectionRecord> {
        self.list_connections()
            .await?
            .into_iter()
            .find(|c| c.name == name)
            .ok_or_else(|| StoreError::NotFound(format!("connection `{name}`")))
    }

    async fn list_connections(&self) -> Result<Vec<ConnectionRecord>> {
        let rows: Vec<(String, String, String, Vec<u8>)> =
            sql::query_as::<$dialect, _>("SELECT name, description, keys, sealed FROM connections ORDER BY name")
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter()
            .map(|(name, description, keys, sealed)| {
                let keys = serde_json::from_str(&keys)
                    .map_err(|e| StoreError::Corrupt(format!("connection keys: {e}")))?;
                Ok(ConnectionRecord {
                    name,
                    description,
                    keys,
                    sealed,
                })
            })
            .collect()
    }

    async fn delete_connection(&self, name: &str) -> Result<()> {
        let done = sql::query::<$dialect>("DELETE FROM connections WHERE name = ?")
            .bind(name)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("connection `{name}`")));
        }
        Ok(())
    }

    async fn create_token(&self, name: &str, role: Role, hash: &str) -> Result<TokenRecord> {
        let now = Utc::now();
        let inserted = sql::query::<$dialect>(
            "INSERT INTO tokens (name, role, hash, created_at) VALUES (?, ?, ?, ?) RETURNING id",
        )
        .bind(name)
        .bind(role.as_str())
        .bind(hash)
        .bind(ts(now))
        .fetch_one(&self.pool)
        .await;
        let id: i64 = match inserted {
            Ok(row) => sqlx::Row::try_get(&row, 0)?,
            Err(sqlx::Error::Database(error)) if error.is_unique_violation() => {
                return Err(StoreError::Conflict(format!(
                    "an active token named `{name}` exists; revoke it first"
                )))
            }
            Err(error) => return Err(error.into()),
        };
        Ok(TokenRecord {
            id,
            name: name.to_owned(),
            role,
            created_at: parse_ts(&ts(now))?,
            last_used_at: None,
            revoked_at: None,
        })
    }

    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>> {
        let row: Option<TokenRow> =
            sql::query_as::<$dialect, _>(select_tokens!("WHERE hash = ? AND revoked_at IS NULL"))
                .bind(hash)
                .fetch_optional(&self.pool)
                .await?;
        row.map(token_record).transpose()
    }

    async fn touch_token(&self, id: i64, at: DateTime<Utc>) -> Result<()> {
        sql::query::<$dialect>("UPDATE tokens SET last_used_at = ? WHERE id = ?")
            .bind(ts(at))
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn list_tokens(&self) -> Result<Vec<TokenRecord>> {
        let rows: Vec<TokenRow> = sql::query_as::<$dialect, _>(select_tokens!("ORDER BY id"))
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(token_record).collect()
    }

    async fn revoke_token(&self, name: &str) -> Result<()> {
        let done =
            sql::query::<$dialect>("UPDATE tokens SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL")
                .bind(ts(Utc::now()))
                .bind(name)
                .execute(&self.pool)
                .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("active token `{name}`")));
        }
        Ok(())
    }

    async fn create_session(&self, session: &SessionRecord) -> Result<()> {
        sql::query::<$dialect>(
            "INSERT INTO sessions (id_hash, token_id, csrf, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&session.id_hash)
        .bind(session.token.id)
        .bind(&session.csrf)
        .bind(ts(Utc::now()))
        .bind(ts(session.expires_at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn session(&self, id_hash: &str, now: DateTime<Utc>) -> Result<Option<SessionRecord>> {
        type Row = (
            String,
            String,
            i64,
            String,
            String,
            String,
            Option<String>,
            Option<String>,
        );
        let row: Option<Row> = sql::query_as::<$dialect, _>(
            "SELECT s.csrf, s.expires_at, t.id, t.name, t.role, t.created_at, t.last_used_at, t.revoked_at \
             FROM sessions s JOIN tokens t ON t.id = s.token_id \
             WHERE s.id_hash = ? AND s.expires_at > ? AND t.revoked_at IS NULL",
        )
        .bind(id_hash)
        .bind(ts(now))
        .fetch_optional(&self.pool)
        .await?;
        row.map(
            |(csrf, expires_at, id, name, role, created, used, revoked)| {
                Ok(SessionRecord {
                    id_hash: id_hash.to_owned(),
                    token: token_record((id, name, role, created, used, revoked))?,
                    csrf,
                    expires_at: parse_ts(&expires_at)?,
                })
            },
        )
        .transpose()
    }

    async fn delete_session(&self, id_hash: &str) -> Result<()> {
        sql::query::<$dialect>("DELETE FROM sessions WHERE id_hash = ? OR expires_at < ?")
            .bind(id_hash)
            .bind(ts(Utc::now()))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn list_pools(&self) -> Result<Vec<PoolRecord>> {
        let rows: Vec<(String, i64, String)> =
            sql::query_as::<$dialect, _>("SELECT name, slots, description FROM pools ORDER BY name")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(name, slots, description)| PoolRecord {
                name,
                slots,
                description,
            })
            .collect())
    }

    async fn set_pool(&self, pool: &PoolRecord) -> Result<()> {
        sql::query::<$dialect>(
            "INSERT INTO pools (name, slots, description, updated_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (name) DO UPDATE SET slots = excluded.slots, \
             description = excluded.description, updated_at = excluded.updated_at",
        )
        .bind(&pool.name)
        .bind(pool.slots)
        .bind(&pool.description)
        .bind(ts(Utc::now()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn delete_pool(&self, name: &str) -> Result<()> {
        if name == stevedore_domain::limits::DEFAULT_POOL {
            return Err(StoreError::Conflict(
                "the default pool cannot be deleted".to_owned(),
            ));
        }
        let done = sql::query::<$dialect>("DELETE FROM pools WHERE name = ?")
            .bind(name)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("pool `{name}`")));
        }
        Ok(())
    }

    async fn state_history(
        &self,
        job_id: &str,
        task_id: &str,
        limit: u32,
    ) -> Result<Vec<StateEntry>> {
        let rows: Vec<StateEntryRow> = sql::query_as::<$dialect, StateEntryRow>(
            "SELECT seq, job_id, task_id, value, run_id, action, actor, committed_at \
             FROM task_state_history WHERE job_id = ? AND task_id = ? ORDER BY seq DESC LIMIT ?",
        )
        .bind(job_id)
        .bind(task_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(StateEntryRow::into_record).collect()
    }

    async fn set_committed_state(
        &self,
        job_id: &str,
        task_id: &str,
        value: Option<&Value>,
        actor: &str,
    ) -> Result<StateEntry> {
        let at = ts(Utc::now());
        let text = value.map(Value::to_string);
        let mut tx = self.write_transaction().await?;
        match &text {
            Some(text) => {
                sql::query::<$dialect>(
                    "INSERT INTO task_state (job_id, task_id, value, run_id, updated_at) \
                     VALUES (?, ?, ?, '', ?) ON CONFLICT (job_id, task_id) DO UPDATE SET \
                     value = excluded.value, run_id = excluded.run_id, updated_at = excluded.updated_at",
                )
                .bind(job_id)
                .bind(task_id)
                .bind(text.as_str())
                .bind(at.as_str())
                .execute(&mut *tx)
                .await?;
            }
            None => {
                sql::query::<$dialect>("DELETE FROM task_state WHERE job_id = ? AND task_id = ?")
                    .bind(job_id)
                    .bind(task_id)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        let row: StateEntryRow = sql::query_as::<$dialect, StateEntryRow>(
            "INSERT INTO task_state_history (job_id, task_id, value, run_id, action, actor, committed_at) \
             VALUES (?, ?, ?, NULL, ?, ?, ?) \
             RETURNING seq, job_id, task_id, value, run_id, action, actor, committed_at",
        )
        .bind(job_id)
        .bind(task_id)
        .bind(text.as_deref())
        .bind(if text.is_some() { "set" } else { "clear" })
        .bind(actor)
        .bind(at.as_str())
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        row.into_record()
    }

    async fn committed_state(&self, job_id: &str, task_id: &str) -> Result<Option<Value>> {
        let value: Option<String> =
            sql::query_scalar::<$dialect, _>("SELECT value FROM task_state WHERE job_id = ? AND task_id = ?")
                .bind(job_id)
                .bind(task_id)
                .fetch_optional(&self.pool)
                .await?;
        value.as_deref().map(parse_json).transpose()
    }

    async fn set_waiting(&self, changes: &[(String, String, Option<Waiting>)]) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut tx = self.write_transaction().await?;
        for (run_id, task_id, waiting) in changes {
            match waiting {
                Some(waiting) => {
                    sql::query::<$dialect>(
                        "UPDATE task_instances SET waiting_since = COALESCE(waiting_since, ?), \
                         waiting_reason = ? WHERE run_id = ? AND task_id = ?",
                    )
                    .bind(ts(waiting.since))
                    .bind(&waiting.reason)
                    .bind(run_id)
                    .bind(task_id)
                    .execute(&mut *tx)
                    .await?;
                }
                None => {
                    sql::query::<$dialect>(
                        "UPDATE task_instances SET waiting_since = NULL, waiting_reason = NULL \
                         WHERE run_id = ? AND task_id = ?",
                    )
                    .bind(run_id)
                    .bind(task_id)
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn give_up_waiting(&self, give_up: &GiveUp) -> Result<bool> {
        self.fail_scheduled(give_up, true).await
    }

    async fn fail_before_start(&self, give_up: &GiveUp) -> Result<bool> {
        self.fail_scheduled(give_up, false).await
    }

    async fn expand_task(&self, run_id: &str, task_id: &str, items: &[Value]) -> Result<bool> {
        type Db = <$dialect as Dialect>::DB;
        let count = items.len() as u32;
        let mut tx = self.write_transaction().await?;
        let left = sql::query::<$dialect>(
            "DELETE FROM task_instances WHERE run_id = ? AND task_id = ? \
             AND state IN ('none', 'scheduled')",
        )
        .bind(run_id)
        .bind(task_id)
        .execute(&mut *tx)
        .await?;
        if left.rows_affected() == 0 {
            return Ok(false);
        }
        // Instances an earlier expansion made (an operator cleared the task since).
        let prefix = format!("{task_id}[");
        let existing: Vec<String> = sql::query_scalar::<$dialect, _>(
            "SELECT task_id FROM task_instances WHERE run_id = ? AND substr(task_id, 1, ?) = ?",
        )
        .bind(run_id)
        .bind(prefix.len() as i32)
        .bind(&prefix)
        .fetch_all(&mut *tx)
        .await?;
        let mut reused = std::collections::HashSet::new();
        for key in &existing {
            match stevedore_domain::mapping::split_key(key).1 {
                Some(index) if index < count => {
                    sql::query::<$dialect>(
                        "UPDATE task_instances SET state = 'scheduled', map_item = ?, \
                         next_try_at = NULL, ended_at = NULL, retry_base = try_number \
                         WHERE run_id = ? AND task_id = ?",
                    )
                    .bind(items[index as usize].to_string())
                    .bind(run_id)
                    .bind(key)
                    .execute(&mut *tx)
                    .await?;
                    reused.insert(index);
                }
                _ => {
                    sql::query::<$dialect>(
                        "UPDATE task_instances SET state = 'removed', next_try_at = NULL \
                         WHERE run_id = ? AND task_id = ?",
                    )
                    .bind(run_id)
                    .bind(key)
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        let new: Vec<(String, String)> = (0..count)
            .filter(|index| !reused.contains(index))
            .map(|index| {
                (
                    stevedore_domain::mapping::instance_key(task_id, index),
                    items[index as usize].to_string(),
                )
            })
            .collect();
        for chunk in new.chunks(BULK_ROWS) {
            let mut query = QueryBuilder::<Db>::new(
                "INSERT INTO task_instances (run_id, task_id, state, map_item) ",
            );
            query.push_values(chunk, |mut row, (key, item)| {
                row.push_bind(run_id)
                    .push_bind(key.as_str())
                    .push_bind("scheduled")
                    .push_bind(item.as_str());
            });
            query.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn map_items(
        &self,
        run_id: &str,
        keys: &[String],
    ) -> Result<std::collections::HashMap<String, Value>> {
        type Db = <$dialect as Dialect>::DB;
        let mut items = std::collections::HashMap::new();
        for chunk in keys.chunks(BULK_ROWS) {
            let mut query = QueryBuilder::<Db>::new(
                "SELECT task_id, map_item FROM task_instances WHERE map_item IS NOT NULL AND run_id = ",
            );
            query.push_bind(run_id).push(" AND task_id IN (");
            let mut list = query.separated(", ");
            for key in chunk {
                list.push_bind(key.as_str());
            }
            query.push(")");
            let rows: Vec<(String, String)> = query.build_query_as().fetch_all(&self.pool).await?;
            for (key, text) in rows {
                items.insert(key, parse_json(&text)?);
            }
        }
        Ok(items)
    }

    async fn claim_notifications(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<NotificationRecord>> {
        type Db = <$dialect as Dialect>::DB;
        let now = ts(now);
        let mut tx = self.write_transaction().await?;
        let seqs: Vec<(i64,)> = sql::query_as::<$dialect, _>(&format!(
            "SELECT n.seq FROM notifications n WHERE n.status = 'pending' AND n.next_attempt_at <= ? \
             AND (n.claimed_until IS NULL OR n.claimed_until < ?) \
             AND NOT EXISTS (SELECT 1 FROM notifications e WHERE e.run_id = n.run_id \
             AND e.connection = n.connection AND e.status = 'pending' AND e.seq < n.seq) \
             ORDER BY n.seq LIMIT ?{}",
            <$dialect>::SKIP_LOCKED
        ))
        .bind(&now)
        .bind(&now)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let mut query = QueryBuilder::<Db>::new("UPDATE notifications SET claimed_by = ");
        query
            .push_bind(owner)
            .push(", claimed_until = ")
            .push_bind(ts(until))
            .push(" WHERE seq IN ");
        push_bound_list(&mut query, seqs.iter().map(|(seq,)| *seq));
        query.build().execute(&mut *tx).await?;
        let mut query = QueryBuilder::<Db>::new(format!(
            "SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE seq IN "
        ));
        push_bound_list(&mut query, seqs.iter().map(|(seq,)| *seq));
        query.push(" ORDER BY seq");
        let rows: Vec<NotificationRow> = query.build_query_as().fetch_all(&mut *tx).await?;
        tx.commit().await?;
        rows.into_iter().map(NotificationRow::into_record).collect()
    }

    async fn record_deliveries(
        &self,
        deliveries: &[(i64, NotificationAttempt, DeliveryOutcome)],
    ) -> Result<()> {
        if deliveries.is_empty() {
            return Ok(());
        }
        let mut tx = self.write_transaction().await?;
        for (seq, attempt, outcome) in deliveries {
            let (status, next_attempt_at, delivered_at) = match outcome {
                DeliveryOutcome::Delivered => ("delivered", None, Some(ts(attempt.at))),
                DeliveryOutcome::RetryAt(at) => ("pending", Some(ts(*at)), None),
                DeliveryOutcome::GiveUp => ("failed", None, None),
            };
            // A notification delivered by another scheduler (whose claim had run out) stays
            // delivered whatever this attempt did.
            let attempts: Option<i64> = sql::query_scalar::<$dialect, _>(
                "UPDATE notifications SET attempts = attempts + 1, channel = COALESCE(?, channel), \
                 last_status_code = ?, last_error = ?, claimed_by = NULL, claimed_until = NULL, \
                 status = CASE WHEN status = 'delivered' THEN 'delivered' ELSE ? END, \
                 next_attempt_at = COALESCE(?, next_attempt_at), \
                 delivered_at = COALESCE(delivered_at, ?) WHERE seq = ? RETURNING attempts",
            )
            .bind(attempt.channel.as_deref())
            .bind(attempt.status_code.map(i64::from))
            .bind(attempt.error.as_deref())
            .bind(status)
            .bind(next_attempt_at)
            .bind(delivered_at)
            .bind(*seq)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(number) = attempts else {
                return Err(StoreError::NotFound(format!("notification {seq}")));
            };
            sql::query::<$dialect>(
                "INSERT INTO notification_attempts (notification_seq, attempt, at, channel, ok, \
                 status_code, error, duration_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(*seq)
            .bind(number)
            .bind(ts(attempt.at))
            .bind(attempt.channel.as_deref())
            .bind(attempt.ok)
            .bind(attempt.status_code.map(i64::from))
            .bind(attempt.error.as_deref())
            .bind(attempt.duration_ms.min(i64::MAX as u64) as i64)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn list_notifications(
        &self,
        filter: &NotificationFilter,
    ) -> Result<Vec<NotificationRecord>> {
        type Db = <$dialect as Dialect>::DB;
        let mut query = QueryBuilder::<Db>::new(format!(
            "SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE 1 = 1"
        ));
        if let Some(job_id) = &filter.job_id {
            query.push(" AND job_id = ").push_bind(job_id.clone());
        }
        if let Some(run_id) = &filter.run_id {
            query.push(" AND run_id = ").push_bind(run_id.clone());
        }
        if filter.failed {
            query.push(
                " AND (status = 'failed' OR (status = 'pending' AND attempts > 0))",
            );
        }
        if let Some(before) = filter.before_seq {
            query.push(" AND seq < ").push_bind(before);
        }
        query
            .push(" ORDER BY seq DESC LIMIT ")
            .push_bind(i64::from(filter.limit.max(1)));
        let rows: Vec<NotificationRow> = query.build_query_as().fetch_all(&self.pool).await?;
        rows.into_iter().map(NotificationRow::into_record).collect()
    }

    async fn find_notification(&self, id_or_prefix: &str) -> Result<NotificationRecord> {
        let rows: Vec<NotificationRow> = sql::query_as::<$dialect, NotificationRow>(&format!(
            "SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE id LIKE ? ORDER BY seq LIMIT 2"
        ))
        .bind(format!("{}%", id_or_prefix.replace(['%', '_'], "")))
        .fetch_all(&self.pool)
        .await?;
        match rows.len() {
            0 => Err(StoreError::NotFound(format!("notification `{id_or_prefix}`"))),
            1 => rows.into_iter().next().expect("one row").into_record(),
            _ => Err(StoreError::Ambiguous(format!(
                "`{id_or_prefix}` is the start of more than one notification id; give more of it"
            ))),
        }
    }

    async fn notification_attempts(&self, seq: i64) -> Result<Vec<NotificationAttempt>> {
        sql::query_as::<$dialect, AttemptRow>(
            "SELECT attempt, at, channel, ok, status_code, error, duration_ms \
             FROM notification_attempts WHERE notification_seq = ? ORDER BY attempt",
        )
        .bind(seq)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(AttemptRow::into_record)
        .collect()
    }

    async fn retry_notification(&self, seq: i64, at: DateTime<Utc>) -> Result<()> {
        let done = sql::query::<$dialect>(
            "UPDATE notifications SET status = 'pending', next_attempt_at = ?, claimed_by = NULL, \
             claimed_until = NULL WHERE seq = ?",
        )
        .bind(ts(at))
        .bind(seq)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("notification {seq}")));
        }
        Ok(())
    }

    async fn delivery_counts(&self) -> Result<Vec<(String, bool, u64)>> {
        let rows: Vec<(Option<String>, bool, i64)> = sql::query_as::<$dialect, _>(
            "SELECT channel, ok, count(*) FROM notification_attempts GROUP BY channel, ok \
             ORDER BY channel, ok",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(channel, ok, count)| {
                (channel.unwrap_or_else(|| "none".to_owned()), ok, count.max(0) as u64)
            })
            .collect())
    }
}
    };
}
