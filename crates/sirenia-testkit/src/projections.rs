//! The projection conformance suite: what every store with transactional projections
//! promises, written once against the admin port ([`StoreAdmin`]) and a document read model,
//! and run by each durable store's test binary through
//! [`projection_conformance_tests!`](crate::projection_conformance_tests).
//!
//! The read model (`Sums`) keeps, per stream of category `acct`, the sum of the events'
//! `amount` and their count, as documents; the oracle is a fold over the whole log. The cases:
//! completeness under concurrent writers, a poison event parked then replayed, a poison event
//! faulting the projection then resumed, a rebuild, a blue/green switch, a run stopped in the
//! middle of a page, exactly-once effects under repeated SIGKILL of a projector process, and a
//! standby process taking over from a killed one.
//!
//! The two process cases run the test binary itself as the projector child: the macro's
//! `main` plays the child when [`PROJECTOR_ENV`] is set, opening the store at the location it
//! names with the harness's `reopen`. `SIRENIA_PROJECTION_KILLS` sets the number of kill rounds
//! (30 by default).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};
use sirenia_core::projection::{
    AtLeastOnce, FailurePolicy, Handler, HandlerError, OnFailure, ProjectionError,
    ProjectionOptions, ProjectionState, Projector, wait_for,
};
use sirenia_core::transactional::{DocumentProjection, Documents};
use sirenia_core::{
    EventFilter, EventStore, ExpectedVersion, NewEvent, Position, ReadAll, RecordedEvent,
    StoreAdmin, StreamId, StreamWrite,
};

/// Set (to the store's location) in a projector child process.
pub const PROJECTOR_ENV: &str = "SIRENIA_TEST_PROJECTOR";
/// Overrides the number of SIGKILL rounds.
pub const KILLS_ENV: &str = "SIRENIA_PROJECTION_KILLS";
const DEFAULT_KILLS: u32 = 30;
const NAME: &str = "sums";
const COLLECTION: &str = "sums";

/// The in-process cases: each takes a fresh, empty store.
pub const IN_PROCESS_CASES: [&str; 6] = [
    "read_model_equals_the_fold_under_concurrent_writers",
    "poison_event_parked_then_replayed",
    "poison_event_faults_then_resumes",
    "rebuild_empties_and_replays",
    "blue_green_switches_once_caught_up",
    "a_run_stopped_mid_page_can_run_again",
];

/// The cases with projector child processes.
pub const PROCESS_CASES: [&str; 2] = ["exactly_once_under_sigkill", "a_standby_process_takes_over"];

/// One stream's sum and count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Sum {
    total: i64,
    count: i64,
}

/// Per stream: the sum of `amount` (times `factor`) and the number of events. Fails on
/// `{"poison": true}` while `broken` is set; sleeps per event while `slow` is set.
#[derive(Clone)]
struct Sums {
    collection: String,
    broken: Arc<AtomicBool>,
    slow: Arc<AtomicBool>,
    factor: Arc<AtomicI64>,
}

impl Sums {
    fn new(collection: &str, factor: i64) -> Self {
        Sums {
            collection: collection.to_owned(),
            broken: Arc::default(),
            slow: Arc::default(),
            factor: Arc::new(AtomicI64::new(factor)),
        }
    }
}

impl Default for Sums {
    fn default() -> Self {
        Sums::new(COLLECTION, 1)
    }
}

impl DocumentProjection for Sums {
    fn collections(&self) -> Vec<String> {
        vec![self.collection.clone()]
    }

    async fn apply(
        &mut self,
        docs: &mut Documents<'_>,
        event: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        let data = event.json()?;
        if data["poison"] == true && self.broken.load(Ordering::SeqCst) {
            return Err("poisoned".into());
        }
        if self.slow.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let stream = event.stream_id.as_str();
        let mut sum: Sum = docs
            .get(&self.collection, stream)
            .await?
            .unwrap_or_default();
        sum.total += data["amount"].as_i64().unwrap_or(0) * self.factor.load(Ordering::SeqCst);
        sum.count += 1;
        docs.put(&self.collection, stream, &sum)?;
        Ok(())
    }
}

type Model = BTreeMap<String, (i64, i64)>;

/// The committed documents of `collection`, as a model.
async fn read_collection<S: StoreAdmin>(store: &S, collection: &str) -> Model {
    let mut model = Model::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .documents(collection, after.as_deref(), 500)
            .await
            .unwrap();
        let Some(last) = page.last() else {
            return model;
        };
        after = Some(last.id.clone());
        for doc in page {
            let sum: Sum = serde_json::from_value(doc.body).unwrap();
            model.insert(doc.id, (sum.total, sum.count));
        }
    }
}

async fn read_model<S: StoreAdmin>(store: &S) -> Model {
    read_collection(store, COLLECTION).await
}

async fn checkpoint<S: StoreAdmin>(store: &S) -> u64 {
    store.checkpoint(NAME).await.unwrap().next.0
}

/// The oracle: a fold over the whole log.
async fn fold<S: EventStore>(store: &S, filter: &EventFilter) -> Model {
    let events: Vec<RecordedEvent> = store
        .read_all(ReadAll::forward().filter(filter.clone()))
        .try_collect()
        .await
        .unwrap();
    let mut model = Model::new();
    for e in events {
        let entry = model.entry(e.stream_id.as_str().to_owned()).or_default();
        entry.0 += e.json().unwrap()["amount"].as_i64().unwrap_or(0);
        entry.1 += 1;
    }
    model
}

async fn append<S: EventStore>(store: &S, stream: &str, events: Vec<NewEvent>) {
    store
        .append(vec![StreamWrite::new(
            StreamId::new(stream).unwrap(),
            ExpectedVersion::Any,
            events,
        )])
        .await
        .unwrap();
}

fn amount(n: i64) -> NewEvent {
    NewEvent::json("Added", &serde_json::json!({ "amount": n }))
}

fn poison(n: i64) -> NewEvent {
    NewEvent::json("Added", &serde_json::json!({ "amount": n, "poison": true }))
}

fn quick(on_failure: OnFailure) -> ProjectionOptions {
    ProjectionOptions {
        filter: EventFilter::category("acct"),
        batch_size: 50,
        policy: FailurePolicy {
            retries: 2,
            first_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(4),
            on_failure,
        },
    }
}

/// A small deterministic generator (xorshift64*), so the suite needs no random crate.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `low..high`.
    fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low)
    }
}

/// Appends to `acct-*` and `other-*` streams from a task until `stop` is set; the number of
/// events appended.
fn start_appender<S: EventStore>(
    store: &S,
    stop: &Arc<AtomicBool>,
    seed: u64,
) -> tokio::task::JoinHandle<u64> {
    let (store, stop) = (store.clone(), stop.clone());
    tokio::spawn(async move {
        let mut rng = Rng::new(seed);
        let mut appended = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let n = rng.range(1, 6);
            let stream = if rng.range(0, 5) == 0 {
                "other-1".to_owned()
            } else {
                format!("acct-{}", rng.range(0, 8))
            };
            let events = (0..n)
                .map(|_| amount(i64::try_from(rng.range(0, 150)).unwrap() - 50))
                .collect();
            append(&store, &stream, events).await;
            appended += n;
            tokio::time::sleep(Duration::from_micros(rng.range(0, 500))).await;
        }
        appended
    })
}

/// The read model equals the fold of the log while four writers append, and the projection
/// reports itself live at the head.
pub async fn read_model_equals_the_fold_under_concurrent_writers<S: StoreAdmin>(store: S) {
    append(&store, "acct-0", vec![amount(5)]).await;
    let options = quick(OnFailure::Stop);
    let target = store.document_projection(NAME, Sums::default());
    let mut projector = Projector::new(NAME, store.clone(), target, options.clone()).unwrap();
    let mut status = projector.status();
    let runner = tokio::spawn(async move { projector.run(std::future::pending()).await });
    let mut writers = Vec::new();
    for w in 0..4i64 {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..60 {
                let stream = format!("acct-{}", (w + i) % 6);
                append(&store, &stream, vec![amount(i), amount(w)]).await;
                append(&store, "other-1", vec![amount(1)]).await;
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let head = store.head_position().await.unwrap();
    wait_for(&mut status, head, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        read_model(&store).await,
        fold(&store, &options.filter).await
    );
    assert_eq!(status.borrow().state, ProjectionState::Live);
    if store.capabilities().dense_positions {
        assert_eq!(status.borrow().lag_events, Some(0));
        assert_eq!(checkpoint(&store).await, head.0 + 1);
    } else {
        // With holes in the positions, the next page may start further on.
        assert!(checkpoint(&store).await > head.0);
    }
    assert!(
        store
            .wait_for_checkpoint(NAME, head, Duration::from_secs(1))
            .await
            .unwrap(),
        "the stored checkpoint is past the head"
    );
    runner.abort();
}

/// A poison event is retried, parked, and the rest goes on; replayed once fixed, it is applied
/// exactly once.
pub async fn poison_event_parked_then_replayed<S: StoreAdmin>(store: S) {
    append(&store, "acct-1", vec![amount(1), amount(2)]).await;
    append(&store, "acct-2", vec![poison(40)]).await;
    append(&store, "acct-1", vec![amount(4)]).await;
    let poisoned = store
        .read_all(ReadAll::forward())
        .try_collect::<Vec<_>>()
        .await
        .unwrap()[2]
        .position;
    let head = store.head_position().await.unwrap();
    let sums = Sums::default();
    sums.broken.store(true, Ordering::SeqCst);
    let target = store.document_projection(NAME, sums.clone());
    let mut projector =
        Projector::new(NAME, store.clone(), target, quick(OnFailure::Park)).unwrap();
    assert!(projector.catch_up(|_| {}).await.unwrap() > head);
    let model = read_model(&store).await;
    assert_eq!(model["acct-1"], (7, 3), "the rest went on");
    assert!(!model.contains_key("acct-2"));
    let parked = projector.parked().await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!((parked[0].position, parked[0].attempts), (poisoned, 3));
    assert_eq!(parked[0].error, "poisoned");
    assert_eq!(
        store.parked(NAME).await.unwrap(),
        parked,
        "the admin port agrees"
    );
    let listed = store.projections().await.unwrap();
    assert_eq!(
        listed.iter().find(|p| p.name == NAME).map(|p| p.parked),
        Some(1)
    );
    sums.broken.store(false, Ordering::SeqCst);
    assert_eq!(projector.replay_parked().await.unwrap(), 1);
    assert_eq!(projector.replay_parked().await.unwrap(), 0);
    assert_eq!(read_model(&store).await["acct-2"], (40, 1), "replayed once");
    assert_eq!(
        read_model(&store).await,
        fold(&store, &EventFilter::category("acct")).await
    );
    assert!(store.parked(NAME).await.unwrap().is_empty());
}

/// A poison event with the stop policy faults the projection at that event, with the fault
/// recorded; fixed and run again (a new instance), it resumes there and clears the fault.
pub async fn poison_event_faults_then_resumes<S: StoreAdmin>(store: S) {
    append(&store, "acct-1", vec![amount(1), poison(2), amount(4)]).await;
    let poisoned = store
        .read_all(ReadAll::forward())
        .try_collect::<Vec<_>>()
        .await
        .unwrap()[1]
        .position;
    let sums = Sums::default();
    sums.broken.store(true, Ordering::SeqCst);
    let target = store.document_projection(NAME, sums.clone());
    let mut projector =
        Projector::new(NAME, store.clone(), target, quick(OnFailure::Stop)).unwrap();
    match projector.catch_up(|_| {}).await {
        Err(ProjectionError::Faulted(f)) => assert_eq!(f.position, poisoned),
        other => panic!("expected a fault, got {other:?}"),
    }
    assert_eq!(
        read_model(&store).await["acct-1"],
        (1, 1),
        "nothing after it"
    );
    let stored = store.checkpoint(NAME).await.unwrap();
    assert_eq!(stored.next, poisoned);
    let fault = stored.fault.expect("the fault is recorded");
    assert_eq!(fault.position, poisoned);
    assert!(fault.error.contains("poisoned"));
    drop(projector);
    sums.broken.store(false, Ordering::SeqCst);
    let target = store.document_projection(NAME, sums.clone());
    let mut resumed = Projector::new(NAME, store.clone(), target, quick(OnFailure::Stop)).unwrap();
    resumed.catch_up(|_| {}).await.unwrap();
    assert_eq!(read_model(&store).await["acct-1"], (7, 3));
    assert_eq!(
        store.checkpoint(NAME).await.unwrap().fault,
        None,
        "the fault is cleared"
    );
}

/// A rebuild empties the read model and replays the whole log, reporting progress per page;
/// an at-least-once projection's checkpoints in the store resume where they stopped.
pub async fn rebuild_empties_and_replays<S: StoreAdmin>(store: S) {
    for i in 0..120 {
        append(&store, &format!("acct-{}", i % 7), vec![amount(i)]).await;
    }
    // Built first with a wrong factor, as by a buggy version of the handler.
    let sums = Sums::new(COLLECTION, 0);
    let target = store.document_projection(NAME, sums.clone());
    let mut projector =
        Projector::new(NAME, store.clone(), target, quick(OnFailure::Stop)).unwrap();
    projector.catch_up(|_| {}).await.unwrap();
    assert_ne!(
        read_model(&store).await,
        fold(&store, &EventFilter::all()).await
    );
    sums.factor.store(1, Ordering::SeqCst);
    let mut reports = Vec::new();
    projector
        .rebuild(|p| reports.push(p.handled))
        .await
        .unwrap();
    assert_eq!(reports.last(), Some(&120));
    assert!(reports.len() >= 3, "progress per page: {reports:?}");
    assert_eq!(
        read_model(&store).await,
        fold(&store, &EventFilter::all()).await
    );

    // At-least-once into a sink outside the store, checkpoints in the store.
    #[derive(Default)]
    struct Count(u64);
    impl Handler for Count {
        async fn handle(&mut self, _: &RecordedEvent) -> Result<(), HandlerError> {
            self.0 += 1;
            Ok(())
        }
    }
    let head = store.head_position().await.unwrap();
    let target = AtLeastOnce::new("count", Count::default(), store.checkpoints());
    let mut counter =
        Projector::new("count", store.clone(), target, ProjectionOptions::default()).unwrap();
    assert!(counter.catch_up(|_| {}).await.unwrap() > head);
    assert_eq!(counter.target_mut().handler_mut().0, 120);
    drop(counter);
    let target = AtLeastOnce::new("count", Count::default(), store.checkpoints());
    let mut again =
        Projector::new("count", store.clone(), target, ProjectionOptions::default()).unwrap();
    again.catch_up(|_| {}).await.unwrap();
    assert_eq!(
        again.target_mut().handler_mut().0,
        0,
        "resumed at its checkpoint"
    );
}

/// Version 2 of a read model is built beside version 1 while events keep coming; readers are
/// switched to it only once it has caught up, and it then follows the log like version 1.
pub async fn blue_green_switches_once_caught_up<S: StoreAdmin>(store: S) {
    for i in 0..300 {
        append(&store, &format!("acct-{}", i % 5), vec![amount(i)]).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let appender = start_appender(&store, &stop, 5);
    let version = |collection: &'static str, factor: i64, v: &'static str| {
        let store = store.clone();
        let handler = Sums::new(collection, factor);
        tokio::spawn(async move {
            let name = format!("sums@{v}");
            let target = store.document_projection(&name, handler);
            let mut projector =
                Projector::new(name, store.clone(), target, quick(OnFailure::Stop)).unwrap();
            let promote = store.set_active_version("sums", v);
            projector
                .run_blue_green(promote, std::future::pending())
                .await
        })
    };
    let until_active = |v: &'static str| {
        let store = store.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while store.active_version("sums").await.unwrap().as_deref() != Some(v) {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "version {v} never active"
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    };
    let v1 = version("sums_v1", 1, "1");
    until_active("1").await;
    let head_before_v2 = store.head_position().await.unwrap();
    let v2 = version("sums_v2", 10, "2");
    until_active("2").await;
    // At the switch, version 2 already holds at least every event recorded before it started:
    // readers never see it half-built.
    let at_switch: i64 = read_collection(&store, "sums_v2")
        .await
        .values()
        .map(|v| v.1)
        .sum();
    let events: Vec<RecordedEvent> = store
        .read_all(ReadAll::forward().filter(EventFilter::category("acct")))
        .try_collect()
        .await
        .unwrap();
    let before = events
        .iter()
        .filter(|e| e.position <= head_before_v2)
        .count();
    assert!(
        at_switch >= i64::try_from(before).unwrap(),
        "switched with {at_switch} of {before} events applied"
    );
    stop.store(true, Ordering::SeqCst);
    appender.await.unwrap();
    let head = store.head_position().await.unwrap();
    let expected = fold(&store, &EventFilter::category("acct")).await;
    let tenfold: Model = expected
        .iter()
        .map(|(k, (total, count))| (k.clone(), (total * 10, *count)))
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let t1 = read_collection(&store, "sums_v1").await;
        let t2 = read_collection(&store, "sums_v2").await;
        if t1 == expected && t2 == tenfold {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "versions did not converge at {head}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    v1.abort();
    v2.abort();
}

/// A run stopped while a page is being applied leaves the projector usable: running it again
/// resumes from the stored checkpoint and the read model is exact.
pub async fn a_run_stopped_mid_page_can_run_again<S: StoreAdmin>(store: S) {
    for i in 0..100 {
        append(&store, &format!("acct-{}", i % 4), vec![amount(i)]).await;
    }
    let head = store.head_position().await.unwrap();
    let sums = Sums::default();
    sums.slow.store(true, Ordering::SeqCst);
    let target = store.document_projection(NAME, sums);
    let mut projector =
        Projector::new(NAME, store.clone(), target, quick(OnFailure::Stop)).unwrap();
    projector
        .run(tokio::time::sleep(Duration::from_millis(30)))
        .await
        .unwrap();
    assert!(
        checkpoint(&store).await <= head.0,
        "the first run finished before it was stopped"
    );
    projector.catch_up(|_| {}).await.unwrap();
    assert_eq!(
        read_model(&store).await,
        fold(&store, &EventFilter::category("acct")).await
    );
}

// ---------------------------------------------------------------------------------------------
// Processes.

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The projector child: runs the projection on `store` (live) until killed; prints
/// `caught-up` once it is at the head.
pub fn projector_child<S: StoreAdmin>(store: S) {
    runtime().block_on(async {
        let target = store.document_projection(NAME, Sums::default());
        let options = ProjectionOptions {
            batch_size: 37,
            ..quick(OnFailure::Stop)
        };
        let mut projector = Projector::new(NAME, store.clone(), target, options).unwrap();
        projector.catch_up(|_| {}).await.unwrap();
        println!("caught-up");
        std::io::stdout().flush().unwrap();
        projector.run(std::future::pending()).await.unwrap();
    });
}

fn spawn_projector(location: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .env(PROJECTOR_ENV, location)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

fn read_line(child: &mut Child) -> String {
    let mut line = String::new();
    let stdout = child.stdout.as_mut().unwrap();
    let mut byte = [0u8; 1];
    while std::io::Read::read(stdout, &mut byte).unwrap() == 1 && byte[0] != b'\n' {
        line.push(char::from(byte[0]));
    }
    line
}

/// Waits until the stored checkpoint passes `head`.
async fn wait_checkpoint<S: StoreAdmin>(store: &S, head: Position) {
    assert!(
        store
            .wait_for_checkpoint(NAME, head, Duration::from_secs(120))
            .await
            .unwrap(),
        "the projection did not catch up"
    );
}

/// Projector processes killed at random moments while writers append: the checkpoint never
/// moves back, and a last run leaves the read model exactly the fold (nothing applied twice,
/// nothing lost).
pub fn exactly_once_under_sigkill<S: StoreAdmin>(store: S, location: &str) {
    let kills: u32 = std::env::var(KILLS_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_KILLS);
    let runtime = runtime();
    let stop = Arc::new(AtomicBool::new(false));
    let appender = {
        let _entered = runtime.enter();
        start_appender(&store, &stop, 7)
    };
    let mut rng = Rng::new(11);
    let mut last = 1u64;
    for _ in 0..kills {
        let mut child = spawn_projector(location);
        std::thread::sleep(Duration::from_millis(rng.range(5, 120)));
        child.kill().unwrap();
        child.wait().unwrap();
        let now = runtime.block_on(checkpoint(&store));
        assert!(
            now >= last,
            "the checkpoint moved back from {last} to {now}"
        );
        last = now;
    }
    stop.store(true, Ordering::SeqCst);
    let appended = runtime.block_on(appender).unwrap();
    assert!(appended > 0);
    let mut child = spawn_projector(location);
    assert_eq!(read_line(&mut child), "caught-up");
    let head = runtime.block_on(store.head_position()).unwrap();
    runtime.block_on(wait_checkpoint(&store, head));
    child.kill().unwrap();
    child.wait().unwrap();
    let expected = runtime.block_on(fold(&store, &EventFilter::category("acct")));
    assert_eq!(runtime.block_on(read_model(&store)), expected);
    assert!(runtime.block_on(checkpoint(&store)) >= last);
}

/// A standby projector process waits for the lock while the active one works, and takes over
/// when it is killed; nothing is applied twice or lost.
pub fn a_standby_process_takes_over<S: StoreAdmin>(store: S, location: &str) {
    let runtime = runtime();
    let stop = Arc::new(AtomicBool::new(false));
    let appender = {
        let _entered = runtime.enter();
        start_appender(&store, &stop, 3)
    };
    let mut active = spawn_projector(location);
    assert_eq!(read_line(&mut active), "caught-up");
    let mut standby = spawn_projector(location);
    std::thread::sleep(Duration::from_millis(200));
    active.kill().unwrap();
    active.wait().unwrap();
    assert_eq!(
        read_line(&mut standby),
        "caught-up",
        "the standby took over"
    );
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::SeqCst);
    runtime.block_on(appender).unwrap();
    let head = runtime.block_on(store.head_position()).unwrap();
    runtime.block_on(wait_checkpoint(&store, head));
    standby.kill().unwrap();
    standby.wait().unwrap();
    let expected = runtime.block_on(fold(&store, &EventFilter::category("acct")));
    assert_eq!(
        runtime.block_on(read_model(&store)),
        expected,
        "nothing applied twice or lost"
    );
}

/// Runs one in-process case by name on a fresh store from `fresh`, on a runtime of its own.
pub fn run_in_process<S, G, F, Fut>(case: &str, fresh: F)
where
    S: StoreAdmin,
    F: FnOnce() -> Fut,
    Fut: Future<Output = (S, String, G)>,
{
    runtime().block_on(async move {
        let (store, _location, guard) = fresh().await;
        match case {
            "read_model_equals_the_fold_under_concurrent_writers" => {
                read_model_equals_the_fold_under_concurrent_writers(store).await;
            }
            "poison_event_parked_then_replayed" => poison_event_parked_then_replayed(store).await,
            "poison_event_faults_then_resumes" => poison_event_faults_then_resumes(store).await,
            "rebuild_empties_and_replays" => rebuild_empties_and_replays(store).await,
            "blue_green_switches_once_caught_up" => {
                blue_green_switches_once_caught_up(store).await;
            }
            "a_run_stopped_mid_page_can_run_again" => {
                a_run_stopped_mid_page_can_run_again(store).await;
            }
            other => panic!("no in-process projection case {other}"),
        }
        drop(guard);
    });
}

/// Runs one process case by name on a fresh store from `fresh`.
pub fn run_with_processes<S, G, F, Fut>(case: &str, fresh: F)
where
    S: StoreAdmin,
    F: FnOnce() -> Fut,
    Fut: Future<Output = (S, String, G)>,
{
    let (store, location, guard) = runtime().block_on(fresh());
    match case {
        "exactly_once_under_sigkill" => exactly_once_under_sigkill(store, &location),
        "a_standby_process_takes_over" => a_standby_process_takes_over(store, &location),
        other => panic!("no projection case with processes {other}"),
    }
    drop(guard);
}

/// Plays the projector child when [`PROJECTOR_ENV`] is set; `true` if it did (the process
/// should then end).
pub fn child_main<S, F, Fut>(reopen: F) -> bool
where
    S: StoreAdmin,
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = S>,
{
    let Ok(location) = std::env::var(PROJECTOR_ENV) else {
        return false;
    };
    let store = runtime().block_on(reopen(location));
    projector_child(store);
    true
}

/// The test binary's `main` for a store with transactional projections: every case, each on
/// a fresh store, reported as `cargo test` does; exits non-zero if any failed. With
/// `with_processes = false` (a store that lives in one process), the process cases are
/// skipped and said so with the reason.
pub fn run_all<S, G, F, Fut, R, RFut>(fresh: F, reopen: R, with_processes: bool)
where
    S: StoreAdmin,
    F: Fn() -> Fut,
    Fut: Future<Output = (S, String, G)>,
    R: FnOnce(String) -> RFut,
    RFut: Future<Output = S>,
{
    if child_main(reopen) {
        return;
    }
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let selected = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f));
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    let mut report = |name: &str, outcome: std::thread::Result<()>| match outcome {
        Ok(()) => {
            passed += 1;
            println!("test {name} ... ok");
        }
        Err(_) => {
            failed += 1;
            println!("test {name} ... FAILED");
        }
    };
    for name in IN_PROCESS_CASES {
        if selected(name) {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run_in_process(name, &fresh);
            }));
            report(name, outcome);
        }
    }
    for name in PROCESS_CASES {
        if !selected(name) {
            continue;
        }
        if with_processes {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run_with_processes(name, &fresh);
            }));
            report(name, outcome);
        } else {
            skipped += 1;
            println!("test {name} ... skipped: the store lives in one process");
        }
    }
    println!("\ntest result: {passed} passed, {failed} failed, {skipped} skipped");
    if failed > 0 || passed == 0 {
        std::process::exit(1);
    }
}

/// A projection conformance test binary's `main` (with `harness = false` in its `[[test]]`):
/// `projection_conformance_tests!(fresh, reopen)` where `fresh()` returns a fresh store, its
/// location and a clean-up guard, and `reopen(location)` opens another handle on that store
/// for a projector child process. `projection_conformance_tests!(fresh, in_process_only)`
/// runs the in-process cases only (the process cases are reported as skipped, with why).
#[macro_export]
macro_rules! projection_conformance_tests {
    ($fresh:path, in_process_only) => {
        fn main() {
            // No projector child is ever started (`false`), so `reopen` is never called.
            $crate::projections::run_all($fresh, |_: String| async { $fresh().await.0 }, false);
        }
    };
    ($fresh:path, $reopen:path) => {
        fn main() {
            $crate::projections::run_all($fresh, $reopen, true);
        }
    };
}
