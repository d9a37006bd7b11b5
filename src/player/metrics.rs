//! The player's Prometheus metrics, served by [`crate::metrics::serve`] with `/readyz`
//! answering whether the replica can do its job (the lease backend answered recently, and,
//! as leader, delivery is running).
//!
//! Metric names (all prefixed `logplayer_`):
//! - `player_leader` (gauge, 1 leader / 0 standby), `player_epoch` (gauge),
//! - `player_failovers_total` (times this replica became leader),
//! - `shard_acked_index{shard}`, `shard_lag_entries{shard}` (gauges; lag = the player's
//!   current index minus the index through which the shard has acknowledged every entry
//!   routed to it, so a caught-up shard has lag 0 even when the newest entries go elsewhere),
//! - `delivery_delay_seconds{shard}` (histogram: dispatch to the shard's durable ack),
//! - `shard_reconnects_total{shard}`, `shard_recoveries_total{shard}` (counters),
//! - `player_current_index` (gauge), `player_dispatched_entries_total` (counter),
//! - `shard_refused{shard,reason}` (gauge: 1 while the shard refuses this player for
//!   `reason` — `wrong-shard`, `wrong-log`, `entry-limit`, `entry-too-large`, `invalid`, `forbidden` —
//!   and 0 once it accepts again), `player_read_stalled` (gauge: 1 while the main stream
//!   cannot read the next entry). Each such problem is also listed by `/readyz` and logged
//!   at ERROR once when it starts.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The `shard` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabel {
    pub shard: String,
}

/// The `shard` and `reason` labels of a refusal.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabel {
    pub shard: String,
    pub reason: String,
}

fn delay_histogram() -> Histogram {
    // 50 µs to ~13 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 19))
}

/// Every metric of one player process.
pub struct Metrics {
    registry: Registry,
    pub leader: Gauge,
    pub epoch: Gauge,
    pub failovers: Counter,
    pub acked: Family<ShardLabel, Gauge>,
    pub lag: Family<ShardLabel, Gauge>,
    pub delivery_delay: Family<ShardLabel, Histogram, fn() -> Histogram>,
    pub reconnects: Family<ShardLabel, Counter>,
    pub recoveries: Family<ShardLabel, Counter>,
    pub current_index: Gauge,
    pub dispatched: Counter,
    pub refused: Family<RefusalLabel, Gauge>,
    pub read_stalled: Gauge,
    /// What `/readyz` answers.
    pub ready: AtomicBool,
    /// Current problems by what they concern (`shard s0`, `main stream`), for `/readyz`.
    problems: Mutex<BTreeMap<String, String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("logplayer");
        let m = Metrics {
            leader: Gauge::default(),
            epoch: Gauge::default(),
            failovers: Counter::default(),
            acked: Family::default(),
            lag: Family::default(),
            delivery_delay: Family::new_with_constructor(delay_histogram),
            reconnects: Family::default(),
            recoveries: Family::default(),
            current_index: Gauge::default(),
            dispatched: Counter::default(),
            refused: Family::default(),
            read_stalled: Gauge::default(),
            ready: AtomicBool::new(false),
            problems: Mutex::new(BTreeMap::new()),
            registry: Registry::default(),
        };
        registry.register(
            "player_leader",
            "1 when this replica holds the lease and delivers, 0 on standby",
            m.leader.clone(),
        );
        registry.register(
            "player_epoch",
            "Fencing epoch this replica leads (or last led) under",
            m.epoch.clone(),
        );
        registry.register(
            "player_failovers",
            "Times this replica became the leader",
            m.failovers.clone(),
        );
        registry.register(
            "shard_acked_index",
            "Highest index the shard durably acknowledged to this leader",
            m.acked.clone(),
        );
        registry.register(
            "shard_lag_entries",
            "Player's current index minus the index through which the shard has every entry routed to it",
            m.lag.clone(),
        );
        registry.register(
            "delivery_delay_seconds",
            "Time from dispatch to the shard's durable acknowledgement",
            m.delivery_delay.clone(),
        );
        registry.register(
            "shard_reconnects",
            "Delivery streams to the shard that ended and were reopened",
            m.reconnects.clone(),
        );
        registry.register(
            "shard_recoveries",
            "Recovery streams started for the shard",
            m.recoveries.clone(),
        );
        registry.register(
            "player_current_index",
            "Highest log index the leader has dispatched",
            m.current_index.clone(),
        );
        registry.register(
            "player_dispatched_entries",
            "Log entries dispatched by this replica",
            m.dispatched.clone(),
        );
        registry.register(
            "shard_refused",
            "1 while the shard refuses this player for the labelled reason (a misconfiguration or an undeliverable entry)",
            m.refused.clone(),
        );
        registry.register(
            "player_read_stalled",
            "1 while the main stream cannot read the next entry from the log",
            m.read_stalled.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    pub fn shard(id: &str) -> ShardLabel {
        ShardLabel {
            shard: id.to_owned(),
        }
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Records a problem concerning `what`; true when it is new or changed (the caller logs
    /// it at ERROR then, and not again on every retry).
    pub fn set_problem(&self, what: &str, message: &str) -> bool {
        let mut p = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        let changed = p.get(what).map(String::as_str) != Some(message);
        if changed {
            p.insert(what.to_owned(), message.to_owned());
        }
        changed
    }

    /// Clears the problem concerning `what`; true when there was one.
    pub fn clear_problem(&self, what: &str) -> bool {
        let mut p = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        p.remove(what).is_some()
    }
}

impl crate::metrics::Exposition for Metrics {
    fn encode(&self) -> String {
        Metrics::encode(self)
    }
    fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
    fn problems(&self) -> Vec<String> {
        let p = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        p.iter()
            .map(|(what, msg)| format!("{what}: {msg}"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_every_family() {
        let m = Metrics::default();
        m.leader.set(1);
        m.epoch.set(7);
        m.acked.get_or_create(&Metrics::shard("s0")).set(42);
        m.delivery_delay
            .get_or_create(&Metrics::shard("s0"))
            .observe(0.001);
        let text = m.encode();
        for name in [
            "logplayer_player_leader 1",
            "logplayer_player_epoch 7",
            "logplayer_shard_acked_index{shard=\"s0\"} 42",
            "logplayer_delivery_delay_seconds_bucket",
            "logplayer_player_failovers_total",
        ] {
            assert!(text.contains(name), "missing {name} in:\n{text}");
        }
    }
}
