"""posescene: scene-stable pose conditioning for Stable Diffusion (a secondary T2I-Adapter)."""

__version__ = "0.1.0"
