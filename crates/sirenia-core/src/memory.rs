//! The in-memory store: the whole port, no durability. For tests, and the oracle every other
//! store is compared to.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use crate::admin::Capabilities;
use crate::error::StoreError;
use crate::event::RecordedEvent;
use crate::id::{EventId, Position, StreamId, Timestamp};
use crate::lifecycle::{
    StreamChange, StreamInfo, StreamStatus, append_target, decide_change, readable_from,
};
use crate::limits::MAX_SCAN_PER_PAGE;
use crate::store::{
    AllPage, AppendResult, Direction, EventFilter, EventStore, StreamAppended, StreamWrite,
    WriteDisposition, classify_write, validate_append,
};

/// An event store in memory. Cloning gives another handle to the same store.
///
/// ```
/// use sirenia_core::{EventStore, ExpectedVersion, InMemoryStore, NewEvent, StreamId, StreamWrite};
/// # tokio_test_block_on(async {
/// let store = InMemoryStore::new();
/// let stream = StreamId::new("order-1")?;
/// let event = NewEvent::json("OrderPlaced", &serde_json::json!({"total": 42}));
/// let result = store
///     .append(vec![StreamWrite::new(stream.clone(), ExpectedVersion::NoStream, vec![event])])
///     .await?;
/// assert_eq!(result.streams[0].version, 1);
/// assert_eq!(store.stream_version(&stream).await?, Some(1));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Clone)]
pub struct InMemoryStore {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    head: watch::Sender<Position>,
    /// Projections' records, read-model versions and documents (the admin port).
    admin: Arc<crate::memory_admin::MemoryRecords>,
}

#[derive(Default)]
struct State {
    /// The event at position `p` is `log[p - 1]`: positions are dense here.
    log: Vec<RecordedEvent>,
    /// Per stream, the log index of each revision.
    streams: HashMap<StreamId, Vec<usize>>,
    /// Log index of each event id.
    ids: HashMap<EventId, usize>,
    /// Lifecycle records of the streams that had a lifecycle change.
    lifecycle: HashMap<StreamId, StreamInfo>,
    /// Last `recorded_at`, so the store clock never runs backwards.
    clock: Timestamp,
}

impl State {
    fn info(&self, stream: &StreamId) -> Option<StreamInfo> {
        let version = self.streams.get(stream).map(|r| r.len() as u64);
        match (self.lifecycle.get(stream), version) {
            (Some(info), _) => Some(*info),
            (None, Some(version)) => Some(StreamInfo::active(version)),
            (None, None) => None,
        }
    }
}

impl Default for InMemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for InMemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryStore")
            .field("head", &*self.shared.head.borrow())
            .finish()
    }
}

impl InMemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        let (head, _) = watch::channel(Position::START);
        InMemoryStore {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                head,
                admin: Arc::default(),
            }),
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>, StoreError> {
        self.shared.state.lock().map_err(|_| StoreError::Corrupt {
            message: "the in-memory store was poisoned by a panic".to_owned(),
        })
    }

    pub(crate) fn admin_records(&self) -> &Arc<crate::memory_admin::MemoryRecords> {
        &self.shared.admin
    }

    /// Appends `writes`; with `stamps` (an import), new events take those `recorded_at` (one
    /// per event across the writes, in order) instead of the store clock.
    pub(crate) fn append_stamped(
        &self,
        writes: Vec<StreamWrite>,
        stamps: Option<&[Timestamp]>,
    ) -> Result<AppendResult, StoreError> {
        let (result, head) = {
            let mut state = self.lock()?;
            let result = Self::append_locked(&mut state, writes, stamps)?;
            (result, Position(state.log.len() as u64))
        };
        self.shared.head.send_replace(head);
        Ok(result)
    }

    fn append_locked(
        state: &mut State,
        writes: Vec<StreamWrite>,
        stamps: Option<&[Timestamp]>,
    ) -> Result<AppendResult, StoreError> {
        // First decide every write, writing nothing, so a failure leaves no trace.
        let mut dispositions = Vec::with_capacity(writes.len());
        for write in &writes {
            let found: Vec<Option<&RecordedEvent>> = write
                .events
                .iter()
                .map(|e| state.ids.get(&e.id).map(|&i| &state.log[i]))
                .collect();
            let disposition = classify_write(write, &found)?;
            if disposition == WriteDisposition::New {
                let current = match state.lifecycle.get(&write.stream) {
                    Some(info) => append_target(&write.stream, Some(info))?,
                    None => state.streams.get(&write.stream).map(|r| r.len() as u64),
                };
                if !write.expected.is_satisfied_by(current) {
                    return Err(StoreError::Conflict {
                        stream: write.stream.clone(),
                        expected: write.expected,
                        actual: current,
                    });
                }
            }
            dispositions.push(disposition);
        }
        let now = Timestamp::now().max(state.clock);
        state.clock = now;
        let mut results = Vec::with_capacity(writes.len());
        // Index of the next write's first event across the request (for `stamps`).
        let mut stamp_index = 0usize;
        for (write, disposition) in writes.into_iter().zip(dispositions) {
            let first_stamp = stamp_index;
            stamp_index += write.events.len();
            if let WriteDisposition::Repeat(original) = disposition {
                results.push(original);
                continue;
            }
            let first_revision = state
                .streams
                .get(&write.stream)
                .map_or(0, |r| r.len() as u64);
            let count = write.events.len() as u64;
            let first_position = Position(state.log.len() as u64 + 1);
            for (i, event) in write.events.into_iter().enumerate() {
                let index = state.log.len();
                let position = Position(index as u64 + 1);
                state.ids.insert(event.id, index);
                state
                    .streams
                    .entry(write.stream.clone())
                    .or_default()
                    .push(index);
                let recorded_at = stamps
                    .and_then(|s| s.get(first_stamp + i).copied())
                    .unwrap_or(now);
                state.log.push(RecordedEvent::from_new(
                    event,
                    write.stream.clone(),
                    first_revision + i as u64,
                    position,
                    recorded_at,
                ));
            }
            let last_position = Position(state.log.len() as u64);
            if count > 0
                && let Some(info) = state.lifecycle.get_mut(&write.stream)
            {
                info.status = StreamStatus::Active;
                info.version = first_revision + count;
            }
            results.push(StreamAppended {
                stream: write.stream,
                first_revision,
                version: first_revision + count,
                first_position: (count > 0).then_some(first_position),
                last_position: (count > 0).then_some(last_position),
            });
        }
        Ok(AppendResult { streams: results })
    }
}

impl EventStore for InMemoryStore {
    async fn append(&self, writes: Vec<StreamWrite>) -> Result<AppendResult, StoreError> {
        validate_append(&writes)?;
        self.append_stamped(writes, None)
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<Option<u64>, StoreError> {
        let state = self.lock()?;
        match state.lifecycle.get(stream) {
            Some(info) => append_target(stream, Some(info)),
            None => Ok(state.streams.get(stream).map(|r| r.len() as u64)),
        }
    }

    async fn stream_info(&self, stream: &StreamId) -> Result<Option<StreamInfo>, StoreError> {
        Ok(self.lock()?.info(stream))
    }

    async fn change_stream(
        &self,
        stream: &StreamId,
        change: StreamChange,
    ) -> Result<Option<StreamInfo>, StoreError> {
        let mut state = self.lock()?;
        let current = state.info(stream);
        match decide_change(stream, current, change)? {
            Some(changed) => {
                state.lifecycle.insert(stream.clone(), changed);
                Ok(Some(changed))
            }
            None => Ok(current),
        }
    }

    async fn event_by_id(&self, id: EventId) -> Result<Option<RecordedEvent>, StoreError> {
        let state = self.lock()?;
        Ok(state.ids.get(&id).map(|&i| state.log[i].clone()))
    }

    async fn head_position(&self) -> Result<Position, StoreError> {
        Ok(Position(self.lock()?.log.len() as u64))
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            dense_positions: true,
            transactional_projections: true,
            import_with_timestamps: true,
            ..Capabilities::NONE
        }
    }

    async fn read_stream_page(
        &self,
        stream: &StreamId,
        from: u64,
        direction: Direction,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let state = self.lock()?;
        let first = readable_from(stream, state.lifecycle.get(stream))?;
        let Some(revisions) = state.streams.get(stream) else {
            return Ok(Vec::new());
        };
        let len = revisions.len();
        let first = usize::try_from(first).unwrap_or(usize::MAX).min(len);
        let from = usize::try_from(from).unwrap_or(usize::MAX);
        let indices: Vec<usize> = match direction {
            Direction::Forward => {
                let from = from.max(first);
                if from >= len {
                    Vec::new()
                } else {
                    revisions[from..len.min(from.saturating_add(max))].to_vec()
                }
            }
            Direction::Backward if len == 0 || from < first => Vec::new(),
            Direction::Backward => {
                let start = from.min(len - 1);
                let end = (start + 1).saturating_sub(max).max(first);
                revisions[end..=start].iter().rev().copied().collect()
            }
        };
        Ok(indices.into_iter().map(|i| state.log[i].clone()).collect())
    }

    async fn read_all_page(
        &self,
        from: Position,
        direction: Direction,
        filter: &EventFilter,
        max: usize,
    ) -> Result<AllPage, StoreError> {
        let state = self.lock()?;
        let len = state.log.len();
        let mut events = Vec::new();
        match direction {
            Direction::Forward => {
                let start = usize::try_from(from.get().max(1) - 1).unwrap_or(usize::MAX);
                if start >= len {
                    return Ok(AllPage {
                        events,
                        next: from.max(Position(1)),
                        at_end: true,
                    });
                }
                let mut i = start;
                let scan_end = len.min(start.saturating_add(MAX_SCAN_PER_PAGE));
                while i < scan_end && events.len() < max {
                    let event = &state.log[i];
                    if filter.matches(event) {
                        events.push(event.clone());
                    }
                    i += 1;
                }
                Ok(AllPage {
                    events,
                    next: Position(i as u64 + 1),
                    at_end: i == len,
                })
            }
            Direction::Backward => {
                if from == Position::START || len == 0 {
                    return Ok(AllPage {
                        events,
                        next: Position::START,
                        at_end: true,
                    });
                }
                // `i` counts down: the next index to examine is `i - 1`.
                let mut i = usize::try_from(from.get()).unwrap_or(usize::MAX).min(len);
                let scan_end = i.saturating_sub(MAX_SCAN_PER_PAGE);
                while i > scan_end && events.len() < max {
                    let event = &state.log[i - 1];
                    if filter.matches(event) {
                        events.push(event.clone());
                    }
                    i -= 1;
                }
                Ok(AllPage {
                    events,
                    next: Position(i as u64),
                    at_end: i == 0,
                })
            }
        }
    }

    async fn wait_for_events(&self, from: Position) -> Result<(), StoreError> {
        let mut head = self.shared.head.subscribe();
        head.wait_for(|h| *h >= from)
            .await
            .map(|_| ())
            .map_err(|_| StoreError::Closed)
    }
}
