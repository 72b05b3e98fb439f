"""Where the shipped config is: the top-level conf/ folder, reached through the link framework/conf
(as recipes/ is through framework/recipes), so the wheel carries it."""

from __future__ import annotations

from pathlib import Path

# The config shipped inside the package (and so inside the wheel): config.yaml and the groups.
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
