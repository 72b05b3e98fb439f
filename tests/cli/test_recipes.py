"""Recipes through the real command line: the recipe tool (list, new), a new recipe run and
resumed as generated, a search that optimizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import TESTS, finish_together, read_summary, start_in
from omegaconf import OmegaConf

from framework.cli.compare import compare as differences
from framework.config import recipes as recipe_lib

SHIPPED = ["digits_cnn", "template", "seed_study", "lr_search", "char_lm", "regression"]


def framework_cli(cwd: Path, *args: str, module: str = "framework", env: dict | None = None):
    """`python -m MODULE ARGS...` run from `cwd`, as a user in their own project folder would."""
    full_env = {**os.environ, "PYTHONPATH": str(TESTS), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=full_env
    )


def recipe_cli(cwd: Path, *args: str, env: dict | None = None):
    return framework_cli(cwd, *args, module="framework.recipe", env=env)


def test_the_digits_recipe_runs_from_the_command_line_and_cfg_job_shows_it(tmp_path):
    # The run and --cfg job started at once (each pays for its own interpreter).
    proc, shown = finish_together(
        {
            "run": start_in(tmp_path, "recipe=digits_cnn", "trainer.max_steps=3", "logger=none", "hydra.run.dir=run"),
            "cfg": start_in(tmp_path, "recipe=digits_cnn", "optimizer.lr=0.5", "--cfg", "job"),
        }
    ).values()
    assert proc.returncode == 0, proc.stderr
    summary = read_summary(tmp_path / "run")
    assert summary["status"] == "completed" and summary["global_step"] == 3
    saved = OmegaConf.create(torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)["config"])
    assert saved.optimizer.lr == 3.0e-3 and list(saved.model.channels) == [32, 64]

    assert shown.returncode == 0, shown.stderr
    job = yaml.safe_load(shown.stdout)
    assert job["optimizer"]["lr"] == 0.5 and job["model"]["channels"] == [32, 64]


def test_list_new_and_the_refusals(tmp_path):
    made = recipe_cli(tmp_path, "new", "my_idea")
    assert made.returncode == 0, made.stderr
    yaml_file, module = tmp_path / "recipes/my_idea.yaml", tmp_path / "recipes/my_idea.py"
    targets = {"recipes.my_idea.ResidualConvNet", "recipes.my_idea.DigitClassification"}  # its model and task
    assert targets <= set(yaml_file.read_text().split())
    assert "framework.recipes" not in yaml_file.read_text()
    assert "python -m framework recipe=my_idea" in yaml_file.read_text() and module.is_file()

    listed = recipe_cli(tmp_path, "list").stdout.splitlines()
    described = {name: recipe_lib.find_all()[name].description() for name in SHIPPED}
    described["my_idea"] = yaml_file.read_text().splitlines()[1].lstrip("# ")  # the copy's own line
    assert "my_idea.py" in described["my_idea"]  # the module it names is its own
    for name, description in described.items():
        assert any(line.startswith(f"{name} ") and description in line for line in listed), name

    yaml_file.write_text(yaml_file.read_text() + "# my edit\n")
    again = recipe_cli(tmp_path, "new", "my_idea", "--from", "digits_cnn")
    assert again.returncode == 1 and "exists" in again.stderr and len(again.stderr.splitlines()) == 1
    assert yaml_file.read_text().endswith("# my edit\n")  # untouched
    shipped_name = recipe_cli(tmp_path, "new", "digits_cnn")
    assert shipped_name.returncode == 1 and "exists already" in shipped_name.stderr
    assert not (tmp_path / "recipes/digits_cnn.yaml").exists()

    # A recipe file that cannot be one, and a name that is nowhere: one line each, before Hydra.
    (tmp_path / "recipes/broken.yaml").write_text("model:\n  width: 3\n")
    started = {name: start_in(tmp_path, f"recipe={name}") for name in ("broken", "nowhere")}  # side by side
    broken, missing = finish_together(started).values()
    assert broken.returncode == 1 and "must open with '# @package _global_'" in broken.stderr
    assert missing.returncode == 1 and "recipe=nowhere: no such recipe" in missing.stderr


def as_generated(source: str) -> list[str]:
    """The command that runs a new recipe made from `source`, shortened."""
    short = ["trainer.max_steps=2", "logger=none"]
    if source == "char_lm":  # its validation and test on 1% of the text each, not 5%
        short += ["data.val_fraction=0.01", "data.test_fraction=0.01"]
    if source == "seed_study":  # a multirun from the recipe alone; one seed of it here
        return ["recipe=mine", "seed=0", *short, "hydra.sweep.dir=sweep"]
    if source == "lr_search":
        return ["recipe=mine", "hydra.sweeper.n_trials=2", *short, "hydra.sweep.dir=study"]
    return ["recipe=mine", *short, "hydra.run.dir=run"]


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> dict:
    """source -> (its project folder, `recipe new mine --from SOURCE` there, the run of it): each in
    a folder of its own, the runs all started at once (each pays for its own interpreter)."""
    folders = {source: tmp_path_factory.mktemp(source) for source in SHIPPED}
    made = {source: recipe_cli(folder, "new", "mine", "--from", source) for source, folder in folders.items()}
    started = {
        source: start_in(folders[source], *as_generated(source)) for source in SHIPPED if made[source].returncode == 0
    }
    done = finish_together(started)
    return {source: (folders[source], made[source], done.get(source)) for source in SHIPPED}


@pytest.mark.slow
@pytest.mark.parametrize("source", SHIPPED)
def test_a_new_recipe_from_each_template_runs_as_generated(generated, source):
    folder, made, proc = generated[source]
    assert made.returncode == 0, made.stderr
    assert proc.returncode == 0, proc.stderr
    if source == "seed_study":
        summary = json.loads((folder / "sweep/summary.json").read_text())
        assert summary["jobs"] == 2 and summary["all_reproduce"] is True
    elif source == "lr_search":
        best = yaml.safe_load((folder / "study/optimization_results.yaml").read_text())
        assert set(best["best_params"]) == {"optimizer.lr", "optimizer.weight_decay"}
        assert f"best val/acc {best['best_value']}" in proc.stdout
    else:
        assert read_summary(folder / "run")["status"] == "completed"


@pytest.mark.slow
def test_a_run_from_a_new_recipe_stopped_mid_epoch_resumes_without_its_overrides_to_the_same_bits(tmp_path):
    assert recipe_cli(tmp_path, "new", "mine").returncode == 0
    # The recipe's own model class, made small: the first command's overrides are what the resume must not need.
    # One thread each, so that the two first runs share the 2 CPUs side by side (the resume takes its
    # count from the checkpoint).
    common = ["recipe=mine", "trainer.max_epochs=2", "logger=none", "data.source.max_rotation=20", "model.width=8",
              "model.blocks=1", "determinism.num_threads=1"]  # fmt: skip
    done = finish_together(
        {
            "straight": start_in(tmp_path, *common, "hydra.run.dir=straight"),
            "stopped": start_in(tmp_path, *common, "data.num_workers=2", "trainer.max_steps=27", "hydra.run.dir=run"),
        }
    )
    for proc in done.values():
        assert proc.returncode == 0, proc.stderr
    resumed = framework_cli(tmp_path, "resume=run", "trainer.max_steps=null")
    assert resumed.returncode == 0, resumed.stderr
    assert read_summary(tmp_path / "run")["resumes"][0]["position"] == 7  # mid-epoch: 20 steps an epoch
    assert differences(tmp_path / "straight", tmp_path / "run") == []


@pytest.mark.slow
def test_a_search_ends_with_its_best_result_and_a_failed_trial_does_not_end_it(tmp_path):
    """Two trials (the sampler's seed fixes which): one whose weight decay AdamW refuses, one that
    trains. A sweep over a value given on the command line needs -m, even for a multirun recipe."""
    proc = framework_cli(
        tmp_path,
        "-m",
        "recipe=lr_search",
        "hydra.sweeper.n_trials=2",
        "optimizer.weight_decay=choice(0.01,-1.0)",
        "optimizer.lr=0.003",
        "trainer.max_steps=3",
        "logger=none",
        "hydra.sweep.dir=study",
    )
    assert proc.returncode == 1, proc.stderr  # a job failed: the sweep says so
    best = yaml.safe_load((tmp_path / "study/optimization_results.yaml").read_text())
    assert best["best_params"] == {"optimizer.weight_decay": 0.01}
    summary = json.loads((tmp_path / "study/summary.json").read_text())
    assert summary["completed"] == 1 and summary["failed"] == 1
    assert "weight_decay" in next(r["error"] for r in summary["runs"] if r["status"] == "failed")
    assert "Got 'failed: optimizer: Invalid weight_decay value: -1.0'" in proc.stdout  # the reason, in the study's log
    assert f"best val/acc {best['best_value']}" in proc.stderr
