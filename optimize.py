"""Stylise one photo by optimising its pixels (Gatys et al. 2016), the quality baseline.

python optimize.py content=photo.jpg style=starry_night output=out.jpg
python optimize.py content=photo.jpg style=my_painting.jpg sizes=[256,512,1024] steps=200
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from nst_ff.config import register_resolvers, style_path_overrides
from nst_ff.errors import exit_on_user_error
from nst_ff.optimize import run

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="optimize")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        print(f"wrote {run(OmegaConf.to_container(cfg, resolve=True))}")


if __name__ == "__main__":
    sys.argv[1:] = style_path_overrides(sys.argv[1:])
    main()
