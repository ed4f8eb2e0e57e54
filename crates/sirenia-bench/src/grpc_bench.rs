//! S14: the official EventStoreDB Node.js client against `sirenia serve` (the `sirenia-grpc`
//! server, in this process), beside the library doing the same work on the same store in the
//! same run. The in-memory store's rows show what the client and the protocol cost on their own:
//! the same client against a server whose store does next to nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Deserialize;
use sirenia_core::{
    EventStore, ExpectedVersion, InMemoryStore, NewEvent, ReadStream, StreamId, StreamWrite,
};
use sirenia_postgres::{PostgresOptions, PostgresStore};
use sirenia_sqlite::SqliteStore;
use tokio::sync::oneshot;

use crate::Scale;
use crate::report::{BenchResult, Measurement, Row, from_quantiles};

const APPENDS: &str = "S14 grpc node-client appends";
const READS: &str = "S14 grpc node-client reads";
const PAYLOAD: &str = r#"{"account":"acc-0001","amount":1250,"currency":"EUR","note":"benchmark"}"#;

/// What `node/bench.mjs` prints.
#[derive(Deserialize)]
struct NodeLine {
    events: u64,
    seconds: f64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
}

fn node_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("node")
}

/// Installs the Node client (`npm ci`: the locked versions) unless it is there.
fn install_node_client() -> BenchResult<()> {
    let dir = node_dir();
    if dir
        .join("node_modules/@eventstore/db-client/package.json")
        .exists()
    {
        return Ok(());
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&dir)
        .status()
        .map_err(|e| format!("npm is needed for S14: {e}"))?;
    if !status.success() {
        return Err(format!("npm ci failed in {}", dir.display()).into());
    }
    Ok(())
}

/// Runs the Node side and turns its line into a measurement.
async fn node(args: &[String]) -> BenchResult<Measurement> {
    let output = tokio::process::Command::new("node")
        .arg("bench.mjs")
        .args(args)
        .current_dir(node_dir())
        .output()
        .await
        .map_err(|e| format!("Node.js is needed for S14: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "node bench.mjs {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    let line: NodeLine = serde_json::from_slice(&output.stdout)?;
    let latency = (line.p50_us > 0)
        .then(|| from_quantiles(line.p50_us, line.p99_us, line.p999_us))
        .transpose()?;
    Ok(Measurement {
        events: line.events,
        elapsed: Duration::from_secs_f64(line.seconds),
        latency,
        peak_rss: None,
    })
}

/// Appends `events` events to `stream` in batches of 1,000.
async fn fill<S: EventStore>(store: &S, stream: &StreamId, events: u64) -> BenchResult<()> {
    let data: serde_json::Value = serde_json::from_str(PAYLOAD)?;
    let mut left = events;
    while left > 0 {
        let n = left.min(1_000);
        let batch = (0..n)
            .map(|_| NewEvent::json("MoneyDeposited", &data))
            .collect();
        store
            .append(vec![StreamWrite::new(
                stream.clone(),
                ExpectedVersion::Any,
                batch,
            )])
            .await?;
        left -= n;
    }
    Ok(())
}

async fn library_read<S: EventStore>(store: &S, stream: &StreamId) -> BenchResult<Measurement> {
    let start = Instant::now();
    let mut events = store.read_stream(stream, ReadStream::forward());
    let mut n = 0u64;
    while let Some(event) = events.next().await {
        event?;
        n += 1;
    }
    Ok(Measurement {
        events: n,
        elapsed: start.elapsed(),
        latency: None,
        peak_rss: None,
    })
}

fn row(
    scenario: &str,
    subject: String,
    measurement: Measurement,
    baseline: Option<(String, f64)>,
) -> Row {
    Row {
        scenario: scenario.to_owned(),
        subject,
        measurement,
        baseline,
        goal: None,
    }
}

/// One store's rows: appends at 1 and 8 writers and reads, by the library and by the client.
async fn measure<S: EventStore>(
    store: S,
    name: &str,
    scale: Scale,
    keep: &dyn Fn(&str) -> bool,
    rows: &mut Vec<Row>,
) -> BenchResult<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("esdb://{}?tls=false", listener.local_addr()?);
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(sirenia_grpc::serve(
        store.clone(),
        listener,
        sirenia_grpc::ServeOptions::default(),
        async {
            let _ = stopped.await;
        },
    ));
    let result = async {
        if keep(APPENDS) {
            for writers in [1usize, 8] {
                // The library doing what `bench.mjs append` does.
                let library =
                    crate::postgres::sirenia_appends(&store, writers, 1, scale.duration).await?;
                let base = library.rate();
                rows.push(row(
                    APPENDS,
                    format!("library, {name}, {writers} writer(s)"),
                    library,
                    None,
                ));
                let args = [
                    "append".to_owned(),
                    url.clone(),
                    writers.to_string(),
                    scale.duration.as_millis().to_string(),
                ];
                let client = node(&args).await?;
                rows.push(row(
                    APPENDS,
                    format!("node client → sirenia serve, {name}, {writers} writer(s)"),
                    client,
                    Some((format!("library, {name}"), base)),
                ));
            }
        }
        if keep(READS) {
            let stream = StreamId::new("read-1")?;
            fill(&store, &stream, scale.read_events / 10).await?;
            let library = library_read(&store, &stream).await?;
            let base = library.rate();
            rows.push(row(
                READS,
                format!("library, {name}, one stream"),
                library,
                None,
            ));
            let client =
                node(&["read-stream".to_owned(), url.clone(), "read-1".to_owned()]).await?;
            rows.push(row(
                READS,
                format!("node client → sirenia serve, {name}, one stream"),
                client,
                Some((format!("library, {name}"), base)),
            ));
        }
        BenchResult::Ok(())
    }
    .await;
    let _ = stop.send(());
    server.await??;
    result
}

pub(crate) async fn run(
    scale: Scale,
    keep: &dyn Fn(&str) -> bool,
    rows: &mut Vec<Row>,
) -> BenchResult<()> {
    if !keep(APPENDS) && !keep(READS) {
        return Ok(());
    }
    install_node_client()?;
    measure(InMemoryStore::new(), "in-memory", scale, keep, rows).await?;
    let dir = tempfile::tempdir()?;
    let sqlite = SqliteStore::open(dir.path().join("grpc.db")).await?;
    measure(sqlite, "embedded", scale, keep, rows).await?;
    let schema = format!("sirenia_bench_grpc_{}", std::process::id());
    let options = PostgresOptions {
        schema: schema.clone(),
        pool_size: 32,
        ..PostgresOptions::default()
    };
    let url = std::env::var("SIRENIA_BENCH_POSTGRES_URL")
        .unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:5432/test".to_owned());
    let postgres = PostgresStore::connect_with(&url, options).await?;
    let result = measure(postgres.clone(), "postgres", scale, keep, rows).await;
    drop(postgres);
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    client
        .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .await?;
    result
}
