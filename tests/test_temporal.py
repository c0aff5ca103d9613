"""The temporal stability measure on clips with known motion, and the temporal consistency training term."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nst_ff.export import load_model
from nst_ff.images import load_image
from nst_ff.net import TransformerNet
from nst_ff.paths import PROJECT_ROOT
from nst_ff.temporal import MOTIONS, Motion, synthetic_clip, temporal_consistency_loss, warping_error
from tests.conftest import SAMPLES
from tests.test_train import run_training, scalars

SIZE = (64, 96)


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    return load_image(SAMPLES / "coffee.jpg", 200)[0]


@pytest.mark.parametrize("motion", list(MOTIONS))
def test_the_known_motion_maps_each_frame_onto_the_previous_one(photo: torch.Tensor, motion: str) -> None:
    clip, to_previous = synthetic_clip(photo, MOTIONS[motion], 4, SIZE, noise=0)
    error = warping_error(clip, to_previous)
    # Pans move by whole pixels (exact); zooms and rotations resample (a small interpolation error).
    assert error < (1e-10 if motion in ("pan", "static") else 2e-3)
    if motion != "static":
        assert warping_error(clip, torch.eye(3).expand(3, 3, 3)) > 5 * error + 1e-5  # ignoring the motion


def test_sensor_noise_is_fresh_in_every_frame(photo: torch.Tensor) -> None:
    clip, to_previous = synthetic_clip(photo, MOTIONS["pan"], 4, SIZE, noise=0.01)
    assert warping_error(clip, to_previous) == pytest.approx(2 * 0.01**2, rel=0.3)


def test_per_frame_stylisation_flickers_where_a_pixelwise_style_does_not(photo: torch.Tensor) -> None:
    clip, to_previous = synthetic_clip(photo, MOTIONS["pan"], 4, SIZE, noise=0.005)
    floor = warping_error(clip, to_previous)
    assert warping_error(1 - clip**2, to_previous) < 3 * floor  # moves with the scene: as steady as the input
    net, _ = load_model(PROJECT_ROOT / "checkpoints" / "starry_night.safetensors")
    with torch.no_grad():
        stylised = net(clip)
    assert warping_error(stylised, to_previous) > 20 * floor


def test_a_camera_leaving_the_photo_is_refused(photo: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="leaves the photo"):
        synthetic_clip(photo, Motion(shift=(10.0, 0.0)), 30, SIZE)


def test_consistency_term_is_zero_for_pixelwise_maps_and_trains_a_network(photo: torch.Tensor) -> None:
    images = torch.stack([photo[:, :64, :64], photo[:, -64:, -64:]])
    loss = temporal_consistency_loss(lambda x: 0.5 * x + 0.25, images, 0.5 * images + 0.25, torch.Generator(), 0)
    assert loss.item() < 1e-8  # a pixelwise linear map commutes with moving the image
    torch.manual_seed(0)
    net = TransformerNet(channels=8, num_res_blocks=1)
    loss = temporal_consistency_loss(net, images, net(images), torch.Generator().manual_seed(0))
    loss.backward()
    assert loss.item() > 1e-6 and all(p.grad is not None for p in net.parameters())


def test_training_with_temporal_weight_logs_the_term(tmp_path: Path) -> None:
    run_training(tmp_path, "trainer.max_steps=2", "trainer.val_check_interval=2", "model.temporal_weight=1e7")
    assert len(scalars(tmp_path, "train/temporal")) == 2 and len(scalars(tmp_path, "val/temporal")) == 1
    assert load_model(tmp_path / "checkpoints" / "starry_night.safetensors")[1]["temporal_weight"] == 1e7
