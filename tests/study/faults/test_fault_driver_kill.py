"""SIGKILLed drivers at several moments, `--resume`, and determinism of two separate sweeps.

Every sweep here runs the same two trials (FactorVAE and AD-FactorVAE, quick preset, tiny data) with the
default discriminator, so a checkpoint is ~66 MB and copying it into storage takes long enough to be
interrupted. One uninterrupted sweep is the oracle: a resumed sweep must end with the same metric
histories, final metrics and weights, bit for bit (CPU, one thread per trial).

(The kill after the first checkpoint is covered by tests/study/test_resume_disentangle.py.)
"""

import math
from pathlib import Path

import pytest
from fault_tools import (
    BIG_CHECKPOINTS,
    checkpoint_dirs,
    checkpoint_problem,
    kill_when,
    logged_weights,
    mlflow_has_metrics,
    newest_experiment_state,
    registered_checkpoints,
    steps,
    trial_runs,
)
from helpers.processes import TINY_SWEEP, copy_mlflow_store, run_cli

ITERATIONS = 30  # checkpoints at 10, 20, 30: Ray registers two, then the third is being written
SWEEP = ["disentangle", "--quick", "--iterations", ITERATIONS, *BIG_CHECKPOINTS, "--set", "checkpoint_every=10",
         "--set", f"eval_every={ITERATIONS}"]
REPORTS = list(range(5, ITERATIONS + 1, 5))
# wall-clock and process resources: the only metrics allowed to differ between two runs of one trial
TIMING_METRICS = {"iterations_per_s", "metric_seconds", "peak_rss_mib", "cpu_percent", "gpu_peak_memory_mib",
                  "gpu_utilization_percent"}


def _sweep(name, storage, ray_address):
    return [*SWEEP, "--address", ray_address, "--storage", storage, "--name", name]


def _resume(name, storage, ray_address):
    return ["disentangle", "--resume", "--name", name, "--storage", storage, "--address", ray_address]


def _by_config(tracking_uri, name):
    client, runs = trial_runs(tracking_uri, name)
    return client, {run.data.tags["config_key"]: run for run in runs}


def _assert_sweep_done(tracking_uri, name, trials=2):
    """One FINISHED MLflow run per trial, every report logged once, in order, up to the exact last one."""
    client, runs = trial_runs(tracking_uri, name)
    assert len(runs) == trials, [r.info.run_name for r in runs]
    assert len({r.data.tags["trial_id"] for r in runs}) == trials
    for run in runs:
        assert run.info.status == "FINISHED", (run.info.run_name, run.data.tags.get("error"))
        for key in ("recon_loss", "tc", "iterations_per_s"):
            assert steps(client, run, key) == REPORTS, (run.info.run_name, key)
        assert steps(client, run, "disentanglement") == [ITERATIONS]
    return client, runs


def _assert_same_results(reference, other, tmp_path):
    """Same final metrics, metric histories and weights in the corresponding runs of two sweeps."""
    (ref_client, ref_runs), (client, runs) = reference, other
    assert ref_runs.keys() == runs.keys()
    for key, ref in ref_runs.items():
        run = runs[key]
        final = {k: v for k, v in run.data.metrics.items() if k not in TIMING_METRICS}
        expected = {k: v for k, v in ref.data.metrics.items() if k not in TIMING_METRICS}
        assert final == expected, key
        assert all(math.isfinite(v) for v in final.values())
        for metric in ("recon_loss", "kld", "tc", "d_loss"):
            values = [m.value for m in client.get_metric_history(run.info.run_id, metric)]
            assert values == [m.value for m in ref_client.get_metric_history(ref.info.run_id, metric)], (key, metric)
        weights, ref_weights = logged_weights(client, run, tmp_path), logged_weights(ref_client, ref, tmp_path)
        assert weights.keys() == ref_weights.keys()
        for name, tensor in ref_weights.items():
            assert weights[name].equal(tensor), (key, name)


@pytest.fixture(scope="module")
def uninterrupted(ray_address, mlflow_template, tmp_path_factory):
    """The oracle: the sweep run straight through."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    uri = copy_mlflow_store(mlflow_template, workdir)
    proc = run_cli(_sweep("straight", workdir / "rr", ray_address), cwd=workdir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _assert_sweep_done(uri, "straight")
    return {"uri": uri, "name": "straight", "workdir": workdir}


def test_same_config_and_seed_give_identical_results_in_separate_sweeps(uninterrupted, ray_address, mlflow_db,
                                                                        tmp_path):
    proc = run_cli(_sweep("straight-again", tmp_path / "rr", ray_address), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _assert_sweep_done(mlflow_db, "straight-again")
    _assert_same_results(_by_config(uninterrupted["uri"], uninterrupted["name"]),
                         _by_config(mlflow_db, "straight-again"), tmp_path)


def test_killed_before_and_during_checkpoint_writes_resumes_to_the_same_result(uninterrupted, ray_address,
                                                                               mlflow_db, tmp_path):
    """Kill 1: trials are reporting, no checkpoint registered yet. Kill 2: an earlier checkpoint is
    registered and a later one is being copied into storage. Then resume to the end.

    Ray registers a checkpoint in its experiment state only once the copy has finished, and a restore
    loads only registered checkpoints: a half-copied ``checkpoint_*`` folder must never be loaded (a torn
    ``state.pt`` would fail to load or change the result), and is overwritten when that index comes again.
    """
    name, storage = "killed-twice", tmp_path / "rr"
    experiment = storage / name
    db, uri = tmp_path / "mlflow.db", mlflow_db

    # Kill 1: right after the trials started reporting, before Ray registered any checkpoint.
    kill_when(_sweep(name, storage, ray_address), tmp_path,
              lambda: mlflow_has_metrics(db) and newest_experiment_state(experiment) is not None)
    assert registered_checkpoints(experiment) == {}
    client, runs = trial_runs(uri, name)
    assert runs and all(r.info.status == "RUNNING" for r in runs)

    # Kill 2: while a checkpoint newer than the registered ones is being written.
    before = set(checkpoint_dirs(experiment))

    def writing_after_a_registered_checkpoint():
        registered = registered_checkpoints(experiment)
        if not registered:
            return None
        fresh = [p for p in checkpoint_dirs(experiment)
                 if p not in before and p.name not in registered.get(p.parent.name, [])]
        return (registered, fresh, {str(p): checkpoint_problem(p) for p in fresh}) if fresh else None

    registered, _, torn = kill_when(_resume(name, storage, ray_address), tmp_path,
                                    writing_after_a_registered_checkpoint, log_name="resume1")
    print(f"killed while writing {torn} with {registered} registered")  # shown with -s or on failure
    # What a restore can load is complete; the folder being written is not registered (it is usually torn:
    # `torn` says how each one looked at the kill).
    for trial, names in registered_checkpoints(experiment).items():
        for checkpoint in names:
            assert checkpoint_problem(experiment / trial / checkpoint) is None, (trial, checkpoint, torn)

    resumed = run_cli(_resume(name, storage, ray_address), cwd=tmp_path, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "2 of 2 trials finished" in resumed.stdout
    _assert_sweep_done(uri, name)
    _assert_same_results(_by_config(uninterrupted["uri"], uninterrupted["name"]), _by_config(uri, name), tmp_path)
    for trial, names in registered_checkpoints(experiment).items():
        for checkpoint in names:
            assert checkpoint_problem(experiment / trial / checkpoint) is None, (trial, checkpoint)


def test_killed_before_ray_saved_any_state_resumes_or_restarts_cleanly(ray_address, mlflow_db, tmp_path):
    """Killed between writing sweep.json and Ray's first experiment state (no trial has run).

    Either outcome is sane: `--resume` runs the sweep (nothing was lost), or it says in one line that
    there is nothing to resume and a fresh start under the same name is then accepted. Not sane: a
    traceback, or a name that can neither be resumed nor started again.
    """
    name, storage = "killed-at-start", tmp_path / "rr"
    experiment = storage / name
    one_trial = ["disentangle", "--quick", "--iterations", 10, *TINY_SWEEP, "--set", "eval_every=10",
                 "--set", "model=factorvae", "--set", "lambda_ad=0",  # the two arms collapse into one trial
                 "--address", ray_address, "--storage", storage, "--name", name]
    kill_when(one_trial, tmp_path, lambda: (experiment / "sweep.json").exists())
    assert newest_experiment_state(experiment) is None, "Ray had saved its state already: not this case"

    resumed = run_cli(_resume(name, storage, ray_address), cwd=tmp_path, timeout=300)
    if resumed.returncode != 0:
        errors = [line for line in resumed.stderr.splitlines() if line.startswith("error: ")]
        assert resumed.returncode == 2 and len(errors) == 1, f"exit {resumed.returncode}: " + resumed.stderr[-2000:]
        assert "Traceback" not in resumed.stdout + resumed.stderr
        started = run_cli(one_trial, cwd=tmp_path, timeout=300)
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
    client, runs = trial_runs(mlflow_db, name)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert steps(client, runs[0], "recon_loss") == [5, 10]
    assert Path(experiment / "sweep.json").is_file()
