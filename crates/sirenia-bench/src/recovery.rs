//! S13: how long a store takes to be writable again after its process was killed with SIGKILL
//! mid-write. Embedded: open the file (SQLite replays its WAL), start the writer, append one
//! event; the baseline does the same with plain SQLite on a copy of the same killed file.
//! PostgreSQL: connect (pool, migration check) and append one event while the server aborts
//! the killed client's transactions; the baseline connects with tokio-postgres and inserts one
//! row.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sirenia_core::{EventStore, ExpectedVersion, NewEvent, StreamId, StreamWrite};
use sirenia_postgres::{PostgresOptions, PostgresStore};
use sirenia_sqlite::SqliteStore;

use crate::report::{BenchResult, Measurement, histogram, record};

/// The argument that makes the benchmark binary the appender S13 kills.
pub(crate) const CHILD_FLAG: &str = "--s13-appender";

/// The argument that makes the benchmark binary the PostgreSQL appender S13 kills.
pub(crate) const PG_CHILD_FLAG: &str = "--s13-postgres-appender";

/// The child: four tasks appending 10-event batches to the store at `target` (a file, or with
/// `schema` a PostgreSQL URL) until killed.
pub(crate) fn child(target: &str, schema: Option<&str>) -> BenchResult<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match schema {
            None => append_forever(SqliteStore::open(Path::new(target)).await?).await,
            Some(schema) => append_forever(pg_store(target, schema).await?).await,
        }
    })
}

async fn pg_store(url: &str, schema: &str) -> BenchResult<PostgresStore> {
    let options = PostgresOptions {
        schema: schema.to_owned(),
        pool_size: 4,
        ..PostgresOptions::default()
    };
    Ok(PostgresStore::connect_with(url, options).await?)
}

async fn append_forever<S: EventStore>(store: S) -> BenchResult<()> {
    let mut tasks = Vec::new();
    for t in 0..4 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let stream = StreamId::new(format!("s13-{t}"))?;
            loop {
                let batch = (0..10)
                    .map(|n| NewEvent::json("Tick", &serde_json::json!({ "n": n })))
                    .collect();
                store
                    .append(vec![StreamWrite::new(
                        stream.clone(),
                        ExpectedVersion::Any,
                        batch,
                    )])
                    .await?;
            }
            #[allow(unreachable_code)]
            BenchResult::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// Starts the appender with `args`, lets it write for `run`, and kills it with SIGKILL.
fn kill_mid_write(args: &[&std::ffi::OsStr], run: Duration) -> BenchResult<()> {
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    std::thread::sleep(run);
    child.kill()?; // SIGKILL on Unix
    child.wait()?;
    Ok(())
}

fn copy_files(from: &Path, to: &Path) -> BenchResult<()> {
    for suffix in ["", "-wal", "-shm"] {
        let source = PathBuf::from(format!("{}{suffix}", from.display()));
        if source.exists() {
            std::fs::copy(&source, format!("{}{suffix}", to.display()))?;
        }
    }
    Ok(())
}

/// `rounds` kills; returns (plain SQLite, Sirenia) recovery measurements (events = recoveries).
pub(crate) async fn recoveries(
    dir: &Path,
    rounds: u64,
    run: Duration,
) -> BenchResult<(Measurement, Measurement)> {
    let (mut raw_latency, mut ours_latency) = (histogram(), histogram());
    let (mut raw_total, mut ours_total) = (Duration::ZERO, Duration::ZERO);
    for round in 0..rounds {
        let path = dir.join(format!("s13-{round}.db"));
        let copy = dir.join(format!("s13-{round}-raw.db"));
        let killed = path.clone();
        tokio::task::spawn_blocking(move || {
            kill_mid_write(&[CHILD_FLAG.as_ref(), killed.as_os_str()], run)
        })
        .await??;
        copy_files(&path, &copy)?;
        // Plain SQLite: open, replay the WAL, insert one row in a synced transaction.
        let t0 = Instant::now();
        tokio::task::spawn_blocking(move || -> BenchResult<()> {
            let conn = rusqlite::Connection::open(&copy)?;
            conn.pragma_update(None, "synchronous", "full")?;
            conn.execute_batch(
                "BEGIN IMMEDIATE;
                 INSERT INTO events (position, stream_id, revision, event_id, event_type,
                   schema_version, content_type, data, recorded_at)
                 SELECT max(position) + 1, 'raw-1', 0, randomblob(16), 'Tick', 1,
                   'application/json', x'7b7d', 0 FROM events;
                 COMMIT;",
            )?;
            Ok(())
        })
        .await??;
        raw_total += t0.elapsed();
        record(&mut raw_latency, t0)?;
        // Sirenia: open the store (lock, migration check, writer start) and append one event.
        let t0 = Instant::now();
        let store = SqliteStore::open(&path).await?;
        first_append(&store, "after-1".to_owned()).await?;
        ours_total += t0.elapsed();
        record(&mut ours_latency, t0)?;
        drop(store);
    }
    Ok(measurements(
        rounds,
        (raw_total, raw_latency),
        (ours_total, ours_latency),
    ))
}

/// PostgreSQL: `rounds` kills of an appender on schema `ours`; returns (tokio-postgres,
/// Sirenia) measurements (events = recoveries). The raw side inserts into `raw`'s events table.
pub(crate) async fn pg_recoveries(
    url: &str,
    ours: &str,
    raw: &str,
    rounds: u64,
    run: Duration,
) -> BenchResult<(Measurement, Measurement)> {
    let (mut raw_latency, mut ours_latency) = (histogram(), histogram());
    let (mut raw_total, mut ours_total) = (Duration::ZERO, Duration::ZERO);
    for round in 0..rounds {
        let (child_url, child_schema) = (url.to_owned(), ours.to_owned());
        tokio::task::spawn_blocking(move || {
            kill_mid_write(
                &[
                    PG_CHILD_FLAG.as_ref(),
                    child_url.as_ref(),
                    child_schema.as_ref(),
                ],
                run,
            )
        })
        .await??;
        // Alternate which side goes first: the first one meets the server still aborting the
        // killed client's transactions.
        for side in [round % 2, 1 - round % 2] {
            let t0 = Instant::now();
            if side == 0 {
                let (client, connection) =
                    tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
                let connection = tokio::spawn(connection);
                client
                    .execute(
                        &format!(
                            "INSERT INTO {raw}.events (stream_id, revision, event_id, event_type, \
                             schema_version, content_type, data) VALUES ($1, 0, $2, 'Tick', 1, \
                             'application/json', '{{}}'::jsonb)"
                        ),
                        &[&format!("raw-after-{round}"), &sirenia_core::Uuid::now_v7()],
                    )
                    .await?;
                raw_total += t0.elapsed();
                record(&mut raw_latency, t0)?;
                drop(client);
                let _ = connection.await;
            } else {
                let store = pg_store(url, ours).await?;
                first_append(&store, format!("after-{round}")).await?;
                ours_total += t0.elapsed();
                record(&mut ours_latency, t0)?;
                drop(store);
            }
        }
    }
    Ok(measurements(
        rounds,
        (raw_total, raw_latency),
        (ours_total, ours_latency),
    ))
}

/// The append that shows a reopened store writable: one event to a new stream.
async fn first_append<S: EventStore>(store: &S, stream: String) -> BenchResult<()> {
    store
        .append(vec![StreamWrite::new(
            StreamId::new(stream)?,
            ExpectedVersion::NoStream,
            vec![NewEvent::json("Tick", &serde_json::json!({}))],
        )])
        .await?;
    Ok(())
}

/// (raw, ours) measurements of `rounds` recoveries each.
fn measurements(
    rounds: u64,
    raw: (Duration, hdrhistogram::Histogram<u64>),
    ours: (Duration, hdrhistogram::Histogram<u64>),
) -> (Measurement, Measurement) {
    let measure = |(elapsed, latency)| Measurement {
        events: rounds,
        elapsed,
        latency: Some(latency),
        peak_rss: None,
    };
    (measure(raw), measure(ours))
}
