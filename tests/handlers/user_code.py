"""Module-level user code and a __post_init__ that misbehaves: none of it may run in the
supervisor. Every import appends its process id to $AQ_TEST_IMPORTS."""

from __future__ import annotations

import os

from aqnode import Command, entity_type, handles

if "AQ_TEST_IMPORTS" in os.environ:
    with open(os.environ["AQ_TEST_IMPORTS"], "a") as _out:
        _out.write(f"{os.getpid()}\n")


@entity_type("checked", id_field="key")
class Checked(Command[int]):
    key: str
    amount: int
    how: str = "ok"  # "ok" | "raise" | "exit"

    def __post_init__(self) -> None:
        if self.how == "raise":
            raise ValueError("amount checked in __post_init__ and refused")
        if self.how == "exit":
            raise SystemExit(7)


@handles(Checked)
async def checked(msg: Checked) -> int:
    return msg.amount
