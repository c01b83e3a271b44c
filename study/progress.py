"""A compact live table of trials, printed by a Tune callback of ours.

Ray 2.x's new output engine (the default) does not print the table of a passed ``ProgressReporter``, so
``RunConfig(verbose=0)`` silences Ray's own progress and this callback prints at most every ``interval_s``
seconds, whenever a trial ends, and once at the end.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

from ray.tune import Callback

from search_spaces.common import PARAMS_KEY


@dataclass(frozen=True)
class Column:
    header: str
    key: str
    source: str = "metric"  # "param" (trial config) or "metric" (latest result)
    fmt: str = "{:.4g}"
    width: int = 9


def format_table(rows: list[dict[str, Any]], columns: list[Column]) -> str:
    head = ["trial".ljust(28)] + [c.header.rjust(c.width) for c in columns] + ["status".rjust(10)]
    lines = [" ".join(head)]
    for row in rows:
        cells = [str(row["trial"])[:28].ljust(28)]
        for c in columns:
            value = row.get(c.key)
            text = "-" if value is None else (c.fmt.format(value) if isinstance(value, (int, float)) else str(value))
            cells.append(text[: c.width].rjust(c.width))
        cells.append(str(row["status"])[:10].rjust(10))
        lines.append(" ".join(cells))
    return "\n".join(lines)


class ProgressTable(Callback):
    def __init__(self, columns: list[Column], total_key: str, step_key: str, interval_s: float = 30.0, stream=None):
        self.columns = columns
        self.total_key = total_key
        self.step_key = step_key
        self.interval_s = interval_s
        self.stream = stream
        self._latest: dict[str, dict[str, Any]] = {}
        self._ended: dict[str, str] = {}
        self._last_print = 0.0

    def __getstate__(self):
        state = self.__dict__.copy()
        state["stream"] = None
        state["_latest"] = {}
        state["_ended"] = {}
        return state

    def _row(self, trial) -> dict[str, Any]:
        params = trial.config.get(PARAMS_KEY, {})
        result = self._latest.get(trial.trial_id, {})
        row = {"trial": str(trial), "status": self._ended.get(trial.trial_id, trial.status)}
        for c in self.columns:
            row[c.key] = params.get(c.key) if c.source == "param" else result.get(c.key)
        step, total = result.get(self.step_key), params.get(self.total_key)
        row[self.step_key] = f"{step or 0}/{total}"
        return row

    def _print(self, trials, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_print < self.interval_s:
            return
        self._last_print = now
        stream = self.stream or sys.stdout
        stream.write(format_table([self._row(t) for t in trials], self.columns) + "\n\n")
        stream.flush()

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        latest = self._latest.setdefault(trial.trial_id, {})
        latest.update({k: v for k, v in result.items() if isinstance(v, (int, float, str))})
        self._print(trials)

    # Tune updates trial.status only after these hooks, so the row's status is overridden here.
    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._ended[trial.trial_id] = "TERMINATED"
        self._print(trials, force=True)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._ended[trial.trial_id] = "ERROR"
        self._print(trials, force=True)

    def on_experiment_end(self, trials, **info) -> None:
        self._print(trials, force=True)
