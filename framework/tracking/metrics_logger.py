"""Where metrics go: metrics.jsonl (a line per logged step and per epoch), metrics.json (the
final summary, written atomically), TensorBoard (scalars, the config as text, hparams with the
final metrics), and the console: a progress bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import json
from pathlib import Path

from framework.atomic import json_text, replace_atomically
from framework.config.resolved import flatten


class MetricsLogger:
    """Appends to metrics.jsonl and TensorBoard.

    A resumed run goes on where its checkpoint was taken: metrics.jsonl is cut back to the lines
    it had then (`keep_lines`, recorded in the checkpoint), and TensorBoard purges the events
    that a killed run wrote after `resume_step`.
    """

    def __init__(
        self,
        run_dir: Path,
        tensorboard: bool,
        keep_lines: int | None = None,
        resume_step: int | None = None,
        enabled: bool = True,
    ):
        self.lines, self.jsonl, self.tb = 0, None, None
        if not enabled:
            return  # a rank other than 0 under torchrun: rank 0 keeps the history
        path = run_dir / "metrics.jsonl"
        lines = path.read_text().splitlines(keepends=True) if path.exists() else []
        if keep_lines is not None and len(lines) > keep_lines:
            lines = lines[:keep_lines]
            replace_atomically(path, "".join(lines))
        self.lines = len(lines)
        self.jsonl = open(path, "a", buffering=1)  # line-buffered
        if tensorboard:
            # Imported here: TensorBoard is slow to import and not needed with logger=none.
            from torch.utils.tensorboard import SummaryWriter

            purge = resume_step + 1 if resume_step is not None else None
            self.tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge)

    def log(self, event: str, epoch: int, step: int, metrics: dict) -> None:
        if self.jsonl is None:
            return
        self.jsonl.write(json_text({"event": event, "epoch": epoch, "step": step, **metrics}) + "\n")
        self.lines += 1
        if self.tb is not None:
            for name, value in metrics.items():
                if event in ("epoch", "stop") and name == "lr":
                    continue  # logged with the steps already
                self.tb.add_scalar(scalar_tag(event, name), value, step)

    def log_config(self, config_yaml: str, step: int) -> None:
        """The resolved config as text (TensorBoard's Text tab), at the step the run starts from."""
        if self.tb is not None:
            # Indented four spaces: a code block in TensorBoard's markdown, so the YAML keeps its shape.
            self.tb.add_text("config", "".join(f"    {line}\n" for line in config_yaml.splitlines()), step)

    def log_hparams(self, config: dict, metrics: dict, step: int) -> None:
        """Every config value as an hparam, with the final metrics, in this run's own event files:
        the runs of a sweep then line up in TensorBoard's HParams tab, one row each."""
        if self.tb is None:
            return
        from torch.utils.tensorboard.summary import hparams

        values = {k: hparam_value(v) for k, v in flatten(config).items()}
        # The metric columns name scalar tags of this run; their last points are the final values.
        final = {scalar_tag("epoch", k): v for k, v in metrics.items() if k != "lr"}
        for summary in hparams(values, final):  # the experiment, the session's start, its end
            self.tb.file_writer.add_summary(summary, step)
        self.tb.flush()

    def close(self) -> None:
        # Each job of a sweep opens its own writer; one left open would leak into the next job.
        if self.jsonl is not None:
            self.jsonl.close()
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def scalar_tag(event: str, name: str) -> str:
    """The TensorBoard tag of a metric: an epoch's mean train/loss is a curve of its own."""
    return "train/loss_epoch" if name == "train/loss" and event in ("epoch", "stop") else name


def hparam_value(value):
    """What TensorBoard's hparams take: numbers, strings and booleans; null and lists as YAML spells them."""
    if value is None:
        return "null"
    return value if isinstance(value, (bool, int, float, str)) else json.dumps(value)
