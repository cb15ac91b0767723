//! From a candidate to token ids: the prompt template and the tokenizer with its truncation.

use rewardfleet_core::FailureReason;
use std::path::Path;

use rewardfleet_core::config::{ModelConfig, TruncationSide};
use rewardfleet_core::{ChatMessage, ScoreError};
use tokenizers::Tokenizer;
use tokenizers::utils::truncation::{TruncationDirection, TruncationParams, TruncationStrategy};

use crate::TorchError;

/// Renders `template` with `{prompt}` (the conversation as `role: content` lines) and `{response}`.
pub fn render(template: &str, prompt: &[ChatMessage], response: &str) -> String {
    let mut out = String::with_capacity(template.len() + response.len() + 64);
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        if let Some(after) = tail.strip_prefix("{prompt}") {
            for (i, m) in prompt.iter().enumerate() {
                if i > 0 {
                    out.push('\n');
                }
                out.push_str(&m.role);
                out.push_str(": ");
                out.push_str(&m.content);
            }
            rest = after;
        } else if let Some(after) = tail.strip_prefix("{response}") {
            out.push_str(response);
            rest = after;
        } else {
            out.push('{');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// A model's tokenizer, set up for its `max_length` and truncation side, without padding
/// (the batcher pads).
#[derive(Clone)]
pub struct Encoder {
    tokenizer: Tokenizer,
    max_length: usize,
    truncate: bool,
    model: String,
    /// The id used for padding (the tokenizer's pad token, else 0); masked out anyway.
    pub pad_id: i64,
    /// Ids the tokenizer can produce: `0..vocab_size`.
    pub vocab_size: usize,
}

impl Encoder {
    /// Loads `tokenizer.json` for `cfg`.
    ///
    /// # Errors
    /// [`TorchError::MissingFile`] or [`TorchError::Tokenizer`].
    pub fn load(cfg: &ModelConfig, path: &Path) -> Result<Self, TorchError> {
        if !path.is_file() {
            return Err(TorchError::MissingFile {
                model: cfg.name.clone(),
                what: "tokenizer",
                path: path.to_owned(),
            });
        }
        let fail = |message: String| TorchError::Tokenizer {
            model: cfg.name.clone(),
            path: path.to_owned(),
            message,
        };
        let mut tokenizer = Tokenizer::from_file(path).map_err(|e| fail(e.to_string()))?;
        let pad_id = tokenizer
            .get_padding()
            .map(|p| i64::from(p.pad_id))
            .or_else(|| {
                ["[PAD]", "<pad>", "<|pad|>"]
                    .iter()
                    .find_map(|t| tokenizer.token_to_id(t))
                    .map(i64::from)
            })
            .unwrap_or(0);
        tokenizer.with_padding(None);
        let truncate = cfg.truncation_side != TruncationSide::None;
        let truncation = truncate.then_some(TruncationParams {
            direction: match cfg.truncation_side {
                TruncationSide::Right => TruncationDirection::Right,
                _ => TruncationDirection::Left,
            },
            max_length: cfg.max_length,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
        });
        tokenizer
            .with_truncation(truncation)
            .map_err(|e| fail(e.to_string()))?;
        let vocab_size = tokenizer.get_vocab_size(true);
        if vocab_size == 0 {
            return Err(fail("the vocabulary is empty".into()));
        }
        Ok(Self {
            tokenizer,
            max_length: cfg.max_length,
            truncate,
            model: cfg.name.clone(),
            pad_id,
            vocab_size,
        })
    }

    /// Token ids of `text` with the tokenizer's special tokens, truncated to `max_length`
    /// (or refused when truncation is off).
    ///
    /// # Errors
    /// `tokenizer_error`, `empty_input`, `input_too_long` (all permanent: the candidate fails alone).
    pub fn encode(&self, text: &str) -> Result<Vec<i64>, ScoreError> {
        let encoding = self.tokenizer.encode_fast(text, true).map_err(|e| {
            ScoreError::permanent(
                FailureReason::TokenizerError,
                format!("model {}: tokenizer failed: {e}", self.model),
            )
        })?;
        let ids = encoding.get_ids();
        if ids.is_empty() {
            return Err(ScoreError::permanent(
                FailureReason::EmptyInput,
                format!("model {}: the text has no tokens", self.model),
            ));
        }
        if !self.truncate && ids.len() > self.max_length {
            return Err(ScoreError::permanent(
                FailureReason::InputTooLong,
                format!(
                    "model {}: the input has {} tokens; the model takes at most {} (max_length; set truncation_side = \"left\" or \"right\" to truncate)",
                    self.model,
                    ids.len(),
                    self.max_length
                ),
            ));
        }
        Ok(ids.iter().map(|&i| i64::from(i)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }

    #[test]
    fn renders_prompt_and_response() {
        let p = [msg("system", "be brief"), msg("user", "2+2?")];
        assert_eq!(
            render("{prompt}\nassistant: {response}", &p, "4"),
            "system: be brief\nuser: 2+2?\nassistant: 4"
        );
        assert_eq!(render("{response}", &p, "4"), "4");
        assert_eq!(render("{x} {response}{", &[], "a"), "{x} a{");
    }
}
