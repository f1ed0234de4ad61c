"""A test-only callback that SIGKILLs its own process (not a test module; imported by `llamo fit` subprocesses
through PYTHONPATH=tests, and in-process as an exception-raising variant)."""

from __future__ import annotations

import os
import signal

import lightning as L


class Killed(RuntimeError):
    """Raised by :class:`KillAfterStep` in-process (``sigkill=False``) instead of killing the test runner."""


class KillAfterStep(L.Callback):
    """Dies right before the batch after optimiser step ``step``, i.e. after that step's checkpoint was written.

    Lightning runs checkpoint callbacks last in ``on_train_batch_end``, so the next ``on_train_batch_start`` is the
    first point at which step ``step``'s ``last.ckpt`` is on disk; dying there is deterministic (no sleep race).
    ``sigkill=True`` sends SIGKILL to this process (no Python cleanup, no ``finally``, no Lightning teardown: what a
    preempted job gets); ``sigkill=False`` raises :class:`Killed` so an in-process test can carry on.
    """

    def __init__(self, step: int, sigkill: bool = True) -> None:
        self.step, self.sigkill = step, sigkill

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            if self.sigkill:
                os.kill(os.getpid(), signal.SIGKILL)
            raise Killed(f"killed before the batch after step {self.step}")
