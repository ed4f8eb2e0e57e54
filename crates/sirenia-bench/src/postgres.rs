//! The PostgreSQL store against plain tokio-postgres (a prepared single-row `INSERT` of the same
//! row shape, and a multi-row batch) and pgbench where installed, in the same run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sirenia_core::projection::HandlerError;
use sirenia_core::{EventStore, ExpectedVersion, NewEvent, StreamId, StreamWrite, Uuid};
use sirenia_postgres::{PostgresOptions, PostgresProjection, PostgresStore};
use tokio_postgres::NoTls;

use crate::Scale;
use crate::report::{
    BenchResult, Goal, Measurement, Row, collect, histogram, record, reset_peak_rss,
};

fn url() -> String {
    std::env::var("SIRENIA_BENCH_POSTGRES_URL")
        .unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:5432/test".to_owned())
}

const PAYLOAD: &str = r#"{"account":"acc-0001","amount":1250,"currency":"EUR","note":"benchmark"}"#;

/// Each writer (raw or Sirenia) appends round-robin to this many streams of its own.
const STREAMS_PER_WRITER: usize = 100;

/// S1's rounds: raw and Sirenia alternate, each running this many times for a fraction of the
/// scenario's duration.
const S1_ROUNDS: u32 = 20;

/// The same row shape as the store's events table, for the raw baseline.
fn raw_schema(schema: &str) -> String {
    format!(
        "CREATE SCHEMA {schema};
         CREATE TABLE {schema}.events (
            position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            stream_id text NOT NULL, revision bigint NOT NULL, event_id uuid NOT NULL,
            event_type text NOT NULL, schema_version integer NOT NULL,
            content_type text NOT NULL, data jsonb, data_bytes bytea, metadata jsonb,
            recorded_at timestamptz NOT NULL DEFAULT statement_timestamp(),
            UNIQUE (stream_id, revision), UNIQUE (event_id));"
    )
}

async fn connect() -> BenchResult<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(&url(), NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// Plain tokio-postgres: `connections` clients each inserting `batch` rows per statement
/// (autocommit) for `duration`.
async fn raw_inserts(
    schema: &str,
    connections: usize,
    batch: usize,
    duration: Duration,
) -> BenchResult<Measurement> {
    let writers = raw_writers(schema, connections, batch, false).await?;
    Ok(run_raw(writers, duration).await?.1)
}

/// One raw writer: its connection with the statement prepared, and its streams with their next
/// revisions. S1 keeps them across its rounds, as the store keeps its pool and its streams.
struct RawWriter {
    client: tokio_postgres::Client,
    statement: tokio_postgres::Statement,
    returning: bool,
    batch: usize,
    streams: Vec<String>,
    next: Vec<i64>,
    turn: usize,
}

/// `connections` raw writers inserting `batch` rows per statement; with `returning`, single
/// rows as the store's one-statement append writes them: the position from the transaction id,
/// and `RETURNING revision, position` (what the port hands back), read from the reply.
async fn raw_writers(
    schema: &str,
    connections: usize,
    batch: usize,
    returning: bool,
) -> BenchResult<Vec<RawWriter>> {
    let mut values = String::new();
    for r in 0..batch {
        let b = r * 4;
        if r > 0 {
            values.push_str(", ");
        }
        // The payload is bound and parsed per row, as the store must.
        values.push_str(&format!(
            "(${}, ${}, ${}, 'MoneyDeposited', 1, 'application/json', ${}::text::jsonb)",
            b + 1,
            b + 2,
            b + 3,
            b + 4
        ));
    }
    let sql = if returning {
        assert_eq!(batch, 1, "the store's statement shape is for single rows");
        format!(
            "INSERT INTO {schema}.events (position, stream_id, revision, event_id, event_type, \
             schema_version, content_type, data) OVERRIDING SYSTEM VALUE \
             VALUES (pg_current_xact_id()::text::bigint * 1048576, $1, $2, $3, \
             'MoneyDeposited', 1, 'application/json', $4::text::jsonb) \
             RETURNING revision, position"
        )
    } else {
        format!(
            "INSERT INTO {schema}.events (stream_id, revision, event_id, event_type, \
             schema_version, content_type, data) VALUES {values}"
        )
    };
    // Connected and prepared before the clock starts, as the store's pool is; each writes
    // the rows Sirenia's appends make: round-robin over its own 100 streams, each statement's
    // rows at the next revisions of one of them.
    let run = Uuid::now_v7().simple();
    let mut writers = Vec::with_capacity(connections);
    for c in 0..connections {
        let client = connect().await?;
        let statement = client.prepare(&sql).await?;
        writers.push(RawWriter {
            client,
            statement,
            returning,
            batch,
            streams: (0..STREAMS_PER_WRITER)
                .map(|s| format!("raw{c}-{run}-{s}"))
                .collect(),
            next: vec![0i64; STREAMS_PER_WRITER],
            turn: 0,
        });
    }
    Ok(writers)
}

/// Runs `writers` for `duration`, handing them back for another round.
async fn run_raw(
    writers: Vec<RawWriter>,
    duration: Duration,
) -> BenchResult<(Vec<RawWriter>, Measurement)> {
    reset_peak_rss();
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks: Vec<tokio::task::JoinHandle<crate::report::TaskResult<RawWriter>>> =
        Vec::with_capacity(writers.len());
    for mut w in writers {
        tasks.push(tokio::spawn(async move {
            let mut latency = histogram();
            let mut events = 0u64;
            let payload = PAYLOAD.to_owned();
            while Instant::now() < deadline {
                let s = w.turn % STREAMS_PER_WRITER;
                let ids: Vec<Uuid> = (0..w.batch).map(|_| Uuid::now_v7()).collect();
                let revisions: Vec<i64> = (0..w.batch as i64).map(|r| w.next[s] + r).collect();
                let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = Vec::new();
                for r in 0..w.batch {
                    params.push(&w.streams[s]);
                    params.push(&revisions[r]);
                    params.push(&ids[r]);
                    params.push(&payload);
                }
                let t0 = Instant::now();
                if w.returning {
                    let row = w.client.query_one(&w.statement, &params).await?;
                    let _: (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
                } else {
                    w.client.execute(&w.statement, &params).await?;
                }
                record(&mut latency, t0)?;
                w.next[s] += w.batch as i64;
                events += w.batch as u64;
                w.turn += 1;
            }
            Ok((w, events, latency))
        }));
    }
    collect(start, tasks).await
}

/// Sirenia: `writers` tasks appending `batch`-event appends to their own 100 streams (`Any`)
/// for `duration`, on any store (S14 runs it on the in-memory and embedded stores too).
pub(crate) async fn sirenia_appends<S: sirenia_core::EventStore>(
    store: &S,
    writers: usize,
    batch: usize,
    duration: Duration,
) -> BenchResult<Measurement> {
    let template = NewEvent::json("MoneyDeposited", &serde_json::from_str(PAYLOAD)?);
    reset_peak_rss();
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks: Vec<tokio::task::JoinHandle<crate::report::TaskResult>> = Vec::new();
    for w in 0..writers {
        let (store, template) = (store.clone(), template.clone());
        tasks.push(tokio::spawn(async move {
            let mut latency = histogram();
            let (mut events, mut i) = (0u64, 0usize);
            // Named before the clock starts, as the raw writers' streams are.
            let streams = (0..STREAMS_PER_WRITER)
                .map(|s| StreamId::new(format!("bench{w}-{s}")))
                .collect::<Result<Vec<_>, _>>()?;
            while Instant::now() < deadline {
                let stream = streams[i % STREAMS_PER_WRITER].clone();
                let batch: Vec<NewEvent> = (0..batch)
                    .map(|_| template.clone().with_id(sirenia_core::EventId::new()))
                    .collect();
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

/// pgbench running the raw single-row INSERT, if pgbench is installed: transactions/s.
fn pgbench(schema: &str, clients: usize, duration: Duration) -> Option<f64> {
    let script = std::env::temp_dir().join(format!("sirenia-pgbench-{}.sql", std::process::id()));
    let sql = format!(
        "\\set s random(0, {last})\n\
         INSERT INTO {schema}.events (stream_id, revision, event_id, event_type, schema_version, \
         content_type, data) VALUES ('pgbench-' || :client_id || '-' || :s, \
         nextval('{schema}.pgbench_rev'), gen_random_uuid(), 'MoneyDeposited', 1, \
         'application/json', '{PAYLOAD}'::jsonb);\n",
        last = STREAMS_PER_WRITER - 1
    );
    std::fs::write(&script, sql).ok()?;
    let config: tokio_postgres::Config = url().parse().ok()?;
    let output = std::process::Command::new("pgbench")
        .args(["-n", "-M", "prepared", "-h", "127.0.0.1"])
        .args([
            "-p",
            &config
                .get_ports()
                .first()
                .copied()
                .unwrap_or(5432)
                .to_string(),
        ])
        .args(["-U", config.get_user().unwrap_or("postgres")])
        .args([
            "-c",
            &clients.to_string(),
            "-j",
            &clients.min(2).to_string(),
        ])
        .args(["-T", &duration.as_secs().max(1).to_string(), "-f"])
        .arg(&script)
        .arg(config.get_dbname().unwrap_or("test"))
        .output()
        .ok()?;
    let _ = std::fs::remove_file(&script);
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse().ok())
}

/// pg_test_fsync's syncs/s for `method` writing one 8kB block (what each WAL flush of a
/// commit costs), if the tool is installed. Its test file lives in the temporary directory.
fn pg_test_fsync(method: &str) -> Option<f64> {
    let bindir = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let program = bindir
        .map(|dir| std::path::Path::new(&dir).join("pg_test_fsync"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| "pg_test_fsync".into());
    let file = std::env::temp_dir().join(format!("sirenia-fsync-{}", std::process::id()));
    let output = std::process::Command::new(program)
        .args(["-s", "1", "-f"])
        .arg(&file)
        .output()
        .ok()?;
    let _ = std::fs::remove_file(&file);
    let text = String::from_utf8_lossy(&output.stdout);
    // The first section compares the sync methods with one 8kB write per sync:
    // "        fdatasync                     12345.678 ops/sec      81 usecs/op".
    text.split("one 8kB write")
        .nth(1)?
        .lines()
        .map(str::split_whitespace)
        .find_map(|mut words| {
            (words.next() == Some(method))
                .then(|| words.next()?.parse().ok())
                .flatten()
        })
}

fn row(
    scenario: &str,
    subject: &str,
    m: Measurement,
    base: Option<(&str, f64)>,
    goal: Option<Goal>,
) -> Row {
    Row {
        scenario: scenario.to_owned(),
        subject: subject.to_owned(),
        measurement: m,
        baseline: base.map(|(n, r)| (n.to_owned(), r)),
        goal,
    }
}

pub(crate) async fn run(
    scale: Scale,
    keep: &dyn Fn(&str) -> bool,
    rows: &mut Vec<Row>,
) -> BenchResult<()> {
    if ![
        "S1 postgres",
        "S2 postgres",
        "S4 postgres",
        "S5 postgres",
        "S6 postgres",
        "S7 postgres",
        "S8 postgres",
        "S13 postgres",
    ]
    .iter()
    .any(|s| keep(s))
    {
        return Ok(());
    }
    let id = Uuid::now_v7().simple().to_string();
    let raw = format!("bench_raw_{id}");
    let ours = format!("bench_sirenia_{id}");
    let admin = connect().await?;
    admin.batch_execute(&raw_schema(&raw)).await?;
    admin
        .batch_execute(&format!("CREATE SEQUENCE {raw}.pgbench_rev"))
        .await?;
    let options = PostgresOptions {
        schema: ours.clone(),
        pool_size: 32,
        ..PostgresOptions::default()
    };
    let store = PostgresStore::connect_with(&url(), options).await?;
    let result = async {
        if keep("S1 postgres") {
            let method: String = admin.query_one("SHOW wal_sync_method", &[]).await?.get(0);
            if let Some(syncs) = pg_test_fsync(&method) {
                rows.push(row(
                    "S1 postgres single-event appends",
                    &format!("pg_test_fsync: {method} of one 8kB write (syncs/s)"),
                    Measurement {
                        // A rate far below u64::MAX, reported over one second.
                        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                        events: syncs.round() as u64,
                        elapsed: Duration::from_secs(1),
                        latency: None,
                        peak_rss: None,
                    },
                    None,
                    None,
                ));
            }
            for connections in [1usize, 4, 8, 32] {
                let scenario = "S1 postgres single-event appends";
                // Raw and Sirenia take turns in short rounds, so that the disk's and the
                // machine's drift over the run falls on both alike.
                let round = scale.duration / S1_ROUNDS;
                let (mut raw_total, mut ours_total, mut shaped_total) = (None, None, None);
                let mut plain = raw_writers(&raw, connections, 1, false).await?;
                // With one writer, also the store's statement shape through a raw client: how
                // much of the gap is the statement, and how much the store.
                let mut shaped = if connections == 1 {
                    raw_writers(&raw, connections, 1, true).await?
                } else {
                    Vec::new()
                };
                for _ in 0..S1_ROUNDS {
                    let (writers, m) = run_raw(plain, round).await?;
                    plain = writers;
                    Measurement::accumulate(&mut raw_total, m)?;
                    let m = sirenia_appends(&store, connections, 1, round).await?;
                    Measurement::accumulate(&mut ours_total, m)?;
                    if !shaped.is_empty() {
                        let (writers, m) = run_raw(shaped, round).await?;
                        shaped = writers;
                        Measurement::accumulate(&mut shaped_total, m)?;
                    }
                }
                let (Some(m), Some(ours)) = (raw_total, ours_total) else {
                    unreachable!("S1_ROUNDS is not zero");
                };
                let raw_rate = m.rate();
                rows.push(row(
                    scenario,
                    &format!("raw prepared INSERT, {connections} connection(s)"),
                    m,
                    None,
                    None,
                ));
                if let Some(tps) = [1, 8]
                    .contains(&connections)
                    .then(|| pgbench(&raw, connections, scale.duration))
                    .flatten()
                {
                    rows.push(row(
                        scenario,
                        &format!("pgbench INSERT, {connections} client(s)"),
                        Measurement {
                            // A rate far below u64::MAX, reported over one second.
                            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                            events: tps.round() as u64,
                            elapsed: Duration::from_secs(1),
                            latency: None,
                            peak_rss: None,
                        },
                        Some(("raw INSERT", raw_rate)),
                        None,
                    ));
                }
                if let Some(m) = shaped_total {
                    rows.push(row(
                        scenario,
                        "raw prepared INSERT as the store writes it (xid position, RETURNING), \
                         1 connection",
                        m,
                        Some(("raw INSERT", raw_rate)),
                        None,
                    ));
                }
                let m = ours;
                let goal = match connections {
                    1 => Some(Goal::Ratio(0.9)),
                    8 => Some(Goal::Ratio(0.8)),
                    _ => None,
                };
                rows.push(row(
                    scenario,
                    &format!("sirenia, {connections} writer(s)"),
                    m,
                    Some(("raw INSERT", raw_rate)),
                    goal,
                ));
            }
        }
        if keep("S2 postgres") {
            for batch in [1usize, 10, 100, 1000] {
                let scenario = "S2 postgres batches, one connection";
                let m = raw_inserts(&raw, 1, batch, scale.duration).await?;
                let raw_rate = m.rate();
                rows.push(row(
                    scenario,
                    &format!("raw multi-row INSERT, {batch} rows"),
                    m,
                    None,
                    None,
                ));
                let m = sirenia_appends(&store, 1, batch, scale.duration).await?;
                rows.push(row(
                    scenario,
                    &format!("sirenia, {batch} events/append"),
                    m,
                    Some(("raw INSERT", raw_rate)),
                    (batch == 100).then_some(Goal::Rate(50_000.0)),
                ));
            }
        }
        if keep("S4 postgres") {
            use crate::command_bench::{S4_LENGTHS, S4_STREAMS, command_cycle, prefill};
            for length in S4_LENGTHS {
                let scenario = "S4 postgres command cycle";
                let m = raw_commands(&raw, S4_STREAMS, length, scale.commands).await?;
                let raw_rate = m.rate();
                rows.push(row(
                    scenario,
                    &format!("raw SELECT + INSERT, {length}-event streams"),
                    m,
                    None,
                    None,
                ));
                let prefix = format!("s4l{length}-");
                prefill(&store, &prefix, S4_STREAMS, length).await?;
                let m = command_cycle(store.clone(), &prefix, S4_STREAMS, scale.commands).await?;
                rows.push(row(
                    scenario,
                    &format!("sirenia repository, {length}-event streams"),
                    m,
                    Some(("raw", raw_rate)),
                    None,
                ));
            }
        }
        if keep("S5 postgres") {
            rows.extend(crate::command_bench::s5_rows(&store, "postgres", scale.duration).await?);
        }
        // S6: load a 10,000-event aggregate, replaying every event and from a snapshot taken
        // every 100 events.
        if keep("S6 postgres") {
            let snapshots = sirenia_core::StoreAdmin::snapshots(&store);
            rows.extend(
                crate::snapshot_bench::s6_rows(store.clone(), snapshots, "postgres").await?,
            );
        }
        if keep("S7 postgres") || keep("S8 postgres") {
            fill(&store, scale.read_events).await?;
        }
        if keep("S7 postgres") {
            let big = StreamId::new(BIG_STREAM)?;
            for (label, which) in [("one stream", Some(&big)), ("whole log", None)] {
                let scenario = format!("S7 postgres read {label}");
                let m = copy_scan(&ours, which.map(StreamId::as_str)).await?;
                let copy_rate = m.rate();
                rows.push(row(&scenario, "COPY (SELECT …) TO STDOUT", m, None, None));
                let m = crate::sqlite::sirenia_read(&store, which).await?;
                rows.push(row(
                    &scenario,
                    "sirenia",
                    m,
                    Some(("COPY", copy_rate)),
                    None,
                ));
            }
        }
        if keep("S8 postgres") {
            let m = copy_scan(&ours, None).await?;
            let copy_rate = m.rate();
            rows.push(row(
                "S8 postgres projection catch-up",
                "COPY (SELECT … ORDER BY position) TO STDOUT",
                m,
                None,
                None,
            ));
            let m = read_pages(&store).await?;
            rows.push(row(
                "S8 postgres projection catch-up",
                "sirenia, read_all_page loop alone (no projection)",
                m,
                Some(("COPY", copy_rate)),
                None,
            ));
            let m = catch_up(&store).await?;
            rows.push(row(
                "S8 postgres projection catch-up",
                "sirenia, no-op projection, checkpoint per 10k-event transaction",
                m,
                Some(("COPY", copy_rate)),
                Some(Goal::Ratio(0.5)),
            ));
            let m = live_latency(&store, scale.duration).await?;
            rows.push(row(
                "S8 postgres live delivery",
                "sirenia, append-to-handler latency, 4 writers",
                m,
                None,
                None,
            ));
        }
        if keep("S13 postgres") {
            let rounds = if scale.read_events < 1_000_000 { 2 } else { 10 };
            let (raw_m, ours_m) = crate::recovery::pg_recoveries(
                &url(),
                &ours,
                &raw,
                rounds,
                Duration::from_millis(500),
            )
            .await?;
            let raw_rate = raw_m.rate();
            rows.push(row(
                "S13 postgres recovery after kill -9",
                "tokio-postgres: connect, insert one row (recoveries/s)",
                raw_m,
                None,
                None,
            ));
            rows.push(row(
                "S13 postgres recovery after kill -9",
                "sirenia: connect the store, append one event (recoveries/s)",
                ours_m,
                Some(("tokio-postgres", raw_rate)),
                None,
            ));
        }
        BenchResult::Ok(())
    }
    .await;
    admin
        .batch_execute(&format!(
            "DROP SCHEMA {raw} CASCADE; DROP SCHEMA \"{ours}\" CASCADE"
        ))
        .await?;
    result
}

/// Plain tokio-postgres doing S4's work: `streams` streams of `events` deposits, then `ops`
/// commands round-robin, each reading its stream's rows (folding the amounts) and inserting the
/// next revision (autocommit).
async fn raw_commands(
    schema: &str,
    streams: u64,
    events: u64,
    ops: u64,
) -> BenchResult<Measurement> {
    let client = connect().await?;
    let prefix = format!("account-raw{events}-");
    client
        .execute(
            &format!(
                "INSERT INTO {schema}.events (stream_id, revision, event_id, event_type, \
                 schema_version, content_type, data) \
                 SELECT $1 || s, r, gen_random_uuid(), 'MoneyDeposited', 1, 'application/json', \
                        '{{\"amount\": 1}}'::jsonb \
                 FROM generate_series(0::bigint, $2::bigint - 1) s, generate_series(0::bigint, $3::bigint - 1) r"
            ),
            &[&prefix, &i64::try_from(streams)?, &i64::try_from(events)?],
        )
        .await?;
    let select = client
        .prepare(&format!(
            "SELECT revision, data::text FROM {schema}.events WHERE stream_id = $1 \
             ORDER BY revision"
        ))
        .await?;
    let insert = client
        .prepare(&format!(
            "INSERT INTO {schema}.events (stream_id, revision, event_id, event_type, \
             schema_version, content_type, data) \
             VALUES ($1, $2, $3, 'MoneyDeposited', 1, 'application/json', $4::text::jsonb)"
        ))
        .await?;
    let data = r#"{"amount": 1}"#;
    let mut latency = histogram();
    reset_peak_rss();
    let start = Instant::now();
    for k in 0..ops {
        let t0 = Instant::now();
        let stream = format!("{prefix}{}", k % streams);
        let (mut balance, mut version) = (0i64, 0i64);
        for row in client.query(&select, &[&stream]).await? {
            version = row.get::<_, i64>(0) + 1;
            let value: serde_json::Value = serde_json::from_str(row.get::<_, &str>(1))?;
            balance += value["amount"].as_i64().unwrap_or(0);
        }
        std::hint::black_box(balance);
        client
            .execute(&insert, &[&stream, &version, &Uuid::now_v7(), &data])
            .await?;
        record(&mut latency, t0)?;
    }
    Ok(Measurement {
        events: ops,
        elapsed: start.elapsed(),
        latency: Some(latency),
        peak_rss: crate::report::peak_rss(),
    })
}

/// The stream S7 reads whole, which also makes up most of the log S7 and S8 read.
const BIG_STREAM: &str = "big-1";

/// Appends 1000-event batches to [`BIG_STREAM`] until it holds at least `events` events.
async fn fill(store: &PostgresStore, events: u64) -> BenchResult<()> {
    let stream = StreamId::new(BIG_STREAM)?;
    let mut have = store.stream_info(&stream).await?.map_or(0, |i| i.version);
    let data: serde_json::Value = serde_json::from_str(PAYLOAD)?;
    let template = NewEvent::json("MoneyDeposited", &data);
    while have < events {
        let batch: Vec<NewEvent> = (0..1000)
            .map(|_| template.clone().with_id(sirenia_core::EventId::new()))
            .collect();
        store
            .append(vec![StreamWrite::new(
                stream.clone(),
                ExpectedVersion::Exact(have),
                batch,
            )])
            .await?;
        have += 1000;
    }
    Ok(())
}

/// The raw scan through `COPY … TO STDOUT`: every row of the log in position order, or of one
/// stream in revision order.
async fn copy_scan(schema: &str, stream: Option<&str>) -> BenchResult<Measurement> {
    use futures_util::StreamExt;
    let client = connect().await?;
    let selection = match stream {
        Some(stream) => format!("WHERE stream_id = '{stream}' ORDER BY revision"),
        None => "ORDER BY position".to_owned(),
    };
    reset_peak_rss();
    let start = Instant::now();
    let stream = client
        .copy_out(&format!(
            "COPY (SELECT position, stream_id, revision, event_id, event_type, schema_version, \
             content_type, data, data_bytes, metadata, recorded_at FROM \"{schema}\".events \
             {selection}) TO STDOUT"
        ))
        .await?;
    let mut stream = std::pin::pin!(stream);
    let mut rows = 0u64;
    while let Some(chunk) = stream.next().await {
        rows += chunk?.iter().filter(|b| **b == b'\n').count() as u64;
    }
    Ok(Measurement {
        events: rows,
        elapsed: start.elapsed(),
        latency: None,
        peak_rss: crate::report::peak_rss(),
    })
}

/// A projection that does nothing but record, for live events, the time since the event's
/// writer called append.
struct Probe {
    latency: Option<Arc<std::sync::Mutex<hdrhistogram::Histogram<u64>>>>,
}

impl PostgresProjection for Probe {
    async fn setup(&mut self, _: &tokio_postgres::Transaction<'_>) -> Result<(), HandlerError> {
        Ok(())
    }
    async fn apply(
        &mut self,
        _: &tokio_postgres::Transaction<'_>,
        e: &sirenia_core::RecordedEvent,
    ) -> Result<(), HandlerError> {
        if let Some(latency) = &self.latency {
            crate::report::record_since_sent(latency, e)?;
        }
        Ok(())
    }
    async fn reset(&mut self, _: &tokio_postgres::Transaction<'_>) -> Result<(), HandlerError> {
        Ok(())
    }
}

async fn catch_up(store: &PostgresStore) -> BenchResult<Measurement> {
    let target = store.projection("s8-noop", Probe { latency: None });
    crate::projection_bench::catch_up(store.clone(), target).await
}

async fn live_latency(store: &PostgresStore, duration: Duration) -> BenchResult<Measurement> {
    let latency = Arc::new(std::sync::Mutex::new(histogram()));
    let target = store.projection(
        "s8-live",
        Probe {
            latency: Some(latency.clone()),
        },
    );
    crate::projection_bench::live_latency(store.clone(), target, latency, duration).await
}

/// The log read page after page, as a projection reads it, without applying anything.
async fn read_pages(store: &PostgresStore) -> BenchResult<Measurement> {
    reset_peak_rss();
    let start = Instant::now();
    let mut next = sirenia_core::Position(1);
    let mut events = 0u64;
    loop {
        let page = store
            .read_all_page(
                next,
                sirenia_core::Direction::Forward,
                &sirenia_core::EventFilter::all(),
                sirenia_core::limits::MAX_PAGE_SIZE,
            )
            .await?;
        events += page.events.len() as u64;
        next = page.next;
        if page.at_end {
            break;
        }
    }
    Ok(Measurement {
        events,
        elapsed: start.elapsed(),
        latency: None,
        peak_rss: crate::report::peak_rss(),
    })
}
