"""The sweep's own MLflow run: the parent that every trial run of the sweep nests under.

MLflow's UI folds runs under the run named by their ``mlflow.parentRunId`` tag. One parent per sweep
(tags ``sweep`` = the sweep name and ``run_kind=sweep``) holds what describes the sweep as a whole: the
plan's settings as params (study, experiment, protocol, scheduling), the whole plan as ``sweep.json``, the
command line that started it, and at the end the best trials and the command that writes the report; with
``--register NAME`` the best trial's MLflow model becomes a new version of the registered model NAME.
``--resume`` finds the parent by its tags and reuses it, so a sweep has one parent however often it stops.

The trial runs are made by ``study.tracking.MLflowTrialLogger``, which finds this run the same way.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow import MlflowClient
from mlflow.entities import Param
from mlflow.exceptions import MlflowException

from search_spaces.protocols import PROTOCOL_KEY
from study.search import resolve_metric
from study.tracking import find_sweep_run, find_trial_runs, get_or_create_experiment
from study.trial_artifacts import logged_model_ids, register_model

if TYPE_CHECKING:
    from study.plan import SweepPlan

BEST_TRIALS = 5  # how many trials the parent names at the end (the report has them all)
TAG_CHARS = 5000  # MLflow's longest tag value is 8000; a few lines of trial names fit well below it


def command_line() -> str:
    """How this process was started, as a user would retype it (``python -m study.run …``)."""
    return shlex.join(["python", "-m", "study.run", *sys.argv[1:]])


def report_command(plan: SweepPlan) -> str:
    """The command that turns this sweep's runs into a report (quick sweeps need ``--include-quick``)."""
    quick = " --include-quick" if plan.preset == "quick" else ""
    return (f"python -m analysis report --tracking-uri {shlex.quote(plan.tracking_uri)} --sweep "
            f"{shlex.quote(plan.name)} --out {shlex.quote('reports/' + plan.name)}{quick}")


def sweep_params(plan: SweepPlan) -> dict[str, str]:
    """The plan as MLflow params: what was swept, under which protocol(s) and scheduling, with what resources."""
    protocols = sorted({str(t[PROTOCOL_KEY]) for t in plan.trials if PROTOCOL_KEY in t})
    params: dict[str, Any] = {
        "kind": plan.kind, "study": plan.study, "preset": plan.preset, "trials": len(plan.trials),
        "protocol": ",".join(protocols) or "none", "storage": plan.storage, "cpus_per_trial": plan.cpus_per_trial,
        "gpus_per_trial": plan.gpus_per_trial, "max_concurrent": plan.max_concurrent,
        "max_failures": plan.max_failures,
    }
    params.update({f"search_{k}": v for k, v in dataclasses.asdict(plan.search).items()})
    return {k: str(v) for k, v in params.items()}


def start_sweep_run(plan: SweepPlan, tags: dict[str, str]) -> str:
    """The sweep's parent run, RUNNING: found by its tags (a resume or restart) or made with the plan."""
    client = MlflowClient(plan.tracking_uri)
    experiment_id = get_or_create_experiment(client, plan.name)
    existing = find_sweep_run(client, experiment_id, plan.name)
    if existing is not None:
        run_id = existing.info.run_id
        client.update_run(run_id, status="RUNNING")
        client.set_tag(run_id, "last_command", command_line())
        return run_id
    report = report_command(plan)
    note = (f"Sweep {plan.name!r}: {len(plan.trials)} planned trials of {plan.kind} {plan.study} "
            f"({plan.preset}). Trial runs are nested below. Report: `{report}`")
    run = client.create_run(experiment_id, run_name=plan.name, tags={
        **tags, "run_kind": "sweep", "command": command_line(), "report_command": report,
        "mlflow.note.content": note})
    run_id = run.info.run_id
    client.log_batch(run_id, params=[Param(k, v) for k, v in sorted(sweep_params(plan).items())])
    plan_dict = dataclasses.asdict(plan)
    plan_dict.pop("address", None)
    client.log_dict(run_id, plan_dict, "sweep.json")
    return run_id


def objective(plan: SweepPlan, metric_defaults: dict) -> tuple[str | None, str | None]:
    """The metric the best trials are ranked by: the searcher's, else the study's Optuna objective."""
    try:
        metric, mode = resolve_metric(plan.search, metric_defaults)
    except KeyError:  # a study without a default for this scheduler (the RBM study has none)
        metric, mode = None, None
    if metric is None:  # a grid: rank by what Optuna would optimise for this study
        metric, mode = metric_defaults.get("optuna", (None, None))
        metric, mode = plan.search.metric or metric, plan.search.mode or mode
    if isinstance(metric, list):  # Pareto: rank by the first objective
        metric, mode = metric[0], mode[0]
    return metric, mode


def finish_sweep_run(plan: SweepPlan, run_id: str, metric_defaults: dict, exit_code: int) -> list[dict]:
    """Name the best finished trials on the parent (tag, metric, ``best_trials.json``) and end it.

    Returns the best trials as written: ``{"run_name", "run_id", "trial_id", "value"}``, best first.
    """
    client = MlflowClient(plan.tracking_uri)
    experiment_id = client.get_run(run_id).info.experiment_id
    metric, mode = objective(plan, metric_defaults)
    best: list[dict] = []
    if metric is not None:
        runs = [r for r in find_trial_runs(client, experiment_id)
                if r.info.status == "FINISHED" and metric in r.data.metrics]
        runs.sort(key=lambda r: r.data.metrics[metric], reverse=mode == "max")
        best = [{"run_name": r.info.run_name, "run_id": r.info.run_id, "trial_id": r.data.tags.get("trial_id"),
                 "value": r.data.metrics[metric]} for r in runs[:BEST_TRIALS]]
        client.log_dict(run_id, {"metric": metric, "mode": mode, "best": best}, "best_trials.json")
        if best:
            lines = "; ".join(f"{b['run_name']} {metric}={b['value']:.4g}" for b in best)
            client.set_tag(run_id, "best_trials", lines[:TAG_CHARS])
            client.set_tag(run_id, "best_metric", f"{metric} ({mode})")
            client.log_metric(run_id, metric, best[0]["value"])  # the sweep's best, in the same column
    client.set_terminated(run_id, "FINISHED" if exit_code == 0 else "FAILED")
    return best


def register_best_model(tracking_uri: str, run_id: str, name: str | None):
    """``--register NAME``: the best trial's MLflow model (first in the sweep run ``run_id``'s ``best_trials.json``)
    as a new version of the registered model ``name``, tagged with the sweep and the trial's run.

    Returns the ``ModelVersion``, or None when not asked or impossible (no ranked trial, or the best one has no
    model, e.g. an RBM sweep): a one-line note on stderr then says why; the sweep's exit code is unchanged.
    """
    if not name:
        return None
    client = MlflowClient(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="best-trials-") as scratch:
        try:
            best = json.loads(Path(client.download_artifacts(run_id, "best_trials.json", scratch)).read_text())
        except Exception:  # not written: the study has no objective to rank trials by
            best = {"best": []}
    if not best["best"]:
        print(f"note: --register {name}: no finished trial was ranked, nothing registered", file=sys.stderr)
        return None
    top = best["best"][0]
    models = logged_model_ids(client, top["run_id"])
    if not models:
        print(f"note: --register {name}: the best trial {top['run_name']} has no MLflow model", file=sys.stderr)
        return None
    sweep = client.get_run(run_id).data.tags.get("sweep", "")
    try:
        version = register_model(tracking_uri, models[-1], name, {"sweep": sweep, "trial_run_id": top["run_id"],
                                                                   best["metric"]: str(top["value"])})
    except MlflowException as err:  # e.g. a name the registry refuses, or a store without a registry
        print(f"note: --register {name}: not registered ({' '.join(str(err).split())[:300]})", file=sys.stderr)
        return None
    print(f"registered model {name!r} version {version.version}: trial {top['run_name']} "
          f"({best['metric']} = {top['value']:.4g}); load it with mlflow.pytorch.load_model('models:/{name}/"
          f"{version.version}')")
    return version

