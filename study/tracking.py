"""Driver-side MLflow bookkeeping: exactly one MLflow run per Tune trial for the trial's whole life.

Everything the driver asks of MLflow lives here: whether a sweep already has trial runs, the cleanup of
runs a stopped start left behind, the provenance tags of a sweep (git commit, package versions), and the
Tune callback ``MLflowTrialLogger`` that writes the runs (figures and models: ``study.trial_artifacts``).

Ray's stock ``MLflowLoggerCallback`` creates a second run when a sweep is restored. Here runs are keyed by
a ``trial_id`` tag and found again after a restore or a retry; metric steps are optimiser iterations (or
epochs), and reports at or below the run's last logged step are skipped, so every metric history is
strictly increasing (a resumed trial replays the same values, because resume is bit-identical).

One writer: only the driver talks to the tracking store (SQLite allows one writer). The client is made
lazily in ``setup()`` and dropped when pickled, so the callback survives Tune's experiment snapshots.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy
import ray
import ray.cloudpickle as cloudpickle  # what Ray pickles trial errors with
import torch
from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from PIL import Image
from ray.tune import Callback
from ray.tune.result import AUTO_RESULT_KEYS

from search_spaces.common import PARAMS_KEY
from study.trial_artifacts import figure_key, log_trial_model, logged_image_steps, logged_model_ids
from trainables.export import served_model
from vae_attention import errors
from vae_attention.data.dsprites import NPZ_NAME as DSPRITES_NPZ
from vae_attention.errors import StudyError
from vae_attention.training.loop import METRICS_FILE, WEIGHTS_FILE, rate_metric

if TYPE_CHECKING:
    from study.plan import SweepPlan

# Everything Tune adds to a result, plus what is not a metric of ours.
_NOT_METRICS = set(AUTO_RESULT_KEYS) | {"done", "trial_id", "experiment_tag", "should_checkpoint"}
# Strings a trainable reports that become run tags (first value wins).
RESULT_TAGS = ("device", "data_source", "node_id", "gpus_per_trial", "device_fallback")
# MLflow's log_batch limits: 1000 metrics, 100 params, 100 tags per call.
_PARAM_BATCH = 100


# MLflow 3's UI opens experiments without this tag in its GenAI overview; ours are model-training runs.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def get_or_create_experiment(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, tags=EXPERIMENT_KIND)


def find_trial_runs(client: MlflowClient, experiment_id: str, trial_id: str | None = None) -> list:
    """Runs tagged ``run_kind=trial`` (and ``trial_id`` when given) in an experiment."""
    query = "tags.run_kind = 'trial'"
    if trial_id is not None:
        query += f" and tags.trial_id = '{trial_id}'"
    return client.search_runs([experiment_id], filter_string=query, max_results=5000)


def find_sweep_run(client: MlflowClient, experiment_id: str, sweep: str):
    """The sweep's parent run (tags ``sweep`` = its name, ``run_kind=sweep``), or None."""
    query = f"tags.run_kind = 'sweep' and tags.sweep = '{sweep}'"
    runs = client.search_runs([experiment_id], filter_string=query, max_results=1, order_by=["attributes.start_time"])
    return runs[0] if runs else None


def has_trial_runs(tracking_uri: str, experiment_name: str) -> bool:
    """Whether the MLflow experiment of that name exists and holds trial runs (the sweep name is taken)."""
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    return experiment is not None and bool(find_trial_runs(client, experiment.experiment_id))


def discard_orphan_runs(plan: SweepPlan) -> None:
    """Delete trial runs of a start that Ray never recorded: their trials run again under new ids."""
    client = MlflowClient(plan.tracking_uri)
    experiment = client.get_experiment_by_name(plan.name)
    for run in find_trial_runs(client, experiment.experiment_id) if experiment else []:
        client.delete_run(run.info.run_id)  # soft delete: still visible under MLflow's deleted runs


# -- provenance: tags on every run of a sweep ----------------------------------------------------------------
def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    return {"torch_version": torch.__version__, "ray_version": ray.__version__, "mlflow_version": mlflow.__version__,
            "numpy_version": numpy.__version__, "python_version": sys.version.split()[0]}


def mlflow_standard_tags(commit: str, source: str = "study/run.py") -> dict[str, str]:
    """MLflow's own provenance tags (what ``mlflow.start_run`` would set), so its UI fills Source, User, Commit.

    The runs are made with ``MlflowClient.create_run``, which sets none of them. ``source``: the CLI's module.
    """
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for the uid (some containers)
        user = "unknown"
    tags = {"mlflow.source.name": source, "mlflow.source.type": "LOCAL", "mlflow.user": user}
    if commit != "unknown":
        tags["mlflow.source.git.commit"] = commit
    return tags


def sweep_tags(plan: SweepPlan) -> dict[str, str]:
    """The tags every run of the sweep carries: its name, study, preset, data source, provenance, MLflow's own."""
    commit = git_commit()
    return {"sweep": plan.name, "study": plan.study, "preset": plan.preset, "git_commit": commit,
            "data_source": plan.data_source, **package_versions(), **mlflow_standard_tags(commit)}


# -- a trial's data as an MLflow dataset input ---------------------------------------------------------------
DIGEST_CHARS = 36  # MLflow's longest dataset digest (mlflow.utils.validation.MAX_DATASET_DIGEST_SIZE)


def dataset_input(params: dict[str, Any], data_source: str) -> DatasetInput | None:
    """The trial's training data as MLflow shows datasets: name, local source path, digest, context ``train``.

    ``data_source`` is the sweep's ``data_source`` tag: ``npz:<sha256 of the dSprites file>`` (the digest is
    that hash, cut to MLflow's 36 characters), ``generated`` (the stand-in) or ``<dataset>:<folder>``. Folders
    have no content hash computed, so their digest is the sha256 of ``dataset:folder:category``: it names the
    source, not its bytes. MVTec runs carry their category in the name and as an input tag.
    """
    kind, _, rest = data_source.partition(":")
    tags = [InputTag("mlflow.data.context", "train")]
    if kind == "npz":
        data_dir = params.get("data_dir") or ""
        name, source, digest = "dsprites", str(Path(data_dir) / DSPRITES_NPZ), rest
    elif kind == "generated":
        name, source = "dsprites-generated", "generated"
        digest = hashlib.sha256(b"generated").hexdigest()
    elif kind in ("mnist", "mvtec", "ucsd"):
        category = str(params.get("category") or "") if kind == "mvtec" else ""
        name = f"mvtec/{category}" if category else kind
        source = str(Path(rest) / category) if category else rest
        digest = hashlib.sha256(f"{kind}:{rest}:{category}".encode()).hexdigest()
        if category:
            tags.append(InputTag("category", category))
        if kind == "mnist" and params.get("digit") is not None:
            tags.append(InputTag("digit", str(params["digit"])))
    else:  # "mixed", "unresolved" or a form this function does not know: no dataset claim
        return None
    dataset = Dataset(name=name, digest=digest[:DIGEST_CHARS], source_type="local",
                      source=json.dumps({"uri": source}))
    return DatasetInput(dataset, tags)


# -- the Tune callback ---------------------------------------------------------------------------------------
def _metric_values(result: dict[str, Any], step_key: str) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in result.items()
        if k not in _NOT_METRICS and k != step_key and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


class MLflowTrialLogger(Callback):
    """One MLflow run per trial: params once, tags, batched metrics by iteration, figures, weights, MLflow model.

    ``sweep_tags`` go on every run (sweep, study, preset, git_commit, versions, …); ``trial_tags(params)``
    adds per-trial tags (config_key); ``resolved_params(params)`` is the full typed config that is logged
    as params and as ``config.json``. All three are module-level functions (the callback is pickled).
    """

    def __init__(self, tracking_uri: str, experiment_name: str, sweep_tags: dict[str, str], trial_tags,
                 resolved_params, step_key: str = "iteration"):
        self.step_key = step_key  # "iteration" or "epoch": the MLflow step of every metric
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.sweep_tags = dict(sweep_tags)
        self.trial_tags = trial_tags
        self.resolved_params = resolved_params
        self._reset()

    def _reset(self) -> None:
        self._client: MlflowClient | None = None
        self._experiment_id: str | None = None
        self._parent_id: str | None = None  # the sweep's run (made by study.launch before Tune starts)
        self._kind: str | None = None  # the study (the parent's param ``kind``): which VAE the final weights fit
        self._run_ids: dict[str, str] = {}
        self._last_step: dict[str, int] = {}
        self._tagged: dict[str, set[str]] = {}
        self._images: dict[str, set[tuple[str, int]]] = {}  # (key, step) of the images each trial's run holds

    def __getstate__(self):
        state = self.__dict__.copy()
        for key in ("_client", "_experiment_id", "_parent_id", "_kind", "_run_ids", "_last_step", "_tagged",
                    "_images"):
            state.pop(key)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._reset()

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
            self._experiment_id = get_or_create_experiment(self._client, self.experiment_name)
            # found by tags, not pickled: a callback restored from a sweep started before parent runs existed
            # still nests the trials it creates from now on
            parent = find_sweep_run(self._client, self._experiment_id, self.experiment_name)
            self._parent_id = parent.info.run_id if parent else None
            self._kind = parent.data.params.get("kind") if parent else None
        return self._client

    def setup(self, **info) -> None:
        _ = self.client

    # -- run lookup ------------------------------------------------------------------------------------------
    def run_id(self, trial) -> str:
        trial_id = trial.trial_id
        if trial_id in self._run_ids:
            return self._run_ids[trial_id]
        client = self.client
        existing = find_trial_runs(client, self._experiment_id, trial_id)
        if existing:
            run_id = existing[0].info.run_id
            # the loop logs rate_metric(step_key) on every report, so its history holds every step logged
            history = client.get_metric_history(run_id, rate_metric(self.step_key))
            self._last_step[trial_id] = max((m.step for m in history), default=-1)
            if existing[0].info.status != "RUNNING":
                client.update_run(run_id, status="RUNNING")
            if "error" in existing[0].data.tags:  # a failed trial is being retried or resumed
                client.delete_tag(run_id, "error")
            if self._parent_id and "mlflow.parentRunId" not in existing[0].data.tags:
                client.set_tag(run_id, "mlflow.parentRunId", self._parent_id)
        else:
            params = trial.config[PARAMS_KEY]
            tags = {**self.sweep_tags, **self.trial_tags(params), "trial_id": trial_id, "run_kind": "trial"}
            if self._parent_id:
                tags["mlflow.parentRunId"] = self._parent_id  # MLflow's nesting: the UI folds trials under it
            run = client.create_run(self._experiment_id, tags=tags, run_name=str(trial))  # Tune's trial name
            run_id = run.info.run_id
            resolved = self.resolved_params(params)
            items = [Param(k, str(v)) for k, v in sorted(resolved.items())]
            for start in range(0, len(items), _PARAM_BATCH):
                client.log_batch(run_id, params=items[start : start + _PARAM_BATCH])
            client.log_dict(run_id, resolved, "config.json")
            data = dataset_input({**params, **resolved}, self.sweep_tags.get("data_source", ""))
            if data is not None:
                client.log_inputs(run_id, datasets=[data])
            self._last_step[trial_id] = -1
        self._run_ids[trial_id] = run_id
        self._tagged.setdefault(trial_id, set())
        return run_id

    # -- Tune hooks ------------------------------------------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.run_id(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        run_id = self.run_id(trial)
        tags = [RunTag(k, str(result[k])) for k in RESULT_TAGS
                if k in result and k not in self._tagged[trial.trial_id]]
        if tags:
            self._tagged[trial.trial_id].update(t.key for t in tags)
        step = int(result.get(self.step_key, result.get("training_iteration", 0)))
        metrics = []
        if step > self._last_step[trial.trial_id]:
            now = int(time.time() * 1000)
            metrics = [Metric(k, v, now, step) for k, v in sorted(_metric_values(result, self.step_key).items())]
            self._last_step[trial.trial_id] = step
        if metrics or tags:
            self.client.log_batch(run_id, metrics=metrics, tags=tags)

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info) -> None:
        run_id = self.run_id(trial)
        with checkpoint.as_directory() as directory:
            directory = Path(directory)
            step = int(json.loads((directory / METRICS_FILE).read_text()).get(self.step_key, 0))
            figures = directory / "figures"
            if figures.is_dir():
                for png in sorted(figures.glob("*.png")):
                    self.client.log_artifact(run_id, str(png), "figures")  # what analysis reads
                    self._log_image(run_id, trial.trial_id, png, step)
                for gif in sorted(figures.glob("*.gif")):  # animations: artifacts only (an MLflow image is one frame)
                    self.client.log_artifact(run_id, str(gif), "figures")
            weights = directory / WEIGHTS_FILE  # only in the final checkpoint
            if weights.is_file():
                self.client.log_artifact(run_id, str(weights), "model")
                self._log_model(run_id, trial, weights, step)

    def _log_model(self, run_id: str, trial, weights: Path, step: int) -> None:
        """The final weights as the run's MLflow model (``study.trial_artifacts``), unless the run has one: a trial
        resumed or retried after its final checkpoint may report it again. A failure is a tag, not a failed sweep."""
        if logged_model_ids(self.client, run_id):
            return
        try:
            served = served_model(self._kind, trial.config[PARAMS_KEY], torch.load(weights, weights_only=True))
            if served is not None:
                log_trial_model(self.tracking_uri, run_id, served, step)
        except Exception as err:  # the sweep's results stand without the model; the tag says why it is missing
            line = " ".join(str(err).split())[:ERROR_TAG_CHARS]
            self.client.set_tag(run_id, "model_error", f"{type(err).__name__}: {line}")

    def _log_image(self, run_id: str, trial_id: str, png: Path, step: int) -> None:
        """The figure as an MLflow image (key = figure kind, step = the checkpoint's step), once per step.

        MLflow's UI shows them in its image slider; a resumed trial may replay a step already logged.
        """
        key = figure_key(png)
        if trial_id not in self._images:
            self._images[trial_id] = logged_image_steps(self.client, run_id)
        if (key, step) in self._images[trial_id]:
            return
        with Image.open(png) as image:
            self.client.log_image(run_id, image.convert("RGB"), key=key, step=step)
        self._images[trial_id].add((key, step))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.client.set_terminated(self.run_id(trial), "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        run_id = self.run_id(trial)
        reason = _error_line(trial)
        self.client.set_tag(run_id, "error", reason)
        self.client.set_terminated(run_id, "FAILED")


ERROR_TAG_CHARS = 500  # the reason is one line; a runaway message must not bloat every run listing


def error_reason(error) -> str:
    """One line saying why a trial failed, from what Ray kept of its error (also the sweep summary's line).

    Ray keeps a ``RayTaskError`` whose ``cause`` is the trainable's exception, a ``RayActorError`` when the
    worker process died, or, when nothing could be pickled, the text of ``error.txt``: Ray's traceback of
    each failure, whose last line is ``module.Type: message``. A ``StudyError`` message is the reason as
    it stands (one line by contract); any other exception is ``Type: first line of its message``.
    """
    if error is None:
        return "trial errored"
    if isinstance(error, BaseException):
        cause = getattr(error, "cause", None)  # RayTaskError: the trainable's own exception
        error = cause if isinstance(cause, BaseException) else error
        lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
        name = type(error).__name__
        if isinstance(error, StudyError) and lines:
            reason = lines[0]
        else:
            reason = f"{name}: {lines[0]}" if lines else name
    else:
        lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
        reason = lines[-1] if lines else "trial errored"
        qualified, sep, message = reason.partition(": ")
        if sep and qualified.replace(".", "").replace("_", "").isalnum():  # "pkg.module.Type: message"
            name = qualified.rpartition(".")[2]
            known = getattr(errors, name, None)
            is_study_error = isinstance(known, type) and issubclass(known, StudyError)
            reason = message if is_study_error else f"{name}: {message}"
    return reason[:ERROR_TAG_CHARS]


def _error_line(trial) -> str:
    """Why ``trial`` failed, in one line (see ``error_reason``), else a generic reason.

    Read from the driver's copy of the trial's error files (``Trial.handle_error`` has just written
    them, before the callbacks run; the copy in storage may not be synced yet).
    """
    error = None
    pickled = getattr(trial, "pickled_error_file", None)
    if pickled:
        try:
            with open(pickled, "rb") as stream:
                error = cloudpickle.load(stream)
        except Exception:  # missing, truncated (full disk) or unpicklable here: fall back to the text
            error = None
    if error is None:
        try:
            error = Path(getattr(trial, "error_file", None) or "").read_text()
        except OSError:
            return "trial errored"
    return error_reason(error)

