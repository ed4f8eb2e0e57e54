//! Store round trips of the service's operations: [`Counting`] wraps a store and records every
//! call into the `EventStore` port, and the tests run operations through [`Commands`] (the
//! path every POST takes after its extractors) and check how many calls each made.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use serde_json::json;
use sirenia::store::Direction;
use sirenia::{
    AllPage, AppendResult, EventFilter, EventId, EventStore, InMemoryStore, Position,
    RecordedEvent, Repository, StoreError, StreamChange, StreamId, StreamInfo, StreamWrite,
};

use crate::account::Requested;
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

impl<S: EventStore> EventStore for Counting<S> {
    async fn append(&self, writes: Vec<StreamWrite>) -> Result<AppendResult, StoreError> {
        self.note("append");
        self.inner.append(writes).await
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<Option<u64>, StoreError> {
        self.note("stream_version");
        self.inner.stream_version(stream).await
    }

    async fn stream_info(&self, stream: &StreamId) -> Result<Option<StreamInfo>, StoreError> {
        self.note("stream_info");
        self.inner.stream_info(stream).await
    }

    async fn change_stream(
        &self,
        stream: &StreamId,
        change: StreamChange,
    ) -> Result<Option<StreamInfo>, StoreError> {
        self.note("change_stream");
        self.inner.change_stream(stream, change).await
    }

    async fn event_by_id(&self, id: EventId) -> Result<Option<RecordedEvent>, StoreError> {
        self.note("event_by_id");
        self.inner.event_by_id(id).await
    }

    async fn head_position(&self) -> Result<Position, StoreError> {
        self.note("head_position");
        self.inner.head_position().await
    }

    async fn read_stream_page(
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

    async fn read_all_page(
        &self,
        from: Position,
        direction: Direction,
        filter: &EventFilter,
        max: usize,
    ) -> Result<AllPage, StoreError> {
        self.note("read_all_page");
        self.inner.read_all_page(from, direction, filter, max).await
    }

    async fn wait_for_events(&self, from: Position) -> Result<(), StoreError> {
        self.note("wait_for_events");
        self.inner.wait_for_events(from).await
    }

    fn dense_positions(&self) -> bool {
        self.inner.dense_positions()
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
async fn a_keyed_deposit_makes_three_reads_and_two_appends() {
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
    assert_eq!(split(&calls), (3, 2), "{calls:?}");

    let again = commands
        .submit(deposit(account, 5, Some("k")))
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.outcome, first.outcome);
    let calls = store.take();
    assert_eq!(split(&calls), (1, 0), "replay: {calls:?}");

    commands.submit(deposit(account, 5, None)).await.unwrap();
    let calls = store.take();
    assert_eq!(split(&calls), (1, 1), "without a key: {calls:?}");
}
