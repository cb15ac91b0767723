//! Job and session-record decoding from NATS: any message (headers and payload, written as on
//! the wire: `NATS/1.0\r\n`, `Name: value` lines, a blank line, the payload) is a job, a record
//! entry of the kind its headers announce, or a decode error; what decodes encodes and decodes
//! back to itself, and a trace context read from the headers survives the next hop.

#![no_main]

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Once;

use async_nats::HeaderMap;
use async_nats::header::{HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use opentelemetry::trace::TraceContextExt;
use prost::Message;
use rewardfleet_core::{Job, JobAccepted, JobResult, Reward};
use rewardfleet_queue::SessionEvent;
use rewardfleet_queue::jetstream::{
    ENTRY_ACCEPTED, ENTRY_HEADER, decode_job, decode_session_event,
};
use rewardfleet_telemetry::TraceContext;

/// The W3C propagator, as the binaries install it.
static PROPAGATOR: Once = Once::new();

/// Splits a message into its headers (the valid ones; `None` without a header block) and its
/// payload.
fn message(data: &[u8]) -> (Option<HeaderMap>, &[u8]) {
    let Some(rest) = data.strip_prefix(b"NATS/1.0") else {
        return (None, data);
    };
    let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") else {
        return (None, data);
    };
    let mut headers = HeaderMap::new();
    for line in String::from_utf8_lossy(&rest[..end]).split("\r\n") {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_str(name.trim()),
            HeaderValue::from_str(value.trim()),
        ) {
            headers.append(name, value);
        }
    }
    (Some(headers), &rest[end + 4..])
}

/// The trace context means the same span context after being written out and read again.
fn survives_a_hop(trace: &TraceContext) {
    for (name, _) in trace.fields() {
        assert_eq!(name, name.to_ascii_lowercase(), "fields are kept lowercase");
    }
    let cx = trace.to_context();
    let span = cx.span().span_context().clone();
    if !span.is_valid() {
        return;
    }
    let mut fields = HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut fields));
    let again = TraceContext::from_fields(fields.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    assert_eq!(again.to_context().span().span_context(), &span);
}

fn has_nan(rewards: &[Reward]) -> bool {
    rewards.iter().any(|r| {
        r.value.is_nan()
            || r.components.values().any(|v| v.is_nan())
            || r.timing.is_some_and(|t| {
                t.queue_ms.is_nan() || t.scoring_ms.is_nan() || t.total_ms.is_nan()
            })
    })
}

fuzz_target!(|data: &[u8]| {
    PROPAGATOR.call_once(|| {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
    });
    let (headers, payload) = message(data);
    let headers = headers.as_ref();

    if let Ok((job, trace)) = decode_job(headers, payload) {
        assert_eq!(
            Job::decode(job.encode_to_vec().as_slice()).as_ref(),
            Ok(&job)
        );
        survives_a_hop(&trace);
    }

    let accepted = headers
        .and_then(|h| h.get(ENTRY_HEADER))
        .is_some_and(|v| v.as_str() == ENTRY_ACCEPTED);
    match decode_session_event(headers, payload) {
        Ok(SessionEvent::Accepted(entry)) => {
            assert!(accepted, "a ledger entry is marked as one");
            let again = JobAccepted::decode(entry.encode_to_vec().as_slice());
            assert_eq!(again.as_ref(), Ok(&entry));
        }
        Ok(SessionEvent::Result(result, trace)) => {
            assert!(!accepted, "a marked entry is read as a ledger entry");
            let again = JobResult::decode(result.encode_to_vec().as_slice())
                .expect("an encoded result decodes");
            if !has_nan(&result.rewards) {
                assert_eq!(again, result);
            }
            assert_eq!(again.encode_to_vec().len(), result.encoded_len());
            survives_a_hop(&trace);
        }
        Ok(SessionEvent::CaughtUp) => panic!("a message is never the end of a replay"),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
