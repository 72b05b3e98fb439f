"""The launch plan of `python -m framework`: what it does before Hydra runs, decided from the
command line, the environment and the directories named there, without starting a process."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

import pytest

from framework.cli import hydra_files
from framework.cli.launch_plan import MakeRoom, Relaunch, held_by_a_live_process, plan, with_run_dir
from framework.config.overrides import quoted
from framework.config.recipes import Recipe
from framework.runs.run_dir import refusal

PYTHON = "/opt/python/bin/python3"
NOW = datetime(2026, 1, 2, 3, 4, 5, 678901)
RECIPES = {name: Recipe(name, Path(f"recipes/{name}.yaml"), "framework.recipes") for name in ("digits_cnn", "template")}
RANK_0 = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
RANK_1 = {**RANK_0, "RANK": "1", "LOCAL_RANK": "1"}
HELD_BACK = f"hydra.output_subdir={quoted(hydra_files.incoming_subdir())}"


def nobody(folder: Path) -> None:
    """No live process holds any run."""
    return None


def plan_of(*argv: str, environ: dict | None = None, problems: dict | None = None, in_use=nobody):
    return plan(
        list(argv),
        environ if environ is not None else {},
        recipes=RECIPES,
        recipe_problems=problems or {},
        in_use=in_use,
        python=PYTHON,
        now=NOW,
    )


def a_run(folder: Path, level: str = "seeded") -> Path:
    """A folder holding what a finished run leaves that the plan reads: metrics.json and a checkpoint."""
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "last.pt").write_bytes(b"")
    summary = {"status": "completed", "global_step": 3, "determinism": {"level": level}}
    (folder / "metrics.json").write_text(json.dumps(summary))
    return folder


def goes_on_to_hydra(p) -> bool:
    return p.error is None and p.relaunch is None and not p.print_version and bool(p.hydra_argv)


# ---- --version, overrides that cannot be read, recipes ----------------------------------------------
@pytest.mark.parametrize("argv", [["--version"], ["seed=1", "--version"], [f"seed={'9' * 5000}", "--version"]])
def test_version_is_printed_and_nothing_else_happens(argv):
    p = plan_of(*argv, environ={"PYTHONHASHSEED": "0"})
    assert p.print_version and p.error is None and p.relaunch is None and p.hydra_argv == ()


def test_an_override_that_cannot_be_read_is_one_line_and_exit_1():
    p = plan_of(f"seed={'9' * 5000}", "determinism=strict")
    assert p.exit_code == 1 and p.relaunch is None  # before any re-launch
    assert p.error.startswith("cannot read the override seed=99999") and "(5005 characters)" in p.error
    assert len(p.error.splitlines()) == 1 and "9" * 100 not in p.error


def test_a_recipe_that_cannot_be_used_is_named_with_why():
    why = "recipe=piped: recipes/piped.yaml is a named pipe (FIFO), not a regular file"
    p = plan_of("recipe=piped", problems={"piped": why})
    assert (p.error, p.exit_code) == (why, 1)
    assert goes_on_to_hydra(plan_of("recipe=template", problems={"piped": why}))  # only when asked for


@pytest.mark.parametrize(
    "environ, folders",
    [({}, "recipes"), ({"FRAMEWORK_RECIPES": f"/a/mine{os.pathsep}/b/theirs"}, "/a/mine or /b/theirs")],
)
def test_an_unknown_recipe_names_the_folders_searched_and_the_recipes_there_are(environ, folders):
    p = plan_of("recipe=nowhere", environ=environ)
    assert p.exit_code == 1 and p.error.startswith(f"recipe=nowhere: no such recipe in {folders} (yours,")
    assert "There are: digits_cnn, template (python -m framework.recipe list" in p.error


@pytest.mark.parametrize("argv", [["recipe="], ["recipe=digits_cnn"], ["recipe=not/a/name"]])
def test_a_known_recipe_or_no_name_is_no_error(argv):
    """A value that is no recipe's name is Hydra's to refuse."""
    assert goes_on_to_hydra(plan_of(*argv))


# ---- determinism=strict: PYTHONHASHSEED before the interpreter starts --------------------------------
@pytest.mark.parametrize(
    "argv",
    [
        ["determinism=strict"],
        ["determinism.level=strict", "seed=1"],
        ["-m", "determinism=seeded,strict"],
        ["-m", "determinism=choice(off,strict)"],
        ["-m", "determinism=glob(st*)"],
    ],
)
def test_strict_on_the_command_line_relaunches_with_a_fixed_hash_seed(argv):
    environ = {"HOME": "/home/me", "PATH": "/usr/bin"}
    p = plan_of(*argv, environ=environ)
    assert p.relaunch == Relaunch((PYTHON, "-m", "framework", *argv), {**environ, "PYTHONHASHSEED": "0"})
    assert p.error is None and not p.join_process_group and p.make_room is None


@pytest.mark.parametrize("argv", [["determinism=seeded"], ["determinism=paranoid"], ["-m", "determinism=glob(se*)"]])
def test_no_relaunch_without_strict_on_the_command_line(argv):
    """A strict level from a config file (paranoid in the tests' conf) is checked when the run starts."""
    assert goes_on_to_hydra(plan_of(*argv))


def test_the_relaunched_process_goes_on_with_the_hash_seed_it_was_given():
    for seed in ("0", "7"):
        assert goes_on_to_hydra(plan_of("determinism=strict", environ={"PYTHONHASHSEED": seed}))


def test_a_resume_of_a_strict_run_that_names_no_level_relaunches(tmp_path):
    run = a_run(tmp_path / "run", level="strict")
    for argv in (
        ["resume=auto", f"hydra.run.dir={run}"],
        [f"resume={run}"],
        [f"resume={run / 'checkpoints'}"],
        [f"resume={run / 'checkpoints' / 'last.pt'}"],
    ):
        p = plan_of(*argv)
        assert p.relaunch == Relaunch((PYTHON, "-m", "framework", *argv), {"PYTHONHASHSEED": "0"}), argv
    # A level given on the command line is the one that counts; a seeded run is not re-launched.
    assert goes_on_to_hydra(plan_of(f"resume={run}", "determinism=seeded"))
    assert goes_on_to_hydra(plan_of(f"resume={a_run(tmp_path / 'seeded')}"))
    assert goes_on_to_hydra(plan_of("resume=auto"))  # a timestamped directory: nothing to read
    (run / "metrics.json").write_text("{not json")
    assert goes_on_to_hydra(plan_of(f"resume={run}"))  # the run itself says what is wrong


# ---- trainer.processes: torchrun ----------------------------------------------------------------------
def test_processes_on_the_command_line_become_torchrun():
    argv = ["model=mlp", "trainer.processes=3", "seed=1"]
    environ = {"PYTHONHASHSEED": "0", "HOME": "/home/me"}
    p = plan_of(*argv, environ=environ)
    torchrun = (PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3")
    assert p.relaunch == Relaunch((*torchrun, "-m", "framework", *argv), environ)


def test_strict_is_fixed_before_torchrun_starts_the_ranks():
    argv = ["determinism=strict", "trainer.processes=2"]
    first = plan_of(*argv)
    assert first.relaunch.argv == (PYTHON, "-m", "framework", *argv)  # the hash seed first ...
    then = plan_of(*argv, environ=first.relaunch.env)
    assert then.relaunch.argv[:3] == (PYTHON, "-m", "torch.distributed.run")  # ... then the ranks
    assert then.relaunch.env["PYTHONHASHSEED"] == "0"


@pytest.mark.parametrize("value", ["1", "0", "two", "${oc.env:N}"])
def test_processes_that_are_not_several_start_no_torchrun(value):
    assert goes_on_to_hydra(plan_of(f"trainer.processes={value}"))


def test_a_rank_under_torchrun_starts_no_torchrun_of_its_own():
    p = plan_of("trainer.processes=2", environ={**RANK_1, "PYTHONHASHSEED": "0"})
    assert goes_on_to_hydra(p)
    assert p.join_process_group


# ---- ranks under torchrun: one run directory ------------------------------------------------------------
def test_rank_0_joins_the_group_and_proposes_the_run_directory_hydra_would_name():
    p = plan_of("model=mlp", environ=RANK_0)
    assert p.join_process_group and p.run_dir_from_rank_0 == "outputs/2026-01-02/03-04-05-678901"
    assert p.hydra_argv == ("model=mlp", HELD_BACK)  # rank 0 writes Hydra's files, held back


def test_the_other_ranks_take_rank_0s_directory_and_write_no_hydra_files():
    p = plan_of("model=mlp", environ=RANK_1)
    assert p.join_process_group and p.run_dir_from_rank_0 is not None  # what rank 1 proposes is not taken
    assert p.hydra_argv == ("model=mlp", "hydra.output_subdir=null", "hydra/job_logging=disabled")
    agreed = with_run_dir(p.hydra_argv, "outputs/chosen by rank 0")
    assert agreed[-1] == "hydra.run.dir='outputs/chosen by rank 0'"


def test_a_run_directory_on_the_command_line_is_every_ranks():
    for environ in (RANK_0, RANK_1):
        p = plan_of("hydra.run.dir=runs/a", environ=environ)
        assert p.join_process_group and p.run_dir_from_rank_0 is None


def test_one_process_joins_no_group_and_proposes_nothing():
    p = plan_of("model=mlp", environ={"RANK": "0", "WORLD_SIZE": "1"})
    assert not p.join_process_group and p.run_dir_from_rank_0 is None


@pytest.mark.parametrize("environ", [RANK_0, RANK_1])
def test_a_sweep_under_torchrun_is_refused_on_every_rank(environ):
    p = plan_of("-m", "seed=0,1", environ=environ)
    assert p.exit_code == 1 and p.error.startswith("under torchrun a command runs one job")
    assert not p.join_process_group


# ---- a new run where a run already is: existing_run ----------------------------------------------------
def test_a_new_run_in_a_directory_that_holds_a_run_is_refused_naming_what_to_do(tmp_path):
    run = a_run(tmp_path / "run")
    for argv in ([f"hydra.run.dir={run}"], [f"hydra.run.dir={run}", "existing_run=refuse"]):
        p = plan_of(*argv)
        assert (p.error, p.exit_code) == (refusal(run, "hydra.run.dir"), 1)
        assert p.make_room is None and not p.join_process_group
    assert "already holds a run (status 'completed', step 3)" in p.error


def test_a_live_run_is_named_by_its_process(tmp_path):
    run = a_run(tmp_path / "run")
    asked = []

    def live(folder: Path) -> str:
        asked.append(folder)
        return f"{folder} is in use by process 4242 on host since today"

    p = plan_of(f"hydra.run.dir={run}", in_use=live)
    assert p.error == f"{run} is in use by process 4242 on host since today" and asked == [run]


def test_the_commands_own_probe_finds_no_live_process_in_a_finished_run_and_leaves_no_trace(tmp_path):
    run = a_run(tmp_path / "run")
    before = sorted(p.name for p in run.rglob("*"))
    assert held_by_a_live_process(run) is None
    assert sorted(p.name for p in run.rglob("*")) == before  # its lock taken and let go, its file removed


@pytest.mark.parametrize("policy", ["archive", "overwrite"])
def test_archive_and_overwrite_make_room_before_hydra(tmp_path, policy):
    run = a_run(tmp_path / "run")
    p = plan_of(f"hydra.run.dir={run}", f"existing_run={policy}", in_use=lambda folder: pytest.fail("asked"))
    assert p.make_room == MakeRoom(run, policy, "hydra.run.dir")  # it checks for a live run itself
    assert goes_on_to_hydra(p)
    assert run.is_dir() and (run / "metrics.json").is_file()  # the plan itself touches nothing


def test_a_directory_without_a_run_needs_no_room(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "logs_only" / ".hydra").mkdir(parents=True)
    for folder in (tmp_path / "empty", tmp_path / "logs_only", tmp_path / "new"):
        for policy in ("refuse", "archive"):
            p = plan_of(f"hydra.run.dir={folder}", f"existing_run={policy}", in_use=lambda f: "live")
            assert goes_on_to_hydra(p)
            assert p.make_room is None


def test_a_resume_or_a_wrong_policy_is_not_refused_here(tmp_path):
    run = a_run(tmp_path / "run")
    for argv in (["resume=auto"], [f"resume={run}"], ["existing_run=keep"]):
        p = plan_of(f"hydra.run.dir={run}", *argv, in_use=lambda f: "live")
        assert goes_on_to_hydra(p)  # a resume takes the lock when it starts; a wrong value is Hydra's
        assert p.make_room is None


def test_only_rank_0_decides_about_an_existing_run(tmp_path):
    run = a_run(tmp_path / "run")
    refused = plan_of(f"hydra.run.dir={run}", environ=RANK_0)
    assert refused.error == refusal(run, "hydra.run.dir") and refused.join_process_group  # torchrun stops the rest
    assert goes_on_to_hydra(plan_of(f"hydra.run.dir={run}", environ=RANK_1))
    archived = plan_of(f"hydra.run.dir={run}", "existing_run=archive", environ=RANK_1)
    assert archived.make_room is None


def test_a_sweep_is_checked_by_its_sweep_directory(tmp_path):
    sweep = tmp_path / "sweep"
    a_run(sweep / "0")
    p = plan_of("-m", f"hydra.sweep.dir={sweep}", "seed=0,1")
    assert p.error == refusal(sweep, "hydra.sweep.dir")
    p = plan_of("-m", f"hydra.sweep.dir={sweep}", "seed=0,1", "existing_run=overwrite")
    assert p.make_room == MakeRoom(sweep, "overwrite", "hydra.sweep.dir")
    # A sweep's runs are in its sweep directory: a run directory given to it is not looked at.
    assert goes_on_to_hydra(plan_of("-m", f"hydra.run.dir={sweep / '0'}", "seed=0,1"))
    assert goes_on_to_hydra(plan_of("-m", f"hydra.sweep.dir={tmp_path / 'new'}", "seed=0,1"))
    # And a single run is checked by its run directory, not a sweep directory it was given.
    assert goes_on_to_hydra(plan_of(f"hydra.sweep.dir={sweep}"))


# ---- a resumed run continues in its own directory ------------------------------------------------------
def test_a_resume_that_names_a_run_or_a_checkpoint_runs_in_that_runs_directory(tmp_path):
    run = a_run(tmp_path / "run")
    (tmp_path / "loose.pt").write_bytes(b"")
    for resume, folder in (
        (run, run),
        (run / "checkpoints", run),
        (run / "checkpoints" / "last.pt", run),
        (tmp_path / "loose.pt", tmp_path),
    ):
        p = plan_of(f"resume={resume}", "seed=1")
        assert p.hydra_argv == (
            f"resume={resume}",
            "seed=1",
            f"hydra.run.dir={quoted(str(folder.resolve()))}",
            HELD_BACK,
        )


def test_a_resume_keeps_a_run_directory_given_and_auto_adds_none(tmp_path):
    run = a_run(tmp_path / "run")
    given = plan_of(f"resume={run}", "hydra.run.dir=elsewhere")
    assert given.hydra_argv == (f"resume={run}", "hydra.run.dir=elsewhere", HELD_BACK)
    assert plan_of("resume=auto").hydra_argv == ("resume=auto", HELD_BACK)
    assert plan_of("resume=null").hydra_argv == ("resume=null", HELD_BACK)  # no resume
    assert plan_of(f"resume={tmp_path / 'missing'}").hydra_argv[1:] == (HELD_BACK,)  # the run says it is missing


def test_a_run_directory_with_a_quote_and_spaces_reaches_hydra_whole(tmp_path):
    run = a_run(tmp_path / "it's a run, =1")
    p = plan_of(f"resume={quoted(str(run))}")
    assert f"hydra.run.dir={quoted(str(run.resolve()))}" in p.hydra_argv


# ---- Hydra's files held back, the place of added overrides, HYDRA_FULL_ERROR -----------------------------
def test_hydras_files_are_held_back_unless_the_user_says_where_they_go():
    assert plan_of("seed=1").hydra_argv == ("seed=1", HELD_BACK)
    assert HELD_BACK == f"hydra.output_subdir='.hydra/incoming-{os.getpid()}-${{oc.select:hydra.job.num,0}}'"
    for mine in ("hydra.output_subdir=meta", "hydra.output_subdir=null"):
        assert plan_of("seed=1", mine).hydra_argv == ("seed=1", mine)


def test_added_overrides_follow_the_users_before_any_flag():
    """Hydra's parser takes the overrides as one run of words: a second run after a flag is refused."""
    assert plan_of("-m", "seed=0,1", "--cfg", "job").hydra_argv == ("-m", "seed=0,1", HELD_BACK, "--cfg", "job")
    assert plan_of("--cfg", "job", "seed=1").hydra_argv == ("--cfg", "job", "seed=1", HELD_BACK)


@pytest.mark.parametrize("value, tracebacks", [("1", True), ("0", False), ("", False), (None, False)])
def test_hydra_full_error_shows_tracebacks_only_when_it_is_1(value, tracebacks):
    p = plan_of("seed=1", environ={} if value is None else {"HYDRA_FULL_ERROR": value})
    assert p.show_tracebacks is tracebacks
    assert p.set_environ == {"HYDRA_FULL_ERROR": "1"}  # Hydra's errors always reach the command


def test_the_plan_changes_nothing_around_it(tmp_path):
    environ = {"HYDRA_FULL_ERROR": "0"}
    run = a_run(tmp_path / "run", level="strict")
    before = (dict(os.environ), sorted(p.name for p in tmp_path.rglob("*")))
    plan_of(f"hydra.run.dir={run}", environ=environ)
    plan_of(f"resume={run}", environ=environ)
    assert environ == {"HYDRA_FULL_ERROR": "0"}
    assert (dict(os.environ), sorted(p.name for p in tmp_path.rglob("*"))) == before


@pytest.mark.parametrize("key", ["hydra.run.dir", "hydra.sweep.dir"])
def test_a_url_as_the_run_or_sweep_directory_is_refused_pointing_to_checkpoint_remote(key, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where a folder named `s3:` would have appeared
    argv = ([] if key == "hydra.run.dir" else ["-m", "seed=0,1"]) + [f"{key}=s3://bucket/runs/x"]
    planned = plan_of(*argv)
    assert planned.exit_code == 1 and len(planned.error.splitlines()) == 1, planned
    assert f"{key}=s3://bucket/runs/x" in planned.error and "checkpoint.remote=s3://bucket/runs/x" in planned.error
    assert list(tmp_path.iterdir()) == []
