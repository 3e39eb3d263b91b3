//! The PostgreSQL store, for several schedulers and servers on one metadata store. The same
//! tables and value formats as the SQLite store (see `migrations/postgres`), so both share
//! their row code (`rows.rs`) and pass the same contract suite.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Postgres, QueryBuilder};
use stevedore_domain::role::Role;
use stevedore_domain::schedule::DataInterval;
use stevedore_domain::state::{RunState, TaskState, TryState};

use crate::rows::*;
use crate::sql_store::{numbered_placeholders, push_bound_list, sql, Dialect, BULK_ROWS};
use crate::*;

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/postgres/0001_init.sql")),
    (2, include_str!("../migrations/postgres/0002_claims.sql")),
    (
        3,
        include_str!("../migrations/postgres/0003_scheduling_indexes.sql"),
    ),
];

/// Rows per multi-row INSERT of log lines (5 values each, well under PostgreSQL's 65535
/// parameters).
const LOG_BATCH_ROWS: usize = 1000;

/// Migrations run under this advisory lock, so processes starting together take turns.
const MIGRATION_LOCK: i64 = 0x5374_6576_6564_6f72;

#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/database`) and
    /// migrates it.
    pub async fn open(url: &str) -> Result<PostgresStore> {
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(std::time::Duration::from_secs(30))
            .connect(url)
            .await?;
        let store = PostgresStore { pool };
        store.migrate().await?;
        Ok(store)
    }

    async fn write_transaction(&self) -> Result<sqlx::Transaction<'static, Postgres>> {
        Ok(self.pool.begin().await?)
    }

    async fn migrate(&self) -> Result<()> {
        let mut tx = self.write_transaction().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *tx)
            .await?;
        sqlx::query("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at TEXT NOT NULL)")
            .execute(&mut *tx)
            .await?;
        let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM schema_migrations")
            .fetch_all(&mut *tx)
            .await?;
        for (version, sql) in MIGRATIONS {
            if applied.contains(version) {
                continue;
            }
            sqlx::raw_sql(AssertSqlSafe(*sql)).execute(&mut *tx).await?;
            sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
                .bind(version)
                .bind(ts(Utc::now()))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// PostgreSQL's side of the shared statements: numbered placeholders.
pub(crate) struct PostgresDialect;

impl Dialect for PostgresDialect {
    type DB = Postgres;
    const TASK_ORDER: &'static str = "position";
    const SHARE_LOCK: &'static str = " FOR SHARE";
    const SKIP_LOCKED: &'static str = " FOR UPDATE SKIP LOCKED";
    // Measured with the scheduling benchmark: two writers 6,700-7,100 task instances/s,
    // one 5,200-5,500, three no better than two.
    const WRITE_CONCURRENCY: usize = 2;

    fn sql(text: &str) -> String {
        numbered_placeholders(text)
    }
}

sql_store!(PostgresStore, PostgresDialect);

/// The advisory lock schedulers take turns on while a pass decides.
const SCHEDULING_LOCK: i64 = 0x5374_6576_5061_7373;

impl PostgresStore {
    async fn scheduling_lock(&self) -> Result<SchedulingLock> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(SCHEDULING_LOCK)
            .execute(&mut *tx)
            .await?;
        Ok(SchedulingLock::postgres(tx))
    }
}
