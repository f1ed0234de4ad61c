"""Core: plain `nn.Module`s and config dataclasses (no Lightning import here)."""
