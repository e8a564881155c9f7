"""Payload validation moved to :mod:`aqnode.validation`, a shared module, so that the
client can validate raw payloads exactly as the node does (``validate=True``)."""

from aqnode.validation import Validator, WireSpec

__all__ = ["Validator", "WireSpec"]
