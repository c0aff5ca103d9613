"""Checkpoints that survive a kill at any moment, and a Ctrl-C that keeps the step it interrupts."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.types import _PATH
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO

from nst_ff.files import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file, fsyncs it and renames it into place, so ``last.ckpt``
    is always a complete checkpoint (the old one or the new one) even after SIGKILL or power loss."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        atomic_write(path, lambda file: torch.save(checkpoint, file))


class StepCheckpoint(ModelCheckpoint):
    """ModelCheckpoint without its save of last.ckpt as training ends: ``FinalCheckpoint`` saves that file at the last
    step's end, and this one's save after it (in a run shorter than ``checkpoint.every_n_steps``, where it had saved
    none) counted the step's epoch as complete: a resume ran an epoch ahead."""

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pass


class StopAtStepEnd(pl.Callback):
    """Ctrl-C (SIGINT) or SIGTERM (``kill``, a scheduler's pre-emption) ends the run at the end of the step it
    interrupts, where train.py saves that step's checkpoint (not one between two parameter updates) and says how
    to resume; a second signal (``forced``) stops at once, where train.py names the newest checkpoint to resume from
    (Lightning exited with status 1 and no word). Lightning stopped inside the step on Ctrl-C, and on SIGTERM exited
    with status 0; either way only the last periodic checkpoint was kept, up to ``checkpoint.every_n_steps``
    earlier (500 steps: 10 minutes on a CPU). A run of several processes keeps Lightning's handling: they would have
    to agree on the step to stop at, a collective at every step. The handlers stay until ``restore``, after the
    run's last checkpoint is saved: a second signal while it is written is still the forced stop."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested: signal.Signals | None = None
        self.forced: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def arm(self, trainer: pl.Trainer) -> None:
        """Before the fit: a signal while it starts (Lightning's set-up, a resumed checkpoint's restore, the first
        step's compilation) stops it at once (``forced``), where Lightning exited with status 1 and no word."""
        self._previous = self._install(trainer, self._stop_now)

    def _install(
        self, trainer: pl.Trainer, handler: Callable[[int, FrameType | None], None]
    ) -> dict[signal.Signals, Any]:
        """``handler`` for ``SIGNALS`` where this process may take them (one process: DDP keeps Lightning's
        handling; the main thread); returns the handlers it replaced."""
        if trainer.world_size != 1 or threading.current_thread() is not threading.main_thread():
            return {}
        return {signum: signal.signal(signum, handler) for signum in self.SIGNALS}

    def _stop_now(self, signum: int, frame: FrameType | None) -> None:
        self.forced = signal.Signals(signum)
        raise KeyboardInterrupt

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        handlers = self._install(trainer, self._request)
        self._previous = self._previous or handlers  # those from before arm(), if it ran

    def _request(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            self.forced = signal.Signals(signum)
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum)
        print(
            f"\n{self.requested.name}: stopping at the end of this step (Ctrl-C again to stop at once)", file=sys.stderr
        )

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if self.requested:
            trainer.should_stop = True

    def restore(self) -> None:
        """The signal handlers as they were before the run."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


class FinalCheckpoint(pl.Callback):
    """The run's last step saved to ``path`` (in full: resumable), whatever the step: ModelCheckpoint saves every N
    steps. Saved inside the fit: Lightning restores the process's signal handlers when the fit returns, and a Ctrl-C
    during a save after it was a traceback, not ``StopAtStepEnd``'s request. A run that ends on a step (max_steps, a
    stop) is saved at that step's end, where ModelCheckpoint saves: saved as training ended, the epoch the step was
    in counted as complete, and a resume counted its epochs one ahead (a run with max_epochs ended an epoch early)."""

    def __init__(self, path: Path, stop: StopAtStepEnd) -> None:
        self.path = path
        self.stop = stop
        self.saved_step: int | None = None

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if self.stop.requested or trainer.global_step == trainer.max_steps:
            self.save(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.saved_step != trainer.global_step:  # the run ended on an epoch (max_epochs) or a time limit
            self.save(trainer)

    def save(self, trainer: pl.Trainer) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)
        self.saved_step = trainer.global_step
