"""The GPU probe runs once per session on a lent machine, with minutes of device time: every part of it must run,
which its CPU smoke mode (the same code paths at tiny sizes) checks here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from nst_ff.export import load_model
from nst_ff.paths import PROJECT_ROOT


def test_every_part_of_the_probe_runs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    parts = ("inference", "train_runs", "infer_folder", "training_steps", "loader", "video", "retrain")
    command = [sys.executable, "benchmarks/gpu_probe.py", "--cpu-smoke", "--out", str(out), "--work", str(tmp_path)]
    # A budget no part can miss: the probe skips what does not fit in a GPU session's minutes, and a busy CI machine
    # with a cold compile cache (a compilation per variant) once ran out of the default 460 s.
    command += ["--parts", ",".join(parts), "--budget", "3600"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads((out / "gpu_probe.json").read_text())
    for part in parts:
        assert "error" not in results[part] and "skipped" not in results[part], (part, results[part])
    runs = results["train_runs"]
    assert all(runs[name]["val_loss_final"] > 0 for name in ("gpu_fast (batch 16)", "batch 4"))
    # The retrained style comes back fine-tuned for video from its own per-frame run, scored beside the shipped one.
    [(style, retrained)] = results["retrain"]["styles"].items()
    assert set(retrained["val_loss"]) == {"per-frame", "stable", "shipped"}, retrained
    metadata = load_model(out / f"{style}.safetensors")[1]
    assert metadata["style"] == style and metadata["temporal_weight"] > 0
    assert f"model.init_from={tmp_path / 'retrain' / style / 'per_frame'}" in metadata["command"]
    assert results["inference"]["kernels_1024"]["nst-ff compiled"][0]["share"] > 0
    # Each folder run's stages in the order they end (benchmarks/infer_timeline.py), all of them reached.
    for run in results["infer_folder"]["runs"].values():
        stages = ["torch imported", "nst-ff imported", "options and model file read", "model on the device"]
        stages += ["first batch decoded", "first batch stylised", "photos written", "command returned"]
        assert list(run["timeline_s"]) == stages and sorted(run["timeline_s"].values()) == list(
            run["timeline_s"].values()
        )
        assert 0 < run["interpreter_start_and_exit_s"] < run["process_wall_s"]
    assert "# GPU probe" in result.stdout  # the tables, printed last
