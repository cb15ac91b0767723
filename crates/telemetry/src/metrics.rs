//! Every metric the fleet exports, in one place: names (Prometheus form, `rewardfleet_` prefix;
//! counters gain `_total` on the Prometheus endpoint), units, labels and histogram buckets.
//!
//! Call [`install`] once the process's meter provider is set; until then [`metrics`] is `None` and
//! nothing is recorded.

use std::sync::{Mutex, OnceLock, PoisonError, Weak};

pub use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter, ObservableGauge, UpDownCounter};

/// Latency buckets in seconds, for stages that take from half a millisecond (a rule, a cached
/// verdict) to minutes (a judge behind retries, a job queued behind a backlog).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0, 300.0,
];

/// Sequences per model batch: powers of two up to the largest batches a token budget allows.
pub const BATCH_SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// Padded tokens per model batch: powers of two from 64 to 128 k.
pub const BATCH_TOKEN_BUCKETS: &[f64] = &[
    64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32768.0, 65536.0, 131072.0,
];

/// Share of padding in a batch's tokens, from 0 (no padding) to 1.
pub const RATIO_BUCKETS: &[f64] = &[0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9];

/// The instruments. Label sets are small and bounded: profile, status, pool, model, judge,
/// rule and outcome names come from the configuration or from closed lists, never from input.
#[derive(Debug)]
pub struct Metrics {
    /// `rewardfleet_rewards_total{profile,status}`: rewards sent to trainers by a gateway.
    pub rewards: Counter<u64>,
    /// `rewardfleet_reward_latency_seconds{profile}`: end to end per job, from its batch's
    /// arrival at the gateway to its rewards' send (a job's candidates share it).
    pub reward_latency: Histogram<f64>,
    /// `rewardfleet_queue_wait_seconds{profile}`: a job's time outside scoring (queued, in
    /// transit): its end-to-end time less its scoring time.
    pub queue_wait: Histogram<f64>,
    /// `rewardfleet_sessions_open`: Score sessions open on a gateway.
    pub sessions_open: UpDownCounter<i64>,
    /// `rewardfleet_candidates_in_flight`: candidates accepted by a gateway and not yet rewarded.
    pub candidates_in_flight: UpDownCounter<i64>,
    /// `rewardfleet_window_stalls_total`: times a session stopped reading because its window
    /// was full (backpressure on the trainer).
    pub window_stalls: Counter<u64>,
    /// `rewardfleet_refused_total{limit}`: calls and connections a gateway refused at a
    /// configured bound (`limit` is its key, e.g. `gateway.max_sessions`).
    pub refused: Counter<u64>,
    /// `rewardfleet_candidates_scored_total{profile,status}`: candidates scored by workers.
    pub candidates_scored: Counter<u64>,
    /// `rewardfleet_job_duration_seconds{profile}`: a job's scoring, every component.
    pub job_duration: Histogram<f64>,
    /// `rewardfleet_jobs_redelivered_total{pool}`: deliveries of a job delivered before.
    pub jobs_redelivered: Counter<u64>,
    /// `rewardfleet_jobs_dead_lettered_total{pool}`: jobs given up after their last delivery.
    pub jobs_dead_lettered: Counter<u64>,
    /// `rewardfleet_consumer_pending{pool}`: jobs in the stream not yet delivered to the pool.
    pub consumer_pending: Gauge<u64>,
    /// `rewardfleet_consumer_ack_pending{pool}`: jobs delivered and not yet acknowledged.
    pub consumer_ack_pending: Gauge<u64>,
    /// `rewardfleet_rule_duration_seconds{rule}`: one rule over one group.
    pub rule_duration: Histogram<f64>,
    /// `rewardfleet_tokenize_duration_seconds{model}`: tokenizing one group's texts.
    pub tokenize_duration: Histogram<f64>,
    /// `rewardfleet_model_forward_duration_seconds{model}`: one batch's forward pass.
    pub forward_duration: Histogram<f64>,
    /// `rewardfleet_model_batch_size{model}`: sequences per batch.
    pub batch_size: Histogram<f64>,
    /// `rewardfleet_model_batch_tokens{model}`: padded tokens per batch.
    pub batch_tokens: Histogram<f64>,
    /// `rewardfleet_model_padding_ratio{model}`: padding's share of a batch's tokens.
    pub padding_ratio: Histogram<f64>,
    /// `rewardfleet_judge_requests_total{judge,outcome}`: judge requests by outcome: `ok`, a
    /// retry reason (`http_429`, `http_5xx`, `http_4xx`, `timeout`, `transport`, `malformed`),
    /// `shed` (admission refused it) or `circuit_open`.
    pub judge_requests: Counter<u64>,
    /// `rewardfleet_judge_request_duration_seconds{judge}`: one HTTP attempt.
    pub judge_duration: Histogram<f64>,
    /// `rewardfleet_judge_tokens_total{judge,direction}`: tokens billed, `input` or `output`.
    pub judge_tokens: Counter<u64>,
    /// `rewardfleet_judge_circuit_state{judge}`: 0 closed, 1 half-open, 2 open.
    pub judge_circuit_state: Gauge<i64>,
    /// `rewardfleet_cache_lookups_total{judge,result}`: verdict cache lookups, `hit` or `miss`.
    pub cache_lookups: Counter<u64>,
    /// `rewardfleet_monitor{profile,statistic}`: reward-hacking monitors over a worker's last
    /// rewards (`length_correlation`, `injection_rate`, `position_inconsistency_rate`,
    /// `panel_disagreement_rate`, `gate_floor_rate`); and `{profile,statistic,judge}` for each
    /// judge component's canaries (`canary_mean`, `canary_drift`).
    pub monitor: Gauge<f64>,
    /// `rewardfleet_monitor_session{profile,session,statistic}`: the same statistics over one
    /// session's rewards, for the sessions each worker keeps (`worker.monitor.sessions`, the
    /// most recently active); read from the [`SessionMonitors`] at each collection, so a
    /// session the worker forgot leaves the endpoint.
    pub monitor_session: ObservableGauge<f64>,
}

/// What reports per-session monitor values when metrics are collected (a worker's monitors).
pub trait SessionMonitors: Send + Sync {
    /// Calls `record` with each value and its labels (`profile`, `session`, `statistic`).
    fn observe_sessions(&self, record: &mut dyn FnMut(f64, &[KeyValue]));
}

/// The sources of `rewardfleet_monitor_session`; a source dropped is left out (and removed).
static SESSION_MONITORS: Mutex<Vec<Weak<dyn SessionMonitors>>> = Mutex::new(Vec::new());

/// Adds a source of `rewardfleet_monitor_session`, read for as long as it lives.
pub fn add_session_monitors(source: Weak<dyn SessionMonitors>) {
    SESSION_MONITORS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(source);
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The instruments, once [`install`]ed; `None` when this process exports no metrics.
pub fn metrics() -> Option<&'static Metrics> {
    METRICS.get()
}

/// Creates the instruments from `meter` (the process's meter provider must be set up already).
/// A second call keeps the first instruments.
pub fn install(meter: &Meter) -> &'static Metrics {
    METRICS.get_or_init(|| Metrics::new(meter))
}

impl Metrics {
    /// Exports a gateway's series at zero before anything happens, so that dashboards and
    /// alerts see `0`, not "no data".
    pub fn gateway_started(&self) {
        self.sessions_open.add(0, &[]);
        self.candidates_in_flight.add(0, &[]);
        self.window_stalls.add(0, &[]);
    }

    /// Exports the series of a worker of `pool` at zero (see [`Metrics::gateway_started`]).
    pub fn worker_started(&self, pool: &str) {
        let pool = [label("pool", pool.to_owned())];
        self.jobs_redelivered.add(0, &pool);
        self.jobs_dead_lettered.add(0, &pool);
    }

    fn new(m: &Meter) -> Self {
        let seconds = |name: &'static str, help: &'static str| {
            m.f64_histogram(name)
                .with_unit("s")
                .with_description(help)
                .with_boundaries(LATENCY_BUCKETS.to_vec())
                .build()
        };
        let counter = |name: &'static str, help: &'static str| {
            m.u64_counter(name).with_description(help).build()
        };
        Self {
            rewards: counter("rewardfleet_rewards", "Rewards sent to trainers."),
            reward_latency: seconds(
                "rewardfleet_reward_latency_seconds",
                "Per job, from its batch's arrival at the gateway to its rewards' send.",
            ),
            queue_wait: seconds(
                "rewardfleet_queue_wait_seconds",
                "Per job, time outside scoring: queued and in transit.",
            ),
            sessions_open: m
                .i64_up_down_counter("rewardfleet_sessions_open")
                .with_description("Score sessions open on this gateway.")
                .build(),
            candidates_in_flight: m
                .i64_up_down_counter("rewardfleet_candidates_in_flight")
                .with_description("Candidates accepted by this gateway and not yet rewarded.")
                .build(),
            window_stalls: counter(
                "rewardfleet_window_stalls",
                "Times a session stopped reading because its window was full.",
            ),
            refused: counter(
                "rewardfleet_refused",
                "Calls and connections refused at a configured bound.",
            ),
            candidates_scored: counter(
                "rewardfleet_candidates_scored",
                "Candidates scored by this worker.",
            ),
            job_duration: seconds(
                "rewardfleet_job_duration_seconds",
                "A job's scoring, every component.",
            ),
            jobs_redelivered: counter(
                "rewardfleet_jobs_redelivered",
                "Deliveries of a job that was delivered before.",
            ),
            jobs_dead_lettered: counter(
                "rewardfleet_jobs_dead_lettered",
                "Jobs given up after their last delivery (FAILED rewards published).",
            ),
            consumer_pending: m
                .u64_gauge("rewardfleet_consumer_pending")
                .with_description("Jobs in the stream not yet delivered to the pool's consumer.")
                .build(),
            consumer_ack_pending: m
                .u64_gauge("rewardfleet_consumer_ack_pending")
                .with_description("Jobs delivered to the pool and not yet acknowledged.")
                .build(),
            rule_duration: seconds(
                "rewardfleet_rule_duration_seconds",
                "One rule over one group.",
            ),
            tokenize_duration: seconds(
                "rewardfleet_tokenize_duration_seconds",
                "Tokenizing one group's texts for a model.",
            ),
            forward_duration: seconds(
                "rewardfleet_model_forward_duration_seconds",
                "One model batch's forward pass.",
            ),
            batch_size: m
                .f64_histogram("rewardfleet_model_batch_size")
                .with_description("Sequences per model batch.")
                .with_boundaries(BATCH_SIZE_BUCKETS.to_vec())
                .build(),
            batch_tokens: m
                .f64_histogram("rewardfleet_model_batch_tokens")
                .with_description("Padded tokens per model batch.")
                .with_boundaries(BATCH_TOKEN_BUCKETS.to_vec())
                .build(),
            padding_ratio: m
                .f64_histogram("rewardfleet_model_padding_ratio")
                .with_description("Padding's share of a model batch's tokens.")
                .with_boundaries(RATIO_BUCKETS.to_vec())
                .build(),
            judge_requests: counter(
                "rewardfleet_judge_requests",
                "Judge requests by outcome (ok, a retry reason, shed, circuit_open).",
            ),
            judge_duration: seconds(
                "rewardfleet_judge_request_duration_seconds",
                "One HTTP attempt to a judge.",
            ),
            judge_tokens: counter(
                "rewardfleet_judge_tokens",
                "Judge tokens billed, by direction (input, output).",
            ),
            judge_circuit_state: m
                .i64_gauge("rewardfleet_judge_circuit_state")
                .with_description("A judge's circuit: 0 closed, 1 half-open, 2 open.")
                .build(),
            cache_lookups: counter(
                "rewardfleet_cache_lookups",
                "Verdict cache lookups, by result (hit, miss).",
            ),
            monitor: m
                .f64_gauge("rewardfleet_monitor")
                .with_description(
                    "Reward-hacking monitors over a worker's last rewards, by profile and statistic.",
                )
                .build(),
            monitor_session: m
                .f64_observable_gauge("rewardfleet_monitor_session")
                .with_description(
                    "Reward-hacking monitors over one session's last rewards, for the sessions a worker keeps.",
                )
                .with_callback(|gauge| {
                    let mut sources = SESSION_MONITORS
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    sources.retain(|s| s.strong_count() > 0);
                    for source in sources.iter().filter_map(Weak::upgrade) {
                        source.observe_sessions(&mut |v, labels| gauge.observe(v, labels));
                    }
                })
                .build(),
        }
    }
}

/// One label.
pub fn label(key: &'static str, value: impl Into<opentelemetry::Value>) -> KeyValue {
    KeyValue::new(key, value)
}
