//! What the embedded store promises beyond the port: one writer per file, versioned files,
//! read-only handles, group commit, reopening, and refusing writes after an I/O failure.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use serde_json::json;
use sirenia_core::StoreAdmin;
use sirenia_core::{
    EventFilter, EventStore, ExpectedVersion, NewEvent, Position, ReadAll, StoreError, StreamId,
    StreamWrite, Subscribe, SubscriptionItem,
};
use sirenia_sqlite::{SqliteOptions, SqliteStore};

fn event(n: u64) -> NewEvent {
    NewEvent::json("Tick", &json!({ "n": n }))
}

fn write(stream: &str, expected: ExpectedVersion, events: Vec<NewEvent>) -> Vec<StreamWrite> {
    vec![StreamWrite::new(
        StreamId::new(stream).unwrap(),
        expected,
        events,
    )]
}

async fn next(sub: &mut sirenia_core::Subscription) -> SubscriptionItem {
    tokio::time::timeout(Duration::from_secs(30), sub.next())
        .await
        .expect("delivered in time")
        .expect("open")
        .expect("ok")
}

async fn log(store: &SqliteStore) -> Vec<sirenia_core::RecordedEvent> {
    store
        .read_all(ReadAll::forward())
        .try_collect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_writer_is_refused_until_the_first_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let first = SqliteStore::open(&path).await.unwrap();
    match SqliteStore::open(&path).await {
        Err(StoreError::InUse { message }) => assert!(message.contains("events.db")),
        other => panic!("a second writer must get InUse, got {other:?}"),
    }
    first
        .append(write("a-1", ExpectedVersion::NoStream, vec![event(1)]))
        .await
        .unwrap();
    drop(first);
    let again = SqliteStore::open(&path).await.expect("reopen after close");
    assert_eq!(log(&again).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_keeps_everything_and_positions_continue() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dir/events.db");
    let store = SqliteStore::open(&path).await.unwrap();
    for n in 0..5 {
        store
            .append(write("a-1", ExpectedVersion::Exact(n), vec![event(n)]))
            .await
            .unwrap();
    }
    let before = log(&store).await;
    drop(store);
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(log(&store).await, before, "everything is still there");
    assert_eq!(store.head_position().await.unwrap(), Position(5));
    let r = store
        .append(write("a-1", ExpectedVersion::Exact(5), vec![event(5)]))
        .await
        .unwrap();
    assert_eq!(r.last_position(), Some(Position(6)), "positions continue");
    let after = log(&store).await;
    assert!(
        after[5].recorded_at >= after[4].recorded_at,
        "the clock never runs backwards"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_from_newer_versions_and_foreign_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    drop(SqliteStore::open(&path).await.unwrap());
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 999).unwrap();
    }
    match SqliteStore::open(&path).await {
        Err(StoreError::Incompatible { message }) => {
            assert!(message.contains("newer"), "{message}")
        }
        other => panic!("a newer file must be Incompatible, got {other:?}"),
    }

    let foreign = dir.path().join("other.db");
    {
        let conn = rusqlite::Connection::open(&foreign).unwrap();
        conn.execute_batch("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
            .unwrap();
    }
    match SqliteStore::open(&foreign).await {
        Err(StoreError::Incompatible { message }) => {
            assert!(message.contains("not a Sirenia store"), "{message}")
        }
        other => panic!("a foreign SQLite file must be Incompatible, got {other:?}"),
    }
    let conn = rusqlite::Connection::open(&foreign).unwrap();
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .unwrap();
    assert_eq!(tables, 1, "the foreign file was not touched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_handle_reads_and_polls_for_new_events() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let writer = SqliteStore::open(&path).await.unwrap();
    writer
        .append(write("a-1", ExpectedVersion::NoStream, vec![event(0)]))
        .await
        .unwrap();
    let options = SqliteOptions {
        poll_interval: Duration::from_millis(5),
        ..SqliteOptions::default()
    };
    let reader = SqliteStore::open_read_only(&path, options).await.unwrap();
    assert_eq!(log(&reader).await.len(), 1);
    match reader
        .append(write("a-1", ExpectedVersion::Any, vec![event(1)]))
        .await
    {
        Err(StoreError::WritesDisabled { .. }) => {}
        other => panic!("a read-only handle refuses appends, got {other:?}"),
    }
    let mut sub = reader.subscribe(Subscribe::from_start().filter(EventFilter::category("a")));
    assert!(matches!(next(&mut sub).await, SubscriptionItem::Event(_)));
    assert!(matches!(
        next(&mut sub).await,
        SubscriptionItem::CaughtUp { .. }
    ));
    for n in 1..4 {
        writer
            .append(write("a-1", ExpectedVersion::Exact(n), vec![event(n)]))
            .await
            .unwrap();
        match next(&mut sub).await {
            SubscriptionItem::Event(e) => assert_eq!(e.revision, n),
            other => panic!("expected the live event, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_commits_and_fail_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("events.db"))
        .await
        .unwrap();
    store
        .append(write("hot-1", ExpectedVersion::NoStream, vec![event(0)]))
        .await
        .unwrap();
    let before = store.stats();
    let mut appends = Vec::new();
    for n in 0..64u64 {
        let store = store.clone();
        appends.push(async move {
            if n % 8 == 0 {
                // Expects a fresh stream where one exists: must fail, alone.
                store
                    .append(write("hot-1", ExpectedVersion::NoStream, vec![event(n)]))
                    .await
            } else {
                store
                    .append(write(
                        &format!("cold-{n}"),
                        ExpectedVersion::NoStream,
                        vec![event(n)],
                    ))
                    .await
            }
        });
    }
    let results = futures_util::future::join_all(appends).await;
    for (n, r) in results.iter().enumerate() {
        match (n % 8 == 0, r) {
            (true, Err(StoreError::Conflict { actual, .. })) => assert_eq!(*actual, Some(1)),
            (false, Ok(r)) => assert_eq!(r.streams[0].version, 1),
            (conflicting, other) => panic!("append {n} (conflicting: {conflicting}): {other:?}"),
        }
    }
    let stats = store.stats();
    let appended = stats.appends - before.appends;
    let commits = stats.commits - before.commits;
    assert_eq!(
        appended, 56,
        "every non-conflicting append was acknowledged"
    );
    assert!(
        commits < appended,
        "concurrent appends share commits: {commits} commits for {appended} appends"
    );
    assert_eq!(log(&store).await.len(), 57, "conflicts wrote nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_disables_writes_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let store = SqliteStore::open(&path).await.unwrap();
    for n in 0..20 {
        store
            .append(write("a-1", ExpectedVersion::Exact(n), vec![event(n)]))
            .await
            .unwrap();
    }
    drop(store);
    let pages: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    let options = SqliteOptions {
        max_page_count: Some(u64::try_from(pages).unwrap() + 4),
        ..SqliteOptions::default()
    };
    let store = SqliteStore::open_with(&path, options).await.unwrap();
    let mut acknowledged = 20u64;
    let failure = loop {
        let big = NewEvent::raw("Big", "application/octet-stream", vec![7u8; 64 * 1024]);
        match store
            .append(write(
                "a-1",
                ExpectedVersion::Exact(acknowledged),
                vec![big],
            ))
            .await
        {
            Ok(_) => acknowledged += 1,
            Err(e) => break e,
        }
        assert!(acknowledged < 1_000, "the page cap never filled");
    };
    assert!(
        matches!(failure, StoreError::Backend { .. }),
        "a full disk is a backend failure, got {failure:?}"
    );
    match store
        .append(write("b-1", ExpectedVersion::NoStream, vec![event(0)]))
        .await
    {
        Err(StoreError::WritesDisabled { reason }) => assert!(reason.contains("full"), "{reason}"),
        other => panic!("after a failed write the store refuses writes, got {other:?}"),
    }
    assert_eq!(
        log(&store).await.len() as u64,
        acknowledged,
        "reads still work and show exactly what was acknowledged"
    );
    drop(store);
    let store = SqliteStore::open(&path).await.unwrap();
    let events = log(&store).await;
    assert_eq!(
        events.len() as u64,
        acknowledged,
        "nothing acknowledged was lost"
    );
    assert!(
        events
            .windows(2)
            .all(|w| w[1].position.get() == w[0].position.get() + 1)
    );
    store
        .append(write(
            "a-1",
            ExpectedVersion::Exact(acknowledged),
            vec![event(99)],
        ))
        .await
        .expect("appending works again after reopening");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_handle_releases_the_file_even_with_reads_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let events: Vec<NewEvent> = (0..5_000).map(event).collect();
    store
        .append(write("big-1", ExpectedVersion::NoStream, events))
        .await
        .unwrap();
    drop(store);
    for _ in 0..20 {
        let store = SqliteStore::open(&path)
            .await
            .expect("the previous handle released the file");
        // Start reads that fetch pages ahead, take one event, and drop everything.
        let mut all = store.read_all(ReadAll::forward().page_size(100));
        let mut one = store.read_stream(
            &StreamId::new("big-1").unwrap(),
            sirenia_core::ReadStream::forward().page_size(100),
        );
        all.next().await.unwrap().unwrap();
        one.next().await.unwrap().unwrap();
        drop((all, one, store));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_size_applies_to_new_files_and_is_validated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let options = SqliteOptions {
        page_size: 16_384,
        ..SqliteOptions::default()
    };
    drop(SqliteStore::open_with(&path, options).await.unwrap());
    let page_size: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .unwrap();
    assert_eq!(page_size, 16_384);
    for bad in [0, 1000, 1 << 17] {
        let options = SqliteOptions {
            page_size: bad,
            ..SqliteOptions::default()
        };
        let other = dir.path().join(format!("bad-{bad}.db"));
        assert!(
            matches!(
                SqliteStore::open_with(&other, options).await,
                Err(StoreError::InvalidOptions { .. })
            ),
            "page size {bad} must be refused"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_in_the_file_pass_the_snapshot_cases() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("events.db"))
        .await
        .unwrap();
    sirenia_testkit::snapshots::snapshot_store_cases(&*store.snapshots()).await;
    sirenia_testkit::snapshots::snapshot_repository_cases(store.clone(), store.snapshots()).await;
    sirenia_testkit::snapshots::lifecycle_repository_cases(store.clone(), store.snapshots()).await;
}
