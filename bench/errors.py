"""The errors a user can act on, in one light module: each message names the file or thing and what to change.

The modules that raise them import them from here, so the command line can catch them without importing torch
or Lightning (``bench --help`` stays fast).
"""


class DatasetError(ValueError):
    """A dataset folder that cannot be read as the layout it claims (metadata, splits, files)."""


class StoreError(RuntimeError):
    """A packed store that is missing, interrupted or inconsistent."""


class SubmissionError(RuntimeError):
    """Something about a submission that a user must fix; the message names the submission."""


class StageError(RuntimeError):
    """A stage that failed; the message names the system, stage and what to do."""


class Interrupted(RuntimeError):
    """Ctrl-C during training: the last checkpoint is kept and the next run resumes from it."""


class ComplexityError(RuntimeError):
    """The device model could not be run at the given input shape, so it cannot be counted."""


class BoardError(RuntimeError):
    """A leaderboard file that cannot be used as it is; the message names the file and the way out."""
