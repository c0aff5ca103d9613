"""The train.py command: build the data, model, trainer and logger of a validated config, fit, export."""

from __future__ import annotations

import inspect
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from pytorch_lightning.callbacks import LearningRateMonitor
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from nst_ff.checkpoint import AtomicCheckpointIO, FinalCheckpoint, StepCheckpoint, StopAtStepEnd
from nst_ff.device import auto_precision, keep_freed_memory
from nst_ff.errors import UserError, exit_stopped
from nst_ff.export import save_model
from nst_ff.files import file_sha256
from nst_ff.net import TransformerNet
from nst_ff.progress import StepProgressBar
from nst_ff.schema import ConfigError, require


class _DropAdvertising(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in record.getMessage()


def quiet_lightning() -> None:
    """Keep Lightning's output to what concerns this run: no product tips, no warnings about things that are
    on purpose here (the frozen VGG in eval mode, the summary's size estimate under bf16, trainer=ddp's
    ``broadcast_buffers=False``, which torch 2.14 deprecates but torch before it needs, a resume's new run
    folder) or inside Lightning."""
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_DropAdvertising())
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    warnings.filterwarnings("ignore", message=r".*is not supported by the model summary")
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated")
    warnings.filterwarnings("ignore", message=r"`broadcast_buffers` is deprecated")
    # A resumed run writes into a new folder, so Lightning says that its checkpoint callback's records of the old
    # folder's files are not reloaded: they list those files only, and nothing of the run is lost.
    warnings.filterwarnings("ignore", message=r"The dirpath has changed from")
    # A resume into its own folder (the only run let into a folder with checkpoints, cli._keep_earlier_run).
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    # Logging counts steps across epochs, so a folder of a few photos (one batch an epoch) still logs every N steps.
    warnings.filterwarnings("ignore", message=r"The number of training batches .* is smaller than the logging interval")


def check_trainer_options(trainer: dict[str, Any]) -> None:
    """Any Lightning Trainer argument may be set (``+trainer.KEY=VALUE``); a misspelt one stops the run here."""
    accepted = set(inspect.signature(pl.Trainer.__init__).parameters) | {"_target_"}
    unknown = sorted(set(trainer) - accepted)
    if unknown:
        raise ConfigError(f"trainer.{unknown[0]}: no such Lightning Trainer argument; see the Trainer's documentation")
    # Lightning takes 0 and divides by it at the first step.
    accumulate = trainer.get("accumulate_grad_batches", 1)
    require(
        isinstance(accumulate, int) and accumulate >= 1,
        "trainer.accumulate_grad_batches",
        accumulate,
        "must be 1 or more",
    )


def build_trainer(options: dict[str, Any], **objects: Any) -> pl.Trainer:
    """The Lightning Trainer of ``trainer`` options; what Lightning refuses in them (a GPU asked for where there is
    none, more devices than the machine has, an unknown precision or strategy, a missing accelerator package) is
    one line naming the fix, not a traceback."""
    if options.get("precision") == "auto":  # README's name for the default, which conf/trainer/ resolves
        options = {**options, "precision": auto_precision(options.get("accelerator", "auto"))}
    try:
        return instantiate(options, **objects)
    except InstantiationException as error:
        refusal = error.__cause__
        if not isinstance(refusal, MisconfigurationException | ValueError | ImportError | TypeError):
            raise
        reason = " ".join(str(refusal).split()).rstrip(".")
        # The devices asked for are not all here (other refusals, e.g. of val_check_interval, are not about them).
        about_devices = any(word in reason.lower() for word in ("device", "gpu", "accelerator", "backend", "cuda"))
        if isinstance(refusal, MisconfigurationException) and about_devices:
            raise ConfigError(
                f"trainer: {reason} (accelerator={options.get('accelerator')}, devices={options.get('devices')}); "
                "trainer=auto trains on a GPU when there is one, trainer=cpu on the CPU"
            ) from None
        raise ConfigError(f"trainer: {reason}; see conf/trainer/ and the Lightning Trainer's documentation") from None


# Lightning restores a checkpoint's optimizer and scheduler states over the ones this run's options built.
OPTIMIZER_KEPT = ", and a resumed run keeps its optimizer and schedule"


def check_resume(path: Path, model: pl.LightningModule, max_steps: int) -> int:
    """``ckpt_path`` continues the run it was written by: the same network, style and teacher, for more steps, with
    its optimizer and schedule. A changed loss weight, batch size or gradient clip is the user's choice; another
    network cannot load the weights (a traceback), another style or teacher (or a painting's file whose content
    changed) would export a model of two paintings under the new one's name, ``max_steps`` at or below the
    checkpoint's step would train nothing, and a changed learning rate, Adam beta2 or schedule would be silently
    replaced by the checkpoint's (Lightning restores the optimizer and scheduler states), as would a cosine or step
    schedule's length: extended, a cosine schedule climbs back from 0 to the full rate. Returns the checkpoint's
    step."""
    try:
        # Memory-mapped: only the small records are read here; Lightning reads the tensors when it resumes.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        saved, step = checkpoint["hyper_parameters"], int(checkpoint["global_step"])
        schedule_steps = checkpoint.get("max_steps")  # None: written before checkpoints recorded it
        saved_net = TransformerNet(**saved["net"]).config
    except Exception:  # any failure: not a checkpoint this command wrote
        raise UserError(
            f"{path}: not a train.py checkpoint; pass ckpt_path=.../checkpoints/last.ckpt to resume a run, or "
            "model.init_from=FILE to start a new one from an exported model's weights"
        ) from None
    fix = f"resume with the options it was trained with, or start a new run from its weights (model.init_from={path})"
    changed = [
        f"model.net.{key}={value} (this run: {model.net.config[key]})"
        for key, value in saved_net.items()
        if model.net.config.get(key) != value
    ]
    if changed:
        raise ConfigError(f"ckpt_path: {path} was trained with {', '.join(changed)}; {fix}")
    # Options newer than a checkpoint take the value they had before they existed: the constructor's default.
    parameters = inspect.signature(type(model).__init__).parameters.values()
    defaults = {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}
    for key in ("style", "teacher", "lr", "adam_beta2", "scheduler", "warmup_steps"):
        before, now = saved.get(key, defaults.get(key)), model.hparams.get(key)
        if isinstance(before, dict) and isinstance(now, dict):  # a style: its name (the painting's path may move)
            before, now = before.get("name"), now.get("name")
        if before != now:
            option, kept = (key, "") if key in ("style", "teacher") else (f"model.{key}", OPTIMIZER_KEPT)
            raise ConfigError(f"ckpt_path: {path} was trained with {option}={before} (this run: {now}){kept}; {fix}")
    painting = (model.hparams.get("style") or {}).get("image")  # None when distilling: the teacher has it
    if painting and checkpoint.get("style_sha256") not in (None, file_sha256(painting)):
        raise ConfigError(
            f"style.image={painting}: not the painting {path} was trained with (the file's content differs); {fix}"
        )
    scheduler = model.hparams.get("scheduler")
    if scheduler in ("cosine", "step") and schedule_steps is not None and step >= schedule_steps:
        raise ConfigError(  # before: "set trainer.max_steps above", which the next check then refused
            f"ckpt_path: {path} has finished its {scheduler} schedule ({schedule_steps} steps); train further as a "
            f"new run from its weights (model.init_from={path})"
        )
    if max_steps <= step:
        raise ConfigError(
            f"trainer.max_steps={max_steps}: {path} is at step {step} already; set trainer.max_steps above {step} "
            "to train further (infer.py model=<checkpoint> uses it as it is)"
        )
    if scheduler in ("cosine", "step") and schedule_steps is not None and max_steps != schedule_steps:
        raise ConfigError(
            f"trainer.max_steps={max_steps}: {path} has a {scheduler} schedule over {schedule_steps} steps, which a "
            f"resume keeps; resume with trainer.max_steps={schedule_steps}, or train further as a new run from its "
            f"weights (model.init_from={path})"
        )
    return step


def train(cfg: dict[str, Any], command: str = "python train.py") -> Path | None:
    """Fit the model described by ``cfg`` (validated by ``nst_ff.config.validate``); return the exported model
    file (None if not exported). ``command`` is recorded in the model's metadata."""
    if cfg["ckpt_path"] and not Path(cfg["ckpt_path"]).is_file():
        raise UserError(f"{cfg['ckpt_path']}: no such checkpoint; pass ckpt_path=.../checkpoints/last.ckpt")
    check_trainer_options(cfg["trainer"])
    quiet_lightning()
    pl.seed_everything(cfg["seed"], workers=True, verbose=False)
    keep_freed_memory()  # 1.4x faster CPU steps on a 2-core EPYC: no page faults re-mapping big feature maps
    out = Path(cfg["output_dir"])
    datamodule = instantiate(cfg["data"])
    model = instantiate(cfg["model"], _convert_="all")
    resumed_step = check_resume(Path(cfg["ckpt_path"]), model, cfg["trainer"]["max_steps"]) if cfg["ckpt_path"] else 0
    # Everything that can fail on the user's input (photos, painting, VGG weights) fails here, before any output.
    datamodule.setup("fit")
    model.build_loss()
    checkpoints = StepCheckpoint(
        dirpath=out / "checkpoints",
        filename="step{step:07d}",
        auto_insert_metric_name=False,
        every_n_train_steps=cfg["checkpoint"]["every_n_steps"],
        save_top_k=cfg["checkpoint"]["keep"],
        monitor="step",
        mode="max",
        save_last=True,
        # Saves on the step, whatever the epoch. Otherwise Lightning (2.6) defers a save that falls on an epoch's
        # last batch to the next validation, up to val_check_interval steps later: with a few photos (one batch
        # an epoch) no step checkpoint was written at all, and a killed run lost everything.
        save_on_train_epoch_end=True,
        # last.ckpt is written by FinalCheckpoint and by this callback's periodic saves: replaced, not kept beside
        # another as last-v1.ckpt (one more per resume).
        enable_version_counter=False,
    )
    # A resume's curves go on from its step: what a killed run logged after its last checkpoint is hidden
    # (TensorBoard's purge_step), not drawn twice.
    purge = {"purge_step": resumed_step} if resumed_step else {}
    logger = instantiate(cfg["logger"], **purge) if cfg.get("logger") else False
    stop = StopAtStepEnd()
    last = out / "checkpoints" / "last.ckpt"
    callbacks = [checkpoints, stop, FinalCheckpoint(last, stop)] + ([LearningRateMonitor("step")] if logger else [])
    if cfg["trainer"].get("enable_progress_bar", True):
        callbacks.append(StepProgressBar())
    trainer = build_trainer(cfg["trainer"], callbacks=callbacks, logger=logger, plugins=[AtomicCheckpointIO()])
    datamodule.require_batches(processes=trainer.world_size)
    if logger:
        logger.log_hyperparams(cfg, metrics={} if resumed_step else None)  # hp_metric's -1 at step 0: new runs only
    stop.arm(trainer)
    try:
        # weights_only: resuming never unpickles code from a checkpoint file.
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg["ckpt_path"], weights_only=True)
    # A second signal's KeyboardInterrupt ends the fit as Lightning's exit(1), or, when it cuts a checkpoint's write
    # short (the old file stays: AtomicCheckpointIO), as torch.save's error about the half-written file.
    except BaseException:
        if stop.forced is None:
            raise
        # The newest whole checkpoint: the signal may have come between a step's checkpoint and last.ckpt's copy.
        saved = max(last.parent.glob("*.ckpt"), key=lambda path: path.stat().st_mtime, default=None)
        kept = f"resume with the same options and ckpt_path={saved}" if saved else "no checkpoint yet"
        signal_name = stop.forced.name
        when = f"at once ({signal_name} again)" if stop.requested else f"before the first step ({signal_name})"
        print(f"stopped {when}, not exported; {kept}", file=sys.stderr)
        sys.exit(128 + stop.forced)
    finally:
        stop.restore()
    # A stop asked for while the last step's checkpoint was written came after the whole run: it is exported.
    if stop.requested and trainer.global_step < cfg["trainer"]["max_steps"]:
        print(
            f"stopped at step {trainer.global_step} ({stop.requested.name}), not exported; resume with the same "
            f"options and ckpt_path={last}",
            file=sys.stderr,
        )
        sys.exit(128 + stop.requested)  # the shells' status for a command a signal stopped (Ctrl-C: 130)
    if not (cfg["export"] and trainer.is_global_zero):
        return None
    path = out / "checkpoints" / f"{cfg['style']['name']}.safetensors"
    if not all(torch.isfinite(weight).all() for weight in model.net.state_dict().values()):
        # Checked once here, not at every step (a host sync on a GPU): a diverged run's NaN model is no model.
        raise UserError(
            f"the run diverged: its network's weights are not finite (NaN or inf), so no model was exported (see the "
            f"loss in {out / 'tensorboard'}); lower model.lr, set model.grad_clip_ratio=2, or model.compile=false"
        )
    metadata = model.export_metadata()
    metadata["command"] = command
    metadata["config"] = cfg
    try:
        save_model(path, model.net, metadata)
    except KeyboardInterrupt as stop:  # before: "nothing written: it stopped before training began"
        exit_stopped(f"the run finished but was not exported; {last} has it (infer.py model={last})", stop)
    print(f"exported {path}")
    return path
