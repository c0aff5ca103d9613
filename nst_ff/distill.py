"""Knowledge distillation: train a (light) TransformerNet to reproduce a trained model's outputs.

The teacher's stylised photo is the target (pixel MSE), so a step needs no VGG: one teacher forward pass
and the student's forward and backward passes. ``perceptual_weight`` adds Johnson et al.'s feature
reconstruction loss (VGG-16 relu2_2) between the student's and the teacher's outputs, which keeps fine
strokes that a pixel loss blurs while the student cannot yet place them exactly. Everything else (data,
optimizer, schedule, checkpoints and exact resume, validation grids, export) is ``StyleTransferModule``'s.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.utils import make_grid

from nst_ff.compare import style_image_path
from nst_ff.errors import UserError
from nst_ff.export import load_model, model_with_weights
from nst_ff.files import file_sha256
from nst_ff.module import StyleTransferModule
from nst_ff.perceptual import PerceptualLoss, VGGEncoder

# What a student inherits from its teacher's metadata: the style image and the loss it is judged by.
_TEACHER_KEYS = ("style_image", "style_sha256", "loss", "vgg", "vgg_weights")


class DistillModule(StyleTransferModule):
    """``teacher``: a shipped model's name or a model file (``.safetensors`` or ``.ckpt``); ``style``: only
    its ``name`` is used, the student's (default ``<teacher's style>_fast``). ``net``, ``lr``,
    ``scheduler``, ``channels_last``, ``init_from``: as in ``StyleTransferModule``.
    ``perceptual_weight``: weight of the relu2_2 feature term (0: pixels only, no VGG at all).
    ``style_loss_weight``: weight of the teacher's own training loss (its VGG content, style and TV
    terms against the photo and the painting), which restores the full strokes that a student trained
    on the targets alone renders too softly; needs the teacher's style image in assets/styles.

    The teacher is a frozen submodule, so checkpoints carry it and a resumed run distils from exactly
    the weights it started with, even if the teacher's file has changed since."""

    def __init__(
        self,
        net: dict[str, Any],
        teacher: str | None,
        style: dict[str, Any] | None = None,
        lr: float = 1e-3,
        scheduler: str = "none",
        warmup_steps: int = 0,
        grad_clip_ratio: float = 0.0,
        adam_beta2: float = 0.999,
        channels_last: bool | None = None,
        init_from: str | None = None,
        compile: bool | str = "auto",
        compile_mode: str = "auto",
        perceptual_weight: float = 0.0,
        style_loss_weight: float = 0.0,
        temporal_weight: float = 0.0,
        loss_weights: dict[str, Any] | None = None,
    ) -> None:
        if not teacher:
            raise UserError("teacher is not set: pass teacher=<shipped model name or model file>")
        teacher_path = model_with_weights("teacher", teacher)
        teacher_net, meta = load_model(teacher_path)
        missing = [key for key in ("style", "loss") if key not in meta]
        if missing:
            raise UserError(f"{teacher_path}: the teacher's metadata lacks {missing}; export it with train.py")
        name = (style or {}).get("name") or f"{meta['style']}_fast"
        student_style = {"name": name, "image": meta.get("style_image")}
        super().__init__(
            net,
            meta["loss"],
            student_style,
            lr=lr,
            scheduler=scheduler,
            warmup_steps=warmup_steps,
            grad_clip_ratio=grad_clip_ratio,
            adam_beta2=adam_beta2,
            channels_last=channels_last,
            init_from=init_from,
            compile=compile,
            compile_mode=compile_mode,
            temporal_weight=temporal_weight,
        )
        self.teacher = teacher_net.requires_grad_(False)
        self.name = name
        self.teacher_info = {
            "model": teacher,  # as given: a shipped name stays a name; sha256 pins the file
            "style": meta["style"],
            "sha256": file_sha256(teacher_path),
            "net": teacher_net.config,
            "steps": meta.get("steps"),
        }
        self.teacher_meta = {key: meta[key] for key in _TEACHER_KEYS if key in meta}
        self.targets_grid: torch.Tensor | None = None
        self.encoder: VGGEncoder | None = None

    def build_loss(self) -> PerceptualLoss | None:
        """The VGG terms that are switched on, built once on the CPU (none when both weights are 0)."""
        # The teacher's loss, with the VGG weights from where this run says (loss.weights; source=teacher: the
        # teacher's own, as recorded).
        weights = self.hparams.loss_weights or {"source": "teacher"}
        if weights.get("source") == "teacher":
            weights = self.hparams.loss.get("weights") or {}
        loss = {**self.hparams.loss, "weights": weights}
        if self.hparams.perceptual_weight and self.encoder is None:
            source = loss["weights"].get("source") or "torchvision"
            self.encoder = VGGEncoder("vgg16", ["relu2_2"], source, loss["weights"].get("path"))
        if self.hparams.style_loss_weight and self.perceptual is None:
            style_image = style_image_path(self.teacher_meta, None)
            self.perceptual = PerceptualLoss.for_style(style_image, **loss)
        return self.perceptual

    def frozen_modules(self) -> list[nn.Module]:
        self.build_loss()
        return [module for module in (self.encoder, self.perceptual) if module is not None]

    def setup(self, stage: str) -> None:
        super().setup(stage)
        self.execution.prepare(self.teacher)

    def train(self, mode: bool = True) -> DistillModule:
        super().train(mode)
        self.teacher.eval()  # frozen: a batch-norm teacher must keep its running statistics
        return self

    def outputs(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(student output, teacher output) for the same photos."""
        images = images.contiguous(memory_format=self.execution.memory_format)
        with torch.no_grad():
            target = self.teacher(images)
        return self.net(images), target

    def distillation_loss(
        self, output: torch.Tensor, target: torch.Tensor, images: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Pixel MSE to the teacher's output, plus the VGG terms that are switched on (the teacher's
        training loss needs the input ``images`` for its content targets)."""
        loss = F.mse_loss(output.float(), target.float())
        if self.encoder is not None:
            with torch.no_grad():
                target_features = self.encoder(target)["relu2_2"]
            features = self.encoder(output)["relu2_2"]
            loss = loss + self.hparams.perceptual_weight * F.mse_loss(features.float(), target_features.float())
        if self.perceptual is not None and images is not None:
            terms = self.perceptual(output, self.perceptual.content_targets(images))
            loss = loss + self.hparams.style_loss_weight * terms.total
        return loss

    def training_loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        output, target = self.outputs(images)
        loss = self.distillation_loss(output, target, images)
        return loss, {"distill": loss}, output

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        output, target = self.outputs(batch)
        logged = {"distill": self.distillation_loss(output, target, batch)}
        if self.hparams.temporal_weight:
            logged["temporal"] = self.temporal_term(batch, output, seed=batch_idx)
        self.log_validation(logged, logged["distill"])
        self._val_outputs.append(output.float().cpu())
        if self.targets_grid is None:
            self.targets_grid = make_grid(target.float().cpu(), nrow=len(target))

    def reference_image(self) -> torch.Tensor:
        """The teacher's outputs on the validation photos, shown once as val/style: the student's targets."""
        assert self.targets_grid is not None, "validation_step ran first"
        return self.targets_grid

    def export_metadata(self) -> dict[str, Any]:
        """The teacher's style image and loss (so ``nst_ff.compare`` scores the student under the same
        loss), the student's name, network and schedule, and which teacher it learnt from."""
        return {
            **self.teacher_meta,
            "style": self.name,
            "net": self.net.config,
            "steps": int(self.global_step),
            "lr": self.hparams.lr,
            "scheduler": self.hparams.scheduler,
            "warmup_steps": self.hparams.warmup_steps,  # the student's own, not the teacher's
            "grad_clip_ratio": self.hparams.grad_clip_ratio,
            "adam_beta2": self.hparams.adam_beta2,
            "temporal_weight": self.hparams.temporal_weight,
            "teacher": self.teacher_info,
        }
