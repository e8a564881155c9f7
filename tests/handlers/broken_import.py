"""A handler module that fails to import (the node must stop, not loop)."""

raise RuntimeError("this module is broken on purpose")
