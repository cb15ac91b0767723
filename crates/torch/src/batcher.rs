//! Token-budget batching in the manner of text-embeddings-inference: one batcher thread per model
//! tokenizes, queues, buckets by length and hands batches to the model's replica threads.

use rewardfleet_core::FailureReason;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use rewardfleet_core::ScoreError;
use tokio::sync::oneshot;

use rewardfleet_telemetry::SpanLink;
use rewardfleet_telemetry::metrics::{label, metrics};

use crate::stats::Counters;
use crate::text::Encoder;

/// What a replica answers for one text: the logit (`[x]`) or the pooled vector.
pub(crate) type Reply = Result<Vec<f32>, ScoreError>;

/// One text to run through the model.
pub(crate) struct Request {
    pub text: String,
    /// Tokens it counts as in [`Counters::waiting_tokens`] until tokenized.
    pub estimate: usize,
    pub reply: oneshot::Sender<Reply>,
    pub permit: Permit,
}

/// What the batcher thread receives on its intake channel.
pub(crate) enum Msg {
    /// Texts of one `score` call (one group), admitted by [`Admission`].
    Work(Vec<Request>, tracing::Span),
    /// Replica `n` finished a batch.
    Done(usize),
    /// The last handle is gone: stop.
    Shutdown,
}

/// Counts texts admitted and not yet answered; refuses past `capacity` (admission, not buffering).
#[derive(Debug)]
pub(crate) struct Admission {
    pub admitted: AtomicUsize,
    pub capacity: usize,
}

impl Admission {
    /// Reserves `n` places, all or none.
    pub fn try_admit(self: &Arc<Self>, n: usize) -> Option<Vec<Permit>> {
        let mut cur = self.admitted.load(Ordering::Relaxed);
        loop {
            if cur + n > self.capacity {
                return None;
            }
            match self.admitted.compare_exchange_weak(
                cur,
                cur + n,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some((0..n).map(|_| Permit(Arc::clone(self))).collect()),
                Err(now) => cur = now,
            }
        }
    }
}

/// One admitted text; gives its place back when dropped (answered or abandoned).
#[derive(Debug)]
pub(crate) struct Permit(Arc<Admission>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.admitted.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A tokenized text waiting for a batch.
pub(crate) struct Entry {
    pub ids: Vec<i64>,
    pub reply: oneshot::Sender<Reply>,
    pub since: Instant,
    /// The scorer call it came from (the batch's span is parented or linked to it).
    pub trace: SpanLink,
    pub _permit: Permit,
}

/// A batch handed to a replica: entries and their padded length.
pub(crate) struct Batch {
    pub entries: Vec<Entry>,
    /// Set when the budget was full (the batch was prefetched or sent without waiting).
    pub full: bool,
}

/// Least share of real tokens in a batch's padded tokens that [`select`] lets a length mix fall to.
/// On CPU a padded token costs as much as a real one, so a short text waits for a batch of its own
/// size rather than ride along, mostly padding, with long ones.
pub(crate) const MIN_FILL: f64 = 0.8;

/// Picks one batch from queued lengths. Starts at the oldest entry (index 0, so nothing starves)
/// and grows towards the entry of nearest length that adds the least padding, while
/// `count × longest ≤ budget` and real tokens stay at least [`MIN_FILL`] of padded ones. Returns the
/// chosen indices and whether the budget stopped it (the batch is full) rather than the queue or
/// the length mix.
pub(crate) fn select(lens: &[usize], budget: usize) -> (Vec<usize>, bool) {
    if lens.is_empty() {
        return (Vec::new(), false);
    }
    let mut order: Vec<usize> = (0..lens.len()).collect();
    // Stable: among equal lengths the older entry comes first.
    order.sort_by_key(|&i| lens[i]);
    let Some(pos) = order.iter().position(|&i| i == 0) else {
        return (Vec::new(), false);
    };
    let (mut lo, mut hi) = (pos, pos);
    let mut longest = lens[0];
    let mut sum = lens[0];
    let mut count = 1usize;
    let fills = |sum: usize, count: usize, longest: usize| {
        sum as f64 >= MIN_FILL * (count * longest) as f64
    };
    let full = loop {
        let left = (lo > 0).then(|| lens[order[lo - 1]]);
        let right = order.get(hi + 1).map(|&i| lens[i]);
        // (within budget, keeps the fill) for each side.
        let left_ok = left.map(|l| {
            (
                (count + 1) * longest <= budget,
                fills(sum + l, count + 1, longest),
            )
        });
        let right_ok = right.map(|r| {
            let w = r.max(longest);
            ((count + 1) * w <= budget, fills(sum + r, count + 1, w))
        });
        let left_fits = left_ok == Some((true, true));
        let right_fits = right_ok == Some((true, true));
        let take_left = match (left_fits, right_fits, left, right) {
            (true, true, Some(l), Some(r)) => longest - l <= (r - longest) * count,
            (true, _, _, _) => true,
            (false, true, _, _) => false,
            // Full when nothing more could join (any entry pads to at least `longest`), or a
            // neighbour that keeps the fill is refused by the budget.
            _ => {
                break (count + 1) * longest > budget
                    || left_ok == Some((false, true))
                    || right_ok == Some((false, true));
            }
        };
        if take_left {
            lo -= 1;
            sum += lens[order[lo]];
        } else {
            hi += 1;
            sum += lens[order[hi]];
            longest = longest.max(lens[order[hi]]);
        }
        count += 1;
    };
    (order[lo..=hi].to_vec(), full)
}

/// Settings of one model's batcher.
pub(crate) struct BatcherSettings {
    pub model: String,
    pub max_batch_tokens: usize,
    pub max_wait: Duration,
}

/// The batcher thread's state.
pub(crate) struct Batcher {
    pub settings: BatcherSettings,
    pub encoder: Encoder,
    pub intake: Receiver<Msg>,
    /// One channel per replica, each bounded to 2 (see `in_flight`).
    pub replicas: Vec<SyncSender<Batch>>,
    /// Batches handed to each replica and not reported done (0, 1 running, 2 running + prefetched).
    pub in_flight: Vec<usize>,
    pub queue: Vec<Entry>,
    pub counters: Arc<Counters>,
}

impl Batcher {
    /// Runs until [`Msg::Shutdown`] or until every sender is gone.
    pub fn run(mut self) {
        loop {
            let msg = match self.wait() {
                None => self.intake.recv().ok(),
                Some(d) => match self.intake.recv_timeout(d) {
                    Ok(m) => Some(m),
                    Err(RecvTimeoutError::Timeout) => {
                        self.dispatch();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => None,
                },
            };
            let Some(msg) = msg else { return };
            if !self.handle(msg) {
                return;
            }
            while let Ok(msg) = self.intake.try_recv() {
                if !self.handle(msg) {
                    return;
                }
            }
            self.dispatch();
        }
    }

    /// How long to wait for the next message: until the oldest entry's `max_wait` runs out when a
    /// replica is idle; without limit when nothing could be dispatched anyway.
    fn wait(&self) -> Option<Duration> {
        let oldest = self.queue.first()?;
        if !self.in_flight.contains(&0) {
            return None;
        }
        Some(
            self.settings
                .max_wait
                .saturating_sub(oldest.since.elapsed()),
        )
    }

    /// Tokenizes arriving work (here, on the batcher's own thread, never on the async runtime).
    /// Returns false on shutdown.
    fn handle(&mut self, msg: Msg) -> bool {
        match msg {
            Msg::Work(requests, span) => {
                let trace = SpanLink::of(&span);
                let _enter = span.enter();
                let now = Instant::now();
                let waiting = &self.counters.waiting_tokens;
                for r in requests {
                    if r.reply.is_closed() {
                        self.counters.skipped.fetch_add(1, Ordering::Relaxed);
                        waiting.fetch_sub(r.estimate, Ordering::Relaxed);
                        continue;
                    }
                    let encoded = self.encoder.encode(&r.text);
                    // The estimate becomes the count (added first: the sum never dips below 0).
                    if let Ok(ids) = &encoded {
                        waiting.fetch_add(ids.len(), Ordering::Relaxed);
                    }
                    waiting.fetch_sub(r.estimate, Ordering::Relaxed);
                    match encoded {
                        Ok(ids) => self.queue.push(Entry {
                            ids,
                            reply: r.reply,
                            since: now,
                            trace: trace.clone(),
                            _permit: r.permit,
                        }),
                        Err(e) => {
                            let _ = r.reply.send(Err(e));
                        }
                    }
                }
                if let Some(m) = metrics() {
                    m.tokenize_duration.record(
                        now.elapsed().as_secs_f64(),
                        &[label("model", self.settings.model.clone())],
                    );
                }
                true
            }
            Msg::Done(n) => {
                if let Some(c) = self.in_flight.get_mut(n) {
                    *c = c.saturating_sub(1);
                }
                true
            }
            Msg::Shutdown => false,
        }
    }

    /// Hands batches to idle replicas (full ones at once, partial ones once the oldest entry has
    /// waited `max_wait`) and prefetches one full batch per busy replica.
    fn dispatch(&mut self) {
        let before = self.queue.len();
        let mut gone = 0;
        self.queue.retain(|e| {
            let open = !e.reply.is_closed();
            if !open {
                gone += e.ids.len();
            }
            open
        });
        self.counters
            .skipped
            .fetch_add((before - self.queue.len()) as u64, Ordering::Relaxed);
        self.counters
            .waiting_tokens
            .fetch_sub(gone, Ordering::Relaxed);
        loop {
            if self.queue.is_empty() {
                return;
            }
            // The least busy replica first.
            let Some((r, &busy)) = self.in_flight.iter().enumerate().min_by_key(|(_, c)| **c)
            else {
                return;
            };
            if busy >= 2 {
                return;
            }
            let lens: Vec<usize> = self.queue.iter().map(|e| e.ids.len()).collect();
            let (chosen, full) = select(&lens, self.settings.max_batch_tokens);
            let waited = self.queue[0].since.elapsed() >= self.settings.max_wait;
            if !(full || (busy == 0 && waited)) {
                return;
            }
            let batch = self.take(&chosen, full);
            match self.replicas[r].try_send(batch) {
                Ok(()) => self.in_flight[r] += 1,
                Err(TrySendError::Full(batch)) => {
                    // Cannot happen (the bound is the most in flight); keep the work rather than
                    // lose it, and wait for the replica's next `Done`.
                    tracing::warn!(model = %self.settings.model, replica = r, "replica channel unexpectedly full");
                    let tokens = batch.entries.iter().map(|e| e.ids.len()).sum();
                    self.counters
                        .waiting_tokens
                        .fetch_add(tokens, Ordering::Relaxed);
                    self.queue.extend(batch.entries);
                    self.queue.sort_by_key(|e| e.since);
                    return;
                }
                Err(TrySendError::Disconnected(batch)) => {
                    for e in batch.entries {
                        let _ = e.reply.send(Err(ScoreError::transient(
                            FailureReason::ModelUnavailable,
                            format!("model {}: replica {r} has stopped", self.settings.model),
                        )));
                    }
                    self.in_flight[r] = usize::MAX;
                }
            }
        }
    }

    /// Moves the chosen entries out of the queue, keeping the rest in arrival order.
    fn take(&mut self, chosen: &[usize], full: bool) -> Batch {
        let mut pick = vec![false; self.queue.len()];
        for &i in chosen {
            pick[i] = true;
        }
        let mut entries = Vec::with_capacity(chosen.len());
        let mut rest = Vec::with_capacity(self.queue.len() - chosen.len());
        for (e, p) in std::mem::take(&mut self.queue).into_iter().zip(pick) {
            if p { entries.push(e) } else { rest.push(e) }
        }
        self.queue = rest;
        let tokens = entries.iter().map(|e| e.ids.len()).sum();
        self.counters
            .waiting_tokens
            .fetch_sub(tokens, Ordering::Relaxed);
        entries.sort_by_key(|e| e.ids.len());
        Batch { entries, full }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn padded(lens: &[usize], chosen: &[usize]) -> usize {
        chosen.len() * chosen.iter().map(|&i| lens[i]).max().unwrap_or(0)
    }

    #[test]
    fn takes_everything_that_fits() {
        let lens = [10, 12, 11, 9];
        let (chosen, full) = select(&lens, 1000);
        assert_eq!(chosen.len(), 4);
        assert!(!full);
    }

    #[test]
    fn respects_the_budget_and_starts_at_the_oldest() {
        let lens = [256; 100];
        let (chosen, full) = select(&lens, 16_384);
        assert_eq!(chosen.len(), 64);
        assert!(full);
        assert!(chosen.contains(&0));
        assert!(padded(&lens, &chosen) <= 16_384);
    }

    #[test]
    fn buckets_by_length() {
        // The oldest is long: it is batched with the other long ones, not padded short ones.
        let lens = [1000, 20, 990, 25, 1010, 30, 18, 1005];
        let (chosen, full) = select(&lens, 4096);
        let mut got: Vec<usize> = chosen.iter().map(|&i| lens[i]).collect();
        got.sort_unstable();
        assert_eq!(got, vec![990, 1000, 1005, 1010]);
        assert!(full);
        // The oldest is short: the short ones go together, the long ones wait for their own batch.
        let lens = [20, 1000, 25, 990, 28, 22];
        let (chosen, full) = select(&lens, 4000);
        assert!(!full);
        let mut got: Vec<usize> = chosen.iter().map(|&i| lens[i]).collect();
        got.sort_unstable();
        assert_eq!(got, vec![20, 22, 25, 28]);
    }

    #[test]
    fn a_lone_entry_always_goes() {
        let (chosen, full) = select(&[4000], 4096);
        assert_eq!(chosen, vec![0]);
        assert!(full, "nothing else could join: no reason to wait");
        assert_eq!(select(&[40], 4096), (vec![0], false));
        assert_eq!(select(&[], 10), (vec![], false));
    }

    #[test]
    fn padding_stays_low_on_skewed_lengths() {
        // Log-normal-ish lengths; every batch formed until the queue is empty stays within budget
        // and wastes little to padding.
        let mut lens: Vec<usize> = (0..500u64)
            .map(|i| {
                let x = (i.wrapping_mul(2_654_435_761) % 1000) as f64 / 1000.0;
                (16.0 * (128f64).powf(x * x)) as usize
            })
            .collect();
        let (mut real, mut pad) = (0, 0);
        while !lens.is_empty() {
            let (chosen, _) = select(&lens, 16_384);
            assert!(padded(&lens, &chosen) <= 16_384.max(lens[0]));
            real += chosen.iter().map(|&i| lens[i]).sum::<usize>();
            pad += padded(&lens, &chosen);
            let mut k = 0;
            lens.retain(|_| {
                k += 1;
                !chosen.contains(&(k - 1))
            });
        }
        let efficiency = real as f64 / pad as f64;
        assert!(efficiency > MIN_FILL, "padding efficiency {efficiency}");
    }

    #[test]
    fn admission_is_all_or_nothing_and_permits_give_back() {
        let a = Arc::new(Admission {
            admitted: AtomicUsize::new(0),
            capacity: 3,
        });
        let two = a.try_admit(2).expect("room for 2");
        assert!(a.try_admit(2).is_none());
        let one = a.try_admit(1).expect("room for 1");
        drop(two);
        assert_eq!(a.admitted.load(Ordering::Relaxed), 1);
        drop(one);
        assert_eq!(a.admitted.load(Ordering::Relaxed), 0);
    }
}
