"""`python -m framework.compare` keeps working: the run comparison lives in framework/cli/compare.py."""

from framework.cli import exit_with
from framework.cli.compare import main

if __name__ == "__main__":
    exit_with(main)
