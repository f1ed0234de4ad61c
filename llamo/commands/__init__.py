"""The `llamo` sub-commands as typed functions (the top layer: they may import every other layer)."""
