//! Local reward models on libtorch: TorchScript scalar and embedding scorers, batched by token budget.
//!
//! Each model runs like text-embeddings-inference's backends: a batcher thread tokenizes, queues
//! and buckets requests by length under a padded-token budget (`max_batch_tokens`) and a short
//! `max_wait`; each replica owns an OS thread fed by a bounded channel and runs batches under
//! `no_grad`, with one batch prepared while the previous one runs. Requests whose caller left are
//! skipped. [`ModelSet::load`] returns once every model is loaded, checked and warm: that is the
//! worker's readiness.

mod batcher;
#[cfg(feature = "bench")]
pub mod bench;
mod engine;
mod error;
mod model;
mod stats;
mod text;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rewardfleet_core::Scorer;
use rewardfleet_core::config::ModelConfig;

pub use engine::{cpu_has_native_bf16, default_threads, device_and_kind};
pub use error::TorchError;
pub use model::{ModelStats, RewardModel, cosine};
pub use text::{Encoder, render};

/// All local reward models of a process, loaded once and shared by every profile that uses them.
#[derive(Debug, Default, Clone)]
pub struct ModelSet {
    models: HashMap<String, RewardModel>,
}

impl ModelSet {
    /// Loads every model (each on its own loader thread; each replica on its own OS thread), checks
    /// it, warms each replica up with a full-budget batch, and returns when all are ready. Blocks:
    /// from async code call it inside `tokio::task::spawn_blocking`. Relative paths are resolved
    /// against `base_dir` (the config file's directory).
    ///
    /// # Errors
    /// The first failing model's [`TorchError`] (in config order), naming the model and the cause;
    /// [`TorchError::DuplicateName`] when two entries share a name.
    pub fn load(models: &[ModelConfig], base_dir: &Path) -> Result<Self, TorchError> {
        let mut seen = std::collections::HashSet::new();
        for m in models {
            if !seen.insert(m.name.as_str()) {
                return Err(TorchError::DuplicateName(m.name.clone()));
            }
        }
        let results: Vec<Result<RewardModel, TorchError>> = std::thread::scope(|s| {
            let handles: Vec<_> = models
                .iter()
                .map(|cfg| (cfg, s.spawn(move || RewardModel::load(cfg, base_dir))))
                .collect();
            handles
                .into_iter()
                .map(|(cfg, h)| {
                    h.join().unwrap_or_else(|_| {
                        Err(TorchError::Thread {
                            model: cfg.name.clone(),
                            message: "the loader thread panicked".into(),
                        })
                    })
                })
                .collect()
        });
        let mut set = Self::default();
        for r in results {
            let model = r?;
            set.models.insert(model.name().to_owned(), model);
        }
        Ok(set)
    }

    /// The scorer for a profile component `{ scorer = "<model name>" }`.
    pub fn scorer(&self, name: &str) -> Option<Arc<dyn Scorer>> {
        self.models
            .get(name)
            .map(|m| Arc::new(m.clone()) as Arc<dyn Scorer>)
    }

    /// The loaded model called `name`.
    pub fn model(&self, name: &str) -> Option<&RewardModel> {
        self.models.get(name)
    }

    /// Names of the loaded models.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.models.keys().map(String::as_str)
    }

    /// A snapshot of every model's counters (batches, sequences, tokens run so far; warm-up not
    /// included), by model name in name order.
    pub fn stats(&self) -> Vec<(String, ModelStats)> {
        let mut stats: Vec<_> = self
            .models
            .iter()
            .map(|(name, model)| (name.clone(), model.stats()))
            .collect();
        stats.sort_by(|a, b| a.0.cmp(&b.0));
        stats
    }

    /// True when no model is loaded.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }
}
