//! The embedded SQLite store: one file, WAL mode so the CLI can read while a scheduler writes.

use std::path::Path;

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{AssertSqlSafe, QueryBuilder, Sqlite, SqlitePool};
use stevedore_domain::role::Role;
use stevedore_domain::schedule::DataInterval;
use stevedore_domain::state::{RunState, TaskState, TryState};

use crate::rows::*;
use crate::sql_store::{prefixed, push_bound_list, sql, Dialect, BULK_ROWS};
use crate::*;

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/sqlite/0001_init.sql")),
    (2, include_str!("../migrations/sqlite/0002_pools.sql")),
    (
        3,
        include_str!("../migrations/sqlite/0003_operator_actions.sql"),
    ),
    (4, include_str!("../migrations/sqlite/0004_connections.sql")),
    (
        5,
        include_str!("../migrations/sqlite/0005_run_pending_state.sql"),
    ),
    (6, include_str!("../migrations/sqlite/0006_tokens.sql")),
    (7, include_str!("../migrations/sqlite/0007_sessions.sql")),
    (8, include_str!("../migrations/sqlite/0008_claims.sql")),
    (
        9,
        include_str!("../migrations/sqlite/0009_scheduling_indexes.sql"),
    ),
    (10, include_str!("../migrations/sqlite/0010_artifacts.sql")),
    (
        11,
        include_str!("../migrations/sqlite/0011_notifications.sql"),
    ),
    (
        12,
        include_str!("../migrations/sqlite/0012_state_operations.sql"),
    ),
    (
        13,
        include_str!("../migrations/sqlite/0013_task_mapping.sql"),
    ),
    (14, include_str!("../migrations/sqlite/0014_assets.sql")),
    (15, include_str!("../migrations/sqlite/0015_job_events.sql")),
    (
        16,
        include_str!("../migrations/sqlite/0016_log_archives.sql"),
    ),
    (17, include_str!("../migrations/sqlite/0017_metrics.sql")),
    (
        18,
        include_str!("../migrations/sqlite/0018_clean_index.sql"),
    ),
];

/// Rows per multi-row INSERT of log lines (5 values each, well under SQLite's 32766).
const LOG_BATCH_ROWS: usize = 1000;

#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

/// Held by the one scheduler a SQLite store allows: an exclusive lock on the file
/// `<store>.scheduler.lock` beside the store, released when the process ends, however it
/// ends (so a crashed scheduler never blocks the next one).
#[derive(Debug)]
pub struct SchedulerLock {
    _file: std::fs::File,
    pub path: std::path::PathBuf,
}

/// Creates `path` empty with owner-only permissions unless it exists.
fn create_private_file(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(error),
    }
}

impl SqliteStore {
    /// Takes the scheduler lock of the store at `db`, or says who holds it.
    pub fn lock_scheduler(db: impl AsRef<Path>) -> Result<SchedulerLock> {
        use std::io::{Read, Seek, Write};
        let db = db.as_ref();
        let path = db.with_extension("scheduler.lock");
        let io = |e: std::io::Error| StoreError::Database(sqlx::Error::Io(e));
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&path).map_err(io)?;
        match file.try_lock() {
            Ok(()) => {
                file.set_len(0).map_err(io)?;
                file.rewind().map_err(io)?;
                write!(file, "{}", std::process::id()).map_err(io)?;
                Ok(SchedulerLock { _file: file, path })
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                Err(StoreError::Conflict(format!(
                    "another scheduler (pid {}) is running on the store {}: a SQLite store allows one scheduler at a time (stop that one, or use PostgreSQL to run several)",
                    holder.trim(),
                    db.display()
                )))
            }
            Err(std::fs::TryLockError::Error(error)) => Err(io(error)),
        }
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and migrates it. A new store file
    /// is created readable by its owner only (0600): it holds sealed connections, token
    /// hashes and every try's log lines. SQLite gives its `-wal` and `-shm` files the
    /// database file's permissions.
    pub async fn open(path: impl AsRef<Path>) -> Result<SqliteStore> {
        let path = path.as_ref();
        create_private_file(path).map_err(|e| StoreError::Database(sqlx::Error::Io(e)))?;
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            // A new store gives freed pages back to the file system on `reclaim_space`
            // (`db clean`, the retention); an older one keeps its mode and reuses them.
            .auto_vacuum(sqlx::sqlite::SqliteAutoVacuum::Incremental)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(false)
            // A scheduling pass reads every active run's task instances: with SQLite's
            // default 2 MB page cache it read them again from the file each time. 16 MB per
            // connection, the file mapped for reads, sorts in memory.
            .pragma("cache_size", "-16384")
            .pragma("mmap_size", "268435456")
            .pragma("temp_store", "memory")
            // A WAL grown by a big write (a clean's vacuum) is cut back to 64 MiB when it
            // restarts after a checkpoint, instead of keeping its largest size.
            .pragma("journal_size_limit", "67108864");
        // Two processes opening a brand-new file at once (a scheduler and the CLI) race to
        // switch it to WAL, which SQLite refuses without waiting: try again briefly.
        let mut delay = Duration::from_millis(50);
        for attempt in 1.. {
            let opened = async {
                let pool = SqlitePoolOptions::new()
                    .max_connections(4)
                    .connect_with(options.clone())
                    .await?;
                let store = SqliteStore { pool };
                store.migrate().await?;
                Ok::<_, StoreError>(store)
            }
            .await;
            match opened {
                Err(StoreError::Database(sqlx::Error::Database(error)))
                    if attempt < 20 && error.message().contains("database is locked") =>
                {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
                other => return other,
            }
        }
        unreachable!("the loop returns")
    }

    /// A transaction that takes the write lock at once (`BEGIN IMMEDIATE`). A deferred
    /// transaction that reads first and writes later fails with `database is locked` when
    /// another connection wrote in between, without waiting: SQLite cannot upgrade its
    /// stale read snapshot.
    async fn write_transaction(&self) -> Result<sqlx::Transaction<'static, Sqlite>> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    async fn migrate(&self) -> Result<()> {
        let mut tx = self.write_transaction().await?;
        // An IMMEDIATE-like write first, so two processes opening a fresh file serialize here.
        sqlx::query("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
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
            sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)")
                .bind(version)
                .bind(ts(Utc::now()))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// SQLite's side of the shared statements: they are written in its syntax already.
pub(crate) struct SqliteDialect;

impl Dialect for SqliteDialect {
    type DB = Sqlite;
    const TASK_ORDER: &'static str = "rowid";
    // One writer at a time (`BEGIN IMMEDIATE`): no row locks needed.
    const SHARE_LOCK: &'static str = "";
    const SKIP_LOCKED: &'static str = "";
    const ROW_LOCK: &'static str = "";
    const BY_END: &'static str = " INDEXED BY runs_ended";
    // One writer at a time: a second would only wait for the lock.
    const WRITE_CONCURRENCY: usize = 1;

    fn sql(text: &str) -> String {
        text.to_owned()
    }
}

sql_store!(SqliteStore, SqliteDialect);

impl SqliteStore {
    /// The file's pages (free ones included) and its write-ahead log.
    async fn database_bytes(&self) -> Result<u64> {
        let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
            .fetch_one(&self.pool)
            .await?;
        let page_size: i64 = sqlx::query_scalar("PRAGMA page_size")
            .fetch_one(&self.pool)
            .await?;
        let file: Option<String> =
            sqlx::query_scalar("SELECT file FROM pragma_database_list WHERE name = 'main'")
                .fetch_optional(&self.pool)
                .await?;
        let wal = file
            .and_then(|file| std::fs::metadata(format!("{file}-wal")).ok())
            .map_or(0, |meta| meta.len());
        Ok((pages * page_size) as u64 + wal)
    }

    /// Frees pages back to the file system when the store has incremental auto-vacuum
    /// (every store created since it existed); an older store reuses them instead.
    async fn give_space_back(&self) -> Result<bool> {
        let mode: i64 = sqlx::query_scalar("PRAGMA auto_vacuum")
            .fetch_one(&self.pool)
            .await?;
        if mode != 2 {
            return Ok(false);
        }
        // A thousand pages at a time (4 MiB): no single statement holds the writer long.
        // Bounded by the pages free at the start: a scheduler writing meanwhile frees
        // pages of its own, and the loop must not chase them.
        let free_pages = || async {
            sqlx::query_scalar::<_, i64>("PRAGMA freelist_count")
                .fetch_one(&self.pool)
                .await
        };
        let mut free = free_pages().await?;
        for _ in 0..free / 1000 + 2 {
            if free == 0 {
                break;
            }
            sqlx::query("PRAGMA incremental_vacuum(1000)")
                .execute(&self.pool)
                .await?;
            let left = free_pages().await?;
            if left >= free {
                break;
            }
            free = left;
        }
        // The vacuumed pages go back to the file as the WAL is checkpointed, and the WAL
        // itself is cut to nothing: new writers wait while it is pending (a scheduler's
        // transaction or two); a WAL still in use is left as it is (`journal_size_limit`
        // cuts it when it restarts).
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.pool)
            .await?;
        Ok(true)
    }

    /// One scheduler per SQLite store: nobody to take turns with.
    async fn scheduling_lock(&self) -> Result<SchedulingLock> {
        Ok(SchedulingLock::none())
    }
}
