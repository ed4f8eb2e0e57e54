//! Projections on PostgreSQL: a read model in the store's database, exactly once under
//! SIGKILL, complete under concurrent writers, poison events parked or faulted and replayed,
//! rebuilds, and a standby process taking over from a killed one. Each test works in a schema
//! of its own, dropped afterwards; PostgreSQL must be reachable.
//!
//! This binary runs its own children (a projector process): started with
//! `SIRENIA_TEST_PROJECTOR` set (to a schema name), it plays that child.
//! `SIRENIA_PROJECTION_KILLS` sets the number of kill rounds (30 by default).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use std::collections::BTreeMap;
use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::TryStreamExt;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sirenia_core::projection::{
    AtLeastOnce, FailurePolicy, Handler, HandlerError, OnFailure, ProjectionError,
    ProjectionOptions, ProjectionState, Projector, wait_for,
};
use sirenia_core::{
    EventFilter, EventStore, ExpectedVersion, NewEvent, Position, ReadAll, RecordedEvent, StreamId,
    StreamWrite,
};
use sirenia_postgres::{PostgresOptions, PostgresProjection, PostgresStore};
use tokio_postgres::Transaction;

mod common;

const PROJECTOR: &str = "SIRENIA_TEST_PROJECTOR";
const KILLS: &str = "SIRENIA_PROJECTION_KILLS";
const DEFAULT_KILLS: u32 = 30;
const NAME: &str = "sums";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn main() {
    if let Ok(schema) = std::env::var(PROJECTOR) {
        return projector_child(&schema);
    }
    let tests: [(&str, fn()); 7] = [
        (
            "read_model_equals_the_fold_under_concurrent_writers",
            completeness,
        ),
        ("poison_event_parked_then_replayed", poison_park),
        ("poison_event_faults_then_resumes", poison_stop),
        ("rebuild_empties_and_replays", rebuild),
        ("blue_green_switches_once_caught_up", blue_green),
        ("exactly_once_under_sigkill", sigkill_rounds),
        ("a_standby_process_takes_over", failover),
    ];
    let (mut passed, mut failed) = (0, 0);
    for (name, test) in tests {
        match std::panic::catch_unwind(AssertUnwindSafe(test)) {
            Ok(()) => {
                passed += 1;
                println!("test {name} ... ok");
            }
            Err(_) => {
                failed += 1;
                println!("test {name} ... FAILED");
            }
        }
    }
    println!("\ntest result: {passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}

/// Per stream: the sum of `amount` and the number of events, in table `<schema>.sums`. Fails
/// on `{"poison": true}` while `broken` is set.
#[derive(Clone, Default)]
struct Sums {
    schema: String,
    broken: Arc<AtomicBool>,
}

impl Sums {
    fn new(schema: &str) -> Self {
        Sums {
            schema: schema.to_owned(),
            broken: Arc::default(),
        }
    }
}

impl PostgresProjection for Sums {
    async fn setup(&mut self, tx: &Transaction<'_>) -> Result<(), HandlerError> {
        tx.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS \"{}\".sums (
                stream text PRIMARY KEY, total bigint NOT NULL, count bigint NOT NULL)",
            self.schema
        ))
        .await?;
        Ok(())
    }

    async fn apply(
        &mut self,
        tx: &Transaction<'_>,
        event: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        let data = event.json()?;
        if data["poison"] == true && self.broken.load(Ordering::SeqCst) {
            return Err("poisoned".into());
        }
        let sql = format!(
            "INSERT INTO \"{}\".sums (stream, total, count) VALUES ($1, $2, 1)
             ON CONFLICT (stream) DO UPDATE
             SET total = sums.total + excluded.total, count = sums.count + 1",
            self.schema
        );
        tx.execute(
            &sql,
            &[
                &event.stream_id.as_str(),
                &data["amount"].as_i64().unwrap_or(0),
            ],
        )
        .await?;
        Ok(())
    }

    async fn reset(&mut self, tx: &Transaction<'_>) -> Result<(), HandlerError> {
        tx.execute(&format!("DELETE FROM \"{}\".sums", self.schema), &[])
            .await?;
        Ok(())
    }
}

type Model = BTreeMap<String, (i64, i64)>;

async fn read_model(schema: &str) -> Model {
    let client = connect().await;
    client
        .query(
            &format!("SELECT stream, total, count FROM \"{schema}\".sums"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect()
}

async fn connect() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&common::url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

async fn checkpoint(schema: &str) -> u64 {
    connect()
        .await
        .query_opt(
            &format!("SELECT next_position FROM \"{schema}\".projections WHERE name = $1"),
            &[&NAME],
        )
        .await
        .unwrap()
        .map_or(1, |r| u64::try_from(r.get::<_, i64>(0)).unwrap())
}

async fn open(schema: &str) -> PostgresStore {
    let options = PostgresOptions {
        schema: schema.to_owned(),
        pool_size: 4,
        ..PostgresOptions::default()
    };
    PostgresStore::connect_with(&common::url(), options)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL at {} is needed by this test: {e}",
                common::url()
            )
        })
}

/// A fresh schema, dropped when the guard goes.
fn fresh() -> common::SchemaGuard {
    common::SchemaGuard(sirenia_testkit::postgres::fresh_schema("sirenia_p"))
}

/// The oracle: a fold over the whole log.
async fn fold(store: &PostgresStore, filter: &EventFilter) -> Model {
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

/// The position of the `n`th event of the log (from 0).
async fn nth_position(store: &PostgresStore, n: usize) -> Position {
    let events: Vec<RecordedEvent> = store
        .read_all(ReadAll::forward())
        .try_collect()
        .await
        .unwrap();
    events[n].position
}

async fn append(store: &PostgresStore, stream: &str, events: Vec<NewEvent>) {
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

fn completeness() {
    runtime().block_on(async {
        let guard = fresh();
        let schema = guard.0.clone();
        let store = open(&schema).await;
        append(&store, "acct-0", vec![amount(5)]).await;
        let options = quick(OnFailure::Stop);
        let target = store.projection(NAME, Sums::new(&schema));
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
            read_model(&schema).await,
            fold(&store, &options.filter).await
        );
        assert_eq!(status.borrow().state, ProjectionState::Live);
        // The checkpoint is past the head (PostgreSQL's next page may start further on).
        assert!(checkpoint(&schema).await > head.0);
        runner.abort();
    });
}

fn poison_park() {
    runtime().block_on(async {
        let guard = fresh();
        let schema = guard.0.clone();
        let store = open(&schema).await;
        append(&store, "acct-1", vec![amount(1), amount(2)]).await;
        append(&store, "acct-2", vec![poison(40)]).await;
        append(&store, "acct-1", vec![amount(4)]).await;
        let sums = Sums::new(&schema);
        sums.broken.store(true, Ordering::SeqCst);
        let target = store.projection(NAME, sums.clone());
        let mut projector =
            Projector::new(NAME, store.clone(), target, quick(OnFailure::Park)).unwrap();
        let head = store.head_position().await.unwrap();
        assert!(projector.catch_up(|_| {}).await.unwrap() > head);
        let model = read_model(&schema).await;
        assert_eq!(model["acct-1"], (7, 3), "the rest went on");
        assert!(!model.contains_key("acct-2"));
        let parked = projector.parked().await.unwrap();
        assert_eq!(parked.len(), 1);
        let poisoned = nth_position(&store, 2).await;
        assert_eq!((parked[0].position, parked[0].attempts), (poisoned, 3));
        assert_eq!(parked[0].error, "poisoned");
        sums.broken.store(false, Ordering::SeqCst);
        assert_eq!(projector.replay_parked().await.unwrap(), 1);
        assert_eq!(projector.replay_parked().await.unwrap(), 0);
        assert_eq!(
            read_model(&schema).await["acct-2"],
            (40, 1),
            "replayed once"
        );
        assert_eq!(
            read_model(&schema).await,
            fold(&store, &EventFilter::category("acct")).await
        );
    });
}

fn poison_stop() {
    runtime().block_on(async {
        let guard = fresh();
        let schema = guard.0.clone();
        let store = open(&schema).await;
        append(&store, "acct-1", vec![amount(1), poison(2), amount(4)]).await;
        let sums = Sums::new(&schema);
        sums.broken.store(true, Ordering::SeqCst);
        let target = store.projection(NAME, sums.clone());
        let mut projector =
            Projector::new(NAME, store.clone(), target, quick(OnFailure::Stop)).unwrap();
        match projector.catch_up(|_| {}).await {
            Err(ProjectionError::Faulted(f)) => {
                assert_eq!(f.position, nth_position(&store, 1).await);
            }
            other => panic!("expected a fault, got {other:?}"),
        }
        assert_eq!(
            read_model(&schema).await["acct-1"],
            (1, 1),
            "nothing after it"
        );
        assert_eq!(checkpoint(&schema).await, nth_position(&store, 1).await.0);
        // The fault is recorded.
        let fault_sql = format!("SELECT fault::text FROM \"{schema}\".projections WHERE name = $1");
        let client = connect().await;
        let fault: String = client.query_one(&fault_sql, &[&NAME]).await.unwrap().get(0);
        assert!(fault.contains("poisoned"));
        drop(projector);
        // Fixed and resumed (a new instance, as after a restart).
        sums.broken.store(false, Ordering::SeqCst);
        let target = store.projection(NAME, sums.clone());
        let mut resumed =
            Projector::new(NAME, store.clone(), target, quick(OnFailure::Stop)).unwrap();
        resumed.catch_up(|_| {}).await.unwrap();
        assert_eq!(read_model(&schema).await["acct-1"], (7, 3));
        let fault: Option<String> = client.query_one(&fault_sql, &[&NAME]).await.unwrap().get(0);
        assert_eq!(fault, None, "the fault is cleared");
    });
}

/// The switch to a new version happens only once it has caught up.
fn blue_green() {
    runtime().block_on(async {
        let guard = fresh();
        let schema = guard.0.clone();
        let store = open(&schema).await;
        for i in 0..200 {
            append(&store, &format!("acct-{}", i % 5), vec![amount(i)]).await;
        }
        assert_eq!(store.active_version(NAME).await.unwrap(), None);
        store.set_active_version(NAME, "1").await.unwrap();
        let target = store.projection(NAME, Sums::new(&schema));
        let mut projector =
            Projector::new(NAME, store.clone(), target, quick(OnFailure::Stop)).unwrap();
        let (probe_store, probe_schema) = (store.clone(), schema.clone());
        let promote = async move {
            // Runs at the switch: everything before it is in the new version's table.
            let model = read_model(&probe_schema).await;
            let count: i64 = model.values().map(|v| v.1).sum();
            assert_eq!(count, 200, "switched before the new version caught up");
            probe_store.set_active_version(NAME, "2").await
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let runner = tokio::spawn(async move {
            projector
                .run_blue_green(promote, async {
                    let _ = stopped.await;
                })
                .await
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while store.active_version(NAME).await.unwrap().as_deref() != Some("2") {
            assert!(std::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = stop.send(());
        runner.await.unwrap().unwrap();
        assert_eq!(
            read_model(&schema).await,
            fold(&store, &EventFilter::category("acct")).await
        );
    });
}

fn rebuild() {
    runtime().block_on(async {
        let guard = fresh();
        let schema = guard.0.clone();
        let store = open(&schema).await;
        for i in 0..120 {
            append(&store, &format!("acct-{}", i % 7), vec![amount(i)]).await;
        }
        let target = store.projection(NAME, Sums::new(&schema));
        let mut projector =
            Projector::new(NAME, store.clone(), target, quick(OnFailure::Stop)).unwrap();
        projector.catch_up(|_| {}).await.unwrap();
        // Damage the read model, then rebuild it.
        connect()
            .await
            .execute(&format!("UPDATE \"{schema}\".sums SET total = -1"), &[])
            .await
            .unwrap();
        let mut reports = Vec::new();
        projector
            .rebuild(|p| reports.push(p.handled))
            .await
            .unwrap();
        assert_eq!(reports.last(), Some(&120));
        assert!(reports.len() >= 3, "progress per page: {reports:?}");
        assert_eq!(
            read_model(&schema).await,
            fold(&store, &EventFilter::all()).await
        );

        // At-least-once into a sink outside the file, checkpoints in the file.
        #[derive(Default)]
        struct Count(u64);
        impl Handler for Count {
            async fn handle(&mut self, _: &RecordedEvent) -> Result<(), HandlerError> {
                self.0 += 1;
                Ok(())
            }
        }
        let target = AtLeastOnce::new("count", Count::default(), store.checkpoints());
        let mut counter =
            Projector::new("count", store.clone(), target, ProjectionOptions::default()).unwrap();
        let head = store.head_position().await.unwrap();
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
    });
}

// ---------------------------------------------------------------------------------------------
// Processes.

/// Runs the projection in `schema` (live) until killed; prints `caught-up` once it is at the
/// head.
fn projector_child(schema: &str) {
    runtime().block_on(async {
        let store = open(schema).await;
        let target = store.projection(NAME, Sums::new(schema));
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

fn spawn_projector(schema: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .env(PROJECTOR, schema)
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
        line.push(byte[0] as char);
    }
    line
}

/// Appends to `acct-*` and `other-*` streams from a task until `stop` is set.
fn start_appender(
    runtime: &tokio::runtime::Runtime,
    store: &PostgresStore,
    stop: &Arc<AtomicBool>,
    seed: u64,
) -> tokio::task::JoinHandle<u64> {
    let (store, stop) = (store.clone(), stop.clone());
    runtime.spawn(async move {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut appended = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let n = rng.random_range(1..=5);
            let stream = if rng.random_bool(0.2) {
                "other-1".to_owned()
            } else {
                format!("acct-{}", rng.random_range(0..8))
            };
            let events = (0..n).map(|_| amount(rng.random_range(-50..100))).collect();
            append(&store, &stream, events).await;
            appended += n;
            tokio::time::sleep(Duration::from_micros(rng.random_range(0..500))).await;
        }
        appended
    })
}

/// Waits until the stored checkpoint passes `head`.
fn wait_checkpoint(runtime: &tokio::runtime::Runtime, schema: &str, head: Position) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while runtime.block_on(checkpoint(schema)) <= head.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the projection did not catch up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sigkill_rounds() {
    let kills: u32 = std::env::var(KILLS)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_KILLS);
    let runtime = runtime();
    let guard = fresh();
    let schema = guard.0.clone();
    let store = runtime.block_on(open(&schema));
    let stop = Arc::new(AtomicBool::new(false));
    let appender = start_appender(&runtime, &store, &stop, 7);
    let mut rng = SmallRng::seed_from_u64(11);
    let mut last = 1u64;
    for _ in 0..kills {
        let mut child = spawn_projector(&schema);
        std::thread::sleep(Duration::from_millis(rng.random_range(5..120)));
        child.kill().unwrap();
        child.wait().unwrap();
        let now = runtime.block_on(checkpoint(&schema));
        assert!(
            now >= last,
            "the checkpoint moved back from {last} to {now}"
        );
        last = now;
    }
    stop.store(true, Ordering::SeqCst);
    let appended = runtime.block_on(appender).unwrap();
    assert!(appended > 0);
    // A last run catches up; the read model is then exactly the fold.
    let mut child = spawn_projector(&schema);
    assert_eq!(read_line(&mut child), "caught-up");
    let head = runtime.block_on(store.head_position()).unwrap();
    wait_checkpoint(&runtime, &schema, head);
    child.kill().unwrap();
    child.wait().unwrap();
    let expected = runtime.block_on(fold(&store, &EventFilter::category("acct")));
    assert_eq!(runtime.block_on(read_model(&schema)), expected);
    assert!(runtime.block_on(checkpoint(&schema)) >= last);
}

fn failover() {
    let runtime = runtime();
    let guard = fresh();
    let schema = guard.0.clone();
    let store = runtime.block_on(open(&schema));
    let stop = Arc::new(AtomicBool::new(false));
    let appender = start_appender(&runtime, &store, &stop, 3);
    let mut active = spawn_projector(&schema);
    assert_eq!(read_line(&mut active), "caught-up");
    // The standby waits for the lock while the active instance works.
    let mut standby = spawn_projector(&schema);
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
    wait_checkpoint(&runtime, &schema, head);
    standby.kill().unwrap();
    standby.wait().unwrap();
    let expected = runtime.block_on(fold(&store, &EventFilter::category("acct")));
    assert_eq!(
        runtime.block_on(read_model(&schema)),
        expected,
        "nothing applied twice or lost"
    );
}
