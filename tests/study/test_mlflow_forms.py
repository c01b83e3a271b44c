"""MLflow's own forms on a real store: the sweep's parent run with its trials nested, MLflow's standard tags,
figures (attention, traversals, reconstructions) as logged images with steps, the data as a dataset input, the
final model as an MLflow model that ``load_model`` restores and ``--register`` registers, resource metrics,
``MLFLOW_TRACKING_URI`` as the default and any tracking URI MLflow accepts.

The structure checks read the session's finished quick sweep (``quick_sweep``); the kill + resume case is in
``test_resume_disentangle.py``. The environment-variable checks run in-process on paths that fail fast.
"""

import hashlib
import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import mlflow.pytorch
import pytest
import torch
from helpers.datasets import DSPRITES_NPZ_NAME
from mlflow import MlflowClient
from mlflow.models import get_model_info
from mlflow.tracking._tracking_service.utils import _use_tracking_uri

import study.evaluate
from analysis.cli import main as analysis_main
from search_spaces.common import PARAMS_KEY
from search_spaces.disentangle import trial_configs
from study.disentangle import build_plan
from study.options import resolve_tracking_uri, with_defaults
from study.run import build_parser
from study.run import main as study_main
from study.sweep_run import register_best_model
from study.tracking import MLflowTrialLogger, dataset_input
from study.trial_artifacts import logged_model_ids, pip_requirements
from vae_attention.errors import StudyError
from vae_attention.models.dsprites import DSpritesVAE

REPO = Path(__file__).resolve().parents[2]


def _store(sweep):
    proc = sweep["proc"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client = MlflowClient(sweep["tracking_uri"])
    return client, client.get_experiment_by_name(sweep["name"]).experiment_id


def test_one_parent_run_holds_the_plan_and_nests_every_trial(quick_sweep):
    client, experiment_id = _store(quick_sweep)
    (parent,) = client.search_runs([experiment_id], "tags.run_kind = 'sweep'")
    trials = client.search_runs([experiment_id], "tags.run_kind = 'trial'")
    assert len(trials) == 2
    assert {t.data.tags["mlflow.parentRunId"] for t in trials} == {parent.info.run_id}
    assert parent.info.status == "FINISHED" and parent.info.run_name == quick_sweep["name"]
    tags, params = parent.data.tags, parent.data.params
    assert tags["sweep"] == quick_sweep["name"]
    assert tags["command"].startswith("python -m study.run disentangle --quick")
    assert f"--sweep {quick_sweep['name']}" in tags["report_command"]
    assert params["kind"] == "disentangle" and params["trials"] == "2"
    assert {params["study"]} == {t.data.tags["study"] for t in trials}  # the experiment (exp1, quick, …)
    assert params["protocol"] == ",".join(sorted({t.data.params["protocol"] for t in trials}))
    assert params["search_scheduler"] == "fifo"
    # the best trials by the study's objective (disentanglement, max), from the trials' own final values
    ranked = sorted(trials, key=lambda t: t.data.metrics["disentanglement"], reverse=True)
    best = json.loads(Path(client.download_artifacts(parent.info.run_id, "best_trials.json",
                                                     str(quick_sweep["workdir"]))).read_text())
    assert [b["run_id"] for b in best["best"]] == [t.info.run_id for t in ranked]
    assert tags["best_trials"].startswith(ranked[0].info.run_name)
    assert parent.data.metrics["disentanglement"] == ranked[0].data.metrics["disentanglement"]
    plan = json.loads(Path(client.download_artifacts(parent.info.run_id, "sweep.json",
                                                     str(quick_sweep["workdir"]))).read_text())
    assert plan["name"] == quick_sweep["name"] and len(plan["trials"]) == 2


def test_every_run_carries_mlflows_standard_tags(quick_sweep):
    client, experiment_id = _store(quick_sweep)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    runs = [r for r in client.search_runs([experiment_id]) if r.data.tags["run_kind"] in ("sweep", "trial")]
    assert len(runs) == 3
    for run in runs:
        tags = run.data.tags
        assert tags["mlflow.source.type"] == "LOCAL"
        assert tags["mlflow.source.name"] == "study/run.py"
        assert tags["mlflow.user"]
        if head:
            assert tags["mlflow.source.git.commit"] == head == tags["git_commit"]


def test_figures_are_logged_images_with_their_steps(quick_sweep):
    client, experiment_id = _store(quick_sweep)
    for run in client.search_runs([experiment_id], "tags.run_kind = 'trial'"):
        # oracle: the PNG artifacts, whose names carry the step the figure was made at
        pngs = [Path(a.path).stem for a in client.list_artifacts(run.info.run_id, "figures")
                if a.path.endswith(".png")]
        expected = {(name.rsplit("_", 1)[0], int(name.rsplit("_", 1)[1])) for name in pngs}
        # MLflow's log_image(key, step) files: images/<key>+step+<step>+timestamp+<ms>+<uuid>[+compressed]
        images = [Path(a.path).name for a in client.list_artifacts(run.info.run_id, "images")]
        logged = {(n.split("+")[0], int(n.split("+")[2])) for n in images if n.endswith(".png")}
        assert expected == {("attention", 20), ("traversal", 20), ("reconstruction", 20)} and logged == expected
        assert len([n for n in images if n.endswith(".png")]) == len(expected)  # once per step
        assert run.data.tags["mlflow.loggedImages"] == "True"
        # the traversal animation is an artifact beside its grid (an MLflow image is one frame)
        assert "figures/traversal_0000020.gif" in {a.path for a in client.list_artifacts(run.info.run_id, "figures")}


def test_the_data_is_a_dataset_input_with_the_npz_digest(quick_sweep):
    client, experiment_id = _store(quick_sweep)
    npz = Path(quick_sweep["data_dir"]) / DSPRITES_NPZ_NAME
    digest = hashlib.sha256(npz.read_bytes()).hexdigest()
    for run in client.search_runs([experiment_id], "tags.run_kind = 'trial'"):
        (data,) = client.get_run(run.info.run_id).inputs.dataset_inputs
        assert data.dataset.name == "dsprites" and data.dataset.digest == digest[:36]
        assert data.dataset.source_type == "local"
        assert Path(json.loads(data.dataset.source)["uri"]).resolve() == npz.resolve()
        assert {t.key: t.value for t in data.tags}["mlflow.data.context"] == "train"


def test_mlflow_tracking_uri_is_the_default_of_every_cli(monkeypatch, tmp_path, capsys):
    store = tmp_path / "from-env.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    args = build_parser().parse_args(["disentangle", "--quick", "--storage", str(tmp_path / "ray")])
    assert build_plan(with_defaults(args)).tracking_uri == f"sqlite:///{store}"
    args = build_parser().parse_args(["disentangle", "--quick", "--storage", str(tmp_path / "ray"),
                                      "--tracking-uri", f"sqlite:///{tmp_path / 'flag.db'}"])
    assert build_plan(with_defaults(args)).tracking_uri == f"sqlite:///{tmp_path / 'flag.db'}"  # the flag wins

    # study.run and study.evaluate check the store the variable names: a folder that does not exist is named
    absent = tmp_path / "absent"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{absent / 'store.db'}")
    assert study_main(["disentangle", "--quick", "--dry-run", "--storage", str(tmp_path / "ray")]) == 2
    assert f"folder {absent} of the SQLite file is missing" in capsys.readouterr().err
    assert study.evaluate.main(["--sweep", "any"]) == 2
    assert f"folder {absent} of the SQLite file is missing" in capsys.readouterr().err
    # the analysis too: a store that does not exist is named
    missing = tmp_path / "missing.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{missing}")
    assert analysis_main(["report", "--sweep", "any", "--out", str(tmp_path / "out")]) == 2
    assert f"no MLflow store at sqlite:///{missing}" in capsys.readouterr().err


def test_folder_data_sets_are_accepted_by_a_real_store_with_their_category(tmp_path):
    """Every data-source form the studies tag becomes an input the store accepts (MLflow caps digests at 36)."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'inputs.db'}")
    run_id = client.create_run(client.create_experiment("inputs")).info.run_id
    forms = {"mvtec:/data/mvtec": {"category": "bottle"}, "mnist:/data": {"digit": 7}, "generated": {}}
    client.log_inputs(run_id, datasets=[dataset_input(params, source) for source, params in forms.items()])
    logged = {d.dataset.name: d for d in client.get_run(run_id).inputs.dataset_inputs}
    assert set(logged) == {"mvtec/bottle", "mnist", "dsprites-generated"}
    mvtec = logged["mvtec/bottle"]
    assert json.loads(mvtec.dataset.source)["uri"] == "/data/mvtec/bottle"
    assert {t.key: t.value for t in mvtec.tags}["category"] == "bottle"
    assert mvtec.dataset.digest == hashlib.sha256(b"mvtec:/data/mvtec:bottle").hexdigest()[:36]
    assert {t.key: t.value for t in logged["mnist"].tags}["digit"] == "7"
    assert dataset_input({}, "mixed") is None  # several sources in one sweep: no single dataset to claim


# -- the final model as an MLflow model --------------------------------------------------------------------------
def _final_checkpoint_weights(sweep, run) -> Path:
    """``vae.pt`` of the trial's final checkpoint in Ray's storage (the trial folder is named like its run)."""
    found = sorted(p for p in Path(sweep["storage"], sweep["name"]).rglob("vae.pt")
                   if p.parent.parent.name == run.info.run_name)
    assert found, f"no final checkpoint of {run.info.run_name}"
    return found[-1]


def _oracle_reconstructions(sweep, run, client, x: torch.Tensor) -> torch.Tensor:
    """sigmoid(decoder(μ)) of a VAE built from the model class and the trial's checkpoint weights, not via MLflow."""
    config = json.loads(Path(client.download_artifacts(run.info.run_id, "config.json", str(sweep["workdir"])))
                        .read_text())
    config = trial_configs(config)[0]
    assert config.architecture == "kim_mnih"
    vae = DSpritesVAE(config.z_dim, encoder_fc_relu=config.encoder_fc_relu)
    vae.load_state_dict(torch.load(_final_checkpoint_weights(sweep, run), weights_only=True))
    with torch.no_grad():
        mu, _ = vae.eval().encode(x)
        return torch.sigmoid(vae.decode(mu))


def _probe_images() -> torch.Tensor:
    return (torch.rand(3, 1, 64, 64, generator=torch.Generator().manual_seed(0)) > 0.7).float()


def test_the_final_model_is_an_mlflow_model_that_load_model_restores(quick_sweep):
    client, experiment_id = _store(quick_sweep)
    x = _probe_images()
    for run in client.search_runs([experiment_id], "tags.run_kind = 'trial'"):
        (model_id,) = logged_model_ids(client, run.info.run_id)  # logged once per trial
        assert "model_error" not in run.data.tags
        # not merged into the run's model/ folder (MLflow 3 would, were the logged model named "model")
        assert [a.path for a in client.list_artifacts(run.info.run_id, "model")] == ["model/vae.pt"]
        model = client.get_logged_model(model_id)
        with _use_tracking_uri(quick_sweep["tracking_uri"]):
            loaded = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/vae")
            info = get_model_info(f"models:/{model_id}")
        requirements = mlflow.artifacts.download_artifacts(artifact_uri=f"{model.artifact_location}/requirements.txt",
                                                           dst_path=str(quick_sweep["workdir"]))
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), _oracle_reconstructions(quick_sweep, run, client, x),
                                       rtol=0, atol=1e-6)
        image = [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": (-1, 1, 64, 64)}}]
        assert info.signature.inputs.to_dict() == image == info.signature.outputs.to_dict()
        assert info.saved_input_example_info["type"] == "ndarray"
        assert set(pip_requirements()) <= set(Path(requirements).read_text().split())  # as given, not inferred
        assert model.source_run_id == run.info.run_id and model.params["gamma"] == run.data.params["gamma"]


def test_a_final_checkpoint_reported_again_logs_no_second_model(quick_sweep):
    """A trial resumed or retried after its final checkpoint may report it again: the run keeps one model."""
    client, experiment_id = _store(quick_sweep)
    run = client.search_runs([experiment_id], "tags.run_kind = 'trial'")[0]
    config = json.loads(Path(client.download_artifacts(run.info.run_id, "config.json",
                                                       str(quick_sweep["workdir"]))).read_text())
    logger = MLflowTrialLogger(quick_sweep["tracking_uri"], quick_sweep["name"], {}, None, None)
    trial = SimpleNamespace(trial_id=run.data.tags["trial_id"], config={PARAMS_KEY: config})
    logger._log_model(run.info.run_id, trial, _final_checkpoint_weights(quick_sweep, run), 20)
    assert len(logged_model_ids(client, run.info.run_id)) == 1
    assert "model_error" not in client.get_run(run.info.run_id).data.tags


def test_register_makes_the_best_trials_model_a_registered_version(quick_sweep, tmp_path):
    client, experiment_id = _store(quick_sweep)
    (parent,) = client.search_runs([experiment_id], "tags.run_kind = 'sweep'")
    assert register_best_model(quick_sweep["tracking_uri"], parent.info.run_id, None) is None  # not asked
    version = register_best_model(quick_sweep["tracking_uri"], parent.info.run_id, "quick-test-best")
    # oracle: the trial with the highest disentanglement (the study's objective), read from the trial runs
    trials = client.search_runs([experiment_id], "tags.run_kind = 'trial'")
    best = max(trials, key=lambda t: t.data.metrics["disentanglement"])
    (model_id,) = logged_model_ids(client, best.info.run_id)
    assert version.source == f"models:/{model_id}" and version.tags["trial_run_id"] == best.info.run_id
    with _use_tracking_uri(quick_sweep["tracking_uri"]):
        registered = mlflow.pytorch.load_model(f"models:/quick-test-best/{version.version}")
    x = _probe_images()
    with torch.no_grad():
        torch.testing.assert_close(registered(x), _oracle_reconstructions(quick_sweep, best, client, x),
                                   rtol=0, atol=1e-6)
    # the option reaches the plan (saved with it, so a resumed sweep registers too)
    args = build_parser().parse_args(["disentangle", "--quick", "--storage", str(tmp_path / "ray"),
                                      "--tracking-uri", f"sqlite:///{tmp_path / 'r.db'}", "--register", "vae-best"])
    assert build_plan(with_defaults(args)).register_model == "vae-best"


# -- resource use per trial ------------------------------------------------------------------------------------
def test_trials_report_their_resource_use(quick_sweep):
    client, experiment_id = _store(quick_sweep)
    for run in client.search_runs([experiment_id], "tags.run_kind = 'trial'"):
        assert run.data.tags["device"] == "cpu"
        assert not [k for k in run.data.metrics if k.startswith("gpu_")]  # GPU metrics only on CUDA
        peaks = client.get_metric_history(run.info.run_id, "peak_rss_mib")
        assert [m.step for m in peaks] == [5, 10, 15, 20]
        values = [m.value for m in peaks]
        assert values == sorted(values) and values[0] > 50  # a high-water mark of a process that imported torch
        assert run.data.metrics["cpu_percent"] > 0


# -- any tracking URI MLflow accepts -----------------------------------------------------------------------------
@pytest.mark.parametrize("uri", ["postgresql+psycopg2://u@h/db", "mysql+pymysql://u@h/db", "databricks",
                                 "databricks://profile"])
def test_any_store_uri_mlflow_accepts_passes_the_form_check_without_connecting(uri):
    assert resolve_tracking_uri(uri) == uri


def test_file_stores_get_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for uri in ("file:runs", "file:./runs", f"file://{tmp_path}/runs", "runs"):
        assert resolve_tracking_uri(uri) == f"file://{tmp_path.resolve()}/runs"


@pytest.mark.parametrize("uri, message", [("ftp://host/x", "scheme must be one of"),
                                          ("bogus+x://h/db", "scheme must be one of"),
                                          ("file://host/runs", "file:///abs/path")])
def test_a_uri_mlflow_does_not_accept_is_one_line(uri, message):
    with pytest.raises(StudyError) as err:
        resolve_tracking_uri(uri)
    assert message in str(err.value) and "\n" not in str(err.value)

