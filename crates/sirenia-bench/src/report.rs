//! Measurements and the markdown table.

use std::error::Error;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// What a scenario returns.
pub(crate) type BenchResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// What one timed task hands back (`()`, or a writer for the next round) and measured: events
/// written and per-operation latency.
pub(crate) type TaskResult<T = ()> = BenchResult<(T, u64, Histogram<u64>)>;

/// Records the time since `since` in `latency`, in microseconds.
pub(crate) fn record(latency: &mut Histogram<u64>, since: Instant) -> BenchResult<()> {
    latency.record(u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX))?;
    Ok(())
}

/// Microseconds since the Unix epoch.
pub(crate) fn now_micros() -> u64 {
    sirenia_core::Timestamp::now().as_micros()
}

/// Records, for an event carrying `{"sent": µs since the epoch}`, the time since it was sent.
pub(crate) fn record_since_sent(
    latency: &std::sync::Mutex<Histogram<u64>>,
    event: &sirenia_core::RecordedEvent,
) -> BenchResult<()> {
    let sent = event.json()?["sent"].as_u64().ok_or("no sent field")?;
    let micros = now_micros().saturating_sub(sent).max(1);
    latency
        .lock()
        .map_err(|_| "latency histogram poisoned")?
        .record(micros)?;
    Ok(())
}

/// `writers` tasks appending one `{"sent": now}` event per append to `live-<w>` streams for
/// `duration`; returns how many events they appended.
pub(crate) async fn live_writers<S: sirenia_core::EventStore>(
    store: S,
    writers: usize,
    duration: Duration,
) -> BenchResult<u64> {
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let stream = sirenia_core::StreamId::new(format!("live-{w}"))?;
            let mut n = 0u64;
            while Instant::now() < deadline {
                let event = sirenia_core::NewEvent::json(
                    "Ping",
                    &serde_json::json!({ "sent": now_micros() }),
                );
                store
                    .append(vec![sirenia_core::StreamWrite::new(
                        stream.clone(),
                        sirenia_core::ExpectedVersion::Any,
                        vec![event],
                    )])
                    .await?;
                n += 1;
            }
            Ok::<u64, Box<dyn Error + Send + Sync>>(n)
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    Ok(total)
}

/// Waits for timed tasks started at `start` and merges what they measured; returns what they
/// handed back, in task order.
pub(crate) async fn collect<T>(
    start: Instant,
    tasks: Vec<tokio::task::JoinHandle<TaskResult<T>>>,
) -> BenchResult<(Vec<T>, Measurement)> {
    let mut latency = histogram();
    let mut events = 0;
    let mut handed = Vec::with_capacity(tasks.len());
    for task in tasks {
        let (back, n, h) = task.await??;
        handed.push(back);
        events += n;
        latency.add(&h)?;
    }
    let m = Measurement {
        events,
        elapsed: start.elapsed(),
        latency: Some(latency),
        peak_rss: peak_rss(),
    };
    Ok((handed, m))
}

/// One measured run of one subject (Sirenia, a baseline) in one scenario.
#[derive(Debug)]
pub(crate) struct Measurement {
    pub(crate) events: u64,
    pub(crate) elapsed: Duration,
    /// Per-operation latency in microseconds, if measured.
    pub(crate) latency: Option<Histogram<u64>>,
    /// Peak resident memory during the run, in bytes (Linux only).
    pub(crate) peak_rss: Option<u64>,
}

impl Measurement {
    pub(crate) fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    /// Adds `next` (a later round of the same subject) to `total`: events and time summed,
    /// latencies pooled, the highest peak memory kept.
    pub(crate) fn accumulate(total: &mut Option<Self>, next: Self) -> BenchResult<()> {
        let Some(sum) = total else {
            *total = Some(next);
            return Ok(());
        };
        sum.events += next.events;
        sum.elapsed += next.elapsed;
        sum.latency = match (sum.latency.take(), next.latency) {
            (Some(mut a), Some(b)) => {
                a.add(&b)?;
                Some(a)
            }
            (a, b) => a.or(b),
        };
        sum.peak_rss = sum.peak_rss.max(next.peak_rss);
        Ok(())
    }
}

/// A line of the table: a subject's measurement, compared with the scenario's baseline.
pub(crate) struct Row {
    pub(crate) scenario: String,
    pub(crate) subject: String,
    pub(crate) measurement: Measurement,
    /// Events/s of the baseline measured in the same run, and its name.
    pub(crate) baseline: Option<(String, f64)>,
    /// A goal from the issues, as a ratio to the baseline or an absolute rate.
    pub(crate) goal: Option<Goal>,
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Goal {
    /// At least this times the baseline.
    Ratio(f64),
    /// At least this many events/s.
    Rate(f64),
}

/// A new latency histogram (1 µs to 60 s, 3 significant digits).
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3)
        .unwrap_or_else(|e| unreachable!("constant histogram bounds are valid: {e}"))
}

/// A histogram answering the three quantiles the table prints, for figures measured elsewhere
/// (the peers, the Node client): 50% at p50, 49% at p99, 1% at p99.9.
pub(crate) fn from_quantiles(
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
) -> BenchResult<Histogram<u64>> {
    let mut h = histogram();
    h.record_n(p50_us.max(1), 500)?;
    h.record_n(p99_us.max(1), 490)?;
    h.record_n(p999_us.max(1), 10)?;
    Ok(h)
}

/// Resets the kernel's peak-RSS counter for this process (Linux: `/proc/self/clear_refs`).
pub(crate) fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak RSS since the last reset (Linux: `VmHWM` of `/proc/self/status`).
pub(crate) fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2}M", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1}k", r / 1e3)
    } else {
        format!("{r:.0}")
    }
}

fn micros(h: &Option<Histogram<u64>>, q: f64) -> String {
    match h {
        Some(h) if !h.is_empty() => {
            let us = h.value_at_quantile(q);
            if us >= 10_000 {
                format!("{:.1} ms", us as f64 / 1000.0)
            } else {
                format!("{us} µs")
            }
        }
        _ => "–".to_owned(),
    }
}

pub(crate) fn print(rows: &[Row], quick: bool) {
    if quick {
        println!("_Quick mode: small counts, figures are not meaningful._\n");
    }
    println!(
        "| scenario | subject | events/s | p50 | p99 | p99.9 | peak RSS | baseline | ratio | goal |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---|---:|---|");
    for row in rows {
        let m = &row.measurement;
        let (baseline, ratio) = match &row.baseline {
            Some((name, base)) => (
                format!("{name} ({}/s)", rate(*base)),
                format!("{:.2}×", m.rate() / base),
            ),
            None => ("–".to_owned(), "–".to_owned()),
        };
        let goal = match (row.goal, &row.baseline) {
            (Some(Goal::Ratio(g)), Some((_, base))) => {
                let met = m.rate() / base >= g;
                format!("≥ {g}× {}", if met { "met" } else { "MISSED" })
            }
            (Some(Goal::Rate(g)), _) => {
                let met = m.rate() >= g;
                format!("≥ {}/s {}", rate(g), if met { "met" } else { "MISSED" })
            }
            _ => String::new(),
        };
        let rss = m
            .peak_rss
            .map_or("–".to_owned(), |b| format!("{} MiB", b / (1024 * 1024)));
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.scenario,
            row.subject,
            rate(m.rate()),
            micros(&m.latency, 0.5),
            micros(&m.latency, 0.99),
            micros(&m.latency, 0.999),
            rss,
            baseline,
            ratio,
            goal
        );
    }
}
