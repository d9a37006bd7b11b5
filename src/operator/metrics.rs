//! The operator's Prometheus metrics: reconciliations, errors by reason, durations, and
//! whether this replica leads.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct KindLabel {
    pub(super) kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ErrorLabel {
    pub(super) kind: String,
    pub(super) reason: String,
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The operator's metrics: reconciliations, errors and durations per kind, and leadership.
pub struct OperatorMetrics {
    registry: Registry,
    pub(super) reconciliations: Family<KindLabel, Counter>,
    pub(super) errors: Family<ErrorLabel, Counter>,
    pub(super) durations: Family<KindLabel, Histogram, fn() -> Histogram>,
    pub(super) leader: Gauge,
    pub(super) ready: AtomicBool,
}

impl Default for OperatorMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("logplayer_operator");
        let reconciliations = Family::<KindLabel, Counter>::default();
        let errors = Family::<ErrorLabel, Counter>::default();
        let durations = Family::<KindLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            duration_histogram,
        );
        let leader = Gauge::default();
        registry.register(
            "reconciliations",
            "Reconciliations run, per kind",
            reconciliations.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciliations that failed, per kind and reason",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconciliation",
            durations.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the operator lease",
            leader.clone(),
        );
        OperatorMetrics {
            registry,
            reconciliations,
            errors,
            durations,
            leader,
            ready: AtomicBool::new(false),
        }
    }
}

impl crate::metrics::Exposition for OperatorMetrics {
    fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
    fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}
