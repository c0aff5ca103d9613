"""Stylise photos with a trained model.

python infer.py model=starry_night input=photo.jpg output=photo_starry.jpg
python infer.py model=outputs/.../checkpoints/great_wave.safetensors input=photos/ output=styled/
python infer.py list=true
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from nst_ff.errors import UserError
from nst_ff.infer import run


@hydra.main(version_base="1.3", config_path="conf/infer", config_name="infer")
def main(cfg: DictConfig) -> None:
    try:
        status = run(OmegaConf.to_container(cfg, resolve=True))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        status = 2
    sys.exit(status)


if __name__ == "__main__":
    main()
