//! The embedded store's [`ProjectionBackend`]: projections whose read model lives in the store's
//! file commit the handler's writes (its own tables through [`SqliteProjection`], documents)
//! in the same SQLite transaction that moves the checkpoint, so a crash at any point neither
//! loses nor repeats an effect. The target itself is core's
//! [`TransactionalTarget`].
//!
//! Checkpoints live in the `projections` table, parked events in `parked_events`, documents in
//! `documents`. One instance of a projection name runs at a time, across processes: a backend
//! holds an exclusive lock on `<file>-projection-<name>.lock` from `lock` until it is dropped;
//! another instance's `lock` waits (a standby) and takes over when the lock is released, which
//! the operating system does when the holder dies. Here too are the admin port's queries on
//! those tables.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use serde_json::Value;
use sirenia_core::Document;
use sirenia_core::projection::{
    ApplyError, Checkpoint, FailedEvent, HandlerError, ProjectionRequest,
};
use sirenia_core::transactional::{
    BackendCheckpoints, Bookkeeping, DocumentWrite, ProjectionBackend, Step, TransactionalTarget,
    Work,
};
use sirenia_core::{Position, RecordedEvent, StoreError, Timestamp};
use tokio::sync::watch;

use crate::read::to_i64;
use crate::sqlite_error;

/// How often a standby instance tries to take a projection's lock.
pub const LOCK_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// A projection whose read model is tables in the store's file. Each method runs inside the
/// transaction it is given; returning an error rolls all of it back.
pub trait SqliteProjection: Send + 'static {
    /// Creates the read model's tables if they do not exist (runs on every start).
    fn setup(&mut self, tx: &Transaction<'_>) -> Result<(), HandlerError>;
    /// Applies one event.
    fn apply(&mut self, tx: &Transaction<'_>, event: &RecordedEvent) -> Result<(), HandlerError>;
    /// Empties the read model, for a rebuild.
    fn reset(&mut self, tx: &Transaction<'_>) -> Result<(), HandlerError>;
}

/// No handler of the store's own: a projection whose read model is documents only.
impl SqliteProjection for () {
    fn setup(&mut self, _: &Transaction<'_>) -> Result<(), HandlerError> {
        Ok(())
    }
    fn apply(&mut self, _: &Transaction<'_>, _: &RecordedEvent) -> Result<(), HandlerError> {
        Ok(())
    }
    fn reset(&mut self, _: &Transaction<'_>) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// A projection target on the embedded store: see [`crate::SqliteStore::projection`].
pub type SqliteTarget<P> = TransactionalTarget<SqliteBackend<P>>;

/// Checkpoints in the store's file for [`AtLeastOnce`](sirenia_core::projection::AtLeastOnce)
/// projections (sinks outside the file): see
/// [`StoreAdmin::checkpoints`](sirenia_core::StoreAdmin::checkpoints).
pub type SqliteCheckpoints = BackendCheckpoints<SqliteBackend<()>>;

/// The embedded store's [`ProjectionBackend`], running handler `P` (`()` for none) in its
/// transactions: a connection of its own (opened on first use) and the projection's lock file.
pub struct SqliteBackend<P> {
    path: PathBuf,
    synchronous: &'static str,
    changes: Arc<watch::Sender<u64>>,
    /// The handler and, once opened, the connection. Blocking work takes them out and puts
    /// them back itself, so a caller that stops waiting (a cancelled run) loses nothing.
    inner: Arc<Mutex<Option<Box<Inner<P>>>>>,
    /// Set while blocking work holds `inner` (cleared when it puts it back, or panics).
    busy: Arc<AtomicBool>,
    /// The projection's lock file, once taken, with the name it locks.
    lock: Option<(String, File)>,
}

/// Clears a busy flag when dropped, also when the work panics.
struct Busy(Arc<AtomicBool>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

struct Inner<P> {
    conn: Option<Connection>,
    handler: P,
}

impl<P: SqliteProjection> SqliteBackend<P> {
    pub(crate) fn new(
        path: &Path,
        synchronous: &'static str,
        changes: Arc<watch::Sender<u64>>,
        handler: P,
    ) -> Self {
        SqliteBackend {
            path: path.to_owned(),
            synchronous,
            changes,
            inner: Arc::new(Mutex::new(Some(Box::new(Inner {
                conn: None,
                handler,
            })))),
            busy: Arc::new(AtomicBool::new(false)),
            lock: None,
        }
    }

    /// Runs `f` with the connection and handler on the blocking pool, opening the connection
    /// first if needed.
    async fn with<R, F>(&mut self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection, &mut P) -> R + Send + 'static,
    {
        let Some(mut inner) = take_inner(self.inner.clone(), self.busy.clone()).await? else {
            return Err(StoreError::Backend {
                message: "a projection handler panicked; the target cannot go on".to_owned(),
                source: None,
            });
        };
        let (slot, path, synchronous) = (self.inner.clone(), self.path.clone(), self.synchronous);
        self.busy.store(true, Ordering::SeqCst);
        let busy = Busy(self.busy.clone());
        tokio::task::spawn_blocking(move || {
            let _busy = busy;
            let conn = match inner.conn.take() {
                Some(conn) => conn,
                None => match open_connection(&path, synchronous) {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Not opened: the handler goes back for the next try.
                        *lock(&slot) = Some(inner);
                        return Err(e);
                    }
                },
            };
            let inner_ref = &mut *inner;
            let conn = inner_ref.conn.insert(conn);
            let result = f(conn, &mut inner_ref.handler);
            *lock(&slot) = Some(inner);
            Ok(result)
        })
        .await
        .map_err(|e| StoreError::backend("a projection handler panicked", e))?
    }
}

/// Takes the handler (and connection) from `slot`, first waiting for blocking work a cancelled
/// caller left running to put them back. `None` if they were lost to a panic.
async fn take_inner<T>(
    slot: Arc<Mutex<Option<T>>>,
    busy: Arc<AtomicBool>,
) -> Result<Option<T>, StoreError> {
    loop {
        if let Some(inner) = lock(&slot).take() {
            return Ok(Some(inner));
        }
        if !busy.load(Ordering::SeqCst) {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `<file>-projection-<name>.lock`, with the name made safe for a file name (and a hash, so
/// distinct names never share a lock).
fn lock_path(path: &Path, name: &str) -> PathBuf {
    let safe: String = name
        .chars()
        .take(40)
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    // FNV-1a: stable across builds and platforms.
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let mut file = path.as_os_str().to_owned();
    file.push(format!("-projection-{safe}-{hash:016x}.lock"));
    PathBuf::from(file)
}

/// Opens the file for a projection's writes and checks it has the projection tables.
pub(crate) fn open_connection(path: &Path, synchronous: &str) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(sqlite_error)?;
    conn.busy_handler(Some(crate::wait_for_lock))
        .map_err(sqlite_error)?;
    conn.pragma_update(None, "synchronous", synchronous)
        .map_err(sqlite_error)?;
    let version = crate::schema::check(&conn)?;
    if version < crate::schema::SCHEMA_VERSION {
        return Err(StoreError::Incompatible {
            message: format!(
                "{} has schema version {version}; open it for writing once to migrate it",
                path.display()
            ),
        });
    }
    Ok(conn)
}

/// One attempt at the lock: `None` while another instance holds it.
fn try_lock(lock_file: &Path) -> Result<Option<File>, StoreError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_file)
        .map_err(|e| StoreError::backend(format!("cannot open {}", lock_file.display()), e))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => Err(StoreError::backend(
            format!("cannot lock {}", lock_file.display()),
            e,
        )),
    }
}

/// Waits for the lock of a projection (a standby waits here), in a way that can be cancelled.
async fn take_lock(path: &Path, name: &str) -> Result<File, StoreError> {
    // One lock per file, however the file is named (symlinks, relative paths).
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let lock_file = lock_path(&canonical, name);
    loop {
        let attempt = lock_file.clone();
        let locked = tokio::task::spawn_blocking(move || try_lock(&attempt))
            .await
            .map_err(|e| StoreError::backend("a lock task failed", e))??;
        if let Some(file) = locked {
            return Ok(file);
        }
        tokio::time::sleep(LOCK_POLL_INTERVAL).await;
    }
}

fn handler_error(index: usize, error: HandlerError) -> ApplyError {
    ApplyError::Handler {
        index,
        error,
        prefix_committed: false,
    }
}

fn immediate(conn: &mut Connection) -> Result<Transaction<'_>, StoreError> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sqlite_error)
}

fn load_checkpoint(conn: &Connection, name: &str) -> Result<Checkpoint, StoreError> {
    let row: Option<(i64, Option<String>)> = conn
        .query_row(
            "SELECT next_position, fault FROM projections WHERE name = ?1",
            [name],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(sqlite_error)?;
    let Some((next, fault)) = row else {
        return Ok(Checkpoint {
            next: Position(1),
            fault: None,
        });
    };
    let next = u64::try_from(next).map_err(|_| StoreError::Corrupt {
        message: format!("projection {name} has checkpoint {next}"),
    })?;
    let fault = fault
        .map(|f| serde_json::from_str::<FailedEvent>(&f))
        .transpose()
        .map_err(|e| StoreError::Corrupt {
            message: format!("projection {name} fault record: {e}"),
        })?;
    Ok(Checkpoint {
        next: Position(next),
        fault,
    })
}

fn save_checkpoint(tx: &Transaction<'_>, name: &str, next: Position) -> Result<(), StoreError> {
    // The checkpoint never moves backwards (a reset deletes the row instead).
    tx.prepare_cached(
        "INSERT INTO projections (name, next_position, fault, updated_at) VALUES (?1, ?2, NULL, ?3)
         ON CONFLICT (name) DO UPDATE SET
           next_position = max(next_position, excluded.next_position),
           fault = NULL, updated_at = excluded.updated_at",
    )
    .and_then(|mut s| {
        s.execute(params![
            name,
            to_i64(next.0),
            to_i64(Timestamp::now().as_micros())
        ])
    })
    .map(|_| ())
    .map_err(sqlite_error)
}

fn park_row(tx: &Transaction<'_>, name: &str, failed: &FailedEvent) -> Result<(), StoreError> {
    tx.execute(
        "INSERT OR REPLACE INTO parked_events
           (name, position, event_id, stream_id, event_type, error, attempts, parked_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            name,
            to_i64(failed.position.0),
            failed.event_id.as_uuid().as_bytes().as_slice(),
            failed.stream,
            failed.event_type,
            failed.error,
            failed.attempts,
            to_i64(failed.at.as_micros()),
        ],
    )
    .map(|_| ())
    .map_err(sqlite_error)
}

fn set_fault(conn: &Connection, name: &str, failed: &FailedEvent) -> Result<(), StoreError> {
    let fault = serde_json::to_string(failed).map_err(|e| StoreError::Corrupt {
        message: format!("fault record: {e}"),
    })?;
    conn.execute(
        "INSERT INTO projections (name, next_position, fault, updated_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (name) DO UPDATE SET fault = excluded.fault, updated_at = excluded.updated_at",
        params![
            name,
            to_i64(failed.position.0),
            fault,
            to_i64(Timestamp::now().as_micros())
        ],
    )
    .map(|_| ())
    .map_err(sqlite_error)
}

fn list_parked(conn: &Connection, name: &str) -> Result<Vec<FailedEvent>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT position, event_id, stream_id, event_type, error, attempts, parked_at
             FROM parked_events WHERE name = ?1 ORDER BY position",
        )
        .map_err(sqlite_error)?;
    let rows = stmt
        .query_map([name], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, u32>(5)?,
                r.get::<_, i64>(6)?,
            ))
        })
        .map_err(sqlite_error)?;
    let mut parked = Vec::new();
    for row in rows {
        let (position, id, stream, event_type, error, attempts, at) = row.map_err(sqlite_error)?;
        let corrupt = |what: &str| StoreError::Corrupt {
            message: format!("parked event of {name}: bad {what}"),
        };
        parked.push(FailedEvent {
            position: Position(u64::try_from(position).map_err(|_| corrupt("position"))?),
            event_id: sirenia_core::EventId::from(
                sirenia_core::Uuid::from_slice(&id).map_err(|_| corrupt("event id"))?,
            ),
            stream,
            event_type,
            error,
            attempts,
            at: Timestamp::from_micros(u64::try_from(at).map_err(|_| corrupt("time"))?),
        });
    }
    Ok(parked)
}

fn delete_parked(tx: &Transaction<'_>, name: &str, position: Position) -> Result<(), StoreError> {
    tx.execute(
        "DELETE FROM parked_events WHERE name = ?1 AND position = ?2",
        params![name, to_i64(position.0)],
    )
    .map(|_| ())
    .map_err(sqlite_error)
}

fn reset_rows(tx: &Transaction<'_>, name: &str) -> Result<(), StoreError> {
    tx.execute("DELETE FROM parked_events WHERE name = ?1", [name])
        .and_then(|_| tx.execute("DELETE FROM projections WHERE name = ?1", [name]))
        .map(|_| ())
        .map_err(sqlite_error)
}

fn put_document(tx: &Transaction<'_>, write: &DocumentWrite) -> Result<(), StoreError> {
    match write {
        DocumentWrite::Put {
            collection,
            id,
            body,
        } => tx
            .prepare_cached(
                "INSERT INTO documents (collection, id, body, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (collection, id) DO UPDATE SET body = excluded.body,
                   updated_at = excluded.updated_at",
            )
            .and_then(|mut s| {
                s.execute(params![
                    collection,
                    id,
                    body,
                    to_i64(Timestamp::now().as_micros())
                ])
            }),
        DocumentWrite::Delete { collection, id } => tx
            .prepare_cached("DELETE FROM documents WHERE collection = ?1 AND id = ?2")
            .and_then(|mut s| s.execute(params![collection, id])),
        DocumentWrite::Clear { collection } => {
            tx.execute("DELETE FROM documents WHERE collection = ?1", [collection])
        }
    }
    .map(|_| ())
    .map_err(sqlite_error)
}

fn bookkeeping(tx: &Transaction<'_>, name: &str, change: &Bookkeeping) -> Result<(), StoreError> {
    match change {
        Bookkeeping::Checkpoint(next) => save_checkpoint(tx, name, *next),
        Bookkeeping::Park(failed) => park_row(tx, name, failed),
        Bookkeeping::Unpark(position) => delete_parked(tx, name, *position),
        Bookkeeping::Fault(failed) => set_fault(tx, name, failed),
        Bookkeeping::Reset => reset_rows(tx, name),
        Bookkeeping::FinishRequest(request) => tx
            .execute(
                "DELETE FROM projection_requests WHERE name = ?1 AND kind = ?2",
                params![name, request.as_str()],
            )
            .map(|_| ())
            .map_err(sqlite_error),
    }
}

/// Runs the handler's step inside `tx`.
fn run_step<P: SqliteProjection>(
    handler: &mut P,
    tx: &Transaction<'_>,
    step: &Step,
) -> Result<(), ApplyError> {
    match step {
        Step::Setup => handler.setup(tx).map_err(|e| handler_error(0, e)),
        Step::Apply(batch) => {
            for (index, event) in batch.events().iter().enumerate() {
                handler
                    .apply(tx, event)
                    .map_err(|e| handler_error(index, e))?;
            }
            Ok(())
        }
        Step::Replay(event) => handler.apply(tx, event).map_err(|e| handler_error(0, e)),
        Step::Reset => handler.reset(tx).map_err(|e| handler_error(0, e)),
    }
}

/// The committed document `id` of `collection`, read on `conn`.
pub(crate) fn read_document(
    conn: &Connection,
    collection: &str,
    id: &str,
) -> Result<Option<Value>, StoreError> {
    let body: Option<String> = conn
        .prepare_cached("SELECT body FROM documents WHERE collection = ?1 AND id = ?2")
        .and_then(|mut s| {
            s.query_row(params![collection, id], |r| r.get(0))
                .optional()
        })
        .map_err(sqlite_error)?;
    body.map(|b| decode_document(collection, id, &b))
        .transpose()
}

fn decode_document(collection: &str, id: &str, body: &str) -> Result<Value, StoreError> {
    serde_json::from_str(body).map_err(|e| StoreError::Corrupt {
        message: format!("document {id:?} of {collection:?} is not JSON: {e}"),
    })
}

impl<P: SqliteProjection> ProjectionBackend for SqliteBackend<P> {
    async fn lock(&mut self, name: &str) -> Result<(), StoreError> {
        if let Some((held, _)) = &self.lock {
            if held == name {
                return Ok(());
            }
            return Err(StoreError::InvalidOptions {
                message: format!("this backend already holds the lock of projection {held}"),
            });
        }
        // Cancelled while waiting (a standby shutting down), nothing is lost.
        let file = take_lock(&self.path, name).await?;
        self.lock = Some((name.to_owned(), file));
        Ok(())
    }

    async fn checkpoint(&mut self, name: &str) -> Result<Checkpoint, StoreError> {
        let name = name.to_owned();
        self.with(move |conn, _| load_checkpoint(conn, &name))
            .await?
    }

    async fn parked(&mut self, name: &str) -> Result<Vec<FailedEvent>, StoreError> {
        let name = name.to_owned();
        self.with(move |conn, _| list_parked(conn, &name)).await?
    }

    async fn pending_request(
        &mut self,
        name: &str,
    ) -> Result<Option<ProjectionRequest>, StoreError> {
        let name = name.to_owned();
        self.with(move |conn, _| read_request(conn, &name)).await?
    }

    async fn document(&mut self, collection: &str, id: &str) -> Result<Option<Value>, StoreError> {
        let (collection, id) = (collection.to_owned(), id.to_owned());
        self.with(move |conn, _| read_document(conn, &collection, &id))
            .await?
    }

    async fn commit(&mut self, name: &str, work: Work) -> Result<(), ApplyError> {
        let name = name.to_owned();
        let changes = self.changes.clone();
        self.with(move |conn, handler| {
            let tx = immediate(conn)?;
            if let Some(step) = &work.step {
                run_step(handler, &tx, step)?;
            }
            for write in &work.documents {
                put_document(&tx, write)?;
            }
            for change in &work.bookkeeping {
                bookkeeping(&tx, &name, change)?;
            }
            tx.commit().map_err(sqlite_error)?;
            // Here, not after the await: a caller cancelled after the commit still wakes waits.
            if !work.bookkeeping.is_empty() {
                changes.send_modify(|n| *n = n.wrapping_add(1));
            }
            Ok::<(), ApplyError>(())
        })
        .await??;
        Ok(())
    }
}

/// The stored checkpoint of `name`.
pub(crate) fn stored_checkpoint(path: &Path, name: &str) -> Result<Checkpoint, StoreError> {
    load_checkpoint(&read_only(path)?, name)
}

/// The committed document `id` of `collection`.
pub(crate) fn stored_document(
    path: &Path,
    collection: &str,
    id: &str,
) -> Result<Option<Value>, StoreError> {
    read_document(&read_only(path)?, collection, id)
}

/// At most `limit` documents of `collection` after `after`, by id.
pub(crate) fn stored_documents(
    path: &Path,
    collection: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<Document>, StoreError> {
    let conn = read_only(path)?;
    let mut stmt = conn
        .prepare(
            "SELECT id, body FROM documents WHERE collection = ?1 AND id > ?2
             ORDER BY id LIMIT ?3",
        )
        .map_err(sqlite_error)?;
    let rows = stmt
        .query_map(
            params![collection, after.unwrap_or(""), to_i64(limit as u64)],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
        )
        .map_err(sqlite_error)?;
    let mut documents = Vec::new();
    for row in rows {
        let (id, body) = row.map_err(sqlite_error)?;
        let body = decode_document(collection, &id, &body)?;
        documents.push(Document { id, body });
    }
    Ok(documents)
}

/// A read-only connection for the admin port's queries, waiting on a busy file.
fn read_only(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(sqlite_error)?;
    conn.busy_handler(Some(crate::wait_for_lock))
        .map_err(sqlite_error)?;
    Ok(conn)
}

/// The version of read model `name` readers should use (blue/green), if one was set.
pub(crate) fn active_version(path: &Path, name: &str) -> Result<Option<String>, StoreError> {
    let conn = read_only(path)?;
    conn.query_row(
        "SELECT version FROM projection_versions WHERE name = ?1",
        [name],
        |r| r.get(0),
    )
    .optional()
    .map_err(sqlite_error)
}

/// Records that readers of read model `name` should use `version`.
pub(crate) fn set_active_version(
    path: &Path,
    synchronous: &str,
    name: &str,
    version: &str,
) -> Result<(), StoreError> {
    let mut conn = open_connection(path, synchronous)?;
    let tx = immediate(&mut conn)?;
    tx.execute(
        "INSERT INTO projection_versions (name, version, updated_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (name) DO UPDATE SET version = excluded.version,
           updated_at = excluded.updated_at",
        params![name, version, to_i64(Timestamp::now().as_micros())],
    )
    .map_err(sqlite_error)?;
    tx.commit().map_err(sqlite_error)
}

/// Every projection recorded in the file, by name.
pub(crate) fn stored_projections(
    path: &Path,
) -> Result<Vec<sirenia_core::projection::StoredProjection>, StoreError> {
    let conn = read_only(path)?;
    let mut stmt = conn
        .prepare(
            "SELECT p.name, (SELECT count(*) FROM parked_events e WHERE e.name = p.name)
             FROM projections p ORDER BY p.name",
        )
        .map_err(sqlite_error)?;
    let names: Vec<(String, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(sqlite_error)?
        .collect::<Result<_, _>>()
        .map_err(sqlite_error)?;
    names
        .into_iter()
        .map(|(name, parked)| {
            let checkpoint = load_checkpoint(&conn, &name)?;
            Ok(sirenia_core::projection::StoredProjection {
                name,
                next: checkpoint.next,
                fault: checkpoint.fault,
                parked: u64::try_from(parked).unwrap_or(0),
            })
        })
        .collect()
}

/// The parked events of projection `name`.
pub(crate) fn stored_parked(path: &Path, name: &str) -> Result<Vec<FailedEvent>, StoreError> {
    let conn = read_only(path)?;
    list_parked(&conn, name)
}

/// Records `request` for the projector of `name` (replacing one not yet taken).
pub(crate) fn request(
    path: &Path,
    synchronous: &str,
    name: &str,
    request: ProjectionRequest,
) -> Result<(), StoreError> {
    let conn = open_connection(path, synchronous)?;
    conn.execute(
        "INSERT INTO projection_requests (name, kind, requested_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (name) DO UPDATE SET kind = excluded.kind,
           requested_at = excluded.requested_at",
        params![name, request.as_str(), to_i64(Timestamp::now().as_micros())],
    )
    .map(|_| ())
    .map_err(sqlite_error)
}

/// The request for `name` not yet taken by its projector.
pub(crate) fn pending_request(
    path: &Path,
    name: &str,
) -> Result<Option<ProjectionRequest>, StoreError> {
    let conn = read_only(path)?;
    read_request(&conn, name)
}

/// The request for `name` not yet served, read on `conn`.
fn read_request(conn: &Connection, name: &str) -> Result<Option<ProjectionRequest>, StoreError> {
    let kind: Option<String> = conn
        .prepare_cached("SELECT kind FROM projection_requests WHERE name = ?1")
        .and_then(|mut s| s.query_row([name], |r| r.get(0)).optional())
        .map_err(sqlite_error)?;
    Ok(kind.as_deref().and_then(ProjectionRequest::parse))
}
