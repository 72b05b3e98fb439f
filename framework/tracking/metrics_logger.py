"""The loop's one handle on where metrics go: metrics.jsonl always, then each sink that the `logger`
section chooses (sinks.py says what a sink is). The loop never asks which sinks there are."""

from __future__ import annotations

import logging

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from framework.config.errors import ConfigError
from framework.config.target_arguments import accepted
from framework.tracking.jsonl_sink import JsonlSink
from framework.tracking.sinks import MetricSink, RunInfo
from framework.tracking.tensorboard_sink import TensorBoardSink

log = logging.getLogger("framework")


class MetricsLogger:
    """Hands every call to metrics.jsonl and to each chosen sink, in the `logger` section's order.

    `keep_lines`: the number of metrics.jsonl lines a resumed run's checkpoint recorded (`lines`
    when it was saved). `enabled=False` (a rank other than 0 under torchrun) logs nothing: rank 0
    keeps the history."""

    def __init__(self, chosen: dict[str, MetricSink], keep_lines: int | None = None, enabled: bool = True):
        self.jsonl = JsonlSink(keep_lines)
        self.sinks = {"metrics.jsonl": self.jsonl, **{f"logger.{k}": v for k, v in chosen.items()}} if enabled else {}
        self.opened: list[MetricSink] = []

    @property
    def lines(self) -> int:
        return self.jsonl.lines

    def open(self, run: RunInfo) -> None:
        for sink in self.sinks.values():
            sink.open(run)
            self.opened.append(sink)
        if run.resume_step is None:
            return
        for name, sink in self.sinks.items():
            if not sink.rewind(run.resume_step):
                log.warning(
                    "%s cannot rewind to step %d: what it received after that step stays", name, run.resume_step
                )

    def log(self, event: str, epoch: int, step: int, metrics: dict) -> None:
        for sink in self.opened:
            sink.log(event, epoch, step, metrics)

    def log_config(self, config_yaml: str, step: int) -> None:
        for sink in self.opened:
            sink.log_config(config_yaml, step)

    def log_final(self, metrics: dict, hparams: dict, step: int) -> None:
        for sink in self.opened:
            sink.log_final(metrics, hparams, step)

    def close(self, status: str) -> None:
        """Every sink closes, whatever another's close raises: its error is logged, not raised over
        the run's outcome."""
        for sink in self.opened:
            try:
                sink.close(status)
            except Exception as e:
                log.error("%s failed to close: %s: %s", type(sink).__name__, type(e).__name__, e)
        self.opened = []


def chosen_sinks(logger: DictConfig | None) -> dict[str, MetricSink]:
    """The sinks the `logger` section names, built (not yet opened): {"tensorboard": TensorBoardSink()}.

    A section with a `_target_` is built with its other keys as arguments. A section set to false
    or null is off (`logger.tensorboard=false`); `tensorboard: true` is the layout before sinks had
    targets (checkpoints written then hold it). Anything else, a key the target does not take, a
    target that cannot be imported or a sink that cannot be built (its package missing) is refused
    in one line naming the key."""
    sinks = {}
    for name, node in (logger or {}).items():
        if node is None or node is False:
            continue
        if node is True and name == "tensorboard":
            sinks[name] = TensorBoardSink()
            continue
        if not isinstance(node, DictConfig) or "_target_" not in node:
            raise ConfigError(
                f"logger.{name}={node!r}: a sink is a section with a _target_ (a class with MetricSink's methods, "
                "framework/tracking/sinks.py), or false for none"
            )
        check_arguments(f"logger.{name}", node)
        try:
            sinks[name] = instantiate(node)
        except InstantiationException as e:
            if isinstance(e.__cause__, ConfigError):
                raise e.__cause__ from None
            why = one_line(e.__cause__ or e)
            raise ConfigError(f"logger.{name}._target_={node._target_}: cannot build it ({why})") from e
    return sinks


def check_arguments(key: str, node: DictConfig) -> None:
    """Refuse a key the sink's target does not take, naming the ones it does."""
    try:
        names = accepted(node._target_, partial=False)
    except Exception as e:  # not importable, or not a callable with a signature
        raise ConfigError(f"{key}._target_={node._target_}: cannot import it ({one_line(e)})") from e
    unknown = [k for k in node if not str(k).startswith("_") and names is not None and k not in names]
    if unknown:
        raise ConfigError(
            f"{key}.{unknown[0]}: {node._target_} takes no argument {unknown[0]!r}. "
            + (f"It takes: {', '.join(names)}" if names else "It takes none.")
        )


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split())
