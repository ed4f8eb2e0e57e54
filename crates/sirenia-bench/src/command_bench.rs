//! S4 (the command cycle: load, decide, append at the exact version) and S5 (concurrent
//! commands that conflict), on any store, through the repository.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sirenia_core::{
    Aggregate, CommandError, DomainEvent, EventStore, ExpectedVersion, JsonCodec, Repository,
    StreamWrite,
};

use crate::report::{BenchResult, Measurement, Row, histogram, peak_rss, record, reset_peak_rss};

/// Stream lengths S4 runs on.
pub(crate) const S4_LENGTHS: [u64; 4] = [1, 10, 100, 1000];
/// Streams per S4 length: commands go round-robin over them, so each grows by a few events only.
pub(crate) const S4_STREAMS: u64 = 100;

#[derive(Clone, Debug, Default)]
pub(crate) struct Account {
    balance: i64,
}

#[derive(Clone, Debug)]
pub(crate) struct Deposit(pub(crate) i64);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) enum AccountEvent {
    #[serde(rename = "MoneyDeposited")]
    Deposited { amount: i64 },
}

impl DomainEvent for AccountEvent {}

impl Aggregate for Account {
    const CATEGORY: &'static str = "account";
    type Command = Deposit;
    type Event = AccountEvent;
    type Error = std::convert::Infallible;

    fn apply(&mut self, AccountEvent::Deposited { amount }: &AccountEvent) {
        self.balance += amount;
    }

    fn handle(&self, Deposit(amount): Deposit) -> Result<Vec<AccountEvent>, Self::Error> {
        Ok(vec![AccountEvent::Deposited { amount }])
    }
}

/// The aggregate id of stream `i` of a run.
fn id(prefix: &str, i: u64) -> String {
    format!("{prefix}{i}")
}

/// Gives each of `streams` accounts `events` deposits (in appends of up to 1000 events).
pub(crate) async fn prefill<S: EventStore>(
    store: &S,
    prefix: &str,
    streams: u64,
    events: u64,
) -> BenchResult<()> {
    let codec = JsonCodec::<AccountEvent>::new();
    let repository = Repository::<Account, _>::new(store.clone());
    for i in 0..streams {
        let stream = repository.stream_id(&id(prefix, i))?;
        let mut written = 0;
        while written < events {
            let n = (events - written).min(1000);
            let batch = (0..n)
                .map(|_| {
                    codec.to_new_event(
                        &AccountEvent::Deposited { amount: 1 },
                        sirenia_core::EventId::new(),
                        sirenia_core::Metadata::default(),
                    )
                })
                .collect::<Result<Vec<_>, _>>()?;
            store
                .append(vec![StreamWrite::new(
                    stream.clone(),
                    ExpectedVersion::Any,
                    batch,
                )])
                .await?;
            written += n;
        }
    }
    Ok(())
}

/// One task running `ops` deposits round-robin over the prefilled streams; events/s counts
/// commands.
pub(crate) async fn command_cycle<S: EventStore>(
    store: S,
    prefix: &str,
    streams: u64,
    ops: u64,
) -> BenchResult<Measurement> {
    let repository = Repository::<Account, _>::new(store);
    let mut latency = histogram();
    reset_peak_rss();
    let start = Instant::now();
    for k in 0..ops {
        let t0 = Instant::now();
        repository
            .execute(&id(prefix, k % streams), Deposit(1))
            .await?;
        record(&mut latency, t0)?;
    }
    Ok(Measurement {
        events: ops,
        elapsed: start.elapsed(),
        latency: Some(latency),
        peak_rss: peak_rss(),
    })
}

/// What S5 measured: the commands done, the retries conflicts caused, and the commands that
/// gave up after the repository's retries.
pub(crate) struct Contention {
    pub(crate) measurement: Measurement,
    pub(crate) retries: u64,
    pub(crate) gave_up: u64,
}

/// How S5 picks the stream of a command.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Spread {
    /// Every command on one stream.
    Hot,
    /// Eight in ten commands on 2 streams, the rest over 98 others.
    Skewed,
}

/// `writers` tasks running deposits for `duration`, spread as `spread` says.
pub(crate) async fn contention<S: EventStore>(
    store: S,
    prefix: &str,
    writers: u64,
    spread: Spread,
    duration: Duration,
) -> BenchResult<Contention> {
    let repository = Repository::<Account, _>::new(store).with_max_retries(10)?;
    reset_peak_rss();
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (repository, prefix) = (repository.clone(), prefix.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut latency = histogram();
            let (mut done, mut retries, mut gave_up) = (0u64, 0u64, 0u64);
            // A small linear congruential generator per task: deterministic, no dependency.
            let mut seed = 0x2545_f491_4f6c_dd1d_u64 ^ (w + 1);
            while Instant::now() < deadline {
                seed = seed
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let pick = seed >> 33;
                let stream = match spread {
                    Spread::Hot => 0,
                    Spread::Skewed if pick % 10 < 8 => pick % 2,
                    Spread::Skewed => 2 + pick % 98,
                };
                let t0 = Instant::now();
                match repository.execute(&id(&prefix, stream), Deposit(1)).await {
                    Ok(done_now) => {
                        retries += u64::from(done_now.attempts - 1);
                        done += 1;
                        record(&mut latency, t0)?;
                    }
                    Err(CommandError::TooManyConflicts { attempts, .. }) => {
                        retries += u64::from(attempts - 1);
                        gave_up += 1;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            BenchResult::Ok((done, retries, gave_up, latency))
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
    Ok(Contention {
        measurement: Measurement {
            events: done,
            elapsed: start.elapsed(),
            latency: Some(latency),
            peak_rss: peak_rss(),
        },
        retries,
        gave_up,
    })
}

/// S5 on `store` (named `store_name` in the table): a hot stream, then a skewed spread, each
/// on 100 fresh accounts.
pub(crate) async fn s5_rows<S: EventStore>(
    store: &S,
    store_name: &str,
    duration: Duration,
) -> BenchResult<Vec<Row>> {
    let mut rows = Vec::new();
    for (n, spread) in [Spread::Hot, Spread::Skewed].into_iter().enumerate() {
        let prefix = format!("s5n{n}-");
        prefill(store, &prefix, 100, 1).await?;
        let c = contention(store.clone(), &prefix, 8, spread, duration).await?;
        rows.push(Row {
            scenario: format!("S5 {store_name} concurrent commands"),
            subject: format!(
                "sirenia, 8 writers, {spread:?} stream(s): {} retries, {} gave up",
                c.retries, c.gave_up
            ),
            measurement: c.measurement,
            baseline: None,
            goal: None,
        });
    }
    Ok(rows)
}
