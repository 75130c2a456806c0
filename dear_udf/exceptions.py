"""Exception types callers can catch precisely."""

from __future__ import annotations


class DearRerankError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(DearRerankError, ValueError):
    """A configuration value or file is invalid (unknown key, bad value)."""


class ModelLoadError(DearRerankError):
    """A model, adapter or tokenizer could not be loaded, or was refused as unsafe."""


class InputError(DearRerankError, ValueError):
    """An input table is missing, unreadable, or lacks required columns."""


class OutputError(DearRerankError):
    """The output table could not be written or committed."""


class RunRefusedError(DearRerankError):
    """The run's results were not written: they would publish an empty or mostly dropped
    night, non-finite scores, or counts that do not balance (``guards.py``)."""
