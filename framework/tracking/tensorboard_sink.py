"""TensorBoard: scalars, the resolved config as text, and hparams with the final metrics, under
the run's tensorboard/ (`logger=tensorboard`)."""

from __future__ import annotations

from framework.runs.layout import RunLayout
from framework.tracking.sinks import MetricSink, RunInfo, final_tags, per_step, plain_value, scalar_tag


class TensorBoardSink(MetricSink):
    """Event files in the run's tensorboard/: a TensorBoard run per run directory.

    The HParams tab gets the keys the run's command line or sweep set and the seed (not the whole
    config, whose constants would fill the first columns and hide the swept ones; the whole config
    is in the Text tab), with the final metrics as its metric columns. A resumed run purges the
    events that a killed run wrote after the checkpoint's step.
    """

    def __init__(self):
        self.writer = None
        self.purge_step: int | None = None

    def open(self, run: RunInfo) -> None:
        self.run = run

    def rewind(self, step: int) -> bool:
        self.purge_step = step + 1  # taken by the writer when it opens, at the first event
        return True

    def events(self):
        if self.writer is None:
            # Imported here: TensorBoard is slow to import and not needed with logger=none.
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(
                log_dir=str(RunLayout(self.run.run_dir).tensorboard), purge_step=self.purge_step
            )
        return self.writer

    def log(self, event: str, epoch: int, step: int, metrics: dict) -> None:
        writer = self.events()
        for name, value in metrics.items():
            if per_step(event, name):
                writer.add_scalar(scalar_tag(event, name), value, step)

    def log_config(self, config_yaml: str, step: int) -> None:
        # Indented four spaces: a code block in TensorBoard's markdown, so the YAML keeps its shape.
        self.events().add_text("config", "".join(f"    {line}\n" for line in config_yaml.splitlines()), step)

    def log_final(self, metrics: dict, hparams: dict, step: int) -> None:
        """The hparams with the final metrics, in this run's own event files: the runs of a sweep
        then line up in TensorBoard's HParams tab, one row each."""
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        values = {k: plain_value(v) for k, v in hparams.items()}
        # The metric columns name scalar tags of this run; their last points are the final values.
        # No session group name: each session is then named by its run (the run directory's path
        # under --logdir), which no other run shares.
        writer = self.events()
        for summary in hparams_summaries(values, final_tags(metrics)):  # the experiment, the session's start, its end
            writer.file_writer.add_summary(summary, step)
        writer.flush()

    def close(self, status: str) -> None:
        # Each job of a sweep opens its own writer; one left open would leak into the next job.
        if self.writer is not None:
            self.writer.close()
            self.writer = None
