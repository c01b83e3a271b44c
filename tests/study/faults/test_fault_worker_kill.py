"""A trial's worker process SIGKILLed mid-run: Ray retries the trial from its last checkpoint
(``FailureConfig(max_failures)``, ``--max-failures``), in the same MLflow run, and the sweep finishes."""

import os
import signal
import time

from fault_tools import result_lines, start_cli, steps, trial_runs
from helpers.processes import TINY_SWEEP, stop_group

ITERATIONS = 60  # room after the first synced checkpoint (iteration 20) to kill the worker mid-run


def test_killed_worker_is_retried_from_its_last_checkpoint(ray_address, mlflow_db, tmp_path):
    name, storage = "worker-kill", tmp_path / "rr"
    experiment = storage / name
    args = ["disentangle", "--quick", "--iterations", ITERATIONS, *TINY_SWEEP, "--set", f"eval_every={ITERATIONS}",
            "--max-failures", "1", "--address", ray_address, "--storage", storage, "--name", name]
    driver = start_cli(args, tmp_path)
    try:
        # Ray adds the worker's pid to every line of the trial's result.json, which reaches storage with the
        # experiment-state sync that follows the trial's second checkpoint. The AD-FactorVAE trial is the
        # slower one: the most time left to kill it before it finishes.
        deadline, victim = time.monotonic() + 240, None
        while victim is None:
            assert time.monotonic() < deadline, "no checkpointed AD-FactorVAE report reached storage"
            assert driver.poll() is None, f"the sweep ended before a worker was killed (exit {driver.returncode})"
            for trial_dir in experiment.glob("adfvae_*"):
                lines = result_lines(trial_dir)
                if lines and lines[-1].get("checkpoint_dir_name") and not lines[-1].get("done"):
                    victim = (trial_dir, lines[-1]["pid"], lines[-1]["iteration"])
                    break
            time.sleep(0.05)
        trial_dir, pid, seen_checkpoint = victim
        os.kill(pid, signal.SIGKILL)
        assert driver.wait(timeout=300) == 0, (tmp_path / "driver.err").read_text()[-3000:]
    finally:
        stop_group(driver)
        for stream in driver.logs:
            stream.close()
    out = (tmp_path / "driver.out").read_text()
    assert "2 of 2 trials finished" in out, out[-2000:]

    # The retry ran in a new worker and continued from the killed worker's last checkpoint, not from 0.
    lines = result_lines(trial_dir)
    pids = [line["pid"] for line in lines]
    assert pids[0] == pid and len(set(pids)) == 2, pids
    last_checkpoint = max(line["iteration"] for line in lines if line["pid"] == pid and line.get("checkpoint_dir_name"))
    first_retry = next(line for line in lines if line["pid"] != pid)
    assert first_retry["iteration"] == last_checkpoint + 5, (first_retry["iteration"], last_checkpoint)
    assert last_checkpoint >= seen_checkpoint >= 10

    client, runs = trial_runs(mlflow_db, name)
    assert len(runs) == 2  # the retry logged into the trial's run, no second one
    for run in runs:
        assert run.info.status == "FINISHED", run.data.tags.get("error")
        for key in ("recon_loss", "tc", "iterations_per_s"):
            assert steps(client, run, key) == list(range(5, ITERATIONS + 1, 5)), (run.info.run_name, key)
        assert steps(client, run, "disentanglement") == [ITERATIONS]
