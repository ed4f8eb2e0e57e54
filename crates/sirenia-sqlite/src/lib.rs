//! # sirenia-sqlite
//!
//! Sirenia's embedded event store: the whole [`EventStore`] port in one SQLite file (plus
//! SQLite's `-wal` and `-shm` files and a `-lock` file), with nothing to install.
//!
//! - **Durable**: WAL mode with `synchronous=FULL` by default. An append that returned is on
//!   disk; a killed process or a power cut does not lose it. [`Durability::Normal`] trades the
//!   last commits before a power cut (not a process crash) for speed.
//! - **Group commit**: one writer thread drains every queued append into one transaction with
//!   one sync, checks each caller's expectation and idempotency on its own (one caller's conflict
//!   fails only that caller), then answers each. Concurrent appenders share syncs.
//! - **Readers** use their own connections and never block the writer; subscriptions are woken
//!   by the writer in-process, and a [read-only](SqliteStore::open_read_only) handle in another
//!   process polls.
//! - **One writer per file**: a second writer, in this or another process, gets
//!   [`StoreError::InUse`].
//! - **Fail-stop**: after a failed write or sync the store refuses writes until it is reopened;
//!   it never acknowledges an append it could not sync.
//! - **Versioned schema**: forward-only migrations on open; a file from a newer Sirenia, or a
//!   SQLite file that is not a Sirenia store, is [`StoreError::Incompatible`].
//!
//! ```
//! use sirenia_core::{EventStore, ExpectedVersion, NewEvent, ReadStream, StreamId, StreamWrite};
//! use sirenia_sqlite::SqliteStore;
//! use futures_util::TryStreamExt;
//!
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! let dir = tempfile::tempdir()?;
//! let store = SqliteStore::open(dir.path().join("events.db")).await?;
//! let stream = StreamId::new("order-1")?;
//! let event = NewEvent::json("OrderPlaced", &serde_json::json!({"total": 42}));
//! store
//!     .append(vec![StreamWrite::new(stream.clone(), ExpectedVersion::NoStream, vec![event])])
//!     .await?;
//! let events: Vec<_> = store.read_stream(&stream, ReadStream::forward()).try_collect().await?;
//! assert_eq!(events[0].event_type, "OrderPlaced");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use serde_json::Value;
use sirenia_core::admin::check_documents_limit;
use sirenia_core::lifecycle::{StreamChange, StreamInfo, decide_change};
use sirenia_core::projection::{Checkpoint, FailedEvent, ProjectionRequest, StoredProjection};
use sirenia_core::snapshot::SnapshotStore;
use sirenia_core::store::ImportBatch;
use sirenia_core::store::validate_append;
use sirenia_core::transactional::TransactionalTarget;
use sirenia_core::{
    AllPage, AppendResult, Capabilities, Direction, Document, EventFilter, EventId, EventStore,
    Position, RecordedEvent, StoreAdmin, StoreError, StreamId, StreamWrite,
};
use tokio::sync::{mpsc, oneshot, watch};

pub mod projection;
mod read;
mod schema;
mod snapshots;
mod writer;

pub use projection::{SqliteBackend, SqliteCheckpoints, SqliteProjection, SqliteTarget};
/// The SQLite bindings projection handlers write with (the same version as the store's).
pub use rusqlite;
pub use snapshots::SqliteSnapshots;

pub use writer::{MAX_GROUP_APPENDS, MAX_GROUP_EVENTS};

/// Appends queued for the writer at most; further appenders wait (back-pressure).
pub const WRITE_QUEUE_CAPACITY: usize = 4_096;
/// Reader connections kept open for reuse.
pub const MAX_IDLE_READERS: usize = 8;
/// SQLite page size of new files, in bytes.
pub const DEFAULT_PAGE_SIZE: u32 = 4096;
/// How long a connection waits on SQLite's file locks before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How hard a commit syncs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=FULL`: every commit is synced before it is acknowledged. Survives process
    /// crashes and power loss.
    #[default]
    Full,
    /// `synchronous=NORMAL`: the WAL is synced at checkpoints only. Survives process crashes;
    /// a power loss or OS crash can lose the last commits (never corrupt the file).
    Normal,
}

/// How to open a store.
#[derive(Clone, Debug)]
pub struct SqliteOptions {
    /// Commit durability.
    pub durability: Durability,
    /// Caps the database at this many pages (`PRAGMA max_page_count`): appends that would grow
    /// it further fail, as on a full disk, and the store then refuses writes.
    pub max_page_count: Option<u64>,
    /// How often a read-only handle polls for new events while a subscription waits.
    pub poll_interval: Duration,
    /// SQLite page size for a new file, in bytes (a power of two from 512 to 65536). An
    /// existing file keeps the page size it was created with.
    pub page_size: u32,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            durability: Durability::Full,
            max_page_count: None,
            poll_interval: Duration::from_millis(50),
            page_size: DEFAULT_PAGE_SIZE,
        }
    }
}

/// The embedded store. Cloning gives another handle to the same open store; the file is closed
/// (and its lock released) when the last handle is dropped.
#[derive(Clone)]
pub struct SqliteStore {
    shared: Arc<Shared>,
}

struct Shared {
    path: PathBuf,
    writer: Option<mpsc::Sender<writer::WriteRequest>>,
    writer_thread: Option<JoinHandle<()>>,
    head: watch::Receiver<Position>,
    readers: Arc<ReaderPool>,
    poll_interval: Duration,
    counters: Arc<writer::Counters>,
    /// `PRAGMA synchronous` for connections that write (projections).
    synchronous: &'static str,
    /// Bumped when a projection of this process commits (the admin port's notifications).
    changes: Arc<watch::Sender<u64>>,
    _lock: Option<File>,
}

/// What the writer has committed since the store was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Transactions committed (each one sync).
    pub commits: u64,
    /// Appends acknowledged.
    pub appends: u64,
    /// Events written.
    pub events: u64,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Close the queue, let the writer finish its last group, then release the lock.
        self.writer.take();
        if let Some(thread) = self.writer_thread.take() {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.shared.path)
            .field("read_only", &self.shared.writer.is_none())
            .finish()
    }
}

pub(crate) fn sqlite_error(e: rusqlite::Error) -> StoreError {
    StoreError::backend("SQLite failed", e)
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::backend(format!("{what} {}", path.display()), e)
}

fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push("-lock");
    PathBuf::from(name)
}

/// Page cache of the writer's connection, in KiB.
const WRITER_CACHE_KIB: i64 = 16 * 1024;
/// Page cache of each reader connection, in KiB.
const READER_CACHE_KIB: i64 = 4 * 1024;

/// Waits for a lock another connection of the file holds: polls every 50 µs for the first
/// millisecond, then every 200 µs, then every millisecond, giving up after about
/// [`BUSY_TIMEOUT`]. SQLite's own handler sleeps up to 100 ms at a time, so a connection that
/// writes while the store's writer commits back to back (a projection) would wait for whole
/// bursts; polling finely takes the lock in the first gap between two commits.
pub(crate) fn wait_for_lock(attempt: i32) -> bool {
    let (sleep, limit) = match attempt {
        0..20 => (Duration::from_micros(50), true),
        20..1_020 => (Duration::from_micros(200), true),
        n => (
            Duration::from_millis(1),
            u128::from(n.unsigned_abs()) < 1_020 + BUSY_TIMEOUT.as_millis(),
        ),
    };
    if limit {
        std::thread::sleep(sleep);
    }
    limit
}

fn configure(conn: &Connection, cache_kib: i64) -> Result<(), StoreError> {
    conn.busy_handler(Some(wait_for_lock))
        .map_err(sqlite_error)?;
    conn.set_prepared_statement_cache_capacity(64);
    conn.pragma_update(None, "temp_store", "memory")
        .map_err(sqlite_error)?;
    // A negative cache size is in KiB.
    conn.pragma_update(None, "cache_size", -cache_kib)
        .map_err(sqlite_error)
}

fn open_writable(path: PathBuf, options: SqliteOptions) -> Result<SqliteStore, StoreError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| io_error("cannot create", parent, e))?;
    }
    let lock_file = lock_path(&path);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_file)
        .map_err(|e| io_error("cannot open", &lock_file, e))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            return Err(StoreError::InUse {
                message: format!("{} is open for writing elsewhere", path.display()),
            });
        }
        Err(TryLockError::Error(e)) => return Err(io_error("cannot lock", &lock_file, e)),
    }
    let mut conn = Connection::open(&path).map_err(sqlite_error)?;
    configure(&conn, WRITER_CACHE_KIB)?;
    if !(512..=65_536).contains(&options.page_size) || !options.page_size.is_power_of_two() {
        return Err(StoreError::InvalidOptions {
            message: format!(
                "page size {} is not a power of two from 512 to 65536",
                options.page_size
            ),
        });
    }
    // Takes effect only while the file is still empty (before WAL mode is set).
    conn.pragma_update(None, "page_size", options.page_size)
        .map_err(sqlite_error)?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "wal", |r| r.get(0))
        .map_err(sqlite_error)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Backend {
            message: format!("the file system does not support WAL mode (got {mode})"),
            source: None,
        });
    }
    let synchronous = synchronous_pragma(options.durability);
    conn.pragma_update(None, "synchronous", synchronous)
        .map_err(sqlite_error)?;
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)
        .map_err(sqlite_error)?;
    schema::migrate(&mut conn)?;
    if let Some(pages) = options.max_page_count {
        conn.pragma_update(None, "max_page_count", read::to_i64(pages))
            .map_err(sqlite_error)?;
    }
    let (head_tx, head_rx) = watch::channel(Position::START);
    let counters = Arc::new(writer::Counters::default());
    let writer = writer::Writer::new(conn, head_tx, counters.clone())?;
    let (tx, rx) = mpsc::channel(WRITE_QUEUE_CAPACITY);
    let thread = std::thread::Builder::new()
        .name("sirenia-sqlite-writer".to_owned())
        .spawn(move || writer.run(rx))
        .map_err(|e| io_error("cannot start the writer for", &path, e))?;
    let reader_path = path.clone();
    Ok(SqliteStore {
        shared: Arc::new(Shared {
            path,
            writer: Some(tx),
            writer_thread: Some(thread),
            head: head_rx,
            readers: Arc::new(ReaderPool::new(reader_path, Vec::new())),
            poll_interval: options.poll_interval,
            counters,
            synchronous,
            changes: Arc::new(watch::channel(0).0),
            _lock: Some(lock),
        }),
    })
}

fn synchronous_pragma(durability: Durability) -> &'static str {
    match durability {
        Durability::Full => "full",
        Durability::Normal => "normal",
    }
}

fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sqlite_error)?;
    configure(&conn, READER_CACHE_KIB)?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating it if needed) the store at `path` for reading and writing, with default
    /// options.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, SqliteOptions::default()).await
    }

    /// Opens the store at `path` for reading and writing with `options`.
    pub async fn open_with(
        path: impl AsRef<Path>,
        options: SqliteOptions,
    ) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        blocking(move || open_writable(path, options)).await
    }

    /// Opens an existing store read-only, beside a writer in another process. Appends fail;
    /// subscriptions poll for new events every [`SqliteOptions::poll_interval`].
    pub async fn open_read_only(
        path: impl AsRef<Path>,
        options: SqliteOptions,
    ) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        blocking(move || {
            if !path.exists() {
                return Err(StoreError::Backend {
                    message: format!("no store at {}", path.display()),
                    source: None,
                });
            }
            let conn = open_reader(&path)?;
            if schema::check(&conn)? < schema::SCHEMA_VERSION {
                return Err(StoreError::Incompatible {
                    message: "the file needs a migration; open it for writing once".to_owned(),
                });
            }
            let head = read::head(&conn)?;
            let (_, head_rx) = watch::channel(head);
            let reader_path = path.clone();
            Ok(SqliteStore {
                shared: Arc::new(Shared {
                    path,
                    writer: None,
                    writer_thread: None,
                    head: head_rx,
                    readers: Arc::new(ReaderPool::new(reader_path, vec![conn])),
                    poll_interval: options.poll_interval,
                    counters: Arc::default(),
                    synchronous: synchronous_pragma(options.durability),
                    changes: Arc::new(watch::channel(0).0),
                    _lock: None,
                }),
            })
        })
        .await
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// A projection named `name` whose read model `handler` keeps in this file, for a
    /// [`Projector`](sirenia_core::projection::Projector): its writes and checkpoint commit in
    /// one transaction (exactly once). Works on read-only handles too (the target opens its own
    /// connection), so a projection can run in another process than the writer. For a read
    /// model of documents, on any store, see [`StoreAdmin::document_projection`].
    pub fn projection<P: SqliteProjection>(&self, name: &str, handler: P) -> SqliteTarget<P> {
        TransactionalTarget::new(name, self.backend(handler))
    }

    fn backend<P: SqliteProjection>(&self, handler: P) -> SqliteBackend<P> {
        SqliteBackend::new(
            &self.shared.path,
            self.shared.synchronous,
            self.shared.changes.clone(),
            handler,
        )
    }

    /// Runs `f` on the blocking pool with the file's path.
    async fn on_file<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Path) -> Result<T, StoreError> + Send + 'static,
    {
        let path = self.shared.path.clone();
        blocking(move || f(&path)).await
    }

    /// What the writer has committed since the store was opened. With group commit, `commits`
    /// stays below `appends` under concurrent appenders: they share transactions and syncs.
    pub fn stats(&self) -> WriterStats {
        let c = &self.shared.counters;
        WriterStats {
            commits: c.commits.load(std::sync::atomic::Ordering::Relaxed),
            appends: c.appends.load(std::sync::atomic::Ordering::Relaxed),
            events: c.events.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Runs `f` on a reader connection, on the blocking pool. The task holds only the reader
    /// pool, never the writer or the file lock: dropping the last handle closes the store at
    /// once even while reads it started are finishing.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let pool = self.shared.readers.clone();
        blocking(move || {
            let conn = pool.take()?;
            let result = f(&conn);
            pool.give_back(conn);
            result
        })
        .await
    }
}

/// Reader connections, opened on demand and kept for reuse.
struct ReaderPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl ReaderPool {
    fn new(path: PathBuf, idle: Vec<Connection>) -> Self {
        ReaderPool {
            path,
            idle: Mutex::new(idle),
        }
    }

    fn take(&self) -> Result<Connection, StoreError> {
        match self.idle.lock().ok().and_then(|mut idle| idle.pop()) {
            Some(conn) => Ok(conn),
            None => open_reader(&self.path),
        }
    }

    fn give_back(&self, conn: Connection) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE_READERS
        {
            idle.push(conn);
        }
    }
}

async fn blocking<T, F>(f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::backend("a blocking SQLite task failed", e))?
}

impl StoreAdmin for SqliteStore {
    type Backend = SqliteBackend<()>;

    fn projection_backend(&self) -> SqliteBackend<()> {
        self.backend(())
    }

    fn snapshots(&self) -> Arc<dyn SnapshotStore> {
        Arc::new(SqliteSnapshots::new(
            &self.shared.path,
            self.shared.synchronous,
        ))
    }

    async fn import(&self, batch: ImportBatch) -> Result<AppendResult, StoreError> {
        let events = sirenia_core::store::validate_import(&batch)?;
        let Some(queue) = &self.shared.writer else {
            return Err(StoreError::WritesDisabled {
                reason: "the store was opened read-only".to_owned(),
            });
        };
        let (reply, answer) = oneshot::channel();
        queue
            .send(writer::WriteRequest {
                writes: batch.writes,
                events,
                recorded_at: Some(batch.recorded_at),
                reply,
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn projections(&self) -> Result<Vec<StoredProjection>, StoreError> {
        self.on_file(projection::stored_projections).await
    }

    async fn checkpoint(&self, name: &str) -> Result<Checkpoint, StoreError> {
        let name = name.to_owned();
        self.on_file(move |path| projection::stored_checkpoint(path, &name))
            .await
    }

    async fn parked(&self, name: &str) -> Result<Vec<FailedEvent>, StoreError> {
        let name = name.to_owned();
        self.on_file(move |path| projection::stored_parked(path, &name))
            .await
    }

    async fn request_projection(
        &self,
        name: &str,
        request: ProjectionRequest,
    ) -> Result<(), StoreError> {
        let (synchronous, name) = (self.shared.synchronous, name.to_owned());
        self.on_file(move |path| projection::request(path, synchronous, &name, request))
            .await
    }

    async fn pending_request(&self, name: &str) -> Result<Option<ProjectionRequest>, StoreError> {
        let name = name.to_owned();
        self.on_file(move |path| projection::pending_request(path, &name))
            .await
    }

    async fn set_active_version(&self, name: &str, version: &str) -> Result<(), StoreError> {
        let synchronous = self.shared.synchronous;
        let (name, version) = (name.to_owned(), version.to_owned());
        self.on_file(move |path| projection::set_active_version(path, synchronous, &name, &version))
            .await
    }

    async fn active_version(&self, name: &str) -> Result<Option<String>, StoreError> {
        let name = name.to_owned();
        self.on_file(move |path| projection::active_version(path, &name))
            .await
    }

    async fn document(&self, collection: &str, id: &str) -> Result<Option<Value>, StoreError> {
        let (collection, id) = (collection.to_owned(), id.to_owned());
        self.on_file(move |path| projection::stored_document(path, &collection, &id))
            .await
    }

    async fn documents(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Document>, StoreError> {
        check_documents_limit(limit)?;
        let (collection, after) = (collection.to_owned(), after.map(str::to_owned));
        self.on_file(move |path| {
            projection::stored_documents(path, &collection, after.as_deref(), limit)
        })
        .await
    }

    fn projection_changes(&self) -> watch::Receiver<u64> {
        self.shared.changes.subscribe()
    }
}

impl EventStore for SqliteStore {
    async fn append(&self, writes: Vec<StreamWrite>) -> Result<AppendResult, StoreError> {
        let events = validate_append(&writes)?;
        let Some(queue) = &self.shared.writer else {
            return Err(StoreError::WritesDisabled {
                reason: "the store was opened read-only".to_owned(),
            });
        };
        let (reply, answer) = oneshot::channel();
        queue
            .send(writer::WriteRequest {
                writes,
                events,
                recorded_at: None,
                reply,
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<Option<u64>, StoreError> {
        let stream = stream.clone();
        self.read(move |conn| read::stream_version(conn, &stream))
            .await
    }

    async fn stream_info(&self, stream: &StreamId) -> Result<Option<StreamInfo>, StoreError> {
        let stream = stream.clone();
        self.read(move |conn| read::stream_info(conn, &stream))
            .await
    }

    async fn change_stream(
        &self,
        stream: &StreamId,
        change: StreamChange,
    ) -> Result<Option<StreamInfo>, StoreError> {
        if self.shared.writer.is_none() {
            return Err(StoreError::WritesDisabled {
                reason: "the store was opened read-only".to_owned(),
            });
        }
        let (path, synchronous) = (self.shared.path.clone(), self.shared.synchronous);
        let stream = stream.clone();
        blocking(move || {
            // Its own transaction, serialized with the writer's by SQLite's write lock.
            let mut conn = projection::open_connection(&path, synchronous)?;
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(sqlite_error)?;
            let current = read::stream_info(&tx, &stream)?;
            let Some(changed) = decide_change(&stream, current, change)? else {
                return Ok(current);
            };
            tx.execute(
                "INSERT INTO stream_lifecycle (stream_id, start, readable_from, status)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (stream_id) DO UPDATE SET start = excluded.start,
                   readable_from = excluded.readable_from, status = excluded.status",
                rusqlite::params![
                    stream.as_str(),
                    read::to_i64(changed.start),
                    read::to_i64(changed.readable_from),
                    changed.status.code()
                ],
            )
            .map_err(sqlite_error)?;
            tx.commit().map_err(sqlite_error)?;
            Ok(Some(changed))
        })
        .await
    }

    async fn event_by_id(&self, id: EventId) -> Result<Option<RecordedEvent>, StoreError> {
        self.read(move |conn| read::event_by_id(conn, id)).await
    }

    async fn head_position(&self) -> Result<Position, StoreError> {
        if self.shared.writer.is_some() {
            // The writer publishes its head after each commit.
            return Ok(*self.shared.head.borrow());
        }
        self.read(read::head).await
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            // One writer assigns every position in commit order, and rows are never deleted.
            dense_positions: true,
            durable: true,
            multi_process_writers: false,
            transactional_projections: true,
            // A lock file per projection name.
            cross_process_locking: true,
            // Checkpoints moved by another process are seen on a re-read only.
            cross_process_notifications: false,
            import_with_timestamps: true,
        }
    }

    async fn read_stream_page(
        &self,
        stream: &StreamId,
        from: u64,
        direction: Direction,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let stream = stream.clone();
        self.read(move |conn| read::stream_page(conn, &stream, from, direction, max))
            .await
    }

    async fn read_all_page(
        &self,
        from: Position,
        direction: Direction,
        filter: &EventFilter,
        max: usize,
    ) -> Result<AllPage, StoreError> {
        let filter = filter.clone();
        self.read(move |conn| read::all_page(conn, from, direction, &filter, max))
            .await
    }

    async fn wait_for_events(&self, from: Position) -> Result<(), StoreError> {
        if self.shared.writer.is_some() {
            let mut head = self.shared.head.clone();
            return head
                .wait_for(|h| *h >= from)
                .await
                .map(|_| ())
                .map_err(|_| StoreError::Closed);
        }
        loop {
            if self.read(read::head).await? >= from {
                return Ok(());
            }
            tokio::time::sleep(self.shared.poll_interval).await;
        }
    }
}
