"""aqnode: per-entity sequential processing with virtual actors.

Strictly once, fail if interrupted. See README.md and SPEC for the contract.
"""

from aqnode.api import Command, Message, Query, entity_type, handles
from aqnode.context import Context

__version__ = "0.1.0"

__all__ = ["Command", "Context", "Message", "Query", "__version__", "entity_type", "handles"]
