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


def test_asha_stops_trials_early_and_the_sweep_still_succeeds(ray_address, mlflow_db, tmp_path):
    proc = run_cli(["disentangle", "--quick", "--seeds", "1", "2", "--iterations", "20", *TINY_SWEEP,
                    "--set", "eval_every=20", "--set", "checkpoint_every=20", "--scheduler", "asha",
                    "--grace-period", "5", "--reduction-factor", "2", "--address", ray_address,
                    "--storage", tmp_path / "rr", "--name", "asha"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "stopped early by ASHA" in proc.stdout
    client, runs = _runs(mlflow_db, "asha")
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    last = [max(m.step for m in client.get_metric_history(r.info.run_id, "recon_loss")) for r in runs]
    assert min(last) < 20 and max(last) == 20, last  # some stopped at a rung, the best ran to the end


def test_optuna_search_is_seeded_and_survives_resume(ray_address, mlflow_db, tmp_path):
    """--search optuna, 2 configurations × seeds {0, 1}, killed after the first checkpoint and resumed: the Optuna
    study persisted in <storage>/<name>/optuna.db continues (same trials, now complete), each configuration's value
    is the mean of its two seeds' MLflow runs (the oracle: the metrics the trials logged), and the report plots it.
    (ASHA with Optuna and the flags' errors: tests/study/test_optuna_search.py.)"""
    import optuna
    import pytest

    from analysis import optuna_plots
    from analysis.store import load_sweep
    from study.plan import load_plan
    from study.search import persistent_optuna_search, searched_space

    name, storage = "optuna", tmp_path / "rr"
    url = f"sqlite:///{storage / name / 'optuna.db'}"
    # the objective is the held-out reconstruction: after 10 iterations it differs between seeds, where the
    # tiny disentanglement metric is 0 for every trial
    args = ["disentangle", "--quick", "--iterations", "10", *TINY_SWEEP, "--set", "checkpoint_every=5", "--set",
            "eval_every=10", "--set", "eval_size=256", "--search", "optuna", "--num-samples", "2", "--seeds", "0",
            "1", "--search-seed", "7", "--metric", "eval_recon_loss", "--mode", "min", "--address", ray_address,
            "--storage", storage, "--name", name]
    kill_after_first_checkpoint(args, cwd=tmp_path, experiment_dir=storage / name)
    before = optuna.load_study(study_name=name, storage=url).trials
    assert before and not any(t.state.is_finished() for t in before), before  # persisted while it ran
    resumed = run_cli(["disentangle", "--resume", "--name", name, "--storage", storage, "--address", ray_address],
                      cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]

    trials = optuna.load_study(study_name=name, storage=url).trials  # a fresh reader, as optuna-dashboard is
    assert [(t.number, t.state.name) for t in trials] == [(0, "COMPLETE"), (1, "COMPLETE")]
    for old in before:  # the same study continued: its trials kept their numbers, values and start times
        assert (trials[old.number].params, trials[old.number].datetime_start) == (old.params, old.datetime_start)
    client, runs = _runs(mlflow_db, name)
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    for trial in trials:
        replicates = [r for r in runs if float(r.data.params["gamma"]) == trial.params["gamma"]]
        assert sorted(int(r.data.params["seed"]) for r in replicates) == [0, 1] == trial.user_attrs["seeds"]
        assert {(float(r.data.params["lr"]), r.data.params["model"]) for r in replicates} == {
            (trial.params["lr"], trial.params["model"])}
        values = [r.data.metrics["eval_recon_loss"] for r in replicates]
        assert values[0] != values[1] and trial.value == pytest.approx(sum(values) / 2, rel=1e-12)
    # seeded: the first configuration is what a fresh sampler seeded 7 proposes first
    searcher = persistent_optuna_search("params", metric="eval_recon_loss", mode="min", seed=7)
    assert searcher.set_search_properties("eval_recon_loss", "min",
                                          searched_space(load_plan(str(storage), name).space, "params"))
    assert searcher.suggest("t0")["params"] == trials[0].params
    # the report finds the study through the sweep's parent run and draws Optuna's plots
    section = optuna_plots.section(client, [load_sweep(client, name)], tmp_path / "report", "png")
    assert [item.path.name for item in section.items] == ["optuna_optuna_importance.png", "optuna_optuna_contour.png"]
    assert all(item.path.stat().st_size > 10_000 for item in section.items)


def test_fractional_gpus_pack_two_trials_on_one_gpu(ray_address, mlflow_db, tmp_path):
    """The head declares 1 GPU; 0.5 per trial lets both quick trials run at once (on the CPU, tagged so)."""
    proc = run_cli(["disentangle", "--quick", "--iterations", "20", *TINY_SWEEP, "--set", "eval_every=20",
                    "--gpus-per-trial", "0.5", "--cpus-per-trial", "1", "--address", ray_address,
                    "--storage", tmp_path / "rr", "--name", "packed"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _, runs = _runs(mlflow_db, "packed")
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
