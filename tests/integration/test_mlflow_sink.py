"""logger=mlflow, read back with MLflow's own client from a local SQLite store: params, metrics per
step, final metrics, artifacts; a stopped and resumed run is one MLflow run without a step twice."""

from __future__ import annotations

import json
import os
import signal
from collections import Counter

import pytest
import torch
import yaml
from helpers import read_jsonl, read_summary, read_tensorboard, train_in_process

import framework.engine.training
from framework.config.resolved import flatten
from framework.runs.run_dir import not_ours
from framework.tracking.sinks import final_tags, plain_value

pytest.importorskip("mlflow")

SHORT = ["model=mlp", "model.hidden=[16]", "data=synthetic", "trainer.max_epochs=1", "trainer.log_every_n_steps=1"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the module (creating its tables takes seconds): (its URI, a client)."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    return uri, MlflowClient(tracking_uri=uri)


def mlflow_run(client, run_dir):
    return client.get_run(json.loads((run_dir / "mlflow_run.json").read_text())["run_id"])


def history(client, run_id, key):
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def test_a_run_logs_params_metrics_per_step_final_metrics_and_artifacts_beside_tensorboard(store, tmp_path):
    uri, client = store
    run_dir = tmp_path / "run"
    summary = train_in_process(
        run_dir, *SHORT, "trainer.max_steps=4", "optimizer.lr=0.05", "logger=[tensorboard,mlflow]",
        f"logger.mlflow.tracking_uri={uri}",
    )  # fmt: skip
    run = mlflow_run(client, run_dir)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "run model=framework.models.MLP model.hidden=[16] trainer.max_epochs=1 " \
        "trainer.log_every_n_steps=1 trainer.max_steps=4 optimizer.lr=0.05 seed=0"  # fmt: skip
    # Params: the resolved config, flattened, as the checkpoint holds it.
    config = yaml.safe_load(torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["config"])
    assert run.data.params == {k: str(plain_value(v)) for k, v in flatten(config).items()}
    assert run.data.params["optimizer.lr"] == "0.05" and run.data.params["model.hidden"] == "[16]"
    # Metrics per step, as metrics.jsonl has them.
    steps = {r["step"]: r["train/loss"] for r in read_jsonl(run_dir) if r["event"] == "step"}
    assert list(steps) == [1, 2, 3, 4]
    assert history(client, run.info.run_id, "train/loss") == steps
    # The final metrics: each metric's last point, as metrics.json has it.
    assert {k: run.data.metrics[k] for k in final_tags(summary["metrics"])} == pytest.approx(
        final_tags(summary["metrics"])
    )
    assert set(final_tags(summary["metrics"])) == {"train/loss_epoch", "val/loss", "val/acc", "test/loss", "test/acc"}
    # Artifacts: metrics.json as the run left it, and the resolved config.
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"metrics.json", "config.yaml"}
    local = client.download_artifacts(run.info.run_id, "metrics.json", str(tmp_path))
    assert json.loads(open(local).read()) == read_summary(run_dir)
    # TensorBoard got the same run.
    board = read_tensorboard(run_dir)
    assert [e.step for e in board["events"].Scalars("train/loss")] == [1, 2, 3, 4]
    assert board["hparams"]["optimizer.lr"] == pytest.approx(0.05)


def test_a_stopped_and_resumed_run_is_one_mlflow_run_with_every_step_once(store, tmp_path):
    uri, client = store
    run_dir = tmp_path / "resumed"
    common = [*SHORT, "logger=mlflow", f"logger.mlflow.tracking_uri={uri}", "logger.mlflow.experiment_name=resumes"]
    train_in_process(run_dir, *common, "trainer.max_steps=6", "checkpoint.every_n_steps=2")
    first = mlflow_run(client, run_dir)
    assert max(history(client, first.info.run_id, "train/loss")) == 6
    # Back to the checkpoint of step 4, as after a crash at step 6, then on to step 8: steps 5 and 6
    # are trained again, and MLflow, which cannot delete their points, must not get them twice.
    train_in_process(run_dir, *common, "trainer.max_steps=8", f"resume={run_dir / 'checkpoints' / 'step_00000004.pt'}")
    assert read_summary(run_dir)["resumes"][-1]["global_step"] == 4

    experiment = client.get_experiment_by_name("resumes")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [first.info.run_id]  # one MLflow run, continued
    run = mlflow_run(client, run_dir)
    assert run.info.status == "FINISHED" and run.info.run_name == first.info.run_name
    for key in run.data.metrics:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert Counter(steps).most_common(1)[0][1] == 1, (key, sorted(steps))
    # The whole history, and the same values as the resumed run's metrics.jsonl (an exact resume).
    jsonl = {r["step"]: r["train/loss"] for r in read_jsonl(run_dir) if r["event"] == "step"}
    assert list(jsonl) == list(range(1, 9))
    assert history(client, run.info.run_id, "train/loss") == jsonl
    assert sorted(history(client, run.info.run_id, "test/acc")) == [6, 8]
    assert not_ours(run_dir) is None  # mlflow_run.json is a run's file: existing_run=archive may move the run


def test_a_preempted_run_is_killed_in_mlflow_and_its_resume_finishes_it(store, tmp_path, monkeypatch):
    uri, client = store
    run_dir = tmp_path / "preempted"
    common = [*SHORT, "logger=mlflow", f"logger.mlflow.tracking_uri={uri}", "trainer.max_steps=5"]
    real_step, steps = framework.engine.training.train_step, []

    def step_then_signal(*args, **kwargs):  # SIGUSR1 during step 3, as a cluster would send it
        steps.append(1)
        if len(steps) == 3:
            os.kill(os.getpid(), signal.SIGUSR1)
        return real_step(*args, **kwargs)

    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: None)  # what the stop hands over to
    try:
        with monkeypatch.context() as m:
            m.setattr(framework.engine.training, "train_step", step_then_signal)
            assert train_in_process(run_dir, *common)["status"] == "preempted"
    finally:
        signal.signal(signal.SIGUSR1, previous)
    stopped = mlflow_run(client, run_dir)
    assert stopped.info.status == "KILLED" and sorted(history(client, stopped.info.run_id, "train/loss")) == [1, 2, 3]
    train_in_process(run_dir, *common, "resume=auto")
    resumed = mlflow_run(client, run_dir)
    assert resumed.info.run_id == stopped.info.run_id and resumed.info.status == "FINISHED"
    assert sorted(history(client, resumed.info.run_id, "train/loss")) == [1, 2, 3, 4, 5]
