//! The repository: load, decide, append with the loaded version, bounded retries on conflict,
//! the caller's expected version, and idempotency by command id.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};
use sirenia_core::{
    Aggregate, AppendResult, CommandContext, CommandError, Direction, DomainEvent, EventId,
    EventStore, ExpectedVersion, InMemoryStore, JsonCodec, NewEvent, RawEvent, ReadStream,
    RecordedEvent, Repository, StoreError, StoreWrapper, StreamId, StreamWrite, Upcasters, Uuid,
};

#[derive(Default, Debug, Clone, PartialEq)]
struct Tally {
    total: u64,
    entries: u64,
}

#[derive(Clone, Debug)]
enum TallyCommand {
    Add(u64),
    /// Takes everything: succeeds once, then there is nothing left to take.
    TakeAll,
    /// Produces `n` events.
    Burst(usize),
    Nothing,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum TallyEvent {
    Added { amount: u64 },
    Taken { amount: u64 },
}

impl DomainEvent for TallyEvent {
    fn schema_version(event_type: &str) -> u16 {
        if event_type == "Added" { 2 } else { 1 }
    }
}

#[derive(Debug, PartialEq, thiserror::Error)]
enum TallyError {
    #[error("nothing to take")]
    Empty,
}

impl Aggregate for Tally {
    const CATEGORY: &'static str = "tally";
    type Command = TallyCommand;
    type Event = TallyEvent;
    type Error = TallyError;

    fn apply(&mut self, event: &TallyEvent) {
        self.entries += 1;
        match event {
            TallyEvent::Added { amount } => self.total += amount,
            TallyEvent::Taken { amount } => self.total -= amount,
        }
    }

    fn handle(&self, command: TallyCommand) -> Result<Vec<TallyEvent>, TallyError> {
        match command {
            TallyCommand::Add(amount) => Ok(vec![TallyEvent::Added { amount }]),
            TallyCommand::TakeAll if self.total == 0 => Err(TallyError::Empty),
            TallyCommand::TakeAll => Ok(vec![TallyEvent::Taken { amount: self.total }]),
            TallyCommand::Burst(n) => Ok((0..n).map(|_| TallyEvent::Added { amount: 1 }).collect()),
            TallyCommand::Nothing => Ok(vec![]),
        }
    }
}

/// A store where, for the next `interfere` appends, a concurrent writer slips one event into
/// the stream just before the append, so the append conflicts.
#[derive(Clone)]
struct Contended {
    inner: InMemoryStore,
    interfere: Arc<AtomicU32>,
    /// The rival runs the same command (same event ids) under another correlation id.
    mirror: bool,
    /// Appended just before the next stream read: a rival that ran between the repository's
    /// command-id check and its load.
    before_read: Arc<std::sync::Mutex<Option<StreamWrite>>>,
}

impl Contended {
    fn new(interfere: u32) -> Self {
        Contended {
            inner: InMemoryStore::new(),
            interfere: Arc::new(AtomicU32::new(interfere)),
            mirror: false,
            before_read: Arc::default(),
        }
    }
}

impl StoreWrapper for Contended {
    type Inner = InMemoryStore;

    fn inner(&self) -> &InMemoryStore {
        &self.inner
    }

    async fn wrap_append(&self, writes: Vec<StreamWrite>) -> Result<AppendResult, StoreError> {
        let take = self
            .interfere
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if take && self.mirror {
            let mut rival = writes.clone();
            for write in &mut rival {
                for event in &mut write.events {
                    event.metadata.correlation_id = Some("rival-request".to_owned());
                }
            }
            self.inner.append(rival).await?;
        } else if take {
            let codec = JsonCodec::<TallyEvent>::new();
            let rival = codec
                .to_new_event(
                    &TallyEvent::Added { amount: 100 },
                    EventId::new(),
                    Default::default(),
                )
                .unwrap();
            let stream = writes[0].stream.clone();
            self.inner
                .append(vec![StreamWrite::new(
                    stream,
                    ExpectedVersion::Any,
                    vec![rival],
                )])
                .await?;
        }
        self.inner.append(writes).await
    }

    async fn wrap_read_stream_page(
        &self,
        stream: &StreamId,
        from: u64,
        direction: Direction,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let rival = self.before_read.lock().unwrap().take();
        if let Some(rival) = rival {
            self.inner.append(vec![rival]).await?;
        }
        self.inner
            .read_stream_page(stream, from, direction, max)
            .await
    }
}

async fn stored(store: &impl EventStore, stream: &str) -> Vec<RecordedEvent> {
    store
        .read_stream(&StreamId::new(stream).unwrap(), ReadStream::forward())
        .try_collect()
        .await
        .unwrap()
}

#[tokio::test]
async fn execute_appends_with_the_loaded_version_and_reports_it() {
    let repo = Repository::<Tally, _>::new(InMemoryStore::new());
    let first = repo.execute("a", TallyCommand::Add(5)).await.unwrap();
    assert_eq!(
        (first.version, first.attempts, first.repeated),
        (1, 1, false)
    );
    assert_eq!(
        first.state,
        Tally {
            total: 5,
            entries: 1
        }
    );
    let second = repo.execute("a", TallyCommand::Add(7)).await.unwrap();
    assert_eq!(second.version, 2);
    assert!(second.first_position > first.last_position);
    let events = stored(repo.store(), "tally-a").await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].event_type, "Added");
    assert_eq!(
        events[0].schema_version, 2,
        "written at the current schema version"
    );
    let loaded = repo.load("a").await.unwrap();
    assert_eq!((loaded.state.total, loaded.version), (12, 2));
    assert_eq!(loaded.last_position, second.last_position);
    assert_eq!(repo.load_version("a", 1).await.unwrap().state.total, 5);
}

#[tokio::test]
async fn a_conflict_retries_the_whole_cycle_on_the_new_state() {
    let store = Contended::new(0);
    let repo = Repository::<Tally, _>::new(store.clone());
    repo.execute("a", TallyCommand::Add(1)).await.unwrap();
    store.interfere.store(2, Ordering::SeqCst);
    let done = repo.execute("a", TallyCommand::TakeAll).await.unwrap();
    assert_eq!(done.attempts, 3, "two conflicts, then success");
    // The decision was made again on the state the rivals left: it takes their 200 too.
    assert_eq!(done.events, vec![TallyEvent::Taken { amount: 201 }]);
    assert_eq!(done.state.total, 0);
    assert_eq!(done.version, 4);
    let events = stored(repo.store(), "tally-a").await;
    assert_eq!(events.len(), 4, "only the final attempt was written");
}

#[tokio::test]
async fn retries_are_bounded() {
    let repo = Repository::<Tally, _>::new(Contended::new(10))
        .with_max_retries(3)
        .unwrap();
    match repo.execute("a", TallyCommand::Add(1)).await {
        Err(CommandError::TooManyConflicts { attempts, stream }) => {
            assert_eq!(attempts, 4, "one attempt and three retries");
            assert_eq!(stream.as_str(), "tally-a");
        }
        other => panic!("expected TooManyConflicts, got {other:?}"),
    }
    let events = stored(repo.store(), "tally-a").await;
    assert!(
        events.iter().all(|e| e.json().unwrap()["amount"] == 100),
        "none of the command's attempts was written"
    );
    assert!(matches!(
        Repository::<Tally, _>::new(InMemoryStore::new()).with_max_retries(1_000),
        Err(StoreError::LimitExceeded { .. })
    ));
}

#[tokio::test]
async fn the_callers_expected_version_is_never_retried() {
    let repo = Repository::<Tally, _>::new(InMemoryStore::new());
    repo.execute("a", TallyCommand::Add(1)).await.unwrap();
    let context = CommandContext::new().expected_version(0);
    match repo.execute_with("a", TallyCommand::Add(1), &context).await {
        Err(CommandError::Conflict {
            expected, actual, ..
        }) => assert_eq!((expected, actual), (0, Some(1))),
        other => panic!("expected Conflict, got {other:?}"),
    }
    let ok = repo
        .execute_with(
            "a",
            TallyCommand::Add(1),
            &CommandContext::new().expected_version(1),
        )
        .await
        .unwrap();
    assert_eq!(ok.version, 2);

    // A rival writes between our load and our append: the caller's version no longer holds.
    let contended = Repository::<Tally, _>::new(Contended::new(1));
    match contended
        .execute_with(
            "b",
            TallyCommand::Add(1),
            &CommandContext::new().expected_version(0),
        )
        .await
    {
        Err(CommandError::Conflict {
            expected, actual, ..
        }) => assert_eq!((expected, actual), (0, Some(1))),
        other => panic!("expected Conflict without retry, got {other:?}"),
    }
}

#[tokio::test]
async fn a_concurrent_run_of_the_same_command_id_wins_and_the_other_answers_with_its_outcome() {
    let store = Contended {
        mirror: true,
        ..Contended::new(1)
    };
    let repo = Repository::<Tally, _>::new(store.clone());
    let context = CommandContext::new()
        .command_id(Uuid::now_v7())
        .correlation_id("this-request");
    let done = repo
        .execute_with("a", TallyCommand::Add(7), &context)
        .await
        .unwrap();
    assert_eq!((done.version, done.state.total), (1, 7));
    let events = stored(&store.inner, "tally-a").await;
    assert_eq!(events.len(), 1, "one run's events only");
    assert_eq!(
        events[0].metadata.correlation_id.as_deref(),
        Some("rival-request")
    );

    // The rival lands after this run checked its command id but before it loaded: this run
    // decides on the moved stream, its event id is stored elsewhere, and it must still answer
    // with the rival's outcome rather than fail.
    let store = Contended::new(0);
    let command_id = Uuid::now_v7();
    let rival = JsonCodec::<TallyEvent>::new()
        .to_new_event(
            &TallyEvent::Added { amount: 7 },
            EventId::derived(command_id, 0),
            Default::default(),
        )
        .unwrap();
    *store.before_read.lock().unwrap() = Some(StreamWrite::new(
        StreamId::new("tally-b").unwrap(),
        ExpectedVersion::Any,
        vec![rival],
    ));
    let repo = Repository::<Tally, _>::new(store.clone());
    let done = repo
        .execute_with(
            "b",
            TallyCommand::Add(7),
            &CommandContext::new().command_id(command_id),
        )
        .await
        .unwrap();
    assert!(done.repeated);
    assert_eq!((done.version, done.state.total), (1, 7));
    assert_eq!(stored(&store.inner, "tally-b").await.len(), 1);
}

/// A concurrent run of the same command lands between this run's command-id check and its
/// load, and makes this run's decision a refusal: the answer is the rival's outcome, not the
/// refusal (an idempotent HTTP retry would otherwise store a wrong answer for good).
#[tokio::test]
async fn a_refusal_caused_by_a_concurrent_run_of_the_same_command_answers_with_its_outcome() {
    let store = Contended::new(0);
    let repo = Repository::<Tally, _>::new(store.clone());
    repo.execute("c", TallyCommand::Add(9)).await.unwrap();
    let command_id = Uuid::now_v7();
    let rival = JsonCodec::<TallyEvent>::new()
        .to_new_event(
            &TallyEvent::Taken { amount: 9 },
            EventId::derived(command_id, 0),
            Default::default(),
        )
        .unwrap();
    *store.before_read.lock().unwrap() = Some(StreamWrite::new(
        StreamId::new("tally-c").unwrap(),
        ExpectedVersion::Exact(1),
        vec![rival],
    ));
    let done = repo
        .execute_with(
            "c",
            TallyCommand::TakeAll,
            &CommandContext::new().command_id(command_id),
        )
        .await
        .expect("the rival's outcome, not a refusal");
    assert!(done.repeated);
    assert_eq!((done.version, done.state.total), (2, 0));
}

#[tokio::test]
async fn a_repeated_command_id_returns_the_first_outcome_and_appends_nothing() {
    let repo = Repository::<Tally, _>::new(InMemoryStore::new());
    repo.execute("a", TallyCommand::Add(10)).await.unwrap();
    let command_id = Uuid::now_v7();
    let context = CommandContext::new()
        .command_id(command_id)
        .correlation_id("req-1");
    let first = repo
        .execute_with("a", TallyCommand::TakeAll, &context)
        .await
        .unwrap();
    assert!(!first.repeated);
    repo.execute("a", TallyCommand::Add(3)).await.unwrap();
    // Deciding again would fail or take 3; the repeat returns the first outcome instead.
    let again = repo
        .execute_with("a", TallyCommand::TakeAll, &context)
        .await
        .unwrap();
    assert!(again.repeated);
    assert_eq!(again.events, first.events);
    assert_eq!(again.version, first.version);
    assert_eq!(again.state, first.state);
    assert_eq!(
        (again.first_position, again.last_position),
        (first.first_position, first.last_position)
    );
    let events = stored(repo.store(), "tally-a").await;
    assert_eq!(events.len(), 3, "the repeat appended nothing");
    assert_eq!(
        events[1].id,
        EventId::derived(command_id, 0),
        "derived event id"
    );
    assert_eq!(events[1].metadata.correlation_id.as_deref(), Some("req-1"));
    assert_eq!(
        events[1].metadata.causation_id,
        Some(command_id.to_string()),
        "the command id is the causation id"
    );

    let burst = CommandContext::new().command_id(Uuid::now_v7());
    let first = repo
        .execute_with("b", TallyCommand::Burst(3), &burst)
        .await
        .unwrap();
    let again = repo
        .execute_with("b", TallyCommand::Burst(3), &burst)
        .await
        .unwrap();
    assert_eq!(
        (again.repeated, again.events.len(), again.version),
        (true, 3, first.version)
    );

    match repo.execute_with("c", TallyCommand::Add(1), &context).await {
        Err(CommandError::CommandIdReused { stream, .. }) => assert_eq!(stream.as_str(), "tally-a"),
        other => panic!("a command id used on another aggregate must be refused, got {other:?}"),
    }
}

#[tokio::test]
async fn rejections_and_no_ops_write_nothing() {
    let repo = Repository::<Tally, _>::new(InMemoryStore::new());
    match repo.execute("a", TallyCommand::TakeAll).await {
        Err(CommandError::Rejected(TallyError::Empty)) => {}
        other => panic!("expected the business error, got {other:?}"),
    }
    let noop = repo.execute("a", TallyCommand::Nothing).await.unwrap();
    assert_eq!((noop.version, noop.first_position), (0, None));
    assert!(stored(repo.store(), "tally-a").await.is_empty());
    match repo.execute("a", TallyCommand::Burst(1_001)).await {
        Err(CommandError::TooManyEvents(1_001)) => {}
        other => panic!("expected TooManyEvents, got {other:?}"),
    }
    match repo.execute("", TallyCommand::Add(1)).await {
        Ok(done) => assert_eq!(done.version, 1, "`tally-` is a valid stream"),
        Err(e) => panic!("{e}"),
    }
    match repo.execute(&"x".repeat(300), TallyCommand::Add(1)).await {
        Err(CommandError::InvalidId(_)) => {}
        other => panic!("an overlong id must be InvalidId, got {other:?}"),
    }
}

#[tokio::test]
async fn loading_upcasts_old_events() {
    let store = InMemoryStore::new();
    let stream = StreamId::new("tally-old").unwrap();
    // Written by an old version: `Added` v1 called the field `value`.
    let old = NewEvent::json("Added", &serde_json::json!({ "value": 4 }));
    store
        .append(vec![StreamWrite::new(
            stream,
            ExpectedVersion::NoStream,
            vec![old],
        )])
        .await
        .unwrap();
    let plain = Repository::<Tally, _>::new(store.clone());
    assert!(
        matches!(
            plain.load("old").await,
            Err(sirenia_core::LoadError::Codec(_))
        ),
        "without an upcaster the old event is a clear codec error"
    );
    let upcasters = Upcasters::new().register("Added", 1, |e: RawEvent| {
        let value = e.data.get("value").cloned().ok_or("no value")?;
        Ok(vec![RawEvent::new(
            "Added",
            2,
            serde_json::json!({ "amount": value }),
        )])
    });
    let repo = Repository::<Tally, _>::new(store).with_codec(JsonCodec::with_upcasters(upcasters));
    assert_eq!(repo.load("old").await.unwrap().state.total, 4);
    let done = repo.execute("old", TallyCommand::Add(1)).await.unwrap();
    assert_eq!((done.state.total, done.version), (5, 2));
}

#[tokio::test]
async fn concurrent_commands_on_one_aggregate_all_land_once() {
    let repo = Repository::<Tally, _>::new(InMemoryStore::new())
        .with_max_retries(100)
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..20u64 {
        let repo = repo.clone();
        tasks.push(tokio::spawn(async move {
            repo.execute("hot", TallyCommand::Add(i)).await.unwrap()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let loaded = repo.load("hot").await.unwrap();
    assert_eq!((loaded.state.total, loaded.version), ((0..20).sum(), 20));
}
