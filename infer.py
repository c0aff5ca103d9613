"""Stylise photos with a trained model.

python infer.py model=starry_night input=photo.jpg output=photo_starry.jpg
python infer.py model=outputs/.../checkpoints/great_wave.safetensors input=photos/ output=styled/
python infer.py list=true
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from nst_ff.config import check_command_line, validate
from nst_ff.errors import exit_on_user_error
from nst_ff.infer import run
from nst_ff.paths import CONFIG_DIR
from nst_ff.schema import InferConfig

INFER_CONFIG_DIR = CONFIG_DIR / "infer"


@hydra.main(version_base="1.3", config_path=str(INFER_CONFIG_DIR), config_name="infer")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        sys.exit(run(validate(cfg, InferConfig)))


if __name__ == "__main__":
    with exit_on_user_error():
        check_command_line(INFER_CONFIG_DIR, "infer", sys.argv[1:])
    main()
