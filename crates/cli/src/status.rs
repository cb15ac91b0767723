//! `rewardfleet status`: what a fleet on NATS JetStream is doing now, read from the server (the
//! jobs stream, each pool's durable consumer) and from the processes' heartbeats.

use std::error::Error as _;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use rewardfleet_core::config::{Config, NatsConfig};
use rewardfleet_queue::QueueError;
use rewardfleet_queue::jetstream::{
    GatewayHeartbeat, JetStreamOptions, JobsStreamStatus, PoolLag, StatusReader, TTL_FACTOR,
    WorkerHeartbeat,
};
use serde::Serialize;

/// The monitors' statistics (`!`: over its threshold), for each live worker that sends them:
/// one row per profile and per recent session; then each judge's canary drift. Empty when no
/// worker sent any.
fn monitors(workers: &[WorkerHeartbeat]) -> String {
    let mut rows = Vec::new();
    let mut canaries = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for w in workers {
        let Some(m) = &w.monitor else { continue };
        for scope in m.profiles.iter().chain(&m.sessions) {
            let mut row = vec![
                w.name.clone(),
                scope.profile.clone(),
                scope.session.clone().unwrap_or_else(|| "-".into()),
                scope.samples.to_string(),
            ];
            for st in &scope.statistics {
                if !names.contains(&st.name) {
                    names.push(st.name.clone());
                }
                row.push(format!("{:.3}{}", st.value, if st.over { "!" } else { "" }));
            }
            rows.push(row);
        }
        for c in &m.canaries {
            canaries.push(vec![
                w.name.clone(),
                c.profile.clone(),
                c.judge.clone(),
                format!("{:.3}", c.baseline),
                format!("{:.3}", c.mean),
                format!("{:+.3}{}", c.drift, if c.over { "!" } else { "" }),
                c.runs.to_string(),
            ]);
        }
    }
    let mut text = String::new();
    if rows.is_empty() && canaries.is_empty() {
        return text;
    }
    text.push_str("\nreward-hacking monitors (! over its threshold in [worker.monitor])\n");
    if !rows.is_empty() {
        let upper: Vec<String> = names.iter().map(|n| n.to_uppercase()).collect();
        let mut columns = vec![
            ("WORKER", false),
            ("PROFILE", false),
            ("SESSION", false),
            ("SAMPLES", true),
        ];
        columns.extend(upper.iter().map(|n| (n.as_str(), true)));
        text.push_str(&table(&columns, rows));
    }
    if !canaries.is_empty() {
        text.push_str(&table(
            &[
                ("WORKER", false),
                ("PROFILE", false),
                ("JUDGE", false),
                ("CANARY BASELINE", true),
                ("CANARY MEAN", true),
                ("DRIFT", true),
                ("RUNS", true),
            ],
            canaries,
        ));
    }
    text
}

/// How long `status` waits for NATS to answer before it says it cannot reach it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The fields of `status --json`, shown by `rewardfleet status --help`.
const JSON_HELP: &str = "\
With --json, one JSON object (one per line with --watch):
  nats         the server URL(s) read
  read_at      unix seconds when this was read
  jobs_stream  {name, messages, bytes, consumers}, or null if the stream does not exist yet;
               messages: jobs stored (queued, or delivered and not yet acknowledged)
  pools        one per durable consumer of the jobs stream: {pool, consumer, pending (jobs not
               yet delivered to any worker), ack_pending (delivered, not yet acknowledged),
               redelivered, waiting (open pull requests), workers (live workers of the pool)}
  workers      the live workers, each its last heartbeat: {name, pid, pool, capacity (jobs at
               once), models, judges, ready, in_flight, jobs_done, candidates_done,
               candidates_failed (only where counted), jobs_retried, jobs_given_up, redeliveries,
               recent {window_secs, candidates_per_sec, candidates_failed_per_sec,
               jobs_per_sec, jobs_retried_per_sec, jobs_given_up_per_sec}, version, started_at,
               sent_at, interval_secs, monitor (absent from workers that do not send it)}
               monitor: the worker's reward-hacking monitors, {profiles, sessions, canaries}:
               profiles and sessions (its most recently active, at most 16, each with its
               session) are {profile, session?, samples, statistics: [{name, value,
               threshold, over}]}; canaries are {profile, judge, baseline, mean, drift,
               threshold, over, runs}
  gateways     the live gateways: {name, pid, listen, sessions (open now), candidates_in_flight,
               version, started_at, sent_at, interval_secs}
  throughput   {candidates_per_sec, jobs_per_sec, failure_rate, job_retry_rate}: the sums of
               every live worker's rates over its last heartbeat interval (default 5s);
               failure_rate: the share of candidates scored in it whose reward was FAILED;
               job_retry_rate: the share of job attempts in it that were handed back for another
               try or given up (each null when there was nothing to divide by)
  monitors_over  every monitor over its threshold now: {worker, profile, session?, statistic}
                 (a canary's statistic is canary_drift:<judge>)

A worker or gateway is live while its heartbeat has not expired: it renews it every
nats.heartbeat_interval and it expires three intervals later (a killed process leaves the list
then; one stopped with SIGTERM leaves it at once).";

/// Arguments of `rewardfleet status`.
#[derive(clap::Args)]
#[command(after_long_help = JSON_HELP)]
pub struct StatusArgs {
    /// The fleet's configuration: its [nats] says where the server is, the token variable
    /// (nats.token_env), the stream names and the subject prefix.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// NATS server URL(s), comma-separated; overrides the configuration's nats.url. Without
    /// --config the default stream names and prefix are read (RF_JOBS, rf).
    #[arg(long, value_name = "URL")]
    nats: Option<String>,
    /// Prints one JSON object instead of tables (fields below, in --help).
    #[arg(long)]
    json: bool,
    /// Reads again every SECONDS (default 2) until Ctrl-C.
    #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "2")]
    watch: Option<f64>,
}

/// Runs `rewardfleet status`.
///
/// # Errors
/// A configuration that cannot be read, a token variable that is not set, or a NATS server
/// that does not answer (named in the message).
pub async fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let (nats, token) = settings(&args)?;
    let options = JetStreamOptions {
        token,
        client_name: Some("rewardfleet-status".into()),
    };
    let reader = StatusReader::connect(&nats, options, CONNECT_TIMEOUT)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "{}\nIs nats-server running there? Pass the fleet's --config FILE or --nats URL.",
                describe(&e)
            )
        })?;
    let Some(every) = args.watch else {
        let snapshot = Snapshot::read(&reader).await?;
        print(&snapshot, args.json)?;
        return Ok(ExitCode::SUCCESS);
    };
    if !(every.is_finite() && every > 0.0) {
        bail!("--watch {every}: give a number of seconds above 0");
    }
    let every = Duration::from_secs_f64(every);
    let clear = !args.json && std::io::stdout().is_terminal();
    loop {
        match Snapshot::read(&reader).await {
            Ok(snapshot) => {
                if clear {
                    // Clear the screen and go home: each refresh replaces the last.
                    print!("\x1b[2J\x1b[H");
                }
                print(&snapshot, args.json)?;
            }
            // NATS away for a moment: say so and try again (the client reconnects by itself).
            Err(e) => eprintln!("error: {e:#}"),
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// The `[nats]` settings to read with, and the token.
fn settings(args: &StatusArgs) -> anyhow::Result<(NatsConfig, Option<String>)> {
    let mut nats = match &args.config {
        Some(path) => {
            let config = Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
            match (config.nats, &args.nats) {
                (Some(nats), _) => nats,
                (None, Some(_)) => NatsConfig::default(),
                (None, None) => bail!(
                    "{} has no [nats]: an embedded fleet runs in one process and keeps no \
                     status in NATS; pass the configuration of a NATS fleet, or --nats URL",
                    path.display()
                ),
            }
        }
        None => NatsConfig::default(),
    };
    if let Some(url) = &args.nats {
        nats.url.clone_from(url);
    }
    let token = match &nats.token_env {
        Some(var) => {
            Some(std::env::var(var).with_context(|| format!("nats.token_env: ${var} is not set"))?)
        }
        None => None,
    };
    Ok((nats, token))
}

/// Everything `status` shows, as `--json` prints it.
#[derive(Debug, Serialize)]
struct Snapshot {
    nats: String,
    read_at: u64,
    jobs_stream: Option<JobsStreamStatus>,
    pools: Vec<PoolRow>,
    workers: Vec<WorkerHeartbeat>,
    gateways: Vec<GatewayHeartbeat>,
    throughput: Throughput,
    monitors_over: Vec<MonitorOver>,
}

/// A reward-hacking monitor over its threshold on a live worker.
#[derive(Debug, PartialEq, Serialize)]
struct MonitorOver {
    worker: String,
    profile: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<String>,
    statistic: String,
}

impl MonitorOver {
    fn of(workers: &[WorkerHeartbeat]) -> Vec<Self> {
        workers
            .iter()
            .flat_map(|w| {
                w.monitor
                    .iter()
                    .flat_map(|m| m.over())
                    .map(|(profile, session, statistic)| Self {
                        worker: w.name.clone(),
                        profile,
                        session,
                        statistic,
                    })
            })
            .collect()
    }
}

/// A pool's lag with the number of its live workers.
#[derive(Debug, Serialize)]
struct PoolRow {
    #[serde(flatten)]
    lag: PoolLag,
    workers: usize,
}

/// The fleet's recent rates: sums over every live worker's last heartbeat interval.
#[derive(Debug, Default, PartialEq, Serialize)]
struct Throughput {
    candidates_per_sec: f64,
    jobs_per_sec: f64,
    /// FAILED rewards per candidate finished; `None` when none finished.
    failure_rate: Option<f64>,
    /// Retried or given-up job attempts per attempt; `None` when no attempt ended.
    job_retry_rate: Option<f64>,
}

impl Throughput {
    fn of(workers: &[WorkerHeartbeat]) -> Self {
        let (mut failed, mut attempts, mut retried) = (0.0, 0.0, 0.0);
        let mut total = Self::default();
        for w in workers {
            total.candidates_per_sec += w.recent.candidates_per_sec;
            total.jobs_per_sec += w.recent.jobs_per_sec;
            failed += w.recent.candidates_failed_per_sec;
            attempts += w.recent.attempts_per_sec();
            retried += w.recent.failed_per_sec();
        }
        let share = |part: f64, whole: f64| (whole > 0.0).then(|| (part / whole).min(1.0));
        total.failure_rate = share(failed, total.candidates_per_sec);
        total.job_retry_rate = share(retried, attempts);
        total
    }
}

impl Snapshot {
    async fn read(reader: &StatusReader) -> anyhow::Result<Self> {
        let what = || {
            format!(
                "cannot read the fleet's status from NATS at {}",
                reader.url()
            )
        };
        let (jobs_stream, pools, workers, gateways) = tokio::try_join!(
            reader.jobs_stream(),
            reader.pools(),
            reader.workers(),
            reader.gateways(),
        )
        .map_err(|e| anyhow::anyhow!("{}: {}", what(), describe(&e)))?;
        let pools = pools
            .into_iter()
            .map(|lag| PoolRow {
                workers: workers.iter().filter(|w| w.pool == lag.pool).count(),
                lag,
            })
            .collect();
        Ok(Self {
            nats: reader.url().to_owned(),
            read_at: unix_now(),
            jobs_stream,
            pools,
            throughput: Throughput::of(&workers),
            monitors_over: MonitorOver::of(&workers),
            workers,
            gateways,
        })
    }
}

fn print(snapshot: &Snapshot, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, snapshot)?;
        writeln!(out)?;
    } else {
        out.write_all(render(snapshot).as_bytes())?;
    }
    out.flush()?;
    Ok(())
}

/// The tables a person reads.
fn render(s: &Snapshot) -> String {
    let mut text = String::new();
    let _ = writeln!(text, "NATS {}", s.nats);
    match &s.jobs_stream {
        Some(j) => {
            let _ = writeln!(
                text,
                "jobs stream {}: {} job(s) stored ({}), {} consumer(s)",
                j.name,
                j.messages,
                bytes(j.bytes),
                j.consumers
            );
        }
        None => {
            let _ = writeln!(
                text,
                "no jobs stream yet: no gateway or worker of this fleet has connected \
                 (or --config names other streams)"
            );
        }
    }
    text.push('\n');
    if s.pools.is_empty() {
        text.push_str("no pools: no worker has pulled yet\n");
    } else {
        let rows = s
            .pools
            .iter()
            .map(|p| {
                vec![
                    p.lag.pool.clone(),
                    p.lag.consumer.clone(),
                    p.lag.pending.to_string(),
                    p.lag.ack_pending.to_string(),
                    p.lag.redelivered.to_string(),
                    p.lag.waiting.to_string(),
                    p.workers.to_string(),
                ]
            })
            .collect();
        text.push_str(&table(
            &[
                ("POOL", false),
                ("CONSUMER", false),
                ("PENDING", true),
                ("ACK PENDING", true),
                ("REDELIVERED", true),
                ("WAITING", true),
                ("WORKERS", true),
            ],
            rows,
        ));
    }
    text.push('\n');
    if s.workers.is_empty() {
        text.push_str("no live workers\n");
    } else {
        let rows = s
            .workers
            .iter()
            .map(|w| {
                let scorers: Vec<&str> = w
                    .models
                    .iter()
                    .chain(&w.judges)
                    .map(String::as_str)
                    .collect();
                vec![
                    w.name.clone(),
                    w.pid.to_string(),
                    w.pool.clone(),
                    if w.ready { "yes" } else { "no" }.into(),
                    w.capacity.to_string(),
                    w.in_flight.to_string(),
                    w.jobs_done.to_string(),
                    w.candidates_done.to_string(),
                    format!("{:.1}", w.recent.candidates_per_sec),
                    if scorers.is_empty() {
                        "-".into()
                    } else {
                        scorers.join(",")
                    },
                    w.version.clone(),
                    age(s.read_at, w.started_at),
                    format!("{} ago", age(s.read_at, w.sent_at)),
                ]
            })
            .collect();
        text.push_str(&table(
            &[
                ("WORKER", false),
                ("PID", true),
                ("POOL", false),
                ("READY", false),
                ("CAPACITY", true),
                ("IN FLIGHT", true),
                ("JOBS DONE", true),
                ("CANDIDATES", true),
                ("CAND/S", true),
                ("MODELS,JUDGES", false),
                ("VERSION", false),
                ("UP", true),
                ("LAST BEAT", true),
            ],
            rows,
        ));
    }
    text.push('\n');
    if s.gateways.is_empty() {
        text.push_str("no live gateways\n");
    } else {
        let rows = s
            .gateways
            .iter()
            .map(|g| {
                vec![
                    g.name.clone(),
                    g.pid.to_string(),
                    g.listen.clone(),
                    g.sessions.to_string(),
                    g.candidates_in_flight.to_string(),
                    g.version.clone(),
                    age(s.read_at, g.started_at),
                    format!("{} ago", age(s.read_at, g.sent_at)),
                ]
            })
            .collect();
        text.push_str(&table(
            &[
                ("GATEWAY", false),
                ("PID", true),
                ("LISTEN", false),
                ("SESSIONS", true),
                ("IN FLIGHT", true),
                ("VERSION", false),
                ("UP", true),
                ("LAST BEAT", true),
            ],
            rows,
        ));
    }
    text.push_str(&monitors(&s.workers));
    text.push('\n');
    let t = &s.throughput;
    let percent =
        |rate: Option<f64>| rate.map_or_else(|| "-".into(), |r| format!("{:.1}%", r * 100.0));
    let _ = writeln!(
        text,
        "throughput  {:.1} candidates/s, {:.1} jobs/s; {} of candidates FAILED, {} of job \
         attempts retried or given up\n            over each live worker's last heartbeat \
         interval; a process leaves these lists {TTL_FACTOR} intervals after its last beat",
        t.candidates_per_sec,
        t.jobs_per_sec,
        percent(t.failure_rate),
        percent(t.job_retry_rate),
    );
    text
}

/// Aligned columns: `(header, right-aligned)` per column, two spaces apart.
fn table(columns: &[(&str, bool)], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = columns.iter().map(|(h, _)| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    let headers: Vec<String> = columns.iter().map(|(h, _)| (*h).to_owned()).collect();
    for row in std::iter::once(headers).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            let (width, right) = (widths[i], columns[i].1);
            if i > 0 {
                line.push_str("  ");
            }
            if right {
                let _ = write!(line, "{cell:>width$}");
            } else {
                let _ = write!(line, "{cell:<width$}");
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

/// `then` to `now` (unix seconds) as `1h2m`, `3m4s`, `5s`.
fn age(now: u64, then: u64) -> String {
    let secs = now.saturating_sub(then);
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h{}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{}h", secs / 86400, secs % 86400 / 3600),
    }
}

/// A byte count people read.
fn bytes(n: u64) -> String {
    match n {
        0..1024 => format!("{n} B"),
        1024..1_048_576 => format!("{:.1} KiB", n as f64 / 1024.0),
        _ => format!("{:.1} MiB", n as f64 / 1_048_576.0),
    }
}

/// What went wrong and every cause under it, without the queue's own classification (a person
/// running `status` asked about NATS, not about a queue).
fn describe(e: &QueueError) -> String {
    let mut text = match e {
        QueueError::Unavailable { what, .. }
        | QueueError::Setup { what, .. }
        | QueueError::Malformed { what, .. } => what.clone(),
        other => other.to_string(),
    };
    let mut source = e.source();
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        source = cause.source();
    }
    text
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rewardfleet_queue::jetstream::RecentRates;

    fn worker(name: &str, recent: RecentRates) -> WorkerHeartbeat {
        WorkerHeartbeat {
            name: name.into(),
            pid: 7,
            pool: "default".into(),
            capacity: 8,
            models: vec!["rm".into()],
            judges: vec!["judge".into()],
            ready: true,
            in_flight: 1,
            jobs_done: 10,
            candidates_done: 80,
            candidates_failed: None,
            jobs_retried: 0,
            jobs_given_up: 0,
            redeliveries: 0,
            recent,
            version: "0.1.0".into(),
            started_at: 1000,
            sent_at: 1060,
            interval_secs: 5.0,
            monitor: None,
        }
    }

    #[test]
    fn throughput_sums_workers_and_rates_failures_per_attempt() {
        let a = RecentRates {
            window_secs: 5.0,
            candidates_per_sec: 40.0,
            candidates_failed_per_sec: 2.0,
            jobs_per_sec: 5.0,
            jobs_retried_per_sec: 1.0,
            jobs_given_up_per_sec: 0.0,
        };
        let b = RecentRates {
            window_secs: 5.0,
            candidates_per_sec: 8.0,
            candidates_failed_per_sec: 4.0,
            jobs_per_sec: 1.0,
            jobs_retried_per_sec: 0.0,
            jobs_given_up_per_sec: 1.0,
        };
        let t = Throughput::of(&[worker("a", a), worker("b", b)]);
        assert_eq!(t.candidates_per_sec, 48.0);
        assert_eq!(t.jobs_per_sec, 6.0);
        assert_eq!(t.failure_rate, Some(6.0 / 48.0));
        // 2 failed (1 retried, 1 given up) of 7 attempts (6 finished, 1 retried).
        assert_eq!(t.job_retry_rate, Some(2.0 / 7.0));
        assert_eq!(Throughput::of(&[]), Throughput::default());
        assert_eq!(Throughput::of(&[]).failure_rate, None);
    }

    #[test]
    fn tables_align_their_columns() {
        let text = table(
            &[("NAME", false), ("N", true)],
            vec![
                vec!["a".into(), "1".into()],
                vec!["long-name".into(), "100".into()],
            ],
        );
        assert_eq!(text, "NAME         N\na            1\nlong-name  100\n");
    }

    #[test]
    fn the_tables_show_every_worker_and_gateway() {
        let snapshot = Snapshot {
            nats: "nats://127.0.0.1:4222".into(),
            read_at: 1061,
            jobs_stream: Some(JobsStreamStatus {
                name: "RF_JOBS".into(),
                messages: 3,
                bytes: 2048,
                consumers: 1,
            }),
            pools: vec![PoolRow {
                lag: PoolLag {
                    pool: "default".into(),
                    consumer: "rf-workers-default".into(),
                    pending: 3,
                    ack_pending: 0,
                    redelivered: 0,
                    waiting: 1,
                },
                workers: 1,
            }],
            workers: vec![worker("w-1", RecentRates::default())],
            gateways: vec![GatewayHeartbeat {
                name: "gw".into(),
                pid: 9,
                listen: "127.0.0.1:50051".into(),
                sessions: 2,
                candidates_in_flight: 16,
                version: "0.1.0".into(),
                started_at: 1000,
                sent_at: 1061,
                interval_secs: 5.0,
            }],
            throughput: Throughput::default(),
            monitors_over: Vec::new(),
        };
        let text = render(&snapshot);
        assert!(
            text.contains("jobs stream RF_JOBS: 3 job(s) stored (2.0 KiB), 1 consumer(s)"),
            "{text}"
        );
        assert!(text.contains("rf-workers-default"), "{text}");
        assert!(text.contains("rm,judge"), "{text}");
        assert!(text.contains("1m1s"), "{text}");
        assert!(text.contains("127.0.0.1:50051"), "{text}");
        assert!(
            text.contains("- of candidates FAILED, - of job attempts retried"),
            "{text}"
        );
        assert!(!text.contains("reward-hacking"), "no monitors sent: {text}");
    }

    #[test]
    fn monitors_over_their_threshold_are_marked_and_listed() {
        use rewardfleet_queue::jetstream::{
            CanaryDrift, MonitorScope, MonitorStatistic, MonitorSummary,
        };
        let scope = |session: Option<&str>, value: f64, over: bool| MonitorScope {
            profile: "policy".into(),
            session: session.map(Into::into),
            samples: 120,
            statistics: vec![MonitorStatistic {
                name: "length_correlation".into(),
                value,
                threshold: 0.5,
                over,
            }],
        };
        let mut w = worker("w-1", RecentRates::default());
        w.monitor = Some(MonitorSummary {
            profiles: vec![scope(None, 0.31, false)],
            sessions: vec![scope(Some("gaming"), 0.97, true)],
            canaries: vec![CanaryDrift {
                profile: "policy".into(),
                judge: "judge".into(),
                baseline: 0.5,
                mean: 0.75,
                drift: 0.25,
                threshold: 0.1,
                over: true,
                runs: 4,
            }],
        });
        let text = monitors(std::slice::from_ref(&w));
        assert!(text.contains("LENGTH_CORRELATION"), "{text}");
        assert!(text.contains("0.310\n"), "{text}");
        assert!(text.contains("gaming"), "{text}");
        assert!(text.contains("0.970!"), "{text}");
        assert!(text.contains("+0.250!"), "{text}");
        let over = MonitorOver::of(&[w]);
        assert_eq!(
            over,
            [
                MonitorOver {
                    worker: "w-1".into(),
                    profile: "policy".into(),
                    session: Some("gaming".into()),
                    statistic: "length_correlation".into(),
                },
                MonitorOver {
                    worker: "w-1".into(),
                    profile: "policy".into(),
                    session: None,
                    statistic: "canary_drift:judge".into(),
                },
            ]
        );
    }

    #[test]
    fn ages_and_sizes_read_well() {
        assert_eq!(age(100, 95), "5s");
        assert_eq!(age(100, 200), "0s");
        assert_eq!(age(4000, 0), "1h6m");
        assert_eq!(bytes(10), "10 B");
        assert_eq!(bytes(3 * 1_048_576), "3.0 MiB");
    }
}
