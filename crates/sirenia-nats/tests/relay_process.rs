//! The relay as a child process killed with SIGKILL at random moments while events are
//! appended, and restarted: JetStream holds every committed event exactly once, in log order.
//! Needs NATS with JetStream at `SIRENIA_TEST_NATS_URL` (default 127.0.0.1:4222); fails without.
//!
//! This binary runs its own children: started with `SIRENIA_TEST_RELAY` set (to the store's
//! path), it plays the relay.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sirenia_core::StoreAdmin;
use sirenia_core::projection::{ProjectionOptions, Projector};
use sirenia_core::{EventFilter, EventStore, ExpectedVersion, NewEvent, StreamId, StreamWrite};
use sirenia_nats::{EVENT_ID, OutboxOptions, POSITION};
use sirenia_sqlite::{SqliteOptions, SqliteStore};

const RELAY: &str = "SIRENIA_TEST_RELAY";
const STREAM: &str = "SIRENIA_TEST_RELAY_STREAM";
const PREFIX: &str = "SIRENIA_TEST_RELAY_PREFIX";
const ONCE: &str = "SIRENIA_TEST_RELAY_ONCE";
const KILLS: usize = 15;

fn url() -> String {
    std::env::var("SIRENIA_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn options() -> OutboxOptions {
    OutboxOptions {
        stream: std::env::var(STREAM).unwrap(),
        prefix: std::env::var(PREFIX).unwrap(),
        duplicate_window: Duration::from_secs(120),
    }
}

fn projection() -> ProjectionOptions {
    ProjectionOptions {
        filter: EventFilter::category("order"),
        batch_size: 20,
        ..ProjectionOptions::default()
    }
}

/// The relay: follows the store (read-only, beside the parent's writer) and publishes; with
/// `SIRENIA_TEST_RELAY_ONCE`, catches up once, prints `done` and exits.
fn relay(path: &Path) {
    runtime().block_on(async {
        let store = SqliteStore::open_read_only(path, SqliteOptions::default())
            .await
            .unwrap();
        let outbox = sirenia_nats::outbox(&url(), "relay", store.checkpoints(), options())
            .await
            .unwrap();
        let mut relay = Projector::new("relay", store.clone(), outbox, projection()).unwrap();
        if std::env::var(ONCE).is_ok() {
            relay.catch_up(|_| {}).await.unwrap();
            println!("done");
            std::io::stdout().flush().unwrap();
            return;
        }
        relay.run(std::future::pending()).await.unwrap();
    });
}

fn main() {
    if let Ok(path) = std::env::var(RELAY) {
        return relay(Path::new(&path));
    }
    match std::panic::catch_unwind(relay_killed_mid_stream) {
        Ok(()) => println!("test the_relay_process_killed_mid_stream_publishes_once ... ok"),
        Err(_) => {
            println!("test the_relay_process_killed_mid_stream_publishes_once ... FAILED");
            std::process::exit(1);
        }
    }
}

fn relay_killed_mid_stream() {
    let runtime = runtime();
    let js = runtime.block_on(async {
        let client = async_nats::connect(url())
            .await
            .unwrap_or_else(|e| panic!("NATS at {} is needed by this test: {e}", url()));
        async_nats::jetstream::new(client)
    });
    let id = uuid::Uuid::now_v7().simple().to_string();
    let (stream, prefix) = (format!("T_RELAY_{id}"), format!("r{id}"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let store = runtime.block_on(SqliteStore::open(&path)).unwrap();
    let spawn = |once: bool| {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .env(RELAY, &path)
            .env(STREAM, &stream)
            .env(PREFIX, &prefix)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if once {
            command.env(ONCE, "1");
        }
        command.spawn().unwrap()
    };
    let mut rng = SmallRng::seed_from_u64(17);
    let mut expected = 0usize;
    for round in 0..KILLS {
        let mut child = spawn(false);
        // Let the relay connect, then append a burst and kill it while it publishes.
        std::thread::sleep(Duration::from_millis(60));
        for i in 0..20 {
            let events = (0..rng.random_range(5..15))
                .map(|n| NewEvent::json("OrderLine", &serde_json::json!({ "n": n })))
                .collect::<Vec<_>>();
            expected += events.len();
            let stream_id = StreamId::new(format!("order-{}", (round + i) % 5)).unwrap();
            runtime
                .block_on(store.append(vec![
                    StreamWrite::new(stream_id, ExpectedVersion::Any, events),
                    StreamWrite::new(
                        StreamId::new("audit-1").unwrap(),
                        ExpectedVersion::Any,
                        vec![NewEvent::json("Audited", &serde_json::json!({}))],
                    ),
                ]))
                .unwrap();
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(1..40)));
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let mut last = spawn(true);
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(last.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "done");
    last.wait().unwrap();

    let messages = runtime.block_on(common::all_messages(&js, &stream));
    let header = |m: &async_nats::jetstream::Message, name: &str| {
        m.headers
            .as_ref()
            .unwrap()
            .get(name)
            .unwrap()
            .as_str()
            .to_owned()
    };
    let ids: BTreeSet<String> = messages.iter().map(|m| header(m, EVENT_ID)).collect();
    assert_eq!(
        messages.len(),
        expected,
        "an event was published twice or not at all"
    );
    assert_eq!(ids.len(), expected);
    let positions: Vec<u64> = messages
        .iter()
        .map(|m| header(m, POSITION).parse().unwrap())
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "out of log order"
    );
    let head = runtime.block_on(store.head_position()).unwrap();
    assert!(
        head.0 > expected as u64,
        "the filter let other categories through"
    );
    runtime.block_on(js.delete_stream(&stream)).unwrap();
}
