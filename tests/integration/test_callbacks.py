"""User callbacks, trained in process: each named point called in order with the run's view; a
stateful callback resumed exactly; a callback's random numbers disturb nothing and repeat at the
same step across a resume; the example of docs/callbacks.md runs as written.

The callbacks are tests/user_modules.py's (CallRecorder writes each call it gets to
RUN_DIR/callback_calls.jsonl, RandomDraws keeps one number a step from run.generator()) and the
blocks of docs/callbacks.md marked `<!-- example: my_callbacks.py`, written to a file of that
name as they are (WeightHistogram, BestAccuracy), so that the page cannot drift from the code."""

from __future__ import annotations

import json
import re
import shutil
import sys

import pytest
import torch
from helpers import ROOT, read_jsonl, read_summary, train_in_process

from framework.cli.compare import compare as differences

CALLBACKS = [
    "model=mlp",  # with dropout: a draw from the global torch stream would change the trajectory
    "model.hidden=[32]",
    "trainer.max_epochs=2",  # 20 steps an epoch (shifted digits, shuffled): 40 in all
    "trainer.val_every_n_steps=5",
    "logger=none",
]
WITH = [
    "+callbacks.calls._target_=user_modules.CallRecorder",
    "+callbacks.draws._target_=user_modules.RandomDraws",
    "+callbacks.weights._target_=my_callbacks.WeightHistogram",  # docs/callbacks.md's
    "+callbacks.weights.every_n_steps=10",
    "+callbacks.best._target_=my_callbacks.BestAccuracy",
]
GO_ON = "trainer.max_steps=null"
EXAMPLE = re.compile(r"<!-- example: my_callbacks.py .*?-->\n```python\n(.*?)```", re.DOTALL)


@pytest.fixture(scope="module", autouse=True)
def doc_example(tmp_path_factory):
    """docs/callbacks.md's example blocks, importable as my_callbacks while this module's tests run."""
    blocks = EXAMPLE.findall((ROOT / "docs" / "callbacks.md").read_text())
    assert len(blocks) == 2, "docs/callbacks.md: the two example blocks, each after its marker"
    folder = tmp_path_factory.mktemp("docs_example")
    (folder / "my_callbacks.py").write_text("\n\n".join(blocks))
    sys.path.insert(0, str(folder))
    yield
    sys.path.remove(str(folder))
    sys.modules.pop("my_callbacks", None)


def test_the_readme_shows_the_same_callback_as_the_docs():
    """The README's callback written from scratch is docs/callbacks.md's first block, which runs here."""
    readme = EXAMPLE.findall((ROOT / "README.md").read_text())
    assert readme == EXAMPLE.findall((ROOT / "docs" / "callbacks.md").read_text())[:1]


def calls(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "callback_calls.jsonl").read_text().splitlines()]


def last_state(run_dir) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)


@pytest.fixture
def straight(trained_run):
    """With the callbacks, trained once per test session (copy it to change it)."""
    return trained_run(*CALLBACKS, *WITH)


def expected_points(run_dir) -> list[tuple[str, int]]:
    """The calls the config asks for, from the validations metrics.jsonl records: a save follows
    each epoch's end and each validation inside an epoch that improved val/loss (best.pt)."""
    validated = {line["step"]: line for line in read_jsonl(run_dir) if line["event"] in ("val", "epoch")}
    points, best = [("on_fit_start", 0)], None
    for step in range(1, 41):
        points.append(("on_step_end", step))
        if step in validated:
            value = validated[step]["val/loss"]
            improved = best is None or value < best
            best = value if improved else best
            points.append(("on_validation_end", step))
            if improved or validated[step]["event"] == "epoch":
                points.append(("on_save", step))
    return [*points, ("on_fit_end", 40)]


def test_every_point_is_called_in_order_with_the_view_of_the_run(straight):
    seen = calls(straight)
    assert [(c["point"], c["step"]) for c in seen] == expected_points(straight)
    assert {(c["model"], c["run_dir"], c["is_main"]) for c in seen} == {("MLP", str(straight), True)}
    history = {line["step"]: line for line in read_jsonl(straight) if line["event"] in ("val", "epoch")}
    for call in seen:
        point, step = call["point"], call["step"]
        if point == "on_step_end":
            assert call["epoch"] == (step - 1) // 20  # completed epochs: the epoch's end comes after its last step
        if point == "on_validation_end":
            assert call["epoch"] == step // 20
            shown = {k: v for k, v in history[step].items() if k not in ("event", "epoch", "step")}
            assert call["metrics"] == shown  # val/ metrics; at an epoch's end train/loss and lr too
        if point == "on_save":
            assert "last.pt" in call["saved"] and all((straight / "checkpoints" / f).is_file() for f in call["saved"])
        else:
            assert call["saved"] == []
    assert seen[0]["metrics"] == {} and seen[-1]["epoch"] == 2


def test_a_callback_drawing_random_numbers_every_step_leaves_training_as_it_was(straight, trained_run):
    without = trained_run(*CALLBACKS)
    assert read_summary(straight)["fingerprint"] == read_summary(without)["fingerprint"]
    assert differences(straight, without) == []
    draws = last_state(straight)["callbacks_state"]["draws"]
    assert draws["steps"] == list(range(1, 41)) and len(set(draws["draws"].tolist())) == 40


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """Stopped by max_steps mid-epoch, at step 23 (copy it to resume it)."""
    run = tmp_path_factory.mktemp("stopped") / "run"
    train_in_process(run, *CALLBACKS, *WITH, "trainer.max_steps=23")
    assert last_state(run)["callbacks_state"]["draws"]["steps"] == list(range(1, 24))
    return run


def resumed(stopped, tmp_path):
    run = tmp_path / "resumed"
    shutil.copytree(stopped, run)
    train_in_process(run, *CALLBACKS, *WITH, f"resume={run}", GO_ON)
    return run


def test_a_stateful_callback_is_resumed_exactly(straight, stopped, tmp_path):
    run = resumed(stopped, tmp_path)
    assert differences(straight, run) == []
    mine, theirs = last_state(run)["callbacks_state"]["draws"], last_state(straight)["callbacks_state"]["draws"]
    assert mine["steps"] == theirs["steps"] == list(range(1, 41))
    assert torch.equal(mine["draws"], theirs["draws"])  # the same numbers at the same steps, after the resume too
    assert after_the_resume(calls(run), run) == after_the_resume(calls(straight), straight)
    # docs/callbacks.md's examples: each histogram once (the resumed writer purged nothing it needed)
    # and the same as the straight run's; the best accuracy carried across the resume.
    mine, theirs = weight_histograms(run), weight_histograms(straight)
    assert {t: [(e.step, e.histogram_value) for e in events] for t, events in mine.items()} == {
        t: [(e.step, e.histogram_value) for e in events] for t, events in theirs.items()
    }
    assert last_state(run)["callbacks_state"]["best"] == last_state(straight)["callbacks_state"]["best"]


def test_the_documented_example_writes_the_weights_histograms_every_n_steps(straight):
    final = last_state(straight)["model_state_dict"]  # at step 40
    histograms = weight_histograms(straight)
    assert sorted(histograms) == sorted(final)  # every parameter (MLP has no buffers)
    for name, events in histograms.items():
        assert [event.step for event in events] == [10, 20, 30, 40]
        last = events[-1].histogram_value
        weights = final[name].double()
        assert last.num == weights.numel() and (last.min, last.max) == (weights.min().item(), weights.max().item())
        assert last.sum == pytest.approx(weights.sum().item(), rel=1e-6, abs=1e-6)


def test_the_documented_stateful_example_keeps_the_best_accuracy(straight):
    seen = [(line["step"], line["val/acc"]) for line in read_jsonl(straight) if line["event"] in ("val", "epoch")]
    best = max(value for _, value in seen)
    first = next(step for step, value in seen if value == best)
    assert last_state(straight)["callbacks_state"]["best"] == {"best": best, "step": first}


def weight_histograms(run_dir) -> dict[str, list]:
    """What TensorBoard's own reader finds in the example's folder: tag -> its histogram events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard" / "weights"), size_guidance={"histograms": 0})
    events.Reload()
    return {tag: events.Histograms(tag) for tag in events.Tags()["histograms"]}


def after_the_resume(seen: list[dict], run_dir) -> list[dict]:
    """The calls after step 23 (where the stopped run was resumed), the run's own folder left out."""
    return [{**call, "run_dir": call["run_dir"] == str(run_dir)} for call in seen if call["step"] > 23]


def test_teeth_a_resume_that_skips_the_callbacks_state_differs(straight, stopped, tmp_path, monkeypatch):
    monkeypatch.setenv("FRAMEWORK_TEST_SKIP_RESTORE", "callbacks")
    run = resumed(stopped, tmp_path)
    mine, theirs = last_state(run)["callbacks_state"]["draws"], last_state(straight)["callbacks_state"]["draws"]
    assert mine["steps"] == list(range(24, 41)) != theirs["steps"]
    assert torch.equal(mine["draws"], theirs["draws"][23:])  # keyed by step: the numbers still agree
