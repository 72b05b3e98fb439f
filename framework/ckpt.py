"""`python -m framework.ckpt` keeps working: the checkpoint tool lives in framework/cli/ckpt.py."""

from framework.cli import exit_with
from framework.cli.ckpt import main

if __name__ == "__main__":
    exit_with(main)
