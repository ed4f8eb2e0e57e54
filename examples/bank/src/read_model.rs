//! The accounts read model (`id`, `owner`, `balance`, `status`), kept by a projection in the
//! store's own database: on the embedded store a table in the file, on PostgreSQL a table in the
//! store's schema. Its writes and the projection's checkpoint commit together, so it is exact
//! after any crash. Several service instances on one PostgreSQL run one active projector (the
//! others stand by); every instance reads the table and waits on the stored checkpoint.

use std::time::Duration;

use serde::Serialize;
use sirenia::postgres::PostgresProjection;
use sirenia::projection::{HandlerError, ProjectionOptions, ProjectionStatus, Projector};
use sirenia::sqlite::SqliteProjection;
use sirenia::{AnyStore, EventFilter, JsonCodec, Position, RecordedEvent, StoreError};
use tokio::sync::watch;

use crate::account::{Account, AccountEvent};

/// The read model's name; readers look up its active version under it.
pub const PROJECTION: &str = "bank-accounts";
/// The version of the read model this build keeps: a build that changes the table or the way
/// events fold into it bumps it, builds its tables beside the previous version's (blue/green)
/// and switches readers over once it has caught up.
pub const VERSION: &str = "1";
/// Longest wait of `GET /accounts?min_position=`.
pub const MAX_WAIT: Duration = Duration::from_secs(5);
/// How often a wait looks at the stored checkpoint.
const WAIT_POLL: Duration = Duration::from_millis(10);
/// Most accounts one `GET /accounts` returns.
pub const MAX_LIST: u32 = 1_000;

/// One row of the read model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AccountRow {
    /// The account id.
    pub id: String,
    /// Its owner.
    pub owner: String,
    /// Its balance in minor units.
    pub balance: i64,
    /// `open` or `closed`.
    pub status: String,
}

/// What one event does to the table.
enum Change {
    Open { owner: String },
    Add(i64),
    Close,
}

fn change(
    codec: &JsonCodec<AccountEvent>,
    event: &RecordedEvent,
) -> Result<Vec<Change>, HandlerError> {
    let lag = sirenia::Timestamp::now()
        .as_micros()
        .saturating_sub(event.recorded_at.as_micros());
    // Microseconds stay far below 2^53, where f64 is exact.
    #[allow(clippy::cast_precision_loss)]
    metrics::histogram!(crate::observe::DELIVERY_SECONDS, "projection" => PROJECTION)
        .record(lag as f64 / 1e6);
    let mut changes = Vec::new();
    for e in codec.decode(event)? {
        changes.push(match e {
            AccountEvent::Opened { owner } => Change::Open { owner },
            AccountEvent::Deposited { amount } => Change::Add(i64::try_from(amount)?),
            AccountEvent::Withdrawn { amount } => Change::Add(-i64::try_from(amount)?),
            AccountEvent::Closed => Change::Close,
        });
    }
    Ok(changes)
}

/// The account id of an event's stream (`account-<id>`).
fn account_id(event: &RecordedEvent) -> &str {
    let stream = event.stream_id.as_str();
    stream.split_once('-').map_or(stream, |(_, id)| id)
}

/// The table of read-model version `version` (a short alphanumeric text).
fn table(version: &str) -> Result<String, StoreError> {
    if version.is_empty()
        || version.len() > 16
        || !version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(StoreError::Corrupt {
            message: format!("read model version {version:?} is not a short alphanumeric text"),
        });
    }
    Ok(format!("bank_accounts_v{version}"))
}

/// The projection (checkpoint) name of read-model version `version`.
fn projection_name(version: &str) -> String {
    format!("{PROJECTION}@{version}")
}

/// The projection on the embedded store.
pub struct SqliteAccounts {
    codec: JsonCodec<AccountEvent>,
    table: String,
}

impl SqliteProjection for SqliteAccounts {
    fn setup(&mut self, tx: &rusqlite::Transaction<'_>) -> Result<(), HandlerError> {
        tx.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS {} (
                id TEXT PRIMARY KEY, owner TEXT NOT NULL, balance INTEGER NOT NULL,
                status TEXT NOT NULL) STRICT",
            self.table
        ))?;
        Ok(())
    }

    fn apply(
        &mut self,
        tx: &rusqlite::Transaction<'_>,
        event: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        let id = account_id(event);
        let table = &self.table;
        for change in change(&self.codec, event)? {
            match change {
                Change::Open { owner } => tx
                    .prepare_cached(&format!(
                        "INSERT INTO {table} (id, owner, balance, status)
                         VALUES (?1, ?2, 0, 'open') ON CONFLICT (id) DO NOTHING"
                    ))?
                    .execute(rusqlite::params![id, owner])?,
                Change::Add(amount) => tx
                    .prepare_cached(&format!(
                        "UPDATE {table} SET balance = balance + ?2 WHERE id = ?1"
                    ))?
                    .execute(rusqlite::params![id, amount])?,
                Change::Close => tx
                    .prepare_cached(&format!(
                        "UPDATE {table} SET status = 'closed' WHERE id = ?1"
                    ))?
                    .execute([id])?,
            };
        }
        Ok(())
    }

    fn reset(&mut self, tx: &rusqlite::Transaction<'_>) -> Result<(), HandlerError> {
        tx.execute(&format!("DELETE FROM {}", self.table), [])?;
        Ok(())
    }
}

/// The projection on PostgreSQL.
pub struct PostgresAccounts {
    codec: JsonCodec<AccountEvent>,
    table: String,
}

impl PostgresProjection for PostgresAccounts {
    async fn setup(&mut self, tx: &tokio_postgres::Transaction<'_>) -> Result<(), HandlerError> {
        tx.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {} (
                id text PRIMARY KEY, owner text NOT NULL, balance bigint NOT NULL,
                status text NOT NULL)",
            self.table
        ))
        .await?;
        Ok(())
    }

    async fn apply(
        &mut self,
        tx: &tokio_postgres::Transaction<'_>,
        event: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        let id = account_id(event);
        let table = &self.table;
        for change in change(&self.codec, event)? {
            match change {
                Change::Open { owner } => {
                    tx.execute(
                        &format!(
                            "INSERT INTO {table} (id, owner, balance, status)
                             VALUES ($1, $2, 0, 'open') ON CONFLICT (id) DO NOTHING"
                        ),
                        &[&id, &owner],
                    )
                    .await?
                }
                Change::Add(amount) => {
                    tx.execute(
                        &format!("UPDATE {table} SET balance = balance + $2 WHERE id = $1"),
                        &[&id, &amount],
                    )
                    .await?
                }
                Change::Close => {
                    tx.execute(
                        &format!("UPDATE {table} SET status = 'closed' WHERE id = $1"),
                        &[&id],
                    )
                    .await?
                }
            };
        }
        Ok(())
    }

    async fn reset(&mut self, tx: &tokio_postgres::Transaction<'_>) -> Result<(), HandlerError> {
        tx.execute(&format!("DELETE FROM {}", self.table), &[])
            .await?;
        Ok(())
    }
}

fn options() -> ProjectionOptions {
    ProjectionOptions {
        filter: EventFilter::category(<Account as sirenia::Aggregate>::CATEGORY),
        ..ProjectionOptions::default()
    }
}

/// The running read model: the projector task and how to query the table.
pub struct ReadModel {
    store: AnyStore,
    status: watch::Receiver<ProjectionStatus>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ReadModel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn pg_table(store: &sirenia::PostgresStore, version: &str) -> Result<String, StoreError> {
    Ok(format!("\"{}\".{}", store.schema(), table(version)?))
}

impl ReadModel {
    /// Starts the projection of this build's version on `store` in a task of its own (it waits
    /// as a standby while another instance holds the projection). Once it has caught up it
    /// becomes the version readers use.
    pub fn start(store: &AnyStore) -> Result<Self, sirenia::projection::ProjectionError> {
        let codec = JsonCodec::<AccountEvent>::new();
        let name = projection_name(VERSION);
        let table = table(VERSION)?;
        let (status, task) = match store {
            AnyStore::Sqlite(s) => {
                let target = s.projection(&name, SqliteAccounts { codec, table });
                let promote_store = s.clone();
                spawn(
                    Projector::new(name, store.clone(), target, options())?,
                    move || {
                        let s = promote_store.clone();
                        Box::pin(async move { s.set_active_version(PROJECTION, VERSION).await })
                    },
                )
            }
            AnyStore::Postgres(s) => {
                let target = s.projection(
                    &name,
                    PostgresAccounts {
                        codec,
                        table: pg_table(s, VERSION)?,
                    },
                );
                let promote_store = s.clone();
                spawn(
                    Projector::new(name, store.clone(), target, options())?,
                    move || {
                        let s = promote_store.clone();
                        Box::pin(async move { s.set_active_version(PROJECTION, VERSION).await })
                    },
                )
            }
            _ => {
                return Err(sirenia::projection::ProjectionError::InvalidOptions(
                    "the accounts read model needs the embedded or the PostgreSQL store".to_owned(),
                ));
            }
        };
        Ok(ReadModel {
            store: store.clone(),
            status,
            task,
        })
    }

    /// The version readers use: the one last switched to, else this build's.
    pub async fn active_version(&self) -> Result<String, StoreError> {
        let active = match &self.store {
            AnyStore::Sqlite(s) => s.active_version(PROJECTION).await?,
            AnyStore::Postgres(s) => s.active_version(PROJECTION).await?,
            _ => None,
        };
        Ok(active.unwrap_or_else(|| VERSION.to_owned()))
    }

    /// This instance's projector status (a standby reports `stopped`).
    pub fn status(&self) -> ProjectionStatus {
        self.status.borrow().clone()
    }

    /// The stored checkpoint: the next position the projection will read, whichever instance
    /// runs it.
    pub async fn checkpoint(&self) -> Result<Position, StoreError> {
        let name = projection_name(&self.active_version().await?);
        match &self.store {
            AnyStore::Sqlite(s) => {
                let path = s.path().to_owned();
                tokio::task::spawn_blocking(move || {
                    let conn = rusqlite::Connection::open_with_flags(
                        &path,
                        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                    )
                    .map_err(|e| StoreError::backend("cannot read the read model", e))?;
                    let next: Option<i64> = conn
                        .query_row(
                            "SELECT next_position FROM projections WHERE name = ?1",
                            [&name],
                            |r| r.get(0),
                        )
                        .map(Some)
                        .or_else(|e| match e {
                            rusqlite::Error::QueryReturnedNoRows => Ok(None),
                            e => Err(e),
                        })
                        .map_err(|e| StoreError::backend("cannot read the checkpoint", e))?;
                    Ok(Position(
                        next.and_then(|n| u64::try_from(n).ok()).unwrap_or(1),
                    ))
                })
                .await
                .map_err(|e| StoreError::backend("a read-model task failed", e))?
            }
            AnyStore::Postgres(s) => {
                let client = s.client().await?;
                let row = client
                    .query_opt(
                        &format!(
                            "SELECT next_position FROM \"{}\".projections WHERE name = $1",
                            s.schema()
                        ),
                        &[&name],
                    )
                    .await
                    .map_err(|e| StoreError::backend("cannot read the checkpoint", e))?;
                Ok(Position(
                    row.and_then(|r| u64::try_from(r.get::<_, i64>(0)).ok())
                        .unwrap_or(1),
                ))
            }
            _ => Ok(Position(1)),
        }
    }

    /// Waits until the projection has processed `position`, at most [`MAX_WAIT`]; `false` if
    /// it had not by then.
    pub async fn wait_for(&self, position: Position) -> Result<bool, StoreError> {
        let deadline = tokio::time::Instant::now() + MAX_WAIT;
        let mut status = self.status.clone();
        loop {
            if status.borrow().has_processed(position) || self.checkpoint().await? > position {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            // Wake on this instance's progress, or poll the stored checkpoint (another
            // instance may be the active one).
            let _ = tokio::time::timeout(WAIT_POLL, status.changed()).await;
        }
    }

    /// Accounts ordered by id, after `after`, at most `limit`.
    pub async fn list(
        &self,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<AccountRow>, StoreError> {
        let after = after.unwrap_or_default();
        let version = self.active_version().await?;
        match &self.store {
            AnyStore::Sqlite(s) => {
                let path = s.path().to_owned();
                tokio::task::spawn_blocking(move || {
                    let conn = rusqlite::Connection::open_with_flags(
                        &path,
                        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                    )
                    .map_err(|e| StoreError::backend("cannot read the read model", e))?;
                    conn.busy_timeout(std::time::Duration::from_secs(5))
                        .map_err(|e| StoreError::backend("cannot read the read model", e))?;
                    let exists: bool = conn
                        .query_row(
                            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1",
                            [table(&version)?],
                            |r| r.get(0),
                        )
                        .map_err(|e| StoreError::backend("cannot read the read model", e))?;
                    if !exists {
                        // Not built yet (the projector is starting): nothing to list.
                        return Ok(Vec::new());
                    }
                    let mut stmt = conn
                        .prepare(&format!(
                            "SELECT id, owner, balance, status FROM {}
                             WHERE id > ?1 ORDER BY id LIMIT ?2",
                            table(&version)?
                        ))
                        .map_err(|e| StoreError::backend("cannot read the read model", e))?;
                    let rows = stmt
                        .query_map(rusqlite::params![after, limit], |r| {
                            Ok(AccountRow {
                                id: r.get(0)?,
                                owner: r.get(1)?,
                                balance: r.get(2)?,
                                status: r.get(3)?,
                            })
                        })
                        .map_err(|e| StoreError::backend("cannot read the read model", e))?;
                    rows.collect::<Result<Vec<_>, _>>()
                        .map_err(|e| StoreError::backend("cannot read the read model", e))
                })
                .await
                .map_err(|e| StoreError::backend("a read-model task failed", e))?
            }
            AnyStore::Postgres(s) => {
                let client = s.client().await?;
                let rows = match client
                    .query(
                        &format!(
                            "SELECT id, owner, balance, status FROM {} WHERE id > $1
                             ORDER BY id LIMIT $2",
                            pg_table(s, &version)?
                        ),
                        &[&after, &i64::from(limit)],
                    )
                    .await
                {
                    Ok(rows) => rows,
                    // Not built yet (the projector is starting): nothing to list.
                    Err(e)
                        if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) =>
                    {
                        return Ok(Vec::new());
                    }
                    Err(e) => return Err(StoreError::backend("cannot read the read model", e)),
                };
                Ok(rows
                    .iter()
                    .map(|r| AccountRow {
                        id: r.get(0),
                        owner: r.get(1),
                        balance: r.get(2),
                        status: r.get(3),
                    })
                    .collect())
            }
            _ => Ok(Vec::new()),
        }
    }
}

/// How a version switches readers over to itself.
type Promote = Box<
    dyn Fn() -> std::pin::Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>>
        + Send
        + Sync,
>;

fn spawn<T: sirenia::projection::ProjectionTarget>(
    mut projector: Projector<AnyStore, T>,
    promote: impl Fn() -> std::pin::Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>>
    + Send
    + Sync
    + 'static,
) -> (
    watch::Receiver<ProjectionStatus>,
    tokio::task::JoinHandle<()>,
) {
    let promote: Promote = Box::new(promote);
    let status = projector.status();
    let task = tokio::spawn(async move {
        // Retry after a storage failure; a fault stops it (its status says why).
        loop {
            match projector
                .run_blue_green(promote(), std::future::pending())
                .await
            {
                Ok(()) => return,
                Err(sirenia::projection::ProjectionError::Faulted(failed)) => {
                    tracing::error!(position = %failed.position, error = %failed.error,
                        "the accounts read model is faulted");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the accounts projection failed; restarting");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    (status, task)
}
