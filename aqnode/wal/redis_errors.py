"""The one place where redis-py's exceptions become aqnode's: Redis away is REDIS_UNAVAILABLE.

The rest of ``wal/`` names redis-py's exception classes only through this module.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

import redis.exceptions as redis_exc
from redis._parsers.base import BaseParser

from aqnode import errors

#: what a Redis that is down, frozen or unreachable raises
UNREACHABLE: tuple[type[BaseException], ...] = (
    redis_exc.ConnectionError,
    redis_exc.TimeoutError,
    OSError,
    TimeoutError,
)
#: what a Redis that answered raises: an error reply (MISCONF, OOM, READONLY, ...) and
#: the rest of redis-py's failures
REFUSED: Final = redis_exc.RedisError
#: one command's error reply; in a pipeline it stands in that command's place
ERROR_REPLY: Final = redis_exc.ResponseError
#: EVALSHA of a script this Redis does not hold (it restarted): load it again
SCRIPT_MISSING: Final = redis_exc.NoScriptError
#: Redis Cluster: the slot lives (or will live) elsewhere; reconnect where it is now
SLOT_ELSEWHERE: tuple[type[BaseException], ...] = (
    redis_exc.AskError,  # MOVED too (a subclass)
    redis_exc.ClusterDownError,
    redis_exc.TryAgainError,
)


def error_reply(text: str) -> Exception:
    """An error reply's text as the exception redis-py would have made of it
    (``NOSCRIPT ...`` a NoScriptError, ``MOVED ...`` a MovedError, ``LOADING ...`` a
    BusyLoadingError: not an ERROR_REPLY but a connection failure)."""
    error: Exception = BaseParser.parse_error(text)  # type: ignore[no-untyped-call]
    return error


#: every failure of a call to Redis, answered or not
FAILURES: tuple[type[BaseException], ...] = (*UNREACHABLE, REFUSED)


def translate(
    exc: BaseException,
    what: str = "Redis",
    *,
    then: str = "try again",
    refused: str = "the command",
) -> errors.RedisUnavailable:
    """``exc``, one of UNREACHABLE or REFUSED, as :class:`errors.RedisUnavailable`.

    ``then`` ends the sentence for an unanswered call; ``refused`` names what a Redis
    that answered refused.
    """
    detail = str(exc) or type(exc).__name__  # a time-out's str() is empty
    if isinstance(exc, UNREACHABLE):
        return errors.RedisUnavailable(f"{what} did not answer ({detail}); {then}")
    return errors.RedisUnavailable(f"{what} refused {refused}: {detail}")


@contextmanager
def translated(what: str = "Redis") -> Iterator[None]:
    """Re-raise redis-py failures inside the block as :class:`errors.RedisUnavailable`."""
    try:
        yield
    except FAILURES as exc:
        raise translate(exc, what) from exc
