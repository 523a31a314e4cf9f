"""The one exception family: every boundary error says what went wrong and how to fix it."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class TaskonomyError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(TaskonomyError, ValueError):
    """A configuration value, option or command-line argument is invalid."""


class UnknownNameError(ConfigError, KeyError):
    """A task (or other) name is not known; the message lists close matches."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DataError(TaskonomyError):
    """A dataset file is missing, corrupt or of the wrong shape."""


class StorageError(TaskonomyError):
    """The storage path cannot be read or written, or holds a table of the wrong schema."""


class NodeSetupError(ConfigError):
    """A node of the cluster does not see the sweep's storage or dataset as the driver does."""


class SolverError(TaskonomyError):
    """The taxonomy problem is infeasible or the solver failed."""


class TrainingError(TaskonomyError):
    """A training unit failed (for example a non-finite loss)."""


def unknown_name(kind: str, name: str, known: Iterable[str], hint: str = "") -> UnknownNameError:
    """Build an error for an unknown `name` among `known`, suggesting the closest matches."""
    known = list(known)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    msg = f"unknown {kind} {name!r}"
    msg += f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else "."
    msg += f" Known: {', '.join(known)}."
    if hint:
        msg += f" {hint}"
    return UnknownNameError(msg)
