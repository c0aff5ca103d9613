"""ONNX export and onnxruntime inference: same images as torch at any size, clear errors, nothing half-written."""

from __future__ import annotations

import importlib.util
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from nst_ff import onnx as nst_onnx
from nst_ff.distill import DistillModule
from nst_ff.errors import UserError
from nst_ff.export import ModelFileError, load_model, save_model
from nst_ff.images import load_image, resize
from nst_ff.module import load_initial_weights
from nst_ff.net import TransformerNet
from nst_ff.paths import PROJECT_ROOT
from nst_ff.stylize import Stylizer
from tests.conftest import SAMPLES, small_net

needs_onnx = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime")),
    reason="needs the onnx extra: pip install 'nst-ff[onnx]'",
)

# A square, two odd sizes, one under the network's 16-pixel minimum; batches of 1 and 2.
SIZES = [(1, 64, 64), (2, 37, 61), (1, 9, 30)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[TransformerNet, Path]:
    net = small_net()
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    nst_onnx.export_file(net, {"style": "tiny", "steps": 7}, path)
    return net, path


def photo(size: tuple[int, int, int]) -> torch.Tensor:
    """(batch, height, width) -> that many real photos at that size."""
    batch, height, width = size
    photos = [resize(load_image(p), (height, width)) for p in sorted(SAMPLES.glob("*.jpg"))[:batch]]
    return torch.cat(photos)


# InstanceNorm after each upsampling is the pattern of pytorch/pytorch#99140; batch norm and the
# transposed convolution are the other layers a model file can hold.
@needs_onnx
@pytest.mark.parametrize(
    ("upsample", "norm"), [("nearest", "instance"), ("bilinear", "instance"), ("transposed", "batch")]
)
def test_round_trip_matches_torch_at_any_size(upsample: str, norm: str) -> None:
    net = small_net(upsample, norm)
    runner = nst_onnx.OnnxNet(nst_onnx.to_onnx(net, {}))
    assert not any(getattr(module, "subpixel", False) for module in net.modules())  # the export traced a copy
    for size in SIZES:
        image = photo(size)
        with torch.inference_mode():
            reference = net(image)  # the plain forms: the export's own (nst_ff.execution.export_execution) differ
        out = runner(image)
        assert out.shape == image.shape
        assert nst_onnx.psnr(out, reference) > 40, (upsample, norm, size)


@needs_onnx
def test_a_network_in_bf16_is_exported_in_float32() -> None:
    net = small_net().to(torch.bfloat16)  # e.g. a Stylizer's, prepared for a bf16 CPU
    image = photo((1, 37, 53))
    runner = nst_onnx.OnnxNet(nst_onnx.to_onnx(net, {}))
    assert next(net.parameters()).dtype == torch.bfloat16  # the export converted a copy
    with torch.inference_mode():
        assert nst_onnx.psnr(runner(image), net.float()(image)) > 40


@needs_onnx
def test_file_holds_dynamic_axes_opset_and_metadata(exported: tuple[TransformerNet, Path]) -> None:
    net, path = exported
    import onnx

    model = onnx.load(str(path))
    assert [(o.domain, o.version) for o in model.opset_import if o.domain == ""] == [("", nst_onnx.OPSET)]
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    props = {p.key: p.value for p in model.metadata_props}
    assert props["format"] == nst_onnx.FORMAT
    assert json.loads(props["net"]) == net.config
    assert json.loads(props["metadata"]) == {"style": "tiny", "steps": 7}
    # Traced in onnxruntime's fastest forms (nst_ff.execution.export_execution): one node per instance norm, the
    # upsampling as transposed convolutions and the output layer on 2x2 pixel blocks.
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("InstanceNormalization") == 7 and ops.count("ConvTranspose") == 2 and "DepthToSpace" in ops
    assert "Resize" not in ops


@needs_onnx
def test_stylizer_runs_an_onnx_file_like_the_torch_model(exported: tuple[TransformerNet, Path]) -> None:
    net, path = exported
    runner, metadata = load_model(path)
    assert metadata == {"style": "tiny", "steps": 7}
    image = photo((1, 45, 67))
    options = {"strength": 0.7, "preserve_color": True, "max_size": 40}
    expected = Stylizer(net, precision="fp32").stylize_batch(image, **options)
    # compile=True is accepted and changes nothing: onnxruntime runs the graph.
    out = Stylizer(runner, compile=True).stylize_batch(image, **options)
    assert nst_onnx.psnr(out, expected) > 40


@needs_onnx
def test_infer_runs_an_onnx_file(exported: tuple[TransformerNet, Path], tmp_path: Path) -> None:
    _, path = exported
    out = tmp_path / "out.png"
    command = [sys.executable, "infer.py", f"model={path}", f"input={SAMPLES / 'coffee.jpg'}", f"output={out}"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    assert Image.open(out).size == Image.open(SAMPLES / "coffee.jpg").size
    assert "note:" not in result.stderr
    # Before: options that do not apply to an ONNX model were dropped without a word.
    forced = subprocess.run(
        [*command, "precision=bf16", "compile=true", "tile_above=100000", "overwrite=true"],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        timeout=300,
    )
    left_aside = "in fp32, on whole images: precision=bf16 and compile=True and tile_above=100000 left aside"
    assert forced.returncode == 0 and left_aside in forced.stderr


@needs_onnx
def test_main_exports_a_model_file_and_keeps_existing_outputs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = tmp_path / "tiny.safetensors"
    save_model(model, small_net(), {"style": "tiny", "steps": 3})
    target = tmp_path / "out" / "tiny.onnx"
    assert nst_onnx.main(str(model), str(target)) == 0
    line = capsys.readouterr().out
    assert f"wrote {target}" in line and "opset 18" in line and line.count(" dB") == 3
    assert load_model(target)[1] == {"style": "tiny", "steps": 3, "source": "tiny.safetensors"}
    before = target.read_bytes()
    assert nst_onnx.main(str(model), str(target.parent)) == 0  # a folder: <name>.onnx inside it
    assert "kept" in capsys.readouterr().out and target.read_bytes() == before
    # A folder still to be made, marked by its trailing slash as infer's output=styled/ (before: "an ONNX file name
    # must end in .onnx").
    assert nst_onnx.main(str(model), f"{tmp_path / 'exports'}/") == 0
    assert (tmp_path / "exports" / "tiny.onnx").is_file()


@needs_onnx
def test_a_failed_export_leaves_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "tiny.safetensors"
    save_model(model, small_net(), {"style": "tiny"})
    target = tmp_path / "tiny.onnx"
    target.write_bytes(b"precious")
    monkeypatch.setattr(nst_onnx, "check", lambda *_: {"256x256": 12.0, "301x199": 50.0, "37x61": 50.0})
    with pytest.raises(RuntimeError, match="nothing written"):
        nst_onnx.main(str(model), str(target), overwrite=True)
    assert target.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.onnx", "tiny.safetensors"]


@needs_onnx
def test_bad_inputs_are_one_line_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match=r"broken\.safetensors: not a readable model file"):
        nst_onnx.main(str(broken), str(tmp_path / "x.onnx"))
    with pytest.raises(UserError, match=r"must end in \.onnx"):
        nst_onnx.main(str(broken), str(tmp_path / "x.pt"))
    # Before: a traceback; then the same line after the export's half minute.
    monkeypatch.setattr(nst_onnx, "export_file", lambda *_: pytest.fail("exported before the output was checked"))
    with pytest.raises(UserError, match=r"^/proc/forbidden/x\.onnx: cannot write"):
        nst_onnx.main("starry_night_fast", "/proc/forbidden/x.onnx")
    monkeypatch.undo()
    assert not (tmp_path / "x.onnx").exists()
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00garbage")
    with pytest.raises(ModelFileError, match=r"garbage\.onnx: not a readable ONNX model") as error:
        load_model(garbage)
    assert "\n" not in str(error.value)


@needs_onnx
def test_options_that_need_weights_refuse_an_onnx_export(exported: tuple[TransformerNet, Path]) -> None:
    net, path = exported
    # Before: training from it failed in load_state_dict (Hydra's report, exit 1).
    refused = rf"{path}: {path} is an ONNX export, which holds no weights torch can use"
    with pytest.raises(UserError, match=rf"^model.init_from={refused}"):
        load_initial_weights(str(path), net.config)
    with pytest.raises(UserError, match=rf"^teacher={refused}"):
        DistillModule(net={"channels": 8, "num_res_blocks": 1}, teacher=str(path))
    with pytest.raises(UserError, match=rf"^model={refused}"):
        nst_onnx.main(str(path))


@pytest.mark.parametrize("missing", ["onnxruntime", "onnx", "onnxscript"])
def test_missing_optional_dependency_is_one_line(missing: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, missing, None)  # makes `import missing` raise ImportError
    call = (
        (lambda: load_model(tmp_path / "x.onnx"))
        if missing == "onnxruntime"
        else (lambda: nst_onnx.to_onnx(small_net(), {}))
    )
    with pytest.raises(UserError) as error:
        call()
    assert str(error.value) == (
        f"{missing} is not installed (needed for ONNX export and .onnx models); pip install 'nst-ff[onnx]'"
    )


def test_draft_config_has_the_entry_function_options() -> None:
    from hydra import compose, initialize_config_dir

    from nst_ff.paths import CONFIG_DIR

    with initialize_config_dir(str(CONFIG_DIR / "onnx"), version_base="1.3"):
        cfg = compose("export", overrides=["model=starry_night"])
    options = {key: value for key, value in cfg.items() if key != "hydra"}
    assert set(options) == set(inspect.signature(nst_onnx.main).parameters)
    assert options["opset"] == nst_onnx.OPSET and options["model"] == "starry_night"
