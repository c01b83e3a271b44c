"""Reading a tracking store: sweeps -> one tidy row per trial run, cached metric histories, artifacts.

A row holds the run's info, the contract tags, its params cast from MLflow's strings to numbers where every
value of that param parses, and its latest metric values as ``m:<metric>`` columns. MLflow's "latest" value
of a metric is the one at the highest step, i.e. the final report or evaluation of the trial.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import pandas as pd
from mlflow import MlflowClient

from analysis import AnalysisError

METRIC = "m:"  # prefix of final-metric columns; param and metric names may otherwise collide
CONTRACT_TAGS = ("trial_id", "sweep", "study", "run_kind", "preset", "data_source", "config_key", "device",
                 "git_commit")
INFO_COLUMNS = ("run_id", "run_name", "status", "experiment_id", "start_time", "end_time")
# Param values that mean "not set" (the study logs None as its repr).
_MISSING = {"None", "none_set", ""}


def open_store(tracking_uri: str) -> MlflowClient:
    """A client for ``tracking_uri``; a SQLite file that does not exist is an error, not a new empty store."""
    for noisy in ("mlflow", "alembic"):
        # MLflow announces creating/migrating its SQLite tables at INFO; the report prints its own lines
        logging.getLogger(noisy).setLevel(logging.WARNING)
    parsed = urlparse(tracking_uri)
    if parsed.scheme == "sqlite":
        path = Path(unquote(tracking_uri.split("sqlite:///", 1)[-1]))
        if not path.is_file():
            raise AnalysisError(f"no MLflow store at {tracking_uri} ({path} does not exist)")
    elif parsed.scheme in ("", "file"):
        path = Path(unquote(parsed.path))
        if not path.is_dir():
            raise AnalysisError(f"no MLflow store at {tracking_uri} ({path} is not a directory)")
    return MlflowClient(tracking_uri)


@dataclass
class Sweep:
    name: str
    experiment_id: str
    runs: pd.DataFrame  # every run tagged run_kind=trial, whatever its status


def load_sweep(client: MlflowClient, name: str) -> Sweep:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        known = sorted(e.name for e in client.search_experiments() if e.name != "Default")
        hint = f"; experiments there: {', '.join(known)}" if known else "; the store has no experiments"
        raise AnalysisError(f"no sweep named {name!r} (no MLflow experiment of that name){hint}")
    runs = _search_all(client, experiment.experiment_id, "tags.run_kind = 'trial'")
    return Sweep(name, experiment.experiment_id, runs_frame(runs, name))


def _search_all(client: MlflowClient, experiment_id: str, query: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=query, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def runs_frame(runs: list, sweep: str) -> pd.DataFrame:
    rows = []
    for run in runs:
        row = {"run_id": run.info.run_id, "run_name": run.info.run_name, "status": run.info.status,
               "experiment_id": run.info.experiment_id, "start_time": run.info.start_time,
               "end_time": run.info.end_time}
        row.update({tag: run.data.tags.get(tag) for tag in CONTRACT_TAGS})
        row["sweep"] = run.data.tags.get("sweep") or sweep
        row.update({k: (None if v in _MISSING else v) for k, v in run.data.params.items() if k not in row})
        row.update({METRIC + k: v for k, v in run.data.metrics.items()})
        rows.append(row)
    frame = pd.DataFrame(rows, columns=None if rows else [*INFO_COLUMNS, *CONTRACT_TAGS])
    return cast_params(frame)


def cast_params(frame: pd.DataFrame) -> pd.DataFrame:
    """Params arrive as strings: a column becomes numeric when all its set values parse, else stays text."""
    fixed = set(INFO_COLUMNS) | set(CONTRACT_TAGS)
    for column in frame.columns:
        if column in fixed or column.startswith(METRIC):
            continue
        try:
            frame[column] = pd.to_numeric(frame[column])
        except (TypeError, ValueError):
            pass
    return frame


class Histories:
    """Metric histories, fetched once per (run, metric) and kept in memory; fetches run in a small pool.

    The tracking store answers one history per call; SQLite serves concurrent readers, and a server
    (``http://``) hides its latency behind the pool as well.
    """

    def __init__(self, client: MlflowClient, workers: int = 8):
        self.client = client
        self.workers = workers
        self._cache: dict[tuple[str, str], pd.Series] = {}
        self._lock = threading.Lock()
        self.calls = 0

    def _fetch(self, run_id: str, key: str) -> pd.Series:
        points = self.client.get_metric_history(run_id, key)
        with self._lock:
            self.calls += 1
        # A resumed trial may log a step twice (same value); the latest timestamp wins, as MLflow's own does
        points = sorted(points, key=lambda m: (m.step, m.timestamp))
        series = pd.Series({m.step: m.value for m in points}, dtype=float)
        series.index.name = "step"
        return series.sort_index()

    def prefetch(self, run_ids, keys) -> None:
        todo = [(r, k) for r in run_ids for k in keys if (r, k) not in self._cache]
        if not todo:
            return
        with ThreadPoolExecutor(max_workers=max(1, min(self.workers, len(todo)))) as pool:
            for pair, series in zip(todo, pool.map(lambda p: self._fetch(*p), todo), strict=True):
                self._cache[pair] = series

    def get(self, run_id: str, key: str) -> pd.Series:
        if (run_id, key) not in self._cache:
            self._cache[(run_id, key)] = self._fetch(run_id, key)
        return self._cache[(run_id, key)]


def latest_figure(client: MlflowClient, run_id: str, prefix: str, target: Path) -> tuple[Path, str] | None:
    """Copy the run's newest ``figures/<prefix>*.png`` (names carry zero-padded steps) to ``target``; returns
    the target and the artifact's name, or None when the run logged no such figure."""
    names = [a.path for a in client.list_artifacts(run_id, "figures")
             if Path(a.path).name.startswith(prefix) and a.path.endswith(".png")]
    if not names:
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    # every run's figure has the same kind of name: download into a scratch folder, then name it for the report
    with tempfile.TemporaryDirectory(prefix="analysis-artifact-") as scratch:
        shutil.copyfile(client.download_artifacts(run_id, max(names), scratch), target)
    return target, max(names)
