//! Assembles the parts the configuration asks for: scorers, the queue, the embedded fleet.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;
use rewardfleet_core::Pipeline;
use rewardfleet_core::config::{Config, ConfigProblem};
use rewardfleet_gateway::Gateway;
use rewardfleet_judge::{JudgeCache, JudgeSet};
use rewardfleet_queue::jetstream::JetStreamOptions;
use rewardfleet_queue::{InProcessQueue, JetStreamQueue, Queue};
use rewardfleet_scorers::ScorerSource;
use rewardfleet_worker::Worker;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Every profile's scorers, and the judges and models behind them (for their usage).
pub struct Scorers {
    /// The profiles, ready to score.
    pub pipeline: Pipeline,
    /// The judges, when the configuration has any.
    pub judges: Option<Arc<JudgeSet>>,
    /// The local models (none when the configuration has none).
    pub models: Models,
}

/// What one local model has run so far (warm-up not included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelUsage {
    /// The model's name.
    pub model: String,
    /// Forward passes.
    pub batches: u64,
    /// Sequences (texts) run.
    pub sequences: u64,
    /// Real tokens run.
    pub tokens: u64,
    /// Padded tokens run (batch × longest sequence).
    pub padded_tokens: u64,
}

/// The local models of a process, shared with the profiles that use them; cheap to clone. Always
/// empty in a binary built without libtorch.
#[derive(Clone, Default)]
pub struct Models {
    #[cfg(feature = "torch")]
    set: Option<rewardfleet_torch::ModelSet>,
}

impl Models {
    /// The models as a source of profile components, when there are any.
    fn source(&self) -> Option<&dyn ScorerSource> {
        #[cfg(feature = "torch")]
        if let Some(set) = &self.set {
            return Some(set);
        }
        None
    }

    /// What each model has run so far, in name order.
    pub fn usage(&self) -> Vec<ModelUsage> {
        #[cfg(feature = "torch")]
        if let Some(set) = &self.set {
            return set
                .stats()
                .into_iter()
                .map(|(model, s)| ModelUsage {
                    model,
                    batches: s.batches,
                    sequences: s.sequences,
                    tokens: s.tokens,
                    padded_tokens: s.padded_tokens,
                })
                .collect();
        }
        Vec::new()
    }
}

/// Builds every profile's scorers: loads models (warm before this returns), sets up judges with
/// their API keys and verdict cache (a KV bucket on `nats` in fleet mode, memory otherwise).
pub async fn scorers(
    config: &Config,
    nats: Option<&async_nats::Client>,
) -> anyhow::Result<Scorers> {
    let models = if config.model.is_empty() {
        Models::default()
    } else {
        load_models(config).await?
    };
    let judges = if config.judge.is_empty() {
        None
    } else {
        let mut keys = HashMap::new();
        for judge in &config.judge {
            if let Some(key) = rewardfleet_judge::read_api_key(judge, &config.base_dir)? {
                keys.insert(judge.name.clone(), key);
            }
        }
        let c = &config.judge_cache;
        let cache = match (c.enabled, nats) {
            (false, _) => JudgeCache::None,
            (true, Some(client)) => {
                let js = async_nats::jetstream::new(client.clone());
                JudgeCache::kv(&js, &c.kv_bucket, c.ttl).await?
            }
            (true, None) => JudgeCache::Memory {
                capacity: c.memory_capacity,
                ttl: c.ttl,
            },
        };
        Some(Arc::new(JudgeSet::new(&config.judge, keys, cache)?))
    };
    let mut sources: Vec<&dyn ScorerSource> = Vec::new();
    if let Some(m) = models.source() {
        sources.push(m);
    }
    if let Some(j) = &judges {
        sources.push(j.as_ref());
    }
    let pipeline = rewardfleet_scorers::build_pipeline(config, &sources)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Scorers {
        pipeline,
        judges,
        models,
    })
}

/// Loads every `[[model]]` (each warm before this returns) on a blocking thread.
#[cfg(feature = "torch")]
async fn load_models(config: &Config) -> anyhow::Result<Models> {
    let models = config.model.clone();
    let base = config.base_dir.clone();
    let set =
        tokio::task::spawn_blocking(move || rewardfleet_torch::ModelSet::load(&models, &base))
            .await
            .context("the model loader stopped")??;
    Ok(Models { set: Some(set) })
}

#[cfg(not(feature = "torch"))]
async fn load_models(config: &Config) -> anyhow::Result<Models> {
    anyhow::bail!(
        "model[0] ({:?}): this binary was built without libtorch (cargo feature `torch`); \
         build with it, or run the profiles that use models on workers that have it",
        config.model[0].name
    )
}

/// Every problem of a parsed configuration that only the scorers can see (rule parameters,
/// judge methods), without loading models.
pub fn check(config: &Config) -> Vec<ConfigProblem> {
    rewardfleet_scorers::check(config)
}

/// Connects to NATS JetStream as `[nats]` says.
pub async fn connect(config: &Config, role: &str) -> anyhow::Result<JetStreamQueue> {
    let nats = config
        .nats
        .as_ref()
        .context("no [nats] in the configuration")?;
    let token = match &nats.token_env {
        Some(var) => {
            Some(std::env::var(var).with_context(|| format!("nats.token_env: ${var} is not set"))?)
        }
        None => None,
    };
    let options = JetStreamOptions {
        token,
        client_name: Some(format!("rewardfleet-{role}")),
    };
    JetStreamQueue::connect_with(nats, &config.worker, options)
        .await
        .with_context(|| format!("cannot connect to NATS at {}", nats.url))
}

/// Gateway and worker in one process over an in-process queue.
pub struct Embedded {
    /// The gateway logic (no socket).
    pub gateway: Gateway,
    /// The judges, for their usage.
    pub judges: Option<Arc<JudgeSet>>,
    /// The local models, for their usage.
    pub models: Models,
    shutdown: CancellationToken,
    worker: JoinHandle<()>,
}

impl Embedded {
    /// Builds the scorers and starts the worker.
    pub async fn start(config: &Config) -> anyhow::Result<Self> {
        let Scorers {
            pipeline,
            judges,
            models,
        } = scorers(config, None).await?;
        // Ledger entries and results of one session: twice the largest window.
        let queue: Arc<dyn Queue> = Arc::new(InProcessQueue::new(
            &config.worker,
            2 * config.gateway.max_window as usize,
        ));
        let gateway = Gateway::new(config, Arc::clone(&queue));
        let worker = Worker::new(queue, pipeline, config.worker.clone(), "embedded");
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let worker = tokio::spawn(async move {
            if let Err(e) = worker.run(stop).await {
                tracing::error!(error = %e, "embedded worker stopped");
            }
        });
        Ok(Self {
            gateway,
            judges,
            models,
            shutdown,
            worker,
        })
    }

    /// Stops the worker after it finished what it holds.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.worker.await;
    }
}
