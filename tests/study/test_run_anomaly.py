"""`python -m study.run anomaly`: quick sweeps on tiny official-layout data sets, resume, and bad input."""

import json

import pytest
import torch
from helpers.processes import kill_after_first_checkpoint, run_cli
from mlflow import MlflowClient

from search_spaces.anomaly import trial_config
from study.run import main
from vae_attention.training import AnomalyState

CONTRACT_PARAMS = {"dataset", "category", "digit", "lr", "epochs", "batch_size", "image_size", "seed", "z_dim",
                   "attention_layer", "attention", "normalize_grads", "activation", "gt_policy"}


def _runs(tracking_uri, name):
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None
    return client, client.search_runs([experiment.experiment_id], "tags.run_kind = 'trial'")


def test_mnist_quick_sweep_logs_metrics_and_figure(ray_address, mnist_root, tmp_path):
    proc = run_cli(["anomaly", "--dataset", "mnist", "--digit", "1", "--quick", "--data-dir", mnist_root,
                    "--set", "batch_size=4", "--address", ray_address, "--storage", tmp_path / "rr"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client, runs = _runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "anomaly-mnist-quick")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert CONTRACT_PARAMS <= set(run.data.params)
    # the default protocol is the paper's: mean of per-dimension ReLU maps
    assert run.data.params["digit"] == "1" and run.data.params["attention"] == "paper"
    assert run.data.params["protocol"] == "paper"
    assert run.data.params["activation"] == "relu" and run.data.params["attention_layer"] == "encoder.2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2]
    assert 0.0 <= run.data.metrics["image_auroc"] <= 1.0
    assert "baseline_image_auroc" in run.data.metrics
    assert [a.path for a in client.list_artifacts(run.info.run_id, "figures")] == ["figures/anomaly_0002.png"]
    assert [a.path for a in client.list_artifacts(run.info.run_id, "model")] == ["model/vae.pt"]


def test_mvtec_quick_sweep_survives_sigkill_and_resumes(ray_address, mvtec_root, mlflow_db, tmp_path):
    root, _ = mvtec_root
    # killed at the first registered checkpoint (epoch 4: two checkpoints force Ray's state sync), far from the end:
    # a trial runs at most one report ahead of its driver
    name, storage, epochs = "mvtec-resume", tmp_path / "rr", 20
    args = ["anomaly", "--dataset", "mvtec", "--category", "bottle", "--quick", "--data-dir", root,
            "--epochs", epochs, "--set", "checkpoint_every=2", "--set", f"eval_every={epochs}",
            "--address", ray_address, "--storage", storage, "--name", name]
    kill_after_first_checkpoint(args, cwd=tmp_path, experiment_dir=storage / name)
    client, interrupted = _runs(mlflow_db, name)
    assert max(m.step for m in client.get_metric_history(interrupted[0].info.run_id, "loss")) < epochs

    resumed = run_cli(["anomaly", "--resume", "--name", name, "--storage", storage, "--address", ray_address],
                      cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    client, runs = _runs(mlflow_db, name)
    assert len(runs) == 1  # one run across the kill and the resume
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == list(range(1, epochs + 1))
    for key in ("pixel_auroc", "best_iou", "best_threshold", "baseline_pixel_auroc", "pixel_auroc_no_good"):
        assert key in run.data.metrics, key
    assert 0.0 <= run.data.metrics["pixel_auroc"] <= 1.0 and 0.0 <= run.data.metrics["best_iou"] <= 1.0
    assert run.data.tags["data_source"] == f"mvtec:{root}"

    # bit-identical to the same trial run straight through in this process (1 thread, as the trial)
    config = trial_config(json.loads(open(client.download_artifacts(run.info.run_id, "config.json",
                                                                   str(tmp_path))).read()))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        straight = AnomalyState(config, device="cpu")
        for _ in range(epochs):
            straight.advance()
    finally:
        torch.set_num_threads(threads)
    logged = torch.load(client.download_artifacts(run.info.run_id, "model/vae.pt", str(tmp_path)), weights_only=True)
    for key, value in straight.weights().items():
        assert torch.equal(logged[key], value), key


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "mnist"], "--data-dir is required"),
        (["--dataset", "mvtec", "--data-dir", "/nonexistent"], "not a readable directory"),
        (["--dataset", "mvtec", "--category", "bottel", "--data-dir", "."], "unknown MVTec-AD categories"),
        (["--dataset", "mnist", "--category", "bottle", "--data-dir", "."], "--category applies to"),
        (["--dataset", "mnist", "--digit", "12", "--data-dir", ".", "--dry-run"], "MNIST needs digit 0..9"),
        (["--dataset", "mvtec", "--category", "bottle", "--data-dir", ".", "--epochs", "0"], "epochs must be > 0"),
    ],
)
def test_bad_anomaly_input_fails_in_one_line(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["anomaly", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.strip().count("\n") == 0


def test_missing_mvtec_category_names_the_expected_path(capsys, mvtec_root, tmp_path, monkeypatch):
    import ray

    monkeypatch.chdir(tmp_path)
    root, _ = mvtec_root
    assert main(["anomaly", "--dataset", "mvtec", "--category", "cable", "--data-dir", str(root)]) == 2
    err = capsys.readouterr().err
    assert str(root / "cable") in err and err.strip().count("\n") == 0
    assert not ray.is_initialized()


def test_anomaly_dry_run_lists_the_grids(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["anomaly", "--dataset", "mvtec", "--category", "all", "--data-dir", ".", "--dry-run"]) == 0
    assert ": 15 trials" in capsys.readouterr().out
    assert main(["anomaly", "--dataset", "ucsd", "--data-dir", ".", "--seeds", "1", "2", "--dry-run"]) == 0
    assert ": 6 trials" in capsys.readouterr().out  # 3 learning rates × 2 seeds
