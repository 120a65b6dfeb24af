//! The store: one schema on SQLite (the embedded default: a file in the data directory) or
//! PostgreSQL (several servers sharing state).
//!
//! Both backends run the same migrations and the same SQL text: the schema uses only types
//! both accept (TEXT, BIGINT, BOOLEAN) and queries use `$N` placeholders, which sqlx binds by
//! number on SQLite too. Pools stay typed (no `sqlx::Any`), so each backend keeps its own
//! options — WAL, a busy timeout and `BEGIN IMMEDIATE` write transactions on SQLite — and the
//! few statements that differ (row locks) branch on [`Backend`]. The [`on_db!`] and
//! [`on_tx!`] macros expand one query body once per backend.
//!
//! Only one server may use a SQLite file: [`Db::open`] takes an exclusive lock on
//! `FILE.lock` and holds it while the store lives; a second server fails to start.

pub mod audit;
pub mod backups;
pub mod fleet;
pub mod idempotency;
pub mod identity;
pub mod jobs;
pub mod tenancy;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, Postgres, Sqlite, SqlitePool, Transaction};

/// The migrations, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Why the store could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database URL {url:?} is neither sqlite: nor postgres:")]
    UnsupportedUrl { url: String },
    #[error("cannot parse database URL")]
    ParseUrl(#[source] sqlx::Error),
    #[error("cannot create the database directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the lock file {path}")]
    OpenLock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another server is using {path} (it holds {path}.lock)")]
    InUse { path: PathBuf },
    #[error("cannot connect to the database")]
    Connect(#[source] sqlx::Error),
    #[error("cannot apply the database migrations")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error("database query failed")]
    Query(#[from] sqlx::Error),
    #[error("cannot decode what the database returned: {0}")]
    Decode(String),
}

impl StoreError {
    /// Whether the query failed on a unique constraint (a duplicate name, say).
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, StoreError::Query(sqlx::Error::Database(e)) if e.is_unique_violation())
    }
}

/// Which database a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// A pool on one of the two backends.
#[derive(Debug, Clone)]
pub enum Db {
    Sqlite(SqlitePool, Arc<FileLock>),
    Postgres(PgPool),
}

/// An open write transaction.
#[derive(Debug)]
pub enum Tx {
    Sqlite(Transaction<'static, Sqlite>),
    Postgres(Transaction<'static, Postgres>),
}

/// Runs `$body` with `$pool` bound to the typed pool of whichever backend `$db` is.
#[macro_export]
macro_rules! on_db {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::store::Db::Sqlite($pool, _) => $body,
            $crate::store::Db::Postgres($pool) => $body,
        }
    };
}

/// Runs `$body` with `$conn` bound to the connection of the transaction `$tx`.
#[macro_export]
macro_rules! on_tx {
    ($tx:expr, $conn:ident => $body:expr) => {
        match $tx {
            $crate::store::Tx::Sqlite(t) => {
                let $conn = &mut **t;
                $body
            }
            $crate::store::Tx::Postgres(t) => {
                let $conn = &mut **t;
                $body
            }
        }
    };
}

/// The exclusive lock a SQLite store holds on `FILE.lock` while open.
#[derive(Debug)]
pub struct FileLock {
    _file: std::fs::File,
}

impl Db {
    /// Opens the database at `url` (`sqlite://PATH` or `postgres://…`) and applies the
    /// migrations.
    pub async fn open(url: &str) -> Result<Db, StoreError> {
        let db = if url.starts_with("sqlite:") {
            Self::open_sqlite(url).await?
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Self::open_postgres(url).await?
        } else {
            return Err(StoreError::UnsupportedUrl { url: redact(url) });
        };
        on_db!(&db, pool => MIGRATOR.run(pool).await).map_err(StoreError::Migrate)?;
        tracing::info!(backend = db.backend().as_str(), "store ready");
        Ok(db)
    }

    /// The SQLite URL of a database file.
    pub fn sqlite_url(path: &Path) -> String {
        format!("sqlite://{}", path.display())
    }

    async fn open_sqlite(url: &str) -> Result<Db, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(StoreError::ParseUrl)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // With WAL, NORMAL loses no committed transaction on a process crash, only
            // (possibly) the last ones on a power loss; FULL makes each commit durable.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let path = options.get_filename().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let lock = lock_file(&path)?;
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .map_err(StoreError::Connect)?;
        Ok(Db::Sqlite(pool, Arc::new(lock)))
    }

    async fn open_postgres(url: &str) -> Result<Db, StoreError> {
        let options = PgConnectOptions::from_str(url).map_err(StoreError::ParseUrl)?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(StoreError::Connect)?;
        Ok(Db::Postgres(pool))
    }

    pub fn backend(&self) -> Backend {
        match self {
            Db::Sqlite(..) => Backend::Sqlite,
            Db::Postgres(_) => Backend::Postgres,
        }
    }

    /// Starts a write transaction. On SQLite it takes the write lock at once (`BEGIN
    /// IMMEDIATE`), so a transaction that reads then writes never fails to upgrade its lock.
    pub async fn begin(&self) -> Result<Tx, StoreError> {
        Ok(match self {
            Db::Sqlite(pool, _) => Tx::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?),
            Db::Postgres(pool) => Tx::Postgres(pool.begin().await?),
        })
    }

    /// Closes every connection (the SQLite lock goes when the last clone is dropped).
    pub async fn close(&self) {
        on_db!(self, pool => pool.close().await)
    }
}

impl Tx {
    pub async fn commit(self) -> Result<(), StoreError> {
        match self {
            Tx::Sqlite(t) => t.commit().await?,
            Tx::Postgres(t) => t.commit().await?,
        }
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        match self {
            Tx::Sqlite(_) => Backend::Sqlite,
            Tx::Postgres(_) => Backend::Postgres,
        }
    }
}

fn lock_file(db: &Path) -> Result<FileLock, StoreError> {
    use fs4::fs_std::FileExt;
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    let path = PathBuf::from(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| StoreError::OpenLock {
            path: path.clone(),
            source,
        })?;
    match file.try_lock_exclusive() {
        Ok(true) => Ok(FileLock { _file: file }),
        Ok(false) => Err(StoreError::InUse {
            path: db.to_path_buf(),
        }),
        Err(source) => Err(StoreError::OpenLock { path, source }),
    }
}

/// A database URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &creds[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Writes a small file so that it holds either its old or its new content, whatever
/// happens: a temporary file, fsync, rename, fsync of the directory.
pub fn write_atomically(path: &Path, content: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(content)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

/// The schema as the database reports it (tables, columns, indexes; not the migration
/// bookkeeping), one item per line: what a test compares with the committed schema files.
pub async fn schema(db: &Db) -> Result<String, StoreError> {
    let lines: Vec<String> = match db {
        Db::Sqlite(pool, _) => {
            let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
                "SELECT type, name, sql FROM sqlite_master \
                 WHERE name NOT LIKE 'sqlite_%' AND name NOT LIKE '_sqlx%' ORDER BY type, name",
            )
            .fetch_all(pool)
            .await?;
            rows.into_iter()
                .map(|(kind, name, sql)| {
                    let sql = sql.unwrap_or_else(|| "(automatic)".into());
                    let sql = sql.split_whitespace().collect::<Vec<_>>().join(" ");
                    format!("{kind} {name}: {sql}")
                })
                .collect()
        }
        Db::Postgres(pool) => {
            let cols: Vec<(String, String, String, String, Option<String>)> = sqlx::query_as(
                "SELECT table_name::text, column_name::text, data_type::text, is_nullable::text, \
                 column_default::text FROM information_schema.columns \
                 WHERE table_schema = 'public' AND table_name NOT LIKE '_sqlx%' \
                 ORDER BY table_name, ordinal_position",
            )
            .fetch_all(pool)
            .await?;
            let idx: Vec<(String, String)> = sqlx::query_as(
                "SELECT indexname::text, indexdef::text FROM pg_indexes \
                 WHERE schemaname = 'public' AND tablename NOT LIKE '_sqlx%' ORDER BY indexname",
            )
            .fetch_all(pool)
            .await?;
            let cons: Vec<(String, String, String)> = sqlx::query_as(
                "SELECT conrelid::regclass::text, conname::text, pg_get_constraintdef(oid) \
                 FROM pg_constraint WHERE connamespace = 'public'::regnamespace \
                 AND conrelid::regclass::text NOT LIKE '_sqlx%' ORDER BY 1, 2",
            )
            .fetch_all(pool)
            .await?;
            cols.into_iter()
                .map(|(t, c, ty, null, def)| {
                    let null = if null == "YES" { "null" } else { "not null" };
                    let def = def.map(|d| format!(" default {d}")).unwrap_or_default();
                    format!("column {t}.{c}: {ty} {null}{def}")
                })
                .chain(idx.into_iter().map(|(n, d)| format!("index {n}: {d}")))
                .chain(
                    cons.into_iter()
                        .map(|(t, n, d)| format!("constraint {t}.{n}: {d}")),
                )
                .collect()
        }
    };
    Ok(lines.join("\n") + "\n")
}

/// Checks that the database answers.
pub async fn ping(db: &Db) -> Result<(), StoreError> {
    on_db!(db, p => sqlx::query("SELECT 1").execute(p).await.map(|r| r.rows_affected()))?;
    Ok(())
}

/// Milliseconds since the Unix epoch, the store's time unit.
pub fn now_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

/// A new id: a UUIDv7, which this process makes in increasing order. Lists are ordered by
/// creation time then id, so rows made in the same millisecond still come back in the order
/// they were made (with random ids they came back in a random order).
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("postgres://u:secret@127.0.0.1:5/db"),
            "postgres://u:***@127.0.0.1:5/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite:///x/y.db"), "sqlite:///x/y.db");
    }

    #[tokio::test]
    async fn second_open_of_a_sqlite_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let url = Db::sqlite_url(&dir.path().join("hemiron.db"));
        let db = Db::open(&url).await.unwrap();
        let err = Db::open(&url).await.unwrap_err();
        assert!(matches!(err, StoreError::InUse { .. }), "{err:?}");
        db.close().await;
        drop(db);
        Db::open(&url).await.unwrap();
    }
}
