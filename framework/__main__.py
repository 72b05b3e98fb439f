"""`python -m framework [overrides]`: compose the config with Hydra and train."""
from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from framework import config, train
from framework.checkpoint import CheckpointError

config.register()


def continue_in_place(argv: list[str]) -> list[str]:
    """With `resume=RUN_DIR` or `resume=FILE.pt`, run in that run's own directory.

    Hydra picks the run directory before any of our code runs, so this is decided from the
    command line: add `hydra.run.dir=<the run's directory>` unless the user set one. And so that
    the run's original `.hydra/` record is kept, Hydra's files for this invocation go to
    `.hydra/resume-<time>/` whenever the directory already holds checkpoints.
    """
    resume = next((a.split("=", 1)[1] for a in argv if a.startswith("resume=")), None)
    if resume in (None, "", "null"):
        return argv
    run_dir_arg = next((a.split("=", 1)[1] for a in argv if a.startswith("hydra.run.dir=")), None)
    extra, run_dir = [], None
    if run_dir_arg is not None:
        run_dir = Path(run_dir_arg)
    elif resume != "auto":
        path = Path(resume).expanduser()
        if path.is_file():  # RUN_DIR/checkpoints/NAME.pt
            run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        elif path.is_dir():  # RUN_DIR or RUN_DIR/checkpoints
            run_dir = path.parent if path.name == "checkpoints" else path
        if run_dir is not None:
            extra.append(f"hydra.run.dir={run_dir.resolve()}")
    has_checkpoints = run_dir is not None and any((run_dir / "checkpoints").glob("*.pt"))
    if has_checkpoints and not any(a.startswith("hydra.output_subdir=") for a in argv):
        extra.append(f"hydra.output_subdir=.hydra/resume-{datetime.now():%Y%m%d-%H%M%S-%f}")
    return argv + extra


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    # version_base 1.3 keeps the working directory; the run directory comes from Hydra.
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        train.run(cfg, run_dir)
    except (config.ConfigError, CheckpointError) as e:
        # A user's mistake or an unusable checkpoint: one clear message and a non-zero exit.
        print(f"Error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    sys.argv = [sys.argv[0], *continue_in_place(sys.argv[1:])]
    main()
