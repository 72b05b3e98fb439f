"""The config through the real command line: one-line errors naming the key, --help and --version."""

from __future__ import annotations

import pytest
from helpers import (
    CONF,
    finish_together,
    refused_in_one_line,
    run_cli,
    run_together,
    start_cli,
    start_in,
)

import framework

GROUPS = ["task", "model", "optimizer", "scheduler", "data", "determinism", "checkpoint", "logger", "trainer"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


CLI_ERRORS = [
    # (overrides, what stderr must say)
    (["optimizer.lr=abc"], ["optimizer.lr", "abc"]),
    (["trainer.foo=1"], ["trainer.foo: no such key", "max_epochs"]),
    (["optimizer=adamw", "optimizer.amsgrad=true"], ["torch.optim.AdamW takes it", "+optimizer.amsgrad=true"]),
    (["optimizer=adamw", "optimizer.amsgrd=true"], ["optimizer.amsgrd", "no argument 'amsgrd'", "amsgrad, maximize"]),
    (["model.foo.bar=1"], ["model.foo", "framework.models.CNN takes no argument 'foo'", "channels"]),
    (["data=npz"], ["missing required value", "data.source.path"]),
    (["model=foo"], ["Could not find 'model/foo'", "Available options in 'model'", "cnn", "mlp"]),
    (["trainer.precision=64"], ["trainer.precision", "16-mixed"]),
    (["data=npz", "data.source.path=/no/such/file.npz"], ["data.source.path", "/no/such/file.npz"]),
    (["model._target_=no_such_module.Net"], ["model._target_", "no_such_module"]),
]


@pytest.fixture(scope="module")
def cli_errors(tmp_path_factory) -> dict:
    """Every command of CLI_ERRORS, all started at once (each pays for its own interpreter): its
    overrides, as a tuple -> its finished process."""
    folder = tmp_path_factory.mktemp("cli_errors")
    started = {
        tuple(overrides): start_cli(folder / f"run{i}", *overrides, "logger=none")
        for i, (overrides, _) in enumerate(CLI_ERRORS)
    }
    return finish_together(started)


@pytest.mark.parametrize("overrides,expected", CLI_ERRORS, ids=[" ".join(o) for o, _ in CLI_ERRORS])
def test_cli_errors_are_short_name_the_key_and_exit_non_zero(cli_errors, overrides, expected):
    proc = cli_errors[tuple(overrides)]
    assert proc.returncode != 0
    for text in expected:
        assert text in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.splitlines()) < 20
    if overrides == ["model=foo"]:
        assert "schema" not in proc.stderr.split("Config search path")[0]  # only real options listed


def test_a_misspelt_added_key_is_refused_by_name_before_any_data_loads(tmp_path):
    # The data file does not exist: had the data been loaded first, the error would be about it.
    proc = run_cli(tmp_path / "run", "+optimizer.amsgrd=true", "data=npz", "data.source.path=/no/such/file.npz",
                   check=False)  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "Error: optimizer.amsgrd: torch.optim.SGD takes no argument 'amsgrd'. It takes: lr, momentum, dampening, "
        "weight_decay, nesterov, maximize, foreach, differentiable, fused"
    ]
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_help_lists_the_real_groups_and_the_version():
    proc, version = run_together(("framework", "--help"), ("framework", "--version"))  # side by side
    assert proc.returncode == 0
    head = proc.stdout.split("== Config ==")[0]
    assert head.startswith(f"framework {framework.__version__}:")
    groups = head.split("== Configuration groups ==")[1]
    listed = dict(line.split(": ", 1) for line in groups.splitlines() if ": " in line)
    assert sorted(listed) == sorted([*GROUPS, "recipe"])  # no schema entries
    assert all(listed[g] == ", ".join(options(g)) for g in GROUPS)
    assert {"digits_cnn", "template", "seed_study", "lr_search"} <= set(listed["recipe"].split(", "))
    assert version.stdout.startswith(f"framework {framework.__version__} (Hydra ")


TINY = ["model=mlp", "trainer.max_steps=2", "logger=none"]


def test_an_unreadable_override_and_hydra_full_error_0_get_one_line(tmp_path):
    # Started side by side (each pays for its own interpreter), each in a folder of its own.
    for name in ("huge", "0", "empty"):
        (tmp_path / name).mkdir()
    started = {"huge": start_in(tmp_path / "huge", f"seed={'9' * 5000}")}
    for value, folder in (("0", "0"), ("", "empty")):
        started[value] = start_in(tmp_path / folder, "optimizer.lrr=1", *TINY, env={"HYDRA_FULL_ERROR": value})
    done = finish_together(started)
    huge = done.pop("huge")
    refused_in_one_line(huge, "cannot read the override seed=99999")
    assert len(huge.stderr.strip().splitlines()) == 1  # not the 5000 digits' traceback
    for proc in done.values():
        refused_in_one_line(proc, "optimizer.lrr: torch.optim.SGD takes no argument 'lrr'")
