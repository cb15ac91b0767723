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
    add_special_tokens: bool,
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
            add_special_tokens: cfg.add_special_tokens,
            model: cfg.name.clone(),
            pad_id,
            vocab_size,
        })
    }

    /// Token ids of `text`, with the tokenizer's special tokens unless the model's
    /// `add_special_tokens` is off, truncated to `max_length` (or refused when truncation is off).
    ///
    /// # Errors
    /// `tokenizer_error`, `empty_input`, `input_too_long` (all permanent: the candidate fails alone).
    pub fn encode(&self, text: &str) -> Result<Vec<i64>, ScoreError> {
        let encoding = self
            .tokenizer
            .encode_fast(text, self.add_special_tokens)
            .map_err(|e| {
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

    /// A Llama-style `tokenizer.json`: words, and a post-processor that puts BOS (`<s>`) first.
    const BOS_TOKENIZER: &str = r#"{
      "version": "1.0", "truncation": null, "padding": null,
      "added_tokens": [{"id": 0, "content": "<s>", "single_word": false, "lstrip": false,
        "rstrip": false, "normalized": false, "special": true}],
      "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
      "post_processor": {"type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]}}},
      "decoder": null,
      "model": {"type": "WordLevel", "vocab": {"<s>": 0, "hello": 1, "world": 2, "[UNK]": 3},
        "unk_token": "[UNK]"}
    }"#;

    #[test]
    fn special_tokens_are_added_unless_the_model_says_the_text_holds_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, BOS_TOKENIZER).expect("write tokenizer");
        let mut cfg = ModelConfig {
            name: "rm".into(),
            max_length: 3,
            truncation_side: TruncationSide::Right,
            ..ModelConfig::default()
        };
        // An OpenRLHF query: BOS already written as text.
        let query = "<s> hello world";
        let with = Encoder::load(&cfg, &path).expect("load");
        assert_eq!(with.encode("hello world").unwrap(), vec![0, 1, 2]);
        assert_eq!(
            with.encode(query).unwrap(),
            vec![0, 0, 1],
            "a second BOS, cut to 3"
        );
        cfg.add_special_tokens = false;
        let without = Encoder::load(&cfg, &path).expect("load");
        assert_eq!(without.encode(query).unwrap(), vec![0, 1, 2]);
        assert_eq!(without.encode("hello world").unwrap(), vec![1, 2]);
    }
}
