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
use sirenia_core::store::{WriteDisposition, classify_write, validate_append};
use sirenia_core::{
    AllPage, AppendResult, Direction, EventFilter, EventId, EventStore, ExpectedVersion,
    JSON_CONTENT_TYPE, Metadata, Position, RecordedEvent, StoreError, StreamAppended, StreamId,
    StreamWrite,
};
use tokio::sync::watch;
use tokio_postgres::Row;

mod admin;
mod connect;
mod notify;
pub mod projection;
mod read;
mod schema;
mod snapshots;
mod sql;

use connect::Connector;
pub use connect::TlsOptions;
use read::{decode, decode_info};
pub use snapshots::PostgresSnapshots;
use sql::Sql;

pub use projection::{PostgresCheckpoints, PostgresProjection, PostgresTarget};
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

/// An expectation as the append statements' parameters: a kind (0 any, 1 no stream, 2 stream
/// exists, 3 exact) and the exact version.
fn expectation_params(expected: ExpectedVersion) -> (i16, i64) {
    match expected {
        ExpectedVersion::Any => (0, 0),
        ExpectedVersion::NoStream => (1, 0),
        ExpectedVersion::StreamExists => (2, 0),
        ExpectedVersion::Exact(v) => (3, to_i64(v)),
    }
}

/// Events as the append statements' per-event array parameters, in order.
struct EventColumns<'a> {
    ids: Vec<uuid::Uuid>,
    types: Vec<&'a str>,
    versions: Vec<i32>,
    content_types: Vec<&'a str>,
    json: Vec<Option<&'a str>>,
    raw: Vec<Option<&'a [u8]>>,
    metadata: Vec<Option<String>>,
}

impl<'a> EventColumns<'a> {
    /// The columns of `n` events.
    fn new(events: impl Iterator<Item = &'a sirenia_core::NewEvent>, n: usize) -> Self {
        let mut columns = EventColumns {
            ids: Vec::with_capacity(n),
            types: Vec::with_capacity(n),
            versions: Vec::with_capacity(n),
            content_types: Vec::with_capacity(n),
            json: Vec::with_capacity(n),
            raw: Vec::with_capacity(n),
            metadata: Vec::with_capacity(n),
        };
        for event in events {
            columns.ids.push(*event.id.as_uuid());
            columns.types.push(event.event_type.as_str());
            columns.versions.push(i32::from(event.schema_version));
            columns.content_types.push(event.content_type.as_str());
            let (text, bytes) = payload_columns(event);
            columns.json.push(text);
            columns.raw.push(bytes);
            columns.metadata.push(metadata_json(&event.metadata));
        }
        columns
    }

    /// The arrays, as statement parameters.
    fn arrays(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 7] {
        [
            &self.ids,
            &self.types,
            &self.versions,
            &self.content_types,
            &self.json,
            &self.raw,
            &self.metadata,
        ]
    }
}

/// One event's columns, for a single-event INSERT.
struct OneEvent<'a> {
    id: uuid::Uuid,
    event_type: &'a str,
    version: i32,
    content_type: &'a str,
    json: Option<&'a str>,
    raw: &'a [u8],
    metadata: Option<String>,
}

impl<'a> OneEvent<'a> {
    fn new(event: &'a sirenia_core::NewEvent) -> Self {
        OneEvent {
            id: *event.id.as_uuid(),
            event_type: &event.event_type,
            version: i32::from(event.schema_version),
            content_type: &event.content_type,
            json: storable_json(&event.content_type, &event.data),
            raw: &event.data,
            metadata: metadata_json(&event.metadata),
        }
    }

    /// Parameter 7: the payload, as JSON text for `data` or as bytes for `data_bytes`.
    fn payload(&self) -> &(dyn tokio_postgres::types::ToSql + Sync) {
        match &self.json {
            Some(text) => text,
            None => &self.raw,
        }
    }

    /// Which statement of a shape's four takes these columns, and how many parameters it has
    /// (parameter 8, the metadata, only when there is some).
    fn columns(&self) -> (usize, usize) {
        match (self.json.is_some(), self.metadata.is_some()) {
            (true, false) => (0, 7),
            (true, true) => (1, 8),
            (false, false) => (2, 7),
            (false, true) => (3, 8),
        }
    }
}

/// An event's payload as its two columns: JSON text for `jsonb`, or bytes for `bytea`.
fn payload_columns(event: &sirenia_core::NewEvent) -> (Option<&str>, Option<&[u8]>) {
    match storable_json(&event.content_type, &event.data) {
        Some(text) => (Some(text), None),
        None => (None, Some(event.data.as_ref())),
    }
}

/// An event's metadata as the JSON text stored (`None`: empty). Validated before any I/O, so
/// it encodes.
fn metadata_json(metadata: &Metadata) -> Option<String> {
    if metadata.is_empty() {
        return None;
    }
    Some(
        metadata
            .to_json()
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_else(|| "{}".to_owned()),
    )
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

/// Whether `event` can go into a `jsonb` column as it is.
fn storable_json<'a>(content_type: &str, data: &'a [u8]) -> Option<&'a str> {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case(JSON_CONTENT_TYPE) {
        return None;
    }
    let text = std::str::from_utf8(data).ok()?;
    // jsonb refuses U+0000; such payloads keep their bytes.
    if text.contains("\\u0000") {
        return None;
    }
    // A full parse: it refuses what jsonb refuses too (lone surrogates, out-of-range numbers).
    serde_json::from_str::<Parsed>(text).ok()?;
    Some(text)
}

/// What parsing a JSON text into a `serde_json::Value` checks (every string decoded, escapes
/// and surrogate pairs included; every number parsed; the same depth limit), without building
/// the value: nothing is allocated per append for a check whose result is a yes or a no.
struct Parsed;

impl<'de> serde::Deserialize<'de> for Parsed {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(Parsed)
    }
}

impl<'de> serde::de::Visitor<'de> for Parsed {
    type Value = Parsed;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Parsed, E> {
        Ok(Parsed)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Parsed, E> {
        Ok(Parsed)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Parsed, E> {
        Ok(Parsed)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Parsed, E> {
        Ok(Parsed)
    }

    fn visit_str<E>(self, _: &str) -> Result<Parsed, E> {
        Ok(Parsed)
    }

    fn visit_unit<E>(self) -> Result<Parsed, E> {
        Ok(Parsed)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Parsed, A::Error> {
        while seq.next_element::<Parsed>()?.is_some() {}
        Ok(Parsed)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Parsed, A::Error> {
        while map.next_entry::<Parsed, Parsed>()?.is_some() {}
        Ok(Parsed)
    }
}

/// Whether calls of the append function need a savepoint (inside a caller's transaction, a
/// failed statement would abort the whole transaction).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Guard {
    None,
    Savepoint,
}

/// Which one-statement append a write takes, by what this process knows of its stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// The revision is known: the stream's remembered version for `Any`, `StreamExists` (a
    /// version above 0) or the same `Exact` one; 0 for `NoStream` and `Exact(0)`. The INSERT
    /// alone: a revision taken meanwhile, or a fence, refuses it on the key.
    Known(u64),
    /// `Exact(n)`, n > 0, not the remembered version: revision n - 1 must be an event.
    Exact(u64),
    /// Nothing remembered: the revision after the stream's last event (which must exist for
    /// `StreamExists`).
    Computed { must_exist: bool },
}

impl Shape {
    fn of(expected: ExpectedVersion, remembered: Option<u64>) -> Self {
        match (expected, remembered) {
            (ExpectedVersion::NoStream | ExpectedVersion::Exact(0), _) => Shape::Known(0),
            (ExpectedVersion::Any, Some(v)) => Shape::Known(v),
            (ExpectedVersion::StreamExists, Some(v)) if v > 0 => Shape::Known(v),
            (ExpectedVersion::Exact(n), Some(v)) if n == v => Shape::Known(n),
            (ExpectedVersion::Exact(n), _) => Shape::Exact(n),
            (ExpectedVersion::Any, None) => Shape::Computed { must_exist: false },
            (ExpectedVersion::StreamExists, _) => Shape::Computed { must_exist: true },
        }
    }
}

/// Why the append function did not append.
enum CallError {
    /// Write `index` (0-based) found the stream at `actual`.
    Conflict {
        index: usize,
        actual: u64,
    },
    /// An event id is already stored.
    DuplicateId,
    /// The plain-SQL path did not append: decide with the append function.
    Recheck,
    /// The append function lost a revision to a concurrent append: decide again.
    Raced,
    /// Write `index` (0-based) is to a tombstoned stream.
    Tombstoned {
        index: usize,
    },
    Store(StoreError),
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
        let listener = tokio::spawn(notify::listen(
            connector.clone(),
            config.clone(),
            channel.clone(),
            wake_tx.clone(),
        ));
        let notifier = tokio::spawn(notify::notify(
            connector.clone(),
            config,
            channel,
            announce.clone(),
        ));
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
        PostgresTarget::new(self, name, handler)
    }

    /// Appends within the caller's transaction: the events commit (and become visible) with
    /// it, together with whatever else it writes. A failure rolls back only the append (a
    /// savepoint), leaving the caller's transaction usable.
    pub async fn append_in_transaction(
        &self,
        tx: &mut deadpool_postgres::Transaction<'_>,
        writes: Vec<StreamWrite>,
    ) -> Result<AppendResult, StoreError> {
        validate_append(&writes)?;
        self.append_on(&*tx, &writes, Guard::Savepoint).await
    }

    /// One call of the append function. Inside a caller's transaction it runs under a
    /// savepoint, so a refused call leaves the transaction usable for the fallback and after.
    async fn guarded_call(
        &self,
        client: &impl GenericClient,
        writes: &[&StreamWrite],
        guard: Guard,
    ) -> Result<AppendResult, CallError> {
        if guard == Guard::None {
            return self.call(client, writes).await;
        }
        let store = |e| CallError::Store(pg_error(e));
        client
            .batch_execute("SAVEPOINT sirenia_append")
            .await
            .map_err(store)?;
        let result = self.call(client, writes).await;
        let end = if result.is_ok() {
            "RELEASE SAVEPOINT sirenia_append"
        } else {
            "ROLLBACK TO SAVEPOINT sirenia_append; RELEASE SAVEPOINT sirenia_append"
        };
        client.batch_execute(end).await.map_err(store)?;
        result
    }

    /// One write with events in one plain INSERT (outside a caller's transaction). `Recheck`
    /// when it did not append (an expectation, a revision taken meanwhile, a fence of a
    /// deleted or tombstoned stream): the append function then decides.
    async fn call_one(
        &self,
        client: &impl GenericClient,
        write: &StreamWrite,
    ) -> Result<AppendResult, CallError> {
        let count = write.events.len() as u64;
        let sql = &self.shared.sql;
        let shape = Shape::of(write.expected, self.cached_version(&write.stream));
        // Parameter 2: the revision (known, exact) or the expectation's kind (computed).
        let (index, revision, kind) = match shape {
            Shape::Known(v) => (0, to_i64(v), 0),
            Shape::Exact(v) => (1, to_i64(v), 0),
            Shape::Computed { must_exist } => (2, 0, if must_exist { 2 } else { 0 }),
        };
        let second: &(dyn tokio_postgres::types::ToSql + Sync) =
            if index == 2 { &kind } else { &revision };
        let stream = write.stream.as_str();
        // Parameters 3 on: the event's columns (one event: 7 or 8 in all, see `OneEvent::columns`),
        // or arrays of them (9 in all).
        let rows = if let [event] = write.events.as_slice() {
            let one = OneEvent::new(event);
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 8] = [
                &stream,
                second,
                &one.id,
                &one.event_type,
                &one.version,
                &one.content_type,
                one.payload(),
                &one.metadata,
            ];
            let (columns, used) = one.columns();
            Self::query_as(client, &sql.append_one[index][columns], &params[..used]).await
        } else {
            let columns = EventColumns::new(write.events.iter(), write.events.len());
            let [a, b, c, d, e, f, g] = columns.arrays();
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 9] =
                [&stream, second, a, b, c, d, e, f, g];
            Self::query_as(client, &sql.append_batch[index], &params).await
        };
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                let e = classify_error(e);
                if matches!(e, CallError::Raced) && shape != Shape::Known(0) {
                    self.contended(&write.stream);
                }
                return Err(e);
            }
        };
        if rows.len() as u64 != count {
            return Err(CallError::Recheck);
        }
        let mut first = i64::MAX;
        let mut base = i64::MAX;
        for row in &rows {
            first = first.min(row.get(0));
            base = base.min(row.get(1));
        }
        let first =
            u64::try_from(first).map_err(|_| CallError::Store(corrupt("revision", first)))?;
        let base = u64::try_from(base).map_err(|_| CallError::Store(corrupt("position", base)))?;
        Ok(AppendResult {
            streams: vec![StreamAppended {
                stream: write.stream.clone(),
                first_revision: first,
                version: first + count,
                first_position: Some(Position(base)),
                last_position: Some(Position(base + count - 1)),
            }],
        })
    }

    /// Runs `sql` (prepared once per connection) with `params`.
    async fn query_as(
        client: &impl GenericClient,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        let statement = client.prepare_cached(sql).await?;
        client.query(&statement, params).await
    }

    /// The version this process last saw `stream` reach (a lower bound of its version:
    /// revisions are never removed), if it remembers one.
    fn cached_version(&self, stream: &StreamId) -> Option<u64> {
        self.shared
            .versions
            .lock()
            .ok()
            .and_then(|v| v.get(stream.as_str()).copied().flatten())
    }

    /// Marks `stream` contended: other processes (or tasks) append to it too, so the version
    /// this one remembers is likely stale, and appending at it would cost a refused INSERT.
    fn contended(&self, stream: &StreamId) {
        if let Ok(mut versions) = self.shared.versions.lock() {
            versions.insert(stream.as_str().to_owned(), None);
        }
    }

    /// Remembers the versions an append reached, or forgets the streams of one that failed.
    fn remember(&self, writes: &[StreamWrite], result: Option<&AppendResult>) {
        let Ok(mut versions) = self.shared.versions.lock() else {
            return;
        };
        match result {
            Some(result) => {
                if versions.len() + result.streams.len() > MAX_CACHED_VERSIONS {
                    versions.clear();
                }
                for appended in result.streams.iter().filter(|a| a.version > 0) {
                    // A contended stream (`None`) stays so.
                    match versions.get_mut(appended.stream.as_str()) {
                        Some(Some(v)) => *v = appended.version,
                        Some(None) => {}
                        None => {
                            versions.insert(
                                appended.stream.as_str().to_owned(),
                                Some(appended.version),
                            );
                        }
                    }
                }
            }
            None => {
                for write in writes {
                    if let Some(Some(_)) = versions.get(write.stream.as_str()) {
                        versions.remove(write.stream.as_str());
                    }
                }
            }
        }
    }

    async fn call(
        &self,
        client: &impl GenericClient,
        writes: &[&StreamWrite],
    ) -> Result<AppendResult, CallError> {
        let mut streams = Vec::with_capacity(writes.len());
        let mut kinds = Vec::with_capacity(writes.len());
        let mut expected = Vec::with_capacity(writes.len());
        let mut counts = Vec::with_capacity(writes.len());
        let total: usize = writes.iter().map(|w| w.events.len()).sum();
        let mut write_of = Vec::with_capacity(total);
        let mut index = Vec::with_capacity(total);
        for (w, write) in writes.iter().enumerate() {
            streams.push(write.stream.as_str());
            let (kind, version) = expectation_params(write.expected);
            kinds.push(kind);
            expected.push(version);
            counts.push(write.events.len() as i64);
            for i in 0..write.events.len() {
                write_of.push(i32::try_from(w + 1).unwrap_or(i32::MAX));
                index.push(i as i64);
            }
        }
        let columns = EventColumns::new(writes.iter().flat_map(|w| w.events.iter()), total);
        let statement = client
            .prepare_cached(&self.shared.sql.append)
            .await
            .map_err(|e| CallError::Store(pg_error(e)))?;
        let row = client
            .query_one(
                &statement,
                &[
                    &[
                        &streams as &(dyn tokio_postgres::types::ToSql + Sync),
                        &kinds,
                        &expected,
                        &counts,
                        &write_of,
                        &index,
                    ][..],
                    &columns.arrays()[..],
                ]
                .concat(),
            )
            .await;
        let row = match row {
            Ok(row) => row,
            Err(e) => return Err(classify_error(e)),
        };
        let base: i64 = row.get(0);
        let firsts: Vec<i64> = row.get(1);
        let mut position =
            u64::try_from(base).map_err(|_| CallError::Store(corrupt("base", base)))?;
        let mut result = Vec::with_capacity(writes.len());
        for (write, first) in writes.iter().zip(firsts) {
            let first =
                u64::try_from(first).map_err(|_| CallError::Store(corrupt("version", first)))?;
            let count = write.events.len() as u64;
            result.push(StreamAppended {
                stream: write.stream.clone(),
                first_revision: first,
                version: first + count,
                first_position: (count > 0).then_some(Position(position)),
                last_position: (count > 0).then_some(Position(position + count - 1)),
            });
            position += count;
        }
        Ok(AppendResult { streams: result })
    }

    /// Appends on `client`, deciding repeats and conflicts as the port says.
    async fn append_on(
        &self,
        client: &impl GenericClient,
        writes: &[StreamWrite],
        guard: Guard,
    ) -> Result<AppendResult, StoreError> {
        let first = match (writes, guard) {
            ([one], Guard::None) if !one.events.is_empty() => self.call_one(client, one).await,
            _ => Err(CallError::Recheck),
        };
        let first = match first {
            Err(CallError::Recheck | CallError::Raced) => {
                self.shared.by_function.fetch_add(1, Ordering::Relaxed);
                let all: Vec<&StreamWrite> = writes.iter().collect();
                self.guarded_call(client, &all, guard).await
            }
            other => {
                if other.is_ok() {
                    self.shared.one_statement.fetch_add(1, Ordering::Relaxed);
                }
                other
            }
        };
        match first {
            Ok(result) => return Ok(result),
            Err(CallError::Store(e)) => return Err(e),
            Err(
                CallError::Conflict { .. }
                | CallError::DuplicateId
                | CallError::Recheck
                | CallError::Raced
                | CallError::Tombstoned { .. },
            ) => {}
        }
        // Rare paths: a conflict may be a repeat of an append that succeeded, and a stored id
        // may be a repeat or a reuse. Decide every write in request order as the port says (ids
        // first, then the expectation), with the stored events and current versions in hand.
        let mut last_conflict = None;
        let (mut id_races, mut revision_races) = (0, 0);
        while id_races < MAX_APPEND_ATTEMPTS && revision_races < MAX_REVISION_RACES {
            let ids: Vec<uuid::Uuid> = writes
                .iter()
                .flat_map(|w| w.events.iter().map(|e| *e.id.as_uuid()))
                .collect();
            let names: Vec<&str> = writes.iter().map(|w| w.stream.as_str()).collect();
            let statement = client
                .prepare_cached(&self.shared.sql.by_ids)
                .await
                .map_err(pg_error)?;
            let rows = client.query(&statement, &[&ids]).await.map_err(pg_error)?;
            let mut stored = HashMap::with_capacity(rows.len());
            for row in &rows {
                let event = decode(row)?;
                stored.insert(event.id, event);
            }
            let statement = client
                .prepare_cached(&self.shared.sql.versions)
                .await
                .map_err(pg_error)?;
            let mut records: HashMap<String, StreamInfo> = HashMap::new();
            for row in client
                .query(&statement, &[&names])
                .await
                .map_err(pg_error)?
            {
                if let Some(info) = decode_info(&row)? {
                    records.insert(row.get(4), info);
                }
            }
            let mut outcome: Vec<Option<StreamAppended>> = Vec::with_capacity(writes.len());
            let mut new = Vec::new();
            for write in writes {
                let found: Vec<Option<&RecordedEvent>> =
                    write.events.iter().map(|e| stored.get(&e.id)).collect();
                match classify_write(write, &found)? {
                    WriteDisposition::Repeat(original) => outcome.push(Some(original)),
                    WriteDisposition::New => {
                        let current =
                            append_target(&write.stream, records.get(write.stream.as_str()))?;
                        if !write.expected.is_satisfied_by(current) {
                            return Err(StoreError::Conflict {
                                stream: write.stream.clone(),
                                expected: write.expected,
                                actual: current,
                            });
                        }
                        outcome.push(None);
                        new.push(write);
                    }
                }
            }
            if new.is_empty() {
                return Ok(AppendResult {
                    streams: outcome.into_iter().flatten().collect(),
                });
            }
            match self.guarded_call(client, &new, guard).await {
                Ok(result) => {
                    let mut appended = result.streams.into_iter();
                    let streams = outcome
                        .into_iter()
                        .map(|o| o.or_else(|| appended.next()))
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| corrupt("append", "result count"))?;
                    return Ok(AppendResult { streams });
                }
                // A concurrent append changed a stream or stored one of these ids meanwhile:
                // decide again.
                Err(CallError::Conflict { index, actual }) => {
                    let write = new.get(index).ok_or_else(|| corrupt("conflict", index))?;
                    last_conflict = Some(StoreError::Conflict {
                        stream: write.stream.clone(),
                        expected: write.expected,
                        actual: (actual > 0).then_some(actual),
                    });
                    id_races += 1;
                }
                Err(CallError::DuplicateId | CallError::Recheck) => id_races += 1,
                // Someone else's append went through: the next round sees it.
                Err(CallError::Raced) => revision_races += 1,
                Err(CallError::Tombstoned { index }) => {
                    let write = new.get(index).ok_or_else(|| corrupt("tombstone", index))?;
                    return Err(StoreError::StreamTombstoned {
                        stream: write.stream.clone(),
                    });
                }
                Err(CallError::Store(e)) => return Err(e),
            }
        }
        if let Some(conflict) = last_conflict {
            return Err(conflict);
        }
        let message = if revision_races >= MAX_REVISION_RACES {
            "concurrent appends kept taking the same revisions"
        } else {
            "concurrent appends kept racing on the same event ids"
        };
        Err(StoreError::Backend {
            message: message.to_owned(),
            source: None,
        })
    }
}

fn classify_error(e: tokio_postgres::Error) -> CallError {
    if let Some(db) = e.as_db_error() {
        if db.code().code() == "SR001" {
            let detail = db.detail().unwrap_or_default();
            let parsed = detail
                .split_once(':')
                .and_then(|(i, v)| Some((i.parse::<usize>().ok()?, v.parse::<u64>().ok()?)));
            if let Some((i, actual)) = parsed {
                return CallError::Conflict {
                    index: i.saturating_sub(1),
                    actual,
                };
            }
        }
        if db.code().code() == "SR002"
            && let Some(Ok(i)) = db.detail().map(str::parse::<usize>)
        {
            return CallError::Tombstoned {
                index: i.saturating_sub(1),
            };
        }
        // The plain-SQL path's position overflows past the position range (see `Sql`).
        if db.code() == &tokio_postgres::error::SqlState::NUMERIC_VALUE_OUT_OF_RANGE {
            return CallError::Recheck;
        }
        // A revision taken by a concurrent append, or a fence: decide again.
        if db.code() == &tokio_postgres::error::SqlState::UNIQUE_VIOLATION
            && db.constraint() == Some("events_stream_revision")
        {
            return CallError::Raced;
        }
        if db.code() == &tokio_postgres::error::SqlState::UNIQUE_VIOLATION
            && db.constraint() == Some("events_event_id")
        {
            return CallError::DuplicateId;
        }
    }
    CallError::Store(pg_error(e))
}
impl EventStore for PostgresStore {
    async fn append(&self, writes: Vec<StreamWrite>) -> Result<AppendResult, StoreError> {
        validate_append(&writes)?;
        let client = self.client().await?;
        // Only committed appends are remembered (an append in a caller's transaction may
        // still roll back), and a failed one forgets its streams.
        let outcome = self.append_on(&client, &writes, Guard::None).await;
        self.remember(&writes, outcome.as_ref().ok());
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
            .prepare_cached(&self.shared.sql.version)
            .await
            .map_err(pg_error)?;
        let row = client
            .query_opt(&statement, &[&stream.as_str()])
            .await
            .map_err(pg_error)?;
        match row {
            None => Ok(None),
            Some(row) => decode_info(&row),
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
            .query_one(&sql.version, &[&stream.as_str()])
            .await
            .map_err(pg_error)?;
        let current = decode_info(&row)?;
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
        let events = self.query(&self.shared.sql.by_id, &[id.as_uuid()]).await?;
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
        if self.safe_head().await? >= from {
            return Ok(());
        }
        tokio::select! {
            _ = wake.changed() => {}
            _ = tokio::time::sleep(self.shared.poll_interval) => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The check refuses exactly what a parse into a `Value` refuses, so that a payload goes to
    /// `jsonb` or to `bytea` as it did when the check built the value.
    #[test]
    fn the_payload_check_agrees_with_a_full_parse() {
        let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        let cases = [
            r#"{"account":"acc-1","amount":1250,"note":"x"}"#.to_owned(),
            r#"{"a":[1,-2,3.5e10,true,false,null,{"b":"\n\"\u00e9\ud83d\ude00"}]}"#.to_owned(),
            r#""\ud800""#.to_owned(),
            r#""\udc00 alone""#.to_owned(),
            r#"{"\ud800":1}"#.to_owned(),
            r#""\x""#.to_owned(),
            "1e400".to_owned(),
            "-1e400".to_owned(),
            "18446744073709551616".to_owned(),
            "1.5".to_owned(),
            r#"{"a":1,"a":2}"#.to_owned(),
            r#"{"a":1} trailing"#.to_owned(),
            r#"{"a":1,}"#.to_owned(),
            "[1,2".to_owned(),
            "".to_owned(),
            "nul".to_owned(),
            "\"tab\there\"".to_owned(),
            deep(100),
            deep(127),
            deep(128),
            deep(129),
            deep(1000),
        ];
        for text in &cases {
            assert_eq!(
                serde_json::from_str::<Parsed>(text).is_ok(),
                serde_json::from_str::<serde_json::Value>(text).is_ok(),
                "{text:.60}"
            );
        }
        assert!(storable_json(JSON_CONTENT_TYPE, br#"{"a":1}"#).is_some());
        assert!(storable_json(JSON_CONTENT_TYPE, br#""\ud800""#).is_none());
        assert!(storable_json(JSON_CONTENT_TYPE, br#""\u0000""#).is_none());
        assert!(storable_json("application/octet-stream", br#"{"a":1}"#).is_none());
    }
}
