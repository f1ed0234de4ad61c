"""``LogProgress``: plain progress lines of a fit for logs (``make demo > demo.log``), where a bar shows nothing.

Every ``interval_s`` seconds (and/or every ``every_n_steps`` steps) it prints, on global rank 0, to stdout::

    [stage2] step 120/300 (40%)  loss 1.2345  0.41 steps/s  elapsed 4m52s  ETA 7m19s

and at the end of fit one summary line::

    [stage2] fit done: 300 steps in 12m11s (0.41 steps/s), last loss 0.9876

``loss`` is the training step's returned loss, the value every stage logs as ``train/loss``; steps/s is averaged
since this fit started (a resumed run counts from its resume step), and the ETA is the remaining steps at that
rate. Validation runs are reported with their wall time too. Configured by the top-level ``progress:`` key
(`llamo.stages.cli.LlamoCLI` adds the callback to every stage, as it does the handoff; defaults in
``experiments/base.yaml``).
"""

from __future__ import annotations

import sys
import time
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import ProgressBar

from llamo.progress import is_tty

__all__ = ["LogProgress", "format_duration"]


def format_duration(seconds: float) -> str:
    """``45s``, ``4m52s``, ``1h02m``: short and unambiguous in a log line."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class LogProgress(L.Callback):
    """Print a progress line every ``interval_s`` seconds or ``every_n_steps`` steps, and a summary at fit end.

    Args:
        interval_s: Seconds between two lines (None: no time-based lines).
        every_n_steps: Also print every this many optimizer steps (None: only time-based lines).
        when: ``auto``: only when stdout is not a terminal (a log file or pipe; on a terminal the progress bar
            shows the same); ``always``; ``never``.
        hide_bar_off_tty: When active and stderr (where Lightning's bar draws) is not a terminal either, switch the
            progress bar off: redrawn with carriage returns, it would fill the log with one unreadable line.
    """

    def __init__(
        self,
        interval_s: float | None = 30.0,
        every_n_steps: int | None = None,
        when: Literal["auto", "always", "never"] = "auto",
        hide_bar_off_tty: bool = True,
    ) -> None:
        super().__init__()
        if interval_s is not None and not interval_s > 0:
            raise ValueError(f"progress.interval_s must be > 0 seconds (or null), got {interval_s!r}")
        if every_n_steps is not None and (not isinstance(every_n_steps, int) or every_n_steps < 1):
            raise ValueError(f"progress.every_n_steps must be a positive integer (or null), got {every_n_steps!r}")
        if when not in ("auto", "always", "never"):
            raise ValueError(f"progress.when must be auto, always or never, got {when!r}")
        self.interval_s, self.every_n_steps, self.when = interval_s, every_n_steps, when
        self.hide_bar_off_tty = hide_bar_off_tty
        self._start = self._last = self._val_start = 0.0
        self._start_step = 0
        self._loss: float | None = None

    @property
    def active(self) -> bool:
        """Whether lines are printed (``when``, and for ``auto`` whether stdout is a terminal)."""
        return self.when == "always" or (self.when == "auto" and not is_tty(sys.stdout))

    def _print(self, trainer: L.Trainer, text: str) -> None:
        if trainer.is_global_zero:
            print(text, file=sys.stdout, flush=True)

    @staticmethod
    def _name(pl_module: L.LightningModule) -> str:
        return str(getattr(pl_module, "stage_name", "") or type(pl_module).__name__)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and self.active and self.hide_bar_off_tty and not is_tty(sys.stderr):
            for callback in trainer.callbacks:
                if isinstance(callback, ProgressBar):
                    callback.disable()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = self._last = time.perf_counter()
        self._start_step = trainer.global_step
        self._loss = None
        if self.active:
            total = f"/{trainer.max_steps}" if trainer.max_steps > 0 else ""
            self._print(trainer, f"[{self._name(pl_module)}] fit: from step {trainer.global_step}{total}")

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            self._loss = float(loss.detach())
        if not self.active:
            return
        now, step = time.perf_counter(), trainer.global_step
        due_steps = self.every_n_steps is not None and step % self.every_n_steps == 0 and step > self._start_step
        due_time = self.interval_s is not None and now - self._last >= self.interval_s
        if due_steps or due_time:
            self._last = now
            self._print(trainer, self.line(trainer, pl_module, now))

    def line(self, trainer: L.Trainer, pl_module: L.LightningModule, now: float | None = None) -> str:
        """The progress line at the current step."""
        now = time.perf_counter() if now is None else now
        step, max_steps = trainer.global_step, trainer.max_steps
        elapsed = now - self._start
        rate = (step - self._start_step) / elapsed if elapsed > 0 else 0.0
        if max_steps > 0:
            where = f"step {step}/{max_steps} ({100 * step / max_steps:.0f}%)"
            eta = format_duration((max_steps - step) / rate) if rate > 0 else "?"
        else:  # epoch-bound run: no step budget, no ETA
            where, eta = f"step {step}", "?"
        loss = "?" if self._loss is None else f"{self._loss:.4f}"
        return (
            f"[{self._name(pl_module)}] {where}  loss {loss}  {rate:.2f} steps/s  "
            f"elapsed {format_duration(elapsed)}  ETA {eta}"
        )

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.active and not trainer.sanity_checking:
            seconds = time.perf_counter() - self._val_start
            self._print(trainer, f"[{self._name(pl_module)}] validation at step {trainer.global_step}: {seconds:.1f} s")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.active:
            return
        elapsed = time.perf_counter() - self._start
        steps = trainer.global_step - self._start_step
        rate = steps / elapsed if elapsed > 0 else 0.0
        loss = "?" if self._loss is None else f"{self._loss:.4f}"
        self._print(
            trainer,
            f"[{self._name(pl_module)}] fit done: {steps} steps in {format_duration(elapsed)} ({elapsed:.1f} s, "
            f"{rate:.2f} steps/s), last loss {loss}",
        )
