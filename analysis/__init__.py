"""Reports on finished sweeps, read from MLflow alone.

``python -m analysis report --tracking-uri URI --sweep NAME --out DIR`` turns the trial runs of one or more
sweeps (the naming contract of ARCHITECTURE.md) into figures, CSV/Markdown tables, ``report.md``,
``report.html`` and ``claims.md``, and logs them as an MLflow run tagged ``run_kind=report``.

Nothing here imports torch, Ray or the project's other packages: a report must be producible on a laptop
that holds only the tracking store, and the contract (tags, params, metric names) is the whole interface.
"""

from __future__ import annotations


class AnalysisError(Exception):
    """A problem the user can fix (unknown sweep, nothing finished, mixed data): one line, exit 2."""
