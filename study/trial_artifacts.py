"""What a trial's checkpoints become in MLflow besides metrics: figures as logged images, and the final weights as
the run's MLflow model (``mlflow.pytorch.log_model``), which ``mlflow.pytorch.load_model`` restores.

Used by the driver's ``study.tracking.MLflowTrialLogger`` (the one writer of the store). The model is logged once
per run: a trial resumed or retried after its final checkpoint may report that checkpoint again, so the run's
model outputs are read first. It is a MLflow 3 *logged model* named ``vae`` (``models:/<model_id>``, also
``runs:/<run_id>/vae``), with the run's params, linked to the run's metrics at its final step, an input example,
a signature and explicit pip requirements (MLflow would otherwise infer them in a subprocess on every call).
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
from contextlib import contextmanager
from pathlib import Path

import mlflow
import mlflow.pytorch
import torch
from mlflow import MlflowClient
from mlflow.models import infer_signature
from mlflow.tracking._tracking_service.utils import _use_tracking_uri

from trainables.export import ServedModel

# The logged model's name: runs:/<run_id>/vae. Not "model": MLflow 3 merges a run's artifact folder with the run's
# logged model of the same name, and ``model/`` holds the run's ``vae.pt`` (what study.evaluate and analysis read).
MODEL_NAME = "vae"
# What unpickling and running the module needs besides this package (torch pickles by reference to it).
MODEL_REQUIREMENTS = ("torch", "numpy", "cloudpickle")


# -- figures as MLflow images --------------------------------------------------------------------------------
_STEP_SUFFIX = re.compile(r"_\d+$")


def figure_key(png: Path) -> str:
    """The image key of a figure file: its name without the zero-padded step (``attention_0000100`` → ``attention``)."""
    return re.sub(r"[^a-zA-Z0-9_\-./ ]", "_", _STEP_SUFFIX.sub("", png.stem))  # log_image refuses other characters


def logged_image_steps(client: MlflowClient, run_id: str) -> set[tuple[str, int]]:
    """(key, step) of the images a run already holds (``log_image`` files are ``images/<key>+step+<n>+…``)."""
    logged = set()
    for item in client.list_artifacts(run_id, "images"):
        parts = Path(item.path).name.split("+")
        if len(parts) > 2 and parts[1] == "step" and parts[2].isdigit() and not item.path.endswith("compressed.webp"):
            logged.add((parts[0].replace("~", "/"), int(parts[2])))
    return logged


# -- the final weights as an MLflow model --------------------------------------------------------------------
def pip_requirements() -> list[str]:
    """Pinned to the driver's installed distributions (``importlib.metadata``: torch's ``+cu…`` build tag is not
    a pip version)."""
    return [f"{name}=={importlib.metadata.version(name)}" for name in MODEL_REQUIREMENTS]


def logged_model_ids(client: MlflowClient, run_id: str) -> list[str]:
    """The ids of the MLflow models logged from the run (its model outputs), oldest first."""
    outputs = client.get_run(run_id).outputs
    return [o.model_id for o in (outputs.model_outputs if outputs else [])]


@contextmanager
def _quiet_pickle_warning():
    """The pickle format is chosen (the module keeps ``encode``/``decode``; ``pt2`` would export a graph fixed to
    one batch size), so MLflow's per-call warning about it is noise in the sweep's output."""
    logger = logging.getLogger("mlflow.pytorch")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def log_trial_model(tracking_uri: str, run_id: str, served: ServedModel, step: int) -> str:
    """Log ``served`` as the run's MLflow model (at ``step``, the final iteration/epoch); returns its model id."""
    client = MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    with torch.no_grad():
        output = served.module(torch.from_numpy(served.input_example)).numpy()
    model = client.create_logged_model(run.info.experiment_id, name=MODEL_NAME, source_run_id=run_id,
                                       params=dict(run.data.params))
    # log_model reads the fluent API's tracking URI; the driver's store is the sweep's, not a process-wide one
    with _use_tracking_uri(tracking_uri), _quiet_pickle_warning():
        mlflow.pytorch.log_model(
            served.module, name=MODEL_NAME, model_id=model.model_id, run_id=run_id, step=step,
            signature=infer_signature(served.input_example, output), input_example=served.input_example,
            pip_requirements=pip_requirements(), serialization_format="pickle")
    return model.model_id


def register_model(tracking_uri: str, model_id: str, name: str, tags: dict[str, str]):
    """A new version of the registered model ``name`` (created if new) whose source is the logged model
    ``model_id``; the store's model registry is the tracking store's (SQLite, file and servers have one)."""
    with _use_tracking_uri(tracking_uri):
        return mlflow.register_model(f"models:/{model_id}", name, tags=tags)
