//! The JSONL input parser (`rewardfleet score`, `rewardfleet arena`): any bytes give a candidate
//! or a line error naming the line; a candidate is what its line says, and writing it back as a
//! line reads back the same candidate.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rewardfleet_core::Candidate;
use rewardfleet_core::jsonl::parse_line;
use serde_json::{Value, json};

const LINE: usize = 7;

fuzz_target!(|data: &[u8]| {
    match parse_line(LINE, data) {
        Ok(c) => {
            assert!(!c.id.is_empty(), "a candidate has an id");
            let value: Value = serde_json::from_slice(data).expect("a candidate's line is JSON");
            assert_eq!(value["id"].as_str(), Some(c.id.as_str()));
            assert_eq!(value["response"].as_str(), Some(c.response.as_str()));
            assert_eq!(
                value.get("reference").and_then(Value::as_str),
                c.reference.as_deref()
            );
            if let Some(prompt) = value.get("prompt").and_then(Value::as_str) {
                assert_eq!(c.prompt.len(), 1);
                assert_eq!(
                    (c.prompt[0].role.as_str(), c.prompt[0].content.as_str()),
                    ("user", prompt)
                );
            }
            let again =
                parse_line(LINE, written(&c).as_bytes()).expect("a written candidate reads back");
            assert_eq!(again, c);
        }
        Err(e) => {
            assert_eq!(e.line, LINE);
            assert!(!e.message.is_empty());
            assert!(e.to_string().starts_with("line 7: "), "{e}");
        }
    }
});

/// The candidate as an input line, with `messages` for its prompt.
fn written(c: &Candidate) -> String {
    let messages: Vec<Value> = c
        .prompt
        .iter()
        .map(|m| json!({ "role": m.role, "content": m.content }))
        .collect();
    json!({
        "id": c.id,
        "group_id": c.group_id,
        "messages": messages,
        "response": c.response,
        "reference": c.reference,
        "labels": c.labels,
    })
    .to_string()
}
