"""Helpers of the fault tests: start and SIGKILL real `study.run` drivers, read Ray's experiment state.

A plain module that pytest's rootdir import mode puts on ``sys.path`` beside the fault tests; the process
helpers themselves live in ``tests/helpers/processes.py``.
"""

from __future__ import annotations

import glob
import json
import re
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import torch
from helpers.processes import TINY_SWEEP, kill_when, start_cli  # noqa: F401  (re-exported for the fault tests)
from mlflow import MlflowClient

# TINY_SWEEP with the default discriminator (6 × 1000 units): a checkpoint with Adam state is ~66 MB, so
# copying it into storage takes long enough to be interrupted, as a full-size sweep's would be.
BIG_CHECKPOINTS = [*TINY_SWEEP, "--set", "d_hidden_units=1000", "--set", "d_hidden_layers=6"]


def newest_experiment_state(experiment_dir) -> dict | None:
    """Ray's newest ``experiment_state-<start time>.json`` of a sweep, parsed (None if there is none yet).

    Each driver session writes its own file; Ray restores from the newest by name, as here (their mtimes
    say nothing: every sync re-uploads all of them).
    """
    for _ in range(20):  # Ray replaces the file while we read it; retry a torn read
        paths = sorted(glob.glob(str(Path(experiment_dir) / "experiment_state-*.json")))
        if not paths:
            return None
        try:
            return json.loads(Path(paths[-1]).read_text())
        except (OSError, ValueError):
            time.sleep(0.05)
    raise AssertionError(f"unreadable experiment state in {experiment_dir}")


def registered_checkpoints(experiment_dir) -> dict[str, list[str]]:
    """{trial dir name: checkpoint dir names Ray's saved state registers for it}: what a restore can load.

    The checkpoint manager is stored as a cloudpickle hex blob; the checkpoint paths are plain strings in
    it, so they are read out of the bytes rather than by unpickling Ray's private classes.
    """
    state = newest_experiment_state(experiment_dir)
    found: dict[str, list[str]] = {}
    for _, run_metadata in (state or {}).get("trial_data", []):
        blob = json.loads(run_metadata)["checkpoint_manager"]
        raw = bytes.fromhex(blob["value"]) if isinstance(blob, dict) else str(blob).encode()
        for path in re.findall(rb"/[\x21-\x7e]*?/checkpoint_\d{6}", raw):
            path = Path(path.decode())
            found.setdefault(path.parent.name, []).append(path.name)
    return {trial: sorted(set(names)) for trial, names in found.items()}


def checkpoint_problem(directory) -> str | None:
    """Why a checkpoint directory is incomplete (None if its state and metrics load)."""
    directory = Path(directory)
    try:
        json.loads((directory / "metrics.json").read_text())
        state = torch.load(directory / "state.pt", map_location="cpu", weights_only=True)
    except Exception as err:  # any failure to load is what we are looking for
        return f"{type(err).__name__}: {err}"
    return None if isinstance(state, dict) and state else "empty state"


def checkpoint_dirs(experiment_dir) -> list[Path]:
    return sorted(Path(experiment_dir).glob("*/checkpoint_*"))


def trial_runs(tracking_uri, name):
    """(client, the sweep's trial runs) from MLflow."""
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None, f"no MLflow experiment {name!r}"
    return client, client.search_runs([experiment.experiment_id], "tags.run_kind = 'trial'")


def steps(client, run, key) -> list[int]:
    return [m.step for m in client.get_metric_history(run.info.run_id, key)]


def logged_weights(client, run, tmp_path):
    local = client.download_artifacts(run.info.run_id, "model/vae.pt", str(Path(tmp_path) / run.info.run_id))
    return torch.load(local, weights_only=True)


def mlflow_has_metrics(db_path) -> bool:
    """Whether any metric has been logged to the SQLite store yet (read-only; False while it is locked)."""
    if not Path(db_path).exists():
        return False
    try:
        with closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=0.1)) as db:
            return db.execute("select 1 from metrics limit 1").fetchone() is not None
    except sqlite3.Error:
        return False


def result_lines(trial_dir) -> list[dict]:
    """The trial's ``result.json`` in storage (one JSON object per report; Ray adds ``pid``, …)."""
    try:
        text = (Path(trial_dir) / "result.json").read_text()
    except OSError:
        return []
    lines = []
    for line in text.splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:  # the last line may be half-synced
            break
    return lines
