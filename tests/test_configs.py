"""Every config file composes and resolves, alone and inside every experiment."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from nst_ff.config import CONFIG_DIR
from nst_ff.data import PhotoDataModule
from nst_ff.module import StyleTransferModule

GROUPS = ["style", "data", "model", "loss", "trainer", "logger", "experiment"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def compose_train(overrides: list[str]) -> OmegaConf:
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["output_dir=/tmp/nst-ff-compose", "data.root=/photos", *overrides])
    OmegaConf.resolve(cfg)
    return cfg


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in GROUPS for o in options(g)])
def test_every_config_composes(group: str, option: str) -> None:
    cfg = compose_train([f"{group}={option}", "teacher=starry_night"])  # teacher: for model=fast
    assert cfg.trainer.precision in ("32-true", "bf16-mixed", "16-mixed")
    if cfg.model._target_ == "nst_ff.distill.DistillModule":
        assert cfg.model.teacher == "starry_night" and cfg.model.net.channels < 32
    else:
        assert cfg.model.loss == cfg.loss and cfg.model.style == cfg.style
    if group == "style":
        assert Path(cfg.style.image).is_file() and cfg.style.name == option


def test_groups_have_the_presets_the_docs_promise() -> None:
    assert {"johnson2016", "gatys2016"} <= set(options("loss"))
    assert {"cpu", "gpu", "ddp"} <= set(options("trainer"))
    assert {"johnson2016", "smoke", "small_data"} <= set(options("experiment"))
    assert len(options("style")) == 7
    johnson = compose_train(["loss=johnson2016"]).loss
    assert johnson.vgg == "vgg16" and list(johnson.content_layers) == ["relu2_2"]
    assert list(johnson.style_layers) == ["relu1_2", "relu2_2", "relu3_3", "relu4_3"]
    gatys = compose_train(["loss=gatys2016"]).loss
    assert gatys.vgg == "vgg19" and list(gatys.content_layers) == ["relu4_2"]
    assert list(gatys.style_layers) == ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]


def test_distill_experiment_builds_a_light_student_named_after_its_teacher() -> None:
    from hydra.utils import instantiate

    from nst_ff.distill import DistillModule

    cfg = compose_train(["experiment=distill", "teacher=great_wave"])
    assert cfg.style.name == "great_wave_fast"  # output folder and exported file name
    model = instantiate(cfg.model, _convert_="all")
    assert isinstance(model, DistillModule) and model.net.config == dict(cfg.model.net)
    assert model.teacher.config["channels"] == 32 and model.teacher_info["style"] == "great_wave"
    assert model.export_metadata()["style"] == "great_wave_fast"


def test_configs_instantiate_the_package_classes() -> None:
    from hydra.utils import instantiate

    cfg = compose_train(["experiment=smoke"])
    assert isinstance(instantiate(cfg.data), PhotoDataModule)
    model = instantiate(cfg.model, _convert_="all")
    assert isinstance(model, StyleTransferModule) and model.net.config["channels"] == 8


@pytest.mark.parametrize("loss", options("loss"))
def test_optimize_config_composes_with_every_loss_preset(loss: str) -> None:
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("optimize", overrides=[f"loss={loss}", "content=a.jpg", "output_dir=/tmp/x"])
    OmegaConf.resolve(cfg)
    assert cfg.loss == compose_train([f"loss={loss}"]).loss  # the training presets, unchanged
    assert cfg.optimizer == "lbfgs" and list(cfg.sizes) == [512] and Path(cfg.style.image).is_file()


def test_infer_config_composes() -> None:
    with initialize_config_dir(str(CONFIG_DIR / "infer"), version_base="1.3"):
        cfg = compose("infer", overrides=["model=starry_night", "input=photo.jpg"])
    assert cfg.model == "starry_night" and cfg.strength == 1.0 and cfg.precision == "auto"
