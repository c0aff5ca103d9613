"""The GPU probe runs once per session on a lent machine, with minutes of device time: every part of it must run,
which its CPU smoke mode (the same code paths at tiny sizes) checks here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from nst_ff.paths import PROJECT_ROOT


def test_every_part_of_the_probe_runs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    command = [sys.executable, "benchmarks/gpu_probe.py", "--cpu-smoke", "--out", str(out), "--work", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads((out / "gpu_probe.json").read_text())
    parts = ("inference", "train_runs", "infer_folder", "training_steps", "loader", "video")
    for part in parts:
        assert "error" not in results[part] and "skipped" not in results[part], (part, results[part])
    runs = results["train_runs"]
    assert all(runs[name]["val_loss_final"] > 0 for name in ("gpu_fast (batch 16)", "batch 4"))
    assert results["inference"]["kernels_1024"]["nst-ff compiled"][0]["share"] > 0
    assert "# GPU probe" in result.stdout  # the tables, printed last
