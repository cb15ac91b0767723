//! Benchmark of a local reward model: (a) raw forward throughput on pre-tokenised, pre-batched
//! tensors — the machine's limit — and (b) the scorer through its batcher, on the same model and
//! the same candidates, for two traffic shapes. The traffic generators and (a) are public so the
//! whole-fleet measurement (c) can reuse them.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use rewardfleet_core::config::ModelConfig;
use rewardfleet_core::{Candidate, ChatMessage, ScoreContext, Scorer};

use crate::engine::{Engine, default_threads};
use crate::error::brief;
use crate::text::Encoder;
use crate::{RewardModel, TorchError};

/// Words that the BERT/MiniLM WordPiece vocabulary keeps as one token each.
const WORDS: [&str; 16] = [
    "the", "of", "and", "to", "in", "is", "was", "for", "on", "as", "with", "by", "at", "from",
    "that", "it",
];

/// A text of `tokens` tokens for a BERT-style tokenizer that adds `[CLS]` and `[SEP]`
/// (`tokens - 2` one-token words).
pub fn text_of_tokens(tokens: usize, seed: u64) -> String {
    let n = tokens.saturating_sub(2).max(1);
    let mut out = String::with_capacity(n * 5);
    let mut rng = SplitMix(seed);
    for i in 0..n {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(WORDS[(rng.next_u64() % WORDS.len() as u64) as usize]);
    }
    out
}

/// A small deterministic generator (SplitMix64), so runs are repeatable without a dependency.
#[derive(Debug, Clone)]
pub struct SplitMix(pub u64);

impl SplitMix {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1).
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// `n` sequence lengths from a log-normal distribution clipped to `[min, max]`: median
/// `median`, log-space sigma `sigma` (RL responses: many short, a long tail).
pub fn skewed_lengths(
    n: usize,
    seed: u64,
    median: f64,
    sigma: f64,
    min: usize,
    max: usize,
) -> Vec<usize> {
    let mut rng = SplitMix(seed);
    (0..n)
        .map(|_| ((median.ln() + sigma * rng.normal()).exp().round() as usize).clamp(min, max))
        .collect()
}

fn candidate(id: usize, tokens: usize, seed: u64) -> Candidate {
    Candidate {
        id: id.to_string(),
        group_id: String::new(),
        prompt: vec![ChatMessage {
            role: "user".into(),
            content: String::new(),
        }],
        response: text_of_tokens(tokens, seed ^ id as u64),
        reference: None,
        labels: Default::default(),
    }
}

/// A traffic shape: the groups a trainer sends and how many it keeps in flight.
#[derive(Debug, Clone)]
pub struct Traffic {
    /// Short name for tables.
    pub name: String,
    /// The requests, each a group of candidates scored in one call.
    pub groups: Vec<Vec<Candidate>>,
    /// Requests in flight at once (closed loop: a finished one is replaced at once).
    pub in_flight: usize,
}

impl Traffic {
    /// Shape 1: `groups` batches of `size` candidates of `tokens` tokens each, two in flight.
    pub fn fixed_batches(groups: usize, size: usize, tokens: usize) -> Self {
        let groups = (0..groups)
            .map(|g| {
                (0..size)
                    .map(|i| candidate(g * size + i, tokens, 7))
                    .collect()
            })
            .collect();
        Self {
            name: format!("{size}x{tokens}"),
            groups,
            in_flight: 2,
        }
    }

    /// Shape 2, what RL trainers send: `n` single-candidate requests, `in_flight` at once, lengths
    /// log-normal (median 192, sigma 1) over 16–2048 tokens.
    pub fn rl_singles(n: usize, in_flight: usize, seed: u64) -> Self {
        let lens = skewed_lengths(n, seed, 192.0, 1.0, 16, 2048);
        let groups = lens
            .iter()
            .enumerate()
            .map(|(i, &t)| vec![candidate(i, t, seed)])
            .collect();
        Self {
            name: format!("singles/{in_flight}"),
            groups,
            in_flight,
        }
    }

    /// Candidates in flight at most: `in_flight` requests of the largest group.
    pub fn candidates_in_flight(&self) -> usize {
        self.in_flight * self.groups.iter().map(Vec::len).max().unwrap_or(1)
    }

    /// All candidates, in order.
    pub fn candidates(&self) -> impl Iterator<Item = &Candidate> {
        self.groups.iter().flatten()
    }
}

/// A throughput measurement.
#[derive(Debug, Clone, Copy, Default)]
pub struct Throughput {
    /// Candidates scored.
    pub candidates: usize,
    /// Real tokens.
    pub tokens: usize,
    /// Padded tokens run (a, b).
    pub padded_tokens: usize,
    /// Wall-clock time.
    pub seconds: f64,
}

impl Throughput {
    /// Candidates per second.
    pub fn per_second(&self) -> f64 {
        self.candidates as f64 / self.seconds.max(1e-9)
    }

    /// Real tokens per second.
    pub fn tokens_per_second(&self) -> f64 {
        self.tokens as f64 / self.seconds.max(1e-9)
    }
}

/// Packs token rows into batches under `budget` padded tokens and at most `max_rows` rows, sorted
/// by length (near-zero padding): the best a batcher could do knowing every request in advance.
/// `max_rows` is what the traffic can have in flight: no online batcher sees more at once.
pub fn pack(mut rows: Vec<Vec<i64>>, budget: usize, max_rows: usize) -> Vec<Vec<Vec<i64>>> {
    rows.sort_by_key(Vec::len);
    let mut batches: Vec<Vec<Vec<i64>>> = Vec::new();
    let mut current: Vec<Vec<i64>> = Vec::new();
    for r in rows {
        let full = current.len() >= max_rows.max(1) || (current.len() + 1) * r.len() > budget;
        if !current.is_empty() && full {
            batches.push(std::mem::take(&mut current));
        }
        current.push(r);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// Tokenizes candidates' rendered texts with `cfg`'s tokenizer and template.
///
/// # Errors
/// Tokenizer load errors; a candidate that does not tokenize.
pub fn tokenize(
    cfg: &ModelConfig,
    base_dir: &Path,
    candidates: &[&Candidate],
) -> Result<Vec<Vec<i64>>, TorchError> {
    let encoder = Encoder::load(cfg, &base_dir.join(&cfg.tokenizer))?;
    candidates
        .iter()
        .map(|c| {
            encoder
                .encode(&crate::render(&cfg.template, &c.prompt, &c.response))
                .map_err(|e| TorchError::Forward {
                    model: cfg.name.clone(),
                    message: e.to_string(),
                })
        })
        .collect()
}

/// (a) Raw forward throughput: loads `cfg`'s module and runs the pre-batched rows on one thread
/// with the model's intra-op threads, under `no_grad`, after one untimed pass over all of them.
///
/// # Errors
/// Load errors and forward failures.
pub fn raw_forward(
    cfg: &ModelConfig,
    base_dir: &Path,
    batches: &[Vec<Vec<i64>>],
) -> Result<Throughput, TorchError> {
    let cfg = cfg.clone();
    let base = base_dir.to_owned();
    let batches = batches.to_vec();
    std::thread::scope(|s| {
        s.spawn(move || {
            let threads = if cfg.threads == 0 {
                default_threads(cfg.replicas)
            } else {
                cfg.threads
            };
            tch::set_num_threads(i32::try_from(threads).unwrap_or(1));
            let _no_grad = tch::no_grad_guard();
            let engine = Engine::load(&cfg, &base.join(&cfg.path), 0)?;
            let fail = |e: String| TorchError::Forward {
                model: cfg.name.clone(),
                message: e,
            };
            // Pre-batched, pre-padded tensors: nothing but forward passes is timed.
            let tensors = batches
                .iter()
                .map(|b| {
                    let rows: Vec<&[i64]> = b.iter().map(Vec::as_slice).collect();
                    engine.pad(&rows).map_err(|e| fail(brief(&e)))
                })
                .collect::<Result<Vec<_>, _>>()?;
            // One untimed pass over every batch: each shape's kernels are made and its memory
            // touched once, so the timed pass is the steady state (the scorer warms up too).
            for (ids, mask) in &tensors {
                engine
                    .forward(ids, mask)
                    .map_err(|e| fail(format!("{e:?}")))?;
            }
            let start = Instant::now();
            for (ids, mask) in &tensors {
                engine
                    .forward(ids, mask)
                    .map_err(|e| fail(format!("{e:?}")))?;
            }
            let seconds = start.elapsed().as_secs_f64();
            Ok(Throughput {
                candidates: batches.iter().map(Vec::len).sum(),
                tokens: batches.iter().flatten().map(Vec::len).sum(),
                padded_tokens: batches
                    .iter()
                    .map(|b| b.len() * b.iter().map(Vec::len).max().unwrap_or(0))
                    .sum(),
                seconds,
            })
        })
        .join()
        .unwrap_or_else(|_| {
            Err(TorchError::Thread {
                model: String::from("bench"),
                message: "the raw-forward thread panicked".into(),
            })
        })
    })
}

/// (b) Throughput through the scorer: sends `traffic`'s groups with `traffic.in_flight` in flight
/// (closed loop) after one untimed group.
///
/// # Errors
/// A candidate that failed (the benchmark must not count failures as work).
pub async fn through_scorer(
    model: &RewardModel,
    traffic: &Traffic,
) -> Result<Throughput, TorchError> {
    let scorer: Arc<dyn Scorer> = Arc::new(model.clone());
    let ctx = ScoreContext::default();
    if let Some(g) = traffic.groups.first() {
        scorer.score(&ctx, g).await;
    }
    let before = model.stats();
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    let mut next = traffic.groups.iter();
    let mut failed = None;
    let spawn = |set: &mut tokio::task::JoinSet<_>, g: &Vec<Candidate>| {
        let (s, g) = (Arc::clone(&scorer), g.clone());
        set.spawn(async move { s.score(&ScoreContext::default(), &g).await });
    };
    for g in next.by_ref().take(traffic.in_flight) {
        spawn(&mut set, g);
    }
    while let Some(done) = set.join_next().await {
        if let Ok(outcomes) = done
            && let Some(Err(e)) = outcomes.into_iter().find(Result::is_err)
        {
            failed.get_or_insert(e);
        }
        if let Some(g) = next.next() {
            spawn(&mut set, g);
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    if let Some(e) = failed {
        return Err(TorchError::Forward {
            model: model.name().to_owned(),
            message: format!("a candidate failed during the benchmark: {e}"),
        });
    }
    let after = model.stats();
    Ok(Throughput {
        candidates: traffic.groups.iter().map(Vec::len).sum(),
        tokens: (after.tokens - before.tokens) as usize,
        padded_tokens: (after.padded_tokens - before.padded_tokens) as usize,
        seconds,
    })
}

/// One line of the table.
#[derive(Debug, Clone)]
pub struct BenchRow {
    /// Model name and dtype.
    pub model: String,
    /// Traffic shape.
    pub traffic: String,
    /// (a) raw forward.
    pub raw: Throughput,
    /// (b) through the batcher.
    pub batched: Throughput,
}

impl BenchRow {
    /// b / a in candidates per second.
    pub fn ratio(&self) -> f64 {
        self.batched.per_second() / self.raw.per_second().max(1e-9)
    }
}

/// Runs (a) and (b) for `cfg` on each traffic shape. Blocks the calling thread for the loads;
/// call from a multi-threaded runtime.
///
/// # Errors
/// Load and forward errors.
pub async fn run(
    cfg: &ModelConfig,
    base_dir: &Path,
    shapes: &[Traffic],
) -> Result<Vec<BenchRow>, TorchError> {
    let mut rows = Vec::new();
    let model = {
        let (owned, base) = (cfg.clone(), base_dir.to_owned());
        tokio::task::spawn_blocking(move || RewardModel::load(&owned, &base))
            .await
            .map_err(|e| TorchError::Thread {
                model: cfg.name.clone(),
                message: e.to_string(),
            })??
    };
    for traffic in shapes {
        let candidates: Vec<&Candidate> = traffic.candidates().collect();
        let token_rows = tokenize(cfg, base_dir, &candidates)?;
        let batches = pack(
            token_rows,
            cfg.batch_token_budget(),
            traffic.candidates_in_flight(),
        );
        let raw = {
            let (owned, base) = (cfg.clone(), base_dir.to_owned());
            tokio::task::spawn_blocking(move || raw_forward(&owned, &base, &batches))
                .await
                .map_err(|e| TorchError::Thread {
                    model: cfg.name.clone(),
                    message: e.to_string(),
                })??
        };
        let batched = through_scorer(&model, traffic).await?;
        rows.push(BenchRow {
            model: format!("{} {}", cfg.name, cfg.dtype),
            traffic: traffic.name.clone(),
            raw,
            batched,
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skewed_lengths_are_skewed_and_clipped() {
        let l = skewed_lengths(2000, 1, 192.0, 1.0, 16, 2048);
        assert!(l.iter().all(|&x| (16..=2048).contains(&x)));
        let mut s = l.clone();
        s.sort_unstable();
        let (median, mean) = (s[1000], s.iter().sum::<usize>() as f64 / 2000.0);
        assert!((150..250).contains(&median), "median {median}");
        assert!(mean > median as f64 * 1.3, "a long tail: mean {mean}");
    }

    #[test]
    fn pack_respects_the_budget() {
        let rows: Vec<Vec<i64>> = skewed_lengths(300, 2, 192.0, 1.0, 16, 2048)
            .into_iter()
            .map(|n| vec![0; n])
            .collect();
        let batches = pack(rows, 16_384, 64);
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), 300);
        for b in &batches {
            assert!(b.len() * b.iter().map(Vec::len).max().unwrap_or(0) <= 16_384);
            assert!(b.len() <= 64);
        }
    }

    #[test]
    fn traffic_shapes() {
        let t = Traffic::fixed_batches(3, 64, 256);
        assert_eq!(t.groups.len(), 3);
        assert_eq!(t.candidates().count(), 192);
        assert_eq!(text_of_tokens(256, 1).split(' ').count(), 254);
        let t = Traffic::rl_singles(100, 64, 3);
        assert!(t.groups.iter().all(|g| g.len() == 1));
    }
}
