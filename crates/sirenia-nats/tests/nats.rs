//! Against the NATS JetStream server on 127.0.0.1:4222 (`SIRENIA_TEST_NATS_URL`); the tests fail
//! when it is unreachable. Each test uses streams of its own and deletes them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sirenia_core::StoreAdmin;
use sirenia_core::projection::{
    Checkpoint, CheckpointStore, FailedEvent, FailurePolicy, HandlerError, OnFailure,
    ProjectionOptions, Projector,
};
use sirenia_core::{
    Aggregate, CommandContext, DomainEvent, EventFilter, EventStore, ExpectedVersion, NewEvent,
    Position, Repository, StoreError, StreamId, StreamWrite,
};
use sirenia_nats::{EVENT_ID, Inbound, InboundHandler, IncomingEvent, OutboxOptions, POSITION};
use sirenia_sqlite::SqliteStore;

fn url() -> String {
    std::env::var("SIRENIA_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

async fn jetstream() -> async_nats::jetstream::Context {
    let client = async_nats::connect(url())
        .await
        .unwrap_or_else(|e| panic!("NATS at {} is needed by this test: {e}", url()));
    async_nats::jetstream::new(client)
}

fn unique(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::now_v7().simple())
}

async fn append(store: &SqliteStore, stream: &str, n: usize) {
    let events = (0..n)
        .map(|i| NewEvent::json("OrderLine", &serde_json::json!({ "line": i })))
        .collect();
    store
        .append(vec![StreamWrite::new(
            StreamId::new(stream).unwrap(),
            ExpectedVersion::Any,
            events,
        )])
        .await
        .unwrap();
}

/// Checkpoints whose every other save fails: the relay has published a page but cannot record
/// it, exactly as if it crashed between the two, and publishes the page again.
struct Flaky<C> {
    inner: C,
    saves: u32,
}

impl<C: CheckpointStore> CheckpointStore for Flaky<C> {
    async fn load(&mut self, name: &str) -> Result<Checkpoint, StoreError> {
        self.inner.load(name).await
    }
    async fn save(&mut self, name: &str, next: Position) -> Result<(), StoreError> {
        self.saves += 1;
        if !self.saves.is_multiple_of(2) {
            return Err(StoreError::Backend {
                message: "injected: the checkpoint was not saved".to_owned(),
                source: None,
            });
        }
        self.inner.save(name, next).await
    }
    async fn park(
        &mut self,
        name: &str,
        f: &FailedEvent,
        next: Position,
    ) -> Result<(), StoreError> {
        self.inner.park(name, f, next).await
    }
    async fn fault(&mut self, name: &str, f: &FailedEvent) -> Result<(), StoreError> {
        self.inner.fault(name, f).await
    }
    async fn parked(&mut self, name: &str) -> Result<Vec<FailedEvent>, StoreError> {
        self.inner.parked(name).await
    }
    async fn unpark(&mut self, name: &str, position: Position) -> Result<(), StoreError> {
        self.inner.unpark(name, position).await
    }
    async fn reset(&mut self, name: &str) -> Result<(), StoreError> {
        self.inner.reset(name).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_publishes_every_event_once_across_restarts() {
    let js = jetstream().await;
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("events.db"))
        .await
        .unwrap();
    let options = OutboxOptions {
        stream: unique("T_OUTBOX_"),
        prefix: unique("t"),
        duplicate_window: Duration::from_secs(120),
    };
    let projection = ProjectionOptions {
        filter: EventFilter::category("order"),
        batch_size: 25,
        policy: FailurePolicy {
            retries: 10,
            first_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            on_failure: OnFailure::Stop,
        },
    };
    let mut expected = 0usize;
    for round in 0..6u64 {
        for i in 0..10 {
            append(&store, &format!("order-{}", (round * 10 + i) % 7), 8).await;
            append(&store, "audit-1", 1).await;
            expected += 8;
        }
        // The relay runs for a moment and is stopped wherever it is: mid-page, after publishing
        // without storing its checkpoint, or between pages.
        let outbox = sirenia_nats::outbox(&url(), "outbox", store.checkpoints(), options.clone())
            .await
            .unwrap();
        let mut relay =
            Projector::new("outbox", store.clone(), outbox, projection.clone()).unwrap();
        let task = tokio::spawn(async move { relay.run(std::future::pending()).await });
        tokio::time::sleep(Duration::from_millis(3 + round * 7)).await;
        task.abort();
        let _ = task.await;
    }
    let checkpoints = Flaky {
        inner: store.checkpoints(),
        saves: 0,
    };
    let outbox = sirenia_nats::outbox(&url(), "outbox", checkpoints, options.clone())
        .await
        .unwrap();
    let mut relay = Projector::new("outbox", store.clone(), outbox, projection).unwrap();
    relay.catch_up(|_| {}).await.unwrap();

    let messages = common::all_messages(&js, &options.stream).await;
    let ids: BTreeSet<String> = messages
        .iter()
        .map(|m| {
            m.headers
                .as_ref()
                .unwrap()
                .get(EVENT_ID)
                .unwrap()
                .as_str()
                .to_owned()
        })
        .collect();
    assert_eq!(messages.len(), expected, "published more or less than once");
    assert_eq!(ids.len(), expected);
    let positions: Vec<u64> = messages
        .iter()
        .map(|m| {
            m.headers
                .as_ref()
                .unwrap()
                .get(POSITION)
                .unwrap()
                .as_str()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "out of log order"
    );
    let subject = messages[0].subject.to_string();
    assert_eq!(subject, format!("{}.order.OrderLine", options.prefix));
    let headers = messages[0].headers.as_ref().unwrap();
    for name in [
        "Sirenia-Stream",
        "Sirenia-Revision",
        "Sirenia-Event-Type",
        "Sirenia-Recorded-At",
    ] {
        assert!(headers.get(name).is_some(), "missing header {name}");
    }
    js.delete_stream(&options.stream).await.unwrap();
}

/// A sum, changed by commands carrying an inbound event's command id.
#[derive(Default)]
struct Sum(u64);

#[derive(Clone, Debug)]
struct Add(u64);

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum SumEvent {
    Added(u64),
}

impl DomainEvent for SumEvent {}

impl Aggregate for Sum {
    const CATEGORY: &'static str = "sum";
    type Command = Add;
    type Event = SumEvent;
    type Error = std::convert::Infallible;

    fn apply(&mut self, SumEvent::Added(n): &SumEvent) {
        self.0 += n;
    }

    fn handle(&self, Add(n): Add) -> Result<Vec<SumEvent>, std::convert::Infallible> {
        Ok(vec![SumEvent::Added(n)])
    }
}

/// Adds each event's amount once; fails the first time it sees every fifth event.
struct Adder {
    sums: Arc<Repository<Sum, SqliteStore>>,
    failed_once: BTreeSet<uuid::Uuid>,
}

impl InboundHandler for Adder {
    async fn handle(&mut self, event: &IncomingEvent) -> Result<(), HandlerError> {
        let amount: u64 = serde_json::from_slice::<serde_json::Value>(&event.payload)?["amount"]
            .as_u64()
            .ok_or("no amount")?;
        if amount.is_multiple_of(5) && self.failed_once.insert(event.event_id) {
            return Err("a transient failure".into());
        }
        self.sums
            .execute_with(
                "total",
                Add(amount),
                &CommandContext::new().command_id(event.command_id()),
            )
            .await?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbound_consumer_applies_each_event_once() {
    let js = jetstream().await;
    let stream = unique("T_INBOUND_");
    let prefix = unique("in");
    js.create_stream(async_nats::jetstream::stream::Config {
        name: stream.clone(),
        subjects: vec![format!("{prefix}.>")],
        ..Default::default()
    })
    .await
    .unwrap();
    // 40 integration events; each published twice, as two relays (or a retry with another
    // message id) would: same event id, different message ids.
    let mut expected = 0u64;
    for amount in 1..=40u64 {
        let event_id = uuid::Uuid::now_v7().to_string();
        for copy in 0..2 {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(EVENT_ID, event_id.as_str());
            headers.insert("Nats-Msg-Id", format!("{event_id}-{copy}").as_str());
            let payload = serde_json::to_vec(&serde_json::json!({ "amount": amount })).unwrap();
            js.publish_with_headers(format!("{prefix}.payments.Paid"), headers, payload.into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
        expected += amount;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("events.db"))
        .await
        .unwrap();
    let sums = Arc::new(Repository::<Sum, _>::new(store.clone()));
    let mut adder = Adder {
        sums: sums.clone(),
        failed_once: BTreeSet::new(),
    };
    // A first consumer stops early (a restart); the durable consumer resumes where it was.
    let inbound = Inbound::connect(&url(), &stream, "adder", "", Duration::from_secs(2))
        .await
        .unwrap();
    inbound
        .run(&mut adder, tokio::time::sleep(Duration::from_millis(100)))
        .await
        .unwrap();
    drop(inbound);
    let inbound = Inbound::connect(&url(), &stream, "adder", "", Duration::from_secs(2))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        inbound
            .run(&mut adder, tokio::time::sleep(Duration::from_millis(300)))
            .await
            .unwrap();
        if sums.load("total").await.unwrap().state.0 >= expected {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the consumer did not finish"
        );
    }
    // Settle, then check nothing was applied twice.
    inbound
        .run(&mut adder, tokio::time::sleep(Duration::from_millis(500)))
        .await
        .unwrap();
    let loaded = sums.load("total").await.unwrap();
    assert_eq!(loaded.state.0, expected);
    assert_eq!(loaded.version, 40, "one event per integration event");
    js.delete_stream(&stream).await.unwrap();
}
