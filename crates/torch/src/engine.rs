//! The TorchScript module on its device: load-time checks, forward passes, output post-processing,
//! and the replica threads that run batches.

use rewardfleet_core::FailureReason;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender};
use std::time::Instant;

use rewardfleet_core::ScoreError;
use rewardfleet_core::config::{self, Dtype, ModelConfig, ModelKind, Pooling};
use rewardfleet_telemetry::SpanLink;
use rewardfleet_telemetry::metrics::{label, metrics};
use tch::{CModule, Device, IValue, Kind, Tensor};
use tracing::Span;

use crate::TorchError;
use crate::batcher::{Batch, Entry, Msg};
use crate::error::brief;
use crate::stats::Counters;

/// What went wrong in one forward pass.
#[derive(Debug, Clone)]
pub(crate) enum ForwardError {
    /// libtorch raised.
    Torch(String),
    /// The output's shape is not what the model's kind needs.
    Shape(String),
}

impl ForwardError {
    fn message(&self) -> &str {
        match self {
            Self::Torch(m) | Self::Shape(m) => m,
        }
    }
}

impl From<tch::TchError> for ForwardError {
    fn from(e: tch::TchError) -> Self {
        Self::Torch(brief(&e))
    }
}

/// The `device` and `dtype` of a model config in libtorch's terms, checked against what this
/// process can run.
///
/// # Errors
/// [`TorchError::Unsupported`] when the CUDA device is absent, or the dtype is not offered on
/// the device.
pub fn device_and_kind(cfg: &ModelConfig) -> Result<(Device, Kind), TorchError> {
    let unsupported = |message: String| TorchError::Unsupported {
        model: cfg.name.clone(),
        message,
    };
    let device = match cfg.device {
        config::Device::Cpu => Device::Cpu,
        config::Device::Cuda(n) => {
            let count = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
            if n >= count {
                return Err(unsupported(format!(
                    "device {} asked for, but libtorch sees {count} CUDA device(s) (a CPU-only build, no GPU, or libtorch_cuda not linked)",
                    cfg.device
                )));
            }
            Device::Cuda(n)
        }
    };
    let kind = match (cfg.dtype, device) {
        (Dtype::F32, _) => Kind::Float,
        (Dtype::Bf16, _) => Kind::BFloat16,
        (Dtype::F16, Device::Cuda(_)) => Kind::Half,
        (other, _) => {
            return Err(unsupported(format!(
                "dtype {:?} is not offered on {}; use f32 or bf16 (f16 on CUDA only)",
                other.as_str(),
                cfg.device
            )));
        }
    };
    Ok((device, kind))
}

/// Whether this CPU computes bf16 natively (AVX512-BF16, which CPUs with AMX also have, or
/// Arm's BF16). Without it libtorch converts to f32 and back around every operator, and a bf16
/// model runs slower than the same model in f32 (docs/benchmarks-torch.md).
pub fn cpu_has_native_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("bf16")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// The intra-op threads a replica uses when the config says 0: one less than the cores this
/// process may use (room for the batcher, the runtime, a gateway, nats-server, a trainer),
/// shared among the replicas, at least 1. Measured on 2 cores (docs/benchmarks-torch.md): 2
/// threads are about twice as fast as 1 while nothing else runs, and slower than 1 as soon as
/// another process is busy; on a machine of its own a worker should set `threads` to the cores.
pub fn default_threads(replicas: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores.saturating_sub(1) / replicas.max(1)).max(1)
}

/// A loaded model: the module on its device and what its outputs mean.
pub(crate) struct Engine {
    module: CModule,
    /// Where the module lives.
    pub device: Device,
    kind: ModelKind,
    pooling: Pooling,
    normalize: bool,
    token_type_ids: bool,
    /// Pad id used for padding (masked out).
    pub pad_id: i64,
}

impl Engine {
    /// Loads the TorchScript file of `cfg` onto its device in its dtype, in eval mode.
    ///
    /// # Errors
    /// [`TorchError::MissingFile`], [`TorchError::Load`], [`TorchError::Unsupported`].
    pub fn load(cfg: &ModelConfig, path: &Path, pad_id: i64) -> Result<Self, TorchError> {
        if !path.is_file() {
            return Err(TorchError::MissingFile {
                model: cfg.name.clone(),
                what: "TorchScript",
                path: path.to_owned(),
            });
        }
        let (device, dtype) = device_and_kind(cfg)?;
        let load_err = |e: tch::TchError| TorchError::Load {
            model: cfg.name.clone(),
            path: path.to_owned(),
            message: brief(&e),
        };
        let mut module = CModule::load_on_device(path, device).map_err(load_err)?;
        module.f_set_eval().map_err(load_err)?;
        if dtype != Kind::Float {
            // `CModule::to` casts every tensor of the module, integer buffers too (BERT's
            // position ids would become bf16 and break its embedding lookup). Cast the
            // floating-point parameters only, as `torch.nn.Module.to` does.
            let params = module.named_parameters().map_err(load_err)?;
            for (_, mut p) in params {
                if p.is_floating_point() {
                    let cast = p.f_to_kind(dtype).map_err(load_err)?;
                    p.f_set_data(&cast).map_err(load_err)?;
                }
            }
        }
        Ok(Self {
            module,
            device,
            kind: cfg.kind,
            pooling: cfg.pooling,
            normalize: cfg.normalize,
            token_type_ids: cfg.token_type_ids,
            pad_id,
        })
    }

    /// The inputs passed to `forward`, in words.
    pub fn input_names(&self) -> &'static str {
        if self.token_type_ids {
            "(input_ids, attention_mask, token_type_ids)"
        } else {
            "(input_ids, attention_mask)"
        }
    }

    /// Rows of the first parameter that looks like the token embedding table, if any.
    pub fn embedding_rows(&self) -> Option<i64> {
        let params = self.module.named_parameters().ok()?;
        params.iter().find_map(|(name, t)| {
            let owner = name.strip_suffix(".weight")?;
            let last = owner.rsplit('.').next().unwrap_or(owner);
            let is_token_table = matches!(
                last,
                "word_embeddings"
                    | "embed_tokens"
                    | "wte"
                    | "tok_embeddings"
                    | "emb"
                    | "embed"
                    | "token_embedding"
            );
            let size = t.size();
            (is_token_table && size.len() == 2).then(|| size[0])
        })
    }

    /// Pads token id rows into `[B, T]` input ids and attention mask (CPU, int64).
    ///
    /// # Errors
    /// When libtorch cannot make the tensors.
    pub fn pad(&self, rows: &[&[i64]]) -> Result<(Tensor, Tensor), tch::TchError> {
        let width = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(rows.len() * width);
        let mut mask = Vec::with_capacity(rows.len() * width);
        for r in rows {
            ids.extend_from_slice(r);
            ids.extend(std::iter::repeat_n(self.pad_id, width - r.len()));
            mask.extend(std::iter::repeat_n(1i64, r.len()));
            mask.extend(std::iter::repeat_n(0i64, width - r.len()));
        }
        let shape = [rows.len() as i64, width as i64];
        Ok((
            Tensor::f_from_slice(&ids)?.f_view(shape)?,
            Tensor::f_from_slice(&mask)?.f_view(shape)?,
        ))
    }

    /// Runs the module on padded inputs and returns its raw first output tensor.
    ///
    /// # Errors
    /// libtorch errors; an output holding no tensor.
    pub fn forward_raw(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor, ForwardError> {
        let ids = ids.f_to_device(self.device)?;
        let mask = mask.f_to_device(self.device)?;
        let mut inputs = vec![IValue::Tensor(ids.shallow_clone()), IValue::Tensor(mask)];
        if self.token_type_ids {
            inputs.push(IValue::Tensor(ids.f_zeros_like()?));
        }
        let out = self.module.forward_is(&inputs)?;
        first_tensor(out).ok_or_else(|| {
            ForwardError::Shape("forward returned no tensor (expected a tensor, or a tuple/list/dict whose first entry is one)".into())
        })
    }

    /// Runs a padded batch and returns one row per sequence: `[logit]` for scalar models, the
    /// pooled (optionally L2-normalised) vector for embedding models. f32, on the CPU.
    ///
    /// # Errors
    /// libtorch errors and output shapes that do not fit the model's kind.
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Vec<Vec<f32>>, ForwardError> {
        let batch = ids.size()[0];
        let out = self.forward_raw(ids, mask)?.f_to_kind(Kind::Float)?;
        let size = out.size();
        let rows = match self.kind {
            ModelKind::Scalar => {
                let ok = size.first() == Some(&batch)
                    && (size.len() == 1 || (size.len() == 2 && size[1] == 1));
                if !ok {
                    return Err(ForwardError::Shape(format!(
                        "a scalar model must return one logit per sequence, shape [B] or [B, 1]; for B = {batch} it returned {size:?}"
                    )));
                }
                out.f_reshape([batch, 1])?
            }
            ModelKind::Embedding => {
                let pooled = match size.as_slice() {
                    [b, _, h] if *b == batch && *h >= 2 => {
                        let mask = mask.f_to_device(out.device())?;
                        self.pool(&out, &mask)?
                    }
                    [b, h] if *b == batch && *h >= 2 => out,
                    _ => {
                        return Err(ForwardError::Shape(format!(
                            "an embedding model must return token vectors [B, T, H] or pooled vectors [B, H] with H ≥ 2; for B = {batch} it returned {size:?}"
                        )));
                    }
                };
                if self.normalize {
                    let norm = pooled
                        .f_norm_scalaropt_dim(2, [1i64].as_slice(), true)?
                        .f_clamp_min(1e-12)?;
                    pooled.f_div(&norm)?
                } else {
                    pooled
                }
            }
        };
        let rows = rows.f_to_device(Device::Cpu)?.f_contiguous()?;
        let width = rows.size()[1] as usize;
        let mut flat = vec![0f32; rows.numel()];
        let n = flat.len();
        rows.f_copy_data(&mut flat, n)?;
        Ok(flat.chunks(width.max(1)).map(<[f32]>::to_vec).collect())
    }

    fn pool(&self, tokens: &Tensor, mask: &Tensor) -> Result<Tensor, tch::TchError> {
        match self.pooling {
            Pooling::Cls => tokens.f_select(1, 0),
            Pooling::Mean => {
                let m = mask.f_to_kind(Kind::Float)?.f_unsqueeze(-1)?;
                let summed =
                    tokens
                        .f_mul(&m)?
                        .f_sum_dim_intlist([1i64].as_slice(), false, Kind::Float)?;
                let counts = m
                    .f_sum_dim_intlist([1i64].as_slice(), false, Kind::Float)?
                    .f_clamp_min(1e-9)?;
                summed.f_div(&counts)
            }
        }
    }
}

fn first_tensor(v: IValue) -> Option<Tensor> {
    match v {
        IValue::Tensor(t) => Some(t),
        IValue::Tuple(items) | IValue::GenericList(items) => {
            items.into_iter().next().and_then(first_tensor)
        }
        IValue::TensorList(items) => items.into_iter().next(),
        IValue::GenericDict(items) => {
            let mut items = items;
            let wanted = items.iter().position(|(k, _)| {
                matches!(k, IValue::String(s) if s == "logits" || s == "last_hidden_state" || s == "sentence_embedding")
            });
            let (_, v) = if let Some(i) = wanted {
                items.swap_remove(i)
            } else {
                items.into_iter().next()?
            };
            first_tensor(v)
        }
        _ => None,
    }
}

/// A replica: the shared engine, run on this OS thread.
pub(crate) struct Replica {
    pub index: usize,
    pub model: String,
    pub engine: Arc<Engine>,
    pub threads: usize,
    pub batches: Receiver<Batch>,
    pub done: SyncSender<Msg>,
    pub counters: Arc<Counters>,
}

impl Replica {
    /// Sets this thread up for inference (no_grad is thread-local, so are OpenMP's threads) and
    /// warms up with a full-budget batch of `warmup` rows × `width` tokens.
    ///
    /// # Errors
    /// The warm-up forward's error.
    pub fn prepare(
        &self,
        warmup_rows: usize,
        width: usize,
        vocab: i64,
    ) -> Result<(), ForwardError> {
        tch::set_num_threads(i32::try_from(self.threads).unwrap_or(1));
        let ids = Tensor::f_arange(
            i64::try_from(warmup_rows * width).unwrap_or(i64::MAX),
            (Kind::Int64, Device::Cpu),
        )?
        .f_remainder(vocab.max(1))?
        .f_view([warmup_rows as i64, width as i64])?;
        let mask = ids.f_ones_like()?;
        self.engine.forward(&ids, &mask)?;
        Ok(())
    }

    /// Runs batches until the batcher goes away.
    pub fn run(self) {
        while let Ok(batch) = self.batches.recv() {
            self.run_batch(batch);
            if self.done.send(Msg::Done(self.index)).is_err() {
                return;
            }
        }
    }

    fn run_batch(&self, batch: Batch) {
        let total = batch.entries.len();
        // Skip work whose requester has gone (the job was abandoned) before spending a forward on it.
        let entries: Vec<_> = batch
            .entries
            .into_iter()
            .filter(|e| !e.reply.is_closed())
            .collect();
        self.counters
            .skipped
            .fetch_add((total - entries.len()) as u64, Ordering::Relaxed);
        if entries.is_empty() {
            return;
        }
        let rows: Vec<&[i64]> = entries.iter().map(|e| e.ids.as_slice()).collect();
        let width = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let real: usize = rows.iter().map(|r| r.len()).sum();
        let span = self.batch_span(&entries, width, real, batch.full);
        let _enter = span.enter();
        let start = Instant::now();
        let result = self
            .engine
            .pad(&rows)
            .map_err(ForwardError::from)
            .and_then(|(ids, mask)| self.engine.forward(&ids, &mask));
        let c = &self.counters;
        c.forward_nanos
            .fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        c.batches.fetch_add(1, Ordering::Relaxed);
        c.sequences.fetch_add(rows.len() as u64, Ordering::Relaxed);
        c.tokens
            .fetch_add(rows.iter().map(|r| r.len() as u64).sum(), Ordering::Relaxed);
        c.padded_tokens
            .fetch_add((rows.len() * width) as u64, Ordering::Relaxed);
        if let Some(m) = metrics() {
            let model = [label("model", self.model.clone())];
            let padded = (rows.len() * width).max(1);
            m.forward_duration
                .record(start.elapsed().as_secs_f64(), &model);
            m.batch_size.record(rows.len() as f64, &model);
            m.batch_tokens.record(padded as f64, &model);
            m.padding_ratio
                .record(1.0 - real as f64 / padded as f64, &model);
        }
        match result {
            Ok(outputs) if outputs.len() == entries.len() => {
                for (e, out) in entries.into_iter().zip(outputs) {
                    let reply = if out.iter().all(|x| x.is_finite()) {
                        Ok(out)
                    } else {
                        Err(ScoreError::permanent(
                            FailureReason::NonFiniteOutput,
                            format!("model {}: the output is not finite", self.model),
                        ))
                    };
                    let _ = e.reply.send(reply);
                }
            }
            Ok(outputs) => {
                let msg = format!(
                    "model {}: {} outputs for {} inputs",
                    self.model,
                    outputs.len(),
                    entries.len()
                );
                for e in entries {
                    let _ = e.reply.send(Err(ScoreError::permanent(
                        FailureReason::ModelOutputError,
                        msg.clone(),
                    )));
                }
            }
            Err(err) if entries.len() > 1 => {
                // A bad candidate fails alone, never its batch: run each one by itself.
                tracing::warn!(model = %self.model, error = err.message(), "batch forward failed; retrying its sequences one by one");
                for e in entries {
                    let one = self
                        .engine
                        .pad(&[e.ids.as_slice()])
                        .map_err(ForwardError::from)
                        .and_then(|(i, m)| self.engine.forward(&i, &m));
                    let _ = e.reply.send(
                        one.map(|mut v| v.pop().unwrap_or_default())
                            .map_err(|err| self.score_error(&err)),
                    );
                }
            }
            Err(err) => {
                for e in entries {
                    let _ = e.reply.send(Err(self.score_error(&err)));
                }
            }
        }
    }

    /// The batch's span: a child of the scorer call of its first text, linked to every other
    /// scorer call it serves (other groups, often of other jobs and traces), so each job's trace
    /// shows the batch it joined.
    fn batch_span(&self, entries: &[Entry], width: usize, real: usize, full: bool) -> Span {
        let mut calls: Vec<&SpanLink> = Vec::new();
        for e in entries {
            if e.trace.is_sampled() && !calls.contains(&&e.trace) {
                calls.push(&e.trace);
            }
        }
        // No traced caller: no span to make.
        let Some((parent, others)) = calls.split_first() else {
            return Span::none();
        };
        let span = tracing::info_span!(
            "forward",
            otel.name = %format_args!("forward {}", self.model),
            rewardfleet.model = %self.model,
            rewardfleet.replica = self.index,
            rewardfleet.batch.size = entries.len(),
            rewardfleet.batch.width = width,
            rewardfleet.batch.tokens = real,
            rewardfleet.batch.full = full,
            rewardfleet.batch.requests = calls.len(),
        );
        parent.set_parent_of(&span);
        for other in others {
            other.link_from(&span);
        }
        span
    }

    fn score_error(&self, err: &ForwardError) -> ScoreError {
        match err {
            ForwardError::Shape(m) => ScoreError::permanent(
                FailureReason::ModelOutputError,
                format!("model {}: {m}", self.model),
            ),
            ForwardError::Torch(m) => ScoreError::permanent(
                FailureReason::ModelError,
                format!("model {}: forward failed: {m}", self.model),
            ),
        }
    }
}

/// Checks at load that the model takes our inputs, returns the right shape, and accepts every
/// token id the tokenizer can produce.
///
/// # Errors
/// [`TorchError::InputSignature`], [`TorchError::OutputShape`], [`TorchError::TokenizerMismatch`].
pub(crate) fn probe(
    cfg: &ModelConfig,
    engine: &Engine,
    sample: &[i64],
    vocab: usize,
) -> Result<(), TorchError> {
    let model = || cfg.name.clone();
    // Two rows, the second padded: the signature and the output shape.
    let short = &sample[..sample.len().div_ceil(2).max(1)];
    let (ids, mask) = engine
        .pad(&[sample, short])
        .map_err(|e| TorchError::Forward {
            model: model(),
            message: brief(&e),
        })?;
    match engine.forward(&ids, &mask) {
        Ok(_) => {}
        Err(ForwardError::Shape(message)) => {
            return Err(TorchError::OutputShape {
                model: model(),
                message,
            });
        }
        Err(ForwardError::Torch(message)) => {
            return Err(TorchError::InputSignature {
                model: model(),
                inputs: engine.input_names().into(),
                message,
            });
        }
    }
    // The largest id the tokenizer can produce must have an embedding row.
    let vocab = vocab as i64;
    if let Some(rows) = engine.embedding_rows()
        && rows < vocab
    {
        return Err(TorchError::TokenizerMismatch {
            model: model(),
            message: format!(
                "the tokenizer has {vocab} tokens but the model's embedding table has {rows} rows"
            ),
        });
    }
    // On CUDA an out-of-range id is a device-side assert that poisons the context: only probe on CPU
    // and rely on the table check above elsewhere.
    if engine.device == Device::Cpu {
        let row = [sample[0], vocab - 1, *sample.last().unwrap_or(&0)];
        let (ids, mask) = engine.pad(&[&row]).map_err(|e| TorchError::Forward {
            model: model(),
            message: brief(&e),
        })?;
        if let Err(e) = engine.forward(&ids, &mask) {
            return Err(TorchError::TokenizerMismatch {
                model: model(),
                message: format!(
                    "the tokenizer has {vocab} tokens but a forward with token id {} failed: {}",
                    vocab - 1,
                    e.message()
                ),
            });
        }
    }
    Ok(())
}
