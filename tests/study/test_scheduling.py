"""ASHA, Optuna (with --resume), fractional-GPU packing, and an MLflow tracking server, on real processes."""

import socket
import sys
import time

from helpers.processes import TINY_SWEEP, free_port, kill_after_first_checkpoint, run_cli, spawn, stop_group
from mlflow import MlflowClient

from study.run import main


def _runs(uri, name):
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None
    return client, client.search_runs([experiment.experiment_id], "tags.run_kind = 'trial'")


def test_asha_stops_trials_early_and_the_sweep_still_succeeds(ray_address, tmp_path):
    proc = run_cli(["disentangle", "--quick", "--seeds", "1", "2", "--iterations", "20", *TINY_SWEEP,
                    "--set", "eval_every=20", "--set", "checkpoint_every=20", "--scheduler", "asha",
                    "--grace-period", "5", "--reduction-factor", "2", "--address", ray_address,
                    "--storage", tmp_path / "rr", "--name", "asha"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "stopped early by ASHA" in proc.stdout
    client, runs = _runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "asha")
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    last = [max(m.step for m in client.get_metric_history(r.info.run_id, "recon_loss")) for r in runs]
    assert min(last) < 20 and max(last) == 20, last  # some stopped at a rung, the best ran to the end


def _suggested(space, settings, n):
    """What a fresh seeded searcher proposes first: the oracle for 'the search resumed, not restarted'."""
    from study.search import _domain, evaluation_optuna_search

    searcher = evaluation_optuna_search(metric="disentanglement", mode="max", seed=settings)
    domains = {k: (_domain(v) if isinstance(v, tuple) else v) for k, v in sorted(space.items())}
    assert searcher.set_search_properties("disentanglement", "max", {"params": domains})
    return [searcher.suggest(f"t{i}")["params"] for i in range(n)]


def test_optuna_search_is_seeded_and_survives_resume(ray_address, tmp_path):
    from study.plan import load_plan

    name, storage, samples = "optuna", tmp_path / "rr", 3
    args = ["disentangle", "--quick", "--iterations", "30", *TINY_SWEEP, "--set", "eval_every=30",
            "--scheduler", "optuna", "--num-samples", samples, "--search-seed", "7", "--max-concurrent", "1",
            "--address", ray_address, "--storage", storage, "--name", name]
    kill_after_first_checkpoint(args, cwd=tmp_path, experiment_dir=storage / name)
    resumed = run_cli(["disentangle", "--resume", "--name", name, "--storage", storage, "--address", ray_address],
                      cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    client, runs = _runs(f"sqlite:///{tmp_path / 'mlflow.db'}", name)
    assert len(runs) == samples and all(r.info.status == "FINISHED" for r in runs)
    for run in runs:
        assert "disentanglement" in run.data.metrics
    sampled = sorted((float(r.data.params["gamma"]), float(r.data.params["lr"])) for r in runs)
    expected = _suggested(load_plan(str(storage), name).space, 7, samples)
    assert sampled == sorted((float(p["gamma"]), float(p["lr"])) for p in expected)


def test_fractional_gpus_pack_two_trials_on_one_gpu(ray_address, tmp_path):
    """The head declares 1 GPU; 0.5 per trial lets both quick trials run at once (on the CPU, tagged so)."""
    proc = run_cli(["disentangle", "--quick", "--iterations", "20", *TINY_SWEEP, "--set", "eval_every=20",
                    "--gpus-per-trial", "0.5", "--cpus-per-trial", "1", "--address", ray_address,
                    "--storage", tmp_path / "rr", "--name", "packed"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _, runs = _runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "packed")
    assert len(runs) == 2
    (a, b) = [(r.info.start_time, r.info.end_time) for r in runs]
    assert a[0] < b[1] and b[0] < a[1]  # their lifetimes overlap: both held half of the one GPU at once
    for run in runs:
        assert run.data.tags["device"] == "cpu" and run.data.tags["gpus_per_trial"] == "0.5"
        assert "CUDA is unavailable" in run.data.tags["device_fallback"]


def test_tracking_server_receives_runs_metrics_and_artifacts(ray_address, tmp_path):
    port = free_port()
    # `mlflow server` forks uvicorn, job runners and huey consumers: all are killed with its process group
    server = spawn([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                    "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination",
                    str(tmp_path / "artifacts"), "--workers", "1"])
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "mlflow server did not start"
                time.sleep(0.5)
        proc = run_cli(["disentangle", "--quick", "--iterations", "10", *TINY_SWEEP, "--set", "eval_every=10",
                        "--set", "checkpoint_every=10", "--tracking-uri", uri, "--address", ray_address,
                        "--storage", tmp_path / "rr", "--name", "served"], cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        client, runs = _runs(uri, "served")
        assert len(runs) == 2
        for run in runs:
            assert run.info.status == "FINISHED" and "disentanglement" in run.data.metrics
            assert [m.step for m in client.get_metric_history(run.info.run_id, "recon_loss")] == [5, 10]
            assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"config.json", "figures", "model"}
    finally:
        stop_group(server)


def test_unreachable_tracking_server_fails_fast_in_one_line(capsys, tmp_path, monkeypatch):
    import ray

    monkeypatch.chdir(tmp_path)
    start = time.monotonic()
    code = main(["disentangle", "--quick", "--tracking-uri", f"http://127.0.0.1:{free_port()}"])
    elapsed = time.monotonic() - start
    err = capsys.readouterr().err
    assert code == 2 and elapsed < 10
    assert "MLflow server unreachable" in err and err.strip().count("\n") == 0
    assert not ray.is_initialized()
