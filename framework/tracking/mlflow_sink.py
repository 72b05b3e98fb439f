"""MLflow: params, metrics per step, the final metrics, and metrics.json and the config as
artifacts, in one MLflow run per run directory (`logger=mlflow`; `pip install 'framework[mlflow]'`)."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from framework.atomic import replace_atomically
from framework.config.errors import ConfigError
from framework.config.resolved import flatten
from framework.runs import layout
from framework.tracking.sinks import MetricSink, RunInfo, final_tags, per_step, plain_value, scalar_tag

log = logging.getLogger("framework")

# metrics.json's statuses as MLflow's; any other (preempted, interrupted) is KILLED.
STATUSES = {"completed": "FINISHED", "failed": "FAILED"}


class MlflowSink(MetricSink):
    """Logs to MLflow through `MlflowClient`, not the fluent API's global active run, so that the
    jobs of a sweep run one after another in one process never log into each other's run.

    - Where: `tracking_uri`, else the `MLFLOW_TRACKING_URI` environment variable, else a SQLite
      store `sqlite:///<outputs>/mlflow.db` where <outputs> is the nearest folder named `outputs`
      that holds the run directory (Hydra's run and sweep directories are under the current
      directory's outputs/, so the runs of a project share one store wherever they are resumed
      from), or, for a run directory outside any `outputs` folder, outputs/ in the current
      directory. An experiment this sink creates in a SQLite store keeps its artifacts beside the
      database, in mlartifacts/. (MLflow 3.17+ refuses its plain file store unless
      MLFLOW_ALLOW_FILE_STORE=true: a SQLite store needs no server and no such setting.)
    - The run: `experiment_name`; named `run_name`, or by default the run directory's name and
      the keys its command line (or sweep) set. Its id is kept in the run directory's
      mlflow_run.json: a resumed run continues the same MLflow run.
    - Params: the resolved config, flattened (`optimizer.lr`, ...). A value longer than MLflow
      takes (6000 characters) is cut to that length, and the run's log says which; a key longer
      than MLflow takes (250 characters) is left out. MLflow keeps a param's first value: a key a
      resumed run changes (logger, checkpoint, max_steps, ...) keeps the value it first had there,
      and the run's log says so (metrics.json's `resumes` lists the changes).
    - Metrics: each logged step's at step=global_step, with the names TensorBoard's scalars have
      (an epoch's mean loss is `train/loss_epoch`); the final metrics are the last points of those
      series. At the end of a completed run: metrics.json and config.yaml (the resolved config)
      as artifacts.
    - Resuming: MLflow cannot delete a point. A run killed after its last checkpoint logged points
      past that checkpoint's step; the resumed run does not log those steps again (for each
      metric, only steps after the last point it has), so no step is logged twice. An exact
      resume computes the same values at those steps; a resume that changes the trajectory
      (allow_config_changes) keeps the killed run's values there, and says so in the log.
    """

    def __init__(self, tracking_uri: str | None, experiment_name: str, run_name: str | None):
        self.client_class = mlflow_client_class()
        self.tracking_uri, self.experiment_name, self.run_name = tracking_uri, str(experiment_name), run_name
        self.client = None
        self.run_id: str | None = None
        self.last_step: dict[str, int] = {}  # per metric: the step of its last point in the MLflow run
        self.config_yaml = ""

    def open(self, run: RunInfo) -> None:
        self.run = run
        uri = self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(run.run_dir)
        if uri.startswith("sqlite:///"):
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.client = self.store(uri)
        self.run_id = self.recorded_run(uri) if run.resume_step is not None else None
        if self.run_id is not None:
            self.client.update_run(self.run_id, status="RUNNING")
            log.info("mlflow: continuing run %s in %s", self.run_id, uri)
        else:
            experiment_id = self.experiment_id(uri)
            name = self.run_name or run.name
            tags = {"framework.run_dir": str(run.run_dir.resolve())}
            self.run_id = self.client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
            log.info("mlflow: run %s (%s) in %s, experiment %s", self.run_id, name, uri, self.experiment_name)
        record = {"tracking_uri": uri, "run_id": self.run_id}
        replace_atomically(run.run_dir / layout.MLFLOW_RUN, json.dumps(record, indent=2) + "\n", durable=False)

    def store(self, uri: str):
        """A client of the store at `uri`; a store MLflow refuses (its plain file store, since 3.17)
        is named in one line with where the URI came from."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client_class(tracking_uri=uri)
        except MlflowException as e:
            source = "logger.mlflow.tracking_uri" if self.tracking_uri else "MLFLOW_TRACKING_URI"
            first = " ".join(str(e).split()).split(". ")[0]
            raise ConfigError(
                f"{source}={uri}: MLflow refuses this store ({first}). Give a SQLite store, sqlite:///PATH/mlflow.db, "
                "or a tracking server's URL"
            ) from e

    def recorded_run(self, uri: str) -> str | None:
        """The MLflow run this run directory logged to before, if this store has it."""
        try:
            record = json.loads((self.run.run_dir / layout.MLFLOW_RUN).read_text())
        except (OSError, ValueError):
            log.info("mlflow: no %s in the run directory: the resumed run starts a new MLflow run", layout.MLFLOW_RUN)
            return None
        if record.get("tracking_uri") != uri:
            log.warning(
                "mlflow: the run logged to %s before, this resume to %s: a new MLflow run starts there",
                record.get("tracking_uri"),
                uri,
            )
            return None
        from mlflow.exceptions import MlflowException

        try:
            found = self.client.get_run(record["run_id"])
        except (MlflowException, KeyError):
            found = None
        if found is None or found.info.lifecycle_stage != "active":
            log.warning("mlflow: run %s is not in %s (deleted?): a new MLflow run starts", record.get("run_id"), uri)
            return None
        return found.info.run_id

    def experiment_id(self, uri: str) -> str:
        from mlflow.exceptions import MlflowException

        experiment = self.client.get_experiment_by_name(self.experiment_name)
        if experiment is None:
            where = None
            if uri.startswith("sqlite:///"):
                where = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
            try:
                return self.client.create_experiment(self.experiment_name, artifact_location=where)
            except MlflowException:  # another job of a parallel sweep created it first
                experiment = self.client.get_experiment_by_name(self.experiment_name)
                if experiment is None:
                    raise
        if experiment.lifecycle_stage != "active":
            raise ConfigError(
                f"logger.mlflow.experiment_name={self.experiment_name}: this experiment is deleted in {uri}; "
                "restore it (mlflow experiments restore) or name another"
            )
        return experiment.experiment_id

    def rewind(self, step: int) -> bool:
        run = self.client.get_run(self.run_id)
        for key in run.data.metrics:
            self.last_step[key] = max(m.step for m in self.client.get_metric_history(self.run_id, key))
        past = sorted(k for k, last in self.last_step.items() if last > step)
        if past:
            log.info(
                "mlflow: the stopped run logged %s after step %d; MLflow cannot delete points, so this run logs "
                "them from the step after their last point on (an exact resume computes the same values there)",
                ", ".join(past),
                step,
            )
        return not past

    def log(self, event: str, epoch: int, step: int, metrics: dict) -> None:
        self.log_points({scalar_tag(event, k): v for k, v in metrics.items() if per_step(event, k)}, step)

    def log_points(self, values: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        points = [Metric(k, float(v), now, step) for k, v in values.items() if step > self.last_step.get(k, -1)]
        if points:
            self.client.log_batch(self.run_id, metrics=points)
            self.last_step.update({p.key: step for p in points})

    def log_config(self, config_yaml: str, step: int) -> None:
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        self.config_yaml = config_yaml
        values = {k: str(plain_value(v)) for k, v in flatten(self.run.config).items()}
        cut = sorted(k for k, v in values.items() if len(v) > MAX_PARAM_VAL_LENGTH)
        if cut:
            log.info("mlflow: params cut to %d characters (config.yaml has them whole): %s", MAX_PARAM_VAL_LENGTH, cut)
        long_keys = sorted(k for k in values if len(k) > MAX_ENTITY_KEY_LENGTH)
        if long_keys:
            log.info("mlflow: keys longer than %d characters are not params: %s", MAX_ENTITY_KEY_LENGTH, long_keys)
        values = {k: v[:MAX_PARAM_VAL_LENGTH] for k, v in values.items() if k not in long_keys}
        had = self.client.get_run(self.run_id).data.params
        kept = sorted(k for k in values if k in had and had[k] != values[k])
        if kept:
            log.info("mlflow: a param keeps its first value; this resume's differ for %s", ", ".join(kept))
        params = [Param(k, v) for k, v in values.items() if k not in had]
        for i in range(0, len(params), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[i : i + MAX_PARAMS_TAGS_PER_BATCH])

    def log_final(self, metrics: dict, hparams: dict, step: int) -> None:
        self.log_points(final_tags(metrics), step)
        record = self.run.run_dir / layout.RECORD
        if record.is_file():
            self.client.log_artifact(self.run_id, str(record))
        self.client.log_text(self.run_id, self.config_yaml, "config.yaml")

    def close(self, status: str) -> None:
        if self.client is not None and self.run_id is not None:
            self.client.set_terminated(self.run_id, STATUSES.get(status, "KILLED"))
            self.client = None


def mlflow_client_class():
    """MLflow's client class, imported only when a run logs to MLflow (it takes seconds)."""
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as e:
        raise ConfigError(
            f"logger=mlflow needs MLflow, which is not installed ({e}): pip install 'framework[mlflow]'"
        ) from e
    return MlflowClient


def default_tracking_uri(run_dir: Path) -> str:
    """A SQLite store in the outputs/ folder that holds the run directory (else the current directory's)."""
    run_dir = run_dir.resolve()
    outputs = next((p for p in run_dir.parents if p.name == "outputs"), Path.cwd().resolve() / "outputs")
    return f"sqlite:///{outputs / 'mlflow.db'}"
