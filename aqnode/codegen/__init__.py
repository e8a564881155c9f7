"""Code generation from the registry (SPEC 11): pure functions from its entries to text.

``model`` unifies the messages' types and names them; ``python``, ``jsonschema`` and
``typescript`` render a model. The same registry entries always give the same bytes, and
every file says what generated it and from which entries (service group and catalogue
digest), never when.
"""

from __future__ import annotations

from aqnode.codegen import jsonschema, python, typescript
from aqnode.codegen.model import Model, build

__all__ = ["Model", "build", "jsonschema", "python", "typescript"]
