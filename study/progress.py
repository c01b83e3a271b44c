"""What the console shows during a sweep: a one-line progress header and a compact table of trials.

Ray 2.x's new output engine (the default) does not print the table of a passed ``ProgressReporter``, so
``RunConfig(verbose=0)`` silences Ray's own progress and the ``ProgressTable`` callback prints instead:

- the header, ``progress: 1 running, 2 pending, 1 done, 0 failed | elapsed 0:03:10 | ~0:09:40 left``,
  whenever the counts change (at most every ``header_interval_s`` seconds) and above every table;
- the table, at most every ``interval_s`` seconds, whenever a trial ends, and once at the end.

The time left is ``estimate_remaining_s``: greedy list scheduling of the unfinished trials on the trials
running now, with durations from the finished trials (or, before any has finished, extrapolated from the
running trials' progress).
"""

from __future__ import annotations

import heapq
import sys
import time
from dataclasses import dataclass
from typing import Any

from ray.tune import Callback

from search_spaces.common import PARAMS_KEY
from study.interrupt import interrupted


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


def estimate_remaining_s(finished_s: list[float], running: list[tuple[float, float]], pending: int,
                         slots: int | None = None) -> float | None:
    """Seconds until the last unfinished trial ends (None while nothing can be estimated).

    ``finished_s``: run times (s) of the trials that have ended; ``running``: (elapsed s, fraction done) of
    each running trial; ``pending``: trials not started; ``slots``: trials that run at once (default: as
    many as run now). A running trial with progress ends in ``elapsed · (1 − f) / f``; one without, and each
    pending trial, takes the typical duration: the mean of ``finished_s``, else the mean of the running
    trials' extrapolated durations ``elapsed / f``. Pending trials start, in turn, on the slot that frees
    first (greedy list scheduling, optimal for equal durations); the estimate is the last slot's end.
    """
    durations = list(finished_s) or [elapsed / done for elapsed, done in running if done > 0]
    if not running and not pending:
        return 0.0
    if not durations:
        return None
    typical = sum(durations) / len(durations)
    ends = [elapsed * (1 - done) / done if done > 0 else max(typical - elapsed, 0.0) for elapsed, done in running]
    slots = max(slots or len(running), len(running), 1)
    ends += [0.0] * (slots - len(ends))  # idle slots start a pending trial now
    heapq.heapify(ends)
    for _ in range(pending):
        heapq.heappush(ends, heapq.heappop(ends) + typical)
    return max(ends)


def format_duration(seconds: float | None) -> str:
    """``H:MM:SS`` (``?`` when unknown)."""
    if seconds is None:
        return "?"
    whole = int(round(seconds))
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def header_line(counts: dict[str, int], elapsed_s: float, remaining_s: float | None) -> str:
    """The one-line header: trial counts by state, elapsed time, and the estimated time left."""
    states = ", ".join(f"{counts.get(state, 0)} {state}" for state in ("running", "pending", "done", "failed"))
    return f"progress: {states} | elapsed {format_duration(elapsed_s)} | ~{format_duration(remaining_s)} left"


# Tune's trial states as the header counts them (a PAUSED trial waits for resources, like a PENDING one)
STATE_OF_STATUS = {"RUNNING": "running", "PENDING": "pending", "PAUSED": "pending", "TERMINATED": "done",
                   "ERROR": "failed"}


class ProgressTable(Callback):
    """Tune callback printing the header and the table (pickled with the sweep: ``--resume`` restores it)."""

    header_interval_s = 5.0  # class defaults: a table pickled by an older version lacks these attributes

    def __init__(self, columns: list[Column], total_key: str, step_key: str, interval_s: float = 30.0, stream=None,
                 header_interval_s: float = 5.0):
        self.columns = columns
        self.total_key = total_key
        self.step_key = step_key
        self.interval_s = interval_s
        self.header_interval_s = header_interval_s
        self.stream = stream
        self._reset()

    def _reset(self) -> None:
        self._latest: dict[str, dict[str, Any]] = {}
        self._ended: dict[str, str] = {}
        self._last_print = 0.0
        self._started = time.monotonic()
        self._total_trials: int | None = None  # Optuna creates trials as it goes; Tune knows how many
        self._last_counts: dict[str, int] | None = None
        self._last_header = float("-inf")

    def __getstate__(self):
        state = self.__dict__.copy()
        state["stream"] = None
        for key in ("_latest", "_ended", "_last_print", "_started", "_total_trials", "_last_counts", "_last_header"):
            state.pop(key, None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._reset()

    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info) -> None:
        self._started = time.monotonic()
        self._total_trials = total_num_samples

    def _write(self, text: str) -> None:
        stream = self.stream or sys.stdout
        stream.write(text + "\n")
        stream.flush()

    # -- the header ------------------------------------------------------------------------------------------
    def counts(self, trials) -> dict[str, int]:
        counts = {"running": 0, "pending": 0, "done": 0, "failed": 0}
        for trial in trials:
            state = STATE_OF_STATUS.get(self._ended.get(trial.trial_id, trial.status), "pending")
            counts[state] += 1
        if self._total_trials:  # trials the searcher has not created yet
            counts["pending"] += max(self._total_trials - len(trials), 0)
        return counts

    def header(self, trials) -> str:
        now = time.time()
        finished, running = [], []
        for trial in trials:
            result = trial.last_result or {}
            status = self._ended.get(trial.trial_id, trial.status)
            if status == "TERMINATED" and result.get("time_total_s"):
                finished.append(float(result["time_total_s"]))
            elif status == "RUNNING":
                # trainable time so far (Ray's time_total_s survives restores) + time since the last report
                since = max(now - float(result.get("timestamp", now)), 0.0)
                elapsed = float(result.get("time_total_s", 0.0)) + since
                step, total = result.get(self.step_key), trial.config.get(PARAMS_KEY, {}).get(self.total_key)
                done = min(step / total, 1.0) if isinstance(step, (int, float)) and total else 0.0
                running.append((elapsed, done))
        counts = self.counts(trials)
        remaining = estimate_remaining_s(finished, running, counts["pending"])
        return header_line(counts, time.monotonic() - self._started, remaining)

    def on_step_end(self, iteration, trials, **info) -> None:
        counts = self.counts(trials)
        now = time.monotonic()
        if counts != self._last_counts and now - self._last_header >= self.header_interval_s:
            self._last_counts, self._last_header = counts, now
            self._write(self.header(trials))

    # -- the table -------------------------------------------------------------------------------------------
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
        self._last_counts, self._last_header = self.counts(trials), now
        self._write(self.header(trials) + "\n" + format_table([self._row(t) for t in trials], self.columns) + "\n")

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
        if not interrupted():  # after Ctrl-C Tune has marked the stopped trials TERMINATED: the table would lie
            self._print(trials, force=True)
