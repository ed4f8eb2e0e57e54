//! `sirenia serve` driven by the official clients, on the embedded store and on PostgreSQL:
//! the EventStoreDB Node.js client (`@eventstore/db-client`, installed by `npm ci` on first
//! use) and the Rust `kurrentdb` crate, and streams shared between them and the library.
//! Malformed calls, authentication, TLS and shutdown are in `protocol.rs`.
//!
//! Needs Node.js and npm, and PostgreSQL (`SIRENIA_TEST_POSTGRES_URL`, default the local
//! `test` database); without them the tests fail, they are not skipped.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Value, json};
use sirenia::postgres::{PostgresOptions, PostgresStore};
use sirenia::{
    AnyStore, EventFilter, EventId, EventStore, ExpectedVersion, Metadata, NewEvent, ReadAll,
    ReadStream, StreamId, StreamWrite,
};
use sirenia_grpc::ServeOptions;
use tokio::sync::oneshot;

/// A bound on every wait, so a broken server fails the test instead of hanging it.
const WAIT: Duration = Duration::from_secs(30);

use sirenia::testkit::postgres::{DropSchema, url as postgres_url};

enum Place {
    Embedded(#[allow(dead_code)] tempfile::TempDir),
    Postgres(#[allow(dead_code)] DropSchema),
}

/// A store with a server in front of it; the server stops when this is dropped.
struct Served {
    store: AnyStore,
    port: u16,
    stop: Option<oneshot::Sender<()>>,
    _place: Place,
}

impl Served {
    async fn start(postgres: bool, options: ServeOptions) -> Served {
        let (store, place) = if postgres {
            let schema = sirenia::testkit::postgres::fresh_schema("sirenia_grpc");
            let options = PostgresOptions {
                schema: schema.clone(),
                pool_size: 8,
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
            (AnyStore::from(store), Place::Postgres(DropSchema(schema)))
        } else {
            let dir = tempfile::tempdir().unwrap();
            let store = AnyStore::open(dir.path().join("store.db").to_str().unwrap())
                .await
                .unwrap();
            (store, Place::Embedded(dir))
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, stopped) = oneshot::channel::<()>();
        let served = store.clone();
        tokio::spawn(async move {
            sirenia_grpc::serve(served, listener, options, async {
                let _ = stopped.await;
            })
            .await
            .expect("the server failed");
        });
        Served {
            store,
            port,
            stop: Some(stop),
            _place: place,
        }
    }

    fn esdb_url(&self) -> String {
        format!("esdb://127.0.0.1:{}?tls=false", self.port)
    }

    fn kurrentdb(&self) -> kurrentdb::Client {
        let settings = format!("kurrentdb://127.0.0.1:{}?tls=false", self.port)
            .parse()
            .unwrap();
        kurrentdb::Client::new(settings).unwrap()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Served::start(false, Default::default()).await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Served::start(true, Default::default()).await).await;
                }
            )*
        }
    };
}

on_both_stores!(
    node_client,
    kurrentdb_client,
    library_and_clients_share_streams,
    subscriptions_miss_nothing_under_concurrent_appends
);

// ---------------------------------------------------------------------------------------------
// The Node.js client

fn node_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node")
}

/// Installs the Node client once per test binary (`npm ci`: exactly the locked versions).
fn install_node_client() {
    static INSTALLED: Mutex<bool> = Mutex::new(false);
    let mut installed = INSTALLED.lock().unwrap_or_else(|e| e.into_inner());
    if *installed {
        return;
    }
    let dir = node_dir();
    if !dir
        .join("node_modules/@eventstore/db-client/package.json")
        .exists()
    {
        let status = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .status()
            .unwrap_or_else(|e| panic!("npm is needed to install the Node client: {e}"));
        assert!(status.success(), "npm ci failed in {}", dir.display());
    }
    *installed = true;
}

/// Events the library writes for a client to read: ids, types, JSON data and metadata.
fn library_events() -> Vec<NewEvent> {
    vec![
        NewEvent::json("Opened", &json!({"owner": "grace", "limit": 500})).with_metadata(
            Metadata::default()
                .with_correlation_id("lib-corr")
                .with("tenant", json!("acme")),
        ),
        NewEvent::json("Deposited", &json!({"amount": 7, "note": "ünïcode"}))
            .with_metadata(Metadata::default().with_causation_id("lib-cause")),
    ]
}

/// The custom metadata a client sees for `metadata`.
fn client_metadata(metadata: &Metadata) -> Value {
    let mut object = serde_json::Map::new();
    if let Some(id) = &metadata.correlation_id {
        object.insert("$correlationId".into(), json!(id));
    }
    if let Some(id) = &metadata.causation_id {
        object.insert("$causationId".into(), json!(id));
    }
    for (key, value) in &metadata.user {
        object.insert(key.clone(), value.clone());
    }
    Value::Object(object)
}

async fn write_library_stream(store: &AnyStore, stream: &str) -> Vec<NewEvent> {
    let events = library_events();
    store
        .append(vec![StreamWrite::new(
            StreamId::new(stream).unwrap(),
            ExpectedVersion::NoStream,
            events.clone(),
        )])
        .await
        .unwrap();
    events
}

async fn node_client(served: Served) {
    install_node_client();
    let dir = tempfile::tempdir().unwrap();
    let fixture = dir.path().join("fixture.json");
    let output = dir.path().join("output.json");
    let events = write_library_stream(&served.store, "account-lib").await;
    let expected: Vec<Value> = events
        .iter()
        .map(|e| {
            json!({
                "id": e.id.to_string(),
                "type": e.event_type,
                "data": serde_json::from_slice::<Value>(&e.data).unwrap(),
                "metadata": client_metadata(&e.metadata),
            })
        })
        .collect();
    std::fs::write(
        &fixture,
        json!({"stream": "account-lib", "events": expected}).to_string(),
    )
    .unwrap();

    let mut child = tokio::process::Command::new("node")
        .arg("client.test.mjs")
        .arg(served.esdb_url())
        .arg(&fixture)
        .arg(&output)
        .current_dir(node_dir())
        .kill_on_drop(true)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("Node.js is needed by this test: {e}"));
    let mut stdout = child.stdout.take().unwrap();
    let run = async {
        let mut text = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut stdout, &mut text)
            .await
            .unwrap();
        (child.wait().await.unwrap(), text)
    };
    let (status, text) = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the Node client's checks did not finish");
    println!("{text}");
    assert!(status.success(), "the Node client's checks failed:\n{text}");

    // What Node wrote, read through the library.
    let written: Value = serde_json::from_slice(&std::fs::read(&output).unwrap()).unwrap();
    let stream = StreamId::new(written["stream"].as_str().unwrap()).unwrap();
    let stored: Vec<_> = served
        .store
        .read_stream(&stream, ReadStream::forward())
        .collect()
        .await;
    let sent = written["events"].as_array().unwrap();
    assert_eq!(stored.len(), sent.len());
    for (i, (stored, sent)) in stored.into_iter().zip(sent).enumerate() {
        let stored = stored.unwrap();
        assert_eq!(stored.revision, i as u64);
        assert_eq!(stored.id.to_string(), sent["id"].as_str().unwrap());
        assert_eq!(stored.event_type, sent["type"].as_str().unwrap());
        assert_eq!(stored.content_type, "application/json");
        assert_eq!(stored.json().unwrap(), sent["data"]);
        assert_eq!(client_metadata(&stored.metadata), sent["metadata"]);
    }
    let first = served
        .store
        .read_stream(&stream, ReadStream::forward())
        .next()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.metadata.correlation_id.as_deref(), Some("node-corr"));
    assert_eq!(first.metadata.user.get("source"), Some(&json!("node")));
}

// ---------------------------------------------------------------------------------------------
// The Rust client

async fn read_all_of(stream: &mut kurrentdb::ReadStream) -> Vec<kurrentdb::RecordedEvent> {
    let mut events = Vec::new();
    while let Some(event) = tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap()
        .unwrap()
    {
        events.push(event.event.expect("an event"));
    }
    events
}

async fn read(
    client: &kurrentdb::Client,
    stream: &str,
    options: &kurrentdb::ReadStreamOptions,
) -> kurrentdb::Result<Vec<kurrentdb::RecordedEvent>> {
    let mut read = client.read_stream(stream, options).await?;
    let mut events = Vec::new();
    while let Some(event) = read.next().await? {
        events.push(event.event.expect("an event"));
    }
    Ok(events)
}

fn ev(event_type: &str, data: Value) -> kurrentdb::EventData {
    kurrentdb::EventData::json(event_type, &data).unwrap()
}

fn append_options(state: kurrentdb::StreamState) -> kurrentdb::AppendToStreamOptions {
    kurrentdb::AppendToStreamOptions::default().stream_state(state)
}

/// The next event a subscription delivers, skipping confirmations, checkpoints and the like;
/// `CaughtUp` is returned as `None`.
async fn next_event(
    subscription: &mut kurrentdb::Subscription,
) -> Option<kurrentdb::RecordedEvent> {
    loop {
        let event = tokio::time::timeout(WAIT, subscription.next_subscription_event())
            .await
            .expect("the subscription stalled")
            .unwrap();
        match event {
            kurrentdb::SubscriptionEvent::EventAppeared(e) => {
                return Some(e.event.expect("an event"));
            }
            kurrentdb::SubscriptionEvent::CaughtUp(_) => return None,
            _ => {}
        }
    }
}

async fn kurrentdb_client(served: Served) {
    use kurrentdb::{
        Error, ReadAllOptions, ReadStreamOptions, StreamPosition, StreamState,
        SubscribeToAllOptions, SubscribeToStreamOptions, SubscriptionFilter,
    };
    let client = served.kurrentdb();
    let postgres = matches!(served._place, Place::Postgres(_));

    // Appends with each expectation, and the conflict error.
    let r = client
        .append_to_stream(
            "order-1",
            &append_options(StreamState::NoStream),
            ev("Placed", json!({"n": 0})),
        )
        .await
        .unwrap();
    assert_eq!(r.next_expected_version, 0);
    let r = client
        .append_to_stream(
            "order-1",
            &append_options(StreamState::StreamRevision(0)),
            ev("Paid", json!({"n": 1})),
        )
        .await
        .unwrap();
    assert_eq!(r.next_expected_version, 1);
    client
        .append_to_stream(
            "order-1",
            &append_options(StreamState::StreamExists),
            ev("Packed", json!({"n": 2})),
        )
        .await
        .unwrap();
    let r = client
        .append_to_stream(
            "order-1",
            &append_options(StreamState::Any),
            vec![
                ev("Shipped", json!({"n": 3})),
                ev("Delivered", json!({"n": 4})),
            ],
        )
        .await
        .unwrap();
    assert_eq!(r.next_expected_version, 4);
    assert!(r.position.commit > 0);
    match client
        .append_to_stream(
            "order-1",
            &append_options(StreamState::StreamRevision(2)),
            ev("X", json!({})),
        )
        .await
    {
        Err(Error::WrongExpectedVersion { expected, current }) => {
            assert_eq!(expected, StreamState::StreamRevision(2));
            assert_eq!(current, kurrentdb::CurrentRevision::Current(4));
        }
        other => panic!("expected a wrong-expected-version error, got {other:?}"),
    }
    match client
        .append_to_stream(
            "order-none",
            &append_options(StreamState::StreamExists),
            ev("X", json!({})),
        )
        .await
    {
        Err(Error::WrongExpectedVersion { current, .. }) => {
            assert_eq!(current, kurrentdb::CurrentRevision::NoStream);
        }
        other => panic!("expected a wrong-expected-version error, got {other:?}"),
    }

    // Stream reads.
    let forwards = read(&client, "order-1", &ReadStreamOptions::default())
        .await
        .unwrap();
    let types: Vec<_> = forwards.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["Placed", "Paid", "Packed", "Shipped", "Delivered"]);
    assert_eq!(
        forwards.iter().map(|e| e.revision).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4]
    );
    assert!(
        forwards
            .iter()
            .all(|e| e.is_json && e.stream_id() == "order-1")
    );
    let backwards = read(
        &client,
        "order-1",
        &ReadStreamOptions::default()
            .backwards()
            .position(StreamPosition::End)
            .max_count(2),
    )
    .await
    .unwrap();
    assert_eq!(
        backwards.iter().map(|e| e.revision).collect::<Vec<_>>(),
        [4, 3]
    );
    let middle = read(
        &client,
        "order-1",
        &ReadStreamOptions::default()
            .position(StreamPosition::Position(2))
            .max_count(2),
    )
    .await
    .unwrap();
    assert_eq!(
        middle.iter().map(|e| e.revision).collect::<Vec<_>>(),
        [2, 3]
    );
    assert!(matches!(
        read(&client, "nobody-here", &ReadStreamOptions::default()).await,
        Err(Error::ResourceNotFound)
    ));

    // Exact round trips: ids, types, binary data and metadata bytes; JSON byte for byte on the
    // embedded store, equal as JSON on PostgreSQL (which normalizes jsonb).
    let id = uuid::Uuid::new_v4();
    let bin_id = uuid::Uuid::new_v4();
    let json_text = Bytes::from_static(br#"{"z": 1,  "a": [true, null, 1.5]}"#);
    let binary = Bytes::from_static(&[0, 159, 146, 150, 255]);
    let raw_meta = Bytes::from_static(b"not json \xff");
    let json_meta = Bytes::from_static(br#"{"$correlationId":"c-9","k":"v"}"#);
    client
        .append_to_stream(
            "exact-1",
            &append_options(StreamState::NoStream),
            vec![
                kurrentdb::EventData::json(
                    "Noted",
                    &serde_json::from_slice::<Value>(&json_text).unwrap(),
                )
                .unwrap()
                .id(id)
                .metadata(json_meta.clone()),
                kurrentdb::EventData::binary("Blob", binary.clone())
                    .id(bin_id)
                    .metadata(raw_meta.clone()),
            ],
        )
        .await
        .unwrap();
    let exact = read(&client, "exact-1", &ReadStreamOptions::default())
        .await
        .unwrap();
    assert_eq!(exact[0].id, id);
    assert_eq!(exact[0].event_type, "Noted");
    assert_eq!(
        serde_json::from_slice::<Value>(&exact[0].data).unwrap(),
        serde_json::from_slice::<Value>(&json_text).unwrap()
    );
    assert_eq!(exact[0].custom_metadata, json_meta);
    assert_eq!(exact[1].id, bin_id);
    assert!(!exact[1].is_json);
    assert_eq!(exact[1].data, binary);
    assert_eq!(exact[1].custom_metadata, raw_meta);
    if !postgres {
        let stored = served
            .store
            .event_by_id(EventId(id))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            exact[0].data, stored.data,
            "the embedded store keeps JSON bytes"
        );
    }

    // $all: forwards, backwards, with filters on type and stream name (prefix and regex).
    let mut all = client.read_all(&ReadAllOptions::default()).await.unwrap();
    let all = read_all_of(&mut all).await;
    assert_eq!(all.len(), 7);
    assert!(
        all.windows(2)
            .all(|w| w[0].position.commit < w[1].position.commit)
    );
    let mut last = client
        .read_all(
            &ReadAllOptions::default()
                .backwards()
                .position(StreamPosition::End)
                .max_count(1),
        )
        .await
        .unwrap();
    let last = read_all_of(&mut last).await;
    assert_eq!(last[0].id, all[6].id);
    // Backward from a position starts before it.
    let mut before = client
        .read_all(
            &ReadAllOptions::default()
                .backwards()
                .position(StreamPosition::Position(all[3].position))
                .max_count(2),
        )
        .await
        .unwrap();
    let before = read_all_of(&mut before).await;
    assert_eq!(
        before.iter().map(|e| e.id).collect::<Vec<_>>(),
        [all[2].id, all[1].id]
    );
    let mut by_type = client
        .read_all(
            &ReadAllOptions::default().filter(SubscriptionFilter::on_event_type().add_prefix("Pa")),
        )
        .await
        .unwrap();
    let by_type = read_all_of(&mut by_type).await;
    assert_eq!(
        by_type
            .iter()
            .map(|e| e.event_type.as_str())
            .collect::<Vec<_>>(),
        ["Paid", "Packed"]
    );
    let mut by_regex = client
        .read_all(
            &ReadAllOptions::default()
                .filter(SubscriptionFilter::on_stream_name().regex("^exact-"))
                .max_count(1),
        )
        .await
        .unwrap();
    let by_regex = read_all_of(&mut by_regex).await;
    assert_eq!(
        by_regex
            .iter()
            .map(|e| e.event_type.as_str())
            .collect::<Vec<_>>(),
        ["Noted"]
    );

    // Subscriptions: a stream from the start, then live; $all filtered from a position.
    let mut sub = client
        .subscribe_to_stream(
            "order-1",
            &SubscribeToStreamOptions::default().start_from(StreamPosition::Start),
        )
        .await;
    for revision in 0..5 {
        assert_eq!(next_event(&mut sub).await.unwrap().revision, revision);
    }
    assert!(next_event(&mut sub).await.is_none(), "caught up");
    // From the end: caught up at once, then only what comes next.
    let mut from_end = client
        .subscribe_to_stream(
            "order-1",
            &SubscribeToStreamOptions::default().start_from(StreamPosition::End),
        )
        .await;
    assert!(
        next_event(&mut from_end).await.is_none(),
        "caught up at once"
    );
    let mut filtered = client
        .subscribe_to_all(
            &SubscribeToAllOptions::default()
                .position(StreamPosition::Position(all[2].position))
                .filter(SubscriptionFilter::on_stream_name().add_prefix("order-")),
        )
        .await;
    for expected in &all[3..5] {
        assert_eq!(next_event(&mut filtered).await.unwrap().id, expected.id);
    }
    assert!(next_event(&mut filtered).await.is_none(), "caught up");
    client
        .append_to_stream(
            "order-1",
            &append_options(StreamState::Any),
            ev("Returned", json!({})),
        )
        .await
        .unwrap();
    client
        .append_to_stream(
            "other-1",
            &append_options(StreamState::Any),
            ev("Noise", json!({})),
        )
        .await
        .unwrap();
    client
        .append_to_stream(
            "order-2",
            &append_options(StreamState::Any),
            ev("Placed", json!({})),
        )
        .await
        .unwrap();
    let live = next_event(&mut sub).await.unwrap();
    let only_new = next_event(&mut from_end).await.unwrap();
    assert_eq!(
        (only_new.revision, only_new.event_type.as_str()),
        (5, "Returned")
    );
    assert_eq!((live.revision, live.event_type.as_str()), (5, "Returned"));
    let first_live = next_event(&mut filtered).await.unwrap();
    let second_live = next_event(&mut filtered).await.unwrap();
    assert_eq!(
        [first_live.stream_id(), second_live.stream_id()],
        ["order-1", "order-2"]
    );

    // Delete and tombstone.
    let delete = |state| kurrentdb::DeleteStreamOptions::default().stream_state(state);
    // This client reads no trailers on a delete: the status and message are what it shows.
    match client
        .delete_stream("order-2", &delete(StreamState::StreamRevision(7)))
        .await
    {
        Err(Error::Grpc { code, message }) => {
            assert_eq!(code, tonic::Code::FailedPrecondition);
            assert!(message.contains("wrong expected version"), "{message}");
        }
        other => panic!("expected a wrong-expected-version status, got {other:?}"),
    }
    client
        .delete_stream("order-2", &delete(StreamState::StreamRevision(0)))
        .await
        .unwrap();
    assert!(matches!(
        read(&client, "order-2", &ReadStreamOptions::default()).await,
        Err(Error::ResourceNotFound)
    ));
    let r = client
        .append_to_stream(
            "order-2",
            &append_options(StreamState::NoStream),
            ev("Placed", json!({})),
        )
        .await
        .unwrap();
    assert_eq!(
        r.next_expected_version, 1,
        "revisions go on after a soft delete"
    );
    client
        .tombstone_stream("order-2", &kurrentdb::TombstoneStreamOptions::default())
        .await
        .unwrap();
    assert!(matches!(
        read(&client, "order-2", &ReadStreamOptions::default()).await,
        Err(Error::ResourceDeleted)
    ));
    assert!(matches!(
        client
            .append_to_stream(
                "order-2",
                &append_options(StreamState::Any),
                ev("Placed", json!({}))
            )
            .await,
        Err(Error::ResourceDeleted)
    ));
}

// ---------------------------------------------------------------------------------------------
// Both ways between the library and a client

async fn library_and_clients_share_streams(served: Served) {
    use kurrentdb::{ReadStreamOptions, StreamState};
    let client = served.kurrentdb();
    let events = write_library_stream(&served.store, "account-7").await;
    let read_back = read(&client, "account-7", &ReadStreamOptions::default())
        .await
        .unwrap();
    assert_eq!(read_back.len(), events.len());
    for (i, (sent, got)) in events.iter().zip(&read_back).enumerate() {
        assert_eq!(got.revision, i as u64);
        assert_eq!(got.id, sent.id.0);
        assert_eq!(got.event_type, sent.event_type);
        assert_eq!(
            serde_json::from_slice::<Value>(&got.data).unwrap(),
            serde_json::from_slice::<Value>(&sent.data).unwrap()
        );
        assert_eq!(
            serde_json::from_slice::<Value>(&got.custom_metadata).unwrap(),
            client_metadata(&sent.metadata)
        );
    }
    // The client continues the library's stream with an exact expectation ...
    client
        .append_to_stream(
            "account-7",
            &append_options(StreamState::StreamRevision(1)),
            ev("Withdrawn", json!({"amount": 3})),
        )
        .await
        .unwrap();
    // ... and the library sees it at the next revision, then continues in turn.
    let stream = StreamId::new("account-7").unwrap();
    assert_eq!(served.store.stream_version(&stream).await.unwrap(), Some(3));
    served
        .store
        .append(vec![StreamWrite::new(
            stream.clone(),
            ExpectedVersion::Exact(3),
            vec![NewEvent::json("Closed", &json!({}))],
        )])
        .await
        .unwrap();
    let all: Vec<_> = served
        .store
        .read_all(ReadAll::forward().filter(EventFilter::category("account")))
        .collect()
        .await;
    let types: Vec<_> = all.into_iter().map(|e| e.unwrap().event_type).collect();
    assert_eq!(types, ["Opened", "Deposited", "Withdrawn", "Closed"]);
    let read_back = read(&client, "account-7", &ReadStreamOptions::default())
        .await
        .unwrap();
    assert_eq!(read_back.last().unwrap().event_type, "Closed");
    assert_eq!(read_back.last().unwrap().revision, 3);
}

// ---------------------------------------------------------------------------------------------
// Subscriptions through the server while writers append

/// Opens a subscription (stream `name`, or `$all` when `None`) with a raw client and returns
/// its responses after the confirmation.
async fn raw_subscription(
    port: u16,
    name: Option<&str>,
) -> tonic::Streaming<sirenia_grpc::proto::streams::ReadResp> {
    use sirenia_grpc::proto::client::StreamIdentifier;
    use sirenia_grpc::proto::streams::read_req::options::{
        self as o, AllOptions, StreamOptions, all_options, stream_options,
    };
    use sirenia_grpc::proto::streams::{ReadReq, read_req, read_resp};
    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = sirenia_grpc::proto::streams::streams_client::StreamsClient::new(channel);
    let stream_option = match name {
        Some(name) => o::StreamOption::Stream(StreamOptions {
            stream_identifier: Some(StreamIdentifier {
                stream_name: Bytes::copy_from_slice(name.as_bytes()),
            }),
            revision_option: Some(stream_options::RevisionOption::Start(Default::default())),
        }),
        None => o::StreamOption::All(AllOptions {
            all_option: Some(all_options::AllOption::Start(Default::default())),
        }),
    };
    let request = ReadReq {
        options: Some(read_req::Options {
            stream_option: Some(stream_option),
            read_direction: 0,
            resolve_links: false,
            count_option: Some(o::CountOption::Subscription(o::SubscriptionOptions {})),
            filter_option: None,
            uuid_option: None,
            control_option: None,
        }),
    };
    let mut responses = client.read(request).await.unwrap().into_inner();
    let first = responses.message().await.unwrap().unwrap();
    assert!(matches!(
        first.content,
        Some(read_resp::Content::Confirmation(_))
    ));
    responses
}

/// The (stream, revision, position) of the next `n` events a subscription delivers.
async fn next_events(
    responses: &mut tonic::Streaming<sirenia_grpc::proto::streams::ReadResp>,
    n: usize,
) -> Vec<(String, u64, u64)> {
    use sirenia_grpc::proto::streams::read_resp;
    let mut events = Vec::new();
    while events.len() < n {
        let message = tokio::time::timeout(WAIT, responses.message())
            .await
            .expect("the subscription stalled")
            .unwrap()
            .unwrap();
        if let Some(read_resp::Content::Event(e)) = message.content {
            let e = e.event.unwrap();
            let name =
                String::from_utf8(e.stream_identifier.unwrap().stream_name.to_vec()).unwrap();
            events.push((name, e.stream_revision, e.commit_position));
        }
    }
    events
}

/// A stream subscription and a `$all` subscription, both opened from the start before four
/// writers append concurrently (single events and batches, to one shared stream and their own),
/// deliver every event exactly once, in order.
async fn subscriptions_miss_nothing_under_concurrent_appends(served: Served) {
    const WRITERS: u64 = 4;
    const APPENDS: u64 = 25;
    let mut shared = raw_subscription(served.port, Some("race-1")).await;
    let mut all = raw_subscription(served.port, None).await;
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let store = served.store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..APPENDS {
                let name = if i % 2 == 0 {
                    "race-1".to_owned()
                } else {
                    format!("own-{w}")
                };
                let events = (0..1 + i % 3)
                    .map(|k| NewEvent::json("Raced", &json!({"w": w, "i": i, "k": k})))
                    .collect();
                store
                    .append(vec![StreamWrite::new(
                        StreamId::new(name).unwrap(),
                        ExpectedVersion::Any,
                        events,
                    )])
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let per_writer_shared: u64 = (0..APPENDS).filter(|i| i % 2 == 0).map(|i| 1 + i % 3).sum();
    let per_writer_all: u64 = (0..APPENDS).map(|i| 1 + i % 3).sum();
    let shared_events = next_events(
        &mut shared,
        usize::try_from(WRITERS * per_writer_shared).unwrap(),
    )
    .await;
    let revisions: Vec<u64> = shared_events.iter().map(|e| e.1).collect();
    assert_eq!(
        revisions,
        (0..WRITERS * per_writer_shared).collect::<Vec<_>>()
    );
    let all_events =
        next_events(&mut all, usize::try_from(WRITERS * per_writer_all).unwrap()).await;
    assert!(
        all_events.windows(2).all(|w| w[0].2 < w[1].2),
        "positions increase"
    );
    let stored: Vec<_> = served
        .store
        .read_all(ReadAll::forward())
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .map(|e| {
            let e = e.unwrap();
            (
                e.stream_id.as_str().to_owned(),
                e.revision,
                e.position.get(),
            )
        })
        .collect();
    assert_eq!(
        all_events, stored,
        "the $all subscription delivered the log exactly"
    );
}
