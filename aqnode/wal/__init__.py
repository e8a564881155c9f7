"""The write-ahead log in Redis (SPEC section 6)."""

from aqnode.wal.keys import LogKeys, nodes_key
from aqnode.wal.log import (
    Applied,
    EnqueueEntry,
    Failed,
    FinishEntry,
    InterruptEntry,
    LogState,
    Outcome,
    Refused,
    RetryEntry,
    WriteAheadLog,
)

__all__ = [
    "Applied",
    "EnqueueEntry",
    "Failed",
    "FinishEntry",
    "InterruptEntry",
    "LogKeys",
    "LogState",
    "Outcome",
    "Refused",
    "RetryEntry",
    "WriteAheadLog",
    "nodes_key",
]
