//! [`StoreWrapper`]: the one way to wrap a store (metrics, test guards, tenancy, encryption).
//!
//! A wrapper names the store it wraps and overrides only the hooks it changes; every other
//! method of the port ([`EventStore`]) and of the admin port ([`StoreAdmin`]) is forwarded to
//! the wrapped store by the blanket implementations below. Forwarding is therefore not code
//! each wrapper writes (and can get wrong): a wrapper reports the wrapped store's
//! [`Capabilities`] unless it overrides [`StoreWrapper::wrap_capabilities`] on purpose.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;

use crate::admin::{Capabilities, Document, StoreAdmin};
use crate::error::StoreError;
use crate::event::RecordedEvent;
use crate::id::{EventId, Position, StreamId};
use crate::lifecycle::{StreamChange, StreamInfo};
use crate::projection::{Checkpoint, FailedEvent, ProjectionRequest, StoredProjection};
use crate::snapshot::SnapshotStore;
use crate::store::{
    AllPage, AppendResult, Direction, EventFilter, EventStore, ImportBatch, StreamWrite,
};

/// A store around another store. Implement [`inner`](StoreWrapper::inner) and the hooks to
/// change; the type then is an [`EventStore`] (and a [`StoreAdmin`] when the wrapped store is
/// one) forwarding everything else.
pub trait StoreWrapper: Clone + Send + Sync + 'static {
    /// The wrapped store.
    type Inner: EventStore;

    /// The wrapped store.
    fn inner(&self) -> &Self::Inner;

    /// [`EventStore::append`] (default: the wrapped store's).
    fn wrap_append(
        &self,
        writes: Vec<StreamWrite>,
    ) -> impl Future<Output = Result<AppendResult, StoreError>> + Send {
        self.inner().append(writes)
    }

    /// [`EventStore::stream_version`] (default: the wrapped store's).
    fn wrap_stream_version(
        &self,
        stream: &StreamId,
    ) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send {
        self.inner().stream_version(stream)
    }

    /// [`EventStore::stream_info`] (default: the wrapped store's).
    fn wrap_stream_info(
        &self,
        stream: &StreamId,
    ) -> impl Future<Output = Result<Option<StreamInfo>, StoreError>> + Send {
        self.inner().stream_info(stream)
    }

    /// [`EventStore::change_stream`] (default: the wrapped store's).
    fn wrap_change_stream(
        &self,
        stream: &StreamId,
        change: StreamChange,
    ) -> impl Future<Output = Result<Option<StreamInfo>, StoreError>> + Send {
        self.inner().change_stream(stream, change)
    }

    /// [`EventStore::event_by_id`] (default: the wrapped store's).
    fn wrap_event_by_id(
        &self,
        id: EventId,
    ) -> impl Future<Output = Result<Option<RecordedEvent>, StoreError>> + Send {
        self.inner().event_by_id(id)
    }

    /// [`EventStore::head_position`] (default: the wrapped store's).
    fn wrap_head_position(&self) -> impl Future<Output = Result<Position, StoreError>> + Send {
        self.inner().head_position()
    }

    /// [`EventStore::read_stream_page`] (default: the wrapped store's).
    fn wrap_read_stream_page(
        &self,
        stream: &StreamId,
        from: u64,
        direction: Direction,
        max: usize,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send {
        self.inner().read_stream_page(stream, from, direction, max)
    }

    /// [`EventStore::read_all_page`] (default: the wrapped store's).
    fn wrap_read_all_page(
        &self,
        from: Position,
        direction: Direction,
        filter: &EventFilter,
        max: usize,
    ) -> impl Future<Output = Result<AllPage, StoreError>> + Send {
        self.inner().read_all_page(from, direction, filter, max)
    }

    /// [`EventStore::wait_for_events`] (default: the wrapped store's).
    fn wrap_wait_for_events(
        &self,
        from: Position,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.inner().wait_for_events(from)
    }

    /// [`EventStore::capabilities`] (default: the wrapped store's). Override it only for a
    /// wrapper that really changes what the store can do (one that hides events makes
    /// positions look sparse, say).
    fn wrap_capabilities(&self) -> Capabilities {
        self.inner().capabilities()
    }
}

impl<W: StoreWrapper> EventStore for W {
    fn append(
        &self,
        writes: Vec<StreamWrite>,
    ) -> impl Future<Output = Result<AppendResult, StoreError>> + Send {
        self.wrap_append(writes)
    }

    fn stream_version(
        &self,
        stream: &StreamId,
    ) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send {
        self.wrap_stream_version(stream)
    }

    fn stream_info(
        &self,
        stream: &StreamId,
    ) -> impl Future<Output = Result<Option<StreamInfo>, StoreError>> + Send {
        self.wrap_stream_info(stream)
    }

    fn change_stream(
        &self,
        stream: &StreamId,
        change: StreamChange,
    ) -> impl Future<Output = Result<Option<StreamInfo>, StoreError>> + Send {
        self.wrap_change_stream(stream, change)
    }

    fn event_by_id(
        &self,
        id: EventId,
    ) -> impl Future<Output = Result<Option<RecordedEvent>, StoreError>> + Send {
        self.wrap_event_by_id(id)
    }

    fn head_position(&self) -> impl Future<Output = Result<Position, StoreError>> + Send {
        self.wrap_head_position()
    }

    fn read_stream_page(
        &self,
        stream: &StreamId,
        from: u64,
        direction: Direction,
        max: usize,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send {
        self.wrap_read_stream_page(stream, from, direction, max)
    }

    fn read_all_page(
        &self,
        from: Position,
        direction: Direction,
        filter: &EventFilter,
        max: usize,
    ) -> impl Future<Output = Result<AllPage, StoreError>> + Send {
        self.wrap_read_all_page(from, direction, filter, max)
    }

    fn wait_for_events(
        &self,
        from: Position,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.wrap_wait_for_events(from)
    }

    fn capabilities(&self) -> Capabilities {
        self.wrap_capabilities()
    }
}

impl<W> StoreAdmin for W
where
    W: StoreWrapper,
    W::Inner: StoreAdmin,
{
    type Backend = <W::Inner as StoreAdmin>::Backend;

    fn projection_backend(&self) -> Self::Backend {
        self.inner().projection_backend()
    }

    fn snapshots(&self) -> Arc<dyn SnapshotStore> {
        self.inner().snapshots()
    }

    fn import(
        &self,
        batch: ImportBatch,
    ) -> impl Future<Output = Result<AppendResult, StoreError>> + Send {
        self.inner().import(batch)
    }

    fn projections(
        &self,
    ) -> impl Future<Output = Result<Vec<StoredProjection>, StoreError>> + Send {
        self.inner().projections()
    }

    fn checkpoint(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Checkpoint, StoreError>> + Send {
        self.inner().checkpoint(name)
    }

    fn parked(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Vec<FailedEvent>, StoreError>> + Send {
        self.inner().parked(name)
    }

    fn request_projection(
        &self,
        name: &str,
        request: ProjectionRequest,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.inner().request_projection(name, request)
    }

    fn pending_request(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<ProjectionRequest>, StoreError>> + Send {
        self.inner().pending_request(name)
    }

    fn set_active_version(
        &self,
        name: &str,
        version: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.inner().set_active_version(name, version)
    }

    fn active_version(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<String>, StoreError>> + Send {
        self.inner().active_version(name)
    }

    fn document(
        &self,
        collection: &str,
        id: &str,
    ) -> impl Future<Output = Result<Option<Value>, StoreError>> + Send {
        self.inner().document(collection, id)
    }

    fn documents(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Document>, StoreError>> + Send {
        self.inner().documents(collection, after, limit)
    }

    fn projection_changes(&self) -> watch::Receiver<u64> {
        self.inner().projection_changes()
    }

    fn wait_for_checkpoint(
        &self,
        name: &str,
        position: Position,
        timeout: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        self.inner().wait_for_checkpoint(name, position, timeout)
    }
}
