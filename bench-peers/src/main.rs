//! The peer crates' side of Sirenia's S4 (the command cycle: load, decide, append at the exact
//! version), run by `sirenia-bench` in the same run as Sirenia's own figures. Each peer runs
//! deposits round-robin over accounts whose streams hold 1/10/100 events, through its own
//! command API, against the same PostgreSQL (and, for sqlite-es, a SQLite file). One JSON line
//! per measurement on standard output.

use std::convert::Infallible;
use std::error::Error;
use std::time::Instant;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

type BoxResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// Stream lengths measured.
const LENGTHS: [u64; 3] = [1, 10, 100];
/// Accounts per length: commands go round-robin over them.
const STREAMS: u64 = 20;

fn url() -> String {
    std::env::var("SIRENIA_BENCH_POSTGRES_URL")
        .unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:5432/test".to_owned())
}

/// One measurement, as `sirenia-bench` reads it.
#[derive(Serialize)]
struct Line {
    scenario: String,
    subject: String,
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

/// Runs `ops` timed commands and prints the line.
async fn measure<F, Fut>(scenario: &str, subject: String, ops: u64, mut command: F) -> BoxResult<()>
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = BoxResult<()>>,
{
    let mut latency = histogram();
    let start = Instant::now();
    for k in 0..ops {
        let t0 = Instant::now();
        command(k).await?;
        latency.record(u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX))?;
    }
    let line = Line {
        scenario: scenario.to_owned(),
        subject,
        events: ops,
        seconds: start.elapsed().as_secs_f64(),
        p50_us: latency.value_at_quantile(0.5),
        p99_us: latency.value_at_quantile(0.99),
        p999_us: latency.value_at_quantile(0.999),
    };
    println!("{}", serde_json::to_string(&line)?);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// cqrs-es (postgres-es, sqlite-es)

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
        Deposited { amount: i64 },
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
    pub struct Deposit(pub i64);

    impl Aggregate for Account {
        const TYPE: &'static str = "account";
        type Command = Deposit;
        type Event = AccountEvent;
        type Error = Infallible;
        type Services = ();

        async fn handle(
            &mut self,
            Deposit(amount): Deposit,
            _: &(),
            sink: &EventSink<Self>,
        ) -> Result<(), Infallible> {
            sink.write(AccountEvent::Deposited { amount }, self).await;
            Ok(())
        }

        fn apply(&mut self, AccountEvent::Deposited { amount }: AccountEvent) {
            self.balance += amount;
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

/// S4 through a cqrs-es framework over any of its event stores.
async fn cqrs_runs<ES: cqrs_es::EventStore<cqrs::Account>>(
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
        measure(
            scenario,
            format!("{label}, {length}-event streams"),
            ops,
            |k| async move {
                framework
                    .execute(&format!("cq{length}-{}", k % STREAMS), cqrs::Deposit(1))
                    .await?;
                Ok(())
            },
        )
        .await?;
    }
    Ok(())
}

async fn cqrs_postgres(pool: sqlx::PgPool, ops: u64) -> BoxResult<()> {
    sqlx::raw_sql(cqrs::PG_DDL).execute(&pool).await?;
    let framework = postgres_es::postgres_cqrs::<cqrs::Account>(pool, vec![], ());
    cqrs_runs(
        &framework,
        "S4 postgres command cycle",
        "cqrs-es 0.5 + postgres-es",
        ops,
    )
    .await
}

async fn cqrs_sqlite(ops: u64) -> BoxResult<()> {
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
        .max_connections(4)
        .connect_with(options)
        .await?;
    let result = async {
        sqlx::raw_sql(cqrs::SQLITE_DDL).execute(&pool).await?;
        let framework = sqlite_es::sqlite_cqrs::<cqrs::Account>(pool.clone(), vec![], ());
        cqrs_runs(
            &framework,
            "S4 sqlite command cycle",
            "cqrs-es 0.5 + sqlite-es",
            ops,
        )
        .await
    }
    .await;
    pool.close().await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

// ---------------------------------------------------------------------------------------------
// disintegrate (disintegrate-postgres)

mod dis {
    use super::*;
    use disintegrate::{Decision, Event, StateMutate, StateQuery};

    #[derive(Debug, Clone, PartialEq, Eq, Event, Serialize, Deserialize)]
    pub enum AccountEvent {
        Deposited {
            #[id]
            account_id: String,
            amount: i64,
        },
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
        pub amount: i64,
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
            Ok(vec![AccountEvent::Deposited {
                account_id: self.account_id.clone(),
                amount: self.amount,
            }])
        }
    }
}

async fn disintegrate_postgres(pool: sqlx::PgPool, ops: u64) -> BoxResult<()> {
    let store = disintegrate_postgres::PgEventStore::try_new(
        pool,
        disintegrate::serde::json::Json::<dis::AccountEvent>::default(),
    )
    .await?;
    let decisions = disintegrate_postgres::decision_maker(store, disintegrate::NoSnapshot);
    let deposit = |account_id: String| dis::Deposit {
        account_id,
        amount: 1,
    };
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
        measure(
            "S4 postgres command cycle",
            format!("disintegrate 4 + disintegrate-postgres, {length}-event streams"),
            ops,
            |k| async move {
                decisions
                    .make(deposit(format!("di{length}-{}", k % STREAMS)))
                    .await
                    .map_err(|e| format!("{e:?}"))?;
                Ok(())
            },
        )
        .await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// esrs (postgres)

mod es {
    use super::*;

    pub struct Account;

    #[derive(Debug, Default, Clone)]
    pub struct AccountState {
        pub balance: i64,
    }

    pub enum AccountCommand {
        Deposit { amount: i64 },
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub enum AccountEvent {
        Deposited { amount: i64 },
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
                AccountCommand::Deposit { amount } => Ok(vec![AccountEvent::Deposited { amount }]),
            }
        }

        fn apply_event(mut state: AccountState, event: AccountEvent) -> AccountState {
            match event {
                AccountEvent::Deposited { amount } => state.balance += amount,
            }
            state
        }
    }
}

/// One esrs command: load the aggregate, then handle the deposit (which persists it).
async fn esrs_deposit(
    manager: &esrs::manager::AggregateManager<esrs::store::postgres::PgStore<es::Account>>,
    id: uuid::Uuid,
) -> BoxResult<()> {
    let state = manager
        .load(id)
        .await?
        .unwrap_or_else(|| esrs::AggregateState::with_id(id));
    manager
        .handle_command(state, es::AccountCommand::Deposit { amount: 1 })
        .await?
        .map_err(|e| match e {})?;
    Ok(())
}

async fn esrs_postgres(pool: sqlx::PgPool, ops: u64) -> BoxResult<()> {
    use esrs::manager::AggregateManager;
    use esrs::store::postgres::{PgStore, PgStoreBuilder};
    let store: PgStore<es::Account> = PgStoreBuilder::new(pool).try_build().await?;
    let manager = AggregateManager::new(store);
    // Ids with distinct high halves: esrs takes its lock key from them.
    let id = |length: u64, s: u64| uuid::Uuid::from_u64_pair(length * 1000 + s + 1, 0);
    for length in LENGTHS {
        for s in 0..STREAMS {
            for _ in 0..length {
                esrs_deposit(&manager, id(length, s)).await?;
            }
        }
        let manager = &manager;
        measure(
            "S4 postgres command cycle",
            format!("esrs 0.18 (postgres), {length}-event streams"),
            ops,
            |k| async move { esrs_deposit(manager, id(length, k % STREAMS)).await },
        )
        .await?;
    }
    Ok(())
}

/// Reports that `peer` could not be measured, and why, as a line of its own.
fn not_measured(peer: &str, error: &(dyn Error + Send + Sync)) -> BoxResult<()> {
    let line = serde_json::json!({ "not_measured": peer, "error": error.to_string() });
    println!("{line}");
    Ok(())
}

/// A pool whose connections use `schema` (created here) as their search path.
async fn schema_pool(admin: &sqlx::PgPool, schema: &str) -> BoxResult<sqlx::PgPool> {
    sqlx::raw_sql(&format!("CREATE SCHEMA {schema}"))
        .execute(admin)
        .await?;
    let options: sqlx::postgres::PgConnectOptions = url().parse()?;
    let options = options.options([("search_path", schema)]);
    Ok(sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await?)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let ops = if quick { 20 } else { 200 };
    let outcome = async {
        let admin = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(&url())
            .await?;
        let tag = uuid::Uuid::now_v7().simple().to_string();
        let schemas = [
            format!("peers_cqrs_{tag}"),
            format!("peers_dis_{tag}"),
            format!("peers_esrs_{tag}"),
        ];
        let result = async {
            cqrs_postgres(schema_pool(&admin, &schemas[0]).await?, ops).await?;
            // disintegrate-postgres 4 creates its schema with SQL that PostgreSQL 15 rejects
            // (hexadecimal integer literals came with 16): reported, not fatal.
            if let Err(e) =
                disintegrate_postgres(schema_pool(&admin, &schemas[1]).await?, ops).await
            {
                not_measured("disintegrate 4 + disintegrate-postgres", &*e)?;
            }
            esrs_postgres(schema_pool(&admin, &schemas[2]).await?, ops).await?;
            cqrs_sqlite(ops).await
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
