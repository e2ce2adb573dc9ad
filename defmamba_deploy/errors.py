"""User-facing errors.

Every error that a user can cause (a bad file, a wrong variant, a too-small image, a missing
library) is raised as a :class:`DefMambaError` whose message names the problem and the fix in one
line. The CLI prints that line and exits with a non-zero code instead of a traceback.
"""
from __future__ import annotations


class DefMambaError(Exception):
    """An error caused by the input or the environment, with a one-line actionable message."""

    exit_code = 1


class UsageError(DefMambaError, ValueError):
    """Bad arguments or input data (wrong shape, too small, unknown name)."""

    exit_code = 2


class CheckpointError(DefMambaError, ValueError):
    """A checkpoint that cannot be read or does not fit the model."""

    exit_code = 3


class OutputError(DefMambaError):
    """A model whose output cannot be used (NaN or inf logits): damaged weights or an overflow."""

    exit_code = 1


class MissingDependencyError(DefMambaError, ImportError):
    """An optional dependency or a built library that is not available."""

    exit_code = 2
