//! A lifecycle change while an aggregate's stream is being read, page by page: the load refuses
//! to build a state from the events around the hidden ones.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sirenia_core::store::{AllPage, Direction, EventFilter};
use sirenia_core::{
    AppendResult, EventId, EventStore, ExpectedVersion, InMemoryStore, LoadError, NewEvent,
    Position, RecordedEvent, Repository, StoreError, StreamChange, StreamId, StreamInfo,
    StreamWrite,
};
use sirenia_testkit::snapshots::{Tally, TallyEvent};

/// Truncates the stream before revision 1000 right before the read's second page.
#[derive(Clone)]
struct CutBetweenPages {
    inner: InMemoryStore,
    armed: Arc<AtomicBool>,
}

impl EventStore for CutBetweenPages {
    fn capabilities(&self) -> sirenia_core::Capabilities {
        self.inner.capabilities()
    }
    async fn append(&self, writes: Vec<StreamWrite>) -> Result<AppendResult, StoreError> {
        self.inner.append(writes).await
    }
    async fn stream_version(&self, stream: &StreamId) -> Result<Option<u64>, StoreError> {
        self.inner.stream_version(stream).await
    }
    async fn stream_info(&self, stream: &StreamId) -> Result<Option<StreamInfo>, StoreError> {
        self.inner.stream_info(stream).await
    }
    async fn change_stream(
        &self,
        stream: &StreamId,
        change: StreamChange,
    ) -> Result<Option<StreamInfo>, StoreError> {
        self.inner.change_stream(stream, change).await
    }
    async fn event_by_id(&self, id: EventId) -> Result<Option<RecordedEvent>, StoreError> {
        self.inner.event_by_id(id).await
    }
    async fn head_position(&self) -> Result<Position, StoreError> {
        self.inner.head_position().await
    }
    async fn read_stream_page(
        &self,
        stream: &StreamId,
        from: u64,
        direction: Direction,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if from > 0 && self.armed.swap(false, Ordering::SeqCst) {
            self.inner.truncate_stream(stream, 1000).await?;
        }
        self.inner
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
        self.inner.read_all_page(from, direction, filter, max).await
    }
    async fn wait_for_events(&self, from: Position) -> Result<(), StoreError> {
        self.inner.wait_for_events(from).await
    }
}

#[tokio::test]
async fn a_truncation_between_pages_of_a_load_is_refused_not_skipped() {
    let store = CutBetweenPages {
        inner: InMemoryStore::new(),
        armed: Arc::new(AtomicBool::new(false)),
    };
    let codec = sirenia_core::JsonCodec::<TallyEvent>::new();
    let events: Vec<NewEvent> = (0..1200)
        .map(|i| {
            codec
                .to_new_event(&TallyEvent::Added(i), EventId::new(), Default::default())
                .unwrap()
        })
        .collect();
    let stream = StreamId::new("tally-long").unwrap();
    for chunk in events.chunks(600) {
        store
            .append(vec![StreamWrite::new(
                stream.clone(),
                ExpectedVersion::Any,
                chunk.to_vec(),
            )])
            .await
            .unwrap();
    }
    let repository = Repository::<Tally, _>::new(store.clone());
    assert_eq!(repository.load("long").await.unwrap().version, 1200);
    store.armed.store(true, Ordering::SeqCst);
    match repository.load("long").await {
        Err(LoadError::Store(StoreError::StreamTruncated { .. })) => {}
        Ok(loaded) => panic!(
            "a state was built around hidden events: version {}, {} events applied",
            loaded.version,
            loaded.state.history.len()
        ),
        Err(other) => panic!("expected StreamTruncated, got {other:?}"),
    }
}
