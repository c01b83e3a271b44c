"""`python -m study.evaluate`: re-scores of a finished quick MVTec trial as child runs, idempotent across a SIGKILL.

One quick sweep is trained once (module fixture); a 2 × 2 grid (activation × gradient normalisation) is run,
killed after its first child run, and run again; two copies of the trial, one without weights and one with
weights of another model, fail in one line each while the real trial finishes. The grid holds the trial's own
training-time setting, whose re-score must reproduce the logged metrics (the oracle: the training run itself).
"""

from __future__ import annotations

import io
import json
import time

import pandas as pd
import pytest
import torch
from helpers.processes import copy_mlflow_store, kill_when, run_cli
from mlflow import MlflowClient
from mlflow.entities import Param

from study.evaluate import main

NAME = "mvtec-rescore"
GRID = ["--grid", "activation=relu,abs", "--grid", "normalize_grads=none,per_image"]


@pytest.fixture(scope="module")
def sweep(ray_address, mvtec_root, mlflow_template, tmp_path_factory):
    root, _ = mvtec_root
    workdir = tmp_path_factory.mktemp("rescore")
    uri = copy_mlflow_store(mlflow_template, workdir)
    proc = run_cli(["anomaly", "--dataset", "mvtec", "--category", "bottle", "--quick", "--data-dir", root,
                    "--address", ray_address, "--storage", workdir / "rr", "--name", NAME], cwd=workdir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name(NAME).experiment_id
    (trial,) = client.search_runs([experiment_id], "tags.run_kind = 'trial'")
    return dict(workdir=workdir, uri=uri, client=client, experiment_id=experiment_id, trial=trial,
                address=ray_address)


def _children(sweep, parent_id):
    return sweep["client"].search_runs([sweep["experiment_id"]], "tags.run_kind = 'evaluation' and "
                                       f"tags.`mlflow.parentRunId` = '{parent_id}'")


def _copy_trial(sweep, name, weights: bytes | None) -> str:
    """A finished trial run with the real trial's tags, params and config, and ``weights`` as model/vae.pt."""
    client, trial = sweep["client"], sweep["trial"]
    tags = {**{k: v for k, v in trial.data.tags.items() if not k.startswith("mlflow.")}, "trial_id": name}
    run_id = client.create_run(sweep["experiment_id"], tags=tags, run_name=name).info.run_id
    client.log_batch(run_id, params=[Param(k, v) for k, v in trial.data.params.items()])
    config = json.loads(open(client.download_artifacts(trial.info.run_id, "config.json",
                                                       str(sweep["workdir"]))).read())
    client.log_dict(run_id, config, "config.json")
    if weights is not None:
        path = sweep["workdir"] / name / "vae.pt"
        path.parent.mkdir()
        path.write_bytes(weights)
        client.log_artifact(run_id, str(path), "model")
    client.set_terminated(run_id, "FINISHED")
    return run_id


@pytest.fixture(scope="module")
def ablated(sweep):
    """The grid killed after its first child run, then run again over the trial and two broken copies of it."""
    trial, workdir = sweep["trial"], sweep["workdir"]
    args = ["--sweep", NAME, "--tracking-uri", sweep["uri"], "--address", sweep["address"], *GRID,
            "--max-concurrent", "1"]  # one at a time, so the kill lands between two combinations
    first = [*args, "--run-id", trial.info.run_id]

    def one_child_finished():
        time.sleep(0.2)  # spare the SQLite store the driver is writing to
        return any(r.info.status == "FINISHED" for r in _children(sweep, trial.info.run_id))

    kill_when(first, workdir, one_child_finished, log_name="evaluate", module="study.evaluate")
    killed = len([r for r in _children(sweep, trial.info.run_id) if r.info.status == "FINISHED"])
    buffer = io.BytesIO()
    torch.save({"encoder.weight": torch.zeros(3)}, buffer)  # a model of another config
    missing = _copy_trial(sweep, "no-weights", None)
    unfit = _copy_trial(sweep, "unfit-weights", buffer.getvalue())
    again = run_cli(args, cwd=workdir, module="study.evaluate")
    third = run_cli(first, cwd=workdir, module="study.evaluate")
    return dict(killed=killed, again=again, third=third, missing=missing, unfit=unfit)


def test_sigkill_then_rerun_logs_every_combination_once(sweep, ablated):
    trial = sweep["trial"]
    assert 1 <= ablated["killed"] < 4
    children = _children(sweep, trial.info.run_id)
    assert len(children) == 4 and {r.info.status for r in children} == {"FINISHED"}
    settings = {r.data.tags["evaluation_settings"] for r in children}
    assert settings == {json.dumps({"activation": a, "normalize_grads": g}, sort_keys=True)
                        for a in ("relu", "abs") for g in ("none", "per_image")}
    assert len({r.data.tags["evaluation_key"] for r in children}) == 4
    for child in children:
        assert child.data.tags["run_kind"] == "evaluation"
        assert child.data.tags["trial_id"] == trial.data.tags["trial_id"]
        assert set(child.data.metrics) >= {"pixel_auroc", "best_iou", "best_iou_seed", "best_iou_per_batch"}
        assert [m.step for m in sweep["client"].get_metric_history(child.info.run_id, "pixel_auroc")] == [2]
        assert [a.path for a in sweep["client"].list_artifacts(child.info.run_id, "figures")] == \
            ["figures/anomaly_0002.png"]
    assert f"re-scored {4 - ablated['killed']} combinations" in ablated["again"].stdout


def test_rescoring_with_the_training_settings_reproduces_the_logged_metrics(sweep, ablated):
    trial = sweep["trial"]
    own = {"activation": trial.data.params["activation"], "normalize_grads": trial.data.params["normalize_grads"]}
    (same,) = [r for r in _children(sweep, trial.info.run_id)
               if json.loads(r.data.tags["evaluation_settings"]) == own]
    assert same.data.metrics.keys() <= trial.data.metrics.keys()
    for key, value in same.data.metrics.items():
        assert value == pytest.approx(trial.data.metrics[key], abs=1e-9, rel=0), key
    others = [r for r in _children(sweep, trial.info.run_id) if r.info.run_id != same.info.run_id]
    assert any(r.data.metrics["pixel_auroc"] != trial.data.metrics["pixel_auroc"] for r in others)


def test_runs_without_fitting_weights_are_named_and_the_others_finish(sweep, ablated):
    again = ablated["again"]
    assert again.returncode == 1
    lines = again.stderr.strip().splitlines()
    missing = [ln for ln in lines if ablated["missing"] in ln]
    unfit = [ln for ln in lines if ablated["unfit"] in ln]
    assert len(missing) == 1 and "no weights" in missing[0]
    assert len(unfit) == 1 and "do not fit" in unfit[0]
    assert not _children(sweep, ablated["missing"]) and not _children(sweep, ablated["unfit"])


def test_running_it_again_evaluates_nothing_new(sweep, ablated):
    third = ablated["third"]
    assert third.returncode == 0, third.stderr[-2000:]
    assert "re-scored 0 combinations; 4 were already logged" in third.stdout
    assert "Ray" not in third.stdout  # nothing to do: Ray is not joined
    assert len(_children(sweep, sweep["trial"].info.run_id)) == 4


def test_report_ablation_dry_run_counts_and_bad_keys_fail_in_one_line(sweep, capsys):
    base = ["--sweep", NAME, "--tracking-uri", sweep["uri"], "--run-id", sweep["trial"].info.run_id]
    assert main([*base, "--ablation", "report", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "activation (3) × normalize_grads (3) × attention_layer (3) × score (3) = 81 combinations" in out
    assert "81 evaluation runs for 1 trial runs" in out
    assert "encoder.layer4.1.conv2" in out and "normal_diff" in out
    for grid, words in (("lr=1e-3", "a training field"), ("no_such=1", "not a config field"),
                        ("activation=sigmoid", "activation")):
        assert main([*base, "--grid", grid]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err, err


def test_adlayer_experiment_dry_run_lists_its_grid_and_disk(capsys):
    from study.run import main as run_main

    assert run_main(["disentangle", "--experiment", "adlayer", "--dry-run"]) == 0
    out = capsys.readouterr().out
    # λ ∈ {10, 40} × 4 encoder convs × 3 pair policies × seeds {1, 2}
    assert "48 trials" in out and "checkpoint disk ≈" in out
    for value in ("encoder.0", "encoder.2", "encoder.4", "encoder.6", "consecutive_dims", "all_pairs", "random_pair"):
        assert value in out


def test_the_analysis_report_sets_each_rescore_against_its_trial(sweep, ablated, tmp_path):
    from analysis.cli import main as analysis_main

    for broken in (ablated["missing"], ablated["unfit"]):  # copies without a training history of their own
        sweep["client"].delete_run(broken)
    out = tmp_path / "report"
    assert analysis_main(["report", "--tracking-uri", sweep["uri"], "--sweep", NAME, "--out", str(out),
                          "--include-quick", "--no-log"]) == 0
    table = pd.read_csv(out / "tables" / "ablations_mvtec.csv").set_index("setting")
    params = sweep["trial"].data.params
    assert len(table) == 5 and table.loc["default (as trained)", "trials"] == 1
    own = table.loc[f"activation={params['activation']}, normalize_grads={params['normalize_grads']}"]
    for metric in ("pixel_auroc", "best_iou", "best_iou_seed", "best_iou_per_batch"):
        assert own[f"{metric}_delta"] == 0.0, metric
        assert own[metric] == sweep["trial"].data.metrics[metric]
    assert "Ablations" in (out / "report.md").read_text()
