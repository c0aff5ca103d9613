"""Train a feed-forward style transfer model (installed: nst-train, same options).

python train.py style=starry_night data.root=/data/coco/train2014
python train.py experiment=smoke                      # seconds, offline, bundled photos
python train.py ... ckpt_path=outputs/.../checkpoints/last.ckpt   # resume
python train.py trainer=ddp trainer.devices=2 ...     # DistributedDataParallel
"""

from nst_ff.cli import train

if __name__ == "__main__":
    train()
