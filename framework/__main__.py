"""`python -m framework [overrides]`: compose the config with Hydra and train."""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from framework import config, train

config.register()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    # version_base 1.3 keeps the working directory; the run directory comes from Hydra.
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        train.run(cfg, run_dir)
    except config.ConfigError as e:
        # A user's mistake: one clear line and a non-zero exit, not a traceback.
        print(f"Error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
