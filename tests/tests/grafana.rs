//! The Grafana dashboard in `deploy/grafana/rewardfleet.json`: it imports (ids, grid, targets,
//! datasource, variables, queries that parse), covers the six sections of the fleet's health and
//! every metric family the fleet exports; and the checks catch a broken copy, naming each defect.
//! That every metric name it queries is really exported is checked in `observability.rs`.

#![allow(clippy::unwrap_used)]

mod support;

use serde_json::{Value, json};
use support::grafana::{all_panels, dashboard, metric_names, problems, row_titles};

const SECTIONS: &[&str] = &[
    "Throughput and status",
    "Latency per stage",
    "Judge health",
    "Queue lag",
    "Batch efficiency",
    "Reward hacking",
];

/// Every metric family the fleet exports (`crates/telemetry/src/metrics.rs`), in its
/// Prometheus form.
const FAMILIES: &[&str] = &[
    "rewardfleet_rewards_total",
    "rewardfleet_reward_latency_seconds",
    "rewardfleet_queue_wait_seconds",
    "rewardfleet_sessions_open",
    "rewardfleet_candidates_in_flight",
    "rewardfleet_window_stalls_total",
    "rewardfleet_candidates_scored_total",
    "rewardfleet_job_duration_seconds",
    "rewardfleet_jobs_redelivered_total",
    "rewardfleet_jobs_dead_lettered_total",
    "rewardfleet_consumer_pending",
    "rewardfleet_consumer_ack_pending",
    "rewardfleet_rule_duration_seconds",
    "rewardfleet_tokenize_duration_seconds",
    "rewardfleet_model_forward_duration_seconds",
    "rewardfleet_model_batch_size",
    "rewardfleet_model_batch_tokens",
    "rewardfleet_model_padding_ratio",
    "rewardfleet_judge_requests_total",
    "rewardfleet_judge_request_duration_seconds",
    "rewardfleet_judge_tokens_total",
    "rewardfleet_judge_circuit_state",
    "rewardfleet_cache_lookups_total",
    "rewardfleet_monitor",
    "rewardfleet_monitor_session",
];

/// The panel whose title is `title`, wherever it is.
fn panel_mut<'a>(dashboard: &'a mut Value, title: &str) -> &'a mut Value {
    dashboard["panels"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|p| p["title"] == title)
        .unwrap_or_else(|| panic!("no panel {title:?}"))
}

#[test]
fn the_shipped_dashboard_has_no_problems_and_covers_every_section() {
    let d = dashboard();
    let found = problems(&d);
    assert!(found.is_empty(), "problems:\n{}", found.join("\n"));

    assert_eq!(d["uid"], "rewardfleet");
    assert_eq!(d["title"], "rewardfleet");
    assert_eq!(d["refresh"], "10s");
    assert_eq!(d["time"], json!({"from": "now-1h", "to": "now"}));
    assert!(d["schemaVersion"].as_u64().unwrap() >= 39);

    assert_eq!(row_titles(&d), SECTIONS, "rows, in order");
    let titles: Vec<&str> = all_panels(&d)
        .into_iter()
        .filter(|p| p["type"] != "row")
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    for wanted in [
        "Rewards/s by status",
        "Candidates scored/s by profile",
        "Failure ratio",
        "Sessions open",
        "Candidates in flight",
        "Window stalls/s",
        "End-to-end latency",
        "Queue wait",
        "Job scoring",
        "Tokenize",
        "Model forward",
        "Judge request",
        "Rule",
        "Judge requests/s by outcome",
        "Judge error ratio",
        "Judge circuit state",
        "Judge tokens/s",
        "Verdict cache hit ratio",
        "Consumer pending by pool",
        "Consumer ack pending by pool",
        "Jobs redelivered/s by pool",
        "Jobs dead-lettered/s by pool",
        "Model batch size",
        "Padded tokens per batch",
        "Mean padding ratio",
        "Model batches/s",
        "Reward-hacking monitors by profile",
        "Canary drift by judge",
        "Reward-hacking monitors by session",
    ] {
        assert!(
            titles.contains(&wanted),
            "no panel {wanted:?} in {titles:?}"
        );
    }

    // Every panel and target queries Prometheus through the variable.
    let by_variable = json!({"type": "prometheus", "uid": "${datasource}"});
    for panel in all_panels(&d).into_iter().filter(|p| p["type"] != "row") {
        assert_eq!(panel["datasource"], by_variable, "{}", panel["title"]);
        for target in panel["targets"].as_array().unwrap() {
            assert_eq!(target["datasource"], by_variable, "{}", panel["title"]);
        }
    }

    // The latency panels are in seconds with p50, p90 and p99.
    for title in [
        "End-to-end latency",
        "Queue wait",
        "Job scoring",
        "Tokenize",
        "Model forward",
        "Judge request",
        "Rule",
    ] {
        let panel = all_panels(&d)
            .into_iter()
            .find(|p| p["title"] == title)
            .unwrap();
        assert_eq!(panel["fieldConfig"]["defaults"]["unit"], "s", "{title}");
        let exprs: Vec<&str> = panel["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["expr"].as_str().unwrap())
            .collect();
        for q in ["0.5", "0.9", "0.99"] {
            assert!(
                exprs
                    .iter()
                    .any(|e| e.starts_with(&format!("histogram_quantile({q}, sum by (le) ("))),
                "{title}: no p{q} in {exprs:?}"
            );
        }
    }

    // The circuit state reads as words.
    let circuit = all_panels(&d)
        .into_iter()
        .find(|p| p["title"] == "Judge circuit state")
        .unwrap();
    let mappings = &circuit["fieldConfig"]["defaults"]["mappings"][0]["options"];
    assert_eq!(mappings["0"]["text"], "closed");
    assert_eq!(mappings["1"]["text"], "half-open");
    assert_eq!(mappings["2"]["text"], "open");
}

#[test]
fn the_dashboard_queries_every_metric_family() {
    let names = metric_names(&dashboard());
    for family in FAMILIES {
        let series = [
            family.to_string(),
            format!("{family}_bucket"),
            format!("{family}_sum"),
            format!("{family}_count"),
        ];
        assert!(
            series.iter().any(|s| names.contains(s)),
            "no panel queries {family}; the dashboard queries {names:?}"
        );
    }
    let unknown: Vec<&String> = names
        .iter()
        .filter(|n| {
            !FAMILIES.iter().any(|f| {
                *n == f
                    || ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| **n == format!("{f}{s}"))
            })
        })
        .collect();
    assert!(unknown.is_empty(), "not exported: {unknown:?}");
}

#[test]
fn a_broken_copy_is_caught_naming_each_defect() {
    let mut d = dashboard();

    // Two panels on the same spot.
    let place = panel_mut(&mut d, "Rewards/s by status")["gridPos"].clone();
    panel_mut(&mut d, "Failure ratio")["gridPos"] = place;
    // One id twice.
    let id = panel_mut(&mut d, "Queue wait")["id"].clone();
    panel_mut(&mut d, "Job scoring")["id"] = id.clone();
    // A variable nobody defined.
    let stalls = &mut panel_mut(&mut d, "Window stalls/s")["targets"][0]["expr"];
    *stalls = Value::String(
        stalls
            .as_str()
            .unwrap()
            .replace("instance=~\"$instance\"", "instance=~\"$foo\""),
    );
    // A parenthesis that never closes.
    let pending = &mut panel_mut(&mut d, "Consumer pending by pool")["targets"][0]["expr"];
    *pending = Value::String(format!("sum(({})", pending.as_str().unwrap()));
    // Off the right edge, a target without a refId and one without a datasource variable.
    panel_mut(&mut d, "Rule")["gridPos"]["x"] = json!(20);
    panel_mut(&mut d, "Judge tokens/s")["targets"][0]
        .as_object_mut()
        .unwrap()
        .remove("refId");
    panel_mut(&mut d, "Model batches/s")["datasource"] =
        json!({"type": "prometheus", "uid": "P1809F7CD0C75ACF3"});

    let found = problems(&d);
    let report = found.join("\n");
    let has = |needle: &str| found.iter().any(|p| p.contains(needle));
    let ids = |title: &str| {
        all_panels(&d)
            .into_iter()
            .find(|p| p["title"] == title)
            .unwrap()["id"]
            .clone()
    };

    assert!(
        has(&format!(
            "panel {} \"Rewards/s by status\": gridPos overlaps panel {} \"Failure ratio\"",
            ids("Rewards/s by status"),
            ids("Failure ratio")
        )),
        "overlap not named:\n{report}"
    );
    assert!(
        has(&format!("panel id {id} is used by 2 panels")),
        "duplicated id not named:\n{report}"
    );
    assert!(
        has("\"Window stalls/s\" target A: $foo is neither a template variable"),
        "undefined $foo not named:\n{report}"
    );
    assert!(
        has(
            "\"Consumer pending by pool\" target A: unbalanced parentheses in expr (`(` never closed)"
        ),
        "unbalanced parenthesis not named:\n{report}"
    );
    assert!(
        has("\"Rule\": gridPos missing or invalid"),
        "panel off the grid not named:\n{report}"
    );
    assert!(
        has("\"Judge tokens/s\" target #0: no refId"),
        "missing refId not named:\n{report}"
    );
    assert!(
        has("\"Model batches/s\": datasource is not the $datasource variable"),
        "fixed datasource not named:\n{report}"
    );
    assert_eq!(found.len(), 7, "one line per defect:\n{report}");

    // The dashboard-level checks.
    let mut bare = dashboard();
    let object = bare.as_object_mut().unwrap();
    object.remove("uid");
    object.remove("schemaVersion");
    object["templating"]["list"]
        .as_array_mut()
        .unwrap()
        .retain(|v| v["name"] != "datasource");
    let found = problems(&bare);
    for needle in [
        "dashboard: no uid",
        "dashboard: no schemaVersion",
        "no template variable $datasource",
    ] {
        assert!(
            found.iter().any(|p| p.contains(needle)),
            "{needle:?} not in:\n{}",
            found.join("\n")
        );
    }
}

#[test]
fn the_expression_helpers_read_promql() {
    use support::grafana::{unbalanced, used_variables};
    assert_eq!(unbalanced(r#"sum(rate(x{a=~"(b|c"}[5m]))"#), None);
    assert_eq!(
        unbalanced("sum(rate(x[5m])"),
        Some("`(` never closed".to_owned())
    );
    assert_eq!(
        unbalanced("sum(rate(x[5m)))"),
        Some("unexpected `)`".to_owned())
    );
    assert_eq!(
        used_variables(r#"rate(x{job=~"$job", i="${instance:regex}"}[$__rate_interval])"#),
        ["job", "instance", "__rate_interval"]
    );
    let d = json!({"panels": [{"type": "timeseries", "targets": [
        {"expr": "rate(rewardfleet_a_total[1m]) / xrewardfleet_b + rewardfleet_c_bucket"}
    ]}]});
    assert_eq!(
        metric_names(&d).into_iter().collect::<Vec<_>>(),
        ["rewardfleet_a_total", "rewardfleet_c_bucket"]
    );
}
