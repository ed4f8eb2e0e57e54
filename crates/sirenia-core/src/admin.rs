//! The store admin port: what tools and services ask of a store beyond reading and writing
//! events. [`Capabilities`] says what a store can do (code above the stores asks it instead of
//! matching on which store it is); [`StoreAdmin`] holds the operations an operator, the CLI or
//! a service runs against a store: imports that keep original timestamps, the projections'
//! records and requests, blue/green read-model versions, document read models, and where the
//! store keeps snapshots and checkpoints.
//!
//! Every durable store implements both; wrappers forward them as a whole through
//! [`StoreWrapper`](crate::wrapper::StoreWrapper), so a capability cannot be lost on the way.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;

use crate::error::StoreError;
use crate::id::Position;
use crate::limits::MAX_PAGE_SIZE;
use crate::projection::{Checkpoint, FailedEvent, ProjectionRequest, StoredProjection};
use crate::snapshot::SnapshotStore;
use crate::store::{AppendResult, EventStore, ImportBatch};
use crate::transactional::{
    BackendCheckpoints, DocumentProjection, ProjectionBackend, TransactionalTarget,
};

/// What a store can do. Every store answers it ([`EventStore::capabilities`]); wrappers answer
/// with the wrapped store's.
///
/// Not `#[non_exhaustive]` on purpose: a new capability must be answered by every store, and
/// the compiler then points at each one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    /// Every position from 1 to the head holds an event (no holes): unfiltered reads of the
    /// global log fetch pages ahead concurrently, and a projection's lag is a count of events.
    pub dense_positions: bool,
    /// An acknowledged append survives a crash of the process (and, for the embedded store, of
    /// the machine).
    pub durable: bool,
    /// Several processes may append to the store at once.
    pub multi_process_writers: bool,
    /// A projection whose read model lives in the store commits its effects and checkpoint in
    /// one transaction ([`TransactionalTarget`]), exactly once.
    pub transactional_projections: bool,
    /// One instance of a projection name runs at a time across processes, not only within one.
    pub cross_process_locking: bool,
    /// Checkpoint changes made by another process wake [`StoreAdmin::wait_for_checkpoint`] at
    /// once; without it such a wait re-reads the checkpoint every [`CHECKPOINT_RECHECK`].
    pub cross_process_notifications: bool,
    /// [`StoreAdmin::import`] keeps each event's original `recorded_at`.
    pub import_with_timestamps: bool,
}

impl Capabilities {
    /// No capability at all (a starting point for a store to fill in).
    pub const NONE: Capabilities = Capabilities {
        dense_positions: false,
        durable: false,
        multi_process_writers: false,
        transactional_projections: false,
        cross_process_locking: false,
        cross_process_notifications: false,
        import_with_timestamps: false,
    };

    /// Each capability with its name, in a fixed order (for tables and status pages).
    pub fn list(&self) -> [(&'static str, bool); 7] {
        [
            ("dense_positions", self.dense_positions),
            ("durable", self.durable),
            ("multi_process_writers", self.multi_process_writers),
            ("transactional_projections", self.transactional_projections),
            ("cross_process_locking", self.cross_process_locking),
            (
                "cross_process_notifications",
                self.cross_process_notifications,
            ),
            ("import_with_timestamps", self.import_with_timestamps),
        ]
    }
}

/// How often [`StoreAdmin::wait_for_checkpoint`] re-reads a checkpoint on a store without
/// [`Capabilities::cross_process_notifications`] (within the process it is woken at once).
pub const CHECKPOINT_RECHECK: Duration = Duration::from_millis(250);

/// Longest wait [`StoreAdmin::wait_for_checkpoint`] accepts.
pub const MAX_CHECKPOINT_WAIT: Duration = Duration::from_secs(300);

/// A document of a read model, as [`StoreAdmin::documents`] lists it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Document {
    /// Its id within its collection.
    pub id: String,
    /// Its content.
    pub body: Value,
}

/// The operations of a store beyond the event port: see the [module docs](self).
pub trait StoreAdmin: EventStore {
    /// Where this store's transactional projections commit (its own database).
    type Backend: ProjectionBackend;

    /// A fresh backend for one projection target or checkpoint store (each holds its own
    /// connection and, once started, the projection's lock).
    fn projection_backend(&self) -> Self::Backend;

    /// Aggregate snapshots kept beside the events (for `Repository::with_snapshots`).
    fn snapshots(&self) -> Arc<dyn SnapshotStore>;

    /// Appends one batch of an import (see [`crate::store::import_batches`]): like an append,
    /// and, with [`Capabilities::import_with_timestamps`], each event keeps its original
    /// `recorded_at`. Re-importing a stored batch writes nothing (event ids are idempotent).
    fn import(
        &self,
        batch: ImportBatch,
    ) -> impl Future<Output = Result<AppendResult, StoreError>> + Send;

    /// Every projection the store records: checkpoint, fault and parked count, by name.
    fn projections(&self)
    -> impl Future<Output = Result<Vec<StoredProjection>, StoreError>> + Send;

    /// The stored checkpoint of projection `name` (next position 1 when it has none).
    fn checkpoint(&self, name: &str)
    -> impl Future<Output = Result<Checkpoint, StoreError>> + Send;

    /// The events projection `name` parked, in log order.
    fn parked(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Vec<FailedEvent>, StoreError>> + Send;

    /// Asks the running projector of `name`, in whichever process, to carry out `request`
    /// (replacing a request it has not taken yet).
    fn request_projection(
        &self,
        name: &str,
        request: ProjectionRequest,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The request for `name` its projector has not taken yet.
    fn pending_request(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<ProjectionRequest>, StoreError>> + Send;

    /// Records that readers of read model `name` use `version` from now on (the switch of a
    /// blue/green rebuild, see `Projector::run_blue_green`).
    fn set_active_version(
        &self,
        name: &str,
        version: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The version of read model `name` readers use, if one was set.
    fn active_version(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;

    /// The committed document `id` of `collection` (see [`DocumentProjection`]).
    fn document(
        &self,
        collection: &str,
        id: &str,
    ) -> impl Future<Output = Result<Option<Value>, StoreError>> + Send;

    /// At most `limit` committed documents of `collection` ordered by id (byte order), after
    /// `after` when given. `limit` is at most [`crate::limits::MAX_PAGE_SIZE`].
    fn documents(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Document>, StoreError>> + Send;

    /// Bumped whenever a projection of this store commits (in this process, and in others
    /// with [`Capabilities::cross_process_notifications`]). A wake-up only: re-read after it.
    fn projection_changes(&self) -> watch::Receiver<u64>;

    /// Checkpoints kept in this store, for an at-least-once projection
    /// ([`AtLeastOnce`](crate::projection::AtLeastOnce)) into a sink elsewhere.
    fn checkpoints(&self) -> BackendCheckpoints<Self::Backend> {
        BackendCheckpoints::new(self.projection_backend())
    }

    /// A projection named `name` whose read model is documents in this store, written by
    /// `handler`: its writes and checkpoint commit in one transaction (exactly once), and one
    /// instance per name runs at a time.
    fn document_projection<D: DocumentProjection>(
        &self,
        name: &str,
        handler: D,
    ) -> TransactionalTarget<Self::Backend, D> {
        TransactionalTarget::with_documents(name, self.projection_backend(), handler)
    }

    /// Waits until the stored checkpoint of projection `name` has passed `position` (the event
    /// there was handled, by whichever instance runs the projection), at most `timeout` (at
    /// most [`MAX_CHECKPOINT_WAIT`]). `Ok(false)` if it had not by then. Woken by the store's
    /// projection notifications, not by polling.
    fn wait_for_checkpoint(
        &self,
        name: &str,
        position: Position,
        timeout: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        async move {
            if timeout > MAX_CHECKPOINT_WAIT {
                return Err(StoreError::InvalidOptions {
                    message: format!(
                        "a checkpoint wait of {timeout:?} is longer than the limit of \
                         {MAX_CHECKPOINT_WAIT:?}"
                    ),
                });
            }
            let deadline = tokio::time::Instant::now() + timeout;
            let recheck = if self.capabilities().cross_process_notifications {
                MAX_CHECKPOINT_WAIT
            } else {
                CHECKPOINT_RECHECK
            };
            let mut changes = self.projection_changes();
            loop {
                changes.borrow_and_update();
                if self.checkpoint(name).await?.next > position {
                    return Ok(true);
                }
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    return Ok(false);
                }
                let until = deadline.min(now + recheck);
                if let Ok(Err(_)) = tokio::time::timeout_at(until, changes.changed()).await {
                    // The store is gone: nothing will wake this wait; re-read at `until`.
                    tokio::time::sleep_until(until).await;
                }
            }
        }
    }
}

/// Refuses a documents page larger than [`MAX_PAGE_SIZE`] (every store calls it).
pub fn check_documents_limit(limit: usize) -> Result<(), StoreError> {
    if limit > MAX_PAGE_SIZE {
        return Err(StoreError::LimitExceeded {
            limit: crate::error::Limit::PageSize,
            max: MAX_PAGE_SIZE as u64,
            actual: limit as u64,
        });
    }
    Ok(())
}
