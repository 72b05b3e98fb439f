"""Where the MLflow sink logs: its default store, and a store MLflow refuses named in one line."""

from __future__ import annotations

import pytest

from framework.config.errors import ConfigError
from framework.tracking.mlflow_sink import MlflowSink, default_tracking_uri
from framework.tracking.sinks import RunInfo


def test_the_default_store_is_in_the_outputs_folder_that_holds_the_run(tmp_path, monkeypatch):
    run_dir = tmp_path / "project" / "outputs" / "multirun" / "2026-01-01" / "10-00-00" / "3"
    assert default_tracking_uri(run_dir) == f"sqlite:///{tmp_path}/project/outputs/mlflow.db"
    monkeypatch.chdir(tmp_path)  # a run directory outside any outputs/: the current directory's
    assert default_tracking_uri(tmp_path / "elsewhere" / "run") == f"sqlite:///{tmp_path}/outputs/mlflow.db"


def test_a_store_mlflow_refuses_is_named_in_one_line_with_where_it_came_from(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    try:
        MlflowClient(tracking_uri=str(tmp_path / "probe"))
        pytest.skip("this MLflow still takes its plain file store")
    except MlflowException:
        pass
    sink = MlflowSink(tracking_uri=str(tmp_path / "mlruns"), experiment_name="x", run_name=None)
    with pytest.raises(ConfigError) as refused:
        sink.open(RunInfo(tmp_path / "run", "run", {}, {}, None))
    message = str(refused.value)
    assert message.startswith(f"logger.mlflow.tracking_uri={tmp_path / 'mlruns'}: MLflow refuses this store (")
    assert "sqlite:///PATH/mlflow.db" in message and "\n" not in message
