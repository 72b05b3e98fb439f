"""Checkpoints: atomic verified files (io), the index of what is on disk (index), and the policy
that decides what to write and what to delete (policy)."""

from framework.checkpoint.index import Index
from framework.checkpoint.io import CheckpointError, load, load_checked, write
from framework.checkpoint.policy import Checkpointer

__all__ = ["CheckpointError", "Checkpointer", "Index", "load", "load_checked", "write"]
