"""promptd: writes Stable Diffusion prompt sidecars for images dropped into an inbox."""

__version__ = "0.1.0"
