"""Project exceptions.

Every error a user can cause raises one of these with a message that says what was wrong
and what to do. The CLI turns :class:`UsageError` into exit code 2 and any other
:class:`EdgeclError` into exit code 1, printing one line on stderr.
"""

from __future__ import annotations


class EdgeclError(Exception):
    """Base class for every error edgecl raises on purpose (CLI exit code 1)."""


class UsageError(EdgeclError):
    """The user asked for something invalid: a flag, a file, a name (CLI exit code 2)."""


class DataError(UsageError):
    """Input data is malformed: NaN/inf, wrong shape or dtype, bad labels, empty."""


class ProfileError(UsageError):
    """A firmware profile is missing, malformed or contradictory."""


class BudgetError(UsageError):
    """A memory or time budget cannot be met."""


class CheckpointError(EdgeclError):
    """A checkpoint is missing, corrupted or does not match this learner."""


class EdgeclWarning(UserWarning):
    """Something degraded but the run goes on (a codec fitted on few samples, a fallback).

    ``edgecl learn`` prints each as one ``warning:`` line and lists it in the report.
    """
