//! The statistics of an arena: Wilson intervals, Elo differences, Bradley–Terry ratings, seeded
//! bootstrap intervals, the length-controlled win rate, FActScore's length penalty and the
//! number of comparisons a win rate needs.
//!
//! Every function is deterministic: the bootstrap draws from a seeded SplitMix64 generator,
//! written out here so that its draws can be reproduced outside Rust (the tests do, with numpy).

use serde::Serialize;

/// The 97.5 % quantile of the standard normal distribution (a two-sided 95 % interval).
pub const Z95: f64 = 1.959_963_984_540_054;

/// The base-10, scale-400 logistic of arena ratings.
const SCALE: f64 = 400.0;

/// A confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Interval {
    /// Lower bound.
    pub low: f64,
    /// Upper bound.
    pub high: f64,
}

impl Interval {
    /// Whether `x` lies strictly outside the interval.
    pub fn excludes(&self, x: f64) -> bool {
        x < self.low || x > self.high
    }
}

/// The Wilson score interval of `successes` out of `n` trials (successes may be fractional:
/// ties count half), at the normal quantile `z` ([`Z95`] for 95 %). `None` when `n` is 0.
pub fn wilson(successes: f64, n: f64, z: f64) -> Option<Interval> {
    if n <= 0.0 {
        return None;
    }
    let p = (successes / n).clamp(0.0, 1.0);
    let z2 = z * z;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = z / (1.0 + z2 / n) * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    Some(Interval {
        low: (centre - half).max(0.0),
        high: (centre + half).min(1.0),
    })
}

/// The Elo difference a win rate `p` implies: 400·log10(p / (1 − p)); ±∞ at 1 and 0.
pub fn elo_difference(p: f64) -> f64 {
    SCALE * (p / (1.0 - p)).log10()
}

/// How many comparisons a win rate `p` needs for its Wilson interval (at `z`) to exclude 50 %:
/// the least `n` at which it does. `None` at exactly 50 % (no count suffices) or outside [0, 1].
pub fn comparisons_needed(p: f64, z: f64) -> Option<u64> {
    if !(0.0..=1.0).contains(&p) || (p - 0.5).abs() < 1e-12 {
        return None;
    }
    let excludes = |n: u64| wilson(p * n as f64, n as f64, z).is_some_and(|i| i.excludes(0.5));
    // The interval narrows as n grows: double to a bound, then bisect.
    let mut high = 1u64;
    while !excludes(high) {
        high = high.checked_mul(2)?;
    }
    let mut low = high / 2;
    while high - low > 1 {
        let mid = low + (high - low) / 2;
        if excludes(mid) {
            high = mid;
        } else {
            low = mid;
        }
    }
    Some(high)
}

/// One comparison of model `a` with model `b`: `score` is a's share of the point (1 a won, 0 b
/// won, 0.5 a tie; the mean of several verdicts may fall between).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Battle {
    /// Index of the first model.
    pub a: usize,
    /// Index of the second model.
    pub b: usize,
    /// The first model's share of the point, in [0, 1].
    pub score: f64,
}

/// Where Bradley–Terry ratings are pinned (the likelihood fixes only their differences).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Anchor {
    /// The ratings' mean is this value (1000 by convention).
    Mean(f64),
    /// The model of this index has this rating.
    Model(usize, f64),
}

/// The MM iterates are kept within this span of ratings. A model that won (or lost) every one of
/// its battles has no finite maximum-likelihood rating: it is reported as +∞ (or −∞), and the
/// others are rated among themselves.
pub const RATING_SPAN: f64 = 4000.0;

/// Bradley–Terry maximum-likelihood ratings of `models` models from `battles` (scale 400, base
/// 10: P(a beats b) = 1 / (1 + 10^((r_b − r_a)/400)); a tie counts as half a win for each), by
/// Hunter's MM iteration. A model without battles gets the anchor's level; one that won or lost
/// all its battles is ±∞ (see [`RATING_SPAN`]); `Mean` anchors the finite ratings.
pub fn bradley_terry(models: usize, battles: &[Battle], anchor: Anchor) -> Vec<f64> {
    let mut wins = vec![0.0; models];
    let mut games = vec![vec![0.0; models]; models];
    for b in battles {
        if b.a == b.b || b.a >= models || b.b >= models {
            continue;
        }
        wins[b.a] += b.score;
        wins[b.b] += 1.0 - b.score;
        games[b.a][b.b] += 1.0;
        games[b.b][b.a] += 1.0;
    }
    let floor = 10f64.powf(-RATING_SPAN / SCALE);
    let mut pi = vec![1.0; models];
    for _ in 0..10_000 {
        let mut next = pi.clone();
        for i in 0..models {
            let denominator: f64 = (0..models)
                .filter(|&j| games[i][j] > 0.0)
                .map(|j| games[i][j] / (pi[i] + pi[j]))
                .sum();
            if denominator > 0.0 {
                next[i] = (wins[i] / denominator).max(floor);
            }
        }
        // Geometric mean 1 keeps the iterates on one scale.
        let log_mean = next.iter().map(|p| p.ln()).sum::<f64>() / models as f64;
        for p in &mut next {
            *p = (*p / log_mean.exp()).clamp(floor, 1.0 / floor);
        }
        let change = pi
            .iter()
            .zip(&next)
            .map(|(a, b)| (a.ln() - b.ln()).abs())
            .fold(0.0, f64::max);
        pi = next;
        if change < 1e-12 {
            break;
        }
    }
    let unbounded: Vec<Option<f64>> = (0..models)
        .map(|i| {
            let played: f64 = games[i].iter().sum();
            if played > 0.0 && wins[i] <= 0.0 {
                Some(f64::NEG_INFINITY)
            } else if played > 0.0 && wins[i] >= played {
                Some(f64::INFINITY)
            } else {
                None
            }
        })
        .collect();
    let ratings: Vec<f64> = pi.iter().map(|p| SCALE * p.log10()).collect();
    let finite: Vec<f64> = (0..models)
        .filter(|&i| unbounded[i].is_none())
        .map(|i| ratings[i])
        .collect();
    let mean = finite.iter().sum::<f64>() / finite.len().max(1) as f64;
    let shift = match anchor {
        Anchor::Model(k, level) if k < models && unbounded[k].is_none() => level - ratings[k],
        Anchor::Mean(level) | Anchor::Model(_, level) => level - mean,
    };
    (0..models)
        .map(|i| unbounded[i].unwrap_or(ratings[i] + shift))
        .collect()
}

/// Solves `a·x = b` by Gaussian elimination with partial pivoting; `None` when singular.
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Option<Vec<f64>> {
    let n = b.len();
    for col in 0..n {
        let pivot = (col..n).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[pivot][col].abs() < 1e-300 {
            return None;
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        for row in col + 1..n {
            let factor = a[row][col] / a[col][col];
            let (upper, lower) = a.split_at_mut(row);
            for (x, p) in lower[0][col..].iter_mut().zip(&upper[col][col..]) {
                *x -= factor * p;
            }
            b[row] -= factor * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let tail: f64 = (row + 1..n).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - tail) / a[row][row];
    }
    Some(x)
}

/// Bradley–Terry ratings with a style control on length, as the public arena leaderboards add
/// it: P(a beats b) = σ(ln10/400·(r_a − r_b) + β·tanh(Δ/sd(Δ))), Δ the length difference a − b
/// of each battle (`lengths[i]` for `battles[i]`), fitted by Newton's method on the likelihood
/// (with [`LENGTH_RIDGE`]·β²/2 subtracted).
/// Returns the ratings (anchored as `anchor` says) and β, the log-odds a length advantage of one
/// standard deviation (through tanh) is worth. `None` when the fit has no finite solution (a
/// model that won or lost every battle) or `lengths` does not match `battles`.
pub fn bradley_terry_style(
    models: usize,
    battles: &[Battle],
    lengths: &[f64],
    anchor: Anchor,
) -> Option<(Vec<f64>, f64)> {
    if models < 2 || lengths.len() != battles.len() || battles.is_empty() {
        return None;
    }
    let n = lengths.len() as f64;
    let mean = lengths.iter().sum::<f64>() / n;
    let sd = (lengths.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / n).sqrt();
    let style: Vec<f64> = lengths
        .iter()
        .map(|d| if sd > 0.0 { (d / sd).tanh() } else { 0.0 })
        .collect();
    // Parameters: u_1 … u_{m−1} (u_0 = 0: the likelihood fixes differences only), then β.
    let dim = models;
    let column = |model: usize| model.checked_sub(1);
    let mut theta = vec![0.0; dim];
    for _ in 0..200 {
        let mut grad = vec![0.0; dim];
        let mut hess = vec![vec![0.0; dim]; dim];
        for (b, s) in battles.iter().zip(&style) {
            let u = |m: usize| column(m).map_or(0.0, |c| theta[c]);
            let eta = u(b.a) - u(b.b) + theta[dim - 1] * s;
            let p = 1.0 / (1.0 + (-eta).exp());
            let w = p * (1.0 - p);
            let mut x: Vec<(usize, f64)> = Vec::with_capacity(3);
            if let Some(c) = column(b.a) {
                x.push((c, 1.0));
            }
            if let Some(c) = column(b.b) {
                x.push((c, -1.0));
            }
            x.push((dim - 1, *s));
            for &(i, xi) in &x {
                grad[i] += (b.score - p) * xi;
                for &(j, xj) in &x {
                    hess[i][j] += w * xi * xj;
                }
            }
        }
        for (i, row) in hess.iter_mut().enumerate() {
            // A vanishing ridge keeps a set without style spread solvable.
            row[i] += 1e-9;
        }
        // The ridge of the length-controlled win rate on β: a set that length separates
        // perfectly still has a finite fit.
        grad[dim - 1] -= LENGTH_RIDGE * theta[dim - 1];
        hess[dim - 1][dim - 1] += LENGTH_RIDGE;
        let step = solve(hess, grad)?;
        for (t, d) in theta.iter_mut().zip(&step) {
            *t += d;
        }
        if step.iter().fold(0.0f64, |m, d| m.max(d.abs())) < 1e-10 {
            let k = SCALE / std::f64::consts::LN_10;
            let ratings: Vec<f64> = (0..models)
                .map(|m| k * column(m).map_or(0.0, |c| theta[c]))
                .collect();
            let shift = match anchor {
                Anchor::Model(j, level) if j < models => level - ratings[j],
                Anchor::Mean(level) | Anchor::Model(_, level) => {
                    level - ratings.iter().sum::<f64>() / models as f64
                }
            };
            let finite = theta.iter().all(|t| t.is_finite() && t.abs() < 50.0);
            return finite.then(|| (ratings.iter().map(|r| r + shift).collect(), theta[dim - 1]));
        }
    }
    None
}

/// SplitMix64: a small, well-mixed generator whose draws are easy to reproduce anywhere.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform index below `n` (Lemire's multiply-shift: ⌊x·n / 2⁶⁴⌋).
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

/// The `q` quantile (0..=1) of `values` by linear interpolation between order statistics (numpy's
/// default). `None` when `values` is empty.
pub fn quantile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let position = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let below = position.floor() as usize;
    let above = position.ceil() as usize;
    let (low, high) = (sorted[below], sorted[above]);
    // Next to an infinite value (an unbounded rating) the bound is the infinite one.
    Some(if low == high || low.is_infinite() {
        low
    } else if high.is_infinite() {
        high
    } else {
        low + (high - low) * (position - below as f64)
    })
}

/// Percentile bootstrap: `resamples` times, draws `items` indices with replacement (seeded),
/// computes `statistic` on them (it returns one value per output, say one per model) and
/// returns the 2.5 % and 97.5 % quantiles of each output. Resamples whose statistic is `None`
/// are skipped.
pub fn bootstrap(
    items: usize,
    resamples: usize,
    seed: u64,
    mut statistic: impl FnMut(&[usize]) -> Option<Vec<f64>>,
) -> Vec<Interval> {
    let mut rng = SplitMix64::new(seed);
    let mut draws: Vec<Vec<f64>> = Vec::new();
    let mut indices = vec![0usize; items];
    for _ in 0..resamples {
        for i in &mut indices {
            *i = rng.below(items);
        }
        if let Some(values) = statistic(&indices) {
            if draws.is_empty() {
                draws = vec![Vec::with_capacity(resamples); values.len()];
            }
            for (d, v) in draws.iter_mut().zip(values) {
                d.push(v);
            }
        }
    }
    draws
        .iter()
        .map(|d| Interval {
            low: quantile(d, 0.025).unwrap_or(f64::NAN),
            high: quantile(d, 0.975).unwrap_or(f64::NAN),
        })
        .collect()
}

/// Bradley–Terry ratings with bootstrap 95 % intervals over battles (resampled with
/// replacement, seeded).
pub fn bradley_terry_bootstrap(
    models: usize,
    battles: &[Battle],
    anchor: Anchor,
    resamples: usize,
    seed: u64,
) -> (Vec<f64>, Vec<Interval>) {
    let ratings = bradley_terry(models, battles, anchor);
    let intervals = bootstrap(battles.len(), resamples, seed, |idx| {
        let sample: Vec<Battle> = idx.iter().map(|&i| battles[i]).collect();
        Some(bradley_terry(models, &sample, anchor))
    });
    (ratings, intervals)
}

/// Ridge penalty on the length coefficient of [`length_controlled_win_rate`], so that a set the
/// length separates perfectly still has a finite fit.
pub const LENGTH_RIDGE: f64 = 0.01;

/// The length-controlled win rate in the manner of AlpacaEval 2: a logistic regression of the
/// outcome (a model's share of the point against its opponent) on tanh(Δ / sd(Δ)), Δ the
/// response length difference, evaluated at Δ = 0: σ(θ₀). `pairs` are (outcome, Δ). With no
/// spread in Δ, or outcomes all equal, it is the raw win rate. `None` when `pairs` is empty.
pub fn length_controlled_win_rate(pairs: &[(f64, f64)]) -> Option<f64> {
    if pairs.is_empty() {
        return None;
    }
    let n = pairs.len() as f64;
    let raw = pairs.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_d = pairs.iter().map(|p| p.1).sum::<f64>() / n;
    let sd = (pairs.iter().map(|p| (p.1 - mean_d).powi(2)).sum::<f64>() / n).sqrt();
    if sd == 0.0 || raw <= 0.0 || raw >= 1.0 {
        return Some(raw);
    }
    let xs: Vec<(f64, f64)> = pairs.iter().map(|&(y, d)| (y, (d / sd).tanh())).collect();
    let sigmoid = |t: f64| 1.0 / (1.0 + (-t).exp());
    let (mut t0, mut t1) = ((raw / (1.0 - raw)).ln(), 0.0);
    for _ in 0..100 {
        // Newton's step on the penalised log-likelihood.
        let (mut g0, mut g1) = (0.0, -LENGTH_RIDGE * t1);
        let (mut h00, mut h01, mut h11) = (0.0, 0.0, LENGTH_RIDGE);
        for &(y, x) in &xs {
            let p = sigmoid(t0 + t1 * x);
            let w = p * (1.0 - p);
            g0 += y - p;
            g1 += (y - p) * x;
            h00 += w;
            h01 += w * x;
            h11 += w * x * x;
        }
        let det = h00 * h11 - h01 * h01;
        if det.abs() < 1e-300 {
            break;
        }
        let d0 = (h11 * g0 - h01 * g1) / det;
        let d1 = (h00 * g1 - h01 * g0) / det;
        t0 += d0;
        t1 += d1;
        if d0.abs().max(d1.abs()) < 1e-12 {
            break;
        }
    }
    Some(sigmoid(t0))
}

/// FActScore's default length penalty γ: responses with fewer claims are discounted.
pub const FACTSCORE_GAMMA: f64 = 10.0;

/// The FActScore of a response with `supported` of its `claims` supported: the supported
/// fraction, times exp(1 − γ/claims) when the response has fewer than γ claims (γ = 0: no
/// penalty). `None` without claims (an abstention or an empty response).
pub fn factscore(supported: usize, claims: usize, gamma: f64) -> Option<f64> {
    if claims == 0 {
        return None;
    }
    let precision = supported as f64 / claims as f64;
    let n = claims as f64;
    let penalty = if n < gamma {
        (1.0 - gamma / n).exp()
    } else {
        1.0
    };
    Some(precision * penalty)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) {
        assert!((a - b).abs() <= tol, "{a} != {b} (±{tol})");
    }

    #[test]
    fn wilson_intervals() {
        // Python (scipy 1.17, venv $RF_PYTHON):
        //   scipy.stats.binomtest(k, n).proportion_ci(method="wilson"):
        //   binomtest(7, 10).proportion_ci(0.95, "wilson")  -> (0.39677815, 0.89220873)
        //   binomtest(50, 100).proportion_ci(0.95, "wilson") -> (0.40383153, 0.59616847)
        //   binomtest(0, 20).proportion_ci(0.95, "wilson")   -> (0.0, 0.16112516)
        let i = wilson(7.0, 10.0, Z95).expect("n > 0");
        close(i.low, 0.396_778_15, 1e-7);
        close(i.high, 0.892_208_73, 1e-7);
        let i = wilson(50.0, 100.0, Z95).expect("n > 0");
        close(i.low, 0.403_831_53, 1e-7);
        close(i.high, 0.596_168_47, 1e-7);
        let i = wilson(0.0, 20.0, Z95).expect("n > 0");
        close(i.low, 0.0, 1e-12);
        close(i.high, 0.161_125_16, 1e-7);
        assert_eq!(wilson(0.0, 0.0, Z95), None);
    }

    #[test]
    fn elo_differences() {
        // By hand: p = 0.75 → 400·log10(3) = 190.848…; p = 0.5 → 0; p = 0.6478 → 400·log10(0.6478/0.3522).
        close(elo_difference(0.75), 190.848_501_887_864_98, 1e-9);
        close(elo_difference(0.5), 0.0, 1e-12);
        close(elo_difference(0.25), -190.848_501_887_864_98, 1e-9);
        close(elo_difference(0.6478), 105.860_636_817, 1e-6);
        assert!(elo_difference(1.0).is_infinite());
    }

    #[test]
    fn comparisons_needed_for_the_interval_to_exclude_half() {
        // Python: the least n with the Wilson bound past 0.5 (same formula, brute force):
        //   next(n for n in range(1, 10**6) if wilson_low(p*n, n) > 0.5)
        // p = 0.6478 → 44; p = 0.55 → 385; p = 0.9 → 7; p = 0.3 → 25 (upper bound below 0.5).
        assert_eq!(comparisons_needed(0.6478, Z95), Some(44));
        assert_eq!(comparisons_needed(0.55, Z95), Some(385));
        assert_eq!(comparisons_needed(0.9, Z95), Some(7));
        assert_eq!(comparisons_needed(0.3, Z95), Some(25));
        assert_eq!(comparisons_needed(0.5, Z95), None);
    }

    #[test]
    fn bradley_terry_two_models_is_the_elo_of_the_win_rate() {
        // By hand: two models, a wins 6, loses 2, ties 2 → p = 7/10; the MLE difference is
        // 400·log10(7/3) = 147.19…, around the mean 1000.
        let mut battles = Vec::new();
        for score in [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.5, 0.5] {
            battles.push(Battle { a: 0, b: 1, score });
        }
        let r = bradley_terry(2, &battles, Anchor::Mean(1000.0));
        let d = 400.0 * (7.0f64 / 3.0).log10();
        close(r[0], 1000.0 + d / 2.0, 1e-6);
        close(r[1], 1000.0 - d / 2.0, 1e-6);
        let r = bradley_terry(2, &battles, Anchor::Model(1, 1200.0));
        close(r[1], 1200.0, 1e-9);
        close(r[0], 1200.0 + d, 1e-6);
    }

    #[test]
    fn a_model_that_lost_every_battle_is_unbounded_and_the_rest_rated_among_themselves() {
        // By hand: c lost all 4 of its battles; a beat b 3 of 4 → a − b = 400·log10(3),
        // around 1000.
        let mut battles = vec![
            Battle {
                a: 0,
                b: 2,
                score: 1.0,
            },
            Battle {
                a: 1,
                b: 2,
                score: 1.0,
            },
        ];
        battles.extend([1.0, 1.0, 1.0, 0.0].map(|score| Battle { a: 0, b: 1, score }));
        battles.extend([
            Battle {
                a: 2,
                b: 0,
                score: 0.0,
            },
            Battle {
                a: 2,
                b: 1,
                score: 0.0,
            },
        ]);
        let r = bradley_terry(3, &battles, Anchor::Mean(1000.0));
        let d = 400.0 * 3f64.log10();
        close(r[0], 1000.0 + d / 2.0, 1e-6);
        close(r[1], 1000.0 - d / 2.0, 1e-6);
        assert_eq!(r[2], f64::NEG_INFINITY);
        assert_eq!(
            quantile(&[f64::NEG_INFINITY, 1.0, 2.0], 0.25),
            Some(f64::NEG_INFINITY)
        );
        assert_eq!(
            quantile(&[0.0, 1.0, f64::INFINITY], 0.75),
            Some(f64::INFINITY)
        );
    }

    /// Three models, with ties, both orders.
    fn three_model_log() -> Vec<Battle> {
        let mut v = Vec::new();
        let mut add = |a, b, score, times| {
            for _ in 0..times {
                v.push(Battle { a, b, score });
            }
        };
        add(0, 1, 1.0, 5);
        add(0, 1, 0.0, 2);
        add(0, 1, 0.5, 1);
        add(1, 2, 1.0, 4);
        add(1, 2, 0.0, 3);
        add(2, 0, 1.0, 1);
        add(2, 0, 0.0, 4);
        add(2, 0, 0.5, 2);
        v
    }

    #[test]
    fn bradley_terry_three_models_with_ties() {
        // Python (scipy 1.17): maximise Σ s·log σ(r_a − r_b) + (1 − s)·log σ(r_b − r_a), with
        // σ(x) = 1/(1+10^(−x/400)), over r (r_2 fixed at 0), then shift to mean 1000:
        //   from scipy.optimize import minimize; import numpy as np
        //   B = [(0,1,1.)]*5+[(0,1,0.)]*2+[(0,1,.5)]+[(1,2,1.)]*4+[(1,2,0.)]*3+[(2,0,1.)]+[(2,0,0.)]*4+[(2,0,.5)]*2
        //   def nll(x):
        //     r = np.array([x[0], x[1], 0.]); s = 0
        //     for a,b,o in B:
        //       p = 1/(1+10**((r[b]-r[a])/400)); s -= o*np.log(p)+(1-o)*np.log(1-p)
        //     return s
        //   (with the analytic gradient: jac=True, K = ln(10)/400, g[a] −= (o−p)·K, g[b] += (o−p)·K)
        //   x = minimize(nll, [0,0], jac=True, method="BFGS", options={"gtol":1e-12}).x
        //   r = np.array([x[0], x[1], 0.]); print(r - r.mean() + 1000)
        //   -> [1099.37318688, 970.97820676, 929.64860635]
        let r = bradley_terry(3, &three_model_log(), Anchor::Mean(1000.0));
        close(r[0], 1_099.373_19, 1e-4);
        close(r[1], 970.978_21, 1e-4);
        close(r[2], 929.648_61, 1e-4);
    }

    #[test]
    fn style_control_takes_the_length_advantage_out_of_the_ratings() {
        // Python (scipy 1.17): the three-model log B above with a length difference per battle
        // L (a − b); x = tanh(L / L.std()); minimise
        //   −Σ o·log σ(η) + (1 − o)·log(1 − σ(η)) + 0.005·β²,  η = (r_a − r_b)·ln10/400 + β·x,
        // over (r_0, r_1, β) with r_2 = 0 (BFGS, analytic gradient, gtol 1e-12), then shift r
        // to mean 1000:
        //   L = [300,250,200,-50,100,  -100,20,  0,  150,120,100,80,-200,-150,-100,
        //        50,  -300,-250,-200,-150,  0,10]
        //   -> r = [1012.34475648, 993.40964114, 994.24560238], β = 4.96505645
        // (the longer response won most battles: length, not the model, explains them)
        let lengths = [
            300.0, 250.0, 200.0, -50.0, 100.0, -100.0, 20.0, 0.0, 150.0, 120.0, 100.0, 80.0,
            -200.0, -150.0, -100.0, 50.0, -300.0, -250.0, -200.0, -150.0, 0.0, 10.0,
        ];
        let (r, beta) = bradley_terry_style(3, &three_model_log(), &lengths, Anchor::Mean(1000.0))
            .expect("a finite fit");
        close(r[0], 1_012.344_756, 1e-4);
        close(r[1], 993.409_641, 1e-4);
        close(r[2], 994.245_602, 1e-4);
        close(beta, 4.965_056_45, 1e-6);
        // With no length spread it is plain Bradley–Terry.
        let (r, beta) =
            bradley_terry_style(3, &three_model_log(), &[0.0; 22], Anchor::Mean(1000.0))
                .expect("a finite fit");
        close(r[0], 1_099.373_19, 1e-3);
        close(beta, 0.0, 1e-6);
    }

    #[test]
    fn splitmix_draws_match_the_reference() {
        // Python, the reference SplitMix64 (Vigna) with seed 42:
        //   M = 2**64 - 1; s = 42
        //   def nxt():
        //     global s; s = (s + 0x9E3779B97F4A7C15) & M; z = s
        //     z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
        //     z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
        //     return z ^ (z >> 31)
        //   print(nxt(), nxt())  -> 13679457532755275413 2949826092126892291
        let mut rng = SplitMix64::new(42);
        assert_eq!(rng.next_u64(), 13_679_457_532_755_275_413);
        assert_eq!(rng.next_u64(), 2_949_826_092_126_892_291);
    }

    #[test]
    fn seeded_bootstrap_of_a_mean() {
        // Python, with nxt() as above (seed 7) and numpy 2.4:
        //   x = [1,0,1,1,0.5,0,1,1,0,1]; means = []
        //   for _ in range(1000):
        //     idx = [(nxt()*10) >> 64 for _ in range(10)]; means.append(np.mean([x[i] for i in idx]))
        //   print(np.percentile(means, [2.5, 97.5]))  -> [0.35, 0.9]
        let x = [1.0, 0.0, 1.0, 1.0, 0.5, 0.0, 1.0, 1.0, 0.0, 1.0];
        let ci = bootstrap(x.len(), 1000, 7, |idx| {
            Some(vec![
                idx.iter().map(|&i| x[i]).sum::<f64>() / idx.len() as f64,
            ])
        });
        close(ci[0].low, 0.35, 1e-12);
        close(ci[0].high, 0.9, 1e-12);
    }

    #[test]
    fn seeded_bootstrap_of_bradley_terry() {
        // Python, nxt() seeded 11, the nll fit above on each of 200 resamples of B (indices
        // (nxt()*len(B)) >> 64), ratings shifted to mean 1000, np.percentile(…, [2.5, 97.5]):
        //   model 0 -> [995.9322, 1253.4453]; model 2 -> [770.5605, 1035.1577]
        let (r, ci) = bradley_terry_bootstrap(3, &three_model_log(), Anchor::Mean(1000.0), 200, 11);
        close(r[0], 1_099.373_19, 1e-4);
        close(ci[0].low, 995.932_2, 1e-3);
        close(ci[0].high, 1_253.445_3, 1e-3);
        close(ci[2].low, 770.560_5, 1e-3);
        close(ci[2].high, 1_035.157_7, 1e-3);
        assert!(ci.iter().zip(&r).all(|(i, r)| i.low <= *r && *r <= i.high));
    }

    #[test]
    fn length_controlled_win_rate_on_a_toy_set() {
        // Python (scipy 1.17): minimise −Σ y·log p + (1−y)·log(1−p) + 0.005·t1², p = σ(t0 + t1·x),
        // x = tanh(d / d.std()) (population sd), and print σ(t0):
        //   y = np.array([1,1,1,0,1,0.5,0,1,0,1.]); d = np.array([300,250,-20,-100,400,0,-50,120,10,200.])
        //   x = np.tanh(d/d.std()); f = lambda t: -(y*np.log(sig(t[0]+t[1]*x))+(1-y)*np.log(1-sig(t[0]+t[1]*x))).sum()+0.005*t[1]**2
        //   t = minimize(f, [0,0], method="BFGS", options={"gtol":1e-10}).x; print(sig(t[0]))
        //   -> 0.47772, while the raw win rate is 0.65: the longer responses won.
        let y = [1.0, 1.0, 1.0, 0.0, 1.0, 0.5, 0.0, 1.0, 0.0, 1.0];
        let d = [
            300.0, 250.0, -20.0, -100.0, 400.0, 0.0, -50.0, 120.0, 10.0, 200.0,
        ];
        let pairs: Vec<(f64, f64)> = y.iter().copied().zip(d.iter().copied()).collect();
        let lc = length_controlled_win_rate(&pairs).expect("pairs");
        close(lc, 0.477_72, 1e-4);
        assert_eq!(
            length_controlled_win_rate(&[(1.0, 5.0), (1.0, 7.0)]),
            Some(1.0)
        );
        assert_eq!(
            length_controlled_win_rate(&[(1.0, 5.0), (0.0, 5.0)]),
            Some(0.5)
        );
        assert_eq!(length_controlled_win_rate(&[]), None);
    }

    #[test]
    fn factscore_length_penalty() {
        // By hand (Min et al. 2023, γ = 10): 4 of 5 claims, 0.8·exp(1 − 10/5) = 0.8/e = 0.29430…;
        // 12 claims: no penalty; γ = 0: none either.
        close(
            factscore(4, 5, FACTSCORE_GAMMA).unwrap_or_default(),
            0.8 * (-1.0f64).exp(),
            1e-12,
        );
        close(factscore(9, 12, 10.0).unwrap_or_default(), 0.75, 1e-12);
        close(factscore(4, 5, 0.0).unwrap_or_default(), 0.8, 1e-12);
        assert_eq!(factscore(0, 0, 10.0), None);
    }
}
