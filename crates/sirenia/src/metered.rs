//! [`Metered`]: any store, with metrics and tracing spans around its appends and reads. A
//! [`StoreWrapper`]: everything it does not measure, the admin port included, is the wrapped
//! store's.

use std::time::Instant;

use sirenia_core::store::{AllPage, Direction, EventFilter, StreamWrite};
use sirenia_core::{
    AppendResult, EventStore, Position, RecordedEvent, StoreError, StoreWrapper, StreamId,
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
}

fn saw_position(position: Position) {
    // Positions stay far below 2^53, where f64 is exact.
    #[allow(clippy::cast_precision_loss)]
    metrics::gauge!(HEAD_POSITION).set(position.0 as f64);
}

impl<S: EventStore> StoreWrapper for Metered<S> {
    type Inner = S;

    fn inner(&self) -> &S {
        &self.inner
    }

    async fn wrap_append(&self, writes: Vec<StreamWrite>) -> Result<AppendResult, StoreError> {
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

    async fn wrap_head_position(&self) -> Result<Position, StoreError> {
        let head = self.inner.head_position().await?;
        saw_position(head);
        Ok(head)
    }

    async fn wrap_read_stream_page(
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

    async fn wrap_read_all_page(
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
}
