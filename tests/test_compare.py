"""python -m nst_ff.compare: the shipped model against the optimization baseline on real photos."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nst_ff.compare import main
from nst_ff.paths import PROJECT_ROOT
from tests.conftest import SAMPLES


def run_compare(out: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "nst_ff.compare", "--content", str(SAMPLES), "--out", str(out), *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=600)


def test_report_times_and_scores_both_methods(tmp_path: Path) -> None:
    result = run_compare(tmp_path, "--model", "starry_night", "--size", "64", "--steps", "4", "--limit", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())["models"][0]
    assert report["style"] == "starry_night" and len(report["rows"]) == 2
    for row in report["rows"]:
        assert row["optimization_s"] > 0 and row["feed_forward_s"] > 0
        # Both methods move the photo towards the painting under the model's training loss.
        assert row["feed_forward"]["style"] < row["photo"]["style"]
        assert row["optimization"]["total"] < row["photo"]["total"]
        assert row["photo"]["content"] == 0
        grid = Image.open(tmp_path / row["grid"])
        assert grid.width > 3.5 * grid.height  # content | style | optimization | feed-forward
    assert "| starry_night |" in (tmp_path / "report.md").read_text()
    assert "speed-up" in result.stdout


def test_feed_forward_only_quality_table(tmp_path: Path) -> None:
    result = run_compare(
        tmp_path, "--model", "starry_night", "--size", "48", "--steps", "0", "--limit", "1", "--device", "cpu"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())["models"][0]
    assert "optimization" not in report["rows"][0] and "optimization" not in report["median"]
    assert "photo / feed-forward)" in result.stdout


def test_two_models_of_one_file_name_each_get_their_grids_and_rows(tmp_path: Path) -> None:
    """Two runs' exports of a style are both <style>.safetensors: before, the second's grids replaced the first's,
    and the report's rows were both named by the style, as were a style's full and fast models'."""
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        (tmp_path / run / "the_scream.safetensors").write_bytes(
            (PROJECT_ROOT / "checkpoints" / "the_scream_fast.safetensors").read_bytes()
        )
    models = [str(tmp_path / "a" / "the_scream.safetensors"), str(tmp_path / "b" / "the_scream.safetensors")]
    result = run_compare(tmp_path / "out", "--model", *models, "starry_night_fast", "--size", "32", "--steps", "0")
    assert result.returncode == 0, result.stderr[-2000:]
    reports = json.loads((tmp_path / "out" / "report.json").read_text())["models"]
    assert [report["name"] for report in reports] == ["the_scream_1", "the_scream_2", "starry_night_fast"]
    assert all(any((tmp_path / "out" / report["name"]).glob("*_grid.jpg")) for report in reports)
    table = (tmp_path / "out" / "report.md").read_text()
    assert all(f"| {report['name']} |" in table for report in reports)


def test_photos_of_one_name_in_two_subfolders_each_get_their_row_and_grid(tmp_path: Path) -> None:
    """Before: the grids were named by the file's name alone, so photos/b/x.jpg's grid replaced photos/a/x.jpg's,
    and the report's two rows both read x.jpg."""
    for folder, sample in (("a", "chelsea.jpg"), ("b", "coffee.jpg")):
        (tmp_path / "photos" / folder).mkdir(parents=True)
        (tmp_path / "photos" / folder / "x.jpg").write_bytes((SAMPLES / sample).read_bytes())
    command = [sys.executable, "-m", "nst_ff.compare", "--content", str(tmp_path / "photos"), "--out"]
    command += [str(tmp_path / "out"), "--model", "starry_night_fast", "--size", "32", "--steps", "0"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads((tmp_path / "out" / "report.json").read_text())["models"][0]["rows"]
    assert [row["image"] for row in rows] == ["a/x.jpg", "b/x.jpg"]
    grids = tmp_path / "out" / "starry_night_fast"
    assert (grids / "a" / "x.jpg_grid.jpg").is_file() and (grids / "b" / "x.jpg_grid.jpg").is_file()


def test_photos_of_one_stem_each_get_their_grid_and_their_row_links_it(tmp_path: Path) -> None:
    """Before: a.bmp's grid and a.png's were both a_grid.jpg, the second written over the first."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name, sample in (("a.bmp", "chelsea.jpg"), ("a.png", "coffee.jpg")):
        Image.open(SAMPLES / sample).save(photos / name)
    command = [sys.executable, "-m", "nst_ff.compare", "--content", str(photos), "--out", str(tmp_path / "out")]
    command += ["--model", "starry_night_fast", "--size", "32", "--steps", "0", "--device", "cpu"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads((tmp_path / "out" / "report.json").read_text())["models"][0]["rows"]
    assert [row["grid"] for row in rows] == ["starry_night_fast/a.bmp_grid.jpg", "starry_night_fast/a.png_grid.jpg"]
    for row, other in zip(rows, reversed(rows), strict=True):
        width, height = map(int, row["size"].split("x"))
        grid = np.asarray(Image.open(tmp_path / "out" / row["grid"]), np.float32)
        tile = grid[2 : 2 + height, 2 : 2 + width]  # the first tile, after make_grid's padding: the photo
        own, wrong = (
            np.asarray(Image.open(photos / r["image"]).resize((width, height)), np.float32) for r in (row, other)
        )
        assert np.abs(tile - own).mean() < np.abs(tile - wrong).mean() / 3
        assert f"| [{row['image']}](<{row['grid']}>) |" in (tmp_path / "out" / "report.md").read_text()


def compare_stopped(capsys: pytest.CaptureFixture, out: Path, *args: str) -> tuple[int, str, str]:
    """``python -m nst_ff.compare`` in this process (no start-up per call) up to its exit: status, stdout, stderr."""
    with pytest.raises(SystemExit) as stopped:
        main(["--content", str(SAMPLES), "--out", str(out), *args])
    captured = capsys.readouterr()
    return stopped.value.code, captured.out, captured.err


def test_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for args in (
        ["--model", "no_such_model", "--steps", "0"],
        ["--model", "starry_night", "--steps", "0", "--content", str(tmp_path / "none")],
        # These ran: --size 0 at the photos' full size, --steps -1 reported the photo as the optimization's result.
        ["--model", "starry_night", "--steps", "0", "--size", "0"],
        ["--model", "starry_night", "--steps", "-1"],
        ["--model", "starry_night", "--steps", "0", "--limit", "-2"],
    ):
        status, _, stderr = compare_stopped(capsys, tmp_path / "out", *args)  # anything but a UserError raises here
        assert status == 2 and stderr.startswith("error: ") and len(stderr.strip().splitlines()) == 1, (args, stderr)


def test_help_shows_the_defaults_and_a_wrong_device_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    status, stdout, _ = compare_stopped(capsys, tmp_path, "--help")
    assert status == 0
    for default in ("(default: 512)", "(default: 200)", "(default: auto)", "(default: lbfgs)"):
        assert default in " ".join(stdout.split()), default
    status, _, stderr = compare_stopped(capsys, tmp_path, "--model", "starry_night", "--steps", "0", "--device", "gpu")
    assert status == 2 and stderr.startswith("error: device=gpu: unknown device")


def test_a_broken_photo_is_skipped_not_the_comparison(tmp_path: Path) -> None:
    """One file that does not decode stopped the whole comparison (hours with the optimization) without a report."""
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a_broken.jpg").write_bytes(b"not a jpeg")
    Image.open(SAMPLES / "chelsea.jpg").save(photos / "b_chelsea.jpg")
    command = [sys.executable, "-m", "nst_ff.compare", "--content", str(photos), "--out", str(tmp_path / "out")]
    result = subprocess.run(
        [*command, "--model", "starry_night", "--size", "48", "--steps", "0", "--device", "cpu"],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "skipped" in result.stderr and "a_broken.jpg" in result.stderr
    rows = json.loads((tmp_path / "out" / "report.json").read_text())["models"][0]["rows"]
    assert [row["image"] for row in rows] == ["b_chelsea.jpg"]


def test_a_photo_too_narrow_for_the_loss_is_skipped_and_alone_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A 4000x16 strip is 64x1 px at --size 64, narrower than VGG-16's poolings: before, torch's "Output size is too
    small" as a traceback after the first photo, and no report."""
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.open(SAMPLES / "chelsea.jpg").save(photos / "a_chelsea.jpg")
    Image.open(SAMPLES / "rocket.jpg").resize((4000, 16)).save(photos / "b_strip.png")
    args = ("--model", "starry_night_fast", "--size", "64", "--steps", "0", "--device", "cpu")
    main(["--content", str(photos), "--out", str(tmp_path / "out"), *args])
    stderr = capsys.readouterr().err
    assert f"skipped {photos / 'b_strip.png'}: at --size 64 the image is 64x1 px, too narrow" in stderr
    rows = json.loads((tmp_path / "out" / "report.json").read_text())["models"][0]["rows"]
    assert [row["image"] for row in rows] == ["a_chelsea.jpg"]
    status, _, stderr = compare_stopped(capsys, tmp_path / "alone", "--content", str(photos / "b_strip.png"), *args)
    assert status == 2 and stderr.startswith(f"error: {photos / 'b_strip.png'}: at --size 64 the image is 64x1 px")
    assert len(stderr.strip().splitlines()) == 1 and not (tmp_path / "alone").exists()


def test_an_out_folder_of_other_files_is_refused_and_an_earlier_report_s_is_replaced(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "report.md").write_text("my notes")
    args = ("--model", "starry_night_fast", "--steps", "0", "--size", "32", "--device", "cpu")
    status, _, stderr = compare_stopped(capsys, notes, *args)
    # Before: report.md and the grids written over the folder's own files.
    assert status == 2 and stderr.startswith(f"error: --out {notes}: holds files of its own")
    assert (notes / "report.md").read_text() == "my notes"
    report = tmp_path / "report"
    for _ in range(2):  # a comparison again into its own folder: the usual way to refresh it
        main(["--content", str(SAMPLES), "--out", str(report), *args, "--limit", "1"])
    assert json.loads((report / "report.json").read_text())["size"] == 32
