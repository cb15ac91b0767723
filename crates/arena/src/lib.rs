//! Arena evaluations: the statistics behind pairwise win rates, Elo and Bradley–Terry ratings, length control and factuality (pure functions, no IO).

pub mod factuality;
pub mod pairwise;
pub mod stats;
