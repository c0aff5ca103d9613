"""Stylise one photo by optimising its pixels (Gatys et al. 2016), the quality baseline (installed: nst-optimize).

python optimize.py content=photo.jpg style=starry_night output=out.jpg
python optimize.py content=photo.jpg style=my_painting.jpg sizes=[256,512,1024] steps=200
"""

from nst_ff.cli import optimize

if __name__ == "__main__":
    optimize()
