"""MLflow's own forms on a real store: the sweep's parent run with its trials nested, MLflow's standard tags,
figures as logged images with steps, the data as a dataset input, and ``MLFLOW_TRACKING_URI`` as the default.

The structure checks read the session's finished quick sweep (``quick_sweep``); the kill + resume case is in
``test_resume_disentangle.py``. The environment-variable checks run in-process on paths that fail fast.
"""

import hashlib
import json
import subprocess
from pathlib import Path

from helpers.datasets import DSPRITES_NPZ_NAME
from mlflow import MlflowClient

import study.evaluate
from analysis.cli import main as analysis_main
from study.disentangle import build_plan
from study.options import with_defaults
from study.run import build_parser
from study.run import main as study_main
from study.tracking import dataset_input

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
        assert ("attention", 20) in expected and logged == expected
        assert len([n for n in images if n.endswith(".png")]) == len(expected)  # once per step
        assert run.data.tags["mlflow.loggedImages"] == "True"


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
