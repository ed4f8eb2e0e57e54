//! S8's two measurements, for any store and projection target.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use sirenia_core::EventStore;
use sirenia_core::projection::{ProjectionOptions, ProjectionTarget, Projector};

use crate::report::{BenchResult, Measurement, peak_rss, reset_peak_rss};

/// Options of the benchmark projections: the largest pages.
pub(crate) fn options() -> ProjectionOptions {
    ProjectionOptions {
        batch_size: sirenia_core::limits::MAX_PAGE_SIZE,
        ..ProjectionOptions::default()
    }
}

/// Catches `target` up over the whole log, timed.
pub(crate) async fn catch_up<S: EventStore, T: ProjectionTarget>(
    store: S,
    target: T,
) -> BenchResult<Measurement> {
    let mut projector = Projector::new("s8-noop", store, target, options())?;
    reset_peak_rss();
    let start = Instant::now();
    let mut handled = 0;
    projector.catch_up(|p| handled = p.handled).await?;
    Ok(Measurement {
        events: handled,
        elapsed: start.elapsed(),
        latency: None,
        peak_rss: peak_rss(),
    })
}

/// Runs `target` live over the `live` category while 4 writers append for `duration`; the
/// target records each event's append-to-handler latency into `latency`.
pub(crate) async fn live_latency<S: EventStore, T: ProjectionTarget>(
    store: S,
    target: T,
    latency: Arc<Mutex<Histogram<u64>>>,
    duration: Duration,
) -> BenchResult<Measurement> {
    let options = ProjectionOptions {
        filter: sirenia_core::EventFilter::category("live"),
        ..options()
    };
    let mut projector = Projector::new("s8-live", store.clone(), target, options)?;
    projector.catch_up(|_| {}).await?;
    let mut status = projector.status();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runner = tokio::spawn(async move {
        projector
            .run(async {
                let _ = stopped.await;
            })
            .await
    });
    reset_peak_rss();
    let start = Instant::now();
    let events = crate::report::live_writers(store.clone(), 4, duration).await?;
    let head = store.head_position().await?;
    sirenia_core::projection::wait_for(&mut status, head, Duration::from_secs(60)).await?;
    let _ = stop.send(());
    runner.await??;
    let latency = latency
        .lock()
        .map_err(|_| "latency histogram poisoned")?
        .clone();
    Ok(Measurement {
        events,
        elapsed: start.elapsed(),
        latency: Some(latency),
        peak_rss: peak_rss(),
    })
}
