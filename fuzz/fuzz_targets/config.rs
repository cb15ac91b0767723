//! The configuration parser, as `rewardfleet check` runs it: any text is a syntax error, a list
//! of problems each naming its key, or a configuration whose every problem (its own values, then
//! what only the scorers see: rule parameters, judge methods, fallbacks) names its key.

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use rewardfleet_core::config::{Config, ConfigError, ConfigProblem};

/// `rewardfleet_scorers::check` builds judges' HTTP clients: it needs a Tokio runtime.
static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime")
});

fn named(problems: &[ConfigProblem]) {
    for p in problems {
        // Only an empty key (`"" = …`) is named by an empty path.
        assert!(
            !p.path.is_empty() || p.message.contains("``"),
            "a problem names its key: {p:?}"
        );
        assert!(!p.message.is_empty(), "a problem says what is wrong: {p:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Paths in the file are opened (certificates, schemas, CA bundles): not the machine's
    // devices or kernel files.
    if ["/dev", "/proc", "/sys"].iter().any(|p| text.contains(p)) {
        return;
    }
    let config = match Config::parse(text) {
        Ok(config) => config,
        Err(ConfigError::Syntax(message)) => {
            assert!(!message.is_empty());
            return;
        }
        Err(ConfigError::Invalid(problems)) => {
            assert!(!problems.is_empty(), "an invalid file has a problem");
            named(&problems);
            return;
        }
        Err(e) => panic!("parsing text reads no file: {e}"),
    };
    let problems = config.problems();
    named(&problems);
    assert_eq!(config.validate().is_ok(), problems.is_empty());
    if !problems.is_empty() {
        return;
    }
    let _runtime = RUNTIME.enter();
    named(&rewardfleet_scorers::check(&config));
});
