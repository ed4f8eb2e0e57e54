//! The store port: the one contract every event store implements.
//!
//! A store implements a handful of page-level methods ([`EventStore::append`],
//! [`EventStore::read_stream_page`], [`EventStore::read_all_page`], …). The streaming reads and
//! subscriptions every user calls ([`EventStore::read_stream`], [`EventStore::read_all`],
//! [`EventStore::subscribe`]) are built on them once, here, so every store pages, limits and
//! signals "caught up" the same way, with memory bounded by one page whatever the log's length.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;

use futures_util::Stream;
use serde::{Deserialize, Serialize};

use crate::admin::Capabilities;
use crate::error::{ExistingEvent, InvalidAppend, Limit, StoreError};
use crate::event::{NewEvent, RecordedEvent};
use crate::id::{EventId, ExpectedVersion, Position, StreamId, Timestamp};
use crate::lifecycle::{StreamChange, StreamInfo};
use crate::limits::{
    DEFAULT_PAGE_SIZE, MAX_APPEND_BYTES, MAX_CONTENT_TYPE_BYTES, MAX_EVENT_BYTES,
    MAX_EVENT_TYPE_BYTES, MAX_EVENTS_PER_APPEND, MAX_METADATA_BYTES, MAX_PAGE_SIZE,
    MAX_STREAMS_PER_APPEND,
};

/// A stream of recorded events; each item is fetched page by page as the consumer polls.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<RecordedEvent, StoreError>> + Send>>;

/// A subscription: the events from a position on, then [`SubscriptionItem::CaughtUp`] once, then
/// live events as they are committed.
pub type Subscription = Pin<Box<dyn Stream<Item = Result<SubscriptionItem, StoreError>> + Send>>;

/// The writes to one stream in an append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamWrite {
    /// The stream.
    pub stream: StreamId,
    /// What the stream's version must be for the append to go ahead.
    pub expected: ExpectedVersion,
    /// The events, in order. May be empty: the write then only checks `expected`.
    pub events: Vec<NewEvent>,
}

impl StreamWrite {
    /// A write of `events` to `stream` expecting `expected`.
    pub fn new(stream: StreamId, expected: ExpectedVersion, events: Vec<NewEvent>) -> Self {
        StreamWrite {
            stream,
            expected,
            events,
        }
    }
}

/// What an append did to one stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamAppended {
    /// The stream.
    pub stream: StreamId,
    /// The revision of the write's first event (the stream's version before it).
    pub first_revision: u64,
    /// The stream's version after the write (its number of events).
    pub version: u64,
    /// The position of the write's first event (`None` for a write without events).
    pub first_position: Option<Position>,
    /// The position of the write's last event (`None` for a write without events).
    pub last_position: Option<Position>,
}

/// The result of a successful append, one entry per stream write, in request order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendResult {
    /// Per stream write, in request order.
    pub streams: Vec<StreamAppended>,
}

impl AppendResult {
    /// The highest position written (`None` if no event was written). Waiting for a projection
    /// to reach it gives read-your-writes.
    pub fn last_position(&self) -> Option<Position> {
        self.streams.iter().filter_map(|s| s.last_position).max()
    }

    /// The entry for `stream`.
    pub fn stream(&self, stream: &StreamId) -> Option<&StreamAppended> {
        self.streams.iter().find(|s| &s.stream == stream)
    }
}

/// Reading direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Oldest first.
    #[default]
    Forward,
    /// Newest first.
    Backward,
}

/// Which events of the global log a read or subscription wants. Empty lists match everything;
/// within a list any entry may match; both lists must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventFilter {
    /// Stream categories (the part of the stream id before the first `-`).
    #[serde(default)]
    pub categories: Vec<String>,
    /// Event types.
    #[serde(default)]
    pub event_types: Vec<String>,
}

impl EventFilter {
    /// Everything.
    pub fn all() -> Self {
        Self::default()
    }

    /// Events of streams in `category`.
    pub fn category(category: impl Into<String>) -> Self {
        EventFilter {
            categories: vec![category.into()],
            event_types: Vec::new(),
        }
    }

    /// Also accept streams in `category`.
    pub fn or_category(mut self, category: impl Into<String>) -> Self {
        self.categories.push(category.into());
        self
    }

    /// Also accept events of type `event_type` (the first call restricts to it).
    pub fn event_type(mut self, event_type: impl Into<String>) -> Self {
        self.event_types.push(event_type.into());
        self
    }

    /// Whether the filter accepts everything.
    pub fn is_all(&self) -> bool {
        self.categories.is_empty() && self.event_types.is_empty()
    }

    /// Whether the filter accepts an event of `event_type` in `stream`.
    pub fn accepts(&self, stream: &StreamId, event_type: &str) -> bool {
        (self.categories.is_empty() || self.categories.iter().any(|c| c == stream.category()))
            && (self.event_types.is_empty() || self.event_types.iter().any(|t| t == event_type))
    }

    /// Whether the filter accepts `event`.
    pub fn matches(&self, event: &RecordedEvent) -> bool {
        self.accepts(&event.stream_id, &event.event_type)
    }
}

/// Options of [`EventStore::read_stream`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadStream {
    /// Direction.
    pub direction: Direction,
    /// First revision to return (inclusive). Backward, `u64::MAX` means "from the last event".
    pub from: u64,
    /// Most events to return (`None`: no limit).
    pub limit: Option<u64>,
    /// Events per page (1..=[`MAX_PAGE_SIZE`]).
    pub page_size: usize,
}

impl ReadStream {
    /// Forward from revision 0.
    pub fn forward() -> Self {
        ReadStream {
            direction: Direction::Forward,
            from: 0,
            limit: None,
            page_size: DEFAULT_PAGE_SIZE,
        }
    }

    /// Backward from the last event.
    pub fn backward() -> Self {
        ReadStream {
            direction: Direction::Backward,
            from: u64::MAX,
            limit: None,
            page_size: DEFAULT_PAGE_SIZE,
        }
    }

    /// Starts at `revision` (inclusive).
    pub fn from(mut self, revision: u64) -> Self {
        self.from = revision;
        self
    }

    /// Returns at most `limit` events.
    pub fn limit(mut self, limit: u64) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Reads `page_size` events per page.
    pub fn page_size(mut self, page_size: usize) -> Self {
        self.page_size = page_size;
        self
    }
}

impl Default for ReadStream {
    fn default() -> Self {
        Self::forward()
    }
}

/// Options of [`EventStore::read_all`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadAll {
    /// Direction.
    pub direction: Direction,
    /// First position to consider (inclusive). Backward, [`Position::END`] means "from the newest".
    pub from: Position,
    /// Which events.
    pub filter: EventFilter,
    /// Most events to return (`None`: no limit).
    pub limit: Option<u64>,
    /// Events per page (1..=[`MAX_PAGE_SIZE`]).
    pub page_size: usize,
}

impl ReadAll {
    /// Forward from the start of the log.
    pub fn forward() -> Self {
        ReadAll {
            direction: Direction::Forward,
            from: Position::START,
            filter: EventFilter::all(),
            limit: None,
            page_size: DEFAULT_PAGE_SIZE,
        }
    }

    /// Backward from the newest event.
    pub fn backward() -> Self {
        ReadAll {
            direction: Direction::Backward,
            from: Position::END,
            ..Self::forward()
        }
    }

    /// Starts at `position` (inclusive).
    pub fn from(mut self, position: Position) -> Self {
        self.from = position;
        self
    }

    /// Only events `filter` accepts.
    pub fn filter(mut self, filter: EventFilter) -> Self {
        self.filter = filter;
        self
    }

    /// Returns at most `limit` events.
    pub fn limit(mut self, limit: u64) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Reads `page_size` events per page.
    pub fn page_size(mut self, page_size: usize) -> Self {
        self.page_size = page_size;
        self
    }
}

impl Default for ReadAll {
    fn default() -> Self {
        Self::forward()
    }
}

/// Options of [`EventStore::subscribe`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscribe {
    /// First position to deliver (inclusive); [`Position::START`] for the whole log.
    pub from: Position,
    /// Which events.
    pub filter: EventFilter,
    /// Events per page while catching up (1..=[`MAX_PAGE_SIZE`]).
    pub page_size: usize,
}

impl Subscribe {
    /// The whole log, then live events.
    pub fn from_start() -> Self {
        Self::from(Position::START)
    }

    /// From `position` (inclusive), then live events.
    pub fn from(position: Position) -> Self {
        Subscribe {
            from: position,
            filter: EventFilter::all(),
            page_size: DEFAULT_PAGE_SIZE,
        }
    }

    /// Only events `filter` accepts.
    pub fn filter(mut self, filter: EventFilter) -> Self {
        self.filter = filter;
        self
    }

    /// Reads `page_size` events per page.
    pub fn page_size(mut self, page_size: usize) -> Self {
        self.page_size = page_size;
        self
    }
}

/// An item of a [`Subscription`].
// Events are nearly every item: boxing them would cost an allocation each for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubscriptionItem {
    /// The next event, in position order.
    Event(RecordedEvent),
    /// Sent once, when the subscription has delivered everything committed when it reached the
    /// head of the log; events after this are live. `head` is the last position examined: every
    /// matching event at or below it has been delivered, so it is a safe checkpoint.
    CaughtUp {
        /// The last position examined.
        head: Position,
    },
}

/// One page of the global log, as returned by [`EventStore::read_all_page`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllPage {
    /// The matching events, in the direction read.
    pub events: Vec<RecordedEvent>,
    /// Where the next page starts (inclusive). Forward at the end, this is one past the last
    /// position examined, so a subscription resumes there.
    pub next: Position,
    /// Whether the page reached the end of what is visible (forward: the head; backward: the
    /// start). A page may be empty but not at the end when a filter skipped everything it
    /// examined.
    pub at_end: bool,
}

/// The event store port.
///
/// Implementations are cheap handles (`Clone`), shareable across tasks. Every method's future is
/// `Send`. Appends are atomic across all their stream writes, idempotent on event ids, and
/// durable when they return (for durable stores); positions are strictly increasing in commit
/// order.
pub trait EventStore: Clone + Send + Sync + 'static {
    /// Appends all `writes` or none.
    ///
    /// Fails with [`StoreError::Conflict`] when a stream's version does not match its write's
    /// expectation. Re-appending events whose ids are already stored at the same place with the
    /// same content writes nothing and returns the original result; an id stored elsewhere or
    /// with other content is [`StoreError::EventIdReused`]. Limits are checked first
    /// ([`validate_append`]).
    fn append(
        &self,
        writes: Vec<StreamWrite>,
    ) -> impl Future<Output = Result<AppendResult, StoreError>> + Send;

    /// The stream's version (the next revision it will write), `None` if it does not exist or
    /// is soft-deleted; [`StoreError::StreamTombstoned`] if it is tombstoned.
    fn stream_version(
        &self,
        stream: &StreamId,
    ) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send;

    /// What the store knows about `stream`: its version and lifecycle (`None`: it has neither
    /// events nor a lifecycle record).
    fn stream_info(
        &self,
        stream: &StreamId,
    ) -> impl Future<Output = Result<Option<StreamInfo>, StoreError>> + Send;

    /// Applies a lifecycle change to `stream` atomically, as [`decide_change`](crate::lifecycle::decide_change) rules, and
    /// returns the stream's record after it (`None` if it has none: deleting a missing stream).
    /// Durable when it returns, like an append. The global log keeps every event: only the
    /// stream view changes (see [`lifecycle`](crate::lifecycle)).
    fn change_stream(
        &self,
        stream: &StreamId,
        change: StreamChange,
    ) -> impl Future<Output = Result<Option<StreamInfo>, StoreError>> + Send;

    /// Soft-deletes `stream` if its version satisfies `expected` (see [`StreamChange::Delete`]).
    fn delete_stream(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
    ) -> impl Future<Output = Result<Option<StreamInfo>, StoreError>> + Send {
        self.change_stream(stream, StreamChange::Delete { expected })
    }

    /// Tombstones `stream` if its version satisfies `expected` (see
    /// [`StreamChange::Tombstone`]).
    fn tombstone_stream(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
    ) -> impl Future<Output = Result<Option<StreamInfo>, StoreError>> + Send {
        self.change_stream(stream, StreamChange::Tombstone { expected })
    }

    /// Hides the revisions of `stream` below `before` from stream reads (see
    /// [`StreamChange::TruncateBefore`]).
    fn truncate_stream(
        &self,
        stream: &StreamId,
        before: u64,
    ) -> impl Future<Output = Result<Option<StreamInfo>, StoreError>> + Send {
        self.change_stream(stream, StreamChange::TruncateBefore { before })
    }

    /// The event with id `id`, if stored.
    fn event_by_id(
        &self,
        id: EventId,
    ) -> impl Future<Output = Result<Option<RecordedEvent>, StoreError>> + Send;

    /// The highest position visible to readers ([`Position::START`] when the log is empty).
    fn head_position(&self) -> impl Future<Output = Result<Position, StoreError>> + Send;

    /// At most `max` events of `stream` from revision `from` (inclusive) in `direction`.
    /// Backward, `from = u64::MAX` starts at the last event. A missing or soft-deleted stream
    /// reads as empty; revisions hidden by truncation (below
    /// [`StreamInfo::readable_from`]) are never returned; a tombstoned stream is
    /// [`StoreError::StreamTombstoned`].
    fn read_stream_page(
        &self,
        stream: &StreamId,
        from: u64,
        direction: Direction,
        max: usize,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send;

    /// At most `max` events of the global log accepted by `filter`, from position `from`
    /// (inclusive) in `direction`, examining a bounded number of events.
    fn read_all_page(
        &self,
        from: Position,
        direction: Direction,
        filter: &EventFilter,
        max: usize,
    ) -> impl Future<Output = Result<AllPage, StoreError>> + Send;

    /// Resolves when an event at or after `from` may have become visible (it may resolve
    /// spuriously; the caller re-reads). Live subscriptions wait on this.
    fn wait_for_events(
        &self,
        from: Position,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// What this store can do. Required, with no default, so that no store or wrapper can
    /// forget to say it (a wrapper built on [`StoreWrapper`](crate::wrapper::StoreWrapper)
    /// forwards the wrapped store's).
    fn capabilities(&self) -> Capabilities;

    /// Whether every position from 1 to the head holds an event (no holes):
    /// [`Capabilities::dense_positions`]. Such a store lets unfiltered reads of the global log
    /// fetch pages ahead concurrently, since a full page from `p` of `n` events is followed by
    /// one at `p + n`. A wrong answer costs only wasted fetches: reads check every page starts
    /// where the previous one ended. Answered from [`EventStore::capabilities`]; not meant to
    /// be overridden.
    fn dense_positions(&self) -> bool {
        self.capabilities().dense_positions
    }

    /// The events of `stream`, paged, with memory bounded by one page.
    fn read_stream(&self, stream: &StreamId, options: ReadStream) -> EventStream {
        read_stream_paged(self.clone(), stream.clone(), options)
    }

    /// The events of the global log, paged, with memory bounded by one page.
    fn read_all(&self, options: ReadAll) -> EventStream {
        read_all_paged(self.clone(), options)
    }

    /// Catch up from `options.from`, signal [`SubscriptionItem::CaughtUp`], then deliver live
    /// events. Pages are fetched only as the consumer polls, so a slow consumer slows the
    /// subscription instead of growing a buffer.
    fn subscribe(&self, options: Subscribe) -> Subscription {
        subscribe_paged(self.clone(), options)
    }
}

fn check_page_size(page_size: usize) -> Result<(), StoreError> {
    if page_size == 0 || page_size > MAX_PAGE_SIZE {
        return Err(StoreError::LimitExceeded {
            limit: Limit::PageSize,
            max: MAX_PAGE_SIZE as u64,
            actual: page_size as u64,
        });
    }
    Ok(())
}

fn failed_read(error: StoreError) -> EventStream {
    Box::pin(futures_util::stream::once(async move { Err(error) }))
}

fn read_stream_paged<S: EventStore>(
    store: S,
    stream: StreamId,
    options: ReadStream,
) -> EventStream {
    if let Err(e) = check_page_size(options.page_size) {
        return failed_read(e);
    }
    let source = crate::paging::StreamSource {
        store: std::sync::Arc::new(store),
        stream,
        direction: options.direction,
    };
    Box::pin(crate::paging::Paged::new(
        source,
        options.from,
        options.page_size,
        options.limit,
    ))
}

fn read_all_paged<S: EventStore>(store: S, options: ReadAll) -> EventStream {
    if let Err(e) = check_page_size(options.page_size) {
        return failed_read(e);
    }
    let source = crate::paging::AllSource {
        dense: store.dense_positions() && options.filter.is_all(),
        store: std::sync::Arc::new(store),
        direction: options.direction,
        filter: std::sync::Arc::new(options.filter),
    };
    Box::pin(crate::paging::Paged::new(
        source,
        options.from,
        options.page_size,
        options.limit,
    ))
}

struct SubState<S> {
    store: S,
    cursor: Position,
    last_examined: Position,
    buffer: VecDeque<RecordedEvent>,
    caught_up_sent: bool,
    failed: bool,
}

fn subscribe_paged<S: EventStore>(store: S, options: Subscribe) -> Subscription {
    let Subscribe {
        from,
        filter,
        page_size,
    } = options;
    let state = SubState {
        store,
        cursor: from,
        last_examined: Position(from.get().saturating_sub(1)),
        buffer: VecDeque::new(),
        caught_up_sent: false,
        failed: false,
    };
    Box::pin(futures_util::stream::unfold(state, move |mut st| {
        let filter = filter.clone();
        async move {
            if st.failed {
                return None;
            }
            if let Err(e) = check_page_size(page_size) {
                st.failed = true;
                return Some((Err(e), st));
            }
            loop {
                if let Some(event) = st.buffer.pop_front() {
                    return Some((Ok(SubscriptionItem::Event(event)), st));
                }
                let page = match st
                    .store
                    .read_all_page(st.cursor, Direction::Forward, &filter, page_size)
                    .await
                {
                    Ok(page) => page,
                    Err(e) => {
                        st.failed = true;
                        return Some((Err(e), st));
                    }
                };
                debug_assert!(page.next >= st.cursor, "a forward page moved backwards");
                debug_assert!(
                    page.events
                        .windows(2)
                        .all(|w| w[0].position < w[1].position),
                    "a page is not in position order"
                );
                if page.next > st.cursor {
                    st.last_examined = Position(page.next.get() - 1);
                }
                st.cursor = page.next;
                let empty = page.events.is_empty();
                st.buffer.extend(page.events);
                if !empty || !page.at_end {
                    continue;
                }
                if !st.caught_up_sent {
                    st.caught_up_sent = true;
                    let head = st.last_examined;
                    return Some((Ok(SubscriptionItem::CaughtUp { head }), st));
                }
                if let Err(e) = st.store.wait_for_events(st.cursor).await {
                    st.failed = true;
                    return Some((Err(e), st));
                }
            }
        }
    }))
}

/// Checks an append against the limits and its own consistency before any I/O; every store
/// calls this first. Returns the total number of events.
pub fn validate_append(writes: &[StreamWrite]) -> Result<usize, StoreError> {
    if writes.is_empty() {
        return Err(InvalidAppend::Empty.into());
    }
    if writes.len() > MAX_STREAMS_PER_APPEND {
        return Err(limit(
            Limit::StreamsPerAppend,
            MAX_STREAMS_PER_APPEND,
            writes.len(),
        ));
    }
    let total: usize = writes.iter().map(|w| w.events.len()).sum();
    if total > MAX_EVENTS_PER_APPEND {
        return Err(limit(Limit::EventsPerAppend, MAX_EVENTS_PER_APPEND, total));
    }
    // One stream or one event has nothing to repeat: no set to build (the common append).
    let mut streams = (writes.len() > 1).then(|| HashSet::with_capacity(writes.len()));
    let mut ids = (total > 1).then(|| HashSet::with_capacity(total));
    let mut bytes = 0usize;
    for write in writes {
        if streams.as_mut().is_some_and(|s| !s.insert(&write.stream)) {
            return Err(InvalidAppend::DuplicateStream(write.stream.clone()).into());
        }
        for event in &write.events {
            if ids.as_mut().is_some_and(|s| !s.insert(event.id)) {
                return Err(InvalidAppend::DuplicateEventId(event.id).into());
            }
            check_name(
                &event.event_type,
                MAX_EVENT_TYPE_BYTES,
                Limit::EventTypeBytes,
                InvalidAppend::BadEventType,
            )?;
            check_name(
                &event.content_type,
                MAX_CONTENT_TYPE_BYTES,
                Limit::ContentTypeBytes,
                InvalidAppend::BadContentType,
            )?;
            if event.data.len() > MAX_EVENT_BYTES {
                return Err(limit(Limit::EventBytes, MAX_EVENT_BYTES, event.data.len()));
            }
            let metadata_len = if event.metadata.is_empty() {
                2
            } else {
                event
                    .metadata
                    .to_json()
                    .map_err(|e| InvalidAppend::BadMetadata(e.to_string()))?
                    .len()
            };
            if metadata_len > MAX_METADATA_BYTES {
                return Err(limit(
                    Limit::MetadataBytes,
                    MAX_METADATA_BYTES,
                    metadata_len,
                ));
            }
            bytes = bytes.saturating_add(event.data.len() + metadata_len);
        }
    }
    if bytes > MAX_APPEND_BYTES {
        return Err(limit(Limit::AppendBytes, MAX_APPEND_BYTES, bytes));
    }
    Ok(total)
}

/// A type name must be non-empty, free of control characters and at most `max` bytes long.
fn check_name(
    name: &str,
    max: usize,
    which: Limit,
    bad: fn(String) -> InvalidAppend,
) -> Result<(), StoreError> {
    if name.is_empty() || name.chars().any(char::is_control) {
        return Err(bad(truncated(name)).into());
    }
    if name.len() > max {
        return Err(limit(which, max, name.len()));
    }
    Ok(())
}

fn truncated(s: &str) -> String {
    s.chars().take(64).collect()
}

fn limit(limit: Limit, max: usize, actual: usize) -> StoreError {
    StoreError::LimitExceeded {
        limit,
        max: max as u64,
        actual: actual as u64,
    }
}

/// How a store must treat one stream write, given the stored events (if any) with the ids of
/// its events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteDisposition {
    /// None of its ids is stored: check the expectation and write.
    New,
    /// All its events are stored, in order, in this stream, with the same content, at a place
    /// its expectation allows: write nothing and answer with the original result.
    Repeat(StreamAppended),
}

/// Decides whether `write` is new or an idempotent repeat. `found[i]` is the stored event with
/// the id of `write.events[i]`, if any. Any other combination (some ids stored, an id stored in
/// another stream, at another revision or with other content) is [`StoreError::EventIdReused`].
pub fn classify_write(
    write: &StreamWrite,
    found: &[Option<&RecordedEvent>],
) -> Result<WriteDisposition, StoreError> {
    assert_eq!(write.events.len(), found.len(), "one lookup per event");
    let Some(first_found) = found.iter().flatten().next() else {
        return Ok(WriteDisposition::New);
    };
    let reused = |event_id: EventId, existing: &RecordedEvent| StoreError::EventIdReused {
        event_id,
        existing: ExistingEvent {
            stream: existing.stream_id.clone(),
            revision: existing.revision,
        },
    };
    let first = match found.first() {
        Some(Some(first)) => *first,
        _ => {
            let event_id = first_found.id;
            return Err(reused(event_id, first_found));
        }
    };
    let base = first.revision;
    let place_allowed = match write.expected {
        ExpectedVersion::Any => true,
        ExpectedVersion::NoStream => base == 0,
        ExpectedVersion::StreamExists => base > 0,
        ExpectedVersion::Exact(v) => base == v,
    };
    for (i, (event, stored)) in write.events.iter().zip(found).enumerate() {
        let Some(stored) = stored else {
            return Err(reused(first.id, first));
        };
        let same_place = stored.stream_id == write.stream && stored.revision == base + i as u64;
        if !place_allowed || !same_place || !event.same_content_as(stored) {
            return Err(reused(event.id, stored));
        }
    }
    let last = found.last().copied().flatten().unwrap_or(first);
    Ok(WriteDisposition::Repeat(StreamAppended {
        stream: write.stream.clone(),
        first_revision: base,
        version: base + write.events.len() as u64,
        first_position: Some(first.position),
        last_position: Some(last.position),
    }))
}

/// Most events one import batch carries.
pub const IMPORT_BATCH_EVENTS: usize = 1_000;
/// Most payload bytes one import batch carries.
const IMPORT_BATCH_BYTES: usize = crate::limits::MAX_APPEND_BYTES / 2;

/// One append of an import: recorded events written back with their ids, types, payloads and
/// metadata, each stream at the revision it had (`Exact`), and the original `recorded_at` of
/// every event, in the order of the writes' events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportBatch {
    /// The writes, in log order.
    pub writes: Vec<StreamWrite>,
    /// `recorded_at` of each event, in order across the writes.
    pub recorded_at: Vec<Timestamp>,
}

/// Cuts a log (events in position order) into import batches: consecutive events, at most
/// [`IMPORT_BATCH_EVENTS`] and within the append limits each, a stream appearing in at most one
/// write of a batch. Appending the batches in order rebuilds the log's streams, order, ids,
/// metadata and timestamps (positions are the target store's own).
pub fn import_batches(events: impl IntoIterator<Item = RecordedEvent>) -> Vec<ImportBatch> {
    let mut batches = Vec::new();
    let mut writes: Vec<StreamWrite> = Vec::new();
    let mut recorded_at = Vec::new();
    let mut bytes = 0usize;
    let mut seen = HashSet::new();
    for event in events {
        let size = event.data.len() + event.event_type.len() + event.content_type.len() + 64;
        let same_stream = writes.last().is_some_and(|w| w.stream == event.stream_id);
        let full = recorded_at.len() >= IMPORT_BATCH_EVENTS
            || bytes + size > IMPORT_BATCH_BYTES
            || (!same_stream
                && (seen.contains(&event.stream_id)
                    || writes.len() >= crate::limits::MAX_STREAMS_PER_APPEND));
        if full && !writes.is_empty() {
            batches.push(ImportBatch {
                writes: std::mem::take(&mut writes),
                recorded_at: std::mem::take(&mut recorded_at),
            });
            bytes = 0;
            seen.clear();
        }
        let new = NewEvent {
            id: event.id,
            event_type: event.event_type,
            schema_version: event.schema_version,
            content_type: event.content_type,
            data: event.data,
            metadata: event.metadata,
        };
        match writes.last_mut() {
            Some(w) if w.stream == event.stream_id => w.events.push(new),
            _ => {
                seen.insert(event.stream_id.clone());
                writes.push(StreamWrite::new(
                    event.stream_id,
                    ExpectedVersion::Exact(event.revision),
                    vec![new],
                ));
            }
        }
        recorded_at.push(event.recorded_at);
        bytes += size;
    }
    if !writes.is_empty() {
        batches.push(ImportBatch {
            writes,
            recorded_at,
        });
    }
    batches
}

/// How far in the future an imported `recorded_at` may be (clock skew between machines).
pub const MAX_IMPORT_CLOCK_SKEW: std::time::Duration = std::time::Duration::from_secs(60);

/// Refuses imported timestamps from the future: they would hold every later event's
/// `recorded_at` back to them (a store keeps `recorded_at` non-decreasing).
pub fn check_import_timestamps(recorded_at: &[Timestamp]) -> Result<(), StoreError> {
    let skew = u64::try_from(MAX_IMPORT_CLOCK_SKEW.as_micros()).unwrap_or(u64::MAX);
    let limit = Timestamp::from_micros(Timestamp::now().as_micros().saturating_add(skew));
    match recorded_at.iter().find(|t| **t > limit) {
        Some(t) => Err(StoreError::InvalidOptions {
            message: format!("an imported event was recorded at {t}, in the future"),
        }),
        None => Ok(()),
    }
}

/// Checks an import batch before any I/O, as [`validate_append`] does an append, plus one
/// timestamp per event and none from the future. Returns the number of events.
pub fn validate_import(batch: &ImportBatch) -> Result<usize, StoreError> {
    let events = validate_append(&batch.writes)?;
    if batch.recorded_at.len() != events {
        return Err(StoreError::InvalidOptions {
            message: format!(
                "an import batch of {events} events carries {} timestamps",
                batch.recorded_at.len()
            ),
        });
    }
    check_import_timestamps(&batch.recorded_at)?;
    Ok(events)
}
