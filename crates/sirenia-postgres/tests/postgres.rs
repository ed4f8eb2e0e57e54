//! What the PostgreSQL store promises beyond the port: a complete log under concurrent writers
//! with slow and rolled-back transactions, safe retries after an unknown outcome, and one
//! database shared by independent pools.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use sirenia_core::StoreAdmin;
use sirenia_core::{
    Aggregate, CommandError, DomainEvent, EventId, EventStore, ExpectedVersion, JSON_CONTENT_TYPE,
    Metadata, NewEvent, ReadAll, ReadStream, Repository, StoreError, StreamId, StreamWrite,
    Subscribe, SubscriptionItem,
};
use sirenia_postgres::{PostgresOptions, PostgresStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Rounds of the completeness test; `SIRENIA_COMPLETENESS_ROUNDS` raises it.
const DEFAULT_ROUNDS: u32 = 10;
const WRITERS: u64 = 8;
const TRANSACTIONS_PER_WRITER: u64 = 20;

/// One round: writers append in explicit transactions, pausing between insert and commit and
/// rolling some back, while two subscribers follow the log from position 0.
async fn completeness_round(round: u32) {
    let store = common::fresh_store().await;
    let mut subscribers = Vec::new();
    for _ in 0..2 {
        let mut sub = store.subscribe(Subscribe::from_start());
        subscribers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            loop {
                match tokio::time::timeout(Duration::from_secs(60), sub.next()).await {
                    Ok(Some(Ok(SubscriptionItem::Event(e)))) => {
                        seen.push((e.position, e.id));
                        if e.event_type == "End" {
                            return seen;
                        }
                    }
                    Ok(Some(Ok(SubscriptionItem::CaughtUp { .. }))) => {}
                    other => panic!("subscription stopped: {other:?}"),
                }
            }
        }));
    }
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(u64::from(round) * 100 + w);
            let (mut committed, mut rolled_back) = (Vec::new(), Vec::new());
            let pg = store.store();
            let mut client = pg.client().await.unwrap();
            for t in 0..TRANSACTIONS_PER_WRITER {
                let events: Vec<NewEvent> = (0..rng.random_range(1..4u64))
                    .map(|i| NewEvent::json("Written", &json!({ "w": w, "t": t, "i": i })))
                    .collect();
                let ids: Vec<EventId> = events.iter().map(|e| e.id).collect();
                let stream = StreamId::new(format!("w{w}-{}", t % 3)).unwrap();
                let mut tx = client.transaction().await.unwrap();
                pg.append_in_transaction(
                    &mut tx,
                    vec![StreamWrite::new(stream, ExpectedVersion::Any, events)],
                )
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..15))).await;
                if rng.random_bool(0.2) {
                    tx.rollback().await.unwrap();
                    rolled_back.extend(ids);
                } else {
                    tx.commit().await.unwrap();
                    committed.extend(ids);
                }
            }
            (committed, rolled_back)
        }));
    }
    let (mut committed, mut rolled_back) = (HashSet::new(), HashSet::new());
    for w in writers {
        let (c, r) = w.await.unwrap();
        committed.extend(c);
        rolled_back.extend(r);
    }
    let end = NewEvent::json("End", &json!({}));
    committed.insert(end.id);
    store
        .append(vec![StreamWrite::new(
            StreamId::new("end-1").unwrap(),
            ExpectedVersion::NoStream,
            vec![end],
        )])
        .await
        .unwrap();
    for subscriber in subscribers {
        let seen = subscriber.await.unwrap();
        assert!(
            seen.windows(2).all(|w| w[0].0 < w[1].0),
            "round {round}: delivered in strictly increasing positions"
        );
        let ids: Vec<EventId> = seen.iter().map(|(_, id)| *id).collect();
        let unique: HashSet<EventId> = ids.iter().copied().collect();
        assert_eq!(
            unique.len(),
            ids.len(),
            "round {round}: nothing delivered twice"
        );
        assert!(
            unique.is_disjoint(&rolled_back),
            "round {round}: a rolled-back event was delivered"
        );
        let missing: Vec<&EventId> = committed.difference(&unique).take(3).collect();
        let extra: Vec<&EventId> = unique.difference(&committed).take(3).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "round {round}: delivered {} of {} committed events; missing e.g. {missing:?}, \
             unexpected e.g. {extra:?}",
            unique.intersection(&committed).count(),
            committed.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_see_every_committed_event_once_and_in_order() {
    let rounds: u32 = std::env::var("SIRENIA_COMPLETENESS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_ROUNDS);
    for round in 0..rounds {
        completeness_round(round).await;
    }
}

/// The bytes that identify the message to cut: the appended stream's name.
const CUT_MARKER: &[u8] = b"order-1";

/// Forwards one connection, optionally cutting it right after the server has received (and
/// had time to commit) the next client message.
async fn pump(client: TcpStream, upstream: String, cut: Arc<AtomicBool>) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let kill = Arc::new(tokio::sync::Notify::new());
    let kill_for_up = kill.clone();
    // Once set, nothing more reaches the client.
    let severed = Arc::new(AtomicBool::new(false));
    let severed_for_up = severed.clone();
    let up = tokio::spawn(async move {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let n = match client_read.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            // Only the append itself (its parameters name the stream) is cut; the store's
            // listening and notifying connections go through this proxy too.
            let carries_append = buffer[..n]
                .windows(CUT_MARKER.len())
                .any(|w| w == CUT_MARKER);
            let cutting = carries_append && cut.swap(false, Ordering::SeqCst);
            if cutting {
                severed_for_up.store(true, Ordering::SeqCst);
            }
            if server_write.write_all(&buffer[..n]).await.is_err() {
                return;
            }
            if cutting {
                // Give the server time to run and commit what it just received, then break
                // the connection before its answer reaches the client.
                tokio::time::sleep(Duration::from_millis(300)).await;
                kill_for_up.notify_one();
                return;
            }
        }
    });
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            read = server_read.read(&mut buffer) => match read {
                Ok(0) | Err(_) => break,
                Ok(_) if severed.load(Ordering::SeqCst) => {}
                Ok(n) => {
                    if client_write.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                }
            },
            _ = kill.notified() => break,
        }
    }
    up.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_an_unknown_outcome_stores_exactly_one_copy() {
    let guarded = common::fresh_store().await;
    let schema = guarded.store().schema().to_owned();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let upstream = {
        let url = common::url();
        let config: tokio_postgres::Config = url.parse().unwrap();
        let port = config.get_ports().first().copied().unwrap_or(5432);
        format!("127.0.0.1:{port}")
    };
    let cut = Arc::new(AtomicBool::new(false));
    let cut_for_proxy = cut.clone();
    let proxy = tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(pump(client, upstream.clone(), cut_for_proxy.clone()));
        }
    });
    let mut url: tokio_postgres::Config = common::url().parse().unwrap();
    url.host("127.0.0.1").port(port);
    let proxied_url = format!(
        "postgresql://{}@127.0.0.1:{port}/{}",
        url.get_user().unwrap_or("postgres"),
        url.get_dbname().unwrap_or("test")
    );
    let options = PostgresOptions {
        schema,
        pool_size: 1,
        ..PostgresOptions::default()
    };
    let store = PostgresStore::connect_with(&proxied_url, options)
        .await
        .unwrap();
    let stream = StreamId::new("order-1").unwrap();
    // Prepare the append statement on the pooled connection, so the next message the client
    // sends is the append itself.
    store
        .append(vec![StreamWrite::new(
            StreamId::new("warm-1").unwrap(),
            ExpectedVersion::NoStream,
            vec![NewEvent::json("Warm", &json!({}))],
        )])
        .await
        .unwrap();
    let batch: Vec<NewEvent> = (0..3)
        .map(|i| NewEvent::json("Placed", &json!({ "i": i })))
        .collect();
    let write = || {
        vec![StreamWrite::new(
            stream.clone(),
            ExpectedVersion::NoStream,
            batch.clone(),
        )]
    };
    cut.store(true, Ordering::SeqCst);
    let first = store.append(write()).await;
    assert!(
        matches!(first, Err(StoreError::Backend { .. })),
        "the broken connection leaves the outcome unknown: {first:?}"
    );
    let stored: Vec<_> = guarded
        .read_stream(&stream, ReadStream::forward())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(stored.len(), 3, "the server committed the first attempt");
    let retry = store
        .append(write())
        .await
        .expect("retrying with the same ids succeeds");
    let after: Vec<_> = guarded
        .read_stream(&stream, ReadStream::forward())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(after, stored, "the retry wrote nothing: exactly one copy");
    assert_eq!(retry.streams[0].version, 3);
    assert_eq!(retry.streams[0].first_position, Some(stored[0].position));
    assert_eq!(retry.streams[0].last_position, Some(stored[2].position));
    proxy.abort();
}

#[derive(Default)]
struct Counter {
    value: u64,
}

#[derive(Clone, Debug)]
struct Increment;

#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
enum CounterEvent {
    Incremented,
}

impl DomainEvent for CounterEvent {}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Aggregate for Counter {
    const CATEGORY: &'static str = "counter";
    type Command = Increment;
    type Event = CounterEvent;
    type Error = Never;
    fn apply(&mut self, _: &CounterEvent) {
        self.value += 1;
    }
    fn handle(&self, _: Increment) -> Result<Vec<CounterEvent>, Never> {
        Ok(vec![CounterEvent::Incremented])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pools_running_one_command_flow_keep_revisions_contiguous() {
    let guarded = common::fresh_store().await;
    let schema = guarded.store().schema().to_owned();
    let mut tasks = Vec::new();
    for _pool in 0..2 {
        let options = PostgresOptions {
            schema: schema.clone(),
            pool_size: 4,
            ..PostgresOptions::default()
        };
        let store = PostgresStore::connect_with(&common::url(), options)
            .await
            .unwrap();
        for task in 0..4u64 {
            let repository = Repository::<Counter, _>::new(store.clone())
                .with_max_retries(50)
                .unwrap();
            tasks.push(tokio::spawn(async move {
                let (mut done, mut conflicts) = (0u64, 0u64);
                for i in 0..25u64 {
                    match repository
                        .execute(&format!("{}", (task + i) % 3), Increment)
                        .await
                    {
                        Ok(_) => done += 1,
                        Err(CommandError::TooManyConflicts { .. }) => conflicts += 1,
                        Err(other) => panic!("only typed conflicts may fail a command: {other}"),
                    }
                }
                (done, conflicts)
            }));
        }
    }
    let mut done = 0;
    for t in tasks {
        done += t.await.unwrap().0;
    }
    let mut total = 0;
    for id in 0..3 {
        let stream = StreamId::new(format!("counter-{id}")).unwrap();
        let events: Vec<_> = guarded
            .read_stream(&stream, ReadStream::forward())
            .try_collect()
            .await
            .unwrap();
        let revisions: Vec<u64> = events.iter().map(|e| e.revision).collect();
        assert_eq!(
            revisions,
            (0..events.len() as u64).collect::<Vec<_>>(),
            "contiguous"
        );
        total += events.len() as u64;
    }
    assert_eq!(
        total, done,
        "every acknowledged command is stored exactly once"
    );
    let log: Vec<_> = guarded
        .read_all(ReadAll::forward())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(log.len() as u64, total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_inside_a_transaction_share_it_and_refusals_leave_it_usable() {
    let guarded = common::fresh_store().await;
    let pg = guarded.store();
    let (a, b) = (
        StreamId::new("tx-a").unwrap(),
        StreamId::new("tx-b").unwrap(),
    );
    let write = |s: &StreamId, expected, events: Vec<NewEvent>| {
        vec![StreamWrite::new(s.clone(), expected, events)]
    };
    let e1 = NewEvent::json("One", &json!({ "n": 1 }));
    let mut client = pg.client().await.unwrap();
    let mut tx = client.transaction().await.unwrap();
    let first = pg
        .append_in_transaction(
            &mut tx,
            write(&a, ExpectedVersion::NoStream, vec![e1.clone()]),
        )
        .await
        .unwrap();
    let second = pg
        .append_in_transaction(
            &mut tx,
            write(
                &b,
                ExpectedVersion::NoStream,
                vec![
                    NewEvent::json("Two", &json!({})),
                    NewEvent::json("Three", &json!({})),
                ],
            ),
        )
        .await
        .expect("a second append in the same transaction");
    assert!(second.streams[0].first_position > first.streams[0].last_position);
    match pg
        .append_in_transaction(
            &mut tx,
            write(
                &a,
                ExpectedVersion::Exact(5),
                vec![NewEvent::json("Stale", &json!({}))],
            ),
        )
        .await
    {
        Err(StoreError::Conflict { actual, .. }) => assert_eq!(actual, Some(1)),
        other => panic!("a stale expectation inside a transaction is a Conflict: {other:?}"),
    }
    let again = pg
        .append_in_transaction(&mut tx, write(&a, ExpectedVersion::NoStream, vec![e1]))
        .await
        .expect("repeating an append inside the transaction is idempotent");
    assert_eq!(again, first);
    tx.commit().await.expect("the transaction is still usable");
    pg.announce();
    let log: Vec<_> = guarded
        .read_all(ReadAll::forward())
        .try_collect()
        .await
        .unwrap();
    let types: Vec<&str> = log.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        vec!["One", "Two", "Three"],
        "exactly the accepted appends, in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_in_the_schema_pass_the_snapshot_cases() {
    let store = common::fresh_store().await;
    let inner = store.store().clone();
    sirenia_testkit::snapshots::snapshot_store_cases(&*inner.snapshots()).await;
    sirenia_testkit::snapshots::snapshot_repository_cases(inner.clone(), inner.snapshots()).await;
    sirenia_testkit::snapshots::lifecycle_repository_cases(inner.clone(), inner.snapshots()).await;
}

/// Every connection over TLS when asked: the server's certificate is verified (against the
/// server's own certificate file as the trusted root here), appends and reads work, the
/// session is encrypted, and a server whose name does not match its certificate is refused.
/// Needs `ssl = on` on the local server (Debian's default, with its snake-oil certificate for
/// `localhost`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connections_are_verified_and_encrypted() {
    let (client, connection) = tokio_postgres::connect(&common::url(), tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {} is needed: {e}", common::url()));
    tokio::spawn(connection);
    let setting = |name: &'static str| {
        let client = &client;
        async move {
            let row = client
                .query_one(&format!("SHOW {name}"), &[])
                .await
                .unwrap();
            row.get::<_, String>(0)
        }
    };
    assert_eq!(
        setting("ssl").await,
        "on",
        "the TLS test needs ssl = on on the local PostgreSQL"
    );
    let mut cert = std::path::PathBuf::from(setting("ssl_cert_file").await);
    if cert.is_relative() {
        cert = std::path::PathBuf::from(setting("data_directory").await).join(cert);
    }
    let tls_url = std::env::var("SIRENIA_TEST_POSTGRES_TLS_URL").unwrap_or_else(|_| {
        "postgresql://postgres@localhost:5432/test?hostaddr=127.0.0.1&sslmode=require".to_owned()
    });
    let schema = format!("sirenia_tls_{}", uuid::Uuid::now_v7().simple());
    let _guard = common::SchemaGuard(schema.clone());
    let options = PostgresOptions {
        schema,
        pool_size: 2,
        tls: Some(sirenia_postgres::TlsOptions {
            root_certificates: Some(cert.clone()),
        }),
        ..PostgresOptions::default()
    };
    let store = PostgresStore::connect_with(&tls_url, options.clone())
        .await
        .unwrap_or_else(|e| panic!("a TLS connection to {tls_url} with {cert:?} as root: {e}"));
    let stream = StreamId::new("tls-1").unwrap();
    store
        .append(vec![StreamWrite::new(
            stream.clone(),
            ExpectedVersion::NoStream,
            vec![NewEvent::json("Sealed", &json!({ "secret": 42 }))],
        )])
        .await
        .unwrap();
    let read: Vec<_> = store
        .read_stream(&stream, ReadStream::forward())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(read.len(), 1);
    let pooled = store.client().await.unwrap();
    let encrypted: bool = pooled
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(encrypted, "the pooled session is not encrypted");
    // The certificate names `localhost`; a connection to the address alone cannot verify it.
    let by_address = tls_url.replace("@localhost", "@127.0.0.1");
    assert_ne!(by_address, tls_url);
    match PostgresStore::connect_with(&by_address, options).await {
        Err(StoreError::Backend { .. }) => {}
        Err(other) => panic!("an unverifiable server is a backend error, got {other:?}"),
        Ok(_) => panic!("a server whose name does not match its certificate was accepted"),
    }
}

/// Single-stream appends outside a transaction take one plain-SQL statement whatever their
/// expectation, when it holds; refusals and multi-stream appends go to the append function.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_take_one_statement_when_they_can() {
    let store = common::fresh_store().await;
    let inner = store.store().clone();
    let s = StreamId::new("paths-1").unwrap();
    let one =
        |expected| StreamWrite::new(s.clone(), expected, vec![NewEvent::json("E", &json!({}))]);
    for expected in [
        ExpectedVersion::NoStream,
        ExpectedVersion::Exact(1),
        ExpectedVersion::Any,
        ExpectedVersion::StreamExists,
    ] {
        inner.append(vec![one(expected)]).await.unwrap();
    }
    let batch = StreamWrite::new(
        s.clone(),
        ExpectedVersion::Exact(4),
        vec![
            NewEvent::json("E", &json!({})),
            NewEvent::json("E", &json!({})),
        ],
    );
    inner.append(vec![batch]).await.unwrap();
    let paths = inner.append_paths();
    assert_eq!(
        (paths.one_statement, paths.by_function),
        (5, 0),
        "every append whose expectation held took one statement"
    );
    let refused = inner.append(vec![one(ExpectedVersion::Exact(1))]).await;
    assert!(
        matches!(
            refused,
            Err(StoreError::Conflict {
                actual: Some(6),
                ..
            })
        ),
        "{refused:?}"
    );
    let t = StreamId::new("paths-2").unwrap();
    inner
        .append(vec![
            one(ExpectedVersion::Exact(6)),
            StreamWrite::new(
                t,
                ExpectedVersion::NoStream,
                vec![NewEvent::json("E", &json!({}))],
            ),
        ])
        .await
        .unwrap();
    assert_eq!(
        inner.append_paths().by_function,
        2,
        "a refusal and a multi-stream append"
    );
}

/// A single event takes one of twelve statements: by what the store knows of the stream (the
/// version it remembers, an expected version to check, or nothing) and by the columns the event
/// fills (a JSON or a bytes payload, with or without metadata). Each stores every column as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_event_appends_store_every_column_in_every_statement_shape() {
    let (_guard, a, b) = two_pools().await;
    let (c, d) = (another_pool(&a).await, another_pool(&a).await);
    let metadata = Metadata::default()
        .with_correlation_id("corr-1")
        .with("user", json!({"id": 7}));
    let kinds = [
        NewEvent::json("Json", &json!({"a": [1, {"b": "c"}]})).with_schema_version(3),
        NewEvent::json("JsonMeta", &json!({"n": 1.5})).with_metadata(metadata.clone()),
        NewEvent::raw("Bytes", "application/octet-stream", vec![0u8, 255, 10]),
        NewEvent::raw("BytesMeta", "application/octet-stream", vec![1u8, 2])
            .with_schema_version(2)
            .with_metadata(metadata.clone()),
        // JSON that jsonb refuses keeps its bytes.
        NewEvent::raw("Surrogate", JSON_CONTENT_TYPE, br#""\ud800""#.to_vec())
            .with_metadata(metadata.clone()),
    ];
    for (k, kind) in kinds.iter().enumerate() {
        let s = StreamId::new(format!("columns-{k}")).unwrap();
        // Known (0, then remembered), checked by a pool that remembers nothing of the stream,
        // then computed by two more such pools.
        let steps = [
            (&a, ExpectedVersion::NoStream),
            (&a, ExpectedVersion::Any),
            (&b, ExpectedVersion::Exact(2)),
            (&c, ExpectedVersion::Any),
            (&d, ExpectedVersion::StreamExists),
        ];
        let mut sent = Vec::new();
        for (revision, (store, expected)) in steps.into_iter().enumerate() {
            let event = kind.clone().with_id(EventId::new());
            let result = store
                .append(vec![StreamWrite::new(
                    s.clone(),
                    expected,
                    vec![event.clone()],
                )])
                .await
                .unwrap();
            assert_eq!(result.streams[0].first_revision, revision as u64);
            sent.push(event);
        }
        let stored: Vec<_> = a
            .read_stream(&s, ReadStream::forward())
            .try_collect()
            .await
            .unwrap();
        assert_eq!(stored.len(), sent.len());
        for (sent, stored) in sent.iter().zip(&stored) {
            assert_eq!(
                (&stored.id, &stored.event_type, stored.schema_version),
                (&sent.id, &sent.event_type, sent.schema_version)
            );
            assert_eq!(
                stored.content_type, sent.content_type,
                "{}",
                sent.event_type
            );
            assert_eq!(stored.metadata, sent.metadata, "{}", sent.event_type);
            match serde_json::from_slice::<serde_json::Value>(&sent.data) {
                Ok(value) if sent.content_type == JSON_CONTENT_TYPE => {
                    assert_eq!(stored.json().unwrap(), value, "{}", sent.event_type);
                }
                _ => assert_eq!(stored.data, sent.data, "{}", sent.event_type),
            }
        }
    }
    for store in [&a, &b, &c, &d] {
        assert_eq!(
            store.append_paths().by_function,
            0,
            "every append took its one statement"
        );
    }
}

/// The log has no CHECK constraint (a per-statement cost): every way the store writes fills
/// exactly one payload column, and a row written otherwise by hand reads as corrupt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_fills_one_payload_column_and_reads_refuse_rows_that_do_not() {
    let guarded = common::fresh_store().await;
    let store = guarded.store();
    let json_event = || NewEvent::json("Json", &json!({"a": 1}));
    let bytes_event = || NewEvent::raw("Bytes", "application/octet-stream", vec![1u8, 2]);
    let stream = |name: &str| StreamId::new(name).unwrap();
    // One statement: one event of each kind, then a batch of both.
    for (name, events) in [
        ("one-json", vec![json_event()]),
        ("one-bytes", vec![bytes_event()]),
        ("batch", vec![json_event(), bytes_event(), json_event()]),
    ] {
        store
            .append(vec![StreamWrite::new(
                stream(name),
                ExpectedVersion::Any,
                events,
            )])
            .await
            .unwrap();
    }
    // The append function: two streams at once, and inside a caller's transaction.
    store
        .append(vec![
            StreamWrite::new(stream("multi-a"), ExpectedVersion::Any, vec![bytes_event()]),
            StreamWrite::new(stream("multi-b"), ExpectedVersion::Any, vec![json_event()]),
        ])
        .await
        .unwrap();
    let mut client = store.client().await.unwrap();
    let mut tx = client.transaction().await.unwrap();
    store
        .append_in_transaction(
            &mut tx,
            vec![StreamWrite::new(
                stream("in-tx"),
                ExpectedVersion::NoStream,
                vec![json_event(), bytes_event()],
            )],
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // A fence, and a stream recreated through it.
    store
        .delete_stream(&stream("one-json"), ExpectedVersion::Any)
        .await
        .unwrap();
    store
        .tombstone_stream(&stream("one-bytes"), ExpectedVersion::Any)
        .await
        .unwrap();
    store
        .append(vec![StreamWrite::new(
            stream("one-json"),
            ExpectedVersion::Any,
            vec![bytes_event()],
        )])
        .await
        .unwrap();
    let s = format!("\"{}\"", store.schema());
    let constraints: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = ($1 || '.events')::regclass \
             AND contype = 'c'",
            &[&s],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(constraints, 0, "migration 5 dropped the CHECK constraint");
    let (rows, bad): (i64, i64) = {
        let row = client
            .query_one(
                &format!(
                    "SELECT count(*), count(*) FILTER (WHERE (data IS NULL) = \
                     (data_bytes IS NULL)) FROM {s}.events"
                ),
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    // Ten events, and the tombstone's fence (the deleted stream's gave way to its new event).
    assert_eq!((rows, bad), (11, 0), "every row has exactly one payload");
    // Rows written by hand with both payloads or none.
    for (name, json, bytes) in [
        ("both", Some(json!({"a": 1})), Some(vec![1u8])),
        ("none", None, None),
    ] {
        let id = EventId::new();
        client
            .execute(
                &format!(
                    "INSERT INTO {s}.events (position, stream_id, revision, event_id, \
                     event_type, schema_version, content_type, data, data_bytes) \
                     VALUES (pg_current_xact_id()::text::bigint * 1048576, $1, 0, $2, 'E', 1, \
                     'application/json', $3, $4)"
                ),
                &[&name, id.as_uuid(), &json, &bytes],
            )
            .await
            .unwrap();
        let read: Result<Vec<_>, _> = store
            .read_stream(&stream(name), ReadStream::forward())
            .try_collect()
            .await;
        assert!(
            matches!(read, Err(StoreError::Corrupt { .. })),
            "{name}: {read:?}"
        );
        let by_id = store.event_by_id(id).await;
        assert!(
            matches!(by_id, Err(StoreError::Corrupt { .. })),
            "{name}: {by_id:?}"
        );
    }
}

/// A store on `schema` that only notifications can wake: its poll interval is an hour.
async fn woken_only_by_notifications(schema: &str) -> PostgresStore {
    let options = PostgresOptions {
        schema: schema.to_owned(),
        pool_size: 2,
        poll_interval: Duration::from_secs(3600),
        ..PostgresOptions::default()
    };
    PostgresStore::connect_with(&common::url(), options)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_live_wait_waits_instead_of_polling() {
    let guarded = common::fresh_store().await;
    let store = woken_only_by_notifications(guarded.store().schema()).await;
    // Nothing is appended: every return is spurious. The contract allows a few (the listener
    // connecting is announced); a wait that returns at once would return thousands of times.
    let mut returns = 0u32;
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        loop {
            store
                .wait_for_events(sirenia_core::Position(1))
                .await
                .unwrap();
            returns += 1;
        }
    })
    .await;
    assert!(
        returns <= 3,
        "the wait returned {returns} times with nothing appended"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_through_another_pool_wakes_a_live_wait() {
    let guarded = common::fresh_store().await;
    let waiting = woken_only_by_notifications(guarded.store().schema()).await;
    let waiter = tokio::spawn(async move {
        loop {
            let page = waiting
                .read_all_page(
                    sirenia_core::Position(0),
                    sirenia_core::Direction::Forward,
                    &sirenia_core::EventFilter::default(),
                    10,
                )
                .await
                .unwrap();
            if !page.events.is_empty() {
                return page.events.len();
            }
            waiting
                .wait_for_events(sirenia_core::Position(1))
                .await
                .unwrap();
        }
    });
    // Give the waiter time to block (it is woken either way; this only makes the test
    // exercise a wait rather than the first read).
    tokio::time::sleep(Duration::from_millis(200)).await;
    guarded
        .store()
        .append(vec![StreamWrite::new(
            StreamId::new("woken-1").unwrap(),
            ExpectedVersion::NoStream,
            vec![NewEvent::json("Happened", &json!({}))],
        )])
        .await
        .unwrap();
    // Without the cross-process notification the waiter would sleep for its hour.
    let seen = tokio::time::timeout(Duration::from_secs(60), waiter)
        .await
        .expect("a notification should wake the waiting store")
        .unwrap();
    assert_eq!(seen, 1);
}

fn one_event() -> Vec<NewEvent> {
    vec![NewEvent::json("E", &json!({}))]
}

/// One event appended to `stream` with `expected`.
async fn append_one(
    store: &PostgresStore,
    stream: &StreamId,
    expected: ExpectedVersion,
) -> Result<sirenia_core::AppendResult, StoreError> {
    store
        .append(vec![StreamWrite::new(
            stream.clone(),
            expected,
            one_event(),
        )])
        .await
}

/// A second store (pool) on the schema of `first`, as another process would have.
async fn another_pool(first: &PostgresStore) -> PostgresStore {
    let options = PostgresOptions {
        schema: first.schema().to_owned(),
        pool_size: 4,
        ..PostgresOptions::default()
    };
    PostgresStore::connect_with(&common::url(), options)
        .await
        .unwrap()
}

/// A fresh store and a second pool on its schema (dropped with the first element).
async fn two_pools() -> (
    sirenia_testkit::Guarded<PostgresStore, common::SchemaGuard>,
    PostgresStore,
    PostgresStore,
) {
    let guarded = common::fresh_store().await;
    let a = guarded.store().clone();
    let b = another_pool(&a).await;
    (guarded, a, b)
}

/// What the tables hold for `stream`: its events' revisions are 0, 1, … with no gap, and it has
/// a fence (at its version) exactly when it is deleted or tombstoned. Returns the version and
/// the lifecycle status.
async fn assert_fenced_as_its_status(schema: &str, stream: &str) -> (i64, i16) {
    let (client, connection) = tokio_postgres::connect(&common::url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let row = client
        .query_one(
            &format!(
                "SELECT count(*), coalesce(max(revision) + 1, 0), \
                 coalesce((SELECT status FROM \"{schema}\".streams WHERE stream_id = $1), 0)::smallint \
                 FROM \"{schema}\".events WHERE stream_id = $1 AND position > 0"
            ),
            &[&stream],
        )
        .await
        .unwrap();
    let (count, version, status): (i64, i64, i16) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(count, version, "{stream}: revisions without a gap");
    let fences: Vec<i64> = client
        .query(
            &format!(
                "SELECT revision FROM \"{schema}\".events WHERE stream_id = $1 AND position < 0"
            ),
            &[&stream],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    if status == 0 {
        assert!(fences.is_empty(), "{stream}: an active stream has no fence");
    } else {
        assert_eq!(fences, vec![version], "{stream}: one fence, at the version");
    }
    (version, status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_in_another_pool_stops_appends_at_a_remembered_version() {
    let (_guarded, a, b) = two_pools().await;
    let schema = a.schema().to_owned();
    // Tombstoned elsewhere: the version `a` remembers meets the fence.
    let gone = StreamId::new("fenced-1").unwrap();
    for _ in 0..3 {
        append_one(&a, &gone, ExpectedVersion::Any).await.unwrap();
    }
    b.tombstone_stream(&gone, ExpectedVersion::Exact(3))
        .await
        .unwrap();
    for expected in [ExpectedVersion::Any, ExpectedVersion::Exact(3)] {
        let refused = append_one(&a, &gone, expected).await;
        assert!(
            matches!(refused, Err(StoreError::StreamTombstoned { .. })),
            "{refused:?}"
        );
    }
    assert_eq!(
        assert_fenced_as_its_status(&schema, "fenced-1").await,
        (3, 2)
    );
    // Soft-deleted elsewhere: an expectation of the old version conflicts, `Any` recreates
    // the stream and its revisions go on.
    let deleted = StreamId::new("fenced-2").unwrap();
    for _ in 0..2 {
        append_one(&a, &deleted, ExpectedVersion::Any)
            .await
            .unwrap();
    }
    b.delete_stream(&deleted, ExpectedVersion::Any)
        .await
        .unwrap();
    assert_eq!(
        assert_fenced_as_its_status(&schema, "fenced-2").await,
        (2, 1)
    );
    let stale = append_one(&a, &deleted, ExpectedVersion::Exact(2)).await;
    assert!(
        matches!(stale, Err(StoreError::Conflict { actual: None, .. })),
        "{stale:?}"
    );
    let recreated = append_one(&a, &deleted, ExpectedVersion::Any)
        .await
        .unwrap();
    assert_eq!(recreated.streams[0].first_revision, 2, "revisions go on");
    assert_eq!(
        assert_fenced_as_its_status(&schema, "fenced-2").await,
        (3, 0)
    );
    let read: Vec<u64> = a
        .read_stream(&deleted, ReadStream::forward())
        .map_ok(|e| e.revision)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(read, vec![2], "only the new life reads");
    // Fences are not events: the log holds the six appended, and nothing else.
    let log: Vec<_> = a.read_all(ReadAll::forward()).try_collect().await.unwrap();
    assert_eq!(log.len(), 6);
    let backward: Vec<_> = a.read_all(ReadAll::backward()).try_collect().await.unwrap();
    assert_eq!(backward.len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_of_one_stream_from_two_pools_all_succeed_without_gaps() {
    let (_guarded, a, b) = two_pools().await;
    let hot = StreamId::new("hot-1").unwrap();
    let mut tasks = Vec::new();
    for store in [a.clone(), b] {
        for _ in 0..4 {
            let (store, hot) = (store.clone(), hot.clone());
            tasks.push(tokio::spawn(async move {
                let mut revisions = Vec::new();
                for _ in 0..25 {
                    let appended = append_one(&store, &hot, ExpectedVersion::Any)
                        .await
                        .expect("an append expecting any version never conflicts");
                    revisions.push(appended.streams[0].first_revision);
                }
                revisions
            }));
        }
    }
    let mut acknowledged = HashSet::new();
    for task in tasks {
        for revision in task.await.unwrap() {
            assert!(
                acknowledged.insert(revision),
                "revision {revision} given twice"
            );
        }
    }
    assert_eq!(acknowledged, (0..200).collect::<HashSet<u64>>());
    assert_eq!(
        assert_fenced_as_its_status(a.schema(), "hot-1").await,
        (200, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_changes_racing_appends_fence_exactly_at_the_version() {
    let (_guarded, a, b) = two_pools().await;
    let schema = a.schema().to_owned();
    let stream = StreamId::new("raced-1").unwrap();
    let mut writers = Vec::new();
    for store in [a.clone(), b.clone()] {
        for _ in 0..2 {
            let (store, stream) = (store.clone(), stream.clone());
            writers.push(tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                // Bounded: a writer the tombstone never stops fails the test.
                for _ in 0..5_000 {
                    match append_one(&store, &stream, ExpectedVersion::Any).await {
                        Ok(r) => acknowledged.push(r.streams[0].first_revision),
                        Err(StoreError::StreamTombstoned { .. }) => return acknowledged,
                        Err(other) => panic!("appends expecting any version: {other:?}"),
                    }
                }
                panic!("appends went on after the tombstone");
            }));
        }
    }
    // Soft deletes while the writers go on (each recreates the stream), then a tombstone.
    let mut next = 10;
    for round in 0..6 {
        while a
            .stream_info(&stream)
            .await
            .unwrap()
            .map_or(0, |i| i.version)
            < next
        {
            assert!(
                writers.iter().any(|w| !w.is_finished()),
                "the writers stopped before the tombstone"
            );
            tokio::task::yield_now().await;
        }
        if round < 5 {
            b.delete_stream(&stream, ExpectedVersion::Any)
                .await
                .unwrap();
            next += 10;
        } else {
            b.tombstone_stream(&stream, ExpectedVersion::Any)
                .await
                .unwrap();
        }
    }
    let mut acknowledged = Vec::new();
    for writer in writers {
        acknowledged.extend(writer.await.unwrap());
    }
    let (version, status) = assert_fenced_as_its_status(&schema, "raced-1").await;
    assert_eq!(status, 2, "tombstoned");
    acknowledged.sort_unstable();
    assert_eq!(
        acknowledged,
        (0..version as u64).collect::<Vec<_>>(),
        "every revision below the tombstone acknowledged once, none above"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_stream_appends_in_opposite_orders_from_two_pools_all_succeed() {
    let (_guarded, a, b) = two_pools().await;
    let (x, y) = (
        StreamId::new("pair-x").unwrap(),
        StreamId::new("pair-y").unwrap(),
    );
    let mut tasks = Vec::new();
    for (store, first, second) in [(a.clone(), x.clone(), y.clone()), (b, y.clone(), x.clone())] {
        for _ in 0..2 {
            let (store, first, second) = (store.clone(), first.clone(), second.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..25 {
                    store
                        .append(vec![
                            StreamWrite::new(first.clone(), ExpectedVersion::Any, one_event()),
                            StreamWrite::new(second.clone(), ExpectedVersion::Any, one_event()),
                        ])
                        .await
                        .expect("appends expecting any version neither conflict nor deadlock");
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    for name in ["pair-x", "pair-y"] {
        assert_eq!(
            assert_fenced_as_its_status(a.schema(), name).await,
            (100, 0)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeatable_read_transaction_behind_a_concurrent_append_gets_a_serialization_failure() {
    let (_guarded, a, b) = two_pools().await;
    let s = StreamId::new("snapshot-1").unwrap();
    append_one(&a, &s, ExpectedVersion::Any).await.unwrap();
    let mut client = a.client().await.unwrap();
    let mut tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .start()
        .await
        .unwrap();
    // The snapshot is taken by the first statement, before the other pool's append.
    tx.query_one("SELECT 1", &[]).await.unwrap();
    append_one(&b, &s, ExpectedVersion::Any).await.unwrap();
    let refused = a
        .append_in_transaction(
            &mut tx,
            vec![StreamWrite::new(
                s.clone(),
                ExpectedVersion::Any,
                one_event(),
            )],
        )
        .await;
    let Err(StoreError::Backend {
        source: Some(source),
        ..
    }) = &refused
    else {
        panic!("expected a backend error with its source: {refused:?}");
    };
    let code = source
        .downcast_ref::<tokio_postgres::Error>()
        .and_then(tokio_postgres::Error::code);
    assert_eq!(
        code,
        Some(&tokio_postgres::error::SqlState::T_R_SERIALIZATION_FAILURE),
        "{refused:?}"
    );
    drop(tx);
    assert_eq!(
        assert_fenced_as_its_status(a.schema(), "snapshot-1").await,
        (2, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_gone_back_behind_a_reconnect_leaves_no_gap() {
    let schema = sirenia_testkit::postgres::fresh_schema("sirenia_t");
    let _drop = common::SchemaGuard(schema.clone());
    let name = schema.clone();
    let url = common::url();
    let separator = if url.contains('?') { '&' } else { '?' };
    let options = PostgresOptions {
        schema: schema.clone(),
        pool_size: 2,
        ..PostgresOptions::default()
    };
    let store =
        PostgresStore::connect_with(&format!("{url}{separator}application_name={name}"), options)
            .await
            .unwrap();
    let s = StreamId::new("restored-1").unwrap();
    for _ in 0..3 {
        append_one(&store, &s, ExpectedVersion::Any).await.unwrap();
    }
    // As after a restore from before those appends (or a failover to a standby that lacked
    // them): the events are gone, and every connection the store had is cut.
    let (admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    admin
        .batch_execute(&format!(
            "DELETE FROM \"{schema}\".events WHERE stream_id = 'restored-1';
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE application_name = '{name}';"
        ))
        .await
        .unwrap();
    // Appends on cut connections fail; the first that goes through must not trust the version
    // remembered from before.
    let mut appended = None;
    for _ in 0..20 {
        if let Ok(r) = append_one(&store, &s, ExpectedVersion::Any).await {
            appended = Some(r);
            break;
        }
    }
    let appended = appended.expect("the store reconnects");
    assert_eq!(appended.streams[0].first_revision, 0, "no gap below it");
    assert_eq!(
        assert_fenced_as_its_status(&schema, "restored-1").await,
        (1, 0)
    );
}

/// Ends every other session whose last statement read `schema`'s projection checkpoints (a
/// projection backend's connection), as a server restart or a killed session would.
async fn terminate_projection_sessions(schema: &str) -> u64 {
    let (client, connection) = tokio_postgres::connect(&common::url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let rows = client
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE pid <> pg_backend_pid() AND query LIKE $1",
            &[&format!("%\"{schema}\".projections%")],
        )
        .await
        .unwrap();
    rows.len() as u64
}

/// A backend whose connection was killed opens a new one (at-least-once checkpoints go on);
/// one that held a projection's lock refuses to commit without it, the lock is free for
/// another instance, and starting again takes it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projection_backends_survive_a_killed_connection_and_never_commit_without_the_lock() {
    use sirenia_core::Position;
    use sirenia_core::projection::{CheckpointStore, EventBatch, ProjectionTarget};
    use sirenia_core::transactional::NoDocuments;

    let store = common::fresh_store().await;
    let inner = store.store().clone();
    let schema = inner.schema().to_owned();

    let mut checkpoints = inner.checkpoints();
    checkpoints.save("relay", Position(5)).await.unwrap();
    assert_eq!(checkpoints.load("relay").await.unwrap().next, Position(5));
    assert_eq!(terminate_projection_sessions(&schema).await, 1);
    // The first use may be the one that finds the connection gone; the next opens a new one.
    if checkpoints.save("relay", Position(7)).await.is_err() {
        checkpoints.save("relay", Position(7)).await.unwrap();
    }
    assert_eq!(checkpoints.load("relay").await.unwrap().next, Position(7));

    let mut active = inner.document_projection("locked", NoDocuments);
    active.start().await.unwrap();
    // The target's session, and the checkpoint store's if it is still open.
    assert!(terminate_projection_sessions(&schema).await >= 1);
    for _ in 0..2 {
        assert!(
            active
                .apply(EventBatch::new(Vec::new()), Position(9))
                .await
                .is_err(),
            "committed without the projection's lock"
        );
    }
    assert_eq!(inner.checkpoint("locked").await.unwrap().next, Position(1));
    // The lock went with the session: another instance takes it at once.
    let mut other = inner.document_projection("locked", NoDocuments);
    tokio::time::timeout(Duration::from_secs(30), other.start())
        .await
        .expect("the killed session's lock was released")
        .unwrap();
    drop(other);
    active.start().await.unwrap();
    active
        .apply(EventBatch::new(Vec::new()), Position(9))
        .await
        .unwrap();
    assert_eq!(inner.checkpoint("locked").await.unwrap().next, Position(9));
}
