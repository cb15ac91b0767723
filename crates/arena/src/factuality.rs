//! Factuality of models: per model, factual precision (FActScore: the mean over answered
//! responses of their supported fraction of claims), the claim-level error rate (unsupported
//! claims over all claims), the response-level hallucination rate (answered responses with at
//! least one unsupported claim) and the abstention rate, with seeded bootstrap intervals over
//! responses.

use std::fmt;

use serde::Serialize;

use crate::stats::{self, Interval};

/// What the judge found in one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    /// Index of the model.
    pub model: usize,
    /// Claims supported by the reference.
    pub supported: usize,
    /// Claims verified.
    pub claims: usize,
    /// The response abstained (no claims).
    pub abstained: bool,
}

/// A rate with its bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Estimate {
    /// The estimate on all responses.
    pub value: f64,
    /// Bootstrap 95 % interval (responses resampled, seeded).
    pub ci: Interval,
}

/// One model's factuality.
#[derive(Debug, Clone, Serialize)]
pub struct ModelFactuality {
    /// The model.
    pub model: String,
    /// Responses checked (answered and abstained).
    pub responses: usize,
    /// Responses that abstained.
    pub abstained: usize,
    /// Claims verified over the answered responses.
    pub claims: usize,
    /// Factual precision (mean supported fraction per answered response).
    pub precision: Option<Estimate>,
    /// Unsupported claims over all claims.
    pub claim_error_rate: Option<Estimate>,
    /// Answered responses with at least one unsupported claim.
    pub hallucination_rate: Option<Estimate>,
    /// Abstentions over responses.
    pub abstention_rate: Option<f64>,
}

/// Every model's factuality.
#[derive(Debug, Clone, Serialize)]
pub struct FactualityReport {
    /// Per model, in the order given.
    pub models: Vec<ModelFactuality>,
}

/// (precision, claim error rate, hallucination rate) of answered responses.
fn rates(answered: &[Checked]) -> Option<[f64; 3]> {
    if answered.is_empty() {
        return None;
    }
    let n = answered.len() as f64;
    let precision = answered
        .iter()
        .map(|c| c.supported as f64 / c.claims as f64)
        .sum::<f64>()
        / n;
    let claims: usize = answered.iter().map(|c| c.claims).sum();
    let unsupported: usize = answered.iter().map(|c| c.claims - c.supported).sum();
    let hallucinated = answered.iter().filter(|c| c.supported < c.claims).count() as f64;
    Some([
        precision,
        unsupported as f64 / claims as f64,
        hallucinated / n,
    ])
}

/// Summarises the checked responses of `models`; intervals by `resamples` bootstrap resamples
/// of each model's answered responses, seeded with `seed`.
pub fn report(
    models: &[String],
    checked: &[Checked],
    resamples: usize,
    seed: u64,
) -> FactualityReport {
    let models = models
        .iter()
        .enumerate()
        .map(|(k, name)| {
            let mine: Vec<&Checked> = checked.iter().filter(|c| c.model == k).collect();
            let answered: Vec<Checked> = mine
                .iter()
                .filter(|c| !c.abstained && c.claims > 0)
                .map(|c| **c)
                .collect();
            let point = rates(&answered);
            let cis = stats::bootstrap(answered.len(), resamples, seed, |idx| {
                let sample: Vec<Checked> = idx.iter().map(|&i| answered[i]).collect();
                rates(&sample).map(|r| r.to_vec())
            });
            let estimate = |i: usize| {
                point.map(|p| Estimate {
                    value: p[i],
                    ci: cis.get(i).copied().unwrap_or(Interval {
                        low: p[i],
                        high: p[i],
                    }),
                })
            };
            let abstained = mine.len() - answered.len();
            ModelFactuality {
                model: name.clone(),
                responses: mine.len(),
                abstained,
                claims: answered.iter().map(|c| c.claims).sum(),
                precision: estimate(0),
                claim_error_rate: estimate(1),
                hallucination_rate: estimate(2),
                abstention_rate: (!mine.is_empty()).then(|| abstained as f64 / mine.len() as f64),
            }
        })
        .collect();
    FactualityReport { models }
}

fn cell(e: &Option<Estimate>) -> String {
    e.map_or_else(
        || "–".to_owned(),
        |e| {
            format!(
                "{:.1}% [{:.1}, {:.1}]",
                100.0 * e.value,
                100.0 * e.ci.low,
                100.0 * e.ci.high
            )
        },
    )
}

impl fmt::Display for FactualityReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self
            .models
            .iter()
            .map(|m| m.model.len())
            .max()
            .unwrap_or(5)
            .max(5);
        writeln!(
            f,
            "{:<width$}  {:>9} {:>9} {:>6}  {:>22}  {:>22}  {:>22}",
            "model",
            "responses",
            "abstained",
            "claims",
            "factual precision",
            "claim error rate",
            "hallucination rate"
        )?;
        for m in &self.models {
            writeln!(
                f,
                "{:<width$}  {:>9} {:>9} {:>6}  {:>22}  {:>22}  {:>22}",
                m.model,
                m.responses,
                m.abstained,
                m.claims,
                cell(&m.precision),
                cell(&m.claim_error_rate),
                cell(&m.hallucination_rate)
            )?;
        }
        writeln!(
            f,
            "bootstrap 95% intervals over responses; abstentions are left out of the rates"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(supported: usize, claims: usize) -> Checked {
        Checked {
            model: 0,
            supported,
            claims,
            abstained: claims == 0,
        }
    }

    #[test]
    fn rates_by_hand_and_bootstrap_intervals_by_numpy() {
        // By hand: answered (2/3, 1/1, 3/4, 2/2), one abstention.
        //   precision = (2/3 + 1 + 3/4 + 1)/4 = 0.8541666…; claim error rate = (1 + 0 + 1 + 0)/10
        //   = 0.2; hallucination rate = 2/4 = 0.5; abstention rate = 1/5.
        let checked = [c(2, 3), c(1, 1), c(0, 0), c(3, 4), c(2, 2)];
        let r = report(&["m".to_owned()], &checked, 1000, 5);
        let m = &r.models[0];
        assert_eq!((m.responses, m.abstained, m.claims), (5, 1, 10));
        let p = m.precision.expect("answered");
        assert!((p.value - 0.854_166_666_666_666_6).abs() < 1e-12);
        assert!((m.claim_error_rate.expect("answered").value - 0.2).abs() < 1e-12);
        let h = m.hallucination_rate.expect("answered");
        assert!((h.value - 0.5).abs() < 1e-12);
        assert_eq!(m.abstention_rate, Some(0.2));
        // Python (numpy 2.4), nxt() the SplitMix64 of stats.rs seeded 5, answered = [(2,3),
        // (1,1),(3,4),(2,2)]; 1000 resamples of 4 indices ((nxt()*4) >> 64), each giving
        // precision, claim error and hallucination rates as above; np.percentile(…, [2.5, 97.5]):
        //   precision [0.70833333, 1.0], claim error [0.0, 0.3], hallucination [0.0, 1.0]
        close(p.ci.low, 0.708_333_33);
        close(p.ci.high, 1.0);
        let e = m.claim_error_rate.expect("answered");
        close(e.ci.low, 0.0);
        close(e.ci.high, 0.3);
        close(h.ci.low, 0.0);
        close(h.ci.high, 1.0);
        assert!(r.to_string().contains("85.4%"), "{r}");
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-6, "{a} != {b}");
    }
}
