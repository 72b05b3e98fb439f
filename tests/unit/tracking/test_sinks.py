"""The fan-out the loop talks to (MetricsLogger) and how the `logger` section chooses sinks."""

from __future__ import annotations

import builtins
import logging
import sys
import types

import pytest
from omegaconf import OmegaConf

from framework.config.errors import ConfigError
from framework.tracking.metrics_logger import MetricsLogger, chosen_sinks
from framework.tracking.sinks import MetricSink, RunInfo
from framework.tracking.tensorboard_sink import TensorBoardSink


class Recording(MetricSink):
    """A sink of one's own: records every call."""

    def __init__(self, calls: list, name: str = "rec", can_rewind: bool = True, fail_close: bool = False):
        self.calls, self.name, self.can_rewind, self.fail_close = calls, name, can_rewind, fail_close

    def open(self, run):
        self.calls.append((self.name, "open", run.resume_step))

    def rewind(self, step):
        self.calls.append((self.name, "rewind", step))
        return self.can_rewind

    def log_config(self, config_yaml, step):
        self.calls.append((self.name, "config", step))

    def log(self, event, epoch, step, metrics):
        self.calls.append((self.name, event, step, dict(metrics)))

    def log_final(self, metrics, hparams, step):
        self.calls.append((self.name, "final", step, dict(hparams)))

    def close(self, status):
        self.calls.append((self.name, "close", status))
        if self.fail_close:
            raise RuntimeError("store went away")


def run_info(tmp_path, resume_step=None):
    return RunInfo(tmp_path, "run seed=0", {"seed": 0}, {"seed": 0}, resume_step)


def test_every_call_reaches_metrics_jsonl_and_each_sink_in_order(tmp_path):
    calls = []
    logger = MetricsLogger({"a": Recording(calls, "a"), "b": Recording(calls, "b")})
    logger.open(run_info(tmp_path))
    logger.log_config("seed: 0\n", 0)
    logger.log("step", 0, 1, {"train/loss": 2.0, "lr": 0.1})
    logger.log_final({"val/acc": 0.5}, {"seed": 0}, 1)
    logger.close("completed")
    assert [c[:2] for c in calls] == [
        ("a", "open"), ("b", "open"), ("a", "config"), ("b", "config"), ("a", "step"), ("b", "step"),
        ("a", "final"), ("b", "final"), ("a", "close"), ("b", "close")]  # fmt: skip
    assert calls[-1] == ("b", "close", "completed")
    line = '{"event": "step", "epoch": 0, "step": 1, "train/loss": 2.0, "lr": 0.1}\n'
    assert (tmp_path / "metrics.jsonl").read_text() == line
    assert logger.lines == 1


def test_a_fresh_run_rewinds_nothing_and_a_resumed_one_rewinds_every_sink(tmp_path):
    calls = []
    MetricsLogger({"a": Recording(calls, "a")}).open(run_info(tmp_path))
    assert ("a", "rewind", 0) not in calls and not any(c[1] == "rewind" for c in calls)
    MetricsLogger({"a": Recording(calls, "a")}).open(run_info(tmp_path, resume_step=7))
    assert ("a", "rewind", 7) in calls


def test_a_sink_that_cannot_rewind_says_so_in_the_log(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="framework"):
        MetricsLogger({"mine": Recording([], can_rewind=False)}).open(run_info(tmp_path, resume_step=5))
    assert "logger.mine cannot rewind to step 5" in caplog.text
    assert "metrics.jsonl" not in caplog.text  # it can


def test_a_sink_whose_close_fails_leaves_the_others_closed_and_the_error_logged(tmp_path, caplog):
    calls = []
    logger = MetricsLogger({"a": Recording(calls, "a", fail_close=True), "b": Recording(calls, "b")})
    logger.open(run_info(tmp_path))
    with caplog.at_level(logging.ERROR, logger="framework"):
        logger.close("preempted")
    assert ("b", "close", "preempted") in calls and "store went away" in caplog.text
    assert logger.jsonl.file is None


def test_a_rank_other_than_0_logs_nowhere(tmp_path):
    calls = []
    logger = MetricsLogger({"a": Recording(calls, "a")}, enabled=False)
    logger.open(run_info(tmp_path))
    logger.log("step", 0, 1, {"train/loss": 1.0})
    logger.close("completed")
    assert calls == [] and not (tmp_path / "metrics.jsonl").exists() and logger.lines == 0


# ---- choosing sinks by config -------------------------------------------------------------------
def test_the_logger_options_compose_to_sinks(compose):
    assert list(chosen_sinks(compose().logger)) == ["tensorboard"]
    assert chosen_sinks(compose(["logger=none"]).logger) == {}
    both = chosen_sinks(compose(["logger=[tensorboard,mlflow]"]).logger)
    assert [type(s).__name__ for s in both.values()] == ["TensorBoardSink", "MlflowSink"]


def test_the_layout_before_sinks_had_targets_still_chooses(compose):
    # A checkpoint of an older version holds `logger: {tensorboard: true}`; `false` was logger=none.
    assert isinstance(chosen_sinks(OmegaConf.create({"tensorboard": True}))["tensorboard"], TensorBoardSink)
    assert chosen_sinks(OmegaConf.create({"tensorboard": False})) == {}
    assert chosen_sinks(compose(["logger.tensorboard=false"]).logger) == {}


class PrefixedSink(MetricSink):
    def __init__(self, prefix: str):
        self.prefix = prefix


def test_a_users_sink_is_built_with_its_arguments_beside_the_chosen_ones(compose, monkeypatch):
    monkeypatch.setitem(sys.modules, "my_sinks", types.SimpleNamespace(PrefixedSink=PrefixedSink))
    cfg = compose(["+logger.mine._target_=my_sinks.PrefixedSink", "+logger.mine.prefix=x/"])
    sinks = chosen_sinks(cfg.logger)
    assert list(sinks) == ["tensorboard", "mine"] and sinks["mine"].prefix == "x/"
    refusal = r"^logger.mine.prefx: my_sinks.PrefixedSink takes no argument 'prefx'. It takes: prefix$"
    with pytest.raises(ConfigError, match=refusal):
        chosen_sinks(compose(["+logger.mine._target_=my_sinks.PrefixedSink", "+logger.mine.prefx=x/"]).logger)


@pytest.mark.parametrize(
    "section, message",
    [
        ({"mine": 3}, "logger.mine=3: a sink is a section with a _target_"),
        ({"mine": {"prefix": "x"}}, "logger.mine={'prefix': 'x'}: a sink is a section with a _target_"),
        ({"mine": {"_target_": "no_such_module.Sink"}}, "logger.mine._target_=no_such_module.Sink: cannot import it"),
        (
            {"tensorboard": {"_target_": "framework.tracking.tensorboard_sink.TensorBoardSink", "flush_secs": 3}},
            "logger.tensorboard.flush_secs: framework.tracking.tensorboard_sink.TensorBoardSink takes no argument "
            "'flush_secs'. It takes none.",
        ),
    ],
)
def test_a_wrong_sink_is_refused_in_one_line_naming_the_key(section, message):
    with pytest.raises(ConfigError) as refused:
        chosen_sinks(OmegaConf.create(section))
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)


def test_without_mlflow_installed_logger_mlflow_says_how_to_install_it(compose, monkeypatch):
    cfg = compose(["logger=mlflow"])
    real_import = builtins.__import__

    def no_mlflow(name, *args, **kwargs):
        if name == "mlflow" or name.startswith("mlflow."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mlflow)
    with pytest.raises(ConfigError) as refused:
        chosen_sinks(cfg.logger)
    message = str(refused.value)
    assert message.startswith("logger=mlflow needs MLflow") and "pip install 'framework[mlflow]'" in message
    assert "\n" not in message
