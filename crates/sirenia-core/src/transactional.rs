//! One transactional projection target for every store whose read model lives in its own
//! database, written once over a small per-store [`ProjectionBackend`].
//!
//! [`TransactionalTarget`] turns each [`ProjectionTarget`] call into one [`Work`]: the step the
//! store's own handler runs (its SQL, inside the transaction), the document writes of a
//! store-neutral [`DocumentProjection`], and the bookkeeping (checkpoint, parked events, fault,
//! requests). The backend commits a `Work` all or nothing, so a page's effects and its
//! checkpoint commit together (exactly once), and holds the projection's single-instance lock
//! (a file lock, an advisory lock) from `start` until it is dropped. What differs between
//! stores — the transaction, the bookkeeping rows, the lock — is the backend; what every
//! target does with them is here. [`BackendCheckpoints`] is the same bookkeeping without a
//! handler, for [`AtLeastOnce`](crate::projection::AtLeastOnce) projections into sinks
//! elsewhere.
//!
//! Document projections read their own documents while they apply a page: a read sees the
//! page's earlier writes, then what this target committed (kept in a bounded cache: only the
//! lock holder writes a projection's collections), then the store.

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::StoreError;
use crate::event::RecordedEvent;
use crate::id::Position;
use crate::projection::{
    ApplyError, Checkpoint, CheckpointStore, EventBatch, FailedEvent, HandlerError,
    ProjectionRequest, ProjectionTarget,
};
use crate::snapshot::BoxFuture;

/// Longest document collection name, in bytes.
pub const MAX_COLLECTION_NAME_BYTES: usize = 100;
/// Longest document id, in bytes.
pub const MAX_DOCUMENT_ID_BYTES: usize = 255;
/// Largest document, in bytes of compact JSON.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// Most committed documents a target keeps in memory for its handler's reads.
pub const MAX_CACHED_DOCUMENTS: usize = 10_000;

/// What the store's own handler does in a transaction (a backend without one ignores it).
#[derive(Clone, Debug)]
pub enum Step {
    /// Create the read model's tables if missing (on every start).
    Setup,
    /// Apply a page of events, in order.
    Apply(EventBatch),
    /// Apply a parked event again.
    Replay(RecordedEvent),
    /// Empty the read model (for a rebuild).
    Reset,
}

/// One change to a document collection, in the order the handler made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DocumentWrite {
    /// Insert or replace document `id` with `body` (compact JSON text).
    Put {
        /// The collection.
        collection: String,
        /// The document's id.
        id: String,
        /// Its content, compact JSON.
        body: String,
    },
    /// Remove document `id` (nothing if missing).
    Delete {
        /// The collection.
        collection: String,
        /// The document's id.
        id: String,
    },
    /// Remove every document of the collection.
    Clear {
        /// The collection.
        collection: String,
    },
}

/// A change to the projection's bookkeeping rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bookkeeping {
    /// Store the checkpoint (never moving it backwards) and clear the fault.
    Checkpoint(Position),
    /// Add (or replace) a parked event.
    Park(FailedEvent),
    /// Remove a parked event.
    Unpark(Position),
    /// Record the fault (the checkpoint stays).
    Fault(FailedEvent),
    /// Forget the checkpoint, the fault and the parked events (a rebuild).
    Reset,
    /// Remove the operator's request once carried out.
    FinishRequest(ProjectionRequest),
}

/// What one transaction does: the handler's step first, then the document writes, then the
/// bookkeeping. All or nothing.
#[derive(Clone, Debug, Default)]
pub struct Work {
    /// The store's own handler's step, if any.
    pub step: Option<Step>,
    /// Document writes, in order.
    pub documents: Vec<DocumentWrite>,
    /// Bookkeeping changes, in order.
    pub bookkeeping: Vec<Bookkeeping>,
}

impl Work {
    /// Only bookkeeping.
    pub fn bookkeeping(changes: Vec<Bookkeeping>) -> Self {
        Work {
            step: None,
            documents: Vec::new(),
            bookkeeping: changes,
        }
    }
}

/// The per-store part of a transactional projection: a connection of its own, the
/// single-instance lock, committed reads, and one transaction per [`Work`].
///
/// Every method works without the lock too ([`BackendCheckpoints`] never takes it); a backend
/// opens its connection on first use. Futures may be dropped at any await (a cancelled run):
/// the backend must stay usable, and a dropped commit either committed or did not.
pub trait ProjectionBackend: Send + 'static {
    /// Waits until this backend holds the lock of projection `name` (a standby waits here;
    /// cancelling the wait leaves nothing behind). Held until the backend is dropped; taking
    /// it again while held returns at once.
    fn lock(&mut self, name: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The committed checkpoint of `name` (next position 1 when none is stored).
    fn checkpoint(
        &mut self,
        name: &str,
    ) -> impl Future<Output = Result<Checkpoint, StoreError>> + Send;

    /// The committed parked events of `name`, in log order.
    fn parked(
        &mut self,
        name: &str,
    ) -> impl Future<Output = Result<Vec<FailedEvent>, StoreError>> + Send;

    /// The operator's request for `name` not yet carried out.
    fn pending_request(
        &mut self,
        name: &str,
    ) -> impl Future<Output = Result<Option<ProjectionRequest>, StoreError>> + Send;

    /// The committed document `id` of `collection`.
    fn document(
        &mut self,
        collection: &str,
        id: &str,
    ) -> impl Future<Output = Result<Option<Value>, StoreError>> + Send;

    /// Commits `work` for projection `name` in one transaction, or nothing of it. A failure of
    /// the handler's step is [`ApplyError::Handler`] (with `prefix_committed: false`).
    /// After a commit that moved a checkpoint, the store's projection notifications fire.
    fn commit(
        &mut self,
        name: &str,
        work: Work,
    ) -> impl Future<Output = Result<(), ApplyError>> + Send;
}

/// Why a document operation failed (a [`HandlerError`] for the projector).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DocumentError {
    /// A collection name or document id is empty, too long or has control characters.
    #[error("invalid document {what} {value:?}: {reason}")]
    InvalidName {
        /// `collection` or `id`.
        what: &'static str,
        /// The value given (cut to 300 bytes).
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// The collection is not one the projection declared.
    #[error("collection {0:?} is not one of the projection's collections")]
    NotOwned(String),
    /// The document is larger than [`MAX_DOCUMENT_BYTES`].
    #[error("the document is {bytes} bytes; the most is {MAX_DOCUMENT_BYTES}")]
    TooLarge {
        /// Its size.
        bytes: usize,
    },
    /// A string of the document holds a NUL character (`\u0000`), which no store keeps.
    #[error("the document holds a NUL character (\\u0000), which stores cannot keep")]
    NulCharacter,
    /// The value could not be encoded as JSON.
    #[error("the document could not be encoded: {0}")]
    Encode(#[source] serde_json::Error),
    /// A stored document is not of the type asked for.
    #[error("document {id:?} of {collection:?} could not be decoded: {source}")]
    Decode {
        /// The collection.
        collection: String,
        /// The id.
        id: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checks a collection name or document id.
pub fn validate_document_key(what: &'static str, value: &str) -> Result<(), DocumentError> {
    let max = if what == "collection" {
        MAX_COLLECTION_NAME_BYTES
    } else {
        MAX_DOCUMENT_ID_BYTES
    };
    let reason = if value.is_empty() {
        Some("it is empty".to_owned())
    } else if value.len() > max {
        Some(format!("it is {} bytes; the most is {max}", value.len()))
    } else if value.chars().any(char::is_control) {
        Some("it has control characters".to_owned())
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => {
            let mut shown = value.to_owned();
            if shown.len() > 300 {
                let mut cut = 300;
                while !shown.is_char_boundary(cut) {
                    cut -= 1;
                }
                shown.truncate(cut);
            }
            Err(DocumentError::InvalidName {
                what,
                value: shown,
                reason,
            })
        }
    }
}

/// A read model made of JSON documents in named collections, kept in the store's own database
/// by any store with transactional projections: written once, it runs on every such store.
/// Each collection belongs to one projection (only its lock holder writes it).
pub trait DocumentProjection: Send + 'static {
    /// The collections it writes (a rebuild empties them).
    fn collections(&self) -> Vec<String>;

    /// Applies one event, reading and writing documents through `docs`.
    fn apply(
        &mut self,
        docs: &mut Documents<'_>,
        event: &RecordedEvent,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// No document read model: for targets whose store handler writes its own tables.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoDocuments;

impl DocumentProjection for NoDocuments {
    fn collections(&self) -> Vec<String> {
        Vec::new()
    }

    async fn apply(
        &mut self,
        _: &mut Documents<'_>,
        _: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// Reads committed documents (the backend, behind a trait object so [`Documents`] needs no
/// type parameter).
trait DocumentSource: Send {
    fn fetch<'a>(
        &'a mut self,
        collection: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Value>, StoreError>>;
}

impl<B: ProjectionBackend> DocumentSource for B {
    fn fetch<'a>(
        &'a mut self,
        collection: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Value>, StoreError>> {
        Box::pin(self.document(collection, id))
    }
}

/// Committed documents this target wrote or read, by collection and id (looked up without
/// allocating), bounded by [`MAX_CACHED_DOCUMENTS`].
#[derive(Debug, Default)]
struct DocumentCache {
    collections: HashMap<String, HashMap<String, Value>>,
    len: usize,
}

impl DocumentCache {
    fn get(&self, collection: &str, id: &str) -> Option<&Value> {
        self.collections.get(collection)?.get(id)
    }

    fn insert(&mut self, collection: &str, id: &str, value: Value) {
        if self.len >= MAX_CACHED_DOCUMENTS {
            *self = DocumentCache::default();
        }
        let documents = self.collections.entry(collection.to_owned()).or_default();
        if documents.insert(id.to_owned(), value).is_none() {
            self.len += 1;
        }
    }

    /// Forgets what `writes` touch (before they commit: a commit whose outcome is lost must not
    /// leave the old values here).
    fn forget(&mut self, writes: &[DocumentWrite]) {
        for write in writes {
            match write {
                DocumentWrite::Put { collection, id, .. }
                | DocumentWrite::Delete { collection, id } => {
                    if let Some(documents) = self.collections.get_mut(collection)
                        && documents.remove(id).is_some()
                    {
                        self.len -= 1;
                    }
                }
                DocumentWrite::Clear { collection } => {
                    if let Some(documents) = self.collections.remove(collection) {
                        self.len -= documents.len();
                    }
                }
            }
        }
    }
}

/// The documents a [`DocumentProjection`] reads and writes while it applies a page: reads see
/// the page's earlier writes; writes commit with the page's checkpoint.
pub struct Documents<'a> {
    source: &'a mut dyn DocumentSource,
    cache: &'a mut DocumentCache,
    owned: &'a [String],
    /// This page's view: `None` is a deletion.
    overlay: HashMap<String, HashMap<String, Option<Value>>>,
    cleared: HashSet<String>,
    writes: Vec<DocumentWrite>,
}

impl Documents<'_> {
    fn check(&self, collection: &str, id: Option<&str>) -> Result<(), DocumentError> {
        validate_document_key("collection", collection)?;
        if let Some(id) = id {
            validate_document_key("id", id)?;
        }
        if !self.owned.iter().any(|c| c == collection) {
            return Err(DocumentError::NotOwned(collection.to_owned()));
        }
        Ok(())
    }

    /// Document `id` of `collection` as JSON, if it exists.
    pub async fn get_value(
        &mut self,
        collection: &str,
        id: &str,
    ) -> Result<Option<Value>, DocumentError> {
        self.check(collection, Some(id))?;
        if let Some(value) = self.overlay.get(collection).and_then(|c| c.get(id)) {
            return Ok(value.clone());
        }
        if self.cleared.contains(collection) {
            return Ok(None);
        }
        if let Some(value) = self.cache.get(collection, id) {
            return Ok(Some(value.clone()));
        }
        let fetched = self.source.fetch(collection, id).await?;
        if let Some(value) = &fetched {
            self.cache.insert(collection, id, value.clone());
        }
        Ok(fetched)
    }

    /// Document `id` of `collection`, decoded, if it exists.
    pub async fn get<T: DeserializeOwned>(
        &mut self,
        collection: &str,
        id: &str,
    ) -> Result<Option<T>, DocumentError> {
        match self.get_value(collection, id).await? {
            None => Ok(None),
            Some(value) => {
                serde_json::from_value(value)
                    .map(Some)
                    .map_err(|source| DocumentError::Decode {
                        collection: collection.to_owned(),
                        id: id.to_owned(),
                        source,
                    })
            }
        }
    }

    /// Inserts or replaces document `id` of `collection`.
    pub fn put<T: Serialize + ?Sized>(
        &mut self,
        collection: &str,
        id: &str,
        document: &T,
    ) -> Result<(), DocumentError> {
        self.check(collection, Some(id))?;
        let value = serde_json::to_value(document).map_err(DocumentError::Encode)?;
        let body = serde_json::to_string(&value).map_err(DocumentError::Encode)?;
        if body.len() > MAX_DOCUMENT_BYTES {
            return Err(DocumentError::TooLarge { bytes: body.len() });
        }
        // PostgreSQL's `jsonb` cannot hold a NUL character; no store takes one, so a document
        // means the same everywhere.
        if has_nul(&value) {
            return Err(DocumentError::NulCharacter);
        }
        self.overlay
            .entry(collection.to_owned())
            .or_default()
            .insert(id.to_owned(), Some(value));
        self.writes.push(DocumentWrite::Put {
            collection: collection.to_owned(),
            id: id.to_owned(),
            body,
        });
        Ok(())
    }

    /// Removes document `id` of `collection` (nothing if it does not exist).
    pub fn delete(&mut self, collection: &str, id: &str) -> Result<(), DocumentError> {
        self.check(collection, Some(id))?;
        self.overlay
            .entry(collection.to_owned())
            .or_default()
            .insert(id.to_owned(), None);
        self.writes.push(DocumentWrite::Delete {
            collection: collection.to_owned(),
            id: id.to_owned(),
        });
        Ok(())
    }

    /// Removes every document of `collection`.
    pub fn clear(&mut self, collection: &str) -> Result<(), DocumentError> {
        self.check(collection, None)?;
        self.overlay.remove(collection);
        self.cleared.insert(collection.to_owned());
        self.writes.push(DocumentWrite::Clear {
            collection: collection.to_owned(),
        });
        Ok(())
    }
}

/// Whether a string (or a key) anywhere in `value` holds a NUL character.
fn has_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

fn handler_error(index: usize, error: HandlerError) -> ApplyError {
    ApplyError::Handler {
        index,
        error,
        prefix_committed: false,
    }
}

/// A [`ProjectionTarget`] whose read model lives in the store's database: the store's own
/// handler (run by the backend `B`, e.g. SQL over the store's transaction) and/or a
/// [`DocumentProjection`] `D`, committed with the checkpoint in one transaction.
pub struct TransactionalTarget<B, D = NoDocuments> {
    name: String,
    backend: B,
    documents: D,
    collections: Vec<String>,
    cache: DocumentCache,
}

impl<B: ProjectionBackend> TransactionalTarget<B> {
    /// Projection `name` whose handler is the one `backend` runs.
    pub fn new(name: &str, backend: B) -> Self {
        Self::with_documents(name, backend, NoDocuments)
    }
}

impl<B: ProjectionBackend, D: DocumentProjection> TransactionalTarget<B, D> {
    /// Projection `name` keeping the documents of `documents` through `backend` (and whatever
    /// handler the backend runs itself).
    pub fn with_documents(name: &str, backend: B, documents: D) -> Self {
        let collections = documents.collections();
        TransactionalTarget {
            name: name.to_owned(),
            backend,
            documents,
            collections,
            cache: DocumentCache::default(),
        }
    }

    /// The document handler.
    pub fn documents_mut(&mut self) -> &mut D {
        &mut self.documents
    }

    /// The backend.
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Runs the document handler over `events`; the writes it made.
    async fn run_documents(
        &mut self,
        events: &[RecordedEvent],
    ) -> Result<Vec<DocumentWrite>, ApplyError> {
        if self.collections.is_empty() {
            return Ok(Vec::new());
        }
        let mut docs = Documents {
            source: &mut self.backend,
            cache: &mut self.cache,
            owned: &self.collections,
            overlay: HashMap::new(),
            cleared: HashSet::new(),
            writes: Vec::new(),
        };
        for (index, event) in events.iter().enumerate() {
            self.documents
                .apply(&mut docs, event)
                .await
                .map_err(|e| handler_error(index, e))?;
        }
        Ok(docs.writes)
    }

    /// Commits `work`, keeping the document cache true whatever happens to the commit.
    async fn commit(&mut self, work: Work) -> Result<(), ApplyError> {
        self.cache.forget(&work.documents);
        self.backend.commit(&self.name, work).await
    }
}

impl<B: ProjectionBackend, D: DocumentProjection> ProjectionTarget for TransactionalTarget<B, D> {
    async fn start(&mut self) -> Result<Checkpoint, StoreError> {
        self.backend.lock(&self.name).await?;
        // Another instance may have written while this one did not hold the lock.
        self.cache = DocumentCache::default();
        let setup = Work {
            step: Some(Step::Setup),
            ..Work::default()
        };
        match self.commit(setup).await {
            Ok(()) => {}
            Err(ApplyError::Store(e)) => return Err(e),
            Err(ApplyError::Handler { error, .. }) => {
                return Err(StoreError::Backend {
                    message: format!("projection {}: setting up its tables failed", self.name),
                    source: Some(error),
                });
            }
        }
        self.backend.checkpoint(&self.name).await
    }

    async fn apply(&mut self, batch: EventBatch, next: Position) -> Result<(), ApplyError> {
        let documents = self.run_documents(batch.events()).await?;
        self.commit(Work {
            step: Some(Step::Apply(batch)),
            documents,
            bookkeeping: vec![Bookkeeping::Checkpoint(next)],
        })
        .await
    }

    async fn park(&mut self, failed: &FailedEvent, next: Position) -> Result<(), StoreError> {
        let work = Work::bookkeeping(vec![
            Bookkeeping::Park(failed.clone()),
            Bookkeeping::Checkpoint(next),
        ]);
        self.commit(work).await.map_err(bookkeeping_error)
    }

    async fn fault(&mut self, failed: &FailedEvent) -> Result<(), StoreError> {
        let work = Work::bookkeeping(vec![Bookkeeping::Fault(failed.clone())]);
        self.commit(work).await.map_err(bookkeeping_error)
    }

    async fn parked(&mut self) -> Result<Vec<FailedEvent>, StoreError> {
        self.backend.parked(&self.name).await
    }

    async fn replay_parked(&mut self, event: RecordedEvent) -> Result<(), ApplyError> {
        let documents = self.run_documents(std::slice::from_ref(&event)).await?;
        let position = event.position;
        self.commit(Work {
            step: Some(Step::Replay(event)),
            documents,
            bookkeeping: vec![Bookkeeping::Unpark(position)],
        })
        .await
    }

    async fn reset(&mut self) -> Result<(), ApplyError> {
        let documents = self
            .collections
            .iter()
            .map(|collection| DocumentWrite::Clear {
                collection: collection.clone(),
            })
            .collect();
        self.commit(Work {
            step: Some(Step::Reset),
            documents,
            bookkeeping: vec![Bookkeeping::Reset],
        })
        .await
    }

    async fn pending_request(&mut self) -> Result<Option<ProjectionRequest>, StoreError> {
        self.backend.pending_request(&self.name).await
    }

    async fn finish_request(&mut self, request: ProjectionRequest) -> Result<(), StoreError> {
        let work = Work::bookkeeping(vec![Bookkeeping::FinishRequest(request)]);
        self.commit(work).await.map_err(bookkeeping_error)
    }
}

/// A commit without a handler step can only fail in storage.
fn bookkeeping_error(error: ApplyError) -> StoreError {
    match error {
        ApplyError::Store(e) => e,
        ApplyError::Handler { error, .. } => StoreError::Backend {
            message: "a bookkeeping commit reported a handler failure".to_owned(),
            source: Some(error),
        },
    }
}

/// Checkpoints, faults and parked events kept by a store's [`ProjectionBackend`], for
/// [`AtLeastOnce`](crate::projection::AtLeastOnce) projections into sinks elsewhere. Takes no
/// lock.
pub struct BackendCheckpoints<B> {
    backend: B,
}

impl<B: ProjectionBackend> BackendCheckpoints<B> {
    /// Checkpoints kept by `backend`.
    pub fn new(backend: B) -> Self {
        BackendCheckpoints { backend }
    }
}

impl<B: ProjectionBackend> CheckpointStore for BackendCheckpoints<B> {
    async fn load(&mut self, name: &str) -> Result<Checkpoint, StoreError> {
        self.backend.checkpoint(name).await
    }

    async fn save(&mut self, name: &str, next: Position) -> Result<(), StoreError> {
        let work = Work::bookkeeping(vec![Bookkeeping::Checkpoint(next)]);
        self.backend
            .commit(name, work)
            .await
            .map_err(bookkeeping_error)
    }

    async fn park(
        &mut self,
        name: &str,
        failed: &FailedEvent,
        next: Position,
    ) -> Result<(), StoreError> {
        let work = Work::bookkeeping(vec![
            Bookkeeping::Park(failed.clone()),
            Bookkeeping::Checkpoint(next),
        ]);
        self.backend
            .commit(name, work)
            .await
            .map_err(bookkeeping_error)
    }

    async fn fault(&mut self, name: &str, failed: &FailedEvent) -> Result<(), StoreError> {
        let work = Work::bookkeeping(vec![Bookkeeping::Fault(failed.clone())]);
        self.backend
            .commit(name, work)
            .await
            .map_err(bookkeeping_error)
    }

    async fn parked(&mut self, name: &str) -> Result<Vec<FailedEvent>, StoreError> {
        self.backend.parked(name).await
    }

    async fn unpark(&mut self, name: &str, position: Position) -> Result<(), StoreError> {
        let work = Work::bookkeeping(vec![Bookkeeping::Unpark(position)]);
        self.backend
            .commit(name, work)
            .await
            .map_err(bookkeeping_error)
    }

    async fn reset(&mut self, name: &str) -> Result<(), StoreError> {
        let work = Work::bookkeeping(vec![Bookkeeping::Reset]);
        self.backend
            .commit(name, work)
            .await
            .map_err(bookkeeping_error)
    }
}
