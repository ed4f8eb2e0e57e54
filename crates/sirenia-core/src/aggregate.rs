//! Aggregates (pure decide + apply) and the repository that runs commands against a store.

use futures_util::StreamExt;
use uuid::Uuid;

use crate::codec::{DomainEvent, JsonCodec};
use crate::error::{CommandError, InvalidStreamId, Limit, LoadError, StoreError};
use crate::event::Metadata;
use crate::id::{EventId, ExpectedVersion, Position, StreamId, Timestamp};
use crate::snapshot::{Snapshot, SnapshotCodec, SnapshotPolicy, SnapshotStore, Snapshotted};

/// Snapshots ignored since the process started (another schema version, or undecodable).
pub static SNAPSHOTS_IGNORED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
use crate::limits::{DEFAULT_COMMAND_RETRIES, MAX_COMMAND_RETRIES, MAX_EVENTS_PER_COMMAND};
use crate::store::{Direction, EventStore, ReadStream, StreamWrite};

/// An event-sourced aggregate: a state rebuilt by [`apply`](Aggregate::apply)ing its events, and a
/// pure decision ([`handle`](Aggregate::handle)) that turns a command into new events or a
/// business error. Neither does I/O: lookups happen before the command is built.
pub trait Aggregate: Default + Send + Sync + 'static {
    /// The category of its streams (`<CATEGORY>-<id>`); must not contain `-`.
    const CATEGORY: &'static str;
    /// What it can be asked to do.
    type Command: Send;
    /// What happened to it.
    type Event: DomainEvent;
    /// Why it refuses a command.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Evolves the state by one event. Must not fail: the event already happened.
    fn apply(&mut self, event: &Self::Event);

    /// Decides what a command does: the events to record, or why not.
    fn handle(&self, command: Self::Command) -> Result<Vec<Self::Event>, Self::Error>;
}

/// An aggregate's state as loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loaded<A> {
    /// The state.
    pub state: A,
    /// How many events made it (the stream's version).
    pub version: u64,
    /// Position of the last event applied.
    pub last_position: Option<Position>,
}

/// How a command is run: its id (for idempotency), the caller's expected version (for
/// optimistic concurrency across requests, as with HTTP `If-Match`), and the events' metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommandContext {
    /// With an id, the command's events get ids derived from it, and running the same command
    /// id again returns the first run's outcome without appending anything.
    pub command_id: Option<Uuid>,
    /// When set, the command runs only if the aggregate is at exactly this version, and a
    /// mismatch is [`CommandError::Conflict`] (no retry: the caller decided on that version).
    pub expected_version: Option<u64>,
    /// Metadata for every event the command produces. Without a causation id, the command id
    /// (if any) is used.
    pub metadata: Metadata,
}

impl CommandContext {
    /// An empty context.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the command id.
    pub fn command_id(mut self, id: Uuid) -> Self {
        self.command_id = Some(id);
        self
    }

    /// Sets the expected version.
    pub fn expected_version(mut self, version: u64) -> Self {
        self.expected_version = Some(version);
        self
    }

    /// Sets the correlation id.
    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.metadata.correlation_id = Some(id.into());
        self
    }

    /// Sets the causation id.
    pub fn causation_id(mut self, id: impl Into<String>) -> Self {
        self.metadata.causation_id = Some(id.into());
        self
    }
}

/// The outcome of a command that took effect.
#[derive(Clone, Debug, PartialEq)]
pub struct Executed<A: Aggregate> {
    /// The state right after the command's events.
    pub state: A,
    /// The events it produced (none if the decision was a no-op).
    pub events: Vec<A::Event>,
    /// The stream's version right after them.
    pub version: u64,
    /// Position of its first event.
    pub first_position: Option<Position>,
    /// Position of its last event.
    pub last_position: Option<Position>,
    /// Attempts made (more than 1 after concurrency conflicts).
    pub attempts: u32,
    /// Whether this command id had already run: nothing was appended now, and this is the
    /// first run's outcome.
    pub repeated: bool,
}

/// How long a command waits before it retries after a conflict: a random time up to `base`
/// doubled per conflict so far, at most `max` ("full jitter"). Writers that collided on a stream
/// spread out instead of colliding again at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryBackoff {
    /// The longest wait after the first conflict.
    pub base: std::time::Duration,
    /// The longest wait after any conflict.
    pub max: std::time::Duration,
}

impl RetryBackoff {
    /// No waiting: retry at once.
    pub const NONE: RetryBackoff = RetryBackoff {
        base: std::time::Duration::ZERO,
        max: std::time::Duration::ZERO,
    };

    /// The longest wait after the `conflicts`-th conflict (counting from 1).
    pub fn ceiling(&self, conflicts: u32) -> std::time::Duration {
        let doublings = conflicts.saturating_sub(1).min(20);
        self.base.saturating_mul(1 << doublings).min(self.max)
    }

    /// A random wait up to [`ceiling`](Self::ceiling)`(conflicts)`.
    pub fn delay(&self, conflicts: u32) -> std::time::Duration {
        use std::hash::{BuildHasher, Hasher};
        let ceiling = self.ceiling(conflicts);
        let micros = u64::try_from(ceiling.as_micros()).unwrap_or(u64::MAX);
        if micros == 0 {
            return std::time::Duration::ZERO;
        }
        // Randomly keyed hashing of a counter: jitter without a random-number dependency.
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(conflicts);
        std::time::Duration::from_micros(hasher.finish() % (micros + 1))
    }
}

impl Default for RetryBackoff {
    /// Up to 1 ms after the first conflict, doubling, at most 50 ms.
    fn default() -> Self {
        RetryBackoff {
            base: std::time::Duration::from_millis(1),
            max: std::time::Duration::from_millis(50),
        }
    }
}

/// Loads aggregates and runs commands on them against a store.
pub struct Repository<A: Aggregate, S> {
    store: S,
    codec: JsonCodec<A::Event>,
    max_retries: u32,
    backoff: RetryBackoff,
    snapshots: Option<SnapshotCodec<A>>,
}

impl<A: Aggregate, S: Clone> Clone for Repository<A, S> {
    fn clone(&self) -> Self {
        Repository {
            store: self.store.clone(),
            codec: self.codec.clone(),
            max_retries: self.max_retries,
            backoff: self.backoff,
            snapshots: self.snapshots.clone(),
        }
    }
}

impl<A: Aggregate, S: std::fmt::Debug> std::fmt::Debug for Repository<A, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("category", &A::CATEGORY)
            .field("store", &self.store)
            .field("max_retries", &self.max_retries)
            .field("backoff", &self.backoff)
            .finish()
    }
}

impl<A: Aggregate, S: EventStore> Repository<A, S> {
    /// A repository over `store` with the default codec and retry count.
    pub fn new(store: S) -> Self {
        Repository {
            store,
            codec: JsonCodec::new(),
            max_retries: DEFAULT_COMMAND_RETRIES,
            backoff: RetryBackoff::default(),
            snapshots: None,
        }
    }

    /// Takes snapshots into `snapshots` as `policy` says (in the background, after a
    /// successful append) and loads from the latest usable one plus the events after it. A
    /// snapshot that fails to decode or has another schema version is ignored.
    pub fn with_snapshots(
        mut self,
        snapshots: std::sync::Arc<dyn SnapshotStore>,
        policy: SnapshotPolicy,
    ) -> Self
    where
        A: Snapshotted,
    {
        self.snapshots = Some(SnapshotCodec::new(snapshots, policy));
        self
    }

    /// Uses `codec` (with its upcasters) for this aggregate's events.
    pub fn with_codec(mut self, codec: JsonCodec<A::Event>) -> Self {
        self.codec = codec;
        self
    }

    /// Retries a command at most `retries` times after conflicts (at most
    /// [`MAX_COMMAND_RETRIES`]).
    pub fn with_max_retries(mut self, retries: u32) -> Result<Self, StoreError> {
        if retries > MAX_COMMAND_RETRIES {
            return Err(StoreError::LimitExceeded {
                limit: Limit::CommandRetries,
                max: u64::from(MAX_COMMAND_RETRIES),
                actual: u64::from(retries),
            });
        }
        self.max_retries = retries;
        Ok(self)
    }

    /// Waits as `backoff` says before each retry after a conflict ([`RetryBackoff::default`]
    /// unless set; [`RetryBackoff::NONE`] retries at once).
    pub fn with_backoff(mut self, backoff: RetryBackoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The codec.
    pub fn codec(&self) -> &JsonCodec<A::Event> {
        &self.codec
    }

    /// The stream of aggregate `id`: `<CATEGORY>-<id>`.
    pub fn stream_id(&self, id: &str) -> Result<StreamId, InvalidStreamId> {
        StreamId::for_aggregate(A::CATEGORY, id)
    }

    /// Loads aggregate `id` (the default state if it has no events).
    pub async fn load(&self, id: &str) -> Result<Loaded<A>, LoadError> {
        let stream = self.stream_id(id)?;
        self.load_stream(&stream, None).await
    }

    /// Loads aggregate `id` as it was after its first `version` events (fewer if it has fewer;
    /// see [`Loaded::version`]).
    pub async fn load_version(&self, id: &str, version: u64) -> Result<Loaded<A>, LoadError> {
        let stream = self.stream_id(id)?;
        self.load_stream(&stream, Some(version)).await
    }

    /// Loads aggregate `id` as it was at instant `at`: its events recorded at or before `at`
    /// (stored `recorded_at` never decreases along a stream).
    pub async fn load_as_of(&self, id: &str, at: Timestamp) -> Result<Loaded<A>, LoadError> {
        let stream = self.stream_id(id)?;
        self.load_until(&stream, None, Some(at)).await
    }

    async fn load_stream(
        &self,
        stream: &StreamId,
        upto: Option<u64>,
    ) -> Result<Loaded<A>, LoadError> {
        self.load_until(stream, upto, None).await
    }

    async fn load_until(
        &self,
        stream: &StreamId,
        upto: Option<u64>,
        at: Option<Timestamp>,
    ) -> Result<Loaded<A>, LoadError> {
        let mut loaded = Loaded {
            state: A::default(),
            version: 0,
            last_position: None,
        };
        let snapshot = self.load_snapshot(stream, upto, at).await;
        let from_snapshot = snapshot.is_some();
        if let Some(from_snapshot) = snapshot {
            loaded = from_snapshot;
        }
        if upto.is_some_and(|upto| upto <= loaded.version) {
            return Ok(loaded);
        }
        // From a snapshot, read from its own last event too: finding it shows the snapshot is
        // still part of the stream (not of a life before a soft delete, not truncated away).
        let overlap = u64::from(from_snapshot);
        let first = loaded.version - overlap;
        let mut options = ReadStream::forward().from(first);
        if let Some(upto) = upto {
            options = options.limit(upto - first);
        }
        let mut events = self.store.read_stream(stream, options);
        let mut read_any = false;
        let truncated = |readable_from: u64| -> LoadError {
            StoreError::StreamTruncated {
                stream: stream.clone(),
                readable_from,
            }
            .into()
        };
        while let Some(recorded) = events.next().await {
            let recorded = recorded?;
            let mut rebased = false;
            if !read_any {
                read_any = true;
                if recorded.revision != first {
                    // Revisions between the state and the first event read are hidden.
                    (loaded, rebased) = self
                        .rebase(stream, loaded, from_snapshot, Some(recorded.revision))
                        .await?;
                    if upto.is_some_and(|upto| loaded.version > upto) {
                        // The version asked for is of a life before a soft delete: hidden.
                        return Err(truncated(loaded.version));
                    }
                } else if from_snapshot {
                    continue; // the snapshot's last event, already in its state
                }
            } else if recorded.revision != loaded.version {
                // Revisions hidden between two pages of this read (a lifecycle change while
                // it ran): never build a state from the parts around them.
                return Err(truncated(recorded.revision));
            }
            if at.is_some_and(|at| recorded.recorded_at > at)
                || upto.is_some_and(|upto| recorded.revision >= upto)
            {
                if rebased && at.is_some() {
                    // The instant asked for is before the stream's current life: hidden.
                    return Err(truncated(loaded.version));
                }
                break;
            }
            self.codec
                .decode_with(&recorded, |event| loaded.state.apply(&event))?;
            loaded.version = recorded.revision + 1;
            loaded.last_position = Some(recorded.position);
        }
        if !read_any {
            // Nothing readable: a new stream, or one deleted, or truncated to its end (then the
            // state is unknown), or, from a snapshot, not even the snapshot's last event left.
            loaded = self.rebase(stream, loaded, from_snapshot, None).await?.0;
        }
        Ok(loaded)
    }

    /// The state to go on from when the events read do not start where `loaded` ends
    /// (`first_read`: the first revision read, `None` if nothing was): `loaded` itself if it is
    /// of the stream's current life and nothing after it is hidden; a fresh state if the stream
    /// was soft-deleted since (and recreated from `first_read`, or still hidden); else
    /// [`StoreError::StreamTruncated`], since the hidden events are part of the state and no
    /// snapshot covers them. The flag says whether the state is a fresh one.
    async fn rebase(
        &self,
        stream: &StreamId,
        loaded: Loaded<A>,
        from_snapshot: bool,
        first_read: Option<u64>,
    ) -> Result<(Loaded<A>, bool), LoadError> {
        let info = self.store.stream_info(stream).await?.unwrap_or_default();
        let fresh = |version| Loaded {
            state: A::default(),
            version,
            last_position: None,
        };
        if info.visible_version().is_none() {
            return Ok((fresh(0), true));
        }
        let v = loaded.version;
        // A snapshot at `start` or below was taken in an earlier life; the empty state is the
        // base of the life that starts at 0 only.
        let base_is_current = if from_snapshot {
            v > info.start
        } else {
            v == info.start
        };
        if base_is_current {
            if info.readable_from <= v && first_read.is_none_or(|r| r == v) {
                return Ok((loaded, false));
            }
        } else if info.readable_from == info.start && first_read == Some(info.start) {
            return Ok((fresh(info.start), true));
        }
        Err(StoreError::StreamTruncated {
            stream: stream.clone(),
            readable_from: info.readable_from,
        }
        .into())
    }

    /// The state in the latest usable snapshot at or below `upto`, if snapshots are on.
    async fn load_snapshot(
        &self,
        stream: &StreamId,
        upto: Option<u64>,
        at: Option<Timestamp>,
    ) -> Option<Loaded<A>> {
        let snapshots = self.snapshots.as_ref()?;
        let found = match at {
            Some(at) => snapshots.store.load_at(stream, at).await,
            None => snapshots.store.load(stream, upto.unwrap_or(u64::MAX)).await,
        };
        let found = match found {
            Ok(found) => found?,
            Err(e) => {
                tracing::warn!(%stream, error = %e, "snapshot unavailable; replaying events");
                return None;
            }
        };
        let state = (found.schema_version == snapshots.schema_version)
            .then(|| (snapshots.decode)(&found.data))
            .flatten();
        match state {
            Some(state) => Some(Loaded {
                state,
                version: found.version,
                last_position: None,
            }),
            None => {
                tracing::warn!(%stream, version = found.version,
                    schema_version = found.schema_version,
                    "snapshot ignored (another schema version or undecodable); replaying events");
                SNAPSHOTS_IGNORED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                None
            }
        }
    }

    /// Saves a snapshot of `state` at `version` if the policy calls for one, in the background.
    fn maybe_snapshot(&self, stream: &StreamId, before: u64, version: u64, state: &A) {
        let Some(snapshots) = &self.snapshots else {
            return;
        };
        if !snapshots.policy.due(before, version) {
            return;
        }
        let Some(data) = (snapshots.encode)(state) else {
            tracing::warn!(%stream, "the state did not encode; no snapshot");
            return;
        };
        let mut snapshot = Snapshot {
            stream: stream.clone(),
            version,
            schema_version: snapshots.schema_version,
            data,
            taken_at: Timestamp::now(),
            recorded_at: Timestamp::EPOCH,
        };
        let store = snapshots.store.clone();
        let events = self.store.clone();
        let save = async move {
            // When the last included event was recorded, for time travel by timestamp.
            if let Ok(page) = events
                .read_stream_page(&snapshot.stream, version - 1, Direction::Forward, 1)
                .await
                && let Some(last) = page.first()
                && last.revision == version - 1
            {
                snapshot.recorded_at = last.recorded_at;
            }
            if let Err(e) = store.save(snapshot).await {
                tracing::warn!(error = %e, "saving a snapshot failed");
            }
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(save);
        }
    }

    /// Runs `command` on aggregate `id` with an empty [`CommandContext`].
    pub async fn execute(
        &self,
        id: &str,
        command: A::Command,
    ) -> Result<Executed<A>, CommandError<A::Error>>
    where
        A::Command: Clone,
    {
        self.execute_with(id, command, &CommandContext::default())
            .await
    }

    /// Runs `command` on aggregate `id`: load, decide, append with the loaded version as
    /// [`ExpectedVersion::Exact`]; on a conflict, start over (at most the configured number of
    /// retries) unless the caller fixed the version in `context`.
    #[tracing::instrument(
        name = "sirenia.command",
        skip_all,
        fields(
            aggregate = A::CATEGORY,
            id = id,
            correlation_id = context.metadata.correlation_id.as_deref(),
            causation_id = context.metadata.causation_id.as_deref(),
        )
    )]
    pub async fn execute_with(
        &self,
        id: &str,
        command: A::Command,
        context: &CommandContext,
    ) -> Result<Executed<A>, CommandError<A::Error>>
    where
        A::Command: Clone,
    {
        let stream = self.stream_id(id)?;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            if let Some(command_id) = context.command_id
                && let Some(done) = self.already_executed(&stream, command_id, attempts).await?
            {
                return Ok(done);
            }
            let loaded = self.load_stream(&stream, None).await?;
            // A refusal of a command with an id may be a concurrent run of the same command
            // that landed between the lookup above and the load: look again before answering.
            let refusal = if let Some(expected) = context.expected_version
                && loaded.version != expected
            {
                Some(CommandError::Conflict {
                    stream: stream.clone(),
                    expected,
                    actual: (loaded.version > 0).then_some(loaded.version),
                })
            } else {
                None
            };
            let decided = match refusal {
                Some(e) => Err(e),
                None => loaded
                    .state
                    .handle(command.clone())
                    .map_err(CommandError::Rejected),
            };
            let events = match decided {
                Ok(events) => events,
                Err(e) => {
                    if let Some(command_id) = context.command_id
                        && let Some(done) =
                            self.already_executed(&stream, command_id, attempts).await?
                    {
                        return Ok(done);
                    }
                    return Err(e);
                }
            };
            if events.len() > MAX_EVENTS_PER_COMMAND {
                return Err(CommandError::TooManyEvents(events.len() as u64));
            }
            if events.is_empty() {
                return Ok(Executed {
                    state: loaded.state,
                    events,
                    version: loaded.version,
                    first_position: None,
                    last_position: None,
                    attempts,
                    repeated: false,
                });
            }
            let mut metadata = context.metadata.clone();
            if metadata.causation_id.is_none() {
                metadata.causation_id = context.command_id.map(|c| c.to_string());
            }
            let mut new_events = Vec::with_capacity(events.len());
            for (i, event) in events.iter().enumerate() {
                let id = match context.command_id {
                    // `i` is below MAX_EVENTS_PER_COMMAND, far below u32::MAX.
                    Some(command_id) => {
                        EventId::derived(command_id, u32::try_from(i).unwrap_or(u32::MAX))
                    }
                    None => EventId::new(),
                };
                new_events.push(self.codec.to_new_event(event, id, metadata.clone())?);
            }
            let write = StreamWrite::new(
                stream.clone(),
                ExpectedVersion::Exact(loaded.version),
                new_events,
            );
            match self.store.append(vec![write]).await {
                Ok(result) => {
                    let appended = result.streams.into_iter().next();
                    let mut state = loaded.state;
                    for event in &events {
                        state.apply(event);
                    }
                    if let Some(a) = &appended {
                        self.maybe_snapshot(&stream, loaded.version, a.version, &state);
                    }
                    return Ok(Executed {
                        state,
                        events,
                        version: appended.as_ref().map_or(loaded.version, |a| a.version),
                        first_position: appended.as_ref().and_then(|a| a.first_position),
                        last_position: appended.as_ref().and_then(|a| a.last_position),
                        attempts,
                        repeated: false,
                    });
                }
                Err(StoreError::Conflict { actual, .. }) => {
                    if let Some(expected) = context.expected_version {
                        return Err(CommandError::Conflict {
                            stream,
                            expected,
                            actual,
                        });
                    }
                    if attempts > self.max_retries {
                        return Err(CommandError::TooManyConflicts { stream, attempts });
                    }
                    let wait = self.backoff.delay(attempts);
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                }
                // A concurrent run of the same command id stored its events first (with other
                // metadata, say another correlation id): the next attempt finds them and
                // answers with that run's outcome.
                Err(StoreError::EventIdReused { .. })
                    if context.command_id.is_some() && attempts <= self.max_retries => {}
                Err(e) => return Err(CommandError::Store(e)),
            }
        }
    }

    /// The first run's outcome if command `command_id` already ran on `stream`.
    async fn already_executed(
        &self,
        stream: &StreamId,
        command_id: Uuid,
        attempts: u32,
    ) -> Result<Option<Executed<A>>, CommandError<A::Error>> {
        let Some(first) = self
            .store
            .event_by_id(EventId::derived(command_id, 0))
            .await?
        else {
            return Ok(None);
        };
        if &first.stream_id != stream {
            return Err(CommandError::CommandIdReused {
                command_id,
                stream: first.stream_id,
            });
        }
        let mut recorded = self.store.read_stream(
            stream,
            ReadStream::forward()
                .from(first.revision)
                .limit(MAX_EVENTS_PER_COMMAND as u64),
        );
        let mut events = Vec::new();
        let mut count = 0u32;
        let mut last_position = None;
        while let Some(r) = recorded.next().await {
            let r = r?;
            if r.id != EventId::derived(command_id, count) {
                break;
            }
            self.codec.decode_with(&r, |e| events.push(e))?;
            last_position = Some(r.position);
            count += 1;
        }
        let version = first.revision + u64::from(count);
        let state = self.load_stream(stream, Some(version)).await?.state;
        Ok(Some(Executed {
            state,
            events,
            version,
            first_position: Some(first.position),
            last_position,
            attempts,
            repeated: true,
        }))
    }
}

#[cfg(test)]
mod backoff_tests {
    use super::RetryBackoff;
    use std::time::Duration;

    #[test]
    fn waits_grow_with_conflicts_up_to_the_cap_and_stay_under_their_ceiling() {
        let backoff = RetryBackoff {
            base: Duration::from_millis(1),
            max: Duration::from_millis(10),
        };
        assert_eq!(backoff.ceiling(1), Duration::from_millis(1));
        assert_eq!(backoff.ceiling(2), Duration::from_millis(2));
        assert_eq!(backoff.ceiling(4), Duration::from_millis(8));
        assert_eq!(backoff.ceiling(5), Duration::from_millis(10));
        assert_eq!(backoff.ceiling(u32::MAX), Duration::from_millis(10));
        for conflicts in 1..12 {
            for _ in 0..50 {
                assert!(backoff.delay(conflicts) <= backoff.ceiling(conflicts));
            }
        }
        // Jitter: the waits after one conflict are not all the same.
        let waits: std::collections::BTreeSet<_> = (0..50).map(|_| backoff.delay(3)).collect();
        assert!(waits.len() > 1, "{waits:?}");
        assert_eq!(RetryBackoff::NONE.delay(7), Duration::ZERO);
    }
}
