"""redis-py's failures become aqnode's in one place (aqnode.wal.redis_errors)."""

from __future__ import annotations

import pytest
import redis.exceptions as redis_exc

from aqnode import errors
from aqnode.wal.redis_errors import translate, translated


@pytest.mark.parametrize(
    "exc",
    [redis_exc.ConnectionError("reset"), redis_exc.TimeoutError("slow"), OSError("down")],
)
def test_a_redis_that_does_not_answer_is_redis_unavailable(exc: BaseException) -> None:
    error = translate(exc, then="nothing was written")
    assert error.code == errors.REDIS_UNAVAILABLE
    assert error.message == f"Redis did not answer ({exc}); nothing was written"


def test_a_refusal_names_what_redis_refused() -> None:
    error = translate(redis_exc.ResponseError("OOM"), refused="the transition")
    assert error.code == errors.REDIS_UNAVAILABLE
    assert error.message == "Redis refused the transition: OOM"


def test_translated_re_raises_redis_failures_with_their_cause() -> None:
    cause = redis_exc.ResponseError("READONLY")
    with pytest.raises(errors.RedisUnavailable) as caught, translated("Redis at x"):
        raise cause
    assert caught.value.message == "Redis at x refused the command: READONLY"
    assert caught.value.__cause__ is cause


def test_translated_lets_anything_but_redis_failures_through() -> None:
    with pytest.raises(ValueError), translated():
        raise ValueError("a bug of ours")
