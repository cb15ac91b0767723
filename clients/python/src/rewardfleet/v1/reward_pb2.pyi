from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ChatMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("id", "group_id", "prompt", "response", "reference", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    id: str
    group_id: str
    prompt: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    response: str
    reference: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[str] = ..., group_id: _Optional[str] = ..., prompt: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., response: _Optional[str] = ..., reference: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Reward(_message.Message):
    __slots__ = ("candidate_id", "value", "components", "status", "error", "flags", "timing")
    class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATUS_UNSPECIFIED: _ClassVar[Reward.Status]
        OK: _ClassVar[Reward.Status]
        DEGRADED: _ClassVar[Reward.Status]
        FAILED: _ClassVar[Reward.Status]
    STATUS_UNSPECIFIED: Reward.Status
    OK: Reward.Status
    DEGRADED: Reward.Status
    FAILED: Reward.Status
    class ComponentsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    CANDIDATE_ID_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    candidate_id: str
    value: float
    components: _containers.ScalarMap[str, float]
    status: Reward.Status
    error: str
    flags: _containers.RepeatedScalarFieldContainer[str]
    timing: Timing
    def __init__(self, candidate_id: _Optional[str] = ..., value: _Optional[float] = ..., components: _Optional[_Mapping[str, float]] = ..., status: _Optional[_Union[Reward.Status, str]] = ..., error: _Optional[str] = ..., flags: _Optional[_Iterable[str]] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ...) -> None: ...

class Timing(_message.Message):
    __slots__ = ("queue_ms", "scoring_ms", "total_ms")
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    SCORING_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    queue_ms: float
    scoring_ms: float
    total_ms: float
    def __init__(self, queue_ms: _Optional[float] = ..., scoring_ms: _Optional[float] = ..., total_ms: _Optional[float] = ...) -> None: ...

class SessionOpen(_message.Message):
    __slots__ = ("session_id", "profile", "max_in_flight")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    MAX_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    profile: str
    max_in_flight: int
    def __init__(self, session_id: _Optional[str] = ..., profile: _Optional[str] = ..., max_in_flight: _Optional[int] = ...) -> None: ...

class Batch(_message.Message):
    __slots__ = ("candidates", "profile")
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    profile: str
    def __init__(self, candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., profile: _Optional[str] = ...) -> None: ...

class Close(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("open", "batch", "close")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    CLOSE_FIELD_NUMBER: _ClassVar[int]
    open: SessionOpen
    batch: Batch
    close: Close
    def __init__(self, open: _Optional[_Union[SessionOpen, _Mapping]] = ..., batch: _Optional[_Union[Batch, _Mapping]] = ..., close: _Optional[_Union[Close, _Mapping]] = ...) -> None: ...

class SessionOpened(_message.Message):
    __slots__ = ("session_id", "profile", "max_in_flight")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    MAX_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    profile: str
    max_in_flight: int
    def __init__(self, session_id: _Optional[str] = ..., profile: _Optional[str] = ..., max_in_flight: _Optional[int] = ...) -> None: ...

class BatchAccepted(_message.Message):
    __slots__ = ("batch_index", "candidates")
    BATCH_INDEX_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    batch_index: int
    candidates: int
    def __init__(self, batch_index: _Optional[int] = ..., candidates: _Optional[int] = ...) -> None: ...

class SessionClosed(_message.Message):
    __slots__ = ("rewards",)
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    rewards: int
    def __init__(self, rewards: _Optional[int] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("opened", "reward", "accepted", "closed")
    OPENED_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    opened: SessionOpened
    reward: Reward
    accepted: BatchAccepted
    closed: SessionClosed
    def __init__(self, opened: _Optional[_Union[SessionOpened, _Mapping]] = ..., reward: _Optional[_Union[Reward, _Mapping]] = ..., accepted: _Optional[_Union[BatchAccepted, _Mapping]] = ..., closed: _Optional[_Union[SessionClosed, _Mapping]] = ...) -> None: ...

class ScoreBatchRequest(_message.Message):
    __slots__ = ("profile", "candidates")
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    profile: str
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    def __init__(self, profile: _Optional[str] = ..., candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ...) -> None: ...

class ScoreBatchResponse(_message.Message):
    __slots__ = ("rewards",)
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    rewards: _containers.RepeatedCompositeFieldContainer[Reward]
    def __init__(self, rewards: _Optional[_Iterable[_Union[Reward, _Mapping]]] = ...) -> None: ...

class ListProfilesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ProfileInfo(_message.Message):
    __slots__ = ("name", "components", "normalize", "on_component_failure")
    NAME_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    ON_COMPONENT_FAILURE_FIELD_NUMBER: _ClassVar[int]
    name: str
    components: _containers.RepeatedCompositeFieldContainer[ComponentInfo]
    normalize: str
    on_component_failure: str
    def __init__(self, name: _Optional[str] = ..., components: _Optional[_Iterable[_Union[ComponentInfo, _Mapping]]] = ..., normalize: _Optional[str] = ..., on_component_failure: _Optional[str] = ...) -> None: ...

class ComponentInfo(_message.Message):
    __slots__ = ("name", "kind", "weight", "gate", "fallback")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    GATE_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    weight: float
    gate: bool
    fallback: str
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., weight: _Optional[float] = ..., gate: _Optional[bool] = ..., fallback: _Optional[str] = ...) -> None: ...

class ListProfilesResponse(_message.Message):
    __slots__ = ("profiles",)
    PROFILES_FIELD_NUMBER: _ClassVar[int]
    profiles: _containers.RepeatedCompositeFieldContainer[ProfileInfo]
    def __init__(self, profiles: _Optional[_Iterable[_Union[ProfileInfo, _Mapping]]] = ...) -> None: ...
