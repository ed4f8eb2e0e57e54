//! The peer crates, measured by `bench-peers` (a workspace of its own: the peers' sqlx pulls a
//! libsqlite3-sys that cannot share a lockfile with the embedded store's) and reported beside
//! Sirenia's own rows of the same scenario, with Sirenia's figure as their baseline.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Deserialize;

use crate::report::{BenchResult, Measurement, Row, histogram};

/// One line of `bench-peers`' output.
#[derive(Deserialize)]
struct Line {
    scenario: String,
    subject: String,
    events: u64,
    seconds: f64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
}

/// A histogram holding the three quantiles a peer reported (the table prints only those).
fn quantiles(line: &Line) -> BenchResult<Histogram<u64>> {
    let mut h = histogram();
    // 50 at p50, 49 at p99, 1 at p99.9: the histogram then answers the same three quantiles.
    h.record_n(line.p50_us.max(1), 500)?;
    h.record_n(line.p99_us.max(1), 490)?;
    h.record_n(line.p999_us.max(1), 10)?;
    Ok(h)
}

/// A peer `bench-peers` could not measure, and why.
#[derive(Deserialize)]
struct NotMeasured {
    not_measured: String,
    error: String,
}

/// Builds and runs `bench-peers` (with `--quick` in quick mode) and adds its rows after
/// Sirenia's row of the same scenario and stream length, that row being their baseline.
/// Returns what could not be measured, for the report.
pub(crate) fn run(quick: bool, rows: &mut Vec<Row>) -> BenchResult<Vec<String>> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench-peers/Cargo.toml");
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command
        .args(["run", "--release", "--quiet", "--manifest-path"])
        .arg(&manifest)
        .arg("--");
    if quick {
        command.arg("--quick");
    }
    let output = command.output()?;
    if !output.status.success() {
        return Err(format!(
            "bench-peers failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    let mut notes = Vec::new();
    for text in String::from_utf8(output.stdout)?.lines() {
        if let Ok(missing) = serde_json::from_str::<NotMeasured>(text) {
            notes.push(format!(
                "{} not measured: {}",
                missing.not_measured, missing.error
            ));
            continue;
        }
        let line: Line = serde_json::from_str(text)?;
        // "…, 10-event streams": the same suffix as Sirenia's row of that length.
        let suffix = line.subject.rsplit(", ").next().unwrap_or("").to_owned();
        let ours = rows.iter().rposition(|r| {
            r.scenario == line.scenario
                && r.subject.starts_with("sirenia")
                && r.subject.ends_with(&suffix)
        });
        let baseline = ours.map(|i| ("sirenia".to_owned(), rows[i].measurement.rate()));
        let row = Row {
            scenario: line.scenario.clone(),
            subject: line.subject.clone(),
            measurement: Measurement {
                events: line.events,
                elapsed: Duration::from_secs_f64(line.seconds.max(f64::EPSILON)),
                latency: Some(quantiles(&line)?),
                peak_rss: None,
            },
            baseline,
            goal: None,
        };
        match ours {
            Some(i) => rows.insert(i + 1, row),
            None => rows.push(row),
        }
    }
    Ok(notes)
}
