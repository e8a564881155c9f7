"""The one place where redis-py's exceptions become aqnode's: Redis away is REDIS_UNAVAILABLE."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis.exceptions as redis_exc

from aqnode import errors

#: what a Redis that is down, frozen or unreachable raises
UNREACHABLE: tuple[type[BaseException], ...] = (
    redis_exc.ConnectionError,
    redis_exc.TimeoutError,
    OSError,
    TimeoutError,
)


@contextmanager
def translated(what: str = "Redis") -> Iterator[None]:
    """Re-raise redis-py failures inside the block as :class:`errors.RedisUnavailable`."""
    try:
        yield
    except UNREACHABLE as exc:
        raise errors.RedisUnavailable(f"{what} did not answer ({exc}); try again") from exc
    except redis_exc.RedisError as exc:
        raise errors.RedisUnavailable(f"{what} refused the command: {exc}") from exc
