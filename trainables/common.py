"""What every function trainable shares: threads/device from the trial's resources, Tune reporting."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from ray import tune

from trainables.resources import ResourceMeter
from vae_attention.training.host_memory import hold_freed_host_memory
from vae_attention.training.loop import Schedule, Trainee, load_checkpoint, run_loop


def configure_torch_for_trial() -> tuple[torch.device, dict[str, str]]:
    """Torch threads = the trial's CPUs; CUDA when Ray gave the trial a GPU (it sets CUDA_VISIBLE_DEVICES);
    freed host memory is held for the next step (``hold_freed_host_memory``: ~1.3× a CPU step).

    Returns the device and tags for the run: a trial given a GPU share on a node where CUDA is absent (or
    a cluster that declares GPUs it lacks) falls back to the CPU and says so.
    """
    resources = tune.get_context().get_trial_resources().required_resources
    hold_freed_host_memory()
    torch.set_num_threads(max(1, int(resources.get("CPU", 1))))
    gpus = resources.get("GPU", 0)
    if gpus > 0 and torch.cuda.is_available():
        return torch.device("cuda"), {"gpus_per_trial": f"{gpus:g}"}
    if gpus > 0:
        return torch.device("cpu"), {"gpus_per_trial": f"{gpus:g}",
                                     "device_fallback": "GPU share granted but CUDA is unavailable: ran on CPU"}
    return torch.device("cpu"), {}


def node_context() -> dict[str, str]:
    """Where the trial runs, reported with its results (the MLflow callback turns it into tags)."""
    import ray

    return {"node_id": ray.get_runtime_context().get_node_id()}


def tune_report(metrics: dict[str, Any], write_checkpoint) -> None:
    """``tune.report``; with a writer, the files go into a temp dir that Tune persists to storage."""
    if write_checkpoint is None:
        tune.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="checkpoint-") as directory:
        write_checkpoint(Path(directory))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))


def run_trial(trainee: Trainee, schedule: Schedule, context: dict[str, str]) -> None:
    """Restore ``trainee`` from Tune's checkpoint of this trial, if any, then run the shared loop to the end.

    ``context`` (device, data source, …) rides along on every report; the MLflow callback makes it tags. Every
    report also carries the trial's resource use (``trainables.resources``).
    """
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            load_checkpoint(trainee, Path(directory))
    context = {**context, **node_context()}
    meter = ResourceMeter(context.get("device", "cpu"))  # peak memory, CPU (and GPU) use: see resources.py

    def report(metrics, write):
        tune_report({**metrics, **meter.read(), **context}, write)

    with tempfile.TemporaryDirectory(prefix="figures-") as scratch:
        run_loop(trainee, schedule, report, Path(scratch))
