"""The one exception type for errors a user can cause (bad config, missing data, bad paths).

The CLI prints ``str(err)`` as a single line and exits non-zero; tracebacks appear only with ``--debug``.
Keep messages to one line that names the offending value or path and, where possible, the fix.
"""


class StudyError(Exception):
    """A user-caused error with a one-line, actionable message."""


class DataError(StudyError):
    """A data set is missing, unreadable or not in its official layout."""


class ConfigError(StudyError):
    """A configuration value or key is invalid."""


class TrainingDiverged(StudyError):
    """A loss became NaN or infinite: the run cannot recover, so it stops before reporting or checkpointing.

    Raised by the training loop after a report window; the message names the metric, its value, the step
    and a hint. On CPU a retry from the last checkpoint diverges again at the same step (resume is exact).
    """
