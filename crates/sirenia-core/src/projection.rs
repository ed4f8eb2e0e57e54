//! Projections: a named handler over a filtered read of the global log, with a durable
//! checkpoint, a failure policy and a status.
//!
//! The [`Projector`] reads the log page by page from its checkpoint and hands each page to a
//! [`ProjectionTarget`], which applies the events **and** stores the new checkpoint in one
//! transaction when the read model lives in the store's database (the SQLite and PostgreSQL
//! stores provide such targets): a crash at any point neither loses nor repeats an effect. For
//! a sink outside the database, [`AtLeastOnce`] stores the checkpoint after the handler
//! succeeded: a crash in between repeats the last batch, so the handler must de-duplicate by
//! event id or position.
//!
//! When the handler fails on an event, the events before it are committed, the event is retried
//! with back-off ([`FailurePolicy`]), and then either the projection stops (faulted, the event
//! and error recorded; running it again resumes at that event) or the event is parked in a
//! dead-letter list and the projection goes on. Parked events can be listed and replayed.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::error::StoreError;
use crate::event::RecordedEvent;
use crate::id::{EventId, Position, Timestamp};
use crate::limits::MAX_PAGE_SIZE;
use crate::store::{Direction, EventFilter, EventStore};

/// What a handler returns when it cannot apply an event.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// Longest projection name, in bytes.
pub const MAX_PROJECTION_NAME_BYTES: usize = 100;
/// Most retries a failure policy may ask for.
pub const MAX_PROJECTION_RETRIES: u32 = 100;

/// Where a projection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProjectionState {
    /// Waiting for the single-instance lock, or not running.
    Stopped,
    /// Reading events recorded before it started (or that it fell behind on).
    CatchingUp,
    /// At the head of the log, applying events as they are appended.
    Live,
    /// Stopped on an event its handler kept failing on; see [`ProjectionStatus::fault`].
    Faulted,
}

/// What to do with an event the handler still fails on after its retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnFailure {
    /// Stop the projection (faulted). Running it again retries the event.
    Stop,
    /// Park the event in the dead-letter list and go on with the next one.
    Park,
}

/// Retries with exponential back-off, then [`OnFailure`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailurePolicy {
    /// Retries after the first failure (at most [`MAX_PROJECTION_RETRIES`]).
    pub retries: u32,
    /// Wait before the first retry; doubled for each next one.
    pub first_backoff: Duration,
    /// Longest wait between retries.
    pub max_backoff: Duration,
    /// What happens then.
    pub on_failure: OnFailure,
}

impl Default for FailurePolicy {
    fn default() -> Self {
        FailurePolicy {
            retries: 3,
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            on_failure: OnFailure::Stop,
        }
    }
}

/// How a projection reads and fails.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProjectionOptions {
    /// Which events it sees (all, categories, event types).
    pub filter: EventFilter,
    /// Most events per transaction (at most [`MAX_PAGE_SIZE`]).
    pub batch_size: usize,
    /// What happens when the handler fails.
    pub policy: FailurePolicy,
}

impl Default for ProjectionOptions {
    fn default() -> Self {
        ProjectionOptions {
            filter: EventFilter::all(),
            batch_size: 1_000,
            policy: FailurePolicy::default(),
        }
    }
}

/// An event the handler failed on: faulted on, or parked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedEvent {
    /// Its position in the log.
    pub position: Position,
    /// Its id.
    pub event_id: EventId,
    /// Its stream.
    pub stream: String,
    /// Its type.
    pub event_type: String,
    /// The handler's last error, as text.
    pub error: String,
    /// How many times it was tried.
    pub attempts: u32,
    /// When it was given up on.
    pub at: Timestamp,
}

impl FailedEvent {
    fn new(event: &RecordedEvent, error: &HandlerError, attempts: u32) -> Self {
        FailedEvent {
            position: event.position,
            event_id: event.id,
            stream: event.stream_id.as_str().to_owned(),
            event_type: event.event_type.clone(),
            error: error.to_string(),
            attempts,
            at: Timestamp::now(),
        }
    }
}

/// A projection's stored progress.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// The next position to read: every event below it was handled (or parked).
    pub next: Position,
    /// The event it stopped on, if it is faulted.
    pub fault: Option<FailedEvent>,
}

/// What an operator asks a running projector to do (for example from the `sirenia` CLI); the
/// projector looks for a request before each page and at least every
/// [`REQUEST_POLL_INTERVAL`] while it waits for events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProjectionRequest {
    /// Empty the read model and replay the log from the start.
    Rebuild,
    /// Apply the parked events again (each that succeeds leaves the parked list).
    ReplayParked,
}

impl ProjectionRequest {
    /// The stored name: `rebuild` or `replay-parked`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProjectionRequest::Rebuild => "rebuild",
            ProjectionRequest::ReplayParked => "replay-parked",
        }
    }

    /// From its stored name.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "rebuild" => Some(ProjectionRequest::Rebuild),
            "replay-parked" => Some(ProjectionRequest::ReplayParked),
            _ => None,
        }
    }
}

/// Longest a live projector goes without looking for an operator's request.
pub const REQUEST_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// A projection as its store records it (what an operator's `status` shows).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredProjection {
    /// Its name.
    pub name: String,
    /// The next position it will read.
    pub next: Position,
    /// The event it is faulted on, if any.
    pub fault: Option<FailedEvent>,
    /// How many events it parked.
    pub parked: u64,
}

/// A projection's status, as [`Projector::status`] publishes it.
#[derive(Clone, Debug, PartialEq)]
pub struct ProjectionStatus {
    /// The projection's name.
    pub name: String,
    /// Its state.
    pub state: ProjectionState,
    /// The next position it will read (every event below was handled).
    pub next: Position,
    /// The head of the log when it last looked.
    pub head: Position,
    /// Events between its checkpoint and the head, when the store's positions are dense
    /// (`None` otherwise).
    pub lag_events: Option<u64>,
    /// How long ago the last event it handled was recorded, while it is behind (0 when live).
    pub lag_seconds: f64,
    /// The event it is faulted on.
    pub fault: Option<FailedEvent>,
}

impl ProjectionStatus {
    fn new(name: &str) -> Self {
        ProjectionStatus {
            name: name.to_owned(),
            state: ProjectionState::Stopped,
            next: Position(1),
            head: Position::START,
            lag_events: None,
            lag_seconds: 0.0,
            fault: None,
        }
    }

    /// Whether the event at `position` was handled.
    pub fn has_processed(&self, position: Position) -> bool {
        self.next > position
    }
}

/// A page of events handed to a target: a shared slice, so a target may move it to another
/// thread without copying events.
#[derive(Clone, Debug)]
pub struct EventBatch {
    events: Arc<[RecordedEvent]>,
    range: Range<usize>,
}

impl EventBatch {
    /// A batch of all of `events`.
    pub fn new(events: Vec<RecordedEvent>) -> Self {
        let len = events.len();
        EventBatch {
            events: events.into(),
            range: 0..len,
        }
    }

    /// The events.
    pub fn events(&self) -> &[RecordedEvent] {
        &self.events[self.range.clone()]
    }

    /// Events `range` of this batch.
    fn slice(&self, range: Range<usize>) -> Self {
        assert!(range.end <= self.range.len(), "batch slice out of range");
        EventBatch {
            events: self.events.clone(),
            range: self.range.start + range.start..self.range.start + range.end,
        }
    }

    fn len(&self) -> usize {
        self.range.len()
    }
}

/// Why a target could not apply a batch.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The handler failed on the batch's event at `index`. Nothing of the batch was committed,
    /// unless `prefix_committed`: then the events before `index` were, with the checkpoint at
    /// the failing event (an at-least-once target cannot undo a sink's effects).
    #[error("the handler failed on event {index} of the batch: {error}")]
    Handler {
        /// Index in the batch.
        index: usize,
        /// The handler's error.
        error: HandlerError,
        /// Whether the events before `index` were committed.
        prefix_committed: bool,
    },
    /// The target's storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where a projection's effects and checkpoint live. Every method is all or nothing.
pub trait ProjectionTarget: Send + 'static {
    /// Prepares storage and returns the stored checkpoint. A target that enforces a single
    /// active instance waits here until it holds the projection's lock.
    fn start(&mut self) -> impl Future<Output = Result<Checkpoint, StoreError>> + Send;

    /// Applies `batch` in order and stores `next` as the checkpoint (clearing a fault).
    fn apply(
        &mut self,
        batch: EventBatch,
        next: Position,
    ) -> impl Future<Output = Result<(), ApplyError>> + Send;

    /// Parks `failed` and stores `next` as the checkpoint.
    fn park(
        &mut self,
        failed: &FailedEvent,
        next: Position,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Records that the projection is faulted on `failed` (the checkpoint stays).
    fn fault(
        &mut self,
        failed: &FailedEvent,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The parked events, in log order.
    fn parked(&mut self) -> impl Future<Output = Result<Vec<FailedEvent>, StoreError>> + Send;

    /// Applies a parked event again and removes it from the parked list (the checkpoint stays).
    fn replay_parked(
        &mut self,
        event: RecordedEvent,
    ) -> impl Future<Output = Result<(), ApplyError>> + Send;

    /// Empties the read model, the parked list and the checkpoint (for a rebuild).
    fn reset(&mut self) -> impl Future<Output = Result<(), ApplyError>> + Send;

    /// An operator's pending request, if the target keeps them.
    fn pending_request(
        &mut self,
    ) -> impl Future<Output = Result<Option<ProjectionRequest>, StoreError>> + Send {
        async { Ok(None) }
    }

    /// Removes `request` once it was carried out (so an operator waiting on it sees the work
    /// done; after a crash in between, it is carried out again).
    fn finish_request(
        &mut self,
        request: ProjectionRequest,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let _ = request;
        async { Ok(()) }
    }
}

/// Why a projection stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectionError {
    /// The handler kept failing on an event and the policy is [`OnFailure::Stop`].
    #[error("projection faulted on event at position {} ({}): {}", .0.position, .0.event_type, .0.error)]
    Faulted(Box<FailedEvent>),
    /// The options are invalid.
    #[error("invalid projection options: {0}")]
    InvalidOptions(String),
    /// The store or the target's storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A parked event's handler failed again during a replay.
    #[error("replaying parked event at position {position} failed: {error}")]
    ReplayFailed {
        /// The parked event's position.
        position: Position,
        /// The handler's error.
        error: HandlerError,
    },
}

/// Catch-up progress, for progress bars.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Next position to read.
    pub next: Position,
    /// Head of the log when catch-up began.
    pub head: Position,
    /// Events handled so far in this catch-up.
    pub handled: u64,
}

/// Runs a projection: reads the log from the target's checkpoint, applies pages through the
/// target, handles failures per policy and publishes its status.
pub struct Projector<S, T> {
    name: String,
    store: S,
    target: T,
    options: ProjectionOptions,
    status: watch::Sender<ProjectionStatus>,
    next: Position,
    started: bool,
    /// Events in the last page applied.
    last_batch: u64,
}

impl<S: EventStore, T: ProjectionTarget> Projector<S, T> {
    /// A projector named `name` reading `store` into `target`.
    pub fn new(
        name: impl Into<String>,
        store: S,
        target: T,
        options: ProjectionOptions,
    ) -> Result<Self, ProjectionError> {
        let name = name.into();
        validate(&name, &options)?;
        let (status, _) = watch::channel(ProjectionStatus::new(&name));
        Ok(Projector {
            name,
            store,
            target,
            options,
            status,
            next: Position(1),
            started: false,
            last_batch: 0,
        })
    }

    /// The projection's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A live view of the status (cheap to clone; see [`wait_for`]).
    pub fn status(&self) -> watch::Receiver<ProjectionStatus> {
        self.status.subscribe()
    }

    /// The target (to query the read model it keeps, say).
    pub fn target_mut(&mut self) -> &mut T {
        &mut self.target
    }

    async fn ensure_started(&mut self) -> Result<(), ProjectionError> {
        if self.started {
            return Ok(());
        }
        let checkpoint = self.target.start().await?;
        self.next = checkpoint.next.max(Position(1));
        self.started = true;
        let fault = checkpoint.fault;
        self.status.send_modify(|s| {
            s.next = self.next;
            s.state = ProjectionState::CatchingUp;
            s.fault = fault;
        });
        Ok(())
    }

    /// Runs until `shutdown` resolves (then `Ok`), or until the projection faults or its
    /// storage fails.
    pub async fn run(&mut self, shutdown: impl Future<Output = ()>) -> Result<(), ProjectionError> {
        let mut shutdown = std::pin::pin!(shutdown);
        let result = tokio::select! {
            result = self.run_forever() => result,
            () = &mut shutdown => {
                self.status.send_modify(|s| s.state = ProjectionState::Stopped);
                Ok(())
            }
        };
        // A page may have been cut off mid-apply: reload the stored checkpoint next time.
        self.started = false;
        result
    }

    /// Blue/green: runs this projector — typically a new version of a read model, writing
    /// tables of its own beside the old version's — until it has caught up with the head, then
    /// awaits `promote` (which records that readers should use this version from now on, such
    /// as `StoreAdmin::set_active_version`), then follows the log live until `shutdown`.
    /// Readers keep using the old version until the switch, so they never see a half-built
    /// model.
    pub async fn run_blue_green<F>(
        &mut self,
        promote: F,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ProjectionError>
    where
        F: Future<Output = Result<(), StoreError>>,
    {
        let mut shutdown = std::pin::pin!(shutdown);
        let caught_up = async {
            self.ensure_started().await?;
            while !self.step().await? {}
            Ok::<_, ProjectionError>(())
        };
        tokio::select! {
            result = caught_up => if let Err(e) = result {
                // Start again (lock, stored checkpoint) on the next run.
                self.started = false;
                return Err(e);
            },
            () = &mut shutdown => {
                self.status.send_modify(|s| s.state = ProjectionState::Stopped);
                self.started = false;
                return Ok(());
            }
        }
        promote.await?;
        self.run(shutdown).await
    }

    async fn run_forever(&mut self) -> Result<(), ProjectionError> {
        self.ensure_started().await?;
        loop {
            self.serve_request().await?;
            let at_end = self.step().await?;
            if at_end {
                self.status.send_modify(|s| {
                    s.state = ProjectionState::Live;
                    s.lag_seconds = 0.0;
                    s.lag_events = self.store.dense_positions().then_some(0);
                });
                // Wake for new events, or now and then to look for a request.
                tokio::time::timeout(REQUEST_POLL_INTERVAL, self.store.wait_for_events(self.next))
                    .await
                    .unwrap_or(Ok(()))?;
            }
        }
    }

    /// Carries out an operator's pending request, if any.
    async fn serve_request(&mut self) -> Result<(), ProjectionError> {
        let Some(request) = self.target.pending_request().await? else {
            return Ok(());
        };
        match request {
            ProjectionRequest::Rebuild => {
                tracing::info!(projection = %self.name, "rebuilding on request");
                self.reset().await?;
            }
            ProjectionRequest::ReplayParked => match self.replay_parked().await {
                Ok(n) => {
                    tracing::info!(projection = %self.name, replayed = n, "replayed parked events");
                }
                // The event stays parked; the projection goes on.
                Err(ProjectionError::ReplayFailed { position, error }) => {
                    tracing::warn!(projection = %self.name, %position, %error,
                        "a parked event failed again");
                }
                Err(e) => return Err(e),
            },
        }
        Ok(self.target.finish_request(request).await?)
    }

    /// Empties the read model and starts again from the beginning of the log.
    async fn reset(&mut self) -> Result<(), ProjectionError> {
        self.target.reset().await.map_err(|e| match e {
            ApplyError::Store(e) => ProjectionError::Store(e),
            ApplyError::Handler { error, .. } => ProjectionError::ReplayFailed {
                position: Position::START,
                error,
            },
        })?;
        self.next = Position(1);
        self.status.send_modify(|s| {
            s.next = Position(1);
            s.fault = None;
            s.state = ProjectionState::CatchingUp;
        });
        Ok(())
    }

    /// Applies everything up to the head as it is now (at least), reporting progress after
    /// each page, and returns the next position to read.
    pub async fn catch_up(
        &mut self,
        mut progress: impl FnMut(Progress),
    ) -> Result<Position, ProjectionError> {
        self.ensure_started().await?;
        let head = self.store.head_position().await?;
        let mut handled = 0u64;
        while self.next <= head {
            let at_end = self.step().await?;
            handled += self.last_batch;
            progress(Progress {
                next: self.next,
                head,
                handled,
            });
            if at_end {
                break;
            }
        }
        self.status
            .send_modify(|s| s.state = ProjectionState::Stopped);
        Ok(self.next)
    }

    /// Resets the read model and checkpoint, then catches up from the start of the log.
    pub async fn rebuild(
        &mut self,
        progress: impl FnMut(Progress),
    ) -> Result<Position, ProjectionError> {
        self.ensure_started().await?;
        self.reset().await?;
        self.catch_up(progress).await
    }

    /// The parked events.
    pub async fn parked(&mut self) -> Result<Vec<FailedEvent>, ProjectionError> {
        self.ensure_started().await?;
        Ok(self.target.parked().await?)
    }

    /// Applies every parked event again, in log order, removing each that now succeeds.
    /// Stops at the first that fails again. Returns how many were replayed.
    pub async fn replay_parked(&mut self) -> Result<usize, ProjectionError> {
        self.ensure_started().await?;
        let mut replayed = 0;
        for parked in self.target.parked().await? {
            let Some(event) = self.store.event_by_id(parked.event_id).await? else {
                return Err(ProjectionError::Store(StoreError::Corrupt {
                    message: format!("parked event {} is not in the store", parked.event_id),
                }));
            };
            match self.target.replay_parked(event).await {
                Ok(()) => replayed += 1,
                Err(ApplyError::Store(e)) => return Err(e.into()),
                Err(ApplyError::Handler { error, .. }) => {
                    return Err(ProjectionError::ReplayFailed {
                        position: parked.position,
                        error,
                    });
                }
            }
        }
        Ok(replayed)
    }
}

impl<S: EventStore, T: ProjectionTarget> Projector<S, T> {
    /// Reads and applies one page; returns whether it reached the end of the log.
    async fn step(&mut self) -> Result<bool, ProjectionError> {
        self.last_batch = 0;
        let page = self
            .store
            .read_all_page(
                self.next,
                Direction::Forward,
                &self.options.filter,
                self.options.batch_size,
            )
            .await?;
        let next = page.next;
        let count = page.events.len() as u64;
        let last_recorded = page.events.last().map(|e| e.recorded_at);
        if count > 0 || next > self.next {
            // Traced with the first event's correlation id: command → append → projection.
            let span = tracing::debug_span!(
                "sirenia.projection",
                projection = %self.name,
                events = count,
                first_position = page.events.first().map(|e| e.position.0),
                correlation_id = page
                    .events
                    .first()
                    .and_then(|e| e.metadata.correlation_id.clone()),
            );
            tracing::Instrument::instrument(
                self.apply_with_policy(EventBatch::new(page.events), next),
                span,
            )
            .await?;
        }
        self.last_batch = count;
        self.next = next;
        let head = self.store.head_position().await?;
        let dense = self.store.dense_positions();
        let at_end = page.at_end;
        self.status.send_modify(|s| {
            s.next = next;
            s.head = head;
            s.fault = None;
            s.state = if at_end {
                ProjectionState::Live
            } else {
                ProjectionState::CatchingUp
            };
            s.lag_events = dense.then(|| head.0.saturating_sub(next.0.saturating_sub(1)));
            if let Some(recorded) = last_recorded {
                let now = Timestamp::now().as_micros();
                // Microseconds of lag stay far below 2^53, where f64 is exact.
                #[allow(clippy::cast_precision_loss)]
                let lag = now.saturating_sub(recorded.as_micros()) as f64 / 1e6;
                s.lag_seconds = if at_end { 0.0 } else { lag };
            }
        });
        Ok(at_end)
    }

    /// Applies `batch` and stores `next`; on a handler failure commits the events before the
    /// failing one, retries it, then parks it or faults per policy, and goes on.
    async fn apply_with_policy(
        &mut self,
        mut batch: EventBatch,
        next: Position,
    ) -> Result<(), ProjectionError> {
        loop {
            let (mut index, mut error, committed) =
                match self.apply_store_retrying(batch.clone(), next).await? {
                    None => return Ok(()),
                    Some(failure) => failure,
                };
            // Commit the events before the failing one first. Should one of them fail now (a
            // handler that is not deterministic), that one is the failing event: `index` only
            // decreases, so this ends.
            let mut committed = committed;
            while index > 0 && !committed {
                let upto = batch.events()[index].position;
                match self
                    .apply_store_retrying(batch.slice(0..index), upto)
                    .await?
                {
                    None => break,
                    Some((i, e, c)) => (index, error, committed) = (i, e, c),
                }
            }
            let failing = batch.events()[index].clone();
            let after = Position(failing.position.0 + 1);
            let mut last_error = error;
            let mut attempts = 1u32;
            let mut backoff = self.options.policy.first_backoff;
            let mut recovered = false;
            while attempts <= self.options.policy.retries {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(self.options.policy.max_backoff);
                attempts += 1;
                let single = EventBatch::new(vec![failing.clone()]);
                match self.apply_store_retrying(single, after).await? {
                    None => {
                        recovered = true;
                        break;
                    }
                    Some((_, e, _)) => last_error = e,
                }
            }
            if !recovered {
                let failed = FailedEvent::new(&failing, &last_error, attempts);
                match self.options.policy.on_failure {
                    OnFailure::Park => {
                        self.target.park(&failed, after).await?;
                    }
                    OnFailure::Stop => {
                        self.target.fault(&failed).await?;
                        self.next = failing.position;
                        self.status.send_modify(|s| {
                            s.state = ProjectionState::Faulted;
                            s.next = failing.position;
                            s.fault = Some(failed.clone());
                        });
                        return Err(ProjectionError::Faulted(Box::new(failed)));
                    }
                }
            }
            self.next = after;
            let rest = batch.slice(index + 1..batch.len());
            if rest.len() == 0 && next <= after {
                return Ok(());
            }
            batch = rest;
        }
    }

    /// Applies a batch, retrying storage failures with back-off as the policy says. Returns
    /// the handler failure, if any.
    async fn apply_store_retrying(
        &mut self,
        batch: EventBatch,
        next: Position,
    ) -> Result<Option<(usize, HandlerError, bool)>, ProjectionError> {
        let mut backoff = self.options.policy.first_backoff;
        let mut attempts = 0u32;
        loop {
            match self.target.apply(batch.clone(), next).await {
                Ok(()) => return Ok(None),
                Err(ApplyError::Handler {
                    index,
                    error,
                    prefix_committed,
                }) => return Ok(Some((index, error, prefix_committed))),
                Err(ApplyError::Store(_)) if attempts < self.options.policy.retries => {
                    attempts += 1;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.options.policy.max_backoff);
                }
                Err(ApplyError::Store(e)) => return Err(e.into()),
            }
        }
    }
}

fn validate(name: &str, options: &ProjectionOptions) -> Result<(), ProjectionError> {
    if name.is_empty()
        || name.len() > MAX_PROJECTION_NAME_BYTES
        || name.chars().any(char::is_control)
    {
        return Err(ProjectionError::InvalidOptions(format!(
            "a projection name is 1 to {MAX_PROJECTION_NAME_BYTES} bytes without control \
             characters"
        )));
    }
    if options.batch_size == 0 || options.batch_size > MAX_PAGE_SIZE {
        return Err(ProjectionError::InvalidOptions(format!(
            "batch size {} is not between 1 and {MAX_PAGE_SIZE}",
            options.batch_size
        )));
    }
    if options.policy.retries > MAX_PROJECTION_RETRIES {
        return Err(ProjectionError::InvalidOptions(format!(
            "{} retries; the most allowed is {MAX_PROJECTION_RETRIES}",
            options.policy.retries
        )));
    }
    Ok(())
}

/// Why [`wait_for`] returned without the position processed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WaitError {
    /// The timeout passed first.
    #[error("the projection had not processed position {0} in time")]
    Timeout(Position),
    /// The projection stopped (its projector was dropped).
    #[error("the projection stopped")]
    Stopped,
    /// The projection is faulted before reaching the position.
    #[error("the projection is faulted")]
    Faulted,
}

/// Read-your-writes: waits until the projection whose status is `status` has processed the
/// event at `position` (for example the `last_position` of an append), or `timeout` passes.
pub async fn wait_for(
    status: &mut watch::Receiver<ProjectionStatus>,
    position: Position,
    timeout: Duration,
) -> Result<(), WaitError> {
    let wait =
        status.wait_for(|s| s.has_processed(position) || s.state == ProjectionState::Faulted);
    match tokio::time::timeout(timeout, wait).await {
        Err(_) => Err(WaitError::Timeout(position)),
        Ok(Err(_)) => Err(WaitError::Stopped),
        Ok(Ok(s)) if s.has_processed(position) => Ok(()),
        Ok(Ok(_)) => Err(WaitError::Faulted),
    }
}

/// A handler for a sink outside the store's database (a search index, a mailer, another
/// service). Delivery is at least once: after a crash the events since the last stored
/// checkpoint are handed over again, so the handler must be idempotent, for example by
/// remembering the event id ([`RecordedEvent::id`]) or position it last applied.
pub trait Handler: Send + 'static {
    /// Applies one event.
    fn handle(
        &mut self,
        event: &RecordedEvent,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// Applies a page of events in order (by default one [`handle`](Handler::handle) after
    /// the other). A sink that can pipeline (publish a page, then wait for every
    /// acknowledgement) overrides it. [`ApplyError::Handler`] names the first event that
    /// failed (those before it count as applied); [`ApplyError::Store`] says the sink is
    /// unavailable, and the whole page is handed over again after a back-off.
    fn handle_batch(
        &mut self,
        events: &[RecordedEvent],
    ) -> impl Future<Output = Result<(), ApplyError>> + Send {
        async move {
            for (index, event) in events.iter().enumerate() {
                self.handle(event)
                    .await
                    .map_err(|error| ApplyError::Handler {
                        index,
                        error,
                        prefix_committed: false,
                    })?;
            }
            Ok(())
        }
    }
}

/// Durable checkpoints, fault records and parked events, without a read model: what
/// [`AtLeastOnce`] needs from a store.
pub trait CheckpointStore: Send + 'static {
    /// The stored checkpoint of projection `name`.
    fn load(&mut self, name: &str) -> impl Future<Output = Result<Checkpoint, StoreError>> + Send;
    /// Stores `next` for `name` and clears its fault.
    fn save(
        &mut self,
        name: &str,
        next: Position,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Parks `failed` and stores `next`, together.
    fn park(
        &mut self,
        name: &str,
        failed: &FailedEvent,
        next: Position,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Records the fault.
    fn fault(
        &mut self,
        name: &str,
        failed: &FailedEvent,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The parked events of `name`, in log order.
    fn parked(
        &mut self,
        name: &str,
    ) -> impl Future<Output = Result<Vec<FailedEvent>, StoreError>> + Send;
    /// Removes a parked event.
    fn unpark(
        &mut self,
        name: &str,
        position: Position,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Forgets the checkpoint, fault and parked events of `name`.
    fn reset(&mut self, name: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// An at-least-once target: the handler applies each event, then the checkpoint is stored.
pub struct AtLeastOnce<H, C> {
    name: String,
    handler: H,
    checkpoints: C,
}

impl<H: Handler, C: CheckpointStore> AtLeastOnce<H, C> {
    /// Projection `name`: `handler` over checkpoints kept in `checkpoints`.
    pub fn new(name: impl Into<String>, handler: H, checkpoints: C) -> Self {
        AtLeastOnce {
            name: name.into(),
            handler,
            checkpoints,
        }
    }

    /// The handler.
    pub fn handler_mut(&mut self) -> &mut H {
        &mut self.handler
    }
}

impl<H: Handler, C: CheckpointStore> ProjectionTarget for AtLeastOnce<H, C> {
    async fn start(&mut self) -> Result<Checkpoint, StoreError> {
        self.checkpoints.load(&self.name).await
    }

    async fn apply(&mut self, batch: EventBatch, next: Position) -> Result<(), ApplyError> {
        let events = batch.events();
        match self.handler.handle_batch(events).await {
            Ok(()) => Ok(self.checkpoints.save(&self.name, next).await?),
            Err(ApplyError::Handler { index, error, .. }) => {
                let Some(failed) = events.get(index) else {
                    return Err(ApplyError::Store(StoreError::Backend {
                        message: format!(
                            "handler {} reported a failure at index {index} of a page of {}",
                            self.name,
                            events.len()
                        ),
                        source: Some(error),
                    }));
                };
                // What was handled before it is kept: store the checkpoint up to it.
                if index > 0 {
                    self.checkpoints.save(&self.name, failed.position).await?;
                }
                Err(ApplyError::Handler {
                    index,
                    error,
                    prefix_committed: true,
                })
            }
            Err(ApplyError::Store(e)) => Err(ApplyError::Store(e)),
        }
    }

    async fn park(&mut self, failed: &FailedEvent, next: Position) -> Result<(), StoreError> {
        self.checkpoints.park(&self.name, failed, next).await
    }

    async fn fault(&mut self, failed: &FailedEvent) -> Result<(), StoreError> {
        self.checkpoints.fault(&self.name, failed).await
    }

    async fn parked(&mut self) -> Result<Vec<FailedEvent>, StoreError> {
        self.checkpoints.parked(&self.name).await
    }

    async fn replay_parked(&mut self, event: RecordedEvent) -> Result<(), ApplyError> {
        // Through `handle_batch`, so a sink that is unavailable stays a storage failure.
        self.handler
            .handle_batch(std::slice::from_ref(&event))
            .await?;
        Ok(self.checkpoints.unpark(&self.name, event.position).await?)
    }

    async fn reset(&mut self) -> Result<(), ApplyError> {
        Ok(self.checkpoints.reset(&self.name).await?)
    }
}

/// Checkpoints in memory (tests, and sinks that rebuild from scratch on every start).
#[derive(Clone, Debug, Default)]
pub struct MemoryCheckpoints {
    inner: Arc<std::sync::Mutex<std::collections::BTreeMap<String, MemoryEntry>>>,
}

#[derive(Clone, Debug, Default)]
struct MemoryEntry {
    checkpoint: Checkpoint,
    parked: std::collections::BTreeMap<Position, FailedEvent>,
}

impl MemoryCheckpoints {
    /// Empty.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<R>(&self, name: &str, f: impl FnOnce(&mut MemoryEntry) -> R) -> R {
        let mut map = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(map.entry(name.to_owned()).or_default())
    }
}

impl CheckpointStore for MemoryCheckpoints {
    async fn load(&mut self, name: &str) -> Result<Checkpoint, StoreError> {
        Ok(self.with(name, |e| e.checkpoint.clone()))
    }

    async fn save(&mut self, name: &str, next: Position) -> Result<(), StoreError> {
        self.with(name, |e| {
            e.checkpoint = Checkpoint { next, fault: None };
        });
        Ok(())
    }

    async fn park(
        &mut self,
        name: &str,
        failed: &FailedEvent,
        next: Position,
    ) -> Result<(), StoreError> {
        self.with(name, |e| {
            e.parked.insert(failed.position, failed.clone());
            e.checkpoint = Checkpoint { next, fault: None };
        });
        Ok(())
    }

    async fn fault(&mut self, name: &str, failed: &FailedEvent) -> Result<(), StoreError> {
        self.with(name, |e| e.checkpoint.fault = Some(failed.clone()));
        Ok(())
    }

    async fn parked(&mut self, name: &str) -> Result<Vec<FailedEvent>, StoreError> {
        Ok(self.with(name, |e| e.parked.values().cloned().collect()))
    }

    async fn unpark(&mut self, name: &str, position: Position) -> Result<(), StoreError> {
        self.with(name, |e| e.parked.remove(&position));
        Ok(())
    }

    async fn reset(&mut self, name: &str) -> Result<(), StoreError> {
        self.with(name, |e| *e = MemoryEntry::default());
        Ok(())
    }
}
