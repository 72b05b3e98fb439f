"""The tools given what they do not expect, through the real command line: a named pipe, a folder
or a dangling link where a file should be, a recipes folder that is a file, recipe names that
cannot work, malformed run directories, a pickle naming a NumPy class that does not exist.
Each gets one line naming the file or the name, a non-zero exit and no traceback, and nothing
is written or lost. A command that hangs (a named pipe opened) fails its test after TIMEOUT s."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from helpers import ROOT, train_in_process

pytestmark = pytest.mark.slow

TIMEOUT = 60  # seconds; each of these commands needs a few


def run_together(*commands, cwd=ROOT, env=None) -> list[subprocess.CompletedProcess]:
    """Each `python -m ARGS...`, all started at once (each pays for its own interpreter), with the
    framework of this checkout whatever the folder they run in, and no recipes folder of the caller's."""
    full_env = {k: v for k, v in os.environ.items() if k != "FRAMEWORK_RECIPES"}
    full_env.update(PYTHONPATH=str(ROOT), **(env or {}))
    started = [
        (args, subprocess.Popen([sys.executable, "-m", *map(str, args)], cwd=cwd, env=full_env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        for args in commands
    ]  # fmt: skip
    deadline = time.monotonic() + TIMEOUT
    done = []
    try:
        for args, proc in started:
            out, err = proc.communicate(timeout=max(0.0, deadline - time.monotonic()))
            done.append(subprocess.CompletedProcess(args, proc.returncode, out, err))
    except subprocess.TimeoutExpired:
        pytest.fail(f"python -m {' '.join(map(str, args))} still runs after {TIMEOUT} s: it hangs")
    finally:
        for _, proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return done


def run(*args, **where) -> subprocess.CompletedProcess:
    return run_together(args, **where)[0]


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, *named: str) -> None:
    said = f"python -m {' '.join(map(str, proc.args))} -> {proc.returncode}\n{proc.stdout}{proc.stderr}"
    assert proc.returncode == code, said
    assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1, said
    assert proc.stderr.startswith("Error: ") and all(word in proc.stderr for word in named), said


# ---- recipes -------------------------------------------------------------------------------------
def test_a_pipe_a_folder_and_a_dangling_link_among_the_recipes_are_named_not_opened(tmp_path):
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    os.mkfifo(recipes / "piped.yaml")
    (recipes / "folder.yaml").mkdir()
    (recipes / "dangling.yaml").symlink_to(tmp_path / "nowhere.yaml")
    listed, plain_start, chosen = run_together(
        ("framework.recipe", "list"),
        ("framework", "--version"),  # every start registers the recipes
        ("framework", "recipe=piped"),
        cwd=tmp_path,
    )
    assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stderr
    rows = {line.split()[0]: line for line in listed.stdout.splitlines() if line.strip()}
    assert "recipes/piped.yaml is a named pipe (FIFO), not a regular file" in rows["piped"]
    assert "recipes/folder.yaml is a directory, not a regular file" in rows["folder"]
    assert f"recipes/dangling.yaml is a symbolic link to {tmp_path}/nowhere.yaml, which does not" in rows["dangling"]
    assert {"digits_cnn", "template"} <= rows.keys()  # the usable ones are still listed
    assert plain_start.returncode == 0 and plain_start.stdout.startswith("framework "), plain_start.stderr
    assert_one_line_error(chosen, 1, "recipe=piped: recipes/piped.yaml is a named pipe (FIFO)")


def test_a_new_recipe_into_a_recipes_folder_that_is_a_file_is_refused(tmp_path):
    mine = tmp_path / "notes"
    mine.write_text("mine\n")
    (tmp_path / "recipes").write_text("mine too\n")
    by_env, by_default, by_dir, below_a_file = run_together(
        ("framework.recipe", "new", "idea"),
        ("framework.recipe", "new", "idea", "--dir", "recipes"),
        ("framework.recipe", "new", "idea", "--dir", mine),
        ("framework.recipe", "new", "idea", "--dir", mine / "sub"),
        cwd=tmp_path,
        env={"FRAMEWORK_RECIPES": str(mine)},
    )
    assert_one_line_error(by_env, 1, f"{mine} (the first folder of $FRAMEWORK_RECIPES) is not a folder")
    assert_one_line_error(by_default, 1, "recipes (--dir) is not a folder")
    assert_one_line_error(by_dir, 1, f"{mine} (--dir) is not a folder")
    assert_one_line_error(below_a_file, 1, f"cannot write the new recipe into {mine / 'sub'}: Not a directory")
    default = run("framework.recipe", "new", "idea", cwd=tmp_path)  # ./recipes, the default folder
    assert_one_line_error(default, 1, "recipes (the recipes folder of the directory you run from) is not a folder")
    assert mine.read_text() == "mine\n" and (tmp_path / "recipes").read_text() == "mine too\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes", "recipes"]


# Each name, and what the refusal says about it.
UNUSABLE_NAMES = {
    "__init__": "one of Python's special names",
    "__main__": "one of Python's special names",
    "class": "is a Python keyword",
    "null": "recipe=null reads as None",
    "inf": "recipe=inf reads as inf",
    "NaN": "recipe=NaN reads as nan",
    "torch": "'torch' is a module the framework or the copied code imports",
    "framework": "'framework' is a module the framework or the copied code imports",
    "math": "'math' is a module the framework or the copied code imports",  # the template imports it
    "helpers": "recipes/__init__.py binds 'helpers', which would hide the module recipes.helpers",
}


def test_a_new_recipe_with_a_name_that_cannot_work_is_refused_and_nothing_written(tmp_path):
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "__init__.py").write_text("from . import helpers\n")  # a package of the user's own
    refused = run_together(*(("framework.recipe", "new", name) for name in UNUSABLE_NAMES), cwd=tmp_path)
    for proc, says in zip(refused, UNUSABLE_NAMES.values()):
        assert_one_line_error(proc, 1, says)
    assert [p.name for p in recipes.iterdir()] == ["__init__.py"]
    assert (recipes / "__init__.py").read_text() == "from . import helpers\n"
    made = run("framework.recipe", "new", "torch_idea", cwd=tmp_path)  # a name merely like one is fine
    assert made.returncode == 0 and (recipes / "torch_idea.py").is_file(), made.stderr


# ---- checkpoint tools ----------------------------------------------------------------------------
def test_ckpt_on_a_named_pipe_says_so_without_opening_it(tmp_path):
    pipe = tmp_path / "last.pt"
    os.mkfifo(pipe)
    verified, migrated, inspected = run_together(
        ("framework.ckpt", "verify", pipe),
        ("framework.ckpt", "migrate", pipe, tmp_path / "new.pt", "model=mlp"),
        ("framework.ckpt", "inspect", pipe),
    )
    for proc in (verified, migrated, inspected):
        assert_one_line_error(proc, 3, f"{pipe} is a named pipe (FIFO), not a regular file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_migrate_names_a_numpy_class_that_numpy_does_not_have(tmp_path, monkeypatch):
    class FakeDType:
        """Pickled under a name of NumPy's form, which the opt-in lets through to the look-up."""

        def __reduce__(self):
            return FakeDType, ()

    FakeDType.__module__, FakeDType.__qualname__ = "numpy.dtypes", "FakeDType"
    monkeypatch.setattr(np.dtypes, "FakeDType", FakeDType, raising=False)  # so that pickle finds it here
    src = tmp_path / "checkpoint_epoch_1.pt"
    torch.save({"epoch": 1, "model_state_dict": {"w": torch.zeros(1)}, "dtype": FakeDType()}, src)
    dst = tmp_path / "imported.pt"
    proc = run("framework.ckpt", "migrate", src, dst, "model=mlp", "--unpickle-numpy", src)
    assert_one_line_error(proc, 5, f"{src} pickles numpy.dtypes.FakeDType, which NumPy", "nothing of it was unpickled")
    assert not dst.exists()


# ---- compare -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("compare") / "run"
    train_in_process(run_dir, "model=mlp", "trainer.max_steps=2", "logger=none")
    return run_dir


def altered_copy(run_dir, to, change) -> object:
    copy = shutil.copytree(run_dir, to)
    change(copy)
    return copy


def test_compare_refuses_malformed_runs_and_runs_with_nothing_to_compare(finished_run, tmp_path):
    def line_without_event(run_dir):
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        lines.insert(1, json.dumps({"epoch": 0, "step": 1}))
        (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")

    def summary_as_a_list(run_dir):
        (run_dir / "metrics.json").write_text("[1, 2]\n")

    def summary_not_json(run_dir):
        (run_dir / "metrics.json").write_text("{not json\n")

    def state_as_a_list(run_dir):
        torch.save([1, 2], run_dir / "checkpoints" / "last.pt")

    def no_fingerprint_no_state(run_dir):
        summary = json.loads((run_dir / "metrics.json").read_text())
        del summary["fingerprint"]
        (run_dir / "metrics.json").write_text(json.dumps(summary))
        shutil.rmtree(run_dir / "checkpoints")

    changes = (line_without_event, summary_as_a_list, summary_not_json, state_as_a_list, no_fingerprint_no_state)
    altered = {change.__name__: altered_copy(finished_run, tmp_path / change.__name__, change) for change in changes}
    # Each against the run as it was, but the last: against another run without fingerprint or state.
    against = {name: finished_run for name in altered}
    against["no_fingerprint_no_state"] = altered_copy(finished_run, tmp_path / "bare", no_fingerprint_no_state)
    results = run_together(*(("framework.compare", against[name], altered[name]) for name in altered))
    said = dict(zip(altered, results))
    history = altered["line_without_event"] / "metrics.jsonl"
    assert_one_line_error(said["line_without_event"], 2, f"{history} line 2 is not a JSON object with an 'event' key")
    summary = altered["summary_as_a_list"] / "metrics.json"
    assert_one_line_error(said["summary_as_a_list"], 2, f"{summary} holds a list, not a JSON object")
    assert_one_line_error(said["summary_not_json"], 2, f"{altered['summary_not_json'] / 'metrics.json'} is not JSON")
    state = altered["state_as_a_list"] / "checkpoints" / "last.pt"
    assert_one_line_error(said["state_as_a_list"], 2, f"{state} holds a list, not a checkpoint's dict")
    assert_one_line_error(said["no_fingerprint_no_state"], 2, "nothing to compare", "fingerprint", "last.pt")
    assert (finished_run / "metrics.json").is_file() and (finished_run / "checkpoints" / "last.pt").is_file()
