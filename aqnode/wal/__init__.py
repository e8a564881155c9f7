"""The write-ahead log in Redis (SPEC section 6)."""

from aqnode.wal.keys import LogKeys, nodes_key
from aqnode.wal.log import (
    EnqueueEntry,
    FinishEntry,
    InterruptEntry,
    RetryEntry,
    WriteAheadLog,
)

__all__ = [
    "EnqueueEntry",
    "FinishEntry",
    "InterruptEntry",
    "LogKeys",
    "RetryEntry",
    "WriteAheadLog",
    "nodes_key",
]
