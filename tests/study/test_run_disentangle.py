"""`python -m study.run disentangle`: a real quick sweep on Ray + MLflow, dry runs, and bad input."""

import json
import re

import pytest
import torch
from helpers.processes import run_cli
from mlflow import MlflowClient

from search_spaces.disentangle import get_study
from study.run import main

CONTRACT_PARAMS = {"model", "gamma", "lambda_ad", "beta", "seed", "lr", "batch_size", "iterations", "z_dim",
                   "attention_layer", "pairs", "eval_every", "checkpoint_every"}
CONTRACT_TAGS = {"trial_id", "sweep", "study", "run_kind", "git_commit", "preset", "data_source", "config_key",
                 "device"}


def _runs(sweep):
    client = MlflowClient(sweep["tracking_uri"])
    experiment = client.get_experiment_by_name(sweep["name"])
    assert experiment is not None, sweep["proc"].stdout + sweep["proc"].stderr
    return client, client.search_runs([experiment.experiment_id], "tags.run_kind = 'trial'")


def test_quick_sweep_logs_one_finished_run_per_trial(quick_sweep):
    proc = quick_sweep["proc"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 of 2 trials finished" in proc.stdout
    assert "status" in proc.stdout and "TERMINATED" in proc.stdout  # the live table
    # the one-line header during the sweep, and at the end every trial's MLflow link and the UI command
    assert re.search(r"^progress: \d running, \d pending, \d done, 0 failed \| elapsed \d:\d\d:\d\d \| ~",
                     proc.stdout, re.MULTILINE)
    assert f"start its UI with: mlflow ui --backend-store-uri {quick_sweep['tracking_uri']}" in proc.stdout
    client, runs = _runs(quick_sweep)
    assert len(runs) == 2
    experiment_id = runs[0].info.experiment_id
    for run in runs:
        link = f"run {run.info.run_id}  http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{run.info.run_id}"
        assert sum(link in line and run.info.run_name in line for line in proc.stdout.splitlines()) == 1
    assert len({r.data.tags["trial_id"] for r in runs}) == 2
    # opens on MLflow 3's runs table, not its GenAI overview
    experiment = client.get_experiment_by_name(quick_sweep["name"])
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert {r.data.params["model"] for r in runs} == {"factorvae", "ad_factorvae"}
    for run in runs:
        assert run.info.status == "FINISHED"
        assert CONTRACT_PARAMS <= set(run.data.params)
        assert CONTRACT_TAGS <= set(run.data.tags)
        assert run.data.tags["run_kind"] == "trial" and run.data.tags["preset"] == "quick"
        assert run.data.params["iterations"] == "20"
        metrics = run.data.metrics
        for key in ("recon_loss", "kld", "tc", "d_loss", "disentanglement", "disentanglement_seed",
                    "num_active_dims", "eval_recon_loss", "iterations_per_s"):
            assert key in metrics, key
        assert 0.0 <= metrics["disentanglement"] <= 1.0
        if run.data.params["model"] == "ad_factorvae":
            assert 0.0 <= metrics["ad_loss"] <= 1.0
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.json", "figures", "model"} <= artifacts
        figures = [a.path for a in client.list_artifacts(run.info.run_id, "figures")]
        assert figures == ["figures/attention_0000020.png", "figures/reconstruction_0000020.png",
                           "figures/traversal_0000020.gif", "figures/traversal_0000020.png"]
        local = client.download_artifacts(run.info.run_id, "model/vae.pt", str(quick_sweep["workdir"]))
        weights = torch.load(local, weights_only=True)
        assert weights["encoder.0.weight"].shape == (32, 1, 4, 4)
        config = json.loads(open(client.download_artifacts(run.info.run_id, "config.json",
                                                           str(quick_sweep["workdir"]))).read())
        assert config["iterations"] == 20 and config["seed"] == 1


def test_metric_steps_are_iterations_strictly_increasing(quick_sweep):
    client, runs = _runs(quick_sweep)
    for run in runs:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "recon_loss")]
        assert steps == [5, 10, 15, 20]
        evals = [m.step for m in client.get_metric_history(run.info.run_id, "disentanglement")]
        assert evals == [20]


def test_official_npz_in_data_dir_is_used_and_tagged(quick_sweep):
    import hashlib

    from helpers.datasets import DSPRITES_NPZ_NAME

    digest = hashlib.sha256((quick_sweep["data_dir"] / DSPRITES_NPZ_NAME).read_bytes()).hexdigest()
    _, runs = _runs(quick_sweep)
    assert {r.data.tags["data_source"] for r in runs} == {f"npz:{digest}"}
    assert f"source=npz path={quick_sweep['data_dir']}" in quick_sweep["proc"].stdout
    assert {r.data.params["data_dir"] for r in runs} == {str(quick_sweep["data_dir"])}


def test_existing_sweep_name_is_refused_without_resume(quick_sweep):
    proc = run_cli(["disentangle", "--quick", "--storage", quick_sweep["storage"], "--name", quick_sweep["name"]],
                   cwd=quick_sweep["workdir"], timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "already exists" in proc.stderr
    assert "started a local Ray" not in proc.stdout and "joined" not in proc.stdout


@pytest.mark.parametrize("experiment, count", [("exp1", 20), ("exp2", 10), ("exp3", 20), ("lambda_scan", 8),
                                                ("betavae", 12), ("all", 68)])
def test_dry_run_lists_every_trial(experiment, count, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["disentangle", "--dry-run", "--experiment", experiment]) == 0
    out = capsys.readouterr().out
    assert f": {count} trials" in out
    assert len(get_study(experiment).trials()) == count
    assert "checkpoint disk" in out and "metric cost" in out
    if experiment == "exp1":
        rows = [line for line in out.splitlines() if line.strip().startswith(("factorvae", "ad_factorvae"))]
        assert len(rows) == 20
        assert {r.split()[1] for r in rows} == {"10", "20", "30", "40", "50"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--experiment", "exp9"], "invalid choice"),
        (["--set", "gamma=0"], "gamma must be > 0"),
        (["--set", "gamma=-3"], "gamma must be > 0"),
        (["--iterations", "0"], "iterations must be > 0"),
        (["--set", "gama=3"], "unknown config key"),
        (["--data-dir", "/nonexistent/dsprites"], "not a readable directory"),
        (["--tracking-uri", "sqlite:/x.db"], "malformed"),
        (["--tracking-uri", "ftp://host/x"], "scheme must be one of"),
        (["--cpus-per-trial", "-1"], "--cpus-per-trial must be > 0"),
        (["--gpus-per-trial", "-0.5"], "--gpus-per-trial must be >= 0"),
        (["--resume", "--iterations", "5"], "--resume takes only"),
        (["--resume", "--name", "never-started"], "nothing to resume"),
    ],
)
def test_bad_input_fails_in_one_line_before_ray_starts(args, message, capsys, tmp_path, monkeypatch):
    import ray

    monkeypatch.chdir(tmp_path)
    try:
        code = main(["disentangle", *args])
    except SystemExit as exit_:  # argparse's own errors (invalid choice)
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert err.strip().count("\n") <= 1  # argparse prints usage + one error line; ours one line
    assert not ray.is_initialized()
