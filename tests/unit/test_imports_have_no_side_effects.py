"""Importing any module of the package changes nothing around it: registering configs, scanning
recipe folders, editing sys.path or the environment, installing signal handlers happen when a
command runs, never at import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

# Run in a fresh interpreter, where no module of the package is imported yet: the third-party
# packages first (their own import-time effects are not ours), then one module of ours at a time,
# each compared with the world before it.
PROBE = textwrap.dedent(
    """
    import importlib, json, logging, os, signal, sys, warnings
    from pathlib import Path

    import hydra, numpy, omegaconf, torch
    import torch.distributed.checkpoint.staging, torch.distributed.checkpoint.state_dict, torch.distributed.fsdp
    from hydra.core.config_store import ConfigStore
    from omegaconf.basecontainer import BaseContainer

    def keys(node):
        return {k: keys(v) if isinstance(v, dict) else None for k, v in node.items()}

    def world():
        return {
            "sys.path": list(sys.path),
            "os.environ": dict(os.environ),
            "working directory": os.getcwd(),
            "ConfigStore": keys(ConfigStore.instance().repo),
            "OmegaConf resolvers": sorted(BaseContainer._resolvers),
            "signal handlers": {
                s.name: repr(signal.getsignal(s)) for s in signal.Signals if s not in (signal.SIGKILL, signal.SIGSTOP)
            },
            "logging": (repr(logging.root.handlers), logging.root.level),
            "warning filters": repr(warnings.filters),
            "torch threads": torch.get_num_threads(),
            "torch determinism": torch.are_deterministic_algorithms_enabled(),
            "torch dtype": str(torch.get_default_dtype()),
        }

    root = Path(sys.argv[1])
    files = [*root.rglob("*.py"), *(root / "recipes").glob("*.py")]  # recipes/ is a link: rglob skips it
    dotted = {".".join(p.relative_to(root.parent).with_suffix("").parts) for p in files}
    names = sorted(name.removesuffix(".__init__") for name in dotted)
    changed = {}
    for name in names:
        before = world()
        importlib.import_module(name)
        after = world()
        changed.update({name: [what for what in before if before[what] != after[what]]} if before != after else {})
    print(json.dumps({"imported": names, "changed": changed}))
    """
)


def test_importing_any_module_changes_nothing(tmp_path):
    import framework

    # A user's recipe folder (with a module beside its recipe) that registering would put on sys.path.
    mine = tmp_path / "elsewhere" / "my_recipes"
    mine.mkdir(parents=True)
    (mine / "idea.yaml").write_text("# @package _global_\n# An idea.\n#   python -m framework recipe=idea\nseed: 3\n")
    (mine / "idea.py").write_text("VALUE = 1\n")
    env = {**os.environ, "FRAMEWORK_RECIPES": str(mine)}
    package = os.path.dirname(framework.__file__)
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, package], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout.splitlines()[-1])
    assert {"framework.cli.train", "framework.__main__", "framework.recipes.template"} <= set(found["imported"])
    assert found["changed"] == {}
