//! Sirenia's benchmarks: each scenario runs Sirenia and a raw baseline doing the same work on
//! the same machine in the same run, and reports the ratio.
//!
//! ```text
//! cargo run --release -p sirenia-bench -- [--quick] [--only NAME] [--peers | --no-peers]
//! ```
//!
//! `--quick` runs small counts for a smoke test (timings are not judged); the default is the full
//! run. `--only` keeps the scenarios whose name contains NAME. The full run also runs the peer
//! crates (`bench-peers`, a workspace of its own, built on first use) unless `--no-peers` is
//! given; `--peers` runs them in quick mode too. The result is one markdown table on
//! standard output.

#![allow(clippy::print_stdout, clippy::print_stderr)]

mod command_bench;
mod grpc_bench;
mod peers;
mod postgres;
mod projection_bench;
mod recovery;
mod report;
mod snapshot_bench;
mod sqlite;

use std::time::Duration;

/// How long and how large each scenario runs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Scale {
    /// How long a timed write scenario runs.
    pub(crate) duration: Duration,
    /// How many events the read scenarios read.
    pub(crate) read_events: u64,
    /// How many commands S4 runs per stream length.
    pub(crate) commands: u64,
}

fn main() {
    // S13's appender, killed by the benchmark itself.
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let child = match argv.first().map(String::as_str) {
        Some(recovery::CHILD_FLAG) => Some((argv.get(1), None)),
        Some(recovery::PG_CHILD_FLAG) => Some((argv.get(1), argv.get(2))),
        _ => None,
    };
    if let Some((target, schema)) = child {
        let target = target.map_or("", String::as_str);
        if let Err(e) = recovery::child(target, schema.map(String::as_str)) {
            eprintln!("the S13 appender failed: {e}");
            std::process::exit(1);
        }
        return;
    }
    let mut quick = false;
    let mut peers: Option<bool> = None;
    let mut only: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--peers" => peers = Some(true),
            "--no-peers" => peers = Some(false),
            "--only" => only = args.next(),
            "--help" | "-h" => {
                println!("usage: sirenia-bench [--quick] [--only NAME] [--peers | --no-peers]");
                return;
            }
            other => {
                eprintln!("unknown argument {other:?}; try --help");
                std::process::exit(2);
            }
        }
    }
    let scale = if quick {
        Scale {
            duration: Duration::from_millis(500),
            read_events: 50_000,
            commands: 40,
        }
    } else {
        Scale {
            duration: Duration::from_secs(5),
            read_events: 1_000_000,
            commands: 1_000,
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| {
            eprintln!("cannot start a runtime: {e}");
            std::process::exit(1)
        });
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let keep = |name: &str| only.as_deref().is_none_or(|o| name.contains(o));
    let outcome = runtime.block_on(async {
        sqlite::run(scale, &keep, &mut rows).await?;
        postgres::run(scale, &keep, &mut rows).await?;
        grpc_bench::run(scale, &keep, &mut rows).await?;
        // The peers filter by `only` themselves; skip them for scenarios they take no part in.
        let theirs = only.as_deref().is_none_or(|o| {
            !o.starts_with('S')
                || peers::SCENARIOS
                    .iter()
                    .any(|s| o.starts_with(s) || s.trim() == o)
        });
        if peers.unwrap_or(!quick) && theirs {
            notes = peers::run(quick, only.as_deref(), &mut rows)?;
        }
        report::BenchResult::Ok(())
    });
    if let Err(e) = outcome {
        eprintln!("benchmark failed: {e} ({e:?})");
        std::process::exit(1);
    }
    report::print(&rows, quick);
    for note in notes {
        println!("\n_{note}_");
    }
}
