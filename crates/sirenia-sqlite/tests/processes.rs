//! Tests across processes: crash consistency under SIGKILL, a second writer process, and a
//! read-only process following a writer.
//!
//! This binary runs its own children: started with one of the `SIRENIA_TEST_*` variables set, it
//! plays that child instead of running the tests. Set `SIRENIA_CRASH_LOOPS` to raise the number
//! of kill loops (200 by default), e.g. to 10000 for a long run.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use std::collections::HashMap;
use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use sirenia_core::{
    EventId, EventStore, ExpectedVersion, NewEvent, Position, ReadAll, StoreError, StreamId,
    StreamWrite, Subscribe, SubscriptionItem, Uuid,
};
use sirenia_sqlite::{SqliteOptions, SqliteStore};

const APPENDER: &str = "SIRENIA_TEST_APPENDER_DIR";
const HOLDER: &str = "SIRENIA_TEST_HOLDER_PATH";
const FOLLOWER: &str = "SIRENIA_TEST_FOLLOWER_PATH";
const LOOP: &str = "SIRENIA_TEST_LOOP";
const LOOPS: &str = "SIRENIA_CRASH_LOOPS";
const DEFAULT_LOOPS: u32 = 200;
const TASKS: u64 = 4;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn main() {
    if let Ok(dir) = std::env::var(APPENDER) {
        return appender(Path::new(&dir));
    }
    if let Ok(path) = std::env::var(HOLDER) {
        return holder(Path::new(&path));
    }
    if let Ok(path) = std::env::var(FOLLOWER) {
        return follower(Path::new(&path));
    }
    let tests: [(&str, fn()); 3] = [
        ("a_second_writer_process_gets_in_use", second_writer_process),
        ("a_read_only_process_follows_the_writer", read_only_process),
        ("sigkill_loses_nothing_acknowledged", sigkill_loops),
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

fn spawn(var: &str, value: &Path, extra: &[(&str, String)]) -> Child {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .env(var, value)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in extra {
        command.env(k, v);
    }
    command.spawn().unwrap()
}

fn read_line(child: &mut Child) -> String {
    let mut line = String::new();
    let stdout = child.stdout.as_mut().unwrap();
    // One byte at a time: a BufReader would swallow later lines.
    let mut byte = [0u8; 1];
    while std::io::Read::read(stdout, &mut byte).unwrap() == 1 && byte[0] != b'\n' {
        line.push(byte[0] as char);
    }
    line
}

// ---------------------------------------------------------------------------------------------
// Children.

/// Holds the store open for writing until its stdin closes.
fn holder(path: &Path) {
    runtime().block_on(async {
        let _store = SqliteStore::open(path).await.unwrap();
        println!("ready");
        std::io::stdout().flush().unwrap();
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    });
}

/// Follows the store read-only and prints each event's revision as it arrives.
fn follower(path: &Path) {
    runtime().block_on(async {
        let options = SqliteOptions {
            poll_interval: Duration::from_millis(5),
            ..SqliteOptions::default()
        };
        let store = SqliteStore::open_read_only(path, options).await.unwrap();
        let mut sub = store.subscribe(Subscribe::from_start());
        while let Some(item) = sub.next().await {
            match item.unwrap() {
                SubscriptionItem::Event(e) => println!("event {}", e.revision),
                SubscriptionItem::CaughtUp { .. } => println!("caught-up"),
            }
            std::io::stdout().flush().unwrap();
        }
    });
}

fn batch_id(l: u64, task: u64, batch: u64, i: u64) -> EventId {
    EventId(Uuid::from_u128(
        (u128::from(l) << 96)
            | (u128::from(task) << 80)
            | (u128::from(batch) << 32)
            | u128::from(i),
    ))
}

/// Appends batches from several tasks as fast as it can, recording each acknowledged batch in
/// a side file after its append returned, until killed.
fn appender(dir: &Path) {
    let l: u64 = std::env::var(LOOP).unwrap().parse().unwrap();
    runtime().block_on(async {
        let store = SqliteStore::open(dir.join("events.db")).await.unwrap();
        let side = std::sync::Arc::new(std::sync::Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(format!("acked-{l}.txt")))
                .unwrap(),
        ));
        let mut tasks = Vec::new();
        for task in 0..TASKS {
            let (store, side) = (store.clone(), side.clone());
            tasks.push(tokio::spawn(async move {
                for batch in 0u64.. {
                    let size = 1 + (batch * 7 + task) % 20;
                    let payload = |i: u64| {
                        NewEvent::json(
                            "Crash",
                            &json!({ "l": l, "t": task, "b": batch, "i": i, "n": size }),
                        )
                        .with_id(batch_id(l, task, batch, i))
                    };
                    let events: Vec<NewEvent> = (0..size).map(payload).collect();
                    let mut writes = Vec::new();
                    if batch % 5 == 0 && size > 1 {
                        // A multi-stream batch: both halves or neither.
                        let (a, b) = events.split_at(1);
                        writes.push(StreamWrite::new(
                            StreamId::new(format!("s{task}-x")).unwrap(),
                            ExpectedVersion::Any,
                            a.to_vec(),
                        ));
                        writes.push(StreamWrite::new(
                            StreamId::new(format!("s{task}-{}", batch % 3)).unwrap(),
                            ExpectedVersion::Any,
                            b.to_vec(),
                        ));
                    } else {
                        writes.push(StreamWrite::new(
                            StreamId::new(format!("s{task}-{}", batch % 3)).unwrap(),
                            ExpectedVersion::Any,
                            events,
                        ));
                    }
                    store.append(writes).await.unwrap();
                    let line = format!("{l} {task} {batch} {size}\n");
                    side.lock().unwrap().write_all(line.as_bytes()).unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Tests.

fn second_writer_process() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let mut holder = spawn(HOLDER, &path, &[]);
    assert_eq!(read_line(&mut holder), "ready");
    runtime().block_on(async {
        match SqliteStore::open(&path).await {
            Err(StoreError::InUse { .. }) => {}
            other => panic!("a second writer process must get InUse, got {other:?}"),
        }
    });
    drop(holder.stdin.take());
    assert!(holder.wait().unwrap().success());
    runtime().block_on(async {
        SqliteStore::open(&path)
            .await
            .expect("the file is free once the holder exits");
    });
}

fn read_only_process() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    runtime().block_on(async {
        let store = SqliteStore::open(&path).await.unwrap();
        let stream = StreamId::new("f-1").unwrap();
        store
            .append(vec![StreamWrite::new(
                stream.clone(),
                ExpectedVersion::NoStream,
                vec![NewEvent::json("E", &json!({}))],
            )])
            .await
            .unwrap();
        let mut follower = spawn(FOLLOWER, &path, &[]);
        assert_eq!(read_line(&mut follower), "event 0");
        assert_eq!(read_line(&mut follower), "caught-up");
        for n in 1..6u64 {
            store
                .append(vec![StreamWrite::new(
                    stream.clone(),
                    ExpectedVersion::Exact(n),
                    vec![NewEvent::json("E", &json!({}))],
                )])
                .await
                .unwrap();
            assert_eq!(read_line(&mut follower), format!("event {n}"));
        }
        follower.kill().unwrap();
        follower.wait().unwrap();
    });
}

/// What the parent knows of the log so far.
#[derive(Default)]
struct Verified {
    next_position: u64,
    next_revision: HashMap<String, u64>,
    /// Events seen per batch `(loop, task, batch)`, and the batch's size.
    batches: HashMap<(u64, u64, u64), (u64, u64)>,
    events: u64,
}

fn sigkill_loops() {
    let loops: u32 = std::env::var(LOOPS)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_LOOPS);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let mut rng = SmallRng::seed_from_u64(0x5151);
    let mut verified = Verified {
        next_position: 1,
        ..Verified::default()
    };
    let mut acknowledged_batches = 0u64;
    let rt = runtime();
    for l in 0..loops {
        let mut child = spawn(APPENDER, dir.path(), &[(LOOP, l.to_string())]);
        std::thread::sleep(Duration::from_millis(rng.random_range(2..60)));
        if let Some(status) = child.try_wait().unwrap() {
            panic!("loop {l}: the appender died on its own ({status}) instead of being killed");
        }
        child.kill().unwrap();
        child.wait().unwrap();
        acknowledged_batches += rt.block_on(verify(&path, dir.path(), u64::from(l), &mut verified));
    }
    rt.block_on(async {
        let store = SqliteStore::open(&path).await.unwrap();
        let r = store
            .append(vec![StreamWrite::new(
                StreamId::new("after-1").unwrap(),
                ExpectedVersion::NoStream,
                vec![NewEvent::json("After", &json!({}))],
            )])
            .await
            .expect("appending works after the last crash");
        assert_eq!(r.last_position(), Some(Position(verified.next_position)));
    });
    assert!(
        acknowledged_batches > u64::from(loops),
        "the children acknowledged too few batches ({acknowledged_batches}) to test anything"
    );
    println!(
        "  {loops} kill loops: {acknowledged_batches} acknowledged batches, {} events verified",
        verified.events
    );
}

/// Checks the file after loop `l`'s child was killed; returns how many batches it acknowledged.
async fn verify(path: &Path, dir: &Path, l: u64, v: &mut Verified) -> u64 {
    let store = SqliteStore::open(path).await.expect("reopen after SIGKILL");
    let new: Vec<_> = store
        .read_all(ReadAll::forward().from(Position(v.next_position)))
        .try_collect()
        .await
        .unwrap();
    for e in &new {
        assert_eq!(
            e.position.get(),
            v.next_position,
            "positions are contiguous"
        );
        v.next_position += 1;
        let next = v.next_revision.entry(e.stream_id.to_string()).or_insert(0);
        assert_eq!(
            e.revision, *next,
            "revisions of {} are contiguous",
            e.stream_id
        );
        *next += 1;
        let p = e.json().unwrap();
        let key = (
            p["l"].as_u64().unwrap(),
            p["t"].as_u64().unwrap(),
            p["b"].as_u64().unwrap(),
        );
        assert_eq!(key.0, l, "only this loop's child wrote");
        let entry = v
            .batches
            .entry(key)
            .or_insert((0, p["n"].as_u64().unwrap()));
        entry.0 += 1;
        v.events += 1;
    }
    for (key, (seen, size)) in &v.batches {
        assert_eq!(seen, size, "batch {key:?} is partially present");
    }
    let side = dir.join(format!("acked-{l}.txt"));
    let text = std::fs::read_to_string(&side).unwrap_or_default();
    let mut acknowledged = 0;
    // The last line may be cut short by the kill: only whole lines count.
    for line in text
        .split_inclusive('\n')
        .filter(|line| line.ends_with('\n'))
    {
        let n: Vec<u64> = line
            .split_whitespace()
            .map(|x| x.parse().unwrap())
            .collect();
        let key = (n[0], n[1], n[2]);
        assert_eq!(
            v.batches.get(&key),
            Some(&(n[3], n[3])),
            "acknowledged batch {key:?} is missing or partial"
        );
        acknowledged += 1;
    }
    drop(store);
    acknowledged
}
