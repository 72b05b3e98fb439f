"""What only the command line shows of callbacks: a callback that raises, or a callbacks entry that
cannot be built, ends the command with exit status 1 and one line naming it (the calls and the
state are tests/integration/test_callbacks.py's)."""

from __future__ import annotations

from helpers import assert_one_line_error, finish_together, read_summary, start_cli

FAST = ["model=mlp", "model.hidden=[32]", "trainer.max_epochs=1", "logger=none"]


def test_a_failing_or_unbuildable_callback_ends_the_command_in_one_line(tmp_path):
    done = finish_together(
        {
            "raises": start_cli(
                tmp_path / "raises",
                *FAST,
                "+callbacks.picky._target_=user_modules.FailsAtStep",
                "+callbacks.picky.step=3",
            ),
            "unknown argument": start_cli(
                tmp_path / "unknown",
                *FAST,
                "+callbacks.picky._target_=user_modules.FailsAtStep",
                "+callbacks.picky.step=3",
                "+callbacks.picky.every=2",
            ),
        }
    )
    raised = done["raises"]
    assert_one_line_error(raised, 1)
    assert raised.stderr == (
        "Error: callback picky (FailsAtStep) failed in on_step_end at step 3: ValueError: step 3 is not one I like\n"
    )
    summary = read_summary(tmp_path / "raises")
    assert summary["status"] == "failed" and "callback picky (FailsAtStep)" in summary["error"]
    assert_one_line_error(
        done["unknown argument"], 1, "callbacks.picky.every: user_modules.FailsAtStep takes no argument 'every'"
    )
    assert not (tmp_path / "unknown" / "metrics.json").exists()  # refused before the run started
