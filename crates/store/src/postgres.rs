//! The PostgreSQL store, for several schedulers and servers on one metadata store. The same
//! tables and value formats as the SQLite store (see `migrations/postgres`), so both share
//! their row code (`rows.rs`) and pass the same contract suite.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Postgres, QueryBuilder, SqlSafeStr};
use stevedore_domain::role::Role;
use stevedore_domain::schedule::DataInterval;
use stevedore_domain::state::{RunState, TaskState, TryState};

use crate::rows::*;
use crate::sql_store::{numbered_placeholders, prefixed, push_bound_list, sql, Dialect, BULK_ROWS};
use crate::*;

/// The schema's migrations (`migrations/postgres`, embedded at build time), run by sqlx's
/// migrator: each in its own transaction, every process in turn under sqlx's advisory lock,
/// recorded with its checksum in `_sqlx_migrations` (a changed file is refused). The list is
/// written out rather than read by `sqlx::migrate!`, whose `macros` feature would build
/// sqlx's query macros for nothing.
fn migrator() -> &'static Migrator {
    static MIGRATOR: std::sync::OnceLock<Migrator> = std::sync::OnceLock::new();
    MIGRATOR.get_or_init(|| {
        let migration = |version, description: &'static str, sql: &'static str| {
            Migration::new(
                version,
                description.into(),
                MigrationType::Simple,
                sql.into_sql_str(),
                false,
            )
        };
        let mut migrator = Migrator::with_migrations(vec![
            migration(
                1,
                "init",
                include_str!("../migrations/postgres/0001_init.sql"),
            ),
            migration(
                2,
                "claims",
                include_str!("../migrations/postgres/0002_claims.sql"),
            ),
            migration(
                3,
                "scheduling indexes",
                include_str!("../migrations/postgres/0003_scheduling_indexes.sql"),
            ),
            migration(
                4,
                "artifacts",
                include_str!("../migrations/postgres/0004_artifacts.sql"),
            ),
            migration(
                5,
                "notifications",
                include_str!("../migrations/postgres/0005_notifications.sql"),
            ),
            migration(
                6,
                "state operations",
                include_str!("../migrations/postgres/0006_state_operations.sql"),
            ),
            migration(
                7,
                "task mapping",
                include_str!("../migrations/postgres/0007_task_mapping.sql"),
            ),
            migration(
                8,
                "assets",
                include_str!("../migrations/postgres/0008_assets.sql"),
            ),
            migration(
                9,
                "job events",
                include_str!("../migrations/postgres/0009_job_events.sql"),
            ),
            migration(
                10,
                "log archives",
                include_str!("../migrations/postgres/0010_log_archives.sql"),
            ),
            migration(
                11,
                "metrics",
                include_str!("../migrations/postgres/0011_metrics.sql"),
            ),
            migration(
                12,
                "clean index",
                include_str!("../migrations/postgres/0012_clean_index.sql"),
            ),
        ]);
        // A newer Stevedore may have migrated the database further while this one still
        // runs (a rolling upgrade): its migrations are the newer schema's, not a mismatch.
        migrator.set_ignore_missing(true);
        migrator
    })
}

/// Rows per multi-row INSERT of log lines (5 values each, well under PostgreSQL's 65535
/// parameters).
const LOG_BATCH_ROWS: usize = 1000;

/// Carrying the records of an older database over (see [`PostgresStore::migrate`]) runs
/// under this advisory lock, so processes starting together take turns.
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

    /// Brings the schema up to date: sqlx runs the migrations this build holds that the
    /// database has not had.
    async fn migrate(&self) -> Result<()> {
        self.carry_over_migration_records().await?;
        migrator()
            .run(&self.pool)
            .await
            .map_err(sqlx::Error::from)?;
        Ok(())
    }

    /// A database migrated by Stevedore before sqlx ran its migrations recorded them in
    /// `schema_migrations` (version, time). They are carried over once into sqlx's
    /// `_sqlx_migrations` (the same versions, with the checksums of the files they ran), so
    /// sqlx takes up where the old records end instead of running them again.
    async fn carry_over_migration_records(&self) -> Result<()> {
        let mut tx = self.write_transaction().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *tx)
            .await?;
        let (old, new): (Option<String>, Option<String>) = sqlx::query_as(
            "SELECT to_regclass('schema_migrations')::text, to_regclass('_sqlx_migrations')::text",
        )
        .fetch_one(&mut *tx)
        .await?;
        if old.is_none() || new.is_some() {
            return Ok(());
        }
        // sqlx's own table, as `Migrate::ensure_migrations_table` makes it.
        sqlx::raw_sql(
            "CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, description TEXT NOT NULL, \
             installed_on TIMESTAMPTZ NOT NULL DEFAULT now(), success BOOLEAN NOT NULL, \
             checksum BYTEA NOT NULL, execution_time BIGINT NOT NULL)",
        )
        .execute(&mut *tx)
        .await?;
        let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM schema_migrations")
            .fetch_all(&mut *tx)
            .await?;
        for migration in migrator().iter().filter(|m| applied.contains(&m.version)) {
            sqlx::query(
                "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
                 VALUES ($1, $2, TRUE, $3, 0)",
            )
            .bind(migration.version)
            .bind(migration.description.as_ref())
            .bind(migration.checksum.as_ref())
            .execute(&mut *tx)
            .await?;
        }
        sqlx::raw_sql("DROP TABLE schema_migrations")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(
            versions = ?applied,
            "migration records carried over from schema_migrations to _sqlx_migrations"
        );
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
    const ROW_LOCK: &'static str = " FOR UPDATE";
    const BY_END: &'static str = "";
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
    async fn database_bytes(&self) -> Result<u64> {
        let bytes: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
            .fetch_one(&self.pool)
            .await?;
        Ok(bytes as u64)
    }

    /// PostgreSQL's autovacuum makes freed space reusable; giving it back to the file
    /// system (`VACUUM FULL`) would lock every table, so it is left to the operator.
    async fn give_space_back(&self) -> Result<bool> {
        Ok(false)
    }

    async fn scheduling_lock(&self) -> Result<SchedulingLock> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(SCHEDULING_LOCK)
            .execute(&mut *tx)
            .await?;
        Ok(SchedulingLock::postgres(tx))
    }
}
