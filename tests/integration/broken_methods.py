"""A methods module that fails to import: start-up must stop with one line."""

raise RuntimeError("broken on purpose")
