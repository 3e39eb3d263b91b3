//! The `Store` implementation both SQL stores share, written once: the statements use
//! SQLite's `?` placeholders, and each store's [`Dialect`] turns them into its own (`$1` for
//! PostgreSQL) and says the little else that differs.

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

    /// A write transaction that only the holder of `fence` gets: refused when `fence` no
    /// longer holds the run's claim. The run's row stays share-locked until the transaction
    /// ends, so a takeover waits for the write it fences.
    async fn fenced_transaction(
        &self,
        fence: Option<&Fence>,
    ) -> Result<sqlx::Transaction<'static, <$dialect as Dialect>::DB>> {
        let mut tx = self.write_transaction().await?;
        let Some(fence) = fence else {
            return Ok(tx);
        };
        let token: Option<i64> = sql::query_scalar::<$dialect, _>(&format!(
            "SELECT fence FROM runs WHERE run_id = ?{}",
            <$dialect as Dialect>::SHARE_LOCK
        ))
        .bind(&fence.run_id)
        .fetch_optional(&mut *tx)
        .await?;
        if token == Some(fence.token) {
            return Ok(tx);
        }
        // Roll back now: a dropped transaction would keep the row lock until its connection
        // is next used, and claims skip locked rows.
        tx.rollback().await?;
        match token {
            None => Err(StoreError::NotFound(format!("run {}", fence.run_id))),
            Some(token) => Err(StoreError::Fenced(format!(
                "run {} was taken over by another scheduler (its claim is at fencing token {token}; this scheduler held {})",
                fence.run_id, fence.token
            ))),
        }
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
        };
        let mut tx = self.write_transaction().await?;
        let inserted = sql::query::<$dialect>(&(format!(
            "INSERT INTO runs ({RUN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, FALSE)"
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
        .execute(&mut *tx)
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
        for task_id in &run.task_ids {
            sql::query::<$dialect>(
                "INSERT INTO task_instances (run_id, task_id, state) VALUES (?, ?, 'none')",
            )
            .bind(&record.run_id)
            .bind(task_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(record)
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
            query.push(" AND state IN (");
            let mut separated = query.separated(", ");
            for state in &filter.states {
                separated.push_bind(state.as_str());
            }
            query.push(")");
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

    async fn set_run_state(&self, run_id: &str, state: RunState, at: DateTime<Utc>) -> Result<()> {
        let sql = match state {
            RunState::Queued => "UPDATE runs SET state = ?, ended_at = NULL WHERE run_id = ? AND ? IS NOT NULL",
            RunState::Running => {
                "UPDATE runs SET state = ?, started_at = COALESCE(started_at, ?3), ended_at = NULL WHERE run_id = ?2"
            }
            RunState::Success | RunState::Failed => "UPDATE runs SET state = ?, ended_at = ?3 WHERE run_id = ?2",
        };
        let mut tx = self.write_transaction().await?;
        sql::query::<$dialect>(sql)
            .bind(state.as_str())
            .bind(run_id)
            .bind(ts(at))
            .execute(&mut *tx)
            .await?;
        // The run's tries' state becomes the jobs' state only if the run succeeded.
        if state == RunState::Success {
            sql::query::<$dialect>(
                "INSERT INTO task_state (job_id, task_id, value, run_id, updated_at) \
                 SELECT runs.job_id, p.task_id, p.value, p.run_id, ? FROM run_pending_state p \
                 JOIN runs ON runs.run_id = p.run_id WHERE p.run_id = ? \
                 ON CONFLICT (job_id, task_id) DO UPDATE SET value = excluded.value, \
                 run_id = excluded.run_id, updated_at = excluded.updated_at",
            )
            .bind(ts(at))
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
        }
        if state.is_finished() {
            sql::query::<$dialect>("DELETE FROM run_pending_state WHERE run_id = ?")
                .bind(run_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
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

    async fn adopt_version(
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
            "SELECT run_id, task_id, state, try_number, next_try_at, started_at, ended_at, retry_base \
             FROM task_instances WHERE run_id = ? ORDER BY {}",
            <$dialect>::TASK_ORDER
        ))
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(TaskInstanceRow::into_record)
        .collect()
    }

    async fn active_task_instances(&self) -> Result<Vec<TaskInstanceRecord>> {
        sql::query_as::<$dialect, TaskInstanceRow>(&format!(
            "SELECT ti.run_id, ti.task_id, ti.state, ti.try_number, ti.next_try_at, ti.started_at, \
             ti.ended_at, ti.retry_base FROM task_instances ti JOIN runs r ON r.run_id = ti.run_id \
             WHERE r.state IN ('queued', 'running') ORDER BY ti.run_id, ti.{}",
            <$dialect>::TASK_ORDER
        ))
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(TaskInstanceRow::into_record)
        .collect()
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
        if changes.is_empty() {
            return Ok(());
        }
        let mut tx = self.write_transaction().await?;
        for (run_id, task_id, state) in changes {
            let ended = state.is_finished().then(|| ts(at));
            sql::query::<$dialect>(
                "UPDATE task_instances SET state = ?, ended_at = COALESCE(?, ended_at), \
                 next_try_at = CASE WHEN ? IN ('up_for_retry', 'up_for_reschedule') THEN next_try_at ELSE NULL END \
                 WHERE run_id = ? AND task_id = ?",
            )
            .bind(state.as_str())
            .bind(ended)
            .bind(state.as_str())
            .bind(run_id)
            .bind(task_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn start_try_fenced(
        &self,
        key: &TryKey,
        backend: &str,
        image_ref: &str,
        at: DateTime<Utc>,
        fence: Option<&Fence>,
    ) -> Result<TryRecord> {
        let mut tx = self.fenced_transaction(fence).await?;
        let inserted = sql::query::<$dialect>(
            "INSERT INTO tries (run_id, task_id, try_number, backend, image_ref, state, started_at) \
             VALUES (?, ?, ?, ?, ?, 'running', ?) RETURNING try_id",
        )
        .bind(&key.run_id)
        .bind(&key.task_id)
        .bind(i64::from(key.try_number))
        .bind(backend)
        .bind(image_ref)
        .bind(ts(at))
        .fetch_one(&mut *tx)
        .await;
        let try_id: i64 = match inserted {
            Ok(row) => sqlx::Row::try_get(&row, 0)?,
            Err(sqlx::Error::Database(error)) if error.is_unique_violation() => {
                tx.rollback().await?;
                return Err(StoreError::Conflict(format!(
                    "try {} of task `{}` in run {} already exists",
                    key.try_number, key.task_id, key.run_id
                )));
            }
            Err(error) => return Err(error.into()),
        };
        sql::query::<$dialect>(
            "UPDATE task_instances SET state = 'running', try_number = ?, next_try_at = NULL, \
             started_at = COALESCE(started_at, ?), ended_at = NULL WHERE run_id = ? AND task_id = ?",
        )
        .bind(i64::from(key.try_number))
        .bind(ts(at))
        .bind(&key.run_id)
        .bind(&key.task_id)
        .execute(&mut *tx)
        .await?;
        sql::query::<$dialect>("DELETE FROM outputs WHERE run_id = ? AND task_id = ?")
            .bind(&key.run_id)
            .bind(&key.task_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(TryRecord {
            try_id,
            run_id: key.run_id.clone(),
            task_id: key.task_id.clone(),
            try_number: key.try_number,
            backend: backend.to_owned(),
            container_id: None,
            image_ref: image_ref.to_owned(),
            image_digest: None,
            state: TryState::Running,
            started_at: parse_ts(&ts(at))?,
            ended_at: None,
            exit_code: None,
            failure_reason: None,
        })
    }

    async fn set_try_container_fenced(
        &self,
        try_id: i64,
        container_id: &str,
        image_digest: Option<&str>,
        log_seq: i64,
        fence: Option<&Fence>,
    ) -> Result<()> {
        let mut tx = self.fenced_transaction(fence).await?;
        sql::query::<$dialect>(
            "UPDATE tries SET container_id = ?, image_digest = COALESCE(?, image_digest), \
             container_seq = COALESCE(container_seq, ?) WHERE try_id = ?",
        )
        .bind(container_id)
        .bind(image_digest)
        .bind(log_seq)
        .bind(try_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn finish_try_fenced(&self, finish: &TryFinish, fence: Option<&Fence>) -> Result<()> {
        let mut tx = self.fenced_transaction(fence).await?;
        let row: Option<(String, String, Option<String>)> =
            sql::query_as::<$dialect, _>("SELECT run_id, task_id, pending_state FROM tries WHERE try_id = ?")
                .bind(finish.try_id)
                .fetch_optional(&mut *tx)
                .await?;
        let (run_id, task_id, pending_state) =
            row.ok_or_else(|| StoreError::NotFound(format!("try {}", finish.try_id)))?;
        sql::query::<$dialect>(
            "UPDATE tries SET state = ?, ended_at = ?, exit_code = ?, failure_reason = ?, pending_state = NULL \
             WHERE try_id = ?",
        )
        .bind(finish.state.as_str())
        .bind(ts(finish.ended_at))
        .bind(finish.exit_code)
        .bind(&finish.failure_reason)
        .bind(finish.try_id)
        .execute(&mut *tx)
        .await?;
        let ended = finish.task_state.is_finished().then(|| ts(finish.ended_at));
        sql::query::<$dialect>(
            "UPDATE task_instances SET state = ?, next_try_at = ?, ended_at = ? WHERE run_id = ? AND task_id = ?",
        )
        .bind(finish.task_state.as_str())
        .bind(finish.next_try_at.map(ts))
        .bind(ended)
        .bind(&run_id)
        .bind(&task_id)
        .execute(&mut *tx)
        .await?;
        if let (TryState::Success, Some(state)) = (finish.state, pending_state) {
            sql::query::<$dialect>(
                "INSERT INTO run_pending_state (run_id, task_id, value) VALUES (?, ?, ?) \
                 ON CONFLICT (run_id, task_id) DO UPDATE SET value = excluded.value",
            )
            .bind(&run_id)
            .bind(&task_id)
            .bind(state)
            .execute(&mut *tx)
            .await?;
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
        sql::query_as::<$dialect, TryRow>(&(format!(
            "SELECT {TRY_COLUMNS} FROM tries WHERE state = 'running'"
        )))
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(TryRow::into_record)
        .collect()
    }

    async fn append_logs_fenced(&self, lines: &[LogLine], fence: Option<&Fence>) -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut tx = self.fenced_transaction(fence).await?;
        for chunk in lines.chunks(LOG_BATCH_ROWS) {
            let mut query = QueryBuilder::<<$dialect as Dialect>::DB>::new(
                "INSERT INTO log_lines (try_id, seq, stream, ts, text) ",
            );
            query.push_values(chunk, |mut row, line| {
                row.push_bind(line.try_id)
                    .push_bind(line.seq)
                    .push_bind(line.stream.code())
                    .push_bind(line.timestamp.timestamp_micros())
                    .push_bind(line.text.as_str());
            });
            query.build().persistent(true).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
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
            for run_id in claimable {
                sql::query::<$dialect>("UPDATE runs SET owner = ?, fence = fence + 1 WHERE run_id = ?")
                    .bind(id)
                    .bind(&run_id)
                    .execute(&mut *tx)
                    .await?;
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
        sql::query::<$dialect>("UPDATE runs SET owner = NULL, fence = fence + 1 WHERE owner = ?")
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

    async fn logs(&self, try_id: i64, after: Option<i64>, limit: u32) -> Result<Vec<LogLine>> {
        sql::query_as::<$dialect, LogRow>(
            "SELECT try_id, seq, stream, ts, text FROM log_lines WHERE try_id = ? AND seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(try_id)
        .bind(after.unwrap_or(-1))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(LogRow::into_line)
        .collect()
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

    async fn committed_state(&self, job_id: &str, task_id: &str) -> Result<Option<Value>> {
        let value: Option<String> =
            sql::query_scalar::<$dialect, _>("SELECT value FROM task_state WHERE job_id = ? AND task_id = ?")
                .bind(job_id)
                .bind(task_id)
                .fetch_optional(&self.pool)
                .await?;
        value.as_deref().map(parse_json).transpose()
    }
}
    };
}
