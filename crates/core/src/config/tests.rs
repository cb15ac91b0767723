use super::*;

const GOOD: &str = r#"
[gateway]
listen = "127.0.0.1:0"

[profile.format]
components = [
  { rule = "exact_match", weight = 1.0 },
  { rule = "max_chars", limit = 100, gate = true },
]
normalize = "group_zscore"
"#;

#[test]
fn a_good_config_parses_with_defaults() {
    let c = Config::from_toml(GOOD).unwrap();
    assert!(c.is_embedded());
    assert_eq!(c.profile["format"].components.len(), 2);
    assert_eq!(c.profile["format"].components[1].effective_weight(), 0.0);
    assert_eq!(
        c.profile["format"].components[1].params["limit"].as_integer(),
        Some(100)
    );
    assert_eq!(c.worker.max_deliver, 5);
}

#[test]
fn every_unknown_key_is_reported_with_its_path() {
    let text = format!("{GOOD}\n[worker]\nmax_concurent_jobs = 3\n[limits]\nmax_foo = 1\n");
    let ConfigError::Invalid(problems) = Config::parse(&text).unwrap_err() else {
        panic!("expected unknown keys");
    };
    let mut paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    paths.sort();
    assert_eq!(paths, ["limits.max_foo", "worker.max_concurent_jobs"]);
}

#[test]
fn semantic_problems_are_all_reported() {
    let text = r#"
[nats]
url = "nats://x:4222"
duplicate_window = "10s"
heartbeat_interval = "500ms"
jobs_max_messages = 0
jobs_max_bytes = 1000

[gateway]
max_in_flight = 0
default_profile = "nope"
handshake_timeout = "0s"

[profile.p]
components = [
  { scorer = "rm", weight = -1.0 },
  { rule = "regex", scorer = "judge" },
]
normalize = "clip"
"#;
    let problems = Config::parse(text).unwrap().problems();
    let rendered: Vec<String> = problems.iter().map(ToString::to_string).collect();
    let has = |needle: &str| rendered.iter().any(|p| p.contains(needle));
    assert!(has("nats.duplicate_window"), "{rendered:#?}");
    assert!(
        has("nats.heartbeat_interval: must be at least 1s"),
        "{rendered:#?}"
    );
    assert!(
        has("nats.jobs_max_messages: must be at least 1"),
        "{rendered:#?}"
    );
    assert!(has("nats.jobs_max_bytes: must hold"), "{rendered:#?}");
    assert!(
        has("gateway.max_in_flight: must be at least 1"),
        "{rendered:#?}"
    );
    assert!(
        has("gateway.handshake_timeout: must be at least 1s"),
        "{rendered:#?}"
    );
    assert!(has(
        "gateway.default_profile: unknown profile \"nope\"; known: p"
    ));
    assert!(has("profile.p.components[0].scorer: unknown scorer \"rm\""));
    assert!(has("profile.p.components[0].weight: -1 is not allowed"));
    assert!(has("profile.p.components[1]: give either"));
    assert!(has(
        "profile.p.clip: normalize = \"clip\" needs clip = [min, max]"
    ));
}

#[test]
fn syntax_errors_say_where() {
    let err = Config::parse("[gateway]\nmax_in_flight = \"many\"\n").unwrap_err();
    let text = err.to_string();
    assert!(text.contains("max_in_flight"), "{text}");
    assert!(text.contains("line 2"), "{text}");
}

#[test]
fn judge_debug_never_shows_header_values() {
    let text = r#"
[[judge]]
name = "j"
base_url = "http://127.0.0.1:1/v1"
model = "m"
api_key_env = "JUDGE_KEY"
headers = { "X-Secret" = "hunter2" }

[profile.p]
components = [{ scorer = "j" }]
"#;
    let c = Config::from_toml(text).unwrap();
    let debug = format!("{:?}", c.judge[0]);
    assert!(!debug.contains("hunter2"), "{debug}");
}

#[test]
fn a_fallback_is_a_name_that_inherits_or_a_table_with_its_own_parameters() {
    let text = r#"
[[judge]]
name = "primary"
base_url = "http://127.0.0.1:1/v1"
model = "m"

[[judge]]
name = "backup"
base_url = "http://127.0.0.1:2/v1"
model = "m"

[profile.p]
components = [
  { scorer = "primary", rubric = "r.md", score_range = [0, 5], panel = ["backup"], aggregate = "min", fallback = "backup" },
  { scorer = "primary", rubric = "r.md", fallback = { scorer = "backup", method = "reference" }, name = "own" },
  { rule = "exact_match", fallback = "backup" },
]
"#;
    let c = Config::from_toml(text).unwrap();
    let is_judge = |n: &str| c.judge.iter().any(|j| j.name == n);
    let components = &c.profile["p"].components;

    // By name, behind a judge: the same judgement (panel keys aside), asked of `backup`.
    let inherited = components[0].fallback_component(is_judge).unwrap();
    assert_eq!(inherited.scorer.as_deref(), Some("backup"));
    let mut keys: Vec<&str> = inherited.params.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["rubric", "score_range"]);
    assert!(inherited.fallback.is_none());

    // As a table: its own parameters only.
    assert!(components[1].fallback_is_table());
    let own = components[1].fallback_component(is_judge).unwrap();
    assert_eq!(own.scorer.as_deref(), Some("backup"));
    assert_eq!(
        own.params.keys().collect::<Vec<_>>(),
        [&"method".to_owned()]
    );

    // By name, behind a rule: nothing to inherit.
    let bare = components[2].fallback_component(is_judge).unwrap();
    assert!(bare.params.is_empty());
    assert!(
        components[0].params.contains_key("panel"),
        "the primary keeps its own"
    );

    // Both forms survive a round trip through TOML.
    let again: Config = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
    let again = &again.profile["p"].components;
    assert!(!again[0].fallback_is_table() && again[1].fallback_is_table());
    assert_eq!(again[1].fallback_params, components[1].fallback_params);
}

#[test]
fn an_unknown_fallback_is_reported_where_it_is_written() {
    let text = r#"
[profile.p]
components = [
  { rule = "exact_match", fallback = "nobody" },
  { rule = "exact_match", fallback = { scorer = "nobody" }, name = "second" },
]
"#;
    let problems = Config::parse(text).unwrap().problems();
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    assert!(
        paths.contains(&"profile.p.components[0].fallback"),
        "{problems:?}"
    );
    assert!(
        paths.contains(&"profile.p.components[1].fallback.scorer"),
        "{problems:?}"
    );
    let err = Config::parse("[profile.p]\ncomponents = [{ rule = \"x\", fallback = 3 }]\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("a model or judge name, or a table"), "{err}");
}

#[test]
fn tenants_are_checked_with_their_key_paths() {
    let text = format!(
        "{GOOD}\n[[tenant]]\nname = \"a\"\ntoken_env = \"A\"\nprofiles = [\"format\"]\n\n\
         [[tenant]]\nname = \"a\"\nprofiles = [\"nope\"]\nmax_sessions = 0\n\n\
         [[tenant]]\nname = \"c\"\ntoken_env = \"C\"\ntoken_file = \"c.token\"\ncandidates_per_second = 0\n\n\
         [[tenant]]\nname = \"d\"\ntoken_env = \"A\"\n\n\
         [[tenant]]\nname = \"e\"\ntoken_file = \"/nonexistent/e.token\"\n"
    );
    let Err(ConfigError::Invalid(problems)) = Config::from_toml(&text) else {
        panic!("expected problems");
    };
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    for path in [
        "tenant[1].name",
        "tenant[1].token_env",
        "tenant[1].profiles[0]",
        "tenant[1].max_sessions",
        "tenant[2].token_file",
        "tenant[2].candidates_per_second",
        "tenant[3].token_env",
        "tenant[4].token_file",
    ] {
        assert!(paths.contains(&path), "{path} missing from {paths:?}");
    }
    assert!(
        !paths.iter().any(|p| p.starts_with("tenant[0]")),
        "{paths:?}"
    );
}

#[test]
fn a_tenant_named_by_certificate_needs_the_client_ca_and_a_subject_of_its_own() {
    let text = r#"
[[tenant]]
name = "a"
tls_subject = "trainer"

[[tenant]]
name = "b"
tls_subject = "trainer"

[[tenant]]
name = "c"
"#;
    let problems = Config::parse(text).unwrap().problems();
    let rendered: Vec<String> = problems.iter().map(ToString::to_string).collect();
    let has = |needle: &str| rendered.iter().any(|p| p.contains(needle));
    assert!(
        has("tenant[0].tls_subject: needs gateway.tls_client_ca"),
        "{rendered:#?}"
    );
    assert!(
        has("tenant[1].tls_subject: the same subject as tenant[0]"),
        "{rendered:#?}"
    );
    assert!(
        has("tenant[2].token_env: a tenant needs an identity"),
        "{rendered:#?}"
    );
    assert!(!has("tenant[0].token_env"), "{rendered:#?}");
}

/// Found by the `config` fuzz target: an empty key at the top named no key.
#[test]
fn an_empty_unknown_key_is_named() {
    let Err(ConfigError::Invalid(problems)) = Config::parse("''=7#") else {
        panic!("an unknown key is a problem");
    };
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].path, "\"\"");
}
