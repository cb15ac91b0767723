//! `rewardfleet arena`: the responses of two or more models to the same prompts, compared by the
//! profile's pairwise judge through the fleet (embedded or a gateway), summarised by
//! [`rewardfleet_arena`].

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use rewardfleet_arena::factuality::{self as facts, Checked};
use rewardfleet_arena::pairwise::{self, Inconsistent, Options, Verdict};
use rewardfleet_arena::stats::Anchor;
use rewardfleet_core::config::Config;
use rewardfleet_core::{Candidate, Reward, RewardStatus};
use rewardfleet_fleet::Embedded;
use rewardfleet_judge::{
    FACTUALITY_ABSTAINED_FLAG, POSITION_INCONSISTENT_FLAG, parse_supported_flag,
};

use crate::{Logging, jsonl, load_config, secrets};

/// What to do with a verdict that followed the position, not the content.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum InconsistentArg {
    /// Leave it out (counted apart).
    Drop,
    /// Count it as a tie.
    Tie,
}

/// What the arena measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Metric {
    /// Blind pairwise comparisons by the profile's pairwise judge.
    Pairwise,
    /// Each model's factuality by the profile's factuality judge: factual precision, claim
    /// error rate, hallucination rate.
    Factuality,
}

#[derive(clap::Args)]
pub(crate) struct ArenaArgs {
    /// The configuration file (its profile names the judge).
    #[arg(long, short)]
    config: PathBuf,
    /// The profile whose pairwise judge (or panel) compares; default: the configuration's
    /// default profile, or its only one.
    #[arg(long, short)]
    profile: Option<String>,
    /// A gateway URL (http://host:port); without it the judging runs in this process.
    #[arg(long)]
    gateway: Option<String>,
    /// What to measure.
    #[arg(long, value_enum, default_value = "pairwise")]
    metric: Metric,
    /// Position-inconsistent verdicts (the same label won in both orders): dropped or ties.
    #[arg(long, value_enum, default_value = "drop")]
    inconsistent: InconsistentArg,
    /// Pin the Bradley–Terry ratings: this model has `--anchor-rating`; default: mean 1000.
    #[arg(long)]
    anchor: Option<String>,
    /// The anchor model's rating.
    #[arg(long, default_value_t = 1000.0)]
    anchor_rating: f64,
    /// Bootstrap resamples for the intervals.
    #[arg(long, default_value_t = 1000)]
    resamples: usize,
    /// Seed of the bootstrap.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// With three models or more, also fit Bradley–Terry with a style control on response
    /// length (the length advantage as a covariate).
    #[arg(long)]
    style_control: bool,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
    /// Pairs sent to the fleet per batch.
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// One JSONL file of responses per model (the model is the file's name without its
    /// extension); lines are matched across files by `id`.
    #[arg(required = true, num_args = 2..)]
    files: Vec<PathBuf>,
}

/// One model's responses.
struct Model {
    name: String,
    by_id: HashMap<String, Candidate>,
}

/// Reads a model's file; every problem of the file at once.
fn read_model(path: &Path) -> anyhow::Result<Model> {
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut by_id = HashMap::new();
    let mut problems = Vec::new();
    for (i, line) in BufReader::new(file).split(b'\n').enumerate() {
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match jsonl::parse_line(i + 1, &line) {
            Ok(c) if by_id.contains_key(&c.id) => problems.push(format!(
                "line {}: duplicate id {:?}; ids must be unique in a file",
                i + 1,
                c.id
            )),
            Ok(c) => {
                by_id.insert(c.id.clone(), c);
            }
            Err(e) => problems.push(format!("line {}: {}", e.line, e.message)),
        }
    }
    if !problems.is_empty() {
        bail!(
            "{} (model {name:?}): {} problem(s):\n  - {}",
            path.display(),
            problems.len(),
            problems.join("\n  - ")
        );
    }
    Ok(Model { name, by_id })
}

/// The prompt ids every model answered; an error naming the ids some files lack.
fn matched_ids(models: &[Model]) -> anyhow::Result<Vec<String>> {
    let all: BTreeSet<&String> = models.iter().flat_map(|m| m.by_id.keys()).collect();
    let mut problems = Vec::new();
    for m in models {
        let missing: Vec<&str> = all
            .iter()
            .filter(|id| !m.by_id.contains_key(id.as_str()))
            .map(|id| id.as_str())
            .collect();
        if !missing.is_empty() {
            let shown: Vec<&str> = missing.iter().take(10).copied().collect();
            problems.push(format!(
                "model {:?} has no response to {} prompt id(s): {}{}",
                m.name,
                missing.len(),
                shown.join(", "),
                if missing.len() > shown.len() {
                    ", …"
                } else {
                    ""
                }
            ));
        }
    }
    if !problems.is_empty() {
        bail!(
            "prompt ids do not match across the files:\n  - {}",
            problems.join("\n  - ")
        );
    }
    Ok(all.into_iter().cloned().collect())
}

/// The profile to use and the key in `Reward.components` of its component with `method`.
fn component(
    config: &Config,
    profile: Option<&str>,
    method: &str,
) -> anyhow::Result<(String, String)> {
    let names = config.profile_names();
    let name = match profile
        .map(str::to_owned)
        .or_else(|| config.gateway.default_profile.clone())
    {
        Some(p) => p,
        None if names.len() == 1 => names[0].clone(),
        None => bail!(
            "pass --profile; the configuration has several: {}",
            names.join(", ")
        ),
    };
    let Some(p) = config.profile.get(&name) else {
        bail!("unknown profile {name:?}; known: {}", names.join(", "));
    };
    let found = p.components.iter().find(|c| {
        c.scorer
            .as_deref()
            .is_some_and(|s| config.judge.iter().any(|j| j.name == s))
            && c.params.get("method").and_then(|m| m.as_str()) == Some(method)
    });
    match found {
        Some(c) => Ok((name, c.display_name())),
        None => bail!(
            "profile {name:?} has no {method} judge component (a component with `scorer = \"<judge>\", method = \"{method}\"`); its components: {}",
            p.components
                .iter()
                .map(|c| c.display_name())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Sends `candidates` through the fleet (embedded, or the gateway) with `profile`; the rewards
/// by candidate id.
async fn judge_all(
    config: &Config,
    gateway: Option<&str>,
    profile: &str,
    candidates: Vec<Candidate>,
    batch_size: usize,
    logging: &Logging,
) -> anyhow::Result<HashMap<String, Reward>> {
    let total = candidates.len();
    let session = rewardfleet_client::Session::new(format!("arena-{:016x}", rand::random::<u64>()))
        .profile(profile.to_owned())
        .batches(rewardfleet_client::batches(candidates, batch_size.max(2)));
    let progress = indicatif::ProgressBar::new(total as u64);
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} judged ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut rewards = HashMap::new();
    let on_reward = |reward: Reward| {
        progress.inc(1);
        rewards.insert(reward.candidate_id.clone(), reward);
    };
    logging.logs_only();
    match gateway {
        Some(url) => {
            let mut client = rewardfleet_client::connect(url).await?;
            session.run(&mut client, on_reward).await?;
        }
        None => {
            let mut config = config.clone();
            config.nats = None;
            let embedded = Embedded::start(&config, &secrets(&config)?).await?;
            let ran = session.run(&mut embedded.transport(), on_reward).await;
            embedded.stop().await;
            ran?;
        }
    }
    progress.finish_and_clear();
    Ok(rewards)
}

pub(crate) async fn run(args: ArenaArgs, logging: &Logging) -> anyhow::Result<ExitCode> {
    let config = load_config(&args.config)?;
    let models = args
        .files
        .iter()
        .map(|f| read_model(f))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut seen = HashMap::new();
    for (m, f) in models.iter().zip(&args.files) {
        if let Some(other) = seen.insert(m.name.clone(), f) {
            bail!(
                "{} and {} both name model {:?} (a model is its file's name)",
                other.display(),
                f.display(),
                m.name
            );
        }
    }
    let ids = matched_ids(&models)?;
    let names: Vec<String> = models.iter().map(|m| m.name.clone()).collect();
    let anchor = match &args.anchor {
        None => Anchor::Mean(args.anchor_rating),
        Some(a) => match names.iter().position(|n| n == a) {
            Some(k) => Anchor::Model(k, args.anchor_rating),
            None => bail!(
                "--anchor {a:?} is not a model; models: {}",
                names.join(", ")
            ),
        },
    };
    if args.metric == Metric::Factuality {
        return factuality(&args, &config, &models, &ids, logging).await;
    }
    let (profile, key) = component(&config, args.profile.as_deref(), "pairwise")?;

    // One group of two per model pair and prompt; the first of each group is model a's.
    let mut candidates = Vec::new();
    let mut pairs = Vec::new();
    for i in 0..models.len() {
        for j in i + 1..models.len() {
            for id in &ids {
                let group = format!("{i}-{j}:{id}");
                for (side, k) in [("a", i), ("b", j)] {
                    let mut c = models[k].by_id[id].clone();
                    c.id = format!("{group}:{side}");
                    c.group_id = group.clone();
                    candidates.push(c);
                }
                pairs.push((i, j, id.clone(), group));
            }
        }
    }
    let rewards = judge_all(
        &config,
        args.gateway.as_deref(),
        &profile,
        candidates,
        args.batch_size,
        logging,
    )
    .await?;

    let mut verdicts = Vec::new();
    let mut failures = Vec::new();
    for (i, j, id, group) in pairs {
        let reward = rewards.get(&format!("{group}:a"));
        let value = reward.and_then(|r| {
            (RewardStatus::try_from(r.status) != Ok(RewardStatus::Failed))
                .then(|| r.components.get(&key).copied())
                .flatten()
        });
        match (reward, value) {
            (Some(r), Some(score)) => verdicts.push(Verdict {
                prompt: id.clone(),
                a: i,
                b: j,
                score,
                inconsistent: r.flags.iter().any(|f| f == POSITION_INCONSISTENT_FLAG),
                len_a: models[i].by_id[&id].response.chars().count(),
                len_b: models[j].by_id[&id].response.chars().count(),
            }),
            (r, _) => failures.push(format!(
                "{} vs {} on {id:?}: {}",
                names[i],
                names[j],
                r.map_or("no reward", |r| if r.error.is_empty() {
                    "no value from the judge"
                } else {
                    r.error.as_str()
                })
            )),
        }
    }
    let options = Options {
        inconsistent: match args.inconsistent {
            InconsistentArg::Drop => Inconsistent::Drop,
            InconsistentArg::Tie => Inconsistent::Tie,
        },
        anchor,
        resamples: args.resamples,
        seed: args.seed,
        style_control: args.style_control,
    };
    let report = pairwise::report(&names, &verdicts, &options);
    if args.json {
        let mut value = serde_json::to_value(&report)?;
        value["failed"] = serde_json::json!(failures);
        println!("{}", serde_json::to_string(&value)?);
    } else {
        print!("{report}");
        if !failures.is_empty() {
            println!("\n{} comparison(s) failed:", failures.len());
            for f in failures.iter().take(10) {
                println!("  - {f}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `--metric factuality`: every response scored by the profile's factuality component.
async fn factuality(
    args: &ArenaArgs,
    config: &Config,
    models: &[Model],
    ids: &[String],
    logging: &Logging,
) -> anyhow::Result<ExitCode> {
    let (profile, _) = component(config, args.profile.as_deref(), "factuality")?;
    let mut problems = Vec::new();
    for m in models {
        let missing: Vec<&str> = ids
            .iter()
            .filter(|id| {
                m.by_id[*id]
                    .reference
                    .as_deref()
                    .is_none_or(|r| r.trim().is_empty())
            })
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            problems.push(format!(
                "model {:?}: no reference for prompt id(s) {}",
                m.name,
                missing.join(", ")
            ));
        }
    }
    if !problems.is_empty() {
        bail!(
            "factuality verifies claims against each line's `reference`:\n  - {}",
            problems.join("\n  - ")
        );
    }
    let mut candidates = Vec::new();
    for (k, m) in models.iter().enumerate() {
        for id in ids {
            let mut c = m.by_id[id].clone();
            c.id = format!("{k}:{id}");
            c.group_id = c.id.clone();
            candidates.push(c);
        }
    }
    let rewards = judge_all(
        config,
        args.gateway.as_deref(),
        &profile,
        candidates,
        args.batch_size,
        logging,
    )
    .await?;
    let mut checked = Vec::new();
    let mut failures = Vec::new();
    for (k, m) in models.iter().enumerate() {
        for id in ids {
            let reward = rewards.get(&format!("{k}:{id}"));
            let counts = reward.and_then(|r| r.flags.iter().find_map(|f| parse_supported_flag(f)));
            let abstained =
                reward.is_some_and(|r| r.flags.iter().any(|f| f == FACTUALITY_ABSTAINED_FLAG));
            match (counts, abstained) {
                (_, true) => checked.push(Checked {
                    model: k,
                    supported: 0,
                    claims: 0,
                    abstained: true,
                }),
                (Some((supported, claims)), false) => checked.push(Checked {
                    model: k,
                    supported,
                    claims,
                    abstained: false,
                }),
                (None, false) => failures.push(format!(
                    "{} on {id:?}: {}",
                    m.name,
                    reward.map_or("no reward", |r| if r.error.is_empty() {
                        "no factuality verdict"
                    } else {
                        r.error.as_str()
                    })
                )),
            }
        }
    }
    let names: Vec<String> = models.iter().map(|m| m.name.clone()).collect();
    let report = facts::report(&names, &checked, args.resamples, args.seed);
    if args.json {
        let mut value = serde_json::to_value(&report)?;
        value["failed"] = serde_json::json!(failures);
        println!("{}", serde_json::to_string(&value)?);
    } else {
        print!("{report}");
        if !failures.is_empty() {
            println!("\n{} response(s) could not be checked:", failures.len());
            for f in failures.iter().take(10) {
                println!("  - {f}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
