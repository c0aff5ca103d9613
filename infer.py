"""Stylise photos with a trained model.

python infer.py model=starry_night input=photo.jpg output=photo_starry.jpg
python infer.py model=outputs/.../checkpoints/great_wave.safetensors input=photos/ output=styled/
python infer.py list=true
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from nst_ff.errors import exit_on_user_error
from nst_ff.infer import run


@hydra.main(version_base="1.3", config_path="conf/infer", config_name="infer")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        sys.exit(run(OmegaConf.to_container(cfg, resolve=True)))


if __name__ == "__main__":
    main()
