"""LightningModule that trains a TransformerNet for one style under the perceptual losses."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torchvision.utils import make_grid

from nst_ff.errors import UserError
from nst_ff.export import load_model, resolve_model
from nst_ff.images import load_image
from nst_ff.net import TransformerNet
from nst_ff.perceptual import LossTerms, PerceptualLoss
from nst_ff.temporal import temporal_consistency_loss

SCHEDULERS = ("none", "cosine", "step")


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_initial_weights(name_or_path: str, config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Weights of a trained model (shipped name, ``.safetensors`` or ``.ckpt``) to start training from.

    Starting from another style's model is a fine-tuning shortcut: the network already reconstructs
    photos and only has to learn the new texture."""
    path = resolve_model(name_or_path)
    net, _ = load_model(path)
    if net.config != config:
        raise UserError(f"{path}: model.init_from has network {net.config}, this run builds {config}; match model.net")
    return net.state_dict()


class StyleTransferModule(pl.LightningModule):
    """``net`` kwargs build the TransformerNet; ``loss`` is a ``conf/loss`` preset; ``style`` holds the
    style's ``name`` and ``image`` path; ``init_from`` a trained model whose weights start the network
    (not a resume: optimizer, step and data order start afresh). ``temporal_weight`` adds the temporal
    consistency term of ``nst_ff.temporal`` (stable video). The VGG is built in ``setup`` and never saved
    in checkpoints."""

    def __init__(
        self,
        net: dict[str, Any],
        loss: dict[str, Any],
        style: dict[str, Any],
        lr: float = 1e-3,
        scheduler: str = "none",
        channels_last: bool = True,
        init_from: str | None = None,
        temporal_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {scheduler!r}: choose one of {', '.join(SCHEDULERS)}")
        self.save_hyperparameters()
        self.net = TransformerNet(**net)
        if init_from:
            self.net.load_state_dict(load_initial_weights(init_from, self.net.config))
        self.perceptual: PerceptualLoss | None = None
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self._last_step_time: float | None = None
        self._val_outputs: list[torch.Tensor] = []
        self._logged_references = False  # content photos and style image: logged once per run

    def setup(self, stage: str) -> None:
        if self.perceptual is not None:
            return
        loss = self.hparams.loss
        style_image = load_image(self.hparams.style["image"], loss.get("style_size"))
        self.perceptual = PerceptualLoss.from_config(**loss)
        self.perceptual.set_style(style_image)
        self.perceptual.to(device=self.device, memory_format=self.memory_format)
        self.net.to(memory_format=self.memory_format)
        self.style_image = style_image
        self.style_sha256 = file_sha256(self.hparams.style["image"])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images.contiguous(memory_format=self.memory_format))

    def compute_losses(self, images: torch.Tensor) -> tuple[torch.Tensor, LossTerms]:
        assert self.perceptual is not None, "setup() builds the loss"
        images = images.contiguous(memory_format=self.memory_format)
        output = self.net(images)
        return output, self.perceptual(output, self.perceptual.content_targets(images))

    def _log_terms(self, prefix: str, terms: LossTerms, **kwargs: Any) -> None:
        values = {"loss": terms.total, "content": terms.content, "style": terms.style, "tv": terms.tv}
        values.update({f"style/{name}": value for name, value in terms.style_layers.items()})
        self.log_dict({f"{prefix}/{key}": value for key, value in values.items()}, **kwargs)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        now = time.perf_counter()
        if self._last_step_time is not None:
            images_per_sec = batch.shape[0] * self.trainer.world_size / (now - self._last_step_time)
            self.log("train/images_per_sec", images_per_sec, prog_bar=True)
        self._last_step_time = now
        _, terms = self.compute_losses(batch)
        output, terms = self.compute_losses(batch)
        self._log_terms("train", terms, prog_bar=False)
        # Seeded by the step: a resumed run draws the same motions as an uninterrupted one.
        loss = terms.total + self._temporal("train", batch, output, seed=self.global_step)
        self.log("loss", loss, prog_bar=True, logger=False)
        return loss

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        output, terms = self.compute_losses(batch)
        self._log_terms("val", terms, sync_dist=True)
        self._temporal("val", batch, output, seed=batch_idx, sync_dist=True)  # same motions at every validation
        self._val_outputs.append(output.float().cpu())

    def _temporal(self, prefix: str, images: torch.Tensor, output: torch.Tensor, seed: int, **log: Any) -> Any:
        """The weighted temporal consistency term (0 when ``temporal_weight`` is 0); logs ``<prefix>/temporal``
        unweighted. ``train/loss`` and ``val/loss`` stay the perceptual loss alone."""
        if not self.hparams.temporal_weight:
            return 0.0
        generator = torch.Generator().manual_seed(seed)
        temporal = temporal_consistency_loss(self.forward, images, output, generator)
        self.log(f"{prefix}/temporal", temporal, **log)
        return self.hparams.temporal_weight * temporal

    def on_validation_epoch_end(self) -> None:
        outputs, self._val_outputs = self._val_outputs, []
        self._last_step_time = None  # validation time is not training throughput
        experiment = getattr(self.logger, "experiment", None)
        if not outputs or not self.trainer.is_global_zero or not hasattr(experiment, "add_image"):
            return
        stylized = torch.cat(outputs)
        experiment.add_image("val/stylized", make_grid(stylized, nrow=len(stylized)), self.global_step)
        if not self._logged_references:
            content = self.trainer.datamodule.val_images
            experiment.add_image("val/content", make_grid(content, nrow=len(content)), self.global_step)
            experiment.add_image("val/style", self.style_image[0], self.global_step)
            self._logged_references = True

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(self.net.parameters(), lr=self.hparams.lr)
        steps = max(int(self.trainer.max_steps), 1)
        if self.hparams.scheduler == "cosine":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        elif self.hparams.scheduler == "step":
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(steps // 3, 1), gamma=0.3)
        else:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def export_metadata(self) -> dict[str, Any]:
        """What an exported model records about how it was made."""
        loss = dict(self.hparams.loss)
        return {
            "style": self.hparams.style["name"],
            "style_image": Path(self.hparams.style["image"]).name,
            "style_sha256": self.style_sha256,
            "net": self.net.config,
            "loss": loss,
            "vgg": loss["vgg"],
            "vgg_weights": (loss.get("weights") or {}).get("source", "torchvision"),
            "steps": int(self.global_step),
            "lr": self.hparams.lr,
            "scheduler": self.hparams.scheduler,
            "temporal_weight": self.hparams.temporal_weight,
        }
