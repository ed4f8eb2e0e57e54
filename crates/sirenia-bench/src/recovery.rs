//! S13: how long the embedded store takes to be writable again after its process was killed
//! with SIGKILL mid-write: open the file (SQLite replays its WAL), start the writer, append one
//! event. The baseline does the same with plain SQLite on a copy of the same killed file.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sirenia_core::{EventStore, ExpectedVersion, NewEvent, StreamId, StreamWrite};
use sirenia_sqlite::SqliteStore;

use crate::report::{BenchResult, Measurement, histogram, record};

/// The argument that makes the benchmark binary the appender S13 kills.
pub(crate) const CHILD_FLAG: &str = "--s13-appender";

/// The child: four tasks appending 10-event batches to `path` until killed.
pub(crate) fn child(path: &Path) -> BenchResult<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let store = SqliteStore::open(path).await?;
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
        BenchResult::Ok(())
    })
}

/// Starts the appender on `path`, lets it write for `run`, and kills it with SIGKILL.
fn kill_mid_write(path: &Path, run: Duration) -> BenchResult<()> {
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .arg(CHILD_FLAG)
        .arg(path)
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
        tokio::task::spawn_blocking(move || kill_mid_write(&killed, run)).await??;
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
        store
            .append(vec![StreamWrite::new(
                StreamId::new("after-1")?,
                ExpectedVersion::NoStream,
                vec![NewEvent::json("Tick", &serde_json::json!({}))],
            )])
            .await?;
        ours_total += t0.elapsed();
        record(&mut ours_latency, t0)?;
        drop(store);
    }
    let measure = |elapsed, latency| Measurement {
        events: rounds,
        elapsed,
        latency: Some(latency),
        peak_rss: None,
    };
    Ok((
        measure(raw_total, raw_latency),
        measure(ours_total, ours_latency),
    ))
}
