"""Python client of rewardfleet: score candidate responses for RL on a rewardfleet gateway.

- `RewardClient` / `AsyncRewardClient`: `score` (one batch, rewards in order), `score_stream`
  (a session: rewards as they arrive, resumed across broken streams), `list_profiles`, `health`.
- `rewardfleet.trl.reward_func` / `async_reward_func`: TRL `reward_funcs`.
- `rewardfleet.verl.make_compute_score` / `make_batch_compute_score`: veRL `compute_score`.
- OpenRLHF and slime need no Python: point them at the gateway's HTTP endpoints
  (`gateway.http_listen`): `--remote_rm_url http://HOST:PORT/get_reward`, `--rm-url
  http://HOST:PORT/reward`.
"""

from rewardfleet.aio import AsyncRewardClient
from rewardfleet.client import RewardClient
from rewardfleet.errors import (
    CandidateError,
    InvalidRequestError,
    RefusedError,
    RewardfleetError,
    SessionLostError,
    UnavailableError,
    UnknownProfileError,
)
from rewardfleet.types import (
    Candidate,
    CandidateLike,
    ChatMessage,
    ComponentInfo,
    HealthState,
    ProfileInfo,
    Reward,
    Status,
    Timing,
)

__all__ = [
    "AsyncRewardClient",
    "Candidate",
    "CandidateError",
    "CandidateLike",
    "ChatMessage",
    "ComponentInfo",
    "HealthState",
    "InvalidRequestError",
    "ProfileInfo",
    "RefusedError",
    "Reward",
    "RewardClient",
    "RewardfleetError",
    "SessionLostError",
    "Status",
    "Timing",
    "UnavailableError",
    "UnknownProfileError",
]
