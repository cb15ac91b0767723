//! A loaded reward model: the async handle a profile scores with, and its start-up.

use rewardfleet_core::FailureReason;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::thread;

use async_trait::async_trait;
use rewardfleet_core::config::{Device, Dtype, ModelConfig, ModelKind};
use rewardfleet_core::scorer::Outcome;
use rewardfleet_core::{Candidate, Score, ScoreContext, ScoreError, Scorer};
use tokio::sync::oneshot;

use crate::TorchError;
use crate::batcher::{Admission, Batcher, BatcherSettings, Msg, Reply, Request};
use crate::engine::{Engine, Replica, default_threads, probe};
use crate::stats::{Counters, estimate_tokens};
use crate::text::{Encoder, render};

/// A snapshot of a model's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ModelStats {
    /// Batches run.
    pub batches: u64,
    /// Sequences run.
    pub sequences: u64,
    /// Real tokens run.
    pub tokens: u64,
    /// Padded tokens run (batch × width); `tokens / padded_tokens` is the padding efficiency.
    pub padded_tokens: u64,
    /// Sequences skipped because their requester had gone.
    pub skipped: u64,
    /// Seconds spent in forward passes (summed over replicas).
    pub forward_seconds: f64,
    /// Texts admitted and not yet answered.
    pub queued: usize,
    /// Tokens waiting for a batch (see [`RewardModel::has_room`]).
    pub waiting_tokens: usize,
}

struct Inner {
    name: String,
    kind: ModelKind,
    template: String,
    intake: SyncSender<Msg>,
    admission: Arc<Admission>,
    counters: Arc<Counters>,
    threads: usize,
    /// `admit_tokens`: the room a worker fills ([`RewardModel::has_room`]).
    admit_tokens: usize,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Room is reserved for this message in the intake's bound.
        let _ = self.intake.try_send(Msg::Shutdown);
    }
}

/// A loaded, warmed-up reward model. Cheap to clone; every clone feeds the same batcher. The model
/// stops when the last clone is dropped.
#[derive(Clone)]
pub struct RewardModel {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RewardModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RewardModel")
            .field("name", &self.inner.name)
            .field("kind", &self.inner.kind)
            .finish()
    }
}

/// Resolves a config path against the config file's directory.
fn resolve(base_dir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        base_dir.join(p)
    }
}

impl RewardModel {
    /// Loads `cfg` (paths relative to `base_dir`), checks it (signature, output shape, vocabulary,
    /// `max_length`), starts its batcher and replica threads and warms each replica up with a
    /// full-budget batch. Blocks until ready; call it off the async runtime.
    ///
    /// # Errors
    /// Every [`TorchError`] variant but [`TorchError::DuplicateName`], naming the model and the cause.
    pub fn load(cfg: &ModelConfig, base_dir: &Path) -> Result<Self, TorchError> {
        let name = cfg.name.clone();
        let encoder = Encoder::load(cfg, &resolve(base_dir, &cfg.tokenizer))?;
        let threads = if cfg.threads == 0 {
            default_threads(cfg.replicas)
        } else {
            cfg.threads
        };
        tch::set_num_threads(i32::try_from(threads).unwrap_or(1));
        let _no_grad = tch::no_grad_guard();
        let engine = Arc::new(Engine::load(
            cfg,
            &resolve(base_dir, &cfg.path),
            encoder.pad_id,
        )?);
        let sample = encoder.encode("hello world").unwrap_or_else(|_| vec![0, 0]);
        probe(cfg, &engine, &sample, encoder.vocab_size)?;

        let replicas = cfg.replicas.max(1);
        // Bound: every queued `Work` message holds at least one admitted text, so at most
        // `queue_capacity` of them; plus one `Done` per replica and one `Shutdown`. A send that
        // admission allowed therefore never finds the channel full.
        let (intake, intake_rx) = mpsc::sync_channel::<Msg>(cfg.queue_capacity + replicas + 1);
        let counters = Arc::new(Counters::default());
        let warmup_width = cfg.max_length;
        let warmup_rows = (cfg.batch_token_budget() / cfg.max_length.max(1)).max(1);
        let vocab = encoder.vocab_size as i64;

        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), TorchError>>();
        let mut senders = Vec::with_capacity(replicas);
        for index in 0..replicas {
            // Bound 2: the batcher hands a replica at most 2 batches not yet reported done (the
            // one it runs, which may still sit here until the replica wakes, and the one prepared
            // while it runs), so a send never finds this full.
            let (tx, rx) = mpsc::sync_channel(2);
            senders.push(tx);
            let replica = Replica {
                index,
                model: name.clone(),
                engine: Arc::clone(&engine),
                threads,
                batches: rx,
                done: intake.clone(),
                counters: Arc::clone(&counters),
            };
            let ready = ready_tx.clone();
            let model = name.clone();
            thread::Builder::new()
                .name(format!("rm-{name}-{index}"))
                .spawn(move || {
                    let _no_grad = tch::no_grad_guard();
                    let warm = replica.prepare(warmup_rows, warmup_width, vocab).map_err(|e| TorchError::Forward {
                        model,
                        message: format!(
                            "warm-up forward of {warmup_rows} × {warmup_width} tokens (max_batch_tokens / max_length × max_length) failed; is max_length beyond the model's position embeddings, or the budget beyond memory? {e:?}"
                        ),
                    });
                    let ok = warm.is_ok();
                    let _ = ready.send(warm);
                    if ok {
                        replica.run();
                    }
                })
                .map_err(|e| TorchError::Thread {
                    model: name.clone(),
                    message: e.to_string(),
                })?;
        }
        drop(ready_tx);
        for _ in 0..replicas {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(TorchError::Thread {
                        model: name,
                        message: "a replica thread died during warm-up".into(),
                    });
                }
            }
        }

        let batcher = Batcher {
            settings: BatcherSettings {
                model: name.clone(),
                max_batch_tokens: cfg.batch_token_budget(),
                max_wait: cfg.max_wait,
            },
            encoder,
            intake: intake_rx,
            in_flight: vec![0; senders.len()],
            replicas: senders,
            queue: Vec::new(),
            counters: Arc::clone(&counters),
        };
        thread::Builder::new()
            .name(format!("rm-{name}-batcher"))
            .spawn(move || batcher.run())
            .map_err(|e| TorchError::Thread {
                model: name.clone(),
                message: e.to_string(),
            })?;
        if cfg.dtype == Dtype::Bf16
            && cfg.device == Device::Cpu
            && !crate::engine::cpu_has_native_bf16()
        {
            tracing::warn!(model = %name, "dtype bf16 on a CPU without native bf16 (AVX512-BF16 or AMX): expect it to run slower than f32");
        }
        tracing::info!(model = %name, replicas, threads, device = %cfg.device, dtype = %cfg.dtype, "reward model ready");
        Ok(Self {
            inner: Arc::new(Inner {
                name,
                kind: cfg.kind,
                template: cfg.template.clone(),
                intake,
                admission: Arc::new(Admission {
                    admitted: AtomicUsize::new(0),
                    capacity: cfg.queue_capacity,
                }),
                counters,
                threads,
                admit_tokens: cfg.admit_token_budget(),
            }),
        })
    }

    /// The model's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Intra-op threads each replica uses.
    pub fn threads(&self) -> usize {
        self.inner.threads
    }

    /// A snapshot of the model's counters.
    pub fn stats(&self) -> ModelStats {
        let c = &self.inner.counters;
        ModelStats {
            batches: c.batches.load(Ordering::Relaxed),
            sequences: c.sequences.load(Ordering::Relaxed),
            tokens: c.tokens.load(Ordering::Relaxed),
            padded_tokens: c.padded_tokens.load(Ordering::Relaxed),
            skipped: c.skipped.load(Ordering::Relaxed),
            forward_seconds: c.forward_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            queued: self.inner.admission.admitted.load(Ordering::Relaxed),
            waiting_tokens: c.waiting_tokens.load(Ordering::Relaxed),
        }
    }

    /// Whether more texts would find room: fewer tokens wait for a batch than `admit_tokens`
    /// (two full batches per replica by default), and the queue is below `queue_capacity`.
    /// Workers take jobs for the model while it has room, so its batches fill whatever the
    /// jobs' sizes (one trainer query per job, or hundreds), without the model's queue
    /// holding more than keeps it busy.
    pub fn has_room(&self) -> bool {
        let inner = &self.inner;
        inner.counters.waiting_tokens.load(Ordering::Relaxed) < inner.admit_tokens
            && inner.admission.admitted.load(Ordering::Relaxed) < inner.admission.capacity
    }

    /// Runs `texts` through the model and returns one output row each (`[logit]` or the pooled
    /// vector), in order. Tokenization and forward run on the model's threads.
    ///
    /// # Errors
    /// Per text: `overloaded` (retryable; the queue is full), `model_unavailable` (retryable), or
    /// the text's own error (`input_too_long`, `tokenizer_error`, …).
    pub async fn run(&self, texts: Vec<String>) -> Vec<Reply> {
        let n = texts.len();
        if n == 0 {
            return Vec::new();
        }
        let inner = &self.inner;
        let Some(permits) = inner.admission.try_admit(n) else {
            let err = ScoreError::transient(
                FailureReason::ModelOverloaded,
                format!(
                    "model {}: {} texts are already waiting (queue_capacity = {}); retry later",
                    inner.name,
                    inner.admission.admitted.load(Ordering::Relaxed),
                    inner.admission.capacity
                ),
            );
            return vec![Err(err); n];
        };
        let mut receivers = Vec::with_capacity(n);
        let mut requests = Vec::with_capacity(n);
        let mut estimated = 0;
        for (text, permit) in texts.into_iter().zip(permits) {
            let (tx, rx) = oneshot::channel();
            receivers.push(rx);
            let estimate = estimate_tokens(&text);
            estimated += estimate;
            requests.push(Request {
                text,
                estimate,
                reply: tx,
                permit,
            });
        }
        // Counted before the batcher sees them, so a worker asking for room meanwhile sees them.
        let waiting = &inner.counters.waiting_tokens;
        waiting.fetch_add(estimated, Ordering::Relaxed);
        let unavailable = |why: &str| {
            ScoreError::transient(
                FailureReason::ModelUnavailable,
                format!("model {}: {why}", inner.name),
            )
        };
        match inner
            .intake
            .try_send(Msg::Work(requests, tracing::Span::current()))
        {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                waiting.fetch_sub(estimated, Ordering::Relaxed);
                return vec![Err(unavailable("the intake is full")); n];
            }
            Err(TrySendError::Disconnected(_)) => {
                waiting.fetch_sub(estimated, Ordering::Relaxed);
                return vec![Err(unavailable("the model has stopped")); n];
            }
        }
        let mut out = Vec::with_capacity(n);
        for rx in receivers {
            out.push(
                rx.await
                    .unwrap_or_else(|_| Err(unavailable("the model stopped before answering"))),
            );
        }
        out
    }

    async fn score_scalar(&self, group: &[Candidate]) -> Vec<Outcome> {
        let texts = group
            .iter()
            .map(|c| render(&self.inner.template, &c.prompt, &c.response))
            .collect();
        self.run(texts)
            .await
            .into_iter()
            .map(|r| r.map(|v| Score::new(f64::from(v.first().copied().unwrap_or(f32::NAN)))))
            .collect()
    }

    async fn score_embedding<'g>(&self, group: &'g [Candidate]) -> Vec<Outcome> {
        // Each distinct text is embedded once: a group's candidates usually share their reference.
        let mut slots: HashMap<&'g str, usize> = HashMap::new();
        let mut texts: Vec<String> = Vec::new();
        let mut slot = |t: &'g str| -> usize {
            *slots.entry(t).or_insert_with(|| {
                texts.push(t.to_owned());
                texts.len() - 1
            })
        };
        let pairs: Vec<Option<(usize, usize)>> = group
            .iter()
            .map(|c| {
                let reference = c.reference.as_deref()?;
                Some((slot(&c.response), slot(reference)))
            })
            .collect();
        let vectors = self.run(texts).await;
        pairs
            .into_iter()
            .map(|pair| {
                let (a, b) = pair.ok_or_else(|| {
                    ScoreError::permanent(FailureReason::MissingReference,
                        format!("model {} is an embedding model: the candidate needs a `reference` to compare the response with", self.inner.name),
                    )
                })?;
                let (va, vb) = (vectors[a].as_ref().map_err(Clone::clone)?, vectors[b].as_ref().map_err(Clone::clone)?);
                cosine(va, vb).map(Score::new).ok_or_else(|| {
                    ScoreError::permanent(FailureReason::ZeroEmbedding, format!("model {}: an embedding is zero; the cosine is undefined", self.inner.name))
                })
            })
            .collect()
    }
}

/// Cosine similarity in f64, within [-1, 1] (rounding can step past them for identical
/// vectors); `None` when a vector is zero or the lengths differ.
pub fn cosine(a: &[f32], b: &[f32]) -> Option<f64> {
    if a.len() != b.len() {
        return None;
    }
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    let denom = na.sqrt() * nb.sqrt();
    (denom > 0.0).then(|| (dot / denom).clamp(-1.0, 1.0))
}

#[async_trait]
impl Scorer for RewardModel {
    async fn score(&self, _ctx: &ScoreContext, group: &[Candidate]) -> Vec<Outcome> {
        match self.inner.kind {
            ModelKind::Scalar => self.score_scalar(group).await,
            ModelKind::Embedding => self.score_embedding(group).await,
        }
    }

    fn has_room(&self) -> bool {
        RewardModel::has_room(self)
    }
}
