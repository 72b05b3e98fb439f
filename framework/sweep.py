"""`python -m framework.sweep` keeps working: a sweep's summary lives in framework/cli/sweep.py."""

from framework.cli import exit_with
from framework.cli.sweep import (
    SummaryCallback,  # noqa: F401  (named by sweeps' .hydra/hydra.yaml before 0.x)
    main,
)

if __name__ == "__main__":
    exit_with(main)
