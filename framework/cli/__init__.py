"""The commands: `python -m framework` (train.py), ckpt, recipe, compare, and the sweep's callbacks."""
