"""Candidates in, rewards out: the plain Python face of `rewardfleet.v1` messages."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from rewardfleet.errors import CandidateError
from rewardfleet.v1 import reward_pb2 as pb


@dataclass(frozen=True)
class ChatMessage:
    """One turn of a conversation."""

    role: str
    content: str


@dataclass
class Candidate:
    """A response to be scored, with the prompt that led to it.

    `prompt` is a string (sent as one user message) or chat messages (`ChatMessage` or
    `{"role", "content"}` dicts). `id` must be unique within a session; `group_id` ties the
    samples of one prompt together (group normalisation, pairwise judges).
    """

    id: str
    response: str
    prompt: str | Sequence[ChatMessage | Mapping[str, str]] = ""
    group_id: str = ""
    reference: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


#: What the client takes as a candidate: a `Candidate`, or a dict with the keys of the JSONL
#: input (`id`, `group_id`, `prompt` or `messages`, `response`, `reference`, `labels`).
CandidateLike = Union[Candidate, Mapping[str, Any]]


class Status(enum.Enum):
    """How a reward came to be."""

    UNSPECIFIED = "UNSPECIFIED"
    #: Every component produced a value.
    OK = "OK"
    #: A fallback was used or a component was left out; `flags` say which.
    DEGRADED = "DEGRADED"
    #: No reward could be produced; `error` says why. Data, not an exception.
    FAILED = "FAILED"


@dataclass(frozen=True)
class Timing:
    """Milliseconds spent on one reward, as the fleet measured them."""

    #: Outside scoring: queued, in transit, waiting for a worker.
    queue_ms: float
    #: The job's scoring on its worker.
    scoring_ms: float
    #: From the batch's arrival at the gateway to the reward's send.
    total_ms: float


@dataclass(frozen=True)
class Reward:
    """The reward of one candidate."""

    candidate_id: str
    #: The final reward (after gates, weights and normalisation); 0.0 when FAILED.
    value: float
    #: One value per profile component, before combination.
    components: Mapping[str, float]
    status: Status
    #: Why a FAILED reward failed, in words a person can act on; empty otherwise.
    error: str = ""
    flags: tuple[str, ...] = ()
    #: Where the time went; None when the server did not measure it.
    timing: Timing | None = None

    @property
    def failed(self) -> bool:
        """Whether no reward could be produced (mask it, do not train on `value`)."""
        return self.status is Status.FAILED


@dataclass(frozen=True)
class ComponentInfo:
    """One component of a profile."""

    name: str
    #: "rule", "model" or "judge".
    kind: str
    weight: float
    gate: bool
    fallback: str


@dataclass(frozen=True)
class ProfileInfo:
    """A profile the fleet serves."""

    name: str
    components: tuple[ComponentInfo, ...]
    normalize: str
    on_component_failure: str


class HealthState(enum.Enum):
    """The gateway's answer to a `grpc.health.v1` check."""

    UNKNOWN = 0
    SERVING = 1
    NOT_SERVING = 2
    SERVICE_UNKNOWN = 3


def _messages(prompt: object, at: str) -> list[pb.ChatMessage]:
    if prompt is None or prompt == "":
        return []
    if isinstance(prompt, str):
        return [pb.ChatMessage(role="user", content=prompt)]
    if isinstance(prompt, Sequence):
        out = []
        for k, m in enumerate(prompt):
            if isinstance(m, ChatMessage):
                out.append(pb.ChatMessage(role=m.role, content=m.content))
            elif isinstance(m, Mapping) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str):
                out.append(pb.ChatMessage(role=m["role"], content=m["content"]))
            else:
                raise CandidateError(f"{at}[{k}]: a chat message needs string `role` and `content`, got {m!r}")
        return out
    raise CandidateError(f"{at}: must be a string or a list of chat messages, not {type(prompt).__name__}")


def to_proto(candidate: CandidateLike, index: int) -> pb.Candidate:
    """The wire form of `candidate` (the `index`-th of its batch, for error messages and for a
    missing `id`, which becomes `str(index)`)."""
    at = f"candidates[{index}]"
    if isinstance(candidate, Candidate):
        c: Mapping[str, Any] = {
            "id": candidate.id,
            "response": candidate.response,
            "prompt": candidate.prompt,
            "group_id": candidate.group_id,
            "reference": candidate.reference,
            "labels": candidate.labels,
        }
    elif isinstance(candidate, Mapping):
        c = candidate
    else:
        raise CandidateError(f"{at}: a candidate is a rewardfleet.Candidate or a dict, not {type(candidate).__name__}")
    response = c.get("response")
    if not isinstance(response, str):
        raise CandidateError(f"{at}.response: required, a string (got {type(response).__name__})")
    ident = c.get("id", str(index))
    if not isinstance(ident, (str, int)):
        raise CandidateError(f"{at}.id: must be a string, not {type(ident).__name__}")
    prompt = c.get("messages", c.get("prompt"))
    reference = c.get("reference")
    if reference is not None and not isinstance(reference, str):
        reference = str(reference)
    labels = c.get("labels") or {}
    if not isinstance(labels, Mapping):
        raise CandidateError(f"{at}.labels: must be a dict of strings")
    msg = pb.Candidate(
        id=str(ident),
        group_id=str(c.get("group_id") or ""),
        prompt=_messages(prompt, f"{at}.prompt"),
        response=response,
        labels={str(k): str(v) for k, v in labels.items()},
    )
    if reference is not None:
        msg.reference = reference
    return msg


def from_proto(r: pb.Reward) -> Reward:
    """The Python form of a wire reward."""
    return Reward(
        candidate_id=r.candidate_id,
        value=r.value,
        components=dict(r.components),
        status=Status(pb.Reward.Status.Name(r.status)),
        error=r.error,
        flags=tuple(r.flags),
        timing=Timing(r.timing.queue_ms, r.timing.scoring_ms, r.timing.total_ms) if r.HasField("timing") else None,
    )


def profile_from_proto(p: pb.ProfileInfo) -> ProfileInfo:
    """The Python form of a wire profile."""
    return ProfileInfo(
        name=p.name,
        components=tuple(ComponentInfo(c.name, c.kind, c.weight, c.gate, c.fallback) for c in p.components),
        normalize=p.normalize,
        on_component_failure=p.on_component_failure,
    )
