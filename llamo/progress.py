"""Progress bars that also read well in a log: `progress` is `tqdm` with a line-per-update mode for non-TTYs.

A tqdm bar redraws one line with ``\\r``; written into a file (``make demo > demo.log``) that is one huge line whose
updates overwrite each other on display, every 0.1 s. When stdout is not a terminal, `progress` writes to stdout
instead, one plain line per update at most every ``LOG_INTERVAL_S`` seconds (tqdm's meter: count, rate, elapsed and
ETA), and the final state once, when the loop ends (with ``leave=True``, the default): that line is the loop's
one-line summary with its wall time. On a terminal it is the ordinary tqdm bar (on stderr).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any, TextIO

from tqdm.auto import tqdm

__all__ = ["LOG_INTERVAL_S", "LineWriter", "is_tty", "progress"]

#: seconds between two progress lines in a log (``$LLAMO_PROGRESS_INTERVAL`` overrides it)
LOG_INTERVAL_S = 30.0


def is_tty(stream: TextIO) -> bool:
    """Whether ``stream`` is an interactive terminal (False for files, pipes and pytest's capture)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or not a real file
        return False


def log_interval() -> float:
    """`LOG_INTERVAL_S`, or ``$LLAMO_PROGRESS_INTERVAL`` (seconds, > 0) when set."""
    raw = os.environ.get("LLAMO_PROGRESS_INTERVAL")
    if raw is None:
        return LOG_INTERVAL_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"$LLAMO_PROGRESS_INTERVAL must be a number of seconds > 0, got {raw!r}; unset it for 30")
    return value


class LineWriter:
    """A file for tqdm that turns its ``\\r``-redraws into plain lines: each non-blank status becomes one line."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        for part in text.replace("\r", "\n").split("\n"):
            line = part.rstrip()
            if line:
                self.stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def progress(iterable: Iterable[Any] | None = None, **kwargs: Any) -> tqdm:
    """`tqdm(iterable, **kwargs)`, or, when stdout is not a terminal, plain lines on stdout every `log_interval`
    seconds (``mininterval``), ASCII meter, plus the final state when the loop ends. ``disable=True`` still
    disables it; an explicit ``file`` keeps tqdm's own behaviour."""
    if "file" in kwargs or is_tty(sys.stdout):
        return tqdm(iterable, **kwargs)
    interval = log_interval()
    options = {"mininterval": interval, "maxinterval": max(interval, 10.0), "miniters": 1, "ascii": True}
    options.update(kwargs)
    return tqdm(iterable, file=LineWriter(sys.stdout), **options)
