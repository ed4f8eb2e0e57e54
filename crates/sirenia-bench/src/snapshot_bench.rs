//! S6: loading a long-lived aggregate with and without snapshots, on any store.

use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sirenia_core::snapshot::{SnapshotPolicy, SnapshotStore, Snapshotted};
use sirenia_core::{Aggregate, DomainEvent, EventStore, Repository};

use crate::report::{
    BenchResult, Goal, Measurement, Row, histogram, peak_rss, record, reset_peak_rss,
};

/// Events in the aggregate's stream.
const EVENTS: u64 = 10_000;
/// Loads timed per variant.
const LOADS: u64 = 20;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Ledger {
    balance: i64,
    entries: u64,
}

#[derive(Clone, Debug)]
struct Post(i64);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum LedgerEvent {
    Posted { amount: i64, memo: String },
}

impl DomainEvent for LedgerEvent {}

impl Aggregate for Ledger {
    const CATEGORY: &'static str = "ledger";
    type Command = Post;
    type Event = LedgerEvent;
    type Error = std::convert::Infallible;

    fn apply(&mut self, LedgerEvent::Posted { amount, .. }: &LedgerEvent) {
        self.balance += amount;
        self.entries += 1;
    }

    fn handle(&self, Post(amount): Post) -> Result<Vec<LedgerEvent>, std::convert::Infallible> {
        Ok(vec![LedgerEvent::Posted {
            amount,
            memo: "benchmark entry".to_owned(),
        }])
    }
}

impl Snapshotted for Ledger {}

/// Builds a 10,000-event ledger through a repository taking a snapshot every 100 events, then
/// times loads: events/s counts the events the state includes per load.
pub(crate) async fn loads<S: EventStore>(
    store: S,
    snapshots: Arc<dyn SnapshotStore>,
) -> BenchResult<(Measurement, Measurement)> {
    let snapped = Repository::<Ledger, _>::new(store.clone())
        .with_snapshots(snapshots, SnapshotPolicy::Every(100));
    let plain = Repository::<Ledger, _>::new(store);
    for i in 0..EVENTS {
        snapped.execute("l1", Post(i64::try_from(i % 100)?)).await?;
    }
    // Let the last background snapshot land.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut out = Vec::new();
    for repository in [&plain, &snapped] {
        reset_peak_rss();
        let mut latency = histogram();
        let start = Instant::now();
        for _ in 0..LOADS {
            let t0 = Instant::now();
            let loaded = repository.load("l1").await?;
            record(&mut latency, t0)?;
            assert_eq!(loaded.state.entries, EVENTS, "a load saw another state");
        }
        out.push(Measurement {
            events: EVENTS * LOADS,
            elapsed: start.elapsed(),
            latency: Some(latency),
            peak_rss: peak_rss(),
        });
    }
    let snapped = out.pop().ok_or("no measurement")?;
    let plain = out.pop().ok_or("no measurement")?;
    Ok((plain, snapped))
}

/// S6 on `store` (named `store_name` in the table): the replay, then the snapshot load against
/// it.
pub(crate) async fn s6_rows<S: EventStore>(
    store: S,
    snapshots: Arc<dyn SnapshotStore>,
    store_name: &str,
) -> BenchResult<Vec<Row>> {
    let (plain, snapped) = loads(store, snapshots).await?;
    let plain_rate = plain.rate();
    let scenario = format!("S6 {store_name} load a 10k-event aggregate");
    Ok(vec![
        Row {
            scenario: scenario.clone(),
            subject: "replay of every event (no snapshot)".to_owned(),
            measurement: plain,
            baseline: None,
            goal: None,
        },
        Row {
            scenario,
            subject: "snapshot (every 100 events) + tail".to_owned(),
            measurement: snapped,
            baseline: Some(("replay".to_owned(), plain_rate)),
            goal: Some(Goal::Ratio(20.0)),
        },
    ])
}
