from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Envelope(_message.Message):
    __slots__ = ("entity_type", "message", "entity_id", "payload", "content_type", "message_id")
    ENTITY_TYPE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    entity_type: str
    message: str
    entity_id: str
    payload: bytes
    content_type: str
    message_id: str
    def __init__(self, entity_type: _Optional[str] = ..., message: _Optional[str] = ..., entity_id: _Optional[str] = ..., payload: _Optional[bytes] = ..., content_type: _Optional[str] = ..., message_id: _Optional[str] = ...) -> None: ...

class Failure(_message.Message):
    __slots__ = ("code", "message", "remote_type", "remote_message", "remote_traceback", "field")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REMOTE_TYPE_FIELD_NUMBER: _ClassVar[int]
    REMOTE_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REMOTE_TRACEBACK_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    remote_type: str
    remote_message: str
    remote_traceback: str
    field: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ..., remote_type: _Optional[str] = ..., remote_message: _Optional[str] = ..., remote_traceback: _Optional[str] = ..., field: _Optional[str] = ...) -> None: ...

class EnqueueRequest(_message.Message):
    __slots__ = ("envelope",)
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    envelope: Envelope
    def __init__(self, envelope: _Optional[_Union[Envelope, _Mapping]] = ...) -> None: ...

class EnqueueReply(_message.Message):
    __slots__ = ("message_id",)
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    def __init__(self, message_id: _Optional[str] = ...) -> None: ...

class EnqueueManyRequest(_message.Message):
    __slots__ = ("envelopes",)
    ENVELOPES_FIELD_NUMBER: _ClassVar[int]
    envelopes: _containers.RepeatedCompositeFieldContainer[Envelope]
    def __init__(self, envelopes: _Optional[_Iterable[_Union[Envelope, _Mapping]]] = ...) -> None: ...

class EnqueueManyReply(_message.Message):
    __slots__ = ("outcomes",)
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    outcomes: _containers.RepeatedCompositeFieldContainer[Outcome]
    def __init__(self, outcomes: _Optional[_Iterable[_Union[Outcome, _Mapping]]] = ...) -> None: ...

class EnqueueAndWaitRequest(_message.Message):
    __slots__ = ("envelope", "timeout_ms")
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    envelope: Envelope
    timeout_ms: int
    def __init__(self, envelope: _Optional[_Union[Envelope, _Mapping]] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class EnqueueAndWaitReply(_message.Message):
    __slots__ = ("message_id", "reply", "content_type")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    reply: bytes
    content_type: str
    def __init__(self, message_id: _Optional[str] = ..., reply: _Optional[bytes] = ..., content_type: _Optional[str] = ...) -> None: ...

class Call(_message.Message):
    __slots__ = ("call_id", "envelope", "wait", "timeout_ms", "epoch", "hops", "assigned", "assigned_last", "fencing_token")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    HOPS_FIELD_NUMBER: _ClassVar[int]
    ASSIGNED_FIELD_NUMBER: _ClassVar[int]
    ASSIGNED_LAST_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    call_id: int
    envelope: Envelope
    wait: bool
    timeout_ms: int
    epoch: int
    hops: int
    assigned: bool
    assigned_last: bool
    fencing_token: int
    def __init__(self, call_id: _Optional[int] = ..., envelope: _Optional[_Union[Envelope, _Mapping]] = ..., wait: _Optional[bool] = ..., timeout_ms: _Optional[int] = ..., epoch: _Optional[int] = ..., hops: _Optional[int] = ..., assigned: _Optional[bool] = ..., assigned_last: _Optional[bool] = ..., fencing_token: _Optional[int] = ...) -> None: ...

class ClientFrame(_message.Message):
    __slots__ = ("calls",)
    CALLS_FIELD_NUMBER: _ClassVar[int]
    calls: _containers.RepeatedCompositeFieldContainer[Call]
    def __init__(self, calls: _Optional[_Iterable[_Union[Call, _Mapping]]] = ...) -> None: ...

class Outcome(_message.Message):
    __slots__ = ("call_id", "message_id", "ok", "reply", "content_type", "failure", "owner")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    call_id: int
    message_id: str
    ok: bool
    reply: bytes
    content_type: str
    failure: Failure
    owner: str
    def __init__(self, call_id: _Optional[int] = ..., message_id: _Optional[str] = ..., ok: _Optional[bool] = ..., reply: _Optional[bytes] = ..., content_type: _Optional[str] = ..., failure: _Optional[_Union[Failure, _Mapping]] = ..., owner: _Optional[str] = ...) -> None: ...

class ServerFrame(_message.Message):
    __slots__ = ("outcomes",)
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    outcomes: _containers.RepeatedCompositeFieldContainer[Outcome]
    def __init__(self, outcomes: _Optional[_Iterable[_Union[Outcome, _Mapping]]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ShardStatus(_message.Message):
    __slots__ = ("index", "pid", "alive", "cpu_percent", "rss_bytes", "workers", "queue_depth", "handled", "restarts", "handled_per_s")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    ALIVE_FIELD_NUMBER: _ClassVar[int]
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    HANDLED_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    HANDLED_PER_S_FIELD_NUMBER: _ClassVar[int]
    index: int
    pid: int
    alive: bool
    cpu_percent: float
    rss_bytes: int
    workers: int
    queue_depth: int
    handled: int
    restarts: int
    handled_per_s: float
    def __init__(self, index: _Optional[int] = ..., pid: _Optional[int] = ..., alive: _Optional[bool] = ..., cpu_percent: _Optional[float] = ..., rss_bytes: _Optional[int] = ..., workers: _Optional[int] = ..., queue_depth: _Optional[int] = ..., handled: _Optional[int] = ..., restarts: _Optional[int] = ..., handled_per_s: _Optional[float] = ...) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("server_id", "service_group", "listen", "role", "master", "epoch", "pid", "uptime_s", "shards", "live_messages", "version", "members", "native_address", "native_socket")
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_GROUP_FIELD_NUMBER: _ClassVar[int]
    LISTEN_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    MASTER_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    LIVE_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    NATIVE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    NATIVE_SOCKET_FIELD_NUMBER: _ClassVar[int]
    server_id: str
    service_group: str
    listen: str
    role: str
    master: str
    epoch: int
    pid: int
    uptime_s: float
    shards: _containers.RepeatedCompositeFieldContainer[ShardStatus]
    live_messages: int
    version: str
    members: _containers.RepeatedCompositeFieldContainer[Member]
    native_address: str
    native_socket: str
    def __init__(self, server_id: _Optional[str] = ..., service_group: _Optional[str] = ..., listen: _Optional[str] = ..., role: _Optional[str] = ..., master: _Optional[str] = ..., epoch: _Optional[int] = ..., pid: _Optional[int] = ..., uptime_s: _Optional[float] = ..., shards: _Optional[_Iterable[_Union[ShardStatus, _Mapping]]] = ..., live_messages: _Optional[int] = ..., version: _Optional[str] = ..., members: _Optional[_Iterable[_Union[Member, _Mapping]]] = ..., native_address: _Optional[str] = ..., native_socket: _Optional[str] = ...) -> None: ...

class Member(_message.Message):
    __slots__ = ("server_id", "address", "alive", "role")
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ALIVE_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    server_id: str
    address: str
    alive: bool
    role: str
    def __init__(self, server_id: _Optional[str] = ..., address: _Optional[str] = ..., alive: _Optional[bool] = ..., role: _Optional[str] = ...) -> None: ...

class RegistryRequest(_message.Message):
    __slots__ = ("content_type",)
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    content_type: str
    def __init__(self, content_type: _Optional[str] = ...) -> None: ...

class RegistryReply(_message.Message):
    __slots__ = ("registry", "content_type")
    REGISTRY_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    registry: bytes
    content_type: str
    def __init__(self, registry: _Optional[bytes] = ..., content_type: _Optional[str] = ...) -> None: ...

class PetitionRequest(_message.Message):
    __slots__ = ("epoch", "from_server_id", "entity_keys")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    FROM_SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    ENTITY_KEYS_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    from_server_id: str
    entity_keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, epoch: _Optional[int] = ..., from_server_id: _Optional[str] = ..., entity_keys: _Optional[_Iterable[str]] = ...) -> None: ...

class Home(_message.Message):
    __slots__ = ("entity_key", "server_id", "address")
    ENTITY_KEY_FIELD_NUMBER: _ClassVar[int]
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    entity_key: str
    server_id: str
    address: str
    def __init__(self, entity_key: _Optional[str] = ..., server_id: _Optional[str] = ..., address: _Optional[str] = ...) -> None: ...

class PetitionReply(_message.Message):
    __slots__ = ("epoch", "homes")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    HOMES_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    homes: _containers.RepeatedCompositeFieldContainer[Home]
    def __init__(self, epoch: _Optional[int] = ..., homes: _Optional[_Iterable[_Union[Home, _Mapping]]] = ...) -> None: ...

class ListWorkersRequest(_message.Message):
    __slots__ = ("epoch", "from_server_id")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    FROM_SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    from_server_id: str
    def __init__(self, epoch: _Optional[int] = ..., from_server_id: _Optional[str] = ...) -> None: ...

class ListWorkersReply(_message.Message):
    __slots__ = ("epoch", "server_id", "entity_keys")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    ENTITY_KEYS_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    server_id: str
    entity_keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, epoch: _Optional[int] = ..., server_id: _Optional[str] = ..., entity_keys: _Optional[_Iterable[str]] = ...) -> None: ...
