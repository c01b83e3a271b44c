"""`--protocol seed` end to end: one quick CLI sweep per study on the shared Ray head, every bundle value and the
``protocol`` label in each run's MLflow params; a `--set` that changes a protocol value is logged as seed+custom."""

from __future__ import annotations

from helpers.processes import TINY_SWEEP, run_cli
from mlflow import MlflowClient

from search_spaces import protocols

# TINY_SWEEP without its protocol fields (pairs, d_hidden_layers), so the run stays under the bare protocol
SMALL = [item for pair in zip(TINY_SWEEP[::2], TINY_SWEEP[1::2], strict=True)
         if not pair[1].startswith(("pairs=", "d_hidden_layers=")) for item in pair]


def _runs(tracking_uri: str, name: str):
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None
    return client, client.search_runs([experiment.experiment_id], "tags.run_kind = 'trial'")


def test_disentangle_seed_protocol_sweep_logs_the_bundle(ray_address, dsprites_npz, tmp_path):
    proc = run_cli(["disentangle", "--quick", "--protocol", "seed", "--iterations", "20", *SMALL,
                    "--data-dir", dsprites_npz, "--address", ray_address, "--storage", tmp_path / "rr"],
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client, runs = _runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "disentangle-exp1-quick")
    assert {r.data.params["model"] for r in runs} == {"factorvae", "ad_factorvae"}
    for run in runs:
        assert run.info.status == "FINISHED"
        params = run.data.params
        assert params["protocol"] == "seed"
        assert {k: params[k] for k in protocols.protocol_fields("disentangle")} == {
            k: str(v) for k, v in protocols.bundle("disentangle", "seed").items()}
        assert client.get_metric_history(run.info.run_id, "recon_loss")


def test_anomaly_seed_protocol_sweep_with_an_override_is_custom(ray_address, mnist_root, tmp_path):
    proc = run_cli(["anomaly", "--dataset", "mnist", "--digit", "1", "--quick", "--protocol", "seed",
                    "--set", "normalize_grads=none", "--set", "batch_size=4", "--set", "figure_images=2",
                    "--data-dir", mnist_root, "--address", ray_address, "--storage", tmp_path / "rr"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _, runs = _runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "anomaly-mnist-quick")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    params = runs[0].data.params
    assert params["protocol"] == "seed+custom"
    expected = {k: str(v) for k, v in protocols.bundle("anomaly", "seed", "mnist").items()}
    expected["normalize_grads"] = "none"  # the override, on top of the protocol
    assert {k: params[k] for k in protocols.protocol_fields("anomaly")} == expected
