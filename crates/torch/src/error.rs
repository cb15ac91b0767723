//! The one error type of this crate.

use std::path::PathBuf;

/// Why a reward model could not be loaded or benchmarked. Every variant names the model.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TorchError {
    /// A file the model needs is missing or unreadable.
    #[error("model {model}: no {what} file at {}", path.display())]
    MissingFile {
        /// The model's name.
        model: String,
        /// `TorchScript` or `tokenizer`.
        what: &'static str,
        /// The resolved path.
        path: PathBuf,
    },
    /// The `tokenizer.json` could not be parsed or configured.
    #[error("model {model}: cannot use tokenizer {}: {message}", path.display())]
    Tokenizer {
        /// The model's name.
        model: String,
        /// The resolved path.
        path: PathBuf,
        /// The tokenizers crate's words.
        message: String,
    },
    /// The TorchScript file could not be loaded.
    #[error("model {model}: cannot load TorchScript {}: {message}", path.display())]
    Load {
        /// The model's name.
        model: String,
        /// The resolved path.
        path: PathBuf,
        /// libtorch's words.
        message: String,
    },
    /// The configuration asks for something this process cannot do (device, dtype).
    #[error("model {model}: {message}")]
    Unsupported {
        /// The model's name.
        model: String,
        /// What was asked and what is possible.
        message: String,
    },
    /// The model does not take `(input_ids, attention_mask[, token_type_ids])`.
    #[error(
        "model {model}: wrong input signature: a forward with {inputs} (int64, [batch, length]) failed: {message}"
    )]
    InputSignature {
        /// The model's name.
        model: String,
        /// The inputs that were passed.
        inputs: String,
        /// libtorch's words.
        message: String,
    },
    /// The model's output does not have the shape its `kind` needs.
    #[error("model {model}: wrong output shape: {message}")]
    OutputShape {
        /// The model's name.
        model: String,
        /// What was expected and what came.
        message: String,
    },
    /// The tokenizer produces token ids the model has no embedding for.
    #[error("model {model}: tokenizer and model do not match: {message}")]
    TokenizerMismatch {
        /// The model's name.
        model: String,
        /// The sizes and libtorch's words.
        message: String,
    },
    /// A forward pass failed at load (probe or warm-up).
    #[error("model {model}: {message}")]
    Forward {
        /// The model's name.
        model: String,
        /// Which forward and libtorch's words.
        message: String,
    },
    /// Two models share a name.
    #[error("model {0}: two [[model]] entries have this name")]
    DuplicateName(String),
    /// An OS thread could not be started or died.
    #[error("model {model}: thread failure: {message}")]
    Thread {
        /// The model's name.
        model: String,
        /// What happened.
        message: String,
    },
}

/// libtorch errors carry a C++ backtrace; people need the first lines.
pub(crate) fn brief(e: &tch::TchError) -> String {
    let text = e.to_string();
    let cut = text.find("\nException raised from").unwrap_or(text.len());
    // A TorchScript error is a traceback whose cause comes last: keep the first line and the end.
    let lines: Vec<&str> = text[..cut]
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let mut out = if lines.len() <= 4 {
        lines.join(" | ")
    } else {
        format!(
            "{} | … | {}",
            lines[0],
            lines[lines.len() - 3..].join(" | ")
        )
    };
    if out.len() > 600 {
        let mut end = 600;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        out.push('…');
    }
    out
}
