"""Checkpoints that survive a kill at any moment."""

from __future__ import annotations

from typing import Any

import torch
from lightning_fabric.utilities.types import _PATH
from pytorch_lightning.plugins.io import TorchCheckpointIO

from nst_ff.files import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file, fsyncs it and renames it into place, so ``last.ckpt``
    is always a complete checkpoint (the old one or the new one) even after SIGKILL or power loss."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        atomic_write(path, lambda file: torch.save(checkpoint, file))
