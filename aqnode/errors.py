"""One exception tree for everything that reaches a client.

Every error has a stable ``code`` (SPEC section 8) and a sentence a person can act on.
``to_dict``/``from_dict`` let an error cross the shard socket and the network intact.
:class:`AqnodeError` sits above it and above the node's own failures that never reach
a client (:class:`StartupError`, ``ipc.ProtocolError``): one root for all of aqnode.
"""

from __future__ import annotations

from typing import Any, ClassVar

# The stable codes of SPEC section 8.
UNKNOWN_ENTITY_TYPE = "UNKNOWN_ENTITY_TYPE"
UNKNOWN_MESSAGE = "UNKNOWN_MESSAGE"
INVALID_PAYLOAD = "INVALID_PAYLOAD"
QUEUE_DEPTH_EXCEEDED = "QUEUE_DEPTH_EXCEEDED"
WORKER_LIMIT_EXCEEDED = "WORKER_LIMIT_EXCEEDED"
REDIS_UNAVAILABLE = "REDIS_UNAVAILABLE"
REPLY_TIMEOUT = "REPLY_TIMEOUT"
INTERRUPTED = "INTERRUPTED"
HANDLER_ERROR = "HANDLER_ERROR"
SELF_WAIT = "SELF_WAIT"
DRAINING = "DRAINING"
STALE_EPOCH = "STALE_EPOCH"
MASTER_REBUILDING = "MASTER_REBUILDING"
FORWARD_HOPS_EXCEEDED = "FORWARD_HOPS_EXCEEDED"
UNAUTHENTICATED = "UNAUTHENTICATED"
PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
# Not in SPEC section 8: a failure of the node itself (a bug, a broken connection).
INTERNAL = "INTERNAL"
UNAVAILABLE = "UNAVAILABLE"


def wire_text(text: str) -> str:
    """``text`` as valid UTF-8 (a lone surrogate becomes its ``\\udXXX`` escape): what a
    handler's exception says must travel, whatever it holds."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


class AqnodeError(Exception):
    """The root of every exception aqnode raises on purpose."""


class AqError(AqnodeError):
    """The root of every error a client sees; ``code`` is stable, ``message`` is for people."""

    default_code: ClassVar[str] = INTERNAL

    def __init__(self, message: str, *, code: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.code: str = code or self.default_code
        self.message = message
        self.details: dict[str, Any] = details

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.details}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> AqError:
        """Rebuild the most specific error class for ``data["code"]``."""
        fields = dict(data)
        code = str(fields.pop("code", INTERNAL))
        message = str(fields.pop("message", ""))
        cls = _BY_CODE.get(code, AqError)
        if cls is HandlerError:
            return HandlerError(
                message,
                remote_type=str(fields.get("remote_type", "")),
                remote_message=str(fields.get("remote_message", "")),
                remote_traceback=str(fields.get("remote_traceback", "")),
            )
        return cls(message, code=code, **fields)


class HandlerError(AqError):
    """The handler raised; the remote exception's type, message and traceback come along."""

    default_code = HANDLER_ERROR

    def __init__(
        self,
        message: str,
        *,
        remote_type: str = "",
        remote_message: str = "",
        remote_traceback: str = "",
        code: str | None = None,
    ) -> None:
        super().__init__(
            message,
            code=code,
            remote_type=remote_type,
            remote_message=remote_message,
            remote_traceback=remote_traceback,
        )
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback


class ValidationFailed(AqError):
    """The message was refused before anything was written."""

    default_code = INVALID_PAYLOAD


class BackpressureError(AqError):
    """A queue or worker limit refused the message; nothing was written."""

    default_code = QUEUE_DEPTH_EXCEEDED


class RedisUnavailable(AqError):
    """Redis did not answer, so nothing could be made durable."""

    default_code = REDIS_UNAVAILABLE


class ReplyTimeout(AqError):
    """The reply did not come in time; the message is still queued and will still run."""

    default_code = REPLY_TIMEOUT


class Interrupted(AqError):
    """A crash interrupted the handler; the message was dead-lettered."""

    default_code = INTERRUPTED


class SelfWait(AqError):
    """A handler waited on its own entity, which would wait for itself for ever."""

    default_code = SELF_WAIT


class Draining(AqError):
    """The node is shutting down and accepts no new work."""

    default_code = DRAINING


class PayloadTooLarge(AqError):
    """A payload over max_payload_bytes; nothing was written."""

    default_code = PAYLOAD_TOO_LARGE


class Unavailable(AqError):
    """The node (or the peer it forwarded to) went away before answering; resend the
    call under the same ``message_id``."""

    default_code = UNAVAILABLE


class StaleEpoch(AqError):
    """A peer command carried an epoch other than the receiver's (cluster mode)."""

    default_code = STALE_EPOCH


class MasterRebuilding(AqError):
    """The master is rebuilding its assignment table after a failover; retry shortly."""

    default_code = MASTER_REBUILDING


class ForwardHopsExceeded(AqError):
    """A call was forwarded more than max_forward_hops times without finding its owner."""

    default_code = FORWARD_HOPS_EXCEEDED


class StartupError(AqnodeError):
    """The node cannot start: bad handlers, bad config, a missing dependency.

    Not an :class:`AqError`: it has no code, is printed as it is (no ``CODE:`` prefix)
    and must not be caught by the handlers of client errors.
    """


_BY_CODE: dict[str, type[AqError]] = {
    HANDLER_ERROR: HandlerError,
    UNKNOWN_ENTITY_TYPE: ValidationFailed,
    UNKNOWN_MESSAGE: ValidationFailed,
    INVALID_PAYLOAD: ValidationFailed,
    QUEUE_DEPTH_EXCEEDED: BackpressureError,
    WORKER_LIMIT_EXCEEDED: BackpressureError,
    REDIS_UNAVAILABLE: RedisUnavailable,
    REPLY_TIMEOUT: ReplyTimeout,
    INTERRUPTED: Interrupted,
    SELF_WAIT: SelfWait,
    DRAINING: Draining,
    PAYLOAD_TOO_LARGE: PayloadTooLarge,
    UNAVAILABLE: Unavailable,
    STALE_EPOCH: StaleEpoch,
    MASTER_REBUILDING: MasterRebuilding,
    FORWARD_HOPS_EXCEEDED: ForwardHopsExceeded,
}
