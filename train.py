"""Train a feed-forward style transfer model.

python train.py style=starry_night data.root=/data/coco/train2014
python train.py experiment=smoke                      # seconds, offline, bundled photos
python train.py ... ckpt_path=outputs/.../checkpoints/last.ckpt   # resume
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from nst_ff.config import check_command_line, job_command, register_resolvers, style_path_overrides, validate
from nst_ff.errors import exit_on_user_error
from nst_ff.files import removed_if_unused
from nst_ff.paths import CONFIG_DIR
from nst_ff.schema import TrainConfig
from nst_ff.training import train

register_resolvers()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error(), removed_if_unused(HydraConfig.get().runtime.output_dir):
        train(validate(cfg, TrainConfig, open_nodes=("trainer",)), command=job_command("train.py"))


if __name__ == "__main__":
    sys.argv[1:] = style_path_overrides(sys.argv[1:])
    with exit_on_user_error():
        check_command_line(CONFIG_DIR, "train", sys.argv[1:])
    main()
