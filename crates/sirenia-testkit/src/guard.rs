//! A store that owns a clean-up guard: a temporary directory, a throwaway schema.

use std::sync::Arc;

use sirenia_core::{
    AllPage, AppendResult, Direction, EventFilter, EventId, EventStore, Position, RecordedEvent,
    StoreError, StreamId, StreamWrite,
};

/// `store`, keeping `guard` alive as long as any clone lives. The store is dropped before the
/// guard, so a guard that deletes files or schemas runs after the store has closed them.
pub struct Guarded<S, G> {
    store: S,
    guard: Arc<G>,
}

impl<S: Clone, G> Clone for Guarded<S, G> {
    fn clone(&self) -> Self {
        Guarded {
            store: self.store.clone(),
            guard: self.guard.clone(),
        }
    }
}

impl<S, G> Guarded<S, G> {
    /// Wraps `store` with `guard`.
    pub fn new(store: S, guard: G) -> Self {
        Guarded {
            store,
            guard: Arc::new(guard),
        }
    }

    /// The wrapped store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The guard.
    pub fn guard(&self) -> &G {
        &self.guard
    }
}

impl<S: EventStore, G: Send + Sync + 'static> EventStore for Guarded<S, G> {
    async fn append(&self, writes: Vec<StreamWrite>) -> Result<AppendResult, StoreError> {
        self.store.append(writes).await
    }
    async fn stream_version(&self, stream: &StreamId) -> Result<Option<u64>, StoreError> {
        self.store.stream_version(stream).await
    }

    async fn stream_info(
        &self,
        stream: &StreamId,
    ) -> Result<Option<sirenia_core::StreamInfo>, StoreError> {
        self.store.stream_info(stream).await
    }

    async fn change_stream(
        &self,
        stream: &StreamId,
        change: sirenia_core::StreamChange,
    ) -> Result<Option<sirenia_core::StreamInfo>, StoreError> {
        self.store.change_stream(stream, change).await
    }
    async fn event_by_id(&self, id: EventId) -> Result<Option<RecordedEvent>, StoreError> {
        self.store.event_by_id(id).await
    }
    async fn head_position(&self) -> Result<Position, StoreError> {
        self.store.head_position().await
    }
    async fn read_stream_page(
        &self,
        stream: &StreamId,
        from: u64,
        direction: Direction,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.store
            .read_stream_page(stream, from, direction, max)
            .await
    }
    async fn read_all_page(
        &self,
        from: Position,
        direction: Direction,
        filter: &EventFilter,
        max: usize,
    ) -> Result<AllPage, StoreError> {
        self.store.read_all_page(from, direction, filter, max).await
    }
    async fn wait_for_events(&self, from: Position) -> Result<(), StoreError> {
        self.store.wait_for_events(from).await
    }
}
