//! The `sirenia` binary on both stores: every subcommand, export → import into an empty store
//! giving an identical log, copy embedded → PostgreSQL, and clear errors on bad input.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::TryStreamExt;
use sirenia::postgres::{PostgresOptions, PostgresStore};
use sirenia::projection::{FailurePolicy, HandlerError, OnFailure, ProjectionOptions, Projector};
use sirenia::sqlite::{SqliteProjection, rusqlite};
use sirenia::{
    AnyStore, EventStore, ExpectedVersion, Metadata, NewEvent, ReadAll, RecordedEvent, SqliteStore,
    StreamId, StreamWrite,
};
use tokio::io::{AsyncBufReadExt, BufReader};

use sirenia::testkit::postgres::{DropSchema, url as postgres_url};

/// A store for one test: a file in a temporary directory, or a PostgreSQL schema dropped at
/// the end.
struct Place {
    args: Vec<String>,
    store: AnyStore,
    _dir: Option<tempfile::TempDir>,
    _schema: Option<DropSchema>,
}

async fn sqlite_place() -> Place {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let store = SqliteStore::open(&path).await.unwrap();
    Place {
        args: vec!["--store".into(), path.display().to_string()],
        store: AnyStore::from(store),
        _dir: Some(dir),
        _schema: None,
    }
}

async fn postgres_place() -> Place {
    let schema = sirenia::testkit::postgres::fresh_schema("sirenia_cli");
    let options = PostgresOptions {
        schema: schema.clone(),
        ..PostgresOptions::default()
    };
    let store = PostgresStore::connect_with(&postgres_url(), options)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL at {} is needed by this test: {e}",
                postgres_url()
            )
        });
    Place {
        args: vec![
            "--store".into(),
            postgres_url(),
            "--pg-schema".into(),
            schema.clone(),
        ],
        store: AnyStore::from(store),
        _dir: None,
        _schema: Some(DropSchema(schema)),
    }
}

/// Runs `sirenia` with the place's store and `args`; returns (success, stdout, stderr).
async fn sirenia(place: &Place, args: &[&str]) -> (bool, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_sirenia"))
        .args(&place.args)
        .args(args)
        .output()
        .await
        .unwrap();
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

async fn append(store: &AnyStore, stream: &str, events: Vec<NewEvent>) {
    store
        .append(vec![StreamWrite::new(
            StreamId::new(stream).unwrap(),
            ExpectedVersion::Any,
            events,
        )])
        .await
        .unwrap();
}

/// Orders and users, a binary payload, metadata.
async fn fill(store: &AnyStore) {
    let meta = Metadata {
        correlation_id: Some("corr-1".into()),
        causation_id: Some("cause-1".into()),
        ..Metadata::default()
    };
    append(
        store,
        "order-1",
        vec![
            NewEvent::json(
                "OrderPlaced",
                &serde_json::json!({ "total": 42, "items": ["a"] }),
            )
            .with_metadata(meta.clone()),
            NewEvent::json("OrderPaid", &serde_json::json!({ "total": 42 })),
        ],
    )
    .await;
    append(
        store,
        "user-7",
        vec![NewEvent::json(
            "UserJoined",
            &serde_json::json!({ "name": "Ada" }),
        )],
    )
    .await;
    append(
        store,
        "order-2",
        vec![NewEvent::raw(
            "Blob",
            "application/octet-stream",
            vec![0u8, 1, 2, 255],
        )],
    )
    .await;
    append(
        store,
        "order-1",
        vec![NewEvent::json("OrderShipped", &serde_json::json!({}))],
    )
    .await;
}

/// What "an identical log" compares: everything but positions (each store assigns its own).
type Entry = (
    String,
    u64,
    String,
    String,
    u16,
    String,
    Vec<u8>,
    Metadata,
    u64,
);

async fn log(store: &AnyStore) -> Vec<Entry> {
    let events: Vec<RecordedEvent> = store
        .read_all(ReadAll::forward())
        .try_collect()
        .await
        .unwrap();
    events
        .into_iter()
        .map(|e| {
            let data = if e.content_type.starts_with("application/json") {
                // PostgreSQL keeps JSON as jsonb: compare JSON payloads as values.
                serde_json::to_vec(&e.json().unwrap()).unwrap()
            } else {
                e.data.to_vec()
            };
            (
                e.stream_id.as_str().to_owned(),
                e.revision,
                e.id.to_string(),
                e.event_type,
                e.schema_version,
                e.content_type,
                data,
                e.metadata,
                e.recorded_at.as_micros(),
            )
        })
        .collect()
}

macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::sqlite_place().await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::postgres_place().await).await;
                }
            )*
        }
    };
}

on_both_stores!(
    streams_lists_counts_by_category,
    read_prints_a_stream,
    tail_filters_and_follows,
    projections_status_and_parked,
    projections_rebuild_and_replay_on_request,
    export_then_import_gives_an_identical_log,
    bad_input_is_refused_clearly,
    upcasters_and_stream_lifecycle,
    serve_speaks_the_client_protocol,
);

async fn streams_lists_counts_by_category(place: Place) {
    fill(&place.store).await;
    let (ok, out, _) = sirenia(&place, &["streams"]).await;
    assert!(ok);
    assert!(out.contains("order  (2 streams, 4 events)"), "{out}");
    assert!(out.contains("user  (1 streams, 1 events)"), "{out}");
    let (ok, out, _) = sirenia(&place, &["streams", "--json", "--category", "order"]).await;
    assert!(ok);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines,
        vec![
            serde_json::json!({ "stream": "order-1", "category": "order", "events": 3 }),
            serde_json::json!({ "stream": "order-2", "category": "order", "events": 1 }),
        ]
    );
}

async fn read_prints_a_stream(place: Place) {
    fill(&place.store).await;
    let (ok, out, _) = sirenia(&place, &["read", "order-1"]).await;
    assert!(ok);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(
        lines[0].contains("OrderPlaced") && lines[0].contains("\"total\""),
        "{out}"
    );
    assert!(lines[2].contains("OrderShipped"));
    let (ok, out, _) = sirenia(&place, &["read", "order-2", "--json"]).await;
    assert!(ok);
    let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(line["data_hex"], "000102ff");
    assert_eq!(line["revision"], 0);
}

async fn tail_filters_and_follows(place: Place) {
    fill(&place.store).await;
    let (ok, out, _) = sirenia(&place, &["tail", "--json"]).await;
    assert!(ok);
    let all: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(all.len(), 5);
    let third = all[2]["position"].as_u64().unwrap().to_string();
    let (_, out, _) = sirenia(&place, &["tail", "--json", "--from", &third]).await;
    assert_eq!(out.lines().count(), 3);
    let (_, out, _) = sirenia(&place, &["tail", "--category", "user"]).await;
    assert_eq!(out.lines().count(), 1);
    assert!(out.contains("UserJoined"));
    let (_, out, _) = sirenia(&place, &["tail", "--type", "OrderPaid", "--type", "Blob"]).await;
    assert_eq!(out.lines().count(), 2);

    // Following: the existing events, then one appended while it runs.
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sirenia"))
        .args(&place.args)
        .args(["tail", "--follow", "--category", "order"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("no line within 30 s")
            .unwrap()
            .unwrap()
    };
    for _ in 0..4 {
        next().await;
    }
    append(
        &place.store,
        "order-3",
        vec![NewEvent::json(
            "OrderPlaced",
            &serde_json::json!({ "total": 1 }),
        )],
    )
    .await;
    assert!(next().await.contains("order-3"));
    child.kill().await.unwrap();
}

/// Records which positions it applied since its last reset (a handler's memory is not rolled
/// back with a failed transaction, so a set); fails on `Blob` events until `blobs_ok`.
#[derive(Clone, Default)]
struct Fails {
    applied: Arc<Mutex<BTreeSet<u64>>>,
    resets: Arc<AtomicU64>,
    blobs_ok: Arc<AtomicBool>,
}

impl Fails {
    fn apply(&self, e: &RecordedEvent) -> Result<(), HandlerError> {
        if e.event_type == "Blob" && !self.blobs_ok.load(Ordering::SeqCst) {
            return Err("cannot handle blobs".into());
        }
        self.applied.lock().unwrap().insert(e.position.0);
        Ok(())
    }

    fn applied(&self) -> usize {
        self.applied.lock().unwrap().len()
    }
}

impl SqliteProjection for Fails {
    fn setup(&mut self, _: &rusqlite::Transaction<'_>) -> Result<(), HandlerError> {
        Ok(())
    }
    fn apply(
        &mut self,
        _: &rusqlite::Transaction<'_>,
        e: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        Fails::apply(self, e)
    }
    fn reset(&mut self, _: &rusqlite::Transaction<'_>) -> Result<(), HandlerError> {
        self.resets.fetch_add(1, Ordering::SeqCst);
        self.applied.lock().unwrap().clear();
        Ok(())
    }
}

impl sirenia::postgres::PostgresProjection for Fails {
    async fn setup(&mut self, _: &tokio_postgres::Transaction<'_>) -> Result<(), HandlerError> {
        Ok(())
    }
    async fn apply(
        &mut self,
        _: &tokio_postgres::Transaction<'_>,
        e: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        Fails::apply(self, e)
    }
    async fn reset(&mut self, _: &tokio_postgres::Transaction<'_>) -> Result<(), HandlerError> {
        self.resets.fetch_add(1, Ordering::SeqCst);
        self.applied.lock().unwrap().clear();
        Ok(())
    }
}

fn park_options() -> ProjectionOptions {
    ProjectionOptions {
        policy: FailurePolicy {
            retries: 1,
            first_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(1),
            on_failure: OnFailure::Park,
        },
        ..ProjectionOptions::default()
    }
}

/// Runs projection `orders` with `handler` in this process: caught up once, then live in a task.
async fn run_orders(
    store: &AnyStore,
    handler: Fails,
    live: bool,
) -> Option<tokio::task::JoinHandle<()>> {
    macro_rules! go {
        ($target:expr) => {{
            let mut p = Projector::new("orders", store.clone(), $target, park_options()).unwrap();
            p.catch_up(|_| {}).await.unwrap();
            live.then(|| {
                tokio::spawn(async move {
                    p.run(std::future::pending()).await.unwrap();
                })
            })
        }};
    }
    match store {
        AnyStore::Sqlite(s) => go!(s.projection("orders", handler)),
        AnyStore::Postgres(s) => go!(s.projection("orders", handler)),
        _ => unreachable!(),
    }
}

async fn projections_rebuild_and_replay_on_request(place: Place) {
    fill(&place.store).await;
    let handler = Fails::default();
    let task = run_orders(&place.store, handler.clone(), true)
        .await
        .unwrap();
    assert_eq!(handler.applied(), 4, "the blob is parked");
    let (ok, out, err) = sirenia(&place, &["projections", "rebuild", "orders"]).await;
    assert!(ok, "{out}{err}");
    assert_eq!(handler.resets.load(Ordering::SeqCst), 1);
    assert_eq!(handler.applied(), 4, "everything replayed after the reset");
    handler.blobs_ok.store(true, Ordering::SeqCst);
    let (ok, out, err) = sirenia(&place, &["projections", "replay-parked", "orders"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("orders: 0 event(s) still parked"), "{out}");
    assert_eq!(handler.applied(), 5, "the parked blob applied");
    let (ok, _, err) = sirenia(&place, &["projections", "rebuild", "nope"]).await;
    assert!(!ok && err.contains("no projection nope"), "{err}");
    task.abort();
}

async fn projections_status_and_parked(place: Place) {
    fill(&place.store).await;
    run_orders(&place.store, Fails::default(), false).await;
    let (ok, out, _) = sirenia(&place, &["projections", "status"]).await;
    assert!(ok);
    assert!(
        out.contains("orders") && out.contains("caught-up") && out.contains("parked 1"),
        "{out}"
    );
    let (ok, out, _) = sirenia(&place, &["projections", "status", "--json"]).await;
    assert!(ok);
    let status: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (status["name"].as_str(), status["parked"].as_u64()),
        (Some("orders"), Some(1))
    );
    let (ok, out, _) = sirenia(&place, &["projections", "parked", "orders"]).await;
    assert!(ok);
    assert!(
        out.contains("order-2") && out.contains("cannot handle blobs"),
        "{out}"
    );
    let (ok, out, _) = sirenia(&place, &["projections", "parked", "orders", "--json"]).await;
    assert!(ok);
    let parked: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(parked["event_type"], "Blob");
}

/// An empty target for import or copy, with the `--store` arguments naming it. An embedded
/// target is not opened here (the command must be its only writer) but when compared.
enum Target {
    File(tempfile::TempDir),
    Schema(Place),
}

impl Target {
    async fn new(sqlite: bool) -> Self {
        if sqlite {
            Target::File(tempfile::tempdir().unwrap())
        } else {
            Target::Schema(postgres_place().await)
        }
    }

    fn args(&self) -> Vec<String> {
        match self {
            Target::File(dir) => vec![
                "--store".into(),
                dir.path().join("copy.db").display().to_string(),
            ],
            Target::Schema(place) => place.args.clone(),
        }
    }

    async fn log(&self) -> Vec<Entry> {
        match self {
            Target::File(dir) => {
                let store = SqliteStore::open(dir.path().join("copy.db")).await.unwrap();
                log(&AnyStore::from(store)).await
            }
            Target::Schema(place) => log(&place.store).await,
        }
    }
}

async fn run_args(args: &[String]) -> (bool, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_sirenia"))
        .args(args)
        .output()
        .await
        .unwrap();
    (
        output.status.success(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

async fn export_then_import_gives_an_identical_log(place: Place) {
    fill(&place.store).await;
    let sqlite = matches!(place.store, AnyStore::Sqlite(_));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("log.ndjson");
    let file_arg = file.display().to_string();
    let (ok, _, err) = sirenia(&place, &["export", &file_arg]).await;
    assert!(ok, "{err}");
    let expected = log(&place.store).await;
    assert_eq!(expected.len(), 5);

    let empty = Target::new(sqlite).await;
    let mut args = empty.args();
    args.extend(["import".to_owned(), file_arg.clone()]);
    let (ok, err) = run_args(&args).await;
    assert!(ok, "{err}");
    // Importing again writes nothing.
    let (ok, err) = run_args(&args).await;
    assert!(ok, "{err}");
    assert_eq!(empty.log().await, expected);

    // Copy, into the other kind of store (embedded → PostgreSQL, and back).
    let other = Target::new(!sqlite).await;
    let target = other.args();
    let mut args: Vec<&str> = vec!["copy", "--to", &target[1]];
    if target.len() > 2 {
        args.extend(["--to-pg-schema", &target[3]]);
    }
    let (ok, _, err) = sirenia(&place, &args).await;
    assert!(ok, "{err}");
    assert_eq!(other.log().await, expected);
}

async fn bad_input_is_refused_clearly(place: Place) {
    fill(&place.store).await;
    let before = log(&place.store).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.ndjson");
    let good = r#"{"position":1,"stream":"order-9","revision":0,"id":"01a206cd-e40c-75ed-bbdc-62d6b86814ea","type":"X","schema_version":1,"content_type":"application/json","data":{},"recorded_at":"2026-11-23T05:08:06.284734Z"}"#;
    std::fs::write(&file, format!("{good}\n{{\"position\": 2, oops\n")).unwrap();
    let (ok, _, err) = sirenia(&place, &["import", file.to_str().unwrap()]).await;
    assert!(!ok);
    assert!(err.contains("line 2"), "{err}");
    assert_eq!(
        log(&place.store).await,
        before,
        "a refused import wrote something"
    );
    if matches!(place.store, AnyStore::Sqlite(_)) {
        // A good file into an embedded store another process holds: refused, clearly.
        std::fs::write(&file, format!("{good}\n")).unwrap();
        let (ok, _, err) = sirenia(&place, &["import", file.to_str().unwrap()]).await;
        assert!(!ok && err.contains("in use"), "{err}");
    }
    // Refused before anything is written: a revision gap, a repeated id, an empty type.
    let line = |stream: &str, revision: u64, id: &str, ty: &str| {
        format!(
            r#"{{"position":1,"stream":"{stream}","revision":{revision},"id":"{id}","type":"{ty}","schema_version":1,"content_type":"application/json","data":{{}},"recorded_at":"2026-11-23T05:08:06.284734Z"}}"#
        )
    };
    let ids = [
        "01a206cd-e40c-75ed-bbdc-62d6b86814e1",
        "01a206cd-e40c-75ed-bbdc-62d6b86814e2",
    ];
    for (text, expect) in [
        (
            format!(
                "{}\n{}\n",
                line("gap-1", 0, ids[0], "X"),
                line("gap-1", 5, ids[1], "X")
            ),
            "jumps from revision 1 to 5",
        ),
        (
            format!(
                "{}\n{}\n",
                line("dup-1", 0, ids[0], "X"),
                line("dup-2", 0, ids[0], "X")
            ),
            "appears twice",
        ),
        (
            format!(
                "{}\n{}\n",
                line("ty-1", 0, ids[0], "X"),
                line("ty-1", 1, ids[1], "")
            ),
            "event type",
        ),
    ] {
        std::fs::write(&file, text).unwrap();
        let (ok, _, err) = sirenia(&place, &["import", file.to_str().unwrap()]).await;
        assert!(!ok && err.contains(expect), "{err}");
        assert_eq!(
            log(&place.store).await,
            before,
            "a refused import wrote something"
        );
    }
    let (ok, _, err) = sirenia(&place, &["import", "/nonexistent/file.ndjson"]).await;
    assert!(!ok && err.contains("/nonexistent/file.ndjson"), "{err}");
    let (ok, _, err) = sirenia(&place, &["read", "no-such-stream"]).await;
    assert!(!ok && err.contains("no stream no-such-stream"), "{err}");
    let (ok, _, err) = sirenia(&place, &["read", ""]).await;
    assert!(!ok && err.contains("invalid stream id"), "{err}");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_sirenia"))
        .args(["streams"])
        .env_remove("SIRENIA_STORE")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no store given"));
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_sirenia"))
        .args(["--store", "/nonexistent/store.db", "streams"])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no store at"));
    assert!(!std::path::Path::new("/nonexistent/store.db").exists());
}

async fn upcasters_and_stream_lifecycle(mut place: Place) {
    fill(&place.store).await;
    append(
        &place.store,
        "pay-1",
        vec![
            NewEvent::json("Paid", &serde_json::json!({ "amount": 5, "legacy": 1 })),
            NewEvent::json("Noted", &serde_json::json!({ "text": "x" })),
            NewEvent::json("Paid", &serde_json::json!({ "amount": 6 })),
        ],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("upcasters.json");
    std::fs::write(
        &rules,
        r#"[{"event_type": "Paid", "schema_version": 1, "rename_fields": {"amount": "cents"},
             "remove_fields": ["legacy"]},
            {"event_type": "Noted", "schema_version": 1, "drop": true}]"#,
    )
    .unwrap();
    let rules = rules.to_str().unwrap();
    let json_lines = |out: &str| -> Vec<serde_json::Value> {
        out.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (ok, out, err) = sirenia(&place, &["read", "pay-1", "--json"]).await;
    assert!(ok, "{err}");
    assert_eq!(json_lines(&out).len(), 3, "without rules: the stored form");
    let (ok, out, err) = sirenia(&place, &["--upcasters", rules, "read", "pay-1", "--json"]).await;
    assert!(ok, "{err}");
    let read = json_lines(&out);
    let seen: Vec<(u64, &serde_json::Value, &serde_json::Value)> = read
        .iter()
        .map(|l| {
            (
                l["revision"].as_u64().unwrap(),
                &l["schema_version"],
                &l["data"],
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (0, &serde_json::json!(2), &serde_json::json!({ "cents": 5 })),
            (2, &serde_json::json!(2), &serde_json::json!({ "cents": 6 })),
        ],
        "read upcasts and drops"
    );
    let (ok, out, err) = sirenia(
        &place,
        &["--upcasters", rules, "tail", "--json", "--type", "Paid"],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(json_lines(&out).len(), 2, "tail upcasts");
    std::fs::write(dir.path().join("bad.json"), r#"[{"event_type": "Paid"}]"#).unwrap();
    let bad = dir.path().join("bad.json");
    let (ok, _, err) = sirenia(
        &place,
        &["--upcasters", bad.to_str().unwrap(), "read", "pay-1"],
    )
    .await;
    assert!(!ok && err.contains("bad.json"), "{err}");

    // Lifecycle changes write: an embedded store must not be held by this process.
    if matches!(place.store, AnyStore::Sqlite(_)) {
        place.store = AnyStore::from(sirenia::InMemoryStore::new());
    }
    let (ok, out, err) = sirenia(&place, &["truncate", "pay-1", "--before", "1"]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("active, version 3, readable from revision 1"),
        "{out}"
    );
    let (ok, out, _) = sirenia(&place, &["read", "pay-1", "--json"]).await;
    assert!(ok);
    let revisions: Vec<u64> = json_lines(&out)
        .iter()
        .map(|l| l["revision"].as_u64().unwrap())
        .collect();
    assert_eq!(revisions, vec![1, 2], "truncated revisions are not read");
    let (ok, _, err) = sirenia(&place, &["truncate", "pay-1", "--before", "9"]).await;
    assert!(!ok && err.contains("past the end"), "{err}");
    let (ok, out, err) = sirenia(&place, &["delete", "order-1"]).await;
    assert!(ok && out.contains("deleted"), "{out}{err}");
    let (ok, _, err) = sirenia(&place, &["read", "order-1"]).await;
    assert!(!ok && err.contains("no stream order-1"), "{err}");
    let (ok, _, err) = sirenia(&place, &["tombstone", "order-2", "--expected", "5"]).await;
    assert!(!ok && err.contains("conflict"), "{err}");
    let (ok, out, err) = sirenia(&place, &["tombstone", "order-2", "--expected", "1"]).await;
    assert!(ok && out.contains("tombstoned"), "{out}{err}");
    let (ok, _, err) = sirenia(&place, &["read", "order-2"]).await;
    assert!(!ok && err.contains("tombstoned"), "{err}");
    let (ok, _, err) = sirenia(&place, &["delete", "order-2"]).await;
    assert!(!ok && err.contains("tombstoned"), "{err}");
}

/// `sirenia serve`: prints where it listens, serves appends and reads over gRPC on the same
/// streams the library sees, and stops cleanly on SIGTERM.
async fn serve_speaks_the_client_protocol(mut place: Place) {
    use sirenia_grpc::proto::client::{StreamIdentifier, Uuid as ProtoUuid, uuid};
    use sirenia_grpc::proto::streams::streams_client::StreamsClient;
    use sirenia_grpc::proto::streams::{AppendReq, append_req, append_resp};

    append(
        &place.store,
        "order-1",
        vec![NewEvent::json("Placed", &serde_json::json!({}))],
    )
    .await;
    // The server writes: an embedded store must not be held by this process.
    let library = place.store.clone();
    if matches!(place.store, AnyStore::Sqlite(_)) {
        place.store = AnyStore::from(sirenia::InMemoryStore::new());
    }
    drop(library);
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sirenia"))
        .args(&place.args)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("serve did not start")
        .unwrap()
        .expect("serve printed nothing");
    let address = line
        .strip_prefix("sirenia: serving esdb://")
        .and_then(|rest| rest.strip_suffix("?tls=false"))
        .unwrap_or_else(|| panic!("unexpected first line: {line}"));
    let channel = tonic::transport::Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = StreamsClient::new(channel);
    let stream = || {
        Some(StreamIdentifier {
            stream_name: "order-1".as_bytes().to_vec().into(),
        })
    };
    let messages = vec![
        AppendReq {
            content: Some(append_req::Content::Options(append_req::Options {
                stream_identifier: stream(),
                expected_stream_revision: Some(
                    append_req::options::ExpectedStreamRevision::Revision(0),
                ),
            })),
        },
        AppendReq {
            content: Some(append_req::Content::ProposedMessage(
                append_req::ProposedMessage {
                    id: Some(ProtoUuid {
                        value: Some(uuid::Value::String(::uuid::Uuid::now_v7().to_string())),
                    }),
                    metadata: [
                        ("type".to_owned(), "Paid".to_owned()),
                        ("content-type".to_owned(), "application/json".to_owned()),
                    ]
                    .into(),
                    custom_metadata: Default::default(),
                    data: br#"{"amount":5}"#.to_vec().into(),
                },
            )),
        },
    ];
    let response = client
        .append(tokio_stream::iter(messages))
        .await
        .unwrap()
        .into_inner();
    let Some(append_resp::Result::Success(success)) = response.result else {
        panic!("append failed: {response:?}");
    };
    assert_eq!(
        success.current_revision_option,
        Some(append_resp::success::CurrentRevisionOption::CurrentRevision(1))
    );

    let pid = child.id().unwrap().to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("serve did not stop on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
    let (ok, out, err) = sirenia(&place, &["read", "order-1", "--json"]).await;
    assert!(ok, "{err}");
    let types: Vec<String> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(types, ["Placed", "Paid"]);
}
