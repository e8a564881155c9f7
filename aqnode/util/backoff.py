"""The one backoff: a delay that doubles from ``base`` up to ``cap`` (seconds or ms alike)."""

from __future__ import annotations


def doubling(base: float, cap: float, step: int) -> float:
    """The delay before try ``step + 1``: ``base * 2**(step-1)``, at most ``cap``; step >= 1."""
    return float(min(base * 2 ** max(step - 1, 0), cap))
