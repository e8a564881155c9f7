"""Cutting a queue of outgoing items into frames that stay under a size limit."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def take_frame(queue: list[T], size_of: Callable[[T], int], limit: int) -> list[T]:
    """Take items off the front of ``queue`` whose sizes add up to at most ``limit`` (at
    least one item, however large), so that no frame exceeds what gRPC will carry."""
    size, count = 0, 0
    for item in queue:
        size += size_of(item)
        if count and size > limit:
            break
        count += 1
    batch = queue[:count]
    del queue[:count]
    return batch
