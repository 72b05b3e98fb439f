"""A mistake in the user's config: one short message, no traceback."""

from __future__ import annotations


class ConfigError(Exception):
    """A mistake in the user's config: reported as one short message, no traceback."""
