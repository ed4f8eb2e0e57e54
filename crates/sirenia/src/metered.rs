//! [`Metered`]: any store, with metrics and tracing spans around its appends and reads.

use std::time::Instant;

use sirenia_core::store::{AllPage, Direction, EventFilter, StreamWrite};
use sirenia_core::{
    AppendResult, EventId, EventStore, Position, RecordedEvent, StoreError, StreamId,
};
use tracing::Instrument;

/// Appends, by outcome (`ok`, `conflict`, `error`).
pub const APPENDS_TOTAL: &str = "sirenia_appends_total";
/// Events written by successful appends.
pub const EVENTS_APPENDED_TOTAL: &str = "sirenia_events_appended_total";
/// Append latency in seconds, successful or not.
pub const APPEND_DURATION_SECONDS: &str = "sirenia_append_duration_seconds";
/// Appends refused because a stream's version did not match the expectation.
pub const APPEND_CONFLICTS_TOTAL: &str = "sirenia_append_conflicts_total";
/// Highest position this process has written or read.
pub const HEAD_POSITION: &str = "sirenia_head_position";
/// Events read from the store (stream and global-log pages).
pub const EVENTS_READ_TOTAL: &str = "sirenia_events_read_total";

/// Wraps a store and records, through the [`metrics`] facade, every append's outcome, latency
/// and size, conflicts, events read and the highest position seen; each append also runs in a
/// `sirenia.append` tracing span. Install any `metrics` recorder (for example the Prometheus
/// exporter) to collect them; without one they cost next to nothing.
#[derive(Clone, Debug)]
pub struct Metered<S> {
    inner: S,
}

impl<S: EventStore> Metered<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Metered { inner }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

fn saw_position(position: Position) {
    // Positions stay far below 2^53, where f64 is exact.
    #[allow(clippy::cast_precision_loss)]
    metrics::gauge!(HEAD_POSITION).set(position.0 as f64);
}

impl<S: EventStore> EventStore for Metered<S> {
    async fn append(&self, writes: Vec<StreamWrite>) -> Result<AppendResult, StoreError> {
        let events: usize = writes.iter().map(|w| w.events.len()).sum();
        let span = tracing::debug_span!(
            "sirenia.append",
            streams = writes.len(),
            events,
            first_stream = writes.first().map(|w| w.stream.as_str()),
        );
        let start = Instant::now();
        let result = self.inner.append(writes).instrument(span).await;
        metrics::histogram!(APPEND_DURATION_SECONDS).record(start.elapsed().as_secs_f64());
        let outcome = match &result {
            Ok(appended) => {
                metrics::counter!(EVENTS_APPENDED_TOTAL).increment(events as u64);
                if let Some(last) = appended
                    .streams
                    .iter()
                    .filter_map(|s| s.last_position)
                    .max()
                {
                    saw_position(last);
                }
                "ok"
            }
            Err(StoreError::Conflict { .. }) => {
                metrics::counter!(APPEND_CONFLICTS_TOTAL).increment(1);
                "conflict"
            }
            Err(_) => "error",
        };
        metrics::counter!(APPENDS_TOTAL, "outcome" => outcome).increment(1);
        result
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<Option<u64>, StoreError> {
        self.inner.stream_version(stream).await
    }

    async fn stream_info(
        &self,
        stream: &StreamId,
    ) -> Result<Option<sirenia_core::StreamInfo>, StoreError> {
        self.inner.stream_info(stream).await
    }

    async fn change_stream(
        &self,
        stream: &StreamId,
        change: sirenia_core::StreamChange,
    ) -> Result<Option<sirenia_core::StreamInfo>, StoreError> {
        self.inner.change_stream(stream, change).await
    }

    async fn event_by_id(&self, id: EventId) -> Result<Option<RecordedEvent>, StoreError> {
        self.inner.event_by_id(id).await
    }

    async fn head_position(&self) -> Result<Position, StoreError> {
        let head = self.inner.head_position().await?;
        saw_position(head);
        Ok(head)
    }

    async fn read_stream_page(
        &self,
        stream: &StreamId,
        from: u64,
        direction: Direction,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let page = self
            .inner
            .read_stream_page(stream, from, direction, max)
            .await?;
        metrics::counter!(EVENTS_READ_TOTAL).increment(page.len() as u64);
        Ok(page)
    }

    async fn read_all_page(
        &self,
        from: Position,
        direction: Direction,
        filter: &EventFilter,
        max: usize,
    ) -> Result<AllPage, StoreError> {
        let page = self
            .inner
            .read_all_page(from, direction, filter, max)
            .await?;
        metrics::counter!(EVENTS_READ_TOTAL).increment(page.events.len() as u64);
        Ok(page)
    }

    async fn wait_for_events(&self, from: Position) -> Result<(), StoreError> {
        self.inner.wait_for_events(from).await
    }

    fn dense_positions(&self) -> bool {
        self.inner.dense_positions()
    }
}
