"""The edge between Hydra and the package: where the configs live, their resolvers, and the checks that turn
any mistake in an option into one line before a command starts."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import os
import re
import sys
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigKeyError,
    InterpolationKeyError,
    InterpolationResolutionError,
    MissingMandatoryValue,
    OmegaConfBaseException,
)

from nst_ff.device import auto_precision
from nst_ff.paths import CONFIG_DIR, PROJECT_ROOT
from nst_ff.schema import ConfigError


def style_path_overrides(args: list[str]) -> list[str]:
    """Let ``style=`` name a painting's file as well as a ``conf/style`` option: ``style=a/b.jpg``
    becomes ``style.name=b style.image=/abs/a/b.jpg`` (Hydra would otherwise look for a config). A
    ``style.image=a/b.jpg`` without ``style.name=`` names the style ``b`` too (``conf/style``: the name is the
    painting's file name), or the run folder, the exported model and a resume's style check said starry_night.
    A sweep's values are each taken so: ``-m style=starry_night,a/b.jpg`` becomes one over the paintings,
    ``style.image=.../starry_night.jpg,/abs/a/b.jpg`` (before, the whole value was looked for as one file)."""
    multirun = any(arg in ("-m", "--multirun") for arg in args)
    out = []
    for arg in args:
        key, _, value = arg.partition("=")
        path = _painting_file(value) if key == "style" else None
        paintings = _swept_paintings(value) if key == "style" and multirun and path is None else None
        if path is not None:
            out += [
                f"style.name={interpolation_escaped(path.stem)}",
                f"style.image={interpolation_escaped(str(path))}",
            ]
        elif paintings:
            # Each quoted: a file's name may hold a comma, which the sweep would split on.
            out.append("style.image=" + ",".join(_quoted(interpolation_escaped(p)) for p in paintings))
        else:
            out.append(arg)
    return out


def _painting_file(value: str) -> Path | None:
    """The painting's file that a ``style=`` value names, or None (an option of ``conf/style``). An escaped ``\\${``
    is the characters of a file's name (``literal_values``)."""
    path = Path(value.replace("\\${", "${")).expanduser()
    return path.resolve() if path.suffix and path.is_file() else None


def _swept_paintings(value: str) -> list[str] | None:
    """The painting of each value of a sweep ``style=a,b`` (an option's from its ``conf/style`` file), where a file
    is among them: one key must carry both kinds of value, and a painting names its job (``conf/style``).
    None for a sweep over options alone, which Hydra takes as it is."""
    from hydra.core.override_parser.types import ChoiceSweep
    from hydra.errors import HydraException

    try:
        sweep = _parser().parse_override(f"style={value}").value()
        # A quoted element ('a,b.jpg') is a QuotedString: its text is the value.
        values = (
            [getattr(element, "text", str(element)) for element in sweep.list] if isinstance(sweep, ChoiceSweep) else []
        )
    except HydraException:  # a file name the grammar cannot read (``IMG (1).jpg``, literal_values): commas still part
        values = value.split(",")
    if not any(_painting_file(element) for element in values):
        return None
    paintings = []
    for element in values:
        option = CONFIG_DIR / "style" / f"{element}.yaml"
        if _painting_file(element) is None and not option.is_file():
            choices = ", ".join(sorted(path.stem for path in option.parent.glob("*.yaml")))
            raise ConfigError(f"style={element}: no such style option or image file; choose one of {choices}")
        paintings.append(str(_painting_file(element) or OmegaConf.load(option).image))
    return paintings


def register_resolvers() -> None:
    """``${project_root:}``: the repository folder (bundled styles and samples live there);
    ``${auto_precision:ACCELERATOR}``: bf16 mixed precision where the hardware is fast at it, else fp32;
    ``${model_name:NAME_OR_PATH}``: a model's name (``model_name``); ``${file_stem:PATH}``: a file's name without
    its extension, a style's name (``conf/style``: each job of a sweep over ``style.image`` is named after its own
    painting, where the name given once on the command line named them all after the last one)."""
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))
    if not OmegaConf.has_resolver("auto_precision"):
        OmegaConf.register_new_resolver("auto_precision", auto_precision)
    if not OmegaConf.has_resolver("model_name"):
        OmegaConf.register_new_resolver("model_name", model_name)
    if not OmegaConf.has_resolver("file_stem"):
        OmegaConf.register_new_resolver("file_stem", lambda path: Path(str(path)).stem)


@functools.lru_cache(maxsize=8)  # the resolver runs at each composition and resolution of one command's config
def model_name(name_or_path: str) -> str:
    """A model's name from its shipped name or file (``a/b.safetensors`` -> ``b``); a training checkpoint's is its
    run's style (``outputs/great_wave/<run>/checkpoints/last.ckpt`` -> ``great_wave``, not ``last``). A file that
    cannot be read is named by its stem here: loading it later says what is wrong with it."""
    path = Path(str(name_or_path))
    if path.suffix.lower() == ".ckpt" and path.is_file():
        from nst_ff.export import ModelFileError, load_model

        try:
            return str(load_model(path)[1].get("style") or path.stem)
        except ModelFileError:
            pass
    return path.stem


def _hydra_message(error: Exception, config_dir: Path, config_name: str, overrides: list[str]) -> str:
    """Hydra's multi-line composition errors as one line naming the option and the allowed values."""
    from hydra import compose, initialize_config_dir

    text = str(error)
    missing = re.search(r"Could not find '([^']+)'", text)
    if missing:
        group, _, option = missing.group(1).rpartition("/")
        for override in overrides:  # the group is the override's key: its option may hold slashes (a file's path)
            key, _, value = override.lstrip("+~").partition("=")
            value = value.strip("'\"")  # quoted by literal_values
            if f"{key}/{value}" == missing.group(1):
                group, option = key, value
        available = re.search(r"Available options in '[^']+':\n((?:\t.*\n?)+)", text)
        names = ", ".join(available.group(1).split()) if available else f"see conf/{group}"
        what = f"{group} option or image file" if group == "style" else f"{group} option"
        return f"{group}={option}: no such {what}; choose one of {names}"
    cause = error.__cause__
    full_key = getattr(cause, "full_key", None)
    if not isinstance(cause, OmegaConfBaseException) or not full_key:
        return " ".join(text.split())
    wrong = next((o for o in overrides if o.split("=", 1)[0].lstrip("+~") == full_key), full_key)
    parent, _, _ = full_key.rpartition(".")
    try:  # the keys that do exist where the misspelt one was meant to be
        with initialize_config_dir(str(config_dir), version_base="1.3"):
            cfg = compose(config_name, overrides=[o for o in overrides if o != wrong])
        node = OmegaConf.select(cfg, parent) if parent else cfg
        known = f"; options{' in ' + parent if parent else ''}: {', '.join(map(str, node))}"
    except Exception:  # only the hint is lost
        known = ""
    # Only the trainer's keys are open (train.py: Lightning's Trainer arguments): elsewhere a + is refused too.
    added = f" (a new key needs a +: +{wrong.lstrip('+~')})" if parent == "trainer" else ""
    return f"{wrong}: no such option{known}{added}"


# Hydra's own flags that take the next argument as their value (``--cfg job``, ``-cn other``); ``--info`` may.
_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn"}
_FLAGS_WITH_VALUE |= {"--config-dir", "-cd", "--experimental-rerun"}
_INFO_VALUES = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}


def _overrides_marked(arguments: list[str]) -> Iterator[tuple[str, bool]]:
    """Each of the command line's ``arguments`` and whether it is a key=value override (not one of Hydra's
    flags nor a flag's value)."""
    previous = None
    for argument in arguments:
        if previous in _FLAGS_WITH_VALUE or (previous in ("--info", "-i") and argument in _INFO_VALUES):
            previous = None  # this argument is the flag's value
            yield argument, False
            continue
        previous = argument
        yield argument, not argument.startswith("-")


def task_overrides(arguments: list[str]) -> list[str]:
    """The key=value overrides among the command line's ``arguments``, without Hydra's flags and their values."""
    return [argument for argument, is_override in _overrides_marked(arguments) if is_override]


def literal_values(arguments: list[str]) -> list[str]:
    """The command line with each override value (or list element) that Hydra's grammar cannot read quoted,
    i.e. taken as the string it is: file names with parentheses, brackets, ``#``, ``&``, ``;``, ``=``, quotes,
    ``~`` or letters beyond ASCII (``input=IMG (1).jpg``, ``input=[Müller.jpg,b.jpg]``, ``data.root=~/photos``:
    a shell expands the ``~`` of ``key=~/...`` only for some keys and in some shells; ``validate`` expands it).
    Values the grammar reads (numbers, lists, sweeps, quoted strings) are left as they are."""
    out = []
    for argument, is_override in _overrides_marked(arguments):
        key, equals, value = argument.partition("=")
        if is_override and equals and not _readable(value):
            if value.startswith("[") and value.endswith("]"):
                value = "[" + ",".join(_literal(element.strip()) for element in value[1:-1].split(",")) + "]"
            argument = f"{key}={_literal(value)}"
        out.append(argument)
    return out


@functools.cache
def _parser() -> Any:
    """Hydra's parser of overrides (built once: it is a grammar)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def _readable(value: str) -> bool:
    """Whether Hydra's grammar reads ``value`` as an override's value."""
    from hydra.errors import HydraException

    try:
        _parser().parse_override(f"key={value}")
        return True
    except HydraException:
        return False


def _literal(value: str) -> str:
    """``value`` quoted where Hydra's grammar cannot read it, so that it is taken as the string it is."""
    return value if _readable(value) else _quoted(value)


def _quoted(value: str) -> str:
    """``value`` as one quoted string of Hydra's grammar."""
    return "'" + value.replace("'", "\\'") + "'"


def check_command_line(
    config_dir: Path, config_name: str, overrides: list[str], check_job: Callable[[DictConfig], object] | None = None
) -> DictConfig | None:
    """Compose the config as Hydra will, so that a misspelt key, an unknown group option or an override that
    does not parse stops the command with one line (exit 2) instead of Hydra's multi-line report. Returns the
    composed config (without its ``hydra`` node), or None for a sweep, which has one per combination. Each job's config
    goes to ``check_job`` (the job's own checks of values) here: a mistake in the fifth job of a sweep stops it before
    the first one trains, and a single run's mistake is reported before Hydra starts, a run folder is made and
    Lightning is imported (train.py data.batch_size=0: 3.9 s instead of 7.4 on a 2-core Xeon)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    task = task_overrides(overrides)
    multirun = any(o in ("-m", "--multirun") for o in overrides)
    for override in task:
        try:
            sweep = parser.parse_override(override).is_sweep_override()
        except HydraException as error:
            reason = " ".join(str(error).split("\n")[0].split())
            raise ConfigError(f"{override}: cannot read this option ({reason}); write key=value") from None
        if sweep and not multirun:
            raise ConfigError(
                f"{override}: a comma here means one run per value; write key=[a,b] for a list, key='a,b' for a "
                "name with a comma, or add --multirun for the runs"
            )
    jobs = _sweep_jobs(parser.parse_overrides(task)) if multirun else [task]
    for job in jobs or []:  # None: a sweep only Hydra can expand (glob), checked by Hydra as each job starts
        try:
            with initialize_config_dir(str(config_dir), version_base="1.3"):
                cfg = compose(config_name, overrides=job)
        except (HydraException, OmegaConfBaseException) as error:
            raise ConfigError(_hydra_message(error, config_dir, config_name, job)) from None
        if check_job is not None:
            check_job(cfg)
        if not multirun:
            return cfg
    return None


def _sweep_jobs(overrides: list[Any]) -> list[list[str]] | None:
    """Each job's overrides in a sweep, as Hydra's basic sweeper writes them (one per combination of the swept
    values, a key's last override winning); None for a sweep that needs Hydra's config loader to expand."""
    from hydra.errors import HydraException

    per_key: dict[str, list[str]] = {}
    for override in overrides:
        key = override.get_key_element()
        try:
            values = list(override.sweep_string_iterator()) if override.is_sweep_override() else None
        except HydraException:  # glob(...) over a group's options
            return None
        per_key[key] = [f"{key}={value}" for value in values] if values is not None else [override.input_line]
    return [list(job) for job in itertools.product(*per_key.values())]


def run_folder(config_dir: Path, config_name: str, overrides: list[str]) -> Path:
    """The run folder Hydra will make for the command line's ``overrides`` (``hydra.run.dir``)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(config_dir), version_base="1.3"):
        cfg = compose(config_name, overrides=task_overrides(overrides), return_hydra_config=True)
    return Path(cfg.hydra.run.dir)


def _open_keys(schema: type, container: dict[str, Any], open_nodes: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Take out the keys of ``open_nodes`` (e.g. any Lightning Trainer argument) that the schema does not list."""
    extra: dict[str, dict[str, Any]] = {}
    types = {f.name: f.type for f in dataclasses.fields(schema)}
    for name in open_nodes:
        node = container.get(name)
        node_schema = typing.get_type_hints(schema).get(name)
        if isinstance(node, dict) and dataclasses.is_dataclass(node_schema) and name in types:
            known = {f.name for f in dataclasses.fields(node_schema)}
            extra[name] = {key: node.pop(key) for key in list(node) if key not in known}
    return extra


def _validate_tree(obj: object, as_set: Callable[[str], str], key: str = "") -> None:
    """Each dataclass's ``validate``, its fields' first; and every number finite: ``inf`` passed the range checks
    (``>= 0``) that ``nan`` fails, and ``model.lr=inf`` trained into NaN weights before it was refused. ``as_set``
    names a key as the user sets it (``_key_as_set``)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        raise ConfigError(f"{as_set(key)}={obj}: must be a finite number")
    if isinstance(obj, dict):  # loss.content_layers' and style_layers' weights
        for name, value in obj.items():
            _validate_tree(value, as_set, f"{key}.{name}")
    if not dataclasses.is_dataclass(obj):
        return
    for f in dataclasses.fields(obj):
        _validate_tree(getattr(obj, f.name), as_set, f"{key}.{f.name}" if key else f.name)
    if hasattr(obj, "validate"):
        obj.validate()


def validate(cfg: DictConfig | dict[str, Any], schema: type, open_nodes: tuple[str, ...] = ()) -> dict[str, Any]:
    """The resolved config as plain containers, after checking it against ``schema`` (a dataclass of
    ``nst_ff.schema``): unknown keys, types and allowed values, then each dataclass's ``validate``. Values
    come back converted to their types; keys the config does not have are not added.
    Keys of ``open_nodes`` that the schema does not list are kept unchecked, for the caller to check."""
    try:
        # A mandatory value left unset (``???``) must stop here, not turn into the schema's default.
        resolved = OmegaConf.to_container(OmegaConf.create(cfg), resolve=True, throw_on_missing=True)
        container = _map_strings(resolved, _home_expanded)
        extra = _open_keys(schema, container, open_nodes)
        merged = OmegaConf.merge(OmegaConf.structured(schema), _map_strings(container, interpolation_escaped))
        _validate_tree(OmegaConf.to_object(merged), functools.partial(_key_as_set, cfg))
    except MissingMandatoryValue as error:
        key = _key_as_set(cfg, error.full_key)
        raise ConfigError(f"{key}: required; set {key}=...") from None
    except ConfigKeyError as error:
        known = ", ".join(f.name for f in dataclasses.fields(error.object_type)) if error.object_type else ""
        key = _key_as_set(cfg, error.full_key)
        raise ConfigError(f"{key}: no such option" + (f"; options here: {known}" if known else "")) from None
    except InterpolationResolutionError as error:  # before: "input=None: Interpolation key 'x' not found"
        reason = str(error).split("\n")[0]
        if isinstance(error, InterpolationKeyError):
            reason += "; a '${' begins an interpolation, write '\\${' for the characters themselves (a file's name)"
        raise ConfigError(f"{_key_as_set(cfg, error.full_key)}: {reason}") from None
    except OmegaConfBaseException as error:
        reason = str(error).split("\n")[0]
        raise ConfigError(f"{_key_as_set(cfg, error.full_key)}={error.value}: {reason}") from None
    result = _present(OmegaConf.to_container(merged, resolve=True, enum_to_str=True), container)
    for name, values in extra.items():
        result[name].update(values)
    return result


def _key_as_set(cfg: DictConfig | dict[str, Any], full_key: str) -> str:
    """``full_key`` as the user sets it: a node that copies another (``model.loss: ${loss}``) is checked as the copy,
    so its values are named under the node they come from (``loss.weights.source``, not ``model.loss.weights...``)."""
    node: Any = OmegaConf.to_container(OmegaConf.create(cfg), resolve=False)
    parts = full_key.split(".")
    for depth, part in enumerate(parts[:-1], start=1):
        if not isinstance(node, dict) or part not in node:
            break
        node = node[part]
        copied = re.fullmatch(r"\$\{([\w.]+)\}", node) if isinstance(node, str) else None
        if copied:
            return _key_as_set(cfg, ".".join([copied.group(1), *parts[depth:]]))
    return full_key


def _map_strings(value: Any, change: Callable[[str], str]) -> Any:
    """``value`` (containers of plain values) with ``change`` applied to every string in it."""
    if isinstance(value, dict):
        return {key: _map_strings(item, change) for key, item in value.items()}
    if isinstance(value, list):
        return [_map_strings(item, change) for item in value]
    return change(value) if isinstance(value, str) else value


def _home_expanded(value: str) -> str:
    """A value that starts with ``~`` as a path in the user's home (``data.root=~/photos``, which a shell may pass on
    as it is): each path option would otherwise look for a folder named ``~``."""
    return os.path.expanduser(value) if value.startswith("~") else value


def interpolation_escaped(value: str) -> str:
    """A resolved value's ``${`` (from an escaped one: ``input=cat\\${x}.jpg``, a file's name) escaped again, or
    the schema's merge reads it as an interpolation of its own."""
    return value.replace("${", "\\${")


def _present(checked: Any, given: Any) -> Any:
    """``checked`` cut down to the keys that ``given`` has: the schema's defaults are not added, so each
    package class keeps its own (e.g. a model node gets only the arguments its ``_target_`` takes)."""
    if isinstance(checked, dict) and isinstance(given, dict):
        return {key: _present(value, given[key]) for key, value in checked.items() if key in given}
    return checked


def job_command() -> str:
    """How to run this job again: the command as it was started (``python train.py`` in a checkout, ``nst-train``
    when installed) and the job's own overrides (in a multirun, its combination)."""
    from hydra.core.hydra_config import HydraConfig

    program = Path(sys.argv[0]).name
    command = f"python {program}" if program.endswith(".py") else program
    return " ".join([command, *HydraConfig.get().overrides.task])
