//! The peer crates' side of Sirenia's benchmarks, run by `sirenia-bench` in the same run as
//! Sirenia's own figures, against the same PostgreSQL (and, for sqlite-es, a SQLite file with
//! the embedded store's durability). One JSON line per measurement on standard output; each
//! names the parts of the Sirenia row it is compared with (`matches`).
//!
//! - S1: single-event appends, each writer round-robin over 100 streams of its own, at 1 and 8
//!   writers, through each peer's own append (cqrs-es `persist`, esrs `persist`, disintegrate
//!   `append` with its concurrency query).
//! - S2: one writer appending batches of 1/10/100/1000 events to one stream.
//! - S4: the command cycle (load, decide, append) through each peer's command API.
//! - S5: 8 writers running deposit commands on one hot account, and on a skewed spread (8 in
//!   10 on two accounts, the rest over 98), conflicts retried up to 10 times and counted; esrs
//!   locks the aggregate instead (its `lock_and_load`), so it has no conflicts to retry.
//! - S6: loading a 10,000-event aggregate, replaying every event, and from a snapshot every 100
//!   events where the peer has snapshots (cqrs-es).
//! - S7: reading one stream of N events and the whole log through each peer's read API (the
//!   rows are loaded with one SQL statement: how they got there does not change the read).
//! - S8: catching a no-op read model up over the whole log through the peer's replay API
//!   (cqrs-es `QueryReplay::replay_all`, esrs `PgRebuilder::all_at_once`).
//!
//! ```text
//! cargo run --release --manifest-path bench-peers/Cargo.toml -- [--quick] [--only NAME]
//! ```

use std::convert::Infallible;
use std::error::Error;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

type BoxResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// S4: stream lengths measured.
const LENGTHS: [u64; 3] = [1, 10, 100];
/// S4: accounts per length; commands go round-robin over them.
const STREAMS: u64 = 20;
/// S1: streams each writer appends to, round-robin (as Sirenia's S1).
const S1_STREAMS: u64 = 100;
/// S6: events in the loaded aggregate, the snapshot interval, and the timed loads.
const S6_EVENTS: usize = 10_000;
const S6_SNAPSHOT_EVERY: usize = 100;
const S6_LOADS: u64 = 20;
/// The deposit's note: the JSON payload is about as large as Sirenia's benchmark payload.
const NOTE: &str = "benchmark";

fn url() -> String {
    std::env::var("SIRENIA_BENCH_POSTGRES_URL")
        .unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:5432/test".to_owned())
}

/// Stream numbers unique within the run.
fn next_stream() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// What this run measures.
#[derive(Clone)]
struct Opts {
    only: Option<String>,
    /// How long a timed write scenario runs.
    duration: Duration,
    /// S4: commands timed per stream length.
    ops: u64,
    /// S7: events in the stream read.
    read_events: u64,
}

impl Opts {
    fn keep(&self, scenario: &str) -> bool {
        self.only.as_deref().is_none_or(|o| scenario.contains(o))
    }
}

// ---------------------------------------------------------------------------------------------
// Measurements

/// One measurement, as `sirenia-bench` reads it.
#[derive(Serialize)]
struct Line {
    scenario: String,
    subject: String,
    /// The comma-separated parts of the subject of Sirenia's row this line is compared with.
    matches: Vec<String>,
    events: u64,
    seconds: f64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3)
        .unwrap_or_else(|e| unreachable!("constant bounds are valid: {e}"))
}

fn record(latency: &mut Histogram<u64>, since: Instant) -> BoxResult<()> {
    latency.record(u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX))?;
    Ok(())
}

fn emit(
    scenario: &str,
    subject: String,
    matches: &[&str],
    events: u64,
    elapsed: Duration,
    latency: &Histogram<u64>,
) -> BoxResult<()> {
    let line = Line {
        scenario: scenario.to_owned(),
        subject,
        matches: matches.iter().map(|m| (*m).to_owned()).collect(),
        events,
        seconds: elapsed.as_secs_f64(),
        p50_us: latency.value_at_quantile(0.5),
        p99_us: latency.value_at_quantile(0.99),
        p999_us: latency.value_at_quantile(0.999),
    };
    println!("{}", serde_json::to_string(&line)?);
    Ok(())
}

/// Emits an S4 row: `m` measured on streams of `length` events.
fn s4_row(scenario: &str, label: &str, length: u64, m: &Measured) -> BoxResult<()> {
    let streams = format!("{length}-event streams");
    emit(
        scenario,
        format!("{label}, {streams}"),
        &["sirenia repository", &streams],
        m.events,
        m.elapsed,
        &m.latency,
    )
}

/// Runs `ops` timed operations one after another; events = `ops` × `events_per_op`.
async fn timed_ops<F, Fut>(ops: u64, events_per_op: u64, mut op: F) -> BoxResult<Measured>
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = BoxResult<()>>,
{
    let mut latency = histogram();
    let start = Instant::now();
    for k in 0..ops {
        let t0 = Instant::now();
        op(k).await?;
        record(&mut latency, t0)?;
    }
    Ok(Measured {
        events: ops * events_per_op,
        elapsed: start.elapsed(),
        latency,
    })
}

struct Measured {
    events: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
}

/// `writers` tasks appending `batch`-event appends for `duration`, each round-robin over
/// `streams` streams of its own. Each writer appends once before the clock starts (connections
/// are made then); an append the peer refuses as a concurrent modification is retried, and
/// counted.
async fn timed_appends<P: Peer>(
    peer: &P,
    writers: usize,
    streams: u64,
    batch: usize,
    duration: Duration,
) -> BoxResult<(Measured, u64)> {
    let ready = std::sync::Arc::new(tokio::sync::Barrier::new(writers + 1));
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let mut own: Vec<P::Cursor> = (0..streams).map(|_| peer.cursor(next_stream())).collect();
        let (peer, ready) = (peer.clone(), ready.clone());
        tasks.push(tokio::spawn(async move {
            let warm_up: BoxResult<()> = async {
                while !peer.append(&mut own[0], batch).await? {}
                Ok(())
            }
            .await;
            // Every writer reaches the barrier, failed or not, so none waits forever.
            ready.wait().await;
            warm_up?;
            let deadline = Instant::now() + duration;
            let mut latency = histogram();
            let (mut events, mut retries) = (0u64, 0u64);
            let mut k = 0usize;
            while Instant::now() < deadline {
                let at = k % own.len();
                let t0 = Instant::now();
                while !peer.append(&mut own[at], batch).await? {
                    retries += 1;
                }
                record(&mut latency, t0)?;
                events += batch as u64;
                k += 1;
            }
            BoxResult::Ok((events, retries, latency))
        }));
    }
    ready.wait().await;
    let start = Instant::now();
    let mut latency = histogram();
    let (mut events, mut retries) = (0, 0);
    for task in tasks {
        let (n, r, h) = task.await??;
        events += n;
        retries += r;
        latency.add(&h)?;
    }
    let measured = Measured {
        events,
        elapsed: start.elapsed(),
        latency,
    };
    Ok((measured, retries))
}

/// ", N retries" when there were any.
fn retried(retries: u64) -> String {
    if retries == 0 {
        String::new()
    } else {
        format!(", {retries} conflicts retried")
    }
}

// ---------------------------------------------------------------------------------------------
// The peers behind one interface

/// A deposit as the peers store it (about the size of Sirenia's benchmark payload).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Deposited {
    amount: i64,
    currency: String,
    note: String,
}

fn deposit() -> Deposited {
    Deposited {
        amount: 1,
        currency: "EUR".to_owned(),
        note: NOTE.to_owned(),
    }
}

/// What S1, S2, S6 and S7 need of a peer.
trait Peer: Clone + Send + Sync + 'static {
    /// What a writer remembers of a stream it appends to.
    type Cursor: Send + 'static;
    /// The row label.
    fn label(&self) -> String;
    /// A new, empty stream.
    fn cursor(&self, stream: u64) -> Self::Cursor;
    /// Appends `n` deposits to the cursor's stream in one append; `false` when the peer
    /// refused it as a concurrent modification (to be retried).
    fn append(
        &self,
        cursor: &mut Self::Cursor,
        n: usize,
    ) -> impl Future<Output = BoxResult<bool>> + Send;
    /// Loads the stream's aggregate; returns its balance.
    fn load(&self, stream: u64) -> impl Future<Output = BoxResult<i64>> + Send;
    /// Puts `events` deposits in a new stream with one SQL statement.
    fn bulk_fill(&self, stream: u64, events: u64) -> impl Future<Output = BoxResult<()>> + Send;
    /// Reads the stream forward; returns how many events it read.
    fn read_stream(&self, stream: u64) -> impl Future<Output = BoxResult<u64>> + Send;
    /// Reads every event forward; returns how many it read.
    fn read_all(&self) -> impl Future<Output = BoxResult<u64>> + Send;
}

// --- cqrs-es (postgres-es, sqlite-es) ---------------------------------------------------------

mod cqrs {
    use super::*;
    use cqrs_es::event_sink::EventSink;
    use cqrs_es::{Aggregate, DomainEvent};

    #[derive(Debug, Default, Serialize, Deserialize)]
    pub struct Account {
        pub balance: i64,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub enum AccountEvent {
        Deposited(Deposited),
    }

    impl DomainEvent for AccountEvent {
        fn event_type(&self) -> String {
            "Deposited".to_owned()
        }
        fn event_version(&self) -> String {
            "1.0".to_owned()
        }
    }

    #[derive(Debug)]
    pub struct Deposit(pub usize);

    impl Aggregate for Account {
        const TYPE: &'static str = "account";
        type Command = Deposit;
        type Event = AccountEvent;
        type Error = Infallible;
        type Services = ();

        async fn handle(
            &mut self,
            Deposit(n): Deposit,
            _: &(),
            sink: &EventSink<Self>,
        ) -> Result<(), Infallible> {
            for _ in 0..n {
                sink.write(AccountEvent::Deposited(deposit()), self).await;
            }
            Ok(())
        }

        fn apply(&mut self, AccountEvent::Deposited(d): AccountEvent) {
            self.balance += d.amount;
        }
    }

    /// postgres-es `db/init.sql`, tables only.
    pub const PG_DDL: &str = "CREATE TABLE events (aggregate_type text NOT NULL,
        aggregate_id text NOT NULL, sequence bigint CHECK (sequence >= 0) NOT NULL,
        event_type text NOT NULL, event_version text NOT NULL, payload json NOT NULL,
        metadata json NOT NULL, PRIMARY KEY (aggregate_type, aggregate_id, sequence));
      CREATE TABLE snapshots (aggregate_type text NOT NULL, aggregate_id text NOT NULL,
        last_sequence bigint CHECK (last_sequence >= 0) NOT NULL,
        current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL, payload json NOT NULL,
        PRIMARY KEY (aggregate_type, aggregate_id, last_sequence));";

    /// sqlite-es's migration, tables only.
    pub const SQLITE_DDL: &str = "CREATE TABLE events (aggregate_type text NOT NULL,
        aggregate_id text NOT NULL, sequence integer CHECK (sequence >= 0) NOT NULL,
        event_type text NOT NULL, event_version text NOT NULL, payload text NOT NULL,
        metadata text NOT NULL, PRIMARY KEY (aggregate_type, aggregate_id, sequence)) STRICT;
      CREATE TABLE snapshots (aggregate_type text NOT NULL, aggregate_id text NOT NULL,
        last_sequence integer CHECK (last_sequence >= 0) NOT NULL,
        current_snapshot integer CHECK (current_snapshot >= 0) NOT NULL, payload text NOT NULL,
        PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)) STRICT;";
}

/// The database under a cqrs-es event repository.
#[derive(Clone)]
enum CqrsDb {
    Postgres(sqlx::PgPool),
    Sqlite(sqlx::SqlitePool),
}

/// cqrs-es over postgres-es or sqlite-es; with `snapshot_every`, appends and loads go through
/// its snapshot store, otherwise appends are the repository's `persist` and loads replay.
#[derive(Clone)]
struct Cqrs {
    db: CqrsDb,
    snapshot_every: Option<usize>,
}

/// Runs `$body` with `$repo` bound to a fresh repository (they are a pool and a few strings).
macro_rules! with_repo {
    ($peer:expr, $repo:ident => $body:expr) => {
        match &$peer.db {
            CqrsDb::Postgres(pool) => {
                let $repo = postgres_es::PostgresEventRepository::new(pool.clone());
                $body
            }
            CqrsDb::Sqlite(pool) => {
                let $repo = sqlite_es::SqliteEventRepository::new(pool.clone());
                $body
            }
        }
    };
}

/// Loads an aggregate through a cqrs-es event store over `repo`.
async fn cqrs_load<R: cqrs_es::persist::PersistedEventRepository>(
    repo: R,
    snapshot_every: Option<usize>,
    id: &str,
) -> BoxResult<cqrs_es::persist::EventStoreAggregateContext<cqrs::Account>> {
    use cqrs_es::EventStore;
    use cqrs_es::persist::PersistedEventStore;
    let store = match snapshot_every {
        Some(n) => PersistedEventStore::<R, cqrs::Account>::new_snapshot_store(repo, n),
        None => PersistedEventStore::<R, cqrs::Account>::new_event_store(repo),
    };
    Ok(store.load_aggregate(id).await?)
}

/// Appends `n` deposits through a cqrs-es snapshot store over `repo`.
async fn cqrs_commit<R: cqrs_es::persist::PersistedEventRepository>(
    repo: R,
    every: usize,
    id: &str,
    n: usize,
) -> BoxResult<()> {
    use cqrs_es::EventStore;
    use cqrs_es::persist::PersistedEventStore;
    let store = PersistedEventStore::<R, cqrs::Account>::new_snapshot_store(repo, every);
    let context = store.load_aggregate(id).await?;
    let events = (0..n)
        .map(|_| cqrs::AccountEvent::Deposited(deposit()))
        .collect();
    store
        .commit(events, context, std::collections::HashMap::new())
        .await?;
    Ok(())
}

/// Counts what a cqrs-es replay stream yields.
async fn cqrs_count(mut stream: cqrs_es::persist::ReplayStream) -> BoxResult<u64> {
    let mut n = 0u64;
    while let Some(event) = stream.next::<cqrs::Account>(&[]).await {
        std::hint::black_box(event?);
        n += 1;
    }
    Ok(n)
}

impl Peer for Cqrs {
    /// The aggregate id and the next sequence number.
    type Cursor = (String, usize);

    fn label(&self) -> String {
        let store = match self.db {
            CqrsDb::Postgres(_) => "postgres-es",
            CqrsDb::Sqlite(_) => "sqlite-es",
        };
        format!("cqrs-es 0.5 + {store}")
    }

    fn cursor(&self, stream: u64) -> (String, usize) {
        (format!("cq-{stream}"), 1)
    }

    async fn append(&self, (id, next): &mut (String, usize), n: usize) -> BoxResult<bool> {
        use cqrs_es::persist::{PersistedEventRepository, SerializedEvent};
        if let Some(every) = self.snapshot_every {
            with_repo!(self, repo => cqrs_commit(repo, every, id, n).await)?;
            *next += n;
            return Ok(true);
        }
        let payload = serde_json::to_value(cqrs::AccountEvent::Deposited(deposit()))?;
        let events: Vec<SerializedEvent> = (0..n)
            .map(|k| {
                SerializedEvent::new(
                    id.clone(),
                    *next + k,
                    "account".to_owned(),
                    "Deposited".to_owned(),
                    "1.0".to_owned(),
                    payload.clone(),
                    serde_json::json!({}),
                )
            })
            .collect();
        with_repo!(self, repo => repo.persist::<cqrs::Account>(&events, None).await)?;
        *next += n;
        Ok(true)
    }

    async fn load(&self, stream: u64) -> BoxResult<i64> {
        let (id, _) = self.cursor(stream);
        let context = with_repo!(self, repo => cqrs_load(repo, self.snapshot_every, &id).await)?;
        Ok(context.aggregate.balance)
    }

    async fn bulk_fill(&self, stream: u64, events: u64) -> BoxResult<()> {
        let (id, _) = self.cursor(stream);
        let payload = serde_json::to_string(&cqrs::AccountEvent::Deposited(deposit()))?;
        match &self.db {
            CqrsDb::Postgres(pool) => {
                sqlx::query(
                    "INSERT INTO events SELECT 'account', $1, s, 'Deposited', '1.0', $2::json, \
                     '{}'::json FROM generate_series(1, $3) s",
                )
                .bind(&id)
                .bind(&payload)
                .bind(i64::try_from(events)?)
                .execute(pool)
                .await?;
            }
            CqrsDb::Sqlite(pool) => {
                sqlx::query(
                    "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < ?3) \
                     INSERT INTO events SELECT 'account', ?1, n, 'Deposited', '1.0', ?2, '{}' \
                     FROM s",
                )
                .bind(&id)
                .bind(&payload)
                .bind(i64::try_from(events)?)
                .execute(pool)
                .await?;
            }
        }
        Ok(())
    }

    async fn read_stream(&self, stream: u64) -> BoxResult<u64> {
        use cqrs_es::persist::PersistedEventRepository;
        let (id, _) = self.cursor(stream);
        with_repo!(self, repo => cqrs_count(repo.stream_events::<cqrs::Account>(&id).await?).await)
    }

    async fn read_all(&self) -> BoxResult<u64> {
        use cqrs_es::persist::PersistedEventRepository;
        with_repo!(self, repo => cqrs_count(repo.stream_all_events::<cqrs::Account>().await?).await)
    }
}

/// S4 through a cqrs-es framework over any of its event stores.
async fn cqrs_commands<ES: cqrs_es::EventStore<cqrs::Account>>(
    framework: &cqrs_es::CqrsFramework<cqrs::Account, ES>,
    scenario: &str,
    label: &str,
    ops: u64,
) -> BoxResult<()> {
    for length in LENGTHS {
        for s in 0..STREAMS {
            for _ in 0..length {
                framework
                    .execute(&format!("cq{length}-{s}"), cqrs::Deposit(1))
                    .await?;
            }
        }
        let m = timed_ops(ops, 1, |k| async move {
            framework
                .execute(&format!("cq{length}-{}", k % STREAMS), cqrs::Deposit(1))
                .await?;
            Ok(())
        })
        .await?;
        s4_row(scenario, label, length, &m)?;
    }
    Ok(())
}

// --- disintegrate (disintegrate-postgres) -----------------------------------------------------

mod dis {
    use super::*;
    use disintegrate::{Decision, Event, StateMutate, StateQuery};

    #[derive(Debug, Clone, PartialEq, Eq, Event, Serialize, Deserialize)]
    pub enum AccountEvent {
        Deposited {
            #[id]
            account_id: String,
            amount: i64,
            currency: String,
            note: String,
        },
    }

    pub fn deposited(account_id: &str) -> AccountEvent {
        let d = deposit();
        AccountEvent::Deposited {
            account_id: account_id.to_owned(),
            amount: d.amount,
            currency: d.currency,
            note: d.note,
        }
    }

    #[derive(Debug, Default, Clone, Serialize, Deserialize, StateQuery)]
    #[state_query(AccountEvent)]
    pub struct Account {
        #[id]
        pub account_id: String,
        pub balance: i64,
    }

    impl StateMutate for Account {
        fn mutate(&mut self, event: Self::Event) {
            match event {
                AccountEvent::Deposited { amount, .. } => self.balance += amount,
            }
        }
    }

    pub struct Deposit {
        pub account_id: String,
    }

    impl Decision for Deposit {
        type Event = AccountEvent;
        type StateQuery = Account;
        type Error = Infallible;

        fn state_query(&self) -> Account {
            Account {
                account_id: self.account_id.clone(),
                balance: 0,
            }
        }

        fn process(&self, _: &Account) -> Result<Vec<AccountEvent>, Infallible> {
            Ok(vec![deposited(&self.account_id)])
        }
    }

    pub type Store = disintegrate_postgres::PgEventStore<
        AccountEvent,
        disintegrate::serde::json::Json<AccountEvent>,
    >;

    /// `event_store_begin_epoch()` as disintegrate-postgres 4.0.1 creates it, with its
    /// hexadecimal literal written in decimal: PostgreSQL 15 rejects `0xFFFFFFFF` (16 took it).
    pub const BEGIN_EPOCH_PG15: &str = "CREATE OR REPLACE FUNCTION event_store_begin_epoch()
        RETURNS void AS $$
        DECLARE
            id BIGINT;
            db_id INT;
        BEGIN
            SELECT last_value INTO id FROM seq_event_event_id;
            SELECT oid INTO db_id FROM pg_database WHERE datname = current_database();
            PERFORM pg_try_advisory_xact_lock_shared(db_id, 0);
            PERFORM pg_try_advisory_xact_lock_shared(1, (id & 4294967295)::bit(32)::integer);
            PERFORM pg_try_advisory_xact_lock_shared(2, (id >> 32)::bit(32)::integer);
        END;
        $$ LANGUAGE plpgsql";
}

/// disintegrate over disintegrate-postgres: appends carry the stream's query and the last
/// event id seen (its optimistic concurrency check); loads stream and fold the query's events.
#[derive(Clone)]
struct Disintegrate {
    store: dis::Store,
    pool: sqlx::PgPool,
}

impl Disintegrate {
    /// Creates disintegrate's tables in the pool's schema. Its own set-up runs with function
    /// bodies unchecked (the pool's connections set `check_function_bodies = off`), then the
    /// one function PostgreSQL 15 cannot parse is replaced.
    async fn new(pool: sqlx::PgPool) -> BoxResult<Self> {
        let store = dis::Store::try_new(
            pool.clone(),
            disintegrate::serde::json::Json::<dis::AccountEvent>::default(),
        )
        .await?;
        sqlx::raw_sql(dis::BEGIN_EPOCH_PG15).execute(&pool).await?;
        Ok(Disintegrate { store, pool })
    }
}

impl Peer for Disintegrate {
    /// The account id and the id of the last event appended to it.
    type Cursor = (String, i64);

    fn label(&self) -> String {
        "disintegrate 4 + disintegrate-postgres".to_owned()
    }

    fn cursor(&self, stream: u64) -> (String, i64) {
        (format!("di-{stream}"), 0)
    }

    async fn append(&self, (id, last): &mut (String, i64), n: usize) -> BoxResult<bool> {
        use disintegrate::EventStore;
        let events = (0..n).map(|_| dis::deposited(id)).collect();
        let query = disintegrate::query!(dis::AccountEvent; account_id == id.clone());
        // Appends run SERIALIZABLE: concurrent appends to other streams can be refused too,
        // and are retried as a user of disintegrate must.
        match self.store.append(events, query, *last).await {
            Ok(stored) => {
                *last = stored
                    .last()
                    .map_or(*last, disintegrate::PersistedEvent::id);
                Ok(true)
            }
            Err(disintegrate_postgres::Error::Concurrency) => Ok(false),
            // A serialization failure surfaces raw when the commit itself is refused.
            Err(disintegrate_postgres::Error::Database(sqlx::Error::Database(e)))
                if e.code().as_deref() == Some("40001") =>
            {
                Ok(false)
            }
            Err(e) => Err(format!("{e:?}").into()),
        }
    }

    async fn load(&self, stream: u64) -> BoxResult<i64> {
        use disintegrate::{EventStore, StateMutate, StreamItem};
        let (id, _) = self.cursor(stream);
        let query = disintegrate::query!(dis::AccountEvent; account_id == id.clone());
        let mut state = dis::Account {
            account_id: id.clone(),
            balance: 0,
        };
        let mut events = self.store.stream(&query);
        while let Some(item) = events.next().await {
            if let StreamItem::Event(event) = item.map_err(|e| format!("{e:?}"))? {
                state.mutate(event.into_inner());
            }
        }
        Ok(state.balance)
    }

    async fn bulk_fill(&self, stream: u64, events: u64) -> BoxResult<()> {
        let (id, _) = self.cursor(stream);
        let payload = serde_json::to_vec(&dis::deposited(&id))?;
        sqlx::query(
            "INSERT INTO event (event_type, payload, account_id) SELECT 'Deposited', $2, $1 \
             FROM generate_series(1, $3)",
        )
        .bind(&id)
        .bind(&payload)
        .bind(i64::try_from(events)?)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn read_stream(&self, stream: u64) -> BoxResult<u64> {
        let (id, _) = self.cursor(stream);
        self.count(disintegrate::query!(dis::AccountEvent; account_id == id.clone()))
            .await
    }

    async fn read_all(&self) -> BoxResult<u64> {
        self.count(disintegrate::query!(dis::AccountEvent)).await
    }
}

impl Disintegrate {
    async fn count(
        &self,
        query: disintegrate::StreamQuery<i64, dis::AccountEvent>,
    ) -> BoxResult<u64> {
        use disintegrate::{EventStore, StreamItem};
        let mut n = 0u64;
        let mut events = self.store.stream(&query);
        while let Some(item) = events.next().await {
            if let StreamItem::Event(event) = item.map_err(|e| format!("{e:?}"))? {
                std::hint::black_box(event);
                n += 1;
            }
        }
        Ok(n)
    }
}

async fn disintegrate_commands(peer: &Disintegrate, ops: u64) -> BoxResult<()> {
    let decisions =
        disintegrate_postgres::decision_maker(peer.store.clone(), disintegrate::NoSnapshot);
    let deposit = |account_id: String| dis::Deposit { account_id };
    for length in LENGTHS {
        for s in 0..STREAMS {
            for _ in 0..length {
                decisions
                    .make(deposit(format!("di{length}-{s}")))
                    .await
                    .map_err(|e| format!("{e:?}"))?;
            }
        }
        let decisions = &decisions;
        let m = timed_ops(ops, 1, |k| async move {
            decisions
                .make(deposit(format!("di{length}-{}", k % STREAMS)))
                .await
                .map_err(|e| format!("{e:?}"))?;
            Ok(())
        })
        .await?;
        s4_row("S4 postgres command cycle", &peer.label(), length, &m)?;
    }
    Ok(())
}

/// S5 through disintegrate's decision maker: a conflict is its concurrency error, or a
/// serialization failure of its SERIALIZABLE append.
async fn disintegrate_contention(peer: &Disintegrate, duration: Duration) -> BoxResult<()> {
    let decisions = std::sync::Arc::new(disintegrate_postgres::decision_maker(
        peer.store.clone(),
        disintegrate::NoSnapshot,
    ));
    contention(&peer.label(), "postgres", duration, move |account| {
        let decisions = decisions.clone();
        async move {
            let decision = dis::Deposit {
                account_id: format!("s5-{account}"),
            };
            match decisions.make(decision).await {
                Ok(_) => Ok(true),
                Err(
                    disintegrate::DecisionError::EventStore(e)
                    | disintegrate::DecisionError::StateStore(e),
                ) => match e.downcast_ref::<disintegrate_postgres::Error>() {
                    Some(disintegrate_postgres::Error::Concurrency) => Ok(false),
                    Some(disintegrate_postgres::Error::Database(sqlx::Error::Database(d)))
                        if d.code().as_deref() == Some("40001") =>
                    {
                        Ok(false)
                    }
                    _ => Err(format!("{e:?}").into()),
                },
                Err(e) => Err(format!("{e:?}").into()),
            }
        }
    })
    .await
}

// --- esrs (postgres) --------------------------------------------------------------------------

mod es {
    use super::*;

    pub struct Account;

    #[derive(Debug, Default, Clone)]
    pub struct AccountState {
        pub balance: i64,
    }

    pub enum AccountCommand {
        Deposit,
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub enum AccountEvent {
        Deposited(Deposited),
    }

    impl esrs::Aggregate for Account {
        const NAME: &'static str = "account";
        type State = AccountState;
        type Command = AccountCommand;
        type Event = AccountEvent;
        type Error = Infallible;

        fn handle_command(
            _: &AccountState,
            command: AccountCommand,
        ) -> Result<Vec<AccountEvent>, Infallible> {
            match command {
                AccountCommand::Deposit => Ok(vec![AccountEvent::Deposited(deposit())]),
            }
        }

        fn apply_event(mut state: AccountState, event: AccountEvent) -> AccountState {
            match event {
                AccountEvent::Deposited(d) => state.balance += d.amount,
            }
            state
        }
    }

    pub type Store = esrs::store::postgres::PgStore<Account>;
    pub type Manager = esrs::manager::AggregateManager<Store>;
}

/// esrs over its PostgreSQL store: appends are the store's `persist`, loads the manager's.
#[derive(Clone)]
struct Esrs {
    store: es::Store,
    pool: sqlx::PgPool,
}

/// esrs takes an advisory-lock key from an id's high half: ids differ there.
fn esrs_id(stream: u64) -> uuid::Uuid {
    uuid::Uuid::from_u64_pair(stream, 0)
}

impl Peer for Esrs {
    type Cursor = esrs::AggregateState<es::AccountState>;

    fn label(&self) -> String {
        "esrs 0.18 (postgres)".to_owned()
    }

    fn cursor(&self, stream: u64) -> Self::Cursor {
        esrs::AggregateState::with_id(esrs_id(stream))
    }

    async fn append(&self, state: &mut Self::Cursor, n: usize) -> BoxResult<bool> {
        use esrs::store::EventStore;
        let events = (0..n)
            .map(|_| es::AccountEvent::Deposited(deposit()))
            .collect();
        self.store.persist(state, events).await?;
        Ok(true)
    }

    async fn load(&self, stream: u64) -> BoxResult<i64> {
        let manager = es::Manager::new(self.store.clone());
        let state = manager
            .load(esrs_id(stream))
            .await?
            .ok_or("esrs found no aggregate")?;
        Ok(state.into_inner().balance)
    }

    async fn bulk_fill(&self, stream: u64, events: u64) -> BoxResult<()> {
        let payload = serde_json::to_string(&es::AccountEvent::Deposited(deposit()))?;
        sqlx::query(
            "INSERT INTO account_events (id, aggregate_id, payload, occurred_on, \
             sequence_number) SELECT gen_random_uuid(), $1, $2::jsonb, now(), s \
             FROM generate_series(1, $3) s",
        )
        .bind(esrs_id(stream))
        .bind(&payload)
        .bind(i32::try_from(events)?)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn read_stream(&self, stream: u64) -> BoxResult<u64> {
        use esrs::store::EventStore;
        let events = self.store.by_aggregate_id(esrs_id(stream)).await?;
        Ok(std::hint::black_box(events).len() as u64)
    }

    async fn read_all(&self) -> BoxResult<u64> {
        let mut n = 0u64;
        let mut events = self.store.stream_events(&self.pool);
        while let Some(event) = events.next().await {
            std::hint::black_box(event?);
            n += 1;
        }
        Ok(n)
    }
}

/// One esrs command: load the aggregate, then handle the deposit (which persists it).
async fn esrs_deposit(manager: &es::Manager, id: uuid::Uuid) -> BoxResult<()> {
    let state = manager
        .load(id)
        .await?
        .unwrap_or_else(|| esrs::AggregateState::with_id(id));
    manager
        .handle_command(state, es::AccountCommand::Deposit)
        .await?
        .map_err(|e| match e {})?;
    Ok(())
}

async fn esrs_commands(peer: &Esrs, ops: u64) -> BoxResult<()> {
    let manager = es::Manager::new(peer.store.clone());
    for length in LENGTHS {
        let id = |s: u64| esrs_id(1_000_000 + length * 1000 + s);
        for s in 0..STREAMS {
            for _ in 0..length {
                esrs_deposit(&manager, id(s)).await?;
            }
        }
        let manager = &manager;
        let m = timed_ops(ops, 1, |k| async move {
            esrs_deposit(manager, id(k % STREAMS)).await
        })
        .await?;
        s4_row("S4 postgres command cycle", &peer.label(), length, &m)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// S5: contention through each peer's command API

/// S5's two spreads of accounts, as Sirenia's.
#[derive(Clone, Copy, Debug)]
enum Spread {
    Hot,
    Skewed,
}

/// Most retries of a command refused by a conflict before it gives up (as Sirenia's S5).
const S5_RETRIES: u32 = 10;
/// Accounts S5 spreads its commands over.
const S5_ACCOUNTS: u64 = 100;

/// 8 tasks running `deposit(account)` (`Ok(false)`: refused by a conflict) for `duration`,
/// over accounts prefilled with one deposit each; emits the row.
async fn contention<F, Fut>(
    label: &str,
    store: &str,
    duration: Duration,
    deposit: F,
) -> BoxResult<()>
where
    F: Fn(u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = BoxResult<bool>> + Send,
{
    for account in 0..S5_ACCOUNTS {
        while !deposit(account).await? {}
    }
    for spread in [Spread::Hot, Spread::Skewed] {
        let start = Instant::now();
        let deadline = start + duration;
        let mut tasks = Vec::new();
        for w in 0..8u64 {
            let deposit = deposit.clone();
            tasks.push(tokio::spawn(async move {
                let mut latency = histogram();
                let (mut done, mut retries, mut gave_up) = (0u64, 0u64, 0u64);
                // The same generator and seeds as Sirenia's S5.
                let mut seed = 0x2545_f491_4f6c_dd1d_u64 ^ (w + 1);
                while Instant::now() < deadline {
                    seed = seed
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    let pick = seed >> 33;
                    let account = match spread {
                        Spread::Hot => 0,
                        Spread::Skewed if pick % 10 < 8 => pick % 2,
                        Spread::Skewed => 2 + pick % 98,
                    };
                    let t0 = Instant::now();
                    let mut attempts = 1;
                    while !deposit(account).await? && attempts <= S5_RETRIES {
                        attempts += 1;
                    }
                    retries += u64::from(attempts - 1);
                    if attempts > S5_RETRIES {
                        gave_up += 1;
                    } else {
                        done += 1;
                        record(&mut latency, t0)?;
                    }
                }
                BoxResult::Ok((done, retries, gave_up, latency))
            }));
        }
        let mut latency = histogram();
        let (mut done, mut retries, mut gave_up) = (0, 0, 0);
        for task in tasks {
            let (d, r, g, h) = task.await??;
            done += d;
            retries += r;
            gave_up += g;
            latency.add(&h)?;
        }
        emit(
            &format!("S5 {store} concurrent commands"),
            format!(
                "{label}, 8 writers, {spread:?} stream(s): {retries} retries, {gave_up} gave up"
            ),
            &["8 writers", &format!("{spread:?} stream(s)*")],
            done,
            start.elapsed(),
            &latency,
        )?;
    }
    Ok(())
}

/// S5 through a cqrs-es framework: a conflict is its `AggregateConflict`.
async fn cqrs_contention<ES>(
    framework: std::sync::Arc<cqrs_es::CqrsFramework<cqrs::Account, ES>>,
    label: &str,
    store: &str,
    duration: Duration,
) -> BoxResult<()>
where
    ES: cqrs_es::EventStore<cqrs::Account> + Send + Sync + 'static,
    ES::AC: Send,
{
    contention(label, store, duration, move |account| {
        let framework = framework.clone();
        async move {
            match framework
                .execute(&format!("s5-{account}"), cqrs::Deposit(1))
                .await
            {
                Ok(()) => Ok(true),
                Err(cqrs_es::AggregateError::AggregateConflict) => Ok(false),
                Err(e) => Err(e.into()),
            }
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// S8: catch-up through each peer's replay API

/// A read model that only counts what it is given.
#[derive(Clone, Default)]
struct Counting(std::sync::Arc<AtomicU64>);

#[async_trait::async_trait]
impl cqrs_es::Query<cqrs::Account> for Counting {
    async fn dispatch(&self, _: &str, events: &[cqrs_es::EventEnvelope<cqrs::Account>]) {
        std::hint::black_box(events);
        self.0.fetch_add(events.len() as u64, Ordering::Relaxed);
    }
}

#[async_trait::async_trait]
impl esrs::handler::EventHandler<es::Account> for Counting {
    async fn handle(&self, event: &esrs::store::StoreEvent<es::AccountEvent>) {
        std::hint::black_box(event);
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

impl esrs::handler::ReplayableEventHandler<es::Account> for Counting {}

/// Emits S8's row for a replay that counted `events` in `elapsed`.
fn catch_up_row(store: &str, label: &str, events: u64, elapsed: Duration) -> BoxResult<()> {
    emit(
        &format!("S8 {store} projection catch-up"),
        format!("{label}, no-op read model replayed"),
        &["sirenia", "no-op projection"],
        events,
        elapsed,
        &histogram(),
    )
}

/// S5 through esrs: each command locks its aggregate (`lock_and_load`), so none conflicts.
async fn esrs_contention(peer: &Esrs, duration: Duration) -> BoxResult<()> {
    let manager = std::sync::Arc::new(es::Manager::new(peer.store.clone()));
    contention(&peer.label(), "postgres", duration, move |account| {
        let manager = manager.clone();
        async move {
            let id = esrs_id(2_000_000 + account);
            let state = manager.lock_and_load(id).await?.unwrap_or_default();
            manager
                .handle_command(state, es::AccountCommand::Deposit)
                .await?
                .map_err(|e| match e {})?;
            Ok(true)
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Scenarios on any peer

/// S1, S2, S6 and S7 for `peer` on `store` ("postgres" or "sqlite").
async fn scenarios<P: Peer>(peer: &P, store: &str, opts: &Opts) -> BoxResult<()> {
    let label = peer.label();
    let scenario = format!("S1 {store} single-event appends");
    if opts.keep(&scenario) {
        for writers in [1usize, 8] {
            let (m, retries) = timed_appends(peer, writers, S1_STREAMS, 1, opts.duration).await?;
            let part = format!("{writers} writer(s)");
            emit(
                &scenario,
                format!("{label}, {part}{}", retried(retries)),
                &["sirenia", &part],
                m.events,
                m.elapsed,
                &m.latency,
            )?;
        }
    }
    let scenario = match store {
        "postgres" => "S2 postgres batches, one connection".to_owned(),
        _ => format!("S2 {store} batch appends"),
    };
    if opts.keep(&scenario) {
        for batch in [1usize, 10, 100, 1000] {
            let (m, retries) = timed_appends(peer, 1, 1, batch, opts.duration).await?;
            let part = format!("{batch} events/append");
            // The embedded store's rows also name their writers: the one-writer row.
            let matches: &[&str] = match store {
                "postgres" => &["sirenia", &part],
                _ => &["sirenia", &part, "1 writer(s)"],
            };
            emit(
                &scenario,
                format!("{label}, {part}{}", retried(retries)),
                matches,
                m.events,
                m.elapsed,
                &m.latency,
            )?;
        }
    }
    let scenario = format!("S6 {store} load a 10k-event aggregate");
    if opts.keep(&scenario) {
        let stream = next_stream();
        let mut cursor = peer.cursor(stream);
        for _ in 0..S6_EVENTS / S6_SNAPSHOT_EVERY {
            while !peer.append(&mut cursor, S6_SNAPSHOT_EVERY).await? {}
        }
        let label = &label;
        let m = timed_ops(S6_LOADS, S6_EVENTS as u64, |_| async move {
            let balance = peer.load(stream).await?;
            if balance != S6_EVENTS as i64 {
                return Err(format!("{label} loaded a balance of {balance}").into());
            }
            Ok(())
        })
        .await?;
        emit(
            &scenario,
            label.clone(),
            &[&s6_variant(peer)],
            m.events,
            m.elapsed,
            &m.latency,
        )?;
    }
    Ok(())
}

/// Which of Sirenia's S6 rows a peer's loads compare with.
fn s6_variant<P: Peer>(peer: &P) -> String {
    if peer.label().contains("snapshot") {
        "snapshot (every 100 events) + tail".to_owned()
    } else {
        "replay of every event (no snapshot)".to_owned()
    }
}

/// S7: one stream of `opts.read_events` events, then the whole log, through the peer's reads.
async fn reads<P: Peer>(peer: &P, store: &str, opts: &Opts) -> BoxResult<()> {
    let scenario = format!("S7 {store} read one stream");
    if !opts.keep(&format!("S7 {store}")) {
        return Ok(());
    }
    let stream = next_stream();
    peer.bulk_fill(stream, opts.read_events).await?;
    let label = peer.label();
    let start = Instant::now();
    let n = peer.read_stream(stream).await?;
    let elapsed = start.elapsed();
    if n != opts.read_events {
        return Err(format!("{label} read {n} of {} events", opts.read_events).into());
    }
    emit(
        &scenario,
        label.clone(),
        &["sirenia"],
        n,
        elapsed,
        &histogram(),
    )?;
    let start = Instant::now();
    let n = peer.read_all().await?;
    emit(
        &format!("S7 {store} read whole log"),
        label,
        &["sirenia"],
        n,
        start.elapsed(),
        &histogram(),
    )?;
    Ok(())
}

/// A cqrs-es peer with snapshots has its own label.
#[derive(Clone)]
struct Snapshotting(Cqrs);

impl Peer for Snapshotting {
    type Cursor = (String, usize);
    fn label(&self) -> String {
        format!("{}, snapshot store (every 100 events)", self.0.label())
    }
    fn cursor(&self, stream: u64) -> Self::Cursor {
        self.0.cursor(stream)
    }
    fn append(
        &self,
        cursor: &mut Self::Cursor,
        n: usize,
    ) -> impl Future<Output = BoxResult<bool>> + Send {
        self.0.append(cursor, n)
    }
    fn load(&self, stream: u64) -> impl Future<Output = BoxResult<i64>> + Send {
        self.0.load(stream)
    }
    fn bulk_fill(&self, stream: u64, events: u64) -> impl Future<Output = BoxResult<()>> + Send {
        self.0.bulk_fill(stream, events)
    }
    fn read_stream(&self, stream: u64) -> impl Future<Output = BoxResult<u64>> + Send {
        self.0.read_stream(stream)
    }
    fn read_all(&self) -> impl Future<Output = BoxResult<u64>> + Send {
        self.0.read_all()
    }
}

/// cqrs-es: S1, S2, S6 (replay and snapshots), S7 and S4.
async fn cqrs_all(db: CqrsDb, store: &str, opts: &Opts) -> BoxResult<()> {
    let plain = Cqrs {
        db: db.clone(),
        snapshot_every: None,
    };
    scenarios(&plain, store, opts).await?;
    let snapshotting = Snapshotting(Cqrs {
        db: db.clone(),
        snapshot_every: Some(S6_SNAPSHOT_EVERY),
    });
    let scenario = format!("S6 {store} load a 10k-event aggregate");
    if opts.keep(&scenario) {
        let only = Opts {
            only: Some(scenario),
            ..opts.clone()
        };
        scenarios(&snapshotting, store, &only).await?;
    }
    reads(&plain, store, opts).await?;
    let label = plain.label();
    if opts.keep(&format!("S8 {store}")) {
        let counting = Counting::default();
        let start = Instant::now();
        match &db {
            CqrsDb::Postgres(pool) => {
                let repo = postgres_es::PostgresEventRepository::new(pool.clone());
                cqrs_es::persist::QueryReplay::new(repo, counting.clone())
                    .replay_all()
                    .await?;
            }
            CqrsDb::Sqlite(pool) => {
                let repo = sqlite_es::SqliteEventRepository::new(pool.clone());
                cqrs_es::persist::QueryReplay::new(repo, counting.clone())
                    .replay_all()
                    .await?;
            }
        }
        let events = counting.0.load(Ordering::Relaxed);
        catch_up_row(store, &label, events, start.elapsed())?;
    }
    if opts.keep(&format!("S5 {store}")) {
        match &db {
            CqrsDb::Postgres(pool) => {
                let framework =
                    postgres_es::postgres_cqrs::<cqrs::Account>(pool.clone(), vec![], ());
                cqrs_contention(std::sync::Arc::new(framework), &label, store, opts.duration)
                    .await?;
            }
            CqrsDb::Sqlite(pool) => {
                let framework = sqlite_es::sqlite_cqrs::<cqrs::Account>(pool.clone(), vec![], ());
                cqrs_contention(std::sync::Arc::new(framework), &label, store, opts.duration)
                    .await?;
            }
        }
    }
    let scenario = format!("S4 {store} command cycle");
    if opts.keep(&scenario) {
        match db {
            CqrsDb::Postgres(pool) => {
                let framework = postgres_es::postgres_cqrs::<cqrs::Account>(pool, vec![], ());
                cqrs_commands(&framework, &scenario, &label, opts.ops).await?;
            }
            CqrsDb::Sqlite(pool) => {
                let framework = sqlite_es::sqlite_cqrs::<cqrs::Account>(pool, vec![], ());
                cqrs_commands(&framework, &scenario, &label, opts.ops).await?;
            }
        }
    }
    Ok(())
}

async fn cqrs_sqlite(opts: &Opts) -> BoxResult<()> {
    let dir = std::env::temp_dir().join(format!("sirenia-peers-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("sqlite-es.db");
    // Durability as Sirenia's embedded store: WAL, synchronous=FULL.
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&file)
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Full);
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await?;
    let result = async {
        sqlx::raw_sql(cqrs::SQLITE_DDL).execute(&pool).await?;
        cqrs_all(CqrsDb::Sqlite(pool.clone()), "sqlite", opts).await
    }
    .await;
    pool.close().await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Reports that `peer` could not be measured, and why, as a line of its own.
fn not_measured(peer: &str, error: &(dyn Error + Send + Sync)) -> BoxResult<()> {
    let line = serde_json::json!({ "not_measured": peer, "error": error.to_string() });
    println!("{line}");
    Ok(())
}

/// The benchmark database's connection options, without TLS unless the URL asks for it (as
/// Sirenia's store connects): sqlx would otherwise prefer TLS where the server offers it.
fn connect_options() -> BoxResult<sqlx::postgres::PgConnectOptions> {
    let url = url();
    let options: sqlx::postgres::PgConnectOptions = url.parse()?;
    Ok(if url.contains("sslmode=") {
        options
    } else {
        options.ssl_mode(sqlx::postgres::PgSslMode::Disable)
    })
}

/// A pool whose connections use `schema` (created here) as their search path.
/// `settings` are further run-time parameters of each connection.
async fn schema_pool(
    admin: &sqlx::PgPool,
    schema: &str,
    settings: &[(&str, &str)],
) -> BoxResult<sqlx::PgPool> {
    sqlx::raw_sql(&format!("CREATE SCHEMA {schema}"))
        .execute(admin)
        .await?;
    let options = connect_options()?
        .options([("search_path", schema)])
        .options(settings.iter().copied());
    // As many connections as Sirenia's pool: esrs holds one per locked aggregate while it loads
    // and appends on others.
    Ok(sqlx::postgres::PgPoolOptions::new()
        .max_connections(32)
        .connect_with(options)
        .await?)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mut quick = false;
    let mut only = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--only" => only = args.next(),
            other => {
                eprintln!("unknown argument {other:?}");
                std::process::exit(2);
            }
        }
    }
    let opts = Opts {
        only,
        duration: Duration::from_millis(if quick { 300 } else { 3000 }),
        ops: if quick { 20 } else { 200 },
        read_events: if quick { 50_000 } else { 1_000_000 },
    };
    let outcome = async {
        let admin = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect_with(connect_options()?)
            .await?;
        let tag = uuid::Uuid::now_v7().simple().to_string();
        let schemas = [
            format!("peers_cqrs_{tag}"),
            format!("peers_dis_{tag}"),
            format!("peers_esrs_{tag}"),
        ];
        let result = async {
            let pool = schema_pool(&admin, &schemas[0], &[]).await?;
            sqlx::raw_sql(cqrs::PG_DDL).execute(&pool).await?;
            cqrs_all(CqrsDb::Postgres(pool), "postgres", &opts).await?;

            let pool =
                schema_pool(&admin, &schemas[1], &[("check_function_bodies", "off")]).await?;
            match Disintegrate::new(pool).await {
                Ok(peer) => {
                    scenarios(&peer, "postgres", &opts).await?;
                    reads(&peer, "postgres", &opts).await?;
                    if opts.keep("S4 postgres command cycle") {
                        disintegrate_commands(&peer, opts.ops).await?;
                    }
                    if opts.keep("S5 postgres") {
                        disintegrate_contention(&peer, opts.duration).await?;
                    }
                }
                Err(e) => not_measured("disintegrate 4 + disintegrate-postgres", &*e)?,
            }

            let pool = schema_pool(&admin, &schemas[2], &[]).await?;
            let store: es::Store = esrs::store::postgres::PgStoreBuilder::new(pool.clone())
                .try_build()
                .await?;
            let peer = Esrs { store, pool };
            scenarios(&peer, "postgres", &opts).await?;
            reads(&peer, "postgres", &opts).await?;
            if opts.keep("S4 postgres command cycle") {
                esrs_commands(&peer, opts.ops).await?;
            }
            if opts.keep("S8 postgres") {
                use esrs::rebuilder::Rebuilder;
                let counting = Counting::default();
                let start = Instant::now();
                esrs::rebuilder::PgRebuilder::<es::Account>::new()
                    .with_event_handlers(vec![Box::new(counting.clone())])
                    .all_at_once(peer.pool.clone())
                    .await?;
                let events = counting.0.load(Ordering::Relaxed);
                catch_up_row("postgres", &peer.label(), events, start.elapsed())?;
            }
            if opts.keep("S5 postgres") {
                esrs_contention(&peer, opts.duration).await?;
            }

            cqrs_sqlite(&opts).await
        }
        .await;
        for schema in &schemas {
            let _ = sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                .execute(&admin)
                .await;
        }
        result
    }
    .await;
    if let Err(e) = outcome {
        eprintln!("peer benchmark failed: {e}");
        std::process::exit(1);
    }
}
