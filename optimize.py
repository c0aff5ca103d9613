"""Stylise one photo by optimising its pixels (Gatys et al. 2016), the quality baseline.

python optimize.py content=photo.jpg style=starry_night output=out.jpg
python optimize.py content=photo.jpg style=my_painting.jpg sizes=[256,512,1024] steps=200
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from nst_ff.config import check_command_line, register_resolvers, style_path_overrides, validate
from nst_ff.errors import exit_on_user_error
from nst_ff.files import removed_if_unused
from nst_ff.optimize import run
from nst_ff.paths import CONFIG_DIR
from nst_ff.schema import OptimizeConfig

register_resolvers()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="optimize")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error(), removed_if_unused(HydraConfig.get().runtime.output_dir):
        print(f"wrote {run(validate(cfg, OptimizeConfig))}")


if __name__ == "__main__":
    sys.argv[1:] = style_path_overrides(sys.argv[1:])
    with exit_on_user_error():
        check_command_line(CONFIG_DIR, "optimize", sys.argv[1:])
    main()
