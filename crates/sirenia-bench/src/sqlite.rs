//! The embedded store against plain SQLite (rusqlite, same row shape, same indexes, WAL with
//! `synchronous=FULL`), measured in the same run.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rusqlite::{Connection, params};
use sirenia_core::RecordedEvent;
use sirenia_core::projection::HandlerError;
use sirenia_core::{
    EventStore, ExpectedVersion, NewEvent, ReadAll, ReadStream, StreamId, StreamWrite, Uuid,
};
use sirenia_sqlite::{SqliteProjection, SqliteStore};

use crate::Scale;
use crate::report::{
    BenchResult, Goal, Measurement, Row, collect, histogram, peak_rss, record, reset_peak_rss,
};

/// The payload every scenario writes: Sirenia and the baselines store the same bytes.
fn payload() -> serde_json::Value {
    serde_json::json!({ "account": "acc-0001", "amount": 1250, "currency": "EUR", "note": "benchmark" })
}

/// A new event with a fresh id around an already serialized payload: the baselines serialize
/// the payload once too.
fn event(template: &NewEvent) -> NewEvent {
    template.clone().with_id(sirenia_core::EventId::new())
}

fn template() -> NewEvent {
    NewEvent::json("MoneyDeposited", &payload())
}

/// The same table and indexes as the embedded store's, for the raw baseline.
const RAW_SCHEMA: &str = "CREATE TABLE events (
        position INTEGER PRIMARY KEY, stream_id TEXT NOT NULL, revision INTEGER NOT NULL,
        event_id BLOB NOT NULL, event_type TEXT NOT NULL, schema_version INTEGER NOT NULL,
        content_type TEXT NOT NULL, data BLOB NOT NULL, metadata BLOB,
        recorded_at INTEGER NOT NULL) STRICT;
    CREATE UNIQUE INDEX events_stream_revision ON events (stream_id, revision);
    CREATE UNIQUE INDEX events_event_id ON events (event_id);";

fn raw_connection(path: &Path) -> BenchResult<Connection> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "wal")?;
    conn.pragma_update(None, "synchronous", "full")?;
    conn.execute_batch(RAW_SCHEMA)?;
    Ok(conn)
}

const RAW_INSERT: &str = "INSERT INTO events (stream_id, revision, event_id, event_type, \
    schema_version, content_type, data, metadata, recorded_at) VALUES (?1, ?2, ?3, ?4, 1, \
    'application/json', ?5, NULL, ?6)";

/// Plain SQLite: `batch` rows per transaction, one connection, for `duration`.
fn raw_writes(path: &Path, batch: u64, duration: Duration) -> BenchResult<Measurement> {
    let conn = raw_connection(path)?;
    let data = serde_json::to_vec(&payload())?;
    let mut latency = histogram();
    let mut revision = 0i64;
    let mut events = 0u64;
    reset_peak_rss();
    let start = Instant::now();
    while start.elapsed() < duration {
        let t0 = Instant::now();
        conn.execute_batch("BEGIN IMMEDIATE")?;
        {
            let mut stmt = conn.prepare_cached(RAW_INSERT)?;
            for _ in 0..batch {
                stmt.execute(params![
                    "bench-1",
                    revision,
                    Uuid::now_v7().as_bytes().as_slice(),
                    "MoneyDeposited",
                    data,
                    0i64
                ])?;
                revision += 1;
            }
        }
        conn.execute_batch("COMMIT")?;
        record(&mut latency, t0)?;
        events += batch;
    }
    Ok(Measurement {
        events,
        elapsed: start.elapsed(),
        latency: Some(latency),
        peak_rss: peak_rss(),
    })
}

/// Plain SQLite doing S4's work: `streams` streams of `events` deposits, then `ops` commands
/// round-robin, each reading its stream's rows (folding the amounts) and inserting the next
/// revision in a synced transaction.
fn raw_commands(path: &Path, streams: u64, events: u64, ops: u64) -> BenchResult<Measurement> {
    let conn = raw_connection(path)?;
    let data = serde_json::to_vec(&serde_json::json!({ "amount": 1 }))?;
    conn.execute_batch("BEGIN")?;
    {
        let mut stmt = conn.prepare_cached(RAW_INSERT)?;
        for s in 0..streams {
            for r in 0..events {
                stmt.execute(params![
                    format!("account-raw{s}"),
                    i64::try_from(r)?,
                    Uuid::now_v7().as_bytes().as_slice(),
                    "MoneyDeposited",
                    data,
                    0i64
                ])?;
            }
        }
    }
    conn.execute_batch("COMMIT")?;
    let mut latency = histogram();
    reset_peak_rss();
    let start = Instant::now();
    for k in 0..ops {
        let t0 = Instant::now();
        let stream = format!("account-raw{}", k % streams);
        let (mut balance, mut version) = (0i64, 0i64);
        {
            let mut select = conn.prepare_cached(
                "SELECT revision, data FROM events WHERE stream_id = ?1 ORDER BY revision",
            )?;
            let mut rows = select.query([&stream])?;
            while let Some(row) = rows.next()? {
                version = row.get::<_, i64>(0)? + 1;
                let data: Vec<u8> = row.get(1)?;
                let value: serde_json::Value = serde_json::from_slice(&data)?;
                balance += value["amount"].as_i64().unwrap_or(0);
            }
        }
        std::hint::black_box(balance);
        conn.execute_batch("BEGIN IMMEDIATE")?;
        conn.prepare_cached(RAW_INSERT)?.execute(params![
            stream,
            version,
            Uuid::now_v7().as_bytes().as_slice(),
            "MoneyDeposited",
            data,
            0i64
        ])?;
        conn.execute_batch("COMMIT")?;
        record(&mut latency, t0)?;
    }
    Ok(Measurement {
        events: ops,
        elapsed: start.elapsed(),
        latency: Some(latency),
        peak_rss: peak_rss(),
    })
}

/// Sirenia: `writers` tasks appending `batch`-event appends for `duration`; each writer spreads
/// its appends over 100 streams of its own.
async fn sirenia_writes(
    store: &SqliteStore,
    writers: usize,
    batch: usize,
    duration: Duration,
) -> BenchResult<Measurement> {
    reset_peak_rss();
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks: Vec<tokio::task::JoinHandle<crate::report::TaskResult>> = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let template = template();
            let mut latency = histogram();
            let mut events = 0u64;
            let mut i = 0u64;
            while Instant::now() < deadline {
                let stream = StreamId::new(format!("bench{w}-{}", i % 100))?;
                let batch: Vec<NewEvent> = (0..batch).map(|_| event(&template)).collect();
                let n = batch.len() as u64;
                let t0 = Instant::now();
                store
                    .append(vec![StreamWrite::new(stream, ExpectedVersion::Any, batch)])
                    .await?;
                record(&mut latency, t0)?;
                events += n;
                i += 1;
            }
            Ok(((), events, latency))
        }));
    }
    Ok(collect(start, tasks).await?.1)
}

/// Plain SQLite reading every row into owned values, as a store must.
fn raw_read(path: &Path, stream: Option<&str>) -> BenchResult<Measurement> {
    let conn = Connection::open(path)?;
    reset_peak_rss();
    let start = Instant::now();
    let sql = "SELECT position, stream_id, revision, event_id, event_type, schema_version, \
               content_type, data, metadata, recorded_at FROM events";
    let mut events = 0u64;
    let mut checksum = 0i64;
    let mut read = |row: &rusqlite::Row<'_>| -> rusqlite::Result<()> {
        let position: i64 = row.get(0)?;
        let stream_id: String = row.get(1)?;
        let revision: i64 = row.get(2)?;
        let id: Vec<u8> = row.get(3)?;
        let event_type: String = row.get(4)?;
        let _schema: i64 = row.get(5)?;
        let content_type: String = row.get(6)?;
        let data: Vec<u8> = row.get(7)?;
        let metadata: Option<Vec<u8>> = row.get(8)?;
        let recorded_at: i64 = row.get(9)?;
        checksum = checksum.wrapping_add(
            position
                + revision
                + recorded_at
                + (stream_id.len()
                    + id.len()
                    + event_type.len()
                    + content_type.len()
                    + data.len()
                    + metadata.map_or(0, |m| m.len())) as i64,
        );
        events += 1;
        Ok(())
    };
    match stream {
        Some(s) => {
            let mut stmt =
                conn.prepare(&format!("{sql} WHERE stream_id = ?1 ORDER BY revision"))?;
            let mut rows = stmt.query([s])?;
            while let Some(row) = rows.next()? {
                read(row)?;
            }
        }
        None => {
            let mut stmt = conn.prepare(&format!("{sql} ORDER BY position"))?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                read(row)?;
            }
        }
    }
    std::hint::black_box(checksum);
    Ok(Measurement {
        events,
        elapsed: start.elapsed(),
        latency: None,
        peak_rss: peak_rss(),
    })
}

/// Sirenia reading `stream` (or the whole log) forward in the largest pages, as owned
/// `RecordedEvent`s: S7 on any store.
pub(crate) async fn sirenia_read<S: EventStore>(
    store: &S,
    stream: Option<&StreamId>,
) -> BenchResult<Measurement> {
    reset_peak_rss();
    let start = Instant::now();
    let mut events = match stream {
        Some(s) => store.read_stream(
            s,
            ReadStream::forward().page_size(sirenia_core::limits::MAX_PAGE_SIZE),
        ),
        None => store.read_all(ReadAll::forward().page_size(sirenia_core::limits::MAX_PAGE_SIZE)),
    };
    let mut count = 0u64;
    while let Some(e) = events.next().await {
        std::hint::black_box(e?);
        count += 1;
    }
    Ok(Measurement {
        events: count,
        elapsed: start.elapsed(),
        latency: None,
        peak_rss: peak_rss(),
    })
}

/// Appends per commit so far: how well group commit shared syncs.
fn per_commit(store: &SqliteStore) -> String {
    let stats = store.stats();
    format!(
        "{:.1} appends/sync",
        stats.appends as f64 / stats.commits.max(1) as f64
    )
}

fn row(
    scenario: &str,
    subject: &str,
    measurement: Measurement,
    baseline: Option<(&str, f64)>,
    goal: Option<Goal>,
) -> Row {
    Row {
        scenario: scenario.to_owned(),
        subject: subject.to_owned(),
        measurement,
        baseline: baseline.map(|(n, r)| (n.to_owned(), r)),
        goal,
    }
}

pub(crate) async fn run(
    scale: Scale,
    keep: &dyn Fn(&str) -> bool,
    rows: &mut Vec<Row>,
) -> BenchResult<()> {
    let dir = tempfile::tempdir()?;
    let mut n = 0u32;
    let mut fresh = |name: &str| {
        n += 1;
        dir.path().join(format!("{n}-{name}.db"))
    };

    // S1: one event per append, many streams, 1/4/8/32 writers, against plain SQLite doing one
    // synced INSERT transaction per event.
    if keep("S1") {
        let path = fresh("raw");
        let raw =
            tokio::task::spawn_blocking(move || raw_writes(&path, 1, scale.duration)).await??;
        let raw_rate = raw.rate();
        rows.push(row(
            "S1 sqlite single-event appends",
            "plain SQLite, 1 txn/event",
            raw,
            None,
            None,
        ));
        for writers in [1, 4, 8, 32] {
            let store = SqliteStore::open(fresh("s1")).await?;
            let m = sirenia_writes(&store, writers, 1, scale.duration).await?;
            let goal = (writers == 8).then_some(Goal::Ratio(3.0));
            rows.push(row(
                "S1 sqlite single-event appends",
                &format!("sirenia, {writers} writer(s), {}", per_commit(&store)),
                m,
                Some(("plain SQLite", raw_rate)),
                goal,
            ));
        }
    }

    // S2: batches of 1/10/100/1000 events to one stream, one writer.
    if keep("S2") {
        for batch in [1u64, 10, 100, 1000] {
            let path = fresh("raw");
            let raw = tokio::task::spawn_blocking(move || raw_writes(&path, batch, scale.duration))
                .await??;
            let raw_rate = raw.rate();
            rows.push(row(
                "S2 sqlite batch appends",
                &format!("plain SQLite, {batch} rows/txn"),
                raw,
                None,
                None,
            ));
            for writers in [1usize, 4, 8] {
                let store = SqliteStore::open(fresh("s2")).await?;
                let m = sirenia_writes(&store, writers, usize::try_from(batch)?, scale.duration)
                    .await?;
                let goal = (batch == 100).then_some(Goal::Rate(200_000.0));
                rows.push(row(
                    "S2 sqlite batch appends",
                    &format!(
                        "sirenia, {batch} events/append, {writers} writer(s), {}",
                        per_commit(&store)
                    ),
                    m,
                    Some(("plain SQLite", raw_rate)),
                    goal,
                ));
            }
        }
    }

    // S7: read one stream and the whole log, against plain SQLite reading the same file.
    if keep("S7") {
        let path = fresh("read");
        let store = Arc::new(SqliteStore::open(&path).await?);
        let stream = StreamId::new("big-1")?;
        let mut version = 0u64;
        let template = template();
        while version < scale.read_events {
            let batch: Vec<NewEvent> = (0..1000).map(|_| event(&template)).collect();
            store
                .append(vec![StreamWrite::new(
                    stream.clone(),
                    ExpectedVersion::Exact(version),
                    batch,
                )])
                .await?;
            version += 1000;
        }
        for (label, which) in [("one stream", Some(&stream)), ("whole log", None)] {
            let raw_path = path.clone();
            let raw_stream = which.map(|s| s.to_string());
            let raw =
                tokio::task::spawn_blocking(move || raw_read(&raw_path, raw_stream.as_deref()))
                    .await??;
            let raw_rate = raw.rate();
            rows.push(row(
                &format!("S7 sqlite read {label}"),
                "plain SQLite SELECT",
                raw,
                None,
                None,
            ));
            let m = sirenia_read(&*store, which).await?;
            rows.push(row(
                &format!("S7 sqlite read {label}"),
                "sirenia",
                m,
                Some(("plain SQLite", raw_rate)),
                Some(Goal::Rate(1_000_000.0)),
            ));
        }
    }

    // S6: load a 10,000-event aggregate, replaying every event and from a snapshot taken every
    // 100 events.
    if keep("S6") {
        let store = SqliteStore::open(fresh("s6")).await?;
        let snapshots = sirenia_core::StoreAdmin::snapshots(&store);
        rows.extend(crate::snapshot_bench::s6_rows(store, snapshots, "sqlite").await?);
    }

    // S8: catch-up of a no-op projection over the whole log (against plain SQLite reading the
    // same rows), then live delivery latency while 4 writers append.
    if keep("S8") {
        let path = fresh("s8");
        let store = SqliteStore::open(&path).await?;
        let template = template();
        let mut appended = 0u64;
        while appended < scale.read_events {
            let batch: Vec<NewEvent> = (0..1000).map(|_| event(&template)).collect();
            let stream = StreamId::new(format!("s8-{}", (appended / 1000) % 100))?;
            store
                .append(vec![StreamWrite::new(stream, ExpectedVersion::Any, batch)])
                .await?;
            appended += 1000;
        }
        let raw_path = path.clone();
        let raw = tokio::task::spawn_blocking(move || raw_read(&raw_path, None)).await??;
        let raw_rate = raw.rate();
        rows.push(row(
            "S8 sqlite projection catch-up",
            "plain SQLite SELECT of the log",
            raw,
            None,
            None,
        ));
        let m = catch_up(&store).await?;
        rows.push(row(
            "S8 sqlite projection catch-up",
            "sirenia, no-op projection, checkpoint per 10k-event transaction",
            m,
            Some(("plain SQLite", raw_rate)),
            Some(Goal::Rate(500_000.0)),
        ));
        let m = live_latency(&store, scale.duration).await?;
        rows.push(row(
            "S8 sqlite live delivery",
            "sirenia, append-to-handler latency, 4 writers",
            m,
            None,
            None,
        ));
    }

    // S13: recovery after kill -9 mid-write: open and append one event, against plain SQLite
    // opening a copy of the same killed file and inserting one row.
    if keep("S13") {
        let rounds = if scale.read_events < 1_000_000 { 2 } else { 10 };
        let (raw, ours) =
            crate::recovery::recoveries(dir.path(), rounds, Duration::from_millis(500)).await?;
        let raw_rate = raw.rate();
        rows.push(row(
            "S13 sqlite recovery after kill -9",
            "plain SQLite: open the killed file, insert one row (recoveries/s)",
            raw,
            None,
            None,
        ));
        rows.push(row(
            "S13 sqlite recovery after kill -9",
            "sirenia: open the store, append one event (recoveries/s)",
            ours,
            Some(("plain SQLite", raw_rate)),
            None,
        ));
    }

    // S4: the command cycle (load, decide, append at the exact version) on streams of
    // 1/10/100/1000 events, against plain SQLite reading the rows and inserting the next one.
    if keep("S4") {
        use crate::command_bench::{S4_LENGTHS, S4_STREAMS, command_cycle, prefill};
        for length in S4_LENGTHS {
            let scenario = "S4 sqlite command cycle";
            let path = fresh("raw");
            let ops = scale.commands;
            let raw =
                tokio::task::spawn_blocking(move || raw_commands(&path, S4_STREAMS, length, ops))
                    .await??;
            let raw_rate = raw.rate();
            rows.push(row(
                scenario,
                &format!("plain SQLite read + insert, {length}-event streams"),
                raw,
                None,
                None,
            ));
            let store = SqliteStore::open(fresh("s4")).await?;
            prefill(&store, "s4-", S4_STREAMS, length).await?;
            let m = command_cycle(store, "s4-", S4_STREAMS, ops).await?;
            rows.push(row(
                scenario,
                &format!("sirenia repository, {length}-event streams"),
                m,
                Some(("plain SQLite", raw_rate)),
                None,
            ));
        }
    }

    // S5: 8 writers running commands that conflict, on one hot stream and on a skewed spread;
    // conflicts are retried by the repository (at most 10 times) and counted.
    if keep("S5") {
        let store = SqliteStore::open(fresh("s5")).await?;
        rows.extend(crate::command_bench::s5_rows(&store, "sqlite", scale.duration).await?);
    }
    Ok(())
}

/// A projection that does nothing but record, for live events, the time since the event's
/// writer called append (its `sent` field, µs since the epoch).
struct Probe {
    latency: Option<Arc<std::sync::Mutex<hdrhistogram::Histogram<u64>>>>,
}

impl SqliteProjection for Probe {
    fn setup(&mut self, _: &rusqlite::Transaction<'_>) -> Result<(), HandlerError> {
        Ok(())
    }
    fn apply(
        &mut self,
        _: &rusqlite::Transaction<'_>,
        e: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        if let Some(latency) = &self.latency {
            crate::report::record_since_sent(latency, e)?;
        }
        Ok(())
    }
    fn reset(&mut self, _: &rusqlite::Transaction<'_>) -> Result<(), HandlerError> {
        Ok(())
    }
}

async fn catch_up(store: &SqliteStore) -> BenchResult<Measurement> {
    let target = store.projection("s8-noop", Probe { latency: None });
    crate::projection_bench::catch_up(store.clone(), target).await
}

async fn live_latency(store: &SqliteStore, duration: Duration) -> BenchResult<Measurement> {
    let latency = Arc::new(std::sync::Mutex::new(histogram()));
    let target = store.projection(
        "s8-live",
        Probe {
            latency: Some(latency.clone()),
        },
    );
    crate::projection_bench::live_latency(store.clone(), target, latency, duration).await
}
