//! The judge verdict parser: whatever a judge answers, each reading gives a verdict or a
//! `VerdictError` with a message, and a score read is finite and inside the scale asked for.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use rewardfleet_judge::verdict::{
    last_json_object, parse_correct, parse_manipulation_attempt, parse_preference, parse_score,
};

/// The scales judges are configured with, and any other.
#[derive(Debug, Arbitrary)]
enum Scale {
    OneToTen,
    ZeroToOne,
    OneToFive,
    Any(f64, f64),
}

#[derive(Debug, Arbitrary)]
struct Input {
    scale: Scale,
    answer: String,
}

fuzz_target!(|input: Input| {
    let (min, max) = match input.scale {
        Scale::OneToTen => (1.0, 10.0),
        Scale::ZeroToOne => (0.0, 1.0),
        Scale::OneToFive => (1.0, 5.0),
        Scale::Any(min, max) => (min, max),
    };
    let text = input.answer.as_str();
    match parse_score(text, min, max) {
        Ok(score) => {
            assert!(score.is_finite(), "{score}");
            assert!(
                min <= score && score <= max,
                "{score} outside {min}..={max}"
            );
        }
        Err(e) => assert!(!e.0.is_empty()),
    }
    if let Err(e) = parse_preference(text) {
        assert!(!e.0.is_empty());
    }
    if let Err(e) = parse_correct(text) {
        assert!(!e.0.is_empty());
    }
    let _ = parse_manipulation_attempt(text);
    // A well-formed verdict after any prose is the one read, when the prose leaves no JSON
    // string or object open.
    if last_json_object(text).is_none() && !text.contains(['"', '{', '}', '\u{201C}', '\u{201D}']) {
        let answer = format!("{text}\n{{\"score\": 1, \"winner\": \"B\", \"correct\": false}}");
        assert_eq!(parse_score(&answer, 1.0, 10.0), Ok(1.0), "{answer:?}");
        assert_eq!(
            parse_preference(&answer),
            Ok(rewardfleet_judge::verdict::Preference::Second)
        );
        assert_eq!(parse_correct(&answer), Ok(false));
    }
});
