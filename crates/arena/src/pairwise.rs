//! A pairwise arena: verdicts of a judge on pairs of models become per-pair win rates (Wilson
//! interval, Elo difference, length-controlled win rate, comparisons needed) and, with three or
//! more models, Bradley–Terry ratings with bootstrap intervals and a win-rate matrix.

use std::fmt;

use serde::Serialize;

use crate::stats::{self, Anchor, Battle, Interval, Z95};

/// One judged pair: model `a`'s response against model `b`'s on one prompt, both orders.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The prompt id.
    pub prompt: String,
    /// Index of the first model.
    pub a: usize,
    /// Index of the second model.
    pub b: usize,
    /// Model a's share of the point over both orders (1 won both, 0.5 tie, 0 lost both).
    pub score: f64,
    /// The judge's verdict followed the position, not the content (the same label won in
    /// both orders).
    pub inconsistent: bool,
    /// Length of a's response, in characters.
    pub len_a: usize,
    /// Length of b's response, in characters.
    pub len_b: usize,
}

/// What a position-inconsistent verdict counts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Inconsistent {
    /// Left out of every statistic (counted apart).
    Drop,
    /// A tie.
    Tie,
}

/// How an arena is summarised.
#[derive(Debug, Clone)]
pub struct Options {
    /// What a position-inconsistent verdict counts as.
    pub inconsistent: Inconsistent,
    /// Where Bradley–Terry ratings are pinned.
    pub anchor: Anchor,
    /// Bootstrap resamples of the battles.
    pub resamples: usize,
    /// Seed of the bootstrap.
    pub seed: u64,
    /// Also fit Bradley–Terry with a style control on response length.
    pub style_control: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            inconsistent: Inconsistent::Drop,
            anchor: Anchor::Mean(1000.0),
            resamples: 1000,
            seed: 0,
            style_control: false,
        }
    }
}

/// The statistics of one model pair, from a's side.
#[derive(Debug, Clone, Serialize)]
pub struct PairReport {
    /// The first model.
    pub a: String,
    /// The second model.
    pub b: String,
    /// Verdicts counted.
    pub battles: usize,
    /// a won (both orders, or one order and a tie in the other).
    pub wins: usize,
    /// b won.
    pub losses: usize,
    /// Ties (inconsistent verdicts too with `--inconsistent tie`).
    pub ties: usize,
    /// Position-inconsistent verdicts (dropped or counted as ties, as the options say).
    pub inconsistent: usize,
    /// a's win rate, ties split half.
    pub win_rate: Option<f64>,
    /// Wilson 95 % interval of the win rate.
    pub ci: Option<Interval>,
    /// The Elo difference the win rate implies, 400·log10(p/(1−p)).
    pub elo: Option<f64>,
    /// The length-controlled win rate (AlpacaEval 2 style).
    pub lc_win_rate: Option<f64>,
    /// Comparisons the observed win rate needs for its interval to exclude 50 %.
    pub comparisons_needed: Option<u64>,
}

/// One model's Bradley–Terry rating.
#[derive(Debug, Clone, Serialize)]
pub struct Rating {
    /// The model.
    pub model: String,
    /// The rating (scale 400, base 10).
    pub rating: f64,
    /// Bootstrap 95 % interval.
    pub ci: Interval,
    /// Battles the model was in.
    pub battles: usize,
}

/// The whole arena.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The models, in the order given.
    pub models: Vec<String>,
    /// What inconsistent verdicts counted as.
    pub inconsistent: Inconsistent,
    /// Per model pair.
    pub pairs: Vec<PairReport>,
    /// Bradley–Terry ratings, best first (three or more models).
    pub ratings: Option<Vec<Rating>>,
    /// `matrix[i][j]`: model i's win rate against model j (three or more models).
    pub matrix: Option<Vec<Vec<Option<f64>>>>,
    /// Bradley–Terry ratings with a style control on length, best first (with
    /// `style_control`, three or more models, and a finite fit).
    pub style_ratings: Option<Vec<Rating>>,
    /// The style coefficient: log-odds of a length advantage (tanh of Δ over its sd).
    pub style_beta: Option<f64>,
}

/// The battles the verdicts count as, after the options' treatment of inconsistent ones.
fn battles<'v>(verdicts: &'v [Verdict], options: &Options) -> Vec<(Battle, &'v Verdict)> {
    verdicts
        .iter()
        .filter_map(|v| {
            let score = match (v.inconsistent, options.inconsistent) {
                (true, Inconsistent::Drop) => return None,
                (true, Inconsistent::Tie) => 0.5,
                (false, _) => v.score,
            };
            Some((
                Battle {
                    a: v.a,
                    b: v.b,
                    score,
                },
                v,
            ))
        })
        .collect()
}

/// Summarises `verdicts` among `models`.
pub fn report(models: &[String], verdicts: &[Verdict], options: &Options) -> Report {
    let counted = battles(verdicts, options);
    let n = models.len();
    let mut pairs = Vec::new();
    let mut matrix = vec![vec![None; n]; n];
    for i in 0..n {
        for j in i + 1..n {
            // (score from i's side, length difference i − j)
            let mut outcomes = Vec::new();
            for (b, v) in &counted {
                let (li, lj) = (v.len_a as f64, v.len_b as f64);
                if (b.a, b.b) == (i, j) {
                    outcomes.push((b.score, li - lj));
                } else if (b.a, b.b) == (j, i) {
                    outcomes.push((1.0 - b.score, lj - li));
                }
            }
            let inconsistent = verdicts
                .iter()
                .filter(|v| v.inconsistent && ((v.a, v.b) == (i, j) || (v.a, v.b) == (j, i)))
                .count();
            let total = outcomes.len();
            let points: f64 = outcomes.iter().map(|o| o.0).sum();
            let win_rate = (total > 0).then(|| points / total as f64);
            matrix[i][j] = win_rate;
            matrix[j][i] = win_rate.map(|p| 1.0 - p);
            pairs.push(PairReport {
                a: models[i].clone(),
                b: models[j].clone(),
                battles: total,
                wins: outcomes.iter().filter(|o| o.0 > 0.5).count(),
                losses: outcomes.iter().filter(|o| o.0 < 0.5).count(),
                ties: outcomes.iter().filter(|o| o.0 == 0.5).count(),
                inconsistent,
                win_rate,
                ci: stats::wilson(points, total as f64, Z95),
                elo: win_rate.map(stats::elo_difference),
                lc_win_rate: stats::length_controlled_win_rate(&outcomes),
                comparisons_needed: win_rate.and_then(|p| stats::comparisons_needed(p, Z95)),
            });
        }
    }
    let (ratings, matrix) = if n >= 3 {
        let plain: Vec<Battle> = counted.iter().map(|(b, _)| *b).collect();
        let (r, ci) = stats::bradley_terry_bootstrap(
            n,
            &plain,
            options.anchor,
            options.resamples,
            options.seed,
        );
        let mut ratings: Vec<Rating> = (0..n)
            .map(|k| Rating {
                model: models[k].clone(),
                rating: r[k],
                ci: ci.get(k).copied().unwrap_or(Interval {
                    low: f64::NAN,
                    high: f64::NAN,
                }),
                battles: plain.iter().filter(|b| b.a == k || b.b == k).count(),
            })
            .collect();
        ratings.sort_by(|x, y| y.rating.total_cmp(&x.rating));
        (Some(ratings), Some(matrix))
    } else {
        (None, None)
    };
    let styled = (n >= 3 && options.style_control)
        .then(|| {
            let plain: Vec<Battle> = counted.iter().map(|(b, _)| *b).collect();
            let lengths: Vec<f64> = counted
                .iter()
                .map(|(_, v)| v.len_a as f64 - v.len_b as f64)
                .collect();
            let (r, beta) = stats::bradley_terry_style(n, &plain, &lengths, options.anchor)?;
            let ci = stats::bootstrap(plain.len(), options.resamples, options.seed, |idx| {
                let b: Vec<Battle> = idx.iter().map(|&i| plain[i]).collect();
                let l: Vec<f64> = idx.iter().map(|&i| lengths[i]).collect();
                stats::bradley_terry_style(n, &b, &l, options.anchor).map(|(r, _)| r)
            });
            let mut rated: Vec<Rating> = (0..n)
                .map(|k| Rating {
                    model: models[k].clone(),
                    rating: r[k],
                    ci: ci.get(k).copied().unwrap_or(Interval {
                        low: f64::NAN,
                        high: f64::NAN,
                    }),
                    battles: plain.iter().filter(|b| b.a == k || b.b == k).count(),
                })
                .collect();
            rated.sort_by(|x, y| y.rating.total_cmp(&x.rating));
            Some((rated, beta))
        })
        .flatten();
    let (style_ratings, style_beta) = match styled {
        Some((r, beta)) => (Some(r), Some(beta)),
        None => (None, None),
    };
    Report {
        models: models.to_vec(),
        inconsistent: options.inconsistent,
        pairs,
        ratings,
        matrix,
        style_ratings,
        style_beta,
    }
}

fn pct(p: Option<f64>) -> String {
    p.map_or_else(|| "–".to_owned(), |p| format!("{:.1}%", 100.0 * p))
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self
            .models
            .iter()
            .map(|m| m.len())
            .max()
            .unwrap_or(5)
            .max(5);
        writeln!(
            f,
            "{:<w$}  {:<w$}  {:>4} {:>4} {:>4} {:>5}  {:>7}  {:>15}  {:>6}  {:>7}  {:>6}",
            "model",
            "vs",
            "win",
            "loss",
            "tie",
            "incon",
            "win%",
            "95% CI",
            "Elo Δ",
            "LC win%",
            "need n",
            w = width
        )?;
        for p in &self.pairs {
            let ci = p.ci.map_or_else(
                || "–".to_owned(),
                |i| format!("[{:.1}, {:.1}]", 100.0 * i.low, 100.0 * i.high),
            );
            let elo = p.elo.map_or_else(
                || "–".to_owned(),
                |e| {
                    if e.is_finite() {
                        format!("{e:+.0}")
                    } else if e > 0.0 {
                        "+inf".to_owned()
                    } else {
                        "-inf".to_owned()
                    }
                },
            );
            let need = p
                .comparisons_needed
                .map_or_else(|| "–".to_owned(), |n| n.to_string());
            writeln!(
                f,
                "{:<w$}  {:<w$}  {:>4} {:>4} {:>4} {:>5}  {:>7}  {:>15}  {:>6}  {:>7}  {:>6}",
                p.a,
                p.b,
                p.wins,
                p.losses,
                p.ties,
                p.inconsistent,
                pct(p.win_rate),
                ci,
                elo,
                pct(p.lc_win_rate),
                need,
                w = width
            )?;
        }
        let dropped = matches!(self.inconsistent, Inconsistent::Drop);
        writeln!(
            f,
            "position-inconsistent verdicts (incon) are {}; \"need n\": comparisons for the 95% interval to exclude 50%",
            if dropped {
                "dropped"
            } else {
                "counted as ties"
            }
        )?;
        if let Some(ratings) = &self.ratings {
            writeln!(f, "\nBradley–Terry ratings (bootstrap 95% intervals)")?;
            for r in ratings {
                writeln!(
                    f,
                    "{:<w$}  {:>7.1}  [{:.1}, {:.1}]  {} battles",
                    r.model,
                    r.rating,
                    r.ci.low,
                    r.ci.high,
                    r.battles,
                    w = width
                )?;
            }
        }
        if let (Some(ratings), Some(beta)) = (&self.style_ratings, self.style_beta) {
            writeln!(
                f,
                "\nwith a style control on length (β = {beta:+.2} log-odds per sd of length advantage)"
            )?;
            for r in ratings {
                writeln!(
                    f,
                    "{:<w$}  {:>7.1}  [{:.1}, {:.1}]",
                    r.model,
                    r.rating,
                    r.ci.low,
                    r.ci.high,
                    w = width
                )?;
            }
        }
        if let Some(matrix) = &self.matrix {
            writeln!(f, "\nwin rate of the row against the column")?;
            write!(f, "{:<w$}", "", w = width)?;
            for m in &self.models {
                write!(f, "  {m:>w$}", w = width.max(6))?;
            }
            writeln!(f)?;
            for (i, row) in matrix.iter().enumerate() {
                write!(f, "{:<w$}", self.models[i], w = width)?;
                for (j, cell) in row.iter().enumerate() {
                    let text = if i == j { "·".to_owned() } else { pct(*cell) };
                    write!(f, "  {text:>w$}", w = width.max(6))?;
                }
                writeln!(f)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: usize, b: usize, score: f64, inconsistent: bool) -> Verdict {
        Verdict {
            prompt: String::new(),
            a,
            b,
            score,
            inconsistent,
            len_a: 10,
            len_b: 10,
        }
    }

    #[test]
    fn counts_from_both_sides_and_treats_inconsistent_verdicts_as_told() {
        let models = vec!["x".to_owned(), "y".to_owned()];
        let verdicts = vec![
            v(0, 1, 1.0, false),
            v(1, 0, 0.0, false),
            v(0, 1, 0.5, false),
            v(0, 1, 0.0, false),
            v(0, 1, 0.5, true),
        ];
        // By hand: drop → x wins 2, loses 1, ties 1: (2 + 0.5)/4 = 62.5 %.
        let r = report(&models, &verdicts, &Options::default());
        let p = &r.pairs[0];
        assert_eq!((p.wins, p.losses, p.ties, p.inconsistent), (2, 1, 1, 1));
        assert_eq!(p.battles, 4);
        assert_eq!(p.win_rate, Some(0.625));
        assert!(r.ratings.is_none());
        // tie → 5 battles, (2 + 1)/5 = 60 %.
        let options = Options {
            inconsistent: Inconsistent::Tie,
            ..Options::default()
        };
        let p = &report(&models, &verdicts, &options).pairs[0];
        assert_eq!((p.wins, p.losses, p.ties, p.battles), (2, 1, 2, 5));
        assert_eq!(p.win_rate, Some(0.6));
        let ci = p.ci.expect("battles");
        let want = stats::wilson(3.0, 5.0, Z95).expect("n > 0");
        assert_eq!(ci, want);
    }

    #[test]
    fn three_models_get_ratings_and_a_matrix() {
        let models: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let mut verdicts = Vec::new();
        for k in 0..6 {
            verdicts.push(v(0, 1, if k < 4 { 1.0 } else { 0.0 }, false));
            verdicts.push(v(1, 2, if k < 4 { 1.0 } else { 0.5 }, false));
            verdicts.push(v(0, 2, 1.0, false));
        }
        let r = report(&models, &verdicts, &Options::default());
        let ratings = r.ratings.as_ref().expect("three models");
        let order: Vec<&str> = ratings.iter().map(|r| r.model.as_str()).collect();
        assert_eq!(order, ["a", "b", "c"]);
        let mean = ratings.iter().map(|r| r.rating).sum::<f64>() / 3.0;
        assert!((mean - 1000.0).abs() < 1e-6);
        let m = r.matrix.as_ref().expect("three models");
        assert_eq!(m[0][1], Some(4.0 / 6.0));
        assert_eq!(m[2][0], Some(0.0));
        let table = r.to_string();
        assert!(table.contains("Bradley–Terry"), "{table}");
        assert!(table.contains("+inf"), "{table}");
    }
}
