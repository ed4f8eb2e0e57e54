//! [`AnyStore`]: one store type for programs that pick their store at run time from a path or
//! a URL, as the reference service and the `sirenia` CLI do.

use sirenia_core::projection::{FailedEvent, ProjectionRequest, StoredProjection};
use sirenia_core::store::{AllPage, Direction, EventFilter, ImportBatch, StreamWrite};
use sirenia_core::{
    AppendResult, EventId, EventStore, InMemoryStore, Position, RecordedEvent, StoreError, StreamId,
};

/// Any of Sirenia's stores, chosen at run time. It implements [`EventStore`] by delegating.
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

impl AnyStore {
    /// Opens the store at `location`: a `postgres://` or `postgresql://` URL connects to
    /// PostgreSQL (feature `postgres`); anything else is the path of an embedded-store file
    /// (feature `sqlite`), created with its parent directories if missing.
    pub async fn open(location: &str) -> Result<Self, StoreError> {
        if location.is_empty() {
            return Err(StoreError::InvalidOptions {
                message: "the store location is empty: give a file path or a postgres:// URL"
                    .to_owned(),
            });
        }
        if is_postgres_url(location) {
            #[cfg(feature = "postgres")]
            return sirenia_postgres::PostgresStore::connect(location)
                .await
                .map(AnyStore::Postgres);
            #[cfg(not(feature = "postgres"))]
            return Err(StoreError::InvalidOptions {
                message: "this build has no PostgreSQL support (feature `postgres`)".to_owned(),
            });
        }
        #[cfg(feature = "sqlite")]
        return sirenia_sqlite::SqliteStore::open(location)
            .await
            .map(AnyStore::Sqlite);
        #[cfg(not(feature = "sqlite"))]
        return Err(StoreError::InvalidOptions {
            message: "this build has no embedded store (feature `sqlite`)".to_owned(),
        });
    }

    /// Appends one batch of an import, keeping each event's `recorded_at` (see
    /// [`sirenia_core::store::import_batches`]). The in-memory store cannot.
    pub async fn import(&self, batch: ImportBatch) -> Result<AppendResult, StoreError> {
        match self {
            AnyStore::Memory(_) => Err(StoreError::InvalidOptions {
                message: "the in-memory store cannot import events with their timestamps"
                    .to_owned(),
            }),
            #[cfg(feature = "sqlite")]
            AnyStore::Sqlite(s) => s.import(batch).await,
            #[cfg(feature = "postgres")]
            AnyStore::Postgres(s) => s.import(batch).await,
        }
    }

    /// Every projection the store records (none for the in-memory store).
    pub async fn projections(&self) -> Result<Vec<StoredProjection>, StoreError> {
        match self {
            AnyStore::Memory(_) => Ok(Vec::new()),
            #[cfg(feature = "sqlite")]
            AnyStore::Sqlite(s) => s.projections().await,
            #[cfg(feature = "postgres")]
            AnyStore::Postgres(s) => s.projections().await,
        }
    }

    /// Asks the running projector of `name` to carry out `request`.
    pub async fn request_projection(
        &self,
        name: &str,
        request: ProjectionRequest,
    ) -> Result<(), StoreError> {
        match self {
            AnyStore::Memory(_) => Err(StoreError::InvalidOptions {
                message: "the in-memory store keeps no projections".to_owned(),
            }),
            #[cfg(feature = "sqlite")]
            AnyStore::Sqlite(s) => s.request_projection(name, request).await,
            #[cfg(feature = "postgres")]
            AnyStore::Postgres(s) => s.request_projection(name, request).await,
        }
    }

    /// The request for `name` its projector has not taken yet.
    pub async fn pending_request(
        &self,
        name: &str,
    ) -> Result<Option<ProjectionRequest>, StoreError> {
        match self {
            AnyStore::Memory(_) => Ok(None),
            #[cfg(feature = "sqlite")]
            AnyStore::Sqlite(s) => s.pending_request(name).await,
            #[cfg(feature = "postgres")]
            AnyStore::Postgres(s) => s.pending_request(name).await,
        }
    }

    /// The events projection `name` parked (none for the in-memory store).
    pub async fn parked(&self, name: &str) -> Result<Vec<FailedEvent>, StoreError> {
        match self {
            AnyStore::Memory(_) => Ok(Vec::new()),
            #[cfg(feature = "sqlite")]
            AnyStore::Sqlite(s) => s.parked(name).await,
            #[cfg(feature = "postgres")]
            AnyStore::Postgres(s) => s.parked(name).await,
        }
    }

    /// A short name of the backend: `memory`, `sqlite` or `postgres`.
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

    fn dense_positions(&self) -> bool {
        delegate!(self, s => s.dense_positions())
    }
}

/// Checkpoints in whichever store an [`AnyStore`] holds, for at-least-once projections.
#[non_exhaustive]
pub enum AnyCheckpoints {
    /// In memory (the in-memory store).
    Memory(sirenia_core::projection::MemoryCheckpoints),
    /// In the embedded store's file.
    #[cfg(feature = "sqlite")]
    Sqlite(sirenia_sqlite::SqliteCheckpoints),
    /// In the PostgreSQL schema.
    #[cfg(feature = "postgres")]
    Postgres(sirenia_postgres::PostgresCheckpoints),
}

impl AnyStore {
    /// Checkpoints kept in this store.
    pub fn checkpoints(&self) -> AnyCheckpoints {
        match self {
            AnyStore::Memory(_) => {
                AnyCheckpoints::Memory(sirenia_core::projection::MemoryCheckpoints::new())
            }
            #[cfg(feature = "sqlite")]
            AnyStore::Sqlite(s) => AnyCheckpoints::Sqlite(s.checkpoints()),
            #[cfg(feature = "postgres")]
            AnyStore::Postgres(s) => AnyCheckpoints::Postgres(s.checkpoints()),
        }
    }
}

macro_rules! checkpoints {
    ($self:expr, $c:ident => $call:expr) => {
        match $self {
            AnyCheckpoints::Memory($c) => $call,
            #[cfg(feature = "sqlite")]
            AnyCheckpoints::Sqlite($c) => $call,
            #[cfg(feature = "postgres")]
            AnyCheckpoints::Postgres($c) => $call,
        }
    };
}

impl sirenia_core::projection::CheckpointStore for AnyCheckpoints {
    async fn load(
        &mut self,
        name: &str,
    ) -> Result<sirenia_core::projection::Checkpoint, StoreError> {
        checkpoints!(self, c => c.load(name).await)
    }
    async fn save(&mut self, name: &str, next: Position) -> Result<(), StoreError> {
        checkpoints!(self, c => c.save(name, next).await)
    }
    async fn park(
        &mut self,
        name: &str,
        failed: &FailedEvent,
        next: Position,
    ) -> Result<(), StoreError> {
        checkpoints!(self, c => c.park(name, failed, next).await)
    }
    async fn fault(&mut self, name: &str, failed: &FailedEvent) -> Result<(), StoreError> {
        checkpoints!(self, c => c.fault(name, failed).await)
    }
    async fn parked(&mut self, name: &str) -> Result<Vec<FailedEvent>, StoreError> {
        checkpoints!(self, c => c.parked(name).await)
    }
    async fn unpark(&mut self, name: &str, position: Position) -> Result<(), StoreError> {
        checkpoints!(self, c => c.unpark(name, position).await)
    }
    async fn reset(&mut self, name: &str) -> Result<(), StoreError> {
        checkpoints!(self, c => c.reset(name).await)
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
