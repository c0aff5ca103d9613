"""The options of the five commands, typed: every key, its type, its allowed values and its range.

``nst_ff.config.validate`` checks a composed Hydra config against these dataclasses (types, allowed values,
unknown keys), then calls each one's ``validate`` (ranges, files), so that a mistake stops the command at the
start with one line naming the key, the value and what is allowed. Each dataclass mirrors a config group in
``conf/`` and the package code it configures.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from nst_ff.device import PRECISIONS
from nst_ff.errors import UserError
from nst_ff.execution import COMPILE_SETTINGS
from nst_ff.media import X264_PRESETS
from nst_ff.net import NORMS, UPSAMPLES
from nst_ff.stylize import max_size_error
from nst_ff.tiling import tiling_error
from nst_ff.weights import SOURCES, VGG_BLOCKS

SCHEDULERS = ("none", "cosine", "step")
OPTIMIZERS = ("lbfgs", "adam")
INITS = ("content", "noise", "style")
COMPILE_MODES = ("auto", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# Seeds go to numpy and torch generators, which take unsigned 32-bit values.
MAX_SEED = 2**32 - 1
# A host name's labels (RFC 1123): letters, digits and inner hyphens, dot-separated.
_HOST_NAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*")


class ConfigError(UserError, ValueError):
    """An option's value is wrong; the message names the key, the value and what is allowed."""


def _choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    # OmegaConf checks Enum fields and lists the allowed names in its error.
    return Enum(name, {value: value for value in values}, type=str)


Precision = _choices("Precision", PRECISIONS)
Norm = _choices("Norm", NORMS)
Upsample = _choices("Upsample", UPSAMPLES)
Scheduler = _choices("Scheduler", SCHEDULERS)
Vgg = _choices("Vgg", tuple(VGG_BLOCKS))
# "teacher": experiment=distill's default, the VGG weights its teacher was trained with (recorded in its file).
WeightsSource = _choices("WeightsSource", (*SOURCES, "teacher"))
Optimizer = _choices("Optimizer", OPTIMIZERS)
Init = _choices("Init", INITS)


def require(condition: bool, key: str, value: object, allowed: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: {allowed}" if value is None else f"{key}={value}: {allowed}")


def check_no_interpolation(key: str, value: str | None) -> None:
    """A training run's name, painting and photos: Hydra reads a '${' in them (escaped on the command line,
    ``x\\${y}.jpg``) as an interpolation again, in the run folder's name and in what it instantiates: a traceback
    after the run folder was made."""
    require(value is None or "${" not in value, key, value, "holds '${', which a training run cannot: rename it")


def check_compile(key: str, setting: object) -> None:
    require(setting in COMPILE_SETTINGS, key, setting, "choose true, false or auto")


def check_device(key: str, device: str) -> None:
    """auto, cpu, mps, cuda or cuda:N; whether it is present here is checked when it is used."""
    known = re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", device)
    require(bool(known), key, device, "choose auto, cpu, cuda, cuda:N or mps")


def check_max_size(max_size: int | None) -> None:
    if problem := max_size_error(max_size):
        raise ConfigError(problem)


def is_host(host: str) -> bool:
    """An IP address or a well-formed host name (whether it is this machine's is checked when serving)."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return len(host) <= 253 and bool(_HOST_NAME.fullmatch(host))


@dataclass
class StyleConfig:
    name: str = "starry_night"
    image: str | None = None  # None only where the style comes from elsewhere (distillation: the teacher's)

    def validate(self) -> None:
        file_name = self.name not in ("", ".", "..") and not set(self.name) & {"/", "\\"}
        require(file_name, "style.name", self.name, "must be a file name: it names the run folder and the model file")
        check_no_interpolation("style.name", self.name)
        exists = self.image is None or Path(self.image).is_file()
        require(exists, "style.image", self.image, "no such file; give the painting's image file")
        check_no_interpolation("style.image", self.image)


@dataclass
class WeightsConfig:
    source: WeightsSource = WeightsSource.torchvision  # type: ignore[attr-defined]
    path: str | None = None


@dataclass
class LossConfig:
    vgg: Vgg = Vgg.vgg16  # type: ignore[attr-defined]
    weights: WeightsConfig = field(default_factory=WeightsConfig)
    content_layers: dict[str, float] = field(default_factory=dict)
    style_layers: dict[str, float] = field(default_factory=dict)
    content_weight: float = 1e5
    style_weight: float = 1e10
    tv_weight: float = 1e5
    style_size: int | None = 512

    def validate(self) -> None:
        from nst_ff.perceptual import vgg_layer_names  # the VGG code: loaded only by commands with a loss

        names = vgg_layer_names(self.vgg.value)
        for key in ("content_layers", "style_layers"):
            layers = getattr(self, key)
            require(bool(layers), f"loss.{key}", None, "give at least one layer, e.g. {relu2_2: 1.0}")
            for name in layers:
                allowed = f"no such {self.vgg.value} layer; choose from {', '.join(names)}"
                require(name in names, f"loss.{key}", name, allowed)
        for key in ("content_weight", "style_weight", "tv_weight"):
            require(getattr(self, key) >= 0, f"loss.{key}", getattr(self, key), "must be 0 or more")
        require(self.style_size is None or self.style_size >= 16, "loss.style_size", self.style_size, "16 or more")


@dataclass
class DataConfig:
    _target_: str = "nst_ff.data.PhotoDataModule"
    root: str = ""
    image_size: int = 256
    crop_size: int | None = None
    batch_size: int = 4
    flip: bool = True
    num_workers: int | None = None
    verify: bool = True
    seed: int = 0
    pin_memory: bool | None = None
    val_root: str = ""
    val_image_size: int = 256
    val_count: int = 4

    def validate(self) -> None:
        # An empty folder (data.root=$PHOTOS with PHOTOS unset) was the current one, searched recursively.
        for key in ("root", "val_root"):
            require(getattr(self, key) != "", f"data.{key}", "", "empty; give a folder of photos")
            check_no_interpolation(f"data.{key}", getattr(self, key))
        require(self.image_size >= 16, "data.image_size", self.image_size, "must be 16 or more")
        require(self.batch_size >= 1, "data.batch_size", self.batch_size, "must be 1 or more")
        workers_ok = self.num_workers is None or self.num_workers >= 0
        require(workers_ok, "data.num_workers", self.num_workers, "0 or more, or null (the device decides)")
        require(self.val_image_size >= 16, "data.val_image_size", self.val_image_size, "must be 16 or more")
        require(self.val_count >= 1, "data.val_count", self.val_count, "must be 1 or more")


@dataclass
class NetConfig:
    channels: int = 32
    num_res_blocks: int = 5
    norm: Norm = Norm.instance  # type: ignore[attr-defined]
    upsample: Upsample = Upsample.nearest  # type: ignore[attr-defined]
    separable: bool = False
    end_kernel: int = 9

    def validate(self) -> None:
        require(self.channels >= 1, "model.net.channels", self.channels, "must be 1 or more")
        require(self.num_res_blocks >= 0, "model.net.num_res_blocks", self.num_res_blocks, "must be 0 or more")
        odd = self.end_kernel >= 1 and self.end_kernel % 2 == 1
        require(odd, "model.net.end_kernel", self.end_kernel, "an odd kernel size, e.g. 9 (the paper), 5 or 3")


@dataclass
class ModelConfig:
    _target_: str = "nst_ff.module.StyleTransferModule"
    net: NetConfig = field(default_factory=NetConfig)
    lr: float = 1e-3
    scheduler: Scheduler = Scheduler.none  # type: ignore[attr-defined]
    warmup_steps: int = 0
    grad_clip_ratio: float = 0.0
    adam_beta2: float = 0.999
    channels_last: bool | None = None
    compile: Any = "auto"
    compile_mode: str = "auto"
    init_from: str | None = None
    loss: LossConfig | None = None  # interpolated from the top level; a distilled student takes its teacher's
    style: StyleConfig | None = None
    # Distillation (conf/model/fast.yaml, nst_ff.distill): the trained model to reproduce, and the VGG terms.
    teacher: str | None = None
    perceptual_weight: float = 0.0
    style_loss_weight: float = 0.0
    temporal_weight: float = 0.0  # stable video (nst_ff.temporal)
    loss_weights: WeightsConfig | None = None  # the student's VGG weights: the run's loss.weights (or its teacher's)

    def validate(self) -> None:
        require(self.lr > 0, "model.lr", self.lr, "must be more than 0")
        require(self.warmup_steps >= 0, "model.warmup_steps", self.warmup_steps, "must be 0 or more")
        clip = self.grad_clip_ratio
        require(clip == 0 or clip > 1, "model.grad_clip_ratio", clip, "must be 0 (off) or more than 1, e.g. 2")
        beta2 = self.adam_beta2
        require(0 < beta2 < 1, "model.adam_beta2", beta2, "must be between 0 and 1, e.g. 0.999")
        check_compile("model.compile", self.compile)
        for key in ("perceptual_weight", "style_loss_weight", "temporal_weight"):
            require(getattr(self, key) >= 0, f"model.{key}", getattr(self, key), "must be 0 or more")
        require(self.compile_mode in COMPILE_MODES, "model.compile_mode", self.compile_mode, f"one of {COMPILE_MODES}")


# Lightning's mixed and float32 precisions (16 and bf16 are its names for the mixed ones), and auto.
TRAIN_PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "32", "bf16", "16", "auto")


@dataclass
class TrainerConfig:
    """The Lightning Trainer arguments the configs set. Others may be added (``+trainer.KEY=VALUE``): they are
    checked against the Trainer's signature by ``nst_ff.training``."""

    _target_: str = "pytorch_lightning.Trainer"
    accelerator: str = "cpu"
    devices: Any = 1
    strategy: Any = "auto"
    precision: str = "32-true"
    max_steps: int = 40000
    max_epochs: int = -1
    val_check_interval: Any = 250
    check_val_every_n_epoch: int | None = None
    num_sanity_val_steps: int = 0
    log_every_n_steps: int = 10
    enable_progress_bar: bool = True
    use_distributed_sampler: bool = False

    def validate(self) -> None:
        require(self.max_steps >= 1, "trainer.max_steps", self.max_steps, "must be 1 or more")
        require(self.log_every_n_steps >= 1, "trainer.log_every_n_steps", self.log_every_n_steps, "must be 1 or more")
        # Lightning takes these and fails later: 0 steps between validations divides by zero at the first step,
        # and max_epochs=0 stops before any step, so an untrained network would be exported.
        interval = self.val_check_interval
        require(
            not isinstance(interval, int) or interval >= 1,
            "trainer.val_check_interval",
            interval,
            "must be 1 or more steps",
        )
        # The "-true" precisions and 64 cast the network's weights but not the float32 photos: a traceback at step 1.
        require(
            str(self.precision) in TRAIN_PRECISIONS,
            "trainer.precision",
            self.precision,
            f"one of {', '.join(TRAIN_PRECISIONS)} (auto: bf16-mixed where the hardware is fast at it, else 32-true)",
        )
        allowed = "-1 (count steps only) or 1 or more"
        require(self.max_epochs == -1 or self.max_epochs >= 1, "trainer.max_epochs", self.max_epochs, allowed)
        allowed = "-1 (all) or 0 or more"
        require(self.num_sanity_val_steps >= -1, "trainer.num_sanity_val_steps", self.num_sanity_val_steps, allowed)


@dataclass
class LoggerConfig:
    _target_: str = "pytorch_lightning.loggers.TensorBoardLogger"
    save_dir: str = "."
    name: str = "tensorboard"
    version: str = ""
    default_hp_metric: bool = False


@dataclass
class CheckpointConfig:
    every_n_steps: int = 500
    keep: int = 3

    def validate(self) -> None:
        require(self.every_n_steps >= 1, "checkpoint.every_n_steps", self.every_n_steps, "must be 1 or more")
        require(self.keep >= -1, "checkpoint.keep", self.keep, "-1 (all) or 0 or more")


def check_weights_source(loss: LossConfig) -> None:
    source = loss.weights.source.value
    allowed = f"only experiment=distill has a teacher to take VGG weights from; choose one of {', '.join(SOURCES)}"
    require(source != "teacher", "loss.weights.source", source, allowed)


def check_seed(seed: int) -> None:
    require(0 <= seed <= MAX_SEED, "seed", seed, f"must be between 0 and {MAX_SEED}")


@dataclass
class TrainConfig:
    style: StyleConfig = field(default_factory=StyleConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig | None = field(default_factory=LoggerConfig)
    seed: int = 0
    ckpt_path: str | None = None
    output_dir: str = "."
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    export: bool = True
    teacher: str | None = None  # experiment=distill: the trained model a light student learns to reproduce

    def validate(self) -> None:
        check_seed(self.seed)
        # An empty path (ckpt_path=$RUN with RUN unset) is not null: Lightning took it for a path and failed at the fit.
        allowed = "empty; give the checkpoint to resume (.../checkpoints/last.ckpt), or leave it out for a new run"
        require(self.ckpt_path != "", "ckpt_path", self.ckpt_path, allowed)
        if self.model._target_ == "nst_ff.distill.DistillModule":
            allowed = "required by experiment=distill: a shipped model's name or a model file"
            require(self.teacher is not None, "teacher", None, allowed)
        else:
            allowed = "required: the painting's image file (or a style= name)"
            require(self.style.image is not None, "style.image", None, allowed)
            # Before: ignored, and a style network trained as if it had not been given.
            allowed = (
                "only experiment=distill has a teacher (a light model learns to reproduce it); add it, or drop teacher"
            )
            require(self.teacher is None, "teacher", self.teacher, allowed)
            check_weights_source(self.loss)
        crop = self.data.crop_size
        allowed = f"must be between 16 and data.image_size={self.data.image_size}"
        require(crop is None or 16 <= crop <= self.data.image_size, "data.crop_size", crop, allowed)
        # A shortened trial of a recipe with a warm-up (experiment=gpu_fast: 100 steps) would never reach its rate.
        warmup, steps = self.model.warmup_steps, self.trainer.max_steps
        allowed = f"must be less than trainer.max_steps={steps}, or the run never reaches model.lr"
        require(warmup < steps, "model.warmup_steps", warmup, allowed)


@dataclass
class VideoConfig:
    """How infer writes videos (``nst_ff.video.stylize_video``)."""

    batch_size: int = 4
    crf: int | None = None
    preset: str = "medium"
    speed: int = 4
    audio: bool = True

    def validate(self) -> None:
        require(self.batch_size >= 1, "video.batch_size", self.batch_size, "must be 1 or more frames")
        allowed = "0 (lossless) to 51 (H.264) or 63 (VP9); lower is better and larger; null: the default"
        require(self.crf is None or 0 <= self.crf <= 63, "video.crf", self.crf, allowed)
        require(self.preset in X264_PRESETS, "video.preset", self.preset, f"one of {', '.join(X264_PRESETS)}")
        require(0 <= self.speed <= 8, "video.speed", self.speed, "0 (slowest, smallest) to 8")


@dataclass
class InferConfig:
    model: str | None = None
    input: Any = None
    output: str | None = None
    overwrite: bool = False
    strength: float = 1.0
    preserve_color: bool = False
    max_size: int | None = None
    device: str = "auto"
    precision: Precision = Precision.auto  # type: ignore[attr-defined]
    compile: Any = "auto"
    tile_above: Any = "auto"
    tile_size: int = 1024
    tile_overlap: int = 64
    list: bool = False
    video: VideoConfig = field(default_factory=VideoConfig)

    def validate(self) -> None:
        if self.list:
            return
        require(bool(self.model), "model", self.model, "required: a shipped model's name or a model file")
        require(self.input not in (None, "", []), "input", self.input, "required: an image file, a folder or a list")
        require(0 <= self.strength <= 1, "strength", self.strength, "must be between 0 and 1")
        check_max_size(self.max_size)
        check_device("device", self.device)
        check_compile("compile", self.compile)
        problem = tiling_error(self.tile_above, self.tile_size, self.tile_overlap)
        if problem:
            raise ConfigError(problem)


@dataclass
class OptimizeConfig:
    content: str | None = None
    output: str | None = None
    overwrite: bool = False
    optimizer: Optimizer = Optimizer.lbfgs  # type: ignore[attr-defined]
    lr: float | None = None
    steps: int = 200
    sizes: list[int] = field(default_factory=lambda: [512])
    init: Init = Init.content  # type: ignore[attr-defined]
    seed: int = 0
    preserve_color: bool = False
    device: str = "auto"
    log_every: int = 10
    image_every: int = 50
    save_every: int = 0
    output_dir: str = "."
    style: StyleConfig = field(default_factory=StyleConfig)
    loss: LossConfig = field(default_factory=LossConfig)

    def validate(self) -> None:
        require(bool(self.content), "content", self.content, "required: the photo to stylise")
        require(self.lr is None or self.lr > 0, "lr", self.lr, "must be more than 0, or null for the default")
        require(self.steps >= 1, "steps", self.steps, "must be 1 or more")
        require(bool(self.sizes), "sizes", self.sizes, "give at least one long-side size, e.g. sizes=[512]")
        require(all(size >= 16 for size in self.sizes), "sizes", self.sizes, "every size must be 16 or more")
        check_seed(self.seed)
        check_weights_source(self.loss)
        check_device("device", self.device)
        for key in ("log_every", "image_every", "save_every"):
            require(getattr(self, key) >= 0, key, getattr(self, key), "must be 0 (off) or more")


@dataclass
class ExportConfig:
    model: str = MISSING
    output: str | None = None
    opset: int = 18
    overwrite: bool = False

    def validate(self) -> None:
        from nst_ff.onnx import check_opset  # ONNX's limits live beside the exporter

        check_opset(self.opset)


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 7860
    device: str = "auto"
    precision: Precision = Precision.auto  # type: ignore[attr-defined]
    max_size: int | None = None

    def validate(self) -> None:
        allowed = "give an IP address or a host name: 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)"
        require(is_host(self.host), "host", self.host, allowed)
        require(1 <= self.port <= 65535, "port", self.port, "must be between 1 and 65535")
        check_device("device", self.device)
        check_max_size(self.max_size)
