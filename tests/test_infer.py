"""infer.py on real photos: files, folders, options, and every kind of bad input."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from nst_ff.errors import UserError
from nst_ff.export import ModelFileError, load_model, save_model
from nst_ff.infer import mark_output_folder, plan
from nst_ff.net import TransformerNet
from nst_ff.paths import PROJECT_ROOT
from tests.conftest import SAMPLES, interrupted


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_model(path, TransformerNet(channels=8, num_res_blocks=1), {"style": "tiny", "steps": 0})
    return path


def infer(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "infer.py"), *args],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        timeout=300,
    )


def test_file_names_hydras_grammar_reserves_and_the_home_folder(model: Path, tmp_path: Path) -> None:
    """Before: "cannot read this option" for a ~ (zsh passes input=~/... on as it is, and bash does for keys
    with a dot), parentheses (``IMG (1).jpg``), letters beyond ASCII, #, &, ;, =, quotes, brackets."""
    (tmp_path / "in").mkdir()
    name = "Müller (1) #2 & it's [x].jpg"
    shutil.copy(SAMPLES / "chelsea.jpg", tmp_path / "in" / name)
    result = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "infer.py"), f"model={model}", f"input=[~/in/{name}]", "output=~/o/x~.png"],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env={**os.environ, "HOME": str(tmp_path)},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert Image.open(tmp_path / "o" / "x~.png").size == Image.open(SAMPLES / "chelsea.jpg").size


def test_a_file_name_with_an_interpolation_s_characters(model: Path, tmp_path: Path) -> None:
    """OmegaConf's escape, ``\\${``, names the file. Before: the escaped name failed as the unescaped one did (the
    schema check read the resolved ``${x}`` as an interpolation again), in words that named no fix ("input=None")."""
    shutil.copy(SAMPLES / "chelsea.jpg", tmp_path / "cat${x}.jpg")
    result = infer(f"model={model}", f"input={tmp_path}/cat\\${{x}}.jpg", f"output={tmp_path / 'out.png'}")
    assert result.returncode == 0, result.stderr
    assert Image.open(tmp_path / "out.png").size == Image.open(SAMPLES / "chelsea.jpg").size
    result = infer(f"model={model}", f"input={tmp_path}/cat${{x}}.jpg")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "input: Interpolation key 'x' not found; a '${' begins an interpolation, write '\\${'" in result.stderr


def test_ctrl_c_keeps_whole_files_and_a_second_run_does_the_rest(tmp_path: Path) -> None:
    """Before: a KeyboardInterrupt traceback from inside the network."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for index in range(60):
        shutil.copy(SAMPLES / "rocket.jpg", photos / f"{index:02d}.jpg")
    command = [sys.executable, str(PROJECT_ROOT / "infer.py"), "model=starry_night", f"input={photos}", "output=out"]
    returncode, stderr = interrupted(command, ready=lambda: any((tmp_path / "out").glob("*.jpg")), cwd=tmp_path)
    assert returncode == 130 and "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith("stopped (Ctrl-C); the files written so far are complete")
    written = [path for path in (tmp_path / "out").iterdir() if path.name != ".nst-ff-output"]  # the folder's mark
    assert 0 < len(written) < 60 and all(Image.open(path).size == (640, 427) for path in written)  # no temp files
    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and len(list((tmp_path / "out").glob("*.jpg"))) == 60
    kept_lines = [line for line in again.stdout.splitlines() if line.startswith("kept ")]
    assert len(kept_lines) == (1 if len(written) > 3 else len(written))  # many: one line, not one per file


def test_single_file(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.png"
    result = infer(f"model={model}", f"input={SAMPLES / 'chelsea.jpg'}", f"output={out}")
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stdout
    assert Image.open(out).size == Image.open(SAMPLES / "chelsea.jpg").size


def test_an_image_type_read_but_not_written_gets_an_output_type_written(model: Path, tmp_path: Path) -> None:
    """Before: photo.jfif (a JPEG) gave photo_tiny.jfif, "unknown output image type" after the model had loaded."""
    Image.open(SAMPLES / "chelsea.jpg").save(tmp_path / "photo.jfif", "JPEG")
    Image.open(SAMPLES / "coffee.jpg").save(tmp_path / "scan.ppm")
    for name, written, image_type in (("photo.jfif", "photo_tiny.jpg", "JPEG"), ("scan.ppm", "scan_tiny.png", "PNG")):
        result = infer(f"model={model}", f"input={tmp_path / name}")
        assert result.returncode == 0, result.stderr
        with Image.open(tmp_path / written) as out, Image.open(tmp_path / name) as source:
            assert out.format == image_type and out.size == source.size


def test_folder_keeps_tree_skips_bad_files_and_lists_failures(model: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    (photos / "nested").mkdir(parents=True)
    shutil.copy(SAMPLES / "coffee.jpg", photos / "coffee.jpg")
    shutil.copy(SAMPLES / "rocket.jpg", photos / "nested" / "rocket.JPG")
    Image.open(SAMPLES / "chelsea.jpg").convert("RGBA").save(photos / "nested" / "cat.png")
    (photos / "broken.jpg").write_bytes((SAMPLES / "coffee.jpg").read_bytes()[:5000])
    (photos / "empty.png").write_bytes(b"")
    out = tmp_path / "styled"
    result = infer(f"model={model}", f"input={photos}", f"output={out}")
    assert result.returncode == 1
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == [".nst-ff-output", "coffee.jpg", "nested/cat.png", "nested/rocket.JPG"]
    assert Image.open(out / "nested" / "cat.png").mode == "RGBA"
    assert "broken.jpg" in result.stderr and "empty.png" in result.stderr
    assert "2 of 5 file(s) failed" in result.stderr and "Traceback" not in result.stderr


def test_one_bad_photo_is_one_line(model: Path, tmp_path: Path) -> None:
    """Before: a second line, "1 of 1 file(s) failed", after the file's own."""
    broken = tmp_path / "broken.jpg"
    broken.write_bytes((SAMPLES / "coffee.jpg").read_bytes()[:5000])
    result = infer(f"model={model}", f"input={broken}")
    assert result.returncode == 1 and result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(f"error: {broken}: ")


def test_existing_outputs_are_kept_unless_overwrite(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jpg"
    out.write_bytes(b"precious")
    result = infer(f"model={model}", f"input={SAMPLES / 'coffee.jpg'}", f"output={out}")
    assert result.returncode == 0 and "kept" in result.stdout and out.read_bytes() == b"precious"
    result = infer(f"model={model}", f"input={SAMPLES / 'coffee.jpg'}", f"output={out}", "overwrite=true")
    assert result.returncode == 0 and Image.open(out).size == (600, 400)


def test_a_folder_where_an_output_would_go_is_a_failure_not_a_kept_output(model: Path, tmp_path: Path) -> None:
    (tmp_path / "out" / "coffee.jpg").mkdir(parents=True)  # where the folder run writes coffee.jpg's output
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(SAMPLES / "coffee.jpg", photos)
    shutil.copy(SAMPLES / "chelsea.jpg", photos)
    result = infer(f"model={model}", f"input={photos}", f"output={tmp_path / 'out'}")
    # Before: "kept .../coffee.jpg (exists; overwrite=true replaces it)" and exit 0.
    assert result.returncode == 1 and "coffee.jpg: is a folder, where" in result.stderr and "kept" not in result.stdout
    assert Image.open(tmp_path / "out" / "chelsea.jpg").size == Image.open(SAMPLES / "chelsea.jpg").size


def test_a_file_where_the_output_folder_would_go_is_named_as_such(model: Path, tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    shutil.copy(SAMPLES / "coffee.jpg", tmp_path / "photos")
    (tmp_path / "styled").write_text("notes")
    result = infer(f"model={model}", f"input={tmp_path / 'photos'}", f"output={tmp_path / 'styled'}")
    # Before: "(File exists)", as if a folder of that name were the trouble.
    assert result.returncode == 2 and "styled: cannot create the output folder (a file is there)" in result.stderr
    assert (tmp_path / "styled").read_text() == "notes"


def test_transparency_dropped_by_a_jpeg_output_is_said(model: Path, tmp_path: Path) -> None:
    photo = Image.open(SAMPLES / "chelsea.jpg").convert("RGBA")
    photo.save(tmp_path / "opaque.png")  # an alpha channel with nothing transparent: nothing to say
    photo.putalpha(Image.linear_gradient("L").resize(photo.size))
    photo.save(tmp_path / "faded.png")
    for name, said in (("faded", True), ("opaque", False)):
        result = infer(f"model={model}", f"input={tmp_path / name}.png", f"output={tmp_path / name}_styled.jpg")
        assert result.returncode == 0 and ("transparency dropped" in result.stdout) == said, result.stdout


def test_inputs_are_never_overwritten(model: Path, tmp_path: Path) -> None:
    photo = tmp_path / "photo.jpg"
    shutil.copy(SAMPLES / "coffee.jpg", photo)
    before = photo.read_bytes()
    result = infer(f"model={model}", f"input={photo}", f"output={photo}", "overwrite=true")
    assert result.returncode == 2 and f"output={photo}: is the input; choose another output" in result.stderr
    result = infer(f"model={model}", f"input={photo}", f"output={tmp_path}/../{tmp_path.name}/photo.jpg")
    assert result.returncode == 2 and "is the input" in result.stderr  # before: exit 1, as a failed file
    assert photo.read_bytes() == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["model=no_such_model", "input=x.jpg"], "no_such_model: no such model file or shipped model"),
        (["input=/no/such.jpg"], "/no/such.jpg: no such file or folder"),
        (["strength=2"], "strength=2"),
        (["output=/proc/forbidden/out.jpg"], "cannot write"),
        # Before: a folder named styled.pdf (here, under /proc, a failure to make it).
        (["output=/proc/forbidden/styled.pdf"], "styled.pdf: not an image file type written here, for the output of"),
    ],
)
def test_bad_arguments_give_one_line(model: Path, args: list[str], message: str) -> None:
    defaults = {"model": f"model={model}", "input": f"input={SAMPLES / 'coffee.jpg'}"}
    for arg in args:
        defaults[arg.split("=")[0]] = arg
    result = infer(*defaults.values())
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr


def test_bad_model_files_are_refused_without_running_code(model: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(model.read_bytes()[:1000])
    other_arch = tmp_path / "other.safetensors"
    save_file(
        {"conv.weight": torch.zeros(1)},
        other_arch,
        metadata={"format": "nst_ff.model/1", "net": "{}", "metadata": "{}"},
    )
    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(1)}, foreign)
    pickled = tmp_path / "evil.ckpt"
    pickled.write_bytes(b"cos\nsystem\n(S'echo pwned'\ntR.")
    objects = tmp_path / "objects.ckpt"
    torch.save({"hyper_parameters": PurePosixPath("a class torch's safe loader does not know")}, objects)
    # Before: torch's messages, e.g. its advice to load with weights_only=False.
    refused = "not a readable nst-ff training checkpoint"
    for path, message in [
        (truncated, "not a readable model file"),
        (other_arch, "do not fit a TransformerNet"),
        (foreign, "not an nst-ff model"),
        (pickled, f"{refused} (not a PyTorch checkpoint: torch.save writes zip archives)"),
        (objects, f"{refused} (it holds Python objects beyond tensors and plain values, which could run code"),
    ]:
        with pytest.raises(ModelFileError, match=re.escape(message)):
            load_model(path)
        result = infer(f"model={path}", f"input={SAMPLES / 'coffee.jpg'}", f"output={tmp_path / 'o.jpg'}")
        assert result.returncode == 2 and message in result.stderr and "pwned" not in result.stdout
        assert len(result.stderr.strip().splitlines()) == 1  # torch's state-dict errors span lines


def test_a_training_checkpoint_is_read_whatever_the_case_of_its_extension(tmp_path: Path) -> None:
    net = TransformerNet(channels=8, num_res_blocks=1)
    state = {f"net.{key}": value for key, value in net.state_dict().items()}
    torch.save({"hyper_parameters": {"net": net.config}, "state_dict": state, "global_step": 3}, tmp_path / "run.CKPT")
    loaded, metadata = load_model(tmp_path / "run.CKPT")  # was read as .safetensors: "header too large"
    assert metadata["global_step"] == 3
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), net.state_dict().values(), strict=True))


def test_list_models_shows_every_shipped_model() -> None:
    result = infer("list=true")
    shipped = sorted((PROJECT_ROOT / "checkpoints").glob("*.safetensors"))
    assert result.returncode == 0 and shipped
    for path in shipped:
        _, meta = load_model(path)
        # The shipped models were fine-tuned in rounds: their last round's steps are marked as such.
        assert f"{path.stem} " in result.stdout and f" +{meta['steps']} steps " in result.stdout


@pytest.mark.parametrize("path", sorted((PROJECT_ROOT / "checkpoints").glob("*.safetensors")), ids=lambda p: p.stem)
def test_shipped_models_say_how_they_were_made(path: Path) -> None:
    net, meta = load_model(path)
    assert meta["style"] == path.stem and meta["steps"] > 0 and meta["command"].startswith("python train.py")
    # Files from before the light-net options record four keys; the options default to those nets.
    assert meta["config"]["style"]["name"] == path.stem and meta["net"].items() <= net.config.items()
    assert (PROJECT_ROOT / "assets" / "styles" / meta["style_image"]).is_file()
    assert path.stat().st_size < 10 * 2**20


def test_list_shows_a_broken_model_file_and_every_other_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Before: one broken file in the models folder made list=true print only its error."""
    from nst_ff.infer import list_models

    monkeypatch.setenv("NST_FF_HOME", str(tmp_path))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "half_downloaded.safetensors").write_bytes(b"\x00" * 100)
    shutil.copy(PROJECT_ROOT / "checkpoints" / "the_scream_fast.safetensors", tmp_path / "models" / "mine.safetensors")
    # Named like a shipped model, which the name finds: before, listed as if the name were its.
    shutil.copy(
        PROJECT_ROOT / "checkpoints" / "the_scream_fast.safetensors", tmp_path / "models" / "starry_night.safetensors"
    )
    shutil.copy(PROJECT_ROOT / "checkpoints" / "the_scream_fast.safetensors", tmp_path / "models" / "mine.onnx")
    lines = list_models()
    shadowed = [line for line in lines if "by path only" in line]
    assert [line.split()[0] for line in shadowed] == ["starry_night", "mine"]
    assert f"(the name is {PROJECT_ROOT / 'checkpoints' / 'starry_night.safetensors'})" in shadowed[0]
    assert any(line.startswith("half_downloaded") and "unreadable: " in line for line in lines)
    assert any(line.startswith("mine ") and " fast " in line for line in lines)
    assert (
        sum(" GFLOP at 1024x1024 " in line for line in lines)
        == len(list((PROJECT_ROOT / "checkpoints").glob("*.safetensors"))) + 1
    )


def test_list_models_gives_each_model_its_arithmetic_and_speed_class() -> None:
    from nst_ff.infer import gflop_per_megapixel, list_models

    assert gflop_per_megapixel(TransformerNet()) == pytest.approx(322.5, rel=0.01)  # Johnson et al.'s net
    assert gflop_per_megapixel(TransformerNet(channels=16, separable=True)) < 50
    for line in list_models()[:-1]:  # the last line says where to put more models
        name, speed = line.split()[:2]
        assert speed == ("fast" if name.endswith("_fast") else "full"), line


def test_current_folder_goes_to_a_sibling_folder_and_outputs_are_never_inputs(model: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(SAMPLES / "coffee.jpg", photos / "coffee.jpg")
    result = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "infer.py"), f"model={model}", "input=."],
        capture_output=True,
        text=True,
        cwd=photos,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert Image.open(tmp_path / "photos_tiny" / "coffee.jpg").size == Image.open(photos / "coffee.jpg").size
    # An output folder inside the input folder: not stylised in this run, nor by a later run over the input.
    inside = photos / "styled"
    assert infer(f"model={model}", f"input={photos}", f"output={inside}").returncode == 0
    again = infer(f"model={model}", f"input={photos}", f"output={tmp_path / 'later'}")
    assert again.returncode == 0, again.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "later").rglob("*.jpg")) == ["coffee.jpg"]
    assert sorted(p.name for p in inside.rglob("*.jpg")) == ["coffee.jpg"]


def test_malformed_model_metadata_is_one_line(model: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad_json.safetensors"
    save_file({"x": torch.zeros(1)}, bad, metadata={"format": "nst_ff.model/1", "net": "{not json", "metadata": "{}"})
    with pytest.raises(ModelFileError, match="broken metadata"):
        load_model(bad)
    result = infer(f"model={bad}", f"input={SAMPLES / 'coffee.jpg'}", f"output={tmp_path / 'o.jpg'}")
    assert result.returncode == 2 and "broken metadata" in result.stderr and "Traceback" not in result.stderr


def test_output_folders_above_at_or_of_the_input(tmp_path: Path) -> None:
    """Before: "no images or videos found" for an earlier output folder given as the input (to stylise it again),
    for an output folder above the input, and for the input folder itself as the output."""
    photos = tmp_path / "photos"
    (photos / "nested").mkdir(parents=True)
    shutil.copy(SAMPLES / "coffee.jpg", photos / "nested" / "coffee.jpg")
    mark_output_folder(photos)  # an earlier run's output folder
    assert plan([photos], None, "tiny") == [
        (photos / "nested" / "coffee.jpg", tmp_path / "photos_tiny" / "nested" / "coffee.jpg")
    ]
    assert plan([photos / "nested"], tmp_path, "tiny") == [(photos / "nested" / "coffee.jpg", tmp_path / "coffee.jpg")]
    with pytest.raises(UserError, match="is the input folder; choose another output"):
        plan([photos], photos, "tiny")


def test_files_of_one_name_from_several_inputs_keep_the_first_output(model: Path, tmp_path: Path) -> None:
    """Before: both were stylised into the one output file, the second over the first, and "2 image(s)" said."""
    for folder, photo in (("a", "coffee.jpg"), ("b", "rocket.jpg")):
        (tmp_path / folder).mkdir()
        shutil.copy(SAMPLES / photo, tmp_path / folder / "x.jpg")
    out = tmp_path / "out"
    a, b = tmp_path / "a" / "x.jpg", tmp_path / "b" / "x.jpg"
    result = infer(f"model={model}", f"input=[{a},{b},{a}]", f"output={out}")
    assert result.returncode == 1
    assert f"already the output of {a}; give {b} its own output" in result.stderr
    assert Image.open(out / "x_tiny.jpg").size == Image.open(a).size != Image.open(b).size


def test_an_existing_folder_named_like_a_file_is_an_output_folder(tmp_path: Path) -> None:
    """Before: a single photo's output was the folder itself ("kept ... (exists)", nothing written; overwrite=true:
    "cannot write"), and a folder's was refused as "not a file name"."""
    folder = tmp_path / "styled.jpg"
    folder.mkdir()
    photo = SAMPLES / "coffee.jpg"
    assert plan([photo], folder, "tiny") == [(photo, folder / "coffee_tiny.jpg")]
    assert plan([SAMPLES], folder, "tiny")[0] == (SAMPLES / "astronaut.jpg", folder / "astronaut.jpg")


def test_what_this_user_may_not_read_is_one_line_each(
    model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture,
) -> None:
    """Permissions (root, which runs the tests, reads anything: the refusals are the system's, raised here). Before:
    a PermissionError traceback for a path in a folder the user may not enter (exit 1); a folder run left out an
    unreadable subfolder without a word; a model file without read permission was "No such file or directory"
    (safetensors' words) with advice to re-download it; a photo was told to be re-exported."""
    from nst_ff.errors import exit_on_user_error
    from nst_ff.images import find_images, read_picture

    with pytest.raises(SystemExit) as exited, exit_on_user_error():
        raise PermissionError(13, "Permission denied", "locked/x.jpg")  # what os.stat raises there
    assert exited.value.code == 2
    assert (
        capsys.readouterr().err
        == "error: locked/x.jpg: permission denied; change its permissions, or give another path\n"
    )
    for folder in ("photos", "photos/locked"):
        (tmp_path / folder).mkdir()
        shutil.copy(SAMPLES / "chelsea.jpg", tmp_path / folder / "a.jpg")
    scandir = os.scandir

    def refusing_scandir(path: str | os.PathLike) -> object:
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing_scandir)
    assert find_images(tmp_path / "photos") == [tmp_path / "photos" / "a.jpg"]
    assert f"{tmp_path / 'photos' / 'locked'}: cannot read this folder (Permission denied)" in caplog.text
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path).name != "locked" and access(path, mode))
    with pytest.raises(UserError, match="locked: permission denied; change its permissions"):
        find_images(tmp_path / "photos" / "locked")
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != model and access(path, mode))
    with pytest.raises(ModelFileError, match=f"{re.escape(str(model))}: permission denied"):
        load_model(model)

    def refusing_open(path: Path) -> Image.Image:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Image, "open", refusing_open)
    with pytest.raises(UserError, match=r"a\.jpg: permission denied; change its permissions, or leave it out"):
        read_picture(tmp_path / "photos" / "a.jpg")
