"""`aqnode dlq purge --older-than DURATION`: a number and a unit, never a bare number."""

from __future__ import annotations

import pytest

from aqnode.wal.dlq import parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("2h", 7200), ("7d", 604800), ("1w", 604800), ("1.5h", 5400)],
)
def test_a_duration_is_a_number_and_a_unit(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["5", "0", "", "m", "5x", "-5m", "5 days"])
def test_anything_else_is_refused_with_the_accepted_forms(text: str) -> None:
    with pytest.raises(ValueError, match="30s, 5m, 2h or 7d"):
        parse_duration(text)
