"""Train a feed-forward style transfer model.

python train.py style=starry_night data.root=/data/coco/train2014
python train.py experiment=smoke                      # seconds, offline, bundled photos
python train.py ... ckpt_path=outputs/.../checkpoints/last.ckpt   # resume
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint

from nst_ff.checkpoint import AtomicCheckpointIO
from nst_ff.config import register_resolvers, style_path_overrides
from nst_ff.device import keep_freed_memory
from nst_ff.errors import UserError, exit_on_user_error
from nst_ff.export import save_model

register_resolvers()
# The frozen VGG inside the loss is in eval mode on purpose.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")


def train(cfg: DictConfig) -> Path | None:
    """Fit the model described by ``cfg``; return the exported model file (None if not exported)."""
    if cfg.ckpt_path and not Path(cfg.ckpt_path).is_file():
        raise UserError(f"{cfg.ckpt_path}: no such checkpoint; pass ckpt_path=.../checkpoints/last.ckpt")
    pl.seed_everything(cfg.seed, workers=True)
    keep_freed_memory()  # 1.4x faster CPU steps here: no page faults re-mapping big feature maps
    out = Path(cfg.output_dir)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, _convert_="all")
    checkpoints = ModelCheckpoint(
        dirpath=out / "checkpoints",
        filename="step{step:07d}",
        auto_insert_metric_name=False,
        every_n_train_steps=cfg.checkpoint.every_n_steps,
        save_top_k=cfg.checkpoint.keep,
        monitor="step",
        mode="max",
        save_last=True,
    )
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    callbacks = [checkpoints] + ([LearningRateMonitor("step")] if logger else [])
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger, plugins=[AtomicCheckpointIO()])
    if logger:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    # weights_only: resuming never unpickles code from a checkpoint file.
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=True)
    # ModelCheckpoint saves every N steps only: the run's final step is saved too, whatever it is.
    trainer.save_checkpoint(out / "checkpoints" / "last.ckpt", weights_only=False)  # full: resumable
    if not (cfg.export and trainer.is_global_zero):
        return None
    path = out / "checkpoints" / f"{cfg.style.name}.safetensors"
    metadata = model.export_metadata()
    metadata["command"] = " ".join(["python train.py", *sys.argv[1:]])
    metadata["config"] = OmegaConf.to_container(cfg, resolve=True)
    save_model(path, model.net, metadata)
    print(f"exported {path}")
    return path


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        train(cfg)


if __name__ == "__main__":
    sys.argv[1:] = style_path_overrides(sys.argv[1:])
    main()
