//! Input limits and the checks that enforce them, each error naming its field and its limit.
//!
//! `[limits]` is a section of the configuration; [`crate::config`] checks the limits' own values
//! and depends on this module, never the other way round.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::Candidate;

/// Limits on what a trainer may send; every one is enforced with an error that names it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Candidates in one batch, at most.
    pub max_batch_candidates: usize,
    /// Candidates sharing one group_id in a batch, at most (a group is scored by one worker).
    pub max_group_size: usize,
    /// Bytes of one response, at most.
    pub max_response_bytes: usize,
    /// Messages in one prompt, at most.
    pub max_prompt_messages: usize,
    /// Bytes of one prompt (all messages), at most.
    pub max_prompt_bytes: usize,
    /// Bytes of one reference, at most.
    pub max_reference_bytes: usize,
    /// Bytes of a candidate id or group id, at most.
    pub max_id_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_batch_candidates: 4096,
            max_group_size: 64,
            max_response_bytes: 64 * 1024,
            max_prompt_messages: 64,
            max_prompt_bytes: 128 * 1024,
            max_reference_bytes: 64 * 1024,
            max_id_bytes: 256,
        }
    }
}

impl Limits {
    /// Checks what a whole batch must get right: its size, ids and group sizes. A failure rejects
    /// the batch (the caller's bug), with the field and the limit named.
    ///
    /// # Errors
    /// The first problem found, as an [`InputError`].
    pub fn check_batch<'a>(
        &self,
        candidates: &'a [Candidate],
        seen: &mut HashSet<String>,
    ) -> Result<(), InputError> {
        if candidates.is_empty() {
            return Err(InputError::new(
                "candidates",
                "a batch needs at least one candidate",
            ));
        }
        if candidates.len() > self.max_batch_candidates {
            return Err(InputError::new(
                "candidates",
                format!(
                    "{} candidates in one batch; limit max_batch_candidates = {}",
                    candidates.len(),
                    self.max_batch_candidates
                ),
            ));
        }
        let mut batch_ids: HashSet<&'a str> = HashSet::with_capacity(candidates.len());
        let mut groups: std::collections::HashMap<&'a str, usize> = Default::default();
        for (i, c) in candidates.iter().enumerate() {
            if c.id.is_empty() {
                return Err(InputError::new(
                    format!("candidates[{i}].id"),
                    "must not be empty",
                ));
            }
            if c.id.len() > self.max_id_bytes {
                return Err(InputError::new(
                    format!("candidates[{i}].id"),
                    format!(
                        "{} bytes; limit max_id_bytes = {}",
                        c.id.len(),
                        self.max_id_bytes
                    ),
                ));
            }
            if c.group_id.len() > self.max_id_bytes {
                return Err(InputError::new(
                    format!("candidates[{i}].group_id"),
                    format!(
                        "{} bytes; limit max_id_bytes = {}",
                        c.group_id.len(),
                        self.max_id_bytes
                    ),
                ));
            }
            if !batch_ids.insert(&c.id) || seen.contains(&c.id) {
                return Err(InputError::new(
                    format!("candidates[{i}].id"),
                    format!(
                        "{:?} was already submitted in this session; ids must be unique",
                        c.id
                    ),
                ));
            }
            if !c.group_id.is_empty() {
                let n = groups.entry(&c.group_id).or_default();
                *n += 1;
                if *n > self.max_group_size {
                    return Err(InputError::new(
                        format!("candidates[{i}].group_id"),
                        format!(
                            "group {:?} has more than {} candidates; limit max_group_size = {}",
                            c.group_id, self.max_group_size, self.max_group_size
                        ),
                    ));
                }
            }
        }
        seen.extend(batch_ids.into_iter().map(str::to_owned));
        Ok(())
    }

    /// Checks one candidate's content. A failure gives that candidate a FAILED reward; the rest of
    /// its batch is scored.
    ///
    /// # Errors
    /// The first problem found, naming the field and the limit.
    pub fn check_candidate(&self, c: &Candidate) -> Result<(), InputError> {
        if c.response.len() > self.max_response_bytes {
            return Err(InputError::new(
                "response",
                format!(
                    "{} bytes; limit max_response_bytes = {}",
                    c.response.len(),
                    self.max_response_bytes
                ),
            ));
        }
        if c.prompt.len() > self.max_prompt_messages {
            return Err(InputError::new(
                "prompt",
                format!(
                    "{} messages; limit max_prompt_messages = {}",
                    c.prompt.len(),
                    self.max_prompt_messages
                ),
            ));
        }
        let prompt_bytes: usize = c
            .prompt
            .iter()
            .map(|m| m.content.len() + m.role.len())
            .sum();
        if prompt_bytes > self.max_prompt_bytes {
            return Err(InputError::new(
                "prompt",
                format!(
                    "{prompt_bytes} bytes; limit max_prompt_bytes = {}",
                    self.max_prompt_bytes
                ),
            ));
        }
        for (i, m) in c.prompt.iter().enumerate() {
            if !matches!(
                m.role.as_str(),
                "system" | "user" | "assistant" | "tool" | "developer"
            ) {
                return Err(InputError::new(
                    format!("prompt[{i}].role"),
                    format!(
                        "{:?} is not a chat role; use system, user, assistant, tool or developer",
                        m.role
                    ),
                ));
            }
        }
        if let Some(r) = &c.reference
            && r.len() > self.max_reference_bytes
        {
            return Err(InputError::new(
                "reference",
                format!(
                    "{} bytes; limit max_reference_bytes = {}",
                    r.len(),
                    self.max_reference_bytes
                ),
            ));
        }
        Ok(())
    }
}

/// Input that breaks a rule, with the field it concerns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InputError {
    /// The field, e.g. `candidates[3].id` or `response`.
    pub field: String,
    /// What is wrong, with the limit where one applies.
    pub message: String,
}

impl InputError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}
