"""The five commands: nst-train, nst-infer, nst-optimize, nst-export and nst-serve once installed (pyproject.toml's
[project.scripts]); ``python train.py``, ``infer.py`` and ``optimize.py`` in a checkout call the same functions.

Each takes Hydra's key=value options and checks all of them before it starts (a mistake is one line and exit 2),
then calls its package function with plain values. The configs are found by absolute path (``CONFIG_DIR``: the
checkout's conf/ or the installed package's copy); run folders (train, optimize) are made in the current folder.
Each command imports its package module when it runs, so that e.g. nst-infer does not load Lightning.
"""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any


def _stopped_while_loading(signum: int, frame: FrameType | None) -> None:
    print("stopped (Ctrl-C); nothing done yet", file=sys.stderr)
    os._exit(128 + signum)


# A Ctrl-C while torch, Hydra and the rest load (a second or two at each command's start) was a traceback through
# their import machinery; nothing is done yet then, so the command just ends. Python's usual handler is back after
# (one set otherwise, e.g. a shell's SIG_IGN for a background job, is left alone).
_LOADING = (
    threading.current_thread() is threading.main_thread()
    and signal.getsignal(signal.SIGINT) is signal.default_int_handler
)
if _LOADING:
    signal.signal(signal.SIGINT, _stopped_while_loading)

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from nst_ff.config import (  # noqa: E402
    check_command_line,
    job_command,
    literal_values,
    register_resolvers,
    run_folder,
    style_path_overrides,
    task_overrides,
    validate,
)
from nst_ff.errors import UserError, as_typed_here, exit_on_ctrl_c, exit_on_user_error  # noqa: E402
from nst_ff.files import new_run_folder, removed_if_unused  # noqa: E402
from nst_ff.paths import CONFIG_DIR  # noqa: E402
from nst_ff.schema import ExportConfig, InferConfig, OptimizeConfig, ServeConfig, TrainConfig  # noqa: E402

if _LOADING:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# What a Ctrl-C while a command reads its options has stopped; the commands' own work says more.
NOTHING_DONE = "nothing done yet"

# Hydra's flags that print something and exit: its help, --info about the config search and composition, and
# the shell completion scripts.
HYDRA_INFO_FLAGS = ("--hydra-help", "--info", "-i", "--shell-completion", "-sc")


def _hydra_information() -> None:
    """Hydra's information flags go to Hydra as they are, nothing of the command's to check; ``--hydra-help`` alone,
    since Hydra applied the other options to its own config, where they are unknown (a traceback)."""
    arguments = sys.argv[1:]
    if "--hydra-help" in arguments:
        sys.argv[1:] = ["--hydra-help"]
    elif {"-sc", "--shell-completion"} & set(arguments) and not any(
        argument.split("=")[0] in ("install", "uninstall", "query") for argument in arguments
    ):
        with exit_on_user_error():
            raise UserError(f"{' '.join(arguments)}: add install=bash (or zsh, fish), uninstall=bash or query=...")


def _help(config_dir: Path, config_name: str, summary: str) -> bool:
    """``-h``/``--help``: print the command's options and return True. The config files are printed as they are,
    since their comments document each option (Hydra's own help prints the composed config without them, and for
    train.py lists the other commands' folders as groups): the command's file, then for each group it composes
    the choices and the chosen file. Hydra's settings (``hydra:``) are left out; ``--hydra-help`` shows its flags."""
    if not any(argument in ("-h", "--help") for argument in sys.argv[1:]):
        return False
    config_file = config_dir / f"{config_name}.yaml"
    program = Path(sys.argv[0]).name
    lines = [f"{program}: {summary}; options are key=value", "", f"{config_file}:", ""]
    lines.append(config_file.read_text().split("\nhydra:")[0].rstrip())
    defaults = OmegaConf.to_container(OmegaConf.load(config_file)).get("defaults", [])
    for group, chosen in (item for entry in defaults if isinstance(entry, dict) for item in entry.items()):
        if group.startswith("override "):
            continue
        choices = ", ".join(sorted(path.stem for path in (config_dir / group).glob("*.yaml")))
        if chosen is None:
            lines += ["", f"{group}=: none by default; one of {choices}"]
            continue
        lines += ["", f"{group}={chosen} (one of {choices}); its options are {group}.KEY=VALUE:"]
        for path in _option_files(config_dir / group, chosen):
            lines += ["", f"    {group}/{path.name}:", textwrap.indent(path.read_text().rstrip(), "    ")]
    lines += ["", "--cfg job [key=value ...]: the whole config these options compose; --hydra-help: Hydra's flags"]
    text = "\n".join(lines)
    try:
        print(as_typed_here(text), flush=True)  # the config files' examples and comments name the checkout's scripts
    except BrokenPipeError:  # read through a pipe that closed early (--help | head): nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's own flush at exit would fail too
    return True


def _option_files(group_dir: Path, option: str) -> list[Path]:
    """A group option's file after the ones of its group that its own defaults list builds on (trainer/auto.yaml
    names trainer/cpu.yaml, which holds max_steps and the rest): help printed only the option's own file."""
    path = group_dir / f"{option}.yaml"
    defaults = OmegaConf.to_container(OmegaConf.load(path)).get("defaults", [])
    bases = [entry for entry in defaults if isinstance(entry, str) and entry != "_self_"]
    return [base for entry in bases for base in _option_files(group_dir, entry)] + [path]


def _check_command_line(
    config_dir: Path,
    config_name: str,
    style_paths: bool = False,
    settings: Callable[[DictConfig], dict[str, Any]] | None = None,
) -> DictConfig | None:
    """Compose the config before Hydra does, so that its errors are one line (see ``check_command_line``);
    ``style_paths``: ``style=`` may name a painting's file (``style_path_overrides``). A value Hydra's grammar cannot
    read is taken as a string (``literal_values``: file names like ``IMG (1).jpg``, ``~/photos``). ``settings``: the
    job's validation, run here on each job (with a stand-in for the run folder Hydra makes later)."""
    register_resolvers()
    if any(argument in HYDRA_INFO_FLAGS for argument in sys.argv[1:]):
        return _hydra_information()
    check_job = None if settings is None else lambda cfg: settings(OmegaConf.merge(cfg, {"output_dir": "."}))
    with exit_on_user_error():
        if style_paths:
            sys.argv[1:] = style_path_overrides(sys.argv[1:])
        sys.argv[1:] = literal_values(sys.argv[1:])
        return check_command_line(config_dir, config_name, sys.argv[1:], check_job)


def _refuse_loss_options_of_distillation(cfg: DictConfig | None) -> None:
    """experiment=distill learns its teacher's loss, recorded in the teacher's file: a loss option other than
    loss.weights (where the VGG weights come from) would be ignored without a word."""
    if cfg is None or cfg.model._target_ != "nst_ff.distill.DistillModule":
        return
    for argument in task_overrides(sys.argv[1:]):
        key = argument.split("=", 1)[0].lstrip("+~")
        if key == "loss" or (key.startswith("loss.") and not key.startswith("loss.weights")):
            raise UserError(
                f"{argument}: experiment=distill learns its teacher's loss, recorded in the teacher's file; of the "
                "loss options only loss.weights (where the VGG weights come from) applies"
            )


def _refuse_output_dir() -> None:
    """``output_dir`` is the run folder Hydra made: given on the command line, the run wrote its checkpoints and model
    there (over an earlier run's, unchecked) and its log and recorded config into the run folder Hydra made."""
    for argument in task_overrides(sys.argv[1:]):
        if argument.split("=", 1)[0].lstrip("+~") == "output_dir":
            raise UserError(
                f"{argument}: the run folder, which Hydra sets; choose it with hydra.run.dir=DIR (a sweep's with "
                "hydra.sweep.dir=DIR)"
            )


def _values(arguments: list[str], key: str) -> list[str]:
    """The values the command line gives ``key`` (``key=value``), in order, without quotes."""
    return [a.split("=", 1)[1].strip("'\"") for a in arguments if a.startswith(f"{key}=")]


def _own_run_folder(config_name: str) -> None:
    """Make this run's folder now, one no other run uses, and give it to Hydra. Hydra names it by the second
    (``outputs/<style>/<date_time>``), so two runs started in the same second (one per GPU, a loop with ``&``)
    shared one folder: one's checkpoints, model and recorded config over the other's. ``mkdir`` is atomic:
    of two runs, one gets the name and the other ``<name>_2`` (``new_run_folder``). A folder the user chose
    (``hydra.run.dir=``) is theirs to share; it is only made here, where one that cannot be is one line."""
    arguments = sys.argv[1:]
    given = _values(arguments, "hydra.run.dir")
    if any(a.startswith("-") for a in arguments):
        return  # a sweep (its own folders), --cfg, --help...
    with exit_on_user_error():
        if given:  # Hydra's own mkdir raised a traceback for a file there, or a folder that cannot be made
            folder = Path(given[-1]).expanduser()
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                reason = "a file is there" if folder.is_file() else error.strerror
                raise UserError(
                    f"hydra.run.dir={given[-1]}: cannot make the run folder ({reason}); give a folder you can write to"
                ) from None
            return
        folder = new_run_folder(run_folder(CONFIG_DIR, config_name, arguments))
    sys.argv += literal_values([f"hydra.run.dir={folder}"])


def _keep_earlier_run() -> None:
    """A folder given with hydra.run.dir that holds an earlier training run's checkpoints is for resuming that run: a
    new run there, or the resume of another run, put its checkpoints among the earlier run's and wrote its model and
    recorded config over them."""
    arguments = sys.argv[1:]
    given = _values(arguments, "hydra.run.dir")
    resumed = [value for value in _values(arguments, "ckpt_path") if value != "null"]
    if not given or any(a.startswith("-") for a in arguments):
        return
    checkpoints = Path(given[-1]).expanduser() / "checkpoints"
    if not any(checkpoints.glob("*.ckpt")):
        return
    if resumed and Path(resumed[-1]).expanduser().resolve().parent == checkpoints.resolve():
        return  # the run resumed in its own folder
    with exit_on_user_error():
        raise UserError(
            f"hydra.run.dir={given[-1]}: holds an earlier run ({checkpoints}); resume that run with "
            f"ckpt_path={checkpoints / 'last.ckpt'}, or give another folder (or none: each run gets its own)"
        )


def _launch(config_dir: Path, config_name: str, job: Callable[[DictConfig], None]) -> None:
    """Run a command that makes no run folder (infer, export, serve) on the config composed for checking:
    through Hydra's start-up, which composes it again, nst-infer took 0.68 s more than importing torch for a
    1024 px photo, 0.12 s of it the second composition. Hydra's own flags (--help, --cfg, -m) go to Hydra."""
    cfg = _check_command_line(config_dir, config_name)
    if cfg is None or any(argument.startswith("-") for argument in sys.argv[1:]):
        hydra.main(version_base="1.3", config_path=str(config_dir), config_name=config_name)(job)()
    else:
        job(cfg)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def _train(cfg: DictConfig) -> None:
    from nst_ff.training import train as fit

    # Ctrl-C while the run starts (photos, painting, VGG): after it, training stops at a step's end (StopAtStepEnd).
    stopped = "nothing written: it stopped before training began"
    with exit_on_user_error(), exit_on_ctrl_c(stopped), removed_if_unused(HydraConfig.get().runtime.output_dir):
        fit(_train_settings(cfg), command=job_command())


def _train_settings(cfg: DictConfig) -> dict[str, Any]:
    return validate(cfg, TrainConfig, open_nodes=("trainer",))


def train() -> None:
    """Train a style's network (conf/train.yaml); the run folder is outputs/<style>/<time> in the current folder."""
    if _help(CONFIG_DIR, "train", "train a style's network; the run folder is outputs/<style>/<time> here"):
        return
    with exit_on_ctrl_c(NOTHING_DONE):
        cfg = _check_command_line(CONFIG_DIR, "train", style_paths=True, settings=_train_settings)
        with exit_on_user_error():
            _refuse_output_dir()
            _refuse_loss_options_of_distillation(cfg)
        _keep_earlier_run()
        _own_run_folder("train")
        _train()


def _infer(cfg: DictConfig) -> None:
    from nst_ff.infer import run

    kept = "the files written so far are complete and kept; the same command again does the rest"
    with exit_on_user_error(), exit_on_ctrl_c(kept):
        sys.exit(run(validate(cfg, InferConfig)))


def infer() -> None:
    """Stylise photos and videos with a model (conf/infer/infer.yaml)."""
    if _help(CONFIG_DIR / "infer", "infer", "stylise photos and videos with a trained model"):
        return
    with exit_on_ctrl_c(NOTHING_DONE):
        _launch(CONFIG_DIR / "infer", "infer", _infer)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="optimize")
def _optimize(cfg: DictConfig) -> None:
    from nst_ff.optimize import run

    kept = "nothing written: it stopped before the optimisation (Ctrl-C during it writes the best image so far)"
    with exit_on_user_error(), exit_on_ctrl_c(kept), removed_if_unused(HydraConfig.get().runtime.output_dir):
        print(f"wrote {run(_optimize_settings(cfg))}")


def _optimize_settings(cfg: DictConfig) -> dict[str, Any]:
    return validate(cfg, OptimizeConfig)


def optimize() -> None:
    """Stylise one photo by optimising its pixels (conf/optimize.yaml)."""
    if _help(CONFIG_DIR, "optimize", "stylise one photo by optimising its pixels (Gatys et al.)"):
        return
    with exit_on_ctrl_c(NOTHING_DONE):
        _check_command_line(CONFIG_DIR, "optimize", style_paths=True, settings=_optimize_settings)
        with exit_on_user_error():
            _refuse_output_dir()
        _own_run_folder("optimize")
        _optimize()


def _export(cfg: DictConfig) -> None:
    from nst_ff.onnx import main

    with exit_on_user_error(), exit_on_ctrl_c("nothing written (the file is written whole at the end)"):
        sys.exit(main(**validate(cfg, ExportConfig)))


def export() -> None:
    """Export a model to ONNX (conf/onnx/export.yaml)."""
    if _help(CONFIG_DIR / "onnx", "export", "export a model to ONNX"):
        return
    with exit_on_ctrl_c(NOTHING_DONE):
        _launch(CONFIG_DIR / "onnx", "export", _export)


def _serve(cfg: DictConfig) -> None:
    from nst_ff.serve import serve as launch

    with exit_on_user_error():
        launch(**validate(cfg, ServeConfig))


def serve() -> None:
    """Serve the web page (conf/serve/serve.yaml)."""
    if _help(CONFIG_DIR / "serve", "serve", "serve a web page that stylises photos"):
        return
    _launch(CONFIG_DIR / "serve", "serve", _serve)
