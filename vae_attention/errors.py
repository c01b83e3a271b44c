"""The one exception type for errors a user can cause (bad config, missing data, bad paths).

The CLI prints ``str(err)`` as a single line and exits non-zero; tracebacks appear only with ``--debug``.
Keep messages to one line that names the offending value or path and, where possible, the fix.
``run_command`` is that ending, shared by every CLI of the project packages (``analysis`` keeps its own: it
imports none of them).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


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


def run_command(run: Callable[[Any], int], args: Any, interrupted_hint: str) -> int:
    """``run(args)``'s exit code; a ``StudyError`` as one line on stderr (exit 2, the traceback only with
    ``args.debug``); Ctrl-C as ``interrupted; <interrupted_hint>`` (exit 130)."""
    try:
        return run(args)
    except StudyError as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted; {interrupted_hint}", file=sys.stderr)
        return 130
