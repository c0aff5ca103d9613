"""LightningModule that trains a TransformerNet for one style under the perceptual losses."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torchvision.utils import make_grid

from nst_ff.errors import UserError
from nst_ff.execution import (
    compile_mode,
    compile_training,
    compiled,
    fused_optimizer,
    training_execution,
)
from nst_ff.export import load_model, model_with_weights, run_record
from nst_ff.files import file_sha256
from nst_ff.net import TransformerNet
from nst_ff.perceptual import LossTerms, PerceptualLoss
from nst_ff.schema import SCHEDULERS
from nst_ff.temporal import temporal_consistency_loss

log = logging.getLogger(__name__)


def load_initial_weights(name_or_path: str, config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Weights of a trained model (shipped name, ``.safetensors`` or ``.ckpt``) to start training from.

    Starting from another style's model is a fine-tuning shortcut: the network already reconstructs
    photos and only has to learn the new texture."""
    path = model_with_weights("model.init_from", name_or_path)
    net, _ = load_model(path)
    if net.config != config:
        raise UserError(f"{path}: model.init_from has network {net.config}, this run builds {config}; match model.net")
    return net.state_dict()


def clip_to_running_norm(
    grads: list[torch.Tensor], average: torch.Tensor, ratio: float, momentum: float = 0.98
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale ``grads`` in place so that their total norm is at most ``ratio`` times ``average``, the running
    average of the norms after clipping (a 0-d tensor, updated in place; 0 before the first step, which is
    not clipped). Returns the norm before clipping and the scale applied. All on the gradients' device,
    without a branch on a value: no step waits for the GPU (as in ``torch.nn.utils.clip_grad_norm_``)."""
    norm = torch.nn.utils.get_total_norm(grads)
    started = average > 0
    scale = torch.where(started, (ratio * average / (norm + 1e-6)).clamp(max=1.0), 1.0)
    torch._foreach_mul_(grads, scale)
    clipped = norm * scale
    average.copy_(torch.where(started, momentum * average + (1 - momentum) * clipped, clipped))
    return norm, scale


class StyleTransferModule(pl.LightningModule):
    """``net`` kwargs build the TransformerNet; ``loss`` is a ``conf/loss`` preset; ``style`` holds the
    style's ``name`` and ``image`` path; ``init_from`` a trained model whose weights start the network
    (not a resume: optimizer, step and data order start afresh). The VGG is built in ``setup`` and
    never saved in checkpoints.

    How the step runs on the trainer's device is ``nst_ff.execution``'s choice: ``channels_last``
    None picks the device's fastest layout; ``compile`` (true, false or auto: where it pays off within
    ``trainer.max_steps``) compiles the training step with ``compile_mode`` (auto: CUDA graphs on CUDA,
    where every step has the same crop size). Validation stays eager (other sizes, no gradients).

    ``temporal_weight`` adds the temporal consistency term of ``nst_ff.temporal`` (stable video): the
    network must commute with small random camera motions of the photos. It runs beside the compiled
    loss, eagerly, since its motions are drawn on the host from the step number.

    ``grad_clip_ratio`` (0: off) clips each step's gradient norm at that multiple of its running average:
    a raised learning rate (large batches) can run away, the norm growing several-fold a step until the
    loss is 100x and the network never recovers. Relative, because the norm's scale depends on the crop
    size, the style and the loss weights (6x between 64 and 256 px crops of one network).
    """

    def __init__(
        self,
        net: dict[str, Any],
        loss: dict[str, Any],
        style: dict[str, Any],
        lr: float = 1e-3,
        scheduler: str = "none",
        warmup_steps: int = 0,
        grad_clip_ratio: float = 0.0,
        adam_beta2: float = 0.999,
        channels_last: bool | None = None,
        init_from: str | None = None,
        compile: bool | str = "auto",
        compile_mode: str = "auto",
        temporal_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {scheduler!r}: choose one of {', '.join(SCHEDULERS)}")
        # Not logged by Lightning: train.py logs the whole config, which holds these (Lightning added them to
        # hparams.yaml a second time, at its top level).
        self.save_hyperparameters(logger=False)
        self.net = TransformerNet(**net)
        if init_from:
            self.net.load_state_dict(load_initial_weights(init_from, self.net.config))
        self.perceptual: PerceptualLoss | None = None
        self.style_sha256: str | None = None  # the painting's file, read by build_loss
        self._set_up = False  # setup() chose the execution for the trainer's device
        self.execution = training_execution(torch.device("cpu"), channels_last)
        self.compile_mode: str | None = None  # set in setup when the step is compiled
        self._train_loss = self.training_loss
        self._throughput: tuple[float, int] | None = None  # (start time, images since) on the host clock
        self._val_outputs: list[torch.Tensor] = []
        self._logged_references = False  # content photos and style image: logged once per run
        # For grad_clip_ratio: 0 until the first step. Saved in checkpoints by on_save_checkpoint, not in the
        # state dict, so checkpoints written before it existed still resume.
        self.register_buffer("grad_norm_average", torch.zeros(()), persistent=False)

    def build_loss(self) -> PerceptualLoss:
        """The style's loss (VGG weights, the painting's Gram targets), built once, on the CPU: what can fail on
        the user's files fails here, which ``nst_ff.training`` calls before writing anything."""
        if self.perceptual is None:
            self.perceptual = PerceptualLoss.for_style(self.hparams.style["image"], **self.hparams.loss)
            self.style_sha256 = file_sha256(self.hparams.style["image"])
        return self.perceptual

    def frozen_modules(self) -> list[nn.Module]:
        """The frozen networks beside ``net`` (built by ``build_loss``), laid out like it by ``setup``."""
        return [self.build_loss()]

    def setup(self, stage: str) -> None:
        if self._set_up:
            return
        self._set_up = True
        device = self.trainer.strategy.root_device if self._trainer is not None else self.device
        self.execution = training_execution(device, self.hparams.channels_last)
        for module in self.frozen_modules():
            module.to(memory_format=self.execution.memory_format)
        self.execution.prepare(self.net)
        steps = self.trainer.max_steps if self._trainer is not None else 0
        precision = str(self.trainer.precision) if self._trainer is not None else "32-true"
        if compile_training(self.hparams.compile, device, steps, precision):
            self.compile_mode = compile_mode(device, self.hparams.compile_mode)
            self._train_loss = compiled(self.training_loss, mode=self.compile_mode, dynamic=False)
        if self._trainer is not None and self.trainer.is_global_zero:
            log.info("%s", self.describe_run(str(self.trainer.precision)))

    def describe_run(self, precision: str) -> str:
        """The one line saying what the training runs on."""
        compiled_how = f"compiled ({self.compile_mode})" if self.compile_mode else "not compiled"
        parameters = f"{sum(p.numel() for p in self.net.parameters()):,} parameters"
        return f"training on {self.execution.describe()}, precision {precision}, {compiled_how}; {parameters}"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images.contiguous(memory_format=self.execution.memory_format))

    def compute_losses(self, images: torch.Tensor) -> tuple[torch.Tensor, LossTerms]:
        assert self.perceptual is not None, "setup() builds the loss"
        images = images.contiguous(memory_format=self.execution.memory_format)
        output = self.net(images)
        return output, self.perceptual(output, self.perceptual.content_targets(images))

    @staticmethod
    def logged_terms(terms: LossTerms) -> dict[str, torch.Tensor]:
        values = {"loss": terms.total, "content": terms.content, "style": terms.style, "tv": terms.tv}
        values.update({f"style/{name}": value for name, value in terms.style_layers.items()})
        return values

    def training_loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """A training step's loss, the values logged under ``train/`` and the network's output (compiled as
        one graph where ``compile`` says so)."""
        output, terms = self.compute_losses(images)
        return terms.total, self.logged_terms(terms), output

    def temporal_term(self, images: torch.Tensor, output: torch.Tensor, seed: int) -> torch.Tensor:
        """The unweighted temporal consistency term of ``output = net(images)``, with motions and noise drawn
        from ``seed`` (the step: a resumed run draws what an uninterrupted one would)."""
        return temporal_consistency_loss(self.forward, images, output, torch.Generator().manual_seed(seed))

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        if self.compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()  # a new step: last step's graph outputs are done with
        total, logged, output = self._train_loss(batch)
        if self.hparams.temporal_weight:
            logged = {**logged, "temporal": self.temporal_term(batch, output, seed=self.global_step)}
            total = total + self.hparams.temporal_weight * logged["temporal"]
        # Tensors on the device: Lightning reads them only every trainer.log_every_n_steps, so no step
        # waits for the GPU to catch up just to log.
        logs = self._logs_this_step()
        if logs:
            self.log_dict({f"train/{key}": value for key, value in logged.items()})
        self._log_throughput(batch.shape[0], total, logs)
        return total

    def _logs_this_step(self) -> bool:
        """Whether Lightning writes this step's values (every trainer.log_every_n_steps, or as the run stops: its
        logger connector's rule). It drops what is logged on the other steps, after ~5 ms of Python per log_dict
        call (a 2-core Xeon; ~2.5 ms of a batch-16 step through train.py on an H200 was outside the step itself)."""
        return (self.global_step + 1) % self.trainer.log_every_n_steps == 0 or self.trainer.should_stop

    def _log_throughput(self, batch_size: int, loss: torch.Tensor, logs: bool) -> None:
        """images/s over the steps since the last logged one, from the host clock. Logged only where ``logs`` (the
        steps Lightning writes), as CPU tensors: a progress-bar value on the GPU would be read back,
        a host sync, at every step."""
        now = time.perf_counter()
        if self._throughput is None:
            self._throughput = (now, 0)
        start, images = self._throughput
        if images and logs:
            self.log("train/images_per_sec", torch.tensor(images / (now - start)), prog_bar=True)
            self.log("loss", loss.detach().cpu(), prog_bar=True, logger=False)
            start, images = now, 0
        self._throughput = (start, images + batch_size * self.trainer.world_size)

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        # trainer.gradient_clip_val (an absolute threshold) still applies, first.
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        ratio = self.hparams.grad_clip_ratio
        if not ratio:
            return
        grads = [p.grad for p in self.net.parameters() if p.grad is not None]
        norm, scale = clip_to_running_norm(grads, self.grad_norm_average, ratio)
        if self._logs_this_step():
            self.log_dict({"train/grad_norm": norm, "train/grad_clip_scale": scale})

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["grad_norm_average"] = self.grad_norm_average.detach().cpu()
        checkpoint["max_steps"] = int(self.trainer.max_steps)  # the steps its schedule runs over (resume checks)
        checkpoint["style_sha256"] = self.style_sha256  # the painting itself, whatever its file's name (resume checks)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "grad_norm_average" in checkpoint:
            self.grad_norm_average.copy_(checkpoint["grad_norm_average"])

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        output, terms = self.compute_losses(batch)
        logged = self.logged_terms(terms)
        if self.hparams.temporal_weight:  # the same motions at every validation
            logged["temporal"] = self.temporal_term(batch, output, seed=batch_idx)
        self.log_validation(logged, logged["loss"])
        self._val_outputs.append(output.float().cpu())

    def log_validation(self, logged: dict[str, torch.Tensor], score: torch.Tensor) -> None:
        """``logged`` as ``val/<key>``, ``score`` as ``hp_metric`` (beside the config in TensorBoard's HPARAMS tab),
        averaged over the validation photos and the ranks; written by ``on_validation_end``."""
        self.log_dict({f"val/{key}": value for key, value in logged.items()}, sync_dist=True, logger=False)
        self.log("hp_metric", score, sync_dist=True, logger=False)

    def on_validation_end(self) -> None:
        # At the step whose weights were validated, as the validation images are: Lightning's own logging wrote them
        # one step before (its count of steps taken rises after the validation that a step's end runs).
        metrics = self.trainer.callback_metrics
        scalars = {key: float(value) for key, value in metrics.items() if key.startswith("val/") or key == "hp_metric"}
        for logger in self.loggers:
            logger.log_metrics(scalars, step=self.global_step)

    def on_validation_epoch_end(self) -> None:
        outputs, self._val_outputs = self._val_outputs, []
        self._throughput = None  # validation time is not training throughput
        experiment = getattr(self.logger, "experiment", None)
        if not outputs or not self.trainer.is_global_zero or not hasattr(experiment, "add_image"):
            return
        stylized = torch.cat(outputs)
        experiment.add_image("val/stylized", make_grid(stylized, nrow=len(stylized)), self.global_step)
        if not self._logged_references:
            content = self.trainer.datamodule.val_images
            experiment.add_image("val/content", make_grid(content, nrow=len(content)), self.global_step)
            experiment.add_image("val/style", self.reference_image(), self.global_step)
            self._logged_references = True

    def reference_image(self) -> torch.Tensor:
        """What the validation grids are compared with in TensorBoard (val/style): the painting."""
        return self.perceptual.style_image[0]

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(
            self.net.parameters(),
            lr=self.hparams.lr,
            betas=(0.9, self.hparams.adam_beta2),
            fused=fused_optimizer(self.execution.device),
        )
        warmup = self.hparams.warmup_steps
        steps = max(int(self.trainer.max_steps) - warmup, 1)
        schedule = torch.optim.lr_scheduler
        if self.hparams.scheduler == "cosine":
            scheduler = schedule.CosineAnnealingLR(optimizer, T_max=steps)
        elif self.hparams.scheduler == "step":
            scheduler = schedule.StepLR(optimizer, step_size=max(steps // 3, 1), gamma=0.3)
        elif warmup:
            scheduler = schedule.ConstantLR(optimizer, factor=1.0)
        else:
            return optimizer
        if warmup:
            # A large batch's raised learning rate stalls Adam's first steps (the untrained network's gradients
            # are large and erratic); ramping it up linearly over the first steps avoids that.
            ramp = schedule.LinearLR(optimizer, start_factor=1 / warmup, total_iters=max(warmup - 1, 1))
            scheduler = schedule.SequentialLR(optimizer, [ramp, scheduler], milestones=[warmup])
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def export_metadata(self) -> dict[str, Any]:
        """What an exported model records about how it was made."""
        return {
            **run_record(self.hparams, int(self.global_step), self.style_sha256),
            "net": self.net.config,
            "lr": self.hparams.lr,
            "scheduler": self.hparams.scheduler,
            "warmup_steps": self.hparams.warmup_steps,
            "grad_clip_ratio": self.hparams.grad_clip_ratio,
            "adam_beta2": self.hparams.adam_beta2,
            "temporal_weight": self.hparams.temporal_weight,
        }
