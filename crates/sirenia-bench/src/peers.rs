//! The peer crates, measured by `bench-peers` (a workspace of its own: the peers' sqlx pulls a
//! libsqlite3-sys that cannot share a lockfile with the embedded store's) and reported beside
//! Sirenia's own rows of the same scenario, with Sirenia's figure as their baseline.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;

use crate::report::{BenchResult, Measurement, Row, from_quantiles};

/// One line of `bench-peers`' output.
#[derive(Deserialize)]
struct Line {
    scenario: String,
    subject: String,
    /// The comma-separated parts of the subject of the Sirenia row this line compares with
    /// (see [`part_matches`]).
    matches: Vec<String>,
    events: u64,
    seconds: f64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
}

/// Whether a part of a subject is the named one: equal, or with a name ending in `*`, starting
/// with the rest of it (a Sirenia row's part can carry its own counts).
fn part_matches(part: &str, name: &str) -> bool {
    match name.strip_suffix('*') {
        Some(prefix) => part.starts_with(prefix),
        None => part == name,
    }
}

/// A peer `bench-peers` could not measure, and why.
#[derive(Deserialize)]
struct NotMeasured {
    not_measured: String,
    error: String,
}

/// The scenarios the peers take part in ("S1" stands for itself, not for S13).
pub(crate) const SCENARIOS: [&str; 7] = ["S1 ", "S2", "S4", "S5", "S6", "S7", "S8"];

/// Builds and runs `bench-peers` (with `--quick` in quick mode, and `only` passed on) and adds
/// each of its rows after the Sirenia row it names (and the peer rows already there), that row
/// being its baseline. Returns what could not be measured, for the report.
pub(crate) fn run(
    quick: bool,
    only: Option<&str>,
    rows: &mut Vec<Row>,
) -> BenchResult<Vec<String>> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench-peers/Cargo.toml");
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command
        .args(["run", "--release", "--quiet", "--manifest-path"])
        .arg(&manifest)
        .arg("--");
    if quick {
        command.arg("--quick");
    }
    if let Some(only) = only {
        command.args(["--only", only]);
    }
    let output = command.output()?;
    if !output.status.success() {
        return Err(format!(
            "bench-peers failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    // A peer's row is compared with Sirenia; Sirenia's own rows are not.
    let is_peer = |r: &Row| r.baseline.as_ref().is_some_and(|(b, _)| b == "sirenia");
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
        // The first of Sirenia's rows with every named part.
        let matched = rows.iter().position(|r| {
            !is_peer(r)
                && r.scenario == line.scenario
                && line
                    .matches
                    .iter()
                    .all(|m| r.subject.split(", ").any(|part| part_matches(part, m)))
        });
        let baseline = matched.map(|i| ("sirenia".to_owned(), rows[i].measurement.rate()));
        let row = Row {
            scenario: line.scenario.clone(),
            subject: line.subject.clone(),
            measurement: Measurement {
                events: line.events,
                elapsed: Duration::from_secs_f64(line.seconds.max(f64::EPSILON)),
                latency: (line.p50_us > 0)
                    .then(|| from_quantiles(line.p50_us, line.p99_us, line.p999_us))
                    .transpose()?,
                peak_rss: None,
            },
            baseline,
            goal: None,
        };
        match matched {
            Some(i) => {
                // After the Sirenia row and the peer rows already placed after it.
                let mut at = i + 1;
                while at < rows.len() && is_peer(&rows[at]) {
                    at += 1;
                }
                rows.insert(at, row);
            }
            None => rows.push(row),
        }
    }
    Ok(notes)
}
