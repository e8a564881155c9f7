"""The write-ahead log in Redis (SPEC section 6)."""

from aqnode.wal.keys import LogKeys
from aqnode.wal.log import EnqueueEntry, FinishEntry, WriteAheadLog

__all__ = ["EnqueueEntry", "FinishEntry", "LogKeys", "WriteAheadLog"]
