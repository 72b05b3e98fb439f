"""A Hydra-configured PyTorch experiment framework: `python -m framework [overrides]`."""

__version__ = "0.2.0"
