"""`python -m study.run rbm --quick` on real handwriting (scikit-learn's digits in the official MNIST IDX layout):
one MLflow run with params, curves, every map's metrics, the figure and the weights; then the report's RBM
section renders from that store. Plus the one-line errors, which need no Ray."""

from __future__ import annotations

import pandas as pd
import pytest
from helpers.datasets import write_sklearn_digits_mnist
from helpers.processes import run_cli
from mlflow import MlflowClient

from analysis.cli import main as analysis_main
from study.run import main


def test_rbm_quick_sweep_logs_runs_metrics_figures_and_the_report_renders(ray_address, tmp_path, capsys):
    data = tmp_path / "data"
    write_sklearn_digits_mnist(data)
    proc = run_cli(["rbm", "--quick", "--data-dir", data, "--address", ray_address, "--storage", tmp_path / "rr"],
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("rbm-paper-quick")
    runs = client.search_runs([experiment.experiment_id], "tags.run_kind = 'trial'")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["data_source"] == f"mnist:{data}"
    params = run.data.params
    assert params["protocol"] == "paper" and params["rbm_map"] == "gradcam" and params["sizes"] == "[784, 100, 36]"
    assert params["epochs"] == "6" and params["digit"] == "1" and params["rbm_layer"] == "1"
    history = {key: [m.step for m in client.get_metric_history(run.info.run_id, key)]
               for key in ("recon_error", "free_energy_gap", "cd_loss", "layer", "loss")}
    assert history == {"recon_error": [1, 2, 3, 4], "free_energy_gap": [1, 2, 3, 4], "cd_loss": [1, 2, 3, 4],
                       "layer": [1, 2, 3, 4], "loss": [5, 6]}
    metrics = run.data.metrics
    for kind in ("gradcam", "seed", "vae", "input"):
        for name in ("pixel_auroc", "best_iou", "best_iou_seed", "image_auroc"):
            assert 0.0 <= metrics[f"{name}/{kind}"] <= 1.0, (name, kind)
    assert metrics["pixel_auroc"] == metrics["pixel_auroc/gradcam"]
    assert [a.path for a in client.list_artifacts(run.info.run_id, "figures")] == ["figures/rbm_0006.png"]
    assert [a.path for a in client.list_artifacts(run.info.run_id, "model")] == ["model/vae.pt"]

    out = tmp_path / "report"
    assert analysis_main(["report", "--tracking-uri", uri, "--sweep", "rbm-paper-quick", "--out", str(out),
                          "--include-quick", "--no-log"]) == 0
    assert "report of 1 trial runs" in capsys.readouterr().out
    md = (out / "report.md").read_text()
    assert "## RBM" in md and "undecided in 1 of 1 configuration(s)" in md  # one seed: no interval, no verdict
    verdicts = pd.read_csv(out / "tables" / "rbm_verdict.csv")
    assert list(verdicts["construction"]) == ["gradcam", "seed"] and set(verdicts["verdict"]) == {"undecided"}
    assert verdicts["delta_mean"].tolist() == pytest.approx(
        [metrics["pixel_auroc/gradcam"] - metrics["pixel_auroc/vae"],
         metrics["pixel_auroc/seed"] - metrics["pixel_auroc/vae"]], abs=1e-12)
    assert len(list((out / "figures" / "artifacts").glob("rbm_*.png"))) == 1


@pytest.mark.parametrize("args, message", [
    (["--protocol", "authors"], "the rbm study has protocols paper, seed, not 'authors'"),
    (["--set", "sizes=784,30"], "rbm_layer=3 is outside the 1 layers of sizes 784-30"),
    (["--set", "sizes=784,30", "--set", "rbm_layer=0"], "30 hidden units, not a square number"),
    (["--scheduler", "asha"], "the rbm study runs its grid only"),
    (["--set", "epochs=3"], "epochs is derived"),
])
def test_user_errors_are_one_line_before_ray(args, message, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    assert main(["rbm", "--dry-run", "--data-dir", str(data), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_dry_run_lists_the_seed_protocol(tmp_path, capsys):
    assert main(["rbm", "--protocol", "seed", "--dry-run", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "sweep 'rbm-seed' (seed, preset full): 6 trials" in out
    assert "784-784-625-484-324-256-169-64-36" in out and "temperature      = 0.1" in out
