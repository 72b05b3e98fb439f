"""Checkpoints: the policy that decides what to write and what to delete (policy), the store that
decides where and how they are kept (storage: the interface and local files), one atomic verified
file (io), the local index of what is on disk (index), formats and migration."""

from framework.checkpoint.index import Index
from framework.checkpoint.io import CheckpointError, load, load_checked, write
from framework.checkpoint.policy import Checkpointer
from framework.checkpoint.storage import CheckpointStore, LocalFiles

__all__ = [
    "CheckpointError",
    "CheckpointStore",
    "Checkpointer",
    "Index",
    "LocalFiles",
    "load",
    "load_checked",
    "write",
]
