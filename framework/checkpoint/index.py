"""checkpoints/index.json: every checkpoint file with its epoch, step, metric, size and sha256."""

from __future__ import annotations

import json
from pathlib import Path

from framework.atomic import replace_atomically


class Index:
    def __init__(self, folder: Path):
        self.folder = folder
        self.path = folder / "index.json"
        self.entries: dict[str, dict] = {}
        if self.path.is_file():
            # Written atomically, so it is whole; a hand-edited broken one is set aside, not trusted.
            try:
                self.entries = {e["file"]: e for e in json.loads(self.path.read_text())["files"]}
            except (ValueError, KeyError, TypeError):
                self.entries = {}

    def record(self, entry: dict) -> None:
        self.entries[entry["file"]] = entry
        self.save()

    def remove(self, name: str) -> None:
        self.entries.pop(name, None)
        self.save()

    def save(self) -> None:
        files = sorted(self.entries.values(), key=lambda e: (e["step"], e["file"]))
        self.folder.mkdir(parents=True, exist_ok=True)
        replace_atomically(self.path, json.dumps({"files": files}, indent=2))

    def newest_first(self) -> list[Path]:
        """Every checkpoint on disk, newest (highest step) first: indexed ones, then any
        `.pt` file the index does not list (those can only be checked by loading them)."""
        listed = sorted(self.entries.values(), key=lambda e: (e["step"], e["role"] == "last"), reverse=True)
        paths = [self.folder / e["file"] for e in listed if e.get("kind") == "full"]
        paths += sorted(p for p in self.folder.glob("*.pt") if p.name not in self.entries)
        return paths

    def sha256(self, path: Path) -> str | None:
        entry = self.entries.get(path.name)
        return entry["sha256"] if entry else None
