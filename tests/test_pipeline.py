"""The reader -> work -> writer threads, and infer's batching of same-size photos (the CUDA path's logic,
run on the CPU)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image

import nst_ff.infer
from nst_ff.images import read_picture
from nst_ff.net import TransformerNet
from nst_ff.paths import PROJECT_ROOT
from nst_ff.pipeline import Writer, batched, overlapped, read_ahead
from nst_ff.stylize import Stylizer
from tests.conftest import SAMPLES


def test_read_ahead_keeps_order_runs_ahead_boundedly_and_hands_over_errors() -> None:
    started = []

    def read(item: int) -> int:
        started.append(item)
        time.sleep(0.01 * (item % 3))  # finish out of order
        if item == 4:
            raise ValueError("bad file 4")
        return item * 10

    results = []
    for item, result in read_ahead(range(10), read, workers=3, depth=3):
        assert max(started) < item + 3 + 1  # never more than depth items ahead of the consumer
        results.append((item, result))
    assert [item for item, _ in results] == list(range(10))
    assert isinstance(results[4][1], ValueError)
    assert [r for i, r in results if i != 4] == [i * 10 for i in range(10) if i != 4]


def test_batched_groups_runs_of_equal_keys_up_to_a_size() -> None:
    elements = ["a1", "a2", "a3", "b1", "a4", "a5"]
    batches = list(batched(elements, key=lambda e: e[0], size=lambda e: 2))
    assert batches == [["a1", "a2"], ["a3"], ["b1"], ["a4", "a5"]]


def test_writer_bounds_pending_work_and_waits_for_all() -> None:
    running, most, done = [0], [0], []
    lock = threading.Lock()

    def write(item: int) -> None:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.01)
        with lock:
            running[0] -= 1
        done.append(item)

    with Writer(workers=2, depth=3) as writer:
        for item in range(12):
            writer.submit(write, item)
    assert sorted(done) == list(range(12)) and most[0] <= 2


def test_same_size_photos_are_stylised_in_batches_like_one_by_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The batching that runs on CUDA, forced on the CPU: same outputs as one photo at a time."""
    torch.manual_seed(0)
    stylizer = Stylizer(TransformerNet(channels=8, num_res_blocks=1), precision="fp32")
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a", "b", "c", "d"):
        shutil.copy(SAMPLES / "coffee.jpg", photos / f"{name}.png")  # same size, lossless outputs
    Image.open(SAMPLES / "coffee.jpg").rotate(90, expand=True).save(photos / "e.png")
    pairs = [(p, tmp_path / "out" / p.name) for p in sorted(photos.iterdir())]
    sizes = []
    original = stylizer.stylize_batch
    monkeypatch.setattr(stylizer, "stylize_batch", lambda x, **kw: sizes.append(len(x)) or original(x, **kw))
    width, height = Image.open(SAMPLES / "coffee.jpg").size
    monkeypatch.setattr(nst_ff.infer, "batch_pixels", lambda device: 3 * width * height)  # batches of 3
    failures: list[str] = []
    assert nst_ff.infer.stylize_files(stylizer, pairs, {"strength": 1.0}, failures) == 5 and not failures
    assert sizes == [3, 1, 1]  # a, b, c together; then d; the rotated one alone
    for source, target in pairs:
        alone = stylizer.stylize_batch(read_picture(source).rgb[None])[0]
        written = read_picture(target).rgb
        assert (written - alone).abs().max() <= 0.5 / 255 + 1e-6  # 8-bit rounding only


def test_results_are_written_in_order_with_bounded_look_ahead() -> None:
    read, written = [], []

    def items() -> Iterator[int]:
        for i in range(50):
            # The reader may run ahead of the writer by the two queues and the items in hand, no more.
            assert i - len(written) <= 2 * 2 + 3
            read.append(i)
            yield i

    overlapped(items(), lambda x: x * x, written.append, depth=2)
    assert written == [i * i for i in range(50)]


@pytest.mark.parametrize("stage", ["read", "work", "write"])
def test_the_first_error_of_any_stage_reaches_the_caller_and_stops_the_threads(stage: str) -> None:
    def items() -> Iterator[int]:
        for i in range(1000):
            if stage == "read" and i == 5:
                raise OSError("read failed")
            yield i

    def work(x: int) -> int:
        if stage == "work" and x == 5:
            raise KeyboardInterrupt
        return x

    def write(x: int) -> None:
        if stage == "write" and x == 5:
            raise ValueError("write failed")

    before = threading.active_count()
    with pytest.raises((OSError, KeyboardInterrupt, ValueError)) as error:
        overlapped(items(), work, write, depth=2)
    assert type(error.value) is {"read": OSError, "work": KeyboardInterrupt, "write": ValueError}[stage]
    assert threading.active_count() == before


def test_a_process_ended_in_the_middle_of_a_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    """A second Ctrl-C ends infer.py while its writer threads finish: a truncated hidden .tmp file stayed beside
    the outputs, which later runs never removed."""
    script = f"""
import sys, threading, time
from nst_ff.files import atomic_write
started = threading.Event()
def write(file):
    file.write(b"half a JPEG")
    started.set()
    time.sleep(60)
threading.Thread(target=atomic_write, args=({str(tmp_path / "photo.jpg")!r}, write), daemon=True).start()
started.wait()
print(sorted(p.name for p in __import__("pathlib").Path({str(tmp_path)!r}).iterdir()))
sys.exit(130)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=60
    )
    assert result.returncode == 130 and ".photo.jpg." in result.stdout, result.stderr[-2000:]  # being written
    assert list(tmp_path.iterdir()) == []
