"""train.py's progress bar: the run's optimizer steps out of ``trainer.max_steps``, with the time left.

Runs are counted in steps (``max_epochs=-1``): Lightning's own bars restart at every pass over the photos and,
with rich installed, print the epoch as "5/-2", so neither says how far a run is or when it ends.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.callbacks.progress.tqdm_progress import Tqdm


class StepProgressBar(TQDMProgressBar):
    """One bar for the whole run: ``step N/max_steps``, steps per second, time elapsed and left, the logged
    loss and images/s. A resumed run starts the bar at its checkpoint's step, so the rate and time left count
    only this run's steps."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        bar = self.train_progress_bar
        bar.reset(total=trainer.max_steps)
        bar.initial = bar.n = trainer.global_step
        bar.unit = "step"
        bar.set_description("step")

    def on_train_epoch_start(self, trainer: pl.Trainer, *_: Any) -> None:
        """Nothing: the bar spans epochs."""

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *_: Any) -> None:
        bar = self.train_progress_bar
        step = trainer.global_step
        if self.is_enabled and (step % self.refresh_rate == 0 or step == bar.total):
            bar.n = step
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # also redraws the bar

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Nothing: the bar is closed when training ends."""

    def init_validation_tqdm(self) -> Tqdm:
        """Validation is a moment's work on a few photos: no bar of its own, which redrew the step bar below it."""
        return Tqdm(disable=True)
