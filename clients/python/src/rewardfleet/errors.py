"""What can go wrong, as exceptions whose message says what to do. A FAILED reward is data,
never one of these."""

from __future__ import annotations

import re


class RewardfleetError(Exception):
    """Base of every rewardfleet client error."""


class CandidateError(RewardfleetError, ValueError):
    """A candidate the client cannot send; the message names its index and field."""


class InvalidRequestError(RewardfleetError, ValueError):
    """The gateway refused the request (`INVALID_ARGUMENT`): fix it, retrying cannot help. The
    message is the gateway's, naming the field and the limit."""


class UnknownProfileError(InvalidRequestError):
    """The profile asked for is not served; `known` lists the ones that are."""

    def __init__(self, message: str, profile: str, known: list[str]) -> None:
        super().__init__(message)
        self.profile = profile
        self.known = known


class UnavailableError(RewardfleetError, ConnectionError):
    """The gateway cannot be reached or does not serve now (draining, its queue unreachable).
    The message names the address and, when it could be read, the health state."""


class SessionLostError(RewardfleetError):
    """A streaming session broke more times than `max_resumes` allows; the message says how
    many rewards arrived and how many are still owed."""


class RefusedError(RewardfleetError):
    """The gateway refuses the request for good (`FAILED_PRECONDITION`, e.g. a job over the
    NATS server's max_payload): neither retrying nor resuming helps."""


_UNKNOWN_PROFILE = re.compile(r'unknown profile "([^"]*)"; known: (.*)$')


def invalid_request(message: str) -> InvalidRequestError:
    """The exception for an `INVALID_ARGUMENT` message: `UnknownProfileError` when it is one."""
    m = _UNKNOWN_PROFILE.search(message)
    if m:
        known = [k.strip() for k in m.group(2).split(",") if k.strip()]
        return UnknownProfileError(
            f"{message} (pass profile= one of: {', '.join(known)})",
            profile=m.group(1),
            known=known,
        )
    return InvalidRequestError(message)
