"""What is wrong with a checkpoint that cannot be written or used: one class each, so that a tool
can say it with its own exit code (framework/cli/ckpt.py). All are CheckpointErrors: a run reports any
of them alike, in one message, without a traceback."""

from __future__ import annotations


class CheckpointError(Exception):
    """A checkpoint that cannot be written or trusted: reported in one message, no traceback."""


class DamagedCheckpoint(CheckpointError):
    """Torn, truncated, not a torch file, or its contents differ from its checksum."""


class UnsafeCheckpoint(CheckpointError):
    """Needs more than torch.load(weights_only=True): it pickles code or objects (`needs`)."""

    def __init__(self, message: str, needs: list[str] | None = None):  # None: as pickle rebuilds it
        super().__init__(message)
        self.needs = needs or []


class ForeignCheckpoint(CheckpointError):
    """Loads safely but was not written by this framework (no `meta`)."""


class NewerCheckpoint(CheckpointError):
    """Written in a checkpoint format newer than this version of the framework reads."""
