//! Metrics (Prometheus text at `GET /metrics`) and the service's own metric names.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Commands run, labelled `command` (`open`, `deposit`, `withdraw`, `close`) and `outcome`
/// (`ok`, `rejected`, `conflict`, `error`, `replayed`).
pub const COMMANDS_TOTAL: &str = "bank_commands_total";
/// Time from an event's commit to the accounts projection applying it, in seconds.
pub const DELIVERY_SECONDS: &str = "sirenia_projection_delivery_seconds";
/// The accounts projection's next position to read, labelled `projection`.
pub const PROJECTION_POSITION: &str = "sirenia_projection_position";
/// Events between the accounts projection's checkpoint and the head (dense stores).
pub const PROJECTION_LAG_EVENTS: &str = "sirenia_projection_lag_events";
/// Age of the last event the accounts projection handled while behind, in seconds.
pub const PROJECTION_LAG_SECONDS: &str = "sirenia_projection_lag";
/// The accounts projection's state on this instance: 0 stopped/standby, 1 catching up,
/// 2 live, 3 faulted.
pub const PROJECTION_STATE: &str = "sirenia_projection_state";
/// HTTP requests, labelled `status`.
pub const HTTP_REQUESTS_TOTAL: &str = "bank_http_requests_total";

/// Latency buckets (seconds) for the histograms.
const BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// How often histogram samples are folded into their buckets.
const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process's Prometheus recorder, installed on first use. `None` if another recorder was
/// installed first (then `/metrics` answers with an empty text).
pub fn prometheus() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), BUCKETS)
                .ok()?;
            match builder.install_recorder() {
                Ok(handle) => {
                    // Histograms keep raw samples until upkeep folds them in.
                    let upkeep = handle.clone();
                    let _ = std::thread::Builder::new()
                        .name("metrics-upkeep".to_owned())
                        .spawn(move || {
                            loop {
                                std::thread::sleep(UPKEEP_INTERVAL);
                                upkeep.run_upkeep();
                            }
                        });
                    Some(handle)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed");
                    None
                }
            }
        })
        .clone()
}
