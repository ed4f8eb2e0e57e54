//! Store round trips of the service's operations: [`Counting`] wraps a store and records every
//! call into the `EventStore` port, and the tests run operations through [`Commands`] (the
//! path every POST takes after its extractors) and check how many calls each made.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use serde_json::json;
use sirenia::store::Direction;
use sirenia::{
    AllPage, AppendResult, CommandContext, EventFilter, EventId, EventStore, InMemoryStore,
    Position, RecordedEvent, Repository, StoreError, StoreWrapper, StreamChange, StreamId,
    StreamInfo, StreamWrite,
};

use crate::account::{AccountCommand, Requested};
use crate::operation::{Commands, Operation, Post};

/// A store that records the name of every port call it passes on.
#[derive(Clone)]
pub(crate) struct Counting<S> {
    inner: S,
    calls: Arc<Mutex<Vec<&'static str>>>,
}

impl<S> Counting<S> {
    fn new(inner: S) -> Self {
        Counting {
            inner,
            calls: Arc::default(),
        }
    }

    fn note(&self, call: &'static str) {
        self.calls.lock().unwrap().push(call);
    }

    /// The calls recorded since the last `take`.
    fn take(&self) -> Vec<&'static str> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }
}

impl<S: EventStore> StoreWrapper for Counting<S> {
    type Inner = S;

    fn inner(&self) -> &S {
        &self.inner
    }

    async fn wrap_append(&self, writes: Vec<StreamWrite>) -> Result<AppendResult, StoreError> {
        self.note("append");
        self.inner.append(writes).await
    }

    async fn wrap_stream_version(&self, stream: &StreamId) -> Result<Option<u64>, StoreError> {
        self.note("stream_version");
        self.inner.stream_version(stream).await
    }

    async fn wrap_stream_info(&self, stream: &StreamId) -> Result<Option<StreamInfo>, StoreError> {
        self.note("stream_info");
        self.inner.stream_info(stream).await
    }

    async fn wrap_change_stream(
        &self,
        stream: &StreamId,
        change: StreamChange,
    ) -> Result<Option<StreamInfo>, StoreError> {
        self.note("change_stream");
        self.inner.change_stream(stream, change).await
    }

    async fn wrap_event_by_id(&self, id: EventId) -> Result<Option<RecordedEvent>, StoreError> {
        self.note("event_by_id");
        self.inner.event_by_id(id).await
    }

    async fn wrap_head_position(&self) -> Result<Position, StoreError> {
        self.note("head_position");
        self.inner.head_position().await
    }

    async fn wrap_read_stream_page(
        &self,
        stream: &StreamId,
        from: u64,
        direction: Direction,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.note("read_stream_page");
        self.inner
            .read_stream_page(stream, from, direction, max)
            .await
    }

    async fn wrap_read_all_page(
        &self,
        from: Position,
        direction: Direction,
        filter: &EventFilter,
        max: usize,
    ) -> Result<AllPage, StoreError> {
        self.note("read_all_page");
        self.inner.read_all_page(from, direction, filter, max).await
    }

    async fn wrap_wait_for_events(&self, from: Position) -> Result<(), StoreError> {
        self.note("wait_for_events");
        self.inner.wait_for_events(from).await
    }
}

/// (reads, appends) among `calls`.
fn split(calls: &[&'static str]) -> (usize, usize) {
    let appends = calls.iter().filter(|c| **c == "append").count();
    (calls.len() - appends, appends)
}

fn commands() -> (Commands<Counting<InMemoryStore>>, Counting<InMemoryStore>) {
    let store = Counting::new(InMemoryStore::new());
    let commands = Commands::new(
        Arc::new(Repository::new(store.clone())),
        Arc::new(Repository::new(store.clone())),
    );
    (commands, store)
}

fn deposit(account: uuid::Uuid, amount: u64, key: Option<&str>) -> Post {
    Post {
        operation: Operation::Deposit {
            account,
            amount: Requested::Units(amount),
        },
        body: json!({ "amount": amount }),
        if_match: None,
        correlation_id: "c".to_owned(),
        key: key.map(str::to_owned),
    }
}

#[tokio::test]
async fn a_keyed_deposit_makes_two_reads_and_one_append() {
    let (commands, store) = commands();
    let opened = commands
        .submit(Post {
            operation: Operation::Open {
                owner: "Ada".to_owned(),
            },
            body: json!({ "owner": "Ada" }),
            if_match: None,
            correlation_id: "c".to_owned(),
            key: None,
        })
        .await
        .unwrap();
    let account = opened.outcome.body["id"].as_str().unwrap().parse().unwrap();
    store.take();

    let first = commands
        .submit(deposit(account, 5, Some("k")))
        .await
        .unwrap();
    assert_eq!(first.outcome.status, 200);
    let calls = store.take();
    // The key's stream and the account's stream; the events and the answer in one append.
    assert_eq!(split(&calls), (2, 1), "{calls:?}");

    let again = commands
        .submit(deposit(account, 5, Some("k")))
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.outcome, first.outcome);
    let calls = store.take();
    // The answer, and the position of the event it reports.
    assert_eq!(split(&calls), (2, 0), "replay: {calls:?}");

    commands.submit(deposit(account, 5, None)).await.unwrap();
    let calls = store.take();
    assert_eq!(split(&calls), (1, 1), "without a key: {calls:?}");
}

/// A keyed deposit whose events were stored without an answer (as a crash between the two
/// appends of an earlier version could leave them) answers as it did then and appends no
/// second deposit.
#[tokio::test]
async fn a_keyed_deposit_stored_without_its_answer_is_not_run_again() {
    let (commands, store) = commands();
    let account = uuid::Uuid::now_v7();
    let id = account.to_string();
    let accounts = commands.accounts();
    accounts
        .execute(
            &id,
            AccountCommand::Open {
                owner: "Ada".to_owned(),
            },
        )
        .await
        .unwrap();
    let context = CommandContext::new().command_id(crate::idempotency::command_id("k"));
    let first = accounts
        .execute_with(&id, AccountCommand::Deposit { amount: 5 }, &context)
        .await
        .unwrap();
    store.take();

    let answer = commands
        .submit(deposit(account, 5, Some("k")))
        .await
        .unwrap();
    assert_eq!(answer.outcome.status, 200, "{:?}", answer.outcome);
    assert_eq!(answer.outcome.body["version"], json!(first.version));
    assert_eq!(
        answer.outcome.body["position"],
        json!(first.last_position.map(|p| p.0))
    );
    assert_eq!(answer.outcome.body["balance"], json!(5));
    assert_eq!(accounts.load(&id).await.unwrap().version, 2);

    let again = commands
        .submit(deposit(account, 5, Some("k")))
        .await
        .unwrap();
    assert_eq!((again.outcome, again.replayed), (answer.outcome, true));
}

/// Requests with one key racing each other and requests without a key on the same account:
/// the keyed deposit takes effect once, every request with the key gets the same answer, and
/// no other deposit is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_requests_with_one_key_take_effect_once() {
    for _ in 0..20 {
        let store = InMemoryStore::new();
        let commands = Arc::new(Commands::new(
            Arc::new(Repository::new(store.clone()).with_max_retries(20).unwrap()),
            Arc::new(Repository::new(store.clone())),
        ));
        let account = uuid::Uuid::now_v7();
        let id = account.to_string();
        commands
            .accounts()
            .execute(
                &id,
                AccountCommand::Open {
                    owner: "Ada".to_owned(),
                },
            )
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for i in 0..16 {
            let commands = commands.clone();
            let key = (i % 2 == 0).then_some("k");
            let amount = if key.is_some() { 5 } else { 1 };
            tasks.push(tokio::spawn(async move {
                let answer = commands
                    .submit(deposit(account, amount, key))
                    .await
                    .unwrap();
                (key.is_some(), answer.outcome)
            }));
        }
        let mut keyed = Vec::new();
        for task in tasks {
            let (with_key, outcome) = task.await.unwrap();
            assert_eq!(outcome.status, 200, "{outcome:?}");
            if with_key {
                keyed.push(outcome);
            }
        }
        assert!(keyed.windows(2).all(|w| w[0] == w[1]), "{keyed:?}");
        let loaded = commands.accounts().load(&id).await.unwrap();
        assert_eq!((loaded.state.balance, loaded.version), (5 + 8, 1 + 1 + 8));
    }
}
