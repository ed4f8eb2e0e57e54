//! [`AnyStore`]: one store type for programs that pick their store at run time from a path or
//! a URL, as the reference service and the `sirenia` CLI do. It forwards the event port and
//! the admin port to whichever store it holds, so code above it asks [`Capabilities`] instead
//! of matching on the kind of store.

use std::sync::Arc;

use serde_json::Value;
use sirenia_core::admin::Capabilities;
use sirenia_core::projection::{
    ApplyError, Checkpoint, FailedEvent, ProjectionRequest, StoredProjection,
};
use sirenia_core::snapshot::SnapshotStore;
use sirenia_core::store::{AllPage, Direction, EventFilter, ImportBatch, StreamWrite};
use sirenia_core::transactional::{BackendCheckpoints, ProjectionBackend, Work};
use sirenia_core::{
    AppendResult, Document, EventId, EventStore, InMemoryStore, MemoryBackend, Position,
    RecordedEvent, StoreAdmin, StoreError, StreamId,
};
use tokio::sync::watch;

/// Any of Sirenia's stores, chosen at run time. It implements [`EventStore`] and
/// [`StoreAdmin`] by delegating.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum AnyStore {
    /// The in-memory store (tests).
    Memory(InMemoryStore),
    /// The embedded single-file store.
    #[cfg(feature = "sqlite")]
    Sqlite(sirenia_sqlite::SqliteStore),
    /// The PostgreSQL store.
    #[cfg(feature = "postgres")]
    Postgres(sirenia_postgres::PostgresStore),
}

/// Whether `location` names a PostgreSQL database (a `postgres://` or `postgresql://` URL)
/// rather than an embedded-store file.
pub fn is_postgres_url(location: &str) -> bool {
    let lower = location.get(..13).unwrap_or(location).to_ascii_lowercase();
    lower.starts_with("postgres://") || lower.starts_with("postgresql://")
}

/// How [`AnyStore::open_with`] opens a store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenOptions {
    /// Open an existing embedded store read-only, beside a writer in another process (appends
    /// fail); the file must exist. PostgreSQL stores are always opened for reading and
    /// writing (many processes share one database).
    pub read_only: bool,
    /// The PostgreSQL schema holding the store's tables (`sirenia` when not given).
    pub postgres_schema: Option<String>,
}

impl AnyStore {
    /// Opens the store at `location` for reading and writing: a `postgres://` or
    /// `postgresql://` URL connects to PostgreSQL (feature `postgres`); anything else is the
    /// path of an embedded-store file (feature `sqlite`), created with its parent directories
    /// if missing.
    pub async fn open(location: &str) -> Result<Self, StoreError> {
        Self::open_with(location, OpenOptions::default()).await
    }

    /// Opens the store at `location` (as [`AnyStore::open`]) with `options`.
    pub async fn open_with(location: &str, options: OpenOptions) -> Result<Self, StoreError> {
        if location.is_empty() {
            return Err(StoreError::InvalidOptions {
                message: "the store location is empty: give a file path or a postgres:// URL"
                    .to_owned(),
            });
        }
        if is_postgres_url(location) {
            #[cfg(feature = "postgres")]
            {
                let defaults = sirenia_postgres::PostgresOptions::default();
                let pg = sirenia_postgres::PostgresOptions {
                    schema: options.postgres_schema.unwrap_or(defaults.schema.clone()),
                    ..defaults
                };
                return sirenia_postgres::PostgresStore::connect_with(location, pg)
                    .await
                    .map(AnyStore::Postgres);
            }
            #[cfg(not(feature = "postgres"))]
            return Err(StoreError::InvalidOptions {
                message: "this build has no PostgreSQL support (feature `postgres`)".to_owned(),
            });
        }
        #[cfg(feature = "sqlite")]
        {
            if options.read_only {
                if !std::path::Path::new(location).exists() {
                    return Err(StoreError::InvalidOptions {
                        message: format!("no store at {location}"),
                    });
                }
                return sirenia_sqlite::SqliteStore::open_read_only(
                    location,
                    sirenia_sqlite::SqliteOptions::default(),
                )
                .await
                .map(AnyStore::Sqlite);
            }
            sirenia_sqlite::SqliteStore::open(location)
                .await
                .map(AnyStore::Sqlite)
        }
        #[cfg(not(feature = "sqlite"))]
        return Err(StoreError::InvalidOptions {
            message: "this build has no embedded store (feature `sqlite`)".to_owned(),
        });
    }

    /// A short name of the backend, for logs: `memory`, `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self {
            AnyStore::Memory(_) => "memory",
            #[cfg(feature = "sqlite")]
            AnyStore::Sqlite(_) => "sqlite",
            #[cfg(feature = "postgres")]
            AnyStore::Postgres(_) => "postgres",
        }
    }
}

impl From<InMemoryStore> for AnyStore {
    fn from(store: InMemoryStore) -> Self {
        AnyStore::Memory(store)
    }
}

#[cfg(feature = "sqlite")]
impl From<sirenia_sqlite::SqliteStore> for AnyStore {
    fn from(store: sirenia_sqlite::SqliteStore) -> Self {
        AnyStore::Sqlite(store)
    }
}

#[cfg(feature = "postgres")]
impl From<sirenia_postgres::PostgresStore> for AnyStore {
    fn from(store: sirenia_postgres::PostgresStore) -> Self {
        AnyStore::Postgres(store)
    }
}

/// Calls `$call` on whichever store `$self` holds.
macro_rules! delegate {
    ($self:expr, $s:ident => $call:expr) => {
        match $self {
            AnyStore::Memory($s) => $call,
            #[cfg(feature = "sqlite")]
            AnyStore::Sqlite($s) => $call,
            #[cfg(feature = "postgres")]
            AnyStore::Postgres($s) => $call,
        }
    };
}

impl EventStore for AnyStore {
    async fn append(&self, writes: Vec<StreamWrite>) -> Result<AppendResult, StoreError> {
        delegate!(self, s => s.append(writes).await)
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<Option<u64>, StoreError> {
        delegate!(self, s => s.stream_version(stream).await)
    }

    async fn stream_info(
        &self,
        stream: &StreamId,
    ) -> Result<Option<sirenia_core::StreamInfo>, StoreError> {
        delegate!(self, s => s.stream_info(stream).await)
    }

    async fn change_stream(
        &self,
        stream: &StreamId,
        change: sirenia_core::StreamChange,
    ) -> Result<Option<sirenia_core::StreamInfo>, StoreError> {
        delegate!(self, s => s.change_stream(stream, change).await)
    }

    async fn event_by_id(&self, id: EventId) -> Result<Option<RecordedEvent>, StoreError> {
        delegate!(self, s => s.event_by_id(id).await)
    }

    async fn head_position(&self) -> Result<Position, StoreError> {
        delegate!(self, s => s.head_position().await)
    }

    async fn read_stream_page(
        &self,
        stream: &StreamId,
        from: u64,
        direction: Direction,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        delegate!(self, s => s.read_stream_page(stream, from, direction, max).await)
    }

    async fn read_all_page(
        &self,
        from: Position,
        direction: Direction,
        filter: &EventFilter,
        max: usize,
    ) -> Result<AllPage, StoreError> {
        delegate!(self, s => s.read_all_page(from, direction, filter, max).await)
    }

    async fn wait_for_events(&self, from: Position) -> Result<(), StoreError> {
        delegate!(self, s => s.wait_for_events(from).await)
    }

    fn capabilities(&self) -> Capabilities {
        delegate!(self, s => s.capabilities())
    }
}

impl StoreAdmin for AnyStore {
    type Backend = AnyBackend;

    fn projection_backend(&self) -> AnyBackend {
        match self {
            AnyStore::Memory(s) => AnyBackend::Memory(s.projection_backend()),
            #[cfg(feature = "sqlite")]
            AnyStore::Sqlite(s) => AnyBackend::Sqlite(s.projection_backend()),
            #[cfg(feature = "postgres")]
            AnyStore::Postgres(s) => AnyBackend::Postgres(Box::new(s.projection_backend())),
        }
    }

    fn snapshots(&self) -> Arc<dyn SnapshotStore> {
        delegate!(self, s => s.snapshots())
    }

    async fn import(&self, batch: ImportBatch) -> Result<AppendResult, StoreError> {
        delegate!(self, s => s.import(batch).await)
    }

    async fn projections(&self) -> Result<Vec<StoredProjection>, StoreError> {
        delegate!(self, s => s.projections().await)
    }

    async fn checkpoint(&self, name: &str) -> Result<Checkpoint, StoreError> {
        delegate!(self, s => StoreAdmin::checkpoint(s, name).await)
    }

    async fn parked(&self, name: &str) -> Result<Vec<FailedEvent>, StoreError> {
        delegate!(self, s => StoreAdmin::parked(s, name).await)
    }

    async fn request_projection(
        &self,
        name: &str,
        request: ProjectionRequest,
    ) -> Result<(), StoreError> {
        delegate!(self, s => StoreAdmin::request_projection(s, name, request).await)
    }

    async fn pending_request(&self, name: &str) -> Result<Option<ProjectionRequest>, StoreError> {
        delegate!(self, s => StoreAdmin::pending_request(s, name).await)
    }

    async fn set_active_version(&self, name: &str, version: &str) -> Result<(), StoreError> {
        delegate!(self, s => StoreAdmin::set_active_version(s, name, version).await)
    }

    async fn active_version(&self, name: &str) -> Result<Option<String>, StoreError> {
        delegate!(self, s => StoreAdmin::active_version(s, name).await)
    }

    async fn document(&self, collection: &str, id: &str) -> Result<Option<Value>, StoreError> {
        delegate!(self, s => s.document(collection, id).await)
    }

    async fn documents(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Document>, StoreError> {
        delegate!(self, s => s.documents(collection, after, limit).await)
    }

    fn projection_changes(&self) -> watch::Receiver<u64> {
        delegate!(self, s => StoreAdmin::projection_changes(s))
    }
}

/// The [`ProjectionBackend`] of whichever store an [`AnyStore`] holds.
#[non_exhaustive]
pub enum AnyBackend {
    /// The in-memory store's.
    Memory(MemoryBackend),
    /// The embedded store's.
    #[cfg(feature = "sqlite")]
    Sqlite(sirenia_sqlite::SqliteBackend<()>),
    /// The PostgreSQL store's.
    #[cfg(feature = "postgres")]
    Postgres(Box<sirenia_postgres::PostgresBackend<()>>),
}

/// Checkpoints in whichever store an [`AnyStore`] holds, for at-least-once projections.
pub type AnyCheckpoints = BackendCheckpoints<AnyBackend>;

macro_rules! backend {
    ($self:expr, $b:ident => $call:expr) => {
        match $self {
            AnyBackend::Memory($b) => $call,
            #[cfg(feature = "sqlite")]
            AnyBackend::Sqlite($b) => $call,
            #[cfg(feature = "postgres")]
            AnyBackend::Postgres($b) => $call,
        }
    };
}

impl ProjectionBackend for AnyBackend {
    async fn lock(&mut self, name: &str) -> Result<(), StoreError> {
        backend!(self, b => b.lock(name).await)
    }

    async fn checkpoint(&mut self, name: &str) -> Result<Checkpoint, StoreError> {
        backend!(self, b => b.checkpoint(name).await)
    }

    async fn parked(&mut self, name: &str) -> Result<Vec<FailedEvent>, StoreError> {
        backend!(self, b => b.parked(name).await)
    }

    async fn pending_request(
        &mut self,
        name: &str,
    ) -> Result<Option<ProjectionRequest>, StoreError> {
        backend!(self, b => b.pending_request(name).await)
    }

    async fn document(&mut self, collection: &str, id: &str) -> Result<Option<Value>, StoreError> {
        backend!(self, b => b.document(collection, id).await)
    }

    async fn commit(&mut self, name: &str, work: Work) -> Result<(), ApplyError> {
        backend!(self, b => b.commit(name, work).await)
    }
}

#[cfg(test)]
mod tests {
    use super::is_postgres_url;

    #[test]
    fn urls_select_postgres_and_everything_else_is_a_file() {
        assert!(is_postgres_url("postgres://u@h/db"));
        assert!(is_postgres_url("PostgreSQL://h/db"));
        assert!(!is_postgres_url("./bank-data/bank.db"));
        assert!(!is_postgres_url("postgres"));
        assert!(!is_postgres_url("mysql://h/db"));
        assert!(!is_postgres_url("é"));
    }
}
