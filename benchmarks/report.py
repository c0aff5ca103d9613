"""Shared by the benchmark scripts: machine description, medians, table and JSON output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from nst_ff.errors import exit_on_user_error

# The CPU features that decide which kernels run (AVX-512 and native bf16 change CPU timings 2-10x).
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def machine() -> dict[str, object]:
    cpu = platform.processor() or platform.machine()
    flags: list[str] = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == (platform.processor() or platform.machine()):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = [flag for flag in line.split(":", 1)[1].split() if flag in CPU_FLAGS]
    except OSError:
        pass
    info: dict[str, object] = {
        "cpu": cpu,
        "cpu_flags": " ".join(flags) or "unknown",
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def median_seconds(run: Callable[[], object], warmup: int, repeats: int, sync: Callable[[], None]) -> float:
    for _ in range(warmup):
        run()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def print_report(title: str, rows: list[dict[str, object]], extra: dict[str, object], json_path: str | None) -> None:
    info = machine()
    print(f"# {title}")
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in row.values()) + " |")
    for key, value in extra.items():
        print(f"{key}: {value}")
    report = {"title": title, "machine": info, "rows": rows, **extra}
    print("JSON " + json.dumps(report))
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=2))


def run_main(main: Callable[[], object]) -> None:
    """A benchmark's entry point: a model, folder or device its options name that is not there is the project's one
    line (exit status 2), and a measuring child process that failed is its last line, not two tracebacks."""
    with exit_on_user_error():
        try:
            main()
        except subprocess.CalledProcessError as error:
            said = (error.stderr or "").strip().splitlines()[-1:] or ["its error is above"]
            sys.exit(f"error: a measuring process failed: {said[0]}")


def trace_without_inductor() -> None:
    """For the GPU probe's CPU smoke run (benchmarks/gpu_probe.py --cpu-smoke): torch.compile in this process traces
    with dynamo and runs the traced graphs as they are (backend aot_eager) instead of having inductor write and build
    C++ kernels, 15-25 s a graph on a CI machine's CPU. The smoke run checks the benchmarks' own code; what inductor
    makes of the network is tested by tests/test_stylize.py and tests/test_execution.py."""
    compile_with_inductor = torch.compile

    def compile_traced(model: Any = None, **options: Any) -> Any:
        kept = {key: value for key, value in options.items() if key not in ("backend", "mode", "options")}
        return compile_with_inductor(model, backend="aot_eager", **kept)

    torch.compile = compile_traced
