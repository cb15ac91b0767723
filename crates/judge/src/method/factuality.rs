//! The factuality method (FActScore style): the judge splits a response into atomic claims, then
//! verifies each claim against the candidate's `reference`; the value is the supported fraction,
//! optionally with FActScore's length penalty. Every call goes through [`Judge::ask`], so claims
//! and verdicts are cached like any judgement.
//!
//! What the value rests on travels in the reward's flags: `factuality_supported=S/N` (S of the N
//! claims verified were supported) and `factuality_abstained` (the response declined to answer;
//! it has no claims and gets the component's `abstain_value`). `rewardfleet arena --metric
//! factuality` reads them back with [`parse_supported_flag`].

use futures::future::join_all;
use rewardfleet_core::scorer::Outcome;
use rewardfleet_core::{Candidate, FailureReason, Score, ScoreContext, ScoreError};
use serde_json::{Value, json};

use super::{JudgeScorer, prompt};
use crate::client::Completion;
use crate::injection::{Screened, neutralise};
use crate::judge::Judge;
use crate::verdict::last_json_object;

/// Flag: the response abstained (declined to answer); it has no claims to verify.
pub const ABSTAINED_FLAG: &str = "factuality_abstained";
/// Prefix of the flag `factuality_supported=S/N`.
pub const SUPPORTED_FLAG_PREFIX: &str = "factuality_supported=";
/// Flag: the response had more claims than `max_claims`; only the first were verified.
pub const TRUNCATED_FLAG: &str = "factuality_claims_truncated";

/// Template versions (part of the cache key): bump with the prompts below.
const SPLIT_TEMPLATE: [&str; 2] = ["factuality-claims/v1", "factuality-claims/v1/strict"];
const VERIFY_TEMPLATE: [&str; 2] = ["factuality-verify/v1", "factuality-verify/v1/strict"];

/// The `(supported, claims)` of a `factuality_supported=S/N` flag.
pub fn parse_supported_flag(flag: &str) -> Option<(usize, usize)> {
    let (s, n) = flag.strip_prefix(SUPPORTED_FLAG_PREFIX)?.split_once('/')?;
    Some((s.parse().ok()?, n.parse().ok()?))
}

/// What the claim-splitting call returned.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Claims {
    pub(crate) claims: Vec<String>,
    pub(crate) abstained: bool,
}

/// Reads `{"claims": [..], "abstained": bool}`.
pub(crate) fn parse_claims(text: &str) -> Result<Claims, String> {
    let o = last_json_object(text).ok_or("no JSON object with `claims`")?;
    let claims = match o.get("claims") {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str())
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
        _ => return Err("`claims` is not a list of strings".into()),
    };
    let abstained = o.get("abstained").and_then(Value::as_bool).unwrap_or(false);
    Ok(Claims { claims, abstained })
}

/// Reads `{"supported": bool}`.
pub(crate) fn parse_supported(text: &str) -> Result<bool, String> {
    match last_json_object(text).and_then(|o| o.get("supported").cloned()) {
        Some(Value::Bool(b)) => Ok(b),
        Some(Value::String(s)) if matches!(s.to_lowercase().as_str(), "true" | "yes") => Ok(true),
        Some(Value::String(s)) if matches!(s.to_lowercase().as_str(), "false" | "no") => Ok(false),
        _ => Err("no `supported` true or false in the answer".into()),
    }
}

fn split_prompt(conversation: &str, response: &str) -> String {
    format!(
        "# Material\n<conversation>\n{conversation}\n</conversation>\n\n<response>\n{response}\n</response>\n\n# Task\nSplit the response in the response block into atomic claims: short, self-contained statements of fact, each checkable on its own (resolve pronouns; leave out opinions, questions and instructions). If the response declines to answer or says it does not know, it abstains: give no claims and set abstained to true.\nAnswer with one JSON object and nothing else: {{\"claims\": [\"<claim>\", ...], \"abstained\": true or false}}"
    )
}

fn verify_prompt(reference: &str, claim: &str) -> String {
    format!(
        "# Material\n<reference>\n{reference}\n</reference>\n\n<claim>\n{claim}\n</claim>\n\n# Task\nDecide whether the claim in the claim block is supported by the reference in the reference block: supported when the reference states it or it follows directly from the reference; not supported when the reference contradicts it or says nothing about it.\nAnswer with one JSON object and nothing else: {{\"reasoning\": \"<brief justification>\", \"supported\": true or false}}"
    )
}

fn claims_schema() -> Value {
    json!({"type": "json_schema", "json_schema": {"name": "claims", "strict": true, "schema": {
        "type": "object", "additionalProperties": false, "required": ["claims", "abstained"],
        "properties": {"claims": {"type": "array", "items": {"type": "string"}}, "abstained": {"type": "boolean"}}
    }}})
}

fn supported_schema() -> Value {
    json!({"type": "json_schema", "json_schema": {"name": "verdict", "strict": true, "schema": {
        "type": "object", "additionalProperties": false, "required": ["reasoning", "supported"],
        "properties": {"reasoning": {"type": "string"}, "supported": {"type": "boolean"}}
    }}})
}

impl JudgeScorer {
    /// Asks `user` (a parse failure is asked again once, stricter) and reads it with `read`.
    async fn ask_read<T>(
        &self,
        judge: &Judge,
        ctx: &ScoreContext,
        templates: [&str; 2],
        user: String,
        schema: Value,
        read: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, ScoreError> {
        let mut last = String::new();
        for (strict, template) in [(false, templates[0]), (true, templates[1])] {
            let req = prompt::request(judge, user.clone(), strict, Some(schema.clone()), false);
            let completion: Completion = judge
                .ask(ctx, template, req, |c| read(&c.content).is_ok())
                .await?;
            match read(&completion.content) {
                Ok(v) => return Ok(v),
                Err(e) => last = e,
            }
        }
        Err(ScoreError::permanent(
            FailureReason::JudgeParseError,
            format!(
                "judge {:?} gave no readable verdict twice: {last}",
                judge.name()
            ),
        ))
    }

    /// One candidate's factuality with one judge.
    pub(super) async fn factuality(
        &self,
        judge: &Judge,
        ctx: &ScoreContext,
        c: &Candidate,
        response: &Screened,
    ) -> Outcome {
        let Some(reference) = c.reference.as_deref() else {
            return Err(ScoreError::permanent(
                FailureReason::MissingReference,
                format!(
                    "candidate {:?} has no reference, which the factuality method verifies claims against",
                    c.id
                ),
            ));
        };
        let f = &self.spec.factuality;
        let split = split_prompt(&prompt::conversation(c), &response.text);
        let found = self
            .ask_read(
                judge,
                ctx,
                SPLIT_TEMPLATE,
                split,
                claims_schema(),
                parse_claims,
            )
            .await?;
        if found.abstained || found.claims.is_empty() {
            return Ok(Score::new(f.abstain_value).with_flag(ABSTAINED_FLAG));
        }
        let truncated = found.claims.len() > f.max_claims;
        let reference = neutralise(reference);
        let verdicts = join_all(found.claims.iter().take(f.max_claims).map(|claim| {
            let user = verify_prompt(&reference, &neutralise(claim));
            self.ask_read(
                judge,
                ctx,
                VERIFY_TEMPLATE,
                user,
                supported_schema(),
                parse_supported,
            )
        }))
        .await;
        let mut supported = 0;
        for v in &verdicts {
            if *v.as_ref().map_err(Clone::clone)? {
                supported += 1;
            }
        }
        let n = verdicts.len();
        let precision = supported as f64 / n as f64;
        let value = match f.gamma {
            Some(gamma) if (n as f64) < gamma => precision * (1.0 - gamma / n as f64).exp(),
            _ => precision,
        };
        let mut score =
            Score::new(value).with_flag(format!("{SUPPORTED_FLAG_PREFIX}{supported}/{n}"));
        if truncated {
            score = score.with_flag(TRUNCATED_FLAG);
        }
        Ok(score)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_claims_and_verdicts() {
        let c = parse_claims("Sure:\n```json\n{\"claims\": [\"Paris is in France.\", \" \"], \"abstained\": false}\n```")
            .expect("claims");
        assert_eq!(c.claims, ["Paris is in France."]);
        assert!(!c.abstained);
        let c = parse_claims("{\"claims\": [], \"abstained\": true}").expect("claims");
        assert!(c.abstained && c.claims.is_empty());
        assert!(parse_claims("no json").is_err());
        assert!(parse_claims("{\"claims\": \"one\"}").is_err());
        assert_eq!(
            parse_supported("{\"reasoning\": \"x\", \"supported\": true}"),
            Ok(true)
        );
        assert_eq!(parse_supported("{\"supported\": \"no\"}"), Ok(false));
        assert!(parse_supported("{\"correct\": true}").is_err());
        assert_eq!(
            parse_supported_flag("factuality_supported=4/5"),
            Some((4, 5))
        );
        assert_eq!(parse_supported_flag("position_inconsistent"), None);
    }
}
