//! The projector on the in-memory store: completeness under concurrent writers, poison events
//! (stop, resume, park, replay), rebuild with progress, and read-your-writes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::TryStreamExt;
use sirenia_core::projection::{
    AtLeastOnce, FailurePolicy, Handler, HandlerError, MemoryCheckpoints, OnFailure,
    ProjectionError, ProjectionOptions, ProjectionState, Projector, wait_for,
};
use sirenia_core::{
    EventFilter, EventStore, ExpectedVersion, InMemoryStore, NewEvent, Position, ReadAll,
    RecordedEvent, StreamId, StreamWrite,
};

/// Sums `amount` per stream; fails on `{"poison": true}` while `broken` is set.
#[derive(Clone, Default)]
struct Sums {
    sums: Arc<Mutex<BTreeMap<String, i64>>>,
    applied: Arc<Mutex<Vec<Position>>>,
    broken: Arc<AtomicBool>,
}

impl Handler for Sums {
    async fn handle(&mut self, event: &RecordedEvent) -> Result<(), HandlerError> {
        let data = event.json()?;
        if data["poison"] == true && self.broken.load(Ordering::SeqCst) {
            return Err("poisoned".into());
        }
        *self
            .sums
            .lock()
            .unwrap()
            .entry(event.stream_id.as_str().to_owned())
            .or_default() += data["amount"].as_i64().unwrap_or(0);
        self.applied.lock().unwrap().push(event.position);
        Ok(())
    }
}

fn amount(n: i64) -> NewEvent {
    NewEvent::json("Added", &serde_json::json!({ "amount": n }))
}

async fn append(store: &InMemoryStore, stream: &str, events: Vec<NewEvent>) {
    store
        .append(vec![StreamWrite::new(
            StreamId::new(stream).unwrap(),
            ExpectedVersion::Any,
            events,
        )])
        .await
        .unwrap();
}

/// The oracle: a fold over the whole log.
async fn fold(store: &InMemoryStore, filter: &EventFilter) -> BTreeMap<String, i64> {
    let events: Vec<RecordedEvent> = store
        .read_all(ReadAll::forward().filter(filter.clone()))
        .try_collect()
        .await
        .unwrap();
    let mut sums = BTreeMap::new();
    for e in events {
        *sums.entry(e.stream_id.as_str().to_owned()).or_default() +=
            e.json().unwrap()["amount"].as_i64().unwrap_or(0);
    }
    sums
}

fn quick_policy(on_failure: OnFailure) -> FailurePolicy {
    FailurePolicy {
        retries: 2,
        first_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(4),
        on_failure,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_projection_equals_the_fold_under_concurrent_writers() {
    let store = InMemoryStore::new();
    append(&store, "acct-0", vec![amount(1), amount(2)]).await;
    let sums = Sums::default();
    let options = ProjectionOptions {
        filter: EventFilter::category("acct"),
        batch_size: 7,
        ..ProjectionOptions::default()
    };
    let target = AtLeastOnce::new("sums", sums.clone(), MemoryCheckpoints::new());
    let mut projector = Projector::new("sums", store.clone(), target, options.clone()).unwrap();
    let mut status = projector.status();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let runner = tokio::spawn(async move {
        projector
            .run(async {
                let _ = stop_rx.await;
            })
            .await
    });
    let mut writers = Vec::new();
    for w in 0..4 {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..50 {
                let stream = format!("acct-{}", (w * 7 + i) % 5);
                append(&store, &stream, vec![amount(i), amount(-1)]).await;
                // Unrelated events the filter skips.
                append(&store, "other-1", vec![amount(1000)]).await;
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let head = store.head_position().await.unwrap();
    wait_for(&mut status, head, Duration::from_secs(30))
        .await
        .unwrap();
    let expected = fold(&store, &options.filter).await;
    assert_eq!(*sums.sums.lock().unwrap(), expected);
    let applied = sums.applied.lock().unwrap().clone();
    assert!(
        applied.windows(2).all(|w| w[0] < w[1]),
        "applied out of order or twice"
    );
    assert_eq!(status.borrow().state, ProjectionState::Live);
    let _ = stop_tx.send(());
    runner.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_poison_event_stops_the_projection_until_fixed_then_resumes() {
    let store = InMemoryStore::new();
    append(&store, "acct-1", vec![amount(1), amount(2)]).await;
    append(
        &store,
        "acct-1",
        vec![NewEvent::json(
            "Added",
            &serde_json::json!({ "poison": true, "amount": 100 }),
        )],
    )
    .await;
    append(&store, "acct-1", vec![amount(4)]).await;
    let sums = Sums::default();
    sums.broken.store(true, Ordering::SeqCst);
    let checkpoints = MemoryCheckpoints::new();
    let options = ProjectionOptions {
        policy: quick_policy(OnFailure::Stop),
        ..ProjectionOptions::default()
    };
    let target = AtLeastOnce::new("p", sums.clone(), checkpoints.clone());
    let mut projector = Projector::new("p", store.clone(), target, options.clone()).unwrap();
    let status = projector.status();
    match projector.run(std::future::pending()).await {
        Err(ProjectionError::Faulted(failed)) => {
            assert_eq!(failed.position, Position(3));
            assert_eq!(failed.attempts, 3, "the first try and two retries");
            assert_eq!(failed.error, "poisoned");
        }
        other => panic!("expected a fault, got {other:?}"),
    }
    assert_eq!(status.borrow().state, ProjectionState::Faulted);
    assert_eq!(status.borrow().next, Position(3));
    assert!(status.borrow().fault.is_some());
    // Nothing after the poison event was applied; everything before it was.
    assert_eq!(
        *sums.applied.lock().unwrap(),
        vec![Position(1), Position(2)]
    );

    // A new run (say, after a restart) is still stuck on it; once fixed, it resumes there.
    let target = AtLeastOnce::new("p", sums.clone(), checkpoints.clone());
    let mut again = Projector::new("p", store.clone(), target, options.clone()).unwrap();
    assert!(matches!(
        again.catch_up(|_| {}).await,
        Err(ProjectionError::Faulted(_))
    ));
    sums.broken.store(false, Ordering::SeqCst);
    let target = AtLeastOnce::new("p", sums.clone(), checkpoints);
    let mut fixed = Projector::new("p", store.clone(), target, options).unwrap();
    assert_eq!(fixed.catch_up(|_| {}).await.unwrap(), Position(5));
    assert_eq!(
        *sums.applied.lock().unwrap(),
        vec![Position(1), Position(2), Position(3), Position(4)]
    );
    assert_eq!(sums.sums.lock().unwrap()["acct-1"], 107);
}

#[tokio::test]
async fn a_parked_event_is_recorded_the_rest_go_on_and_a_replay_applies_it_once() {
    let store = InMemoryStore::new();
    append(&store, "acct-1", vec![amount(1)]).await;
    append(
        &store,
        "acct-2",
        vec![NewEvent::json(
            "Added",
            &serde_json::json!({ "poison": true, "amount": 50 }),
        )],
    )
    .await;
    append(&store, "acct-1", vec![amount(2), amount(3)]).await;
    let sums = Sums::default();
    sums.broken.store(true, Ordering::SeqCst);
    let options = ProjectionOptions {
        policy: quick_policy(OnFailure::Park),
        ..ProjectionOptions::default()
    };
    let target = AtLeastOnce::new("p", sums.clone(), MemoryCheckpoints::new());
    let mut projector = Projector::new("p", store.clone(), target, options).unwrap();
    assert_eq!(projector.catch_up(|_| {}).await.unwrap(), Position(5));
    assert_eq!(
        *sums.applied.lock().unwrap(),
        vec![Position(1), Position(3), Position(4)]
    );
    let parked = projector.parked().await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(
        (
            parked[0].position,
            parked[0].stream.as_str(),
            parked[0].attempts
        ),
        (Position(2), "acct-2", 3)
    );
    // Still broken: the replay fails and keeps it parked.
    assert!(matches!(
        projector.replay_parked().await,
        Err(ProjectionError::ReplayFailed { .. })
    ));
    assert_eq!(projector.parked().await.unwrap().len(), 1);
    sums.broken.store(false, Ordering::SeqCst);
    assert_eq!(projector.replay_parked().await.unwrap(), 1);
    assert_eq!(
        projector.replay_parked().await.unwrap(),
        0,
        "replayed once only"
    );
    assert!(projector.parked().await.unwrap().is_empty());
    assert_eq!(sums.sums.lock().unwrap()["acct-2"], 50);
    assert_eq!(sums.applied.lock().unwrap().len(), 4);
}

#[tokio::test]
async fn rebuild_replays_from_the_start_with_progress() {
    let store = InMemoryStore::new();
    for i in 0..25 {
        append(&store, &format!("acct-{}", i % 3), vec![amount(i)]).await;
    }
    let sums = Sums::default();
    let options = ProjectionOptions {
        batch_size: 10,
        ..ProjectionOptions::default()
    };
    let target = AtLeastOnce::new("p", sums.clone(), MemoryCheckpoints::new());
    let mut projector = Projector::new("p", store.clone(), target, options).unwrap();
    projector.catch_up(|_| {}).await.unwrap();
    // An at-least-once sink forgets its own state on a rebuild; here, the test does.
    sums.sums.lock().unwrap().clear();
    let mut reports = Vec::new();
    let next = projector.rebuild(|p| reports.push(p)).await.unwrap();
    assert_eq!(next, Position(26));
    assert_eq!(reports.len(), 3);
    assert_eq!(
        reports.iter().map(|p| p.handled).collect::<Vec<_>>(),
        vec![10, 20, 25]
    );
    let expected = fold(&store, &EventFilter::all()).await;
    assert_eq!(*sums.sums.lock().unwrap(), expected);
}

#[tokio::test]
async fn wait_for_times_out_on_a_position_not_yet_processed() {
    let store = InMemoryStore::new();
    let target = AtLeastOnce::new("p", Sums::default(), MemoryCheckpoints::new());
    let projector = Projector::new("p", store, target, ProjectionOptions::default()).unwrap();
    let mut status = projector.status();
    assert_eq!(
        wait_for(&mut status, Position(1), Duration::from_millis(10)).await,
        Err(sirenia_core::projection::WaitError::Timeout(Position(1)))
    );
    assert!(
        Projector::new(
            "",
            InMemoryStore::new(),
            AtLeastOnce::new("", Sums::default(), MemoryCheckpoints::new()),
            ProjectionOptions::default()
        )
        .is_err()
    );
}
