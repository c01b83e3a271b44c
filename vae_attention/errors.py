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
