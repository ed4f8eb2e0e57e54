//! Projections on the embedded store: a read model in the store's file, exactly once under
//! SIGKILL, complete under concurrent writers, poison events parked or faulted and replayed,
//! rebuilds, and a standby process taking over from a killed one.
//!
//! This binary runs its own children (a projector process): started with
//! `SIRENIA_TEST_PROJECTOR` set, it plays that child. `SIRENIA_PROJECTION_KILLS` sets the number
//! of kill rounds (30 by default).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use std::collections::BTreeMap;
use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::TryStreamExt;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rusqlite::{Connection, OptionalExtension, Transaction};
use sirenia_core::projection::{
    AtLeastOnce, FailurePolicy, Handler, HandlerError, OnFailure, ProjectionError,
    ProjectionOptions, ProjectionState, Projector, wait_for,
};
use sirenia_core::{
    EventFilter, EventStore, ExpectedVersion, NewEvent, Position, ReadAll, RecordedEvent, StreamId,
    StreamWrite,
};
use sirenia_sqlite::{SqliteOptions, SqliteProjection, SqliteStore};

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
    if let Ok(path) = std::env::var(PROJECTOR) {
        return projector_child(Path::new(&path));
    }
    let tests: [(&str, fn()); 8] = [
        (
            "read_model_equals_the_fold_under_concurrent_writers",
            completeness,
        ),
        ("poison_event_parked_then_replayed", poison_park),
        ("poison_event_faults_then_resumes", poison_stop),
        ("rebuild_empties_and_replays", rebuild),
        ("blue_green_switches_once_caught_up", blue_green),
        ("a_run_stopped_mid_page_can_run_again", stopped_mid_page),
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

/// Per stream: the sum of `amount` and the number of events, in table `sums`. Fails on
/// `{"poison": true}` while `broken` is set.
#[derive(Clone)]
struct Sums {
    broken: Arc<AtomicBool>,
    /// The read model's table (a blue/green version writes its own).
    table: &'static str,
    /// Multiplies amounts: a new version computing something else.
    factor: i64,
}

impl Default for Sums {
    fn default() -> Self {
        Sums {
            broken: Arc::default(),
            table: "sums",
            factor: 1,
        }
    }
}

impl SqliteProjection for Sums {
    fn setup(&mut self, tx: &Transaction<'_>) -> Result<(), HandlerError> {
        tx.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS {} (
                stream TEXT PRIMARY KEY, total INTEGER NOT NULL, count INTEGER NOT NULL)",
            self.table
        ))?;
        Ok(())
    }

    fn apply(&mut self, tx: &Transaction<'_>, event: &RecordedEvent) -> Result<(), HandlerError> {
        let data = event.json()?;
        if data["poison"] == true && self.broken.load(Ordering::SeqCst) {
            return Err("poisoned".into());
        }
        tx.prepare_cached(&format!(
            "INSERT INTO {} (stream, total, count) VALUES (?1, ?2, 1)
             ON CONFLICT (stream) DO UPDATE SET total = total + excluded.total, count = count + 1",
            self.table
        ))?
        .execute(rusqlite::params![
            event.stream_id.as_str(),
            data["amount"].as_i64().unwrap_or(0) * self.factor
        ])?;
        Ok(())
    }

    fn reset(&mut self, tx: &Transaction<'_>) -> Result<(), HandlerError> {
        tx.execute(&format!("DELETE FROM {}", self.table), [])?;
        Ok(())
    }
}

type Model = BTreeMap<String, (i64, i64)>;

fn read_model(path: &Path) -> Model {
    read_table(path, "sums")
}

fn read_table(path: &Path, table: &str) -> Model {
    let conn = Connection::open(path).unwrap();
    let mut stmt = conn
        .prepare(&format!("SELECT stream, total, count FROM {table}"))
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn checkpoint(path: &Path) -> u64 {
    let conn = Connection::open(path).unwrap();
    conn.query_row(
        "SELECT next_position FROM projections WHERE name = ?1",
        [NAME],
        |r| r.get::<_, i64>(0),
    )
    .optional()
    .unwrap()
    .map_or(1, |n| u64::try_from(n).unwrap())
}

/// The oracle: a fold over the whole log.
async fn fold(store: &SqliteStore, filter: &EventFilter) -> Model {
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

async fn append(store: &SqliteStore, stream: &str, events: Vec<NewEvent>) {
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
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let store = SqliteStore::open(&path).await.unwrap();
        append(&store, "acct-0", vec![amount(5)]).await;
        let options = quick(OnFailure::Stop);
        let target = store.projection(NAME, Sums::default());
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
        assert_eq!(read_model(&path), fold(&store, &options.filter).await);
        assert_eq!(status.borrow().state, ProjectionState::Live);
        assert_eq!(status.borrow().lag_events, Some(0));
        assert_eq!(checkpoint(&path), head.0 + 1);
        runner.abort();
    });
}

fn poison_park() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let store = SqliteStore::open(&path).await.unwrap();
        append(&store, "acct-1", vec![amount(1), amount(2)]).await;
        append(&store, "acct-2", vec![poison(40)]).await;
        append(&store, "acct-1", vec![amount(4)]).await;
        let sums = Sums::default();
        sums.broken.store(true, Ordering::SeqCst);
        let target = store.projection(NAME, sums.clone());
        let mut projector =
            Projector::new(NAME, store.clone(), target, quick(OnFailure::Park)).unwrap();
        assert_eq!(projector.catch_up(|_| {}).await.unwrap(), Position(5));
        let model = read_model(&path);
        assert_eq!(model["acct-1"], (7, 3), "the rest went on");
        assert!(!model.contains_key("acct-2"));
        let parked = projector.parked().await.unwrap();
        assert_eq!(parked.len(), 1);
        assert_eq!((parked[0].position, parked[0].attempts), (Position(3), 3));
        assert_eq!(parked[0].error, "poisoned");
        sums.broken.store(false, Ordering::SeqCst);
        assert_eq!(projector.replay_parked().await.unwrap(), 1);
        assert_eq!(projector.replay_parked().await.unwrap(), 0);
        assert_eq!(read_model(&path)["acct-2"], (40, 1), "replayed once");
        assert_eq!(
            read_model(&path),
            fold(&store, &EventFilter::category("acct")).await
        );
    });
}

fn poison_stop() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let store = SqliteStore::open(&path).await.unwrap();
        append(&store, "acct-1", vec![amount(1), poison(2), amount(4)]).await;
        let sums = Sums::default();
        sums.broken.store(true, Ordering::SeqCst);
        let target = store.projection(NAME, sums.clone());
        let mut projector =
            Projector::new(NAME, store.clone(), target, quick(OnFailure::Stop)).unwrap();
        match projector.catch_up(|_| {}).await {
            Err(ProjectionError::Faulted(f)) => assert_eq!(f.position, Position(2)),
            other => panic!("expected a fault, got {other:?}"),
        }
        assert_eq!(read_model(&path)["acct-1"], (1, 1), "nothing after it");
        assert_eq!(checkpoint(&path), 2);
        // The fault is recorded in the file.
        let conn = Connection::open(&path).unwrap();
        let fault: String = conn
            .query_row(
                "SELECT fault FROM projections WHERE name = ?1",
                [NAME],
                |r| r.get(0),
            )
            .unwrap();
        assert!(fault.contains("poisoned"));
        drop(projector);
        // Fixed and resumed (a new instance, as after a restart).
        sums.broken.store(false, Ordering::SeqCst);
        let target = store.projection(NAME, sums.clone());
        let mut resumed =
            Projector::new(NAME, store.clone(), target, quick(OnFailure::Stop)).unwrap();
        resumed.catch_up(|_| {}).await.unwrap();
        assert_eq!(read_model(&path)["acct-1"], (7, 3));
        let fault: Option<String> = conn
            .query_row(
                "SELECT fault FROM projections WHERE name = ?1",
                [NAME],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(fault, None, "the fault is cleared");
    });
}

fn rebuild() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let store = SqliteStore::open(&path).await.unwrap();
        for i in 0..120 {
            append(&store, &format!("acct-{}", i % 7), vec![amount(i)]).await;
        }
        let target = store.projection(NAME, Sums::default());
        let mut projector =
            Projector::new(NAME, store.clone(), target, quick(OnFailure::Stop)).unwrap();
        projector.catch_up(|_| {}).await.unwrap();
        // Damage the read model, then rebuild it.
        Connection::open(&path)
            .unwrap()
            .execute("UPDATE sums SET total = -1", [])
            .unwrap();
        let mut reports = Vec::new();
        projector
            .rebuild(|p| reports.push(p.handled))
            .await
            .unwrap();
        assert_eq!(reports.last(), Some(&120));
        assert!(reports.len() >= 3, "progress per page: {reports:?}");
        assert_eq!(read_model(&path), fold(&store, &EventFilter::all()).await);

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
        assert_eq!(counter.catch_up(|_| {}).await.unwrap(), Position(121));
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

/// Version 2 of a read model is built beside version 1 while events keep coming; readers are
/// switched to it only once it has caught up, and it then follows the log like version 1.
fn blue_green() {
    let runtime = runtime();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let store = runtime.block_on(SqliteStore::open(&path)).unwrap();
    runtime.block_on(async {
        for i in 0..300 {
            append(&store, &format!("acct-{}", i % 5), vec![amount(i)]).await;
        }
    });
    let stop = Arc::new(AtomicBool::new(false));
    let appender = start_appender(&runtime, &store, &stop, 5);
    let version = |table: &'static str, factor: i64, v: &'static str| {
        let store = store.clone();
        let handler = Sums {
            table,
            factor,
            ..Sums::default()
        };
        runtime.spawn(async move {
            let name = format!("sums@{v}");
            let target = store.projection(&name, handler);
            let mut projector =
                Projector::new(name, store.clone(), target, quick(OnFailure::Stop)).unwrap();
            let promote = store.set_active_version("sums", v);
            projector
                .run_blue_green(promote, std::future::pending())
                .await
        })
    };
    let v1 = version("sums_v1", 1, "1");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while runtime
        .block_on(store.active_version("sums"))
        .unwrap()
        .as_deref()
        != Some("1")
    {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    let head_before_v2 = runtime.block_on(store.head_position()).unwrap();
    let v2 = version("sums_v2", 10, "2");
    while runtime
        .block_on(store.active_version("sums"))
        .unwrap()
        .as_deref()
        != Some("2")
    {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(1));
    }
    // At the switch, version 2 already holds at least every event recorded before it started:
    // readers never see it half-built.
    let at_switch: i64 = read_table(&path, "sums_v2").values().map(|v| v.1).sum();
    let events: Vec<RecordedEvent> = runtime
        .block_on(
            store
                .read_all(ReadAll::forward().filter(EventFilter::category("acct")))
                .try_collect(),
        )
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
    runtime.block_on(appender).unwrap();
    let head = runtime.block_on(store.head_position()).unwrap();
    let expected = runtime.block_on(fold(&store, &EventFilter::category("acct")));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (t1, t2) = (read_table(&path, "sums_v1"), read_table(&path, "sums_v2"));
        let tenfold: Model = expected
            .iter()
            .map(|(k, (total, count))| (k.clone(), (total * 10, *count)))
            .collect();
        if t1 == expected && t2 == tenfold {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "versions did not converge at {head}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    v1.abort();
    v2.abort();
}

/// Slow to apply, so a shutdown lands while a page is being applied.
struct Slow(Sums);

impl SqliteProjection for Slow {
    fn setup(&mut self, tx: &Transaction<'_>) -> Result<(), HandlerError> {
        self.0.setup(tx)
    }
    fn apply(&mut self, tx: &Transaction<'_>, event: &RecordedEvent) -> Result<(), HandlerError> {
        std::thread::sleep(Duration::from_millis(2));
        self.0.apply(tx, event)
    }
    fn reset(&mut self, tx: &Transaction<'_>) -> Result<(), HandlerError> {
        self.0.reset(tx)
    }
}

/// A run stopped while a page is being applied leaves the projector usable: running it again
/// resumes from the stored checkpoint and the read model is exact.
fn stopped_mid_page() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let store = SqliteStore::open(&path).await.unwrap();
        for i in 0..100 {
            append(&store, &format!("acct-{}", i % 4), vec![amount(i)]).await;
        }
        let target = store.projection(NAME, Slow(Sums::default()));
        let mut projector =
            Projector::new(NAME, store.clone(), target, quick(OnFailure::Stop)).unwrap();
        projector
            .run(tokio::time::sleep(Duration::from_millis(30)))
            .await
            .unwrap();
        assert!(
            checkpoint(&path) < 101,
            "the first run finished before it was stopped"
        );
        projector.catch_up(|_| {}).await.unwrap();
        assert_eq!(
            read_model(&path),
            fold(&store, &EventFilter::category("acct")).await
        );
    });
}

// ---------------------------------------------------------------------------------------------
// Processes.

/// Runs the projection on `path` (read-only store handle, live) until killed; prints
/// `caught-up` once it is at the head. With `SIRENIA_TEST_EXIT_AT` set, exits once the
/// checkpoint passes that position.
fn projector_child(path: &Path) {
    runtime().block_on(async {
        let store = SqliteStore::open_read_only(path, SqliteOptions::default())
            .await
            .unwrap();
        let target = store.projection(NAME, Sums::default());
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

fn spawn_projector(path: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .env(PROJECTOR, path)
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
    store: &SqliteStore,
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

/// Waits until the checkpoint in the file passes `head`.
fn wait_checkpoint(path: &Path, head: Position) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while checkpoint(path) <= head.0 {
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
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let store = runtime.block_on(SqliteStore::open(&path)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let appender = start_appender(&runtime, &store, &stop, 7);
    let mut rng = SmallRng::seed_from_u64(11);
    let mut last = 1u64;
    for _ in 0..kills {
        let mut child = spawn_projector(&path);
        std::thread::sleep(Duration::from_millis(rng.random_range(5..120)));
        child.kill().unwrap();
        child.wait().unwrap();
        let now = checkpoint(&path);
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
    let mut child = spawn_projector(&path);
    assert_eq!(read_line(&mut child), "caught-up");
    let head = runtime.block_on(store.head_position()).unwrap();
    wait_checkpoint(&path, head);
    child.kill().unwrap();
    child.wait().unwrap();
    let expected = runtime.block_on(fold(&store, &EventFilter::category("acct")));
    assert_eq!(read_model(&path), expected);
    assert!(checkpoint(&path) >= last);
}

fn failover() {
    let runtime = runtime();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let store = runtime.block_on(SqliteStore::open(&path)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let appender = start_appender(&runtime, &store, &stop, 3);
    let mut active = spawn_projector(&path);
    assert_eq!(read_line(&mut active), "caught-up");
    // The standby waits for the lock while the active instance works.
    let mut standby = spawn_projector(&path);
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
    wait_checkpoint(&path, head);
    standby.kill().unwrap();
    standby.wait().unwrap();
    let expected = runtime.block_on(fold(&store, &EventFilter::category("acct")));
    assert_eq!(read_model(&path), expected, "nothing applied twice or lost");
}
