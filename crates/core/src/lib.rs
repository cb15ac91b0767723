//! Domain types, configuration, the `Scorer` trait and reward combination of rewardfleet (no IO).

pub mod config;
pub mod input;
pub mod job;
pub mod jsonl;
pub mod pipeline;
pub mod profile;
pub mod scorer;

pub use config::{Config, ConfigError, ConfigProblem};
pub use input::{InputError, Limits};
pub use job::{JobBounds, split_into_jobs};
pub use pipeline::{JobOutcome, Pipeline};
pub use profile::{Component, ComponentKind, Normalize, OnComponentFailure, Profile};
pub use rewardfleet_proto::v1::{
    Candidate, ChatMessage, Job, JobAccepted, JobResult, Reward, reward::Status as RewardStatus,
};
pub use scorer::{FailureReason, Score, ScoreContext, ScoreError, Scorer};
