"""Synthetic trial runs that follow the MLflow naming contract, for tests, the benchmark and demos.

The study writes runs through Ray callbacks; reproducing that here would pull torch and Ray into the analysis.
Instead these helpers write what the contract promises (tags, string params, metric histories by step, a PNG
under ``figures/``) with values the caller chooses, so a report's numbers can be checked by hand.
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

# MLflow's log_batch accepts at most 1000 metrics per call.
_METRIC_BATCH = 1000


@dataclass
class TrialRun:
    """One trial run: params (any values; logged as strings), extra tags, histories {metric: [(step, value)]}."""

    params: dict[str, Any]
    histories: dict[str, list[tuple[int, float]]]
    tags: dict[str, str] = field(default_factory=dict)
    figures: dict[str, bytes] = field(default_factory=dict)  # file name under figures/ -> PNG bytes
    status: str = "FINISHED"
    run_name: str | None = None


def config_key(params: dict[str, Any]) -> str:
    """A stand-in for the study's key: a hash of the params without the seed (equal configs, equal keys)."""
    text = json.dumps({k: str(v) for k, v in params.items() if k != "seed"}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def tiny_png(seed: int = 0, side: int = 8) -> bytes:
    """A small valid PNG (random grey pixels), written with matplotlib so no other imaging library is needed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    plt.imsave(buffer, np.random.default_rng(seed).random((side, side)), cmap="gray", format="png")
    return buffer.getvalue()


def experiment_id(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment is not None else client.create_experiment(name)


def log_trial(client: MlflowClient, sweep: str, run: TrialRun, *, preset: str = "full",
              data_source: str = "npz:synthetic", study: str = "synthetic") -> str:
    """Write ``run`` into the experiment ``sweep`` with every contract tag; returns the run id."""
    tags = {
        "run_kind": "trial", "sweep": sweep, "study": study, "preset": preset, "data_source": data_source,
        "config_key": config_key(run.params), "device": "cpu", "git_commit": "synthetic",
        "trial_id": f"synthetic_{time.monotonic_ns()}", **run.tags,
    }
    created = client.create_run(experiment_id(client, sweep), tags=tags, run_name=run.run_name)
    run_id = created.info.run_id
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in sorted(run.params.items())])
    now = int(time.time() * 1000)
    metrics = [Metric(key, float(value), now, int(step)) for key, points in run.histories.items()
               for step, value in points]
    for start in range(0, len(metrics), _METRIC_BATCH):
        client.log_batch(run_id, metrics=metrics[start:start + _METRIC_BATCH])
    client.log_dict(run_id, {k: v for k, v in run.params.items()}, "config.json")
    if run.figures:
        with tempfile.TemporaryDirectory(prefix="synthetic-figures-") as scratch:
            for name, data in run.figures.items():
                path = Path(scratch) / name
                path.write_bytes(data)
                client.log_artifact(run_id, str(path), "figures")
    client.set_terminated(run_id, run.status)
    return run_id


def ramp(steps: list[int], start: float, final: float) -> list[tuple[int, float]]:
    """A history that moves linearly from ``start`` to exactly ``final`` at the last step."""
    if len(steps) == 1:
        return [(steps[0], final)]
    values = np.linspace(start, final, len(steps)).tolist()
    values[-1] = final  # linspace's last value is exact, but say so: reports compare it bit for bit
    return list(zip(steps, values, strict=True))


def disentangle_trial(model: str, seed: int, final: dict[str, float], *, gamma: float = 0.0,
                      lambda_ad: float = 0.0, beta: float = 1.0, iterations: int = 100, report_every: int = 20,
                      eval_every: int = 50, figure: bool = True, **extra_params: Any) -> TrialRun:
    """A disentangle trial whose metric histories end at ``final`` (train metrics every ``report_every``,
    evaluation metrics every ``eval_every`` iterations and at the end)."""
    params = dict(model=model, gamma=float(gamma), lambda_ad=float(lambda_ad), beta=float(beta), seed=int(seed),
                  lr=1e-4, batch_size=64, iterations=iterations, z_dim=10, attention_layer="encoder.0",
                  pairs="consecutive_dims", eval_every=eval_every, checkpoint_every=eval_every, **extra_params)
    train_steps = list(range(report_every, iterations + 1, report_every))
    eval_steps = sorted(set(range(eval_every, iterations + 1, eval_every)) | {iterations})
    evaluated = {"eval_recon_loss", "disentanglement", "disentanglement_seed", "num_active_dims"}
    histories = {}
    for key, value in final.items():
        steps = eval_steps if key in evaluated else train_steps
        histories[key] = ramp(steps, value * 1.5 if key.endswith("loss") else value * 0.5, value)
    label = {"betavae": f"betavae_b{beta:g}", "ad_factorvae": f"adfvae_g{gamma:g}_l{lambda_ad:g}"}.get(
        model, f"fvae_g{gamma:g}")
    figures = {f"attention_{iterations:07d}.png": tiny_png(seed)} if figure else {}
    return TrialRun(params=params, histories=histories, figures=figures, run_name=f"{label}_s{seed}")


def anomaly_trial(dataset: str, seed: int, final: dict[str, float], *, category: str = "", digit: int | None = None,
                  lr: float = 5e-4, epochs: int = 4, eval_every: int = 2, figure: bool = True,
                  **extra_params: Any) -> TrialRun:
    """An anomaly trial: ``loss`` every epoch, evaluation metrics every ``eval_every`` epochs, ending at ``final``."""
    params = dict(dataset=dataset, category=category, digit=digit, lr=lr, epochs=epochs, batch_size=16,
                  image_size=64, seed=int(seed), z_dim=32, attention_layer="encoder.4", attention="authors",
                  normalize_grads="none", activation="abs", gt_policy="gt_only", eval_every=eval_every,
                  **extra_params)
    eval_steps = sorted(set(range(eval_every, epochs + 1, eval_every)) | {epochs})
    histories = {}
    for key, value in final.items():
        steps = list(range(1, epochs + 1)) if key in ("loss", "recon_loss", "kld") else eval_steps
        histories[key] = ramp(steps, value * 1.2 if key.endswith("loss") else value * 0.9, value)
    label = {"mvtec": f"mvtec_{category}", "mnist": f"mnist_d{digit}"}.get(dataset, "ucsd")
    figures = {f"anomaly_{epochs:04d}.png": tiny_png(seed + 100)} if figure else {}
    return TrialRun(params=params, histories=histories, figures=figures, run_name=f"{label}_lr{lr:g}_s{seed}")


def log_evaluation(client: MlflowClient, sweep: str, parent_run_id: str, settings: dict[str, Any],
                   metrics: dict[str, float], *, step: int = 4, status: str = "FINISHED") -> str:
    """A re-score of ``parent_run_id`` as ``python -m study.evaluate`` logs it: a child run (``run_kind=evaluation``,
    ``mlflow.parentRunId``, ``evaluation_settings`` = the settings' JSON, ``evaluation_key``), the settings as
    params and ``metrics`` at ``step``; returns the run id."""
    parent = client.get_run(parent_run_id)
    text = json.dumps(settings, sort_keys=True)
    tags = {**{k: v for k, v in parent.data.tags.items() if k in ("sweep", "study", "preset", "data_source",
                                                                  "config_key", "trial_id")},
            "run_kind": "evaluation", "mlflow.parentRunId": parent_run_id, "evaluation_settings": text,
            "evaluation_key": hashlib.sha1(text.encode()).hexdigest()[:16]}
    run_id = client.create_run(experiment_id(client, sweep), tags=tags).info.run_id
    now = int(time.time() * 1000)
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in sorted(settings.items())],
                     metrics=[Metric(k, float(v), now, step) for k, v in sorted(metrics.items())])
    client.set_terminated(run_id, status)
    return run_id
