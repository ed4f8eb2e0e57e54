//! # sirenia-postgres
//!
//! Sirenia's PostgreSQL store: the whole [`EventStore`] port for any number of application
//! instances sharing one database.
//!
//! - **One round trip per append**, whatever its size. The unique `(stream_id, revision)` key
//!   decides between appends: a single-stream append is one `INSERT` of its events at the
//!   revision its expectation names (or that this process last saw the stream reach, or the one
//!   after the stream's last event), and an append that finds its revision taken is decided
//!   again. A deleted or tombstoned stream has a *fence*, a row at its version with a negative
//!   position that no read ever returns, so appends meet it on the key without looking up the
//!   stream's lifecycle. Multi-stream appends, appends in a caller's transaction and refused
//!   appends go to a stored function that takes the request as arrays, honours the lifecycle
//!   and checks every expectation before inserting anything.
//! - **A log that never skips an event.** A position is `(transaction id << 20) + index`, and
//!   readers only read below `pg_snapshot_xmin(pg_current_snapshot()) << 20`: every transaction
//!   below that has finished, and any transaction that can still add events has a higher id, so
//!   once a reader has seen a position nothing can appear below it. A long-running transaction
//!   delays delivery; it never causes a skip, and nothing is skipped on a timer.
//! - **Subscriptions** poll by position; `LISTEN`/`NOTIFY` (one payload-free notification per
//!   appending transaction) only wakes them early.
//! - **Tables in a schema of their own** (`sirenia` by default), created and migrated on connect
//!   under an advisory lock, so processes may start together.
//! - **JSON payloads are stored as `jsonb`**, queryable with SQL; other content types (and JSON
//!   that PostgreSQL cannot store, such as text containing U+0000) as `bytea`. PostgreSQL
//!   normalizes JSON (whitespace, key order), so a JSON payload reads back equal as JSON, not
//!   byte for byte.
//!
//! ```no_run
//! # async fn demo() -> Result<(), sirenia_core::StoreError> {
//! let store = sirenia_postgres::PostgresStore::connect("postgresql://postgres@127.0.0.1/app").await?;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use deadpool_postgres::{GenericClient, Pool};
use sirenia_core::lifecycle::{StreamChange, StreamInfo, append_target, decide_change};
use sirenia_core::store::validate_append;
use sirenia_core::{
    AllPage, AppendResult, Direction, EventFilter, EventId, EventStore, Position, RecordedEvent,
    StoreError, StreamId, StreamWrite,
};
use tokio::sync::watch;

// Here: the store, its options and the port. The statements' text is in `sql`, appends in
// `append`, reads in `read`, wake-ups in `notify`, administration in `admin`.
mod admin;
mod append;
mod connect;
mod notify;
pub mod projection;
mod read;
mod schema;
mod snapshots;
mod sql;

use append::AppendContext;
use connect::Connector;
pub use connect::TlsOptions;
use read::decode_stream_info;
pub use snapshots::PostgresSnapshots;
use sql::Sql;

pub use projection::{PostgresBackend, PostgresCheckpoints, PostgresProjection, PostgresTarget};
/// The PostgreSQL client projection handlers write with (the same version as the store's).
pub use tokio_postgres;

/// The default schema.
pub const DEFAULT_SCHEMA: &str = "sirenia";
/// Longest schema name.
pub const MAX_SCHEMA_NAME: usize = 48;
/// Times an append is decided again after racing with a concurrent append of the same ids.
pub const MAX_APPEND_ATTEMPTS: usize = 3;
/// Most streams whose version a store remembers (the one-statement append's revision); past
/// it the memory starts afresh.
pub const MAX_CACHED_VERSIONS: usize = 100_000;
/// Times an append is decided again after losing a revision to a concurrent append of the same
/// stream (each time someone else's append went through).
pub const MAX_REVISION_RACES: usize = 64;
/// Appends within this interval share one cross-process notification (this process's
/// subscriptions are woken at once regardless). The first append after a quiet spell notifies
/// at once; under a steady load, other processes hear at most this late, and each notification
/// (a transaction of its own, with a round trip) costs the writers that much less.
pub const NOTIFY_COALESCE: Duration = Duration::from_millis(10);
/// How long a read of the log waits for transactions that were in flight when it started, so
/// that it returns everything committed before it (read-your-writes). Past this, for example
/// behind a session idling in a transaction, it returns what is safe: fewer events, never a
/// skipped one.
pub const MAX_VISIBILITY_WAIT: Duration = Duration::from_secs(2);

/// How to connect.
#[derive(Clone, Debug)]
pub struct PostgresOptions {
    /// The schema holding Sirenia's tables (`[a-z0-9_]`, starting with a letter or `_`).
    pub schema: String,
    /// Most pooled connections.
    pub pool_size: usize,
    /// How often a waiting subscription polls when no notification arrives.
    pub poll_interval: Duration,
    /// TLS for every connection (feature `tls`). Without it, a URL with `sslmode=require`
    /// gets TLS verified against the system's roots; otherwise connections are plain.
    pub tls: Option<TlsOptions>,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            schema: DEFAULT_SCHEMA.to_owned(),
            pool_size: 16,
            poll_interval: Duration::from_millis(250),
            tls: None,
        }
    }
}

/// The PostgreSQL store. Cloning gives another handle to the same pool.
#[derive(Clone)]
pub struct PostgresStore {
    shared: Arc<Shared>,
}

struct Shared {
    pool: Pool,
    /// How to open a connection outside the pool (projection targets hold one each).
    config: tokio_postgres::Config,
    connector: Connector,
    schema: String,
    sql: Sql,
    wake: watch::Receiver<u64>,
    /// Wakes this process's waiting subscriptions.
    wake_tx: Arc<watch::Sender<u64>>,
    /// Asks the notifier to tell other processes.
    announce: Arc<tokio::sync::Notify>,
    listener: tokio::task::JoinHandle<()>,
    notifier: tokio::task::JoinHandle<()>,
    poll_interval: Duration,
    /// The version each stream reached in this process's last append of it (at most
    /// [`MAX_CACHED_VERSIONS`]; forgotten whenever the pool opens a connection): the
    /// one-statement path's revision for that stream. `None`:
    /// the stream is contended (an append of the remembered revision found it taken), so its
    /// appends ask the log for the revision instead.
    versions: Arc<std::sync::Mutex<HashMap<String, Option<u64>>>>,
    /// Appends done by the one-statement path and by the append function.
    one_statement: std::sync::atomic::AtomicU64,
    by_function: std::sync::atomic::AtomicU64,
    /// Bumped when a projection commits, in this process or (through the listener) in
    /// another: the admin port's notifications.
    changes: Arc<watch::Sender<u64>>,
    /// Passes the listener's wake-ups on to `changes`.
    forwarder: tokio::task::JoinHandle<()>,
}

/// How this process's appends were done (see [`PostgresStore::append_paths`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AppendPaths {
    /// Appends done by one plain-SQL statement.
    pub one_statement: u64,
    /// Appends that went to the append function.
    pub by_function: u64,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.listener.abort();
        self.notifier.abort();
        self.forwarder.abort();
    }
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.shared.schema)
            .finish()
    }
}

pub(crate) fn pg_error(e: tokio_postgres::Error) -> StoreError {
    StoreError::backend("PostgreSQL failed", e)
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    StoreError::backend("no PostgreSQL connection", e)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn corrupt(what: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        message: format!("{what}: {detail}"),
    }
}

fn check_schema_name(schema: &str) -> Result<(), StoreError> {
    let valid = !schema.is_empty()
        && schema.len() <= MAX_SCHEMA_NAME
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !schema.starts_with(|c: char| c.is_ascii_digit());
    if valid {
        Ok(())
    } else {
        Err(StoreError::InvalidOptions {
            message: format!(
                "schema {schema:?} must be 1 to {MAX_SCHEMA_NAME} of [a-z0-9_], not starting \
                 with a digit"
            ),
        })
    }
}

impl PostgresStore {
    /// A pooled connection, for work that should share a transaction with an append
    /// ([`append_in_transaction`](Self::append_in_transaction)).
    pub async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.shared.pool.get().await.map_err(pool_error)
    }

    /// A connection of its own, outside the pool: it closes when the client is dropped, taking
    /// any session state (an advisory lock, a lock request still waiting) with it.
    pub(crate) async fn dedicated_client(&self) -> Result<tokio_postgres::Client, StoreError> {
        let driven = self
            .shared
            .connector
            .connect(&self.shared.config, None)
            .await
            .map_err(pg_error)?;
        // The driver ends with the connection, when the client is dropped.
        Ok(driven.client)
    }

    /// Connects to `url` with default options, creating or migrating the schema.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, PostgresOptions::default()).await
    }

    /// Connects to `url` with `options`, creating or migrating the schema.
    pub async fn connect_with(url: &str, options: PostgresOptions) -> Result<Self, StoreError> {
        check_schema_name(&options.schema)?;
        let config =
            tokio_postgres::Config::from_str(url).map_err(|e| StoreError::InvalidOptions {
                message: format!("invalid PostgreSQL URL: {e}"),
            })?;
        let connector = Connector::new(options.tls.as_ref(), &config)?;
        let manager = connector.manager(config.clone());
        // Last in, first out: the connections in use stay few and warm (their prepared
        // statements cached) and the rest idle, instead of every append cycling through all.
        // What this process remembers of stream versions holds only while the database does
        // not go back in time: a new connection may follow a failover or a restore, so every
        // new connection starts the memory afresh.
        let versions: Arc<std::sync::Mutex<HashMap<String, Option<u64>>>> = Arc::default();
        let forget = versions.clone();
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .queue_mode(deadpool_postgres::QueueMode::Lifo)
            .post_create(deadpool_postgres::Hook::sync_fn(move |_, _| {
                if let Ok(mut versions) = forget.lock() {
                    versions.clear();
                }
                Ok(())
            }))
            .build()
            .map_err(|e| StoreError::InvalidOptions {
                message: format!("cannot build the connection pool: {e}"),
            })?;
        let channel = format!("sirenia_{}", options.schema);
        {
            let mut client = pool.get().await.map_err(pool_error)?;
            let client: &mut tokio_postgres::Client = &mut client;
            schema::migrate(client, &options.schema).await?;
        }
        let (wake_tx, wake) = watch::channel(0u64);
        let wake_tx = Arc::new(wake_tx);
        let announce = Arc::new(tokio::sync::Notify::new());
        let dedicated = config.clone();
        let listener = tokio::spawn(notify::run_listener(
            connector.clone(),
            config.clone(),
            channel.clone(),
            wake_tx.clone(),
        ));
        let notifier = tokio::spawn(notify::run_notifier(
            connector.clone(),
            config,
            channel,
            announce.clone(),
        ));
        let changes = Arc::new(watch::channel(0).0);
        let forwarder = tokio::spawn(notify::forward_wakes(wake.clone(), changes.clone()));
        Ok(PostgresStore {
            shared: Arc::new(Shared {
                pool,
                config: dedicated,
                connector,
                sql: Sql::new(&options.schema),
                schema: options.schema,
                wake,
                wake_tx,
                announce,
                listener,
                notifier,
                poll_interval: options.poll_interval,
                versions,
                one_statement: std::sync::atomic::AtomicU64::new(0),
                by_function: std::sync::atomic::AtomicU64::new(0),
                changes,
                forwarder,
            }),
        })
    }

    /// How many of this process's appends took the one-statement path and how many went to
    /// the append function (multi-stream writes, caller transactions, refusals, lifecycle).
    pub fn append_paths(&self) -> AppendPaths {
        AppendPaths {
            one_statement: self.shared.one_statement.load(Ordering::Relaxed),
            by_function: self.shared.by_function.load(Ordering::Relaxed),
        }
    }

    /// The schema holding the tables.
    pub fn schema(&self) -> &str {
        &self.shared.schema
    }

    /// A projection named `name` whose read model `handler` keeps in this database, for a
    /// [`Projector`](sirenia_core::projection::Projector): its writes and checkpoint commit in
    /// one transaction (exactly once); one instance per name runs at a time across processes.
    pub fn projection<P: PostgresProjection>(&self, name: &str, handler: P) -> PostgresTarget<P> {
        sirenia_core::transactional::TransactionalTarget::new(
            name,
            projection::PostgresBackend::new(self, handler),
        )
    }

    /// Wakes this process's waits on projection checkpoints (after a projection commit).
    pub(crate) fn projection_committed(&self) {
        self.shared.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Wake-ups of this process's waits on projection checkpoints.
    pub(crate) fn projection_changes(&self) -> watch::Receiver<u64> {
        self.shared.changes.subscribe()
    }
}

impl EventStore for PostgresStore {
    fn capabilities(&self) -> sirenia_core::Capabilities {
        sirenia_core::Capabilities {
            // Transaction ids leave holes (rolled-back and concurrent transactions).
            dense_positions: false,
            durable: true,
            multi_process_writers: true,
            transactional_projections: true,
            // A session advisory lock per projection name.
            cross_process_locking: true,
            // A projection commit notifies in its transaction; listeners pass it on.
            cross_process_notifications: true,
            import_with_timestamps: true,
        }
    }

    async fn append(&self, writes: Vec<StreamWrite>) -> Result<AppendResult, StoreError> {
        validate_append(&writes)?;
        let client = self.client().await?;
        // Only committed appends are remembered (an append in a caller's transaction may
        // still roll back), and a failed one forgets its streams.
        let outcome = self
            .append_with_fallbacks(&client, &writes, AppendContext::Autocommit)
            .await;
        self.remember_versions(&writes, outcome.as_ref().ok());
        let result = outcome?;
        self.announce();
        Ok(result)
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<Option<u64>, StoreError> {
        let info = self.stream_info(stream).await?;
        append_target(stream, info.as_ref())
    }

    async fn stream_info(&self, stream: &StreamId) -> Result<Option<StreamInfo>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&self.shared.sql.stream_info)
            .await
            .map_err(pg_error)?;
        let row = client
            .query_opt(&statement, &[&stream.as_str()])
            .await
            .map_err(pg_error)?;
        match row {
            None => Ok(None),
            Some(row) => decode_stream_info(&row),
        }
    }

    async fn change_stream(
        &self,
        stream: &StreamId,
        change: StreamChange,
    ) -> Result<Option<StreamInfo>, StoreError> {
        if let Ok(mut versions) = self.shared.versions.lock() {
            versions.remove(stream.as_str());
        }
        let mut client = self.client().await?;
        let sql = &self.shared.sql;
        let tx = client.transaction().await.map_err(pg_error)?;
        // A row to lock even for a name without events, so that changes (and the append
        // function) take turns; one-statement appends do not lock it, and meet the fence.
        tx.execute(&sql.ensure_stream, &[&stream.as_str()])
            .await
            .map_err(pg_error)?;
        tx.execute(&sql.lock_stream, &[&stream.as_str()])
            .await
            .map_err(pg_error)?;
        if matches!(
            change,
            StreamChange::Delete { .. } | StreamChange::Tombstone { .. }
        ) {
            // Fenced first, so the version cannot move while the change is decided; a change
            // that is refused or changes nothing rolls the fence back.
            tx.execute(&sql.fence, &[&stream.as_str()])
                .await
                .map_err(pg_error)?;
        }
        // After the lock and the fence: this sees every append and change before them.
        let row = tx
            .query_one(&sql.stream_info, &[&stream.as_str()])
            .await
            .map_err(pg_error)?;
        let current = decode_stream_info(&row)?;
        let Some(changed) = decide_change(stream, current, change)? else {
            // Rolling back drops a row created only to be locked.
            return Ok(current);
        };
        tx.execute(
            &sql.change_stream,
            &[
                &stream.as_str(),
                &to_i64(changed.start),
                &to_i64(changed.readable_from),
                &changed.status.code(),
            ],
        )
        .await
        .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        Ok(Some(changed))
    }

    async fn event_by_id(&self, id: EventId) -> Result<Option<RecordedEvent>, StoreError> {
        let events = self
            .query_events(&self.shared.sql.event_by_id, &[id.as_uuid()])
            .await?;
        Ok(events.into_iter().next())
    }

    async fn head_position(&self) -> Result<Position, StoreError> {
        self.settled_head().await
    }

    async fn read_stream_page(
        &self,
        stream: &StreamId,
        from: u64,
        direction: Direction,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.stream_page(stream, from, direction, max).await
    }

    async fn read_all_page(
        &self,
        from: Position,
        direction: Direction,
        filter: &EventFilter,
        max: usize,
    ) -> Result<AllPage, StoreError> {
        self.log_page(from, direction, filter, max).await
    }

    async fn wait_for_events(&self, from: Position) -> Result<(), StoreError> {
        // Wake-ups from now on count (one arriving during the head query included); those
        // before are covered by the query. A clone of the store's receiver would still see
        // every wake-up since the store connected as new, and never wait.
        let mut wake = self.shared.wake.clone();
        wake.borrow_and_update();
        if self.head_without_waiting().await? >= from {
            return Ok(());
        }
        tokio::select! {
            _ = wake.changed() => {}
            _ = tokio::time::sleep(self.shared.poll_interval) => {}
        }
        Ok(())
    }
}
