"""Stylise photos with a trained model (installed: nst-infer, same options).

python infer.py model=starry_night input=photo.jpg output=photo_starry.jpg
python infer.py model=outputs/.../checkpoints/great_wave.safetensors input=photos/ output=styled/
python infer.py model=starry_night.onnx input=photo.jpg   # an ONNX export (nst-export), run by onnxruntime
python infer.py list=true                                 # the models that can be named
"""

from nst_ff.cli import infer

if __name__ == "__main__":
    infer()
