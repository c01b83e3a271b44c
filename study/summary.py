"""After a sweep: what happened to each trial, in a few lines, the exit code that says it, and where the
best trials' MLflow runs are."""

from __future__ import annotations

import shutil
import urllib.parse
from pathlib import Path

from search_spaces.common import PARAMS_KEY

ERROR_FILE = "error.txt"  # Ray's traceback of each failure of a trial, in the trial's folder in storage
ALL_TRIALS_UP_TO = 10  # a sweep with at most this many trial runs lists them all at the end, else the best
TOP_TRIALS = 5  # as many as the sweep's parent run names (study.sweep_run.BEST_TRIALS)
LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default


def free_space_note(path: str) -> str:
    """For a local storage path, the free space left there (a full disk is the usual cause of I/O errors)."""
    if "://" in path:
        return ""
    existing = next((p for p in (Path(path), *Path(path).parents) if p.exists()), None)
    if existing is None:
        return ""
    free = shutil.disk_usage(existing).free
    return f" (free space under --storage: {free / 2**20:.1f} MiB)"


def summarise(results, total_key: str, step_key: str, stopped_early_ok: bool = False,
              experiment_path: str | None = None) -> int:
    """Print what happened; 0 only if every trial finished (or, under ASHA, was stopped early on purpose).

    A failed trial's line names Ray's ``error.txt`` (the full traceback of each failure) in the trial's
    folder under ``experiment_path`` (the sweep's folder in storage, a local path or a URI).
    """
    # imported here: study.tracking imports mlflow (seconds), which the CLI's start-up never needs
    from study.tracking import error_reason

    failed, unfinished, finished, stopped, converged = [], [], 0, 0, 0
    for result in results:
        params = (result.config or {}).get(PARAMS_KEY, {})
        reached = (result.metrics or {}).get(step_key)
        # the trial's folder name (model, γ/λ/β, seed, trial id) names it; trial_id alone does not
        label = Path(result.path).name if result.path else (result.metrics or {}).get("trial_id", "?")
        if result.error is not None:  # Ray's error is a traceback; print the one-line reason and where it is
            where = f"{experiment_path.rstrip('/')}/{label}/{ERROR_FILE}" if experiment_path and result.path else None
            failed.append(f"{label}: {error_reason(result.error)}" + (f" (traceback: {where})" if where else ""))
        elif (result.metrics or {}).get("stopped_early"):  # the trainee's own early stopping (a patience rule)
            converged += 1
        elif reached != params.get(total_key) and stopped_early_ok and reached is not None:
            stopped += 1
        elif reached != params.get(total_key):
            unfinished.append(f"{label}: {step_key} {reached} of {params.get(total_key)}")
        else:
            finished += 1
    print(f"{finished + converged} of {len(results)} trials finished"
          + (f" ({converged} by early stopping)" if converged else "")
          + (f", {stopped} stopped early by ASHA" if stopped else ""))
    for line in failed:
        print(f"FAILED {line}")
    for line in unfinished:
        print(f"UNFINISHED {line}")
    return 0 if finished + converged + stopped == len(results) else 1


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    """The run's page in MLflow's UI (its hash routes, as MLflow's client prints them for a server)."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def ui_base(tracking_uri: str) -> tuple[str, str | None]:
    """(where the UI is, the command that serves it): a tracking server is its own UI; a store needs ``mlflow ui``."""
    if urllib.parse.urlparse(tracking_uri).scheme in ("http", "https"):
        return tracking_uri, None
    return LOCAL_UI, f"mlflow ui --backend-store-uri {tracking_uri}"


def print_top_trials(tracking_uri: str, sweep: str, metric: str | None, mode: str | None) -> None:
    """The sweep's trial runs with their MLflow links: all if few, else the best by ``metric``; and the UI command.

    Ranked by ``metric`` (``mode`` min or max) where a run has it, the others after them.
    """
    # imported here: study.tracking imports mlflow (seconds), which the CLI's start-up never needs
    from mlflow import MlflowClient

    from study.tracking import find_sweep_run, find_trial_runs

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(sweep)
    if experiment is None:
        return
    runs = find_trial_runs(client, experiment.experiment_id)
    ranked = [r for r in runs if metric and metric in r.data.metrics]
    ranked.sort(key=lambda r: r.data.metrics[metric], reverse=mode == "max")
    ranked_ids = {r.info.run_id for r in ranked}
    unranked = sorted((r for r in runs if r.info.run_id not in ranked_ids), key=lambda r: r.info.run_name or "")
    if len(runs) <= ALL_TRIALS_UP_TO:
        shown, title = ranked + unranked, f"all {len(runs)} trials"
    else:
        shown, title = ranked[:TOP_TRIALS], f"the best {min(TOP_TRIALS, len(ranked))} of {len(runs)} trials"
    base, serve = ui_base(tracking_uri)
    by = f" by {metric} ({mode})" if metric and ranked else ""
    print(f"{title}{by} in MLflow; " + (f"start its UI with: {serve}" if serve else f"its UI: {base}"))
    for run in shown:
        value = run.data.metrics.get(metric) if metric else None
        score = f"{metric}={value:.4g}" if value is not None else f"{metric or 'objective'}=-"
        print(f"  {run.info.run_name}  {score}  {run.info.status}  run {run.info.run_id}  "
              f"{run_url(base, experiment.experiment_id, run.info.run_id)}")
    parent = find_sweep_run(client, experiment.experiment_id, sweep)
    if parent is not None:
        print(f"  the sweep's run: {run_url(base, experiment.experiment_id, parent.info.run_id)}")


def report_interruption(trials: int, tracking_uri: str, sweep: str, parent_id: str | None, resume: str) -> int:
    """After Ctrl-C: mark the sweep's runs that were running KILLED, say how to resume; exit code 130.

    A resume sets them RUNNING again (the same runs: the sweep's, and each trial's, found by their tags).
    """
    from mlflow import MlflowClient

    from study.tracking import find_trial_runs

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(sweep)
    runs = find_trial_runs(client, experiment.experiment_id) if experiment else []
    for run in runs:
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, "KILLED")
    if parent_id:
        client.set_terminated(parent_id, "KILLED")
    finished = sum(run.info.status == "FINISHED" for run in runs)
    print(f"interrupted: {finished} of {trials} trials finished; the others continue from their last "
          f"checkpoint with:\n  {resume}")
    return 130
