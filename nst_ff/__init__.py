"""nst-ff: fast neural style transfer (Johnson et al. 2016) with PyTorch Lightning and Hydra."""

__version__ = "0.1.0"
